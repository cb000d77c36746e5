"""Figures of an [`AnalysisReport`][formal_sae.AnalysisReport] (matplotlib PNGs, plain HTML)."""

from __future__ import annotations

import html
import os

import numpy as np

from formal_sae.plotting import MISSING, number, pyplot, save_figure


def distinct_sentences(aligned, ranked_rows, n: int) -> list[int]:
    """The first ``n`` of ``ranked_rows`` (sentence rows of ``aligned``, best first) whose token
    sequences differ: a short sentence that occurs many times in the data is shown once."""
    seen, out = set(), []
    for row in ranked_rows:
        idx = np.flatnonzero(aligned.rows == row)
        key = tuple(int(t) for t in aligned.token_ids[idx[np.argsort(aligned.positions[idx])]])
        if key not in seen:
            seen.add(key)
            out.append(row)
            if len(out) == n:
                break
    return out


def correlation_heatmap(report, path: str | os.PathLike) -> None:
    """Pearson correlation of each target (rows) with the best latent of every target (columns)."""
    plt = pyplot()
    names = report.target_names
    latents = list(dict.fromkeys(report.targets[n]["best_latent"] for n in names))
    matrix = report.correlations[latents][:, [names.index(n) for n in names]].T
    # room for the longest feature name and for the colour bar's label, whatever the matrix's size
    label_width = 0.07 * max(map(len, names), default=4)
    fig, ax = plt.subplots(figsize=(max(4.5, 2.2 + label_width + 0.45 * len(latents)), max(3.0, 1.6 + 0.32 * len(names))))
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(latents)), [str(j) for j in latents], rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("latent (best latent of some feature)", fontsize=8)
    bar = fig.colorbar(im, ax=ax, fraction=0.06, pad=0.03)
    bar.set_label("Pearson correlation", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    ax.set_title(f"{report.summary['grammar']}: latents vs features", fontsize=9)
    save_figure(fig, path, dpi=130)  # a tight bounding box: no tick, axis or colour-bar label is clipped


def depth_heatmap(report, latent: int, path: str | os.PathLike, depth_feature: str = "depth", n_sentences: int = 3) -> None:
    """The paper's depth heat map: each token of a sentence (rows, in order) placed in the column of
    its depth and coloured by the latent's activation, for the sentences where the latent is most active."""
    plt = pyplot()
    a = report.aligned
    values, depths = a.latent(latent), a.features[depth_feature]
    sentence_max = {}
    for row, v in zip(a.rows, values, strict=True):
        sentence_max[row] = max(sentence_max.get(row, 0.0), float(v))
    length = np.bincount(a.rows)
    readable = [r for r in sentence_max if length[r] <= 30] or list(sentence_max)  # long sentences do not fit a figure
    rows = distinct_sentences(a, sorted(readable, key=lambda r: -sentence_max[r]), n_sentences)
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 4.0), squeeze=False)
    vmax = max(float(values.max()), 1e-6)
    vocab = a.token_ids
    for ax, row in zip(axes[0], rows, strict=True):
        idx = np.flatnonzero(a.rows == row)
        idx = idx[np.argsort(a.positions[idx])]
        grid = np.full((len(idx), int(depths[idx].max()) + 1), np.nan)
        grid[np.arange(len(idx)), depths[idx]] = values[idx]
        im = ax.imshow(grid, cmap="magma", vmin=0, vmax=vmax, aspect="auto")
        ax.set_yticks(range(len(idx)), [report.token_names[t] for t in vocab[idx]], fontsize=6)
        ax.set_xlabel(depth_feature)
        ax.set_title(f"sentence {row}", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), label=f"latent {latent}", shrink=0.8)
    fig.suptitle(f"latent {latent} by {depth_feature}", fontsize=9)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def top_activations_html(report, latents: list[int], n_sentences: int = 10) -> str:
    """A self-contained HTML page: for each latent, its top-activating sentences with each token's
    background shaded by the activation."""
    a = report.aligned
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>top activations</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em}span.t{padding:1px 3px;margin:1px;border-radius:3px;font-family:monospace}",
        "h2{font-size:1.05em;margin-top:1.6em}div.s{margin:3px 0}</style></head><body>",
        f"<h1>Top-activating sentences: {html.escape(str(report.summary['grammar']))}</h1>",
    ]
    tracked = {j: [n for n, t in report.targets.items() if t["best_latent"] == j] for j in latents}
    for j in latents:
        values = a.latent(j)
        vmax = max(float(values.max()), 1e-9)
        sentence_max: dict[int, float] = {}
        for row, v in zip(a.rows, values, strict=True):
            sentence_max[row] = max(sentence_max.get(row, 0.0), float(v))
        best = distinct_sentences(a, sorted(sentence_max, key=lambda r: -sentence_max[r]), n_sentences)
        label = ", ".join(tracked.get(j, [])) or MISSING
        parts.append(f"<h2>latent {j} <small>(best latent of: {html.escape(label)}; max {number(vmax, 3, 'g')})</small></h2>")
        for row in best:
            idx = np.flatnonzero(a.rows == row)
            idx = idx[np.argsort(a.positions[idx])]
            spans = "".join(
                f"<span class='t' style='background:rgba(220,60,20,{values[i] / vmax:.2f})' title='{number(float(values[i]), 3, 'g')}'>"
                f"{html.escape(report.token_names[a.token_ids[i]])}</span>"
                for i in idx
            )
            parts.append(f"<div class='s'>{spans}</div>")
    parts.append("</body></html>")
    return "\n".join(parts)

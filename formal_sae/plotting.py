"""The package's one matplotlib setup and its one number formatter for tables and figures.

Every figure formal-sae draws goes through `pyplot`; every number it prints in a table goes
through [`number`][formal_sae.number]. matplotlib is imported lazily: most commands draw nothing, and importing it
costs about half a second.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from formal_sae.io import atomic_write_bytes

#: What a table shows for a missing value (None or NaN).
MISSING = "–"


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def number(value: Any, digits: int = 3, style: str = "f") -> str:
    """A value for a table: `MISSING` for None or NaN, floats with ``digits`` in ``style``
    (``"f"`` fixed, ``"g"`` significant), anything else as ``str``."""
    if isinstance(value, np.floating):
        value = float(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:.{digits}{style}}"
    return str(value)


def plot_heatmap(
    values: list[list[float]], row_labels: Sequence[str], col_labels: Sequence[str], title: str, xlabel: str, path: Path
) -> None:
    """An annotated heat map of values in [0, 1] (rows: expansion factor, columns: ``xlabel``) as a PNG."""
    plt = pyplot()
    data = np.array(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.1 + 0.8 * len(col_labels), 1.2 + 0.55 * len(row_labels)))
    cmap = plt.colormaps["viridis"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(col_labels)), labels=list(col_labels))
    ax.set_yticks(range(len(row_labels)), labels=list(row_labels))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("expansion factor")
    ax.set_title(title, fontsize=9)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v = data[i, j]
            ax.text(j, i, number(float(v), 2), ha="center", va="center", fontsize=8,
                    color="black" if np.isnan(v) or v > 0.6 else "white")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Write a figure as a PNG atomically (with ``bbox_inches="tight"``: no label is clipped) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def latent_density(firing_rates: Sequence[float] | np.ndarray) -> tuple[np.ndarray, int]:
    """``(log10 firing frequency of each live latent, number of dead latents)``: the data of a
    latent density histogram (a dead latent never fires, so it has no logarithm)."""
    rates = np.asarray(firing_rates, dtype=float)
    live = rates > 0
    return np.log10(rates[live]), int((~live).sum())


def plot_latent_density(firing_rates: Sequence[float] | np.ndarray, path: str | os.PathLike, title: str) -> None:
    """A histogram of log10 firing frequency per latent, dead latents stated in the legend, as a PNG."""
    plt = pyplot()
    logs, dead = latent_density(firing_rates)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    n = len(logs) + dead
    if len(logs):
        lo, hi = float(logs.min()), float(logs.max())
        bins = np.linspace(lo - 0.05, hi + 0.05, 31) if hi - lo > 1e-9 else 10
        ax.hist(logs, bins=bins, color="tab:blue", label=f"live: {len(logs)} of {n}")
    ax.plot([], [], " ", label=f"dead (never fire): {dead} of {n}")  # a legend line for the dead count
    ax.set_xlabel("log10 firing frequency (fraction of tokens)")
    ax.set_ylabel("latents")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    save_figure(fig, path)


def plot_tradeoff(
    points: Sequence[dict[str, Any]], x: str, y: str, path: str | os.PathLike, title: str, xlabel: str, ylabel: str
) -> None:
    """A scatter of ``y`` against ``x`` over ``points`` (dicts with keys ``x``, ``y``, ``group``
    and optionally ``y_err``), one colour and line per group (sorted by ``x``), as a PNG; the
    frontier plots of a sweep (L0 vs explained variance, L0 vs validity)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    groups = sorted({p["group"] for p in points})
    colours = plt.colormaps["tab10"]
    for k, group in enumerate(groups):
        pts = sorted((p for p in points if p["group"] == group), key=lambda p: p[x])
        xs, ys = [p[x] for p in pts], [p[y] for p in pts]
        errs = [p.get("y_err") or 0.0 for p in pts]
        ax.errorbar(xs, ys, yerr=errs if any(errs) else None, color=colours(k % 10), marker="o", markersize=4,
                    linewidth=1, capsize=2, label=group)  # fmt: skip
    if any(p[x] > 0 for p in points) and max(p[x] for p in points) / max(min(p[x] for p in points), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    save_figure(fig, path)

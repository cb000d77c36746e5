"""Side-by-side comparison of SAEs on one model and dataset (e.g. a causal SAE vs a plain one).

For each SAE: reconstruction and downstream metrics (``evaluate_sae``), the held-out causal loss
(nearest-neighbour pairs, as in training), the analysis summary (does the correlation structure
survive?), and the *linearity error* along latent interpolations on held-out token pairs drawn
once, without any SAE, and shared by all the SAEs compared
([`interpolation_metrics`][formal_sae.interpolation_metrics]): the distance between the output
at interpolated latents and the interpolation of the outputs, divided by the distance between the
two endpoint outputs (scale-free; 0 = g is affine along the segment). Lower is better for both.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from formal_sae.analysis import analyze
from formal_sae.errors import SAEError
from formal_sae.io import atomic_write_text, read_json, write_json
from formal_sae.outputs import output_dir
from formal_sae.plotting import MISSING, number, pyplot, save_figure
from formal_sae.saes import check_sae_fits, check_sae_model, evaluate_sae, load_sae
from formal_sae.saes.causal import held_out_causal_loss
from formal_sae.saes.causal_metrics import held_out_pairs, interpolation_metrics
from formal_sae.saes.training import TRAIN_CONFIG_FILE

COLUMNS = (
    "explained_variance",
    "mse",
    "l0",
    "dead_fraction",
    "ce_loss_score",
    "validity",
    "causal_loss",
    "coverage",
    "mcc",
    "linearity_error",
)


@dataclass
class SAEComparison:
    """One row of metrics per SAE."""

    rows: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(COLUMNS), "saes": self.rows}

    def to_markdown(self) -> str:
        head = "| SAE | causal beta | " + " | ".join(COLUMNS) + " |"
        lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
        for r in self.rows:
            beta = r.get("causal", {}).get("coefficient", MISSING) if r.get("causal") else MISSING
            lines.append(f"| {r['name']} | {beta} | " + " | ".join(number(r.get(c), 4, "g") for c in COLUMNS) + " |")
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``comparison.json``, ``comparison.md`` and ``comparison.png`` as one artifact (an
        existing ``out_dir`` is refused unless ``overwrite``; see `formal_sae.outputs`)."""
        with output_dir(out_dir, "comparison", overwrite=overwrite) as out:
            write_json(out / "comparison.json", self.to_dict())
            atomic_write_text(out / "comparison.md", self.to_markdown())
            self.plot(out / "comparison.png")
        return Path(out_dir)

    def plot(self, path) -> None:
        plt = pyplot()

        shown = ("causal_loss", "linearity_error", "explained_variance", "validity")
        fig, axes = plt.subplots(1, len(shown), figsize=(3.0 * len(shown), 3.0))
        names = [r["name"] for r in self.rows]
        for ax, col in zip(axes, shown, strict=True):
            heights, errors = self.bars(col)
            ax.bar(range(len(names)), heights, yerr=errors, capsize=3, color="tab:blue", ecolor="black")
            for k, h in enumerate(heights):
                if math.isnan(h):  # not measured: said so, not drawn as a zero bar
                    ax.text(k, 0, MISSING, ha="center", va="bottom", fontsize=8)
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
            ax.set_title(col + (" (± std over repeats)" if errors is not None else ""), fontsize=9)
        fig.tight_layout()
        save_figure(fig, path, dpi=130)

    def bars(self, column: str) -> tuple[list[float], list[float] | None]:
        """The heights of ``column``'s bars (NaN where not measured) and their error bars: the
        column's ``_std`` over repeats where the rows have one (validity), else None."""
        heights = [float(r[column]) if isinstance(r.get(column), (int, float)) else math.nan for r in self.rows]
        stds = [r.get(f"{column}_std") for r in self.rows]
        errors = [float(s) if isinstance(s, (int, float)) else 0.0 for s in stds] if any(s is not None for s in stds) else None
        return heights, errors


def compare_saes(
    model,
    dataset,
    saes: list,
    names: list[str] | None = None,
    n_samples: int = 128,
    repeats: int = 3,
    max_sentences: int = 200,
    n_pairs: int = 1000,
    *,
    allow_other_model: bool = False,
) -> SAEComparison:
    """Compare SAEs (objects or SAE directories) on the same model and dataset; see the module docstring.

    ``n_pairs`` held-out token pairs are drawn (seed 0) from a seeded sample of
    ``max_sentences`` test sentences, once for all the SAEs.

    Every SAE is checked first, before any work: one trained on another model is refused unless
    ``allow_other_model`` (`check_sae_model`).
    """
    loaded = [load_sae(item) if isinstance(item, (str, os.PathLike)) else item for item in saes]
    labels = [
        names[k] if names else (Path(item).name if isinstance(item, (str, os.PathLike)) else f"sae{k}")
        for k, item in enumerate(saes)
    ]
    for name, sae in zip(labels, loaded, strict=True):  # all before any work: a refusal should not come an hour in
        try:
            check_sae_fits(model, sae)
            check_sae_model(model, sae, allow_other_model)
        except SAEError as e:
            raise SAEError(f"{name}: {e}") from None
    pairs = held_out_pairs(model, dataset, n_pairs=n_pairs, max_sentences=max_sentences)  # one draw: every SAE, same pairs
    rows = []
    for item, sae, name in zip(saes, loaded, labels, strict=True):
        row: dict[str, Any] = {"name": name, "architecture": sae.cfg.architecture(), "d_sae": sae.cfg.d_sae}
        if isinstance(item, (str, os.PathLike)) and (Path(item) / TRAIN_CONFIG_FILE).is_file():
            row["causal"] = read_json(Path(item) / TRAIN_CONFIG_FILE).get("causal")
        # checked above: the calls below need not hash the weights again
        row.update(
            evaluate_sae(
                model, sae, dataset, n_samples=n_samples, repeats=repeats, max_sentences=max_sentences, allow_other_model=True
            )
        )
        row["causal_loss"] = held_out_causal_loss(model, sae, dataset, max_sentences=max_sentences, allow_other_model=True)
        report = analyze(model, sae, dataset, max_sentences=max_sentences, allow_other_model=True)
        row.update(coverage=report.summary["coverage"], mcc=report.summary["mcc"])
        interp = interpolation_metrics(model, sae, dataset, pairs, allow_other_model=True)
        row.update(linearity_error=interp.linearity_error, linearity_pairs=interp.n_pairs - interp.n_dropped)
        rows.append(row)
    return SAEComparison(rows)

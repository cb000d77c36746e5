"""Correlation vs causal effect of SAE latents: the paper's central comparison, for every latent.

Each latent's correlation with the ground-truth features comes from [`formal_sae.analysis.analyze`][formal_sae.analyze];
its causal effect is its single-latent ablation effect ([`formal_sae.interventions.single_latent_effects`][formal_sae.single_latent_effects]).
The report flags the two kinds of mismatch: well correlated with little effect, and effect without correlation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sae_lens import SAE
from scipy import stats

from formal_sae.analysis.report import AnalysisReport, analyze
from formal_sae.interventions.effects import single_latent_effects
from formal_sae.plotting import number, pyplot
from formal_sae.records import Record
from formal_sae.saes.evaluation import check_sae_fits, check_sae_model

#: A latent is "correlated" with a target when |Pearson| >= this, "uncorrelated" below 0.3.
CORRELATED = 0.5
UNCORRELATED = 0.3
#: Files [`CausalReport.save`][formal_sae.analysis.causal_report.CausalReport.save] writes.
REPORT_JSON, REPORT_MD, SCATTER_PNG = "report.json", "report.md", "correlation_vs_effect.png"


@dataclass(eq=False)
class LatentEffect(Record):
    """One latent: its strongest correlation with any target, its ablation effect and its flag
    (``"correlated_not_causal"``, ``"causal_not_correlated"`` or None)."""

    latent: int
    max_abs_pearson: float
    effect: float  # class total variation at the tokens where it fires
    kl: float
    n_active: int  # tokens where it fires (0: dead, never flagged)
    flag: str | None


@dataclass(eq=False)
class TargetLatent(Record):
    """One of a target's best-correlated latents, with its ranks both ways."""

    latent: int
    pearson: float
    rank_by_correlation: int
    effect: float
    kl: float
    rank_by_effect: int
    flag: str | None


@dataclass(eq=False)
class CausalSummary(Record):
    """The report's counts (the top-level keys of its ``report.json``)."""

    grammar: str
    hook_name: str
    d_sae: int
    n_live: int
    median_effect: float
    n_correlated_not_causal: int
    n_causal_not_correlated: int
    rank_agreement: float  # Spearman of max |rho| and effect over live latents (NaN with < 3)


@dataclass
class CausalReport:
    """Correlation vs causal effect of SAE latents: per target its best-correlated latents with
    their ablation effects, and flags for the two kinds of mismatch."""

    targets: dict[str, list[TargetLatent]]
    latents: list[LatentEffect]
    summary: CausalSummary

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.summary.to_dict(),
            "targets": {name: [r.to_dict() for r in rows] for name, rows in self.targets.items()},
            "latents": [r.to_dict() for r in self.latents],
        }

    def to_markdown(self) -> str:
        s = self.summary
        lines = [
            f"# Correlation vs causation: {s.grammar}, {s.d_sae}-latent SAE at `{s.hook_name}`",
            "",
            "Causal effect of a latent = mean total variation of the next-token distribution over grammar classes "
            "when the latent alone is zero-ablated (with the SAE error term), at the tokens where it fires.",
            f"High effect = at least the live latents' median ({number(s.median_effect, 2, 'e')}).",
            "",
            f"- correlated (|rho| >= {CORRELATED}) but with little effect: **{s.n_correlated_not_causal}** latents",
            f"- effect in the top decile but uncorrelated (max |rho| < {UNCORRELATED}): **{s.n_causal_not_correlated}** latents",
            f"- Spearman rank correlation between max |rho| and effect over live latents: {number(s.rank_agreement)}",
            "",
            "| target | latent | Pearson | rank by abs(rho) | effect (class TV) | KL | rank by effect | flag |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, rows in self.targets.items():
            for r in rows:
                lines.append(
                    f"| `{name}` | {r.latent} | {number(r.pearson)} | {r.rank_by_correlation} | {number(r.effect, 2, 'e')} | "
                    f"{number(r.kl, 2, 'e')} | {r.rank_by_effect} | {r.flag or ''} |"
                )
        return "\n".join(lines) + "\n"

    def save(self, out_dir, overwrite: bool = False) -> None:
        """Write ``report.json``, ``report.md`` and ``correlation_vs_effect.png`` as one artifact
        (an existing ``out_dir`` is refused unless ``overwrite``; see `formal_sae.outputs`)."""
        from formal_sae.io import atomic_write_text, write_json
        from formal_sae.outputs import output_dir

        with output_dir(out_dir, "interventions", overwrite=overwrite) as out:
            write_json(out / REPORT_JSON, self.to_dict())
            atomic_write_text(out / REPORT_MD, self.to_markdown())
            _scatter(self, out / SCATTER_PNG)


def _scatter(report: CausalReport, path) -> None:
    plt = pyplot()

    live = [r for r in report.latents if r.n_active > 0]
    colours = {"correlated_not_causal": "tab:red", "causal_not_correlated": "tab:orange", None: "tab:blue"}
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for flag, colour in colours.items():
        pts = [r for r in live if r.flag == flag]
        if pts:
            ax.scatter(
                [r.max_abs_pearson for r in pts], [max(r.effect, 1e-8) for r in pts], s=12, c=colour, label=flag or "other"
            )
    ax.set_yscale("log")
    ax.set_xlabel("max |Pearson| with any feature")
    ax.set_ylabel("ablation effect (class TV at active tokens)")
    ax.set_title(f"{report.summary.grammar}: correlation vs causal effect", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def causal_report(
    model,
    sae: SAE,
    dataset,
    analysis: AnalysisReport | None = None,
    top_k: int = 3,
    split: str = "test",
    max_sentences: int | None = 200,
    *,
    allow_other_model: bool = False,
) -> CausalReport:
    """For each feature, take its ``top_k`` best-correlated latents (from ``analysis``, computed if
    None) and measure their single-latent ablation effects; rank latents both ways and flag high
    correlation with little effect (the paper's central claim) and effect without correlation.
    An SAE trained on another model is refused unless ``allow_other_model``."""
    check_sae_fits(model, sae)
    check_sae_model(model, sae, allow_other_model)
    # checked once above: the calls below need not hash the weights again
    if analysis is None:
        analysis = analyze(model, sae, dataset, split=split, max_sentences=max_sentences, allow_other_model=True)
    eff = single_latent_effects(model, sae, dataset, split, max_sentences, allow_other_model=True)
    effect = eff.class_tv_active
    live = eff.n_active > 0
    corr = np.nan_to_num(np.abs(analysis.correlations))  # [d_sae, n_targets]
    max_corr = corr.max(axis=1)
    median = float(np.median(effect[live])) if live.any() else 0.0
    top_decile = float(np.quantile(effect[live], 0.9)) if live.any() else np.inf

    def flag(j: int) -> str | None:
        if not live[j]:
            return None
        if max_corr[j] >= CORRELATED and effect[j] < median:
            return "correlated_not_causal"
        if effect[j] >= top_decile and max_corr[j] < UNCORRELATED:
            return "causal_not_correlated"
        return None

    order_eff = {int(j): r + 1 for r, j in enumerate(np.argsort(-np.where(live, effect, -1)))}
    latents = [
        LatentEffect(j, float(max_corr[j]), float(effect[j]), float(eff.kl_active[j]), int(eff.n_active[j]), flag(j))
        for j in range(sae.cfg.d_sae)
    ]
    targets = {}
    for k, name in enumerate(analysis.target_names):
        best = [int(j) for j in np.argsort(-corr[:, k])[:top_k] if corr[j, k] > 0]
        targets[name] = [
            TargetLatent(
                latent=j,
                pearson=float(analysis.correlations[j, k]),
                rank_by_correlation=int(1 + (corr[:, k] > corr[j, k]).sum()),
                effect=float(effect[j]),
                kl=float(eff.kl_active[j]),
                rank_by_effect=order_eff[j],
                flag=flag(j),
            )
            for j in best
        ]
    rank_agreement = float(stats.spearmanr(max_corr[live], effect[live]).statistic) if live.sum() > 2 else float("nan")
    summary = CausalSummary(
        grammar=analysis.summary.grammar,
        hook_name=analysis.summary.hook_name,
        d_sae=sae.cfg.d_sae,
        n_live=int(live.sum()),
        median_effect=median,
        n_correlated_not_causal=sum(r.flag == "correlated_not_causal" for r in latents),
        n_causal_not_correlated=sum(r.flag == "causal_not_correlated" for r in latents),
        rank_agreement=rank_agreement,
    )
    return CausalReport(targets=targets, latents=latents, summary=summary)

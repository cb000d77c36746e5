"""``analyze``: which latents track which ground-truth features, as a report.

Targets are the grammar's features made comparable with latents: a binary or ordinal feature is
one target; a categorical feature becomes one binary target per category (``pos=noun``). Choices
that could overfit (the best latent of a target, a detector's threshold) are made on the
``selection_split`` (validation) and scored on ``split`` (test).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import datasets
import numpy as np
from sae_lens import SAE
from transformer_lens import HookedTransformer

from formal_sae.analysis.aligned import AlignedLatents, collect_aligned
from formal_sae.analysis.metrics import (
    THRESHOLD_FRACTIONS,
    abs_cosines,
    absorption_gap,
    auroc,
    detector_scores,
    mcc,
    mmcs,
    pearson,
    probe_directions,
    ranks,
    threshold_f1,
)
from formal_sae.data import dataset_metadata, token_strings
from formal_sae.errors import DatasetError, FormalSAEError
from formal_sae.grammars import ABSORPTION_PAIRS, NESTING, feature_for
from formal_sae.io import atomic_write_text, write_json
from formal_sae.models import model_data
from formal_sae.outputs import output_dir
from formal_sae.plotting import MISSING, number
from formal_sae.records import Record
from formal_sae.saes.evaluation import check_sae_fits, check_sae_model

#: Files [`AnalysisReport.save`][formal_sae.analysis.report.AnalysisReport.save] writes (and a depth heatmap, `depth_png`, for grammars with depth).
REPORT_JSON, REPORT_MD = "report.json", "report.md"
CORRELATIONS_PNG, TOP_ACTIVATIONS_HTML = "correlations.png", "top_activations.html"

#: Latents firing on more than this fraction of tokens are reported as dense.
DENSE_FIRING = 0.5
#: Default parent/child pairs for the absorption gap, per feature set (applied when present).
DEFAULT_PAIRS: list[tuple[str, str]] = ABSORPTION_PAIRS  # declared by each language, with its grammar


@dataclass
class Target:
    name: str
    kind: str  # "binary" or "ordinal"
    values: np.ndarray


def feature_expression(aligned: AlignedLatents, expression: str) -> np.ndarray:
    """Boolean mask of tokens matching ``"feat=value&feat=value"`` (categorical values by name)."""
    mask = np.ones(aligned.n_tokens, dtype=bool)
    for clause in expression.split("&"):
        name, _, value = clause.partition("=")
        spec = aligned.specs.get(name.strip())
        if spec is None:
            raise FormalSAEError(f"unknown feature {name.strip()!r} in {expression!r}; features are: {', '.join(aligned.specs)}")
        value = value.strip()
        if spec.kind == "categorical":
            if value not in spec.categories:
                raise FormalSAEError(f"feature {spec.name!r} has no category {value!r}; categories: {', '.join(spec.categories)}")
            code = spec.categories.index(value)
        else:
            try:
                code = int(value)
            except ValueError:
                raise FormalSAEError(f"feature {spec.name!r} is {spec.kind}: compare it with an integer, not {value!r}") from None
        mask &= aligned.features[spec.name] == code
    return mask


def targets_of(aligned: AlignedLatents, features: list[str] | None = None) -> list[Target]:
    """Targets for the chosen features (all by default); categories never seen are skipped."""
    names = list(aligned.specs) if features is None else features
    unknown = [n for n in names if n not in aligned.specs]
    if unknown:
        raise FormalSAEError(f"unknown feature(s) {unknown}; the dataset's features are: {', '.join(aligned.specs)}")
    out = []
    for name in names:
        spec, values = aligned.specs[name], aligned.features[name]
        if spec.kind == "categorical":
            for code, cat in enumerate(spec.categories):
                if (values == code).any() and not (values == code).all():
                    out.append(Target(f"{name}={cat}", "binary", (values == code).astype(np.int64)))
        else:
            out.append(Target(name, spec.kind, values))
    return out


@dataclass
class _SplitScores:
    pearson: np.ndarray  # [d_sae, n_targets]
    auroc: np.ndarray  # [d_sae, n_targets] (NaN for ordinal targets)
    spearman: np.ndarray  # [d_sae, n_targets] (NaN for binary targets)
    f1: np.ndarray  # [n_fractions, d_sae, n_targets] (0 for ordinal targets)
    thresholds: np.ndarray  # [n_fractions, d_sae]


def _chunk_size(n_tokens: int) -> int:
    return int(max(1, min(256, 2e7 // max(n_tokens, 1))))


def score_latents(aligned: AlignedLatents, targets: list[Target]) -> _SplitScores:
    """All per-(latent, target) scores, computed chunk by chunk over latents."""
    y = np.stack([t.values for t in targets], axis=1)
    binary = np.array([t.kind == "binary" for t in targets])
    n_t, d = len(targets), aligned.d_sae
    out = _SplitScores(
        pearson=np.full((d, n_t), np.nan),
        auroc=np.full((d, n_t), np.nan),
        spearman=np.full((d, n_t), np.nan),
        f1=np.zeros((len(THRESHOLD_FRACTIONS), d, n_t)),
        thresholds=np.zeros((len(THRESHOLD_FRACTIONS), d)),
    )
    y_ranks = ranks(y)
    for start, chunk in aligned.chunks(_chunk_size(aligned.n_tokens)):
        sl = slice(start, start + chunk.shape[1])
        r = ranks(chunk)
        out.pearson[sl] = pearson(chunk, y)
        out.spearman[sl][:, ~binary] = pearson(r, y_ranks[:, ~binary])
        if binary.any():
            out.auroc[sl][:, binary] = auroc(chunk, y[:, binary], latent_ranks=r)
            f1, thr = threshold_f1(chunk, y[:, binary])
            out.f1[:, sl][:, :, binary] = f1
            out.thresholds[:, sl] = thr
    return out


def _nan_argmax(x: np.ndarray) -> int:
    return int(np.nanargmax(x)) if np.isfinite(x).any() else 0


def _signed_auroc(auroc: float, rho: float) -> float:
    return 1.0 - auroc if rho is not None and rho < 0 else auroc


def _clean(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


@dataclass(eq=False)
class TargetScores(Record):
    """How well the latents track one target (``report.json``'s ``features[<target>]``).

    ``best_latent`` is chosen on the selection split by |Pearson|; its scores are on the report
    split. The detector fields (``f1`` ... ``threshold``) are those of the best F1 detector (any
    latent, threshold chosen on the selection split) and None for ordinal targets.
    """

    _keys: ClassVar[dict[str, str]] = {"n_latents_abs_rho_ge_0_9": "n_latents_abs_rho_ge_0.9"}

    kind: str  # "binary" or "ordinal"
    best_latent: int
    pearson: float | None
    spearman: float | None  # ordinal targets only
    auroc: float | None  # binary targets only, of the latent's flipped sign when it correlates negatively
    auroc_sign: int | None  # -1 when the AUROC is of the flipped sign, 1 otherwise; None for ordinal targets
    f1: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1_latent: int | None = None
    threshold: float | None = None
    n_latents_abs_rho_ge_0_9: int = 0  # latents with |Pearson| >= 0.9 on the report split
    probe_cosine: float = 0.0  # |cosine| of the best latent's decoder row and the target's probe direction


@dataclass(eq=False)
class AbsorptionGap(Record):
    """One parent/child pair's absorption gap (``report.json``'s ``absorption`` rows)."""

    parent: str
    child: str
    parent_latent: int  # the parent's best F1 detector on the selection split
    gap: float | None
    p_fire_parent_only: float | None
    p_fire_parent_and_child: float | None


@dataclass(eq=False)
class AnalysisSummary(Record):
    """The report's global scores (the top-level keys of ``report.json``)."""

    grammar: str
    hook_name: str
    sae_architecture: str
    d_sae: int
    split: str
    selection_split: str
    n_tokens: int
    coverage: float | None  # mean best-detector F1 over binary targets
    mcc: float
    mmcs: float
    mcc_targets: int  # distinct probe directions matched
    dead_fraction: float
    dense_fraction: float  # latents firing on more than DENSE_FIRING of tokens


@dataclass
class AnalysisReport:
    """Result of [`analyze`][formal_sae.analyze]: per-target scores, global scores and what is needed for figures."""

    targets: dict[str, TargetScores]
    summary: AnalysisSummary
    absorption: list[AbsorptionGap]
    correlations: np.ndarray = field(repr=False)  # [d_sae, n_targets] Pearson on the report split
    target_names: list[str] = field(repr=False)
    aligned: AlignedLatents = field(repr=False)
    token_names: list[str] = field(repr=False)  # token id -> token string

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": {name: t.to_dict() for name, t in self.targets.items()},
            **self.summary.to_dict(),
            "absorption": [a.to_dict() for a in self.absorption],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        s = self.summary
        lines = [
            f"# Latents vs ground-truth features: {s['grammar']}, {s['sae_architecture']} SAE ({s['d_sae']} latents) at `{s['hook_name']}`",
            "",
            f"{s['n_tokens']} sentence tokens of the {s['split']} split; best latents and thresholds chosen on {s['selection_split']}.",
            "",
            f"- coverage (mean best-latent F1 over binary targets): **{number(s['coverage'])}**",
            f"- MCC / MMCS: mean best |cosine| between decoder rows and the linear-probe directions of the "
            f"{s.get('mcc_targets', '?')} distinct targets (one-to-one matched / each target's best row): "
            f"**{number(s['mcc'])}** / {number(s['mmcs'])}",
            f"- dead latents: {number(s['dead_fraction'])}, dense latents (> {DENSE_FIRING:.0%} of tokens): {number(s['dense_fraction'])}",
            "",
            "| target | kind | best latent | Pearson | Spearman | AUROC (− : of the latent's flipped sign) | F1 (its own latent, P, R) | #latents abs(rho) >= 0.9 | probe cos |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, t in self.targets.items():
            f1 = MISSING if t.f1 is None else f"{t.f1:.3f} ({t.f1_latent}, {t.precision:.2f}, {t.recall:.2f})"
            lines.append(
                f"| `{name}` | {t.kind} | {t.best_latent} | {number(t.pearson)} | {number(t.spearman)} | "
                f"{number(t.auroc)}{' (−)' if t.auroc_sign == -1 else ''} | {f1} | {t.n_latents_abs_rho_ge_0_9} | {number(t.probe_cosine)} |"
            )
        if self.absorption:
            lines += [
                "",
                "## Absorption",
                "",
                "| parent | child | parent latent | gap | P(fire \\| parent, not child) | P(fire \\| parent, child) |",
                "|---|---|---|---|---|---|",
            ]
            for a in self.absorption:
                lines.append(
                    f"| `{a.parent}` | `{a.child}` | {a.parent_latent} | {number(a.gap)} | {number(a.p_fire_parent_only)} | {number(a.p_fire_parent_and_child)} |"
                )
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | os.PathLike, sentences: int = 10, overwrite: bool = False) -> Path:
        """Write ``report.json``, ``report.md`` and the figures into ``out_dir`` as one artifact (an
        existing ``out_dir`` is refused unless ``overwrite``; see `formal_sae.outputs`)."""
        with output_dir(out_dir, "analysis", overwrite=overwrite) as out:
            self._write(out, sentences)
        return Path(out_dir)

    def _write(self, out: Path, sentences: int) -> None:
        from formal_sae.analysis import plots

        write_json(out / REPORT_JSON, self.to_dict())
        atomic_write_text(out / REPORT_MD, self.to_markdown())
        plots.correlation_heatmap(self, out / CORRELATIONS_PNG)
        depth = feature_for(NESTING, [s for s in self.aligned.specs.values() if s.name in self.targets])
        if depth is not None:
            best = self.targets[depth].best_latent
            plots.depth_heatmap(self, best, out / depth_png(best), depth_feature=depth)
        latents = sorted({t.best_latent for t in self.targets.values()})[:12]
        atomic_write_text(out / TOP_ACTIVATIONS_HTML, plots.top_activations_html(self, latents, sentences))


def depth_png(latent: int) -> str:
    """Name of the depth heatmap of ``latent`` that [`AnalysisReport.save`][formal_sae.analysis.report.AnalysisReport.save] writes."""
    return f"depth_latent{latent}.png"


def analyze(
    model: HookedTransformer,
    sae: SAE,
    dataset: datasets.DatasetDict,
    split: str = "test",
    selection_split: str = "validation",
    features: list[str] | None = None,
    pairs: list[tuple[str, str]] | None = None,
    max_sentences: int | None = 2000,
    *,
    allow_other_model: bool = False,
) -> AnalysisReport:
    """Score every latent of ``sae`` against every ground-truth feature of ``dataset``.

    Args:
        model: The formal-sae model the SAE was trained on.
        sae: A SAELens SAE (``sae.cfg.metadata.hook_name`` names its hook).
        dataset: The model's dataset (same grammar as the model).
        split: Split the scores are reported on.
        selection_split: Split used to choose best latents and detector thresholds.
        features: Feature names to analyse (default: all).
        pairs: ``(parent, child)`` feature expressions for absorption gaps, e.g.
            ``("pos=conj", "pos=conj&in_subject=0")``; defaults to `DEFAULT_PAIRS` that apply.
        max_sentences: Sentences per split (bounds time and memory).
        allow_other_model: Analyse an SAE trained on another model (refused by default: its
            latents mean nothing there; see `check_sae_model`).
    """
    check_sae_fits(model, sae)
    check_sae_model(model, sae, allow_other_model)
    meta = dataset_metadata(dataset)
    trained_on = model_data(model)
    if trained_on is not None and trained_on.grammar_text != meta.grammar_text:
        raise DatasetError(
            f"the dataset is from grammar {meta.grammar!r} but the model was trained on {trained_on.grammar!r}; use the model's dataset"
        )
    for name in (split, selection_split):
        if name not in dataset or len(dataset[name]) == 0:
            raise DatasetError(f"the dataset split {name!r} is empty or missing; generate it with sentences")
    test = collect_aligned(model, sae, dataset[split], max_sentences)
    val = collect_aligned(model, sae, dataset[selection_split], max_sentences)
    targets = targets_of(test, features)
    val_targets = {t.name: t for t in targets_of(val, features)}
    shared = [t for t in targets if t.name in val_targets]
    if not shared:
        raise FormalSAEError(
            f"no feature to analyse in both {split!r} and {selection_split!r}; choose features among: {', '.join(test.specs)}"
        )
    test_scores = score_latents(test, shared)
    val_scores = score_latents(val, [val_targets[t.name] for t in shared])
    decoder = sae.W_dec.detach().float().cpu().numpy()
    probes = probe_directions(test.acts.numpy(), np.stack([t.values for t in shared], axis=1))
    cos = abs_cosines(decoder, probes)
    # MCC counts each ground-truth direction once: targets with identical values on these tokens
    # (English pos=noun and preterminal=N) are one feature
    _, distinct = np.unique(np.stack([t.values for t in shared]), axis=0, return_index=True)
    distinct_probes = probes[np.sort(distinct)]
    firing = test.firing_counts() / test.n_tokens
    per_target: dict[str, TargetScores] = {}
    for k, t in enumerate(shared):
        best = _nan_argmax(np.abs(val_scores.pearson[:, k]))
        binary = t.kind == "binary"
        entry = TargetScores(
            kind=t.kind,
            best_latent=best,
            pearson=_clean(test_scores.pearson[best, k]),
            spearman=_clean(test_scores.spearman[best, k]) if t.kind == "ordinal" else None,
            # a negatively correlated latent detects the feature by being low: score its flipped direction
            auroc=_clean(_signed_auroc(test_scores.auroc[best, k], test_scores.pearson[best, k])) if binary else None,
            auroc_sign=(-1 if (test_scores.pearson[best, k] or 0) < 0 else 1) if binary else None,
            n_latents_abs_rho_ge_0_9=int(np.nansum(np.abs(test_scores.pearson[:, k]) >= 0.9)),
            probe_cosine=float(cos[best, k]),
        )
        if binary:
            frac, latent = np.unravel_index(np.argmax(val_scores.f1[:, :, k]), val_scores.f1[:, :, k].shape)
            entry.threshold = float(val_scores.thresholds[frac, latent])
            p, r, f = detector_scores((test.latent(int(latent)) > entry.threshold)[:, None], t.values[:, None])
            entry.f1, entry.precision, entry.recall = float(f[0, 0]), float(p[0, 0]), float(r[0, 0])
            entry.f1_latent = int(latent)
        per_target[t.name] = entry
    f1s = [e.f1 for e in per_target.values() if e.f1 is not None]
    summary = AnalysisSummary(
        grammar=meta.grammar,
        hook_name=sae.cfg.metadata.hook_name,
        sae_architecture=sae.cfg.architecture(),
        d_sae=sae.cfg.d_sae,
        split=split,
        selection_split=selection_split,
        n_tokens=test.n_tokens,
        coverage=float(np.mean(f1s)) if f1s else None,
        mcc=mcc(decoder, distinct_probes),
        mmcs=mmcs(decoder, distinct_probes),
        mcc_targets=len(distinct_probes),
        dead_fraction=float((firing == 0).mean()),
        dense_fraction=float((firing > DENSE_FIRING).mean()),
    )
    return AnalysisReport(
        targets=per_target,
        summary=summary,
        absorption=_absorption(test, val, val_scores, [t.name for t in shared], pairs),
        correlations=test_scores.pearson,
        target_names=[t.name for t in shared],
        aligned=test,
        token_names=token_strings(model.tokenizer),
    )


def _absorption(
    test: AlignedLatents, val: AlignedLatents, val_scores: _SplitScores, names: list[str], pairs
) -> list[AbsorptionGap]:
    """Absorption gaps; the parent's latent and threshold are its best F1 detector on validation."""
    explicit = pairs is not None
    out = []
    for parent, child in pairs if explicit else DEFAULT_PAIRS:
        try:
            parent_val = feature_expression(val, parent)
            parent_mask, child_mask = feature_expression(test, parent), feature_expression(test, child)
        except FormalSAEError:
            if explicit:
                raise
            continue  # a default pair for another grammar
        if not parent_val.any() or not parent_mask.any():
            continue
        f1, thresholds = threshold_f1_single(val, parent_val)
        frac, latent = np.unravel_index(np.argmax(f1), f1.shape)
        fires = test.latent(int(latent)) > thresholds[frac, latent]
        gap, p_only, p_both = absorption_gap(fires, parent_mask, child_mask)
        out.append(AbsorptionGap(parent, child, int(latent), _clean(gap), _clean(p_only), _clean(p_both)))
    return out


def threshold_f1_single(aligned: AlignedLatents, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[n_fractions, d_sae]`` F1 of every latent's detectors for one binary target, and thresholds."""
    f1s, thresholds = [], []
    for _, chunk in aligned.chunks(_chunk_size(aligned.n_tokens)):
        f1, thr = threshold_f1(chunk, target[:, None])
        f1s.append(f1[:, :, 0])
        thresholds.append(thr)
    return np.concatenate(f1s, axis=1), np.concatenate(thresholds, axis=1)

"""``score_sae``: one SAE (or baseline dictionary) on one language, as a [`BenchScore`][formal_sae.bench.BenchScore].

Three measurements, each by the package's own public function (definitions: `formal_sae.bench.score`):

1. fidelity and sparsity, by `formal_sae.evaluate_sae` on the test split, unless the caller already
   has them (a sweep evaluated the SAE and wrote its ``metrics.json``);
2. ground truth, by `formal_sae.analyze`: each feature's best-latent score, averaged separately over
   structural features (a function of the context) and lexical ones (a function of the token
   alone, `formal_sae.feature_role`), since the lexical ones are nearly free for any dictionary;
3. causality, by `formal_sae.feature_interventions` on each structural feature whose latent reaches
   ``settings.causal_bar``: clamping that latent should move the model's predictions towards what
   the feature predicts, further than clamping matched random latents does;
4. causal dynamics, as claim C4 measures them: `formal_sae.interpolation_metrics` on held-out
   token pairs and `formal_sae.effect_predictability` of every structural feature's latent, on
   ``settings.intervention_sentences`` test sentences.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import datasets
import numpy as np
from sae_lens import SAE
from transformer_lens import HookedTransformer

from formal_sae import (
    LEXICAL,
    STRUCTURAL,
    AnalysisReport,
    FormalSAEError,
    SAEMetrics,
    analyze,
    dataset_metadata,
    effect_predictability,
    evaluate_sae,
    feature_interventions,
    feature_role,
    held_out_pairs,
    interpolation_metrics,
    predictability_summary,
    targets_of,
)
from formal_sae.bench.config import ScoringSettings
from formal_sae.bench.score import BenchScore

#: The fidelity and sparsity measures `score_sae` takes from `evaluate_sae` (or from ``fidelity=``).
FIDELITY_KEYS = ("explained_variance", "ce_loss_score", "kl_div_score", "l0", "dead_fraction")

#: `feature_interventions` errors after which a feature is left out of the causal scores rather
#: than failing the whole score: a narrow or mostly dead SAE has too few live latents for matched
#: null groups, and a rare feature can lack low or high tokens in the intervention sentences.
SKIPPED_INTERVENTIONS = ("too few", "no high and low tokens")


def score_sae(
    model: HookedTransformer,
    sae: SAE,
    dataset: datasets.DatasetDict,
    settings: ScoringSettings | None = None,
    *,
    sae_id: str,
    architecture: str,
    family: str,
    expansion_factor: float | None = None,
    l0_target: float | None = None,
    seed: int | None = None,
    fidelity: SAEMetrics | Mapping[str, Any] | None = None,
    allow_other_model: bool = False,
) -> BenchScore:
    """Every benchmark score of ``sae`` on ``dataset`` (the model's language).

    Args:
        model: The formal-sae model the SAE reads.
        sae: A SAELens SAE (``sae.cfg.metadata.hook_name`` names its hook) or a baseline dictionary
            in SAE form.
        dataset: The model's dataset; scores are on its test split (latents chosen on validation).
        settings: How much to measure (default: `ScoringSettings()`).
        sae_id, architecture, family, expansion_factor, l0_target, seed: What the SAE is, copied
            into the score (see `BenchScore`).
        fidelity: The SAE's `evaluate_sae` metrics (an `SAEMetrics` or its ``metrics.json`` dict),
            used as they are instead of evaluating again; they must hold `FIDELITY_KEYS`
            (``validity`` is optional).
        allow_other_model: Score an SAE trained on another model (refused by default).
    """
    settings = settings or ScoringSettings()
    start = time.perf_counter()
    if fidelity is None:
        fidelity = evaluate_sae(
            model, sae, dataset, max_sentences=settings.max_sentences, validity=settings.validity_samples > 0,
            n_samples=settings.validity_samples, repeats=settings.validity_repeats, seed=settings.seed,
            allow_other_model=allow_other_model,
        )  # fmt: skip
    missing = [k for k in FIDELITY_KEYS if k not in fidelity]
    if missing:
        raise FormalSAEError(f"the fidelity metrics given lack {', '.join(missing)}; pass evaluate_sae's metrics")
    report = analyze(model, sae, dataset, max_sentences=settings.max_sentences, allow_other_model=allow_other_model)
    scores, roles = feature_scores(report), feature_roles(report)
    gap_closure, not_causal_rate, n_causal = _causal(model, sae, dataset, report, scores, roles, settings, allow_other_model)
    gaps = [a.gap for a in report.absorption if a.gap is not None]
    pairs = held_out_pairs(model, dataset, max_sentences=settings.intervention_sentences, seed=settings.seed)
    interpolation = interpolation_metrics(model, sae, dataset, pairs, allow_other_model=allow_other_model)
    structural = {name: _scored_latent(report, name) for name in scores if roles.get(name) == STRUCTURAL}
    predictability = effect_predictability(
        model, sae, dataset, structural, max_sentences=settings.intervention_sentences, seed=settings.seed,
        allow_other_model=allow_other_model,
    )  # fmt: skip
    return BenchScore(
        sae_id=sae_id,
        grammar=dataset_metadata(dataset).grammar,
        hook_name=sae.cfg.metadata.hook_name,
        architecture=architecture,
        family=family,
        d_sae=int(sae.cfg.d_sae),
        expansion_factor=float(expansion_factor) if expansion_factor is not None else sae.cfg.d_sae / sae.cfg.d_in,
        l0_target=l0_target,
        seed=seed,
        **{k: None if fidelity[k] is None else float(fidelity[k]) for k in FIDELITY_KEYS},  # NaN is saved as null
        dense_fraction=report.summary.dense_fraction,
        structural_score=_mean_of_role(scores, roles, STRUCTURAL),
        lexical_score=_mean_of_role(scores, roles, LEXICAL),
        coverage=report.summary.coverage,
        mcc=report.summary.mcc,
        absorption=float(np.mean(gaps)) if gaps else None,
        gap_closure=gap_closure,
        not_causal_rate=not_causal_rate,
        n_causal_features=n_causal,
        feature_scores=scores,
        validity=None if fidelity.get("validity") is None else float(fidelity["validity"]),
        causal_loss=_finite(interpolation.causal_loss),
        linearity_error=interpolation.linearity_error,
        predictability=predictability_summary(predictability.values()),
        seconds=time.perf_counter() - start,
    )


def _finite(value: float) -> float | None:
    """None for NaN (no pair measured), so the score's JSON holds null rather than NaN."""
    return value if math.isfinite(value) else None


def feature_scores(report: AnalysisReport) -> dict[str, float]:
    """Per target of the report, its best latent's test score: |Pearson| for an ordinal target, the
    best detector's F1 for a binary one (0 where undefined, e.g. a dead best latent)."""
    return {name: abs(t.pearson or 0.0) if t.kind == "ordinal" else float(t.f1 or 0.0) for name, t in report.targets.items()}


def feature_roles(report: AnalysisReport) -> dict[str, str]:
    """Per target of the report, `STRUCTURAL` or `LEXICAL` (`formal_sae.feature_role` on the test tokens)."""
    values = {t.name: t.values for t in targets_of(report.aligned)}
    return {name: feature_role(report.aligned.token_ids, values[name]) for name in report.targets if name in values}


def _mean_of_role(scores: dict[str, float], roles: dict[str, str], role: str) -> float | None:
    """Mean score over the targets of ``role``; None if there are none."""
    chosen = [s for name, s in scores.items() if roles.get(name) == role]
    return float(np.mean(chosen)) if chosen else None


def _scored_latent(report: AnalysisReport, name: str) -> int:
    """The latent whose score is the target's: the best F1 detector of a binary target, the best
    |Pearson| latent of an ordinal one."""
    t = report.targets[name]
    return t.f1_latent if t.kind == "binary" and t.f1_latent is not None else t.best_latent


def _causal(
    model, sae, dataset, report: AnalysisReport, scores, roles, settings: ScoringSettings, allow_other_model: bool
) -> tuple[float | None, float | None, int]:
    """``(gap_closure, not_causal_rate, n_features)`` of clamping each qualifying structural
    feature's latent; a clamp is "not causal" when it closes no more of the gap than the upper end
    of its matched null's 95% interval. Features with no gap to close (NaN) count in neither mean."""
    closures, not_causal, n = [], [], 0
    for name, score in scores.items():
        if roles.get(name) != STRUCTURAL or score < settings.causal_bar:
            continue
        try:
            r = feature_interventions(
                model, sae, dataset, name, [_scored_latent(report, name)], n_null=settings.n_null,
                max_sentences=settings.intervention_sentences, seed=settings.seed, allow_other_model=allow_other_model,
            )  # fmt: skip
        except FormalSAEError as e:
            if not any(reason in str(e) for reason in SKIPPED_INTERVENTIONS):
                raise
            continue
        n += 1
        if math.isfinite(r.clamp.gap_closure):
            closures.append(r.clamp.gap_closure)
            not_causal.append(r.clamp.gap_closure <= r.null_clamp.interval_95[1])
    if not closures:
        return None, None, n
    return float(np.mean(closures)), float(np.mean(not_causal)), n

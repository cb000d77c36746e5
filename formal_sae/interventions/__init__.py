"""Interventions on SAE latents and their causal effect on what the model does (PAPER.md §7).

* :mod:`~formal_sae.interventions.edits`: what to edit (:class:`Intervention`, the mode table) and the hooks that do it;
* :mod:`~formal_sae.interventions.effects`: effects on next-token distributions, grammar classes and generations;
* :mod:`~formal_sae.interventions.feature_effects`: claim C3's measurements for one feature (clamp gap
  closure, group ablation, matched null, probe control).

The correlation-vs-effect report lives beside the analysis (:mod:`formal_sae.analysis.causal_report`);
its names are re-exported here lazily, so that this package never imports the analysis.
"""

from __future__ import annotations

import importlib
from typing import Any

from formal_sae.interventions.edits import (
    EDITS,
    MODES,
    Intervention,
    Mode,
    intervention_hooks,
    latent_ranges,
    run_intervened,
    source_latents,
)
from formal_sae.interventions.effects import (
    DistributionShift,
    GenerationComparison,
    GroupClassProbs,
    LatentEffects,
    NextTokenEffects,
    ResultDict,
    ShiftStat,
    ValidityTest,
    compare_generations,
    distribution_shift,
    effects_loop_baseline,
    next_token_effects,
    single_latent_effects,
    token_classes,
)
from formal_sae.interventions.feature_effects import (
    AblationEffect,
    FeatureInterventions,
    GapClosure,
    NullDistribution,
    feature_interventions,
    matched_null_groups,
)

_FROM_ANALYSIS = ("CORRELATED", "UNCORRELATED", "CausalReport", "causal_report")


def __getattr__(name: str) -> Any:
    # Imported on first use: the report depends on this package, never the other way round.
    if name in _FROM_ANALYSIS:
        return getattr(importlib.import_module("formal_sae.analysis.causal_report"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CORRELATED",
    "EDITS",
    "MODES",
    "UNCORRELATED",
    "AblationEffect",
    "CausalReport",
    "DistributionShift",
    "FeatureInterventions",
    "GapClosure",
    "GenerationComparison",
    "GroupClassProbs",
    "Intervention",
    "LatentEffects",
    "Mode",
    "NextTokenEffects",
    "NullDistribution",
    "ResultDict",
    "ShiftStat",
    "ValidityTest",
    "causal_report",
    "compare_generations",
    "distribution_shift",
    "effects_loop_baseline",
    "feature_interventions",
    "intervention_hooks",
    "latent_ranges",
    "matched_null_groups",
    "next_token_effects",
    "run_intervened",
    "single_latent_effects",
    "source_latents",
    "token_classes",
]

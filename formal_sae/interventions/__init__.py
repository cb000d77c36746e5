"""Interventions on SAE latents and their causal effect on what the model does ([The paper: interventions][paper-interventions]).

* `edits`: what to edit ([`Intervention`][formal_sae.Intervention], the mode table) and the hooks that do it;
* `effects`: effects on next-token distributions, grammar classes and generations;
* `feature_effects`: claim C3's measurements for one feature (clamp gap
  closure, group ablation, matched null, probe control).

The correlation-vs-effect report lives above both, in `formal_sae.analysis.causal_report`
(``formal_sae.CausalReport``, ``formal_sae.causal_report``): this package never imports the analysis.
"""

from __future__ import annotations

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

__all__ = [
    "EDITS",
    "MODES",
    "AblationEffect",
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

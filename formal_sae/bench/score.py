"""What the benchmark measures of one SAE or baseline on one language: `BenchScore`.

Every score is a plain number of one SAE; floors, ceilings, seeds and intervals are the
leaderboard's (`formal_sae.bench.leaderboard`). Definitions:

* fidelity: `formal_sae.evaluate_sae` on the test split (explained variance, SAELens's CE-loss and
  KL scores, validity with the SAE spliced in);
* sparsity: L0, dead (never fires on the test split) and dense (fires on more than half of its
  tokens) fractions;
* ground truth (`formal_sae.analyze`, latents chosen on the validation split, scored on test):
  per feature the best latent's score, |Pearson| for ordinal features and F1 for binary ones;
  their means over the grammar's structural and lexical features; coverage (mean best F1 over
  binary features); MCC between decoder rows and the features' probe directions; absorption
  (mean gap over the grammar's parent/child pairs; lower is better);
* causal (`formal_sae.feature_interventions`, structural features whose best latent reaches
  ``causal_bar``): the mean gap closure of clamping that latent to the feature's value, and the
  fraction of those latents whose clamp is within the 95% interval of matched random latents
  (correlated but not causal);
* causal dynamics, the measures of the causal loss on held-out token pairs
  (`formal_sae.interpolation_metrics`: the paper's causal loss and the linearity error of the output
  along an interpolation of two tokens' latents) and the predictability of each structural
  feature's latent (`formal_sae.effect_predictability`, summarised by
  `formal_sae.predictability_summary`: does the natural data predict what clamping it does?).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from formal_sae.records import Record

#: What a scored dictionary is: a trained SAE, the untrained floor, a basis baseline, the probe ceiling.
FAMILIES = ("sae", "floor", "baseline", "ceiling")


@dataclass(eq=False)
class BenchScore(Record):
    """One SAE's (or baseline's) scores on one language; the ``formal_sae`` block of its JSON."""

    _optional: ClassVar[tuple[str, ...]] = ("validity", "saelens_explained_variance", "saelens_ce_loss_score")

    sae_id: str
    """the panel cell's id, or the baseline's name"""
    grammar: str
    hook_name: str
    architecture: str
    """SAELens architecture, 'paper', 'causal', or the baseline's kind ('pca', 'residual_basis', 'probe', 'untrained')"""
    family: str
    """one of FAMILIES"""
    d_sae: int
    expansion_factor: float
    l0_target: float | None
    seed: int | None
    explained_variance: float | None
    ce_loss_score: float | None
    """None where undefined (NaN: e.g. zero ablation no worse than the clean model)"""
    kl_div_score: float | None
    l0: float
    dead_fraction: float
    dense_fraction: float
    structural_score: float | None
    lexical_score: float | None
    coverage: float | None
    mcc: float
    absorption: float | None
    gap_closure: float | None
    not_causal_rate: float | None
    n_causal_features: int
    feature_scores: dict[str, float] = field(default_factory=dict)
    """per feature, the best latent's |Pearson| (ordinal) or F1 (binary)"""
    validity: float | None = None
    causal_loss: float | None = None
    """the paper's causal loss on held-out pairs (mean squared logit error; lower is better)"""
    linearity_error: float | None = None
    """how far the output bends along an interpolation of two tokens' latents, relative to its
    endpoints' distance (0: linear; lower is better); None if no pair's endpoints differ"""
    predictability: float | None = None
    """median over the structural features' latents of the correlation between the class shifts
    the natural data predicts for a clamp and those it causes; None if no clamp moves anything"""
    seconds: float = 0.0
    """wall seconds of scoring"""
    saelens_explained_variance: float | None = None
    """trained SAEs: the same measure by SAELens's own ``run_evals`` (`formal_sae.bench.saelens_evals`)"""
    saelens_ce_loss_score: float | None = None
    """trained SAEs: SAELens's CE-loss score on the same tokens"""

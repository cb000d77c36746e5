"""The evidence each claim is judged on, per language, as typed records.

The stages of the study (`formal_sae.reproduce.stages`) measure these; the claims
([`formal_sae.reproduce.claims`][formal_sae.reproduce.claims]) read nothing else, so a verdict can be tested on synthetic
evidence. Every number that is evidence carries its uncertainty (an interval or a standard error).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

Interval = tuple[float, float]


def _from_dict(cls, d: dict[str, Any]):
    """Rebuild a dataclass (and the dataclasses nested in its fields) from `dataclasses.asdict` output."""
    kwargs = {}
    hints = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in d.items():
        if name not in hints:
            raise ValueError(f"{cls.__name__} has no field {name!r}")
        kwargs[name] = value
    for name, nested in _NESTED.get(cls.__name__, {}).items():
        if kwargs.get(name) is None:
            continue
        if isinstance(kwargs[name], list):
            kwargs[name] = [_from_dict(nested, v) for v in kwargs[name]]
        elif isinstance(kwargs[name], dict) and nested is not None and dataclasses.is_dataclass(nested):
            kwargs[name] = _from_dict(nested, kwargs[name])
    for name, value in kwargs.items():  # JSON has no tuples
        if isinstance(value, list) and name.endswith(("_ci", "_interval")):
            kwargs[name] = tuple(value)
    return cls(**kwargs)


class Record:
    """JSON round trip for the evidence dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return _from_dict(cls, d)


# ------------------------------------------------------------------------------ C1
@dataclass
class FeatureCorrelation(Record):
    """The best latent for one feature (chosen on the validation split, scored on test)."""

    feature: str
    role: str  # "lexical" or "structural" (formal_sae.grammars.feature_role)
    kind: str  # "ordinal" or "binary"
    latent: int
    abs_rho: float  # test |Pearson| of that latent (mean over the SAE seeds)
    abs_rho_ci: Interval  # bootstrap over sentences (95%)
    f1: float | None  # binary features: test F1 of the best detector latent
    control_abs_rho: float  # the best latent of untrained SAEs of the same architecture and width
    control_runs: list[float]  # one value per untrained SAE
    probe: float | None  # linear-probe decodability at the SAE's hook (R² or accuracy): the ceiling
    probe_embed: float | None  # the same probe at hook_embed: what the token alone gives


@dataclass
class C1Evidence(Record):
    language: str
    sane: bool
    why_not_sane: str
    n_seeds: int
    features: list[FeatureCorrelation] = field(default_factory=list)
    failed: str = ""  # the error that stopped the stage measuring it


# ------------------------------------------------------------------------------ C2
@dataclass
class Cell(Record):
    """One sweep cell, its factor levels and outcomes."""

    cell_id: str
    factors: dict[str, Any]  # family, expansion, sparsity, normalisation, pre_bias
    explained_variance: float | None
    l0: float | None
    validity: float | None
    validity_se: float | None
    validity_paper_splice: float | None  # the paper's raw splice (differs for normalised SAEs only)
    validity_paper_splice_se: float | None


@dataclass
class C2Evidence(Record):
    language: str
    cells: list[Cell] = field(default_factory=list)
    model_validity: float | None = None  # the model's own validity: no SAE can do better
    failed: str = ""


# ------------------------------------------------------------------------------ C3
@dataclass
class InterventionEvidence(Record):
    """Interventions on the latents of one structural feature with a well-correlated latent."""

    feature: str
    latents: list[int]  # the group with |rho| >= the C1 bar (the best one first)
    clamp_gap_closure: float  # interpretation-directed clamp of the best latent
    null_clamp_interval: Interval  # the same clamp on random live latents matched on firing rate and decoder norm
    group_ablation_effect: float  # TV of the next-token class distribution, the whole group ablated
    null_ablation_interval: Interval
    probe_ablation_effect: float  # positive control: the feature's probe direction projected out
    what_the_clamp_did: str  # in words, e.g. "P(closer) 0.31 -> 0.52 (target 0.61)"


@dataclass
class C3Evidence(Record):
    language: str
    sane: bool
    why_not_sane: str
    features: list[InterventionEvidence] = field(default_factory=list)
    failed: str = ""


# ------------------------------------------------------------------------------ C4
@dataclass
class SeedPair(Record):
    """Plain and causal SAE of one seed, measured on the same held-out pairs."""

    seed: int
    plain: dict[str, float | None]  # causal_loss, linearity_error, predictability, explained_variance, ce_loss_score, validity
    causal: dict[str, float | None]


@dataclass
class C4Evidence(Record):
    language: str
    pairs: list[SeedPair] = field(default_factory=list)
    why_not_tested: str = ""


_NESTED: dict[str, dict[str, Any]] = {
    "C1Evidence": {"features": FeatureCorrelation},
    "C2Evidence": {"cells": Cell},
    "C3Evidence": {"features": InterventionEvidence},
    "C4Evidence": {"pairs": SeedPair},
}

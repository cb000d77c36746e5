"""The results of [`feature_interventions`][formal_sae.feature_interventions]: per
feature, how far each edit closes the gap between source and target next-token class distributions
(`GapClosure`), single-group ablations (`AblationEffect`) against a matched null
(`NullDistribution`), together a [`FeatureInterventions`][formal_sae.FeatureInterventions]."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def tv(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation between two distributions."""
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())


# ------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class GapClosure:
    """How far an intervention moves a mean class distribution towards a reference one:
    ``gap_closure = (tv_before - tv_after) / tv_before`` (NaN when there is no gap)."""

    gap_closure: float
    tv_before: float  # TV(clean, reference)
    tv_after: float  # TV(intervened, reference)
    n_tokens: int  # tokens the distributions average over
    classes: list[str]
    clean: list[float]  # mean class distributions: clean, intervened, and the one the feature predicts
    intervened: list[float]
    reference: list[float]
    reference_name: str = "target"

    @classmethod
    def between(cls, classes: list[str], clean, new, reference, n_tokens: int, reference_name: str = "target") -> GapClosure:
        before, after = tv(clean, reference), tv(new, reference)
        value = (before - after) / before if before > 0 else float("nan")
        floats = [[float(v) for v in d] for d in (clean, new, reference)]
        return cls(value, before, after, n_tokens, list(classes), *floats, reference_name)

    def describe(self, top: int = 2) -> str:
        """The ``top`` classes that moved most, e.g. ``P(<eos>) 0.31 -> 0.12 (target 0.05)``."""
        moved = sorted(range(len(self.classes)), key=lambda k: -abs(self.intervened[k] - self.clean[k]))[:top]
        return "; ".join(
            f"P({self.classes[k]}) {self.clean[k]:.2f} -> {self.intervened[k]:.2f} ({self.reference_name} {self.reference[k]:.2f})"
            for k in moved
        )


@dataclass(frozen=True)
class AblationEffect:
    """An edit at target tokens: ``effect``, the TV between the clean and edited mean class distributions
    there; the per-token TV, averaged; and the gap closure towards the source distribution (``reverse``)."""

    effect: float
    mean_token_tv: float
    reverse: GapClosure

    @classmethod
    def from_dict(cls, d: dict) -> AblationEffect:
        return cls(d["effect"], d["mean_token_tv"], GapClosure(**d["reverse"]))


@dataclass(frozen=True)
class NullDistribution:
    """Values of one measure over the matched random groups, their mean and 95% interval."""

    values: list[float]
    mean: float
    interval_95: tuple[float, float]

    @classmethod
    def of(cls, values: Sequence[float]) -> NullDistribution:
        v = np.asarray(values, dtype=float)
        if not np.isfinite(v).any():
            return cls([float(x) for x in v], float("nan"), (float("nan"), float("nan")))
        lo, hi = np.nanpercentile(v, [2.5, 97.5])
        return cls([float(x) for x in v], float(np.nanmean(v)), (float(lo), float(hi)))

    def contains(self, x: float) -> bool:
        return bool(self.interval_95[0] <= x <= self.interval_95[1])

    @classmethod
    def from_dict(cls, d: dict) -> NullDistribution:
        return cls(list(d["values"]), d["mean"], tuple(d["interval_95"]))


@dataclass(frozen=True)
class FeatureInterventions:
    """Result of [`feature_interventions`][formal_sae.feature_interventions] for one feature and one latent or group of latents."""

    feature: str
    latents: list[int]  # the group ablated
    clamp_latents: list[int]  # the ones clamped (all of ``latents`` unless told)
    classes: list[str]  # grammar classes the distributions are over
    source_values: list[int]  # feature values of the source tokens
    target_values: list[int]
    source_distribution: list[float]  # clean mean class distribution at source tokens
    target_distribution: list[float]  # ... at target tokens: what the feature predicts
    clamp_values: list[float]  # per clamped latent: its mean activation at target tokens
    clamp: GapClosure
    group_ablation: AblationEffect
    null_groups: list[list[int]]  # latent for latent matched to ``latents``
    null_clamp: NullDistribution  # gap closures of the null groups' clamps (the partners of ``clamp_latents``)
    null_ablation: NullDistribution  # TVs of the null groups' ablations
    probe_control: AblationEffect | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FeatureInterventions:
        nested = {
            "clamp": GapClosure(**d["clamp"]),
            "group_ablation": AblationEffect.from_dict(d["group_ablation"]),
            "null_clamp": NullDistribution.from_dict(d["null_clamp"]),
            "null_ablation": NullDistribution.from_dict(d["null_ablation"]),
            "probe_control": AblationEffect.from_dict(d["probe_control"]) if d.get("probe_control") else None,
        }
        return cls(**{**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name not in nested}, **nested})


# ------------------------------------------------------------------------------ source and target tokens

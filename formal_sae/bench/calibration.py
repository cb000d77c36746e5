"""Matched sparsity: the coefficient that gives an architecture a target L0.

TopK-like architectures take their L0 as ``k``; the ones whose sparsity is a penalty coefficient
(`COEFFICIENT_ARCHITECTURES`: L1 for ``standard``/``gated``, L0 for ``jumprelu``) are compared
at the same L0 only if the coefficient is found for each target, width and model. Guessing it
from another model is how published comparisons end up comparing different sparsities, so it is
measured: short training runs, bracketing by factors of ten and then bisecting on the
coefficient's logarithm (L0 falls as the coefficient grows), each run's L0 measured on held-out
(validation) activations. Written here because SAELens has no such search (its JumpReLU
``target_l0`` steers one architecture during training, not a panel to a common L0).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from formal_sae.bench.config import COEFFICIENT_ARCHITECTURES
from formal_sae.records import Record
from formal_sae.saes import SAETrainConfig, train_sae
from formal_sae.saes.sweep.cells import quiet_saelens_progress
from formal_sae.saes.training import cache_activations

#: Where the search starts (SAELens's defaults for these coefficients).
START = 1.0
#: Widest factor searched in each direction from `START` before a target counts as unreachable.
LIMIT = 1e6
#: Validation tokens each run's L0 is measured on.
HELD_OUT_TOKENS = 20_000


@dataclass(eq=False)
class Calibration(Record):
    """The result of calibrating one architecture, width and L0 target."""

    architecture: str
    expansion_factor: int
    l0_target: int
    coefficient_name: str
    coefficient: float
    """the best coefficient found (closest L0 to the target)"""
    l0: float
    """its L0 on held-out activations"""
    reached: bool
    """True when |l0 / l0_target - 1| <= the tolerance"""
    runs: list[list[float]] = field(default_factory=list)
    """every (coefficient, L0) tried, in order"""


def coefficient_settings(name: str, value: float) -> dict:
    """The ``SAETrainConfig`` settings that put the sparsity knob ``name`` at ``value``: the field
    of that name, or else a setting of the SAELens config passed through ``extra``."""
    return {name: value} if name in {f.name for f in dataclasses.fields(SAETrainConfig)} else {"extra": {name: value}}


def with_coefficient(config: SAETrainConfig, name: str, value: float) -> SAETrainConfig:
    """``config`` with its sparsity knob ``name`` at ``value`` (`coefficient_settings`)."""
    settings = coefficient_settings(name, value)
    if "extra" in settings:
        settings["extra"] = {**config.extra, **settings["extra"]}
    return dataclasses.replace(config, **settings)


def held_out_l0(sae, activations: torch.Tensor) -> float:
    """Mean number of active latents per token of ``sae`` on ``activations``."""
    with torch.no_grad():
        return float((sae.encode(activations.to(sae.device)) > 0).sum(-1).float().mean())


def calibrate(
    model,
    dataset,
    base: SAETrainConfig,
    l0_target: int,
    *,
    tokens: int,
    runs: int,
    tolerance: float,
    train_activations: torch.Tensor | None = None,
    held_out: torch.Tensor | None = None,
) -> Calibration:
    """The coefficient of ``base.architecture`` (one of `COEFFICIENT_ARCHITECTURES`) that gives
    ``l0_target`` active latents per token, from at most ``runs`` runs of ``tokens`` tokens each
    (``base``'s other settings). Unreachable targets come back with ``reached=False`` and the
    closest coefficient tried."""
    name = COEFFICIENT_ARCHITECTURES[base.architecture]
    if train_activations is None:
        train_activations = cache_activations(model, dataset, base.hook_name, tokens)
    if held_out is None:
        held_out = cache_activations(model, dataset, base.hook_name, HELD_OUT_TOKENS, split="validation")
    tried: list[list[float]] = []

    def l0_at(coefficient: float) -> float:
        config = with_coefficient(dataclasses.replace(base, training_tokens=tokens), name, coefficient)
        with quiet_saelens_progress():
            sae = train_sae(model, dataset, config, activations=train_activations)
        l0 = held_out_l0(sae, held_out)
        tried.append([coefficient, l0])
        return l0

    def close(l0: float) -> bool:
        return abs(l0 / l0_target - 1) <= tolerance

    # bracket: lo has L0 above the target (too weak a penalty), hi below it
    lo = hi = None
    coefficient = START
    while len(tried) < runs:
        l0 = l0_at(coefficient)
        if close(l0):
            break
        if l0 > l0_target:
            lo = coefficient
            if hi is not None:
                break
            coefficient *= 10
        else:
            hi = coefficient
            if lo is not None:
                break
            coefficient /= 10
        if not START / LIMIT <= coefficient <= START * LIMIT:
            break
    # bisect on the logarithm
    while lo is not None and hi is not None and len(tried) < runs and not close(tried[-1][1]):
        mid = math.sqrt(lo * hi)
        l0 = l0_at(mid)
        if l0 > l0_target:
            lo = mid
        else:
            hi = mid
    best_coefficient, best_l0 = min(tried, key=lambda r: abs(math.log(max(r[1], 1e-3) / l0_target)))
    return Calibration(
        architecture=base.architecture,
        expansion_factor=base.expansion_factor,
        l0_target=l0_target,
        coefficient_name=name,
        coefficient=best_coefficient,
        l0=best_l0,
        reached=close(best_l0),
        runs=tried,
    )

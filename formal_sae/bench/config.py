"""What a benchmark run is: the panel ([`BenchConfig`][formal_sae.bench.BenchConfig]) and how each
dictionary is scored ([`ScoringSettings`][formal_sae.bench.ScoringSettings]); dataclasses that
round-trip through JSON (``bench.json`` beside the results) and are the CLI's flags."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from formal_sae.activations import DEFAULT_HOOK
from formal_sae.configs import check_fields
from formal_sae.errors import FormalSAEError
from formal_sae.saes import architectures as sae_architectures
from formal_sae.saes.causal import CausalConfig
from formal_sae.saes.config import SAETrainConfig, is_int

#: The causal SAE's name in a panel: a TopK SAE fine-tuned with the paper's interpolation loss.
CAUSAL = "causal"
#: The architectures whose sparsity is a continuous setting, and that setting: the panel reaches each
#: L0 target by calibrating it. JumpReLU's L0 coefficient barely moves L0 in a short run (its
#: thresholds learn slowly: L0 153-157 for coefficients 1 to 1e6 over 30 steps on the standard
#: Dyck-2 model), so its initial threshold, which sets the starting L0 the penalty then holds, is calibrated.
COEFFICIENT_ARCHITECTURES = {"standard": "l1_coefficient", "gated": "l1_coefficient", "jumprelu": "jumprelu_init_threshold"}


def panel_architectures() -> list[str]:
    """Every trainable architecture of the installed SAELens, the paper's SAE and the causal SAE
    (discovered from SAELens's registry, so a newly registered architecture joins the panel)."""
    return [*sae_architectures(), CAUSAL]


@dataclass(frozen=True)
class ScoringSettings:
    """How each dictionary of the panel is scored (`formal_sae.bench.score_sae`)."""

    max_sentences: int = 300
    """test (and validation) sentences for fidelity and the ground-truth scores"""
    validity_samples: int = 64
    """validity with the SAE spliced in: sentences generated per repeat (0: not measured)"""
    validity_repeats: int = 2
    """validity: repeats"""
    intervention_sentences: int = 60
    """test sentences of each feature's clamp intervention"""
    n_null: int = 10
    """matched random latent groups behind each clamp's null interval"""
    causal_bar: float = 0.5
    """best-latent score (|Pearson| or F1) a structural feature needs for its latent to be clamped"""
    seed: int = 0
    """seed of validity samples and null groups"""

    def __post_init__(self) -> None:
        for name in ("max_sentences", "validity_repeats", "intervention_sentences", "n_null"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise FormalSAEError(f"scoring setting {name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not is_int(self.validity_samples) or self.validity_samples < 0:
            raise FormalSAEError(f"scoring setting validity_samples must be an integer >= 0, got {self.validity_samples!r}")
        if not 0 < self.causal_bar <= 1:
            raise FormalSAEError(f"scoring setting causal_bar must be in (0, 1], got {self.causal_bar!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoringSettings:
        check_fields(cls, d, FormalSAEError, "scoring setting")
        return cls(**d)


def _quick_causal() -> CausalConfig:
    return CausalConfig(coefficient=100.0, pretrain_steps=0, steps=40, sentences_per_step=32, finetune_lr=1e-3)


@dataclass
class BenchConfig:
    """The panel of one benchmark run: which SAEs are trained on each language's model, and how
    they are scored. The defaults are the ``quick`` panel (``BENCH_PRESETS["quick"]``)."""

    architectures: list[str] | None = None
    """architectures of the panel (None: every trainable SAELens architecture, 'paper' and 'causal')"""
    l0_targets: list[int] = field(default_factory=lambda: [4, 16])
    """active latents per token the SAEs are matched at (k, or a calibrated coefficient)"""
    expansion_factors: list[int] = field(default_factory=lambda: [2, 4])
    """dictionary widths, as multiples of the hook's width"""
    seeds: int = 3
    """seeds per cell (the leaderboard's mean +- std and its cross-seed stability)"""
    hook_name: str = DEFAULT_HOOK
    """hook point of every SAE"""
    training_tokens: int = 60_000
    """activation tokens each SAE trains on"""
    batch_size_tokens: int = 1024
    """tokens per training batch"""
    lr: float = 3e-3
    """learning rate of every SAE"""
    calibration_tokens: int = 30_000
    """tokens of each short run that calibrates a coefficient to an L0 target"""
    calibration_runs: int = 8
    """most short runs per coefficient calibration (bisection on its logarithm)"""
    calibration_tolerance: float = 0.3
    """relative L0 error a calibrated coefficient may leave (|L0 / target - 1|)"""
    causal: CausalConfig = field(default_factory=_quick_causal)
    """the causal SAE's fine-tuning (on a TopK SAE of the cell's width and k)"""
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    """how every dictionary is scored"""
    seed: int = 0
    """seed of the first SAE of each cell (the others: seed + 1, ...)"""

    def __post_init__(self) -> None:
        if isinstance(self.causal, Mapping):
            check_fields(CausalConfig, self.causal, FormalSAEError, "causal config")
            self.causal = CausalConfig(**self.causal)
        if isinstance(self.scoring, Mapping):
            self.scoring = ScoringSettings.from_dict(self.scoring)
        known = panel_architectures()
        if self.architectures is not None:
            unknown = [a for a in self.architectures if a not in known]
            if unknown or not self.architectures:
                raise FormalSAEError(
                    f"unknown panel architecture(s) {unknown or '(none given)'}; choose among {', '.join(known)}"
                )
        for name in ("l0_targets", "expansion_factors"):
            values = getattr(self, name)
            if not values or any(not is_int(v) or v < 1 for v in values) or len(set(values)) != len(values):
                raise FormalSAEError(f"{name} must be distinct integers >= 1, got {values!r}")
        for name in ("seeds", "training_tokens", "batch_size_tokens", "calibration_tokens", "calibration_runs"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise FormalSAEError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise FormalSAEError(f"lr must be > 0, got {self.lr!r}")
        if not 0 < self.calibration_tolerance < 1:
            raise FormalSAEError(f"calibration_tolerance must be in (0, 1), got {self.calibration_tolerance!r}")

    def sae_config(self, **settings: Any) -> SAETrainConfig:
        """The training config of a panel SAE: this run's hook, budget, learning rate and first seed,
        with ``settings`` (architecture, width, sparsity, seed) over them."""
        shared = {"hook_name": self.hook_name, "training_tokens": self.training_tokens,
                  "batch_size_tokens": self.batch_size_tokens, "lr": self.lr, "seed": self.seed}  # fmt: skip
        return SAETrainConfig(**{**shared, **settings})

    @property
    def panel(self) -> list[str]:
        """The architectures of the panel, resolved."""
        return list(self.architectures) if self.architectures is not None else panel_architectures()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["causal"], d["scoring"] = self.causal.to_dict(), self.scoring.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BenchConfig:
        check_fields(cls, d, FormalSAEError, "bench config")
        return cls(**d)


#: Named panels: ``quick`` (the defaults: 2 L0 targets x 2 widths x 3 seeds, short runs) and
#: ``standard`` (4 L0 targets, 200k tokens per SAE: sized for the 2-hour target on 2 CPU cores).
BENCH_PRESETS: dict[str, BenchConfig] = {
    "quick": BenchConfig(),
    "standard": BenchConfig(
        l0_targets=[4, 8, 16, 32],
        training_tokens=200_000,
        lr=1e-3,
        calibration_tokens=60_000,
        causal=CausalConfig(coefficient=100.0, pretrain_steps=0, steps=200, sentences_per_step=32, finetune_lr=1e-3),
    ),
}

"""What defines a language-model training run: `TrainConfig` (validated when built) and the schedule
it sets, the learning rate at each step (`lr_at`) and the plateau rule that may stop a run early
(`plateau`). The training loop itself is `formal_sae.training`."""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

from formal_sae.configs import check_fields
from formal_sae.errors import ModelError
from formal_sae.models import resolve_device


@dataclass
class TrainConfig:
    """Optimisation settings. Defaults follow the paper ([The paper: the language models][paper-models]) where it is explicit.

    The paper's schedule (warm-up 200, cosine to 0.9·lr over 1e6 nominal steps, stopped at 70k)
    keeps the learning rate near its peak; here the cosine ends at ``min_lr_ratio``·lr at ``steps``.
    """

    steps: int = 2000
    """optimisation steps"""
    batch_size: int = 128
    """sentences per step"""
    lr: float = 1e-3
    """peak learning rate (AdamW)"""
    min_lr_ratio: float = 0.1
    """final learning rate of the cosine schedule, as a fraction of lr"""
    warmup_steps: int = 200
    """steps of linear warm-up (shortened to a tenth of the run if not shorter than it)"""
    weight_decay: float = 1e-4
    """AdamW weight decay"""
    beta1: float = 0.9
    """AdamW beta1"""
    beta2: float = 0.95
    """AdamW beta2"""
    grad_clip: float = 1.0
    """gradient-norm clipping"""
    seed: int = 0
    """seed of the batch order and of validity sampling (formal-sae train-model also initialises the model with it)"""
    eval_every: int = 250
    """steps between validation losses"""
    checkpoint_every: int = 500
    """steps between resumable checkpoints"""
    val_sentences: int = 1024
    """validation sentences for the validation loss"""
    validity_samples: int = 128
    """generated sentences per validity measurement"""
    final_validity_repeats: int = 5
    """repeats of the final validity measurement (their spread is validity_std)"""
    micro_batch_tokens: int = 2048
    """tokens per forward pass (a step accumulates gradients over micro-batches)"""
    device: str = "cpu"
    """cpu, cuda, cuda:N or mps"""
    plateau_patience: int | None = None
    """stop early once the validation loss has plateaued: after this many evaluations in a row (every eval_every
    steps) none of which beat the best validation loss so far by at least plateau_min_delta (relative); steps stays
    the maximum and the learning-rate schedule is still that of steps. None (the default): train all steps"""
    plateau_min_delta: float = 0.01
    """with plateau_patience: an evaluation improves on the best validation loss so far only if it is below
    best * (1 - plateau_min_delta)"""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if self.plateau_patience is None:  # without the rule, the JSON of a run is what it was before the rule existed
            del d["plateau_patience"], d["plateau_min_delta"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        check_fields(cls, d, ModelError)
        return cls(**d)

    def __post_init__(self) -> None:
        self.validate()  # a config that exists is a valid one: refused where it is written, not deep in a run

    def validate(self) -> None:
        """Refuse invalid settings with a [`ModelError`][formal_sae.ModelError] naming the field, its value and the valid
        range; a warm-up at least as long as the run is shortened to a tenth of it, with a warning
        (here, so that the saved and resumed configurations hold the value actually used)."""
        positive = ("steps", "batch_size", "eval_every", "checkpoint_every", "micro_batch_tokens", "validity_samples")
        for name in (*positive, "val_sentences", "final_validity_repeats"):
            if getattr(self, name) < 1:
                raise ModelError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:  # "not > 0" also refuses NaN
                raise ModelError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ModelError(f"min_lr_ratio must be in [0, 1] (the final learning rate over lr), got {self.min_lr_ratio}")
        if not self.weight_decay >= 0:
            raise ModelError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ModelError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ModelError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.plateau_patience is not None and not (isinstance(self.plateau_patience, int) and self.plateau_patience >= 1):
            raise ModelError(f"plateau_patience must be None or >= 1 (evaluations), got {self.plateau_patience}")
        if not 0 <= self.plateau_min_delta < 1:
            raise ModelError(f"plateau_min_delta must be in [0, 1) (a relative improvement), got {self.plateau_min_delta}")
        if self.warmup_steps >= self.steps:  # the learning rate would never reach lr
            shorter = self.steps // 10
            warnings.warn(
                f"warmup_steps={self.warmup_steps} is not shorter than the run (steps={self.steps}), so the learning rate "
                f"would never reach lr={self.lr}; using warmup_steps={shorter} (a tenth of the run) instead",
                UserWarning,
                stacklevel=2,
            )
            self.warmup_steps = shorter
        resolve_device(self.device, available=False)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def plateau(history: list[dict], patience: int | None, min_delta: float) -> tuple[bool, float | None]:
    """The plateau rule of [`TrainConfig`][formal_sae.TrainConfig] on an evaluation history: whether the last
    ``patience`` evaluations all failed to beat the best validation loss before them by ``min_delta``
    (relative), and the best validation loss. A pure function of the history (which checkpoints hold), so
    a resumed run stops at the same step as an uninterrupted one. ``patience`` None: never."""
    best, since = math.inf, 0
    for entry in history:
        if entry["val_loss"] < best * (1 - min_delta):  # the first evaluation always improves on inf
            best, since = entry["val_loss"], 0
        else:  # NaN never improves
            since += 1
    return (patience is not None and since >= patience), min((h["val_loss"] for h in history), default=None)

"""How each cell of a sweep is evaluated: [`evaluate_sae`][formal_sae.evaluate_sae]'s settings, checked
before anything trains (a bad setting found after hours of training costs those hours)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from formal_sae.configs import check_fields
from formal_sae.errors import SAEError
from formal_sae.saes.config import SAETrainConfig

#: The ways of splicing an SAE into the model (``evaluate_sae``'s ``splice``).
SPLICES = ("scale_correct", "paper")


@dataclass(frozen=True)
class SweepEvaluation:
    """The evaluation of every cell of a sweep (keyword arguments of ``evaluate_sae``). The defaults,
    64 samples x 2 repeats of validity and 256 test sentences for the reconstruction metrics, take
    about a second per SAE on a CPU. ``grid.json`` records them: a sweep resumes only with the same."""

    split: str = "test"
    """dataset split the SAEs are evaluated on"""
    n_samples: int = 64
    """validity: sentences generated per repeat"""
    repeats: int = 2
    """validity: repeats (their spread is validity_std)"""
    max_sentences: int | None = 256
    """sentences of the split for the reconstruction metrics (None: all)"""
    splice: str | None = None
    """how SAEs are spliced into the model: 'scale_correct', 'paper', or None for each cell's own (SAETrainConfig.splice)"""
    validity: bool = True
    """measure validity (sentences generated with the SAE spliced in), the slowest metric"""
    seed: int = 0
    """validity: seed of the samples"""
    batch_size: int = 128
    """sentences per forward pass"""

    def __post_init__(self) -> None:
        if self.splice not in (None, *SPLICES):
            raise SAEError(f"evaluation splice must be None (each cell's own), 'scale_correct' or 'paper', got {self.splice!r}")
        for name in ("n_samples", "repeats", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise SAEError(f"evaluation setting {name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.max_sentences is not None and (not isinstance(self.max_sentences, int) or self.max_sentences < 1):
            raise SAEError(f"evaluation setting max_sentences must be an integer >= 1 or None (all), got {self.max_sentences!r}")
        if not isinstance(self.split, str) or not self.split:
            raise SAEError(f"evaluation setting split must be the name of a dataset split, e.g. 'test', got {self.split!r}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as ``grid.json`` records them (field order)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SweepEvaluation:
        """Settings from a mapping of some of the fields (the others keep their defaults)."""
        check_fields(cls, d, SAEError, "evaluation")
        return cls(**d)

    def arguments(self, config: SAETrainConfig) -> dict[str, Any]:
        """``evaluate_sae``'s keyword arguments for a cell trained with ``config``."""
        return {**self.to_dict(), "splice": self.splice or config.splice}

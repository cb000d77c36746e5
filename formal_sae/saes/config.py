"""What defines an SAE training run ([`SAETrainConfig`][formal_sae.SAETrainConfig]), its checks, and the fresh SAELens
``TrainingSAE`` it starts from ([`build_training_sae`][formal_sae.build_training_sae])."""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from sae_lens import TrainingSAE
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, get_sae_training_class
from sae_lens.saes.sae import SAEMetadata

from formal_sae.activations import DEFAULT_HOOK
from formal_sae.configs import check_fields
from formal_sae.errors import SAEError
from formal_sae.saes import paper

#: formal-sae's name for the paper's architecture (registered in SAELens as ``formal_paper``).
PAPER = "paper"


def architectures() -> list[str]:
    """Trainable architecture names: every SAELens training architecture, plus ``paper``."""
    return [PAPER, *(a for a in SAE_TRAINING_CLASS_REGISTRY if a != paper.ARCHITECTURE)]


#: Fields added after SAE runs were first saved: left out of ``to_dict`` while unset (see there).
_ADDED_LATER = ("sparsemax",)


@dataclass
class SAETrainConfig:
    """Everything that defines an SAE training run (saved as JSON next to the SAE).

    Sparsity fields apply to the architectures that have them: ``k`` (``topk``, ``batchtopk``,
    ``matryoshka_batchtopk``, ``paper`` TopK), ``l1_coefficient`` (``standard``, ``gated``, and
    ``paper`` L1 where it is the paper's sum-reduced alpha), ``l0_coefficient`` (``jumprelu``).
    The ``pre_bias`` / ``normalize_*`` / ``splice`` switches are the paper's variants and need
    ``architecture="paper"``. ``extra`` passes any other field of the SAELens training config.
    """

    architecture: str = "topk"
    """SAE architecture: 'paper' or a SAELens training architecture (formal_sae.sae_architectures())"""
    hook_name: str = DEFAULT_HOOK
    """hook point whose activations the SAE reconstructs (default: the paper's, after block 0)"""
    expansion_factor: int = 4
    """dictionary size d_sae = d_in x expansion_factor"""
    k: int | None = None
    """active latents per token (topk, batchtopk, matryoshka_batchtopk, paper TopK)"""
    l1_coefficient: float | None = None
    """L1 coefficient (standard, gated; for paper: the paper's sum-reduced alpha)"""
    l0_coefficient: float | None = None
    """L0 coefficient (jumprelu)"""
    pre_bias: bool = False
    """paper variant: tied pre-encoder bias (and an encoder bias)"""
    normalize_input: bool = False
    """paper variant: unit-norm inputs per token"""
    normalize_decoder: bool = False
    """paper variant: unit-norm decoder rows"""
    normalize_recon: bool = False
    """paper variant: unit-norm reconstructions"""
    sparsemax: str | None = None
    """paper variant: a sparsemax prototype encoder, 'no-kds', 'recon-dist' or 'dist', instead of ReLU/TopK/L1"""
    splice: str = "scale_correct"
    """how a normalised SAE is spliced into the model: 'scale_correct' or 'paper' (raw activations in)"""
    training_tokens: int = 200_000
    """activation tokens the SAE trains on"""
    batch_size_tokens: int = 1024
    """tokens per training batch"""
    lr: float = 3e-3  # tiny models, short runs: 3e-4 (usual for LLMs) leaves explained variance near 0 here
    """learning rate (tiny models, short runs: 3e-4, usual for LLMs, leaves explained variance near 0 here)"""
    lr_warm_up_steps: int = 0
    """steps of linear learning-rate warm-up"""
    adam_beta1: float = 0.9
    """Adam beta1"""
    adam_beta2: float = 0.999
    """Adam beta2"""
    dead_feature_window: int = 1000
    """steps without firing after which a latent counts as dead"""
    seed: int = 0
    """seed of the initialisation and the batch order"""
    device: str = "cpu"
    """cpu, cuda, cuda:N or mps (the model runs there too)"""
    extra: dict[str, Any] = field(default_factory=dict)
    """any other field of the SAELens training config, as JSON (e.g. '{"l1_warm_up_steps": 10}')"""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in _ADDED_LATER:  # unset, a field added after runs were saved stays out of their JSON,
            if d[name] is None:  # so those runs still compare equal and resume (from_dict fills it in)
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAETrainConfig:
        check_fields(cls, d, SAEError, "SAE config")
        return cls(**d)

    @property
    def paper_variant(self) -> bool:
        return self.pre_bias or self.normalize_input or self.normalize_decoder or self.normalize_recon or bool(self.sparsemax)

    def __post_init__(self) -> None:
        self.validate()  # a config that exists is a valid one: refused where it is written, not deep in a run

    def validate(self) -> None:
        """Refuse invalid settings with an [`SAEError`][formal_sae.SAEError] naming the field, its value and the valid
        range; a warm-up at least as long as the run is shortened to a tenth of it, with a warning."""
        if self.architecture not in architectures():
            raise SAEError(f"unknown SAE architecture {self.architecture!r}; choose one of {', '.join(architectures())}")
        if self.paper_variant and self.architecture != PAPER:
            raise SAEError(
                "pre_bias / normalize_input / normalize_decoder / normalize_recon / sparsemax are the paper's variants: "
                f"use architecture 'paper', not {self.architecture!r}"
            )
        if self.architecture == PAPER and self.k is not None and self.l1_coefficient:
            raise SAEError("the paper SAE is TopK (k) or L1 (l1_coefficient), not both: give one of them")
        if self.sparsemax is not None and self.sparsemax not in paper.SPARSEMAX_ENCODERS:
            raise SAEError(f"sparsemax must be one of {', '.join(paper.SPARSEMAX_ENCODERS)} or unset, got {self.sparsemax!r}")
        if self.sparsemax is not None and (self.k is not None or self.l1_coefficient):
            raise SAEError("a sparsemax paper SAE takes neither k nor l1_coefficient: sparsemax sets its sparsity")
        for name in ("expansion_factor", "training_tokens", "batch_size_tokens", "dead_feature_window"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise SAEError(f"{name} must be >= 1 (an integer), got {getattr(self, name)!r}")
        if self.k is not None and (not is_int(self.k) or self.k < 1):
            raise SAEError(f"k={self.k!r} must be between 1 and the dictionary size d_sae = d_in x expansion_factor (an integer)")
        for name in ("l1_coefficient", "l0_coefficient"):  # a negative penalty rewards dense codes; zero is no penalty
            value = getattr(self, name)
            if value is not None and not is_positive(value):
                raise SAEError(f"{name} must be > 0, got {value!r}; leave it unset (None) for architectures without it")
        if not is_positive(self.lr):
            raise SAEError(f"lr must be > 0, got {self.lr!r}")
        for name in ("adam_beta1", "adam_beta2"):
            if not is_real(getattr(self, name)) or not 0 <= getattr(self, name) < 1:
                raise SAEError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not is_int(self.lr_warm_up_steps) or self.lr_warm_up_steps < 0:
            raise SAEError(f"lr_warm_up_steps must be >= 0 (an integer), got {self.lr_warm_up_steps!r}")
        total = self.training_tokens // self.batch_size_tokens
        # A warm-up as long as the run never reaches lr; adjusted here, so that the saved config holds what ran.
        if 0 < total <= self.lr_warm_up_steps:
            shorter = total // 10
            warnings.warn(
                f"lr_warm_up_steps={self.lr_warm_up_steps} is not shorter than the run ({total} steps = training_tokens // "
                f"batch_size_tokens), so the learning rate would never reach lr={self.lr}; using lr_warm_up_steps={shorter} "
                "(a tenth of the run) instead",
                UserWarning,
                stacklevel=2,
            )
            self.lr_warm_up_steps = shorter
        if self.splice not in ("scale_correct", "paper"):
            raise SAEError(f"splice must be 'scale_correct' or 'paper', got {self.splice!r}")


def is_int(value: Any) -> bool:
    """An integer (Python's or NumPy's), not a bool: the package's one test for integer settings."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A real number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_positive(value: Any) -> bool:
    """A real number > 0 (NaN is not: ``nan <= 0`` is False, so ``not > 0`` is the test)."""
    return is_real(value) and value > 0


def _arch_kwargs(cfg: SAETrainConfig, cfg_class: type, d_sae: int) -> dict[str, Any]:
    """Sparsity and variant settings for the SAELens config class, refusing ones it does not have."""
    given = {
        "k": cfg.k,
        "l1_coefficient": cfg.l1_coefficient,
        "l0_coefficient": cfg.l0_coefficient,
        **(
            {
                "pre_bias": cfg.pre_bias,
                "normalize_input": cfg.normalize_input,
                "normalize_decoder": cfg.normalize_decoder,
                "normalize_recon": cfg.normalize_recon,
                "splice": cfg.splice,
                "sparsemax": cfg.sparsemax,
            }
            if cfg.architecture == PAPER
            else {}
        ),
        **cfg.extra,
    }
    given = {k: v for k, v in given.items() if v is not None}
    fields = {f.name for f in dataclasses.fields(cfg_class)}
    refused = sorted(set(given) - fields)
    if refused:
        raise SAEError(
            f"architecture {cfg.architecture!r} has no setting {', '.join(refused)}; remove it or choose another architecture"
        )
    if "k" in given and not 0 < given["k"] <= d_sae:
        raise SAEError(f"k={given['k']} must be between 1 and the dictionary size d_sae={d_sae} (d_in x expansion_factor)")
    if cfg.architecture == "matryoshka_batchtopk" and "matryoshka_widths" not in given:
        given["matryoshka_widths"] = [max(1, d_sae // 4), max(2, d_sae // 2), d_sae]
    return given


def build_training_sae(cfg: SAETrainConfig, d_in: int, model_name: str = "formal-sae") -> TrainingSAE:
    """A freshly initialised SAELens ``TrainingSAE`` for ``cfg`` (seeded by ``cfg.seed``)."""
    cfg.validate()
    arch = paper.ARCHITECTURE if cfg.architecture == PAPER else cfg.architecture
    sae_class, cfg_class = get_sae_training_class(arch)
    d_sae = d_in * cfg.expansion_factor
    metadata = SAEMetadata(model_name=model_name, hook_name=cfg.hook_name, hook_head_index=None, prepend_bos=True)
    try:
        sae_cfg = cfg_class(d_in=d_in, d_sae=d_sae, device=cfg.device, metadata=metadata, **_arch_kwargs(cfg, cfg_class, d_sae))
    except (ValueError, TypeError) as e:
        if isinstance(e, SAEError):
            raise
        raise SAEError(f"invalid settings for architecture {cfg.architecture!r}: {e}") from None
    torch.manual_seed(cfg.seed)
    return sae_class(sae_cfg)

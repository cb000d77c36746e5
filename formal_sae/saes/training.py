"""Training SAEs with SAELens's own ``SAETrainer`` on a formal-sae model's activations.

The data provider is formal-sae's (SAELens's ``DataProvider`` is any iterator of activation
batches): activations of sentence tokens only (no prompt, ``<eos>`` or padding, as the paper
trains), computed once into an in-memory cache and served in shuffled batches. The cache is what
lets a sweep train many SAEs without re-running the language model for each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from sae_lens import SAE, LoggingConfig, SAETrainer, TrainingSAE
from sae_lens.config import SAETrainerConfig
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, get_sae_training_class
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer

from formal_sae.activations import DEFAULT_HOOK, check_hook, collect_activations, hook_shape
from formal_sae.data import dataset_metadata
from formal_sae.errors import SAEError
from formal_sae.io import write_json
from formal_sae.saes import paper
from formal_sae.seeding import deterministic

#: formal-sae's name for the paper's architecture (registered in SAELens as ``formal_paper``).
PAPER = "paper"
TRAIN_CONFIG_FILE = "formal_sae_sae_config.json"


def architectures() -> list[str]:
    """Trainable architecture names: every SAELens training architecture, plus ``paper``."""
    return [PAPER, *(a for a in SAE_TRAINING_CLASS_REGISTRY if a != paper.ARCHITECTURE)]


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
    hook_name: str = DEFAULT_HOOK
    expansion_factor: int = 4
    k: int | None = None
    l1_coefficient: float | None = None
    l0_coefficient: float | None = None
    pre_bias: bool = False
    normalize_input: bool = False
    normalize_decoder: bool = False
    normalize_recon: bool = False
    splice: str = "scale_correct"
    training_tokens: int = 200_000
    batch_size_tokens: int = 1024
    lr: float = 3e-3  # tiny models, short runs: 3e-4 (usual for LLMs) leaves explained variance near 0 here
    lr_warm_up_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    dead_feature_window: int = 1000
    seed: int = 0
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAETrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise SAEError(f"unknown SAE config field(s) {sorted(unknown)}")
        return cls(**d)

    @property
    def paper_variant(self) -> bool:
        return self.pre_bias or self.normalize_input or self.normalize_decoder or self.normalize_recon

    def validate(self) -> None:
        if self.architecture not in architectures():
            raise SAEError(f"unknown SAE architecture {self.architecture!r}; choose one of {', '.join(architectures())}")
        if self.paper_variant and self.architecture != PAPER:
            raise SAEError(
                "pre_bias / normalize_input / normalize_decoder / normalize_recon are the paper's variants: "
                f"use architecture 'paper', not {self.architecture!r}"
            )
        if self.architecture == PAPER and self.k is not None and self.l1_coefficient:
            raise SAEError("the paper SAE is TopK (k) or L1 (l1_coefficient), not both: give one of them")
        if self.expansion_factor < 1 or self.training_tokens < 1 or self.batch_size_tokens < 1:
            raise SAEError("expansion_factor, training_tokens and batch_size_tokens must be >= 1")
        if self.splice not in ("scale_correct", "paper"):
            raise SAEError(f"splice must be 'scale_correct' or 'paper', got {self.splice!r}")


def sae_hook_width(model: HookedTransformer, hook_name: str) -> int:
    """``d_in`` of an SAE at ``hook_name``, after checking the hook holds one vector per token.

    Per-head hooks (``attn.hook_q/k/v/z``) are refused: their activations are collected flattened,
    but an SAE spliced there receives ``[..., n_heads, d_head]`` and fails."""
    shape = hook_shape(model, hook_name)
    if len(shape) != 1:
        raise SAEError(
            f"{hook_name} has per-head activations (shape {shape} per token), where an SAE cannot be spliced in; "
            "use a hook with one vector per token, e.g. the block's hook_attn_out or hook_resid_post"
        )
    return shape[0]


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


_flush_depth = 0


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero on the CPU inside the block (off again afterwards; nestable).

    L1 training drives many latents and their Adam moments towards zero, into the denormal
    range, where CPU arithmetic is ~10x slower: a paper L1 SAE trained and evaluated 5-10x
    slower than its TopK twin without this. Rounding 1e-38 to 0 changes no result.
    """
    global _flush_depth
    _flush_depth += 1
    if _flush_depth == 1:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        _flush_depth -= 1
        if _flush_depth == 0:
            torch.set_flush_denormal(False)


def activation_batches(acts: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled batches of rows of ``acts`` (a new permutation each epoch, seeded)."""
    gen = torch.Generator().manual_seed(seed)
    if len(acts) < batch_size:
        raise SAEError(f"only {len(acts)} activation tokens for a batch of {batch_size}; use more data or a smaller batch")
    while True:
        perm = torch.randperm(len(acts), generator=gen)
        for start in range(0, len(perm) - batch_size + 1, batch_size):
            yield acts.index_select(0, perm[start : start + batch_size])  # ~3x faster than acts[idx] on CPU


def cache_activations(
    model, dataset: datasets.DatasetDict, hook_name: str, max_tokens: int, split: str = "train"
) -> torch.Tensor:
    """Sentence-token activations of ``split`` at ``hook_name``: up to ``max_tokens``, and at least
    one batch. Training cycles over them (epochs) when the split is smaller than the budget."""
    check_hook(model, hook_name)
    return collect_activations(model, dataset[split], hook_name, max_tokens)


def model_name_of(model) -> str:
    data = getattr(model, "formal_sae_data", None)
    cfg = getattr(model, "formal_sae_config", None)
    return f"formal-sae/{data.grammar if data else 'model'}-{cfg.preset if cfg else 'custom'}"


def train_sae(
    model: HookedTransformer,
    dataset: datasets.DatasetDict,
    config: SAETrainConfig | None = None,
    *,
    activations: torch.Tensor | None = None,
    out_dir: str | os.PathLike | None = None,
    **overrides: Any,
) -> SAE:
    """Train an SAE with SAELens on a model's activations at sentence tokens.

    Args:
        model: A formal-sae model (``HookedSAETransformer``).
        dataset: Its dataset; the ``train`` split supplies the activations.
        config: Training settings; keyword ``overrides`` replace its fields, e.g.
            ``train_sae(model, ds, architecture="topk", k=16, hook_name="blocks.1.hook_resid_post")``.
        activations: Precomputed ``[n_tokens, d_in]`` activations at ``config.hook_name`` (a
            sweep shares one cache across SAEs); computed from the train split if None.
        out_dir: If given, the SAE is saved there (SAELens format, see :func:`save_sae`).

    Returns:
        The trained SAE as a SAELens inference ``SAE`` (``sae.cfg.metadata.hook_name`` set, so
        ``model.add_sae(sae)`` works), with ``sae.formal_sae_train_seconds`` recorded.
    """
    config = dataclasses.replace(config or SAETrainConfig(), **overrides)
    trained, seconds = fit_sae(model, dataset, config, activations)
    sae = to_inference(trained, model, dataset, config, out_dir)
    sae.formal_sae_train_seconds = seconds
    return sae


def fit_sae(
    model, dataset: datasets.DatasetDict, config: SAETrainConfig, activations: torch.Tensor | None = None
) -> tuple[TrainingSAE, float]:
    """Train a SAELens ``TrainingSAE`` with ``SAETrainer``; returns it and the seconds it took."""
    config.validate()
    d_in = sae_hook_width(model, config.hook_name)
    if activations is None:
        activations = cache_activations(model, dataset, config.hook_name, config.training_tokens)
    if activations.shape[-1] != d_in:
        raise SAEError(f"activations have width {activations.shape[-1]} but hook {config.hook_name} has width {d_in}")
    training_sae = build_training_sae(config, d_in, model_name_of(model))
    trainer_cfg = SAETrainerConfig(
        total_training_samples=config.training_tokens,
        train_batch_size_samples=config.batch_size_tokens,
        lr=config.lr,
        lr_end=config.lr,  # constant schedule (SAETrainerConfig has no default here)
        lr_warm_up_steps=config.lr_warm_up_steps,
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        device=config.device,
        dead_feature_window=config.dead_feature_window,
        feature_sampling_window=config.dead_feature_window,
        logger=LoggingConfig(log_to_wandb=False),
    )
    provider = activation_batches(activations.to(config.device), config.batch_size_tokens, config.seed)
    trainer = SAETrainer(cfg=trainer_cfg, sae=training_sae, data_provider=provider)
    t0 = time.perf_counter()
    with flush_denormals(), deterministic():
        trained = trainer.fit()  # SAELens's own loop and progress bar
    return trained, time.perf_counter() - t0


def to_inference(
    trained: TrainingSAE, model, dataset, config: SAETrainConfig, out_dir: str | os.PathLike | None, extra: dict | None = None
) -> SAE:
    """Save a trained SAE in SAELens's format (to ``out_dir`` or a temporary directory) and load
    it back with ``SAE.load_from_disk``: the result is exactly what users will load later."""
    meta = dataset_metadata(dataset)
    trained.cfg.metadata.model_name = model_name_of(model)
    trained.cfg.metadata.hook_name = config.hook_name
    trained.cfg.metadata.dataset_path = meta.grammar
    trained.cfg.metadata.context_size = model.cfg.n_ctx
    target = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="formal-sae-sae-"))
    save_sae(trained, target, config, extra)
    return load_sae(target, device=config.device)


def save_sae(trained: TrainingSAE, directory: str | os.PathLike, config: SAETrainConfig, extra: dict | None = None) -> Path:
    """Write ``cfg.json`` + ``sae_weights.safetensors`` (SAELens inference format, via
    ``save_inference_model``) and formal-sae's training config into ``directory``.

    Each file is written beside the directory and renamed into place; other files there stay.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".sae-", dir=directory) as tmp:
        trained.save_inference_model(tmp)
        write_json(Path(tmp) / TRAIN_CONFIG_FILE, {**config.to_dict(), **(extra or {})})
        for name in ("sae_weights.safetensors", TRAIN_CONFIG_FILE, "cfg.json"):  # cfg.json last: it marks a complete SAE
            os.replace(Path(tmp) / name, directory / name)
    return directory


def load_sae(directory: str | os.PathLike, device: str = "cpu") -> SAE:
    """Load an SAE saved by formal-sae (plain ``SAE.load_from_disk``, with clear errors)."""
    directory = Path(directory)
    for name in ("cfg.json", "sae_weights.safetensors"):
        if not (directory / name).is_file():
            raise SAEError(
                f"{directory / name} is missing; {directory} is not a saved SAE (train one with `formal-sae train-sae`)"
            )
    try:
        return SAE.load_from_disk(str(directory), device=device)
    except Exception as e:  # SAELens raises json, safetensors and key errors for broken files
        raise SAEError(f"the SAE in {directory} is corrupt or from an unknown architecture ({type(e).__name__}: {e})") from None

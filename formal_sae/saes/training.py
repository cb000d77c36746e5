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
import shutil
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import torch
from sae_lens import SAE, LoggingConfig, SAETrainer, TrainingSAE
from sae_lens.config import SAETrainerConfig
from transformer_lens import HookedTransformer

from formal_sae.activations import check_hook, collect_activations, hook_shape
from formal_sae.errors import SAEError
from formal_sae.saes import checkpoints

# re-exported: SAE settings and storage lived here before they had modules of their own
from formal_sae.saes.config import PAPER, SAETrainConfig, architectures, build_training_sae  # noqa: F401
from formal_sae.saes.storage import (  # noqa: F401
    TRAIN_CONFIG_FILE,
    load_sae,
    model_name_of,
    sae_output_dir,
    sae_run_config,
    save_sae,
    to_inference,
)
from formal_sae.seeding import deterministic
from formal_sae.tracking import wandb_run

CHECKPOINT_DIR = "checkpoints"  # inside an SAE's in-progress folder while it trains
#: Checkpoints taken while an SAE trains into an output directory (each costs one small save).
DEFAULT_CHECKPOINTS = 10
#: Training times of the SAEs trained in this process, held beside them rather than as an attribute
#: set on SAELens's objects; entries go with their SAE (weak keys).
_TRAIN_SECONDS: weakref.WeakKeyDictionary[SAE, float] = weakref.WeakKeyDictionary()


class FitResult(NamedTuple):
    """What `fit_sae` returns: the trained SAE and its training time (resumed runs included)."""

    sae: TrainingSAE
    train_seconds: float


def train_seconds(sae: SAE) -> float | None:
    """Seconds an SAE took to train (interrupted runs included), for an SAE that [`train_sae`][formal_sae.train_sae]
    or [`train_causal_sae`][formal_sae.train_causal_sae] returned in this process; None otherwise.

    It is not SAELens metadata: ``sae.cfg.metadata`` is written whole into ``cfg.json`` by every
    SAELens save, and a time is different on every run, so an SAE saved twice would differ.
    Callers record it in ``metrics.json``.
    """
    return _TRAIN_SECONDS.get(sae)


def set_train_seconds(sae: SAE, seconds: float) -> SAE:
    """Record the training time on ``sae`` (see [`train_seconds`][formal_sae.train_seconds]); returns ``sae``."""
    _TRAIN_SECONDS[sae] = float(seconds)
    return sae


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


def activation_batches(acts: torch.Tensor, batch_size: int, seed: int, start_step: int = 0) -> Iterator[torch.Tensor]:
    """Endless shuffled batches of rows of ``acts`` (a new permutation each epoch, seeded), from
    batch ``start_step`` on: a resumed run sees exactly the batches an uninterrupted one would."""
    gen = torch.Generator().manual_seed(seed)
    if len(acts) < batch_size:
        raise SAEError(f"only {len(acts)} activation tokens for a batch of {batch_size}; use more data or a smaller batch")
    per_epoch = len(acts) // batch_size
    epoch, offset = divmod(start_step, per_epoch)
    for _ in range(epoch):  # the skipped epochs' permutations are drawn all the same: they advance the generator
        torch.randperm(len(acts), generator=gen)
    while True:
        perm = torch.randperm(len(acts), generator=gen)
        for start in range(offset * batch_size, per_epoch * batch_size, batch_size):
            yield acts.index_select(0, perm[start : start + batch_size])  # ~3x faster than acts[idx] on CPU
        offset = 0


def cache_activations(
    model, dataset: datasets.DatasetDict, hook_name: str, max_tokens: int, split: str = "train"
) -> torch.Tensor:
    """Sentence-token activations of ``split`` at ``hook_name``: up to ``max_tokens``, and at least
    one batch. Training cycles over them (epochs) when the split is smaller than the budget."""
    check_hook(model, hook_name)
    return collect_activations(model, dataset[split], hook_name, max_tokens)


def train_sae(
    model: HookedTransformer,
    dataset: datasets.DatasetDict,
    config: SAETrainConfig | None = None,
    *,
    activations: torch.Tensor | None = None,
    out_dir: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    n_checkpoints: int | None = None,
    overwrite: bool = False,
    wandb_project: str | None = None,
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
        out_dir: If given, the SAE is saved there (SAELens format, see `save_sae`), built
            in ``<out_dir>.in-progress`` with its training checkpoints and moved into place when
            complete (`formal_sae.outputs`); an interrupted run with the same settings
            resumes from its last checkpoint and gives the same SAE bitwise.
        checkpoint_dir: Where checkpoints go (default: inside the in-progress folder of ``out_dir``).
        n_checkpoints: Checkpoints during training (default: `DEFAULT_CHECKPOINTS` with an
            ``out_dir`` or ``checkpoint_dir``, else none); see `fit_sae`.
        overwrite: Replace an existing SAE in ``out_dir`` (only one formal-sae wrote).
        wandb_project: Log training to this W&B project with SAELens's own logger (see
            `fit_sae`); not part of the SAE's configuration.

    Returns:
        The trained SAE as a SAELens inference ``SAE`` (``sae.cfg.metadata.hook_name`` set, so
        ``model.add_sae(sae)`` works), its training time recorded ([`train_seconds`][formal_sae.train_seconds]).
    """
    config = dataclasses.replace(config or SAETrainConfig(), **overrides)
    config.validate()  # before any output directory is made
    if n_checkpoints is None:
        n_checkpoints = DEFAULT_CHECKPOINTS if out_dir is not None or checkpoint_dir is not None else 0
    with sae_output_dir(out_dir, sae_run_config(config), overwrite) as work:
        if checkpoint_dir is None and work is not None:
            checkpoint_dir = work / CHECKPOINT_DIR
        trained, seconds = fit_sae(
            model,
            dataset,
            config,
            activations,
            checkpoint_dir=checkpoint_dir,
            n_checkpoints=n_checkpoints,
            wandb_project=wandb_project,
            wandb_name=Path(out_dir).name if out_dir is not None else None,
        )
        sae = to_inference(trained, model, dataset, config, work)
        if work is not None:
            shutil.rmtree(work / CHECKPOINT_DIR, ignore_errors=True)
    return set_train_seconds(sae, seconds)


def fit_sae(
    model,
    dataset: datasets.DatasetDict,
    config: SAETrainConfig,
    activations: torch.Tensor | None = None,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    n_checkpoints: int = 0,
    wandb_project: str | None = None,
    wandb_name: str | None = None,
) -> FitResult:
    """Train a SAELens ``TrainingSAE`` with ``SAETrainer``; returns it and the seconds it took.

    With ``checkpoint_dir``, training first resumes from the latest complete checkpoint there (if
    any; made with the same settings, else an error), and saves ``n_checkpoints`` more on the way
    (crash-safe; only the latest is kept, see `formal_sae.saes.checkpoints`). The result is
    bitwise that of an uninterrupted run (same machine, same thread count).

    With ``wandb_project``, SAELens's own logger is on (``LoggingConfig(log_to_wandb=True)``: losses,
    explained variance, L0, dead latents and learning rate every 10 steps, feature-density
    histograms, config and sparsity artifacts at checkpoints; weights are not uploaded) in a W&B
    run named ``wandb_name`` whose config is ``config``'s fields, or in the active W&B run if
    there is one (`formal_sae.tracking`). Logging changes no result.
    """
    config.validate()
    if n_checkpoints < 0 or (n_checkpoints and checkpoint_dir is None):
        raise SAEError(f"n_checkpoints={n_checkpoints} needs to be >= 0 and a checkpoint_dir to save them in")
    d_in = sae_hook_width(model, config.hook_name)
    if activations is None:
        activations = cache_activations(model, dataset, config.hook_name, config.training_tokens)
    if activations.shape[-1] != d_in:
        raise SAEError(f"activations have width {activations.shape[-1]} but hook {config.hook_name} has width {d_in}")
    training_sae = build_training_sae(config, d_in, model_name_of(model))
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = checkpoints.TrainerCheckpoints(checkpoint_dir, checkpoints.settings(config, activations=list(activations.shape)))
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
        n_checkpoints=n_checkpoints,
        checkpoint_path=str(checkpoint_dir) if checkpoint_dir is not None else None,
        logger=LoggingConfig(
            log_to_wandb=wandb_project is not None,
            wandb_project=wandb_project or LoggingConfig.wandb_project,
            run_name=wandb_name,
            log_weights_to_wandb=False,  # the saved SAE folder is the artifact; one upload per checkpoint is waste
        ),
    )
    start = ckpt.batches if ckpt else 0
    provider = checkpoints.CountingIterator(
        activation_batches(activations.to(config.device), config.batch_size_tokens, config.seed, start_step=start), start
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=training_sae, data_provider=provider)
    if ckpt:
        ckpt.attach(trainer, provider)  # restores the latest checkpoint's state, and saves the next ones
    t0 = time.perf_counter()
    wandb_config = {**config.to_dict(), "d_in": d_in, "model_name": model_name_of(model)}
    with wandb_run(wandb_project, name=wandb_name, config=wandb_config, job_type="train-sae"), flush_denormals(), deterministic():
        trained = trainer.fit()  # SAELens's own loop, progress bar and (with wandb_project) logging
    return FitResult(trained, time.perf_counter() - t0 + (ckpt.seconds_before if ckpt else 0.0))

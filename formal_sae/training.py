"""Training language models on formal-language datasets.

TransformerLens's own ``train`` trains on padding and has no evaluation split, schedule or
resumable checkpoints, so formal-sae has this loop:

* **no padding waste, no length bias**: every step takes a uniformly random batch of sentences
  (as the paper) and packs it end to end into rows as wide as its longest sentence, with
  attention masked to each sentence and positions restarting at each sentence, so the loss is
  exactly that of the sentences computed one by one (the paper pads every sentence to 128
  tokens). Batches bucketed by length across steps would also avoid padding but bias the model:
  a batch of only one-token Expr sentences teaches "a digit, then stop", and such a model
  generated sentences a third as long as the data's;
* next-token cross-entropy over real tokens only; AdamW with weight decay on matrices only;
  linear warm-up then cosine decay; gradient clipping;
* validation loss and validity every ``eval_every`` steps, shown on the progress bar;
* optionally, a stop once the validation loss plateaus (``plateau_patience``: see `plateau`);
* a checkpoint every ``checkpoint_every`` steps; the batch order is a pure function of the seed
  and the step, so ``resume=True`` reaches the same weights as an uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from formal_sae.data import DatasetMetadata, build_tokenizer, column, dataset_metadata, grammar_of
from formal_sae.errors import FormalSAEError, ModelError
from formal_sae.generation import evaluate_validity
from formal_sae.io import atomic_replace, read_json, write_json
from formal_sae.models import (
    FormalSAEModel,
    ModelConfig,
    TrainingMetrics,
    build_model,
    load_weights,
    model_state,
    resolve_device,
    save_model,
)
from formal_sae.outputs import in_progress_path, output_dir
from formal_sae.packing import PackedBatch, pack_sequences, packed_hooks
from formal_sae.plotting import pyplot
from formal_sae.seeding import deterministic
from formal_sae.tracking import log_metrics, log_summary, wandb_run
from formal_sae.training_config import TrainConfig, lr_at, plateau

CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.json"
TRAIN_CONFIG_FILE = "train_config.json"
CURVE_FILE = "training_curve.png"


# ----------------------------------------------------------------------------- batching
class SentenceBatches:
    """Uniformly random batches of sentence indices, deterministic in (seed, epoch). Each epoch is
    a fresh permutation cut into batches, so every sentence is used once per epoch and no batch's
    composition depends on lengths."""

    def __init__(self, n_sentences: int, batch_size: int, seed: int) -> None:
        self.n_sentences, self.batch_size, self.seed = n_sentences, batch_size, seed
        self.per_epoch = max(1, n_sentences // batch_size)
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    def _epoch(self, epoch: int) -> np.ndarray:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n_sentences)
            if len(order) < self.batch_size:  # tiny datasets: one batch, sentences repeated
                order = np.resize(order, self.batch_size)
            self._epoch_cache = (epoch, order[: self.per_epoch * self.batch_size].reshape(self.per_epoch, self.batch_size))
        return self._epoch_cache[1]

    def batch(self, step: int) -> np.ndarray:
        """Indices of the batch used at ``step`` (0-based)."""
        epoch, index = divmod(step, self.per_epoch)
        return self._epoch(epoch)[index]


def next_token_loss(model, batch: PackedBatch, reduction: str = "sum") -> torch.Tensor:
    """Next-token cross-entropy over the real targets of a packed batch (``reduction`` "sum" or
    "mean"), every sentence computed as if alone (`formal_sae.packing.packed_hooks`)."""
    with model.hooks(fwd_hooks=packed_hooks(model, batch)):
        logits = model(batch.tokens, return_type="logits")[:, :-1]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), batch.labels.reshape(-1), ignore_index=-100, reduction=reduction
    )


def backward_batch(model, sequences: list[list[int]], pad_id: int, train: TrainConfig) -> tuple[float, int]:
    """Backpropagate the mean next-token loss of a batch of sequences, packed, in chunks of at most
    ``train.micro_batch_tokens`` tokens with gradient accumulation; returns the mean loss and the
    number of targets."""
    packed = pack_sequences(sequences, pad_id, train.device)
    n_targets = packed.n_targets
    loss_sum = 0.0
    for chunk in packed.chunks(train.micro_batch_tokens):
        loss = next_token_loss(model, chunk)
        (loss / n_targets).backward()  # accumulates the gradient of the mean over the whole batch
        loss_sum += loss.detach().item()
    return loss_sum / n_targets, n_targets


@torch.no_grad()
def validation_loss(model, sequences: list[list[int]], pad_id: int, max_tokens: int = 8192) -> float:
    """Token-weighted mean next-token loss over ``sequences``."""
    packed = pack_sequences(sequences, pad_id, model.cfg.device)
    total = sum(float(next_token_loss(model, chunk)) for chunk in packed.chunks(max_tokens))
    return total / max(packed.n_targets, 1)


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (>= 2 dims) only, as in nanoGPT and the paper."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


# ----------------------------------------------------------------------------- checkpoints
def _save_checkpoint(
    out: Path,
    model,
    optimizer,
    step: int,
    history: list[dict],
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    data: DatasetMetadata,
    running: float | None = None,
) -> None:
    from safetensors.torch import save_file

    state = {
        "step": step,
        "history": history,
        "running_loss": running,
        "model": model_cfg.to_dict(),
        "train": cfg.to_dict(),
        "grammar_text": data.grammar_text,
    }

    def write(tmp: Path) -> None:
        tmp.mkdir()
        save_file(model_state(model), str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        write_json(tmp / "state.json", state)

    atomic_replace(out / CHECKPOINT_DIR, write)  # the whole folder: weights, optimizer and state always agree


def _load_checkpoint(out: Path, model, optimizer, data: DatasetMetadata) -> tuple[int, list[dict], float | None]:
    """Restore a checkpoint of the run in ``out`` (its configuration was matched by [`output_dir`][formal_sae.output_dir])."""
    ckpt = out / CHECKPOINT_DIR
    try:
        state = read_json(ckpt / "state.json", what="checkpoint state")
    except FormalSAEError as e:  # missing or not JSON
        raise ModelError(f"{e}; delete {ckpt} to restart") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or not isinstance(state.get("history"), list):
        raise ModelError(f"checkpoint state {ckpt / 'state.json'} is corrupt (no step or history); delete {ckpt} to restart")
    if state.get("grammar_text") != data.grammar_text:
        raise ModelError(
            f"cannot resume {out}: its checkpoint was trained on another grammar than this dataset's {data.grammar!r}"
        )
    load_weights(model, ckpt / "model.safetensors")
    opt_path = ckpt / "optimizer.pt"
    if not opt_path.is_file():
        raise ModelError(f"checkpoint file {opt_path} is missing")
    try:
        optimizer.load_state_dict(torch.load(opt_path, map_location=model.cfg.device, weights_only=True))
    except Exception as e:  # torch raises several types for a truncated or foreign file
        raise ModelError(f"checkpoint file {opt_path} is corrupt ({type(e).__name__}); delete {ckpt} to restart") from None
    return int(state["step"]), list(state["history"]), state.get("running_loss")


# ----------------------------------------------------------------------------- plotting
def plot_training_curve(history: list[dict], path: str | os.PathLike) -> None:
    """Loss and validity against steps, as a PNG."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["train_loss"] for h in history], label="train loss", color="tab:blue", alpha=0.7)
    ax.plot(steps, [h["val_loss"] for h in history], label="validation loss", color="tab:blue", linestyle="--")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax2 = ax.twinx()
    ax2.plot(steps, [h["validity"] for h in history], label="validity", color="tab:green", marker="o", markersize=3)
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("validity")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- training
def sequences_of(split: datasets.Dataset) -> list[list[int]]:
    """The ``input_ids`` of a split as Python lists (read straight from the Arrow table)."""
    return column(split, "input_ids")


@deterministic()
def train_model(
    dataset: datasets.DatasetDict,
    config: ModelConfig | str = "small",
    train: TrainConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    *,
    wandb_project: str | None = None,
) -> FormalSAEModel:
    """Train a model on a formal-sae dataset and return it, its metrics in ``model.formal_sae_metrics``.

    Args:
        dataset: From [`formal_sae.build_dataset`][formal_sae.build_dataset] / [`formal_sae.load_dataset_dir`][formal_sae.load_dataset_dir].
        config: A [`ModelConfig`][formal_sae.ModelConfig] or a preset name.
        train: Optimisation settings (defaults: [`TrainConfig`][formal_sae.TrainConfig]).
        out_dir: If given: the final model (``save_model``), ``metrics.json``,
            ``train_config.json`` and ``training_curve.png``, built in ``<out_dir>.in-progress``
            (checkpoints included) and moved into place when complete (`formal_sae.outputs`).
            An interrupted run with the same settings resumes from its last checkpoint and
            reaches the same weights; one with other settings is refused, naming them.
        resume: Require an interrupted run to resume (an error if there is none).
        progress: Show a tqdm progress bar.
        overwrite: Replace an existing model in ``out_dir`` (only one formal-sae wrote).
        wandb_project: Log the training curve and final metrics to this W&B project
            (`formal_sae.tracking`); not part of the run's configuration.
    """
    train = train or TrainConfig()
    train.validate()
    resolve_device(train.device)  # available here: validate() checks only the name
    config = ModelConfig.from_preset(config) if isinstance(config, str) else config
    meta = dataset_metadata(dataset)
    for split in ("train", "validation"):
        if split not in dataset or len(dataset[split]) == 0:
            raise ModelError(f"the dataset has no {split!r} sentences; regenerate it with --n-{split} > 0")
    grammar = grammar_of(meta)
    out = Path(out_dir) if out_dir is not None else None
    if resume and out is None:
        raise ModelError("resume=True needs the out_dir of the interrupted run")
    tokenizer = build_tokenizer(grammar)
    train_seqs, val_seqs = sequences_of(dataset["train"]), sequences_of(dataset["validation"])[: train.val_sentences]
    longest = max(map(len, train_seqs + val_seqs))
    if longest > config.n_ctx:
        raise ModelError(
            f"the dataset has sequences of {longest} tokens but the model's context is {config.n_ctx}; raise n_ctx or lower the grammar's max_length"
        )
    vocab_limit = max(max(s) for s in train_seqs) + 1
    if vocab_limit > len(tokenizer):
        raise ModelError(
            f"the dataset uses token id {vocab_limit - 1} but the vocabulary has {len(tokenizer)} tokens: dataset and tokenizer do not match"
        )

    torch.manual_seed(config.seed)
    model = build_model(config, tokenizer, meta, device=train.device)
    run = {"model": config.to_dict(), "train": {k: v for k, v in train.to_dict().items() if k != "device"},
           "data": {"grammar": meta.grammar, "seed": meta.seed, "splits": meta.splits}}  # fmt: skip
    wandb_config = {**run, "train": train.to_dict(), "out_dir": out}
    name = out.name if out is not None else None
    if out is None:
        with wandb_run(wandb_project, name=name, config=wandb_config, job_type="train-model") as wb:
            _train_loop(model, dataset, train, meta, grammar, tokenizer, None, progress, wb)
        return model
    if resume and not (in_progress_path(out) / CHECKPOINT_DIR).is_dir():
        raise ModelError(
            f"nothing to resume: {in_progress_path(out) / CHECKPOINT_DIR} does not exist; start the run without --resume"
        )
    with (
        output_dir(out, "model", run, overwrite=overwrite, resumable=True) as work,
        wandb_run(wandb_project, name=name, config=wandb_config, job_type="train-model") as wb,
    ):
        write_json(work / TRAIN_CONFIG_FILE, {"model": config.to_dict(), "train": train.to_dict(), "data": meta.__dict__})
        _train_loop(model, dataset, train, meta, grammar, tokenizer, work, progress, wb)
        save_model(model, work)
        write_json(work / METRICS_FILE, model.formal_sae_metrics.to_dict())
        plot_training_curve(model.formal_sae_metrics.history, work / CURVE_FILE)
        for path in (work / CHECKPOINT_DIR, *work.glob(f".{CHECKPOINT_DIR}.*")):  # with what a kill left beside it
            shutil.rmtree(path, ignore_errors=True)
    return model


def _log_evaluation(wb, entry: dict) -> None:
    """One evaluation of the training history to W&B (nothing when ``wb`` is None)."""
    metrics = {"train/loss": entry["train_loss"], "val/loss": entry["val_loss"], "val/validity": entry["validity"]}
    log_metrics(wb, {**metrics, "train/lr": entry["lr"]}, step=entry["step"])


def _train_loop(
    model: FormalSAEModel,
    dataset,
    train: TrainConfig,
    meta,
    grammar,
    tokenizer,
    work: Path | None,
    progress: bool,
    wb=None,
) -> None:
    """Train ``model`` in place, checkpointing into (and resuming from) ``work`` when given; sets
    ``model.formal_sae_metrics``. With a W&B run ``wb``, logs each evaluation and the final metrics."""
    train_seqs, val_seqs = sequences_of(dataset["train"]), sequences_of(dataset["validation"])[: train.val_sentences]
    optimizer = make_optimizer(model, train)
    config = model.formal_sae_config
    start, history, running = 0, [], None
    if work is not None and (work / CHECKPOINT_DIR).is_dir():
        start, history, running = _load_checkpoint(work, model, optimizer, meta)
    for entry in history:  # a resumed run: its W&B run holds the whole curve
        _log_evaluation(wb, entry)

    batches = SentenceBatches(len(train_seqs), train.batch_size, train.seed)
    pad_id = tokenizer.pad_token_id
    bar = tqdm(total=train.steps, initial=start, disable=not progress, desc="train", dynamic_ncols=True)
    real_tokens, t0 = 0, time.perf_counter()
    last = history[-1] if history else {}
    stopped, _ = plateau(history, train.plateau_patience, train.plateau_min_delta)  # a resumed run that had stopped
    model.train()
    for step in range(start, train.steps if not stopped else start):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, train)
        optimizer.zero_grad(set_to_none=True)
        value, n_targets = backward_batch(model, [train_seqs[i] for i in batches.batch(step)], pad_id, train)
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
        real_tokens += n_targets
        running = value if running is None else 0.95 * running + 0.05 * value
        done = step + 1
        if done % train.eval_every == 0 or done == train.steps:
            model.eval()
            validity = evaluate_validity(model, grammar, n_samples=train.validity_samples, repeats=1, seed=train.seed + done)
            last = {
                "step": done,
                "train_loss": running,
                "val_loss": validation_loss(model, val_seqs, pad_id),
                "validity": validity.validity,
                "lr": lr_at(step, train),
            }
            history.append(last)
            _log_evaluation(wb, last)
            model.train()
            stopped, _ = plateau(history, train.plateau_patience, train.plateau_min_delta)
        if stopped:  # the last evaluation ended the run: no checkpoint, the weights of this step are final
            bar.update(1)
            break
        if work is not None and (done % train.checkpoint_every == 0) and done < train.steps:
            _save_checkpoint(work, model, optimizer, done, history, config, train, meta, running)
        bar.set_postfix(
            loss=f"{running:.3f}",
            val=f"{last.get('val_loss', float('nan')):.3f}",
            validity=f"{last.get('validity', float('nan')):.2f}",
        )
        bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - t0
    model.eval()
    final = evaluate_validity(
        model, grammar, n_samples=train.validity_samples, repeats=train.final_validity_repeats, seed=train.seed
    )
    model.formal_sae_metrics = TrainingMetrics(
        validity=final.validity,
        validity_std=final.validity_std,
        val_loss=history[-1]["val_loss"] if history else validation_loss(model, val_seqs, pad_id),
        steps=history[-1]["step"] if stopped else train.steps,
        grammar=meta.grammar,
        preset=config.preset,
        mean_length=final.mean_length,
        mean_depth=final.mean_depth,
        failures=final.failures,
        train_seconds_this_run=elapsed,
        real_tokens_per_second_this_run=real_tokens / elapsed if elapsed > 0 else float("nan"),
        history=history,
        stopped_early=None if train.plateau_patience is None else stopped and history[-1]["step"] < train.steps,
        best_val_loss=None if train.plateau_patience is None else plateau(history, None, train.plateau_min_delta)[1],
    )
    log_summary(wb, {k: v for k, v in model.formal_sae_metrics.to_dict().items() if k != "history"})

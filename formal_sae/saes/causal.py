"""Causally regularised SAEs: the paper's interpolation loss ([The paper: the causal loss][paper-causal-loss]) as a training option.

With f = E o L0 (model up to the hook, then the encoder) and g = W_LM o L1 o D (decoder, then the
rest of the model), each sentence token t_i is paired with its nearest other token t_j *of the
same sentence* in latent space, their latents are interpolated by s, and

    L_caus = d( g((1 - s) l_i + s l_j),  (1 - s) y_i + s y_j )

where y are the clean model's logits (as in the authors' code; equal to g(l) when the
reconstruction is exact) and d is the MSE over logits or KL(softmax(target) || softmax(output)).
The total loss is the base architecture's own SAELens training loss plus beta * L_caus.

Unlike the authors' code, the interpolated activations are written exactly at the sentence
positions of each sequence (theirs were shifted by the 7 prompt tokens and overwrote the prompt),
many sentences are batched (pairs never cross sentences), and any hook point and any SAELens base
architecture work. Gradients reach the SAE only: the model is frozen.

Training has two optional phases: ``pretrain_steps`` of the plain objective with SAELens's
``SAETrainer``, then ``steps`` with the causal term (at ``finetune_lr``), each over a batch of
``sentences_per_step`` sentences. The result saves as a plain SAELens SAE of its base architecture.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from sae_lens import SAE
from sae_lens.saes.sae import TrainCoefficientConfig, TrainStepInput
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from formal_sae.activations import check_hook, iter_sentence_batches, padded_batch, run_from_hook, sentence_mask
from formal_sae.data import column, dataset_metadata
from formal_sae.errors import SAEError
from formal_sae.saes import checkpoints
from formal_sae.saes.config import SAETrainConfig, build_training_sae, is_int, is_positive, is_real
from formal_sae.saes.evaluation import check_sae_fits, check_sae_model
from formal_sae.saes.storage import model_name_of, sae_output_dir, sae_run_config, to_inference
from formal_sae.saes.training import CHECKPOINT_DIR, DEFAULT_CHECKPOINTS, fit_sae, sae_hook_width, set_train_seconds
from formal_sae.seeding import deterministic


@dataclass
class CausalConfig:
    """Settings of the causal term ([The paper: the authors' algorithm][paper-causal-algorithm]; the paper: TopK k=16, expansion 2).

    Attributes:
        coefficient: beta, the weight of the causal loss.
        distance: ``"mse"`` (on logits; the paper's final runs) or ``"kl"``.
        step: ``"random"`` (s ~ U(0, 1), one draw per step, as the paper) or a fixed s in [0, 1].
        schedule: ``"constant"`` beta, or ``"linear"``: a ramp from 0 to beta over the causal phase.
        pretrain_steps: Steps of the plain SAE objective first (SAELens ``SAETrainer``; batches of
            ``batch_size_tokens`` tokens); 0 trains with the causal term from the start.
        steps: Steps with the causal term.
        sentences_per_step: Sentences per causal step.
        finetune_lr: Learning rate of the causal phase (default: the SAE's lr, or lr/10 after pretraining).
    """

    coefficient: float = 1.0
    distance: str = "mse"
    step: str | float = "random"
    schedule: str = "constant"
    pretrain_steps: int = 0
    steps: int = 500
    sentences_per_step: int = 32
    finetune_lr: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.step, str) and self.step != "random":  # "0.5" from a command line or a JSON string
            with contextlib.suppress(ValueError):  # a word stays a word, which validate() refuses by name
                self.step = float(self.step)
        self.validate()  # a config that exists is a valid one: refused where it is written, not deep in a run

    def validate(self) -> None:
        if self.distance not in ("mse", "kl"):
            raise SAEError(f"causal distance must be 'mse' or 'kl', got {self.distance!r}")
        if self.schedule not in ("constant", "linear"):
            raise SAEError(f"causal schedule must be 'constant' or 'linear', got {self.schedule!r}")
        if self.step != "random" and not (isinstance(self.step, (int, float)) and 0 <= float(self.step) <= 1):
            raise SAEError(f"causal step must be 'random' or a number in [0, 1], got {self.step!r}")
        if not is_real(self.coefficient) or not self.coefficient >= 0:  # 0 is a plain SAE; NaN fails ">= 0"
            raise SAEError(f"causal coefficient must be >= 0, got {self.coefficient!r}")
        for name, low in (("steps", 0), ("pretrain_steps", 0), ("sentences_per_step", 1)):
            if not is_int(getattr(self, name)) or getattr(self, name) < low:
                raise SAEError(f"causal {name} must be >= {low} (an integer), got {getattr(self, name)!r}")
        if self.finetune_lr is not None and not is_positive(self.finetune_lr):
            raise SAEError(f"finetune_lr must be > 0, got {self.finetune_lr!r}; leave it unset (None) for the default")

    def beta(self, step: int) -> float:
        return self.coefficient * (step / max(self.steps, 1) if self.schedule == "linear" else 1.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------ the loss
def nearest_partner(latents: torch.Tensor, sentence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each token, the index of the nearest other token of the same sentence in latent space
    (Euclidean), and a mask of tokens that have one (a one-token sentence has no partner)."""
    dist = torch.cdist(latents.detach().float(), latents.detach().float())
    other = sentence[:, None] != sentence[None, :]
    dist = dist.masked_fill(other | torch.eye(len(latents), dtype=torch.bool, device=latents.device), float("inf"))
    best = dist.argmin(dim=1)
    return best, torch.isfinite(dist.min(dim=1).values)


def causal_loss(
    model: HookedTransformer,
    sae,
    hook: str,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    s: float,
    distance: str = "mse",
    clean: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The causal loss on a batch of sentences, and the SAE's latents at their tokens.

    Args:
        model: The frozen model.
        sae: Any SAELens SAE (training or inference): its ``encode``/``decode`` are used.
        hook: The SAE's hook point.
        tokens: ``[batch, pos]`` padded token ids.
        mask: ``[batch, pos]`` True at sentence tokens (the only positions edited and scored).
        s: Interpolation step in [0, 1].
        distance: ``"mse"`` or ``"kl"``.
        clean: Precomputed ``(activations at hook, logits)`` of the clean run.
    """
    if clean is None:
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens, names_filter=hook)
        clean = (cache[hook], logits)
    x, y = clean
    shape = x.shape
    x = x.reshape(*shape[:2], -1)
    sentence = mask.nonzero(as_tuple=True)[0].to(x.device)
    latents = sae.encode(x[mask])
    partner, paired = nearest_partner(latents, sentence)
    mixed = latents + s * (latents[partner] - latents)
    edited = x.clone()
    edited[mask] = sae.decode(mixed).to(x.dtype)  # exactly at the sentence positions
    logits = run_from_hook(model, hook, tokens, edited.reshape(shape))
    y_sent = y[mask]
    target = (y_sent + s * (y_sent[partner] - y_sent)).detach()
    out = logits[mask][paired]
    target = target[paired]
    if len(out) == 0:
        return logits.new_zeros(()), latents
    if distance == "mse":
        return F.mse_loss(out.float(), target.float()), latents
    return F.kl_div(out.float().log_softmax(-1), target.float().softmax(-1), reduction="batchmean"), latents


@torch.no_grad()
def held_out_causal_loss(
    model: HookedTransformer,
    sae: SAE,
    dataset: datasets.DatasetDict,
    split: str = "test",
    distance: str = "mse",
    steps=(0.25, 0.5, 0.75),
    max_sentences: int | None = 500,
    *,
    allow_other_model: bool = False,
) -> float:
    """Mean causal loss (linearity error along latent interpolations) on held-out sentences, at
    fixed steps s so that different SAEs are compared on the same footing. An SAE trained on
    another model is refused unless ``allow_other_model``."""
    hook = check_sae_fits(model, sae)
    check_sae_model(model, sae, allow_other_model)
    total, n = 0.0, 0
    for batch in iter_sentence_batches(model, dataset[split], hook, 64, max_sentences):
        tokens = batch.tokens.to(model.cfg.device)
        logits, cache = model.run_with_cache(tokens, names_filter=hook)
        lengths = batch.mask.sum(1)
        paired = int(lengths[lengths > 1].sum())  # causal_loss averages over tokens with a partner
        for s in steps:
            loss, _ = causal_loss(
                model, sae, hook, tokens, batch.mask.to(tokens.device), s, distance, clean=(cache[hook], logits)
            )
            total += float(loss) * paired
            n += paired
    return total / max(n, 1)


# ------------------------------------------------------------------------------ training
def _sentence_batches(
    split: datasets.Dataset, n: int, seed: int, pad_id: int, prompt_length: int, start_step: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled batches of ``n`` sentences: (padded tokens, sentence mask), from batch
    ``start_step`` on (a resumed run sees the batches an uninterrupted one would)."""
    ids = column(split, "input_ids")
    lengths = torch.tensor(column(split, "length"))
    gen = torch.Generator().manual_seed(seed)
    epoch, offset = divmod(start_step, len(ids) // n)
    for _ in range(epoch):  # the skipped epochs' permutations are drawn all the same: they advance the generator
        torch.randperm(len(ids), generator=gen)
    while True:
        perm = torch.randperm(len(ids), generator=gen).tolist()
        for start in range(offset * n, len(perm) - n + 1, n):
            rows = perm[start : start + n]
            tokens = padded_batch([ids[r] for r in rows], pad_id)
            yield tokens, sentence_mask(lengths[rows], prompt_length, tokens.shape[1])
        offset = 0


@deterministic()
def train_causal_sae(
    model: HookedTransformer,
    dataset: datasets.DatasetDict,
    config: SAETrainConfig | None = None,
    causal: CausalConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    n_checkpoints: int | None = None,
    overwrite: bool = False,
    **overrides: Any,
) -> SAE:
    """Train an SAE with the paper's causal regulariser (default base: TopK, k=16, expansion 2).

    Args:
        model: A formal-sae model; it is frozen during training.
        dataset: Its dataset (the ``train`` split supplies sentences).
        config: The base SAE's settings (any SAELens architecture or ``paper``); ``overrides``
            replace its fields.
        causal: The causal term's settings ([`CausalConfig`][formal_sae.CausalConfig]).
        out_dir: Where to save the SAE (SAELens format, base architecture), built in
            ``<out_dir>.in-progress`` with its checkpoints and moved into place when complete; an
            interrupted run with the same settings resumes (`formal_sae.outputs`).
        progress: Show a progress bar of the causal phase.
        checkpoint_dir: Where to save ``n_checkpoints`` crash-safe checkpoints in each phase (the
            pretraining in ``checkpoint_dir/pretrain``, see `fit_sae`; the
            causal loop in ``checkpoint_dir/causal``), and resume from the latest one: the result is bitwise
            that of an uninterrupted run. Default: inside the in-progress folder of ``out_dir``, with
            `DEFAULT_CHECKPOINTS` checkpoints (none without ``out_dir``).
        n_checkpoints: How many checkpoints each phase saves (see ``checkpoint_dir``).
        overwrite: Replace an existing SAE in ``out_dir`` (only one formal-sae wrote).
    """
    config = dataclasses.replace(config or SAETrainConfig(architecture="topk", k=16, expansion_factor=2), **overrides)
    causal = causal or CausalConfig()
    causal.validate()
    config.validate()
    check_hook(model, config.hook_name)
    if len(dataset["train"]) < causal.sentences_per_step:  # else the batch iterator never yields
        raise SAEError(
            f"the train split has {len(dataset['train'])} sentences, fewer than sentences_per_step={causal.sentences_per_step}"
        )
    if n_checkpoints is None:
        n_checkpoints = DEFAULT_CHECKPOINTS if out_dir is not None or checkpoint_dir is not None else 0
    with sae_output_dir(out_dir, sae_run_config(config, causal=causal.to_dict()), overwrite) as work:
        if checkpoint_dir is None and work is not None:
            checkpoint_dir = work / CHECKPOINT_DIR
        inference = _train_causal(model, dataset, config, causal, work, progress, checkpoint_dir, n_checkpoints)
        if work is not None:
            shutil.rmtree(work / CHECKPOINT_DIR, ignore_errors=True)
    return inference


def _train_causal(
    model, dataset, config: SAETrainConfig, causal: CausalConfig, out_dir, progress: bool, checkpoint_dir, n_checkpoints: int
) -> SAE:
    """The two phases of [`train_causal_sae`][formal_sae.train_causal_sae], checkpointed in ``checkpoint_dir``; the SAE is saved to ``out_dir``."""
    meta = dataset_metadata(dataset)
    if n_checkpoints < 0 or (n_checkpoints and checkpoint_dir is None):
        raise SAEError(f"n_checkpoints={n_checkpoints} needs to be >= 0 and a checkpoint_dir to save them in")
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    current = checkpoints.settings(config, causal=causal.to_dict())
    resume = checkpoints.latest(ckpt_dir / "causal", current) if ckpt_dir else None
    t0 = time.perf_counter()
    if resume:  # the checkpoint holds the pretrained (and partly fine-tuned) SAE
        sae = build_training_sae(config, sae_hook_width(model, config.hook_name), model_name_of(model))
        for k, v in resume[1]["metadata"].items():
            sae.cfg.metadata[k] = v
        checkpoints.remove(ckpt_dir / "pretrain")  # left by a kill just after the causal checkpoint was complete
    elif causal.pretrain_steps:
        pre = dataclasses.replace(config, training_tokens=causal.pretrain_steps * config.batch_size_tokens)
        pre_dir = ckpt_dir / "pretrain" if ckpt_dir else None
        sae, _ = fit_sae(model, dataset, pre, checkpoint_dir=pre_dir, n_checkpoints=n_checkpoints)
    else:
        torch.manual_seed(config.seed)
        sae = build_training_sae(config, sae_hook_width(model, config.hook_name), model_name_of(model))
    lr = causal.finetune_lr if causal.finetune_lr is not None else config.lr / 10 if causal.pretrain_steps else config.lr
    optimizer = torch.optim.Adam(
        [p for p in sae.parameters() if p.requires_grad], lr=lr, betas=(config.adam_beta1, config.adam_beta2)
    )
    gen = np.random.default_rng(config.seed)
    start, seconds_before = 0, 0.0
    if resume:
        path, marker = resume
        checkpoints.load_loop_checkpoint(path, sae, optimizer)
        start, seconds_before = marker["step"], marker["seconds"]
        gen.bit_generator.state = marker["numpy_rng"]
    # metadata SAELens's trainer set on the pretrained SAE (the checkpoint restores it)
    metadata = {k: sae.cfg.metadata[k] for k in ("l0", "num_dead_features") if k in sae.cfg.metadata}
    saves = set(checkpoints.checkpoint_steps(causal.steps, n_checkpoints))
    coefficients = {k: v.value if isinstance(v, TrainCoefficientConfig) else v for k, v in sae.get_coefficients().items()}
    batches = _sentence_batches(
        dataset["train"], causal.sentences_per_step, config.seed, model.tokenizer.pad_token_id, meta.prompt_length, start
    )
    dead = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    bar = tqdm(
        range(start, causal.steps), initial=start, total=causal.steps, disable=not progress, desc="causal SAE", dynamic_ncols=True
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    sae.train()
    try:
        for step in bar:
            tokens, mask = next(batches)
            tokens, mask = tokens.to(model.cfg.device), mask.to(model.cfg.device)
            s = float(gen.uniform()) if causal.step == "random" else float(causal.step)
            with torch.no_grad():
                logits, cache = model.run_with_cache(tokens, names_filter=config.hook_name)
            x = cache[config.hook_name]
            base = sae.training_forward_pass(
                TrainStepInput(
                    sae_in=x.reshape(*x.shape[:2], -1)[mask],
                    coefficients=coefficients,
                    dead_neuron_mask=dead,
                    n_training_steps=step,
                    is_logging_step=False,
                )
            )
            beta = causal.beta(step)
            caus, _ = (
                causal_loss(model, sae, config.hook_name, tokens, mask, s, causal.distance, clean=(x, logits))
                if beta
                else (base.loss.new_zeros(()), None)
            )
            loss = base.loss + beta * caus
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)  # as SAELens's SAETrainer
            optimizer.step()
            bar.set_postfix(mse=f"{base.losses['mse_loss'].item():.3g}", causal=f"{caus.item():.3g}", beta=f"{beta:.2g}")
            if step + 1 in saves:
                state = {"numpy_rng": gen.bit_generator.state, "metadata": metadata}
                seconds = seconds_before + time.perf_counter() - t0
                checkpoints.save_loop_checkpoint(
                    ckpt_dir / "causal", step + 1, sae, optimizer, {"settings": current, "seconds": seconds, **state}
                )
                checkpoints.remove(ckpt_dir / "pretrain")  # superseded: the SAE it pretrained is in this checkpoint
    finally:
        for p in trainable:  # the model is frozen during training only
            p.requires_grad_(True)
    inference = to_inference(sae, model, dataset, config, out_dir, extra={"causal": causal.to_dict()})
    set_train_seconds(inference, seconds_before + time.perf_counter() - t0)
    return inference

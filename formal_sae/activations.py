"""Model activations at sentence tokens, in bounded batches, aligned with their dataset rows.

SAELens's ``ActivationsStore`` packs and shuffles sequences, which loses the link between an
activation and its token's ground-truth features, and it trains on padding and prompt tokens.
This module runs the model over a dataset split in length-sorted batches and keeps only the
sentence tokens (no prompt, no ``<eos>``, no padding), recording for each activation the dataset
row and position it came from. SAE training, evaluation and the analysis all read from here.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from transformer_lens import HookedTransformer

from formal_sae.data import DatasetMetadata, column, dataset_metadata
from formal_sae.errors import DatasetError, SAEError

DEFAULT_HOOK = "blocks.0.hook_resid_post"  # the paper's "res0"


def check_hook(model: HookedTransformer, hook_name: str) -> None:
    """Raise an SAEError listing the model's hook points if ``hook_name`` is not one of them."""
    if hook_name not in model.hook_dict:
        names = [n for n in model.hook_dict if not n.startswith(("blocks.0.attn.hook_rot", "hook_tokens"))]
        raise SAEError(f"the model has no hook point {hook_name!r}; valid hook names are: {', '.join(names)}")


def stop_layer(hook_name: str) -> int | None:
    """The layer after which a forward pass can stop and still reach ``hook_name``."""
    m = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(m.group(1)) + 1 if m else None


@torch.no_grad()
def hook_shape(model: HookedTransformer, hook_name: str) -> tuple[int, ...]:
    """Shape of one token's activation at ``hook_name``: ``(d,)``, or ``(n_heads, d_head)`` at
    per-head hooks. Raises an SAEError for hooks the model never runs or that are not per token."""
    check_hook(model, hook_name)
    n = model.cfg.n_heads + 1  # a sequence length that no head count can be mistaken for
    tokens = torch.full((1, n), model.tokenizer.bos_token_id, dtype=torch.long, device=model.cfg.device)
    _, cache = model.run_with_cache(tokens, names_filter=hook_name, stop_at_layer=stop_layer(hook_name))
    if hook_name not in cache:
        raise SAEError(
            f"the model never runs hook {hook_name!r} (TransformerLens runs it only with use_attn_result, "
            "use_split_qkv_input or use_hook_mlp_in set); choose another hook"
        )
    act = cache[hook_name]
    if act.shape[1] != n:
        raise SAEError(
            f"{hook_name} does not hold one activation per token (shape {tuple(act.shape)} for {n} tokens; "
            "attention scores and patterns are per pair of positions); choose another hook"
        )
    return tuple(act.shape[2:])


def hook_width(model: HookedTransformer, hook_name: str) -> int:
    """Size of one token's activation at ``hook_name`` (trailing dimensions flattened)."""
    return int(np.prod(hook_shape(model, hook_name)))


@dataclass
class SentenceBatch:
    """Activations of the sentence tokens of some dataset rows.

    Attributes:
        acts: ``[n_tokens, d]`` float32 activations.
        rows: ``[n_tokens]`` dataset row of each token.
        positions: ``[n_tokens]`` position of each token in its row's ``input_ids``.
        tokens: ``[batch, pos]`` the padded token batch that was run.
        mask: ``[batch, pos]`` True at sentence-token positions (``acts`` is ``act[mask]``).
        batch_rows: ``[batch]`` dataset row of each sequence in ``tokens``.
    """

    acts: torch.Tensor
    rows: np.ndarray
    positions: np.ndarray
    tokens: torch.Tensor
    mask: torch.Tensor
    batch_rows: np.ndarray


def sentence_mask(lengths: torch.Tensor, prompt_length: int, width: int) -> torch.Tensor:
    """``[batch, width]`` mask of sentence-token positions (after the prompt, before ``<eos>``)."""
    pos = torch.arange(width)
    return (pos >= prompt_length) & (pos < prompt_length + lengths[:, None])


def padded_batch(input_ids: list[list[int]], pad_id: int) -> torch.Tensor:
    """Right-pad token sequences to the longest (one vectorised copy, not a tensor per row)."""
    lengths = np.fromiter(map(len, input_ids), dtype=np.int64, count=len(input_ids))
    out = np.full((len(input_ids), int(lengths.max())), pad_id, dtype=np.int64)
    out[np.arange(out.shape[1]) < lengths[:, None]] = np.fromiter(itertools.chain.from_iterable(input_ids), dtype=np.int64)
    return torch.from_numpy(out)


def check_split(split: datasets.Dataset, max_sentences: int | None, action: str = "use") -> None:
    """Refuse an empty split or a ``max_sentences`` below 1 with a [`DatasetError`][formal_sae.DatasetError] (``action``:
    what the caller does with the split, for the message)."""
    if len(split) == 0:
        raise DatasetError(f"the dataset split is empty; {action} a split with sentences (generate more)")
    if max_sentences is not None and max_sentences < 1:
        raise DatasetError(f"max_sentences must be >= 1, got {max_sentences}")


def iter_sentence_batches(
    model: HookedTransformer,
    split: datasets.Dataset,
    hook_name: str = DEFAULT_HOOK,
    batch_size: int = 256,
    max_sentences: int | None = None,
    order: np.ndarray | None = None,
) -> Iterator[SentenceBatch]:
    """Run ``model`` over ``split`` and yield sentence-token activations, batch by batch.

    Rows are taken in dataset order (i.i.d. samples, so any prefix is an unbiased sample) in
    pools of 16 batches; each pool is sorted by length so that batches carry little padding.
    ``order``: run exactly these rows, in this order, instead (``max_sentences`` is then ignored).
    """
    check_hook(model, hook_name)
    check_split(split, max_sentences if order is None else None)
    meta: DatasetMetadata = dataset_metadata(split)
    n = len(split) if max_sentences is None else min(len(split), max_sentences)
    if order is not None:
        n = int(order.max()) + 1
    input_ids = column(split, "input_ids")[:n]
    lengths = np.asarray(column(split, "length")[:n])
    if order is None:
        pool = 16 * batch_size
        order = np.concatenate([start + np.argsort(lengths[start : start + pool], kind="stable") for start in range(0, n, pool)])
    vocab = model.cfg.d_vocab
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        tokens = padded_batch([input_ids[i] for i in rows], model.tokenizer.pad_token_id)
        if int(tokens.max()) >= vocab:
            raise DatasetError(
                f"the dataset uses token id {int(tokens.max())} but the model's vocabulary has {vocab} tokens: dataset and model do not match"
            )
        if tokens.shape[1] > model.cfg.n_ctx:
            raise DatasetError(f"sequences of {tokens.shape[1]} tokens exceed the model's context of {model.cfg.n_ctx}")
        mask = sentence_mask(torch.as_tensor(lengths[rows]), meta.prompt_length, tokens.shape[1])
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=hook_name, stop_at_layer=stop_layer(hook_name))
        act = cache[hook_name]
        act = act.reshape(*act.shape[:2], -1).float().cpu()
        batch_idx, pos_idx = mask.nonzero(as_tuple=True)
        yield SentenceBatch(
            acts=act[mask],
            rows=rows[batch_idx.numpy()],
            positions=pos_idx.numpy(),
            tokens=tokens,
            mask=mask,
            batch_rows=rows,
        )


@torch.no_grad()
def collect_activations(
    model: HookedTransformer,
    split: datasets.Dataset,
    hook_name: str = DEFAULT_HOOK,
    max_tokens: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """``[n_tokens, d]`` activations of the sentence tokens of ``split`` (up to ``max_tokens``), in
    dataset order (row by row, position by position): a budget takes the first rows of the split,
    an unbiased sample, not the shortest sentences of a length-sorted pool. The rows run sorted
    by length (with the heavy tail of sentence lengths, dataset-order batches padded to 2.4
    positions per sentence token, sorted ones to 1.6)."""
    from tqdm.auto import tqdm

    lengths = np.asarray(column(split, "length"))
    n = len(lengths) if max_tokens is None else min(len(lengths), int(np.searchsorted(np.cumsum(lengths), max_tokens)) + 1)
    chunks, rows, positions = [], [], []
    bar = tqdm(total=max_tokens or None, disable=not progress, desc="activations", unit="tok")
    for batch in iter_sentence_batches(model, split, hook_name, batch_size, order=np.argsort(lengths[:n], kind="stable")):
        chunks.append(batch.acts)
        rows.append(batch.rows)
        positions.append(batch.positions)
        bar.update(len(batch.acts))
    bar.close()
    order = torch.from_numpy(np.lexsort((np.concatenate(positions), np.concatenate(rows))))
    acts = torch.cat(chunks)[order]
    return acts[:max_tokens] if max_tokens is not None else acts


def resume_layer(hook: str) -> int | None:
    """The block to resume from after ``hook`` when it holds the whole residual stream, else None."""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(post|pre)", hook)
    if not m:
        return None
    return int(m.group(1)) + (m.group(2) == "post")


def run_from_hook(model: HookedTransformer, hook: str, tokens: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """Logits of the model when ``activation`` (``[batch, pos, ...]``) replaces its activation at
    ``hook``: resumed from the next block for residual-stream hooks (skipping the layers before
    it), else by a replacing hook on a full forward pass of ``tokens``."""
    layer = resume_layer(hook)
    if layer is not None:
        return model(activation.reshape(*activation.shape[:2], -1), start_at_layer=layer)

    def replace(act: torch.Tensor, hook) -> torch.Tensor:
        return activation.reshape(act.shape).to(act.dtype)

    return model.run_with_hooks(tokens, fwd_hooks=[(hook, replace)])

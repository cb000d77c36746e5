"""Many short sentences in one forward pass, each computed exactly as if it were alone.

Formal-language sentences are short and long-tailed (Expr averages under 5 tokens, Dyck-2 reaches
over 100), so padding a batch to its longest sentence wastes most of it, and the paper padded
every sentence to 128 tokens. Here sentences are packed end to end into rows as wide as the
longest one. TransformerLens's forward has no per-sentence attention mask or position ids, so two
hooks supply them (`packed_hooks`): ``hook_pos_embed`` takes each token's position within
its sentence, and every ``hook_attn_scores`` (already causal) is masked to the token's own
sentence. Language-model training runs this way. (The activation cache does not: rows as wide
as the longest sentence make attention costlier per token than batches of similar lengths,
and it measured no faster.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from formal_sae.errors import ModelError


@dataclass
class PackedBatch:
    """Sentences packed end to end into rows as wide as the longest one.

    ``sequences`` gives, for every token, the index of the sentence it comes from in the list that
    was packed (-1 at the padding that ends a row); ``positions`` restarts at 0 with every
    sentence.
    """

    tokens: torch.Tensor  # [row, pos]
    labels: torch.Tensor  # [row, pos - 1]: the next token within the same sentence, else -100
    positions: torch.Tensor  # [row, pos]
    sequences: torch.Tensor  # [row, pos]

    @property
    def n_targets(self) -> int:
        return int((self.labels != -100).sum())

    def chunks(self, max_tokens: int) -> Iterator[PackedBatch]:
        """Consecutive groups of rows of at most ``max_tokens`` tokens (at least one row each)."""
        rows = max(1, max_tokens // self.tokens.shape[1])
        for start in range(0, self.tokens.shape[0], rows):
            part = slice(start, start + rows)
            yield PackedBatch(self.tokens[part], self.labels[part], self.positions[part], self.sequences[part])


def pack_rows(lengths: list[int]) -> list[list[int]]:
    """First-fit decreasing: the indices of the sentences in each row of width ``max(lengths)``
    (at most 11/9 of the optimal number of rows, plus one). Quadratic in the worst case: meant
    for a training batch, not a whole dataset."""
    width = max(lengths)
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, space in enumerate(free) if space >= lengths[i]), len(rows))
        if row == len(rows):
            rows.append([])
            free.append(width)
        rows[row].append(i)
        free[row] -= lengths[i]
    return rows


def pack_sequences(sequences: list[list[int]], pad_id: int, device: str = "cpu") -> PackedBatch:
    """Pack token sequences into as few rows as first-fit decreasing finds (see `PackedBatch`)."""
    lengths = [len(s) for s in sequences]
    rows = pack_rows(lengths)
    shape = (len(rows), max(lengths))
    tokens, positions = np.full(shape, pad_id), np.zeros(shape, dtype=np.int64)
    labels, owner = np.full((shape[0], shape[1] - 1), -100), np.full(shape, -1)
    for r, members in enumerate(rows):
        offset = 0
        for i in members:
            end = offset + lengths[i]
            tokens[r, offset:end] = sequences[i]
            labels[r, offset : end - 1] = sequences[i][1:]
            positions[r, offset:end] = np.arange(lengths[i])
            owner[r, offset:end] = i
            offset = end
        positions[r, offset:] = np.arange(shape[1] - offset)
    return PackedBatch(*(torch.from_numpy(a).to(device) for a in (tokens, labels, positions, owner)))


def packed_hooks(model, batch: PackedBatch) -> list[tuple[str | Callable[[str], bool], Callable]]:
    """Forward hooks that make ``model`` compute every sentence of ``batch`` as if alone: use them
    as ``with model.hooks(fwd_hooks=packed_hooks(model, batch)): model(batch.tokens)``."""
    if model.cfg.positional_embedding_type != "standard":
        raise ModelError(f"packed batches need learned positional embeddings, not {model.cfg.positional_embedding_type!r}")
    same_sentence = (batch.sequences[:, :, None] == batch.sequences[:, None, :])[:, None]  # [row, 1, query, key]
    return [
        ("hook_pos_embed", lambda _, hook: F.embedding(batch.positions, model.W_pos)),
        (lambda name: name.endswith("hook_attn_scores"), lambda scores, hook: scores.masked_fill(~same_sentence, -math.inf)),
    ]

"""Measures for claim C4 (the causal regulariser, [The paper: the causal loss][paper-causal-loss]) that can come out against it.

Every SAE is measured on the same things, chosen without it:

* [`held_out_pairs`][formal_sae.held_out_pairs]: token pairs (i, j) of one sentence, drawn at random with a seeded
  generator from the dataset alone (not each SAE's own nearest neighbours, which would let an SAE
  pick the pairs it is judged on).
* [`interpolation_metrics`][formal_sae.interpolation_metrics]: on those pairs, the paper's causal loss and a scale-free
  linearity error of g (the decoder, then the rest of the model) along the latent segment.
* `effect_predictability` (in its own module, re-exported
  here): for latents matched by feature (the caller names them), does the natural data predict
  what clamping the latent does to the next-token class distribution?

Results are dataclasses with ``to_dict``/``from_dict`` (JSON) and keep per-pair / per-bin values
so the caller can bootstrap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from sae_lens import SAE
from transformer_lens import HookedTransformer

from formal_sae.activations import padded_batch, run_from_hook
from formal_sae.data import column, dataset_metadata
from formal_sae.errors import DatasetError, SAEError
from formal_sae.saes.evaluation import check_sae_fits, check_sae_model

#: Pairs whose endpoint outputs differ by less than this (L2 over the vocabulary of centred
#: log-probabilities, in nats) are left out of the linearity error: its ratio is then noise / noise.
MIN_ENDPOINT_DISTANCE = 1e-3


def sample_rows(n_rows: int, max_sentences: int | None, seed: int) -> np.ndarray:
    """A seeded random sample of ``max_sentences`` row indices (sorted), or all rows."""
    if max_sentences is None or max_sentences >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=max_sentences, replace=False))


def _fingerprint(input_ids: list[list[int]], rows: Sequence[int]) -> str:
    """Hash of the token ids of ``rows``: pairs refuse a dataset they were not drawn from."""
    h = hashlib.sha256()
    for r in sorted(set(rows)):
        h.update(np.asarray(input_ids[r], dtype=np.int64).tobytes() + b"|")
    return h.hexdigest()[:16]


def _nan_to_none(values) -> list:
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]


# ------------------------------------------------------------------------------ pairs
@dataclass
class HeldOutPairs:
    """Token pairs (i, j) within one sentence of a dataset split, drawn independently of any SAE.

    Attributes:
        split: The dataset split.
        seed: Seed of the draw.
        n_sentences: Sentences the pairs were drawn from (a seeded sample of the split).
        rows: Dataset row of each pair.
        first, second: Positions of tokens i and j in that row's ``input_ids`` (sentence tokens only).
        fingerprint: Hash of the token ids of the rows used (checked when the pairs are used).
    """

    split: str
    seed: int
    n_sentences: int
    rows: list[int]
    first: list[int]
    second: list[int]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.rows)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeldOutPairs:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})

    def check(self, dataset: datasets.DatasetDict) -> list[list[int]]:
        """The split's ``input_ids``, after checking these pairs were drawn from it."""
        if self.split not in dataset:
            raise DatasetError(f"the dataset has no split {self.split!r}, which the pairs were drawn from")
        input_ids = column(dataset[self.split], "input_ids")
        if self.rows and (max(self.rows) >= len(input_ids) or _fingerprint(input_ids, self.rows) != self.fingerprint):
            raise DatasetError(f"these pairs were drawn from another dataset (split {self.split!r} does not match)")
        return input_ids


def held_out_pairs(
    model: HookedTransformer,
    dataset: datasets.DatasetDict,
    *,
    split: str = "test",
    n_pairs: int = 1000,
    max_sentences: int | None = 500,
    seed: int = 0,
) -> HeldOutPairs:
    """Draw up to ``n_pairs`` pairs of distinct sentence tokens of one sentence (no prompt, no ``<eos>``).

    Token i is drawn uniformly among the sentence tokens of a seeded sample of ``max_sentences``
    sentences (without replacement: each token is an i at most once, so every token weighs the same,
    as in the causal loss), then j uniformly among the other tokens of its sentence. Only the
    dataset and the seed decide: every SAE is measured on the same pairs.
    """
    if split not in dataset:
        raise DatasetError(f"the dataset has no split {split!r}")
    part = dataset[split]
    prompt = dataset_metadata(dataset).prompt_length
    input_ids = column(part, "input_ids")
    lengths = np.asarray(column(part, "length"), dtype=np.int64)
    longest = int(max((len(ids) for ids in input_ids), default=0))
    if longest > model.cfg.n_ctx:
        raise DatasetError(f"sequences of {longest} tokens exceed the model's context of {model.cfg.n_ctx}")
    rng = np.random.default_rng([seed, 1])  # a stream of its own: not the one that sampled the sentences
    sampled = sample_rows(len(part), max_sentences, seed)
    rows = sampled[lengths[sampled] >= 2]  # a one-token sentence has no partner
    token_row = np.repeat(rows, lengths[rows])
    token_idx = np.concatenate([np.arange(n) for n in lengths[rows]]) if len(rows) else np.zeros(0, dtype=np.int64)
    pick = np.sort(rng.choice(len(token_row), size=min(n_pairs, len(token_row)), replace=False))
    r, i = token_row[pick], token_idx[pick]
    j = rng.integers(0, lengths[r] - 1) if len(r) else np.zeros(0, dtype=np.int64)  # among the n - 1 others
    j = j + (j >= i)
    rows_out = r.tolist()
    return HeldOutPairs(
        split=split,
        seed=seed,
        n_sentences=len(sampled),
        rows=rows_out,
        first=(prompt + i).tolist(),
        second=(prompt + j).tolist(),
        fingerprint=_fingerprint(input_ids, rows_out),
    )


# ------------------------------------------------------------------------------ interpolation
@dataclass
class InterpolationMetrics:
    """The causal loss and the linearity error of one SAE on held-out pairs.

    Attributes:
        distance: Distance of the causal loss (``mse`` on logits or ``kl``), as ``causal_loss``.
        steps: Interpolation steps s.
        causal_loss: Mean over pairs and steps of d(g((1-s) l_i + s l_j), (1-s) y_i + s y_j),
            y the clean model's logits at tokens i and j.
        linearity_error: Mean over the kept pairs and steps of
            ||g(l_s) - ((1-s) g(l_i) + s g(l_j))|| / ||g(l_i) - g(l_j)||, g = centred next-token
            log-probabilities at token i; None if no pair is kept.
        n_pairs: Pairs measured.
        n_dropped: Pairs left out of the linearity error (endpoint distance below ``min_endpoint_distance``).
        min_endpoint_distance: The threshold, in nats (L2 over the vocabulary).
        pair_causal_loss: Per pair, the causal loss (mean over steps).
        pair_linearity_error: Per pair, the linearity error (mean over steps); None where dropped.
        pair_endpoint_distance: Per pair, ||g(l_i) - g(l_j)||.
    """

    distance: str
    steps: list[float]
    causal_loss: float
    linearity_error: float | None
    n_pairs: int
    n_dropped: int
    min_endpoint_distance: float
    pair_causal_loss: list[float] = field(repr=False)
    pair_linearity_error: list[float | None] = field(repr=False)
    pair_endpoint_distance: list[float] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["pair_linearity_error"] = _nan_to_none(d["pair_linearity_error"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InterpolationMetrics:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def _centred(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities with their mean over the vocabulary removed (= logits minus their mean).

    Why this g: the output distribution fixes logits only up to a constant per position, so the
    constant is removed (raw logits would count a shift that changes nothing); and unlike plain
    log-probabilities it is linear in the logits, so g is exactly affine whenever the map from the
    hook to the logits is, and the softmax's own log-partition curvature is not charged to the SAE.
    Units are nats, so the tiny-distance threshold is absolute, the same for every SAE."""
    logits = logits.double()
    return logits - logits.mean(-1, keepdim=True)


def _distance(out: torch.Tensor, target: torch.Tensor, distance: str) -> torch.Tensor:
    """Per token, as ``causal_loss``: mean squared logit error, or KL(softmax(target) || softmax(out))."""
    if distance == "mse":
        return ((out.float() - target.float()) ** 2).mean(-1)
    return F.kl_div(out.float().log_softmax(-1), target.float().softmax(-1), reduction="none").sum(-1)


@torch.no_grad()
def interpolation_metrics(
    model: HookedTransformer,
    sae: SAE,
    dataset: datasets.DatasetDict,
    pairs: HeldOutPairs,
    *,
    steps: Sequence[float] = (0.25, 0.5, 0.75),
    distance: str = "mse",
    min_endpoint_distance: float = MIN_ENDPOINT_DISTANCE,
    batch_size: int = 64,
    allow_other_model: bool = False,
) -> InterpolationMetrics:
    """Causal loss and linearity error of ``sae`` on ``pairs`` (see [`InterpolationMetrics`][formal_sae.saes.causal_metrics.InterpolationMetrics]).

    For each pair only token i's activation at the SAE's hook is replaced, by the decoded latents
    (no error term, as the paper's g = W_LM o L1 o D), and the output is read at token i: g is then a
    function of one latent vector in the sentence's own clean context, and pairs do not interact
    (``causal_loss`` edits every token of a sentence at once, which training needs for speed).
    The rest of the model runs through `run_from_hook`, as in training.
    """
    if distance not in ("mse", "kl"):
        raise SAEError(f"distance must be 'mse' or 'kl', got {distance!r}")
    if not all(0 <= s <= 1 for s in steps) or not steps:
        raise SAEError(f"steps must be numbers in [0, 1], got {list(steps)!r}")
    hook = check_sae_fits(model, sae)
    check_sae_model(model, sae, allow_other_model)
    input_ids = pairs.check(dataset)
    grid = torch.tensor([0.0, *steps, 1.0], device=model.cfg.device)  # endpoints first and last
    n_eval = len(grid)
    losses, ratios, gaps = [], [], []
    for start in range(0, len(pairs), batch_size):
        r = pairs.rows[start : start + batch_size]
        pi = torch.tensor(pairs.first[start : start + batch_size], device=model.cfg.device)
        pj = torch.tensor(pairs.second[start : start + batch_size], device=model.cfg.device)
        # the model is causal: tokens after i and j change nothing read here
        tokens = padded_batch(
            [input_ids[row][: max(a, b) + 1] for row, a, b in zip(r, pi.tolist(), pj.tolist(), strict=True)],
            model.tokenizer.pad_token_id,
        ).to(model.cfg.device)
        clean, cache = model.run_with_cache(tokens, names_filter=hook)
        x = cache[hook]
        shape = x.shape
        x = x.reshape(*shape[:2], -1)
        b = torch.arange(len(r), device=x.device)
        lat_i, lat_j = sae.encode(x[b, pi]), sae.encode(x[b, pj])
        mixed = lat_i[None] + grid[:, None, None].to(lat_i) * (lat_j - lat_i)[None]  # [eval, pair, d_sae]
        edited = x.repeat(n_eval, 1, 1)  # row e * B + b: evaluation e of pair b
        rows_all = torch.arange(len(edited), device=x.device)
        pos_all = pi.repeat(n_eval)
        edited[rows_all, pos_all] = sae.decode(mixed.reshape(n_eval * len(r), -1)).to(x.dtype)
        out = run_from_hook(model, hook, tokens.repeat(n_eval, 1), edited.reshape(n_eval * shape[0], *shape[1:]))
        out = out[rows_all, pos_all].reshape(n_eval, len(r), -1)
        # the paper's L_caus: output of the interpolation vs interpolation of the clean outputs
        y_i, y_j = clean[b, pi], clean[b, pj]
        s = grid[1:-1, None, None].to(y_i)
        target = y_i[None] + s * (y_j - y_i)[None]
        losses.append(_distance(out[1:-1], target, distance).mean(0).cpu())
        # linearity of g along the segment, relative to the distance between its endpoints
        g = _centred(out)
        line = g[0][None] + grid[1:-1, None, None].double() * (g[-1] - g[0])[None]
        gap = (g[-1] - g[0]).norm(dim=-1)
        ratios.append(((g[1:-1] - line).norm(dim=-1) / gap.clamp_min(1e-300)).mean(0).cpu())
        gaps.append(gap.cpu())
    loss = torch.cat(losses).double() if losses else torch.zeros(0, dtype=torch.float64)
    ratio = torch.cat(ratios) if ratios else torch.zeros(0, dtype=torch.float64)
    gap = torch.cat(gaps) if gaps else torch.zeros(0, dtype=torch.float64)
    kept = gap >= min_endpoint_distance
    ratio = torch.where(kept, ratio, torch.full_like(ratio, float("nan")))
    return InterpolationMetrics(
        distance=distance,
        steps=[float(s) for s in steps],
        causal_loss=float(loss.mean()) if len(loss) else float("nan"),
        linearity_error=float(ratio[kept].mean()) if bool(kept.any()) else None,
        n_pairs=len(loss),
        n_dropped=int((~kept).sum()),
        min_endpoint_distance=float(min_endpoint_distance),
        pair_causal_loss=loss.tolist(),
        pair_linearity_error=_nan_to_none(ratio.tolist()),
        pair_endpoint_distance=gap.tolist(),
    )


# ------------------------------------------------------------------------------ predictability

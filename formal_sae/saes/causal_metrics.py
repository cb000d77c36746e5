"""Measures for claim C4 (the causal regulariser, PAPER.md §8) that can come out against it.

Every SAE is measured on the same things, chosen without it:

* :func:`held_out_pairs`: token pairs (i, j) of one sentence, drawn at random with a seeded
  generator from the dataset alone (not each SAE's own nearest neighbours, which would let an SAE
  pick the pairs it is judged on).
* :func:`interpolation_metrics`: on those pairs, the paper's causal loss and a scale-free
  linearity error of g (the decoder, then the rest of the model) along the latent segment.
* :func:`effect_predictability`: for latents matched by feature (the caller names them), does the
  natural data predict what clamping the latent does to the next-token class distribution?

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

from formal_sae.activations import iter_sentence_batches, padded_batch, run_from_hook
from formal_sae.data import column, dataset_metadata, grammar_of
from formal_sae.errors import DatasetError, SAEError
from formal_sae.interventions import Intervention, run_intervened, token_classes
from formal_sae.saes.evaluation import check_sae_fits, check_sae_model

#: Pairs whose endpoint outputs differ by less than this (L2 over the vocabulary of centred
#: log-probabilities, in nats) are left out of the linearity error: its ratio is then noise / noise.
MIN_ENDPOINT_DISTANCE = 1e-3
#: A clamp whose RMS shift of the class probabilities is below this "does nothing": R² is undefined.
MIN_SHIFT = 1e-6


def _fingerprint(input_ids: list[list[int]], rows: Sequence[int]) -> str:
    """Hash of the token ids of ``rows``: pairs refuse a dataset they were not drawn from."""
    h = hashlib.sha256()
    for r in sorted(set(rows)):
        h.update(np.asarray(input_ids[r], dtype=np.int64).tobytes() + b"|")
    return h.hexdigest()[:16]


def _sample_rows(n_rows: int, max_sentences: int | None, seed: int) -> np.ndarray:
    """A seeded random sample of ``max_sentences`` row indices (sorted), or all rows."""
    if max_sentences is None or max_sentences >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=max_sentences, replace=False))


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
    sampled = _sample_rows(len(part), max_sentences, seed)
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
    """Causal loss and linearity error of ``sae`` on ``pairs`` (see :class:`InterpolationMetrics`).

    For each pair only token i's activation at the SAE's hook is replaced, by the decoded latents
    (no error term, as the paper's g = W_LM o L1 o D), and the output is read at token i: g is then a
    function of one latent vector in the sentence's own clean context, and pairs do not interact
    (``causal_loss`` edits every token of a sentence at once, which training needs for speed).
    The rest of the model runs through :func:`~formal_sae.activations.run_from_hook`, as in training.
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
@dataclass
class Predictability:
    """How well natural data predicts the effect of clamping one latent (see :func:`effect_predictability`).

    Attributes:
        feature: The feature the latent was matched to.
        latent: The latent's index in its SAE.
        r2: 1 - sum (observed - predicted)^2 / sum (observed - mean observed)^2 over bins x classes
            (1: predicted exactly; <= 0: no better than predicting no shift; unbounded below, about
            -(rms_predicted / rms_observed)^2 for a clamp much weaker than predicted, so summarise
            many latents by a median or a share, not a mean); None with ``reason`` when undefined
            (the latent is never active, or its clamp moves nothing).
        slope: Least-squares slope of observed on predicted shifts through the origin (1: the right size).
        reason: Why ``r2`` is None.
        classes: The grammar classes.
        bin_values: The clamp value of each bin: the mean natural activation in it.
        bin_counts: Tokens in each bin.
        predicted, observed: ``[bin][class]`` shifts of the mean class probabilities.
        rms_predicted, rms_observed: Root mean square of the shifts.
        n_tokens: Sentence tokens measured; ``active_fraction``: the share where the latent is nonzero.
    """

    feature: str
    latent: int
    r2: float | None
    slope: float | None
    reason: str | None
    classes: list[str]
    bin_values: list[float]
    bin_counts: list[int]
    predicted: list[list[float]] = field(repr=False)
    observed: list[list[float]] = field(repr=False)
    rms_predicted: float = 0.0
    rms_observed: float = 0.0
    n_tokens: int = 0
    active_fraction: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Predictability:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def _quantile_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index of each value, by quantiles (ties may leave bins empty; they are dropped later)."""
    edges = np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.searchsorted(edges, values, side="right")


def _r2_and_slope(predicted: np.ndarray, observed: np.ndarray) -> tuple[float, float | None]:
    resid = float(((observed - predicted) ** 2).sum())
    total = float(((observed - observed.mean()) ** 2).sum())
    denom = float((predicted**2).sum())
    return 1.0 - resid / total, (float((predicted * observed).sum()) / denom if denom > 0 else None)


@torch.no_grad()
def effect_predictability(
    model: HookedTransformer,
    sae: SAE,
    dataset: datasets.DatasetDict,
    latents: dict[str, int],
    *,
    n_bins: int = 5,
    split: str = "test",
    max_sentences: int | None = 200,
    seed: int = 0,
    min_shift: float = MIN_SHIFT,
    batch_size: int = 128,
    allow_other_model: bool = False,
) -> dict[str, Predictability]:
    """For each feature's latent: is the effect of clamping it predicted by the natural data?

    The latent's nonzero activations on a seeded sample of ``max_sentences`` sentences are cut into
    ``n_bins`` quantile bins. For bin b, the *predicted* shift of the mean next-token class
    distribution (:func:`~formal_sae.interventions.token_classes`) is (mean at the tokens whose
    value falls in b) - (mean at all tokens), both from the clean model; the *observed* shift is
    (mean at all tokens with the latent clamped to b's mean value at every position, error term
    kept, :func:`~formal_sae.interventions.run_intervened`) - (clean mean). A clamp whose RMS shift
    is below ``min_shift`` does nothing: its R² is None (never 1), with the reason.
    """
    hook = check_sae_fits(model, sae)
    check_sae_model(model, sae, allow_other_model)
    bad = {f: j for f, j in latents.items() if not 0 <= int(j) < sae.cfg.d_sae}
    if bad:
        raise SAEError(f"latent indices out of range 0..{sae.cfg.d_sae - 1}: {bad}")
    if n_bins < 1:
        raise SAEError(f"n_bins must be >= 1, got {n_bins}")
    part = dataset[split]
    names, classes = token_classes(grammar_of(dataset_metadata(dataset)), model.tokenizer)
    classes = classes.to(model.cfg.device)
    rows = _sample_rows(len(part), max_sentences, seed)
    lengths = np.asarray(column(part, "length"))
    order = rows[np.argsort(lengths[rows], kind="stable")]  # length-sorted: little padding
    idx = torch.tensor(sorted(set(int(j) for j in latents.values())), dtype=torch.long)
    batches, clean_parts, value_parts = [], [], []
    for batch in iter_sentence_batches(model, part, hook, batch_size, order=order):
        tokens, mask = batch.tokens.to(model.cfg.device), batch.mask.to(model.cfg.device)
        batches.append((tokens, mask))
        clean_parts.append((model(tokens).float().softmax(-1) @ classes)[mask].double().cpu())
        value_parts.append(sae.encode(batch.acts.to(sae.device))[:, idx].double().cpu())
    clean = torch.cat(clean_parts).numpy()  # [token, class]
    values = dict(zip(idx.tolist(), torch.cat(value_parts).T.numpy(), strict=True))
    clean_mean = clean.mean(0)
    out: dict[str, Predictability] = {}
    done: dict[int, Predictability] = {}  # several features often share a latent: measure it once
    for feature, j in latents.items():
        if int(j) in done:
            out[feature] = dataclasses.replace(done[int(j)], feature=feature)
            continue
        v = values[int(j)]
        active = v != 0
        result = Predictability(
            feature=feature,
            latent=int(j),
            r2=None,
            slope=None,
            reason=None,
            classes=names,
            bin_values=[],
            bin_counts=[],
            predicted=[],
            observed=[],
            n_tokens=len(v),
            active_fraction=float(active.mean()) if len(v) else 0.0,
        )
        out[feature] = done[int(j)] = result
        if not active.any():
            result.reason = "the latent is never active on these sentences"
            continue
        bins = _quantile_bins(v[active], n_bins)
        predicted, observed = [], []
        for b in np.unique(bins):  # empty bins (ties) are skipped
            in_bin = bins == b
            value = float(v[active][in_bin].mean())
            intervention = Intervention("clamp", [int(j)], value)
            total = np.zeros(len(names))
            for tokens, mask in batches:
                logits = run_intervened(model, sae, tokens, intervention, use_error_term=True)
                total += (logits.float().softmax(-1) @ classes)[mask].double().sum(0).cpu().numpy()
            result.bin_values.append(value)
            result.bin_counts.append(int(in_bin.sum()))
            predicted.append(clean[active][in_bin].mean(0) - clean_mean)
            observed.append(total / len(clean) - clean_mean)
        pred, obs = np.array(predicted), np.array(observed)
        result.predicted, result.observed = pred.tolist(), obs.tolist()
        result.rms_predicted, result.rms_observed = float(np.sqrt((pred**2).mean())), float(np.sqrt((obs**2).mean()))
        if result.rms_observed < min_shift:
            result.reason = (
                f"clamping the latent does not move the class distribution (RMS shift {result.rms_observed:.1e} < {min_shift:g})"
            )
            continue
        result.r2, result.slope = _r2_and_slope(pred.ravel(), obs.ravel())
    return out

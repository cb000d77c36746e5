"""Claim C3 ([The paper: interventions][paper-interventions]): do a feature's latents move the model's outputs the way the feature predicts?

A feature ``f`` splits the sentence tokens into *source* tokens (``f`` low: 0 for a binary feature, at
most its 1/3 quantile for an ordinal one) and *target* tokens (``f`` high: 1, or above its 2/3
quantile). What the feature predicts is the clean model's mean next-token distribution over grammar
classes at target tokens (`token_classes`), e.g. a lower
P(<eos>) and a higher P(closer) at a deep Dyck bracket. Measured, all with the SAE's error term (only
the edit changes the model):

* **clamp**: the latents set, at source tokens, to their mean activation at target tokens, scored as
  *gap closure* ``(TV(clean source, target) - TV(clamped source, target)) / TV(clean source, target)``
  on mean class distributions: 1 = the model now behaves as the feature says, 0 = no effect,
  negative = the wrong way;
* **group ablation**: the latents zeroed at target tokens: TV between the clean and ablated mean class
  distributions there, the per-token mean TV, and the gap closure towards the source distribution;
* **matched null**: both, for ``n_null`` random groups of live latents matched latent for latent on
  firing rate and decoder norm, giving a null distribution and its 95% interval;
* **positive control**: the feature's probe direction projected out of the activation at target
  tokens, scored like the ablation.

Edits apply at every source (or target) token of a sentence at once, so a prediction also sees the
edits at earlier tokens. The model runs once to the hook for the latents' statistics, then, batch by
batch, once more with every intervention stacked along the batch dimension.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from sae_lens import SAE
from scipy.stats import rankdata
from transformer_lens import HookedTransformer

from formal_sae.activations import check_hook, padded_batch, run_from_hook, sentence_mask, stop_layer
from formal_sae.data import column, dataset_metadata, grammar_of
from formal_sae.errors import FormalSAEError
from formal_sae.grammars import IGNORE_VALUE
from formal_sae.interventions.effects import token_classes

# re-exported: the results have a module of their own
from formal_sae.interventions.feature_results import (
    AblationEffect,
    FeatureInterventions,
    GapClosure,
    NullDistribution,
    tv,
)
from formal_sae.saes.evaluation import check_sae_fits, check_sae_model


@dataclass
class _Tokens:
    """The rows used (in run order) and, per row, which positions are source and target tokens."""

    rows: np.ndarray
    source: list[np.ndarray]  # per row in ``rows``: boolean over its input_ids
    target: list[np.ndarray]
    source_values: list[int]
    target_values: list[int]


def _feature_values(split: datasets.Dataset, feature: str, rows: np.ndarray) -> tuple[list[np.ndarray], str]:
    """Per row, the feature's values (``name``) or a 0/1 indicator (``name=value``), and its kind."""
    specs = {s.name: s for s in dataset_metadata(split).feature_specs}
    name, eq, value = (part.strip() for part in feature.partition("="))
    spec = specs.get(name)
    if spec is None:
        raise FormalSAEError(f"unknown feature {name!r}; the dataset's features are: {', '.join(specs)}")
    col = column(split, name)
    raw = [np.asarray(col[r], dtype=np.int64) for r in rows]
    if not eq:
        if spec.kind == "categorical":
            raise FormalSAEError(f"feature {name!r} is categorical: name one category, e.g. {name}={spec.categories[0]}")
        return raw, spec.kind
    if spec.kind == "categorical":
        if value not in spec.categories:
            raise FormalSAEError(f"feature {name!r} has no category {value!r}; categories: {', '.join(spec.categories)}")
        code = spec.categories.index(value)
    else:
        try:
            code = int(value)
        except ValueError:
            raise FormalSAEError(f"feature {name!r} is {spec.kind}: compare it with an integer, not {value!r}") from None
    return [np.where(v == IGNORE_VALUE, IGNORE_VALUE, (v == code).astype(np.int64)) for v in raw], "binary"


def _source_and_target(split: datasets.Dataset, feature: str, max_sentences: int | None) -> _Tokens:
    n = len(split) if max_sentences is None else min(len(split), max_sentences)
    lengths = np.asarray(column(split, "length")[:n])
    rows = np.argsort(lengths, kind="stable")  # length-sorted batches carry little padding
    values, kind = _feature_values(split, feature, rows)
    prompt = dataset_metadata(split).prompt_length
    in_sentence = [(np.arange(len(v)) >= prompt) & (np.arange(len(v)) < prompt + lengths[r]) for v, r in zip(values, rows)]
    valid = [s & (v != IGNORE_VALUE) for s, v in zip(in_sentence, values)]
    pooled = np.concatenate([v[m] for v, m in zip(values, valid)])
    if kind == "binary":
        lo, hi = 0, 0
    else:
        lo, hi = np.quantile(pooled, [1 / 3, 2 / 3])
        if not (pooled > hi).any() and hi > lo:  # the top third is one value: take it
            hi = np.nextafter(hi, -np.inf)
    source = [m & (v <= lo) for v, m in zip(values, valid)]
    target = [m & (v > hi) for v, m in zip(values, valid)]
    if not any(s.any() for s in source) or not any(t.any() for t in target):
        raise FormalSAEError(f"feature {feature!r} has no high and low tokens to compare on these {n} sentences")
    return _Tokens(
        rows, source, target, sorted({int(x) for x in pooled[pooled <= lo]}), sorted({int(x) for x in pooled[pooled > hi]})
    )


def _batches(split: datasets.Dataset, toks: _Tokens, pad_id: int, size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """``(tokens, source mask, target mask, sentence mask)`` per batch of rows, each ``[batch, pos]``."""
    ids = column(split, "input_ids")
    lengths = torch.as_tensor(column(split, "length"))
    prompt = dataset_metadata(split).prompt_length
    for start in range(0, len(toks.rows), size):
        idx = range(start, min(start + size, len(toks.rows)))
        rows = toks.rows[list(idx)]
        tokens = padded_batch([ids[r] for r in rows], pad_id)
        src, tgt = torch.zeros(tokens.shape, dtype=torch.bool), torch.zeros(tokens.shape, dtype=torch.bool)
        for b, i in enumerate(idx):
            src[b, : len(toks.source[i])] = torch.from_numpy(toks.source[i])
            tgt[b, : len(toks.target[i])] = torch.from_numpy(toks.target[i])
        yield tokens, src, tgt, sentence_mask(lengths[rows], prompt, tokens.shape[1])


def _hook_acts(model: HookedTransformer, hook: str, tokens: torch.Tensor) -> torch.Tensor:
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=hook, stop_at_layer=stop_layer(hook))
    act = cache[hook]
    return act.reshape(*act.shape[:2], -1)


# ------------------------------------------------------------------------------ matched null groups
def matched_null_groups(
    firing_rate: np.ndarray,
    decoder_norm: np.ndarray,
    latents: Sequence[int],
    n_null: int = 20,
    seed: int = 0,
    live: np.ndarray | None = None,
) -> list[list[int]]:
    """``n_null`` random groups of live latents (``firing_rate > 0`` unless ``live`` says), each
    matched latent for latent to ``latents``: the partner of latent ``j`` is drawn from the live
    latents nearest to it by rank of firing rate plus rank of decoder norm (the real latents
    excluded, ties broken at random), ``max(n_null, len(latents))`` candidates per latent."""
    live = firing_rate > 0 if live is None else live
    real = np.asarray(latents, dtype=np.int64)
    candidates = np.setdiff1d(np.flatnonzero(live), real)
    if len(candidates) < len(real):
        raise FormalSAEError(f"only {len(candidates)} other live latents: too few for a null of {len(real)}-latent groups")
    rng = np.random.default_rng(seed)
    pool = np.union1d(candidates, real)
    rank_f = dict(zip(pool.tolist(), rankdata(firing_rate[pool]) / len(pool)))
    rank_n = dict(zip(pool.tolist(), rankdata(decoder_norm[pool]) / len(pool)))
    k = min(len(candidates), max(n_null, len(real)))
    near = []
    for j in real.tolist():
        shuffled = rng.permutation(candidates)
        dist = np.array([abs(rank_f[c] - rank_f[j]) + abs(rank_n[c] - rank_n[j]) for c in shuffled.tolist()])
        near.append(rng.permutation(shuffled[np.argsort(dist, kind="stable")[:k]]))
    groups = []
    for g in range(n_null):
        group: list[int] = []
        for options in near:  # the g-th of each latent's shuffled neighbours, or the next one not yet in the group
            pick = next(int(options[(g + s) % k]) for s in range(k) if int(options[(g + s) % k]) not in group)
            group.append(pick)
        groups.append(group)
    return groups


# ------------------------------------------------------------------------------ the measurements
@dataclass(frozen=True, eq=False)
class _Edit:
    """One intervention of the stack: ``latents`` set to their mean at target tokens (``clamp``) or to
    0, or the probe direction projected out (no latents), at the ``at`` tokens, and measured there."""

    at: str  # "source" or "target"
    latents: list[int]
    clamp: bool = False


def _edited(sae: SAE, x: torch.Tensor, mask: torch.Tensor, edits: list[_Edit], means: torch.Tensor, unit) -> list[torch.Tensor]:
    """Per edit, the activations ``[rows, pos, d]`` of the sequences with a token in ``mask``, edited at
    those tokens. Only the masked tokens are encoded and decoded (then an edit leaves every other
    position exactly clean), all after one encode: a per-token-normalising SAE decodes with the norms
    of the last input it encoded. With the error term, only the edit changes the activation."""
    rows = mask.any(1)
    flat = x[mask]
    lat = sae.encode(flat)
    error = flat - sae.decode(lat)
    out = []
    for e in edits:
        if e.latents:
            edited = lat.clone()
            edited[:, e.latents] = means[e.latents].to(lat) if e.clamp else 0.0
            new = sae.decode(edited) + error
        else:  # a zero direction stays zero: no edit
            new = flat - (flat @ unit)[:, None] * unit
        acts = x[rows].clone()
        acts[mask[rows]] = new.to(acts.dtype)
        out.append(acts)
    return out


@torch.no_grad()
def feature_interventions(
    model: HookedTransformer,
    sae: SAE,
    dataset: datasets.DatasetDict,
    feature: str,
    latents: Sequence[int],
    *,
    clamp_latents: Sequence[int] | None = None,
    probe_direction: torch.Tensor | None = None,
    n_null: int = 20,
    max_sentences: int | None = 200,
    seed: int = 0,
    split: str = "test",
    batch_size: int = 32,
    max_rows: int = 1024,
    allow_other_model: bool = False,
) -> FeatureInterventions:
    """Clamp gap closure, group ablation, matched null and probe control for ``feature`` (``depth``,
    ``pending``, ``pos=verb``, ...) and ``latents`` (one latent, or a group such as every latent with
    |rho| >= 0.9), on the first ``max_sentences`` sentences of ``split``.

    ``clamp_latents``: the ones to clamp, among ``latents`` (default: all; e.g. ``[best]`` to clamp the
    best latent alone and ablate the group). ``probe_direction``: a ``[d_in]`` direction at the SAE's
    hook for the positive control (skipped if None). Forward passes carry at most ``max_rows``
    sequences. See the module docstring."""
    hook = check_sae_fits(model, sae)
    check_sae_model(model, sae, allow_other_model)
    check_hook(model, hook)
    latents = list(dict.fromkeys(int(j) for j in latents))
    if not latents or any(not 0 <= j < sae.cfg.d_sae for j in latents):
        raise FormalSAEError(f"latents must be a non-empty list of indices in 0..{sae.cfg.d_sae - 1}, got {latents}")
    clamped = latents if clamp_latents is None else [int(j) for j in clamp_latents]
    if not clamped or not set(clamped) <= set(latents):
        raise FormalSAEError(f"clamp_latents must be some of the latents {latents}, got {clamped}")
    if probe_direction is not None and probe_direction.numel() != sae.cfg.d_in:
        raise FormalSAEError(f"the probe direction has {probe_direction.numel()} entries; the SAE's hook has {sae.cfg.d_in}")
    data = dataset[split]
    toks = _source_and_target(data, feature, max_sentences)
    class_names, classes = token_classes(grammar_of(dataset_metadata(dataset)), model.tokenizer)
    classes = classes.to(model.cfg.device)
    pad = model.tokenizer.pad_token_id

    # Pass 1, to the hook only: firing rates and mean activations at target tokens of every latent.
    fires, at_target = torch.zeros(sae.cfg.d_sae), torch.zeros(sae.cfg.d_sae)
    n_tokens = n_target = 0
    for tokens, _, tgt, sent in _batches(data, toks, pad, batch_size):
        x = _hook_acts(model, hook, tokens)
        lat = sae.encode(x[sent.to(x.device)]).float().cpu()
        fires += (lat > 0).sum(0)
        at_target += lat[tgt[sent]].sum(0)
        n_tokens, n_target = n_tokens + int(sent.sum()), n_target + int(tgt.sum())
    mean_at_target = at_target / n_target
    firing_rate = (fires / n_tokens).numpy()
    decoder_norm = sae.W_dec.detach().float().norm(dim=-1).cpu().numpy()
    groups = matched_null_groups(firing_rate, decoder_norm, latents, n_null, seed)

    # Pass 2, every edit stacked along the batch: per group (the real one first) its clamp at source
    # tokens and its ablation at target tokens, then the probe control. A sequence without a token
    # where an edit applies is left out of that edit: it would be measured nowhere.
    positions = [latents.index(j) for j in clamped]  # a null group clamps the partners of the clamped latents
    edits = []
    for group in [latents, *groups]:
        edits += [_Edit("source", [group[i] for i in positions], clamp=True), _Edit("target", group)]
    if probe_direction is not None:
        edits.append(_Edit("target", []))
    unit = None if probe_direction is None else probe_direction.float().flatten().to(model.cfg.device)
    unit = None if unit is None else unit / unit.norm().clamp_min(1e-12)
    dist, token_tv = torch.zeros(len(edits), classes.shape[1]), torch.zeros(len(edits))
    clean_src, clean_tgt = torch.zeros(classes.shape[1]), torch.zeros(classes.shape[1])
    n_src = n_tgt = 0
    for tokens, src, tgt, _ in _batches(data, toks, pad, batch_size):
        x = _hook_acts(model, hook, tokens)
        measured = (src | tgt).any(1)
        stacked, rows, order = [x[measured.to(x.device)]], [measured], []  # the clean model first
        for at, mask in (("source", src), ("target", tgt)):
            mine = [k for k, e in enumerate(edits) if e.at == at]
            stacked += _edited(sae, x, mask.to(x.device), [edits[k] for k in mine], mean_at_target, unit)
            rows += [mask.any(1)] * len(mine)
            order += [(k, mask) for k in mine]
        probs = _class_probs(model, hook, tokens, stacked, rows, classes, max_rows)
        clean = torch.zeros(*tokens.shape, classes.shape[1])
        clean[measured] = probs[0]
        clean_src, clean_tgt = clean_src + clean[src].sum(0), clean_tgt + clean[tgt].sum(0)
        n_src, n_tgt = n_src + int(src.sum()), n_tgt + int(tgt.sum())
        for (k, mask), p, r in zip(order, probs[1:], rows[1:]):
            dist[k] += p[mask[r]].sum(0)
            token_tv[k] += float(0.5 * (p - clean[r]).abs().sum(-1)[mask[r]].sum())

    src_mean, tgt_mean = (clean_src / n_src).numpy(), (clean_tgt / n_tgt).numpy()

    def clamp(k: int) -> GapClosure:
        return GapClosure.between(class_names, src_mean, (dist[k] / n_src).numpy(), tgt_mean, n_src)

    def ablation(k: int) -> AblationEffect:
        new = (dist[k] / n_tgt).numpy()
        return AblationEffect(
            tv(tgt_mean, new),
            float(token_tv[k]) / n_tgt,
            GapClosure.between(class_names, tgt_mean, new, src_mean, n_tgt, "source"),
        )

    return FeatureInterventions(
        feature=feature,
        latents=latents,
        clamp_latents=clamped,
        classes=class_names,
        source_values=toks.source_values,
        target_values=toks.target_values,
        source_distribution=src_mean.tolist(),
        target_distribution=tgt_mean.tolist(),
        clamp_values=mean_at_target[clamped].tolist(),
        clamp=clamp(0),
        group_ablation=ablation(1),
        null_groups=groups,
        null_clamp=NullDistribution.of([clamp(2 + 2 * g).gap_closure for g in range(len(groups))]),
        null_ablation=NullDistribution.of([ablation(3 + 2 * g).effect for g in range(len(groups))]),
        probe_control=ablation(len(edits) - 1) if unit is not None else None,
    )


def _class_probs(
    model: HookedTransformer,
    hook: str,
    tokens: torch.Tensor,
    acts: list[torch.Tensor],
    rows: list[torch.Tensor],
    classes: torch.Tensor,
    max_rows: int,
) -> list[torch.Tensor]:
    """Next-token class probabilities ``[rows, pos, n_classes]`` for each of ``acts`` (the activations
    at ``hook`` of the sequences ``tokens[rows]``), at most ``max_rows`` sequences per forward pass."""
    flat = torch.cat(acts)
    tok = torch.cat([tokens[r] for r in rows]).to(model.cfg.device)
    out = torch.cat(
        [
            run_from_hook(model, hook, tok[i : i + max_rows], flat[i : i + max_rows]).float().softmax(-1) @ classes
            for i in range(0, len(flat), max_rows)
        ]
    ).cpu()
    return list(out.split([len(a) for a in acts]))

"""What linear probes are fitted on: sentence-token activations at several hooks from one forward
pass per batch (`ProbeData`), and the targets made from the tokens' features (`ProbeTarget`)."""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np
import torch
from transformer_lens import HookedTransformer

from formal_sae.activations import check_split, hook_shape, padded_batch, sentence_mask, stop_layer
from formal_sae.data import column, dataset_metadata
from formal_sae.errors import DatasetError, ModelError, SAEError
from formal_sae.grammars import IGNORE_VALUE, FeatureSpec

EMBED_HOOK = "hook_embed"
_EMBED_HOOKS = ("hook_embed", "hook_pos_embed")  # hooks computed before the first block


def default_probe_hooks(model: HookedTransformer) -> list[str]:
    """``hook_embed``, then ``resid_pre``, ``resid_mid`` and ``resid_post`` of each layer."""
    hooks = [EMBED_HOOK]
    for layer in range(model.cfg.n_layers):
        hooks += [f"blocks.{layer}.hook_resid_{where}" for where in ("pre", "mid", "post")]
    return hooks


@dataclass
class ProbeData:
    """Activations of the sentence tokens of one split at several hooks, with the tokens' features.

    Attributes:
        acts: hook -> ``[n_tokens, d]`` float32 activations (per-head hooks flattened).
        features: feature name -> ``[n_tokens]`` int64 values (``IGNORE_VALUE`` where undefined).
        specs: The features' declarations.
        rows: ``[n_tokens]`` dataset row of each token.
    """

    acts: dict[str, torch.Tensor]
    features: dict[str, np.ndarray]
    specs: dict[str, FeatureSpec]
    rows: np.ndarray

    @property
    def n_tokens(self) -> int:
        return len(self.rows)


@dataclass
class ProbeTarget:
    """One probed quantity: an ordinal/binary feature or one category of a categorical one."""

    name: str
    feature: str
    kind: str  # "ordinal" | "binary"
    values: np.ndarray  # [n_tokens] float64
    mask: np.ndarray  # [n_tokens] bool: tokens where the feature is defined


def _check_hooks(model: HookedTransformer, hooks: list[str]) -> None:
    defaults = default_probe_hooks(model)
    for hook in hooks:
        if hook not in model.hook_dict:
            raise ModelError(
                f"the model has no hook point {hook!r}; probe hooks are {', '.join(defaults)} "
                f"(or any per-token hook of the model, e.g. blocks.0.hook_mlp_out)"
            )
        if hook not in defaults:
            try:
                hook_shape(model, hook)  # refuses hooks that never run or are not per token
            except SAEError as e:
                raise ModelError(str(e)) from None


def _needed_layers(hooks: list[str]) -> int | None:
    """``stop_at_layer`` that still runs every hook (None: the whole model)."""
    layers = [0 if h in _EMBED_HOOKS else stop_layer(h) for h in hooks]
    return None if any(n is None for n in layers) else max(layers)


@torch.no_grad()
def collect_probe_data(
    model: HookedTransformer, split: datasets.Dataset, hooks: list[str], max_sentences: int | None = 2000, batch_size: int = 256
) -> ProbeData:
    """Activations at all ``hooks`` (one forward pass per batch) aligned with the token features.

    Takes the first ``max_sentences`` rows (an i.i.d. prefix), run in length-sorted batches; keeps
    only sentence tokens (no prompt, ``<eos>`` or padding), as `formal_sae.activations` does.
    """
    _check_hooks(model, hooks)
    check_split(split, max_sentences, "probe")
    meta = dataset_metadata(split)
    specs = {s.name: s for s in meta.feature_specs}
    n = len(split) if max_sentences is None else min(len(split), max_sentences)
    sub = split.select(range(n))
    input_ids, lengths = column(sub, "input_ids"), np.asarray(column(sub, "length"))
    columns = {name: column(sub, name) for name in specs}
    order = np.argsort(lengths, kind="stable")  # little padding; the order of tokens does not matter to a probe
    p0, stop = meta.prompt_length, _needed_layers(hooks)
    acts: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    feats: dict[str, list[np.ndarray]] = {name: [] for name in specs}
    rows_out = []
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        tokens = padded_batch([input_ids[i] for i in rows], model.tokenizer.pad_token_id)
        if int(tokens.max()) >= model.cfg.d_vocab:
            raise DatasetError(
                f"the dataset uses token id {int(tokens.max())} but the model's vocabulary has {model.cfg.d_vocab} tokens: "
                "dataset and model do not match"
            )
        if tokens.shape[1] > model.cfg.n_ctx:
            raise DatasetError(f"sequences of {tokens.shape[1]} tokens exceed the model's context of {model.cfg.n_ctx}")
        mask = sentence_mask(torch.as_tensor(lengths[rows]), p0, tokens.shape[1])
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda name: name in acts, stop_at_layer=stop)
        for h in hooks:
            a = cache[h]
            acts[h].append(a.reshape(*a.shape[:2], -1)[mask.to(a.device)].float().cpu())
        # mask.nonzero() is row-major: each row's sentence tokens in order, so slices line up
        for name in specs:
            feats[name].append(np.concatenate([columns[name][r][p0 : p0 + lengths[r]] for r in rows]))
        rows_out.append(np.repeat(rows, lengths[rows]))
    return ProbeData(
        acts={h: torch.cat(v) for h, v in acts.items()},
        features={name: np.concatenate(v).astype(np.int64) for name, v in feats.items()},
        specs=specs,
        rows=np.concatenate(rows_out),
    )


def target_names(specs: dict[str, FeatureSpec], features: list[str] | None = None) -> list[str]:
    """Target names of the chosen features: a categorical feature gives one per category. Raises a
    DatasetError naming the valid choices for an unknown feature or category."""
    valid = {
        name: [f"{name}={c}" for c in spec.categories] if spec.kind == "categorical" else [name] for name, spec in specs.items()
    }
    chosen: list[str] = []
    for name in list(valid) if features is None else features:
        if name in valid:
            chosen += valid[name]
        elif any(name in v for v in valid.values()):
            chosen.append(name)
        else:
            example = next((v[0] for v in valid.values() if "=" in v[0]), "pos=verb")
            raise DatasetError(
                f"unknown feature {name!r}; the dataset's features are {', '.join(valid)} (or one category as name=category, e.g. {example})"
            )
    return list(dict.fromkeys(chosen))


def probe_targets(data: ProbeData, features: list[str] | None = None) -> list[ProbeTarget]:
    """Targets of the chosen features (feature names, or single categories as ``name=category``)."""
    out = []
    for name in target_names(data.specs, features):
        feature, _, category = name.partition("=")
        spec, values = data.specs[feature], data.features[feature]
        mask = values != IGNORE_VALUE
        if spec.kind == "categorical":
            y = (values == spec.categories.index(category)).astype(np.float64)
            out.append(ProbeTarget(name, feature, "binary", y, mask))
        else:
            out.append(ProbeTarget(name, feature, spec.kind, values.astype(np.float64), mask))
    return out

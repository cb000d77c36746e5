"""Linear probes: does the model represent a feature at a hook at all? The ceiling for SAE latents.

A latent can only track a feature as well as the best linear read-out of the activations it is
computed from, so every SAE score deserves this ceiling next to it. For each target (as in
:func:`~formal_sae.analysis.report.targets_of`: ordinal and binary features, and each category of a
categorical one as ``name=category``) and each hook, a probe is fitted on ``fit_split`` sentences
and scored on ``test_split`` sentences (held-out sentences, never the same tokens):

* ordinal: ridge regression with an intercept (closed form, float64), held-out R²;
* binary: L2-penalised logistic regression (torch LBFGS from a fixed start on standardised inputs,
  so deterministic), held-out accuracy at threshold 0.5 and F1 of the positive class.

The probe at ``hook_embed`` (the token embedding alone) is the control: a feature decodable there is
a property of the token, not something the model computes. Activations of all hooks come from one
forward pass per batch, so probing every hook costs one pass over the data.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import asdict, dataclass

import datasets
import numpy as np
import torch
from transformer_lens import HookedTransformer

from formal_sae.activations import hook_shape, padded_batch, sentence_mask, stop_layer
from formal_sae.data import column, dataset_metadata
from formal_sae.errors import DatasetError, FormalSAEError, ModelError, SAEError
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
    only sentence tokens (no prompt, ``<eos>`` or padding), as :mod:`formal_sae.activations` does.
    """
    _check_hooks(model, hooks)
    if len(split) == 0:
        raise DatasetError("the dataset split is empty; probe a split with sentences")
    if max_sentences is not None and max_sentences < 1:
        raise DatasetError(f"max_sentences must be >= 1, got {max_sentences}")
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


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = x.mean(axis=0), x.std(axis=0)
    return mean, np.where(std > 1e-8 * max(float(std.max()), 1e-30), std, 1.0)  # constant columns stay constant (0)


def ridge_fit(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression with an intercept: ``(W [d, T], b [T])`` minimising
    ``mean((x W + b - y)^2) + ridge * |W|^2``. Closed form in float64 via an eigendecomposition of
    the Gram matrix, so ``ridge = 0`` is the minimum-norm least-squares fit (singular inputs allowed)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc = x - mx
    lam, v = np.linalg.eigh(xc.T @ xc / len(x))
    keep = lam > 1e-12 * max(float(lam.max()), 1e-300)  # pseudo-inverse: drop null directions
    inv = np.where(keep, 1.0 / np.where(keep, lam + ridge, 1.0), 0.0)
    w = v @ (inv[:, None] * (v.T @ (xc.T @ (y - my) / len(x))))
    return w, my - mx @ w


def logistic_fit(
    x: np.ndarray, y: np.ndarray, weight: np.ndarray, l2: float, max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Independent L2-penalised logistic regressions of each column of ``y`` ``[n, T]`` on ``x``
    ``[n, d]``, in one LBFGS run (their losses add up and share no parameter). ``weight`` ``[n, T]``
    (0/1) says which tokens count for which target. Returns ``(W [d, T], b [T])``.

    ``max_iter`` 100: on the three languages the held-out accuracies then agree with 300
    iterations to ~1e-3, at a third of the time (separable targets never converge, by design of L2).
    """
    xt = torch.as_tensor(x, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)
    scale = torch.as_tensor(weight, dtype=torch.float64)
    scale = scale / scale.sum(0).clamp_min(1)  # each target's loss is a mean over its own tokens
    rate = (yt * scale).sum(0).clamp(1e-6, 1 - 1e-6)
    w = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.log(rate / (1 - rate)).requires_grad_(True)  # start at the base rate: fewer iterations
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    @torch.no_grad()
    def closure() -> torch.Tensor:
        # gradients by hand: half the time of autograd at these sizes, and the loss is simple
        z = torch.addmm(b, xt, w)
        loss = ((torch.nn.functional.softplus(z) - yt * z) * scale).sum() + 0.5 * l2 * (w * w).sum()
        r = (torch.sigmoid(z) - yt) * scale
        w.grad, b.grad = xt.T @ r + l2 * w, r.sum(0)
        return loss

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


@dataclass
class ProbeScore:
    """Held-out score of one linear probe.

    Attributes:
        feature: Target name (``depth``, ``is_open``, ``pos=verb``).
        hook: Hook point probed.
        kind: ``"ordinal"`` (score is R²) or ``"binary"`` (score is accuracy).
        score: Held-out R² or accuracy.
        f1: Binary: held-out F1 of the positive class (None for ordinal).
        baseline: The score of a constant predictor: R² 0, or the accuracy of the fit split's majority class.
        n_train, n_test: Tokens fitted on and scored on.
    """

    feature: str
    hook: str
    kind: str
    score: float
    f1: float | None
    baseline: float
    n_train: int
    n_test: int

    @property
    def skill(self) -> float:
        """``(score - baseline) / (1 - baseline)``: 0 at the constant predictor, 1 for a perfect probe."""
        return (self.score - self.baseline) / (1 - self.baseline) if self.baseline < 1 else 0.0


@dataclass
class ProbeReport:
    """Held-out probe scores for every (target, hook) of one model and dataset."""

    scores: list[ProbeScore]
    grammar: str = ""
    fit_split: str = "train"
    test_split: str = "test"
    seconds: float = 0.0

    @property
    def features(self) -> list[str]:
        return list(dict.fromkeys(s.feature for s in self.scores))

    @property
    def hooks(self) -> list[str]:
        return list(dict.fromkeys(s.hook for s in self.scores))

    def score(self, feature: str, hook: str) -> ProbeScore:
        self._check_feature(feature)
        s = self._find(feature, hook)
        if s is None:
            raise FormalSAEError(f"no probe of {feature!r} at hook {hook!r}; probed hooks: {', '.join(self.hooks)}")
        return s

    def best_hook(self, feature: str) -> ProbeScore:
        """The best-scoring probe of ``feature`` inside the model (``hook_embed`` excluded)."""
        inside = [s for s in self.scores if s.feature == feature and s.hook != EMBED_HOOK]
        if not inside:
            self._check_feature(feature)
            raise FormalSAEError(f"feature {feature!r} was probed only at {EMBED_HOOK}; probe hooks inside the model")
        return max(inside, key=lambda s: s.score)

    def embed_control(self, feature: str) -> ProbeScore | None:
        """The probe at ``hook_embed``: high means "present in the token", not "computed by the model"."""
        self._check_feature(feature)
        return self._find(feature, EMBED_HOOK)

    def to_dict(self) -> dict:
        return {
            "grammar": self.grammar,
            "fit_split": self.fit_split,
            "test_split": self.test_split,
            "seconds": self.seconds,
            "scores": [asdict(s) for s in self.scores],
        }

    @classmethod
    def from_dict(cls, d: dict) -> ProbeReport:
        return cls(
            scores=[ProbeScore(**s) for s in d["scores"]],
            grammar=d.get("grammar", ""),
            fit_split=d.get("fit_split", "train"),
            test_split=d.get("test_split", "test"),
            seconds=d.get("seconds", 0.0),
        )

    def to_markdown(self) -> str:
        """A table: one row per target, one column per hook, then the ``hook_embed`` control."""
        hooks = [h for h in self.hooks if h != EMBED_HOOK]
        lines = [
            f"# Linear probes: {self.grammar}",
            "",
            f"Fitted on {self.fit_split}, scored on held-out {self.test_split} sentences. Ordinal targets: R² (constant "
            "predictor: 0); binary targets: accuracy (F1 of the positive class in brackets), next to the majority-class "
            f"baseline. **Bold**: best hook. `{EMBED_HOOK}` is the control: decodable there means the feature is in the token.",
            "",
            "| target | kind | baseline | " + " | ".join(f"`{h}`" for h in hooks) + f" | `{EMBED_HOOK}` (control) |",
            "|---|---|---|" + "---|" * (len(hooks) + 1),
        ]
        for feature in self.features:
            row = [s for s in self.scores if s.feature == feature]
            best = self.best_hook(feature).hook if any(s.hook != EMBED_HOOK for s in row) else None
            cells = []
            for h in hooks:
                s = next((s for s in row if s.hook == h), None)
                cells.append("–" if s is None else (f"**{_cell(s)}**" if h == best else _cell(s)))
            control = self.embed_control(feature)
            cells.append("–" if control is None else _cell(control))
            lines.append(f"| `{feature}` | {row[0].kind} | {row[0].baseline:.3f} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | os.PathLike) -> None:
        """Heat map of probe skill, ``(score - baseline) / (1 - baseline)``, target x hook, cells
        annotated with the raw score; ``hook_embed`` (the control) first, set apart by a line."""
        import matplotlib

        matplotlib.use("Agg")  # files only, no display (as in formal_sae.analysis.plots)
        import matplotlib.pyplot as plt

        hooks = [h for h in self.hooks if h == EMBED_HOOK] + [h for h in self.hooks if h != EMBED_HOOK]
        feats = self.features
        skill = np.full((len(feats), len(hooks)), np.nan)
        fig, ax = plt.subplots(figsize=(2.4 + 0.95 * len(hooks), 1.4 + 0.34 * len(feats)))
        for i, f in enumerate(feats):
            for j, h in enumerate(hooks):
                s = self._find(f, h)
                if s is not None:
                    skill[i, j] = s.skill
                    ax.text(
                        j, i, f"{s.score:.2f}", ha="center", va="center", fontsize=7, color="black" if s.skill > 0.55 else "white"
                    )
        im = ax.imshow(np.clip(skill, 0, 1), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        labels = [
            "embed (control)" if h == EMBED_HOOK else h.replace("blocks.", "L").replace(".hook_", " ").replace("hook_", "")
            for h in hooks
        ]
        ax.set_xticks(range(len(hooks)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(feats)), [f"{f} ({'R²' if self._kind(f) == 'ordinal' else 'acc'})" for f in feats], fontsize=8)
        if hooks and hooks[0] == EMBED_HOOK and len(hooks) > 1:
            ax.axvline(0.5, color="white", linewidth=2)
        fig.colorbar(im, ax=ax, label="(score − baseline) / (1 − baseline)", shrink=0.8)
        ax.set_title(f"{self.grammar}: linear probes (held-out {self.test_split}; numbers are R² / accuracy)", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=130)
        plt.close(fig)

    def _check_feature(self, feature: str) -> None:
        if feature not in self.features:
            raise FormalSAEError(f"no probe of feature {feature!r}; probed features: {', '.join(self.features)}")

    def _find(self, feature: str, hook: str) -> ProbeScore | None:
        return next((s for s in self.scores if s.feature == feature and s.hook == hook), None)

    def _kind(self, feature: str) -> str:
        return next(s.kind for s in self.scores if s.feature == feature)


def _cell(s: ProbeScore) -> str:
    return f"{s.score:.3f}" if s.f1 is None else f"{s.score:.3f} ({s.f1:.2f})"


def _check_split(dataset: datasets.DatasetDict, name: str) -> datasets.Dataset:
    if name not in dataset or len(dataset[name]) == 0:
        raise DatasetError(f"the dataset split {name!r} is empty or missing; splits with sentences: {', '.join(dataset)}")
    return dataset[name]


def _check_model_data(model: HookedTransformer, dataset: datasets.DatasetDict) -> None:
    model_data = getattr(model, "formal_sae_data", None)
    meta = dataset_metadata(dataset)
    if model_data is not None and model_data.grammar_text != meta.grammar_text:
        raise DatasetError(
            f"the dataset is from grammar {meta.grammar!r} but the model was trained on {model_data.grammar!r}; use the model's dataset"
        )


def _varies(values: np.ndarray) -> bool:
    return values.size > 0 and bool(values.max() > values.min())


def score_probes(fit: ProbeData, test: ProbeData, features: list[str] | None = None, ridge: float = 1e-3) -> list[ProbeScore]:
    """Fit a probe per (target, hook) on ``fit`` and score it on ``test``. Targets constant on the
    fit split are skipped (nothing to learn), as are ordinal ones constant on the test split (R² undefined)."""
    fit_targets = probe_targets(fit, features)
    test_targets = {t.name: t for t in probe_targets(test, features)}
    targets = [t for t in fit_targets if _varies(t.values[t.mask]) and test_targets[t.name].mask.any()]
    targets = [t for t in targets if t.kind == "binary" or _varies(test_targets[t.name].values[test_targets[t.name].mask])]
    # Identical targets (English pos=noun and preterminal=N) and identical hooks (resid_post of a
    # layer is resid_pre of the next) are fitted once: a third less work on the default hooks.
    first: dict[bytes, str] = {}
    alias = {}
    for t in targets:
        tt = test_targets[t.name]
        key = b"|".join([t.kind.encode(), t.values.tobytes(), t.mask.tobytes(), tt.values.tobytes(), tt.mask.tobytes()])
        alias[t.name] = first.setdefault(key, t.name)
    unique = [t for t in targets if alias[t.name] == t.name]
    out: list[ProbeScore] = []
    fitted: dict[str, dict[str, ProbeScore]] = {}
    for hook in [h for h in fit.acts if h in test.acts]:
        same = next((h for h in fitted if _same(fit.acts[h], fit.acts[hook]) and _same(test.acts[h], test.acts[hook])), None)
        fitted[hook] = (
            fitted[same] if same is not None else _score_hook(fit.acts[hook], test.acts[hook], unique, test_targets, ridge)
        )
        out += [dataclasses.replace(fitted[hook][alias[t.name]], feature=t.name, hook=hook) for t in targets]
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a, b))


def _score_hook(
    fit_acts: torch.Tensor,
    test_acts: torch.Tensor,
    targets: list[ProbeTarget],
    test_targets: dict[str, ProbeTarget],
    ridge: float,
) -> dict[str, ProbeScore]:
    """Probes of ``targets`` on one hook's activations: ``{target name: score}`` (``hook`` left empty)."""
    x_fit = fit_acts.numpy().astype(np.float64)
    mean, std = _standardiser(x_fit)
    x_fit = (x_fit - mean) / std
    x_test = (test_acts.numpy().astype(np.float64) - mean) / std
    scores: dict[str, ProbeScore] = {}
    ordinal = [t for t in targets if t.kind == "ordinal"]
    for key in dict.fromkeys(t.mask.tobytes() for t in ordinal):  # one Gram matrix per set of defined tokens
        group = [t for t in ordinal if t.mask.tobytes() == key]
        m = group[0].mask
        w, b = ridge_fit(x_fit[m], np.stack([t.values[m] for t in group], axis=1), ridge)
        for k, t in enumerate(group):
            tt = test_targets[t.name]
            y, pred = tt.values[tt.mask], x_test[tt.mask] @ w[:, k] + b[k]
            r2 = 1 - float(((y - pred) ** 2).sum()) / float(((y - y.mean()) ** 2).sum())
            scores[t.name] = ProbeScore(t.name, "", "ordinal", r2, None, 0.0, int(m.sum()), int(tt.mask.sum()))
    binary = [t for t in targets if t.kind == "binary"]
    if binary:
        y = np.stack([t.values for t in binary], axis=1)
        weight = np.stack([t.mask for t in binary], axis=1).astype(np.float64)
        w, b = logistic_fit(x_fit, y, weight, ridge)
        logits = x_test @ w + b
        for k, t in enumerate(binary):
            tt = test_targets[t.name]
            yt, pred = tt.values[tt.mask] > 0.5, logits[tt.mask, k] > 0  # p > 0.5
            majority = t.values[t.mask].mean() >= 0.5  # the constant predictor, chosen on the fit split
            tp, fp, fn = int((pred & yt).sum()), int((pred & ~yt).sum()), int((~pred & yt).sum())
            f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
            acc, base = float((pred == yt).mean()), float((yt == majority).mean())
            scores[t.name] = ProbeScore(t.name, "", "binary", acc, f1, base, int(t.mask.sum()), len(yt))
    return scores


def probe_features(
    model: HookedTransformer,
    dataset: datasets.DatasetDict,
    hooks: list[str] | None = None,
    features: list[str] | None = None,
    *,
    fit_split: str = "train",
    test_split: str = "test",
    max_sentences: int = 2000,
    ridge: float = 1e-3,
    seed: int = 0,
) -> ProbeReport:
    """Held-out linear-probe scores of every target at every hook (default :func:`default_probe_hooks`).

    Args:
        model: A formal-sae model.
        dataset: Its dataset.
        hooks: Hook points to probe.
        features: Feature names, or single categories as ``name=category`` (default: all).
        fit_split, test_split: Probes are fitted on the first and scored on the second.
        max_sentences: Sentences taken from each split (bounds time and memory).
        ridge: L2 penalty on standardised inputs (ridge regression and logistic regression).
        seed: Seeds torch while fitting; the fits are deterministic (closed form, LBFGS from a
            fixed start), so it only guards against nondeterministic kernels.
    """
    start = time.perf_counter()
    hooks = default_probe_hooks(model) if hooks is None else list(hooks)
    _check_hooks(model, hooks)
    fit, test = _check_split(dataset, fit_split), _check_split(dataset, test_split)
    _check_model_data(model, dataset)
    target_names({sp.name: sp for sp in dataset_metadata(dataset).feature_specs}, features)  # fail before any forward pass
    fit_data = collect_probe_data(model, fit, hooks, max_sentences)
    test_data = collect_probe_data(model, test, hooks, max_sentences)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scores = score_probes(fit_data, test_data, features, ridge)
    if not scores:
        raise DatasetError(f"no feature of {features or 'the dataset'} varies on the {fit_split!r} split; nothing to probe")
    return ProbeReport(scores, dataset_metadata(dataset).grammar, fit_split, test_split, time.perf_counter() - start)


def probe_direction(
    model: HookedTransformer,
    dataset: datasets.DatasetDict,
    hook: str,
    feature: str,
    *,
    split: str = "train",
    max_sentences: int = 2000,
    ridge: float = 1e-3,
) -> torch.Tensor:
    """Unit vector ``[d]`` in ``hook``'s space along which ``feature`` is linearly encoded: the
    direction to project out as a positive-control ablation.

    It is the cross-covariance ``E[(x - mean x)(y - mean y)]``: the least-squares weights of the
    regression of the activations on the standardised target (for a binary target, the class-mean
    difference up to scale). Not the probe's weight vector ``Sigma^-1 cov(x, y)``: projecting that out
    leaves the feature decodable along correlated directions, while once ``cov(x, y)`` is projected
    out the best linear predictor on the fit tokens is constant, so a refitted probe is at baseline
    (exact for a one-dimensional target; cf. LEACE). Without a matrix inverse, ``ridge`` is unused.
    """
    del ridge  # kept for a uniform signature: the covariance direction needs no regularisation
    _check_hooks(model, [hook])
    _check_model_data(model, dataset)
    target_names({sp.name: sp for sp in dataset_metadata(dataset).feature_specs}, [feature])
    data = collect_probe_data(model, _check_split(dataset, split), [hook], max_sentences)
    targets = probe_targets(data, [feature])
    if len(targets) != 1:
        raise DatasetError(f"{feature!r} is categorical: give one category, one of {', '.join(t.name for t in targets)}")
    t = targets[0]
    x, y = data.acts[hook].numpy().astype(np.float64)[t.mask], t.values[t.mask]
    if not _varies(y):
        raise DatasetError(f"feature {feature!r} is constant on the {split!r} split; it has no direction")
    direction = (x - x.mean(axis=0)).T @ ((y - y.mean()) / y.std()) / len(y)
    norm = float(np.linalg.norm(direction))
    if not math.isfinite(norm) or norm == 0:
        raise DatasetError(f"the activations at {hook!r} do not covary with {feature!r}; it has no direction")
    return torch.from_numpy(direction / norm).float()

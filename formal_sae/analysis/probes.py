"""Linear probes: does the model represent a feature at a hook at all? The ceiling for SAE latents.

A latent can only track a feature as well as the best linear read-out of the activations it is
computed from, so every SAE score deserves this ceiling next to it. For each target (as in
[`targets_of`][formal_sae.targets_of]: ordinal and binary features, and each category of a
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

import math
import os
import time
from dataclasses import asdict, dataclass

import datasets
import numpy as np
import torch
from transformer_lens import HookedTransformer

# re-exported: the probes' data and fits have modules of their own
from formal_sae.analysis.probe_data import (  # noqa: F401
    _EMBED_HOOKS,
    EMBED_HOOK,
    ProbeData,
    ProbeTarget,
    _check_hooks,
    collect_probe_data,
    default_probe_hooks,
    probe_targets,
    target_names,
)
from formal_sae.analysis.probe_fits import ProbeScore, _varies, logistic_fit, ridge_fit, score_probes  # noqa: F401
from formal_sae.data import dataset_metadata
from formal_sae.errors import DatasetError, FormalSAEError
from formal_sae.models import model_data
from formal_sae.plotting import MISSING, number, pyplot


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
                cells.append(MISSING if s is None else (f"**{_cell(s)}**" if h == best else _cell(s)))
            control = self.embed_control(feature)
            cells.append(MISSING if control is None else _cell(control))
            lines.append(f"| `{feature}` | {row[0].kind} | {row[0].baseline:.3f} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | os.PathLike) -> None:
        """Heat map of probe skill, ``(score - baseline) / (1 - baseline)``, target x hook, cells
        annotated with the raw score; ``hook_embed`` (the control) first, set apart by a line."""
        plt = pyplot()

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
    return number(s.score) if s.f1 is None else f"{number(s.score)} ({number(s.f1, 2)})"


def _check_split(dataset: datasets.DatasetDict, name: str) -> datasets.Dataset:
    if name not in dataset or len(dataset[name]) == 0:
        raise DatasetError(f"the dataset split {name!r} is empty or missing; splits with sentences: {', '.join(dataset)}")
    return dataset[name]


def _check_model_data(model: HookedTransformer, dataset: datasets.DatasetDict) -> None:
    trained_on, meta = model_data(model), dataset_metadata(dataset)
    if trained_on is not None and trained_on.grammar_text != meta.grammar_text:
        raise DatasetError(
            f"the dataset is from grammar {meta.grammar!r} but the model was trained on {trained_on.grammar!r}; use the model's dataset"
        )


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
    """Held-out linear-probe scores of every target at every hook (default [`default_probe_hooks`][formal_sae.default_probe_hooks]).

    Args:
        model: A formal-sae model.
        dataset: Its dataset.
        hooks: Hook points to probe.
        features: Feature names, or single categories as ``name=category`` (default: all).
        fit_split: The split probes are fitted on.
        test_split: The split probes are scored on.
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

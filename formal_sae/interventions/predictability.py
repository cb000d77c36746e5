"""Effect predictability (claim C4, [The paper: the causal loss][paper-causal-loss]): for latents matched by feature, does the natural
data predict what clamping a latent does to the next-token class distribution? Results keep
per-bin values (``to_dict``/``from_dict``, JSON) so the caller can bootstrap."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from sae_lens import SAE
from transformer_lens import HookedTransformer

from formal_sae.activations import iter_sentence_batches
from formal_sae.data import column, dataset_metadata, grammar_of
from formal_sae.errors import SAEError
from formal_sae.interventions.edits import Intervention
from formal_sae.interventions.effects import run_intervened, token_classes
from formal_sae.saes.causal_metrics import sample_rows
from formal_sae.saes.evaluation import check_sae_fits, check_sae_model

#: A clamp whose RMS shift of the class probabilities is below this "does nothing": R² is undefined.
MIN_SHIFT = 1e-6


@dataclass
class Predictability:
    """How well natural data predicts the effect of clamping one latent (see [`effect_predictability`][formal_sae.effect_predictability]).

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
    distribution (`token_classes`) is (mean at the tokens whose
    value falls in b) - (mean at all tokens), both from the clean model; the *observed* shift is
    (mean at all tokens with the latent clamped to b's mean value at every position, error term
    kept, `run_intervened`) - (clean mean). A clamp whose RMS shift
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
    rows = sample_rows(len(part), max_sentences, seed)
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


def predictability_summary(results: Iterable[Predictability]) -> float | None:
    """One number for many latents' `Predictability`: the median over the latents with a defined R²
    of the correlation between predicted and observed shifts (1: the natural data predicts every
    clamp's effect up to scale; about 0: it does not); None when no latent has one (a latent
    whose predicted or observed shifts are all equal has none).

    Why not the mean R²: R² is unbounded below (a clamp far weaker than predicted scores -1000s),
    so one weak latent would swamp the rest; the correlation is bounded and scale-free."""
    corr = [_correlation(np.ravel(p.predicted), np.ravel(p.observed)) for p in results if p.r2 is not None]
    corr = [c for c in corr if c is not None]
    return float(np.median(corr)) if corr else None


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation; None where it is undefined (a constant side)."""
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])

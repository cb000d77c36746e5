"""Latent-feature metrics, vectorised over latents (no Python loop over latents).

Every function takes a dense chunk of latents ``L`` (``[n_tokens, n_latents]``) and targets ``Y``
(``[n_tokens, n_targets]``) and returns ``[n_latents, n_targets]`` arrays. Definitions:

* Pearson: ``cov(l, y) / (std(l) std(y))``; NaN for a constant latent (dead) or target.
* Spearman: Pearson of average ranks (ties share their mean rank).
* AUROC of latent ``l`` for a binary target: ``(sum of ranks of positives - n+(n+ + 1)/2) / (n+ n-)``
  (Mann-Whitney U), i.e. P(l on a positive > l on a negative) + P(tie)/2.
* Thresholded detector ``l > t``: precision TP/(TP+FP), recall TP/(TP+FN), F1 = 2PR/(P+R); each 0
  when undefined. Thresholds are fractions of the latent's maximum, ``t = f * max(l)`` (Karvonen
  et al.), with ``f = 0`` meaning "fires at all".
* Decoder agreement with probe directions ``P``: ``C = |cos(W_dec_i, p_k)|``; MMCS = mean_k max_i C;
  MCC = mean of ``C`` over a Hungarian matching of probes to latents (O'Neill et al.).
* Absorption gap of a parent latent: P(fires | parent and not child) - P(fires | parent and child).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

#: Threshold fractions of a latent's maximum activation tried for the thresholded detectors.
THRESHOLD_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _standardise(x: np.ndarray) -> np.ndarray:
    # constant columns are found exactly: after centring, rounding can leave a tiny non-zero std
    varies = x.max(axis=0, keepdims=True) > x.min(axis=0, keepdims=True)
    x = x - x.mean(axis=0, keepdims=True)
    std = np.sqrt((x * x).mean(axis=0, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(varies & (std > 0), x / std, np.nan)


def pearson(latents: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``[n_latents, n_targets]`` Pearson correlations (NaN where a column is constant)."""
    zl, zy = _standardise(latents.astype(np.float64)), _standardise(targets.astype(np.float64))
    return zl.T @ zy / len(latents)


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) of each column."""
    return rankdata(x, method="average", axis=0)


def spearman(latents: np.ndarray, targets: np.ndarray, latent_ranks: np.ndarray | None = None) -> np.ndarray:
    """``[n_latents, n_targets]`` Spearman correlations."""
    r = ranks(latents) if latent_ranks is None else latent_ranks
    return pearson(r, ranks(targets))


def auroc(latents: np.ndarray, binary_targets: np.ndarray, latent_ranks: np.ndarray | None = None) -> np.ndarray:
    """``[n_latents, n_targets]`` AUROC of each latent as a score for each binary target."""
    r = ranks(latents) if latent_ranks is None else latent_ranks
    y = binary_targets.astype(np.float64)
    n_pos = y.sum(axis=0)
    n_neg = len(y) - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return (r.T @ y - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def detector_scores(predictions: np.ndarray, binary_targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 (``[n_detectors, n_targets]``) of boolean detectors ``[n_tokens, n_detectors]``."""
    p = predictions.astype(np.float64)
    y = binary_targets.astype(np.float64)
    tp = p.T @ y
    predicted = p.sum(axis=0)[:, None]
    actual = y.sum(axis=0)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return precision, recall, f1


def threshold_f1(latents: np.ndarray, binary_targets: np.ndarray, fractions=THRESHOLD_FRACTIONS) -> tuple[np.ndarray, np.ndarray]:
    """F1 of ``latent > f * max(latent)`` for every fraction: ``[n_fractions, n_latents, n_targets]``,
    and the absolute thresholds used, ``[n_fractions, n_latents]``."""
    top = latents.max(axis=0)
    thresholds = np.stack([f * top for f in fractions])
    f1 = np.stack([detector_scores(latents > t, binary_targets)[2] for t in thresholds])
    return f1, thresholds


def probe_directions(acts: np.ndarray, targets: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """Unit-norm linear-probe directions ``[n_targets, d]``: ridge regression of each centred target
    on the centred activations (closed form; with binary targets this is a linear discriminant)."""
    x = acts.astype(np.float64) - acts.mean(axis=0)
    y = targets.astype(np.float64) - targets.mean(axis=0)
    gram = x.T @ x / len(x)
    w = np.linalg.solve(gram + ridge * np.trace(gram) / len(gram) * np.eye(len(gram)), x.T @ y / len(x)).T
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    return np.where(norms > 0, w / np.where(norms > 0, norms, 1), 0.0)


def abs_cosines(decoder: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """``[n_latents, n_directions]`` of |cos(decoder row, direction)|."""
    d = decoder / np.maximum(np.linalg.norm(decoder, axis=1, keepdims=True), 1e-12)
    p = directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    return np.abs(d @ p.T)


def mmcs(decoder: np.ndarray, directions: np.ndarray) -> float:
    """Mean over directions of the best |cosine| with any decoder row."""
    return float(abs_cosines(decoder, directions).max(axis=0).mean())


def mcc(decoder: np.ndarray, directions: np.ndarray) -> float:
    """Mean |cosine| of a one-to-one (Hungarian) matching of directions to decoder rows."""
    c = abs_cosines(decoder, directions)
    rows, cols = linear_sum_assignment(1 - c)
    return float(c[rows, cols].mean())


def absorption_gap(fires: np.ndarray, parent: np.ndarray, child: np.ndarray) -> tuple[float, float, float]:
    """``(gap, P(fires | parent, not child), P(fires | parent, child))``; NaN where undefined."""
    only_parent, both = parent & ~child, parent & child
    p_only = float(fires[only_parent].mean()) if only_parent.any() else float("nan")
    p_both = float(fires[both].mean()) if both.any() else float("nan")
    return p_only - p_both, p_only, p_both


def bootstrap_abs_pearson(
    latents: np.ndarray, target: np.ndarray, groups: np.ndarray, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean over columns of ``latents`` (``[n_tokens, n_seeds]``: the same feature's latent in
    several SAEs) of |Pearson| with ``target``, and its percentile bootstrap interval over
    ``groups`` (sentences: tokens of a sentence are not independent, so sentences are resampled).

    Every replicate resamples the same sentences for all columns; Pearson is computed from
    per-sentence sums, so a replicate costs one small matrix product.
    """
    x = latents.astype(np.float64).reshape(len(latents), -1)
    y = target.astype(np.float64)
    _, g = np.unique(groups, return_inverse=True)
    n_groups = int(g.max()) + 1

    def sums(v: np.ndarray) -> np.ndarray:
        return np.stack([np.bincount(g, weights=v[:, c], minlength=n_groups) for c in range(v.shape[1])], axis=1)

    counts = np.bincount(g, minlength=n_groups).astype(np.float64)
    sx, sxx, sxy = sums(x), sums(x * x), sums(x * y[:, None])
    sy, syy = (np.bincount(g, weights=w, minlength=n_groups) for w in (y, y * y))
    rng = np.random.default_rng(seed)
    weights = np.vstack([np.ones(n_groups), rng.multinomial(n_groups, np.full(n_groups, 1 / n_groups), size=n_boot)])
    n, Sx, Sxx, Sxy = weights @ counts, weights @ sx, weights @ sxx, weights @ sxy
    Sy, Syy = weights @ sy, weights @ syy
    cov = Sxy - Sx * (Sy / n)[:, None]
    var_x = Sxx - Sx**2 / n[:, None]
    var_y = Syy - Sy**2 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.abs(cov / np.sqrt(var_x * var_y[:, None])).mean(axis=1)
    boot = rho[1:][np.isfinite(rho[1:])]
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha]) if len(boot) else (np.nan, np.nan)
    return float(rho[0]), float(lo), float(hi)

"""The paper's four claims as pre-registered tests that can come out either way.

Each claim is judged per language from typed evidence ([`formal_sae.reproduce.evidence`][formal_sae.reproduce.evidence]) into
``supported`` / ``mixed`` / ``not supported`` / ``not tested`` (with the reason), then overall:
supported when at least two languages support it (C4: the paper's claim is about English, so its
overall verdict follows English). Every threshold below is a named constant with its reason, and
the reproduction page lists them. Differences count only beyond their uncertainty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from formal_sae import LEXICAL, STRUCTURAL
from formal_sae.reproduce.evidence import C1Evidence, C2Evidence, C3Evidence, C4Evidence, Cell

SUPPORTED, MIXED, NOT_SUPPORTED, NOT_TESTED = "supported", "mixed", "not supported", "not tested"

# ------------------------------------------------------------------------------ thresholds
#: An SAE enters the evidence only if it explains at least this share of the variance: below it
#: its latents describe some other vector than the model's activation.
SANE_EXPLAINED_VARIANCE = 0.5
#: ... and fires at least this many latents per token on average (L0 = 0 encodes nothing).
SANE_L0 = 1.0
#: C1: a latent "tracks" a feature at |Pearson| (or F1, binary features) of at least this (the
#: authors' notebooks counted latents with |rho| >= 0.9).
C1_BAR = 0.9
#: C1: ... and beats the best latent of untrained SAEs of the same shape by at least this much
#: (an untrained SAE already finds features that any encoder of the token exposes).
C1_CONTROL_MARGIN = 0.1
#: A feature is represented by the model at a hook if a linear probe decodes it with this skill on
#: held-out sentences (R², or accuracy rescaled from the majority class to perfect): a latent at
#: |rho| = C1_BAR explains 0.9² ≈ 0.8 of the feature's variance, so below it no SAE can be blamed.
REPRESENTED = 0.8
#: C2 measures validity with the SAE spliced in, which cannot exceed the model's own: a model below
#: this validity cannot show the SAE's inductive biases.
C2_MODEL_VALIDITY = 0.5
#: C2: a factor matters if changing it alone moves validity by at least this much ...
C2_EFFECT = 0.2
#: ... beyond this many standard errors.
C2_STANDARD_ERRORS = 3.0
#: C2: the claim needs at least this many factors that matter ("highly sensitive").
C2_FACTORS = 2
#: C3: a clamp that closes at least this share of the gap to the feature-conditional
#: next-token distribution did what its interpretation predicts.
C3_GAP_CLOSED = 0.5
#: C3: a clamp that closes less than this share of the gap did practically nothing, even when
#: random latents do still less (their clamps are often ~0, so their interval is very narrow).
C3_NEGLIGIBLE = 0.05
#: C4: the causal SAE must lower the held-out interpolation loss by at least this fraction ...
C4_LOSS_DROP = 0.10
#: ... with intervals over at least this many seeds (fewer: not tested).
C4_MIN_SEEDS = 2
#: Confidence of every interval.
CONFIDENCE = 0.95

THRESHOLDS: dict[str, tuple[float, str]] = {
    "SANE_EXPLAINED_VARIANCE": (SANE_EXPLAINED_VARIANCE, "an SAE that explains less variance describes another vector"),
    "SANE_L0": (SANE_L0, "an SAE that fires no latent encodes nothing"),
    "C1_BAR": (C1_BAR, "|rho| (or F1) at which a latent tracks a feature, as the authors counted"),
    "C1_CONTROL_MARGIN": (C1_CONTROL_MARGIN, "margin over untrained SAEs of the same shape (the lower end of the interval)"),
    "REPRESENTED": (REPRESENTED, "probe skill (R², rescaled accuracy) above which the model represents a feature at the hook"),
    "C2_MODEL_VALIDITY": (C2_MODEL_VALIDITY, "model validity below which C2 cannot be measured"),
    "C2_EFFECT": (C2_EFFECT, "change in validity from one factor alone that counts as sensitivity"),
    "C2_STANDARD_ERRORS": (C2_STANDARD_ERRORS, "an effect must exceed this many standard errors"),
    "C2_FACTORS": (C2_FACTORS, "factors that must matter for 'highly sensitive'"),
    "C3_GAP_CLOSED": (C3_GAP_CLOSED, "gap closure at which a clamp did what its interpretation predicts"),
    "C3_NEGLIGIBLE": (C3_NEGLIGIBLE, "gap closure below which a clamp did practically nothing (smallest effect of interest)"),
    "C4_LOSS_DROP": (C4_LOSS_DROP, "relative drop of the held-out causal loss the regulariser must achieve"),
    "C4_MIN_SEEDS": (C4_MIN_SEEDS, "seeds per SAE needed for an interval"),
    "CONFIDENCE": (CONFIDENCE, "confidence of every interval"),
}

STATEMENTS = {
    "C1": "Interpretable latents emerge: latents track grammar-level (structural) features.",
    "C2": "Outcomes are highly sensitive to the inductive biases of the SAE pipeline.",
    "C3": "Latents that correlate with a feature do not always have the causal effect their interpretation predicts.",
    "C4": "A causal regulariser makes latents' effects more predictable, at a cost.",
}


@dataclass
class Verdict:
    """One claim's verdict for one language, with the reason in words and the numbers behind it."""

    verdict: str
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClaimResult:
    claim: str
    statement: str
    overall: Verdict
    languages: dict[str, Verdict]

    def to_dict(self) -> dict[str, Any]:
        return {
            "claim": self.claim,
            "statement": self.statement,
            "overall": self.overall.__dict__,
            "languages": {k: v.__dict__ for k, v in self.languages.items()},
        }


def sane(explained_variance: float | None, l0: float | None) -> tuple[bool, str]:
    """Whether an SAE enters the evidence, and why not."""
    if explained_variance is None or l0 is None or math.isnan(explained_variance) or math.isnan(l0):
        return False, "its explained variance or L0 was not measured"
    if explained_variance < SANE_EXPLAINED_VARIANCE:
        return False, f"explained variance {explained_variance:.2f} < {SANE_EXPLAINED_VARIANCE}"
    if l0 < SANE_L0:
        return False, f"L0 {l0:.2f} < {SANE_L0}"
    return True, ""


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean and Student-t interval of ``values`` (seeds); a single value gives an infinite interval."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, -math.inf, math.inf
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


# ------------------------------------------------------------------------------ C1
def judge_c1(ev: C1Evidence) -> Verdict:
    if ev.failed:
        return Verdict(NOT_TESTED, f"its stage failed: {ev.failed}")
    if not ev.sane:
        return Verdict(NOT_TESTED, f"the analysed SAE is not sane ({ev.why_not_sane})")
    numbers = {f.feature: f.to_dict() for f in ev.features}
    structural = [f for f in ev.features if f.role == STRUCTURAL]
    represented = [f for f in structural if f.probe is None or f.probe >= REPRESENTED]
    if structural and not represented:
        best = max(structural, key=lambda f: f.probe or 0)
        return Verdict(
            NOT_TESTED,
            f"the model does not represent any structural feature at this hook (best probe: {best.feature} {best.probe:.2f} "
            f"< {REPRESENTED}), so no SAE could find one",
            numbers,
        )

    def passes(f) -> bool:
        return f.abs_rho >= C1_BAR or (f.f1 is not None and f.f1 >= C1_BAR)

    strong = [f for f in represented if passes(f) and f.abs_rho_ci[0] - f.control_abs_rho >= C1_CONTROL_MARGIN]
    if strong:
        f = max(strong, key=lambda f: f.abs_rho)
        return Verdict(
            SUPPORTED,
            f"{f.feature} (structural): latent {f.latent} |rho| {f.abs_rho:.3f} [{f.abs_rho_ci[0]:.3f}, {f.abs_rho_ci[1]:.3f}], "
            f"untrained SAEs at most {f.control_abs_rho:.3f}" + _probe_text(f),
            numbers,
        )
    weak = [f for f in represented if passes(f)]
    if weak:
        f = max(weak, key=lambda f: f.abs_rho)
        return Verdict(
            MIXED,
            f"{f.feature} reaches |rho| {f.abs_rho:.3f} but untrained SAEs reach {f.control_abs_rho:.3f} "
            f"(margin below {C1_CONTROL_MARGIN} at the interval's lower end {f.abs_rho_ci[0]:.3f})",
            numbers,
        )
    lexical = [f for f in ev.features if f.role == LEXICAL and passes(f)]
    if lexical:
        names = ", ".join(f.feature for f in lexical[:4])
        return Verdict(MIXED, f"only lexical features (functions of the token: {names}) have a tracking latent", numbers)
    best = max(represented or ev.features, key=lambda f: f.abs_rho, default=None)
    detail = f" (best: {best.feature} |rho| {best.abs_rho:.3f})" if best else ""
    return Verdict(NOT_SUPPORTED, f"no latent tracks a structural feature at |rho| >= {C1_BAR}{detail}", numbers)


def _probe_text(f) -> str:
    if f.probe is None:
        return ""
    embed = "" if f.probe_embed is None else f", {f.probe_embed:.2f} from the token alone"
    return f"; the model represents it (probe {f.probe:.2f}{embed})"


# ------------------------------------------------------------------------------ C2
FACTORS = ("family", "expansion", "sparsity", "normalisation", "pre_bias")


@dataclass
class FactorEffect:
    """Main effect of one factor: the mean, over groups of cells that differ only in it, of the
    range of the metric across its levels, with a standard error."""

    factor: str
    effect: float | None
    se: float | None
    n_groups: int


#: The sparsity level is a k or an alpha, so it only has meaning within a family: families are
#: compared across their sparsity levels (means over the levels), other factors at equal levels.
IGNORED_WITH = {"family": ("sparsity",)}


def main_effects(cells: Sequence[Cell], metric: str = "validity") -> list[FactorEffect]:
    """Main effect of every factor on ``metric`` (validity, validity_paper_splice, explained_variance)."""
    se_of = {"validity": "validity_se", "validity_paper_splice": "validity_paper_splice_se"}.get(metric)
    out = []
    for factor in FACTORS:
        ignored = (factor, *IGNORED_WITH.get(factor, ()))
        groups: dict[str, list[Cell]] = {}
        for c in cells:
            if getattr(c, metric) is not None:
                groups.setdefault(repr(sorted((k, v) for k, v in c.factors.items() if k not in ignored)), []).append(c)
        ranges, errors = [], []
        for group in groups.values():
            levels: dict[str, list[Cell]] = {}
            for c in group:
                levels.setdefault(repr(c.factors[factor]), []).append(c)
            if len(levels) < 2:
                continue
            means = {k: (float(np.mean([getattr(c, metric) for c in v])), _mean_se(v, se_of)) for k, v in levels.items()}
            (lo, lo_se), (hi, hi_se) = min(means.values()), max(means.values())
            ranges.append(hi - lo)
            errors.append(math.hypot(lo_se, hi_se))
        if not ranges:
            out.append(FactorEffect(factor, None, None, 0))
            continue
        n = len(ranges)
        # measurement error of the mean range, plus its spread across groups where there are several
        se = math.sqrt(sum(e * e for e in errors)) / n
        if n > 1:
            se = math.hypot(se, float(np.std(ranges, ddof=1)) / math.sqrt(n))
        out.append(FactorEffect(factor, float(np.mean(ranges)), se, n))
    return out


def _mean_se(cells: Sequence[Cell], se_of: str | None) -> float:
    if se_of is None:
        return 0.0
    return math.sqrt(sum((getattr(c, se_of) or 0.0) ** 2 for c in cells)) / len(cells)


def _matters(e: FactorEffect) -> bool:
    return e.effect is not None and e.effect >= C2_EFFECT and e.effect > C2_STANDARD_ERRORS * e.se


def judge_c2(ev: C2Evidence) -> Verdict:
    if ev.failed:
        return Verdict(NOT_TESTED, f"its stage failed: {ev.failed}")
    good = [c for c in ev.cells if sane(c.explained_variance, c.l0)[0]]
    effects = main_effects(good)
    every = main_effects(ev.cells)
    numbers = {
        "sane_cells": [c.cell_id for c in good],
        "collapsed_cells": [c.cell_id for c in ev.cells if c not in good],
        "validity": [e.__dict__ for e in effects],
        "validity_paper_splice": [e.__dict__ for e in main_effects(good, "validity_paper_splice")],
        "explained_variance": [e.__dict__ for e in main_effects(good, "explained_variance")],
        "validity_with_collapsed_cells": [e.__dict__ for e in every],
    }
    if ev.model_validity is not None and ev.model_validity < C2_MODEL_VALIDITY:
        return Verdict(
            NOT_TESTED,
            f"the model's own validity is {ev.model_validity:.2f} < {C2_MODEL_VALIDITY}: validity with an SAE spliced in cannot show its inductive biases",
            numbers,
        )
    testable = [e for e in effects if e.effect is not None]
    if len(testable) < C2_FACTORS:
        varied = ", ".join(e.factor for e in testable) or "none"
        return Verdict(
            NOT_TESTED,
            f"among {len(good)} sane cells the grid varies {len(testable)} factor(s) alone ({varied}); "
            f"main effects of {C2_FACTORS} factors cannot be measured",
            numbers,
        )
    matter = [e for e in effects if _matters(e)]
    text = "; ".join(f"{e.factor} {e.effect:.2f} ± {e.se:.2f}" for e in testable)
    if len(matter) >= C2_FACTORS:
        return Verdict(SUPPORTED, f"validity main effects (sane cells): {text}", numbers)
    if matter or any(_matters(e) for e in every):
        why = "one factor" if matter else "only collapsed cells"
        return Verdict(MIXED, f"{why} drive(s) the spread; main effects: {text}", numbers)
    return Verdict(NOT_SUPPORTED, f"no factor moves validity by {C2_EFFECT} beyond {C2_STANDARD_ERRORS:g} SE: {text}", numbers)


# ------------------------------------------------------------------------------ C3
def judge_c3(ev: C3Evidence) -> Verdict:
    if ev.failed:
        return Verdict(NOT_TESTED, f"its stage failed: {ev.failed}")
    if not ev.sane:
        return Verdict(NOT_TESTED, f"the analysed SAE is not sane ({ev.why_not_sane})")
    if not ev.features:
        return Verdict(NOT_TESTED, f"no structural feature has a latent with |rho| >= {C1_BAR} to intervene on")
    numbers = {f.feature: f.to_dict() for f in ev.features}
    for f in ev.features:
        # one-sided: an effect no larger than random latents' (or negligible) is no causal effect
        clamp_null = f.clamp_gap_closure <= max(f.null_clamp_interval[1], C3_NEGLIGIBLE)
        ablation_null = f.group_ablation_effect <= f.null_ablation_interval[1]
        control_works = f.probe_ablation_effect > f.null_ablation_interval[1]
        if (clamp_null or ablation_null) and control_works:
            what = []
            if clamp_null:
                what.append(
                    f"clamping the best-correlated latent closes {f.clamp_gap_closure:.1%} of the gap (random latents: up to "
                    f"{f.null_clamp_interval[1]:.1%}; negligible below {C3_NEGLIGIBLE:.0%}; it did: {f.what_the_clamp_did})"
                )
            if ablation_null:
                what.append(
                    f"ablating all {len(f.latents)} correlated latents moves the outputs by {f.group_ablation_effect:.3f}, "
                    f"within random latents' {f.null_ablation_interval[1]:.3f}"
                )
            return Verdict(
                SUPPORTED,
                f"{f.feature}: " + "; ".join(what) + f"; yet projecting out the feature's probe direction moves the outputs by "
                f"{f.probe_ablation_effect:.3f}",
                numbers,
            )
    blind = [f for f in ev.features if f.probe_ablation_effect <= f.null_ablation_interval[1]]
    if len(blind) == len(ev.features):
        return Verdict(
            MIXED,
            "the positive control (projecting out the probe direction) moves the outputs no more than random latents do: "
            "these interventions cannot tell a causal latent from a non-causal one here",
            numbers,
        )
    if all(f.clamp_gap_closure >= C3_GAP_CLOSED for f in ev.features):
        text = "; ".join(f"{f.feature} {f.clamp_gap_closure:.2f} ({f.what_the_clamp_did})" for f in ev.features)
        return Verdict(
            NOT_SUPPORTED, f"every correlated latent moves the outputs as its interpretation predicts: {text}", numbers
        )
    text = "; ".join(f"{f.feature} gap closure {f.clamp_gap_closure:.2f}" for f in ev.features)
    return Verdict(MIXED, f"effects beyond the null but closing less than {C3_GAP_CLOSED:.0%} of the gap: {text}", numbers)


# ------------------------------------------------------------------------------ C4
def judge_c4(ev: C4Evidence) -> Verdict:
    if ev.why_not_tested:
        return Verdict(NOT_TESTED, ev.why_not_tested)
    if len(ev.pairs) < C4_MIN_SEEDS:
        return Verdict(NOT_TESTED, f"{len(ev.pairs)} seed(s) of plain and causal SAEs; an interval needs {C4_MIN_SEEDS}")

    def deltas(key: str, relative: bool = False) -> list[float] | None:
        out = []
        for p in ev.pairs:
            a, b = p.plain.get(key), p.causal.get(key)
            if a is None or b is None:
                return None
            out.append((b - a) / abs(a) if relative and a else b - a)
        return out

    numbers: dict[str, Any] = {"seeds": [p.seed for p in ev.pairs]}
    for key, relative in (("causal_loss", True), ("linearity_error", False), ("predictability", False),
                          ("explained_variance", False), ("ce_loss_score", False), ("validity", False)):  # fmt: skip
        d = deltas(key, relative)
        numbers[key] = None if d is None else dict(zip(("mean", "low", "high"), t_interval(d), strict=True))
    loss = numbers["causal_loss"]
    if loss is None:
        return Verdict(NOT_TESTED, "the held-out causal loss was not measured for every seed", numbers)
    loss_drops = loss["mean"] <= -C4_LOSS_DROP and loss["high"] < 0
    lin, pred = numbers["linearity_error"], numbers["predictability"]
    lin_better = lin is not None and lin["high"] < 0
    pred_better = pred is not None and pred["low"] > 0
    text = (
        f"causal loss {100 * loss['mean']:+.0f}% [{100 * loss['low']:+.0f}%, {100 * loss['high']:+.0f}%]"
        + (f"; linearity error {lin['mean']:+.3f} [{lin['low']:+.3f}, {lin['high']:+.3f}]" if lin else "")
        + (f"; predictability {pred['mean']:+.3f} [{pred['low']:+.3f}, {pred['high']:+.3f}]" if pred else "")
        + _cost_text(numbers)
    )
    if loss_drops and (lin_better or pred_better):
        return Verdict(SUPPORTED, text, numbers)
    if loss_drops:
        return Verdict(MIXED, "only the trained-for loss improves: " + text, numbers)
    return Verdict(NOT_SUPPORTED, text, numbers)


def _cost_text(numbers: dict[str, Any]) -> str:
    parts = [f"Δ{name} {numbers[key]['mean']:+.3f}" for key, name in (("explained_variance", "EV"), ("validity", "validity"))
             if numbers.get(key)]  # fmt: skip
    return f"; cost: {', '.join(parts)}" if parts else ""


# ------------------------------------------------------------------------------ overall
def overall(claim: str, languages: dict[str, Verdict]) -> Verdict:
    """Supported when at least two languages support the claim; C4 follows English (the paper's
    claim is about English; Dyck and Expr are reported beside it)."""
    if claim == "C4":
        if "english" not in languages:
            return Verdict(NOT_TESTED, "C4 is a claim about English, which this run did not include")
        v = languages["english"]
        return Verdict(v.verdict, f"follows English: {v.reason}")
    counts = {k: sum(v.verdict == k for v in languages.values()) for k in (SUPPORTED, MIXED, NOT_SUPPORTED, NOT_TESTED)}
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    if counts[SUPPORTED] >= 2:
        return Verdict(SUPPORTED, f"at least two languages support it ({summary})")
    if counts[SUPPORTED] or counts[MIXED]:
        return Verdict(MIXED, f"fewer than two languages support it ({summary})")
    if counts[NOT_SUPPORTED]:
        return Verdict(NOT_SUPPORTED, summary)
    return Verdict(NOT_TESTED, summary or "no language was run")


JUDGES = {"C1": judge_c1, "C2": judge_c2, "C3": judge_c3, "C4": judge_c4}


def judge(evidence: dict[str, dict[str, Any]]) -> dict[str, ClaimResult]:
    """Every claim, from ``{language: {"C1": C1Evidence, ..., "C4": C4Evidence}}``."""
    out = {}
    for claim, judge_one in JUDGES.items():
        languages = {lang: judge_one(ev[claim]) for lang, ev in evidence.items() if claim in ev}
        out[claim] = ClaimResult(claim, STATEMENTS[claim], overall(claim, languages), languages)
    return out

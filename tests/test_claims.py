"""The claims as tests that can fail: synthetic evidence for every outcome of every claim."""

import json

import pytest

from formal_sae.reproduce import claims as C
from formal_sae.reproduce.evidence import (
    C1Evidence,
    C2Evidence,
    C3Evidence,
    C4Evidence,
    Cell,
    FeatureCorrelation,
    InterventionEvidence,
    SeedPair,
)


# ------------------------------------------------------------------------------ C1
def feature(name="depth", role="structural", rho=0.95, ci=(0.93, 0.97), control=0.6, probe=0.95, f1=None, kind="ordinal"):
    return FeatureCorrelation(name, role, kind, 3, rho, ci, f1, control, [control, control - 0.05, control - 0.1], probe, 0.2)


def c1(*features, sane=True):
    return C1Evidence("dyck2", sane, "" if sane else "explained variance 0.10 < 0.5", 3, list(features))


@pytest.mark.parametrize(
    ("evidence", "verdict", "words"),
    [
        (c1(feature()), C.SUPPORTED, "untrained SAEs at most 0.600"),
        # the untrained control is as good as the trained SAE: the latent proves nothing
        (c1(feature(rho=0.96, ci=(0.95, 0.97), control=0.95)), C.MIXED, "untrained SAEs reach 0.950"),
        # the margin counts at the interval's lower end
        (c1(feature(rho=0.95, ci=(0.70, 0.99), control=0.65)), C.MIXED, "lower end 0.700"),
        (c1(feature(rho=0.5, ci=(0.45, 0.55)), feature("pos=verb", "lexical", 0.99, (0.98, 1.0), 0.99)), C.MIXED, "only lexical"),
        (c1(feature(rho=0.6, ci=(0.5, 0.7))), C.NOT_SUPPORTED, "no latent tracks a structural feature"),
        (c1(feature(probe=0.3)), C.NOT_TESTED, "does not represent any structural feature"),
        (c1(feature(), sane=False), C.NOT_TESTED, "not sane"),
        (c1(feature("last_token", rho=0.5, ci=(0.4, 0.6), control=0.2, f1=0.95, kind="binary")), C.SUPPORTED, "last_token"),
    ],
)
def test_c1_every_outcome(evidence, verdict, words):
    v = C.judge_c1(evidence)
    assert v.verdict == verdict and words in v.reason, v


def test_c1_a_model_that_learned_nothing_is_never_supported():
    """An untrained model: structural features are not decodable, and what an SAE finds an
    untrained SAE finds as well."""
    untrained = c1(feature(rho=0.97, ci=(0.96, 0.98), control=0.97, probe=0.4), feature("pos=verb", "lexical", 1.0, (1, 1), 1.0))
    assert C.judge_c1(untrained).verdict != C.SUPPORTED


# ------------------------------------------------------------------------------ C2
BASE = {"family": "topk", "expansion": 2, "sparsity": 16, "normalisation": "none", "pre_bias": False}


def cell(i, validity, ev=0.9, se=0.02, **changes):
    return Cell(f"c{i}", {**BASE, **changes}, ev, 10.0, validity, se, validity, se)


def test_c2_supported_when_two_factors_matter_beyond_their_errors():
    cells = [cell(0, 0.9), cell(1, 0.4, expansion=8), cell(2, 0.5, sparsity=4), cell(3, 0.88, pre_bias=True)]
    v = C.judge_c2(C2Evidence("expr", cells))
    assert v.verdict == C.SUPPORTED, v
    effects = {e["factor"]: e for e in v.numbers["validity"]}
    assert effects["expansion"]["effect"] == pytest.approx(0.5) and effects["pre_bias"]["effect"] == pytest.approx(0.02)


def test_c2_mixed_when_only_collapsed_cells_or_one_factor_drive_the_spread():
    collapsed = [
        cell(0, 0.9),
        cell(1, 0.0, ev=-0.5, family="l1", sparsity=1e-3),
        cell(2, 0.88, expansion=8),
        cell(3, 0.89, sparsity=4),
    ]
    v = C.judge_c2(C2Evidence("expr", collapsed))
    assert v.verdict == C.MIXED and "collapsed" in v.reason, v
    one = [cell(0, 0.9), cell(1, 0.3, expansion=8), cell(2, 0.89, sparsity=4)]
    assert C.judge_c2(C2Evidence("expr", one)).verdict == C.MIXED


def test_c2_not_supported_and_noise_does_not_count():
    flat = [cell(0, 0.9), cell(1, 0.88, expansion=8), cell(2, 0.91, sparsity=4)]
    assert C.judge_c2(C2Evidence("expr", flat)).verdict == C.NOT_SUPPORTED
    noisy = [cell(0, 0.9, se=0.2), cell(1, 0.6, expansion=8, se=0.2), cell(2, 0.6, sparsity=4, se=0.2)]
    assert C.judge_c2(C2Evidence("expr", noisy)).verdict == C.NOT_SUPPORTED  # 0.3 < 3 x 0.28


def test_c2_a_grid_that_varies_one_factor_cannot_test_the_claim():
    v = C.judge_c2(C2Evidence("expr", [cell(0, 0.9), cell(1, 0.1, sparsity=4)]))
    assert v.verdict == C.NOT_TESTED and "cannot be measured" in v.reason


# ------------------------------------------------------------------------------ C3
def intervention(gap=0.05, null=(-0.1, 0.1), ablation=0.01, null_ablation=(0.0, 0.02), probe=0.3):
    return InterventionEvidence(
        "depth", [3, 7], gap, null, ablation, null_ablation, probe, "P(closer) 0.30 -> 0.31 (target 0.60)"
    )


@pytest.mark.parametrize(
    ("features", "verdict", "words"),
    [
        ([intervention()], C.SUPPORTED, "within random latents"),
        # beyond a very narrow null, yet closing 0.03% of the gap: practically nothing
        (
            [intervention(gap=0.0003, null=(0.0, 0.0002), ablation=0.6, null_ablation=(0.0, 0.04), probe=0.6)],
            C.SUPPORTED,
            "negligible",
        ),
        # the clamp closes 10% of the gap, beyond the null, and the group ablation is real: mixed
        (
            [intervention(gap=0.1, null=(0.0, 0.0002), ablation=0.6, null_ablation=(0.0, 0.04), probe=0.6)],
            C.MIXED,
            "less than 50%",
        ),
        ([intervention(gap=0.7, ablation=0.2), intervention(gap=0.9, ablation=0.3)], C.NOT_SUPPORTED, "as its interpretation"),
        ([intervention(gap=0.3, ablation=0.2)], C.MIXED, "less than 50%"),
        # null-like latents but the positive control fails too: the intervention cannot tell
        ([intervention(probe=0.01)], C.MIXED, "positive control"),
        ([], C.NOT_TESTED, "no structural feature"),
    ],
)
def test_c3_every_outcome(features, verdict, words):
    v = C.judge_c3(C3Evidence("dyck2", True, "", features))
    assert v.verdict == verdict and words in v.reason, v


# ------------------------------------------------------------------------------ C4
def pair(seed, loss=(2.0, 1.5), lin=(0.3, 0.2), pred=(0.2, 0.3)):
    keys = ("causal_loss", "linearity_error", "predictability")
    plain = dict(zip(keys, (loss[0], lin[0], pred[0]), strict=True)) | {"explained_variance": 0.95, "validity": 0.9}
    causal = dict(zip(keys, (loss[1], lin[1], pred[1]), strict=True)) | {"explained_variance": 0.9, "validity": 0.8}
    return SeedPair(seed, plain, causal)


@pytest.mark.parametrize(
    ("pairs", "verdict"),
    [
        ([pair(0), pair(1, loss=(2.1, 1.4)), pair(2, loss=(1.9, 1.6))], C.SUPPORTED),
        # only the loss it was trained to lower improves
        (
            [
                pair(0, lin=(0.3, 0.3), pred=(0.2, 0.2)),
                pair(1, lin=(0.3, 0.31), pred=(0.2, 0.19)),
                pair(2, lin=(0.3, 0.29), pred=(0.2, 0.21)),
            ],
            C.MIXED,
        ),
        ([pair(0, loss=(2.0, 2.1)), pair(1, loss=(2.0, 1.9)), pair(2, loss=(2.0, 2.0))], C.NOT_SUPPORTED),
        # a 5% drop is not the 10% the claim needs
        ([pair(0, loss=(2.0, 1.9)), pair(1, loss=(2.0, 1.9)), pair(2, loss=(2.0, 1.91))], C.NOT_SUPPORTED),
        ([pair(0)], C.NOT_TESTED),
    ],
)
def test_c4_every_outcome(pairs, verdict):
    v = C.judge_c4(C4Evidence("english", pairs))
    assert v.verdict == verdict, v


def test_c4_seed_noise_hides_a_mean_improvement():
    pairs = [pair(0, loss=(2.0, 0.5)), pair(1, loss=(2.0, 2.6)), pair(2, loss=(2.0, 1.2))]  # mean -23%, interval crosses 0
    assert C.judge_c4(C4Evidence("english", pairs)).verdict == C.NOT_SUPPORTED


# ------------------------------------------------------------------------------ overall
def test_overall_needs_two_languages_and_c4_follows_english():
    yes, _mixed, no = C.Verdict(C.SUPPORTED, ""), C.Verdict(C.MIXED, ""), C.Verdict(C.NOT_SUPPORTED, "")
    assert C.overall("C1", {"dyck2": yes, "expr": no, "english": no}).verdict == C.MIXED  # one supportive language is not enough
    assert C.overall("C1", {"dyck2": yes, "expr": yes, "english": no}).verdict == C.SUPPORTED
    assert C.overall("C2", {"dyck2": no, "expr": no}).verdict == C.NOT_SUPPORTED
    assert C.overall("C4", {"dyck2": yes, "expr": yes, "english": no}).verdict == C.NOT_SUPPORTED
    assert C.overall("C4", {"dyck2": yes}).verdict == C.NOT_TESTED


def test_evidence_round_trips_through_json():
    for ev in (
        c1(feature()),
        C2Evidence("expr", [cell(0, 0.9)]),
        C3Evidence("x", True, "", [intervention()]),
        C4Evidence("e", [pair(0)]),
    ):
        again = type(ev).from_dict(json.loads(json.dumps(ev.to_dict())))
        assert again == ev
    results = C.judge({"expr": {"C1": c1(feature()), "C2": C2Evidence("expr", [cell(0, 0.9)])}})
    json.dumps({k: r.to_dict() for k, r in results.items()})
    assert results["C3"].overall.verdict == C.NOT_TESTED  # no language measured it


def test_c2_is_not_tested_on_a_model_that_does_not_generate_the_language():
    cells = [cell(0, 0.3), cell(1, 0.0, expansion=8), cell(2, 0.0, sparsity=4)]
    v = C.judge_c2(C2Evidence("expr", cells, model_validity=0.3))
    assert v.verdict == C.NOT_TESTED and "model's own validity" in v.reason


def test_a_claim_whose_stage_failed_is_not_tested_with_the_reason():
    why = "only 11 other live latents: too few for a null of 29-latent groups"
    assert C.judge_c1(C1Evidence("expr", True, "", 0, failed=why)).reason == f"its stage failed: {why}"
    assert C.judge_c2(C2Evidence("expr", failed=why)).verdict == C.NOT_TESTED
    assert C.judge_c3(C3Evidence("expr", True, "", failed=why)).verdict == C.NOT_TESTED
    assert C.judge_c4(C4Evidence("expr", why_not_tested=f"its stage failed: {why}")).verdict == C.NOT_TESTED

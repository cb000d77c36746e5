"""The benchmark's scoring of one SAE (``score_sae``) and its cross-seed stability
(``decoder_stability``), each checked against an expectation computed apart: hand-worked cosines,
an identity SAE (exact reconstruction), means recomputed from the analysis report, and an SAE whose
one live latent is a chosen linear function of the activations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

import formal_sae
import formal_sae.bench.scoring as scoring
from formal_sae import FormalSAEError
from formal_sae.analysis.metrics import probe_directions
from formal_sae.bench.config import ScoringSettings
from formal_sae.bench.score import BenchScore
from formal_sae.bench.scoring import score_sae
from formal_sae.bench.stability import decoder_stability

HOOK = "blocks.0.hook_resid_post"
N_SENT = 30  # every test sentence of the tiny dataset
FEATURE = "depth"  # an ordinal, structural Expr feature
#: Small scoring settings: no validity, a few intervention sentences and null groups.
FAST = ScoringSettings(max_sentences=N_SENT, validity_samples=0, intervention_sentences=20, n_null=2)


def settings(**changes) -> ScoringSettings:
    return ScoringSettings(**{**FAST.to_dict(), **changes})


def score(model, sae, ds, config: ScoringSettings = FAST, **kwargs):
    ids = {"sae_id": "test", "architecture": "standard", "family": "sae", "expansion_factor": sae.cfg.d_sae / sae.cfg.d_in}
    return score_sae(model, sae, ds, config, **{**ids, **kwargs})


def random_sae(d: int, d_sae: int, seed: int = 0) -> StandardSAE:
    torch.manual_seed(seed)
    return StandardSAE(StandardSAEConfig(d_in=d, d_sae=d_sae, metadata=SAEMetadata(hook_name=HOOK)))


def plain_role(token_ids: np.ndarray, values: np.ndarray) -> str:
    """Lexical when each token id has one value wherever it occurs (ignored tokens left out)."""
    keep = values != formal_sae.IGNORE_VALUE
    pairs = set(zip(token_ids[keep].tolist(), values[keep].tolist()))
    return formal_sae.LEXICAL if len(pairs) == len({t for t, _ in pairs}) else formal_sae.STRUCTURAL


# ----------------------------------------------------------------------------- decoder_stability
def test_stability_of_identical_and_permuted_decoders_is_one():
    w = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    assert decoder_stability([w, w.clone()]) == pytest.approx(1.0)
    # the same latents in another order, with flipped signs and scales: the same dictionary
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    signs = torch.tensor([-2.0, 1.0] * 8)[:, None]
    assert decoder_stability([w, w[perm] * signs, w.numpy()[::-1]]) == pytest.approx(1.0)


def test_stability_by_hand():
    a = np.eye(2)
    b = np.array([[-3.0, 4.0], [0.0, 0.0]])  # a zero row: a latent never trained
    # a -> b: (1,0) best |cos| 0.6, (0,1) 0.8: mean 0.7; b -> a: (-3,4) 0.8, the zero row 0: mean 0.4
    assert decoder_stability([a, b]) == pytest.approx((0.7 + 0.4) / 2)
    assert decoder_stability([b, a]) == pytest.approx((0.7 + 0.4) / 2)
    assert decoder_stability([a, a, b]) == pytest.approx((1 + 1 + 0.7 + 0.4 + 0.7 + 0.4) / 6)


def test_stability_of_unrelated_decoders_is_low_and_fewer_than_two_is_none():
    g = torch.Generator().manual_seed(0)
    assert decoder_stability([torch.randn(8, 256, generator=g), torch.randn(8, 256, generator=g)]) < 0.5
    assert decoder_stability([]) is None
    assert decoder_stability([np.eye(3)]) is None
    with pytest.raises(FormalSAEError, match="d_in"):
        decoder_stability([np.eye(3), np.eye(4)])


# ----------------------------------------------------------------------------- score_sae
@pytest.fixture
def identity(model, identity_sae):
    """An exact identity SAE on the tiny model's residual stream (2 x d_model latents)."""
    return identity_sae(model.cfg.d_model, HOOK)


@pytest.fixture
def identity_report(model, identity, ds):
    return formal_sae.analyze(model, identity, ds, max_sentences=N_SENT)


def test_identity_sae_scores_are_the_reports(model, identity, identity_report, ds):
    s = score(model, identity, ds, l0_target=4, seed=3)
    assert s.explained_variance == pytest.approx(1.0, abs=1e-4)
    assert s.ce_loss_score == pytest.approx(1.0, abs=1e-3)
    assert (s.grammar, s.hook_name, s.d_sae, s.l0_target, s.seed) == ("expr", HOOK, 2 * model.cfg.d_model, 4, 3)
    assert s.validity is None and "validity" not in s.to_dict()  # validity_samples=0: not measured
    # every per-target score and both role means, recomputed from analyze's report
    report = identity_report
    values = {t.name: t.values for t in formal_sae.targets_of(report.aligned)}
    expected = {n: abs(t.pearson or 0.0) if t.kind == "ordinal" else (t.f1 or 0.0) for n, t in report.targets.items()}
    assert s.feature_scores == pytest.approx(expected)
    roles = {n: plain_role(report.aligned.token_ids, values[n]) for n in expected}
    assert set(roles.values()) == {formal_sae.STRUCTURAL, formal_sae.LEXICAL}  # Expr has both
    for role, got in ((formal_sae.STRUCTURAL, s.structural_score), (formal_sae.LEXICAL, s.lexical_score)):
        assert got == pytest.approx(np.mean([expected[n] for n in expected if roles[n] == role]))
    assert (s.coverage, s.mcc, s.dense_fraction) == pytest.approx(
        (report.summary.coverage, report.summary.mcc, report.summary.dense_fraction)
    )
    assert s.absorption == pytest.approx(np.mean([a.gap for a in report.absorption if a.gap is not None]))
    assert s.seconds > 0
    assert BenchScore(**s.to_dict()) == s  # a plain record: its JSON rebuilds it


def test_causal_dynamics_are_c4s_measures_on_the_same_pairs_and_latents(model, ds):
    """The interpolation and predictability scores equal the public functions called directly on
    the held-out pairs and the structural features' latents the score names."""
    sae = random_sae(model.cfg.d_model, 2 * model.cfg.d_model, seed=1)
    s = score(model, sae, ds)
    pairs = formal_sae.held_out_pairs(model, ds, max_sentences=FAST.intervention_sentences, seed=FAST.seed)
    direct = formal_sae.interpolation_metrics(model, sae, ds, pairs)
    assert s.causal_loss == pytest.approx(direct.causal_loss) and s.causal_loss > 0
    assert s.linearity_error == pytest.approx(direct.linearity_error)
    report = formal_sae.analyze(model, sae, ds, max_sentences=N_SENT)
    values = {t.name: t.values for t in formal_sae.targets_of(report.aligned)}
    structural = {
        n: (t.f1_latent if t.kind == "binary" and t.f1_latent is not None else t.best_latent)
        for n, t in report.targets.items()
        if plain_role(report.aligned.token_ids, values[n]) == formal_sae.STRUCTURAL
    }
    assert structural  # Expr has structural features: the measure is not vacuous
    results = formal_sae.effect_predictability(model, sae, ds, structural, max_sentences=FAST.intervention_sentences)
    corr = [np.corrcoef(np.ravel(p.predicted), np.ravel(p.observed))[0, 1] for p in results.values() if p.r2 is not None]
    assert corr and s.predictability == pytest.approx(float(np.median(corr)))
    assert -1 <= s.predictability <= 1


def test_given_fidelity_is_used_verbatim(model, identity, ds, monkeypatch):
    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluate_sae must not run when fidelity is given")

    monkeypatch.setattr(scoring, "evaluate_sae", no_evaluation)
    given = {"explained_variance": 0.123, "ce_loss_score": 0.25, "kl_div_score": 0.5, "l0": 7.0, "dead_fraction": 0.375}
    s = score(model, identity, ds, fidelity={**given, "validity": 0.625, "mse": 9.0})
    assert {k: s[k] for k in given} == given
    assert s.validity == 0.625
    assert score(model, identity, ds, fidelity=given).validity is None
    with pytest.raises(FormalSAEError, match="kl_div_score"):
        score(model, identity, ds, fidelity={k: v for k, v in given.items() if k != "kl_div_score"})


def test_a_latent_set_to_a_probe_scores_its_correlation(model, identity_report, ds):
    """One live latent equal to ``w . x + b`` (``w`` the feature's ridge probe on the test tokens,
    ``b`` large enough that the ReLU never cuts): the feature's score is that projection's |Pearson|
    with the feature, and beats a random SAE's best latent."""
    aligned = identity_report.aligned
    acts, y = aligned.acts.double().numpy(), aligned.features[FEATURE].astype(np.float64)
    w = probe_directions(acts, y[:, None])[0]
    expected = abs(np.corrcoef(acts @ w, y)[0, 1])
    d = model.cfg.d_model
    cfg = StandardSAEConfig(d_in=d, d_sae=2, apply_b_dec_to_input=False, metadata=SAEMetadata(hook_name=HOOK))
    planted = StandardSAE(cfg)
    with torch.no_grad():
        planted.W_enc.zero_()
        planted.W_enc[:, 0] = torch.as_tensor(w, dtype=torch.float32)
        planted.b_enc.copy_(torch.tensor([100.0, 0.0]))  # latent 1: never fires
        planted.W_dec.zero_()
        planted.W_dec[0] = torch.as_tensor(w, dtype=torch.float32)
        planted.b_dec.zero_()
    assert (acts @ w).min() > -100  # the ReLU never cuts latent 0 on the test tokens
    # causal_bar reachable: every intervention fails for want of live null latents, and is skipped
    s = score(model, planted, ds, settings(causal_bar=0.01))
    assert s.feature_scores[FEATURE] == pytest.approx(expected, abs=1e-3)
    assert (s.gap_closure, s.not_causal_rate, s.n_causal_features) == (None, None, 0)
    baseline = score(model, random_sae(d, 2 * d), ds)
    assert s.feature_scores[FEATURE] > baseline.feature_scores[FEATURE]


def test_causal_scores_need_a_latent_at_the_bar(model, identity, identity_report, ds):
    unreachable = score(model, random_sae(model.cfg.d_model, 2 * model.cfg.d_model), ds, settings(causal_bar=1.0))
    assert (unreachable.gap_closure, unreachable.not_causal_rate, unreachable.n_causal_features) == (None, None, 0)
    s = score(model, identity, ds, settings(causal_bar=0.3))
    assert s.n_causal_features >= 1
    assert math.isfinite(s.gap_closure) and 0 <= s.not_causal_rate <= 1
    # only structural features at the bar are intervened on (none was skipped on this SAE)
    aligned = identity_report.aligned
    values = {t.name: t.values for t in formal_sae.targets_of(aligned)}
    at_bar = [
        n for n, v in s.feature_scores.items() if v >= 0.3 and plain_role(aligned.token_ids, values[n]) == formal_sae.STRUCTURAL
    ]
    assert s.n_causal_features == len(at_bar)


@pytest.mark.parametrize(
    ("message", "skipped"),
    [("feature 'depth' has no high and low tokens to compare on these 20 sentences", True), ("an unexpected failure", False)],
)
def test_interventions_that_cannot_run_are_skipped_and_others_raise(model, identity, ds, monkeypatch, message, skipped):
    def failing(*args, **kwargs):
        raise FormalSAEError(message)

    monkeypatch.setattr(scoring, "feature_interventions", failing)
    fidelity = {"explained_variance": 1.0, "ce_loss_score": 1.0, "kl_div_score": 1.0, "l0": 1.0, "dead_fraction": 0.0}
    if skipped:
        s = score(model, identity, ds, settings(causal_bar=0.3), fidelity=fidelity)
        assert (s.gap_closure, s.not_causal_rate, s.n_causal_features) == (None, None, 0)
    else:
        with pytest.raises(FormalSAEError, match="unexpected"):
            score(model, identity, ds, settings(causal_bar=0.3), fidelity=fidelity)


def test_an_sae_whose_decoder_is_the_ground_truth_directions_scores_mcc_1(model, ds, identity):
    """The MCC of a dictionary made of the features' own directions is 1; a random one's is far
    below. The directions are fitted here by a direct least-squares solve, not the package's probe."""
    report = formal_sae.analyze(model, identity, ds, max_sentences=N_SENT)
    acts = report.aligned.acts.numpy().astype(np.float64)
    values = np.stack([t.values for t in formal_sae.targets_of(report.aligned) if t.name in report.targets], axis=1)
    x, y = acts - acts.mean(0), values - values.mean(0)
    ridge = 1e-3 * np.trace(x.T @ x) / x.shape[1]
    w = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y).T  # [targets, d]
    _, distinct = np.unique(values.T, axis=0, return_index=True)
    directions = w[np.sort(distinct)]
    d = model.cfg.d_model
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d, metadata=SAEMetadata(hook_name=HOOK)))
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.W_dec[: len(directions)] = torch.tensor(
            directions / np.linalg.norm(directions, axis=1, keepdims=True), dtype=torch.float32
        )
        sae.W_dec[len(directions) :] = torch.randn(2 * d - len(directions), d)
    assert score(model, sae, ds).mcc == pytest.approx(1.0, abs=1e-4)
    torch.manual_seed(0)
    random = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d, metadata=SAEMetadata(hook_name=HOOK)))
    assert score(model, random, ds).mcc < 0.6

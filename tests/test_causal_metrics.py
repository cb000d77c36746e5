"""Measures for claim C4 (``formal_sae.saes.causal_metrics``): held-out pairs drawn without any
SAE, the causal loss on them against a direct per-sentence computation, the linearity error (0
where g is exactly affine, > 0 where it is not, undefined where g does nothing) and effect
predictability (near 1 where clamping reproduces the natural binned distributions, None for a
latent that does nothing).

g is exactly affine at ``ln_final.hook_normalized``: after the final LayerNorm only the unembedding
(x @ W_U + b_U) remains, so the SAE decoder followed by it is affine in the latents.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

import formal_sae
from formal_sae.errors import DatasetError
from formal_sae.interventions.predictability import Predictability, effect_predictability
from formal_sae.saes import build_training_sae
from formal_sae.saes.causal_metrics import (
    HeldOutPairs,
    InterpolationMetrics,
    held_out_pairs,
    interpolation_metrics,
)
from formal_sae.saes.training import SAETrainConfig

HOOK = "blocks.0.hook_resid_post"
LINEAR_HOOK = "ln_final.hook_normalized"  # only the unembedding after it
D = 32  # tiny preset's d_model


def random_sae(hook: str, seed: int = 0):
    return build_training_sae(SAETrainConfig(architecture="topk", k=4, expansion_factor=2, hook_name=hook, seed=seed), D)


@pytest.fixture(scope="module")
def pairs(model, ds):
    return held_out_pairs(model, ds, n_pairs=40, max_sentences=20, seed=0)


# ---------------------------------------------------------------------------- pairs
def test_pairs_are_distinct_tokens_of_one_sentence_and_seeded(model, ds, pairs):
    prompt = formal_sae.dataset_metadata(ds).prompt_length
    lengths = ds["test"]["length"]
    assert len(pairs) == 40 and pairs.n_sentences == 20
    for r, i, j in zip(pairs.rows, pairs.first, pairs.second, strict=True):
        assert i != j
        assert prompt <= i < prompt + lengths[r] and prompt <= j < prompt + lengths[r]  # no prompt, no <eos>
    assert len(set(zip(pairs.rows, pairs.first, strict=True))) == 40  # each token is an i at most once
    assert held_out_pairs(model, ds, n_pairs=40, max_sentences=20, seed=0) == pairs
    assert held_out_pairs(model, ds, n_pairs=40, max_sentences=20, seed=1) != pairs
    every = held_out_pairs(model, ds, n_pairs=10**6, max_sentences=20, seed=0)  # capped at the tokens there are
    assert len(every) == sum(lengths[r] for r in set(every.rows))


def test_both_saes_are_measured_on_the_same_pairs_and_others_are_refused(model, ds, pairs):
    a = interpolation_metrics(model, random_sae(HOOK, 0), ds, pairs)
    b = interpolation_metrics(model, random_sae(HOOK, 1), ds, pairs)
    assert a.n_pairs == b.n_pairs == len(pairs) and a.causal_loss != b.causal_loss
    assert held_out_pairs(model, ds, n_pairs=40, max_sentences=20, seed=0) == pairs  # no SAE in the draw
    other = formal_sae.build_dataset("expr", n_train=30, n_validation=30, n_test=30, seed=1)
    with pytest.raises(DatasetError, match="another dataset"):
        interpolation_metrics(model, random_sae(HOOK), other, pairs)


# ---------------------------------------------------------------------------- interpolation
def output_at(model, sae, hook, tokens, i, lat):
    """Logits at token i when only token i's activation at ``hook`` is the decoded ``lat`` (a plain hook)."""

    def edit(act, hook):
        act = act.clone()
        act[0, i] = sae.decode(lat)
        return act

    return model.run_with_hooks(tokens, fwd_hooks=[(hook, edit)])[0, i].double()


def direct(model, sae, ds, pairs, steps, hook):
    """Per pair, one sentence alone (un-padded), editing token i only: (causal loss mse, causal
    loss kl, linearity error), each the mean over steps."""

    def centred(v):
        return v - v.mean()

    rows = []
    for r, i, j in zip(pairs.rows, pairs.first, pairs.second, strict=True):
        tokens = torch.tensor([ds["test"][r]["input_ids"]])
        with torch.no_grad():
            clean, cache = model.run_with_cache(tokens, names_filter=hook)
            li, lj = sae.encode(cache[hook][0, i]), sae.encode(cache[hook][0, j])
            g0, g1 = output_at(model, sae, hook, tokens, i, li), output_at(model, sae, hook, tokens, i, lj)
            mse, kl, lin = [], [], []
            for s in steps:
                out = output_at(model, sae, hook, tokens, i, li + s * (lj - li))
                target = (1 - s) * clean[0, i].double() + s * clean[0, j].double()
                mse.append(((out - target) ** 2).mean())
                pt, lo = target.softmax(-1), out.log_softmax(-1)
                kl.append((pt * (pt.log() - lo)).sum())
                lin.append((centred(out) - centred((1 - s) * g0 + s * g1)).norm() / (centred(g0) - centred(g1)).norm())
            rows.append([float(torch.stack(v).mean()) for v in (mse, kl, lin)])
    return np.array(rows)


@pytest.mark.parametrize("hook", [HOOK, "blocks.0.hook_mlp_out"])  # resumed from block 1 / a replacing hook
def test_causal_loss_and_linearity_equal_a_direct_per_pair_computation(model, ds, pairs, hook):
    sae = random_sae(hook)
    with torch.no_grad():
        sae.W_dec.mul_(4)  # outputs that move well above float32 round-off, so the ratios compare tightly
    steps = (0.3, 0.5)
    want = direct(model, sae, ds, pairs, steps, hook)
    # every pair kept (this barely trained model moves little): the formula is checked, not the threshold
    mse = interpolation_metrics(model, sae, ds, pairs, steps=steps, batch_size=16, min_endpoint_distance=0)
    kl = interpolation_metrics(model, sae, ds, pairs, steps=steps, distance="kl")
    np.testing.assert_allclose(mse.pair_causal_loss, want[:, 0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(kl.pair_causal_loss, want[:, 1], rtol=1e-3, atol=1e-6)
    # compared as numerators ||g(l_s) - line|| (ratio x endpoint distance): batching moves them by float32 round-off
    gap = np.array(mse.pair_endpoint_distance)
    np.testing.assert_allclose(np.array(mse.pair_linearity_error) * gap, want[:, 2] * gap, rtol=1e-3, atol=1e-6)
    assert mse.causal_loss == pytest.approx(want[:, 0].mean(), rel=1e-4) and mse.n_dropped == 0
    assert mse.linearity_error == pytest.approx(want[:, 2].mean(), rel=1e-3)


def test_linearity_error_is_zero_where_g_is_affine_and_positive_where_not(model, ds, pairs):
    affine = interpolation_metrics(model, random_sae(LINEAR_HOOK), ds, pairs, min_endpoint_distance=0)
    curved = interpolation_metrics(model, random_sae(HOOK), ds, pairs, min_endpoint_distance=0)
    assert affine.linearity_error < 1e-5 and max(affine.pair_linearity_error) < 1e-4  # float32 round-off
    assert curved.linearity_error > 1e-3  # 4.8e-3 on this barely trained model


def test_a_decoder_that_does_nothing_is_not_scored_linear(model, ds, pairs, identity_sae):
    sae = identity_sae(D, HOOK)  # not a TopK training SAE: it would divide by the zero decoder norms
    with torch.no_grad():
        sae.W_dec.zero_()  # g(l) is the same for every l
    m = interpolation_metrics(model, sae, ds, pairs)
    assert m.linearity_error is None and m.n_dropped == len(pairs)
    assert all(v is None for v in m.pair_linearity_error) and m.causal_loss > 0


# ---------------------------------------------------------------------------- predictability
@pytest.fixture(scope="module")
def readout(model):
    """The model with a rank-1 unembedding W_U = u w^T: the next token depends on u . x only, x at
    ``ln_final.hook_normalized``; and an SAE there whose latent 0 is u . x + 10 (always on) and
    decodes along u (so clamping it to v sets u . x' = v - 10 at every token), latent 1 has a zero
    decoder, latent 2 is never active."""
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(D, generator=gen)
    u = u / u.norm()
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.unembed.W_U.copy_(u[:, None] * 1.5 * torch.randn(m.cfg.d_vocab, generator=gen)[None, :])
    cfg = StandardSAEConfig(d_in=D, d_sae=3, apply_b_dec_to_input=False, metadata=SAEMetadata(hook_name=LINEAR_HOOK))
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.stack([u, torch.randn(D, generator=gen), torch.zeros(D)], dim=1))
        sae.b_enc.copy_(torch.tensor([10.0, 10.0, -1.0]))
        sae.W_dec.zero_()
        sae.W_dec[0] = u
        sae.b_dec.zero_()
    return m, sae


def test_effect_predictability_is_near_one_where_clamps_reproduce_the_natural_bins(readout, ds):
    m, sae = readout
    got = effect_predictability(m, sae, ds, {"u": 0, "nothing": 1, "dead": 2, "u again": 0}, n_bins=10, max_sentences=30)
    u = got["u"]  # not exactly 1: the mean of softmax over a bin is not the softmax at its mean (0.98 measured)
    assert u.r2 > 0.95 and u.slope == pytest.approx(1.0, abs=0.1) and u.reason is None
    assert len(u.bin_values) == 10 and sorted(u.bin_values) == u.bin_values and sum(u.bin_counts) == u.n_tokens
    assert u.active_fraction == 1.0 and u.rms_observed > 1e-3
    nothing = got["nothing"]  # its bins predict shifts (it reads a direction), its clamp moves nothing
    assert nothing.r2 is None and "does not move" in nothing.reason and nothing.rms_predicted > 1e-3
    assert got["dead"].r2 is None and "never active" in got["dead"].reason
    assert got["u again"].feature == "u again" and got["u again"].to_dict() == {**u.to_dict(), "feature": "u again"}


def test_an_effect_against_the_natural_data_scores_below_zero(readout, ds):
    m, sae = readout
    sae = copy.deepcopy(sae)
    with torch.no_grad():
        sae.W_dec[0] = -sae.W_dec[0]  # clamping latent 0 higher now moves u . x down: the opposite of its bins
    got = effect_predictability(m, sae, ds, {"u": 0}, max_sentences=30)["u"]
    assert got.rms_observed > 1e-3 and got.r2 <= 0 and got.slope < 0


def _made(predicted, observed, r2=0.5) -> Predictability:
    """A Predictability with given shifts (one bin per row); only r2's being None matters here."""
    return Predictability("f", 0, r2, None, None, ["a", "b"], [], [], predicted, observed)


def test_predictability_summary_is_the_median_correlation_by_hand():
    same = _made([[1.0, -1.0], [2.0, 0.0]], [[2.0, -2.0], [4.0, 0.0]])  # observed = 2 x predicted: r = 1
    flipped = _made([[1.0, -1.0], [2.0, 0.0]], [[-1.0, 1.0], [-2.0, 0.0]])  # r = -1
    # predicted (1, 0, 0, 1), observed (1, 1, 0, 0): means 1/2, covariance 0 -> r = 0
    orthogonal = _made([[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]])
    assert formal_sae.predictability_summary([same]) == pytest.approx(1.0)
    assert formal_sae.predictability_summary([same, flipped, orthogonal]) == pytest.approx(0.0)
    assert formal_sae.predictability_summary([same, flipped]) == pytest.approx(0.0)  # median of 1 and -1
    # left out: an undefined R² (the clamp moved nothing) and a constant side (no correlation)
    undefined = _made([[1.0, -1.0]], [[-1.0, 1.0]], r2=None)
    constant = _made([[1.0, 1.0], [1.0, 1.0]], [[1.0, 2.0], [3.0, 4.0]])
    assert formal_sae.predictability_summary([same, undefined, constant]) == pytest.approx(1.0)
    assert formal_sae.predictability_summary([undefined, constant]) is None
    assert formal_sae.predictability_summary([]) is None


# ---------------------------------------------------------------------------- JSON
def test_results_round_trip_through_json(model, ds, pairs, readout, identity_sae):
    sae = identity_sae(D, HOOK)
    with torch.no_grad():
        sae.W_dec.zero_()
    m = interpolation_metrics(model, sae, ds, pairs)  # None values where pairs were dropped
    p = effect_predictability(*readout, ds, {"u": 0, "dead": 2}, max_sentences=5)
    for obj in (pairs, m, *p.values()):
        back = type(obj).from_dict(json.loads(json.dumps(obj.to_dict(), allow_nan=False)))
        assert back == obj
    assert isinstance(m, InterpolationMetrics) and isinstance(pairs, HeldOutPairs)
    assert all(isinstance(v, Predictability) for v in p.values())

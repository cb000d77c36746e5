"""Claim C3's measurements (formal_sae.interventions.feature_effects), each checked against a case
whose answer is known or against a slow re-implementation: one plain hook per sentence, no SAE
spliced in, class distributions averaged by hand."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from scipy.stats import rankdata

import formal_sae
from formal_sae import FormalSAEError
from formal_sae.interventions import (
    FeatureInterventions,
    NullDistribution,
    feature_interventions,
    matched_null_groups,
    token_classes,
)

HOOK = "blocks.0.hook_resid_post"
N_SENT = 12  # test sentences used
N_NULL = 3


@pytest.fixture(scope="module")
def sae(model):
    """A random 64-latent SAE on the tiny model's residual stream."""
    d = model.cfg.d_model
    cfg = StandardSAEConfig(d_in=d, d_sae=2 * d, apply_b_dec_to_input=False, metadata=SAEMetadata(hook_name=HOOK))
    out = StandardSAE(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out.W_enc.copy_(torch.randn(d, 2 * d, generator=gen) / d**0.5)
        out.W_dec.copy_(torch.randn(2 * d, d, generator=gen) / d**0.5)
        out.b_enc.zero_()  # about half the latents fire at each token
        out.b_dec.zero_()
    return out


@pytest.fixture(scope="module")
def classes(ds, model):
    return token_classes(formal_sae.grammar_of(formal_sae.dataset_metadata(ds)), model.tokenizer)[1]


def run(model, sae, ds, feature="pending", latents=(3,), **kw) -> FeatureInterventions:
    kw = {"n_null": N_NULL, "max_sentences": N_SENT, "batch_size": 5, "max_rows": 7, **kw}  # several batches and chunks
    return feature_interventions(model, sae, ds, feature, list(latents), **kw)


# ----------------------------------------------------------------------------- an independent re-implementation
def sentences(ds, model, feature: str):
    """Per test sentence: tokens, and source / target masks from the pending count's terciles."""
    prompt = formal_sae.dataset_metadata(ds).prompt_length
    rows = [
        (torch.tensor([ids]), np.array(vals), prompt, prompt + n)
        for ids, vals, n in zip(ds["test"]["input_ids"][:N_SENT], ds["test"][feature][:N_SENT], ds["test"]["length"][:N_SENT])
    ]
    pooled = np.concatenate([v[a:b] for _, v, a, b in rows])
    lo, hi = np.quantile(pooled, [1 / 3, 2 / 3])
    out = []
    for tokens, v, a, b in rows:
        inside = (np.arange(len(v)) >= a) & (np.arange(len(v)) < b)
        out.append((tokens, torch.from_numpy(inside & (v <= lo)), torch.from_numpy(inside & (v > hi))))
    return out, sorted({int(x) for x in pooled[pooled <= lo]}), sorted({int(x) for x in pooled[pooled > hi]})


@torch.no_grad()
def by_hand(model, sae, ds, classes, latents, values, where, direction=None):
    """Mean class distributions at source and target tokens with ``latents`` set to ``values`` at the
    ``where`` tokens (or ``direction`` projected out there), and the mean per-token class TV at
    target tokens; one sentence at a time, one plain hook."""
    rows, _, _ = sentences(ds, model, "pending")
    src_sum, tgt_sum, token_tv, n_src, n_tgt = 0, 0, 0.0, 0, 0
    for tokens, src, tgt in rows:
        mask = {"source": src, "target": tgt, None: torch.zeros_like(src)}[where][:, None]

        def edit(x, hook, mask=mask):
            if direction is not None:
                u = direction / direction.norm()
                return torch.where(mask, x - (x @ u)[..., None] * u, x)
            lat = x @ sae.W_enc + sae.b_enc
            lat = torch.relu(lat)
            new = lat.clone()
            new[..., latents] = torch.where(mask, torch.as_tensor(values, dtype=x.dtype), lat[..., latents])
            return x + (new - lat) @ sae.W_dec  # decode(new) + x - decode(lat), the decoder being linear

        clean = model(tokens).softmax(-1)[0] @ classes
        new = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, edit)]).softmax(-1)[0] @ classes
        src_sum = src_sum + new[src].sum(0)
        tgt_sum = tgt_sum + new[tgt].sum(0)
        token_tv += float(0.5 * (new - clean)[tgt].abs().sum())
        n_src, n_tgt = n_src + int(src.sum()), n_tgt + int(tgt.sum())
    return (src_sum / n_src).numpy(), (tgt_sum / n_tgt).numpy(), token_tv / n_tgt


def tv(p, q) -> float:
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())


def closure(clean, new, reference) -> float:
    return (tv(clean, reference) - tv(new, reference)) / tv(clean, reference)


@torch.no_grad()
def mean_at_target(model, sae, ds, latents) -> torch.Tensor:
    rows, _, _ = sentences(ds, model, "pending")
    acts = [torch.relu(model.run_with_cache(t, names_filter=HOOK)[1][HOOK][0] @ sae.W_enc + sae.b_enc)[tgt] for t, _, tgt in rows]
    return torch.cat(acts)[:, latents].mean(0)


@pytest.fixture(scope="module")
def direction(model, ds):
    """A probe direction for 'pending is high': the difference of the class means of the activations."""
    rows, _, _ = sentences(ds, model, "pending")
    with torch.no_grad():
        acts = [(model.run_with_cache(t, names_filter=HOOK)[1][HOOK][0], s, g) for t, s, g in rows]
    high = torch.cat([x[g] for x, _, g in acts]).mean(0)
    low = torch.cat([x[s] for x, s, _ in acts]).mean(0)
    return high - low


@pytest.fixture(scope="module")
def result(model, sae, ds, direction):
    return run(model, sae, ds, latents=(3, 17), probe_direction=direction)


# ----------------------------------------------------------------------------- against the re-implementation
def test_measures_match_a_sentence_by_sentence_reimplementation(result, model, sae, ds, classes, direction):
    _, src_values, tgt_values = sentences(ds, model, "pending")
    assert (result.source_values, result.target_values) == (src_values, tgt_values)
    src0, tgt0, _ = by_hand(model, sae, ds, classes, [3], 0.0, None)  # no edit: the clean model
    np.testing.assert_allclose(result.source_distribution, src0, atol=1e-5)
    np.testing.assert_allclose(result.target_distribution, tgt0, atol=1e-5)
    values = mean_at_target(model, sae, ds, [3, 17])
    np.testing.assert_allclose(result.clamp_values, values.numpy(), atol=1e-5)

    clamped, _, _ = by_hand(model, sae, ds, classes, [3, 17], values, "source")
    assert result.clamp.gap_closure == pytest.approx(closure(src0, clamped, tgt0), abs=1e-4)
    assert result.clamp.tv_before == pytest.approx(tv(src0, tgt0), abs=1e-5)
    assert result.clamp.tv_after == pytest.approx(tv(clamped, tgt0), abs=1e-5)
    assert result.clamp.n_tokens == sum(int(s.sum()) for _, s, _ in sentences(ds, model, "pending")[0])

    _, ablated, token_tv = by_hand(model, sae, ds, classes, [3, 17], 0.0, "target")
    assert result.group_ablation.effect == pytest.approx(tv(tgt0, ablated), abs=1e-5)
    assert result.group_ablation.mean_token_tv == pytest.approx(token_tv, abs=1e-5)
    assert result.group_ablation.reverse.gap_closure == pytest.approx(closure(tgt0, ablated, src0), abs=1e-4)

    _, projected, token_tv = by_hand(model, sae, ds, classes, [], 0.0, "target", direction=direction)
    assert result.probe_control.effect == pytest.approx(tv(tgt0, projected), abs=1e-5) and result.probe_control.effect > 1e-3
    assert result.probe_control.mean_token_tv == pytest.approx(token_tv, abs=1e-5)

    # The first null group, the same two ways.
    group = result.null_groups[0]
    clamped, _, _ = by_hand(model, sae, ds, classes, group, mean_at_target(model, sae, ds, group), "source")
    assert result.null_clamp.values[0] == pytest.approx(closure(src0, clamped, tgt0), abs=1e-4)
    _, ablated, _ = by_hand(model, sae, ds, classes, group, 0.0, "target")
    assert result.null_ablation.values[0] == pytest.approx(tv(tgt0, ablated), abs=1e-5)


def test_clamping_the_best_latent_alone_and_ablating_the_group(result, model, sae, ds, classes):
    out = run(model, sae, ds, latents=(3, 17), clamp_latents=[3])
    assert out.clamp_latents == [3] and out.null_groups == result.null_groups  # the same matched groups
    assert out.group_ablation == result.group_ablation and out.null_ablation == result.null_ablation
    src0, tgt0 = np.array(out.source_distribution), np.array(out.target_distribution)
    clamped, _, _ = by_hand(model, sae, ds, classes, [3], mean_at_target(model, sae, ds, [3]), "source")
    assert out.clamp.gap_closure == pytest.approx(closure(src0, clamped, tgt0), abs=1e-4)
    partner = out.null_groups[1][0]  # the partner of latent 3 in the second null group
    clamped, _, _ = by_hand(model, sae, ds, classes, [partner], mean_at_target(model, sae, ds, [partner]), "source")
    assert out.null_clamp.values[1] == pytest.approx(closure(src0, clamped, tgt0), abs=1e-4)


def test_describe_names_the_classes_that_moved_most(result):
    c = result.clamp
    moves = np.abs(np.array(c.intervened) - np.array(c.clean))
    k = int(moves.argmax())
    text = c.describe()
    assert text.startswith(f"P({c.classes[k]}) {c.clean[k]:.2f} -> {c.intervened[k]:.2f} (target {c.reference[k]:.2f}); P(")
    assert "(source " in result.group_ablation.reverse.describe(top=1)


# ----------------------------------------------------------------------------- known answers
def test_no_effect_from_a_latent_with_a_zero_decoder_or_a_dead_latent(model, sae, ds):
    silent = copy.deepcopy(sae)
    with torch.no_grad():
        silent.W_dec[3] = 0  # fires, but its edits decode to nothing
        silent.b_enc[5] = -1e4  # never fires: clamping it to its mean (0) and ablating it are identities
    for j in (3, 5):
        out = run(model, silent, ds, latents=[j])
        assert out.clamp.tv_before > 1e-3  # there is a gap to close
        assert out.clamp.gap_closure == pytest.approx(0, abs=1e-4) and out.group_ablation.effect == pytest.approx(0, abs=1e-6)
        assert out.group_ablation.mean_token_tv == pytest.approx(0, abs=1e-6)
    assert run(model, silent, ds, latents=[5]).clamp_values == [0.0]


@pytest.fixture(scope="module")
def token_only_model(model):
    """The tiny model with attention and positions switched off, and the ternary operators sharing
    one embedding: its activation at the hook is a function of the token alone, the same at every
    ternary operator, and its prediction there depends on that activation alone."""
    out = copy.deepcopy(model)
    tern = out.tokenizer.convert_tokens_to_ids(["tern0", "tern1", "tern2"])
    with torch.no_grad():
        out.blocks[0].attn.W_O.zero_()
        out.pos_embed.W_pos.zero_()
        out.embed.W_E[tern] = out.embed.W_E[tern[0]].clone()
    return out


def test_gap_closure_is_one_when_the_clamp_reproduces_the_target(token_only_model, identity_sae, ds):
    """An exact identity SAE ([I, -I] encoder) plus as many inert latents: clamping every coding latent
    to its target mean puts the ternary operators' activation at every source token."""
    d = token_only_model.cfg.d_model
    sae = identity_sae(d, HOOK)
    wide = StandardSAE(StandardSAEConfig(d_in=d, d_sae=4 * d, apply_b_dec_to_input=False, metadata=SAEMetadata(hook_name=HOOK)))
    with torch.no_grad():
        wide.W_enc.copy_(torch.cat([sae.W_enc, torch.randn(d, 2 * d, generator=torch.Generator().manual_seed(0))], dim=1))
        wide.W_dec.copy_(torch.cat([sae.W_dec, torch.zeros_like(sae.W_dec)]))  # the inert latents decode to nothing
        wide.b_enc.copy_(torch.cat([torch.zeros(2 * d), torch.full((2 * d,), 10.0)]))  # and always fire: a live null
        wide.b_dec.zero_()
    out = run(token_only_model, wide, ds, feature="arity=3", latents=range(2 * d))
    assert (out.source_values, out.target_values) == ([0], [1])
    assert out.clamp.tv_before > 1e-2
    assert out.clamp.gap_closure == pytest.approx(1.0, abs=1e-4) and out.clamp.tv_after == pytest.approx(0, abs=1e-5)
    np.testing.assert_allclose(out.clamp.intervened, out.target_distribution, atol=1e-5)
    assert out.null_clamp.values == pytest.approx([0.0] * N_NULL, abs=1e-5)  # the inert copies are the matched null


def test_zero_probe_direction_changes_nothing(model, sae, ds):
    out = run(model, sae, ds, probe_direction=torch.zeros(model.cfg.d_model))
    assert out.probe_control.effect == pytest.approx(0, abs=1e-6) and out.probe_control.mean_token_tv == pytest.approx(
        0, abs=1e-6
    )
    assert out.probe_control.reverse.gap_closure == pytest.approx(0, abs=1e-5)
    assert run(model, sae, ds).probe_control is None


# ----------------------------------------------------------------------------- the matched null
def test_matched_null_groups_are_disjoint_live_and_close_in_firing_rate():
    rng = np.random.default_rng(1)
    rate = rng.uniform(0, 0.5, 200)
    rate[:20] = 0  # dead
    norm = np.ones(200)  # unit decoders: only the firing rate orders candidates
    real = [30, 77, 150]
    groups = matched_null_groups(rate, norm, real, n_null=20, seed=0)
    assert len(groups) == 20 and groups == matched_null_groups(rate, norm, real, n_null=20, seed=0)
    assert groups != matched_null_groups(rate, norm, real, n_null=20, seed=1)
    live = np.flatnonzero(rate > 0)
    rank = dict(zip(live.tolist(), rankdata(rate[live]) / len(live)))
    for group in groups:
        assert len(set(group)) == len(real) and not set(group) & set(real) and all(rate[j] > 0 for j in group)
        for j, partner in zip(real, group):
            assert abs(rank[partner] - rank[j]) <= (20 + len(real)) / len(live)  # among its 20 nearest by rank
    assert len({g[0] for g in groups}) > 10  # and not the same partner every time


def test_decoder_norm_counts_in_the_match():
    rate = np.full(100, 0.1)  # equal firing rates: only the decoder norm orders candidates
    norm = np.linspace(0.1, 10, 100)
    for group in matched_null_groups(rate, norm, [50], n_null=10, seed=0):
        assert abs(group[0] - 50) <= 6  # ranks 1 apart per index; 10 nearest are within 5 or 6


def test_matched_null_of_a_run(result, model, sae, ds):
    assert len(result.null_groups) == N_NULL
    for group in result.null_groups:
        assert len(group) == 2 and not set(group) & {3, 17}
    for null in (result.null_clamp, result.null_ablation):
        assert len(null.values) == N_NULL and null.contains(float(np.median(null.values)))
        assert null.mean == pytest.approx(np.mean(null.values))


def test_null_interval():
    null = NullDistribution.of(np.arange(101.0))
    assert null.interval_95 == pytest.approx((2.5, 97.5)) and null.mean == 50 and null.contains(50) and not null.contains(99)
    assert NullDistribution.of([0.3, float("nan"), 0.1]).interval_95 == pytest.approx((0.105, 0.295))


# ----------------------------------------------------------------------------- features, records, errors
def test_binary_and_categorical_features(model, sae, ds):
    arity = [a for row, n in zip(ds["test"]["arity"][:N_SENT], ds["test"]["length"][:N_SENT]) for a in row[1 : 1 + n]]
    out = run(model, sae, ds, feature="is_operator")
    assert (out.source_values, out.target_values) == ([0], [1])
    assert (out.clamp.n_tokens, out.group_ablation.reverse.n_tokens) == (arity.count(0), len(arity) - arity.count(0))
    digits = run(model, sae, ds, feature="preterminal=Digit")  # a category, by name
    assert (digits.clamp.n_tokens, digits.group_ablation.reverse.n_tokens) == (len(arity) - arity.count(0), arity.count(0))


def test_round_trip(result):
    data = json.loads(json.dumps(result.to_dict()))
    back = FeatureInterventions.from_dict(data)
    assert back == result
    assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps(result.to_dict(), sort_keys=True)


def test_errors(model, sae, ds):
    with pytest.raises(FormalSAEError, match="unknown feature 'nope'"):
        run(model, sae, ds, feature="nope")
    with pytest.raises(FormalSAEError, match="is categorical: name one category"):
        run(model, sae, ds, feature="preterminal")
    with pytest.raises(FormalSAEError, match=r"indices in 0\.\.63"):
        run(model, sae, ds, latents=[sae.cfg.d_sae])
    with pytest.raises(FormalSAEError, match=r"clamp_latents must be some of the latents \[3\]"):
        run(model, sae, ds, latents=[3], clamp_latents=[4])
    with pytest.raises(FormalSAEError, match="probe direction has 3 entries"):
        run(model, sae, ds, probe_direction=torch.ones(3))
    foreign = copy.deepcopy(sae)
    foreign.cfg.metadata.model_fingerprint = "0" * 64  # trained on another model
    with pytest.raises(FormalSAEError, match="pass allow_other_model=True"):
        run(model, foreign, ds)
    assert run(model, foreign, ds, allow_other_model=True).latents == [3]

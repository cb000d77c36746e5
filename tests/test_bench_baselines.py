"""The benchmark's baselines (`formal_sae.bench.baselines`): exact bases, the probe ceiling and the
untrained floor, each a stock SAELens SAE that the package scores and refuses like a trained one."""

import copy

import numpy as np
import pytest
import sae_lens
import torch

import formal_sae
from formal_sae.activations import DEFAULT_HOOK, collect_activations
from formal_sae.analysis.aligned import collect_aligned
from formal_sae.bench.baselines import (
    BASELINES,
    activations_for,
    pca_sae,
    probe_sae,
    residual_basis_sae,
    untrained_sae,
)
from formal_sae.grammars import IGNORE_VALUE
from formal_sae.saes.evaluation import check_sae_model
from formal_sae.saes.storage import to_inference

RIDGE = 1e-3


@pytest.fixture(scope="module")
def acts(model, ds):
    return activations_for(model, ds, DEFAULT_HOOK, 5000)


@pytest.fixture(scope="module")
def baselines(model, ds, acts):
    """One of each baseline, by name."""
    return {
        "residual_basis": residual_basis_sae(model, DEFAULT_HOOK, acts),
        "pca": pca_sae(model, DEFAULT_HOOK, acts),
        "probe": probe_sae(model, ds, DEFAULT_HOOK, ridge=RIDGE),
        "untrained": untrained_sae(model, formal_sae.SAETrainConfig(architecture="topk", k=4, expansion_factor=2)),
    }


@pytest.fixture(scope="module")
def test_acts(model, ds):
    return collect_activations(model, ds["test"], DEFAULT_HOOK, 10_000)


def test_every_baseline_is_named_and_built(baselines):
    assert set(BASELINES) == set(baselines)
    for name in ("residual_basis", "pca", "probe"):
        assert type(baselines[name]) is sae_lens.StandardSAE, name
        assert baselines[name].cfg.architecture() == "standard"


def test_activations_are_the_train_split_sentence_tokens(model, ds, acts):
    d_in = model.cfg.d_model
    expected = collect_activations(model, ds["train"], DEFAULT_HOOK, 5000)
    assert acts.shape[1] == d_in and torch.equal(acts, expected)


@pytest.mark.parametrize("name", ["residual_basis", "pca"])
def test_bases_reconstruct_exactly(model, ds, baselines, test_acts, name):
    sae = baselines[name]
    assert sae.cfg.d_sae == 2 * sae.cfg.d_in
    with torch.no_grad():
        recon = sae.decode(sae.encode(test_acts))
    assert float((recon - test_acts).abs().max()) < 1e-4 * max(1.0, float(test_acts.abs().max()))
    metrics = formal_sae.evaluate_sae(model, sae, ds, validity=False)
    assert metrics.explained_variance == pytest.approx(1.0, abs=1e-5)


def test_pca_directions_are_orthonormal_principal_components(baselines, acts):
    sae = baselines["pca"]
    d = sae.cfg.d_in
    rows = sae.W_dec.detach().double()
    assert torch.equal(rows[d:], -rows[:d])  # +- pairs
    assert torch.allclose(rows[:d] @ rows[:d].T, torch.eye(d, dtype=torch.float64), atol=1e-5)
    x = acts.numpy().astype(np.float64)
    _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    assert abs(float(rows[0].numpy() @ vt[0])) == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(sae.W_enc.detach().double()[:, :d], rows[:d].T)


def test_probe_latent_is_the_ridge_prediction(model, ds, baselines):
    sae = baselines["probe"]
    names = sae.cfg.metadata.probe_targets
    j, n = names.index("depth"), len(names)
    assert sae.cfg.d_sae == 2 * n
    # direct ridge regression with an intercept on standardised train activations (numpy, float64)
    train = collect_aligned(model, sae, ds["train"])
    x, y = train.acts.numpy().astype(np.float64), train.features["depth"].astype(np.float64)
    keep = y != IGNORE_VALUE
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    xs, ys = (x[keep] - mean) / std, y[keep]
    xc = xs - xs.mean(axis=0)
    w = np.linalg.solve(xc.T @ xc / len(xc) + RIDGE * np.eye(x.shape[1]), xc.T @ (ys - ys.mean()) / len(xc))
    b = ys.mean() - xs.mean(axis=0) @ w
    floor = (((x - mean) / std) @ w + b).min()
    # on held-out tokens the pair is the prediction, shifted by its train minimum
    test = collect_aligned(model, sae, ds["test"])
    pred = ((test.acts.numpy().astype(np.float64) - mean) / std) @ w + b
    latent, below = test.latent(j), test.latent(n + j)
    assert np.allclose(latent - below, pred - floor, atol=1e-3 * max(1.0, float(np.abs(pred).max())))
    y_test = test.features["depth"].astype(np.float64)
    probe_r = np.corrcoef(pred, y_test)[0, 1]
    assert np.corrcoef(latent, y_test)[0, 1] == pytest.approx(probe_r, abs=1e-3)
    # on the tokens it was fitted on, the latent is the prediction: it never goes below 0 (up to rounding)
    assert np.allclose(train.latent(j), ((x - mean) / std) @ w + b - floor, atol=1e-3)
    assert train.latent(n + j).max() < 1e-4


def test_probe_decoder_is_the_least_squares_fit(model, ds, baselines):
    sae = baselines["probe"]
    n = sae.cfg.d_sae // 2
    train = collect_aligned(model, sae, ds["train"])
    z = np.concatenate([train.latent(k)[:, None] for k in range(n)], axis=1).astype(np.float64)
    x = train.acts.numpy().astype(np.float64)
    design = np.concatenate([z, np.ones((len(z), 1))], axis=1)
    # rcond: targets that are complements (is_operator, preterminal=Digit) give latents equal up to
    # float32 rounding, which an exact fit would use as directions
    solution = np.linalg.lstsq(design, x, rcond=1e-6)[0]
    best = ((design @ solution - x) ** 2).sum()
    with torch.no_grad():
        recon = sae.decode(sae.encode(train.acts)).double().numpy()
    assert ((recon - x) ** 2).sum() == pytest.approx(best, rel=1e-3)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_saves_and_reloads_with_plain_saelens(baselines, test_acts, tmp_path, name):
    sae = baselines[name]
    sae.save_model(str(tmp_path))
    loaded = sae_lens.SAE.load_from_disk(str(tmp_path))
    assert type(loaded) is type(sae)
    assert loaded.cfg.metadata == sae.cfg.metadata
    with torch.no_grad():
        assert torch.equal(loaded.encode(test_acts), sae.encode(test_acts))
        assert torch.equal(loaded.decode(loaded.encode(test_acts)), sae.decode(sae.encode(test_acts)))


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_is_analysed_on_its_model_only(model, ds, baselines, name):
    sae = baselines[name]
    assert sae.cfg.metadata.model_fingerprint == formal_sae.model_fingerprint(model)
    report = formal_sae.analyze(model, sae, ds, max_sentences=30)
    assert "depth" in report.targets
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.W_U.add_(1.0)
    with pytest.raises(formal_sae.SAEError, match="trained on model"):
        check_sae_model(other, sae)


def test_untrained_has_a_trained_saes_metadata_and_follows_the_seed(model, ds, baselines):
    config = formal_sae.SAETrainConfig(architecture="topk", k=4, expansion_factor=2)
    floor = baselines["untrained"]
    d_in = model.cfg.d_model
    assert floor.cfg.d_sae == 2 * d_in and floor.cfg.architecture() == "topk"
    # metadata as the package's own path from a training SAE to an inference one writes it
    expected = to_inference(formal_sae.build_training_sae(config, d_in, floor.cfg.metadata.model_name), model, ds, config, None)
    assert floor.cfg.metadata == expected.cfg.metadata
    rng = torch.get_rng_state()
    again = untrained_sae(model, config)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's generator is left alone
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), floor.state_dict().values(), strict=True))
    other = untrained_sae(model, formal_sae.SAETrainConfig(architecture="topk", k=4, expansion_factor=2, seed=1))
    assert not torch.equal(other.W_enc, floor.W_enc)

"""Analysis: metrics against independent computations, planted latents, targets, ``analyze``
end to end (report, figures, sparse storage), bad input and the ``analyze`` CLI command."""

from __future__ import annotations

import copy
import itertools
import json
import re

import datasets
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import formal_sae
import formal_sae.analysis.report as report_module
from formal_sae import DatasetError, FeatureSpec, FormalSAEError, SAEError, TrainConfig
from formal_sae.analysis import AlignedLatents, collect_aligned, feature_expression, targets_of
from formal_sae.analysis.metrics import (
    THRESHOLD_FRACTIONS,
    absorption_gap,
    auroc,
    detector_scores,
    mcc,
    mmcs,
    pearson,
    probe_directions,
    spearman,
    threshold_f1,
)
from formal_sae.analysis.report import score_latents
from formal_sae.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FEATURE_KEYS = {"best_latent", "pearson", "auroc", "f1", "n_latents_abs_rho_ge_0.9"}


# ----------------------------------------------------------------------------- independent references
def corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two vectors by numpy.corrcoef (NaN when one is constant)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def pair_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + P(tie) / 2, over every (positive, negative) pair."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def prf(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall and F1 by counting, each 0 when undefined."""
    tp = sum(1 for p, t in zip(pred, truth, strict=True) if p and t)
    fp = sum(1 for p, t in zip(pred, truth, strict=True) if p and not t)
    fn = sum(1 for p, t in zip(pred, truth, strict=True) if t and not p)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def assert_nan_equal(actual: float, expected: float, tol: float = 1e-9) -> None:
    if np.isnan(expected):
        assert np.isnan(actual)
    else:
        assert actual == pytest.approx(expected, abs=tol)


# ----------------------------------------------------------------------------- metric functions
def test_pearson_matches_corrcoef_per_column_and_is_nan_for_constant_columns():
    rng = np.random.default_rng(0)
    latents = np.column_stack([rng.random(25), np.full(25, 0.1), rng.integers(0, 3, 25), np.zeros(25)]).astype(np.float32)
    latents[:5, 0] = 0.0
    targets = np.column_stack([rng.integers(0, 2, 25), rng.integers(0, 5, 25), np.full(25, 2)])
    r = pearson(latents, targets)
    assert r.shape == (4, 3)
    for i, k in itertools.product(range(4), range(3)):
        assert_nan_equal(r[i, k], corr(latents[:, i], targets[:, k]))
    assert np.isnan(r[1]).all() and np.isnan(r[3]).all() and np.isnan(r[:, 2]).all()  # constant columns
    assert np.isfinite(r[[0, 2]][:, :2]).all()
    # constant but not exactly centred in floating point (mean of seven 0.1s is not 0.1)
    assert np.isnan(pearson(np.full((7, 1), 0.1), np.arange(7.0)[:, None])).all()
    assert np.isnan(pearson(np.arange(7.0)[:, None], np.full((7, 1), 0.1))).all()


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    latents = np.column_stack([rng.integers(0, 4, 30), rng.random(30), np.maximum(rng.normal(size=30), 0)])
    targets = np.column_stack([rng.integers(0, 6, 30), rng.integers(0, 2, 30)])
    rho = spearman(latents, targets)
    for i, k in itertools.product(range(3), range(2)):
        assert rho[i, k] == pytest.approx(spearmanr(latents[:, i], targets[:, k]).statistic, abs=1e-12)


def test_auroc_matches_pair_count_with_ties():
    rng = np.random.default_rng(2)
    latents = np.column_stack([rng.integers(0, 3, 40), rng.random(40), np.zeros(40)]).astype(np.float32)
    targets = np.column_stack([rng.integers(0, 2, 40), (latents[:, 1] > 0.5).astype(int)])
    a = auroc(latents, targets)
    for i, k in itertools.product(range(3), range(2)):
        assert a[i, k] == pytest.approx(pair_auroc(latents[:, i], targets[:, k]), abs=1e-12)
    assert a[1, 1] == pytest.approx(1.0)  # a perfect separator
    assert a[2, 0] == pytest.approx(0.5)  # a dead latent ties everything


def test_detector_scores_by_hand_including_undefined_cases():
    predictions = np.array(
        [[1, 0, 1], [1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0]],
        dtype=bool,
    )
    targets = np.array([[1, 0], [0, 0], [1, 0], [1, 0], [0, 0], [1, 0]])  # second target: no positives
    precision, recall, f1 = detector_scores(predictions, targets)
    # detector 0 vs target 0: TP 2 (rows 0, 3), FP 1 (row 1), FN 2 (rows 2, 5)
    assert precision[0, 0] == pytest.approx(2 / 3) and recall[0, 0] == pytest.approx(2 / 4)
    assert f1[0, 0] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    # detector 1 never fires: precision undefined -> 0, F1 -> 0
    assert precision[1, 0] == 0 and recall[1, 0] == 0 and f1[1, 0] == 0
    # target 1 has no positives: recall undefined -> 0; precision is 0 (all predictions false positives)
    assert (recall[:, 1] == 0).all() and (precision[:, 1] == 0).all() and (f1[:, 1] == 0).all()
    for d, k in itertools.product(range(3), range(2)):
        expected = prf(predictions[:, d], targets[:, k])
        assert (precision[d, k], recall[d, k], f1[d, k]) == pytest.approx(expected)


def test_threshold_f1_uses_fractions_of_each_latents_maximum():
    rng = np.random.default_rng(3)
    latents = np.maximum(rng.normal(size=(30, 3)), 0).astype(np.float32)
    latents[:, 2] = 0.0  # dead
    targets = (rng.random((30, 2)) < 0.4).astype(int)
    fractions = (0.0, 0.25, 0.5, 0.9)
    f1, thresholds = threshold_f1(latents, targets, fractions)
    assert f1.shape == (4, 3, 2) and thresholds.shape == (4, 3)
    for a, frac in enumerate(fractions):
        for i in range(3):
            t = frac * latents[:, i].max()
            assert thresholds[a, i] == pytest.approx(t)
            for k in range(2):
                assert f1[a, i, k] == pytest.approx(prf(latents[:, i] > t, targets[:, k])[2])
    assert (f1[:, 2] == 0).all()
    _, default_thr = threshold_f1(latents, targets)
    assert default_thr.shape == (len(THRESHOLD_FRACTIONS), 3)
    assert default_thr[:, 0] == pytest.approx([f * latents[:, 0].max() for f in THRESHOLD_FRACTIONS])


def test_probe_directions_recover_a_planted_direction():
    rng = np.random.default_rng(4)
    d = 16
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    y = rng.integers(0, 2, 600)
    depth = rng.integers(0, 5, 600)
    v = np.linalg.qr(np.column_stack([u, rng.normal(size=d)]))[0][:, 1]  # orthogonal to u
    acts = rng.normal(scale=0.3, size=(600, d)) + 2.0 * y[:, None] * u + 1.5 * depth[:, None] * v
    probes = probe_directions(acts, np.column_stack([y, depth]))
    assert probes.shape == (2, d)
    assert np.linalg.norm(probes, axis=1) == pytest.approx([1.0, 1.0])
    assert abs(probes[0] @ u) > 0.98 and abs(probes[1] @ v) > 0.98
    assert abs(probes[0] @ v) < 0.1
    # a constant target has no direction
    assert (probe_directions(acts, np.ones((600, 1)))[0] == 0).all()


def test_mmcs_and_mcc_on_hand_cases():
    rng = np.random.default_rng(5)
    perm = rng.permutation(4)
    decoder = np.eye(4) * np.array([1.0, -2.0, 0.5, 3.0])[:, None]  # scaled, sign-flipped basis rows
    directions = np.eye(4)[perm] * np.array([2.0, 1.0, -1.0, 0.3])[:, None]
    assert mmcs(decoder, directions) == pytest.approx(1.0)
    assert mcc(decoder, directions) == pytest.approx(1.0)
    extra = np.vstack([decoder, rng.normal(size=(3, 4))])  # more latents than directions
    assert mcc(extra, directions) == pytest.approx(1.0)

    # one good row, close to two directions: MMCS counts it twice, the one-to-one MCC once
    row0 = np.array([1.0, 0.5, 0.0])
    row1 = np.array([0.0, 0.2, 1.0])
    dirs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    cos = np.array([[1 / np.sqrt(1.25), 0.5 / np.sqrt(1.25)], [0.0, 0.2 / np.sqrt(1.04)]])  # [row, direction]
    expected_mmcs = (cos[0, 0] + cos[0, 1]) / 2
    expected_mcc = max((cos[a, 0] + cos[b, 1]) / 2 for a, b in itertools.permutations(range(2), 2))
    assert expected_mcc == pytest.approx((cos[0, 0] + cos[1, 1]) / 2)
    assert mmcs(np.vstack([row0, row1]), dirs) == pytest.approx(expected_mmcs)
    assert mcc(np.vstack([row0, row1]), dirs) == pytest.approx(expected_mcc)
    assert mcc(np.vstack([row0, row1]), dirs) < mmcs(np.vstack([row0, row1]), dirs)


def test_absorption_gap_by_hand():
    parent = np.array([1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)
    child = np.array([0, 0, 0, 0, 1, 1, 1, 0], dtype=bool)
    fires = np.array([1, 1, 1, 0, 0, 1, 1, 1], dtype=bool)
    gap, p_only, p_both = absorption_gap(fires, parent, child)
    assert p_only == pytest.approx(3 / 4)  # parent & not child: rows 0-3
    assert p_both == pytest.approx(1 / 2)  # parent & child: rows 4, 5
    assert gap == pytest.approx(3 / 4 - 1 / 2)
    gap, p_only, p_both = absorption_gap(fires, parent, np.zeros(8, dtype=bool))
    assert p_only == pytest.approx(4 / 6) and np.isnan(p_both) and np.isnan(gap)


# ----------------------------------------------------------------------------- planted latents
SPECS = {
    "pos": FeatureSpec("pos", "categorical", "part of speech", ("noun", "verb", "conj", "det")),
    "in_subject": FeatureSpec("in_subject", "binary", "inside the subject"),
    "depth": FeatureSpec("depth", "ordinal", "nesting depth"),
}


def make_aligned(dense: np.ndarray, features: dict[str, np.ndarray], d_in: int = 3) -> AlignedLatents:
    """An AlignedLatents holding ``dense`` ([n_tokens, d_sae]) sparsely, sorted by latent index."""
    n = len(dense)
    t, j = np.nonzero(dense)
    order = np.argsort(j, kind="stable")
    return AlignedLatents(
        features=features,
        specs=SPECS,
        acts=torch.zeros(n, d_in),
        token_ids=np.arange(n) % 5,
        rows=np.arange(n) // 4,
        positions=np.arange(n) % 4 + 1,
        d_sae=dense.shape[1],
        _lat_token=t[order],
        _lat_index=j[order],
        _lat_value=dense[t, j][order].astype(np.float32),
    )


@pytest.fixture(scope="module")
def planted():
    """Latent 0: noise; 1: 2.5 x in_subject; 2: depth; 3: dead; 4: pos==verb (x 0.7)."""
    rng = np.random.default_rng(6)
    n = 24
    features = {
        "pos": np.array([0, 1, 2, 0, 1, 1, 2, 0] * 3),  # "det" (3) never occurs
        "in_subject": rng.integers(0, 2, n),
        "depth": rng.integers(1, 5, n),
    }
    noise = np.round(np.maximum(rng.normal(size=n), 0), 2)
    dense = np.column_stack(
        [noise, 2.5 * features["in_subject"], features["depth"], np.zeros(n), 0.7 * (features["pos"] == 1)]
    ).astype(np.float32)
    return make_aligned(dense, features), dense, features


def test_latent_chunk_and_firing_counts_reproduce_the_planted_latents(planted):
    aligned, dense, _ = planted
    assert aligned.n_tokens == 24
    np.testing.assert_array_equal(aligned.latent_chunk(0, 5), dense)
    np.testing.assert_array_equal(aligned.latent_chunk(1, 3), dense[:, 1:3])
    np.testing.assert_array_equal(aligned.latent_chunk(3, 4), np.zeros((24, 1)))
    np.testing.assert_array_equal(aligned.latent(4), dense[:, 4])
    chunks = list(aligned.chunks(2))
    assert [s for s, _ in chunks] == [0, 2, 4]
    np.testing.assert_array_equal(np.hstack([c for _, c in chunks]), dense)
    counts = [sum(1 for t in range(24) if dense[t, j] > 0) for j in range(5)]
    assert aligned.firing_counts().tolist() == counts
    assert counts[3] == 0 and counts[2] == 24


def test_targets_of_expands_categories_that_occur():
    aligned = make_aligned(np.zeros((8, 2), dtype=np.float32), {
        "pos": np.array([0, 1, 2, 0, 1, 1, 2, 0]),
        "in_subject": np.array([1, 1, 0, 0, 0, 1, 1, 0]),
        "depth": np.array([1, 2, 3, 1, 2, 2, 3, 4]),
    })  # fmt: skip
    targets = targets_of(aligned)
    assert [(t.name, t.kind) for t in targets] == [
        ("pos=noun", "binary"),
        ("pos=verb", "binary"),
        ("pos=conj", "binary"),  # pos=det never occurs: no target
        ("in_subject", "binary"),
        ("depth", "ordinal"),
    ]
    values = {t.name: t.values.tolist() for t in targets}
    assert values["pos=verb"] == [0, 1, 0, 0, 1, 1, 0, 0]
    assert values["pos=noun"] == [1, 0, 0, 1, 0, 0, 0, 1]
    assert values["depth"] == [1, 2, 3, 1, 2, 2, 3, 4]
    assert [t.name for t in targets_of(aligned, ["depth", "in_subject"])] == ["depth", "in_subject"]
    with pytest.raises(FormalSAEError, match="unknown feature") as e:
        targets_of(aligned, ["depth", "nope"])
    assert all(name in str(e.value) for name in ("pos", "in_subject", "depth", "nope"))


def test_feature_expression_matches_direct_masks_and_rejects_bad_names(planted):
    aligned, _, f = planted
    mask = feature_expression(aligned, "pos=conj&in_subject=0")
    np.testing.assert_array_equal(mask, (f["pos"] == 2) & (f["in_subject"] == 0))
    np.testing.assert_array_equal(feature_expression(aligned, " depth = 3 "), f["depth"] == 3)
    np.testing.assert_array_equal(feature_expression(aligned, "pos=verb&depth=2"), (f["pos"] == 1) & (f["depth"] == 2))
    assert not feature_expression(aligned, "pos=det").any()
    with pytest.raises(FormalSAEError, match="unknown feature 'color'") as e:
        feature_expression(aligned, "pos=noun&color=red")
    assert "pos, in_subject, depth" in str(e.value)
    with pytest.raises(FormalSAEError, match="no category 'adj'") as e:
        feature_expression(aligned, "pos=adj")
    assert "noun, verb, conj, det" in str(e.value)
    with pytest.raises(FormalSAEError, match="integer, not 'deep'"):
        feature_expression(aligned, "depth=deep")


def test_score_latents_gives_perfect_scores_to_planted_latents(planted, monkeypatch):
    aligned, dense, _ = planted
    targets = targets_of(aligned)
    names = [t.name for t in targets]
    assert names == ["pos=noun", "pos=verb", "pos=conj", "in_subject", "depth"]
    for chunk in (256, 2):  # one chunk, and chunks splitting the latents
        monkeypatch.setattr(report_module, "_chunk_size", lambda n, c=chunk: c)
        s = score_latents(aligned, targets)
        subject, depth, verb = names.index("in_subject"), names.index("depth"), names.index("pos=verb")
        assert s.pearson[1, subject] == pytest.approx(1.0)
        assert s.auroc[1, subject] == pytest.approx(1.0)
        assert s.f1[:, 1, subject].max() == pytest.approx(1.0)
        assert s.pearson[4, verb] == pytest.approx(1.0) and s.auroc[4, verb] == pytest.approx(1.0)
        assert s.f1[:, 4, verb].max() == pytest.approx(1.0)
        assert s.pearson[2, depth] == pytest.approx(1.0) and s.spearman[2, depth] == pytest.approx(1.0)
        assert np.isnan(s.pearson[3]).all()  # dead latent
        assert np.isnan(s.auroc[:, depth]).all() and (s.f1[:, :, depth] == 0).all()  # ordinal target
        assert np.isnan(s.spearman[:, subject]).all()  # binary target
        # every score against the independent references
        for j, (k, t) in itertools.product(range(5), enumerate(targets)):
            assert_nan_equal(s.pearson[j, k], corr(dense[:, j], t.values))
            if t.kind == "binary":
                assert s.auroc[j, k] == pytest.approx(pair_auroc(dense[:, j], t.values))
                for a, frac in enumerate(THRESHOLD_FRACTIONS):
                    assert s.thresholds[a, j] == pytest.approx(frac * dense[:, j].max())
                    assert s.f1[a, j, k] == pytest.approx(prf(dense[:, j] > frac * dense[:, j].max(), t.values)[2])
            elif j != 3:
                assert s.spearman[j, k] == pytest.approx(spearmanr(dense[:, j], t.values).statistic)


# ----------------------------------------------------------------------------- analyze, end to end
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny dyck2 model (30 steps) and a TopK SAE saved in SAELens format."""
    ds = formal_sae.build_dataset("dyck2", n_train=300, n_validation=50, n_test=50, seed=0)
    train = TrainConfig(
        steps=30,
        batch_size=16,
        lr=3e-3,
        warmup_steps=5,
        eval_every=30,
        checkpoint_every=30,
        val_sentences=20,
        validity_samples=8,
        final_validity_repeats=1,
    )
    model = formal_sae.train_model(ds, "tiny", train, progress=False)
    sae_dir = tmp_path_factory.mktemp("sae")
    sae = formal_sae.train_sae(model, ds, architecture="topk", k=4, expansion_factor=2, training_tokens=5000, out_dir=sae_dir)
    return ds, model, sae, sae_dir


@pytest.fixture(scope="module")
def report(trained):
    ds, model, sae, _ = trained
    return formal_sae.analyze(model, sae, ds)


@pytest.fixture(scope="module")
def direct(trained):
    """Latents and features of every test token, recomputed one sentence at a time with
    run_with_cache and sae.encode: {(row, position): (latents, {feature: value})}."""
    ds, model, sae, _ = trained
    meta = formal_sae.dataset_metadata(ds)
    prompt, names = meta.prompt_length, [spec.name for spec in meta.feature_specs]
    hook = sae.cfg.metadata.hook_name
    out = {}
    with torch.no_grad():
        for row, example in enumerate(ds["test"]):
            tokens = torch.tensor([example["input_ids"]])
            _, cache = model.run_with_cache(tokens, names_filter=hook)
            positions = range(prompt, prompt + example["length"])
            latents = sae.encode(cache[hook][0, prompt : prompt + example["length"]]).numpy()
            for i, p in enumerate(positions):
                out[row, p] = (latents[i], {name: example[name][p] for name in names})
    return out


def target_values(name: str, features: dict[str, int], specs: dict[str, FeatureSpec]) -> int:
    feature, _, category = name.partition("=")
    if category:
        return int(features[feature] == specs[feature].categories.index(category))
    return features[feature]


def test_report_dict_has_the_documented_keys(report):
    d = report.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain JSON types
    features = d["features"]
    assert {"depth", "is_open", "bracket_type=type0", "bracket_type=type1"} <= set(features)
    assert "bracket_type" not in features  # categorical: one target per category
    for name, entry in features.items():
        assert set(entry) >= FEATURE_KEYS, name
        assert isinstance(entry["best_latent"], int) and 0 <= entry["best_latent"] < report.summary["d_sae"]
        assert isinstance(entry["pearson"], float)
        assert isinstance(entry["n_latents_abs_rho_ge_0.9"], int)
        if entry["kind"] == "binary":
            assert isinstance(entry["auroc"], float) and isinstance(entry["f1"], float)
        else:
            assert entry["auroc"] is None and entry["f1"] is None
    assert d["d_sae"] == 64 and d["grammar"] == "dyck2" and d["hook_name"] == "blocks.0.hook_resid_post"
    binary_f1 = [e["f1"] for e in features.values() if e["kind"] == "binary"]
    assert d["coverage"] == pytest.approx(np.mean(binary_f1))
    assert 0 <= d["mcc"] <= d["mmcs"] <= 1 + 1e-9


def test_reported_scores_match_a_direct_recomputation(trained, report, direct):
    _, _, sae, _ = trained
    keys = list(direct)
    latents = np.stack([direct[k][0] for k in keys])
    assert report.summary["n_tokens"] == len(keys)
    specs = report.aligned.specs
    for name, entry in report.targets.items():
        y = np.array([target_values(name, direct[k][1], specs) for k in keys])
        best = latents[:, entry["best_latent"]]
        assert entry["pearson"] == pytest.approx(corr(best, y), abs=1e-4), name
        rhos = [abs(corr(latents[:, j], y)) for j in range(sae.cfg.d_sae)]
        assert entry["n_latents_abs_rho_ge_0.9"] == sum(1 for r in rhos if r >= 0.9), name
        if entry["kind"] == "binary":
            # a negatively correlated latent is scored on its flipped direction, and says so
            sign = -1 if corr(best, y) < 0 else 1
            assert entry["auroc_sign"] == sign and entry["auroc"] == pytest.approx(pair_auroc(sign * best, y), abs=1e-4), name
            fires = latents[:, entry["f1_latent"]] > entry["threshold"]
            assert (entry["precision"], entry["recall"], entry["f1"]) == pytest.approx(prf(fires, y), abs=1e-6), name
        else:
            # The direct latents come from one sentence at a time: float32 noise of ~1e-7 can swap
            # the ranks of near-equal activations, which moves Spearman by up to a few 1e-4.
            assert entry["spearman"] == pytest.approx(spearmanr(best, y).statistic, abs=1e-3), name


def test_collect_aligned_is_sparse_and_aligned_with_the_dataset(trained, direct):
    ds, model, sae, _ = trained
    aligned = collect_aligned(model, sae, ds["test"], batch_size=16)
    test = ds["test"]
    assert aligned.n_tokens == len(direct) == sum(test["length"])
    dense = aligned.latent_chunk(0, aligned.d_sae)
    assert len(aligned._lat_value) == np.count_nonzero(dense) <= 4 * aligned.n_tokens  # TopK, k = 4
    assert len(aligned._lat_value) < aligned.n_tokens * aligned.d_sae
    assert (np.diff(aligned._lat_index) >= 0).all()
    ids = test["input_ids"]
    for i, (row, pos) in enumerate(zip(aligned.rows, aligned.positions, strict=True)):
        assert aligned.token_ids[i] == ids[row][pos]
        expected_latents, expected_features = direct[int(row), int(pos)]
        np.testing.assert_allclose(dense[i], expected_latents, atol=1e-4)
        for name, value in expected_features.items():
            assert aligned.features[name][i] == value
    assert aligned.acts.shape == (aligned.n_tokens, sae.cfg.d_in)
    assert all((v != formal_sae.IGNORE_VALUE).all() for v in aligned.features.values())


def test_markdown_and_saved_files(report, tmp_path):
    md = report.to_markdown()
    for name in report.targets:
        assert f"`{name}`" in md
    assert "coverage" in md and "MCC" in md
    out = report.save(tmp_path / "report")
    assert json.loads((out / "report.json").read_text()) == report.to_dict()
    assert (out / "report.md").read_text() == md
    depth_png = out / f"depth_latent{report.targets['depth']['best_latent']}.png"
    for png in (out / "correlations.png", depth_png):
        assert png.read_bytes()[:8] == PNG_SIGNATURE, png
    page = (out / "top_activations.html").read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"\b(src|href)\s*=", page, re.IGNORECASE) and "url(" not in page and "@import" not in page
    best = sorted({t["best_latent"] for t in report.targets.values()})
    assert all(f"latent {j} " in page for j in best[:12])
    assert "<span class='t'" in page


# ----------------------------------------------------------------------------- bad input
def test_sae_that_does_not_fit_the_model(trained):
    ds, model, sae, _ = trained
    missing = copy.deepcopy(sae)
    missing.cfg.metadata.hook_name = "blocks.7.hook_resid_post"
    with pytest.raises(SAEError, match=r"no hook point 'blocks\.7\.hook_resid_post'") as e:
        formal_sae.analyze(model, missing, ds)
    assert "blocks.0.hook_resid_post" in str(e.value)  # lists the valid hooks
    wide = copy.deepcopy(sae)
    wide.cfg.metadata.hook_name = "blocks.0.mlp.hook_post"  # width d_mlp = 64, not d_model = 32
    with pytest.raises(SAEError, match=r"d_in=32.*width 64"):
        formal_sae.analyze(model, wide, ds)


def test_dataset_from_another_grammar(trained):
    _, model, sae, _ = trained
    other = formal_sae.build_dataset("expr", n_train=5, n_validation=5, n_test=5, seed=0)
    with pytest.raises(DatasetError, match="grammar 'expr' but the model was trained on 'dyck2'"):
        formal_sae.analyze(model, sae, other)


def test_unknown_feature_empty_split_and_no_targets(trained):
    ds, model, sae, _ = trained
    with pytest.raises(FormalSAEError, match="unknown feature") as e:
        formal_sae.analyze(model, sae, ds, features=["depth", "colour"])
    assert all(name in str(e.value) for name in ("colour", "depth", "is_open", "bracket_type"))
    empty = datasets.DatasetDict({**ds, "test": ds["test"].select([])})
    with pytest.raises(DatasetError, match="'test' is empty"):
        formal_sae.analyze(model, sae, empty)
    with pytest.raises(DatasetError, match="'nope' is empty or missing"):
        formal_sae.analyze(model, sae, ds, selection_split="nope")
    with pytest.raises(DatasetError, match="empty"):
        collect_aligned(model, sae, ds["test"].select([]))
    with pytest.raises(DatasetError, match="max_sentences"):
        formal_sae.analyze(model, sae, ds, max_sentences=0)
    with pytest.raises(FormalSAEError, match="no feature to analyse"):
        formal_sae.analyze(model, sae, ds, features=[])


# ----------------------------------------------------------------------------- CLI
def test_cli_analyze_writes_a_report(trained, tmp_path, capsys):
    ds, model, _, sae_dir = trained
    model_dir, data_dir, out = tmp_path / "model", tmp_path / "data", tmp_path / "out"
    formal_sae.save_model(model, model_dir)
    formal_sae.save_dataset(ds, data_dir)
    args = ["analyze", "--model", str(model_dir), "--sae", str(sae_dir), "--data", str(data_dir)]
    assert main([*args, "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    saved = json.loads((out / "report.json").read_text())
    assert {"coverage", "mcc", "features"} <= set(saved)
    assert {"depth", "is_open"} <= set(saved["features"])
    for entry in saved["features"].values():
        assert set(entry) >= FEATURE_KEYS
    assert (out / "report.md").is_file() and (out / "top_activations.html").is_file()
    assert main([*args, "--out", str(tmp_path / "bad"), "--features", "nope"]) == 2
    err = capsys.readouterr().err
    assert "formal-sae analyze: error: unknown feature" in err and "is_open" in err

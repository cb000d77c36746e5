"""Linear probes (formal_sae.analysis.probes): exact fits, controls that must fail, the ablation direction, I/O, errors."""

import dataclasses
import json

import numpy as np
import pytest

import formal_sae
from formal_sae.analysis import ProbeReport, default_probe_hooks, probe_direction, probe_features
from formal_sae.analysis.probes import EMBED_HOOK, ProbeData, collect_probe_data, score_probes
from formal_sae.errors import DatasetError, FormalSAEError, ModelError

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def ds():
    # a larger test split than conftest's: 30 sentences make held-out R² noisy
    return formal_sae.build_dataset("expr", n_train=400, n_validation=10, n_test=200, seed=0)


@pytest.fixture(scope="module")
def data(model, ds) -> tuple[ProbeData, ProbeData]:
    hooks = default_probe_hooks(model)
    return collect_probe_data(model, ds["train"], hooks), collect_probe_data(model, ds["test"], hooks)


@pytest.fixture(scope="module")
def report(model, ds) -> ProbeReport:
    return probe_features(model, ds)


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    return 1 - float(((y - pred) ** 2).sum()) / float(((y - y.mean()) ** 2).sum())


@pytest.mark.parametrize("hook", [HOOK, EMBED_HOOK])  # hook_embed: rank-deficient (fewer tokens than dimensions)
def test_ordinal_r2_equals_lstsq_with_intercept(data, hook):
    fit, test = data
    score = score_probes(
        ProbeData({hook: fit.acts[hook]}, fit.features, fit.specs, fit.rows),
        ProbeData({hook: test.acts[hook]}, test.features, test.specs, test.rows),
        ["depth"],
        ridge=0.0,
    )[0]
    x_fit, x_test = (np.c_[d.acts[hook].numpy().astype(np.float64), np.ones(d.n_tokens)] for d in data)
    coef = np.linalg.lstsq(x_fit, fit.features["depth"].astype(np.float64), rcond=None)[0]
    expected = _r2(test.features["depth"].astype(np.float64), x_test @ coef)
    assert score.kind == "ordinal" and score.feature == "depth" and score.hook == hook
    assert score.n_train == fit.n_tokens and score.n_test == test.n_tokens and score.baseline == 0.0
    assert score.score == pytest.approx(expected, abs=1e-6)


def test_token_features_decodable_at_embed_structural_ones_not(report):
    assert report.score("arity", EMBED_HOOK).score >= 0.99  # a function of the token: linear in its embedding
    op = report.embed_control("is_operator")
    assert op is not None and op.score >= 0.99 and op.f1 >= 0.99 and op.baseline < 0.9
    for name in ("pending", "depth"):  # need the context: the token alone leaves most of the variance
        assert report.score(name, EMBED_HOOK).score < 0.5
        assert report.best_hook(name).score > report.score(name, EMBED_HOOK).score
        assert report.best_hook(name).hook != EMBED_HOOK


def test_permuted_labels_score_near_baseline(data):
    rng = np.random.default_rng(0)

    def shuffled(d: ProbeData) -> ProbeData:
        feats = {**d.features, **{n: rng.permutation(d.features[n]) for n in ("depth", "is_operator")}}
        return dataclasses.replace(d, features=feats)

    fit, test = data
    for s in score_probes(shuffled(fit), shuffled(test), ["depth", "is_operator"]):
        assert s.score <= s.baseline + 0.03, s  # the probe can fail
    real = {(s.feature, s.hook): s for s in score_probes(fit, test, ["depth", "is_operator"])}
    assert real[("depth", HOOK)].score > 0.2 and real[("is_operator", HOOK)].score > real[("is_operator", HOOK)].baseline + 0.1


def test_projecting_out_probe_direction_removes_the_feature(model, ds, data):
    u = probe_direction(model, ds, HOOK, "depth")
    assert u.shape == (model.cfg.d_model,) and float(u.norm()) == pytest.approx(1.0, abs=1e-5)

    def ablated(d: ProbeData) -> ProbeData:
        x = d.acts[HOOK]
        return dataclasses.replace(d, acts={HOOK: x - (x @ u)[:, None] * u})

    fit, test = data
    before = score_probes(
        ProbeData({HOOK: fit.acts[HOOK]}, fit.features, fit.specs, fit.rows),
        ProbeData({HOOK: test.acts[HOOK]}, test.features, test.specs, test.rows),
        ["depth"],
    )[0]
    after = score_probes(ablated(fit), ablated(test), ["depth"])[0]  # refitted on the projected activations
    assert before.score > 0.2
    assert after.score < 0.05
    v = probe_direction(model, ds, HOOK, "preterminal=Digit")  # one category of a categorical feature
    assert float(v.norm()) == pytest.approx(1.0, abs=1e-5)


def test_report_json_round_trip_markdown_and_plot(model, report, tmp_path):
    again = ProbeReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report and again.grammar == "expr" and len(again.scores) > 0
    assert (
        report.hooks == default_probe_hooks(model) == [EMBED_HOOK, *(f"blocks.0.hook_resid_{w}" for w in ("pre", "mid", "post"))]
    )
    md = report.to_markdown()
    assert f"`{EMBED_HOOK}` (control)" in md and all(f"`{f}`" in md for f in report.features)
    report.plot(tmp_path / "probes.png")
    assert (tmp_path / "probes.png").stat().st_size > 1000


def test_identical_hooks_and_targets_share_fits(report):
    # tiny model: 1 layer, so no resid_post == next resid_pre; preterminal=Digit and parent=Expr coincide in Expr
    a, b = report.score("preterminal=Digit", HOOK), report.score("parent=Expr", HOOK)
    assert (a.score, a.f1, a.baseline) == (b.score, b.f1, b.baseline)


def test_bad_hook_feature_split_errors(model, ds, report):
    with pytest.raises(ModelError, match="hook_embed"):
        probe_features(model, ds, hooks=["blocks.7.hook_resid_post"])
    with pytest.raises(ModelError, match="per pair of positions"):
        probe_features(model, ds, hooks=["blocks.0.attn.hook_pattern"])
    with pytest.raises(DatasetError, match="depth"):
        probe_features(model, ds, features=["no_such_feature"])
    with pytest.raises(DatasetError, match="validation"):
        probe_features(model, ds, test_split="nope")
    with pytest.raises(DatasetError, match="preterminal=Digit"):
        probe_direction(model, ds, HOOK, "preterminal")
    with pytest.raises(ModelError):
        probe_direction(model, ds, "nope", "depth")
    with pytest.raises(FormalSAEError, match="probed features"):
        report.score("nope", HOOK)
    with pytest.raises(FormalSAEError, match="probed hooks"):
        report.score("depth", "blocks.3.hook_resid_post")

"""The benchmark panel end to end on a tiny model: matched L0 by calibration, the panel's layout,
its resume, scoring your own SAE, and the refusals."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest

import formal_sae
from formal_sae.bench import BenchConfig, ScoringSettings, bench, calibrate, panel_grid, score_saes
from formal_sae.bench import runner as bench_runner
from formal_sae.bench.calibration import held_out_l0
from formal_sae.saes.training import cache_activations

HOOK = "blocks.0.hook_resid_post"
TINY_SCORING = ScoringSettings(max_sentences=30, validity_samples=0, intervention_sentences=10, n_null=2, causal_bar=0.3)


def tiny_config(**overrides) -> BenchConfig:
    settings = {
        "architectures": ["topk", "standard", "causal"], "l0_targets": [4], "expansion_factors": [2], "seeds": 2,
        "training_tokens": 2048, "batch_size_tokens": 256, "calibration_tokens": 2048, "calibration_runs": 6,
        "calibration_tolerance": 0.5, "scoring": TINY_SCORING,
        "causal": formal_sae.CausalConfig(coefficient=1.0, steps=2, sentences_per_step=8),
    }  # fmt: skip
    return BenchConfig(**{**settings, **overrides})


def test_config_round_trips_through_json_and_refuses_bad_values():
    config = tiny_config()
    assert BenchConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert "causal" in BenchConfig().panel and "jumprelu" in BenchConfig().panel  # discovered from SAELens's registry
    with pytest.raises(formal_sae.FormalSAEError, match="unknown panel architecture"):
        BenchConfig(architectures=["nope"])
    with pytest.raises(formal_sae.FormalSAEError, match="l0_targets"):
        BenchConfig(l0_targets=[0])
    with pytest.raises(formal_sae.FormalSAEError, match="unknown bench config field"):
        BenchConfig.from_dict({"l0": [4]})


def test_calibration_reaches_the_target_and_its_coefficient_reproduces_it(model, ds):
    base = formal_sae.SAETrainConfig(architecture="standard", expansion_factor=2, batch_size_tokens=256, hook_name=HOOK)
    result = calibrate(model, ds, base, 6, tokens=2048, runs=8, tolerance=0.4)
    assert result.reached and abs(result.l0 / 6 - 1) <= 0.4
    # L0 falls as the penalty grows, over every run tried (the premise of the bisection)
    ordered = sorted(result.runs)
    assert all(a[1] >= b[1] - 0.5 for a, b in itertools.pairwise(ordered))
    # an independent retrain at the returned coefficient measures the same L0
    acts = cache_activations(model, ds, HOOK, 2048)
    held_out = cache_activations(model, ds, HOOK, 20_000, split="validation")
    sae = formal_sae.train_sae(
        model, ds, dataclasses.replace(base, training_tokens=2048, l1_coefficient=result.coefficient), activations=acts
    )
    assert held_out_l0(sae, held_out) == pytest.approx(result.l0, abs=1e-6)


def test_an_unreachable_l0_is_reported_and_the_panel_goes_on(model, ds):
    d_sae = 2 * model.cfg.d_model
    base = formal_sae.SAETrainConfig(architecture="standard", expansion_factor=2, batch_size_tokens=256, hook_name=HOOK)
    result = calibrate(model, ds, base, d_sae + 10, tokens=1024, runs=3, tolerance=0.1)  # more latents than exist
    assert not result.reached and len(result.runs) <= 3
    grid = panel_grid(tiny_config(architectures=["topk", "standard"]), [dataclasses.replace(result, l0_target=4)])
    assert [c.config.architecture for c in grid.cells] == ["topk", "topk"]  # standard dropped, topk kept


def test_panel_grid_matches_l0_by_k_and_by_calibrated_coefficient():
    cal = formal_sae.bench.Calibration("standard", 2, 4, "l1_coefficient", 0.5, 4.2, True, [[0.5, 4.2]])
    grid = panel_grid(tiny_config(architectures=["topk", "standard", "matching_pursuit"]), [cal])
    by_id = {c.id: c.config for c in grid.cells}
    assert by_id["topk-x2-l04-s0"].k == 4 and by_id["topk-x2-l04-s1"].seed == 1
    assert by_id["standard-x2-l04-s0"].l1_coefficient == 0.5
    assert by_id["matching_pursuit-x2-l04-s0"].extra == {"max_iterations": 4}
    jump = formal_sae.bench.Calibration("jumprelu", 2, 4, "jumprelu_init_threshold", 9.3, 3.4, True, [[9.3, 3.4]])
    grid = panel_grid(tiny_config(architectures=["jumprelu"]), [jump])
    assert grid.cells[0].config.extra == {"jumprelu_init_threshold": 9.3}  # a SAELens setting, through extra


@pytest.fixture(scope="module")
def panel(model, ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "run"
    return out, bench([(model, ds)], out, tiny_config(), progress=False, workers=2)


def test_the_panel_trains_scores_and_ranks_every_architecture_beside_its_baselines(panel, ds):
    out, result = panel
    grammar = formal_sae.dataset_metadata(ds).grammar
    ids = {s.sae_id for s in result.scores}
    assert {"topk-x2-l04-s0", "topk-x2-l04-s1", "causal-x2-l04-s0", "residual_basis", "pca", "probe"} <= ids
    assert any(i.startswith("untrained-") for i in ids)
    assert (out / "leaderboard.md").is_file() and (out / "leaderboard.csv").is_file()
    saved = json.loads((out / grammar / "scores" / "topk-x2-l04-s0.json").read_text())
    assert saved["eval_type_id"] == bench_runner.EVAL_TYPE and saved["formal_sae"]["l0"] == pytest.approx(4, abs=0.01)
    # SAELens's own run_evals on the same tokens agrees with the package's fidelity for every trained SAE
    trained = [s for s in result.scores if s.family == "sae"]
    checked = [s for s in trained if s.seed == 0]  # each cell's first seed
    assert checked and all(s.saelens_explained_variance == pytest.approx(s.explained_variance, abs=1e-4) for s in checked)
    assert all(
        s.saelens_ce_loss_score == pytest.approx(s.ce_loss_score, abs=1e-4) for s in checked if s.ce_loss_score is not None
    )
    assert all(s.saelens_explained_variance is None for s in trained if s.seed != 0)
    families = {s.family for s in result.scores}
    assert families == {"sae", "floor", "baseline", "ceiling"}
    # the model's basis and PCA are exact dictionaries: the same fidelity code measures EV 1
    basis = next(s for s in result.scores if s.sae_id == "residual_basis")
    assert basis.explained_variance == pytest.approx(1.0, abs=1e-3)
    # every SAE the SAELens loader opens
    sae = formal_sae.load_sae(out / grammar / "panel" / "cells" / "topk-x2-l04-s0")
    assert sae.cfg.d_sae == 2 * sae.cfg.d_in


def test_an_interrupted_panel_resumes_without_rescoring(model, ds, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = tiny_config(architectures=["topk"], seeds=1)
    calls = []
    real = bench_runner.score_sae

    def failing(*args, **kwargs):
        calls.append(kwargs["sae_id"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bench_runner, "score_sae", failing)
    with pytest.raises(KeyboardInterrupt):
        bench([(model, ds)], out, config, progress=False)
    first = calls[0]
    monkeypatch.setattr(bench_runner, "score_sae", lambda *a, **k: (calls.append(k["sae_id"]), real(*a, **k))[1])
    result = bench([(model, ds)], out, config, progress=False)
    assert calls.count(first) == 1  # scored once, read back on resume
    assert (out / "leaderboard.json").is_file() and len(result.scores) == len(set(calls))


def test_your_own_sae_is_scored_against_its_untrained_architecture_and_the_baselines(panel, model, ds, tmp_path):
    out, _ = panel
    mine = out / "expr" / "panel" / "cells" / "topk-x2-l04-s0"
    result = score_saes(model, ds, [mine], tmp_path / "mine", tiny_config(), progress=False)
    ids = {s.sae_id for s in result.scores}
    assert "topk-x2-l04-s0" in ids and "topk-x2-l04-s0-untrained-s0" in ids and "probe" in ids
    floor = next(s for s in result.scores if s.sae_id == "topk-x2-l04-s0-untrained-s0")
    assert floor.family == "floor" and floor.d_sae == 2 * model.cfg.d_model


def test_an_sae_of_another_model_is_refused_before_scoring(panel, ds, tmp_path):
    out, _ = panel
    other = formal_sae.train_model(
        ds,
        "tiny",
        formal_sae.TrainConfig(steps=2, eval_every=2, validity_samples=2, final_validity_repeats=1, seed=1),
        progress=False,
    )
    with pytest.raises(formal_sae.SAEError, match="trained on model"):
        score_saes(
            other, ds, [out / "expr" / "panel" / "cells" / "topk-x2-l04-s0"], tmp_path / "x", tiny_config(), progress=False
        )
    assert not (tmp_path / "x").exists()


def test_bench_refuses_unknown_presets_and_repeated_languages(model, ds, tmp_path):
    with pytest.raises(formal_sae.FormalSAEError, match="unknown bench preset"):
        bench([(model, ds)], tmp_path / "a", "huge")
    with pytest.raises(formal_sae.FormalSAEError, match="repeats a grammar"):
        bench([(model, ds), (model, ds)], tmp_path / "b", tiny_config())


def test_the_cli_scores_your_sae_and_refuses_mismatched_lists(panel, model, ds, tmp_path, capsys):
    out, _ = panel
    model_dir, data_dir = tmp_path / "m", tmp_path / "d"
    formal_sae.save_model(model, model_dir)
    formal_sae.save_dataset(ds, data_dir)
    config = tmp_path / "bench.json"
    config.write_text(json.dumps(tiny_config().to_dict()))
    from formal_sae.cli import main

    code = main(["bench", "--model", str(model_dir), "--data", str(data_dir), str(data_dir), "--out", str(tmp_path / "o")])
    assert code == 2 and "one --data per --model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["bench", "--model", str(model_dir), "--data", str(data_dir), "--out", str(tmp_path / "o"), "--config", str(config),
          "--sae", str(out / "expr" / "panel" / "cells" / "topk-x2-l04-s0")]) == 0  # fmt: skip
    assert "leaderboard.md" in capsys.readouterr().out and (tmp_path / "o" / "leaderboard.md").is_file()


def test_an_sae_saelens_cannot_load_is_refused_with_the_reason(panel, model, ds, tmp_path):
    import shutil

    out, _ = panel
    broken = tmp_path / "broken"
    shutil.copytree(out / "expr" / "panel" / "cells" / "topk-x2-l04-s0", broken)
    cfg = json.loads((broken / "cfg.json").read_text())
    (broken / "cfg.json").write_text(json.dumps({**cfg, "architecture": "my_unregistered_arch"}))
    with pytest.raises(formal_sae.SAEError, match=r"my_unregistered_arch.*SAELens does not know"):
        score_saes(model, ds, [broken], tmp_path / "x", tiny_config(), progress=False)
    assert not (tmp_path / "x").exists()


def test_two_saes_of_the_same_name_are_refused_rather_than_one_overwriting_the_other(panel, model, ds, tmp_path):
    import shutil

    out, _ = panel
    mine = out / "expr" / "panel" / "cells" / "topk-x2-l04-s0"
    twin = tmp_path / "elsewhere" / "topk-x2-l04-s0"
    shutil.copytree(mine, twin)
    with pytest.raises(formal_sae.SAEError, match="two SAEs are named 'topk-x2-l04-s0'"):
        score_saes(model, ds, [mine, twin], tmp_path / "x", tiny_config(), progress=False)
    assert not (tmp_path / "x").exists()


def test_a_baseline_killed_mid_save_is_not_taken_by_the_resumed_run(tmp_path, identity_sae):
    path = tmp_path / "baselines" / "pca"

    class Dies:
        def save_model(self, where):
            (Path(where) / "cfg.json").parent.mkdir(parents=True, exist_ok=True)
            (Path(where) / "cfg.json").write_text("{}")  # half written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bench_runner.save_once(path, Dies)
    assert not path.exists()  # the resumed run builds it again
    bench_runner.save_once(path, lambda: identity_sae(4, HOOK))
    assert formal_sae.load_sae(path).cfg.d_sae == 8
    bench_runner.save_once(path, lambda: pytest.fail("a saved baseline is kept, not rebuilt"))

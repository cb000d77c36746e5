"""The reproduction pipeline end to end on a tiny model: every stage, its controls and nulls, resume, errors.
(The verdict rules themselves are tested on synthetic evidence in test_claims.py.)"""

from __future__ import annotations

import dataclasses
import json

import pytest

from formal_sae import CausalConfig, FormalSAEError, OutputError, SAETrainConfig, in_progress_path
from formal_sae.outputs import _write_marker
from formal_sae.reproduce import SCALES, reproduce, stages
from formal_sae.reproduce.claims import MIXED, NOT_SUPPORTED, NOT_TESTED, SUPPORTED
from formal_sae.reproduce.scales import Scale
from formal_sae.saes.sweep import SweepGrid

VERDICTS = {SUPPORTED, MIXED, NOT_SUPPORTED, NOT_TESTED}


def tiny_grid(d_in: int):
    base = {"architecture": "paper", "training_tokens": 8192, "batch_size_tokens": 128, "lr": 1e-2}
    cells = [
        {"k": 4, "expansion_factor": 2},
        {"k": 8, "expansion_factor": 2},
        {"k": 4, "expansion_factor": 1},
        {"l1_coefficient": 1.0},
    ]
    return SweepGrid.from_dict({"name": "tiny", "base": base, "cells": cells})


TINY = Scale(
    name="tiny",
    n_train=300,
    n_eval=40,
    preset="tiny",
    model_steps={"dyck2": 30, "expr": 30, "english": 30},
    model_lr=3e-3,
    grid=tiny_grid,
    sweep_eval={"n_samples": 4, "repeats": 2, "max_sentences": 20},
    analysis_sentences=30,
    analysis_seeds=2,
    control_saes=2,
    intervention_sentences=12,
    n_null=3,
    causal_base=SAETrainConfig(architecture="topk", k=4, expansion_factor=2, batch_size_tokens=128),
    causal=CausalConfig(coefficient=10.0, pretrain_steps=2, steps=2, sentences_per_step=8),
    causal_seeds=2,
    validity_samples=4,
    validity_repeats=2,
    notes=("a test-sized run",),
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(SCALES, "tiny", TINY)
        claims = reproduce(out, "expr", "tiny")
    return out, claims


def test_reproduce_writes_verdicts_per_language_and_overall(tiny_run):
    out, claims = tiny_run
    saved = json.loads((out / "claims.json").read_text())
    as_json = json.dumps({k: c.to_dict() for k, c in claims.items()}, sort_keys=True)
    assert json.dumps(saved, sort_keys=True) == json.dumps(json.loads(as_json), sort_keys=True)
    assert set(saved) == {"C1", "C2", "C3", "C4"}
    for claim in saved.values():
        assert claim["overall"]["verdict"] in VERDICTS and claim["overall"]["reason"]
        assert set(claim["languages"]) == {"expr"} and claim["languages"]["expr"]["verdict"] in VERDICTS
    # one language cannot make a claim "supported" overall; C4 is about English, which did not run
    assert all(c["overall"]["verdict"] != SUPPORTED for c in saved.values())
    assert saved["C4"]["overall"]["verdict"] == NOT_TESTED
    report = (out / "report.md").read_text()
    assert "## Claims" in report and "## expr" in report and "a test-sized run" in report and "### Thresholds" in report
    for figure in ("analysis/correlations.png", "probes/probes.png"):
        assert f"expr/{figure}" in report and (out / "expr" / figure).is_file()


def test_the_evidence_holds_its_controls_nulls_and_seeds(tiny_run):
    out, _ = tiny_run
    ev = json.loads((out / "expr" / "results.json").read_text())["evidence"]
    c1 = ev["C1"]
    assert c1["n_seeds"] == 2
    roles = {f["feature"]: f["role"] for f in c1["features"]}
    assert roles["arity"] == "lexical" and roles["pending"] == "structural"  # decided from the data
    for f in c1["features"]:
        assert len(f["control_runs"]) == 2 and f["control_abs_rho"] == max(f["control_runs"])  # two untrained SAEs
        lo, hi = f["abs_rho_ci"]
        assert lo <= f["abs_rho"] <= hi or f["abs_rho"] != f["abs_rho"]
    assert any(f["probe"] is not None and f["probe_embed"] is not None for f in c1["features"])
    cells = ev["C2"]["cells"]
    assert len(cells) == 4 and all(c["validity_se"] is not None for c in cells if c["validity"] is not None)
    assert {c["factors"]["family"] for c in cells} == {"topk", "l1"}
    for f in ev["C3"]["features"]:  # the nulls ran wherever a feature had a latent at the bar
        assert f["null_clamp_interval"][0] <= f["null_clamp_interval"][1] and f["latents"]
    pairs = ev["C4"]["pairs"]
    assert [p["seed"] for p in pairs] == [0, 1]
    for p in pairs:
        assert p["plain"]["causal_loss"] is not None and p["causal"]["linearity_error"] is not None


def test_an_interrupted_run_resumes_without_redoing_finished_stages(tiny_run, tmp_path, monkeypatch):
    out, claims = tiny_run
    run = tmp_path / "run"
    work = in_progress_path(run)  # an interrupted run: every stage done but the language's results file
    (work / "expr").mkdir(parents=True)
    marker = json.loads((out / "formal_sae_artifact.json").read_text())
    _write_marker(work, "reproduction", marker["config"], complete=False)
    for part in (out / "expr").iterdir():
        if part.name != "results.json":
            (work / "expr" / part.name).symlink_to(part, target_is_directory=part.is_dir())

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    for name in ("generate_dataset", "train_model", "sweep", "train_sae", "train_causal_sae", "analyze", "feature_interventions"):
        monkeypatch.setattr(stages, name, must_not_run)
    monkeypatch.setitem(SCALES, "tiny", TINY)
    again = reproduce(run, "expr", "tiny")
    assert json.dumps({k: c.to_dict() for k, c in again.items()}, sort_keys=True) == json.dumps(
        {k: c.to_dict() for k, c in claims.items()}, sort_keys=True
    )
    assert (run / "claims.json").is_file() and not work.exists()


def test_a_finished_run_is_not_overwritten_without_overwrite(tiny_run, monkeypatch):
    out, _ = tiny_run
    monkeypatch.setitem(SCALES, "tiny", TINY)
    with pytest.raises(OutputError, match="already exists and holds a formal-sae reproduction; pass overwrite=True"):
        reproduce(out, "expr", "tiny")


def test_unknown_scale_or_grammar_is_refused(tmp_path):
    with pytest.raises(FormalSAEError, match="unknown scale 'huge'; choose one of quick, small, standard, paper"):
        reproduce(tmp_path, "expr", "huge")
    with pytest.raises(FormalSAEError, match=r"not \['expr-postfix'\]"):
        reproduce(tmp_path, "expr-postfix", "quick")
    with pytest.raises(FormalSAEError, match="unknown scale setting"):
        SCALES["quick"].with_overrides(n_trian=3)


def test_the_quick_grid_can_measure_every_factor():
    from formal_sae.reproduce.claims import main_effects
    from formal_sae.reproduce.evidence import Cell

    rows = [{**c.config.to_dict(), "cell_id": c.id} for c in SCALES["quick"].grid(64).cells]
    cells = [Cell(r["cell_id"], stages.factors_of(r), 0.9, 8.0, 0.5, 0.01, 0.5, 0.01) for r in rows]
    assert all(e.n_groups >= 1 for e in main_effects(cells))  # each factor is varied alone at least once


def test_the_report_table_survives_pipes_in_the_reasons(tiny_run):
    out, _ = tiny_run
    rows = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| **C")]
    assert len(rows) == 4
    for row in rows:  # claim | overall | expr: 3 cells, whatever the reasons say
        assert len(row.replace("\\|", "").strip("|").split("|")) == 3


def test_a_failed_stage_leaves_its_claims_not_tested_and_the_others_judged(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise FormalSAEError("only 3 other live latents: too few for a null of 5-latent groups")

    def no_pairs(*args, **kwargs):
        raise FormalSAEError("no held-out pairs")

    monkeypatch.setattr(stages, "_c1_c3", refuse)
    monkeypatch.setattr(stages, "held_out_pairs", no_pairs)
    monkeypatch.setitem(SCALES, "tiny", TINY)
    claims = reproduce(tmp_path / "run", "expr", "tiny")
    for claim, words in (("C1", "too few for a null"), ("C3", "too few for a null"), ("C4", "no held-out pairs")):
        v = claims[claim].languages["expr"]
        assert v.verdict == NOT_TESTED and words in v.reason, (claim, v)
    assert claims["C2"].languages["expr"].verdict != NOT_TESTED or "stage failed" not in claims["C2"].languages["expr"].reason
    assert not (tmp_path / "run" / "expr" / "c1_c3.json").exists()  # a rerun tries the failed stage again


def test_the_paper_scale_uses_the_papers_sequence_format(tmp_path, monkeypatch):
    """At scale paper the data carries the authors' 7-token decorator; the other scales use <bos>."""
    seen = {}

    class Stop(Exception):
        pass

    def record(grammar, out, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(stages, "generate_dataset", record)
    with pytest.raises(Stop):
        stages.run_language("dyck2", tmp_path / "dyck2", SCALES["paper"])
    assert seen["prompt_format"] == "paper" and seen["n_train"] == 1_000_000
    assert {s.prompt_format for name, s in SCALES.items() if name != "paper"} == {"bos"}


# ------------------------------------------------------------------------------ the standard scale, estimates, resume
def test_the_standard_scale_is_the_papers_model_with_its_panels_variants_and_seeds():
    """Checked without training: the preset, the plateau rule, the grid's contents, the seeds, the workers."""
    from formal_sae import TrainConfig
    from formal_sae.reproduce.estimate import estimate_time

    standard = SCALES["standard"]
    assert list(SCALES) == ["quick", "small", "standard", "paper"]
    assert standard.preset == "paper" and standard.prompt_format == "bos"
    assert standard.analysis_seeds >= 3 and standard.causal_seeds >= 3 and standard.workers >= 2
    train = TrainConfig(steps=max(standard.model_steps.values()), **standard.model_train)  # a valid TrainConfig
    assert train.plateau_patience is not None and set(standard.model_steps) == {"dyck2", "expr", "english"}
    rows = [{**c.config.to_dict(), "cell_id": c.id} for c in standard.grid(128).cells]
    assert len(rows) == 77
    factors = [stages.factors_of(r) for r in rows]
    plain = [f for f in factors if f["normalisation"] == "none" and not f["pre_bias"]]
    for family, values in (("topk", {8, 16, 32, 64, 128}), ("l1", {1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0})):
        for expansion in (1, 2, 4, 8):  # the paper's panel: every sparsity at every expansion
            assert {f["sparsity"] for f in plain if f["family"] == family and f["expansion"] == expansion} == values
    variants = {(f["normalisation"], f["pre_bias"]) for f in factors}
    assert variants == {("none", False), ("input", False), ("input+recon", False), ("input+dec", True)}
    for variant in variants - {("none", False)}:  # each variant at expansion 2, both families, TopK k=16 included
        cells = [f for f in factors if (f["normalisation"], f["pre_bias"]) == variant]
        assert {f["expansion"] for f in cells} == {2} and len(cells) == 11
        assert any(f["family"] == "topk" and f["sparsity"] == 16 for f in cells)
    assert all(r["training_tokens"] == 512_000 and r["batch_size_tokens"] == 1024 and r["lr"] == 1e-3 for r in rows)
    assert estimate_time(standard, ["dyck2", "expr", "english"]).total <= 3600  # about an hour on 2 CPU cores


def test_every_scale_has_an_estimate_and_paper_on_the_cpu_is_warned_about():
    from formal_sae.reproduce.estimate import CPU_HOURS_BOUND, STAGES, estimate_time

    totals = {}
    for name, scale in SCALES.items():
        estimate = estimate_time(scale, ["dyck2", "expr", "english"])
        assert set(estimate.seconds) == {"dyck2", "expr", "english"}
        assert all(set(s) == set(STAGES) and all(v > 0 for v in s.values()) for s in estimate.seconds.values())
        text = estimate.to_text()
        assert f"scale {name!r}" in text and "total:" in text and all(stage in text for stage in STAGES)
        totals[name] = estimate.total
        assert (estimate.warning() is not None) == (name == "paper"), name
    assert totals["quick"] < 600 < totals["small"] < totals["standard"] < CPU_HOURS_BOUND * 3600 < totals["paper"]
    paper = estimate_time(SCALES["paper"], list(SCALES["paper"].model_steps))
    assert "--device cuda" in paper.warning() and "over 8 hours" in paper.warning()
    assert estimate_time(SCALES["paper"], ["dyck2", "expr", "english"], device="cuda").warning() is None  # no CPU bound


def test_a_resumed_run_with_another_configuration_is_refused_naming_the_difference(tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setitem(SCALES, "tiny", TINY)

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(stages, "train_model", stop)  # interrupted once its data is written
    with pytest.raises(Stop):
        reproduce(run, "expr", "tiny")
    assert in_progress_path(run).is_dir()
    with pytest.raises(OutputError, match=r"settings\.n_null \(3 -> 4\)"):
        reproduce(run, "expr", TINY.with_overrides(n_null=4))
    with pytest.raises(OutputError, match=r"seed \(0 -> 1\)"):
        reproduce(run, "expr", "tiny", seed=1)

    def other_lr(d_in: int) -> SweepGrid:  # the grid is code: a change of it is one too
        grid = tiny_grid(d_in)
        return SweepGrid(grid.name, [dataclasses.replace(c, config=dataclasses.replace(c.config, lr=3e-3)) for c in grid.cells])

    with pytest.raises(OutputError, match=r"settings\.grid\.cells\.0\.config\.lr \(0\.01 -> 0\.003\)"):
        reproduce(run, "expr", TINY.with_overrides(grid=other_lr))


def _tiny_paper() -> Scale:
    """The paper scale shrunk to a test's size, keeping its structure: the paper's sequence format, its
    causal schedule, its stages."""
    paper = SCALES["paper"]
    return paper.with_overrides(
        name="paper-tiny",
        n_train=300,
        n_eval=40,
        preset="tiny",
        model_steps={"dyck2": 20, "expr": 20, "english": 20},
        grid=tiny_grid,
        sweep_eval=TINY.sweep_eval,
        analysis_sentences=30,
        analysis_seeds=2,
        control_saes=2,
        intervention_sentences=12,
        n_null=3,
        causal_base=dataclasses.replace(paper.causal_base, k=4, batch_size_tokens=128),
        causal=dataclasses.replace(paper.causal, pretrain_steps=2, steps=2, sentences_per_step=8),
        causal_seeds=2,
        validity_samples=4,
        validity_repeats=2,
    )


def _files(root) -> dict[str, object]:
    """Every file under ``root``: JSON files parsed, without timings; other files by their size class."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            rel = str(path.relative_to(root))
            out[rel] = _no_timings(json.loads(path.read_text())) if path.suffix == ".json" else None
    return out


def _no_timings(value):
    if isinstance(value, dict):
        return {k: _no_timings(v) for k, v in value.items() if "seconds" not in k and "per_second" not in k}
    if isinstance(value, list):
        return [_no_timings(v) for v in value]
    return value


def test_a_paper_scale_run_on_the_cpu_resumes_after_a_kill(tmp_path, monkeypatch, capsys):
    """Started, killed in its last stage (C4) and resumed: no finished stage runs again, and the run
    ends with the same files and the same JSON results (timings aside) as an uninterrupted one."""
    from formal_sae.reproduce import estimate

    scale = _tiny_paper()
    assert scale.prompt_format == "paper" and scale.causal.schedule == "linear"
    reference = reproduce(tmp_path / "whole", "expr", scale)
    printed = capsys.readouterr().out
    assert "estimated time of scale 'paper-tiny'" in printed and "total:" in printed

    class Killed(BaseException):  # like a KeyboardInterrupt: no stage catches it
        pass

    real_c4 = stages.c4_evidence

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(stages, "c4_evidence", killed)
    monkeypatch.setattr(estimate, "CPU_HOURS_BOUND", 0.0)  # so that the warning's path runs too
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="over 0 hours"), pytest.raises(Killed):
        reproduce(run, "expr", scale)
    work = in_progress_path(run)
    assert (work / "expr" / "model").is_dir() and (work / "expr" / "sweep").is_dir() and (work / "expr" / "c1_c3.json").is_file()
    assert not (work / "expr" / "c4.json").exists()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    for name in ("generate_dataset", "train_model", "sweep", "train_sae", "probe_features", "feature_interventions"):
        monkeypatch.setattr(stages, name, must_not_run)
    monkeypatch.setattr(stages, "c4_evidence", real_c4)
    with pytest.warns(UserWarning):
        resumed = reproduce(run, "expr", scale)
    assert not work.exists()
    as_json = [json.dumps({k: c.to_dict() for k, c in claims.items()}, sort_keys=True) for claims in (reference, resumed)]
    assert as_json[0] == as_json[1]
    whole, again = _files(tmp_path / "whole"), _files(run)
    assert sorted(whole) == sorted(again)
    for rel, parsed in whole.items():
        assert parsed == again[rel], rel


def test_a_scale_s_own_model_settings_win_over_the_stage_defaults(tmp_path):
    """The standard scale sets eval_every (and the plateau rule) itself; the stage's defaults must
    give way rather than collide (they did: "got multiple values for keyword argument")."""
    scale = TINY.with_overrides(model_train={"eval_every": 10, "plateau_patience": 2, "plateau_min_delta": 0.5})
    dataset = stages.language_data("expr", tmp_path, scale)
    _, metrics = stages.language_model("expr", tmp_path, dataset, scale)
    assert [h["step"] for h in metrics["history"] if h.get("val_loss") is not None][:2] == [10, 20]


def test_the_analysed_sae_is_the_best_sparse_topk_cell_not_the_densest():
    def row(cell, k, validity, ev=0.99, variant="none"):
        return {"cell_id": cell, "k": k, "validity": validity, "explained_variance": ev, "l0": float(k), "variant": variant}

    rows = [
        row("k128", 128, 1.0),
        row("k64", 64, 1.0),
        row("k16", 16, 0.92),
        row("k8", 8, 0.57),
        row("k16-input", 16, 0.99, variant="input"),
    ]
    assert stages.choose_analysed(rows)["cell_id"] == "k16"
    assert stages.choose_analysed([row("k128", 128, 1.0)]) is None  # no sparse cell: nothing analysed

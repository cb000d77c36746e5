"""Experiment logging to W&B (offline: the local run files are checked) and the plots of issue #20."""

from __future__ import annotations

import glob
import json
import math
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import formal_sae
from formal_sae.saes.config import SAETrainConfig


# ----------------------------------------------------------------------------- W&B run files
def wandb_records(run_file: Path):
    """The protobuf records of a ``.wandb`` file (wandb 0.31 writes them in the LevelDB log format:
    a 7-byte header, then 32 KiB blocks of chunks with a 7-byte header each; no Python reader ships)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def finished_records(path: Path, timeout: float = 15.0) -> list:
    """The records of a run file once its ``exit`` record is there: W&B's service process writes
    the file and may still be writing it when ``run.finish()`` has returned."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = list(wandb_records(path))
        except Exception:  # a record half written
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def wandb_run_files(root: Path) -> list[dict]:
    """Every offline run under ``root``: its config, history rows and final summary."""
    runs = []
    for path in sorted(glob.glob(str(root / "wandb" / "offline-run-*" / "run-*.wandb"))):
        run = {"config": {}, "history": [], "summary": {}, "artifacts": []}
        for r in finished_records(Path(path)):
            kind = r.WhichOneof("record_type")
            if kind == "history":
                run["history"].append({("/".join(i.nested_key) or i.key): json.loads(i.value_json) for i in r.history.item})
            elif kind == "summary":
                run["summary"].update({("/".join(i.nested_key) or i.key): json.loads(i.value_json) for i in r.summary.update})
            elif kind == "config":
                run["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
            elif kind == "run":
                run["name"] = r.run.display_name
                run["project"] = r.run.project
                run["config"].update({i.key: json.loads(i.value_json) for i in r.run.config.update})
            elif kind == "artifact":
                run["artifacts"].append(r.artifact.name)
        runs.append(run)
    return runs


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B in offline mode writing under ``tmp_path`` (no network, nothing in the home folder)."""
    for var, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
        "WANDB_DATA_DIR": str(tmp_path / "data"),
        "WANDB_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "config"),
        "WANDB_CONSOLE": "off",
    }.items():
        monkeypatch.setenv(var, value)
    import wandb

    wandb.teardown()  # W&B reads its settings once per process: forget the previous test's directory
    yield tmp_path
    wandb.teardown()


TINY_TRAIN = {"steps": 8, "eval_every": 4, "validity_samples": 4, "final_validity_repeats": 2, "checkpoint_every": 4}


def test_lm_training_logs_curve_and_final_metrics_to_wandb(ds, offline_wandb, tmp_path):
    train = formal_sae.TrainConfig(**TINY_TRAIN)
    plain = formal_sae.train_model(ds, "tiny", train, progress=False, out_dir=tmp_path / "plain")
    logged = formal_sae.train_model(
        ds, "tiny", formal_sae.TrainConfig(**TINY_TRAIN), progress=False, out_dir=tmp_path / "lm", wandb_project="fsae-test"
    )
    # logging changes no result, and nothing about it is saved in the run's configuration
    for a, b in zip(plain.parameters(), logged.parameters(), strict=True):
        assert torch.equal(a, b)
    saved = (tmp_path / "lm" / "train_config.json").read_text() + (tmp_path / "lm" / "formal_sae_artifact.json").read_text()
    assert "wandb" not in saved and "fsae-test" not in saved

    (run,) = wandb_run_files(offline_wandb)
    assert run["project"] == "fsae-test" and run["name"] == "lm"
    assert run["config"]["train"]["steps"] == 8 and run["config"]["model"]["preset"] == "tiny"
    history = logged.formal_sae_metrics.history
    rows = [h for h in run["history"] if "val/loss" in h]
    assert [h["_step"] for h in rows] == [h["step"] for h in history] == [4, 8]
    for row, h in zip(rows, history, strict=True):
        assert row["train/loss"] == pytest.approx(h["train_loss"])
        assert row["val/loss"] == pytest.approx(h["val_loss"])
        assert row["val/validity"] == pytest.approx(h["validity"])
        assert row["train/lr"] == pytest.approx(h["lr"])
    m = logged.formal_sae_metrics
    assert run["summary"]["validity"] == pytest.approx(m.validity)
    assert run["summary"]["validity_std"] == pytest.approx(m.validity_std)
    assert run["summary"]["val_loss"] == pytest.approx(m.val_loss)


def test_lm_training_without_project_starts_no_wandb_run(ds, offline_wandb):
    formal_sae.train_model(ds, "tiny", formal_sae.TrainConfig(**TINY_TRAIN), progress=False)
    assert wandb_run_files(offline_wandb) == []


def test_sae_training_logs_through_saelens_logger(model, ds, offline_wandb, tmp_path):
    config = SAETrainConfig(architecture="topk", k=4, expansion_factor=2, training_tokens=2560, batch_size_tokens=128)
    sae = formal_sae.train_sae(model, ds, config, out_dir=tmp_path / "sae", wandb_project="fsae-saes")
    assert sae.cfg.d_sae == 2 * model.cfg.d_model
    assert "wandb" not in (tmp_path / "sae" / formal_sae.saes.training.TRAIN_CONFIG_FILE).read_text()

    (run,) = wandb_run_files(offline_wandb)
    assert run["project"] == "fsae-saes" and run["name"] == "sae"
    assert run["config"]["architecture"] == "topk" and run["config"]["k"] == 4
    steps = [h for h in run["history"] if "metrics/l0" in h]  # SAELens logs every 10 of the 20 steps
    assert [h["_step"] for h in steps] == [9, 19]
    for h in steps:
        assert h["metrics/l0"] == pytest.approx(4.0)
        assert math.isfinite(h["metrics/explained_variance"]) and h["metrics/explained_variance"] <= 1
        assert math.isfinite(h["losses/overall_loss"]) and h["details/current_learning_rate"] == pytest.approx(config.lr)
    assert "metrics/explained_variance" in run["summary"]
    assert run["artifacts"]  # SAELens's config + sparsity artifacts at formal-sae's checkpoints


def test_train_sae_cli_puts_test_metrics_in_the_same_wandb_run(model, ds, offline_wandb, tmp_path):
    from formal_sae.cli import main

    formal_sae.save_model(model, tmp_path / "model")
    ds.save_to_disk(str(tmp_path / "data"))
    args = ["train-sae", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "s")]
    args += [
        "--architecture",
        "topk",
        "--k",
        "4",
        "--expansion-factor",
        "2",
        "--training-tokens",
        "1280",
        "--batch-size-tokens",
        "128",
    ]
    args += ["--n-samples", "4", "--repeats", "1", "--wandb", "fsae-cli"]
    main(args)
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    (run,) = wandb_run_files(offline_wandb)
    assert run["project"] == "fsae-cli"
    assert run["summary"]["test/explained_variance"] == pytest.approx(metrics["explained_variance"])
    assert run["summary"]["test/validity"] == pytest.approx(metrics["validity"])
    assert any("metrics/l0" in h for h in run["history"])  # SAELens's logger wrote into the same run
    # the latent density histogram lies next to metrics.json
    assert (tmp_path / "s" / formal_sae.saes.evaluation.DENSITY_PNG).stat().st_size > 0


ONE_CELL_GRID = {
    "name": "one",
    "base": {"architecture": "topk", "expansion_factor": 2, "training_tokens": 512, "batch_size_tokens": 128},
    "cells": [{"id": "k4", "k": 4}],
}


def _no_training(*args, **kwargs):
    raise AssertionError("nothing may train before the W&B settings are checked")


@pytest.mark.parametrize("project", ["me/fsae", "", "fsae?", "a:b", "x" * 129, 3])
def test_the_sweep_refuses_a_bad_wandb_project_before_training(model, ds, tmp_path, monkeypatch, project):
    from formal_sae.saes.sweep import cells

    monkeypatch.setattr(cells, "train_sae", _no_training)
    with pytest.raises(formal_sae.FormalSAEError, match="W&B project"):
        formal_sae.sweep(model, ds, ONE_CELL_GRID, tmp_path / "sw", progress=False, wandb_project=project)
    assert not list(tmp_path.iterdir())


def test_without_wandb_a_sweep_that_logs_is_refused_before_training(model, ds, tmp_path, monkeypatch):
    import sys

    from formal_sae.saes.sweep import cells, results

    monkeypatch.setattr(cells, "train_sae", _no_training)
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError, as where it is missing
    with pytest.raises(formal_sae.FormalSAEError, match="needs the wandb package"):
        formal_sae.sweep(model, ds, ONE_CELL_GRID, tmp_path / "sw", progress=False, wandb_project="fsae")
    assert not list(tmp_path.iterdir())
    with pytest.raises(formal_sae.FormalSAEError, match="needs the wandb package"):  # tracking's helper, not a bare import
        results.log_sweep(sweep_rows(), tmp_path / "sw", "fsae")


def _refused_init(*args, **kwargs):
    import wandb

    raise wandb.errors.UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])")


def test_a_wandb_run_that_cannot_start_is_a_one_line_error(model, ds, offline_wandb, tmp_path, monkeypatch, capsys):
    import wandb

    from formal_sae.cli import main
    from formal_sae.saes.sweep import results
    from formal_sae.tracking import wandb_run

    monkeypatch.setattr(wandb, "init", _refused_init)
    with pytest.raises(formal_sae.FormalSAEError) as refused, wandb_run("fsae"):
        pass
    message = str(refused.value)
    assert "\n" not in message and "api_key not configured" in message
    assert "run `wandb login`" in message and "WANDB_MODE=offline" in message
    with pytest.raises(formal_sae.FormalSAEError, match="wandb login"):
        results.log_sweep(sweep_rows(), tmp_path / "sw", "fsae")
    formal_sae.save_model(model, tmp_path / "model")
    ds.save_to_disk(str(tmp_path / "data"))
    args = ["train-sae", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "s")]
    capsys.readouterr()  # the datasets library's progress bars
    assert main([*args, "--architecture", "topk", "--k", "4", "--wandb", "fsae"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("formal-sae train-sae: error: ") and "wandb login" in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- plots
def test_number_never_prints_nan():
    assert formal_sae.number(float("nan")) == formal_sae.MISSING
    assert formal_sae.number(np.float32("nan")) == formal_sae.MISSING
    assert formal_sae.number(np.float64(0.12345)) == "0.123"


def test_evaluate_sae_firing_rates_give_the_density_histogram(model, ds, identity_sae, tmp_path):
    from formal_sae.saes.evaluation import write_latent_density

    sae = identity_sae(model.cfg.d_model, "blocks.0.hook_resid_post")
    m = formal_sae.evaluate_sae(model, sae, ds, validity=False, max_sentences=10)
    rates = m.firing_rates
    assert rates.shape == (sae.cfg.d_sae,)
    assert rates.sum() == pytest.approx(m.l0)  # the per-latent rates and L0 are one computation
    assert (rates == 0).mean() == pytest.approx(m.dead_fraction)
    assert "firing_rates" not in m.to_dict() and "firing_rates" not in dict(m)  # metrics.json stays small
    write_latent_density(m, tmp_path / "density.png")
    assert (tmp_path / "density.png").stat().st_size > 0


def test_latent_density_counts_dead_latents_apart(tmp_path):
    from formal_sae.plotting import latent_density, plot_latent_density

    logs, dead = latent_density([0.0, 0.1, 0.001, 0.0, 1.0])
    assert dead == 2 and logs.tolist() == pytest.approx([-1.0, -3.0, 0.0])
    plot_latent_density([0.0, 0.0], tmp_path / "all_dead.png", "all dead")  # no live latent: still a figure
    assert (tmp_path / "all_dead.png").stat().st_size > 0


def sweep_rows():
    base = {"expansion_factor": 2, "dead_fraction": 0.0}
    return [
        {**base, "cell_id": "a", "sparsity": "topk", "variant": "none", "l0": 4.0, "explained_variance": 0.5,
         "validity": 0.8, "validity_std": 0.05},
        {**base, "cell_id": "b", "sparsity": "topk", "variant": "none", "l0": 8.0, "explained_variance": 0.7,
         "validity": 0.9, "validity_std": 0.02},
        {**base, "cell_id": "c", "sparsity": "l1", "variant": "input", "l0": 20.0, "explained_variance": 0.9,
         "validity": None, "validity_std": None},
        {**base, "cell_id": "d", "sparsity": "l1", "variant": "input", "l0": float("nan"), "explained_variance": 0.1},
    ]  # fmt: skip


def test_sweep_tradeoff_plots_and_markdown(tmp_path):
    from formal_sae.saes.sweep import results

    rows = sweep_rows()
    ev = results.tradeoff_points(rows, "explained_variance")
    assert [(p["l0"], p["group"]) for p in ev] == [
        (4.0, "topk / none / x2"),
        (8.0, "topk / none / x2"),
        (20.0, "l1 / input / x2"),
    ]
    validity = results.tradeoff_points(rows, "validity")
    assert [(p["l0"], p["validity"], p["y_err"]) for p in validity] == [(4.0, 0.8, 0.05), (8.0, 0.9, 0.02)]
    paths = results.write_tradeoff_plots(tmp_path / "tradeoffs", rows)
    assert [p.name for p in paths] == ["l0_vs_explained_variance.png", "l0_vs_validity.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    manifest = {"model": {"name": "m", "fingerprint": "0" * 64}, "dataset": {"grammar": "expr", "seed": 0}, "evaluation": None}
    rows_md = [{**r, "sparsity_value": 1, "train_seconds": None} for r in rows]
    md = results.results_markdown(rows_md, _Grid(), manifest, (), [p.relative_to(tmp_path) for p in paths])
    assert "## Sparsity trade-offs" in md and "(tradeoffs/l0_vs_validity.png)" in md
    assert "nan" not in md.lower()


class _Grid:
    name = "g"

    def __len__(self) -> int:
        return 4


def test_sweep_logged_to_wandb_as_one_run_with_a_table(offline_wandb, tmp_path):
    from formal_sae.saes.sweep import results

    rows = sweep_rows()
    results.write_tradeoff_plots(tmp_path / "sw" / results.TRADEOFF_DIR, rows)
    results.log_sweep(rows, tmp_path / "sw", "fsae-sweep")
    (run,) = wandb_run_files(offline_wandb)
    assert run["project"] == "fsae-sweep" and run["name"] == "sw" and run["summary"]["n_cells"] == 4
    (logged,) = [h for h in run["history"] if "results/_type" in h]  # nested values come flattened
    assert logged["results/_type"] == "table-file" and logged["results/nrows"] == 4
    assert logged["plots/l0_vs_validity/_type"] == "image-file"
    (files,) = (offline_wandb / "wandb").glob("offline-run-*/files")
    table = json.loads((files / logged["results/path"]).read_text())
    assert [row[table["columns"].index("cell_id")] for row in table["data"]] == ["a", "b", "c", "d"]
    results.log_sweep(rows, tmp_path / "sw", None)  # no project: no run
    assert len(wandb_run_files(offline_wandb)) == 1


def test_the_sweep_api_logs_the_finished_sweep_when_given_a_project(offline_wandb, model, ds, tmp_path):
    grid = {
        "name": "one",
        "base": {"architecture": "topk", "expansion_factor": 2, "training_tokens": 512, "batch_size_tokens": 128},
        "cells": [{"id": "k4", "k": 4}],
    }
    evaluation = {"n_samples": 4, "repeats": 1, "max_sentences": 10}
    rows = formal_sae.sweep(model, ds, grid, tmp_path / "sw", evaluation=evaluation, progress=False, wandb_project="fsae-api")
    (run,) = wandb_run_files(offline_wandb)
    assert run["project"] == "fsae-api" and run["name"] == "sw" and run["summary"]["n_cells"] == len(rows) == 1
    formal_sae.sweep(model, ds, grid, tmp_path / "quiet", evaluation=evaluation, progress=False)
    assert len(wandb_run_files(offline_wandb)) == 1  # no project: no run


def test_comparison_bars_have_error_bars_where_repeats_exist(tmp_path):
    comparison = formal_sae.SAEComparison(
        [
            {"name": "plain", "validity": 0.8, "validity_std": 0.1, "causal_loss": 0.5, "explained_variance": 0.9},
            {"name": "causal", "validity": 0.6, "validity_std": 0.05, "causal_loss": None, "explained_variance": 0.8},
        ]
    )
    assert comparison.bars("validity") == ([0.8, 0.6], [0.1, 0.05])
    heights, errors = comparison.bars("causal_loss")
    assert heights[0] == 0.5 and math.isnan(heights[1]) and errors is None  # not measured: no zero bar
    comparison.plot(tmp_path / "comparison.png")
    assert (tmp_path / "comparison.png").stat().st_size > 0
    assert "nan" not in comparison.to_markdown().lower()


def fake_report():
    """A hand-built analysis report: sentence [3, 4] occurs three times, and is the most active."""
    from types import SimpleNamespace

    sentences = [[3, 4], [3, 4], [5, 3, 4], [3, 4], [6]]
    rows = np.repeat(np.arange(len(sentences)), [len(s) for s in sentences])
    positions = np.concatenate([np.arange(len(s)) for s in sentences])
    token_ids = np.concatenate([np.array(s) for s in sentences])
    acts = np.where(np.isin(rows, [0, 1, 3]), 2.0, 1.0) * (token_ids == 4)
    aligned = SimpleNamespace(rows=rows, positions=positions, token_ids=token_ids, latent=lambda j: acts,
                              features={"depth": positions})  # fmt: skip
    names = ["depth", "a_rather_long_feature_name_that_used_to_be_clipped"]
    return SimpleNamespace(
        aligned=aligned,
        token_names={3: "(", 4: ")", 5: "x", 6: "y"},
        targets={n: {"best_latent": 0} for n in names},
        target_names=names,
        correlations=np.array([[0.9, -0.3]]),
        summary={"grammar": "dyck"},
    )


def test_example_sentences_are_deduplicated():
    from formal_sae.analysis import plots

    report = fake_report()
    ranked = [0, 1, 3, 2, 4]
    assert plots.distinct_sentences(report.aligned, ranked, 10) == [0, 2, 4]
    assert plots.distinct_sentences(report.aligned, ranked, 2) == [0, 2]
    html_page = plots.top_activations_html(report, [0], n_sentences=10)
    assert html_page.count("<div class='s'>") == 3  # [3 4] once, [5 3 4], [6]
    assert "nan" not in html_page


def test_depth_heatmap_and_correlations_are_written(tmp_path):
    from formal_sae.analysis import plots

    report = fake_report()
    plots.depth_heatmap(report, 0, tmp_path / "depth.png", n_sentences=3)
    plots.correlation_heatmap(report, tmp_path / "corr.png")
    assert (tmp_path / "depth.png").stat().st_size > 0 and (tmp_path / "corr.png").stat().st_size > 0


def test_causal_report_markdown_prints_no_nan():
    from formal_sae.analysis.causal_report import CausalReport, CausalSummary

    summary = CausalSummary(grammar="expr", hook_name="h", d_sae=4, n_live=2, median_effect=0.01,
                            n_correlated_not_causal=0, n_causal_not_correlated=0, rank_agreement=float("nan"))  # fmt: skip
    md = CausalReport(targets={}, latents=[], summary=summary).to_markdown()
    assert "nan" not in md.lower() and formal_sae.MISSING in md

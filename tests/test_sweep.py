"""SAE sweeps: grids, the paper grid's size, shared activations, resume, outputs (tiny and fast)."""

import json
import os

import pytest
import torch
from sae_lens import SAE
from safetensors.torch import load_file
from sweep_helpers import interrupt_sweep, untrained_expr_model

import formal_sae
from formal_sae.cli import main
from formal_sae.errors import OutputError, SAEError
from formal_sae.outputs import in_progress_path
from formal_sae.saes import training as training_mod
from formal_sae.saes.sweep import SweepGrid, load_grid, paper_grid, sweep
from formal_sae.saes.sweep import cells as cells_mod

POST, MID = "blocks.0.hook_resid_post", "blocks.0.hook_resid_mid"
EVAL = {"n_samples": 4, "repeats": 1, "max_sentences": 16, "batch_size": 16}
TINY_GRID = {
    "name": "tiny",
    "base": {"architecture": "paper", "training_tokens": 256, "batch_size_tokens": 64, "lr": 1e-3, "expansion_factor": 2},
    "axes": {"hook_name": [POST, MID], "k": [4, 8]},
}


@pytest.fixture(scope="module")
def setup():
    return untrained_expr_model()


class Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.fn(*args, **kwargs)


@pytest.fixture(scope="module")
def swept(setup, tmp_path_factory):
    """The tiny grid swept once, counting LM activation passes and SAE trainings."""
    model, ds = setup
    out = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        collect = Counter(training_mod.collect_activations)
        train = Counter(cells_mod.train_sae)
        mp.setattr(training_mod, "collect_activations", collect)
        mp.setattr(cells_mod, "train_sae", train)
        rows = sweep(model, ds, TINY_GRID, out, evaluation=EVAL, progress=False)
    return out, rows, collect, train


def test_grid_from_dict_is_the_cartesian_product_with_stable_ids(tmp_path):
    grid = SweepGrid.from_dict(
        {
            "name": "g",
            "base": {"training_tokens": 1000},
            "axes": {"architecture": ["topk", "paper"], "k": [8, 16], "expansion_factor": [2, 4]},
            "exclude": [{"architecture": "paper", "k": 16}],
        }
    )
    assert len(grid) == 2 * 2 * 2 - 2
    assert grid.ids[:4] == ["topk-k8-x2", "topk-k8-x4", "topk-k16-x2", "topk-k16-x4"]
    assert "paper-k16-x2" not in grid.ids
    cell = grid["paper-k8-x4"]
    assert (cell.config.architecture, cell.config.k, cell.config.expansion_factor, cell.config.training_tokens) == (
        "paper",
        8,
        4,
        1000,
    )
    # round trip through JSON, and loading from a file
    again = SweepGrid.from_dict(json.loads(json.dumps(grid.to_dict())))
    assert again == grid
    grid.save(tmp_path / "g.json")
    assert load_grid(tmp_path / "g.json") == grid
    assert SweepGrid.from_dict({"name": "l1", "axes": {"architecture": ["standard"], "l1_coefficient": [0.1]}}).ids == [
        "standard-a0.1"
    ]
    with pytest.raises(SAEError, match="not SAETrainConfig fields"):
        SweepGrid.from_dict({"name": "bad", "axes": {"kk": [1]}})
    with pytest.raises(SAEError, match="unique"):
        SweepGrid.from_dict({"name": "dup", "cells": [{"id": "a", "k": 8}, {"id": "a", "k": 16}]})
    with pytest.raises(SAEError, match=r"cell 'k8-a0\.1'"):  # TopK and L1 together
        SweepGrid.from_dict({"name": "both", "base": {"architecture": "paper"}, "axes": {"k": [8], "l1_coefficient": [0.1]}})
    with pytest.raises(SAEError, match="unknown grid"):
        load_grid("no-such-grid")


def test_paper_grid_cell_counts_match_the_paper():
    # per variant: L1 = 4 expansion factors x 6 alphas = 24; TopK = k in {8..128} with k <= d_in * x
    per_variant = {128: 24 + 5 * 4, 64: 24 + 4 + 5 * 3, 32: 24 + 3 + 4 + 5 + 5}
    for d_in, n in per_variant.items():
        assert len(paper_grid("small", d_in=d_in)) == 4 * n
    assert len(paper_grid("paper")) == 176  # the paper's 44 SAEs per variant, x 4 variants
    grid = paper_grid("small", d_in=64, variants=["none"], sparsity=["topk"])
    assert len(grid) == 19 and "topk-k128-x1-none" not in grid.ids and "topk-k128-x2-none" in grid.ids
    assert "topk-k128-x1-none" in paper_grid("paper").ids  # k = d_sae at d_in 128: kept, as in the paper
    l1 = paper_grid("paper")["l1-a0.01-x2-prebias+input+dec"].config
    assert (l1.architecture, l1.l1_coefficient, l1.k, l1.expansion_factor) == ("paper", 0.01, None, 2)
    assert l1.pre_bias and l1.normalize_input and l1.normalize_decoder and not l1.normalize_recon
    assert (l1.lr, l1.training_tokens, l1.batch_size_tokens) == (1e-5, 5000 * 1024, 1024)
    small = paper_grid("small")
    assert small.name == "paper-small" and small.cells[0].config.lr == 1e-4  # steps x lr as the paper's
    assert small.cells[0].config.batch_size_tokens == 1024  # alpha is summed over the batch: same batch size
    assert load_grid("paper-small", d_in=64) == paper_grid("small", d_in=64)
    assert load_grid("paper", scale="small", d_in=64) == paper_grid("small", d_in=64)
    with pytest.raises(SAEError, match="unknown paper variant"):
        paper_grid(variants=["dec"])  # "recon" exists: the sparsemax sweep 1iii uses it


def test_sweep_writes_results_heatmaps_and_loadable_saes(swept):
    out, rows, _, train = swept
    grid = SweepGrid.from_dict(TINY_GRID)
    assert [r["cell_id"] for r in rows] == grid.ids and len(train.calls) == 4
    for name in ("grid.json", "results.csv", "results.json", "results.md"):
        assert (out / name).is_file()
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(rows))
    csv_lines = (out / "results.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + 4 and csv_lines[0].startswith("cell_id,")
    md = (out / "results.md").read_text()
    assert all(f"`{cid}`" in md for cid in grid.ids)
    for cell in grid.cells:
        d = out / "cells" / cell.id
        record = json.loads((d / "metrics.json").read_text())
        assert record["config"] == cell.config.to_dict() and record["train_seconds"] > 0
        assert 0.0 <= record["metrics"]["validity"] <= 1.0
        assert (d / "latent_density.png").stat().st_size > 0  # beside each evaluated SAE
        sae = SAE.load_from_disk(str(d))
        assert sae.cfg.metadata.hook_name == cell.config.hook_name and sae.cfg.d_sae == 2 * 32
    row = rows[0]
    assert (row["sparsity"], row["sparsity_value"], row["variant"], row["expansion_factor"]) == ("topk", 4, "none", 2)
    assert {"validity", "explained_variance", "l0", "ce_loss_score", "train_seconds"} <= set(row)
    pngs = sorted((out / "heatmaps").glob("*.png"))
    assert len(pngs) == 2  # one per hook (TopK, variant none)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_activations_are_computed_once_per_hook(swept):
    _, _, collect, train = swept
    hooks = sorted(call[0][2] if len(call[0]) > 2 else call[1]["hook_name"] for call in collect.calls)
    assert hooks == [MID, POST]
    assert all(call[1]["activations"] is not None for call in train.calls)  # every cell trained on the shared cache


def test_resume_skips_finished_cells_and_gives_the_same_results(setup, swept, tmp_path, monkeypatch):
    model, ds = setup
    out, rows, _, _ = swept
    with pytest.raises(OutputError, match="already exists and holds a formal-sae sweep; pass overwrite=True"):
        sweep(model, ds, TINY_GRID, out, evaluation=EVAL, progress=False)
    again_dir = tmp_path / "again"
    interrupt_sweep(model, ds, TINY_GRID, again_dir, after=2, evaluation=EVAL)
    train = Counter(cells_mod.train_sae)
    monkeypatch.setattr(cells_mod, "train_sae", train)
    again = sweep(model, ds, TINY_GRID, again_dir, evaluation=EVAL, progress=False)
    assert len(train.calls) == 2  # the two cells the interrupted run had not finished
    assert [without_timings(r) for r in again] == [without_timings(r) for r in rows]
    assert not in_progress_path(again_dir).exists()


def test_a_different_grid_or_evaluation_is_refused_when_resuming(setup, tmp_path, monkeypatch):
    model, ds = setup
    out = tmp_path / "sweep"
    interrupt_sweep(model, ds, TINY_GRID, out, after=1, evaluation=EVAL)
    train = Counter(cells_mod.train_sae)
    monkeypatch.setattr(cells_mod, "train_sae", train)
    other = {**TINY_GRID, "axes": {"hook_name": [POST], "k": [4, 16]}}
    with pytest.raises(SAEError, match=r"holds a different sweep.*cells only here: .*k16.*pass overwrite=True"):
        sweep(model, ds, other, out, evaluation=EVAL, progress=False)
    with pytest.raises(SAEError, match="evaluation settings"):
        sweep(model, ds, TINY_GRID, out, evaluation={**EVAL, "n_samples": 8}, progress=False)
    assert train.calls == []
    rows = sweep(model, ds, other, out, evaluation=EVAL, progress=False, overwrite=True)  # discards it
    assert [r["k"] for r in rows] == [4, 16] and len(train.calls) == 2


def test_sweep_without_evaluation_and_bad_cells_fail_before_training(setup, tmp_path):
    model, ds = setup
    grid = {**TINY_GRID, "axes": {"k": [4]}}
    rows = sweep(model, ds, grid, tmp_path / "train-only", evaluate=False, progress=False)
    assert len(rows) == 1 and rows[0]["eval_seconds"] is None and "validity" not in rows[0]
    assert not (tmp_path / "train-only" / "heatmaps").exists() or not list((tmp_path / "train-only" / "heatmaps").iterdir())
    with pytest.raises(SAEError, match=r"(?s)cannot be trained on this model.*k=128"):
        sweep(model, ds, {**TINY_GRID, "axes": {"k": [4, 128]}}, tmp_path / "bad", evaluate=False, progress=False)
    assert not (tmp_path / "bad").exists()


def without_timings(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("train_seconds", "train_wall_seconds", "eval_seconds")}


def _saved_state(cell_dir):
    return load_file(cell_dir / "sae_weights.safetensors")


def test_workers_train_the_same_saes_as_one_process_on_one_thread(setup, tmp_path, monkeypatch):
    """Forked workers (one torch thread each) give bitwise the SAEs and metrics that one process on
    one thread gives; the parent trains none of them."""
    model, ds = setup
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = sweep(model, ds, TINY_GRID, tmp_path / "here", evaluation=EVAL, progress=False, plots=False)
    finally:
        torch.set_num_threads(threads)
    train = Counter(cells_mod.train_sae)
    monkeypatch.setattr(cells_mod, "train_sae", train)
    forked = sweep(model, ds, TINY_GRID, tmp_path / "forked", evaluation=EVAL, progress=False, plots=False, workers=2)
    assert train.calls == []  # every cell ran in a worker process
    assert [without_timings(r) for r in forked] == [without_timings(r) for r in here]
    for row in here:
        a, b = (_saved_state(tmp_path / run / "cells" / row["cell_id"]) for run in ("here", "forked"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # resuming with a single cell left runs it in a worker too: still the same SAE
    monkeypatch.undo()
    torch.set_num_threads(1)
    try:
        interrupt_sweep(model, ds, TINY_GRID, tmp_path / "resumed", after=3, evaluation=EVAL, plots=False)
    finally:
        torch.set_num_threads(threads)
    train = Counter(cells_mod.train_sae)
    monkeypatch.setattr(cells_mod, "train_sae", train)
    again = sweep(model, ds, TINY_GRID, tmp_path / "resumed", evaluation=EVAL, progress=False, plots=False, workers=2)
    assert train.calls == [] and [without_timings(r) for r in again] == [without_timings(r) for r in here]
    a, b = (_saved_state(tmp_path / run / "cells" / here[3]["cell_id"]) for run in ("here", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_worker_counts_are_refused_before_training(setup, tmp_path):
    model, ds = setup
    for workers in (0, -1, 1.5, True):
        with pytest.raises(SAEError, match="workers must be an integer >= 1"):
            sweep(model, ds, TINY_GRID, tmp_path / "bad", evaluate=False, progress=False, workers=workers)
    gpu_grid = {**TINY_GRID, "base": {**TINY_GRID["base"], "device": "cuda"}}
    with pytest.raises(SAEError, match="use workers=1 on a GPU"):
        sweep(model, ds, gpu_grid, tmp_path / "bad", evaluate=False, progress=False, workers=2)
    assert not (tmp_path / "bad").exists()


def _exit_at_once(*args, **kwargs):
    os._exit(3)


def _fail_with_where(*args, **kwargs):
    raise SAEError(f"boom in process {os.getpid()} on {torch.get_num_threads()} thread(s)")


def test_a_failing_or_dying_worker_is_reported(setup, tmp_path, monkeypatch):
    model, ds = setup
    grid = {**TINY_GRID, "axes": {"k": [4, 8]}}
    monkeypatch.setattr(cells_mod, "_run_cell", _fail_with_where)  # forked workers inherit the patch
    with pytest.raises(SAEError, match=r"boom in process \d+ on 1 thread\(s\)") as failed:
        sweep(model, ds, grid, tmp_path / "fails", evaluate=False, progress=False, workers=2)
    assert f"process {os.getpid()} " not in str(failed.value)  # raised in a worker, not here
    monkeypatch.setattr(cells_mod, "_run_cell", _exit_at_once)
    with pytest.raises(SAEError, match=r"a worker process died .* running .*run again to resume, with fewer workers"):
        sweep(model, ds, grid, tmp_path / "dies", evaluate=False, progress=False, workers=2)


def test_cli_sweep_with_workers_writes_every_cell_and_refuses_bad_workers(setup, tmp_path, capsys):
    model, ds = setup
    model_dir, data_dir, grid_file = tmp_path / "model", tmp_path / "data", tmp_path / "grid.json"
    formal_sae.save_model(model, model_dir)
    formal_sae.save_dataset(ds, data_dir)
    grid_file.write_text(json.dumps(TINY_GRID))
    common = ["sweep", "--grid", str(grid_file), "--model", str(model_dir), "--data", str(data_dir)]
    evaluation = ["--n-samples", "4", "--repeats", "1", "--max-sentences", "16"]
    assert main([*common, "--out", str(tmp_path / "out"), *evaluation, "--workers", "2"]) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["cell_id"] for r in rows] == [c.id for c in SweepGrid.from_dict(TINY_GRID).cells]
    assert all(0 <= r["validity"] <= 1 for r in rows)
    assert "wrote" in capsys.readouterr().out
    assert main([*common, "--out", str(tmp_path / "bad"), *evaluation, "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("formal-sae sweep: error: ") and "workers must be an integer >= 1" in err
    assert not (tmp_path / "bad").exists()


def test_load_grid_puts_every_cell_on_the_device():
    on_cpu = load_grid({**TINY_GRID, "base": {**TINY_GRID["base"], "device": "cuda:1"}}, device="cpu")
    assert {c.config.device for c in on_cpu.cells} == {"cpu"}
    for grid in (TINY_GRID, "paper-small"):
        plain, moved = load_grid(grid, d_in=16), load_grid(grid, d_in=16, device="cuda:1")
        assert moved.ids == plain.ids and {c.config.device for c in moved.cells} == {"cuda:1"}
        assert [c.config.to_dict() | {"device": "cpu"} for c in moved.cells] == [c.config.to_dict() for c in plain.cells]
    with pytest.raises(SAEError, match="device must be a device name"):
        load_grid(TINY_GRID, device="")


def test_cli_sweep_device_reaches_every_cell(setup, tmp_path, monkeypatch):
    """`formal-sae sweep --device D` trains every cell's SAE on D, not only the model (CUDA is not
    needed: the model is loaded on the CPU whatever the device, and the sweep is captured)."""
    model, ds = setup
    model_dir, data_dir, grid_file = tmp_path / "model", tmp_path / "data", tmp_path / "grid.json"
    formal_sae.save_model(model, model_dir)
    formal_sae.save_dataset(ds, data_dir)
    grid_file.write_text(json.dumps({**TINY_GRID, "base": {**TINY_GRID["base"], "device": "cuda"}}))
    load_model, swept = formal_sae.load_model, []
    monkeypatch.setattr(formal_sae, "load_model", lambda path, device: load_model(path, device="cpu"))
    monkeypatch.setattr(formal_sae, "sweep", lambda model, dataset, grid, out, **kwargs: swept.append(grid) or [])
    common = ["sweep", "--model", str(model_dir), "--data", str(data_dir), "--out", str(tmp_path / "out")]
    for grid, device in ((str(grid_file), "cuda:1"), (str(grid_file), "cpu"), ("paper-small", "cuda")):
        assert main([*common, "--grid", grid, "--device", device]) == 0
        assert {c.config.device for c in swept[-1].cells} == {device}, (grid, device)

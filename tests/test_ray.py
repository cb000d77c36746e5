"""Sweeps on a Ray cluster: a real local cluster (a head with 2 worker CPUs on 127.0.0.1) started by
a fixture, never a mock. The results must equal the local backend's bitwise, survive a SIGKILLed
worker, and resume across backends; bad clusters are refused before anything trains.

The cluster tests are slow (each fresh Ray worker imports formal-sae, ~5-10 s on 2 busy cores)
and stop every Ray process of the machine on teardown (``ray stop --force``), so they run in a
separate step, one process (``pytest -m slow tests/test_ray.py``), not in the xdist-parallel suite.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sweep_helpers import interrupt_sweep, untrained_expr_model

import formal_sae
from formal_sae.cli import main
from formal_sae.errors import SAEError
from formal_sae.outputs import in_progress_path
from formal_sae.saes.sweep import RayBackend, SweepGrid, ray_backend, sweep
from formal_sae.saes.sweep import cells as cells_mod
from formal_sae.saes.sweep import runner as sweep_mod
from formal_sae.saes.sweep.ray_backend import INCOMING, REPLACED, TASK_PREFIX, remove_incoming, store_cell
from formal_sae.saes.sweep.ray_cluster import local_cluster

POST, MID = "blocks.0.hook_resid_post", "blocks.0.hook_resid_mid"
EVAL = {"n_samples": 4, "repeats": 1, "max_sentences": 16, "batch_size": 16}
TINY_GRID = {
    "name": "tiny",
    "base": {"architecture": "paper", "training_tokens": 256, "batch_size_tokens": 64, "lr": 1e-3, "expansion_factor": 2},
    "axes": {"hook_name": [POST, MID], "k": [4, 8]},
}
#: Two cells long enough (a few seconds) for a worker to be killed in the middle of one.
LONG_GRID = {**TINY_GRID, "name": "long", "base": {**TINY_GRID["base"], "training_tokens": 60_000}, "axes": {"k": [4, 8]}}
TIMINGS = ("train_seconds", "train_wall_seconds", "eval_seconds")
#: Files whose content holds timings (everything else of a sweep must be byte for byte the same).
TIMED_FILES = ("metrics.json", "results.json", "results.csv", "results.md")

slow = pytest.mark.slow


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def setup():
    return untrained_expr_model()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster (head, 2 CPUs, loopback only), this process connected to it; stopped after."""
    if importlib.util.find_spec("ray") is None:  # not importorskip: ray must not be imported before local_cluster
        pytest.skip("ray is not installed")
    with local_cluster(2, tmp_path_factory.mktemp("ray-cwd")) as address:
        yield address


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """The sweeps of the local backend on one torch thread (the tests' setting, see conftest.py)."""
    model, ds = setup
    assert torch.get_num_threads() == 1
    root = tmp_path_factory.mktemp("local")
    tiny = sweep(model, ds, TINY_GRID, root / "tiny", evaluation=EVAL, progress=False, plots=False)
    long = sweep(model, ds, LONG_GRID, root / "long", evaluate=False, progress=False, plots=False)
    return {"tiny": (root / "tiny", tiny), "long": (root / "long", long)}


# ------------------------------------------------------------------------------ helpers
def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def assert_same_sweep(a: Path, b: Path) -> None:
    """The same files, byte for byte but for timings; metrics equal but for timings."""
    files_a = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    files_b = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for name in files_a:
        if Path(name).name == "metrics.json":
            ra, rb = (json.loads((d / name).read_text()) for d in (a, b))
            assert without_timings([ra]) == without_timings([rb]), name
        elif Path(name).name not in TIMED_FILES:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for cell in (a / "cells").iterdir():
        wa, wb = (load_file(d / "cells" / cell.name / "sae_weights.safetensors") for d in (a, b))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


class Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def cell_processes(cell_id: str = "") -> list[int]:
    """PIDs of Ray worker processes running a cell's task (titled ``ray::formal-sae-cell:<id>``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith(f"ray::{TASK_PREFIX}{cell_id}"):
                found.append(int(entry.name))
    return found


# ------------------------------------------------------------------------------ without a cluster
def test_without_ray_the_ray_backend_says_how_to_install_it(setup, tmp_path, monkeypatch):
    model, ds = setup
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is not installed
    for backend in ("ray", RayBackend(address="127.0.0.1:1")):
        with pytest.raises(SAEError, match=r"needs Ray.*pip install formal-sae\[ray\]"):
            sweep(model, ds, TINY_GRID, tmp_path / "out", evaluate=False, progress=False, backend=backend)
    assert not (tmp_path / "out").exists() and not in_progress_path(tmp_path / "out").exists()


def test_bad_backend_settings_are_refused_before_anything_runs(setup, tmp_path):
    model, ds = setup
    with pytest.raises(SAEError, match="backend must be one of 'local', 'ray'"):
        sweep(model, ds, TINY_GRID, tmp_path / "out", evaluate=False, progress=False, backend="spark")
    for kwargs, message in (
        ({"num_cpus": -1}, "num_cpus must be a number >= 0"),
        ({"num_cpus": 0, "num_gpus": 0}, "must ask for some resource"),
        ({"num_gpus": 1.5}, "whole number"),
        ({"max_retries": -2}, "max_retries must be an integer"),
        ({"address": ""}, "address must be None"),
    ):
        with pytest.raises(SAEError, match=message):
            RayBackend(**kwargs)
    pytest.importorskip("ray")
    with pytest.raises(SAEError, match="workers=2 applies to the local backend"):
        sweep(model, ds, TINY_GRID, tmp_path / "out", evaluate=False, progress=False, workers=2, backend="ray")
    assert main(["sweep", "--model", "m", "--data", "d", "--out", str(tmp_path / "o"), "--ray-num-cpus", "2"]) == 2
    assert not (tmp_path / "o").exists()


def test_store_cell_replaces_a_folder_it_cannot_delete_whole(tmp_path, monkeypatch):
    """An earlier attempt's folder that a delete leaves partly there (a file held open on a network
    filesystem, a permission) is renamed aside, hidden, not in the new folder's way."""
    cells = tmp_path / "cells"
    store_cell(cells, "k4", {"old.bin": b"old", "sub/sae.bin": b"1"})
    monkeypatch.setattr(ray_backend.shutil, "rmtree", lambda *args, **kwargs: None)  # deletes nothing, quietly
    final = store_cell(cells, "k4", {"sub/sae.bin": b"2", "metrics.json": b"{}"})
    assert final == cells / "k4"
    assert sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file()) == ["metrics.json", "sub/sae.bin"]
    assert (final / "sub" / "sae.bin").read_bytes() == b"2"
    (left,) = [p for p in cells.iterdir() if p.name != "k4"]  # the old folder, hidden, for the next run to delete
    assert left.name.startswith(f".k4{REPLACED}") and (left / "old.bin").read_bytes() == b"old"
    monkeypatch.undo()
    remove_incoming(cells)
    assert [p.name for p in cells.iterdir()] == ["k4"]


# ------------------------------------------------------------------------------ on a cluster
@slow
def test_ray_gives_the_local_backends_sweep_bitwise(setup, cluster, reference, tmp_path, monkeypatch):
    model, ds = setup
    local_dir, local_rows = reference["tiny"]
    train = Counter(cells_mod.train_sae)
    monkeypatch.setattr(cells_mod, "train_sae", train)
    rows = sweep(
        model, ds, TINY_GRID, tmp_path / "ray", evaluation=EVAL, progress=False, plots=False, backend=RayBackend(cluster)
    )
    assert train.calls == 0  # every cell ran in a Ray task; this process only wrote the files
    assert [r["cell_id"] for r in rows] == SweepGrid.from_dict(TINY_GRID).ids
    assert without_timings(rows) == without_timings(local_rows)
    assert_same_sweep(local_dir, tmp_path / "ray")
    assert not in_progress_path(tmp_path / "ray").exists()


@slow
def test_a_worker_killed_mid_cell_is_retried_and_nothing_changes(setup, cluster, reference, tmp_path):
    model, ds = setup
    local_dir, local_rows = reference["long"]
    killed: list[int] = []
    stop = threading.Event()

    def kill_a_worker_mid_cell() -> None:
        while not stop.is_set() and not killed:
            pids = cell_processes()
            if pids:
                time.sleep(0.3)  # into the cell (its model and cache loaded, training started)
                if pids[0] in cell_processes():  # still running a cell: kill it there
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pids[0], signal.SIGKILL)
                        killed.append(pids[0])
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_worker_mid_cell, daemon=True)
    killer.start()
    try:
        rows = sweep(
            model, ds, LONG_GRID, tmp_path / "ray", evaluate=False, progress=False, plots=False, backend=RayBackend(cluster)
        )
    finally:
        stop.set()
        killer.join()
    assert killed, "no cell's worker process was found to kill"
    assert without_timings(rows) == without_timings(local_rows)
    assert_same_sweep(local_dir, tmp_path / "ray")
    assert not list((tmp_path / "ray" / "cells").glob(f".*{INCOMING}*"))


@slow
def test_a_failing_cell_stops_the_sweep_keeping_every_finished_cell(setup, cluster, tmp_path, monkeypatch):
    """As the local backend keeps the cells its workers finish: cells whose tasks are done when a
    cell fails are stored, also those the driver has not collected yet (here: all of them, the
    driver being held up until every task has finished, the failing one first in its order)."""
    import ray

    model, ds = setup
    grid = {  # "bad" fails in its task only (its batch is larger than the hook's cache), and goes first (costliest)
        "name": "one-fails",
        "base": {**TINY_GRID["base"], "hook_name": POST},
        "cells": [
            {"id": "k4", "k": 4},
            {"id": "bad", "k": 4, "expansion_factor": 4, "batch_size_tokens": 512},
            {"id": "k8", "k": 8},
        ],
    }
    wait, calls = ray.wait, []

    def busy_driver_wait(refs, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # every task finishes before the driver looks at the first
            wait(refs, num_returns=len(refs), timeout=120)
        return wait(refs, *args, **kwargs)

    monkeypatch.setattr(ray, "wait", busy_driver_wait)
    out = tmp_path / "sweep"
    with pytest.raises(SAEError, match=r"cell bad .*only \d+ activation tokens for a batch of 512"):
        sweep(model, ds, grid, out, evaluate=False, progress=False, plots=False, backend=RayBackend(cluster))
    cells = in_progress_path(out) / "cells"
    stored = sorted(p.name for p in cells.iterdir()) if cells.is_dir() else []
    assert stored == ["k4", "k8"]
    for cell in SweepGrid.from_dict(grid).cells:
        if cell.id != "bad":
            assert sweep_mod._finished(cells / cell.id, cell) is not None, cell.id  # whole: a resume keeps it


@slow
def test_a_sweep_started_locally_finishes_on_ray(setup, cluster, reference, tmp_path):
    model, ds = setup
    local_dir, local_rows = reference["tiny"]
    out = tmp_path / "sweep"
    interrupt_sweep(model, ds, TINY_GRID, out, after=2, evaluation=EVAL, plots=False)
    done = {p.parent.name: p.read_bytes() for p in (in_progress_path(out) / "cells").glob("*/metrics.json")}
    assert len(done) == 2
    rows = sweep(model, ds, TINY_GRID, out, evaluation=EVAL, progress=False, plots=False, backend=RayBackend(cluster))
    assert without_timings(rows) == without_timings(local_rows)
    assert {c: (out / "cells" / c / "metrics.json").read_bytes() for c in done} == done  # kept, not retrained
    assert_same_sweep(local_dir, out)


@slow
def test_a_sweep_started_on_ray_finishes_locally(setup, cluster, reference, tmp_path, monkeypatch):
    model, ds = setup
    local_dir, local_rows = reference["tiny"]
    out = tmp_path / "sweep"
    calls, write_results = [], sweep_mod.write_results

    def stop_after_two_cells(*args, **kwargs):  # the driver is interrupted (Ctrl-C) after storing 2 cells
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return write_results(*args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(sweep_mod, "write_results", stop_after_two_cells)
        with pytest.raises(KeyboardInterrupt):
            sweep(model, ds, TINY_GRID, out, evaluation=EVAL, progress=False, plots=False, backend=RayBackend(cluster))
    work = in_progress_path(out)
    assert not out.exists() and len(list((work / "cells").glob("*/metrics.json"))) == 2
    (work / "cells" / f".{local_rows[0]['cell_id']}{INCOMING}1-dead").mkdir()  # as a driver killed mid-write leaves
    train = Counter(cells_mod.train_sae)
    monkeypatch.setattr(cells_mod, "train_sae", train)
    rows = sweep(model, ds, TINY_GRID, out, evaluation=EVAL, progress=False, plots=False)
    assert train.calls == 2
    assert without_timings(rows) == without_timings(local_rows)
    assert_same_sweep(local_dir, out)


@slow
def test_cli_sweep_on_ray(setup, cluster, tmp_path, capsys):
    model, ds = setup
    model_dir, data_dir, grid_file = tmp_path / "model", tmp_path / "data", tmp_path / "grid.json"
    formal_sae.save_model(model, model_dir)
    formal_sae.save_dataset(ds, data_dir)
    grid_file.write_text(json.dumps({**TINY_GRID, "axes": {"k": [4, 8]}}))
    common = ["sweep", "--grid", str(grid_file), "--model", str(model_dir), "--data", str(data_dir), "--backend", "ray"]
    evaluation = ["--n-samples", "4", "--repeats", "1", "--max-sentences", "16"]
    assert main([*common, "--out", str(tmp_path / "out"), *evaluation, "--ray-address", cluster, "--ray-max-retries", "1"]) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["cell_id"] for r in rows] == ["k4", "k8"] and all(0 <= r["validity"] <= 1 for r in rows)
    assert "wrote" in capsys.readouterr().out
    assert main([*common, "--out", str(tmp_path / "gpu"), *evaluation, "--ray-num-gpus", "0.25"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("formal-sae sweep: error: ") and "has no GPUs" in err
    assert not (tmp_path / "gpu").exists()


@slow
def test_requests_the_cluster_cannot_meet_are_refused(setup, cluster, tmp_path):
    model, ds = setup
    out = tmp_path / "out"
    with pytest.raises(SAEError, match=rf"num_gpus=0\.5 per cell was asked for, but the Ray cluster at {cluster} has no GPUs"):
        sweep(model, ds, TINY_GRID, out, evaluate=False, progress=False, backend=RayBackend(cluster, num_gpus=0.5))
    with pytest.raises(SAEError, match=r"no node of .* has 4 CPUs"):
        sweep(model, ds, TINY_GRID, out, evaluate=False, progress=False, backend=RayBackend(cluster, num_cpus=4))
    cuda = {**TINY_GRID, "base": {**TINY_GRID["base"], "device": "cuda"}}
    with pytest.raises(SAEError, match="runs on cuda, but RayBackend asks for no GPU"):
        sweep(model, ds, cuda, out, evaluate=False, progress=False, backend=RayBackend(cluster))
    assert not out.exists() and not in_progress_path(out).exists()


@slow
def test_nodes_with_other_versions_or_without_formal_sae_are_refused(setup, cluster, tmp_path):
    """The workers' environment is changed by a runtime environment (PYTHONPATH first on their
    path): package metadata of other versions, or a formal_sae that does not import."""
    model, ds = setup
    other = tmp_path / "other-versions"
    others = {"formal_sae": "0.0.1", "torch": "1.0.0", "sae_lens": "0.0.2", "transformer_lens": "0.0.3", "entmax": "0.0.4"}
    for dist, version in others.items():
        info = other / f"{dist}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: {version}\n")
    broken = tmp_path / "no-formal-sae" / "formal_sae"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('formal_sae is not installed on this node')\n")
    here = formal_sae.saes.sweep.ray_backend.probe_versions()
    out = tmp_path / "out"

    def run(pythonpath: Path) -> None:
        backend = RayBackend(cluster, runtime_env={"env_vars": {"PYTHONPATH": str(pythonpath)}})
        sweep(model, ds, TINY_GRID, out, evaluate=False, progress=False, backend=backend)

    with pytest.raises(SAEError) as refused:
        run(other)
    message = str(refused.value)
    for module, dist in ray_backend.CHECKED_PACKAGES:  # the libraries that decide the results too
        assert f"runs {dist} {others[module]}, this process {here[module]}" in message
    assert set(others) == {module for module, _ in ray_backend.CHECKED_PACKAGES}
    with pytest.raises(
        SAEError, match=r"cannot import formal_sae \(ImportError: formal_sae is not installed on this node\).*pip install"
    ):
        run(broken.parent)
    assert not out.exists() and not in_progress_path(out).exists()


@slow
def test_an_unreachable_cluster_is_refused_in_seconds(setup, cluster, tmp_path):
    """Last: it disconnects this process from the fixture's cluster."""
    import ray

    model, ds = setup
    ray.shutdown()
    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    t0 = time.perf_counter()
    with pytest.raises(SAEError, match=rf"cannot reach the Ray cluster at {address} .*ray start --head"):
        sweep(model, ds, TINY_GRID, tmp_path / "out", evaluate=False, progress=False, backend=RayBackend(address))
    assert time.perf_counter() - t0 < 30
    assert not ray.is_initialized() and not (tmp_path / "out").exists()

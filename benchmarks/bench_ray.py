"""Benchmark: a sweep on a 2-CPU local Ray cluster against the in-process sweep with 2 workers.

Prints markdown tables (stdout; progress goes to stderr):

(a) wall clock of one grid (``--cells`` TopK cells of a ``small`` model, trained and evaluated)
    with ``sweep(..., workers=2)`` (two forked processes of one torch thread) and with
    ``sweep(..., backend=RayBackend(address))`` on a local cluster of 2 CPUs (one per cell), best
    of ``--repeats`` alternating runs. The Ray runs are "warm" (this process connected and the
    cluster's workers started by a first sweep, as in a session of several sweeps); the first,
    cold, sweep (worker processes starting and importing formal-sae) is reported too;
(b) the per-task overhead: a grid of trivial cells (one training step, no evaluation) on both
    backends, and the round trip of an empty Ray task;
(c) the object store: the bytes the sweep puts there once (the model's files, the dataset's
    splits a cell reads, each hook's activation cache) and the growth of ``/dev/shm`` (where
    the object store lives on Linux) at its peak during a sweep.

The cluster is started here on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, see the
issue: loopback only) and stopped with ``ray stop --force``, which stops every Ray process of
this machine. Usage: ``python benchmarks/bench_ray.py [--cells 12] [--repeats 2]``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch
from common import log, machine

import formal_sae
from formal_sae.saes.sweep import RayBackend, SweepGrid, sweep
from formal_sae.saes.sweep.evaluation import SweepEvaluation
from formal_sae.saes.sweep.ray_backend import _model_files, _portable_dataset
from formal_sae.saes.sweep.ray_cluster import local_cluster

TARGET = 0.9  # Ray's wall clock >= 0.9x the local workers' speed
HOOK = "blocks.0.hook_resid_post"


def grid(name: str, n: int, tokens: int, batch: int) -> SweepGrid:
    ks = [8, 16, 32, 64]
    xs = [1, 2, 4, 8]
    cells = [{"expansion_factor": x, "k": k} for x in xs for k in ks if k <= 64 * x][:n]
    base = {"architecture": "paper", "hook_name": HOOK, "training_tokens": tokens, "batch_size_tokens": batch, "lr": 1e-3}
    return SweepGrid.from_settings(name, base, cells)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def shm_used() -> int:
    return shutil.disk_usage("/dev/shm").used


class PeakSampler:
    """The largest growth of /dev/shm's used bytes while it runs."""

    def __init__(self) -> None:
        self.base, self.peak, self.stop = shm_used(), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, shm_used() - self.base)
            time.sleep(0.05)

    def __enter__(self) -> PeakSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=12)
    parser.add_argument("--trivial-cells", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    at_start = machine()  # the load average before anything runs
    log(at_start)
    ds = formal_sae.build_dataset("expr", n_train=20_000, n_validation=500, n_test=500, seed=0)
    meta = formal_sae.dataset_metadata(ds)
    tok = formal_sae.build_tokenizer(formal_sae.grammar_of(meta))
    model = formal_sae.build_model(formal_sae.ModelConfig.from_preset("small"), tok, meta)  # untrained: the SAEs cost the same
    evaluation = SweepEvaluation()
    work = Path(tempfile.mkdtemp(prefix="bench-ray-out-"))
    main_grid = grid("bench", args.cells, args.tokens, 1024)
    trivial = grid("trivial", args.trivial_cells, 64, 64)
    runs = iter(range(10**6))

    def timed_sweep(g, evaluate=True, **where) -> float:  # where: workers=2 (local) or backend=RayBackend(...)
        return timed(
            lambda: sweep(
                model, ds, g, work / f"run{next(runs)}", evaluation=evaluation, evaluate=evaluate, progress=False,
                plots=False, **where,
            )
        )  # fmt: skip

    def local(g, evaluate=True) -> float:
        return timed_sweep(g, evaluate, workers=2)

    def on_ray(g, address, evaluate=True) -> float:
        return timed_sweep(g, evaluate, backend=RayBackend(address))

    with local_cluster(2) as address:  # loopback only; sets what ray reads at import before importing it
        import ray

        log("cold Ray sweep (workers start) ...")
        cold = on_ray(trivial, address, evaluate=False)
        local_times, ray_times = [], []
        for i in range(args.repeats):
            log(f"round {i + 1}: local workers=2 ...")
            local_times.append(local(main_grid))
            log(f"round {i + 1}: Ray ...")
            with PeakSampler() as peak:
                ray_times.append(on_ray(main_grid, address))
        trivial_local = min(local(trivial, evaluate=False) for _ in range(args.repeats))
        trivial_ray = min(on_ray(trivial, address, evaluate=False) for _ in range(args.repeats))
        noop = ray.remote(lambda: None)
        ray.get(noop.remote())
        t0 = time.perf_counter()
        ray.get([noop.remote() for _ in range(200)])
        noop_ms = (time.perf_counter() - t0) / 200 * 1000
    acts = formal_sae.saes.training.cache_activations(model, ds, HOOK, args.tokens)
    sizes = {
        "model (saved files)": sum(len(b) for b in _model_files(model).values()),
        "dataset (test split, train metadata)": len(pickle.dumps(_portable_dataset(ds, evaluation))),
        f"activation cache ({acts.shape[0]:,} tokens x {acts.shape[1]})": acts.numel() * acts.element_size(),
    }
    shutil.rmtree(work, ignore_errors=True)

    print(at_start + f" Load average {os.getloadavg()[0]:.2f} at the end.\n")
    print(f"(a) {args.cells} cells ({args.tokens:,} tokens each, evaluated), best of {args.repeats}:\n")
    print("| backend | wall s (runs) | speed vs local |\n|---|---|---|")
    best_local, best_ray = min(local_times), min(ray_times)
    print(f"| local, `workers=2` | {best_local:.1f} ({', '.join(f'{t:.1f}' for t in local_times)}) | 1.00x |")
    print(
        f"| Ray, 2 CPUs, warm | {best_ray:.1f} ({', '.join(f'{t:.1f}' for t in ray_times)}) | **{best_local / best_ray:.2f}x** |"
    )
    print(f"\nTarget (>= {TARGET}x): {'met' if best_local / best_ray >= TARGET else 'NOT met'}.\n")
    per_local = trivial_local / args.trivial_cells
    per_ray = trivial_ray / args.trivial_cells
    print(f"(b) {args.trivial_cells} trivial cells (one step, no evaluation), best of {args.repeats}:\n")
    print("| | wall s | per cell, ms |\n|---|---|---|")
    print(f"| local, `workers=2` | {trivial_local:.2f} | {per_local * 1000:.0f} |")
    print(f"| Ray, warm | {trivial_ray:.2f} | {per_ray * 1000:.0f} |")
    print(f"| Ray, cold (first sweep: workers start) | {cold:.2f} | {cold / args.trivial_cells * 1000:.0f} |")
    print(f"| an empty Ray task (round trip, 200 at once) | | {noop_ms:.2f} |")
    print("\n(c) the object store:\n")
    print("| object (put once per sweep; the cache once per hook) | MB |\n|---|---|")
    for name, n in sizes.items():
        print(f"| {name} | {n / 1e6:.1f} |")
    print(f"| /dev/shm growth at its peak during a Ray sweep | {peak.peak / 1e6:.1f} |")


if __name__ == "__main__":
    main()

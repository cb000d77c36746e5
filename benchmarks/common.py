"""What every benchmark script shares: the machine line, timing, and a small trained model.

The scripts run as ``python benchmarks/bench_*.py``, so this folder is on ``sys.path``.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import torch
from transformer_lens import HookedTransformer

import formal_sae


def log(msg: str) -> None:
    """Progress on stderr, so that stdout holds only the markdown tables."""
    print(msg, file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line naming the machine, the software and the date, for docs/benchmarks.md."""
    return (
        f"Machine: {cpu_model()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch thread(s), "
        f"load average at start {os.getloadavg()[0]:.2f}; Python {platform.python_version()}, torch {torch.__version__}; "
        f"{datetime.date.today().isoformat()}."
    )


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls (each call must set up its own cold state)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def small_model(
    grammar: str,
    steps: int,
    n_train: int = 20_000,
    n_eval: int = 500,
    lr: float = 3e-3,
    preset: str = "small",
    out_dir: str | Path | None = None,
) -> tuple[datasets.DatasetDict, HookedTransformer, float]:
    """A model trained on ``grammar`` (loaded instead when ``out_dir`` already holds one): its
    dataset, the model and the training seconds (0 when loaded)."""
    ds = formal_sae.build_dataset(grammar, n_train=n_train, n_validation=n_eval, n_test=n_eval, seed=0)
    if out_dir is not None and (Path(out_dir) / "model.safetensors").is_file():
        log(f"[{grammar}] loading the model in {out_dir}")
        return ds, formal_sae.load_model(out_dir), 0.0
    log(f"[{grammar}] training a {preset} model ({steps} steps, lr {lr}) ...")
    train = formal_sae.TrainConfig(
        steps=steps, lr=lr, warmup_steps=min(200, steps // 10), eval_every=steps, final_validity_repeats=1, checkpoint_every=10**9
    )
    t0 = time.perf_counter()
    model = formal_sae.train_model(ds, preset, train, out_dir=out_dir, progress=False)
    return ds, model, time.perf_counter() - t0


def fresh_dataset(model: HookedTransformer, n_train: int, n_eval: int = 1000) -> datasets.DatasetDict:
    """New sentences of the model's grammar and prompt format (seed 1, not the model's seed 0)."""
    meta = model.formal_sae_data
    return formal_sae.build_dataset(
        formal_sae.grammar_of(meta), n_train=n_train, n_validation=n_eval, n_test=n_eval, seed=1, prompt_format=meta.prompt_format
    )

"""The scripts in examples/ run end to end (``--tiny``) and write what their docstrings promise.

Each example runs as a subprocess, as a user would run it. Most of each run is importing torch,
TransformerLens and SAELens, so when this module runs in one process the examples are started
two at a time up front and each test waits for its own; under pytest-xdist each test runs its
example itself (the workers already run in parallel).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TIMEOUT_S = 240  # generous: each takes ~10 s of CPU, more on a loaded machine
PARALLEL = 2

# What each example must leave in its --out directory.
EXPECTED: dict[str, list[str]] = {
    "01_generate_dataset.py": [
        "dyck2/dataset_dict.json",
        "dyck2/train/dataset_info.json",
        "dyck2/tokenizer/tokenizer.json",
        "dyck2/README.md",
        "toy-english/dataset_dict.json",
        "toy-english/tokenizer/tokenizer.json",
    ],
    "02_train_model.py": [
        "data/dataset_dict.json",
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer/tokenizer.json",
        "model/metrics.json",
        "model/training_curve.png",
    ],
    "03_train_sae.py": [
        "model/metrics.json",
        "sae-topk/cfg.json",
        "sae-topk/sae_weights.safetensors",
        "sae-paper/cfg.json",
        "sae-paper/sae_weights.safetensors",
        "metrics.json",
    ],
    "04_analyze_latents.py": [
        "sae/cfg.json",
        "analysis/report.json",
        "analysis/report.md",
        "analysis/correlations.png",
        "analysis/top_activations.html",
    ],
    "05_intervene.py": ["effects.json", "causal/report.json", "causal/report.md", "causal/correlation_vs_effect.png"],
    "06_causal_sae.py": [
        "sae-causal/cfg.json",
        "sae-plain/cfg.json",
        "comparison/comparison.json",
        "comparison/comparison.md",
        "comparison/comparison.png",
    ],
    "07_bring_your_own_sae.py": ["sae/cfg.json", "sae/sae_weights.safetensors", "metrics.json", "analysis/report.json"],
}


def test_every_example_is_tested_and_listed_in_the_readme():
    scripts = sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]_*.py"))
    assert scripts == sorted(EXPECTED)
    readme = (EXAMPLES / "README.md").read_text()
    for name in scripts:
        assert f"examples/{name}" in readme, f"{name} is missing from examples/README.md"


def run_example(name: str, out: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # the scripts also call torch.set_num_threads(1) under --tiny
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TQDM_DISABLE": "1",  # SAELens's and datasets' progress bars
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_OFFLINE": "1",  # everything is local: never reach for the network
        "MPLBACKEND": "Agg",
    }
    device = [] if name.startswith("01") else ["--device", "cpu"]  # example 01 runs no model
    try:
        return subprocess.run(
            [sys.executable, str(EXAMPLES / name), "--tiny", "--out", str(out), *device],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{name} did not finish within {TIMEOUT_S}s; output so far:\n{e.stdout}\n{e.stderr}")


@pytest.fixture(scope="module")
def example_runs(request, tmp_path_factory):
    """``get(name) -> (CompletedProcess, out_dir)``; examples run at most ``PARALLEL`` at a time."""
    root = tmp_path_factory.mktemp("examples")
    futures: dict[str, Future] = {}
    pool = ThreadPoolExecutor(max_workers=PARALLEL)
    selected = [
        item.callspec.params["name"]
        for item in request.session.items
        if getattr(item, "module", None) is request.module and "name" in getattr(getattr(item, "callspec", None), "params", {})
    ]
    under_xdist = "PYTEST_XDIST_WORKER" in os.environ

    def submit(name: str) -> None:
        if name not in futures:
            futures[name] = pool.submit(run_example, name, root / name.removesuffix(".py"))

    def get(name: str):
        if not under_xdist:  # start every selected example now, so the next ones run while we wait
            for other in selected:
                submit(other)
        submit(name)
        return futures[name].result(), root / name.removesuffix(".py")

    yield get
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_and_writes_its_outputs(name, example_runs):
    result, out = example_runs(name)
    assert result.returncode == 0, f"{name} failed (exit {result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    missing = [f for f in EXPECTED[name] if not (out / f).is_file()]
    assert not missing, f"{name} did not write {missing}; it wrote {sorted(str(p.relative_to(out)) for p in out.rglob('*'))}"
    for path in out.rglob("*.json"):  # every JSON file it wrote is readable
        json.loads(path.read_text())

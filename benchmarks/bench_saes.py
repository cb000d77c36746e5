"""Benchmark: SAE training throughput against plain SAELens, and what a sweep's shared cache saves.

Prints markdown tables (stdout; progress goes to stderr), each ratio against a baseline run in
the same process on the same model:

(a) tokens/s of formal-sae's ``train_sae`` (including building its activation cache) against
    plain SAELens (``LanguageModelSAETrainingRunner`` with ``override_model``/``override_dataset``:
    a Hugging Face dataset of packed token rows, ``prepend_bos=False``, special tokens excluded),
    same architecture (``topk``), d_sae, k, batch and number of training tokens, same hook.
    Both runs see fresh tokens only (the dataset holds more sentence tokens than the budget);
    the best of ``--repeats`` alternating runs is reported.
(b) ``sweep`` (evaluation off) against training the same cells one by one with
    ``train_sae`` and no shared cache (each recomputes its activations), on two sets of cells:
    the paper's TopK panel without normalisation (the costliest cells to train, so the least
    to gain) and a stratified sample of the ``small``-scale paper grid (every variant). The
    sweep runs twice: in this process, and with ``--workers`` worker processes (default: one
    per core). CPU seconds include the workers'.
(c) the time of the ``small``-scale paper grid for one grammar: extrapolated from a stratified
    sample of its cells (2 per sparsity kind and expansion factor, trained and evaluated as the
    sweep does), or measured with ``--full-grid``.

Usage: ``python benchmarks/bench_saes.py [--model DIR | --preset small|paper] [--quick] [--full-grid]``.
Without ``--model`` a model is trained here on ``expr`` (300 steps).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path

import datasets
import torch
from common import fresh_dataset, log, machine, small_model

import formal_sae
from formal_sae.activations import DEFAULT_HOOK, hook_width
from formal_sae.saes.sweep import SweepGrid, paper_grid, sparsity_of, sweep
from formal_sae.saes.training import SAETrainConfig, cache_activations, flush_denormals, model_name_of, train_sae

TARGET_THROUGHPUT = 0.9  # formal-sae >= 0.9x SAELens
TARGET_SHARING = 3.0  # sweep >= 3x separate runs


def saelens_dataset(ds: datasets.DatasetDict, context_size: int) -> datasets.Dataset:
    """The train split's sequences (prompt, sentence, <eos>) packed into rows of ``context_size``."""
    flat = [t for seq in ds["train"].data.column("input_ids").to_pylist() for t in seq]
    rows = [flat[i : i + context_size] for i in range(0, len(flat) - context_size + 1, context_size)]
    return datasets.Dataset.from_dict({"tokens": rows})


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished child processes (sweep workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def timer():
    """Yields a list that holds ``[wall seconds, CPU seconds]`` after the block."""
    out: list[float] = []
    w, c = time.perf_counter(), cpu_seconds()
    try:
        yield out
    finally:
        out += [time.perf_counter() - w, cpu_seconds() - c]


def best(runs: list[list[float]]) -> tuple[float, float]:
    """The fastest wall time and the fastest CPU time of several runs."""
    return min(r[0] for r in runs), min(r[1] for r in runs)


def run_saelens(model, hf_ds, non_grammar: list[int], d_in: int, exp: int, k: int, tokens: int, batch: int, out: Path) -> None:
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig, TopKTrainingSAEConfig

    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=d_in, d_sae=d_in * exp, k=k, device="cpu"),
        model_name="formal-sae",
        hook_name=DEFAULT_HOOK,
        dataset_path="",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=len(hf_ds[0]["tokens"]),
        prepend_bos=False,
        exclude_special_tokens=non_grammar,
        training_tokens=tokens,
        train_batch_size_tokens=batch,
        lr=3e-4,
        device="cpu",
        seed=0,
        logger=LoggingConfig(log_to_wandb=False),
        output_path=str(out),
        checkpoint_path=str(out / "checkpoints"),
        n_checkpoints=0,
        verbose=False,
    )
    with flush_denormals():
        LanguageModelSAETrainingRunner(cfg, override_dataset=hf_ds, override_model=model).run()


def throughput(model, args, workdir: Path) -> list[str]:
    d_in = hook_width(model, DEFAULT_HOOK)
    exp, k, batch, tokens = 4, 16, 1024, args.tokens
    n_train = int(tokens / 4.0) + 2000  # expr sentences average ~4.8 tokens: more tokens than the budget
    ds = fresh_dataset(model, n_train)
    hf_ds = saelens_dataset(ds, model.cfg.n_ctx)
    terminals = formal_sae.grammar_of(model.formal_sae_data).terminals
    grammar_ids = set(model.tokenizer.convert_tokens_to_ids(list(terminals)))
    non_grammar = sorted(set(range(len(model.tokenizer))) - grammar_ids)
    ours, theirs = [], []  # (wall, cpu) seconds
    for r in range(args.repeats):
        log(f"(a) repeat {r + 1}/{args.repeats}: formal-sae train_sae ...")
        with timer() as t:
            train_sae(
                model,
                ds,
                SAETrainConfig(architecture="topk", k=k, expansion_factor=exp, training_tokens=tokens, batch_size_tokens=batch),
            )
        ours.append(t)
        log(f"    {t[0]:.1f} s ({t[1]:.1f} s CPU); SAELens LanguageModelSAETrainingRunner ...")
        with timer() as t:
            run_saelens(model, hf_ds, non_grammar, d_in, exp, k, tokens, batch, workdir / f"saelens{r}")
        theirs.append(t)
        log(f"    {t[0]:.1f} s ({t[1]:.1f} s CPU)")
    (ow, oc), (tw, tc) = best(ours), best(theirs)
    return [
        f"### (a) SAE training throughput (topk, d_in {d_in}, d_sae {d_in * exp}, k {k}, batch {batch} tokens, {tokens:,} training tokens, best of {args.repeats})",
        "",
        "| pipeline | wall s | CPU s | tokens/s (wall) | tokens/s (CPU) | ratio (wall) | ratio (CPU) |",
        "|---|---|---|---|---|---|---|",
        f"| SAELens `LanguageModelSAETrainingRunner` (packed rows of {model.cfg.n_ctx}, special tokens excluded) "
        f"| {tw:.1f} | {tc:.1f} | {tokens / tw:,.0f} | {tokens / tc:,.0f} | 1.00x | 1.00x |",
        f"| formal-sae `train_sae` (activation cache included) | {ow:.1f} | {oc:.1f} | {tokens / ow:,.0f} | {tokens / oc:,.0f} "
        f"| **{tw / ow:.2f}x** | **{tc / oc:.2f}x** |",
        "",
        f"Target: formal-sae >= {TARGET_THROUGHPUT}x SAELens.",
        "",
    ]


def stratified_sample(grid, per_stratum: int = 2) -> tuple[list, dict]:
    """``per_stratum`` random cells (seeded) of every (sparsity kind, expansion factor) stratum of
    ``grid``, and the strata."""
    strata: dict[tuple[str, int], list] = {}
    for cell in grid.cells:
        strata.setdefault((sparsity_of(cell.config)[0], cell.config.expansion_factor), []).append(cell)
    rng = random.Random(0)
    return [c for cells in strata.values() for c in rng.sample(cells, min(per_stratum, len(cells)))], strata


def shared_vs_separate(model, ds, grid, workdir: Path, repeats: int, workers: int) -> dict[str, tuple[float, float]]:
    """Best (wall, CPU) seconds of ``repeats`` alternating runs of ``sweep`` over ``grid`` (no
    evaluation), in this process and with ``workers`` worker processes, and of the same cells
    trained one by one with ``train_sae`` (each computing its own activations); and the seconds
    of one activation cache."""
    runs: dict[str, list[list[float]]] = {"sweep": [], "workers": [], "separate": []}
    for r in range(repeats):
        for kind, n in (("sweep", 1), ("workers", workers)):
            log(f"(b) {grid.name}, repeat {r + 1}/{repeats}: sweep over {len(grid)} cells, {n} worker(s), no evaluation ...")
            with timer() as t:
                sweep(model, ds, grid, workdir / f"{grid.name}-{kind}{r}", evaluate=False, progress=False, plots=False, workers=n)
            runs[kind].append(t)
            log(f"    {t[0]:.1f} s ({t[1]:.1f} s CPU)")
        log("    the same cells one by one, each caching its own activations ...")
        with timer() as t:
            for cell in grid.cells:
                train_sae(model, ds, cell.config, out_dir=workdir / f"{grid.name}-separate{r}" / cell.id)
        runs["separate"].append(t)
        log(f"    {t[0]:.1f} s ({t[1]:.1f} s CPU)")
    with timer() as cache:
        cache_activations(model, ds, DEFAULT_HOOK, max(c.config.training_tokens for c in grid.cells))
    return {**{kind: best(r) for kind, r in runs.items()}, "cache": (cache[0], cache[1])}


def sharing(model, args, workdir: Path) -> list[str]:
    d_in = hook_width(model, DEFAULT_HOOK)
    tokens = args.sharing_tokens
    # (b1) One panel of the paper's grid (TopK, no normalisation: expansion x k, k <= d_sae), the
    # unit the paper sweeps and plots as one heat map, and the costliest cells to train (TopK).
    panel = SweepGrid.from_dict(
        {
            "name": "topk-panel",
            "base": {"architecture": "paper", "training_tokens": tokens, "batch_size_tokens": 1024, "lr": 1e-3},
            "cells": [{"expansion_factor": e, "k": k} for e in (1, 2, 4, 8) for k in (8, 16, 32, 64, 128) if k <= e * d_in],
        }
    )
    # (b2) The grid the issue names: a stratified sample of the small-scale paper grid (every
    # variant, L1 and TopK), at its own settings.
    sample, _ = stratified_sample(paper_grid("small", d_in=d_in))
    grid_sample = SweepGrid.from_dict({"name": "paper-small-sample", "cells": [c.to_dict() for c in sample]})
    most = max(c.config.training_tokens for c in panel.cells + grid_sample.cells)
    ds = fresh_dataset(model, int(most / 4.0) + 2000)  # fresh tokens for every run, as the paper's online data
    w = args.workers
    lines = [
        f"### (b) Sweep sharing (evaluation off; d_in {d_in}; best of {args.repeats} alternating runs): `sweep` against the same "
        "cells trained one by one with `train_sae`, each computing its own activations on all torch threads",
        "",
        f"| cells | training per cell | separate: wall s (CPU s) | one activation cache: wall s | `sweep`: wall s (CPU s) | ratio (wall) "
        f"| `sweep(workers={w})`: wall s (CPU s) | ratio (wall) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for grid, what in (
        (
            panel,
            f"the paper's TopK panel, no normalisation: {len(panel)} cells, expansion {{1, 2, 4, 8}} x k {{8, ..., 128}} <= d_sae",
        ),
        (
            grid_sample,
            f"`paper-small` grid, 2 cells per sparsity kind x expansion factor: {len(grid_sample)} cells, every variant",
        ),
    ):
        t = shared_vs_separate(model, ds, grid, workdir, args.repeats, w)
        cfg = grid.cells[0].config
        sep = t["separate"]
        lines.append(
            f"| {what} | {cfg.training_tokens:,} tokens, batch {cfg.batch_size_tokens} | {sep[0]:.1f} ({sep[1]:.1f}) | {t['cache'][0]:.1f} "
            f"| {t['sweep'][0]:.1f} ({t['sweep'][1]:.1f}) | **{sep[0] / t['sweep'][0]:.2f}x** "
            f"| {t['workers'][0]:.1f} ({t['workers'][1]:.1f}) | **{sep[0] / t['workers'][0]:.2f}x** |"
        )
    return [*lines, "", f"Target: sweep >= {TARGET_SHARING}x separate runs.", ""]


def paper_small(model, args, workdir: Path) -> list[str]:
    d_in = hook_width(model, DEFAULT_HOOK)
    grid = paper_grid("small", d_in=d_in)
    ds = fresh_dataset(model, args.grid_sentences)
    if args.full_grid:
        log(f"(c) the whole paper-small grid ({len(grid)} cells) ...")
        with timer() as t:
            sweep(model, ds, grid, workdir / "paper-small", progress=True)
        total, total_cpu = t
        how = f"measured: all {len(grid)} cells trained and evaluated"
    else:
        sample, strata = stratified_sample(grid)
        sub = {"name": "paper-small-sample", "cells": [c.to_dict() for c in sample]}
        log(f"(c) {len(sample)} sampled cells of the paper-small grid ({len(grid)} cells), trained and evaluated ...")
        with timer() as cache:
            cache_activations(model, ds, DEFAULT_HOOK, grid.cells[0].config.training_tokens)
        with timer() as t:
            rows = sweep(model, ds, sub, workdir / "paper-small-sample", progress=True, plots=False)
        per_cell = {r["cell_id"]: r["train_wall_seconds"] + (r["eval_seconds"] or 0) for r in rows}
        total = cache[0] + len(grid) * 0.05  # + writing results and metrics per cell
        for cells in strata.values():
            measured = [per_cell[c.id] for c in cells if c.id in per_cell]
            total += len(cells) * sum(measured) / len(measured)
        total_cpu = total * (t[1] + cache[1]) / (t[0] + cache[0])  # the sample's CPU/wall ratio
        how = (
            f"extrapolated from {len(sample)} cells (2 per sparsity kind x expansion factor; {t[0]:.0f} s wall, {t[1]:.0f} s CPU) "
            f"+ the activation cache ({cache[0]:.1f} s)"
        )
    cfg = grid.cells[0].config
    return [
        f"### (c) The `small`-scale paper grid for one grammar ({len(grid)} cells at d_in {d_in})",
        "",
        "| grid | cells | training per cell | evaluation per cell | total (wall) | total (CPU) | how |",
        "|---|---|---|---|---|---|---|",
        f"| `paper-small` | {len(grid)} | {cfg.training_tokens // cfg.batch_size_tokens} steps x {cfg.batch_size_tokens} tokens, lr {cfg.lr:g} "
        f"| validity 64 x 2 + 256 test sentences | **{total / 60:.1f} min** | {total_cpu / 60:.1f} min | {how} |",
        "",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a trained formal-sae model directory (default: train one here)")
    p.add_argument("--preset", default="small", choices=["tiny", "small", "paper"], help="preset of the model trained here")
    p.add_argument("--lm-steps", type=int, default=300)
    p.add_argument("--tokens", type=int, default=300_000, help="training tokens of (a)")
    p.add_argument("--sharing-tokens", type=int, default=200_000, help="training tokens per cell in (b)")
    p.add_argument("--grid-sentences", type=int, default=20_000, help="train sentences of the grid's dataset in (c)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's, one per core)")
    p.add_argument("--workers", type=int, default=usable_cores(), help="worker processes of the second sweep in (b)")
    p.add_argument("--quick", action="store_true", help="small budgets, to check the script runs")
    p.add_argument("--full-grid", action="store_true", help="(c): run the whole paper-small grid instead of a sample")
    p.add_argument("--parts", default="abc", help="which parts to run, e.g. 'ab'")
    args = p.parse_args()
    if args.quick:
        args.tokens, args.sharing_tokens, args.grid_sentences, args.repeats, args.lm_steps = 20_000, 10_000, 2000, 1, 50
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="bench-saes-"))
    try:
        if args.model:
            model = formal_sae.load_model(args.model)
        else:
            _, model, _ = small_model("expr", args.lm_steps, preset=args.preset, out_dir=workdir / "model")
        lines = [
            f"{machine()} Model: `{model_name_of(model)}` (d_model {model.cfg.d_model}), hook `{DEFAULT_HOOK}`.",
            "",
        ]
        if "a" in args.parts:
            lines += throughput(model, args, workdir)
        if "b" in args.parts:
            lines += sharing(model, args, workdir)
        if "c" in args.parts:
            lines += paper_small(model, args, workdir)
        print("\n".join(lines))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

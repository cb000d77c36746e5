"""Running a sweep: every cell of a grid trained on one model's shared activations, evaluated, and
saved so that an interrupted sweep resumes.

* the model runs **once per hook point**: the sentence-token activations are cached with enough
  tokens for the longest run (cycled when the train split is smaller) and every cell trains on
  that cache (``train_sae(..., activations=...)``);
* cells run one after the other, or ``workers`` at a time in forked processes of one torch
  thread each (CPU only), which inherit the cache without copying it, or as tasks on a Ray
  cluster (``backend``, `ray_backend`), where this process alone writes the results;
* each cell's SAE is saved in SAELens's format into ``cells/<id>/``, then evaluated
  ([`SweepEvaluation`][formal_sae.SweepEvaluation]) into ``metrics.json``; a cell whose ``metrics.json`` exists is
  skipped on the next run (resume);
* ``grid.json`` records the grid, the evaluation settings, the model and the dataset; a directory
  holding another sweep is refused;
* the results table and heat maps are rewritten after every cell (`results`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import datasets
import torch
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from formal_sae.data import dataset_metadata
from formal_sae.errors import FormalSAEError, SAEError
from formal_sae.io import canonical, read_json, write_json
from formal_sae.models import model_fingerprint
from formal_sae.outputs import check_output, in_progress_path, output_dir
from formal_sae.saes.config import build_training_sae
from formal_sae.saes.storage import model_name_of
from formal_sae.saes.sweep import cells as cell_module
from formal_sae.saes.sweep.cells import CELLS_DIR, METRICS_FILE, quiet_saelens_progress
from formal_sae.saes.sweep.cells import _run_cell as _run_cell  # re-exported; patch it in `cells`
from formal_sae.saes.sweep.evaluation import SweepEvaluation
from formal_sae.saes.sweep.grid import SweepCell, SweepGrid
from formal_sae.saes.sweep.loading import load_grid
from formal_sae.saes.sweep.ray_backend import RayBackend, RaySession, remove_incoming, resolve_backend
from formal_sae.saes.sweep.results import log_sweep, result_row, write_results
from formal_sae.saes.sweep.workers import Workers, check_workers
from formal_sae.saes.training import cache_activations, flush_denormals, sae_hook_width
from formal_sae.tracking import check_project

GRID_FILE = "grid.json"
MANIFEST_FORMAT = "formal-sae-sweep/1"


def sweep(
    model: HookedTransformer,
    dataset: datasets.DatasetDict,
    grid: SweepGrid | Mapping[str, Any] | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    evaluation: SweepEvaluation | Mapping[str, Any] | None = None,
    evaluate: bool = True,
    resume: bool = True,
    progress: bool = True,
    plots: bool = True,
    workers: int = 1,
    overwrite: bool = False,
    backend: str | RayBackend = "local",
    wandb_project: str | None = None,
) -> list[dict[str, Any]]:
    """Train, save and evaluate every SAE of a grid on one model, sharing activations.

    The sweep is built in ``<out_dir>.in-progress`` and moved to ``out_dir`` when every cell is
    done (`formal_sae.outputs`); an interrupted sweep resumes from its finished cells when
    run again with the same grid, evaluation, model and data.

    Args:
        model: A formal-sae model (``HookedSAETransformer``).
        dataset: Its dataset: ``train`` feeds the SAEs, ``test`` (by default) evaluates them.
        grid: Anything [`load_grid`][formal_sae.load_grid] takes: a [`SweepGrid`][formal_sae.SweepGrid], its
            JSON form, a built-in name (``"paper"``, ``"paper-small"``; sized to the model's width)
            or a JSON grid path.
        out_dir: Output directory (see the module docstring for its layout); an existing one is
            refused unless ``overwrite``.
        evaluation: How each cell is evaluated: a [`SweepEvaluation`][formal_sae.SweepEvaluation], or a mapping of some
            of its fields (the others keep their defaults); None: the defaults.
        evaluate: False trains and saves the SAEs only (no metrics but the training time).
        resume: Skip the cells an interrupted run finished (False retrains every cell).
        progress: Show a progress bar over cells (SAELens's per-SAE bar is hidden).
        plots: Write the validity heat maps and trade-off plots (each evaluated cell gets its
            latent density histogram, ``latent_density.png``, either way).
        overwrite: Replace an existing sweep in ``out_dir`` (only one formal-sae wrote).
        workers: Cells trained and evaluated at once, each in a worker process forked from this
            one with one torch thread (they share the activation cache without copying it;
            CPU only). 1 (the default) runs the cells here, on all of torch's threads. Small
            SAEs use one core better than several: on 2 cores ``workers=2`` measured 1.3x-1.5x
            faster than ``workers=1`` (see the benchmarks page). The results equal those of
            ``workers=1`` under ``torch.set_num_threads(1)`` bitwise; with more threads here
            they differ in the last bits (other thread counts sum in another order).
        backend: Where cells run: ``"local"`` (this machine: here, or ``workers`` forked
            processes) or a Ray cluster, ``"ray"`` or a [`RayBackend`][formal_sae.RayBackend] (address, CPUs and
            GPUs per cell, retries; needs ``pip install formal-sae[ray]``). On Ray each cell is a
            task, the model, data and cache are put in the object store once, and this process
            writes every file; the results are those of the local backend (bitwise those of
            ``workers=1`` under ``torch.set_num_threads(1)`` with one CPU per cell), so a sweep
            started on one backend resumes on the other.
        wandb_project: Log the finished sweep to this W&B project as one run (its results
            table and trade-off plots; see `log_sweep`); None logs nothing. Checked before
            anything trains (a name W&B takes, wandb importable); W&B itself is reached only
            when the sweep is done. Not part of the sweep's configuration: a resumed sweep may
            log or not.

    Returns:
        One row per cell, in grid order: ``cell_id``, the config's fields, ``variant``,
        ``sparsity``/``sparsity_value``, ``train_seconds``, ``eval_seconds`` and the metrics
        (as in ``results.json``).

    Raises:
        SAEError: an interrupted sweep of another grid waits in ``<out_dir>.in-progress``, a
            cell does not fit the model, or a setting is invalid; on Ray also: Ray is not
            installed, the cluster is unreachable, lacks the resources a cell asks for, or its
            nodes run other versions of formal-sae or of the libraries that decide the results
            (`ray_backend.CHECKED_PACKAGES`). Nothing is trained in those cases.
        FormalSAEError: ``wandb_project`` is not a project name W&B takes, or wandb does not
            import (before anything trains); W&B cannot start the finished sweep's run (after).
        OutputError: ``out_dir`` exists (see `formal_sae.outputs`).
    """
    check_project(wandb_project)  # the run starts after the sweep: a bad project must not wait hours
    grid = load_grid(grid, d_in=model.cfg.d_model)  # a built-in grid is sized for the residual stream
    if not evaluate:
        evaluation = None
    elif not isinstance(evaluation, SweepEvaluation):
        evaluation = SweepEvaluation.from_dict(evaluation or {})
    check_workers(workers, model, grid)
    ray_backend = resolve_backend(backend, workers)
    out = Path(out_dir)
    manifest = _manifest(grid, evaluation, model, dataset)
    check_output(out, "sweep", overwrite)
    if not overwrite:
        _check_manifest(in_progress_path(out), manifest)
    _preflight(model, dataset, grid, evaluation)
    if ray_backend is None:
        session = contextlib.nullcontext(_LocalCells(model, dataset, evaluation, workers))
    else:  # connected and checked before the output folder is made
        session = RaySession.open(ray_backend, model, dataset, evaluation, grid)
    with session as cells_runner, output_dir(out, "sweep", manifest, overwrite=overwrite, resumable=True) as work:
        write_json(work / GRID_FILE, manifest)
        rows = _sweep_into(work, model, dataset, grid, manifest, evaluation, resume, progress, plots, cells_runner)
    log_sweep(rows, out, wandb_project)  # after the sweep is in place: its trade-off plots go too
    return rows


# ------------------------------------------------------------------------------ before training
def _manifest(grid: SweepGrid, evaluation: SweepEvaluation | None, model, dataset) -> dict[str, Any]:
    """What ``grid.json`` records: what a resumed sweep must share with the interrupted one."""
    meta = dataset_metadata(dataset)
    return {
        "format": MANIFEST_FORMAT,
        "grid": grid.to_dict(),
        "evaluation": None if evaluation is None else evaluation.to_dict(),
        "model": {"name": model_name_of(model), "fingerprint": model_fingerprint(model)},
        "dataset": {"grammar": meta.grammar, "seed": meta.seed, "splits": meta.splits},
    }


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config as compared between runs: the device does not change the experiment."""
    return {k: v for k, v in config.items() if k != "device"}


def _check_manifest(out: Path, new: dict[str, Any]) -> None:
    """Refuse to resume an interrupted sweep in ``out`` of another grid, evaluation, model or data."""
    path = out / GRID_FILE
    if not path.exists():
        return
    try:
        old = read_json(path, what="sweep grid file")
    except FormalSAEError as e:
        raise SAEError(
            f"{e}; {out} holds a broken sweep: pass overwrite=True (--overwrite) to discard it, or choose another output directory"
        ) from None
    if not isinstance(old, dict) or old.get("format") != MANIFEST_FORMAT or "grid" not in old:
        raise SAEError(f"{path} is not a formal-sae sweep file; choose another output directory")
    problems = []
    old_cells = {c.get("id"): _comparable(c.get("config", {})) for c in old["grid"].get("cells", [])}
    new_cells = {c["id"]: _comparable(c["config"]) for c in new["grid"]["cells"]}
    if canonical(old_cells) != canonical(new_cells):
        only_old = sorted(set(old_cells) - set(new_cells))
        only_new = sorted(set(new_cells) - set(old_cells))
        changed = sorted(k for k in set(old_cells) & set(new_cells) if canonical(old_cells[k]) != canonical(new_cells[k]))
        detail = "; ".join(
            f"{label}: {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}"
            for label, ids in (("cells only there", only_old), ("cells only here", only_new), ("changed cells", changed))
            if ids
        )
        problems.append(
            f"it holds grid {old['grid'].get('name')!r} ({len(old_cells)} cells), not grid {new['grid']['name']!r} ({len(new_cells)} cells) [{detail}]"
        )
    if canonical(old.get("evaluation")) != canonical(new["evaluation"]):
        problems.append(f"its evaluation settings were {old.get('evaluation')}, now {new['evaluation']}")
    if old.get("model", {}).get("fingerprint") != new["model"]["fingerprint"]:
        problems.append(f"it was run on another model ({old.get('model', {}).get('name')}, different weights)")
    if canonical(old.get("dataset")) != canonical(new["dataset"]):
        problems.append(f"it was run on another dataset ({old.get('dataset')})")
    if problems:
        raise SAEError(
            f"{out} holds a different sweep: {'; '.join(problems)}. Use another output directory, or pass overwrite=True "
            "(--overwrite) to discard it"
        )


def _preflight(model: HookedTransformer, dataset, grid: SweepGrid, evaluation: SweepEvaluation | None) -> None:
    """Check every cell against the model before training anything (fail in seconds, not hours)."""
    widths: dict[str, int] = {}
    problems = []
    for cell in grid.cells:
        hook = cell.config.hook_name
        try:
            if hook not in widths:
                widths[hook] = sae_hook_width(model, hook)
            build_training_sae(dataclasses.replace(cell.config, device="cpu"), widths[hook])
        except FormalSAEError as e:
            problems.append(f"{cell.id}: {e}")
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise SAEError(f"{len(problems)} cell(s) of grid {grid.name!r} cannot be trained on this model:\n  {shown}")
    if "train" not in dataset or len(dataset["train"]) == 0:
        raise SAEError("the dataset has no 'train' sentences to train SAEs on")
    if evaluation is not None and (evaluation.split not in dataset or len(dataset[evaluation.split]) == 0):
        raise SAEError(f"the dataset has no sentences in split {evaluation.split!r} to evaluate SAEs on")


# ------------------------------------------------------------------------------ training
def _sweep_into(
    work: Path,
    model,
    dataset,
    grid: SweepGrid,
    manifest: dict[str, Any],
    evaluation: SweepEvaluation | None,
    resume: bool,
    progress: bool,
    plots: bool,
    cells_runner: _LocalCells | RaySession,
) -> list[dict[str, Any]]:
    """Train what the grid still lacks in ``work``, rewriting the results after every cell; every row."""
    remove_incoming(work / CELLS_DIR)  # a cell a killed Ray driver was writing: it is redone
    records: dict[str, dict[str, Any]] = {}
    if resume:
        for cell in grid.cells:
            record = _finished(work / CELLS_DIR / cell.id, cell)
            if record is not None:
                records[cell.id] = record
    todo = [c for c in grid.cells if c.id not in records]
    bar = tqdm(total=len(grid), initial=len(grid) - len(todo), disable=not progress, desc=f"sweep {grid.name}", unit="SAE")
    with flush_denormals(), quiet_saelens_progress():
        for hook in dict.fromkeys(c.config.hook_name for c in todo):  # the model runs once per hook
            cells = [c for c in todo if c.config.hook_name == hook]
            acts = cache_activations(model, dataset, hook, max(c.config.training_tokens for c in cells))
            for record in cells_runner.run(cells, acts, work / CELLS_DIR):
                records[record["cell_id"]] = record
                rows = [result_row(c, records[c.id]) for c in grid.cells if c.id in records]
                write_results(work, rows, grid, manifest, plots=False)
                bar.set_postfix_str(f"last: {record['cell_id']}")
                bar.update(1)
            del acts
    bar.close()
    rows = [result_row(c, records[c.id]) for c in grid.cells]
    write_results(work, rows, grid, manifest, plots=plots)
    return rows


@dataclasses.dataclass
class _LocalCells:
    """The local backend: cells run here, or ``workers`` at a time in forked processes (`workers`)."""

    model: Any
    dataset: Any
    evaluation: SweepEvaluation | None
    workers: int

    def run(self, cells: list[SweepCell], acts: torch.Tensor, cells_dir: Path) -> Iterator[dict[str, Any]]:
        # looked up in `cells` at each run: a test's patch there reaches here and the forked workers
        run = functools.partial(cell_module._run_cell, self.model, self.dataset, acts, cells_dir.parent, self.evaluation)
        yield from Workers(run).map(cells, self.workers)


def _finished(cell_dir: Path, cell: SweepCell) -> dict[str, Any] | None:
    """The saved record of a finished cell, or None if it must be (re)trained."""
    path = cell_dir / METRICS_FILE
    if not all(p.is_file() for p in (path, cell_dir / SAE_CFG_FILENAME, cell_dir / SAE_WEIGHTS_FILENAME)):
        return None
    try:
        record = read_json(path)
    except FormalSAEError:
        return None
    if not isinstance(record, dict) or canonical(_comparable(record.get("config", {}))) != canonical(
        _comparable(cell.config.to_dict())
    ):
        return None
    return record

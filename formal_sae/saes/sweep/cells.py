"""One cell of a sweep: its SAE trained, saved and evaluated into ``cells/<id>/``.

The same function runs a cell wherever it runs: here, in a forked worker process (`workers`) or
in a Ray task (`ray_backend`), so every backend writes the same folder:

* the SAE in SAELens's format, trained on the hook's shared activation cache;
* ``latent_density.png`` when the cell is evaluated;
* ``metrics.json``, the cell's record, written last: it marks the cell finished (`runner` skips
  such a cell when a sweep resumes).
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from formal_sae.io import write_json
from formal_sae.saes.evaluation import DENSITY_PNG, evaluate_sae, write_latent_density
from formal_sae.saes.sweep.evaluation import SweepEvaluation
from formal_sae.saes.sweep.grid import SweepCell
from formal_sae.saes.training import train_sae, train_seconds

CELLS_DIR = "cells"
METRICS_FILE = "metrics.json"


@contextlib.contextmanager
def quiet_saelens_progress() -> Iterator[None]:
    """Hide SAELens's per-SAE training bar while the sweep shows one bar over cells."""
    from sae_lens.training import sae_trainer

    original = sae_trainer.tqdm
    sae_trainer.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        sae_trainer.tqdm = original


def _run_cell(
    model, dataset, acts: torch.Tensor, out: Path, evaluation: SweepEvaluation | None, cell: SweepCell
) -> dict[str, Any]:
    """Train, save and (if ``evaluation``) evaluate one cell into ``out/cells/<id>``; its record."""
    cell_dir = out / CELLS_DIR / cell.id
    t0 = time.perf_counter()
    # A cell is redone whole (no checkpoints: cells are short). Whatever an interrupted attempt
    # left in its folder (an SAE without metrics, a damaged metrics.json) is the sweep's own.
    shutil.rmtree(cell_dir, ignore_errors=True)
    sae = train_sae(model, dataset, cell.config, activations=acts, out_dir=cell_dir, n_checkpoints=0)
    train_wall = time.perf_counter() - t0
    seconds = train_seconds(sae)
    record: dict[str, Any] = {
        "cell_id": cell.id,
        "config": cell.config.to_dict(),
        "train_seconds": train_wall if seconds is None else float(seconds),
        "train_wall_seconds": train_wall,
        "eval_seconds": None,
        "metrics": None,
    }
    if evaluation is not None:
        t0 = time.perf_counter()
        metrics = evaluate_sae(model, sae, dataset, **evaluation.arguments(cell.config))
        record["metrics"], record["eval_seconds"] = metrics, time.perf_counter() - t0
        write_latent_density(metrics, cell_dir / DENSITY_PNG, f"{cell.id}: {metrics.d_sae} latents ({metrics.n_tokens} tokens)")
    write_json(cell_dir / METRICS_FILE, record)  # written last: marks the cell finished
    return record

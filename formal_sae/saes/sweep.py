"""Sweeps: grids of SAEs trained on one model's shared activations, evaluated, tabulated and plotted.

A :class:`SweepGrid` is a named list of cells, each an :class:`~formal_sae.saes.SAETrainConfig`
with a stable id. :func:`paper_grid` builds the paper's grid (PAPER.md §4.4), :func:`grid_from_dict`
a cartesian product of a base config's fields, :func:`load_grid` either of them by name or from a
JSON file. :func:`sweep` trains every cell into ``out_dir/cells/<id>/``:

* the model runs **once per hook point**: the sentence-token activations are cached with enough
  tokens for the longest run (cycled when the train split is smaller) and every cell trains on
  that cache (``train_sae(..., activations=...)``);
* cells run one after the other, or ``workers`` at a time in forked processes of one torch
  thread each (CPU only), which inherit the cache without copying it;
* each cell's SAE is saved in SAELens's format, then evaluated with
  :func:`~formal_sae.saes.evaluate_sae` on the test split into ``metrics.json``; a cell whose
  ``metrics.json`` exists is skipped on the next run (resume);
* ``grid.json`` records the grid, the evaluation settings, the model and the dataset; a directory
  holding another sweep is refused;
* ``results.csv`` / ``results.json`` / ``results.md`` hold one row per cell (config + metrics),
  and ``heatmaps/validity-<sparsity>-<variant>.png`` the paper-style validity heat maps
  (expansion factor x sparsity).

Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import itertools
import json
import math
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from formal_sae.activations import DEFAULT_HOOK
from formal_sae.data import dataset_metadata
from formal_sae.errors import FormalSAEError, SAEError
from formal_sae.io import atomic_write_bytes, atomic_write_text, canonical, read_json, to_jsonable, write_json
from formal_sae.models import model_fingerprint
from formal_sae.outputs import check_output, in_progress_path, output_dir
from formal_sae.saes.evaluation import evaluate_sae
from formal_sae.saes.training import (
    PAPER,
    SAETrainConfig,
    build_training_sae,
    cache_activations,
    flush_denormals,
    model_name_of,
    sae_hook_width,
    train_sae,
)

GRID_FILE = "grid.json"
CELLS_DIR = "cells"
METRICS_FILE = "metrics.json"
HEATMAP_DIR = "heatmaps"
RESULTS_CSV, RESULTS_JSON, RESULTS_MD = "results.csv", "results.json", "results.md"
MANIFEST_FORMAT = "formal-sae-sweep/1"

# ------------------------------------------------------------------------------ the paper's grid
#: PAPER.md §4.4: dictionary sizes d_sae = d_in x {1, 2, 4, 8}.
PAPER_EXPANSION_FACTORS = (1, 2, 4, 8)
#: The paper's L1 alphas: the coefficient of the L1 norm *summed* over a batch's tokens and latents
#: (architecture ``paper``; SAELens's ``standard`` L1 would need ~alpha * tokens_per_batch * d_in).
PAPER_L1_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
PAPER_TOPK_KS = (8, 16, 32, 64, 128)
#: The paper's pipeline variants (PAPER.md §4.4). The pre-encoder bias only ever appears together
#: with input and decoder normalisation there, so the effects are confounded; so they are here.
PAPER_VARIANTS: dict[str, dict[str, bool]] = {
    "none": {},
    "input": {"normalize_input": True},
    "input+recon": {"normalize_input": True, "normalize_recon": True},
    "prebias+input+dec": {"pre_bias": True, "normalize_input": True, "normalize_decoder": True},
}
#: Training budgets. ``paper``: the authors' 5000 Adam steps at lr 1e-5 on batches of ~1000
#: tokens (128 sentences; ~600-1500 tokens depending on the language), here 1024 tokens.
#: ``small``: a tenth of the steps (500) on the same 1024-token batches; a whole paper grid (176
#: SAEs at d_in = 128) trains and evaluates in well under an hour on 2 CPU cores (measured in
#: docs/benchmarks.md). The batch size is kept because the paper's L1 term is *summed* over the
#: batch: alpha means the same only at the same batch size. The learning rate is raised tenfold,
#: to 1e-4, so that steps x lr (how far Adam, whose steps are ~lr per weight, can move the
#: weights) stays the paper's 0.05. Checked on expr with the paper-preset model, 7 cells of the
#: grid: 500 steps at 1e-4 land within 0.05 explained variance and 0.03 validity of 5000 steps at
#: 1e-5 in every cell, while 1e-3 overshoots (prebias+input+dec, TopK k=16, x2: explained variance
#: 0.98 and validity 0.97 instead of the paper scale's 0.34 and 0.77).
PAPER_SCALES: dict[str, dict[str, Any]] = {
    "paper": {"training_tokens": 5000 * 1024, "batch_size_tokens": 1024, "lr": 1e-5},
    "small": {"training_tokens": 500 * 1024, "batch_size_tokens": 1024, "lr": 1e-4},
}
PAPER_D_IN = 128  # the paper model's d_model

#: Evaluation settings of a sweep cell (keyword arguments of ``evaluate_sae``): 64 samples x 2
#: repeats of validity and 256 test sentences for the reconstruction metrics, about a second per
#: SAE on a CPU. ``splice=None`` splices each SAE the way its config says (``SAETrainConfig.splice``).
DEFAULT_EVALUATION: dict[str, Any] = {
    "split": "test",
    "n_samples": 64,
    "repeats": 2,
    "max_sentences": 256,
    "splice": None,
    "validity": True,
    "seed": 0,
    "batch_size": 128,
}

_VARIANT_FIELDS = ("pre_bias", "normalize_input", "normalize_recon", "normalize_decoder")
_VARIANT_PARTS = {"pre_bias": "prebias", "normalize_input": "input", "normalize_recon": "recon", "normalize_decoder": "dec"}
_SPARSITY_FIELDS = ("k", "l1_coefficient", "l0_coefficient")
_ABBREVIATIONS = {
    "expansion_factor": "x",
    "k": "k",
    "l1_coefficient": "a",
    "l0_coefficient": "l0c",
    "training_tokens": "t",
    "batch_size_tokens": "b",
    "lr": "lr",
    "seed": "s",
    "lr_warm_up_steps": "wu",
    "dead_feature_window": "dfw",
}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


# ------------------------------------------------------------------------------ grids
@dataclass
class SweepCell:
    """One SAE of a sweep: a stable id (its directory name) and its full training config."""

    id: str
    config: SAETrainConfig

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "config": self.config.to_dict()}


@dataclass
class SweepGrid:
    """A named list of SAE training runs. ``to_dict``/``from_dict`` round-trip through JSON."""

    name: str
    cells: list[SweepCell]

    def __post_init__(self) -> None:
        if not self.cells:
            raise SAEError(f"grid {self.name!r} has no cells")
        seen: set[str] = set()
        for cell in self.cells:
            if not _ID_RE.match(cell.id):
                raise SAEError(f"cell id {cell.id!r} of grid {self.name!r} is not a plain file name ([A-Za-z0-9._+=-])")
            if cell.id in seen:
                raise SAEError(f"grid {self.name!r} has two cells with id {cell.id!r}; cell ids must be unique")
            seen.add(cell.id)

    def __len__(self) -> int:
        return len(self.cells)

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.cells]

    def __getitem__(self, cell_id: str) -> SweepCell:
        for cell in self.cells:
            if cell.id == cell_id:
                return cell
        raise KeyError(cell_id)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cells": [c.to_dict() for c in self.cells]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepGrid:
        return grid_from_dict(d)

    def save(self, path: str | os.PathLike) -> Path:
        write_json(path, self.to_dict())
        return Path(path)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _id_part(name: str, value: Any) -> str:
    """A readable id fragment for one field's value, e.g. ``x4``, ``k16``, ``a0.01``, ``topk``."""
    if name == "architecture" or name == "hook_name" or name == "splice":
        return str(value)
    if isinstance(value, bool):
        return _VARIANT_PARTS.get(name, name) if value else f"no{_VARIANT_PARTS.get(name, name)}"
    if name in _ABBREVIATIONS:
        return f"{_ABBREVIATIONS[name]}{'none' if value is None else _fmt(value)}"
    return f"{name}={_fmt(value)}"


def _sanitize_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", text).strip("_.") or "cell"


def _make_config(base: dict[str, Any], overrides: dict[str, Any], where: str) -> SAETrainConfig:
    merged = {**base, **overrides}
    if "extra" in overrides and "extra" in base:
        merged["extra"] = {**base["extra"], **overrides["extra"]}
    try:
        config = SAETrainConfig.from_dict(merged)
        config.validate()
    except FormalSAEError as e:
        raise SAEError(f"{where}: {e}") from None
    except TypeError as e:
        raise SAEError(f"{where}: invalid SAE config ({e})") from None
    return config


def grid_from_dict(d: dict[str, Any]) -> SweepGrid:
    """Build a grid from a dict (as read from JSON).

    Keys: ``name``; ``base`` (``SAETrainConfig`` fields shared by every cell); ``axes`` (field ->
    list of values: the cells are their cartesian product, ids like ``topk-k16-x4``); ``cells``
    (explicit cells, each ``{"id": ..., "config": {...}}`` as written by :meth:`SweepGrid.to_dict`
    or a dict of field overrides with an optional ``"id"``); ``exclude`` (a list of partial
    settings; a product cell matching every item of one of them is dropped, e.g.
    ``{"architecture": "standard", "k": 8}``).

    Example::

        grid_from_dict({"name": "topk-vs-batchtopk", "base": {"training_tokens": 100_000},
                        "axes": {"architecture": ["topk", "batchtopk"], "k": [8, 16],
                                 "expansion_factor": [2, 4]}})   # 8 cells
    """
    if not isinstance(d, dict):
        raise SAEError(f"a grid must be a JSON object, got {type(d).__name__}")
    unknown = set(d) - {"name", "base", "axes", "cells", "exclude", "description"}
    if unknown:
        raise SAEError(f"unknown grid key(s) {sorted(unknown)}; use name, base, axes, cells, exclude")
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise SAEError("a grid needs a non-empty string 'name'")
    base = d.get("base") or {}
    if isinstance(base, SAETrainConfig):
        base = base.to_dict()
    if not isinstance(base, dict):
        raise SAEError(f"grid {name!r}: 'base' must be an object of SAETrainConfig fields")
    fields = {f.name for f in dataclasses.fields(SAETrainConfig)}
    cells: list[SweepCell] = []
    axes = d.get("axes") or {}
    if not isinstance(axes, dict):
        raise SAEError(f"grid {name!r}: 'axes' must map SAETrainConfig fields to lists of values")
    if axes:
        bad = sorted(set(axes) - fields)
        if bad:
            raise SAEError(
                f"grid {name!r}: axes {bad} are not SAETrainConfig fields (settings of a SAELens architecture go in base.extra)"
            )
        for key, values in axes.items():
            if not isinstance(values, list) or not values:
                raise SAEError(f"grid {name!r}: axis {key!r} must be a non-empty list of values")
        exclude = d.get("exclude") or []
        if not isinstance(exclude, list) or not all(isinstance(e, dict) for e in exclude):
            raise SAEError(f"grid {name!r}: 'exclude' must be a list of objects of field values")
        for combo in itertools.product(*axes.values()):
            overrides = dict(zip(axes, combo, strict=True))
            if any(all(overrides.get(k, base.get(k)) == v for k, v in e.items()) for e in exclude):
                continue
            cell_id = _sanitize_id("-".join(_id_part(k, v) for k, v in overrides.items()))
            cells.append(SweepCell(cell_id, _make_config(base, overrides, f"grid {name!r}, cell {cell_id!r}")))
    explicit = d.get("cells") or []
    if not isinstance(explicit, list):
        raise SAEError(f"grid {name!r}: 'cells' must be a list")
    for i, entry in enumerate(explicit):
        if not isinstance(entry, dict):
            raise SAEError(f"grid {name!r}: cell {i} must be an object")
        overrides = {k: v for k, v in entry.items() if k not in ("id", "config")}
        overrides = {**(entry.get("config") or {}), **overrides}
        cell_id = entry.get("id") or _sanitize_id("-".join(_id_part(k, v) for k, v in overrides.items()) or f"cell{i}")
        cells.append(SweepCell(str(cell_id), _make_config(base, overrides, f"grid {name!r}, cell {cell_id!r}")))
    if not cells:
        raise SAEError(f"grid {name!r} defines no cells: give 'axes' and/or 'cells'")
    return SweepGrid(name, cells)


def paper_grid(
    scale: str = "small",
    variants: Sequence[str] | None = None,
    *,
    d_in: int = PAPER_D_IN,
    sparsity: Sequence[str] = ("l1", "topk"),
    expansion_factors: Sequence[int] = PAPER_EXPANSION_FACTORS,
    hook_name: str = DEFAULT_HOOK,
    splice: str = "scale_correct",
    device: str = "cpu",
    seed: int = 0,
) -> SweepGrid:
    """The paper's SAE grid (PAPER.md §4.4) for a hook of width ``d_in``.

    Cells: expansion factor {1, 2, 4, 8} x (L1 alpha {1e-3, ..., 100} | TopK k {8, ..., 128}) x
    variant, all with architecture ``paper`` (the paper's loss: MSE averaged over tokens and
    dimensions + alpha x the L1 norm summed over the batch). TopK cells with k > d_sae =
    d_in x expansion factor are left out. With the 4 variants that is 4 x (24 + 20) = 176 cells at
    the paper's d_in = 128 (k = 128 at expansion 1 is kept: no sparsity, as in the paper), 172 at
    d_in = 64 (the ``small`` model preset) and 164 at d_in = 32.

    Args:
        scale: ``"paper"`` (5000 steps, lr 1e-5) or ``"small"`` (500 steps, lr 1e-4); see
            :data:`PAPER_SCALES`.
        variants: Names from :data:`PAPER_VARIANTS` (default: all four).
        d_in: Width of the hooked activation (``formal_sae.activations.hook_width``).
        sparsity: ``"l1"`` and/or ``"topk"``.
        expansion_factors: Dictionary sizes as multiples of ``d_in``.
        hook_name: Where the SAEs read (the paper: ``blocks.0.hook_resid_post``).
        splice: How SAEs trained on normalised inputs are spliced in (``SAETrainConfig.splice``).
        device: Training device of every cell.
        seed: Seed of every cell.

    Returns:
        A grid named ``paper`` (scale ``paper``) or ``paper-small``, with ids such as
        ``topk-k16-x4-none`` and ``l1-a0.01-x2-prebias+input+dec``.
    """
    if scale not in PAPER_SCALES:
        raise SAEError(f"unknown scale {scale!r}; choose one of {', '.join(PAPER_SCALES)}")
    variants = list(PAPER_VARIANTS) if variants is None else list(variants)
    bad = [v for v in variants if v not in PAPER_VARIANTS]
    if bad or not variants:
        raise SAEError(f"unknown paper variant(s) {bad}; choose from {', '.join(PAPER_VARIANTS)}")
    bad = [s for s in sparsity if s not in ("l1", "topk")]
    if bad or not sparsity:
        raise SAEError(f"unknown sparsity kind(s) {bad}; choose from l1, topk")
    if d_in < 1:
        raise SAEError(f"d_in must be >= 1, got {d_in}")
    base = SAETrainConfig(architecture=PAPER, hook_name=hook_name, splice=splice, device=device, seed=seed, **PAPER_SCALES[scale])
    cells = []
    for variant in variants:
        for kind in ("l1", "topk"):
            if kind not in sparsity:
                continue
            for exp in expansion_factors:
                values = PAPER_L1_ALPHAS if kind == "l1" else [k for k in PAPER_TOPK_KS if k <= d_in * exp]
                for value in values:
                    if kind == "l1":
                        cfg = dataclasses.replace(base, expansion_factor=exp, l1_coefficient=value, **PAPER_VARIANTS[variant])
                        cell_id = f"l1-a{_fmt(value)}-x{exp}-{variant}"
                    else:
                        cfg = dataclasses.replace(base, expansion_factor=exp, k=value, **PAPER_VARIANTS[variant])
                        cell_id = f"topk-k{value}-x{exp}-{variant}"
                    cfg.validate()
                    cells.append(SweepCell(cell_id, cfg))
    return SweepGrid("paper" if scale == "paper" else f"paper-{scale}", cells)


def load_grid(path_or_name: str | os.PathLike, *, scale: str | None = None, d_in: int | None = None) -> SweepGrid:
    """A grid by built-in name or from a JSON file.

    Built-in names: ``"paper"`` (the paper's grid, at the paper's scale unless ``scale`` says
    otherwise) and ``"paper-small"`` (the same cells at scale ``small``). ``d_in`` is the hook
    width (default 128, the paper model's); TopK cells with k > d_in x expansion factor are left
    out. Any other value is a path to a JSON grid (see :func:`grid_from_dict`), to which
    ``scale`` does not apply.
    """
    name = str(path_or_name)
    if name in ("paper", "paper-small"):
        if name == "paper-small" and scale not in (None, "small"):
            raise SAEError(f"grid 'paper-small' is the paper grid at scale 'small'; for scale {scale!r} use grid 'paper'")
        chosen = scale or ("paper" if name == "paper" else "small")
        return paper_grid(chosen, d_in=d_in or PAPER_D_IN)
    path = Path(name)
    if not path.is_file():
        raise SAEError(f"unknown grid {name!r}: use 'paper', 'paper-small' or the path of a JSON grid file")
    if scale is not None:
        raise SAEError(f"scale applies to the built-in paper grid only, not to the grid file {path}")
    try:
        data = read_json(path, what="grid file")
    except FormalSAEError as e:
        raise SAEError(str(e)) from None
    return grid_from_dict(data)


def resolve_grid(grid: SweepGrid | dict | str | os.PathLike, model=None, scale: str | None = None) -> SweepGrid:
    """A :class:`SweepGrid` from a grid, a dict, a built-in name or a JSON path; built-in paper
    grids are sized for ``model``'s width at the paper's hook when a model is given."""
    if isinstance(grid, SweepGrid):
        return grid
    if isinstance(grid, dict):
        return grid_from_dict(grid)
    d_in = sae_hook_width(model, DEFAULT_HOOK) if model is not None and str(grid) in ("paper", "paper-small") else None
    return load_grid(grid, scale=scale, d_in=d_in)


# ------------------------------------------------------------------------------ sweeping
def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config as compared between runs: the device does not change the experiment."""
    return {k: v for k, v in config.items() if k != "device"}


def _manifest(grid: SweepGrid, evaluation: dict[str, Any] | None, model, dataset) -> dict[str, Any]:
    meta = dataset_metadata(dataset)
    return {
        "format": MANIFEST_FORMAT,
        "grid": grid.to_dict(),
        "evaluation": evaluation,
        "model": {"name": model_name_of(model), "fingerprint": model_fingerprint(model)},
        "dataset": {"grammar": meta.grammar, "seed": meta.seed, "splits": meta.splits},
    }


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


def _check_evaluation(evaluate_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    settings = {**DEFAULT_EVALUATION, **(evaluate_kwargs or {})}
    unknown = set(settings) - set(DEFAULT_EVALUATION)
    if unknown:
        raise SAEError(f"unknown evaluation setting(s) {sorted(unknown)}; use {', '.join(DEFAULT_EVALUATION)}")
    if settings["splice"] not in (None, "scale_correct", "paper"):
        raise SAEError(
            f"evaluation splice must be None (each cell's own), 'scale_correct' or 'paper', got {settings['splice']!r}"
        )
    for key in ("n_samples", "repeats", "batch_size"):
        if not isinstance(settings[key], int) or settings[key] < 1:
            raise SAEError(f"evaluation setting {key} must be an integer >= 1, got {settings[key]!r}")
    return settings


def _preflight(model: HookedTransformer, dataset, grid: SweepGrid, evaluation: dict[str, Any] | None) -> None:
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
    if evaluation is not None and (evaluation["split"] not in dataset or len(dataset[evaluation["split"]]) == 0):
        raise SAEError(f"the dataset has no sentences in split {evaluation['split']!r} to evaluate SAEs on")


@contextlib.contextmanager
def _quiet_saelens_progress() -> Iterator[None]:
    """Hide SAELens's per-SAE training bar while the sweep shows one bar over cells."""
    from sae_lens.training import sae_trainer

    original = sae_trainer.tqdm
    sae_trainer.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        sae_trainer.tqdm = original


def _finished(cell_dir: Path, cell: SweepCell) -> dict[str, Any] | None:
    """The saved record of a finished cell, or None if it must be (re)trained."""
    path = cell_dir / METRICS_FILE
    if not (path.is_file() and (cell_dir / "cfg.json").is_file() and (cell_dir / "sae_weights.safetensors").is_file()):
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


def sweep(
    model: HookedTransformer,
    dataset: datasets.DatasetDict,
    grid: SweepGrid | dict | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    evaluate_kwargs: dict[str, Any] | None = None,
    evaluate: bool = True,
    resume: bool = True,
    progress: bool = True,
    plots: bool = True,
    workers: int = 1,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Train, save and evaluate every SAE of a grid on one model, sharing activations.

    The sweep is built in ``<out_dir>.in-progress`` and moved to ``out_dir`` when every cell is
    done (:mod:`formal_sae.outputs`); an interrupted sweep resumes from its finished cells when
    run again with the same grid, evaluation, model and data.

    Args:
        model: A formal-sae model (``HookedSAETransformer``).
        dataset: Its dataset: ``train`` feeds the SAEs, ``test`` (by default) evaluates them.
        grid: A :class:`SweepGrid`, a dict for :func:`grid_from_dict`, a built-in name
            (``"paper"``, ``"paper-small"``; sized to the model's width) or a JSON grid path.
        out_dir: Output directory (see the module docstring for its layout); an existing one is
            refused unless ``overwrite``.
        evaluate_kwargs: Overrides of :data:`DEFAULT_EVALUATION` (``n_samples``, ``repeats``,
            ``max_sentences``, ``splice``, ``validity``, ``split``, ``seed``, ``batch_size``).
        evaluate: False trains and saves the SAEs only (no metrics but the training time).
        resume: Skip the cells an interrupted run finished (False retrains every cell).
        progress: Show a progress bar over cells (SAELens's per-SAE bar is hidden).
        plots: Write the validity heat maps.
        overwrite: Replace an existing sweep in ``out_dir`` (only one formal-sae wrote).
        workers: Cells trained and evaluated at once, each in a worker process forked from this
            one with one torch thread (they share the activation cache without copying it;
            CPU only). 1 (the default) runs the cells here, on all of torch's threads. Small
            SAEs use one core better than several: on 2 cores ``workers=2`` measured 1.3x-1.5x
            faster than ``workers=1`` (see the benchmarks page). The results equal those of
            ``workers=1`` under ``torch.set_num_threads(1)`` bitwise; with more threads here
            they differ in the last bits (other thread counts sum in another order).

    Returns:
        One row per cell, in grid order: ``cell_id``, the config's fields, ``variant``,
        ``sparsity``/``sparsity_value``, ``train_seconds``, ``eval_seconds`` and the metrics
        (as in ``results.json``).

    Raises:
        SAEError: an interrupted sweep of another grid waits in ``<out_dir>.in-progress``, a
            cell does not fit the model, or a setting is invalid. Nothing is trained in those cases.
        OutputError: ``out_dir`` exists (see :mod:`formal_sae.outputs`).
    """
    grid = resolve_grid(grid, model)
    evaluation = _check_evaluation(evaluate_kwargs) if evaluate else None
    _check_workers(workers, model, grid)
    out = Path(out_dir)
    manifest = _manifest(grid, evaluation, model, dataset)
    check_output(out, "sweep", overwrite)
    if not overwrite:
        _check_manifest(in_progress_path(out), manifest)
    _preflight(model, dataset, grid, evaluation)
    with output_dir(out, "sweep", manifest, overwrite=overwrite, resumable=True) as work:
        write_json(work / GRID_FILE, manifest)
        rows = _sweep_into(work, model, dataset, grid, manifest, evaluation, resume, progress, plots, workers)
    return rows


def _sweep_into(
    work: Path,
    model,
    dataset,
    grid: SweepGrid,
    manifest: dict[str, Any],
    evaluation,
    resume: bool,
    progress: bool,
    plots: bool,
    workers: int,
) -> list[dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    if resume:
        for cell in grid.cells:
            record = _finished(work / CELLS_DIR / cell.id, cell)
            if record is not None:
                records[cell.id] = record
    todo = [c for c in grid.cells if c.id not in records]
    bar = tqdm(total=len(grid), initial=len(grid) - len(todo), disable=not progress, desc=f"sweep {grid.name}", unit="SAE")
    with flush_denormals(), _quiet_saelens_progress():
        for hook in dict.fromkeys(c.config.hook_name for c in todo):  # the model runs once per hook
            cells = [c for c in todo if c.config.hook_name == hook]
            acts = cache_activations(model, dataset, hook, max(c.config.training_tokens for c in cells))
            for record in _run_cells(model, dataset, cells, acts, work, evaluation, workers):
                records[record["cell_id"]] = record
                rows = [_row(c, records[c.id]) for c in grid.cells if c.id in records]
                write_results(work, rows, grid, manifest, plots=False)
                bar.set_postfix_str(f"last: {record['cell_id']}")
                bar.update(1)
            del acts
    bar.close()
    rows = [_row(c, records[c.id]) for c in grid.cells]
    write_results(work, rows, grid, manifest, plots=plots)
    return rows


def _run_cell(
    model, dataset, acts: torch.Tensor, out: Path, evaluation: dict[str, Any] | None, cell: SweepCell
) -> dict[str, Any]:
    """Train, save and (if ``evaluation``) evaluate one cell into ``out/cells/<id>``; its record."""
    cell_dir = out / CELLS_DIR / cell.id
    t0 = time.perf_counter()
    # A cell is redone whole (no checkpoints: cells are short). Whatever an interrupted attempt
    # left in its folder (an SAE without metrics, a damaged metrics.json) is the sweep's own.
    shutil.rmtree(cell_dir, ignore_errors=True)
    sae = train_sae(model, dataset, cell.config, activations=acts, out_dir=cell_dir, n_checkpoints=0)
    train_wall = time.perf_counter() - t0
    record: dict[str, Any] = {
        "cell_id": cell.id,
        "config": cell.config.to_dict(),
        "train_seconds": float(getattr(sae, "formal_sae_train_seconds", train_wall)),
        "train_wall_seconds": train_wall,
        "eval_seconds": None,
        "metrics": None,
    }
    if evaluation is not None:
        kwargs = dict(evaluation)
        kwargs["splice"] = kwargs["splice"] or cell.config.splice
        t0 = time.perf_counter()
        record["metrics"] = evaluate_sae(model, sae, dataset, **kwargs)
        record["eval_seconds"] = time.perf_counter() - t0
    write_json(cell_dir / METRICS_FILE, record)  # written last: marks the cell finished
    return record


def _check_workers(workers: int, model, grid: SweepGrid) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SAEError(f"workers must be an integer >= 1, got {workers!r}")
    if workers == 1:
        return
    if "fork" not in multiprocessing.get_all_start_methods():
        raise SAEError("workers > 1 needs processes started with fork (Linux, macOS); use workers=1 on this platform")
    devices = {str(model.cfg.device)} | {c.config.device for c in grid.cells}
    if devices != {"cpu"}:
        raise SAEError(
            f"workers > 1 share the CPU's cores, but this sweep runs on {', '.join(sorted(devices))}: use workers=1 "
            "on a GPU (a forked process cannot use CUDA)"
        )


def _run_cells(
    model, dataset, cells: list[SweepCell], acts: torch.Tensor, out: Path, evaluation: dict[str, Any] | None, workers: int
) -> Iterator[dict[str, Any]]:
    """Each cell's record, as it finishes: here one after the other, or in ``workers`` processes."""
    run = functools.partial(_run_cell, model, dataset, acts, out, evaluation)
    if workers == 1:
        yield from map(run, cells)
        return
    # Forked workers inherit ``run`` with the model, the data and the cache (no pickling, no copy).
    # They run on one torch thread: OpenMP, once used here, hangs a forked child that starts more
    # threads.
    pool = ProcessPoolExecutor(
        min(workers, len(cells)), mp_context=multiprocessing.get_context("fork"), initializer=_start_worker, initargs=(run,)
    )
    try:
        # Costliest first (longest-processing-time order), so that no worker is left alone with a
        # big cell at the end; the order changes no result.
        by_cost = sorted(cells, key=lambda cell: -_training_cost(cell.config))
        pending = {pool.submit(_run_worker_cell, cell): cell.id for cell in by_cost}
        for future in as_completed(pending):
            try:
                yield future.result()
            except BrokenProcessPool:
                raise SAEError(
                    f"a sweep worker process died (out of memory?) or could not start while running cell {pending[future]}; "
                    "finished cells are saved: run the sweep again to resume, with fewer workers"
                ) from None
    finally:  # on an error or Ctrl-C too: hand out no further cell, let the handed-out ones finish
        pool.shutdown(wait=True, cancel_futures=True)


def _training_cost(config: SAETrainConfig) -> int:
    """A rough estimate of a cell's training time, to order cells: tokens x dictionary size."""
    return config.training_tokens * config.expansion_factor


_worker_run: Callable[[SweepCell], dict[str, Any]] | None = None


def _start_worker(run: Callable[[SweepCell], dict[str, Any]]) -> None:
    global _worker_run
    torch.set_num_threads(1)
    _worker_run = run


def _run_worker_cell(cell: SweepCell) -> dict[str, Any]:
    return _worker_run(cell)


# ------------------------------------------------------------------------------ results
def variant_of(config: SAETrainConfig | dict[str, Any]) -> str:
    """The pipeline variant's name: ``none``, ``input``, ``input+recon``, ``prebias+input+dec``, ..."""
    d = config.to_dict() if isinstance(config, SAETrainConfig) else config
    parts = [_VARIANT_PARTS[f] for f in ("pre_bias", "normalize_input", "normalize_recon", "normalize_decoder") if d.get(f)]
    return "+".join(parts) or "none"


def sparsity_of(config: SAETrainConfig | dict[str, Any]) -> tuple[str, str, float | int | None]:
    """``(kind, column label, value)``: ``("topk", "k", 16)``, ``("l1", "alpha", 0.01)``, or for a
    SAELens architecture its name with its sparsity setting, e.g. ``("jumprelu", "l0_coefficient", 1.0)``."""
    d = config.to_dict() if isinstance(config, SAETrainConfig) else config
    arch = d.get("architecture")
    if arch == PAPER:
        return ("topk", "k", d["k"]) if d.get("k") is not None else ("l1", "alpha", d.get("l1_coefficient") or 0.0)
    for name in _SPARSITY_FIELDS:
        if d.get(name) is not None:
            return arch, name, d[name]
    return arch, "sparsity", None


def _row(cell: SweepCell, record: dict[str, Any]) -> dict[str, Any]:
    config = cell.config.to_dict()
    kind, _, value = sparsity_of(config)
    row: dict[str, Any] = {"cell_id": cell.id, **config, "variant": variant_of(config), "sparsity": kind}
    row["sparsity_value"] = value
    row["train_seconds"] = record.get("train_seconds")
    row["train_wall_seconds"] = record.get("train_wall_seconds")
    row["eval_seconds"] = record.get("eval_seconds")
    for key, val in (record.get("metrics") or {}).items():
        if key == "hook_name":
            continue
        row[{"architecture": "saved_architecture", "splice": "eval_splice"}.get(key, key)] = val
    return row


def _csv_value(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(to_jsonable(value), sort_keys=True)
    return "" if value is None else value


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_results(
    out: str | os.PathLike, rows: list[dict[str, Any]], grid: SweepGrid, manifest: dict[str, Any], plots: bool = True
) -> list[Path]:
    """Write ``results.csv``, ``results.json``, ``results.md`` and (if ``plots``) the heat maps;
    returns the heat-map paths."""
    out = Path(out)
    write_json(out / RESULTS_JSON, rows)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    atomic_write_text(out / RESULTS_CSV, buf.getvalue())
    heatmaps = write_heatmaps(out / HEATMAP_DIR, rows) if plots else []
    atomic_write_text(out / RESULTS_MD, results_markdown(rows, grid, manifest, [p.relative_to(out) for p in heatmaps]))
    return heatmaps


def results_markdown(rows: list[dict[str, Any]], grid: SweepGrid, manifest: dict[str, Any], heatmaps: Sequence[Path] = ()) -> str:
    """A markdown report: the sweep's settings, one table row per cell, links to the heat maps."""
    ev = manifest.get("evaluation")
    lines = [
        f"# Sweep `{grid.name}`",
        "",
        f"- model: `{manifest['model']['name']}` (weights sha256 `{manifest['model']['fingerprint'][:12]}`)",
        f"- dataset: grammar `{manifest['dataset']['grammar']}`, seed {manifest['dataset']['seed']}",
        f"- cells: {len(rows)} of {len(grid)} finished",
        "- evaluation: "
        + (
            "none"
            if ev is None
            else f"split `{ev['split']}` ({ev['max_sentences']} sentences), validity {ev['n_samples']} samples x {ev['repeats']} repeats, "
            f"splice {ev['splice'] or 'per cell'}"
        ),
        "",
        "| cell | sparsity | value | x | variant | validity | expl. var. | L0 | CE score | dead | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        validity = _num(r.get("validity"), 2)
        if r.get("validity_std") is not None and validity != "–":
            validity += f" ± {r['validity_std']:.2f}"
        lines.append(
            f"| `{r['cell_id']}` | {r['sparsity']} | {_num(r['sparsity_value'], 3) if isinstance(r['sparsity_value'], float) else _num(r['sparsity_value'])} "
            f"| {r['expansion_factor']} | {r['variant']} | {validity} | {_num(r.get('explained_variance'))} | {_num(r.get('l0'), 1)} "
            f"| {_num(r.get('ce_loss_score'))} | {_num(r.get('dead_fraction'), 2)} | {_num(r.get('train_seconds'), 1)} |"
        )
    if heatmaps:
        lines += ["", "## Validity heat maps", ""]
        lines += [f"![{p.stem}]({p.as_posix()})" for p in heatmaps]
    return "\n".join(lines) + "\n"


def _heatmap_groups(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str, list[dict[str, Any]]]]:
    """Rows grouped into heat maps: file stem -> (title, column label, rows). A heat map holds
    the cells that differ only in expansion factor and sparsity value."""
    fields = [
        f.name for f in dataclasses.fields(SAETrainConfig) if f.name not in ("expansion_factor", "device", *_SPARSITY_FIELDS)
    ]
    groups: dict[str, list[dict[str, Any]]] = {}
    keys: dict[str, dict[str, Any]] = {}
    for row in rows:
        rest = {f: row.get(f) for f in fields}
        key = json.dumps([row["sparsity"], canonical(rest)], sort_keys=True)
        groups.setdefault(key, []).append(row)
        keys[key] = rest
    varying = [f for f in fields if len({json.dumps(canonical(keys[k][f]), sort_keys=True) for k in groups}) > 1]
    out: dict[str, tuple[str, str, list[dict[str, Any]]]] = {}
    for key, group in groups.items():
        first = group[0]
        parts = [first["sparsity"], first["variant"]]
        parts += [_id_part(f, keys[key][f]) for f in varying if f not in _VARIANT_FIELDS]
        stem = _sanitize_id("validity-" + "-".join(parts))
        _, label, _ = sparsity_of(first)
        title = f"validity: {first['sparsity']} SAEs, variant {first['variant']}"
        extra = [f"{f}={_fmt(keys[key][f])}" for f in varying if f not in _VARIANT_FIELDS]
        if extra:
            title += f" ({', '.join(extra)})"
        out[stem] = (title, label, group)
    return out


def plot_heatmap(
    values: list[list[float]], row_labels: Sequence[str], col_labels: Sequence[str], title: str, xlabel: str, path: Path
) -> None:
    """An annotated validity heat map (rows: expansion factor, columns: sparsity) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.array(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.1 + 0.8 * len(col_labels), 1.2 + 0.55 * len(row_labels)))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(col_labels)), labels=list(col_labels))
    ax.set_yticks(range(len(row_labels)), labels=list(row_labels))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("expansion factor")
    ax.set_title(title, fontsize=9)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v = data[i, j]
            ax.text(j, i, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if np.isnan(v) or v > 0.6 else "white")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_heatmaps(directory: str | os.PathLike, rows: list[dict[str, Any]], metric: str = "validity") -> list[Path]:
    """One heat map of ``metric`` per sparsity kind and variant (and any other setting that
    varies); cells without the metric (not evaluated) produce no heat map. Returns the paths."""
    rows = [r for r in rows if isinstance(r.get(metric), (int, float))]
    paths = []
    for stem, (title, label, group) in _heatmap_groups(rows).items():
        exps = sorted({r["expansion_factor"] for r in group})
        values = sorted({r["sparsity_value"] for r in group if r["sparsity_value"] is not None})
        table = [[math.nan] * len(values) for _ in exps]
        for r in group:
            if r["sparsity_value"] is not None:
                table[exps.index(r["expansion_factor"])][values.index(r["sparsity_value"])] = float(r[metric])
        path = Path(directory) / f"{stem}.png"
        plot_heatmap(table, [str(e) for e in exps], [_fmt(v) for v in values], title, label, path)
        paths.append(path)
    return paths

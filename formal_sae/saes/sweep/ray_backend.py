"""Running a sweep's cells as tasks on a Ray cluster (``sweep(..., backend=RayBackend(...))``).

Ray is optional (``pip install formal-sae[ray]``): this module imports it only when a sweep asks
for it. What moves where:

* the driver (the process that calls [`sweep`][formal_sae.sweep]) computes each hook's
  activation cache as the local backend does, and puts into Ray's object store, once per sweep,
  the model (its saved files), the dataset's splits a cell reads (in memory) and, once per hook,
  the cache (a NumPy array: every worker of a node maps the same copy, without copying it);
* each cell is one Ray task, which trains, saves and evaluates the SAE exactly as the local
  backend does (the same function, on ``num_cpus`` torch threads), but into a temporary folder
  on its node, and returns the cell's files and record;
* the driver alone writes into the sweep: each cell folder appears whole (built beside it and
  renamed), in the local backend's layout, so a sweep resumes across backends;
* a task whose worker process dies (killed, out of memory, a node lost) is retried
  (``max_retries``); an exception raised by a cell (or Ctrl-C) is not retried but stops the
  sweep: the cells whose tasks had finished are stored first, the others are cancelled.

Before anything is put or trained, the session connects (a clear error for an unreachable
address), checks that the cluster has the resources a cell asks for (GPUs included), and runs a
tiny task on every node that checks the workers import formal-sae at the driver's versions of
formal-sae and of the libraries that decide the results (`CHECKED_PACKAGES`); see `ray_cluster`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import datasets
import torch

from formal_sae.errors import FormalSAEError, SAEError
from formal_sae.io import atomic_write_bytes
from formal_sae.outputs import in_progress_path
from formal_sae.saes.sweep import cells as cell_module
from formal_sae.saes.sweep import ray_cluster
from formal_sae.saes.sweep.cells import quiet_saelens_progress
from formal_sae.saes.sweep.evaluation import SweepEvaluation
from formal_sae.saes.sweep.grid import SweepCell, SweepGrid
from formal_sae.saes.sweep.ray_cluster import (  # noqa: F401 (the cluster's public names, re-exported here)
    CHECKED_PACKAGES,
    CONNECT_TIMEOUT_S,
    INSTALL,
    PROBE_TIMEOUT_S,
    START_CLUSTER,
    RayBackend,
    _one_line,
    import_ray,
    probe_versions,
)

#: The ``sweep(backend=...)`` names: the forked-process pool of this machine, or a Ray cluster.
BACKENDS = ("local", "ray")
#: What a cell folder is built under in the driver before it is renamed into place (``cells/.<id>.incoming-*``).
INCOMING = ".incoming-"
#: What a cell folder being replaced is renamed to before it is deleted (``cells/.<id>.replaced-*``).
REPLACED = ".replaced-"
#: Task names start with this: a cell's worker process is titled ``ray::formal-sae-cell:<id>``.
TASK_PREFIX = "formal-sae-cell:"


def resolve_backend(backend: str | RayBackend, workers: int) -> RayBackend | None:
    """The Ray backend a ``sweep(backend=...)`` asks for, or None for the local one; checked
    (Ray installed, no ``workers``) before anything is trained."""
    if isinstance(backend, str) and backend in BACKENDS:
        backend = RayBackend() if backend == "ray" else None
    elif not isinstance(backend, RayBackend):
        raise SAEError(f"backend must be one of {', '.join(map(repr, BACKENDS))} or a RayBackend, got {backend!r}")
    if backend is None:
        return None
    if workers != 1:
        raise SAEError(
            f"workers={workers} applies to the local backend; on Ray the cluster's CPUs set how many cells run at once "
            "(num_cpus per cell): leave workers at 1"
        )
    import_ray()
    return backend


# ------------------------------------------------------------------------------ the driver
class RaySession:
    """A sweep's connection to a Ray cluster: opened (checked, model and data put) by
    `open`, then `run` once per hook."""

    def __init__(self, backend: RayBackend, model, dataset: datasets.DatasetDict, evaluation: SweepEvaluation | None):
        self.backend, self.model, self.dataset, self.evaluation = backend, model, dataset, evaluation
        self.ray = import_ray()
        self.connected_here = False
        self.shared: list[Any] = []

    @classmethod
    @contextlib.contextmanager
    def open(
        cls, backend: RayBackend, model, dataset: datasets.DatasetDict, evaluation: SweepEvaluation | None, grid: SweepGrid
    ) -> Iterator[RaySession]:
        session = cls(backend, model, dataset, evaluation)
        try:
            session.connect()
            session.check_resources(grid)
            session.check_versions()
            session.put_shared()
            yield session
        finally:
            session.close()

    def connect(self) -> None:
        if ray_cluster.connect(self.ray, self.backend.address):
            self.connected_here = True

    def close(self) -> None:
        self.shared.clear()
        if self.connected_here:
            self.ray.shutdown()
            self.connected_here = False

    def where(self) -> str:
        return ray_cluster.cluster_name(self.backend.address)

    def check_resources(self, grid: SweepGrid) -> None:
        """Refuse what no node can run (`ray_cluster.check_resources`)."""
        devices = {str(self.model.cfg.device)} | {c.config.device for c in grid.cells}
        ray_cluster.check_resources(self.ray, self.backend, devices)

    def check_versions(self) -> None:
        """Every node must run the driver's versions (`ray_cluster.check_versions`)."""
        ray_cluster.check_versions(self.ray, self.backend)

    def put_shared(self) -> None:
        """The model's files and the dataset's needed splits, into the object store once."""
        model_files = _model_files(self.model)
        self.shared = [
            self.ray.put(model_files),
            self.ray.put(_portable_dataset(self.dataset, self.evaluation)),
        ]
        self.model_device = str(self.model.cfg.device)

    def run(self, cells: list[SweepCell], acts: torch.Tensor, cells_dir: Path) -> Iterator[dict[str, Any]]:
        """Each cell's record as it finishes, its folder written into ``cells_dir`` first."""
        ray, b = self.ray, self.backend
        from formal_sae.models import model_fingerprint

        acts_ref = ray.put(acts.detach().cpu().numpy())
        shared = {
            "model": self.shared[0],
            "dataset": self.shared[1],
            "acts": acts_ref,
            "acts_device": str(acts.device),
            "model_device": self.model_device,
            "fingerprint": model_fingerprint(self.model),
        }
        task = ray.remote(run_cell_task)
        pending: dict[Any, SweepCell] = {}
        # costliest first, as the local workers: no node is left alone with a big cell at the end
        for cell in sorted(cells, key=lambda c: -c.config.training_tokens * c.config.expansion_factor):
            options = {**b.task_options(), "max_retries": b.max_retries, "retry_exceptions": False}
            ref = task.options(name=f"{TASK_PREFIX}{cell.id}", **options).remote(
                [shared], cell, self.evaluation, b.threads
            )  # shared travels inside a list: the worker fetches (and keeps) each object once, not per task
            pending[ref] = cell
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(done[0])
                record, files = self._result(done[0], cell)
                store_cell(cells_dir, cell.id, files)
                yield record
        finally:  # an error or Ctrl-C: the cells that finished are stored (not redone), the others cancelled
            self._store_finished(pending, cells_dir)
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=False)
            del acts_ref

    def _store_finished(self, pending: dict[Any, SweepCell], cells_dir: Path) -> None:
        """Store the cells of ``pending`` whose tasks have finished without an error (removing
        them from ``pending``), as the local backend keeps the cells its workers finish when the
        sweep stops. Best effort: the error that stops the sweep is the one reported."""
        if not pending:
            return
        with contextlib.suppress(Exception):
            ready, _ = self.ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in ready:
                cell = pending.pop(ref)
                with contextlib.suppress(Exception):
                    _, files = self._result(ref, cell)
                    store_cell(cells_dir, cell.id, files)

    def _result(self, ref, cell: SweepCell) -> tuple[dict[str, Any], dict[str, bytes]]:
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, FormalSAEError):
                raise type(cause)(f"cell {cell.id} (on {self.where()}): {cause}") from None
            raise SAEError(f"cell {cell.id} failed on {self.where()}: {_one_line(e)}") from None
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError) as e:
            raise SAEError(
                f"the Ray worker running cell {cell.id} died {self.backend.max_retries + 1} time(s) (max_retries="
                f"{self.backend.max_retries}; out of memory?): {_one_line(e)}. Finished cells are saved: run the sweep "
                "again to resume"
            ) from None
        except ray.exceptions.RayError as e:
            raise SAEError(
                f"cell {cell.id} failed on {self.where()}: {_one_line(e)}. Finished cells are saved: run the sweep again to resume"
            ) from None


def store_cell(cells_dir: Path, cell_id: str, files: Mapping[str, bytes]) -> Path:
    """Write a cell's folder from its files, whole: built as ``cells/.<id>.incoming-*`` and renamed,
    replacing whatever an earlier attempt left (renamed aside to ``cells/.<id>.replaced-*`` first,
    then deleted: a folder that cannot be deleted whole is left there, hidden, not in the way)."""
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging = cells_dir / f".{cell_id}{INCOMING}{tag}"
    for name, data in files.items():
        path = staging / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise SAEError(f"cell {cell_id}: a worker returned the unsafe file name {name!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    final = cells_dir / cell_id
    aside = cells_dir / f".{cell_id}{REPLACED}{tag}"
    if final.exists() or final.is_symlink():
        os.replace(final, aside)  # a rename: the cell folder is missing only between two renames
    shutil.rmtree(in_progress_path(final), ignore_errors=True)  # a local attempt's leftovers
    os.replace(staging, final)
    shutil.rmtree(aside, ignore_errors=True)
    return final


def remove_incoming(cells_dir: Path) -> None:
    """Delete the cell folders a killed driver left half-written or half-deleted (see `store_cell`)."""
    if cells_dir.is_dir():
        for pattern in (f".*{INCOMING}*", f".*{REPLACED}*"):
            for stale in cells_dir.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)


def _model_files(model) -> dict[str, bytes]:
    """The model as [`save_model`][formal_sae.save_model] writes it, file name -> bytes."""
    from formal_sae.models import save_model

    if getattr(model, "formal_sae_config", None) is None:
        raise SAEError(
            "the Ray backend ships the model as save_model writes it, which needs a formal-sae model "
            "(build_model, train_model or load_model)"
        )
    with tempfile.TemporaryDirectory(prefix="formal-sae-ray-model-") as tmp:
        root = save_model(model, Path(tmp) / "model")
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _portable_dataset(dataset: datasets.DatasetDict, evaluation: SweepEvaluation | None) -> datasets.DatasetDict:
    """The splits a cell reads, in memory (a dataset opened from disk maps files that other nodes
    do not have): the evaluation split whole; ``train`` with no rows (its sentences are in the
    activation cache; a cell reads only its metadata)."""
    split = None if evaluation is None else evaluation.split
    out = {}
    for name, data in dataset.items():
        if name == split:
            out[name] = _in_memory(data)
        elif name == "train":
            out[name] = _in_memory(data.select([]))
    return datasets.DatasetDict(out)


def _in_memory(split: datasets.Dataset) -> datasets.Dataset:
    from datasets.table import InMemoryTable

    if split._indices is not None:
        split = split.flatten_indices(keep_in_memory=True)
    copy = datasets.Dataset(InMemoryTable(split.data.table), info=split.info.copy(), split=split.split)
    fmt = split.format
    copy.set_format(fmt["type"], fmt["columns"], fmt["output_all_columns"], **fmt["format_kwargs"])
    return copy


# ------------------------------------------------------------------------------ a worker
#: What a worker process holds between tasks: kind -> (object id, value). A sweep's tasks share one
#: model, dataset and cache, fetched and loaded by the first task a worker runs and kept for the next.
_HELD: dict[str, tuple[str, Any]] = {}


def _held(kind: str, ref, load) -> Any:
    import ray

    key = ref.hex()
    if kind in _HELD and _HELD[kind][0] == key:
        return _HELD[kind][1]
    _HELD.pop(kind, None)  # the previous sweep's or hook's: release it first
    value = load(ray.get(ref))
    _HELD[kind] = (key, value)
    return value


def _load_model(files: Mapping[str, bytes], device: str, fingerprint: str):
    from formal_sae.models import load_model, model_fingerprint

    with tempfile.TemporaryDirectory(prefix="formal-sae-ray-model-") as tmp:
        for name, data in files.items():
            path = Path(tmp) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        model = load_model(tmp, device=device)
    if model_fingerprint(model) != fingerprint:
        raise SAEError(
            "the model loaded on a Ray worker differs from the driver's (weights sha256); is formal-sae the same version?"
        )
    return model


def _tensor(array, device: str) -> torch.Tensor:
    with warnings.catch_warnings():  # the object store's arrays are read-only; training only reads the cache
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        acts = torch.from_numpy(array)
    return acts if device == "cpu" else acts.to(device)


def run_cell_task(
    shared: list[dict[str, Any]], cell: SweepCell, evaluation: SweepEvaluation | None, threads: int
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A Ray task: one cell trained, saved and evaluated as the local backend does, into a
    temporary folder; returns its record and its folder's files (name -> bytes) for the driver."""
    from formal_sae.saes.training import flush_denormals

    (refs,) = shared
    torch.set_num_threads(threads)
    model = _held("model", refs["model"], lambda files: _load_model(files, refs["model_device"], refs["fingerprint"]))
    dataset = _held("dataset", refs["dataset"], lambda ds: ds)
    acts = _held("acts", refs["acts"], lambda array: _tensor(array, refs["acts_device"]))
    with tempfile.TemporaryDirectory(prefix="formal-sae-ray-cell-") as tmp, flush_denormals(), quiet_saelens_progress():
        record = cell_module._run_cell(model, dataset, acts, Path(tmp), evaluation, cell)
        cell_dir = Path(tmp) / cell_module.CELLS_DIR / cell.id
        files = {str(p.relative_to(cell_dir)): p.read_bytes() for p in sorted(cell_dir.rglob("*")) if p.is_file()}
    return record, files

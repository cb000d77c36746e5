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
  (``max_retries``); an exception raised by a cell is not retried but stops the sweep, keeping
  the finished cells.

Before anything is put or trained, the session connects (a clear error for an unreachable
address), checks that the cluster has the resources a cell asks for (GPUs included), and runs a
tiny task on every node that checks the workers import formal-sae at the driver's formal-sae
and torch versions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch

from formal_sae.errors import FormalSAEError, SAEError
from formal_sae.io import atomic_write_bytes
from formal_sae.outputs import in_progress_path
from formal_sae.saes.sweep.evaluation import SweepEvaluation
from formal_sae.saes.sweep.grid import SweepCell, SweepGrid

#: The ``sweep(backend=...)`` names: the forked-process pool of this machine, or a Ray cluster.
BACKENDS = ("local", "ray")
#: What a cell folder is built under in the driver before it is renamed into place (``cells/.<id>.incoming-*``).
INCOMING = ".incoming-"
#: Task names start with this: a cell's worker process is titled ``ray::formal-sae-cell:<id>``.
TASK_PREFIX = "formal-sae-cell:"
#: Seconds the version check waits for every node to answer.
PROBE_TIMEOUT_S = 180.0
#: Seconds to wait for a TCP connection to the cluster's address before calling it unreachable.
CONNECT_TIMEOUT_S = 5.0

INSTALL = "pip install formal-sae[ray]"
START_CLUSTER = (
    "start one with `ray start --head --port 6379` on the head node (and `ray start --address HEAD_IP:6379` on "
    "each other node), then pass that address (see 'Scaling out' in the docs)"
)


@dataclass(frozen=True)
class RayBackend:
    """Run a sweep's cells as Ray tasks: ``sweep(..., backend=RayBackend(address="auto"))``
    (``backend="ray"`` is ``RayBackend()``). Needs ``pip install formal-sae[ray]``.

    The results are those of the local backend: bitwise those of ``workers=1`` under
    ``torch.set_num_threads(1)`` with ``num_cpus=1`` (the default) on CPU nodes of the driver's
    versions. In a process where ``ray.init`` was already called, that connection is used and
    ``address`` is ignored."""

    address: str | None = None
    """Ray cluster address, HOST:PORT of its head (`ray start --head`), 'auto' for the cluster started on this machine, ray://HOST:PORT for Ray Client; None: $RAY_ADDRESS, else a Ray instance started on this machine for the sweep"""
    num_cpus: float = 1
    """CPUs per cell (Ray resources; torch runs on that many threads, at least one)"""
    num_gpus: float = 0
    """GPUs per cell; fractional (e.g. 0.25) lets several small SAEs share one GPU"""
    max_retries: int = 3
    """times a cell is retried when its worker process dies (killed, out of memory, node lost); -1: forever"""
    runtime_env: dict[str, Any] = field(default_factory=dict)
    """Ray runtime environment of the tasks, JSON (e.g. {"env_vars": {...}}); the version check runs in it too"""

    def __post_init__(self) -> None:
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise SAEError(f"RayBackend address must be None, 'auto' or HOST:PORT, got {self.address!r}")
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value:
                raise SAEError(f"RayBackend {name} must be a number >= 0, got {value!r}")
        if self.num_cpus <= 0 and self.num_gpus <= 0:
            raise SAEError("RayBackend needs num_cpus > 0 or num_gpus > 0: a cell must ask for some resource")
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise SAEError(f"RayBackend num_gpus above 1 must be a whole number (Ray's rule), got {self.num_gpus}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < -1:
            raise SAEError(f"RayBackend max_retries must be an integer >= 0 (or -1: forever), got {self.max_retries!r}")
        if not isinstance(self.runtime_env, Mapping):
            raise SAEError(f"RayBackend runtime_env must be a mapping (Ray's runtime_env), got {self.runtime_env!r}")

    @property
    def threads(self) -> int:
        """Torch threads of a cell's task."""
        return max(1, int(self.num_cpus))

    def task_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.runtime_env:
            options["runtime_env"] = dict(self.runtime_env)
        return options


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


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise SAEError(f"the Ray backend needs Ray, which is not installed ({e}): {INSTALL}") from None
    return ray


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
        ray, address = self.ray, self.backend.address
        if ray.is_initialized():
            return
        if address not in (None, "local"):
            _check_reachable(ray, address)
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
            where = f"the Ray cluster at {address}" if address else "a Ray instance"
            raise SAEError(f"cannot connect to {where}: {_one_line(e)}; {START_CLUSTER}") from None
        self.connected_here = True

    def close(self) -> None:
        self.shared.clear()
        if self.connected_here:
            self.ray.shutdown()
            self.connected_here = False

    def where(self) -> str:
        return f"the Ray cluster at {self.backend.address}" if self.backend.address else "the Ray cluster"

    def check_resources(self, grid: SweepGrid) -> None:
        """Refuse what no node can run: a GPU request on a cluster without GPUs, a cell asking for
        more CPUs than any node has, CUDA cells without GPUs."""
        b = self.backend
        devices = {str(self.model.cfg.device)} | {c.config.device for c in grid.cells}
        gpu_devices = sorted(d for d in devices if d.startswith("cuda"))
        if gpu_devices and b.num_gpus <= 0:
            raise SAEError(
                f"this sweep runs on {', '.join(gpu_devices)}, but RayBackend asks for no GPU per cell: pass num_gpus "
                "(--ray-num-gpus), e.g. 0.25 to share one GPU between four cells"
            )
        if "mps" in devices:
            raise SAEError("the Ray backend runs cells on CPUs or CUDA GPUs, not on mps; use the local backend on a Mac")
        total = self.ray.cluster_resources()
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        summary = f"{total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs on {len(nodes)} node(s)"
        if b.num_gpus > 0 and total.get("GPU", 0) <= 0:
            raise SAEError(
                f"num_gpus={b.num_gpus:g} per cell was asked for, but {self.where()} has no GPUs ({summary}); "
                "use num_gpus=0 (--ray-num-gpus 0) with CPU cells, or add GPU nodes (`ray start --num-gpus N`)"
            )
        if not any(n.get("CPU", 0) >= b.num_cpus and n.get("GPU", 0) >= b.num_gpus for n in nodes):
            raise SAEError(
                f"no node of {self.where()} has {b.num_cpus:g} CPUs and {b.num_gpus:g} GPUs for a cell ({summary}); "
                "ask for less per cell (--ray-num-cpus, --ray-num-gpus)"
            )

    def check_versions(self) -> None:
        """Run a tiny task on every node (in the tasks' runtime environment): each must import
        formal-sae and have the driver's formal-sae and torch versions."""
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = probe_versions()
        probe = ray.remote(_probe_function())
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = {}
        for node in nodes:
            options = {"num_cpus": 0, "max_retries": 0, "name": "formal-sae-version-check"}
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            if self.backend.runtime_env:
                options["runtime_env"] = dict(self.backend.runtime_env)
            refs[node.get("NodeManagerAddress", node["NodeID"][:8])] = probe.options(**options).remote()
        try:
            answers = dict(zip(refs, ray.get(list(refs.values()), timeout=PROBE_TIMEOUT_S)))
        except ray.exceptions.GetTimeoutError:
            for ref in refs.values():
                ray.cancel(ref, force=True)
            raise SAEError(
                f"the nodes of {self.where()} did not answer a version check within {PROBE_TIMEOUT_S:g} s: their worker "
                "processes could not start (is formal-sae installed there, with Ray?)"
            ) from None
        except ray.exceptions.RayError as e:
            raise SAEError(f"the version check failed on {self.where()}: {_one_line(e)}") from None
        problems = []
        for node, there in answers.items():
            for package in ("formal_sae", "torch"):
                if there[package] is not None and _release(there[package]) != _release(here[package]):
                    problems.append(
                        f"node {node} runs {package.replace('_', '-')} {there[package]}, this process {here[package]}"
                    )
            if there["error"]:
                problems.append(
                    f"the workers of node {node} cannot import formal_sae ({there['error']}): install formal-sae "
                    f"{here['formal_sae']} with torch {here['torch']} on every node ({INSTALL})"
                )
        if problems:
            raise SAEError(
                f"{self.where()} cannot run this sweep: {'; '.join(problems)}. Every node needs the driver's formal-sae "
                "and torch versions (the same cells must give the same SAEs)"
            )

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
        finally:  # an error or Ctrl-C: cancel what has not finished; finished cells are stored
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=False)
            del acts_ref

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
    replacing whatever an earlier attempt left."""
    staging = cells_dir / f".{cell_id}{INCOMING}{os.getpid()}-{secrets.token_hex(4)}"
    for name, data in files.items():
        path = staging / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise SAEError(f"cell {cell_id}: a worker returned the unsafe file name {name!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    final = cells_dir / cell_id
    shutil.rmtree(final, ignore_errors=True)
    shutil.rmtree(in_progress_path(final), ignore_errors=True)  # a local attempt's leftovers
    os.replace(staging, final)
    return final


def remove_incoming(cells_dir: Path) -> None:
    """Delete cell folders a killed driver left half-written (see `store_cell`)."""
    if cells_dir.is_dir():
        for stale in cells_dir.glob(f".*{INCOMING}*"):
            shutil.rmtree(stale, ignore_errors=True)


def _check_reachable(ray, address: str) -> None:
    """Fail in seconds on an address nothing listens on (``ray.init`` retries for minutes)."""
    target = address.removeprefix("ray://")
    if address == "auto":
        try:
            target = ray._private.services.canonicalize_bootstrap_address_or_die("auto")
        except (ConnectionError, AttributeError) as e:
            raise SAEError(f"no Ray cluster runs on this machine (address 'auto': {_one_line(e)}); {START_CLUSTER}") from None
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise SAEError(f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.1:6379), 'auto' or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise SAEError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); {START_CLUSTER}") from None


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[-1] if lines else type(e).__name__
    return text if len(text) < 300 else text[:297] + "..."


def _release(version: str) -> str:
    """A version without its local label: torch 2.13.0+cpu and 2.13.0+cu128 are one release."""
    return version.split("+", 1)[0]


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


# ------------------------------------------------------------------------------ the version check
_PROBE_SOURCE = '''
def probe_versions():
    """This process's formal-sae and torch versions, read first from the packages' metadata
    (``error``: why formal_sae does not import, where it does not)."""
    import importlib.metadata

    found = {"formal_sae": None, "torch": None, "error": None}
    for key, dist in (("formal_sae", "formal-sae"), ("torch", "torch")):
        try:
            found[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # imported from a source tree, or absent
            pass
    try:
        import formal_sae
        import torch
    except Exception as e:
        found["error"] = f"{type(e).__name__}: {e}"
        return found
    found["formal_sae"] = found["formal_sae"] or formal_sae.__version__
    found["torch"] = found["torch"] or torch.__version__
    return found
'''


def _probe_function():
    """The version check as a function Ray ships by value: it runs where formal_sae may not import."""
    namespace: dict[str, Any] = {"__name__": "formal_sae_ray_version_check"}  # not importable: pickled by value
    exec(_PROBE_SOURCE, namespace)
    return namespace["probe_versions"]


def probe_versions() -> dict[str, str | None]:
    """formal-sae's and torch's versions in this process, as the check on each node reads them."""
    return _probe_function()()


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
    from formal_sae.saes.sweep import runner
    from formal_sae.saes.training import flush_denormals

    (refs,) = shared
    torch.set_num_threads(threads)
    model = _held("model", refs["model"], lambda files: _load_model(files, refs["model_device"], refs["fingerprint"]))
    dataset = _held("dataset", refs["dataset"], lambda ds: ds)
    acts = _held("acts", refs["acts"], lambda array: _tensor(array, refs["acts_device"]))
    with tempfile.TemporaryDirectory(prefix="formal-sae-ray-cell-") as tmp, flush_denormals(), runner._quiet_saelens_progress():
        record = runner._run_cell(model, dataset, acts, Path(tmp), evaluation, cell)
        cell_dir = Path(tmp) / runner.CELLS_DIR / cell.id
        files = {str(p.relative_to(cell_dir)): p.read_bytes() for p in sorted(cell_dir.rglob("*")) if p.is_file()}
    return record, files

"""A sweep's Ray cluster, before any cell runs on it: what a sweep asks of it, connecting, and
checking that it can run the sweep (`ray_backend` runs the cells).

* [`RayBackend`][formal_sae.RayBackend]: the cluster's address and what each cell asks for
  (CPUs, GPUs, retries, runtime environment);
* `connect`: an address nothing listens on fails in seconds (``ray.init`` retries for minutes),
  with how to start a cluster;
* `check_resources`: a cell must fit on some node (its CPUs and GPUs), CUDA cells need GPUs;
* `check_versions`: a tiny task on every node (the probe, shipped by value: it runs where
  formal-sae may not import) checks that the workers import formal-sae at the driver's versions
  of formal-sae and of the libraries that decide the results (`CHECKED_PACKAGES`).

Ray is optional (``pip install formal-sae[ray]``): `import_ray` imports it when a sweep asks for it.
`local_cluster` starts a loopback-only cluster on this machine (the tests' and benchmarks').
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from formal_sae.errors import SAEError

#: The distributions every node must have at the driver's release, (module, distribution): formal-sae
#: and the libraries that decide a cell's SAE (training, the model, the sparsemax encoders).
CHECKED_PACKAGES = (
    ("formal_sae", "formal-sae"),
    ("torch", "torch"),
    ("sae_lens", "sae-lens"),
    ("transformer_lens", "transformer-lens"),
    ("entmax", "entmax"),
)
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
    versions (`CHECKED_PACKAGES`). In a process where ``ray.init`` was already called, that connection is used and
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


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise SAEError(f"the Ray backend needs Ray, which is not installed ({e}): {INSTALL}") from None
    return ray


def cluster_name(address: str | None) -> str:
    """The cluster as error messages name it."""
    return f"the Ray cluster at {address}" if address else "the Ray cluster"


# ------------------------------------------------------------------------------ a local cluster
#: Set for ``ray start`` and in the connecting process: without it Ray 2.60 binds its head, raylets
#: and workers to the machine's outward interface even when given ``--node-ip-address 127.0.0.1``.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@contextlib.contextmanager
def local_cluster(num_cpus: int = 2, workdir: str | os.PathLike | None = None) -> Iterator[str]:
    """A single-node Ray cluster on 127.0.0.1 (a free port, ``num_cpus`` CPUs, no dashboard) with
    this process connected to it; yields its address, stops it on exit. For the tests, the
    benchmarks and trying the backend on one machine: nothing leaves the loopback interface, and on
    exit ``ray stop --force`` stops *every* Ray process of this machine.

    The driver connects from ``workdir`` (default: a temporary folder, deleted after): Ray puts
    the driver's working directory on the workers' ``sys.path``, where a source tree would shadow
    the tasks' runtime environments."""
    saved = {k: os.environ.get(k) for k in LOOPBACK_ENV}
    os.environ.update(LOOPBACK_ENV)  # read when ray is imported: set before
    ray = import_ray()
    from ray._private import ray_constants

    loopback_only, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False  # if imported before
    cwd = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="formal-sae-ray-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli, env = str(Path(sys.executable).parent / "ray"), {**os.environ, **LOOPBACK_ENV}
    start = [ray_cli, "start", "--head", "--port", str(port), "--num-cpus", str(num_cpus), "--include-dashboard=false"]
    start += ["--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
    here = Path.cwd()
    try:
        subprocess.run(start, env=env, cwd=cwd, check=True, capture_output=True, timeout=180)
        os.chdir(cwd)
        try:
            ray.init(address=f"127.0.0.1:{port}", logging_level=logging.WARNING, log_to_driver=False)
        finally:
            os.chdir(here)
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        subprocess.run([ray_cli, "stop", "--force"], env=env, cwd=cwd, capture_output=True, timeout=180)
        ray_constants.ENABLE_RAY_CLUSTER = loopback_only
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if workdir is None:
            shutil.rmtree(cwd, ignore_errors=True)


# ------------------------------------------------------------------------------ connecting
def connect(ray, address: str | None) -> bool:
    """Connect this process to the cluster at ``address``, unless it already is (that connection
    is used); whether this call connected."""
    if ray.is_initialized():
        return False
    if address not in (None, "local"):
        _check_reachable(ray, address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        where = f"the Ray cluster at {address}" if address else "a Ray instance"
        raise SAEError(f"cannot connect to {where}: {_one_line(e)}; {START_CLUSTER}") from None
    return True


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


# ------------------------------------------------------------------------------ the checks
def check_resources(ray, backend: RayBackend, devices: set[str]) -> None:
    """Refuse what no node can run: a GPU request on a cluster without GPUs, a cell asking for
    more CPUs than any node has, CUDA cells without GPUs (``devices``: the model's and the cells')."""
    num_cpus, num_gpus, where = backend.num_cpus, backend.num_gpus, cluster_name(backend.address)
    gpu_devices = sorted(d for d in devices if d.startswith("cuda"))
    if gpu_devices and num_gpus <= 0:
        raise SAEError(
            f"this sweep runs on {', '.join(gpu_devices)}, but RayBackend asks for no GPU per cell: pass num_gpus "
            "(--ray-num-gpus), e.g. 0.25 to share one GPU between four cells"
        )
    if "mps" in devices:
        raise SAEError("the Ray backend runs cells on CPUs or CUDA GPUs, not on mps; use the local backend on a Mac")
    total = ray.cluster_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    summary = f"{total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs on {len(nodes)} node(s)"
    if num_gpus > 0 and total.get("GPU", 0) <= 0:
        raise SAEError(
            f"num_gpus={num_gpus:g} per cell was asked for, but {where} has no GPUs ({summary}); "
            "use num_gpus=0 (--ray-num-gpus 0) with CPU cells, or add GPU nodes (`ray start --num-gpus N`)"
        )
    if not any(n.get("CPU", 0) >= num_cpus and n.get("GPU", 0) >= num_gpus for n in nodes):
        raise SAEError(
            f"no node of {where} has {num_cpus:g} CPUs and {num_gpus:g} GPUs for a cell ({summary}); "
            "ask for less per cell (--ray-num-cpus, --ray-num-gpus)"
        )


def check_versions(ray, backend: RayBackend) -> None:
    """Run a tiny task on every node (in the tasks' runtime environment): each must import
    formal-sae and have the driver's release of every package of `CHECKED_PACKAGES`."""
    runtime_env, where = backend.runtime_env, cluster_name(backend.address)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = probe_versions()
    probe = ray.remote(_probe_function())
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = {}
    for node in nodes:
        options = {"num_cpus": 0, "max_retries": 0, "name": "formal-sae-version-check"}
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        if runtime_env:
            options["runtime_env"] = dict(runtime_env)
        refs[node.get("NodeManagerAddress", node["NodeID"][:8])] = probe.options(**options).remote(CHECKED_PACKAGES)
    try:
        answers = dict(zip(refs, ray.get(list(refs.values()), timeout=PROBE_TIMEOUT_S)))
    except ray.exceptions.GetTimeoutError:
        for ref in refs.values():
            ray.cancel(ref, force=True)
        raise SAEError(
            f"the nodes of {where} did not answer a version check within {PROBE_TIMEOUT_S:g} s: their worker "
            "processes could not start (is formal-sae installed there, with Ray?)"
        ) from None
    except ray.exceptions.RayError as e:
        raise SAEError(f"the version check failed on {where}: {_one_line(e)}") from None
    problems = []
    wanted = ", ".join(f"{dist} {here.get(module) or '(absent)'}" for module, dist in CHECKED_PACKAGES)
    for node, there in answers.items():
        for module, dist in CHECKED_PACKAGES:
            theirs, ours = there.get(module), here.get(module)
            if theirs is not None and (ours is None or _release(theirs) != _release(ours)):
                problems.append(f"node {node} runs {dist} {theirs}, this process {ours or '(not installed)'}")
        if there["error"]:
            problems.append(
                f"the workers of node {node} cannot import formal_sae ({there['error']}): install {wanted} on every "
                f"node ({INSTALL})"
            )
    if problems:
        raise SAEError(
            f"{where} cannot run this sweep: {'; '.join(problems)}. Every node needs the driver's versions of "
            f"{', '.join(dist for _, dist in CHECKED_PACKAGES)} (the same cells must give the same SAEs)"
        )


# ------------------------------------------------------------------------------ the node probe
_PROBE_SOURCE = '''
def probe_versions(packages):
    """This process's versions of ``packages`` ((module, distribution) pairs), read first from
    their metadata, else from the imported module (None: absent); ``error``: why formal_sae does
    not import, where it does not."""
    import importlib
    import importlib.metadata

    found = {"error": None}
    for module, dist in packages:
        try:
            found[module] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # imported from a source tree, or absent
            found[module] = None
    try:
        import formal_sae  # noqa: F401
    except Exception as e:
        found["error"] = f"{type(e).__name__}: {e}"
        return found
    for module, _ in packages:
        if found[module] is None:
            try:
                found[module] = getattr(importlib.import_module(module), "__version__", None)
            except Exception:
                pass
    return found
'''


def _probe_function():
    """The version check as a function Ray ships by value: it runs where formal_sae may not import."""
    namespace: dict[str, Any] = {"__name__": "formal_sae_ray_version_check"}  # not importable: pickled by value
    exec(_PROBE_SOURCE, namespace)
    return namespace["probe_versions"]


def probe_versions() -> dict[str, str | None]:
    """The versions of `CHECKED_PACKAGES` in this process (module -> version), as the check on
    each node reads them."""
    return _probe_function()(CHECKED_PACKAGES)

"""Fault injection: SIGKILL each long-running command at random moments, resume it, compare with an uninterrupted run.

For each command (``generate``, ``train-model``, ``train-sae``, ``sweep``, ``reproduce``) at tiny settings the
script runs it once uninterrupted (the reference) and once more (a baseline: is the command deterministic at
all?). Then ``--kills`` trials each: start the command in a new session, SIGKILL its process group at a random
moment, rerun it (killed again a random number of times), and finally let it finish. Every other trial
writes with ``--overwrite`` onto a finished artifact of another seed.

Checked after every kill: ``--out`` is absent, the untouched previous artifact, or complete (its
``formal_sae_artifact.json`` says complete and lists exactly its files), never partial; the previous artifact
(``--overwrite`` trials) and the command's inputs (dataset, model) are byte-identical to before.
Compared at the end: every file of the final artifact with the reference's, byte for byte, except timings:
JSON keys containing ``seconds`` or ``per_second``, CSV and markdown-table columns of seconds (the sweep's
``train s``) and the minutes in a reproduction's ``report.md``; and the order of the keys in a ``.safetensors``
header (safetensors writes its metadata in a Rust HashMap's order, which differs between two identical runs).
Plots, weights, Arrow files, HTML: bytes.

Kill moments are drawn uniformly over the span in which the reference run wrote (``<out>.in-progress``
existed), widened by a tenth on each side and counted from the run's own first write: before it a command
only imports and reads, after it only exits (``--window whole`` draws from 0 to the reference's wall time
instead). A fraction ``--at-commit`` of the kills comes instead as soon as ``<out>.in-progress`` is marked
complete: into the milliseconds in which the artifact is moved into place, which random moments rarely hit.
Subprocesses run on one torch thread (resumed runs must be bitwise reproducible) and import a copy of
``formal_sae`` taken at the start (edits to the working tree during the suite cannot mix versions).

Prints a markdown table (stdout; progress on stderr) and exits 1 on any mismatch, damage, partial output,
leftover or failed run. Usage:
``python benchmarks/fault_injection.py [--kills 10] [--seed 0] [--commands generate,sweep] [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from common import cpu_model, log

COMMANDS = ("generate", "train-model", "train-sae", "sweep", "reproduce")
# formal_sae.outputs' names, copied so that this process need not import torch (the test checks they agree).
MARKER_FILE = "formal_sae_artifact.json"
IN_PROGRESS_SUFFIX = ".in-progress"
REPLACED_SUFFIX = ".replaced"
TIMING_KEY = re.compile(r"seconds|per_second")
TIMING_COLUMN = re.compile(r"seconds|per_second|(^|\s)s$")  # "train s" in the sweep's results.md
MINUTES = re.compile(r"\d+(\.\d+)? minutes")  # "...; 1.4 minutes." in a reproduction's report.md
MAX_EXTRA_KILLS = 3
# One thread: resumed runs must equal uninterrupted ones bitwise (other thread counts sum in another order).
CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_DISABLE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}


# ---------------------------------------------------------------------------- commands
def tiny_grid(seed: int, tokens: int = 8_000) -> dict:
    """A 4-cell TopK grid (k x width); ``seed`` tells the reference's grid from the overwritten artifact's."""
    base = {"architecture": "topk", "training_tokens": tokens, "batch_size_tokens": 128, "seed": seed}
    return {"name": "fault-injection", "base": base, "axes": {"k": [2, 4], "expansion_factor": [1, 2]}}


def command_args(command: str, out: Path, variant: int, inputs: dict[str, Path], small: bool = False) -> list[str]:
    """``formal-sae`` arguments of ``command`` writing ``out``; ``variant`` is the seed (0: the reference's
    settings, 1: those of the artifact an ``--overwrite`` trial replaces). ``small``: the fast test's sizes."""
    seed = ["--seed", str(variant)]
    if command == "generate":
        sizes = ["--n-train", "300", "--n-validation", "100", "--n-test", "100"] if small else ["--n-train", "2000"]
        return ["generate", "expr", "--out", str(out), *seed, *sizes]
    if command == "train-model":
        steps = (
            ["30", "--checkpoint-every", "5", "--eval-every", "15"]
            if small
            else ["60", "--checkpoint-every", "10", "--eval-every", "20"]
        )
        data = ["--data", str(inputs["data"])]
        return ["train-model", *data, "--out", str(out), "--preset", "tiny", "--batch-size", "16", "--steps", *steps, *seed]
    if command == "train-sae":
        tokens = "4000" if small else "20000"
        return [
            "train-sae", "--model", str(inputs["model"]), "--data", str(inputs["data"]), "--out", str(out), "--k", "4",
            "--training-tokens", tokens, "--batch-size-tokens", "128", "--n-samples", "8", "--repeats", "1", *seed,
        ]  # fmt: skip
    if command == "sweep":
        return [
            "sweep", "--grid", str(inputs[f"grid{variant}"]), "--model", str(inputs["model"]), "--data", str(inputs["data"]),
            "--out", str(out), "--n-samples", "4", "--repeats", "1", "--max-sentences", "16",
        ]  # fmt: skip
    if command == "reproduce":
        return ["reproduce", "--grammar", "expr", "--scale", "quick", "--out", str(out), *seed]
    raise ValueError(f"unknown command {command!r}; choose from {', '.join(COMMANDS)}")


def needs(command: str) -> tuple[str, ...]:
    """The commands whose (reference) artifacts ``command`` reads."""
    trained = ("generate", "train-model")
    return {"train-model": ("generate",), "train-sae": trained, "sweep": trained}.get(command, ())


# ---------------------------------------------------------------------------- launching
class ExecLauncher:
    """Runs ``python -m formal_sae.cli`` in a new session: the real command, imports included.

    With ``copy_to`` (a folder), every run imports a copy of the ``formal_sae`` package made there
    first, so that edits to the working tree during a long suite cannot mix versions."""

    def __init__(self, copy_to: Path | None = None) -> None:
        self.env, self.cwd = {**os.environ, **CHILD_ENV}, None
        if copy_to is not None:
            self.cwd = copy_to  # python -m puts the working directory first on sys.path, before PYTHONPATH
            source = Path(__file__).resolve().parents[1] / "formal_sae"
            shutil.rmtree(copy_to, ignore_errors=True)
            shutil.copytree(source, copy_to / "formal_sae", ignore=shutil.ignore_patterns("__pycache__"))
            self.env["PYTHONPATH"] = os.pathsep.join([str(copy_to), *filter(None, [os.environ.get("PYTHONPATH")])])

    def start(self, args: list[str], log_path: Path):
        with open(log_path, "wb") as f:
            command = [sys.executable, "-m", "formal_sae.cli", *args]
            return subprocess.Popen(
                command, stdout=f, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd, start_new_session=True
            )


class _Forked:
    """A forked child as far as :func:`run_command` needs (``pid``, ``poll``, ``wait``)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


class ForkLauncher:
    """Forks this process and calls ``formal_sae.cli.main`` in the child: the same code path without
    the seconds of imports per run, for the fast test (a SIGKILL is the same either way)."""

    def __init__(self) -> None:
        from formal_sae import cli  # noqa: F401  (imported here once, so that children start at once)

    def start(self, args: list[str], log_path: Path):
        pid = os.fork()
        if pid:
            return _Forked(pid)
        code = 70
        try:
            os.setsid()
            stream = open(log_path, "w", buffering=1)  # noqa: SIM115  (the child exits without closing)
            os.dup2(stream.fileno(), 1)
            os.dup2(stream.fileno(), 2)
            sys.stdout = sys.stderr = stream
            os.environ.update(CHILD_ENV)
            import torch

            from formal_sae import cli

            torch.set_num_threads(1)
            code = cli.main(args)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)  # never return into the parent's code (or pytest's)


@dataclasses.dataclass
class Run:
    """One run of a command: how it ended, when, and when it first wrote."""

    rc: int | None
    killed: bool
    seconds: float
    first_write: float | None  # when <out>.in-progress first existed
    last_write: float | None  # when it last did (it is renamed into place at the end)
    log: Path


def kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # a forked child killed before its setsid: kill it alone
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def run_command(
    launcher,
    args: list[str],
    out: Path,
    log_path: Path,
    kill_after: float | None = None,
    kill_after_write: float | None = None,
    kill_at_commit: bool = False,
) -> Run:
    """Run a command to its end, or SIGKILL its whole process group: ``kill_after`` seconds after its start,
    ``kill_after_write`` seconds after ``<out>.in-progress`` appears (if it does not exist yet), or
    (``kill_at_commit``) as soon as ``<out>.in-progress`` is marked complete: while it is being moved into
    place, or, after an atomic swap, while the previous artifact it now holds is being deleted."""
    work = in_progress(out)
    fresh = not work.exists()
    t0 = time.monotonic()
    proc = launcher.start(args, log_path)
    first_write = last_write = None
    while proc.poll() is None:
        now = time.monotonic() - t0
        if work.exists():
            if first_write is None and fresh and kill_after_write is not None:
                kill_after = now + max(0.0, kill_after_write)
            first_write, last_write = first_write or now, now
            marker = read_marker(work) if kill_at_commit else None
            if marker is not None and marker.get("complete") is True:
                kill_after = now
        if kill_after is not None and now >= kill_after:
            kill_group(proc)
            return Run(None, True, time.monotonic() - t0, first_write, last_write, log_path)
        time.sleep(0.001 if kill_at_commit else 0.005)  # the commit takes milliseconds
    return Run(proc.returncode, False, time.monotonic() - t0, first_write, last_write, log_path)


# ---------------------------------------------------------------------------- artifacts
def in_progress(out: Path) -> Path:
    return out.parent / f"{out.name}{IN_PROGRESS_SUFFIX}"


def replaced(out: Path) -> Path:
    return out.parent / f"{out.name}{REPLACED_SUFFIX}"


def files_of(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() or p.is_symlink())


def snapshot(directory: Path) -> dict[str, tuple[int, str]]:
    """Every file's size and SHA-256."""
    return {f: (len(b), hashlib.sha256(b).hexdigest()) for f in files_of(directory) for b in [(directory / f).read_bytes()]}


def damage(before: dict[str, tuple[int, str]], directory: Path) -> tuple[list[str], int]:
    """Files of ``before`` changed, lost or added in ``directory``, and the bytes of ``before`` lost."""
    now = snapshot(directory) if directory.is_dir() else {}
    changed = sorted(f for f in before if now.get(f) != before[f]) + sorted(f"{f} (added)" for f in set(now) - set(before))
    return changed, sum(before[f][0] for f in before if now.get(f) != before[f])


def read_marker(directory: Path) -> dict | None:
    try:
        marker = json.loads((directory / MARKER_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def completeness(out: Path) -> str | None:
    """Why ``out`` is not a complete artifact (None if it is): it must be marked complete and list exactly its files."""
    marker = read_marker(out)
    if marker is None:
        return "no readable marker"
    if marker.get("complete") is not True:
        return f"marker says complete={marker.get('complete')!r}"
    listed, present = set(marker.get("files", [])), set(files_of(out)) - {MARKER_FILE}
    if listed != present:
        return f"marker lists {len(listed)} files, folder holds {len(present)} (missing {sorted(listed - present)[:3]}, unlisted {sorted(present - listed)[:3]})"
    return None


def _strip_timings(obj):
    if isinstance(obj, dict):
        return {k: _strip_timings(v) for k, v in obj.items() if not TIMING_KEY.search(str(k))}
    if isinstance(obj, list):
        return [_strip_timings(v) for v in obj]
    return obj


def _strip_table(lines: list[list[str]]) -> list[list[str]]:
    keep = [i for i, name in enumerate(lines[0]) if not TIMING_COLUMN.search(name.strip())] if lines else []
    return [[row[i] for i in keep if i < len(row)] for row in lines]


def normalized(path: Path) -> bytes:
    """The file's bytes with timings removed (see the module docs); bytes as they are for other files."""
    data = path.read_bytes()
    if path.suffix == ".safetensors" and len(data) >= 8:
        # The header's keys come in the order of a Rust HashMap, random per process: {"format", "preset"}
        # of a model's metadata swap places between two identical runs. Tensors and values are compared.
        n = int.from_bytes(data[:8], "little")
        try:
            return json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True).encode() + data[8 + n :]
        except ValueError:
            return data
    if path.suffix == ".json":
        try:
            return json.dumps(_strip_timings(json.loads(data)), sort_keys=True).encode()
        except ValueError:
            return data
    if path.suffix == ".csv":
        rows = _strip_table(list(csv.reader(io.StringIO(data.decode()))))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        return buf.getvalue().encode()
    if path.suffix == ".md":
        out, header = [], None
        for line in MINUTES.sub("<t> minutes", data.decode()).splitlines():
            if line.startswith("|"):
                cells = line.strip().strip("|").split("|")
                header = cells if header is None else header
                keep = [i for i, name in enumerate(header) if not TIMING_COLUMN.search(name.strip())]
                line = "|".join(cells[i] for i in keep if i < len(cells))
            else:
                header = None
            out.append(line)
        return "\n".join(out).encode()
    return data


def _first_difference(a: bytes, b: bytes) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"{len(a)} vs {len(b)} bytes, first difference at byte {i}: {a[max(0, i - 30) : i + 30]!r} vs {b[max(0, i - 30) : i + 30]!r}"


def compare(reference: Path, result: Path) -> list[str]:
    """The files of ``result`` that differ from ``reference`` (timings aside), each with how."""
    ref, new = set(files_of(reference)), set(files_of(result))
    diffs = [f"{f}: missing" for f in sorted(ref - new)] + [f"{f}: not in the reference" for f in sorted(new - ref)]
    for f in sorted(ref & new):
        a, b = normalized(reference / f), normalized(result / f)
        if a != b:
            diffs.append(f"{f}: {_first_difference(a, b)}")
    return diffs


# ---------------------------------------------------------------------------- the suite
@dataclasses.dataclass
class Reference:
    path: Path
    seconds: float
    first_write: float
    last_write: float
    config: object
    files: dict[str, tuple[int, str]]


@dataclasses.dataclass
class Tally:
    """One command's figures (the table's row) and what went wrong, in words."""

    command: str
    trials: int = 0
    overwrite_trials: int = 0
    kills: int = 0
    commit_kills: int = 0
    finished_before_kill: int = 0
    resumed: int = 0
    compared: int = 0
    files_compared: int = 0
    mismatches: int = 0
    partial: int = 0
    damaged: int = 0
    bytes_lost: int = 0
    leftovers: int = 0
    failed_runs: int = 0
    seconds: float = 0.0
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.mismatches or self.partial or self.damaged or self.bytes_lost or self.leftovers or self.failed_runs)


class Suite:
    """References and kill trials in ``workdir``."""

    def __init__(
        self, workdir: Path, launcher, rng: random.Random, small: bool = False, window: str = "work", at_commit: float = 0.0
    ) -> None:
        self.workdir, self.launcher, self.rng, self.small, self.window = workdir, launcher, rng, small, window
        self.at_commit = at_commit
        self.first_writes: dict[str, float] = {}  # per command, the last fresh run's
        self.refs: dict[tuple[str, int], Reference] = {}
        self.inputs: dict[str, Path] = {}
        for variant in (0, 1):
            path = workdir / "inputs" / f"grid{variant}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(tiny_grid(variant, 2_000 if small else 8_000)))
            self.inputs[f"grid{variant}"] = path

    def args(self, command: str, out: Path, variant: int = 0, overwrite: bool = False) -> list[str]:
        return command_args(command, out, variant, self.inputs, self.small) + (["--overwrite"] if overwrite else [])

    def reference(self, command: str, variant: int = 0) -> Reference:
        """The uninterrupted run of ``command`` (built once, with its inputs first)."""
        if (command, variant) in self.refs:
            return self.refs[(command, variant)]
        for dep in needs(command):
            self.inputs[{"generate": "data", "train-model": "model"}[dep]] = self.reference(dep).path
        out = self.workdir / "ref" / f"{command}-seed{variant}"
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        log(f"[{command}] reference run (seed {variant}) ...")
        run = run_command(self.launcher, self.args(command, out, variant), out, out.parent / f"{out.name}.log")
        if run.rc != 0 or completeness(out):
            raise RuntimeError(
                f"the uninterrupted {command} failed (exit {run.rc}); see {run.log}:\n{run.log.read_text()[-2000:]}"
            )
        first, last = run.first_write or 0.0, run.last_write or run.seconds
        log(f"[{command}] {run.seconds:.1f} s, writing from {first:.1f} s to {last:.1f} s")
        ref = Reference(out, run.seconds, first, last, read_marker(out)["config"], snapshot(out))
        self.refs[(command, variant)] = ref
        return ref

    def kill_moment(self, command: str, ref: Reference, out: Path) -> dict[str, float]:
        """When to kill the next run: ``run_command``'s ``kill_after`` or ``kill_after_write``."""
        if self.window == "whole":
            return {"kill_after": self.rng.uniform(0.0, ref.seconds)}
        # The reference's writing span, widened by a tenth on each side. The imports before it take
        # longer or shorter with the load of a shared machine, so a fresh run is killed relative to
        # its own first write, and a resumed one (which writes from the start) relative to the first
        # write last seen.
        span = ref.last_write - ref.first_write
        offset = self.rng.uniform(-0.1 * span, 1.1 * span)
        if in_progress(out).exists():
            return {"kill_after": max(0.0, self.first_writes.get(command, ref.first_write) + offset)}
        return {"kill_after_write": offset}

    def baseline(self, command: str, tally: Tally) -> None:
        """A second uninterrupted run: a difference here is nondeterminism, not a resume bug."""
        ref = self.reference(command)
        out = self.workdir / "baseline" / command / "out"
        shutil.rmtree(out.parent, ignore_errors=True)
        out.parent.mkdir(parents=True)
        run = run_command(self.launcher, self.args(command, out), out, out.parent / "run.log")
        self._finish(command, tally, ref, out, run, "uninterrupted rerun")
        if tally.ok:
            shutil.rmtree(out.parent)

    def trial(self, command: str, index: int, overwrite: bool, tally: Tally) -> None:
        """Kill ``command`` 1 + a random number of times, let it finish, check everything on the way."""
        ref = self.reference(command)
        guarded = {dep: self.reference(dep) for dep in needs(command)}  # inputs the command reads
        trial_dir = self.workdir / "trials" / command / f"{index:03d}"
        shutil.rmtree(trial_dir, ignore_errors=True)
        trial_dir.mkdir(parents=True)
        out = trial_dir / "out"
        old = None
        if overwrite:
            shutil.copytree(self.reference(command, 1).path, out)
            old = snapshot(out)
            tally.overwrite_trials += 1
        tally.trials += 1
        args = self.args(command, out, overwrite=overwrite)
        n_kills = 1
        while n_kills <= MAX_EXTRA_KILLS and self.rng.random() < 0.5:
            n_kills += 1
        name = f"{command} trial {index}{' (--overwrite)' if overwrite else ''}"
        run = None
        for k in range(n_kills + 1):
            if k and self._finished(out, ref):
                break  # the last kill came after the artifact was moved into place
            tally.resumed += in_progress(out).exists()
            commit = k < n_kills and self.at_commit > 0 and self.rng.random() < self.at_commit  # no draw at 0: same moments
            fresh = not in_progress(out).exists()
            at = self.kill_moment(command, ref, out) if k < n_kills and not commit else {}
            run = run_command(self.launcher, args, out, trial_dir / f"run{k}.log", **at, kill_at_commit=commit)
            if fresh and run.first_write is not None:
                self.first_writes[command] = run.first_write
            if not run.killed:
                if at or commit:
                    tally.finished_before_kill += 1
                break
            tally.kills += 1
            tally.commit_kills += commit
            when = f"at {run.seconds:.2f} s{' (at the commit)' if commit else ''}"
            state = ", ".join(p.name for p in (out, in_progress(out), replaced(out)) if p.exists()) or "nothing"
            log(f"  {name}: killed {when}; left {state}")
            self._check_after_kill(f"{name}, kill {k + 1} {when}", tally, out, ref, old, guarded)
        self._finish(command, tally, ref, out, run, name)
        if tally.ok:
            shutil.rmtree(trial_dir)  # keep a failed trial's folders and logs to look at

    def _finished(self, out: Path, ref: Reference) -> bool:
        marker = read_marker(out)
        return marker is not None and marker.get("complete") is True and marker.get("config") == ref.config

    def _check_after_kill(self, what: str, tally: Tally, out: Path, ref: Reference, old, guarded: dict[str, Reference]) -> None:
        for dep, dep_ref in guarded.items():
            changed, lost = damage(dep_ref.files, dep_ref.path)
            if changed:
                tally.damaged += len(changed)
                tally.bytes_lost += lost
                tally.problems.append(f"{what}: input {dep} damaged: {changed[:5]}")
        if not out.exists():
            if old is None:
                return
            # Where no atomic swap exists the previous artifact waits in <out>.replaced for the next run to put back.
            changed, lost = damage(old, replaced(out))
            if changed:
                tally.damaged += len(changed)
                tally.bytes_lost += lost
                tally.problems.append(f"{what}: --out vanished and the previous artifact is lost ({len(changed)} files)")
            return
        why = completeness(out)
        if why:
            tally.partial += 1
            tally.problems.append(f"{what}: --out is partial: {why}")
        if old is not None and not self._finished(out, ref):
            changed, lost = damage(old, out)
            if changed:
                tally.damaged += len(changed)
                tally.bytes_lost += lost
                tally.problems.append(f"{what}: the previous artifact at --out changed: {changed[:5]}")

    def _finish(self, command: str, tally: Tally, ref: Reference, out: Path, run: Run | None, name: str) -> None:
        if (run is None or run.killed or run.rc != 0) and not self._finished(out, ref):
            tally.failed_runs += 1
            tail = run.log.read_text(errors="replace")[-600:] if run else ""
            tally.problems.append(f"{name}: the final run exited {run and run.rc}; log {run and run.log}: {tail}")
            return
        why = completeness(out)
        if why:
            tally.partial += 1
            tally.problems.append(f"{name}: final --out is not complete: {why}")
        left = [p.name for p in (in_progress(out), replaced(out)) if p.exists()]
        if left:
            tally.leftovers += len(left)
            tally.problems.append(f"{name}: left behind {left} beside --out")
        diffs = compare(ref.path, out)
        tally.compared += 1
        tally.files_compared += len(ref.files)
        tally.mismatches += len(diffs)
        tally.problems += [f"{name}: differs from the reference: {d}" for d in diffs]


def run_suite(
    workdir: Path,
    commands: list[str],
    kills: int,
    seed: int,
    launcher=None,
    small: bool = False,
    window: str = "work",
    baseline: bool = True,
    at_commit: float = 0.0,
) -> list[Tally]:
    """The whole suite: for each command its references, an uninterrupted rerun, and ``kills`` kill trials
    (every other one with ``--overwrite`` onto an artifact of another seed)."""
    launcher = launcher or ExecLauncher(workdir / "formal_sae-snapshot")
    suite = Suite(workdir, launcher, random.Random(seed), small, window, at_commit)
    tallies = []
    for command in commands:
        tally, runs, check = Tally(command), kills, baseline
        t0 = time.perf_counter()
        try:
            suite.reference(command)
            if kills > 1:
                suite.reference(command, 1)
        except RuntimeError as e:  # the command fails without any kill: nothing to inject faults into
            tally.failed_runs += 1
            tally.problems.append(str(e))
            runs, check = 0, False
        if check:
            suite.baseline(command, tally)
        for i in range(runs):
            suite.trial(command, i, overwrite=i % 2 == 1, tally=tally)
            log(f"[{command}] trial {i + 1}/{kills}: {tally.kills} kills so far, {'ok' if tally.ok else 'PROBLEMS'}")
        tally.seconds = time.perf_counter() - t0
        for problem in tally.problems:
            log(f"  PROBLEM {problem}")
        tallies.append(tally)
    return tallies


def table(tallies: list[Tally]) -> str:
    lines = [
        "| command | trials (--overwrite) | kills (at the commit) | finished before the kill | resumed runs | artifacts compared (files) "
        "| mismatching files | partial outputs | damaged pre-existing files | bytes lost | leftovers | failed runs | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in tallies:
        lines.append(
            f"| `{t.command}` | {t.trials} ({t.overwrite_trials}) | {t.kills} ({t.commit_kills}) | {t.finished_before_kill} | {t.resumed} "
            f"| {t.compared} ({t.files_compared}) | {t.mismatches} | {t.partial} | {t.damaged} | {t.bytes_lost} | {t.leftovers} "
            f"| {t.failed_runs} | {t.seconds:.0f} |"
        )
    return "\n".join(lines)


def machine() -> str:
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem = next((int(line.split()[1]) // 2**20 for line in meminfo.splitlines() if line.startswith("MemTotal")), 0)
    return (
        f"Machine: {cpu_model()}, {os.cpu_count()} CPU cores, {mem} GiB, load average at start {os.getloadavg()[0]:.2f}; "
        f"Python {sys.version.split()[0]}; subprocesses on 1 torch thread."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="kill trials per command (each kills 1-4 times)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--commands", default=",".join(COMMANDS), help=f"comma-separated, from {', '.join(COMMANDS)}")
    parser.add_argument("--workdir", type=Path, help="where the runs go (default: a temporary folder, deleted at the end)")
    parser.add_argument(
        "--window", choices=["work", "whole"], default="work", help="kill moments from the first write, or from 0"
    )
    parser.add_argument(
        "--at-commit", type=float, default=0.25, help="fraction of the kills sent when the output is marked complete"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the second uninterrupted run per command")
    args = parser.parse_args()
    commands = args.commands.split(",")
    unknown = [c for c in commands if c not in COMMANDS]
    if unknown:
        parser.error(f"unknown command(s) {unknown}; choose from {', '.join(COMMANDS)}")
    log(machine())
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="formal-sae-kills-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        tallies = run_suite(
            workdir.resolve(),
            commands,
            args.kills,
            args.seed,
            window=args.window,
            baseline=not args.no_baseline,
            at_commit=args.at_commit,
        )
    print(machine())
    print()
    print(table(tallies))
    print()
    print(
        f"{sum(t.kills for t in tallies)} kills in {(time.perf_counter() - t0) / 60:.1f} minutes (seed {args.seed}, window {args.window})."
    )
    problems = [p for t in tallies for p in t.problems]
    for p in problems:
        print(f"- {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

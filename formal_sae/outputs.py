"""Where formal-sae writes: one policy for every directory it produces.

Every artifact (dataset, model, SAE, sweep, report, reproduction) is a directory that:

* is **built beside its target**, in ``<out>.in-progress/``, and renamed into place whole when
  complete, so a kill at any instant leaves either the previous artifact untouched or a
  resumable in-progress folder, never a mix;
* carries a marker, `MARKER_FILE`, naming its kind, its configuration and every file
  formal-sae wrote into it;
* is **refused when the target exists** and is not empty, unless ``overwrite=True``
  (``--overwrite``), which replaces only a directory carrying formal-sae's marker and holding no
  file the marker does not list. ``/``, the home folder, the working directory and its ancestors
  are never written to;
* **resumes** an in-progress folder of the same kind and configuration (resumable kinds only) and
  refuses one of another configuration, naming the difference;
* follows the **umask** (files and folders are created with the ordinary modes).

[`output_dir`][formal_sae.output_dir] applies all of this; commands and API functions that write call it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from formal_sae.errors import OutputError
from formal_sae.io import TEMPORARY_NAME, canonical, exchange, read_json, write_json

#: The marker file in every directory formal-sae writes.
MARKER_FILE = "formal_sae_artifact.json"
#: Suffix of the folder an artifact is built in (``<out>.in-progress``).
IN_PROGRESS_SUFFIX = ".in-progress"
#: Suffix of the previous artifact while it is being replaced (only where an atomic swap is unavailable).
REPLACED_SUFFIX = ".replaced"
MARKER_FORMAT = 1


def in_progress_path(out: str | os.PathLike) -> Path:
    """The folder ``out`` is built in before it is renamed into place."""
    out = Path(out)
    return out.parent / f"{out.name}{IN_PROGRESS_SUFFIX}"


def read_marker(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The marker of a directory formal-sae wrote, or None if it has none (or a broken one)."""
    path = Path(directory) / MARKER_FILE
    if not path.is_file():
        return None
    try:
        marker = read_json(path)
    except Exception:  # a corrupt marker is no marker: the directory is treated as not ours
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT else None


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() or p.is_symlink())


def _remove_temporaries(directory: Path) -> None:
    """Delete files a killed write left half-written (`formal_sae.io.atomic_write_bytes` names them)."""
    for path in directory.rglob(".*"):
        if path.is_file() and TEMPORARY_NAME.fullmatch(path.name):
            path.unlink()


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two JSON-like configurations, with values."""
    if isinstance(old, dict) and isinstance(new, dict):
        diffs = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}{key}"
            if key not in old or key not in new:
                diffs.append(
                    f"{name} ({'absent' if key not in old else _short(old[key])} -> {'absent' if key not in new else _short(new[key])})"
                )
            else:
                diffs += config_differences(old[key], new[key], f"{name}.")
        return diffs
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):  # say a grid's cells: by position
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True)) for d in config_differences(a, b, f"{prefix}{i}.")]
    if old != new:
        return [f"{prefix.rstrip('.') or 'value'} ({_short(old)} -> {_short(new)})"]
    return []


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."


def _forbidden(out: Path) -> str | None:
    """Why ``out`` may never be an output directory, or None."""
    target = out.resolve()
    cwd = Path.cwd().resolve()
    if target == Path(target.anchor):
        return "it is the root of the file system"
    if target == Path.home().resolve():
        return "it is your home folder"
    if target == cwd:
        return "it is the working directory"
    if target in cwd.parents:
        return "it contains the working directory"
    return None


def check_output(out: str | os.PathLike, kind: str, overwrite: bool = False) -> Path:
    """Check, before any work, that ``out`` may receive an artifact of ``kind``; raise
    [`OutputError`][formal_sae.OutputError] naming the problem and the fix if not."""
    out = Path(out)
    reason = _forbidden(out)
    if reason:
        raise OutputError(f"refusing to write into {out}: {reason}; choose a new folder, e.g. {out / kind}")
    _recover(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a directory; choose another path")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    marker = read_marker(out)
    if not overwrite:
        what = f"a formal-sae {marker['kind']}" if marker else "files formal-sae did not write"
        fix = "pass overwrite=True (--overwrite) to replace it, or choose another" if marker else "choose another"
        raise OutputError(f"output directory {out} already exists and holds {what}; {fix} output directory")
    if marker is None or marker.get("complete") is not True:
        raise OutputError(
            f"refusing to overwrite {out}: it has no formal-sae marker ({MARKER_FILE}), so formal-sae did not write it; "
            "choose another output directory"
        )
    foreign = sorted(set(_files(out)) - set(marker.get("files", [])) - {MARKER_FILE})
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputError(
            f"refusing to overwrite {out}: it holds files formal-sae did not write ({shown}); move them away or choose another output directory"
        )
    return out


def _umask() -> int:
    try:  # Linux shows it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it (and put it back)
    os.umask(mask)
    return mask


def _follow_umask(directory: Path) -> None:
    """Give every file and folder the mode an ordinary tool's output has under the umask. Some
    writers formal-sae relies on choose their own: safetensors' ``save_file`` creates 0600 files."""
    mask = _umask()
    for path in [directory, *directory.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _write_marker(directory: Path, kind: str, config: Any, complete: bool) -> None:
    marker = {"format": MARKER_FORMAT, "kind": kind, "formal_sae_version": _version(), "complete": complete}
    marker["config"] = canonical(config)
    if complete:
        marker["files"] = [f for f in _files(directory) if f != MARKER_FILE]
    write_json(directory / MARKER_FILE, marker)


def _version() -> str:
    try:
        return importlib.metadata.version("formal-sae")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _is_open_work(directory: Path) -> bool:
    marker = read_marker(directory)
    return directory.name.endswith(IN_PROGRESS_SUFFIX) and marker is not None and marker.get("complete") is False


def _start(out: Path, kind: str, config: Any, overwrite: bool, resumable: bool) -> Path:
    """The in-progress folder for ``out``: an earlier run's to resume, or a new one."""
    work = in_progress_path(out)
    marker = read_marker(work) if work.exists() else None
    if work.exists() and marker is None:
        if not all(TEMPORARY_NAME.fullmatch(name) for name in _files(work)):
            raise OutputError(
                f"{work} exists but its marker {work / MARKER_FILE} is missing or damaged, so formal-sae cannot tell that it "
                "wrote it; move the folder away (delete it if it is an interrupted run you no longer need) or choose another "
                "output directory"
            )
        shutil.rmtree(work)  # empty, or holding a marker half-written by a kill: nothing to resume
    if marker is not None:
        # A complete marker here means a kill between completing the artifact and moving it into
        # place: it is treated like any interrupted run of its configuration.
        same = marker.get("kind") == kind and marker.get("config") == canonical(config)
        if resumable and same:
            _remove_temporaries(work)
            if marker.get("complete") is not False:
                _write_marker(work, kind, config, complete=False)
            return work  # resume the interrupted run
        if resumable and not overwrite:
            diffs = config_differences(marker.get("config"), canonical(config))
            if marker.get("kind") != kind:
                diffs.insert(0, f"kind ({marker.get('kind')} -> {kind})")
            raise OutputError(
                f"{work} holds an interrupted run with another configuration; it differs in {', '.join(diffs)}. "
                "Rerun with the same settings to resume it, pass overwrite=True (--overwrite) to discard it, or choose another output directory"
            )
        _remove(work)  # ours, and not resumable (or discarded on request)
    if not work.exists():
        # made under another name with its marker, then renamed: no kill leaves an unmarked folder
        for stale in out.parent.glob(f".{out.name}{IN_PROGRESS_SUFFIX}.new-*"):
            shutil.rmtree(stale, ignore_errors=True)
        new = out.parent / f".{out.name}{IN_PROGRESS_SUFFIX}.new-{os.getpid()}-{secrets.token_hex(4)}"
        new.mkdir(parents=True)
        _write_marker(new, kind, config, complete=False)
        os.replace(new, work)
    return work


def _commit(work: Path, out: Path) -> None:
    """Put the finished ``work`` folder at ``out``, replacing what is there."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.replace(work, out)  # onto nothing or an empty folder: one rename
        return
    replaced = out.parent / f"{out.name}{REPLACED_SUFFIX}"
    if exchange(work, out):
        os.replace(work, replaced)  # the previous artifact, out of the in-progress name before it is deleted
    else:
        os.replace(out, replaced)
        os.replace(work, out)
    _remove(replaced)


def _remove(directory: Path) -> None:
    """Delete a folder formal-sae wrote, its marker last: a kill half-way leaves a folder that is
    still recognisably formal-sae's, so the next run finishes the job instead of refusing it."""
    for child in directory.iterdir():
        if child.name != MARKER_FILE:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    (directory / MARKER_FILE).unlink(missing_ok=True)
    directory.rmdir()


def _recover(out: Path) -> None:
    """Finish a replacement that was interrupted (see `_commit`)."""
    replaced = out.parent / f"{out.name}{REPLACED_SUFFIX}"
    if not replaced.is_dir() or read_marker(replaced) is None:
        return
    if out.exists():
        _remove(replaced)  # the new artifact is in place: the old one was being deleted
    else:
        os.replace(replaced, out)  # put the previous artifact back; the in-progress run stays resumable


@contextlib.contextmanager
def output_dir(
    out: str | os.PathLike, kind: str, config: Any = None, *, overwrite: bool = False, resumable: bool = False
) -> Iterator[Path]:
    """Build an artifact of ``kind`` for ``out`` in its in-progress folder, then move it into place.

    Yields the folder to write into. On success the marker is completed (listing every file) and
    the folder replaces ``out``; on an error the folder is kept if it holds progress (a
    ``resumable`` run resumes from it when started again with the same ``config``) and removed
    otherwise. Called with a folder that is itself an open in-progress folder (a step writing
    into the artifact of the command around it), it yields that folder and leaves the commit to
    the outer call.

    Args:
        out: The artifact's directory.
        kind: What it is (``"dataset"``, ``"model"``, ``"sae"``, ...), recorded in the marker.
        config: The JSON-able configuration that defines the run; a resumed run must match it.
        overwrite: Replace an existing artifact (only one formal-sae wrote; see the module docs).
        resumable: Keep and resume an interrupted run's folder instead of starting afresh.
    """
    out = Path(out)
    if _is_open_work(out):
        yield out
        return
    check_output(out, kind, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = _start(out, kind, config, overwrite, resumable)
    try:
        yield work
    except BaseException:
        if _files(work) == [MARKER_FILE] or not resumable:
            with contextlib.suppress(OSError):
                _remove(work)
        raise
    _remove_temporaries(work)
    _write_marker(work, kind, config, complete=True)
    _follow_umask(work)
    check_output(out, kind, overwrite)  # the target may have changed during a long run
    _commit(work, out)

"""Atomic, safe file I/O shared by every file formal-sae writes.

A file is written beside its target and renamed into place, with the modes the umask gives; whole
artifact directories follow `formal_sae.outputs`. Configs are JSON; weights are safetensors
(written by the callers).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from formal_sae.errors import FormalSAEError

#: Name of the temporary file or folder `atomic_replace` builds beside its target (a kill can leave one).
TEMPORARY_NAME = re.compile(r"\..+\.tmp-\d+-[0-9a-f]{8}")


def temporary_path(path: str | os.PathLike, kind: str = "tmp") -> Path:
    """A fresh name beside ``path`` for something written there before it is renamed into place
    (``kind`` "tmp", matching `TEMPORARY_NAME`) or moved out of the way (``kind`` "old")."""
    path = Path(path)
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


# Linux renameat2(RENAME_EXCHANGE) swaps two directories in one step; Python's os module has no
# binding for it. Elsewhere a swap takes two renames (outputs._recover completes an interrupted one).
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a))


def atomic_replace(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """formal-sae's one way to replace a file or a folder atomically: ``write(tmp)`` builds it under
    a temporary name beside ``path``, then it is renamed into place. A kill leaves the old ``path``
    or the new one, never a half-written one (only the temporary, named by `TEMPORARY_NAME`).

    A folder that already exists is swapped with the new one in one step (Linux
    ``renameat2(RENAME_EXCHANGE)``, `exchange`) and then deleted; where the system cannot swap, it
    is moved aside first (a directory cannot be renamed onto a non-empty one). Whole artifact directories follow
    `formal_sae.outputs` instead."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        if tmp.is_dir() and path.is_dir():
            if exchange(tmp, path):  # one step: ``path`` is never missing
                shutil.rmtree(tmp, ignore_errors=True)
            else:  # elsewhere two renames, with a moment without ``path``
                old = temporary_path(path, "old")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (`atomic_replace`)."""

    def write(tmp: Path) -> None:
        # Not tempfile.mkstemp: it creates files with mode 0600 whatever the umask, and a rename
        # keeps the mode. os.open with 0666 gives the mode any ordinary tool's output has.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    atomic_replace(path, write)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths, tuples and numpy/torch scalars as plain JSON values."""
    if isinstance(obj, Mapping):  # dicts, and result records (formal_sae.records.Record: their JSON form)
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    return obj


def canonical(obj: Any) -> Any:
    """``obj`` as plain JSON values with sorted keys: configurations compare equal exactly when
    their JSON does (tuples and lists, dataclasses and dicts alike)."""
    return json.loads(json.dumps(to_jsonable(obj), sort_keys=True))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` (dataclasses allowed) as indented JSON."""
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=True) + "\n")


def read_json(path: str | os.PathLike, what: str = "file", fix: str | None = None) -> Any:
    """Read JSON, turning a missing, unreadable or corrupt file into a one-line error that names it.

    ``fix`` says what to do about it (default for a corrupt file: delete it and regenerate it)."""
    path = Path(path)
    if not path.is_file():
        raise FormalSAEError(f"{what} {path} is missing" + (f"; {fix}" if fix else ""))
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, OSError, RecursionError) as e:  # ValueError: JSON and UTF-8 errors; RecursionError: absurd nesting
        reason = " ".join(str(e).split()) or type(e).__name__
        kind = f"unreadable ({reason})" if isinstance(e, OSError) else f"corrupt (not valid JSON: {reason})"
        raise FormalSAEError(f"{what} {path} is {kind}; {fix or 'delete it and regenerate it'}") from None

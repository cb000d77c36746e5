"""Crash-safe checkpoints of SAE training that resume bitwise-identically.

A checkpoint is a folder ``<checkpoint_dir>/<n>/`` (``n``: training samples or steps done) with
the training state and, written last and atomically, `MARKER`: only a folder with a marker
is complete. A SIGKILL at any instant therefore leaves the previous complete checkpoint or the new
one; a folder without a marker is ignored and deleted, and older complete ones are deleted once a
newer one is complete, so at most one is kept (plus the one being written).

``fit_sae`` checkpoints through SAELens's own ``SAETrainer.save_checkpoint`` (SAE weights and
buffers such as BatchTopK's threshold, optimizer, lr and coefficient schedulers, dead-feature
statistics, activation scaler), completed by `TrainerCheckpoints` with what it misses: the
global RNG state, how many batches the data provider served, and the true step count. The causal
loop saves its own state with `save_loop_checkpoint`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAETrainer, TrainingSAE
from sae_lens.constants import SAE_WEIGHTS_FILENAME, TRAINER_STATE_FILENAME
from safetensors.torch import load_file, save_file

from formal_sae.errors import SAEError
from formal_sae.io import read_json, to_jsonable, write_json

MARKER = "formal_sae_checkpoint.json"
RNG_FILE = "formal_sae_rng.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
FORMAT = 1


# ------------------------------------------------------------------------------ settings
def settings(config, **more: Any) -> dict[str, Any]:
    """What a checkpoint must have been made with to be resumed: ``config.to_dict()`` without
    ``device`` (a run may resume on another device) plus ``more``, as plain JSON values."""
    d = {k: v for k, v in config.to_dict().items() if k != "device"}
    return json.loads(json.dumps(to_jsonable({**d, **more})))


def check_settings(saved: dict[str, Any], current: dict[str, Any], directory: Path) -> None:
    differ = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if differ:
        diffs = "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now" for k in differ)
        raise SAEError(
            f"the checkpoint in {directory} was made with other settings ({diffs}); resume with the same settings, "
            f"or delete {directory} to train from scratch"
        )


# ------------------------------------------------------------------------------ folders
def _marker(path: Path) -> dict[str, Any] | None:
    try:
        marker = read_json(path / MARKER)
    except Exception:  # missing, or torn by a crash: the checkpoint is incomplete
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == FORMAT else None


def _folders(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()] if directory.is_dir() else []


def _delete(path: Path) -> None:
    (path / MARKER).unlink(missing_ok=True)  # first: a kill during the deletion leaves an incomplete folder
    shutil.rmtree(path, ignore_errors=True)


def remove(directory: str | os.PathLike) -> None:
    """Delete a checkpoint directory (crash-safely: markers first)."""
    for path in _folders(Path(directory)):
        _delete(path)
    shutil.rmtree(directory, ignore_errors=True)


def latest(directory: str | os.PathLike, current: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint under ``directory`` and its marker (None if there is none),
    refused if it was made with settings other than ``current``. Deletes the other folders."""
    directory = Path(directory)
    complete = []
    for path in _folders(directory):
        marker = _marker(path)
        if marker is None:
            _delete(path)  # half-written when a run was killed
        else:
            complete.append((int(path.name), path, marker))
    if not complete:
        return None
    *older, (_, path, marker) = sorted(complete, key=lambda c: c[0])
    check_settings(marker["settings"], current, directory)
    for _, old, _ in older:
        _delete(old)
    return path, marker


def mark_complete(path: Path, marker: dict[str, Any]) -> None:
    """Make the checkpoint folder ``path`` complete, then delete the other ones beside it."""
    for f in path.iterdir():  # on disk before the marker says they are, so that even a power cut is safe
        if f.is_file():
            _fsync(f)
    write_json(path / MARKER, {"format": FORMAT, **marker})
    _fsync(path)  # the marker's rename, before the older checkpoints go
    for other in _folders(path.parent):
        if other != path:
            _delete(other)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_steps(total: int, n: int) -> list[int]:
    """After how many of ``total`` steps to save ``n`` checkpoints (evenly spaced, as SAELens's)."""
    return list(range(0, total, math.ceil(total / (n + 1))))[1:] if total and n else []


# ------------------------------------------------------------------------------ state
def rng_state() -> dict[str, torch.Tensor]:
    """The global torch RNG states (no SAELens architecture draws from them today, but a
    resumed run must not depend on that)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    for name, s in state.items():
        if name.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state(s, int(name[4:]))


def safe_torch_load(path: Path, device: str | torch.device = "cpu") -> Any:
    """``torch.load`` of tensors and plain containers only (never arbitrary pickled objects)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise SAEError(f"{path} is corrupt or not a formal-sae checkpoint ({type(e).__name__}: {e}); delete it") from None


class CountingIterator(Iterator[torch.Tensor]):
    """The data provider, counting the batches drawn (``start`` already drawn before a resume)."""

    def __init__(self, batches: Iterator[torch.Tensor], start: int = 0) -> None:
        self.batches, self.drawn = batches, start

    def __next__(self) -> torch.Tensor:
        batch = next(self.batches)
        self.drawn += 1
        return batch


# ------------------------------------------------------------------------------ SAELens trainer
class TrainerCheckpoints:
    """Checkpoints of a SAELens ``SAETrainer`` run in ``directory``: finds the latest complete one
    (checking its ``settings``); `attach` restores it into the trainer and completes each
    checkpoint SAELens writes there (``SAETrainerConfig.checkpoint_path``)."""

    def __init__(self, directory: str | os.PathLike, current: dict[str, Any]) -> None:
        self.directory, self.settings = Path(directory), current
        found = latest(self.directory, current)
        self.path, self.marker = found if found else (None, {})
        self.batches: int = self.marker.get("batches", 0)
        self.seconds_before: float = self.marker.get("seconds", 0.0)

    def attach(self, trainer: SAETrainer, provider: CountingIterator) -> None:
        self.trainer, self.provider, self.t0 = trainer, provider, time.perf_counter()
        trainer.save_checkpoint_fn = self._complete
        if self.path is None:
            return
        try:
            trainer.sae.load_weights_from_checkpoint(self.path)  # safetensors, in place: the optimizer keeps its params
            # SAELens's load_trainer_state calls torch.load with torch's default, weights_only=True since
            # torch 2.6 (checked on 2.13); formal-sae allows older torch, so first load it here with
            # weights_only=True, which refuses a file that would unpickle anything but tensors and containers.
            safe_torch_load(self.path / TRAINER_STATE_FILENAME)
            trainer.load_trainer_state(self.path)
            set_rng_state(load_file(self.path / RNG_FILE))
        except SAEError:
            raise
        except Exception as e:
            raise SAEError(
                f"the checkpoint {self.path} is corrupt ({type(e).__name__}: {e}); delete it to resume from scratch"
            ) from None
        # SAELens saves n_training_steps before counting the step just taken: one short
        trainer.n_training_steps = self.marker["n_training_steps"]
        # thresholds already passed would make SAELens save a burst of checkpoints right away
        trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t >= trainer.n_training_samples]

    def _complete(self, checkpoint_path: Path | None) -> None:
        """SAELens's ``save_checkpoint_fn``: called once it has written ``checkpoint_path``."""
        assert checkpoint_path is not None  # we always give SAELens a checkpoint_path
        save_file(rng_state(), checkpoint_path / RNG_FILE)
        marker = {
            "settings": self.settings,
            "n_training_samples": self.trainer.n_training_samples,
            "n_training_steps": self.trainer.n_training_steps + 1,
            "batches": self.provider.drawn,
            "seconds": self.seconds_before + time.perf_counter() - self.t0,
        }
        mark_complete(Path(checkpoint_path), marker)


# ------------------------------------------------------------------------------ own loops
def save_loop_checkpoint(
    directory: Path, step: int, sae: TrainingSAE, optimizer: torch.optim.Optimizer, marker: dict[str, Any]
) -> None:
    """Checkpoint a hand-written training loop after ``step`` steps: SAE weights and buffers
    (safetensors), optimizer state, global RNG state, and ``marker`` (JSON: settings, loop state)."""
    path = directory / str(step)
    if path.exists():
        _delete(path)
    path.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in sae.state_dict().items()}, path / SAE_WEIGHTS_FILENAME)
    torch.save(optimizer.state_dict(), path / OPTIMIZER_FILE)
    save_file(rng_state(), path / RNG_FILE)
    mark_complete(path, {"step": step, **marker})


def load_loop_checkpoint(path: Path, sae: TrainingSAE, optimizer: torch.optim.Optimizer) -> None:
    """Restore what `save_loop_checkpoint` saved into ``sae`` and ``optimizer``."""
    try:
        sae.load_weights_from_checkpoint(path)
        optimizer.load_state_dict(safe_torch_load(path / OPTIMIZER_FILE))
        set_rng_state(load_file(path / RNG_FILE))
    except SAEError:
        raise
    except Exception as e:
        raise SAEError(f"the checkpoint {path} is corrupt ({type(e).__name__}: {e}); delete it to resume from scratch") from None

"""Running a sweep's cells (or any other independent tasks: the benchmark scores its dictionaries
so) here, or ``workers`` at a time in processes forked from this one.

A forked worker inherits the function that runs a cell with the model, the data and the activation
cache it holds, without pickling or copying them; only cells and their records cross between
processes. Workers run on one torch thread: OpenMP, once used here, hangs a forked child that
starts more threads.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from formal_sae.errors import SAEError
from formal_sae.saes.config import SAETrainConfig
from formal_sae.saes.sweep.grid import SweepGrid


def check_workers(workers: int, model, grid: SweepGrid) -> None:
    """Refuse a worker count that cannot run ``grid`` on ``model``, before anything trains."""
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


@dataclass
class Workers:
    """Runs tasks with ``run`` (a cell -> its record), here or in forked processes; ``cost``
    estimates a task's time to order them (default: a sweep cell's training cost)."""

    run: Callable[[Any], Any]
    cost: Callable[[Any], float] | None = None

    #: In a worker process, the instance it serves: set as the worker starts. A submitted task
    #: finds ``run`` here, since only what crosses processes is pickled (the cell, its record).
    serving: ClassVar[Workers | None] = None

    def map(self, cells: list[Any], workers: int) -> Iterator[Any]:
        """Each task's result, as it finishes."""
        if workers == 1:
            yield from map(self.run, cells)
            return
        context = multiprocessing.get_context("fork")
        pool = ProcessPoolExecutor(min(workers, len(cells)), mp_context=context, initializer=self._serve)
        try:
            # Costliest first (longest-processing-time order), so that no worker is left alone with
            # a big cell at the end; the order changes no result.
            cost = self.cost or (lambda cell: _training_cost(cell.config))
            by_cost = sorted(cells, key=lambda cell: -cost(cell))
            pending = {pool.submit(Workers._run_here, cell): getattr(cell, "id", cell) for cell in by_cost}
            for future in as_completed(pending):
                try:
                    yield future.result()
                except BrokenProcessPool:
                    raise SAEError(
                        f"a worker process died (out of memory?) or could not start while running {pending[future]}; "
                        "finished work is saved: run again to resume, with fewer workers"
                    ) from None
        finally:  # on an error or Ctrl-C too: hand out no further cell, let the handed-out ones finish
            pool.shutdown(wait=True, cancel_futures=True)

    def _serve(self) -> None:
        torch.set_num_threads(1)
        Workers.serving = self

    @staticmethod
    def _run_here(cell: Any) -> Any:
        return Workers.serving.run(cell)


def _training_cost(config: SAETrainConfig) -> int:
    """A rough estimate of a cell's training time, to order cells: tokens x dictionary size."""
    return config.training_tokens * config.expansion_factor

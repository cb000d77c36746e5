"""Experiment logging to Weights & Biases (``wandb_project=`` in the API, ``--wandb PROJECT`` on the CLI).

Logging is off unless a project is given, and it never changes a result: the project is not part
of a run's configuration (the JSON that `formal_sae.outputs` saves and compares to refuse or
resume a rerun), so the same run with and without ``--wandb`` writes the same files and resumes
the same checkpoints. Every W&B setting other than the project comes from W&B's own environment
variables: ``WANDB_MODE=offline`` (no network; ``wandb sync`` uploads later), ``WANDB_DIR``,
``WANDB_ENTITY``, ``WANDB_API_KEY``.

What is logged where:

* **LM training** ([`formal_sae.train_model`][formal_sae.train_model]): one W&B run per call, its config the model,
  training and data settings; at every evaluation ``train/loss``, ``val/loss``, ``val/validity``
  and ``train/lr`` (x axis: optimisation step); the final metrics (``validity``,
  ``validity_std``, ``val_loss``, ...) in the run summary. A resumed run is a new W&B run that
  first re-logs the restored history, so each W&B run holds the whole curve.
* **SAE training** ([`formal_sae.train_sae`][formal_sae.train_sae], `formal_sae.saes.training.fit_sae`):
  SAELens's own logger (``LoggingConfig(log_to_wandb=True)``): every ``wandb_log_frequency`` (10)
  steps ``losses/*``, ``metrics/explained_variance``, ``metrics/l0``, ``sparsity/dead_features``,
  ``details/current_learning_rate``; every sparsity window the feature-density histogram; at each
  checkpoint SAELens's config and sparsity artifacts (the weights stay in formal-sae's output
  folder: ``log_weights_to_wandb=False``). ``formal-sae train-sae --wandb`` adds the test-split
  metrics of ``metrics.json`` to the same run's summary.
* **Sweeps** (`formal_sae.saes.sweep.results.log_sweep`, ``formal-sae sweep --wandb``): one W&B run
  per sweep, not one per cell: cells train in worker processes, possibly resumed across several
  invocations, so a per-cell run would hold only part of a curve. The run holds the results table
  (``results``, one row per cell, as ``results.csv``), the trade-off plots as images, and the
  number of cells in its summary.

A W&B run that is already active (``wandb.run``) is used instead of starting one, and left open:
wrap several calls in one `wandb_run` to log them together.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

from formal_sae.errors import FormalSAEError
from formal_sae.io import to_jsonable

#: Characters W&B refuses in a project name (``wandb.Settings.validate_project``), and its longest name.
PROJECT_FORBIDDEN = "/\\#?%:"
PROJECT_MAX_LENGTH = 128
LOGIN_HINT = "run `wandb login` (or set WANDB_API_KEY), or set WANDB_MODE=offline to log locally and `wandb sync` later"


def _wandb():
    try:
        import wandb
    except ImportError:  # wandb is a dependency of SAELens, but may be broken or removed
        raise FormalSAEError("logging to W&B needs the wandb package: pip install wandb") from None
    return wandb


def check_project(project: str | None) -> None:
    """Refuse, before anything runs, a W&B project that W&B would refuse when logging (a
    non-empty name of at most 128 characters, none of ``/\\#?%:``; an entity goes in
    ``WANDB_ENTITY``), or any project when wandb does not import. None passes (no logging)."""
    if project is None:
        return
    if not isinstance(project, str) or not project.strip():
        raise FormalSAEError(f"a W&B project must be a non-empty string, got {project!r}")
    bad = sorted({c for c in project if c in PROJECT_FORBIDDEN})
    if bad:
        raise FormalSAEError(
            f"W&B project {project!r} contains {' '.join(bad)}, which W&B refuses in a project name"
            + (" (give the entity in WANDB_ENTITY, not as ENTITY/PROJECT)" if "/" in bad else "")
        )
    if len(project) > PROJECT_MAX_LENGTH:
        raise FormalSAEError(
            f"W&B project {project[:20]!r}... is {len(project)} characters long; W&B allows {PROJECT_MAX_LENGTH}"
        )
    _wandb()


@contextlib.contextmanager
def wandb_run(
    project: str | None, *, name: str | None = None, config: Mapping[str, Any] | None = None, job_type: str | None = None
) -> Iterator[Any]:
    """A W&B run in ``project`` for the block (None and nothing logged when ``project`` is None).

    An already active run is yielded as it is and left open (its ``project`` is not checked);
    a run started here is finished when the block ends, marked failed if it raised.

    Raises:
        FormalSAEError: ``project`` is not one W&B takes (`check_project`), wandb does not
            import, or W&B cannot start the run (not logged in, no network): one line, saying
            to run ``wandb login`` or set ``WANDB_MODE=offline``.
    """
    if project is None:
        yield None
        return
    check_project(project)
    wandb = _wandb()
    if wandb.run is not None:
        yield wandb.run
        return
    try:
        run = wandb.init(project=project, name=name, job_type=job_type, config=to_jsonable(dict(config or {})))
    except Exception as e:  # no API key, no network, a refused entity: W&B's own errors and tracebacks
        raise FormalSAEError(f"cannot start a W&B run in project {project!r} ({_one_line(e)}): {LOGIN_HINT}") from None
    try:
        yield run
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) < 300 else text[:297] + "..."


def log_metrics(run: Any, metrics: Mapping[str, Any], step: int | None = None) -> None:
    """``run.log(metrics, step=step)`` with NaN and non-numbers left out; nothing when ``run`` is None."""
    if run is None:
        return
    clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))}
    if clean:
        run.log(clean, step=step)


def log_summary(run: Any, metrics: Mapping[str, Any]) -> None:
    """Put ``metrics`` (numbers, strings, and dicts of them) into the run's summary; nothing when ``run`` is None."""
    if run is None:
        return
    run.summary.update(
        {k: v for k, v in to_jsonable(dict(metrics)).items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
    )

"""The whole study in one call: data -> models -> SAE sweep -> analysis -> interventions -> causal SAEs,
judged as pre-registered tests of the paper's four claims.

``reproduce(out_dir, grammars, scale)`` runs every stage for each language
(`stages`), measures the evidence of each claim with its controls and
uncertainty ([`evidence`][formal_sae.reproduce.evidence]), judges it
([`claims`][formal_sae.reproduce.claims]) and writes ``report.md`` and ``claims.json``
(`report`). The run is built in ``<out_dir>.in-progress`` and resumes
from its finished stages.

Scales (`scales`): ``quick`` (minutes on a laptop CPU; its verdicts
may well be mixed, and the report says why), ``small``, ``standard`` (the paper's model, about an
hour on 2 CPU cores) and ``paper``. Before it starts, ``reproduce`` prints the estimated time of
each stage (`estimate`) and warns when it exceeds a bound on the CPU.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from formal_sae import FormalSAEError, ModelConfig, RayBackend, atomic_write_text, output_dir, to_jsonable, write_json
from formal_sae.reproduce.claims import ClaimResult, judge
from formal_sae.reproduce.estimate import announce, estimate_time
from formal_sae.reproduce.evidence import C1Evidence, C2Evidence, C3Evidence, C4Evidence
from formal_sae.reproduce.paper_sweeps import run_paper_sweeps, runs_paper_sweeps
from formal_sae.reproduce.report import report_markdown
from formal_sae.reproduce.scales import GRAMMARS, SCALES, Scale, get_scale
from formal_sae.reproduce.stages import run_language, stage

CLAIMS_FILE, REPORT_FILE, RESULTS_FILE = "claims.json", "report.md", "results.json"

__all__ = ["GRAMMARS", "SCALES", "ClaimResult", "Scale", "estimate_time", "judge_results", "reproduce"]


def judge_results(results: dict[str, dict]) -> dict[str, ClaimResult]:
    """The claims, judged from each language's evidence (as `run_language` returns it)."""
    kinds = {"C1": C1Evidence, "C2": C2Evidence, "C3": C3Evidence, "C4": C4Evidence}
    return judge({g: {c: kinds[c].from_dict(r["evidence"][c]) for c in kinds} for g, r in results.items()})


def reproduce(
    out_dir: str | os.PathLike,
    grammars: list[str] | str = "all",
    scale: str | Scale = "quick",
    seed: int = 0,
    device: str = "cpu",
    overwrite: bool = False,
    backend: str | RayBackend = "local",
    workers: int | None = None,
) -> dict[str, ClaimResult]:
    """Run the whole study and write ``report.md`` and ``claims.json`` into ``out_dir``; returns the claims.

    Run again with the same languages, scale and seed, an interrupted run resumes from its
    finished stages. An existing ``out_dir`` is refused unless ``overwrite`` (`formal_sae.outputs`).
    ``backend`` is where the SAE sweeps' cells run ([`sweep`][formal_sae.sweep]'s
    ``backend``: ``"local"``, ``"ray"`` or a [`RayBackend`][formal_sae.RayBackend]); a study started
    on one backend resumes on another. Its SAEs are bitwise equal across backends only where each
    cell trains on one torch thread: on Ray with ``num_cpus=1`` (the default), locally in forked
    workers (a scale's ``workers`` > 1, CPU) or under ``torch.set_num_threads(1)``. Otherwise (the
    local backend's ``workers=1`` runs cells on all of torch's threads) they differ in the last
    bits, and a study resumed across backends mixes such SAEs.

    ``workers`` replaces the scale's sweep workers (`Scale.workers`: forked processes on the CPU);
    like the backend it is not part of the run's configuration.

    A scale with ``paper_sweeps`` (``paper``) then sweeps the authors' whole grid on every model it
    names, the variants' models included (`paper_sweeps`), when the run covers every language.

    Before anything runs it prints the estimated time of each language's stages and their total
    (`estimate.estimate_time`), with a warning when a CPU run is estimated to take more than
    `estimate.CPU_HOURS_BOUND` hours.
    """
    scale = get_scale(scale) if isinstance(scale, str) else scale
    if workers is not None:
        scale = scale.with_overrides(workers=workers)
    names = list(GRAMMARS) if grammars in ("all", ["all"]) else [grammars] if isinstance(grammars, str) else list(grammars)
    unknown = [g for g in names if g not in GRAMMARS]
    if unknown:
        raise FormalSAEError(f"reproduce covers the paper's grammars {', '.join(GRAMMARS)} (or all), not {unknown}")
    # workers change no result (a run resumes with another count); model_train and paper_sweeps are left
    # out when unset, so that the configuration of a scale without them reads as it did before they existed
    unset = [name for name in ("model_train", "paper_sweeps") if not getattr(scale, name)]
    left_out = ("grid", "notes", "workers", *unset)  # the grid: below
    settings = {f.name: to_jsonable(getattr(scale, f.name)) for f in dataclasses.fields(scale) if f.name not in left_out}
    # the grid is code, so its cells stand in for it: a finished sweep is reused without a check of its own
    settings["grid"] = scale.grid(ModelConfig.from_preset(scale.preset).d_model).to_dict()
    config = {"grammars": names, "scale": scale.name, "seed": seed, "settings": settings}  # overrides count too
    with output_dir(out_dir, "reproduction", config, overwrite=overwrite, resumable=True) as out:
        announce(estimate_time(scale, names, device))
        results = {
            g: stage(Path(out) / g / RESULTS_FILE, lambda g=g: run_language(g, Path(out) / g, scale, seed, device, backend))
            for g in names
        }
        authors_grid = []
        if runs_paper_sweeps(scale, names):
            authors_grid = run_paper_sweeps(out, scale, results, seed, device, backend)
        elif scale.paper_sweeps:
            print(f"the authors' whole SAE grid is swept only in a run of all of {', '.join(GRAMMARS)}: skipped", flush=True)
        claims = judge_results(results)
        write_json(Path(out) / CLAIMS_FILE, {k: c.to_dict() for k, c in claims.items()})
        atomic_write_text(Path(out) / REPORT_FILE, report_markdown(results, claims, scale, authors_grid))
    return claims

"""The benchmark run: every architecture of the panel trained, at matched L0, widths and seeds, on
each language's model, scored beside its floor, baselines and ceiling, and ranked.

Layout of a run's folder (`formal_sae.outputs` policy: built in ``<out>.in-progress``, resumed
after a kill without retraining or rescoring what is finished)::

    bench.json                       the BenchConfig
    leaderboard.{md,csv,json}        per language and overall (formal_sae.bench.leaderboard)
    pareto_*.png
    <grammar>/calibration.json       the coefficients that reach each L0 target
    <grammar>/panel/                 the trained SAEs: a formal-sae sweep (cells/<id>/, SAELens format)
    <grammar>/causal/<id>/           causal SAEs (SAELens format)
    <grammar>/baselines/<name>/      floor, basis and ceiling dictionaries (SAELens format)
    <grammar>/scores/<id>.json       one SAEBench-shaped JSON per dictionary, with a formal_sae block

All SAEs of one language train on one activation cache (the sweep's), with the sweep's workers
or on Ray.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm

from formal_sae.bench import baselines
from formal_sae.bench.calibration import HELD_OUT_TOKENS, Calibration, calibrate, coefficient_settings
from formal_sae.bench.config import BENCH_PRESETS, CAUSAL, COEFFICIENT_ARCHITECTURES, BenchConfig
from formal_sae.bench.leaderboard import LeaderboardRow, build_leaderboard, group_key, write_leaderboard
from formal_sae.bench.pareto import plot_pareto
from formal_sae.bench.saebench import saebench_record, write_saebench_json
from formal_sae.bench.saelens_evals import saelens_eval
from formal_sae.bench.score import BenchScore
from formal_sae.bench.scoring import score_sae
from formal_sae.bench.stability import decoder_stability
from formal_sae.data import dataset_metadata
from formal_sae.errors import FormalSAEError
from formal_sae.io import atomic_replace, read_json, write_json
from formal_sae.outputs import output_dir
from formal_sae.saes import load_sae
from formal_sae.saes.causal import train_causal_sae
from formal_sae.saes.sweep import CELLS_DIR, SweepEvaluation, SweepGrid, sweep
from formal_sae.saes.sweep.cells import METRICS_FILE, quiet_saelens_progress
from formal_sae.saes.sweep.ray_backend import RayBackend
from formal_sae.saes.sweep.workers import Workers
from formal_sae.saes.training import cache_activations

CONFIG_FILE, CALIBRATION_FILE = "bench.json", "calibration.json"
PANEL_DIR, CAUSAL_DIR, BASELINES_DIR, SCORES_DIR = "panel", "causal", "baselines", "scores"
#: The SAEBench ``eval_type_id`` of the scores.
EVAL_TYPE = "formal_sae_ground_truth"


@dataclass
class BenchResult:
    """What [`bench`][formal_sae.bench.bench] returns: every score, the leaderboard rows, and the
    cells that were not trained because calibration could not reach their L0 target."""

    scores: list[BenchScore]
    rows: list[LeaderboardRow]
    unreached: list[Calibration]
    out_dir: Path


@dataclass
class Entry:
    """One dictionary to score: its id, how to get it, and who it is."""

    sae_id: str
    load: Callable[[], Any]
    identity: dict[str, Any]
    fidelity: dict[str, Any] | None = None


def _calibrate_all(model, dataset, config: BenchConfig) -> list[Calibration]:
    todo = [
        (arch, width, target)
        for arch in config.panel
        if arch in COEFFICIENT_ARCHITECTURES
        for width in config.expansion_factors
        for target in config.l0_targets
    ]
    if not todo:
        return []
    train = cache_activations(model, dataset, config.hook_name, config.calibration_tokens)
    held_out = cache_activations(model, dataset, config.hook_name, HELD_OUT_TOKENS, split="validation")
    out = []
    for arch, width, target in tqdm(todo, desc="calibrating L0", leave=False):
        cell = config.sae_config(architecture=arch, expansion_factor=width)
        out.append(
            calibrate(
                model, dataset, cell, target, tokens=config.calibration_tokens, runs=config.calibration_runs,
                tolerance=config.calibration_tolerance, train_activations=train, held_out=held_out,
            )
        )  # fmt: skip
    return out


def cell_settings(arch: str, target: int, calibrated: Calibration | None) -> dict[str, Any] | None:
    """The ``SAETrainConfig`` settings that put ``arch`` at L0 ``target`` (None: unreachable)."""
    if arch in COEFFICIENT_ARCHITECTURES:
        if calibrated is None or not calibrated.reached:
            return None
        return coefficient_settings(calibrated.coefficient_name, calibrated.coefficient)
    if arch == "matching_pursuit":  # selects latents one by one: at most max_iterations per token
        return {"extra": {"max_iterations": target}}
    return {"k": target}


def panel_grid(config: BenchConfig, calibrations: list[Calibration]) -> SweepGrid:
    """The SweepGrid of the trained (non-causal) part of the panel; ids ``<arch>-x<w>-l0<t>-s<seed>``."""
    calibrated = {(c.architecture, c.expansion_factor, c.l0_target): c for c in calibrations}
    cells = []
    for arch in config.panel:
        if arch == CAUSAL:
            continue
        for width in config.expansion_factors:
            for target in config.l0_targets:
                settings = cell_settings(arch, target, calibrated.get((arch, width, target)))
                if settings is None:
                    continue
                for i in range(config.seeds):
                    seed = config.seed + i
                    cells.append({"id": _id(arch, width, target, seed), "architecture": arch, "expansion_factor": width,
                                  "seed": seed, **settings})  # fmt: skip
    return SweepGrid.from_settings("bench", config.sae_config(), cells)


def _id(arch: str, width: float, target: int | None, seed: int | None) -> str:
    return "-".join(
        p for p in (arch, f"x{width:g}", f"l0{target}" if target else "", f"s{seed}" if seed is not None else "") if p
    )


def _causal_entries(model, dataset, config: BenchConfig, lang: Path) -> list[Entry]:
    if CAUSAL not in config.panel:
        return []
    causal = dataclasses.replace(config.causal, pretrain_steps=config.training_tokens // config.batch_size_tokens)
    entries = []
    for width in config.expansion_factors:
        for target in config.l0_targets:
            for i in range(config.seeds):
                seed = config.seed + i
                sae_id = _id(CAUSAL, width, target, seed)
                path = lang / CAUSAL_DIR / sae_id
                if not path.exists():
                    base = config.sae_config(architecture="topk", k=target, expansion_factor=width, seed=seed)
                    with quiet_saelens_progress():  # the run shows its own bars
                        train_causal_sae(model, dataset, base, causal, out_dir=path, progress=False)
                identity = {"architecture": CAUSAL, "family": "sae", "expansion_factor": width, "l0_target": target, "seed": seed}
                entries.append(Entry(sae_id, lambda p=path: load_sae(p), identity))
    return entries


def baseline_entries(model, dataset, config: BenchConfig, lang: Path) -> list[Entry]:
    """The untrained floor of each width (TopK at the middle L0 target, every seed), the model's
    basis, PCA, and the probe ceiling: saved once, so a rerun scores the same dictionaries."""
    acts = None
    target = sorted(config.l0_targets)[len(config.l0_targets) // 2]
    made: dict[str, tuple[Callable[[], Any], dict[str, Any]]] = {}
    for width in config.expansion_factors:
        for i in range(config.seeds):
            seed = config.seed + i
            cfg = config.sae_config(architecture="topk", k=target, expansion_factor=width, seed=seed)
            made[_id("untrained", width, target, seed)] = (
                lambda cfg=cfg: baselines.untrained_sae(model, cfg),
                {"architecture": "untrained", "family": "floor", "expansion_factor": width, "l0_target": target, "seed": seed},
            )

    def activations():
        nonlocal acts
        if acts is None:
            acts = baselines.activations_for(model, dataset, config.hook_name, config.training_tokens)
        return acts

    made["residual_basis"] = (
        lambda: baselines.residual_basis_sae(model, config.hook_name, activations()),
        {"architecture": "residual_basis", "family": "baseline"},
    )
    made["pca"] = (
        lambda: baselines.pca_sae(model, config.hook_name, activations()),
        {"architecture": "pca", "family": "baseline"},
    )
    made["probe"] = (
        lambda: baselines.probe_sae(model, dataset, config.hook_name, max_sentences=config.scoring.max_sentences),
        {"architecture": "probe", "family": "ceiling"},
    )
    entries = []
    for sae_id, (build, identity) in made.items():
        path = lang / BASELINES_DIR / sae_id
        save_once(path, build)
        identity = {"expansion_factor": None, "l0_target": None, "seed": None, **identity}
        entries.append(Entry(sae_id, lambda p=path: load_sae(p), identity))
    return entries


def save_once(path: Path, build: Callable[[], Any]) -> None:
    """Save the SAE ``build()`` makes at ``path`` unless a previous run did. Written whole
    (`atomic_replace`): a kill mid-save leaves no half-saved SAE for a resumed run to take."""
    if not path.exists():
        atomic_replace(path, lambda tmp: build().save_model(str(tmp)))


def _panel_entries(model, dataset, config: BenchConfig, lang: Path, calibrations, *, workers, backend, progress) -> list[Entry]:
    grid = panel_grid(config, calibrations)
    validity = config.scoring.validity_samples > 0
    evaluation = SweepEvaluation(
        max_sentences=config.scoring.max_sentences, validity=validity, n_samples=max(1, config.scoring.validity_samples),
        repeats=config.scoring.validity_repeats, seed=config.scoring.seed,
    )  # fmt: skip
    panel = lang / PANEL_DIR
    if not panel.exists():
        sweep(
            model, dataset, grid, panel, evaluation=evaluation, workers=workers, backend=backend, progress=progress, plots=False
        )
    entries = []
    for cell in grid.cells:
        path = panel / CELLS_DIR / cell.id
        c = cell.config
        identity = {
            "architecture": c.architecture,
            "family": "sae",
            "expansion_factor": c.expansion_factor,
            "l0_target": _target_of(cell.id),  # every panel id names its target (`_id`)
            "seed": c.seed,
        }
        entries.append(Entry(cell.id, lambda p=path: load_sae(p), identity, read_json(path / METRICS_FILE)["metrics"]))
    return entries


def _target_of(sae_id: str) -> int:
    return int(next(p for p in sae_id.split("-") if p.startswith("l0"))[2:])


def score_entries(
    model,
    dataset,
    config: BenchConfig,
    lang: Path,
    entries: list[Entry],
    progress: bool,
    allow_other_model: bool = False,
    workers: int = 1,
) -> list[BenchScore]:
    """Score every entry into ``lang/scores/<id>.json`` (SAEBench-shaped), ``workers`` at a time in
    forked processes (each writes its own file), skipping the ones an interrupted run scored; the
    scores, read back from those files in the entries' order."""

    def path_of(entry: Entry) -> Path:
        return lang / SCORES_DIR / f"{entry.sae_id}.json"

    def run(i: int) -> int:
        entry = entries[i]
        sae = entry.load()
        score = score_sae(
            model, sae, dataset, config.scoring, sae_id=entry.sae_id, fidelity=entry.fidelity,
            allow_other_model=allow_other_model, **entry.identity,
        )  # fmt: skip
        # a real client: SAELens's run_evals on the same tokens, beside ours; on each cell's first seed
        # only, since it costs more than the rest of the score (2.7 s vs 2 s per SAE, paper preset)
        if score.family == "sae" and score.seed == config.seed:
            theirs = saelens_eval(
                model, sae, dataset, max_sentences=config.scoring.max_sentences, allow_other_model=allow_other_model
            )
            score.saelens_explained_variance, score.saelens_ce_loss_score = theirs.explained_variance, theirs.ce_loss_score
        record = saebench_record(score, sae_cfg=sae.cfg.to_dict(), eval_config={"eval_type_id": EVAL_TYPE, **config.to_dict()})
        write_saebench_json(record, path_of(entry))
        return i

    todo = [i for i, entry in enumerate(entries) if not path_of(entry).is_file()]
    if workers > 1 and str(model.cfg.device) != "cpu":
        workers = 1  # a forked process cannot use CUDA
    done = Workers(run, cost=lambda i: entries[i].identity.get("expansion_factor") or 1).map(
        todo, min(workers, max(1, len(todo)))
    )
    for _ in tqdm(done, total=len(todo), desc=f"scoring {lang.name}", disable=not progress, leave=False):
        pass
    return [BenchScore(**read_json(path_of(entry))["formal_sae"]) for entry in entries]


def _stability(entries: list[Entry], scores: list[BenchScore]) -> dict[str, float | None]:
    groups: dict[str, list[Entry]] = {}
    for entry, score in zip(entries, scores, strict=True):
        if score.family in ("sae", "floor"):
            groups.setdefault(group_key(score), []).append(entry)
    return {key: decoder_stability([e.load().W_dec.detach() for e in members]) for key, members in groups.items()}


def bench(
    languages: Sequence[tuple[Any, datasets.DatasetDict]],
    out_dir: str | os.PathLike,
    config: BenchConfig | str = "quick",
    *,
    workers: int = 1,
    backend: str | RayBackend = "local",
    overwrite: bool = False,
    progress: bool = True,
) -> BenchResult:
    """Run the benchmark panel on each ``(model, dataset)`` of ``languages`` and write the leaderboard.

    Args:
        languages: One formal-sae model and its dataset per language.
        out_dir: The run's folder (layout: the module docstring); an existing one is refused
            unless ``overwrite``; an interrupted run resumes.
        config: A [`BenchConfig`][formal_sae.bench.BenchConfig] or a preset name (`BENCH_PRESETS`).
        workers, backend: How the panel's SAEs train (``sweep``'s): forked CPU workers or Ray.
    """
    if isinstance(config, str):
        if config not in BENCH_PRESETS:
            raise FormalSAEError(f"unknown bench preset {config!r}; choose one of {', '.join(BENCH_PRESETS)}")
        config = BENCH_PRESETS[config]
    if not languages:
        raise FormalSAEError("bench needs at least one (model, dataset) pair")
    grammars = [dataset_metadata(d).grammar for _, d in languages]
    if len(set(grammars)) != len(grammars):
        raise FormalSAEError(f"one model per language: {grammars} repeats a grammar")
    manifest = {"config": config.to_dict(), "grammars": grammars}
    with output_dir(out_dir, "bench", manifest, overwrite=overwrite, resumable=True) as out:
        write_json(out / CONFIG_FILE, config.to_dict())
        all_scores: list[BenchScore] = []
        stability: dict[str, float | None] = {}
        unreached: list[Calibration] = []
        for (model, dataset), grammar in zip(languages, grammars, strict=True):
            lang = out / grammar
            lang.mkdir(exist_ok=True)
            if (lang / CALIBRATION_FILE).is_file():
                calibrations = [Calibration(**c) for c in read_json(lang / CALIBRATION_FILE)]
            else:
                calibrations = _calibrate_all(model, dataset, config)
                write_json(lang / CALIBRATION_FILE, [c.to_dict() for c in calibrations])
            unreached += [c for c in calibrations if not c.reached]
            entries = [
                *_panel_entries(model, dataset, config, lang, calibrations, workers=workers, backend=backend, progress=progress),
                *_causal_entries(model, dataset, config, lang),
                *baseline_entries(model, dataset, config, lang),
            ]
            scores = score_entries(model, dataset, config, lang, entries, progress, workers=workers)
            stability.update({f"{grammar}/{k}": v for k, v in _stability(entries, scores).items()})
            all_scores += scores
        rows = build_leaderboard(all_scores, stability)
        write_leaderboard(rows, out)
        plot_pareto(rows, out)
    return BenchResult(all_scores, rows, unreached, Path(out_dir))

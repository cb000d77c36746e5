"""Score your own SAE: any SAELens-loadable SAE trained at a hook of one of the package's models,
against the same floor, baselines and ceiling as the panel's.

Its floor is the SAE's *own architecture* re-initialised (SAELens builds the class from the SAE's
config; one per seed), so a score is read against what that architecture gives before training.
The hook comes from the SAE's metadata and the model from its fingerprint (`check_sae_model`):
an SAE of another model or hook is refused before anything is scored.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import datasets
import torch

from formal_sae.bench import runner
from formal_sae.bench.config import BenchConfig
from formal_sae.bench.leaderboard import build_leaderboard, write_leaderboard
from formal_sae.bench.pareto import plot_pareto
from formal_sae.data import dataset_metadata
from formal_sae.errors import SAEError
from formal_sae.io import write_json
from formal_sae.outputs import output_dir
from formal_sae.saes import check_sae_fits, check_sae_model, load_sae
from formal_sae.saes.sweep.grid import sanitize_id


def untrained_like(sae, seed: int):
    """A fresh SAE of ``sae``'s class and config (SAELens's own initialisation), seeded."""
    torch.manual_seed(seed)
    fresh = type(sae)(sae.cfg)
    fresh.cfg.metadata = sae.cfg.metadata
    return fresh


def score_saes(
    model,
    dataset: datasets.DatasetDict,
    sae_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: BenchConfig | None = None,
    *,
    allow_other_model: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    workers: int = 1,
) -> runner.BenchResult:
    """Score each SAE of ``sae_dirs`` (folders or Hub locations ``formal_sae.load_sae`` takes) on
    ``model`` and write a leaderboard with the baselines (``config``: its scoring settings, seeds
    of the floor and hook of the baselines; default [`BenchConfig`][formal_sae.bench.BenchConfig]),
    ``workers`` dictionaries at a time in forked processes."""
    config = config or BenchConfig()
    if not sae_dirs:
        raise SAEError("give at least one SAE directory to score (--sae DIR)")
    saes = {}
    for d in sae_dirs:
        sae = load_sae(d)
        hook = check_sae_fits(model, sae)
        check_sae_model(model, sae, allow_other_model)
        if hook != config.hook_name:
            config = dataclasses.replace(config, hook_name=hook)
        sae_id = sanitize_id(Path(str(d)).name)
        if sae_id in saes:  # its scores would overwrite the other's
            raise SAEError(
                f"two SAEs are named {sae_id!r} ({saes[sae_id][0]} and {d}): score them in separate runs or rename a folder"
            )
        saes[sae_id] = (d, sae)
    hooks = {sae.cfg.metadata.hook_name for _, sae in saes.values()}
    if len(hooks) > 1:
        raise SAEError(f"the SAEs read different hooks {sorted(hooks)}: score the SAEs of one hook at a time")
    grammar = dataset_metadata(dataset).grammar
    manifest = {"config": config.to_dict(), "saes": [str(d) for d, _ in saes.values()], "grammar": grammar}
    with output_dir(out_dir, "bench", manifest, overwrite=overwrite, resumable=True) as out:
        write_json(out / runner.CONFIG_FILE, config.to_dict())
        lang = out / grammar
        lang.mkdir(exist_ok=True)
        entries = []
        for sae_id, (d, sae) in saes.items():
            width = sae.cfg.d_sae / sae.cfg.d_in
            identity = {
                "architecture": sae.cfg.architecture(),
                "family": "sae",
                "expansion_factor": width,
                "l0_target": None,
                "seed": None,
            }
            entries.append(runner.Entry(sae_id, lambda d=d: load_sae(d), identity))
            for i in range(config.seeds):
                seed = config.seed + i
                floor_id = f"{sae_id}-untrained-s{seed}"
                path = lang / runner.BASELINES_DIR / floor_id
                runner.save_once(path, lambda sae=sae, seed=seed: untrained_like(sae, seed))
                floor = {**identity, "family": "floor", "architecture": f"{identity['architecture']} (untrained)", "seed": seed}
                entries.append(runner.Entry(floor_id, lambda p=path: load_sae(p), floor))
        entries += [e for e in runner.baseline_entries(model, dataset, config, lang) if e.identity["family"] != "floor"]
        scores = runner.score_entries(model, dataset, config, lang, entries, progress, allow_other_model, workers)
        rows = build_leaderboard(scores, {})
        write_leaderboard(rows, out)
        plot_pareto(rows, out)
    return runner.BenchResult(scores, rows, [], Path(out_dir))

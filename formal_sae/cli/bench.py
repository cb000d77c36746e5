"""The benchmark command: ``bench`` (the panel and its leaderboard, or your own SAEs scored)."""

# simple_parsing.field is dataclasses.field with the flag's options (ruff knows only the latter):
# ruff: noqa: RUF009

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from simple_parsing import field

import formal_sae
import formal_sae.bench as benchmark
from formal_sae.cli.base import ALLOW_OTHER_MODEL, BACKEND, BACKENDS, OVERWRITE, Command, sweep_backend
from formal_sae.cli.parsing import prefixed
from formal_sae.io import read_json


@dataclass(kw_only=True)
class BenchCommand(Command):
    """rank SAE architectures on each language's model by recovery of the true features and causal effect"""

    name: ClassVar[str] = "bench"
    model: list[Path]
    """model directories, one per language (formal-sae train-model, or <study>/<grammar>/model of reproduce)"""
    data: list[Path]
    """their dataset directories, in the same order"""
    out: Path
    """benchmark directory (leaderboard.md/csv/json, Pareto plots, one folder per language)"""
    preset: str = field(default="quick", choices=tuple(benchmark.BENCH_PRESETS))
    """the panel's settings: a named preset (formal_sae.bench.BENCH_PRESETS)"""
    config: Path | None = None
    """a BenchConfig as JSON (e.g. a run's bench.json), instead of --preset"""
    sae: list[Path] | None = None
    """score these SAE directories (SAELens format) against the baselines instead of training the panel (one --model)"""
    workers: int = 1
    """SAEs trained, and dictionaries scored, at once in forked processes on the CPU"""
    backend: str = field(default="local", choices=BACKENDS, help=BACKEND)
    ray: formal_sae.RayBackend | None = prefixed(formal_sae.RayBackend, "ray")
    """the Ray cluster the panel trains on (formal_sae.RayBackend), with --backend ray"""
    allow_other_model: bool = field(default=False, help=ALLOW_OTHER_MODEL)
    overwrite: bool = field(default=False, help=OVERWRITE)

    def run(self) -> None:
        if len(self.model) != len(self.data):
            raise formal_sae.FormalSAEError(
                f"give one --data per --model: got {len(self.model)} models and {len(self.data)} datasets"
            )
        config = benchmark.BenchConfig.from_dict(read_json(self.config, what="bench config")) if self.config else self.preset
        languages = [
            (formal_sae.load_model(m), formal_sae.load_dataset_dir(d)) for m, d in zip(self.model, self.data, strict=True)
        ]
        if self.sae:
            if len(languages) != 1:
                raise formal_sae.FormalSAEError("--sae scores SAEs of one model: give one --model and one --data")
            if isinstance(config, str):
                config = benchmark.BENCH_PRESETS[config]
            result = benchmark.score_saes(
                *languages[0],
                self.sae,
                self.out,
                config,
                allow_other_model=self.allow_other_model,
                overwrite=self.overwrite,
                workers=self.workers,
            )
        else:
            if self.allow_other_model:
                raise formal_sae.FormalSAEError("--allow-other-model is for --sae: the panel's SAEs are trained on --model")
            backend = sweep_backend(self.backend, self.ray)
            result = benchmark.bench(languages, self.out, config, workers=self.workers, backend=backend, overwrite=self.overwrite)
        print(f"wrote {self.out}/leaderboard.md ({len(result.scores)} dictionaries scored)")
        for c in result.unreached:
            print(
                f"  not trained: {c.architecture} x{c.expansion_factor} at L0 {c.l0_target} (calibration reached L0 {c.l0:.1f})"
            )

"""The commands on SAEs: ``train-sae``, ``sweep`` and ``compare-saes``."""

# simple_parsing.field is dataclasses.field with the flag's options (ruff knows only the latter):
# ruff: noqa: RUF009

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from simple_parsing import field

import formal_sae
import formal_sae.tracking
from formal_sae.cli.base import (
    ALLOW_OTHER_MODEL,
    BACKEND,
    BACKENDS,
    DEVICE,
    OVERWRITE,
    WANDB,
    Command,
    api_default,
    sweep_backend,
)
from formal_sae.cli.parsing import prefixed


# ---------------------------------------------------------------------------- SAEs
@dataclass(kw_only=True)
class TrainSAECommand(Command):
    """train an SAE with SAELens on a model's activations (and evaluate it on the test split)"""

    name: ClassVar[str] = "train-sae"
    model: Path
    """model directory from `formal-sae train-model`"""
    data: Path
    """the model's dataset directory"""
    out: Path
    """SAE directory (SAELens format + metrics.json + latent_density.png)"""
    n_samples: int = api_default(formal_sae.evaluate_sae, "n_samples")
    """validity: samples per repeat"""
    repeats: int = api_default(formal_sae.evaluate_sae, "repeats")
    """validity: repeats"""
    allow_other_model: bool = field(default=False, help=ALLOW_OTHER_MODEL)
    overwrite: bool = field(default=False, help=OVERWRITE)
    wandb: str | None = field(
        default=None, metavar="PROJECT", help=WANDB + "; with --causal-* only the test metrics, no training curve"
    )
    sae: formal_sae.SAETrainConfig = field(default_factory=formal_sae.SAETrainConfig)
    """the SAE and its training (formal_sae.SAETrainConfig)"""
    causal: formal_sae.CausalConfig | None = prefixed(formal_sae.CausalConfig, "causal")
    """the causal term (docs: The paper, the causal loss), on when any --causal-* flag is given"""

    @classmethod
    def epilog(cls) -> str:
        return (
            f"architectures: {', '.join(formal_sae.sae_architectures())}. The causal term (docs: The paper, the causal loss) is on "
            "when any --causal-* flag is given (e.g. --causal-coefficient 10)."
        )

    def run(self) -> None:
        config, causal = self.sae, self.causal
        formal_sae.check_output(self.out, "sae", self.overwrite)  # before loading anything
        model = formal_sae.load_model(self.model, device=config.device)
        dataset = formal_sae.load_dataset_dir(self.data)
        distance = causal.distance if causal else formal_sae.CausalConfig.distance
        evaluation = {"n_samples": self.n_samples, "repeats": self.repeats, "splice": config.splice, "distance": distance}
        run = {"sae": config.to_dict() | {"device": None}, "causal": causal and causal.to_dict(), "evaluation": evaluation}
        # The SAE and its metrics.json form one artifact: an interrupted run resumes from its last
        # training checkpoint, and nothing appears at --out before the metrics are written.
        # One W&B run for training (SAELens's logger) and the test metrics (its summary).
        wandb_run = formal_sae.tracking.wandb_run(self.wandb, name=self.out.name, config=run, job_type="train-sae")
        with (
            formal_sae.output_dir(self.out, "sae", run, overwrite=self.overwrite, resumable=True) as work,
            wandb_run as wb,
        ):
            if causal is not None:
                sae = formal_sae.train_causal_sae(model, dataset, config, causal, out_dir=work)
            else:
                sae = formal_sae.train_sae(model, dataset, config, out_dir=work, wandb_project=self.wandb)
            kwargs = {"split": "test", "allow_other_model": self.allow_other_model}
            evaluated = formal_sae.evaluate_sae(
                model, sae, dataset, splice=config.splice, n_samples=self.n_samples, repeats=self.repeats, **kwargs
            )
            formal_sae.saes.evaluation.write_latent_density(evaluated, Path(work) / formal_sae.saes.evaluation.DENSITY_PNG)
            metrics = dict(evaluated)
            metrics["causal_loss"] = formal_sae.held_out_causal_loss(model, sae, dataset, distance=distance, **kwargs)
            metrics["train_seconds"] = formal_sae.train_seconds(sae)
            formal_sae.write_json(Path(work) / "metrics.json", metrics)
            formal_sae.tracking.log_summary(wb, {f"test/{k}": v for k, v in metrics.items()})
        print(
            f"wrote {self.out}: {metrics['architecture']} d_sae {metrics['d_sae']} at {metrics['hook_name']}: "
            f"explained variance {metrics['explained_variance']:.3f}, L0 {metrics['l0']:.1f}, "
            f"CE score {metrics['ce_loss_score']:.3f}, validity {metrics['validity']:.3f} ± {metrics['validity_std']:.3f}"
        )


@dataclass(kw_only=True)
class SweepCommand(Command):
    """train and evaluate a grid of SAEs on shared activations (resumable)"""

    name: ClassVar[str] = "sweep"
    model: Path
    """model directory from `formal-sae train-model`"""
    data: Path
    """the model's dataset directory"""
    out: Path
    """sweep directory (results.json, results.md, one folder per cell)"""
    grid: str = field(
        default="paper", help=f"a built-in grid ({', '.join(formal_sae.saes.sweep.BUILT_IN_GRIDS)}) or a JSON grid file"
    )
    scale: str | None = field(
        default=None,
        help=f"training budget of the paper grid, one of: {', '.join(formal_sae.saes.sweep.PAPER_SCALES)} (default: small)",
    )
    workers: int = api_default(formal_sae.sweep, "workers")
    """cells at once, each in a process on one CPU core (CPU only; try the number of cores)"""
    device: str = DEVICE
    """where the model and every cell's SAE run (replacing a grid file's device): cpu, cuda, cuda:N or mps"""
    overwrite: bool = field(default=False, help=OVERWRITE)
    wandb: str | None = field(default=None, metavar="PROJECT", help=WANDB + " (one W&B run per sweep: the results table)")
    evaluation: formal_sae.SweepEvaluation = field(default_factory=formal_sae.SweepEvaluation)
    """how each cell is evaluated (formal_sae.SweepEvaluation)"""
    backend: str = field(default=api_default(formal_sae.sweep, "backend"), choices=BACKENDS, help=BACKEND)
    ray: formal_sae.RayBackend | None = prefixed(formal_sae.RayBackend, "ray")
    """the Ray cluster and what each cell asks of it (formal_sae.RayBackend), with --backend ray"""

    def run(self) -> None:
        backend = sweep_backend(self.backend, self.ray)
        model = formal_sae.load_model(self.model, device=self.device)
        dataset = formal_sae.load_dataset_dir(self.data)
        scale = self.scale or ("small" if self.grid == "paper" else None)  # --scale is the paper grid's alone
        # sized for the residual stream; the cells train where the model runs
        grid = formal_sae.load_grid(self.grid, scale=scale, d_in=model.cfg.d_model, device=self.device)
        rows = formal_sae.sweep(
            model,
            dataset,
            grid,
            self.out,
            evaluation=self.evaluation,
            workers=self.workers,
            overwrite=self.overwrite,
            backend=backend,
            wandb_project=self.wandb,
        )
        valid = [r["validity"] for r in rows if r.get("validity") is not None]
        span = f"validity {min(valid):.3f}-{max(valid):.3f}" if valid else "validity not measured"
        print(f"wrote {self.out}: {len(rows)} SAEs of grid {grid.name!r}; {span}; see results.md")


@dataclass(kw_only=True)
class CompareSAEsCommand(Command):
    """compare SAEs (e.g. causal vs plain) on the same model and data"""

    name: ClassVar[str] = "compare-saes"
    saes: list[str] = field(positional=True, nargs="+", metavar="SAE")
    """SAE directories"""
    model: Path
    """model directory"""
    data: Path
    """the model's dataset directory"""
    out: Path
    """comparison directory (comparison.md, comparison.json, comparison.png)"""
    n_samples: int = api_default(formal_sae.compare_saes, "n_samples")
    """validity: samples per repeat"""
    repeats: int = api_default(formal_sae.compare_saes, "repeats")
    """validity: repeats"""
    allow_other_model: bool = field(default=False, help=ALLOW_OTHER_MODEL)
    device: str = DEVICE
    """cpu, cuda, cuda:N or mps"""
    overwrite: bool = field(default=False, help=OVERWRITE)

    def run(self) -> None:
        formal_sae.check_output(self.out, "comparison", self.overwrite)  # before minutes of work
        model = formal_sae.load_model(self.model, device=self.device)
        dataset = formal_sae.load_dataset_dir(self.data)
        comparison = formal_sae.compare_saes(
            model, dataset, self.saes, n_samples=self.n_samples, repeats=self.repeats, allow_other_model=self.allow_other_model
        )
        comparison.save(self.out, overwrite=self.overwrite)
        print(comparison.to_markdown())

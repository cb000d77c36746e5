"""The commands of ``formal-sae``: one dataclass each, whose fields are its flags.

A command's own fields are its paths and switches; the settings of the run are the API's own
configuration dataclasses, nested (``TrainSAECommand.sae`` is a [`formal_sae.SAETrainConfig`][formal_sae.SAETrainConfig]),
so that each setting is declared, documented and defaulted once: a flag is its field's name with
dashes, its help the docstring below the field. Defaults of the other options are those of the
API function they are passed to (read from its signature). Each command's ``run`` calls the public
API only, and prints what it wrote.
"""

# simple_parsing.field is dataclasses.field with the flag's options (ruff knows only the latter):
# ruff: noqa: RUF009

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from simple_parsing import field

import formal_sae
import formal_sae.reproduce as study
import formal_sae.tracking  # the whole study: a pipeline on top of the public API
from formal_sae.cli.parsing import prefixed


def api_default(function: Any, name: str) -> Any:
    """The default of parameter ``name`` of an API function: the one place it is declared."""
    return inspect.signature(function).parameters[name].default


OVERWRITE = "replace an existing output directory (only one formal-sae wrote: see 'Where your files go' in the docs)"
ALLOW_OTHER_MODEL = "apply the SAE even though its metadata names another model than --model (a deliberate transfer)"
DEVICE = api_default(formal_sae.load_model, "device")
BACKENDS = ("local", "ray")
BACKEND = "where SAE sweep cells run: local (this machine) or ray (a Ray cluster, see --ray-address; pip install formal-sae[ray])"


def sweep_backend(backend: str, ray: formal_sae.RayBackend | None) -> str | formal_sae.RayBackend:
    """``sweep``'s backend from ``--backend`` and the ``--ray-*`` flags."""
    if backend != "ray" and ray is not None:
        raise formal_sae.SAEError("the --ray-* flags set the Ray backend: add --backend ray")
    return (ray or formal_sae.RayBackend()) if backend == "ray" else backend


WANDB = (
    "log to this Weights & Biases project (W&B's WANDB_MODE=offline, WANDB_DIR, WANDB_ENTITY apply); "
    "not part of the run's settings: a rerun or resume with or without it is the same run"
)


class Command:
    name: ClassVar[str]

    @classmethod
    def epilog(cls) -> str | None:
        return None

    def run(self) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------- data
@dataclass(kw_only=True)
class GrammarsCommand(Command):
    """list the built-in grammars"""

    name: ClassVar[str] = "grammars"

    def run(self) -> None:
        names = formal_sae.list_grammars()
        width = max(map(len, names))
        for name in names:
            g = formal_sae.load_grammar(name)
            print(
                f"{name:<{width}}  {g.description} (vocabulary {len(g.terminals)}, "
                f"expected length {g.expected_length:.1f} before the length limit)"
            )


@dataclass(kw_only=True)
class GenerateCommand(Command):
    """sample a grammar into a Hugging Face dataset directory"""

    name: ClassVar[str] = "generate"
    grammar: str = field(positional=True, metavar="GRAMMAR")
    """registry name (see `formal-sae grammars`) or path of a PCFG text file"""
    out: Path
    """output directory (datasets.load_from_disk opens it)"""
    n_train: int = api_default(formal_sae.generate_dataset, "n_train")
    """training sentences"""
    n_validation: int = api_default(formal_sae.generate_dataset, "n_validation")
    """validation sentences"""
    n_test: int = api_default(formal_sae.generate_dataset, "n_test")
    """test sentences"""
    seed: int = api_default(formal_sae.generate_dataset, "seed")
    """sampling seed"""
    prompt_format: str = api_default(formal_sae.generate_dataset, "prompt_format")
    """'bos' (a <bos> token) or 'paper' (the paper's task prompt before each sentence)"""
    max_length: int = api_default(formal_sae.load_grammar, "max_length")
    """reject longer sentences (tokens)"""
    overwrite: bool = field(default=False, help=OVERWRITE)

    def run(self) -> None:
        grammar = formal_sae.load_grammar(self.grammar, max_length=self.max_length)
        ds = formal_sae.generate_dataset(
            grammar,
            self.out,
            n_train=self.n_train,
            n_validation=self.n_validation,
            n_test=self.n_test,
            seed=self.seed,
            prompt_format=self.prompt_format,
            overwrite=self.overwrite,
        )
        meta = formal_sae.dataset_metadata(ds)
        print(f"wrote {self.out}: grammar {grammar.name}, seed {self.seed}, prompt {self.prompt_format}")
        for split, stats in meta.length_stats.items():
            print(
                f"  {split:<10} {meta.splits[split]:>9} sentences  length mean {stats['mean']:.2f}"
                f"  min {stats['min']}  median {stats['median']:g}  max {stats['max']}"
            )
        print(f"  features: {', '.join(s.name for s in meta.feature_specs)}")


# ---------------------------------------------------------------------------- models
@dataclass(kw_only=True)
class TrainModelCommand(Command):
    """train a HookedTransformer on a dataset directory"""

    name: ClassVar[str] = "train-model"
    data: Path
    """dataset directory from `formal-sae generate`"""
    out: Path
    """model directory (config.json, model.safetensors, tokenizer/, metrics.json)"""
    preset: str = field(
        default=api_default(formal_sae.train_model, "config"), help=f"model preset: {', '.join(formal_sae.PRESETS)}"
    )
    resume: bool = False
    """require an interrupted run to continue (a rerun with the same settings resumes anyway)"""
    overwrite: bool = field(default=False, help=OVERWRITE)
    wandb: str | None = field(default=None, metavar="PROJECT", help=WANDB)
    train: formal_sae.TrainConfig = field(default_factory=formal_sae.TrainConfig)
    """optimisation settings (formal_sae.TrainConfig); the model is initialised with the same seed"""

    def run(self) -> None:
        dataset = formal_sae.load_dataset_dir(self.data)
        config = formal_sae.ModelConfig.from_preset(self.preset, seed=self.train.seed)
        model = formal_sae.train_model(
            dataset,
            config,
            self.train,
            out_dir=self.out,
            resume=self.resume,
            overwrite=self.overwrite,
            wandb_project=self.wandb,
        )
        m = model.formal_sae_metrics
        print(
            f"wrote {self.out}: {m.grammar} / {m.preset}, {m.steps} steps, val loss {m.val_loss:.4f}, "
            f"validity {m.validity:.3f} ± {m.validity_std:.3f}"
        )


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
    wandb: str | None = field(default=None, metavar="PROJECT", help=WANDB)
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
    """cpu, cuda, cuda:N or mps"""
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
        grid = formal_sae.load_grid(self.grid, scale=scale, d_in=model.cfg.d_model)  # sized for the residual stream
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


# ---------------------------------------------------------------------------- analysis
@dataclass(kw_only=True)
class AnalyzeCommand(Command):
    """score every SAE latent against the ground-truth features"""

    name: ClassVar[str] = "analyze"
    model: Path
    """model directory"""
    sae: Path
    """SAE directory (SAELens format)"""
    data: Path
    """the model's dataset directory"""
    out: Path
    """report directory (report.json, report.md, figures)"""
    split: str = api_default(formal_sae.analyze, "split")
    """split the scores are measured on"""
    selection_split: str = api_default(formal_sae.analyze, "selection_split")
    """split used to choose best latents and thresholds"""
    features: list[str] | None = None
    """feature names to analyse (default: all)"""
    max_sentences: int = api_default(formal_sae.analyze, "max_sentences")
    """sentences of each split"""
    allow_other_model: bool = field(default=False, help=ALLOW_OTHER_MODEL)
    device: str = DEVICE
    """cpu, cuda, cuda:N or mps"""
    overwrite: bool = field(default=False, help=OVERWRITE)

    def run(self) -> None:
        formal_sae.check_output(self.out, "analysis", self.overwrite)  # before minutes of work
        model = formal_sae.load_model(self.model, device=self.device)
        sae = formal_sae.load_sae(self.sae, device=self.device)
        dataset = formal_sae.load_dataset_dir(self.data)
        report = formal_sae.analyze(
            model,
            sae,
            dataset,
            split=self.split,
            selection_split=self.selection_split,
            features=self.features,
            max_sentences=self.max_sentences,
            allow_other_model=self.allow_other_model,
        )
        report.save(self.out, overwrite=self.overwrite)
        s = report.summary
        coverage = "n/a (no binary features)" if s["coverage"] is None else format(s["coverage"], ".3f")
        print(
            f"wrote {self.out}: {len(report.targets)} targets over {s['n_tokens']} tokens; coverage {coverage}, MCC {s['mcc']:.3f}"
        )
        for name, t in report.targets.items():
            if t["n_latents_abs_rho_ge_0.9"] or (t["f1"] or 0) >= 0.9:
                f1 = t["f1"] if t["f1"] is None else round(t["f1"], 3)
                print(f"  {name}: latent {t['best_latent']} (Pearson {t['pearson']:.3f}), F1 {f1}")


@dataclass(kw_only=True)
class InterveneCommand(Command):
    """intervene on SAE latents and measure the effect on the model"""

    name: ClassVar[str] = "intervene"
    model: Path
    """model directory"""
    sae: Path
    """SAE directory"""
    data: Path
    """the model's dataset directory"""
    out: Path
    """report directory (report.json; with --report also report.md and a figure)"""
    latent: int | None = None
    """the latent to intervene on (or --report)"""
    report: bool = False
    """correlation-vs-causation report over every latent (instead of --latent)"""
    mode: str = field(default="ablate", help=f"one of: {', '.join(formal_sae.interventions.MODES)}")
    value: float | None = None
    """clamp value, scale factor or steering coefficient"""
    relative: bool = False
    """clamp: --value is a fraction of the latent's observed range"""
    n_samples: int = api_default(formal_sae.compare_generations, "n_samples")
    """generations per condition"""
    top_k: int = api_default(formal_sae.causal_report, "top_k")
    """--report: latents per feature"""
    max_sentences: int = api_default(formal_sae.causal_report, "max_sentences")
    """test sentences for the next-token effects"""
    seed: int = api_default(formal_sae.compare_generations, "seed")
    """generation seed"""
    allow_other_model: bool = field(default=False, help=ALLOW_OTHER_MODEL)
    device: str = DEVICE
    """cpu, cuda, cuda:N or mps"""
    overwrite: bool = field(default=False, help=OVERWRITE)

    def run(self) -> None:
        if (self.latent is None) == (not self.report):
            raise formal_sae.FormalSAEError("give --latent J (with --mode) for one intervention, or --report for every latent")
        formal_sae.check_output(self.out, "interventions", self.overwrite)  # before minutes of work
        model = formal_sae.load_model(self.model, device=self.device)
        sae = formal_sae.load_sae(self.sae, device=self.device)
        dataset = formal_sae.load_dataset_dir(self.data)
        other = {"allow_other_model": self.allow_other_model}
        if self.report:
            report = formal_sae.causal_report(model, sae, dataset, top_k=self.top_k, max_sentences=self.max_sentences, **other)
            report.save(self.out, overwrite=self.overwrite)
            s = report.summary
            print(
                f"wrote {self.out}: {s['n_live']} live latents; {s['n_correlated_not_causal']} correlated but not causal, "
                f"{s['n_causal_not_correlated']} causal but uncorrelated; rank agreement {s['rank_agreement']:.3f}"
            )
            return
        intervention = formal_sae.Intervention(self.mode.replace("-", "_"), [self.latent], self.value, relative=self.relative)
        intervention.validate(sae)
        effects = formal_sae.next_token_effects(model, sae, dataset, intervention, max_sentences=self.max_sentences, **other)
        gens = formal_sae.compare_generations(
            model, sae, intervention, dataset, n_samples=self.n_samples, seed=self.seed, **other
        )
        out = {
            "latent": self.latent,
            "mode": intervention.mode,
            "value": self.value,
            "relative": self.relative,
            "mean_kl": effects["mean_kl"],
            "mean_tv": effects["mean_tv"],
            "mean_class_tv": effects["mean_class_tv"],
            "validity_clean": gens["validity"]["clean"],
            "validity_intervened": gens["validity"]["intervened"],
            "next_token": effects,
            "generations": gens,
        }
        with formal_sae.output_dir(self.out, "interventions", overwrite=self.overwrite) as work:
            formal_sae.write_json(Path(work) / "report.json", out)
        print(
            f"wrote {self.out}: {intervention.mode} latent {self.latent}: mean KL {out['mean_kl']:.4g}, validity "
            f"{out['validity_clean']:.3f} -> {out['validity_intervened']:.3f} (p = {gens['validity']['p_value']:.3g})"
        )


# ---------------------------------------------------------------------------- the study
@dataclass(kw_only=True)
class ReproduceCommand(Command):
    """run the whole study and write a report with the paper's claims"""

    name: ClassVar[str] = "reproduce"
    out: Path
    """study directory (report.md, claims.json, one folder per language)"""
    grammar: str = field(default=api_default(study.reproduce, "grammars"), help=f"all, or one of: {', '.join(study.GRAMMARS)}")
    scale: str = field(default=api_default(study.reproduce, "scale"), help=f"one of: {', '.join(study.SCALES)}")
    seed: int = api_default(study.reproduce, "seed")
    """seed of the whole study"""
    device: str = api_default(study.reproduce, "device")
    """cpu, cuda, cuda:N or mps"""
    overwrite: bool = field(default=False, help=OVERWRITE)
    backend: str = field(default=api_default(study.reproduce, "backend"), choices=BACKENDS, help=BACKEND)
    ray: formal_sae.RayBackend | None = prefixed(formal_sae.RayBackend, "ray")
    """the Ray cluster the sweeps run on (formal_sae.RayBackend), with --backend ray"""

    def run(self) -> None:
        backend = sweep_backend(self.backend, self.ray)
        claims = study.reproduce(
            self.out, self.grammar, self.scale, seed=self.seed, device=self.device, overwrite=self.overwrite, backend=backend
        )
        print(f"wrote {self.out}/report.md and {self.out}/claims.json")
        for name, claim in claims.items():
            per_language = ", ".join(f"{g} {v.verdict}" for g, v in claim.languages.items())
            print(f"  {name}: {claim.overall.verdict} ({per_language})")


# ---------------------------------------------------------------------------- sharing
@dataclass(kw_only=True)
class PushCommand(Command):
    """upload a model or SAE directory, with a generated model card, to the Hugging Face Hub"""

    name: ClassVar[str] = "push"
    directory: Path = field(positional=True, metavar="MODEL_OR_SAE_DIR")
    """a model directory (`formal-sae train-model --out`) or an SAE directory (`formal-sae train-sae --out`)"""
    repo_id: str = field(positional=True, metavar="REPO_ID")
    """the Hub model repo, user/name or org/name (created if missing)"""
    private: bool = False
    """create the repo private"""
    revision: str | None = None
    """branch to push to, created if missing (default: main)"""
    sae_id: str | None = None
    """an SAE: its folder in the repo (default: its hook name, SAELens's convention)"""
    model_repo_id: str | None = None
    """an SAE: the Hub repo of the model it was trained on (the card's base_model)"""

    @classmethod
    def epilog(cls) -> str:
        return (
            "Log in first (`hf auth login`) or set HF_TOKEN. Load back with formal_sae.load_model(REPO_ID), "
            "formal_sae.load_sae('REPO_ID/SAE_ID') or sae_lens.SAE.from_pretrained(REPO_ID, SAE_ID); "
            "--model and --sae of the other commands take these too."
        )

    def run(self) -> None:
        options = {"private": self.private, "revision": self.revision}
        if (self.directory / "cfg.json").is_file():  # SAELens's config: an SAE
            url = formal_sae.push_sae_to_hub(
                self.directory, self.repo_id, sae_id=self.sae_id, model_repo_id=self.model_repo_id, **options
            )
            where = f"{self.repo_id}/{self.sae_id or '<its hook name>'}"
            print(f"pushed SAE {self.directory} to {url}; load it with formal_sae.load_sae({where!r})")
            return
        if self.sae_id is not None or self.model_repo_id is not None:
            raise formal_sae.FormalSAEError(
                f"{self.directory} is not an SAE directory: --sae-id and --model-repo-id are for SAEs"
            )
        url = formal_sae.push_model_to_hub(self.directory, self.repo_id, **options)
        print(f"pushed model {self.directory} to {url}; load it with formal_sae.load_model({self.repo_id!r})")


COMMANDS: tuple[type[Command], ...] = (
    GrammarsCommand,
    GenerateCommand,
    TrainModelCommand,
    TrainSAECommand,
    AnalyzeCommand,
    InterveneCommand,
    SweepCommand,
    CompareSAEsCommand,
    ReproduceCommand,
    PushCommand,
)

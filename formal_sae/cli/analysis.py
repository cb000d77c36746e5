"""The commands that read an SAE against its model: ``analyze`` and ``intervene``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from simple_parsing import field

import formal_sae
from formal_sae.cli.base import ALLOW_OTHER_MODEL, DEVICE, OVERWRITE, Command, api_default


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

"""The commands on data and models: ``grammars``, ``generate`` and ``train-model``."""

# simple_parsing.field is dataclasses.field with the flag's options (ruff knows only the latter):
# ruff: noqa: RUF009

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from simple_parsing import field

import formal_sae
from formal_sae.cli.base import OVERWRITE, WANDB, Command, api_default


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

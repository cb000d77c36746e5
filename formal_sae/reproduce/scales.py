"""How big each stage of the study is: scales as data, with overrides."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from formal_sae import CausalConfig, FormalSAEError, SAETrainConfig, SweepGrid, paper_grid

GRAMMARS = ("dyck2", "expr", "english")


def quick_grid(d_in: int) -> SweepGrid:
    """A small one-factor-at-a-time design around a base cell (paper TopK, k=16, expansion 2): each
    of the paper's inductive biases — sparsity family, expansion factor, sparsity level,
    normalisation, pre-encoder bias — is changed alone, so C2 can measure its main effect. The L1
    cells use the paper's sum-reduced loss at its weakest grid alpha (1e-3, which collapses at this
    scale) and a hundredfold weaker one."""
    base = {"architecture": "paper", "training_tokens": 60_000, "batch_size_tokens": 1024, "lr": 3e-3}
    cells = [
        {"k": 16, "expansion_factor": 2},
        {"k": 4, "expansion_factor": 2},
        {"k": 16, "expansion_factor": 1},
        {"k": 16, "expansion_factor": 4},
        {"l1_coefficient": 1e-5, "expansion_factor": 2},
        {"l1_coefficient": 1e-3, "expansion_factor": 2},
        {"k": 16, "expansion_factor": 2, "normalize_input": True, "normalize_recon": True},
        {"k": 16, "expansion_factor": 2, "pre_bias": True},
    ]
    return SweepGrid.from_settings("quick", base, cells)


@dataclass(frozen=True)
class Scale:
    """How big each stage of [`reproduce`][formal_sae.reproduce.reproduce] is.

    Attributes:
        name: The scale's name (``--scale``).
        n_train, n_eval: Sentences sampled for training, and for each of validation and test.
        preset, model_steps, model_lr: The language model (steps per grammar).
        grid: The SAE sweep's grid, given the model's width.
        sweep_eval: Evaluation settings of each sweep cell.
        analysis_sentences: Test sentences for the latent-feature analysis and the probes.
        analysis_seeds: Seeds of the analysed SAE (C1 averages them; C3 uses the first).
        control_saes: Untrained SAEs of the analysed shape (the C1 floor).
        intervention_sentences, n_null: Sentences and matched random latents of the C3 interventions.
        causal_base, causal, causal_seeds: The plain/causal SAE pairs of C4 and their seeds.
        validity_samples, validity_repeats: Validity of the models and the C4 SAEs.
        prompt_format: The sequence format of the data: ``"bos"``, or ``"paper"`` (the authors'
            7-token decorator before every sentence and as the generation prompt).
        notes: How this scale differs from the paper (shown in the report).
        model_train: [`TrainConfig`][formal_sae.TrainConfig] settings over the model stage's own
            (evaluation and checkpoint every quarter of ``model_steps``, warm-up min(200, steps / 10)),
            e.g. the plateau rule (``plateau_patience``) and its ``eval_every``; empty: none.
        workers: Sweep cells trained at once in forked processes on the CPU (``sweep(workers=)``;
            1 on other devices and on Ray). Not part of the run's configuration: a run resumes
            with another count (the SAEs then differ in the last bits at most).
        paper_sweeps: After the main languages, sweep the authors' whole grid (``PAPER_SWEEPS`` of
            ``formal_sae.saes.sweep.paper``, at the paper's SAE budget: 828 SAEs) on every model it
            names, training the models of the languages' variants (``formal_sae.reproduce.paper_sweeps``);
            only a run of every language in `GRAMMARS` does. A variant's model trains for its main
            language's ``model_steps`` unless it has an entry of its own (`model_steps_of`).
    """

    name: str
    n_train: int
    n_eval: int
    preset: str
    model_steps: dict[str, int]
    model_lr: float
    grid: Callable[[int], SweepGrid]
    sweep_eval: dict[str, Any]
    analysis_sentences: int
    analysis_seeds: int
    control_saes: int
    intervention_sentences: int
    n_null: int
    causal_base: SAETrainConfig
    causal: CausalConfig
    causal_seeds: int
    validity_samples: int = 128
    validity_repeats: int = 5
    prompt_format: str = "bos"
    notes: tuple[str, ...] = field(default_factory=tuple)
    model_train: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    paper_sweeps: bool = False

    def with_overrides(self, **overrides: Any) -> Scale:
        """This scale with some fields replaced (unknown names are an error that lists the valid ones)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise FormalSAEError(f"unknown scale setting(s) {unknown}; choose among {', '.join(sorted(names))}")
        return dataclasses.replace(self, **overrides)


#: The learning rate of the `standard` grid's SAEs (`standard_grid`).
STANDARD_SAE_LR = 1e-3


def standard_grid(d_in: int) -> SweepGrid:
    """The `standard` scale's grid: the paper's TopK and L1 panels without normalisation
    (expansion {1, 2, 4, 8} x k {8, ..., 128} <= d_sae, and x alpha {1e-3, ..., 100}; 44 cells at
    d_in 128) plus the normalisation and pre-bias variants (input, input+recon,
    prebias+input+dec) at expansion 2 only (11 cells each): 77 cells, each 512k tokens in batches
    of 1,024 (the budget of [`paper_grid`][formal_sae.paper_grid]'s ``small`` scale) at lr
    `STANDARD_SAE_LR`. At the ``small`` scale's lr 1e-4 the standard Expr model's k <= 16 TopK SAEs
    reach an explained variance of only 0.42 in that budget (0.9997 at 1e-3); four times the budget
    revives none of Expr's dead TopK latents and 5-8 points of Dyck-2's (docs/reproduction.md)."""
    panels = paper_grid("small", ["none"], d_in=d_in)
    variants = paper_grid("small", ["input", "input+recon", "prebias+input+dec"], d_in=d_in, expansion_factors=(2,))
    cells = [
        dataclasses.replace(c, config=dataclasses.replace(c.config, lr=STANDARD_SAE_LR)) for c in panels.cells + variants.cells
    ]
    return SweepGrid("standard", cells)


_TOPK16 = SAETrainConfig(architecture="topk", k=16, expansion_factor=2, batch_size_tokens=1024, lr=3e-3)

SCALES: dict[str, Scale] = {
    "quick": Scale(
        name="quick",
        n_train=20_000,
        n_eval=1_000,
        preset="small",
        model_steps={"dyck2": 900, "expr": 500, "english": 700},
        model_lr=3e-3,
        grid=quick_grid,
        sweep_eval={"n_samples": 64, "repeats": 2, "max_sentences": 300},
        analysis_sentences=600,
        analysis_seeds=1,
        control_saes=3,
        intervention_sentences=150,
        n_null=10,
        causal_base=_TOPK16,
        causal=CausalConfig(coefficient=100.0, pretrain_steps=60, steps=60, sentences_per_step=32, finetune_lr=1e-3),
        causal_seeds=2,
        validity_samples=64,
        validity_repeats=2,
        notes=(
            "`small` model preset (d_model 64) trained for a few hundred steps instead of the paper's 70k",
            "an eight-cell one-factor-at-a-time SAE grid instead of the paper's 828 SAEs",
            "one seed of the analysed SAE and two seeds of each plain/causal pair (the larger scales use three)",
        ),
    ),
    "small": Scale(
        name="small",
        n_train=100_000,
        n_eval=2_000,
        preset="small",
        model_steps={"dyck2": 4000, "expr": 2000, "english": 3000},
        model_lr=3e-3,
        grid=lambda d_in: paper_grid("small", d_in=d_in),
        sweep_eval={"n_samples": 64, "repeats": 2, "max_sentences": 500},
        analysis_sentences=2000,
        analysis_seeds=3,
        control_saes=3,
        intervention_sentences=300,
        n_null=20,
        causal_base=_TOPK16,
        causal=CausalConfig(coefficient=100.0, pretrain_steps=300, steps=400, sentences_per_step=32, finetune_lr=1e-3),
        causal_seeds=3,
        notes=(
            "`small` model preset trained for a few thousand steps",
            "the paper's full SAE grid at a reduced training budget and a higher learning rate",
        ),
    ),
    "standard": Scale(
        name="standard",
        n_train=100_000,
        n_eval=2_000,
        preset="paper",
        model_steps={"dyck2": 5000, "expr": 3000, "english": 4000},  # maxima: the plateau rule stops earlier
        model_lr=3e-3,
        model_train={"eval_every": 250, "checkpoint_every": 500, "plateau_patience": 4, "plateau_min_delta": 0.005},
        grid=standard_grid,
        sweep_eval={"n_samples": 64, "repeats": 2, "max_sentences": 500},
        analysis_sentences=2000,
        analysis_seeds=3,
        control_saes=3,
        intervention_sentences=300,
        n_null=20,
        causal_base=_TOPK16,
        causal=CausalConfig(coefficient=100.0, pretrain_steps=300, steps=400, sentences_per_step=32, finetune_lr=1e-3),
        causal_seeds=3,
        workers=2,
        notes=(
            "the paper's model (`paper` preset: 2 layers, d_model 128) trained until its validation loss plateaus "
            "(no 0.5% improvement over 4 evaluations 250 steps apart) or at most 3,000-5,000 steps, instead of 70k steps",
            "the paper's TopK and L1 panels (expansion 1-8) and its normalisation and pre-bias variants at expansion 2: "
            "77 SAEs per language at a tenth of the paper's SAE budget (500 steps of 1,024 tokens, at lr 1e-3 instead of 1e-5)",
            "sized for an hour on 2 CPU cores: estimated at 48 minutes for all three languages (Dyck-2 19, Expr 13, "
            "English 15; formal_sae.reproduce.estimate, from the benchmarked ~20,000 LM tokens/s of the paper preset)",
        ),
    ),
    "paper": Scale(
        name="paper",
        n_train=1_000_000,
        n_eval=5_000,
        preset="paper",
        model_steps={"dyck2": 70_000, "expr": 70_000, "english": 70_000},
        model_lr=1e-3,
        grid=lambda d_in: paper_grid("paper", d_in=d_in),
        sweep_eval={"n_samples": 128, "repeats": 5, "max_sentences": 2000},
        analysis_sentences=5000,
        analysis_seeds=3,
        control_saes=3,
        intervention_sentences=1000,
        n_null=20,
        causal_base=dataclasses.replace(_TOPK16, lr=1e-5),
        causal=CausalConfig(
            coefficient=0.5, pretrain_steps=5000, steps=20_000, sentences_per_step=32, finetune_lr=1e-7, schedule="linear"
        ),
        causal_seeds=3,
        prompt_format="paper",
        paper_sweeps=True,
        notes=(
            "the paper's model and training budgets (run on a GPU: --device cuda)",
            "the paper's sequence format: the 7-token decorator before every sentence and as the prompt",
            "1M training sentences sampled once instead of fresh batches each step",
            "the authors' 828 SAEs (PAPER_SWEEPS) are trained once: the groups whose cells are the main sweep's "
            "(same model, data and settings) take its SAEs",
        ),
    ),
}


def get_scale(name: str) -> Scale:
    if name not in SCALES:
        raise FormalSAEError(f"unknown scale {name!r}; choose one of {', '.join(SCALES)}")
    return SCALES[name]


def main_language(grammar: str) -> str:
    """The language of `GRAMMARS` that ``grammar`` is a variant of (``english-pp`` -> ``english``,
    ``dyck2-shallow`` -> ``dyck2``), by the registry's naming; a main language is its own."""
    for main in GRAMMARS:
        if grammar == main or grammar.startswith(f"{main}-"):
            return main
    raise FormalSAEError(f"{grammar!r} is no variant of the paper's languages {', '.join(GRAMMARS)}")


def model_steps_of(scale: Scale, grammar: str) -> int:
    """Training steps of ``grammar``'s model: its own entry in ``scale.model_steps``, else its main
    language's (the authors trained every variant as its main language)."""
    steps = scale.model_steps.get(grammar)
    return steps if steps is not None else scale.model_steps[main_language(grammar)]

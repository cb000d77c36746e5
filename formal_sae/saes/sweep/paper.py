"""The paper's SAE grid ([The paper: the hyperparameter grid][paper-grid]) as data, and the built-in grids made of it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from formal_sae.activations import DEFAULT_HOOK
from formal_sae.errors import SAEError
from formal_sae.saes.config import PAPER, SAETrainConfig
from formal_sae.saes.paper import SPARSEMAX_ENCODERS
from formal_sae.saes.sweep.grid import SweepCell, SweepGrid, cell_id

#: The paper's grid ([The paper: the hyperparameter grid][paper-grid]): dictionary sizes d_sae = d_in x {1, 2, 4, 8}.
PAPER_EXPANSION_FACTORS = (1, 2, 4, 8)
#: The paper's L1 alphas: the coefficient of the L1 norm *summed* over a batch's tokens and latents
#: (architecture ``paper``; SAELens's ``standard`` L1 would need ~alpha * tokens_per_batch * d_in).
PAPER_L1_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
PAPER_TOPK_KS = (8, 16, 32, 64, 128)
#: The paper's pipeline variants ([The paper: the hyperparameter grid][paper-grid]). The pre-encoder bias only ever appears together
#: with input and decoder normalisation there, so the effects are confounded; so they are here.
PAPER_VARIANTS: dict[str, dict[str, bool]] = {
    "none": {},
    "input": {"normalize_input": True},
    "input+recon": {"normalize_input": True, "normalize_recon": True},
    "prebias+input+dec": {"pre_bias": True, "normalize_input": True, "normalize_decoder": True},
    "recon": {"normalize_recon": True},  # only with the sparsemax encoders (sweep 1iii)
}
#: The variants of [`paper_grid`][formal_sae.paper_grid] by default: those the paper sweeps with L1 and TopK.
DEFAULT_PAPER_VARIANTS = ("none", "input", "input+recon", "prebias+input+dec")
#: Training budgets. ``paper``: the authors' 5000 Adam steps at lr 1e-5 on batches of ~1000
#: tokens (128 sentences; ~600-1500 tokens depending on the language), here 1024 tokens.
#: ``small``: a tenth of the steps (500) on the same 1024-token batches; a whole paper grid (176
#: SAEs at d_in = 128) trains and evaluates in well under an hour on 2 CPU cores (measured in
#: docs/benchmarks.md). The batch size is kept because the paper's L1 term is *summed* over the
#: batch: alpha means the same only at the same batch size. The learning rate is raised tenfold,
#: to 1e-4, so that steps x lr (how far Adam, whose steps are ~lr per weight, can move the
#: weights) stays the paper's 0.05. Checked on expr with the paper-preset model, 7 cells of the
#: grid: 500 steps at 1e-4 land within 0.05 explained variance and 0.03 validity of 5000 steps at
#: 1e-5 in every cell, while 1e-3 overshoots (prebias+input+dec, TopK k=16, x2: explained variance
#: 0.98 and validity 0.97 instead of the paper scale's 0.34 and 0.77).
PAPER_SCALES: dict[str, dict[str, Any]] = {
    "paper": {"training_tokens": 5000 * 1024, "batch_size_tokens": 1024, "lr": 1e-5},
    "small": {"training_tokens": 500 * 1024, "batch_size_tokens": 1024, "lr": 1e-4},
}
PAPER_D_IN = 128  # the paper model's d_model
#: The sparsity kinds of the paper's grid, with the ``SAETrainConfig`` field each sets.
PAPER_SPARSITY = {"l1": "l1_coefficient", "topk": "k", "sparsemax": "sparsemax"}

#: The built-in grids ([`load_grid`][formal_sae.load_grid]), each with its default scale.
BUILT_IN_GRIDS = {"paper": "paper", "paper-small": "small"}


def paper_grid(
    scale: str = "small",
    variants: Sequence[str] | None = None,
    *,
    d_in: int = PAPER_D_IN,
    sparsity: Sequence[str] = ("l1", "topk"),
    expansion_factors: Sequence[int] = PAPER_EXPANSION_FACTORS,
    hook_name: str = DEFAULT_HOOK,
    splice: str = "scale_correct",
    device: str = "cpu",
    seed: int = 0,
) -> SweepGrid:
    """The paper's SAE grid ([The paper: the hyperparameter grid][paper-grid]) for a hook of width ``d_in``.

    Cells: expansion factor {1, 2, 4, 8} x (L1 alpha {1e-3, ..., 100} | TopK k {8, ..., 128}) x
    variant, all with architecture ``paper`` (the paper's loss: MSE averaged over tokens and
    dimensions + alpha x the L1 norm summed over the batch). TopK cells with k > d_sae =
    d_in x expansion factor are left out. With the 4 variants that is 4 x (24 + 20) = 176 cells at
    the paper's d_in = 128 (k = 128 at expansion 1 is kept: no sparsity, as in the paper), 172 at
    d_in = 64 (the ``small`` model preset) and 164 at d_in = 32.

    Args:
        scale: ``"paper"`` (5000 steps, lr 1e-5) or ``"small"`` (500 steps, lr 1e-4); see
            `PAPER_SCALES`.
        variants: Names from `PAPER_VARIANTS` (default: `DEFAULT_PAPER_VARIANTS`).
        d_in: Width of the hooked activation (``formal_sae.activations.hook_width``).
        sparsity: ``"l1"``, ``"topk"`` and/or ``"sparsemax"`` (the three prototype encoders).
        expansion_factors: Dictionary sizes as multiples of ``d_in``.
        hook_name: Where the SAEs read (the paper: ``blocks.0.hook_resid_post``).
        splice: How SAEs trained on normalised inputs are spliced in (``SAETrainConfig.splice``).
        device: Training device of every cell.
        seed: Seed of every cell.

    Returns:
        A grid named ``paper`` (scale ``paper``) or ``paper-small``, with ids such as
        ``topk-k16-x4-none`` and ``l1-a0.01-x2-prebias+input+dec``.
    """
    if scale not in PAPER_SCALES:
        raise SAEError(f"unknown scale {scale!r}; choose one of {', '.join(PAPER_SCALES)}")
    variants = list(DEFAULT_PAPER_VARIANTS) if variants is None else list(variants)
    bad = [v for v in variants if v not in PAPER_VARIANTS]
    if bad or not variants:
        raise SAEError(f"unknown paper variant(s) {bad}; choose from {', '.join(PAPER_VARIANTS)}")
    bad = [s for s in sparsity if s not in PAPER_SPARSITY]
    if bad or not sparsity:
        raise SAEError(f"unknown sparsity kind(s) {bad}; choose from {', '.join(PAPER_SPARSITY)}")
    if d_in < 1:
        raise SAEError(f"d_in must be >= 1, got {d_in}")
    base = SAETrainConfig(architecture=PAPER, hook_name=hook_name, splice=splice, device=device, seed=seed, **PAPER_SCALES[scale])
    cells = []
    for variant in variants:
        for kind, field in PAPER_SPARSITY.items():
            if kind not in sparsity:
                continue
            for exp in expansion_factors:
                values = {
                    "l1": PAPER_L1_ALPHAS,
                    "topk": [k for k in PAPER_TOPK_KS if k <= d_in * exp],
                    "sparsemax": SPARSEMAX_ENCODERS,
                }[kind]
                for value in values:
                    settings = {field: value, "expansion_factor": exp}
                    config = dataclasses.replace(base, **settings, **PAPER_VARIANTS[variant])
                    config.validate()
                    cells.append(SweepCell(f"{kind}-{cell_id(settings)}-{variant}", config))
    return SweepGrid("paper" if scale == "paper" else f"paper-{scale}", cells)


def built_in_grid(name: str, scale: str | None = None, d_in: int | None = None) -> SweepGrid:
    """The built-in grid ``name`` (`BUILT_IN_GRIDS`) at ``scale`` (default: the name's own),
    for a hook of width ``d_in`` (default `PAPER_D_IN`)."""
    if name == "paper-small" and scale not in (None, "small"):
        raise SAEError(f"grid 'paper-small' is the paper grid at scale 'small'; for scale {scale!r} use grid 'paper'")
    return paper_grid(scale or BUILT_IN_GRIDS[name], d_in=d_in or PAPER_D_IN)


@dataclass(frozen=True)
class PaperSweep:
    """A group of the authors' sweeps ([The paper: the hyperparameter grid][paper-grid]): the model they read, the data their SAEs
    trained on, and which cells of [`paper_grid`][formal_sae.paper_grid] they hold."""

    sweeps: str
    """the paper's sweep numbers, e.g. ``"1iv"``"""
    model: str
    """the authors' run id of the language model"""
    grammar: str
    """the registry grammar the model is trained on"""
    sparsity: tuple[str, ...]
    """sparsity kinds (`PAPER_SPARSITY`)"""
    variants: tuple[str, ...]
    """pipeline variants (`PAPER_VARIANTS`)"""
    sae_grammar: str | None = None
    """the grammar of the SAEs' training data when it is not the model's (the distribution-shift sweep)"""

    def grid(self, scale: str = "paper", d_in: int = PAPER_D_IN) -> SweepGrid:
        """Its cells, at ``scale``, for a hook of width ``d_in``."""
        return paper_grid(scale, self.variants, d_in=d_in, sparsity=self.sparsity)


_BOTH, _NORMS, _PREBIAS = ("l1", "topk"), ("input", "input+recon"), ("prebias+input+dec",)
#: Every sweep of the authors' study, in the authors' order ([The paper: the hyperparameter grid][paper-grid]): 828 SAEs at d_in = 128. The
#: English SAEs here train on the model's own grammar (the authors' rebuilt one is
#: ``english-oct2024``: see the deviations page).
PAPER_SWEEPS: tuple[PaperSweep, ...] = (
    PaperSweep("1i-1ii", "12owob2t", "expr", _BOTH, ("none",)),
    PaperSweep("1iii", "12owob2t", "expr", ("sparsemax",), ("input", "recon", "input+recon")),
    PaperSweep("1iv-1v", "12owob2t", "expr", _BOTH, _NORMS),
    PaperSweep("1vi-1vii", "12owob2t", "expr", _BOTH, _PREBIAS),
    PaperSweep("2i-2ii", "3v4gwdfk", "english", _BOTH, ("none",)),
    PaperSweep("2iii-2iv", "3v4gwdfk", "english", _BOTH, _PREBIAS),
    PaperSweep("2v-2vi", "3v4gwdfk", "english", _BOTH, _NORMS),
    PaperSweep("3i-3ii", "vx8j11gp", "english-transitive", _BOTH, ("none",)),
    PaperSweep("4i-4ii", "9rts35mx", "english-relative", _BOTH, ("none",)),
    PaperSweep("5i-5ii", "bcb19qnd", "english-pp", _BOTH, ("none",)),
    PaperSweep("6i-6ii", "cpyib3ss", "dyck2", _BOTH, ("none",)),
    PaperSweep("6iii-6iv", "cpyib3ss", "dyck2", _BOTH, _PREBIAS),
    PaperSweep("6v-6vi", "cpyib3ss", "dyck2", _BOTH, ("none",), sae_grammar="dyck2-shallow"),
    PaperSweep("6vii-6viii", "cpyib3ss", "dyck2", _BOTH, _NORMS),
    PaperSweep("7i-7ii", "87bnn1o6", "dyck2-shallow", _BOTH, ("none",)),
    PaperSweep("7iii-7iv", "87bnn1o6", "dyck2-shallow", _BOTH, _PREBIAS),
)

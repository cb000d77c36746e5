"""SAEs: SAELens training on formal-sae models, the paper's variants, evaluation and sweeps.

Importing this package registers the paper's architecture (``formal_paper``) with SAELens.
"""

from formal_sae.saes import paper
from formal_sae.saes.evaluation import check_sae_fits, check_sae_model, evaluate_sae, with_splice
from formal_sae.saes.sweep import SweepGrid, grid_from_dict, load_grid, paper_grid, resolve_grid
from formal_sae.saes.training import PAPER, SAETrainConfig, architectures, build_training_sae, load_sae, train_sae

__all__ = [
    "PAPER",
    "SAETrainConfig",
    "SweepGrid",
    "architectures",
    "build_training_sae",
    "check_sae_fits",
    "check_sae_model",
    "evaluate_sae",
    "grid_from_dict",
    "load_grid",
    "load_sae",
    "paper",
    "paper_grid",
    "resolve_grid",
    "train_sae",
    "with_splice",
]

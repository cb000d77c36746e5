"""SAEs: SAELens training on formal-sae models, the paper's variants, evaluation and sweeps.

Importing this package registers the paper's architecture (``formal_paper``) with SAELens.
"""

from formal_sae.saes import paper
from formal_sae.saes.config import PAPER, SAETrainConfig, architectures, build_training_sae
from formal_sae.saes.evaluation import check_sae_fits, check_sae_model, evaluate_sae, variance_dimension, with_splice
from formal_sae.saes.storage import load_sae
from formal_sae.saes.sweep import SweepEvaluation, SweepGrid, load_grid, paper_grid
from formal_sae.saes.training import train_sae, train_seconds

__all__ = [
    "PAPER",
    "SAETrainConfig",
    "SweepEvaluation",
    "SweepGrid",
    "architectures",
    "build_training_sae",
    "check_sae_fits",
    "check_sae_model",
    "evaluate_sae",
    "load_grid",
    "load_sae",
    "paper",
    "paper_grid",
    "train_sae",
    "train_seconds",
    "variance_dimension",
    "with_splice",
]

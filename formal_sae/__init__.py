"""formal-sae: sparse autoencoders on formal languages, with ground truth.

The public API, following the data: grammars -> datasets -> models -> SAEs -> analysis and
interventions.
"""

from formal_sae.analysis import AnalysisReport, analyze
from formal_sae.analysis.causal_report import CausalReport, causal_report
from formal_sae.analysis.probes import ProbeReport, probe_direction, probe_features
from formal_sae.comparison import SAEComparison, compare_saes
from formal_sae.data import (
    PAPER_PROMPT,
    DatasetMetadata,
    build_dataset,
    build_tokenizer,
    dataset_metadata,
    generate_dataset,
    grammar_of,
    load_dataset_dir,
    load_tokenizer,
    prompt_ids,
    push_dataset_to_hub,
    save_dataset,
)
from formal_sae.errors import DatasetError, FormalSAEError, GrammarError, ModelError, OutputError, SAEError
from formal_sae.generation import ValidityResult, evaluate_validity, sample_sequences
from formal_sae.grammars import (
    IGNORE_VALUE,
    PAPER_MAX_LENGTH,
    FeatureSpec,
    Grammar,
    dyck_grammar,
    english_grammar,
    expr_grammar,
    feature_role,
    list_grammars,
    load_grammar,
)
from formal_sae.interventions import (
    FeatureInterventions,
    Intervention,
    compare_generations,
    feature_interventions,
    next_token_effects,
    single_latent_effects,
)
from formal_sae.models import PRESETS, ModelConfig, build_model, load_model, model_fingerprint, model_grammar, save_model
from formal_sae.outputs import MARKER_FILE, check_output, in_progress_path, output_dir
from formal_sae.saes import SAETrainConfig, SweepGrid, evaluate_sae, grid_from_dict, load_sae, paper_grid, train_sae
from formal_sae.saes import architectures as sae_architectures
from formal_sae.saes.causal import CausalConfig, held_out_causal_loss, train_causal_sae
from formal_sae.saes.sweep import sweep
from formal_sae.training import TrainConfig, train_model

__version__ = "0.1.0"

__all__ = [
    "IGNORE_VALUE",
    "MARKER_FILE",
    "PAPER_MAX_LENGTH",
    "PAPER_PROMPT",
    "PRESETS",
    "AnalysisReport",
    "CausalConfig",
    "CausalReport",
    "DatasetError",
    "DatasetMetadata",
    "FeatureInterventions",
    "FeatureSpec",
    "FormalSAEError",
    "Grammar",
    "GrammarError",
    "Intervention",
    "ModelConfig",
    "ModelError",
    "OutputError",
    "ProbeReport",
    "SAEComparison",
    "SAEError",
    "SAETrainConfig",
    "SweepGrid",
    "TrainConfig",
    "ValidityResult",
    "__version__",
    "analyze",
    "build_dataset",
    "build_model",
    "build_tokenizer",
    "causal_report",
    "check_output",
    "compare_generations",
    "compare_saes",
    "dataset_metadata",
    "dyck_grammar",
    "english_grammar",
    "evaluate_sae",
    "evaluate_validity",
    "expr_grammar",
    "feature_interventions",
    "feature_role",
    "generate_dataset",
    "grammar_of",
    "grid_from_dict",
    "held_out_causal_loss",
    "in_progress_path",
    "list_grammars",
    "load_dataset_dir",
    "load_grammar",
    "load_model",
    "load_sae",
    "load_tokenizer",
    "model_fingerprint",
    "model_grammar",
    "next_token_effects",
    "output_dir",
    "paper_grid",
    "probe_direction",
    "probe_features",
    "prompt_ids",
    "push_dataset_to_hub",
    "sae_architectures",
    "sample_sequences",
    "save_dataset",
    "save_model",
    "single_latent_effects",
    "sweep",
    "train_causal_sae",
    "train_model",
    "train_sae",
]

"""formal-sae: sparse autoencoders on formal languages, with ground truth.

The public API, following the data: grammars -> datasets -> models -> SAEs -> analysis and
interventions. Below the workflow functions, the pieces the reproduction (``formal_sae.reproduce``)
builds on: it imports nothing but these names.
"""

from formal_sae.analysis import AnalysisReport, analyze, targets_of
from formal_sae.analysis.causal_report import CausalReport, causal_report
from formal_sae.analysis.metrics import bootstrap_abs_pearson
from formal_sae.analysis.probes import ProbeReport, default_probe_hooks, probe_direction, probe_features
from formal_sae.analysis.report import CORRELATIONS_PNG
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
    LEXICAL,
    PAPER_MAX_LENGTH,
    STRUCTURAL,
    FeatureSpec,
    Grammar,
    dyck_grammar,
    english_grammar,
    expr_grammar,
    feature_role,
    list_grammars,
    load_grammar,
)
from formal_sae.hub import push_model_to_hub, push_sae_to_hub
from formal_sae.hub_cards import model_card, sae_card
from formal_sae.interventions import (
    FeatureInterventions,
    Intervention,
    compare_generations,
    feature_interventions,
    next_token_effects,
    single_latent_effects,
)
from formal_sae.interventions.predictability import effect_predictability, predictability_summary
from formal_sae.io import atomic_write_text, read_json, to_jsonable, write_json
from formal_sae.models import (
    PRESETS,
    FormalSAEModel,
    ModelConfig,
    TrainingMetrics,
    build_model,
    load_model,
    model_fingerprint,
    model_grammar,
    save_model,
)
from formal_sae.outputs import MARKER_FILE, check_output, in_progress_path, output_dir
from formal_sae.plotting import MISSING, number
from formal_sae.saes import (
    SAETrainConfig,
    SweepGrid,
    build_training_sae,
    evaluate_sae,
    load_grid,
    load_sae,
    paper_grid,
    train_sae,
)
from formal_sae.saes import architectures as sae_architectures
from formal_sae.saes.causal import CausalConfig, held_out_causal_loss, train_causal_sae
from formal_sae.saes.causal_metrics import held_out_pairs, interpolation_metrics
from formal_sae.saes.evaluation import SAEMetrics, variance_dimension
from formal_sae.saes.storage import to_inference
from formal_sae.saes.sweep import CELLS_DIR, RESULTS_JSON, RayBackend, SweepEvaluation, sweep
from formal_sae.saes.training import sae_hook_width, train_seconds
from formal_sae.training import METRICS_FILE, train_model
from formal_sae.training_config import TrainConfig
from formal_sae.version import __version__

__all__ = [
    "CELLS_DIR",
    "CORRELATIONS_PNG",
    "IGNORE_VALUE",
    "LEXICAL",
    "MARKER_FILE",
    "METRICS_FILE",
    "MISSING",
    "PAPER_MAX_LENGTH",
    "PAPER_PROMPT",
    "PRESETS",
    "RESULTS_JSON",
    "STRUCTURAL",
    "AnalysisReport",
    "CausalConfig",
    "CausalReport",
    "DatasetError",
    "DatasetMetadata",
    "FeatureInterventions",
    "FeatureSpec",
    "FormalSAEError",
    "FormalSAEModel",
    "Grammar",
    "GrammarError",
    "Intervention",
    "ModelConfig",
    "ModelError",
    "OutputError",
    "ProbeReport",
    "RayBackend",
    "SAEComparison",
    "SAEError",
    "SAEMetrics",
    "SAETrainConfig",
    "SweepEvaluation",
    "SweepGrid",
    "TrainConfig",
    "TrainingMetrics",
    "ValidityResult",
    "__version__",
    "analyze",
    "atomic_write_text",
    "bootstrap_abs_pearson",
    "build_dataset",
    "build_model",
    "build_tokenizer",
    "build_training_sae",
    "causal_report",
    "check_output",
    "compare_generations",
    "compare_saes",
    "dataset_metadata",
    "default_probe_hooks",
    "dyck_grammar",
    "effect_predictability",
    "english_grammar",
    "evaluate_sae",
    "evaluate_validity",
    "expr_grammar",
    "feature_interventions",
    "feature_role",
    "generate_dataset",
    "grammar_of",
    "held_out_causal_loss",
    "held_out_pairs",
    "in_progress_path",
    "interpolation_metrics",
    "list_grammars",
    "load_dataset_dir",
    "load_grammar",
    "load_grid",
    "load_model",
    "load_sae",
    "load_tokenizer",
    "model_card",
    "model_fingerprint",
    "model_grammar",
    "next_token_effects",
    "number",
    "output_dir",
    "paper_grid",
    "predictability_summary",
    "probe_direction",
    "probe_features",
    "prompt_ids",
    "push_dataset_to_hub",
    "push_model_to_hub",
    "push_sae_to_hub",
    "read_json",
    "sae_architectures",
    "sae_card",
    "sae_hook_width",
    "sample_sequences",
    "save_dataset",
    "save_model",
    "single_latent_effects",
    "sweep",
    "targets_of",
    "to_inference",
    "to_jsonable",
    "train_causal_sae",
    "train_model",
    "train_sae",
    "train_seconds",
    "variance_dimension",
    "write_json",
]

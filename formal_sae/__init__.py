"""formal-sae: sparse autoencoders on formal languages, with ground truth.

The public API, following the data: grammars -> datasets -> models -> SAEs -> analysis and
interventions.
"""

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
from formal_sae.errors import DatasetError, FormalSAEError, GrammarError, ModelError, SAEError
from formal_sae.grammars import (
    IGNORE_VALUE,
    PAPER_MAX_LENGTH,
    FeatureSpec,
    Grammar,
    dyck_grammar,
    english_grammar,
    expr_grammar,
    list_grammars,
    load_grammar,
)

__version__ = "0.1.0"

__all__ = [
    "IGNORE_VALUE",
    "PAPER_MAX_LENGTH",
    "PAPER_PROMPT",
    "DatasetError",
    "DatasetMetadata",
    "FeatureSpec",
    "FormalSAEError",
    "Grammar",
    "GrammarError",
    "ModelError",
    "SAEError",
    "__version__",
    "build_dataset",
    "build_tokenizer",
    "dataset_metadata",
    "dyck_grammar",
    "english_grammar",
    "expr_grammar",
    "generate_dataset",
    "grammar_of",
    "list_grammars",
    "load_dataset_dir",
    "load_grammar",
    "load_tokenizer",
    "prompt_ids",
    "push_dataset_to_hub",
    "save_dataset",
]

"""formal-sae: sparse autoencoders on formal languages, with ground truth.

The public API, following the data: grammars -> datasets -> models -> SAEs -> analysis and
interventions.
"""

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
    "DatasetError",
    "FeatureSpec",
    "FormalSAEError",
    "Grammar",
    "GrammarError",
    "ModelError",
    "SAEError",
    "__version__",
    "dyck_grammar",
    "english_grammar",
    "expr_grammar",
    "list_grammars",
    "load_grammar",
]

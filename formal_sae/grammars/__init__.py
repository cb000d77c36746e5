"""Grammars: the paper's PCFGs, custom ones, sampling, parsing and ground-truth features."""

from formal_sae.grammars.base import PAPER_MAX_LENGTH, Grammar, LanguageFeature
from formal_sae.grammars.dyck import dyck_grammar
from formal_sae.grammars.english import english_grammar, english_june2024_grammar
from formal_sae.grammars.expr import expr_grammar
from formal_sae.grammars.features import (
    IGNORE_VALUE,
    LEXICAL,
    NESTING,
    PROGRESS,
    STRUCTURAL,
    FeatureSpec,
    feature_for,
    feature_role,
)
from formal_sae.grammars.registry import ABSORPTION_PAIRS, list_grammars, load_grammar

__all__ = [
    "ABSORPTION_PAIRS",
    "IGNORE_VALUE",
    "LEXICAL",
    "NESTING",
    "PAPER_MAX_LENGTH",
    "PROGRESS",
    "STRUCTURAL",
    "FeatureSpec",
    "Grammar",
    "LanguageFeature",
    "dyck_grammar",
    "english_grammar",
    "english_june2024_grammar",
    "expr_grammar",
    "feature_for",
    "feature_role",
    "list_grammars",
    "load_grammar",
]

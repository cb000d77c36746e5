"""Grammars: the paper's PCFGs, custom ones, sampling, parsing and ground-truth features."""

from formal_sae.grammars.base import PAPER_MAX_LENGTH, Grammar, LanguageFeature
from formal_sae.grammars.dyck import dyck_grammar
from formal_sae.grammars.english import english_grammar, english_june2024_grammar
from formal_sae.grammars.expr import expr_grammar
from formal_sae.grammars.features import IGNORE_VALUE, LEXICAL, STRUCTURAL, FeatureSpec, feature_role
from formal_sae.grammars.registry import list_grammars, load_grammar

__all__ = [
    "IGNORE_VALUE",
    "LEXICAL",
    "PAPER_MAX_LENGTH",
    "STRUCTURAL",
    "FeatureSpec",
    "Grammar",
    "LanguageFeature",
    "dyck_grammar",
    "english_grammar",
    "english_june2024_grammar",
    "expr_grammar",
    "feature_role",
    "list_grammars",
    "load_grammar",
]

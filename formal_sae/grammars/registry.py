"""The registry of built-in grammars: ``load_grammar(name)`` and ``list_grammars()``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from formal_sae.errors import GrammarError
from formal_sae.grammars import dyck, english, expr
from formal_sae.grammars.base import PAPER_MAX_LENGTH, Grammar
from formal_sae.grammars.dyck import dyck_grammar
from formal_sae.grammars.english import english_grammar, english_june2024_grammar
from formal_sae.grammars.expr import expr_grammar

_REGISTRY: dict[str, Callable[[str, int | None], Grammar]] = {
    "dyck2": lambda name, ml: dyck_grammar(2, 0.5, name=name, max_length=ml),
    "dyck2-shallow": lambda name, ml: dyck_grammar(2, 0.3, name=name, max_length=ml),
    "expr": lambda name, ml: expr_grammar("prefix", name=name, max_length=ml),
    "expr-postfix": lambda name, ml: expr_grammar("postfix", name=name, max_length=ml),
    "english": lambda name, ml: english_june2024_grammar(name=name, max_length=ml),
    "english-transitive": lambda name, ml: english_grammar(transitive=True, name=name, max_length=ml),
    "english-relative": lambda name, ml: english_grammar(relative_clauses=True, name=name, max_length=ml),
    "english-pp": lambda name, ml: english_grammar(n_prepositions=3, name=name, max_length=ml),
    "english-conj0.3": lambda name, ml: english_grammar(p_conj=0.3, name=name, max_length=ml),
    "english-oct2024": lambda name, ml: english_grammar(adjective_np=False, name=name, max_length=ml),
}

#: Every built-in language's default absorption pairs (parent, child feature expressions); the
#: analysis applies those whose features a dataset has.
ABSORPTION_PAIRS: list[tuple[str, str]] = [*english.ABSORPTION_PAIRS, *dyck.ABSORPTION_PAIRS, *expr.ABSORPTION_PAIRS]


def list_grammars() -> list[str]:
    """Names of the built-in grammars, in the order of the paper."""
    return list(_REGISTRY)


def load_grammar(name: str, max_length: int | None = PAPER_MAX_LENGTH) -> Grammar:
    """A built-in grammar by name (see [`list_grammars`][formal_sae.list_grammars]), or a PCFG text file by path.

    Raises [`GrammarError`][formal_sae.GrammarError] listing the valid names for an unknown name.
    """
    if name in _REGISTRY:
        return _REGISTRY[name](name, max_length)
    path = Path(name)
    if path.is_file() or os.sep in name or "/" in name:  # a path: a missing file is named as such
        return Grammar.from_file(path, max_length=max_length)
    raise GrammarError(
        f"unknown grammar {name!r}; valid names are: {', '.join(_REGISTRY)} "
        "(or give the path of a PCFG text file, or use Grammar.from_string)"
    )

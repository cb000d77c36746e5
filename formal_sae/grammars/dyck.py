"""Dyck-k: balanced strings over k bracket types (the paper's Dyck-2 and its variants)."""

from __future__ import annotations

from collections.abc import Sequence

from formal_sae.errors import GrammarError
from formal_sae.grammars.base import PAPER_MAX_LENGTH, Grammar, LanguageFeature, Recognizer, tokens_feature
from formal_sae.grammars.features import NESTING, PROGRESS, FeatureSpec

#: Probability of ``S -> S S``: "the highest probability that doesn't lead to infinite recursion"
#: in the authors' code.
P_CONCAT = 0.3


def dyck_text(n_types: int = 2, p_nest: float = 0.5, p_concat: float = P_CONCAT) -> str:
    """PCFG text of Dyck-k as the paper builds it.

    ``S -> S S [p_concat]``, the remaining mass split equally over ``Brack_i``, and
    ``Brack_i -> 'o_i' S 'c_i' [p_nest] | 'o_i' 'c_i' [1 - p_nest]``.
    """
    if n_types < 1:
        raise GrammarError(f"a Dyck grammar needs at least one bracket type, got n_types={n_types}")
    if not 0 <= p_nest < 1 or not 0 <= p_concat < 1:
        raise GrammarError(f"p_nest and p_concat must lie in [0, 1), got p_nest={p_nest}, p_concat={p_concat}")
    share = (1 - p_concat) / n_types
    lines = [f"S -> S S [{p_concat:.10g}] | " + " | ".join(f"Brack{i} [{share:.10g}]" for i in range(n_types))]
    lines += [f"Brack{i} -> 'o{i}' S 'c{i}' [{p_nest:.10g}] | 'o{i}' 'c{i}' [{1 - p_nest:.10g}]" for i in range(n_types)]
    return "\n".join(lines) + "\n"


def _bracket(token: str) -> tuple[bool, int]:
    return token[0] == "o", int(token[1:])


def _depth(tokens: Sequence[str]) -> list[int]:
    out, depth = [], 0
    for tok in tokens:
        is_open, _ = _bracket(tok)
        depth += is_open
        out.append(depth)
        depth -= not is_open
    return out


def _expected_closer(tokens: Sequence[str]) -> list[int]:
    out, stack = [], []
    for tok in tokens:
        is_open, kind = _bracket(tok)
        if is_open:
            stack.append(kind)
        else:
            stack.pop()
        out.append(stack[-1] + 1 if stack else 0)
    return out


def dyck_recognizer(n_types: int) -> Recognizer:
    """Exact linear-time membership test for the grammar of `dyck_text`: a non-empty
    string of known brackets in which every closer matches the innermost open bracket."""
    opener = {f"c{i}": f"o{i}" for i in range(n_types)}
    openers = set(opener.values())

    def recognize(tokens: Sequence[str]) -> bool:
        stack: list[str] = []
        for tok in tokens:
            if tok in openers:
                stack.append(tok)
            elif not stack or opener.get(tok) != stack.pop():
                return False
        return bool(tokens) and not stack

    return recognize


#: Parent/child feature expressions whose absorption gap the analysis measures by default: an
#: opening bracket vs an outermost opening bracket.
ABSORPTION_PAIRS: list[tuple[str, str]] = [("is_open=1", "is_open=1&depth=1")]


def dyck_features(n_types: int) -> list[LanguageFeature]:
    types = tuple(f"type{i}" for i in range(n_types))
    return [
        LanguageFeature(
            FeatureSpec(
                "depth",
                "ordinal",
                "nesting level of the token's bracket pair: an opening bracket counts itself, its closing bracket has the same depth",
                uses=(NESTING, PROGRESS),
            ),
            tokens_feature(_depth),
        ),
        LanguageFeature(
            FeatureSpec("bracket_type", "categorical", "which bracket type the token is", types),
            tokens_feature(lambda toks: [_bracket(t)[1] for t in toks]),
        ),
        LanguageFeature(
            FeatureSpec("is_open", "binary", "1 for an opening bracket, 0 for a closing one"),
            tokens_feature(lambda toks: [int(_bracket(t)[0]) for t in toks]),
        ),
        LanguageFeature(
            FeatureSpec(
                "expected_closer",
                "categorical",
                "type of the innermost bracket still open after the token (the closer the grammar requires next), none at depth 0",
                ("none", *types),
            ),
            tokens_feature(_expected_closer),
        ),
    ]


def dyck_grammar(
    n_types: int = 2,
    p_nest: float = 0.5,
    p_concat: float = P_CONCAT,
    name: str | None = None,
    max_length: int | None = PAPER_MAX_LENGTH,
) -> Grammar:
    """Dyck-k with any number of bracket types and nesting probability (tokens ``o0 c0 o1 c1 ...``)."""
    return Grammar.from_string(
        dyck_text(n_types, p_nest, p_concat),
        name=name or f"dyck{n_types}-p{p_nest:g}",
        max_length=max_length,
        description=f"Dyck-{n_types}, p_nest {p_nest:g}",
        language_features=dyck_features(n_types),
        recognizer=dyck_recognizer(n_types),
    )

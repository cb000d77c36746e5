"""Expr: arithmetic expressions over digits and unary/binary/ternary operators, prefix or postfix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from nltk import Tree

from formal_sae.errors import GrammarError
from formal_sae.grammars.base import PAPER_MAX_LENGTH, Grammar, LanguageFeature, Recognizer, tokens_feature
from formal_sae.grammars.features import NESTING, PROGRESS, FeatureSpec, leaf_ancestors
from formal_sae.grammars.lexicon import lexical_rule

ARITY = {"dig": 0, "un": 1, "bin": 2, "tern": 3}


def expr_text(notation: Literal["prefix", "postfix"] = "prefix", n_digits: int = 10, n_ops: int = 3, p_op: float = 0.4) -> str:
    """PCFG text of Expr: ``Expr -> OpExpr [p_op] | Digit``; operators take 1, 2 or 3 operands."""
    if notation not in ("prefix", "postfix"):
        raise GrammarError(f"notation must be 'prefix' or 'postfix', got {notation!r}")
    if not 0 <= p_op < 1:
        raise GrammarError(f"p_op must lie in [0, 1), got {p_op}")
    forms = [("UnOp", 1, 0.33), ("BinOp", 2, 0.33), ("TernOp", 3, 0.34)]
    if notation == "prefix":
        alts = [f"{op} {' '.join(['Expr'] * k)} [{p}]" for op, k, p in forms]
    else:
        alts = [f"{' '.join(['Expr'] * k)} {op} [{p}]" for op, k, p in forms]
    return (
        "\n".join(
            [
                "S -> Expr [1.0]",
                f"Expr -> OpExpr [{p_op:.10g}] | Digit [{1 - p_op:.10g}]",
                "OpExpr -> " + " | ".join(alts),
                lexical_rule("Digit", "dig", n_digits),
                lexical_rule("UnOp", "un", n_ops),
                lexical_rule("BinOp", "bin", n_ops),
                lexical_rule("TernOp", "tern", n_ops),
            ]
        )
        + "\n"
    )


def arity(token: str) -> int:
    """Number of operands a token takes: digits 0, ``un*`` 1, ``bin*`` 2, ``tern*`` 3."""
    return ARITY[token.rstrip("0123456789")]


def _pending(tokens: Sequence[str]) -> list[int]:
    """Prefix: expressions still required after each token (starts at 1; a token of arity a adds a - 1)."""
    out, pending = [], 1
    for tok in tokens:
        pending += arity(tok) - 1
        out.append(pending)
    return out


def _stack_size(tokens: Sequence[str]) -> list[int]:
    """Postfix: complete sub-expressions waiting on the stack after each token."""
    out, size = [], 0
    for tok in tokens:
        size += 1 - arity(tok)
        out.append(size)
    return out


def _operator_depth(tokens: Sequence[str], tree: Tree) -> list[int]:
    """Operators whose operands contain the token (an operator does not enclose itself)."""
    return [path.count("OpExpr") - (arity(tok) > 0) for tok, path in zip(tokens, leaf_ancestors(tree), strict=True)]


def expr_recognizer(notation: str, vocabulary: Sequence[str]) -> Recognizer:
    """Exact linear-time membership test for Expr: a counter of the operands still needed
    (prefix) or of the sub-expressions on the stack (postfix)."""
    known = frozenset(vocabulary)

    def recognize(tokens: Sequence[str]) -> bool:
        if not tokens or not known.issuperset(tokens):
            return False
        counter = _pending(tokens) if notation == "prefix" else _stack_size(tokens)
        if notation == "prefix":  # never complete before the last token, complete at it
            return min(counter[:-1], default=1) > 0 and counter[-1] == 0
        # postfix: an operator of arity a needs a operands on the stack before it
        before = [0, *counter[:-1]]
        return all(b >= arity(t) for b, t in zip(before, tokens, strict=True)) and counter[-1] == 1

    return recognize


#: Parent/child feature expressions whose absorption gap the analysis measures by default: an
#: operator vs a ternary operator.
ABSORPTION_PAIRS: list[tuple[str, str]] = [("is_operator=1", "arity=3")]


def expr_features(notation: str) -> list[LanguageFeature]:
    if notation == "prefix":
        counter = LanguageFeature(
            FeatureSpec(
                "pending", "ordinal", "expressions still required after the token (0 at the last token)", uses=(PROGRESS,)
            ),
            tokens_feature(_pending),
        )
    else:
        counter = LanguageFeature(
            FeatureSpec(
                "stack_size", "ordinal", "complete sub-expressions waiting for an operator after the token", uses=(PROGRESS,)
            ),
            tokens_feature(_stack_size),
        )
    return [
        LanguageFeature(
            FeatureSpec(
                "depth",
                "ordinal",
                "operator-nesting depth: number of operators whose operands contain the token",
                uses=(NESTING,),
            ),
            _operator_depth,
        ),
        counter,
        LanguageFeature(
            FeatureSpec("arity", "ordinal", "operands the token takes: digit 0, unary 1, binary 2, ternary 3"),
            tokens_feature(lambda toks: [arity(t) for t in toks]),
        ),
        LanguageFeature(
            FeatureSpec("is_operator", "binary", "1 for an operator, 0 for a digit"),
            tokens_feature(lambda toks: [int(arity(t) > 0) for t in toks]),
        ),
        LanguageFeature(
            FeatureSpec("last_token", "binary", "1 for the final token of the expression"),
            tokens_feature(lambda toks: [int(i == len(toks) - 1) for i in range(len(toks))]),
        ),
    ]


def expr_grammar(
    notation: Literal["prefix", "postfix"] = "prefix",
    n_digits: int = 10,
    n_ops: int = 3,
    p_op: float = 0.4,
    name: str | None = None,
    max_length: int | None = PAPER_MAX_LENGTH,
) -> Grammar:
    """Expr in prefix (the paper's main model) or postfix notation."""
    text = expr_text(notation, n_digits, n_ops, p_op)
    vocabulary = [f"{p}{i}" for p, n in [("dig", n_digits), ("un", n_ops), ("bin", n_ops), ("tern", n_ops)] for i in range(n)]
    return Grammar.from_string(
        text,
        name=name or f"expr-{notation}",
        max_length=max_length,
        description=f"Expr, {notation} arithmetic over {n_digits} digits and {n_ops} operators per arity",
        language_features=expr_features(notation),
        recognizer=expr_recognizer(notation, vocabulary),
    )

"""Ground-truth features: their declarations and the ones every grammar has (from the parse tree).

A feature assigns one integer to every token of a sentence. Its [`FeatureSpec`][formal_sae.FeatureSpec] says what
the integer means: ``binary`` (0/1), ``categorical`` (an index into ``categories``) or
``ordinal`` (a count or depth, compared by size).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from nltk import Tree

FeatureKind = Literal["binary", "categorical", "ordinal"]
FEATURE_KINDS: tuple[str, ...] = ("binary", "categorical", "ordinal")

#: Value stored in dataset feature columns at positions that are not sentence tokens
#: (the prompt, ``<bos>``, ``<eos>``): the usual "ignore" index of PyTorch losses.
IGNORE_VALUE = -100

#: Category used by ``parent`` for the root nonterminal, which has no parent.
NO_PARENT = "<root>"

#: What the analysis and the interventions use a feature for (`FeatureSpec.uses`), declared
#: with the feature by its language. *Nesting*: how deeply the token is nested; the analysis draws
#: its best latent against it. *Progress*: how far the sentence is from complete; next-token effects
#: are grouped by it (e.g. P(<eos>) by pending-operand count).
NESTING, PROGRESS = "nesting", "progress"


@dataclass(frozen=True)
class FeatureSpec:
    """Declaration of one per-token ground-truth feature.

    Attributes:
        name: Column name in datasets and key in ``Grammar.features``.
        kind: ``"binary"``, ``"categorical"`` or ``"ordinal"``.
        description: One line saying what the value means.
        categories: For categorical features, the name of each integer value.
        uses: What the analysis and the interventions use it for (`NESTING`, `PROGRESS`):
            knowledge of the language, read from the grammar, not stored with datasets.
    """

    name: str
    kind: FeatureKind
    description: str
    categories: tuple[str, ...] = field(default=())
    uses: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"feature {self.name!r}: kind must be one of {FEATURE_KINDS}, got {self.kind!r}")
        if (self.kind == "categorical") != bool(self.categories):
            raise ValueError(f"feature {self.name!r}: categories are required for, and only for, categorical features")

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "description": self.description, "categories": list(self.categories)}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpec:
        return cls(d["name"], d["kind"], d["description"], tuple(d.get("categories", ())))


def feature_for(use: str, specs: Sequence[FeatureSpec]) -> str | None:
    """The name of the first of ``specs`` declared for ``use`` (a language's own features come
    before the generic ones), or None."""
    return next((s.name for s in specs if use in s.uses), None)


#: A feature computer: (tokens, most probable parse tree) -> one value per token.
FeatureFn = Callable[[Sequence[str], Tree], list[int]]


def leaf_ancestors(tree: Tree) -> list[tuple[str, ...]]:
    """For each leaf, the labels of its ancestors from the root down to its pre-terminal."""
    out: list[tuple[str, ...]] = []

    def walk(node: Tree, path: tuple[str, ...]) -> None:
        path = (*path, node.label())
        for child in node:
            if isinstance(child, Tree):
                walk(child, path)
            else:
                out.append(path)

    walk(tree, ())
    return out


def generic_feature_specs(nonterminals: Sequence[str]) -> list[FeatureSpec]:
    """The parse-tree features every grammar has."""
    cats = tuple(nonterminals)
    return [
        FeatureSpec(
            "tree_depth", "ordinal", "number of nonterminals above the token in the most probable parse tree", uses=(NESTING,)
        ),
        FeatureSpec("preterminal", "categorical", "label of the nonterminal directly above the token", cats),
        FeatureSpec(
            "parent",
            "categorical",
            f"label of the nonterminal above the pre-terminal ({NO_PARENT} when the pre-terminal is the root)",
            (*cats, NO_PARENT),
        ),
    ]


def generic_features(tree: Tree, specs: Sequence[FeatureSpec]) -> dict[str, list[int]]:
    """Compute the generic features (see `generic_feature_specs`) from a parse tree."""
    spec = {s.name: s for s in specs}
    pre_index = {c: i for i, c in enumerate(spec["preterminal"].categories)}
    parent_index = {c: i for i, c in enumerate(spec["parent"].categories)}
    paths = leaf_ancestors(tree)
    return {
        "tree_depth": [len(p) for p in paths],
        "preterminal": [pre_index[p[-1]] for p in paths],
        "parent": [parent_index[p[-2] if len(p) > 1 else NO_PARENT] for p in paths],
    }


#: A feature's role. *Lexical*: its value is a function of the current token alone (part of speech,
#: arity, bracket type), so any encoder of the token, even an untrained SAE, can read it off.
#: *Structural*: it depends on the context (depth, pending operands, position in the tree), so
#: only a model that computes it represents it.
LEXICAL, STRUCTURAL = "lexical", "structural"


def feature_role(token_ids: Sequence[int], values: Sequence[int]) -> str:
    """`LEXICAL` if ``values`` is a function of ``token_ids`` on these tokens (every token id
    always has the same value), else `STRUCTURAL`. Tokens valued `IGNORE_VALUE` are
    left out. Decided from data so that it holds for any grammar, including a user's."""
    seen: dict[int, int] = {}
    for token, value in zip(token_ids, values, strict=True):
        if value == IGNORE_VALUE:
            continue
        if seen.setdefault(int(token), int(value)) != int(value):
            return STRUCTURAL
    return LEXICAL

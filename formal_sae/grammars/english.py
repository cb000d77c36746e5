"""English-like PCFGs: the paper's main English grammar and the variants of the authors' later code."""

from __future__ import annotations

from collections.abc import Sequence

from nltk import Tree

from formal_sae.errors import GrammarError
from formal_sae.grammars.base import PAPER_MAX_LENGTH, Grammar, LanguageFeature
from formal_sae.grammars.features import PROGRESS, FeatureSpec, leaf_ancestors
from formal_sae.grammars.lexicon import lexical_rule

#: Pre-terminal category -> token prefix (and part-of-speech name).
CATEGORIES = {
    "N": "noun", "V": "verb", "Adj": "adj", "Pro": "pro", "Adv": "adv", "Conj": "conj",
    "TV": "tverb", "IV": "iverb", "P": "prep", "RP": "relp", "RA": "rela",
}  # fmt: skip


def _lexicon(categories: Sequence[str], n_tokens: int, sizes: dict[str, int]) -> list[str]:
    return [lexical_rule(c, CATEGORIES[c], sizes.get(c, n_tokens)) for c in categories]


def english_june2024_text(n_tokens: int = 10) -> str:
    """The grammar the paper's main English model was trained on (``pcfg-sae`` at ``aedcd6c``).

    ``S -> VP NP`` is kept with probability 0, as in the authors' pickled grammar: it is never
    sampled, but ``ViterbiParser`` (and so the paper's grammaticality check) accepts it.
    """
    return (
        "\n".join(
            [
                "S -> NP VP [1.0] | VP NP [0.0]",
                "NP -> Adj N [0.5] | NP Conj NP [0.25] | Pro [0.25]",
                "VP -> V [0.25] | V NP [0.35] | VP Adv [0.25] | VP Conj VP [0.15]",
                *_lexicon(["N", "V", "Adj", "Pro", "Adv", "Conj"], n_tokens, {}),
            ]
        )
        + "\n"
    )


def english_text(
    transitive: bool = False,
    relative_clauses: bool = False,
    n_prepositions: int = 0,
    p_conj: float = 0.15,
    n_tokens: int = 10,
    adjective_np: bool = True,
) -> str:
    """PCFG text of the English variants, by the authors' generator (``create_grammar_english``).

    With ``n = 1 + relative_clauses + (n_prepositions > 0)`` and ``p = round((0.6 - p_conj) / n, 2)``:
    NP is ``Pro 0.2 | N 0.2 | NP Conj NP p_conj | Adj NP p`` (``| NP AdjRel p``, ``| NP PP p``),
    VP is ``V NP 0.2 | V 0.2 | VP Conj VP p_conj | VP Adv p`` (``| VP AdvRel p``, ``| VP PP p``);
    any shortfall from 1 goes to ``N`` and ``V``. Transitive grammars use ``TV NP`` and ``IV``.
    ``adjective_np``: ``Adj NP`` (stacked adjectives), as in the pickled grammars of the authors'
    English variant models, made by older code; False gives ``Adj N``, which the final code writes
    and from which every English SAE dataset of the authors was rebuilt (``english-oct2024``).
    """
    if not 0 <= p_conj <= 0.6:
        raise GrammarError(f"p_conj must lie in [0, 0.6] (0.4 of each phrase is fixed), got {p_conj}")
    if n_prepositions < 0:
        raise GrammarError(f"n_prepositions must be >= 0, got {n_prepositions}")
    n = 1 + relative_clauses + (n_prepositions > 0)
    p = round((0.6 - p_conj) / n, 2)
    v_np, v_alone = ("TV NP", "IV") if transitive else ("V NP", "V")
    np_alts = [("Pro", 0.2), ("N", 0.2), ("NP Conj NP", p_conj), ("Adj NP" if adjective_np else "Adj N", p)]
    vp_alts = [(v_np, 0.2), (v_alone, 0.2), ("VP Conj VP", p_conj), ("VP Adv", p)]
    extra: list[str] = []
    if relative_clauses:
        np_alts.append(("NP AdjRel", p))
        vp_alts.append(("VP AdvRel", p))
        extra += [f"AdjRel -> RP {v_np} [0.33] | RP {v_alone} [0.33] | RP NP {v_np.split()[0]} [0.34]", "AdvRel -> RA S [1.0]"]
    if n_prepositions:
        np_alts.append(("NP PP", p))
        vp_alts.append(("VP PP", p))
        extra.append("PP -> P NP [1.0]")
    np_alts[1] = ("N", round(np_alts[1][1] + 1 - sum(q for _, q in np_alts), 10))
    vp_alts[1] = (v_alone, round(vp_alts[1][1] + 1 - sum(q for _, q in vp_alts), 10))
    categories = ["N", *(["TV", "IV"] if transitive else ["V"]), "Adj", "Pro", "Adv", "Conj"]
    categories += ["RP", "RA"] * relative_clauses + ["P"] * (n_prepositions > 0)
    sizes = {"TV": n_tokens // 2, "IV": n_tokens - n_tokens // 2, "RP": 2, "RA": 2, "P": n_prepositions}

    def rule(lhs: str, alts: list[tuple[str, float]]) -> str:
        return f"{lhs} -> " + " | ".join(f"{rhs} [{q:.10g}]" for rhs, q in alts)

    return (
        "\n".join(["S -> NP VP [1.0]", rule("NP", np_alts), rule("VP", vp_alts), *extra, *_lexicon(categories, n_tokens, sizes)])
        + "\n"
    )


def _pos(categories: tuple[str, ...]):
    index = {c: i for i, c in enumerate(categories)}
    return lambda tokens, tree: [index[CATEGORIES[path[-1]]] for path in leaf_ancestors(tree)]


def _in_subject(tokens: Sequence[str], tree: Tree) -> list[int]:
    return [int(len(path) > 1 and path[1] == "NP") for path in leaf_ancestors(tree)]


def _conj_index(tokens: Sequence[str], tree: Tree) -> list[int]:
    """1-based index of a conjunction among the conjunctions of its top-level phrase; 0 for other tokens."""
    out, seen = [], {}
    for k, path in enumerate(leaf_ancestors(tree)):
        if path[-1] != "Conj":
            out.append(0)
            continue
        phrase = tree.leaf_treeposition(k)[0]  # which child of the root holds the token
        seen[phrase] = seen.get(phrase, 0) + 1
        out.append(seen[phrase])
    return out


#: Parent/child feature expressions whose absorption gap the analysis measures by default: a
#: conjunction vs a VP conjunction, a verb vs a verb directly under a VP.
ABSORPTION_PAIRS: list[tuple[str, str]] = [("pos=conj", "pos=conj&in_subject=0"), ("pos=verb", "pos=verb&parent=VP")]


def english_features(grammar_text: str) -> list[LanguageFeature]:
    present = [c for c in CATEGORIES if f"\n{c} ->" in "\n" + grammar_text]
    pos_names = tuple(CATEGORIES[c] for c in present)
    return [
        LanguageFeature(
            FeatureSpec("pos", "categorical", "part of speech (the token's pre-terminal category)", pos_names), _pos(pos_names)
        ),
        LanguageFeature(
            FeatureSpec("in_subject", "binary", "1 inside the subject NP of the main clause, 0 inside its VP"), _in_subject
        ),
        LanguageFeature(
            FeatureSpec(
                "conj_index",
                "ordinal",
                "which conjunction of its top-level phrase (subject NP or VP) a conjunction is: 1, 2, ...; 0 for other tokens",
                uses=(PROGRESS,),
            ),
            _conj_index,
        ),
    ]


def english_grammar(
    transitive: bool = False,
    relative_clauses: bool = False,
    n_prepositions: int = 0,
    p_conj: float = 0.15,
    n_tokens: int = 10,
    name: str | None = None,
    max_length: int | None = PAPER_MAX_LENGTH,
    adjective_np: bool = True,
) -> Grammar:
    """An English variant from flags (see `english_text`)."""
    text = english_text(transitive, relative_clauses, n_prepositions, p_conj, n_tokens, adjective_np)
    flags = [
        f
        for f, on in [
            ("transitive", transitive),
            ("relative clauses", relative_clauses),
            (f"{n_prepositions} prepositions", n_prepositions),
            ("Adj N", not adjective_np),
        ]
        if on
    ]
    return Grammar.from_string(
        text,
        name=name or "english-custom",
        max_length=max_length,
        description=f"English (authors' final generator), p_conj {p_conj:g}" + "".join(f", {f}" for f in flags),
        language_features=english_features(text),
    )


def english_june2024_grammar(name: str = "english", max_length: int | None = PAPER_MAX_LENGTH) -> Grammar:
    """The paper's main English grammar (see `english_june2024_text`)."""
    text = english_june2024_text()
    return Grammar.from_string(
        text,
        name=name,
        max_length=max_length,
        description="English, the grammar of the paper's main English model (June-2024 rules)",
        language_features=english_features(text),
    )

"""Tests of the grammar layer: sampling, exact recognition and parsing, features, errors.

The reference for grammaticality and for the most probable parse is ``nltk.ViterbiParser`` (the
paper's check). It is slow, so it only sees short sentences (at most ``MAX_VITERBI_LEN`` tokens).
Distributions are checked against values computed here independently of the library: hand-derived
expectations and exact length distributions obtained by dynamic programming over the PCFG.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence

import nltk
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nltk import Nonterminal, Tree
from scipy import stats

from formal_sae import Grammar, GrammarError, list_grammars, load_grammar
from formal_sae.grammars.sampler import naive_sample

REGISTRY = list_grammars()
MAX_VITERBI_LEN = 12
OOV = "<oov>"

# Small grammars exercising what the registry grammars do not: real ambiguity with parses of
# different probabilities, long right-hand sides mixing terminals and nonterminals (and a
# terminal that is both inline and lexical), unary chains and a unary cycle, probability-0
# productions (never sampled, but ViterbiParser derives through them).
CUSTOM = {
    "ambiguous": """
        S -> S '+' S [0.25] | S '+' T [0.1] | T [0.65]
        T -> T '*' F [0.2] | F [0.8]
        F -> 'n' [0.6] | '(' S ')' [0.1] | 'm' [0.2] | 'n' '*' 'n' [0.1]
    """,
    "mixed": """
        S -> A [0.5] | 'x' B 'y' C [0.3] | S 'z' [0.2]
        A -> 'a' [0.6] | 'x' A 'y' S [0.1] | B [0.3]
        B -> 'b' [0.7] | 'y' [0.3]
        C -> S [0.4] | 'c' [0.6]
    """,
    "unary": """
        S -> A [0.4] | S B [0.3] | 's' [0.3]
        A -> B [0.5] | 'a' [0.5]
        B -> C [0.5] | 'b' [0.5]
        C -> A [0.2] | D [0.3] | 'c' [0.5]
        D -> 'd' [1.0]
    """,
    "zero": """
        S -> A B [1.0] | B A [0.0]
        A -> 'a' [0.7] | A 'a' [0.3] | 'q' [0.0]
        B -> 'b' [1.0]
    """,
}
ALL = REGISTRY + list(CUSTOM)

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def get(name: str) -> Grammar:
    if name in CUSTOM:
        return Grammar.from_string(CUSTOM[name], name=name)
    return load_grammar(name)


@functools.cache
def viterbi(name: str) -> nltk.ViterbiParser:
    return nltk.ViterbiParser(get(name).pcfg, max_time=None)


def viterbi_tree(name: str, tokens: Sequence[str]) -> Tree | None:
    """ViterbiParser's best parse, or None: the paper's verdict (an exception means ungrammatical)."""
    try:
        trees = list(viterbi(name).parse(list(tokens)))
    except ValueError:  # a token outside the grammar
        return None
    return trees[0] if trees else None


@functools.cache
def short_pool(name: str) -> tuple[tuple[str, ...], ...]:
    """Distinct sampled sentences short enough for ViterbiParser."""
    sentences = get(name).sample(3000, seed=2024)
    pool = tuple(dict.fromkeys(tuple(s) for s in sentences if len(s) <= MAX_VITERBI_LEN))
    assert len(pool) >= 5, name
    return pool[:300]


def assert_valid_tree(grammar: Grammar, tree: Tree, tokens: Sequence[str]) -> None:
    """The tree derives ``tokens`` from the start symbol with the grammar's productions, and its
    probability is the product of theirs."""
    assert isinstance(tree, Tree)
    assert tree.leaves() == list(tokens)
    assert tree.label() == grammar.pcfg.start().symbol()
    probs = {(p.lhs(), p.rhs()): p.prob() for p in grammar.pcfg.productions()}
    product = 1.0
    for sub in tree.subtrees():
        assert sub.label() in grammar.nonterminals
        rhs = tuple(Nonterminal(c.label()) if isinstance(c, Tree) else c for c in sub)
        key = (Nonterminal(sub.label()), rhs)
        assert key in probs, f"{key} is not a production of the grammar"
        product *= probs[key]
    assert math.isclose(tree.prob(), product, rel_tol=1e-9, abs_tol=1e-300)


def assert_agrees_with_viterbi(name: str, tokens: Sequence[str]) -> None:
    grammar = get(name)
    expected = viterbi_tree(name, tokens)
    verdict = expected is not None
    assert grammar.is_grammatical(tokens) == verdict, (name, tokens)
    assert grammar.chart_recognize(tokens) == verdict, (name, tokens)
    tree = grammar.parse(tokens)
    if expected is None:
        assert tree is None
    else:
        assert_valid_tree(grammar, tree, tokens)
        assert math.isclose(tree.prob(), expected.prob(), rel_tol=1e-9, abs_tol=1e-300), (tree, expected)


@st.composite
def perturbed_sentence(draw, name: str) -> list[str]:
    """A short sampled sentence with one token inserted, deleted, swapped or replaced."""
    tokens = list(draw(st.sampled_from(short_pool(name))))
    vocab = [*get(name).terminals, OOV]
    op = draw(st.sampled_from(["insert", "delete", "swap", "replace"]))
    if op == "insert":
        tokens.insert(draw(st.integers(0, len(tokens))), draw(st.sampled_from(vocab)))
    elif op == "delete":
        del tokens[draw(st.integers(0, len(tokens) - 1))]
    elif op == "swap":
        i, j = draw(st.integers(0, len(tokens) - 1)), draw(st.integers(0, len(tokens) - 1))
        tokens[i], tokens[j] = tokens[j], tokens[i]
    else:
        tokens[draw(st.integers(0, len(tokens) - 1))] = draw(st.sampled_from(vocab))
    return tokens


# ---------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("name", REGISTRY)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**63 - 1))
def test_samples_are_grammatical_and_within_max_length(name, seed):
    grammar = get(name)
    sentences = grammar.sample(40, seed=seed)
    assert len(sentences) == 40
    vocab = set(grammar.terminals)
    for s in sentences:
        assert 1 <= len(s) <= grammar.max_length == 110
        assert set(s) <= vocab
        assert grammar.is_grammatical(s)
        assert grammar.chart_recognize(s)


@pytest.mark.parametrize("name", REGISTRY)
def test_custom_max_length_is_respected(name):
    grammar = load_grammar(name, max_length=6)
    assert grammar.max_length == 6
    sentences = grammar.sample(300, seed=1)
    assert all(1 <= len(s) <= 6 and grammar.is_grammatical(s) for s in sentences)
    assert max(len(s) for s in sentences) >= 5  # the limit is not met by dropping everything long
    short = get(name).with_max_length(6).sample(300, seed=1)
    assert short == sentences


@pytest.mark.parametrize("name", REGISTRY)
def test_same_seed_same_sentences_different_seed_different(name):
    first = get(name).sample(25, seed=7)
    assert load_grammar(name).sample(25, seed=7) == first  # a fresh object: no hidden state
    assert get(name).sample(25, seed=7) == first
    assert list(get(name).iter_samples(25, seed=7)) == first
    assert get(name).sample(25, seed=np.random.SeedSequence(7)) == first
    assert get(name).sample(25, seed=8) != first
    assert get(name).sample(10, seed=7) == first[:10]


def test_sampling_does_not_touch_global_random_state():
    import random

    random.seed(0)
    np.random.seed(0)
    before = (random.random(), np.random.random())
    random.seed(0)
    np.random.seed(0)
    get("expr").sample(100, seed=3)
    assert (random.random(), np.random.random()) == before


def test_zero_probability_productions_are_never_sampled():
    grammar = get("zero")
    assert all(s[-1] == "b" and "q" not in s for s in grammar.sample(500, seed=0))
    english = get("english")  # S -> VP NP [0.0]: every sentence starts with its subject NP
    assert all(s[0].startswith(("adj", "pro")) for s in english.sample(500, seed=0))


# ------------------------------------------------------------------- grammaticality vs NLTK


@pytest.mark.parametrize("name", ALL)
@FAST
@given(data=st.data())
def test_sampled_sentences_agree_with_viterbi(name, data):
    assert_agrees_with_viterbi(name, data.draw(st.sampled_from(short_pool(name))))


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_perturbed_sentences_agree_with_viterbi(name, data):
    assert_agrees_with_viterbi(name, data.draw(perturbed_sentence(name)))


@pytest.mark.parametrize("name", ALL)
@FAST
@given(data=st.data())
def test_random_token_strings_agree_with_viterbi(name, data):
    vocab = [*get(name).terminals, OOV]
    assert_agrees_with_viterbi(name, data.draw(st.lists(st.sampled_from(vocab), max_size=10)))


@pytest.mark.parametrize("name", ALL)
def test_empty_sentence_is_ungrammatical(name):
    assert viterbi_tree(name, []) is None
    assert_agrees_with_viterbi(name, [])
    assert get(name).is_grammatical(()) is False


@pytest.mark.parametrize(
    ("name", "tokens"),
    [
        ("english", ["verb1", "pro2"]),  # only S -> VP NP [0.0] derives it
        ("english", ["verb1", "adv2", "adj3", "noun4", "conj5", "pro6"]),
        ("zero", ["b", "a"]),
        ("zero", ["q", "b"]),
        ("zero", ["a", "q", "b"]),  # A is q a* or a+, so "a q" is not an A
        ("ambiguous", ["n", "+", "n", "+", "n", "*", "n"]),
        ("ambiguous", ["n", "*", "n", "*", "n"]),
        ("mixed", ["x", "y", "y", "c"]),
        ("mixed", ["x", "a", "y", "a", "z"]),
        ("unary", ["d", "d", "c", "s"]),
    ],
)
def test_hand_picked_sentences_agree_with_viterbi(name, tokens):
    assert_agrees_with_viterbi(name, tokens)


def test_probability_zero_derivations_are_grammatical():
    english = get("english")
    for tokens in (["verb1", "pro2"], ["verb0", "adv3", "adj1", "noun2"]):
        assert english.is_grammatical(tokens) and english.chart_recognize(tokens)
        tree = english.parse(tokens)
        assert tree is not None and tree.prob() == 0.0
        assert [child.label() for child in tree] == ["VP", "NP"]
    zero = get("zero")
    assert zero.is_grammatical(["b", "a"]) and zero.is_grammatical(["q", "b"])
    assert zero.is_grammatical(["b", "q", "a"]) and not zero.is_grammatical(["b", "a", "q"])
    # A positive-probability parse must beat any parse through a probability-0 production.
    tree = get("ambiguous").parse(["n", "*", "n"])
    assert tree is not None and tree.prob() > 0


def test_parse_prefers_the_most_probable_tree():
    grammar = get("ambiguous")
    # "n * n": F -> 'n' '*' 'n' (0.65 * 0.8 * 0.1 = 0.052) beats T -> T '*' F (0.65 * 0.2 * 0.8 * 0.6 * 0.6 = 0.03744).
    tree = grammar.parse(["n", "*", "n"])
    assert math.isclose(tree.prob(), 0.65 * 0.8 * 0.1)
    assert tree[0][0].label() == "F" and tree[0][0].leaves() == ["n", "*", "n"]
    # "n * m" has only the T -> T '*' F parse.
    tree = grammar.parse(["n", "*", "m"])
    assert math.isclose(tree.prob(), 0.65 * 0.2 * (0.8 * 0.6) * 0.2)
    assert tree[0].label() == "T" and len(tree[0]) == 3


@pytest.mark.parametrize("name", ["dyck2", "dyck2-shallow", "expr", "expr-postfix"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), data=st.data())
def test_linear_time_recognizers_match_chart_parser_on_long_inputs(name, seed, data):
    """The Dyck/Expr stack and counter recognizers against the generic chart (any length)."""
    grammar = get(name)
    tokens = grammar.sample(1, seed=seed)[0]
    assert grammar.is_grammatical(tokens) and grammar.chart_recognize(tokens)
    vocab = list(grammar.terminals)
    for _ in range(3):
        i = data.draw(st.integers(0, len(tokens) - 1))
        op = data.draw(st.sampled_from(["delete", "replace", "swap"]))
        mutated = list(tokens)
        if op == "delete":
            del mutated[i]
        elif op == "replace":
            mutated[i] = data.draw(st.sampled_from(vocab))
        else:
            j = data.draw(st.integers(0, len(tokens) - 1))
            mutated[i], mutated[j] = mutated[j], mutated[i]
        assert grammar.is_grammatical(mutated) == grammar.chart_recognize(mutated), mutated


@pytest.mark.parametrize("name", REGISTRY)
@settings(max_examples=15, deadline=None)
@given(tokens=st.one_of(st.text(max_size=20), st.lists(st.text(max_size=8), max_size=8)))
def test_recognition_never_raises_on_arbitrary_text(name, tokens):
    grammar = get(name)
    assert grammar.is_grammatical(tokens) in (True, False)
    assert grammar.chart_recognize(tokens) in (True, False)
    tree = grammar.parse(tokens)
    assert tree is None or tree.leaves() == list(tokens)


# ---------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("name", ALL)
def test_parse_matches_viterbi_on_short_samples(name):
    grammar = get(name)
    for tokens in short_pool(name)[:25]:
        tree, expected = grammar.parse(tokens), viterbi_tree(name, tokens)
        assert_valid_tree(grammar, tree, tokens)
        assert math.isclose(tree.prob(), expected.prob(), rel_tol=1e-9)


def test_parse_of_ungrammatical_sentence_is_none():
    assert get("dyck2").parse(["o0", "c1"]) is None
    assert get("expr").parse(["bin0", "dig1"]) is None
    assert get("english").parse(["pro1", OOV]) is None


@pytest.mark.parametrize("name", ["expr", "expr-postfix"])
def test_unambiguous_expr_parse_equals_viterbi_tree(name):
    def plain(tree):
        return (tree.label(), [plain(c) if isinstance(c, Tree) else c for c in tree])

    for tokens in short_pool(name)[:40]:
        assert plain(get(name).parse(tokens)) == plain(viterbi_tree(name, tokens))


# ----------------------------------------------------------------------------- distribution


def exact_length_distribution(grammar: Grammar, max_len: int) -> np.ndarray:
    """P(the start symbol derives exactly n tokens), n = 0..max_len, by fixed-point iteration
    over the productions (independent of the library's sampler and expected-length code)."""
    pcfg = grammar.pcfg
    nts = list(dict.fromkeys(p.lhs() for p in pcfg.productions()))
    rules = {a: [(p.prob(), p.rhs()) for p in pcfg.productions(lhs=a)] for a in nts}
    terminal = np.zeros(max_len + 1)
    terminal[1] = 1.0
    dist = {a: np.zeros(max_len + 1) for a in nts}
    for _ in range(5000):
        new = {}
        for a in nts:
            total = np.zeros(max_len + 1)
            for prob, rhs in rules[a]:
                d = np.zeros(max_len + 1)
                d[0] = 1.0
                for x in rhs:
                    d = np.convolve(d, dist[x] if isinstance(x, Nonterminal) else terminal)[: max_len + 1]
                total += prob * d
            new[a] = total
        converged = max(np.abs(new[a] - dist[a]).max() for a in nts) < 1e-15
        dist = new
        if converged:
            break
    else:
        raise AssertionError("length distribution did not converge")
    return dist[pcfg.start()]


def chi_square_pvalue(observed: np.ndarray, expected: np.ndarray) -> float:
    """Goodness of fit, merging adjacent bins until each expects at least 5 counts."""
    obs_bins, exp_bins, o_acc, e_acc = [], [], 0.0, 0.0
    for o, e in zip(observed, expected):
        o_acc, e_acc = o_acc + o, e_acc + e
        if e_acc >= 5:
            obs_bins.append(o_acc)
            exp_bins.append(e_acc)
            o_acc = e_acc = 0.0
    obs_bins[-1] += o_acc
    exp_bins[-1] += e_acc
    return float(stats.chisquare(obs_bins, exp_bins).pvalue)


def test_exact_length_distribution_helper_on_hand_values():
    # Dyck-2, p_nest 0.3: P(len 2) = P(S -> Brack_i -> o c) = 0.7 * 0.7;
    # P(len 4) = P(S -> S S, both len 2) + P(S -> Brack, Brack -> o S c, S len 2)
    #          = 0.3 * 0.49**2 + 0.7 * 0.3 * 0.49.
    dist = exact_length_distribution(get("dyck2-shallow"), 6)
    assert math.isclose(dist[2], 0.49)
    assert math.isclose(dist[4], 0.3 * 0.49**2 + 0.7 * 0.3 * 0.49)
    assert dist[0] == dist[1] == dist[3] == dist[5] == 0


@pytest.mark.parametrize("name", REGISTRY)
def test_sentence_lengths_follow_the_exact_distribution(name):
    """With a length limit L, sentences are distributed as P(length = n | length <= L)."""
    limit, n = 30, 4000
    exact = exact_length_distribution(get(name), limit)[1:]
    sentences = get(name).with_max_length(limit).sample(n, seed=11)
    observed = np.bincount([len(s) for s in sentences], minlength=limit + 1)[1:]
    assert observed[exact == 0].sum() == 0  # e.g. no odd-length Dyck sentences
    p = chi_square_pvalue(observed, n * exact / exact.sum())
    assert p > 1e-4, (name, p)


def test_fast_and_naive_samplers_give_the_same_length_distribution():
    grammar = get("dyck2-shallow")
    n = 5000
    fast = grammar.sample(n, seed=1)
    naive = naive_sample(grammar.pcfg, n, seed=2, max_length=grammar.max_length)
    assert len(naive) == n and all(len(s) <= grammar.max_length for s in naive)
    assert all(grammar.is_grammatical(s) for s in naive)
    bins = [2, 4, 6, 8, 10, 12, 14, 18, 24, 10**9]  # last bin: 24 tokens and longer
    table = np.array([np.histogram([len(s) for s in sample], bins=bins)[0] for sample in (fast, naive)])
    assert table.sum() == 2 * n
    p = stats.chi2_contingency(table).pvalue
    assert p > 1e-4, (p, table)
    # Both against the exact distribution, too.
    exact = exact_length_distribution(grammar, 110)[1:]
    for sample in (fast, naive):
        observed = np.bincount([len(s) for s in sample], minlength=111)[1:]
        assert chi_square_pvalue(observed, n * exact / exact.sum()) > 1e-4


def test_expr_first_token_class_frequencies():
    grammar = get("expr").with_max_length(None)  # no rejection: the PCFG's own distribution
    n = 20000
    counts = Counter(s[0].rstrip("0123456789") for s in grammar.sample(n, seed=5))
    expected = {"dig": 0.6, "un": 0.4 * 0.33, "bin": 0.4 * 0.33, "tern": 0.4 * 0.34}
    for kind, p in expected.items():
        se = math.sqrt(p * (1 - p) / n)
        assert abs(counts[kind] / n - p) < 4 * se, (kind, counts[kind] / n, p)


def test_expr_lexical_frequencies_and_sentence_probabilities():
    grammar = get("expr").with_max_length(None)
    n = 20000
    sentences = grammar.sample(n, seed=6)
    # Within the digits, each digit follows the published lexical probabilities.
    digit_probs = {p.rhs()[0]: p.prob() for p in grammar.pcfg.productions(lhs=Nonterminal("Digit"))}
    digits = Counter(t for s in sentences for t in s if t.startswith("dig"))
    total = sum(digits.values())
    observed = [digits[d] for d in digit_probs]
    assert stats.chisquare(observed, [total * p for p in digit_probs.values()]).pvalue > 1e-4
    # Prefix Expr is unambiguous: a sentence's probability is that of its only parse.
    for sentence, count in Counter(tuple(s) for s in sentences).most_common(15):
        p = grammar.parse(sentence).prob()
        se = math.sqrt(p * (1 - p) / n)
        assert abs(count / n - p) < 4 * se, (sentence, count / n, p)


def test_english_first_production_frequencies():
    grammar = get("english").with_max_length(None)
    n = 20000
    sentences = grammar.sample(n, seed=9)
    # The subject NP starts with an adjective (NP -> Adj N, or NP Conj NP whose first NP does)
    # with probability a = 0.5 + 0.25 a, i.e. a = 2/3, and with a pronoun otherwise.
    p = 2 / 3
    freq = sum(s[0].startswith("adj") for s in sentences) / n
    assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n)
    # The shortest sentences: "pro V" has probability 0.25 * 0.25.
    freq = sum(len(s) == 2 for s in sentences) / n
    assert abs(freq - 0.0625) < 4 * math.sqrt(0.0625 * 0.9375 / n)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # Dyck: L_S = 0.3 * 2 L_S + 0.7 L_B and L_B = 2 + p_nest L_S, so L_S = 1.4 / (0.4 - 0.7 p_nest).
        ("dyck2", 1.4 / (0.4 - 0.7 * 0.5)),  # = 28
        ("dyck2-shallow", 1.4 / (0.4 - 0.7 * 0.3)),  # = 140/19
        # Expr: E = 0.6 + 0.4 (1 + 0.33 E + 0.33 * 2E + 0.34 * 3E) = 1 + 0.804 E, so E = 1/0.196.
        ("expr", 1 / (1 - 0.804)),
        ("expr-postfix", 1 / (1 - 0.804)),
        # English main: NP = 0.5 * 2 + 0.25 (2 NP + 1) + 0.25 = 1.5 + 0.5 NP, so NP = 3;
        # VP = 0.25 + 0.35 (1 + NP) + 0.25 (VP + 1) + 0.15 (2 VP + 1) = 2.05 + 0.55 VP, so VP = 41/9;
        # S = NP + VP = 68/9 (S -> VP NP has probability 0).
        ("english", 3 + 41 / 9),
        # Oct-2024 English (Adj N, not Adj NP): NP = 0.4 + 0.15 (2 NP + 1) + 0.45 * 2 = 1.45 + 0.3 NP,
        # so NP = 1.45 / 0.7; VP = 0.2 (1 + NP) + 0.2 + 0.15 (2 VP + 1) + 0.45 (VP + 1) = 1 + 0.2 NP + 0.75 VP,
        # so VP = 4 + 0.8 NP.
        ("english-oct2024", 1.45 / 0.7 + 4 + 0.8 * 1.45 / 0.7),
        # p_conj 0.3: NP = 0.4 + 0.3 (2 NP + 1) + 0.3 (1 + NP) = 1 + 0.9 NP = 10;
        # VP = 0.2 * 11 + 0.2 + 0.3 (2 VP + 1) + 0.3 (VP + 1) = 3 + 0.9 VP = 30.
        ("english-conj0.3", 10 + 30),
    ],
)
def test_expected_length_matches_hand_derivation(name, expected):
    assert math.isclose(get(name).expected_length, expected, rel_tol=1e-6)


@pytest.mark.parametrize("name", ["expr", "english", "dyck2-shallow"])
def test_expected_length_matches_sample_mean(name):
    grammar = get(name).with_max_length(None)
    lengths = np.array([len(s) for s in grammar.sample(20000, seed=4)])
    se = lengths.std() / math.sqrt(len(lengths))
    assert abs(lengths.mean() - grammar.expected_length) < 5 * se


# --------------------------------------------------------------------------------- features


def categories_of(grammar: Grammar, feature: str, values: list[int]) -> list[str]:
    return [grammar.feature_spec(feature).categories[v] for v in values]


def test_dyck_features_by_hand():
    grammar = get("dyck2")
    tokens = ["o0", "o1", "c1", "c0", "o0", "c0"]
    f = grammar.features(tokens)
    assert f["depth"] == [1, 2, 2, 1, 1, 1]
    assert f["is_open"] == [1, 1, 0, 0, 1, 0]
    assert categories_of(grammar, "bracket_type", f["bracket_type"]) == ["type0", "type1", "type1", "type0", "type0", "type0"]
    assert grammar.feature_spec("expected_closer").categories == ("none", "type0", "type1")
    closers = categories_of(grammar, "expected_closer", f["expected_closer"])
    assert closers == ["type0", "type1", "type0", "none", "type0", "none"]
    assert grammar.feature_spec("depth").kind == "ordinal"
    assert grammar.feature_spec("is_open").kind == "binary"


def test_expr_prefix_features_by_hand():
    grammar = get("expr")
    tokens = ["bin0", "un1", "dig3", "tern2", "dig0", "dig1", "dig2"]  # bin0(un1(dig3), tern2(dig0, dig1, dig2))
    f = grammar.features(tokens)
    assert f["arity"] == [2, 1, 0, 3, 0, 0, 0]
    assert f["pending"] == [2, 2, 1, 3, 2, 1, 0]
    assert f["depth"] == [0, 1, 2, 1, 2, 2, 2]
    assert f["last_token"] == [0, 0, 0, 0, 0, 0, 1]
    assert f["is_operator"] == [1, 1, 0, 1, 0, 0, 0]
    assert "stack_size" not in f


def test_expr_postfix_features_by_hand():
    grammar = get("expr-postfix")
    tokens = ["dig0", "dig1", "bin0", "un2", "dig3", "dig4", "dig5", "tern1", "bin2"]  # bin2(un2(bin0(0, 1)), tern1(3, 4, 5))
    assert grammar.is_grammatical(tokens)
    f = grammar.features(tokens)
    assert f["stack_size"] == [1, 2, 1, 1, 2, 3, 4, 2, 1]
    assert f["depth"] == [3, 3, 2, 1, 2, 2, 2, 1, 0]
    assert f["arity"] == [0, 0, 2, 1, 0, 0, 0, 3, 2]
    assert "pending" not in f


def test_english_features_by_hand():
    grammar = get("english")
    tokens = ["adj1", "noun2", "conj3", "pro4", "verb5", "adv6", "conj7", "verb8"]
    f = grammar.features(tokens)
    pos = categories_of(grammar, "pos", f["pos"])
    assert pos == ["adj", "noun", "conj", "pro", "verb", "adv", "conj", "verb"]
    assert f["in_subject"] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert f["conj_index"] == [0, 0, 1, 0, 0, 0, 1, 0]
    f = grammar.features(["pro0", "verb1", "conj2", "verb3", "conj4", "verb5", "adv6"])
    assert f["conj_index"] == [0, 0, 1, 0, 2, 0, 0]
    assert f["in_subject"] == [1, 0, 0, 0, 0, 0, 0]
    assert set(grammar.feature_spec("pos").categories) == {"noun", "verb", "adj", "pro", "adv", "conj"}
    relative = get("english-relative")
    assert {"relp", "rela"} <= set(relative.feature_spec("pos").categories)


def test_generic_tree_features_by_hand():
    expr = get("expr")
    f = expr.features(["un0", "dig1"])  # (S (Expr (OpExpr (UnOp un0) (Expr (Digit dig1)))))
    assert f["tree_depth"] == [4, 5]
    assert categories_of(expr, "preterminal", f["preterminal"]) == ["UnOp", "Digit"]
    assert categories_of(expr, "parent", f["parent"]) == ["OpExpr", "Expr"]
    assert expr.feature_spec("preterminal").categories == expr.nonterminals
    assert expr.feature_spec("parent").categories == (*expr.nonterminals, "<root>")

    dyck = get("dyck2")
    f = dyck.features(["o0", "c0"])  # (S (Brack0 o0 c0)): the brackets hang off Brack0 directly
    assert f["tree_depth"] == [2, 2]
    assert categories_of(dyck, "preterminal", f["preterminal"]) == ["Brack0", "Brack0"]
    assert categories_of(dyck, "parent", f["parent"]) == ["S", "S"]

    english = get("english")
    f = english.features(["pro3", "verb4"])  # (S (NP (Pro pro3)) (VP (V verb4)))
    assert f["tree_depth"] == [3, 3]
    assert categories_of(english, "preterminal", f["preterminal"]) == ["Pro", "V"]
    assert categories_of(english, "parent", f["parent"]) == ["NP", "VP"]

    tiny = Grammar.from_string("S -> 'a' [1.0]", name="tiny")
    f = tiny.features(["a"])
    assert f["tree_depth"] == [1]
    assert categories_of(tiny, "parent", f["parent"]) == ["<root>"]


def leaf_paths(tree: Tree) -> list[list[str]]:
    return [[tree[pos[:k]].label() for k in range(len(pos))] for pos in tree.treepositions("leaves")]


@pytest.mark.parametrize("name", ["expr", "expr-postfix"])
def test_expr_depth_equals_paper_formula(name):
    """The paper's operator depth: ceil(tree_depth / 2) - 2, from the parse tree."""
    grammar = get(name)
    for tokens in grammar.sample(200, seed=13):
        f = grammar.features(tokens)
        assert f["depth"] == [math.ceil(d / 2) - 2 for d in f["tree_depth"]]
        assert f["tree_depth"] == [len(p) for p in leaf_paths(grammar.parse(tokens))]


@pytest.mark.parametrize("name", ["dyck2", "dyck2-shallow"])
def test_dyck_depth_equals_bracket_ancestors_in_tree(name):
    grammar = get(name)
    for tokens in grammar.sample(200, seed=17):
        paths = leaf_paths(grammar.parse(tokens))
        assert grammar.features(tokens)["depth"] == [sum(lab.startswith("Brack") for lab in p) for p in paths]


@pytest.mark.parametrize("name", REGISTRY)
def test_features_are_well_formed_on_samples(name):
    grammar = get(name)
    specs = grammar.feature_specs
    for tokens in grammar.sample(60, seed=19):
        f = grammar.features(tokens)
        assert list(f) == grammar.feature_names == [s.name for s in specs]
        for spec in specs:
            values = f[spec.name]
            assert len(values) == len(tokens) and all(isinstance(v, int) for v in values)
            if spec.kind == "binary":
                assert set(values) <= {0, 1}
            elif spec.kind == "categorical":
                assert all(0 <= v < len(spec.categories) for v in values)
            else:
                assert min(values) >= 0
        assert grammar.features(tokens, tree=grammar.parse(tokens)) == f


# ------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", ALL)
def test_to_string_round_trips(name):
    grammar = get(name)
    text = grammar.to_string()
    again = Grammar.from_string(text, name=name)

    def table(g):
        return {(p.lhs(), p.rhs()): p.prob() for p in g.pcfg.productions()}

    original, copy = table(grammar), table(again)
    assert again.pcfg.start() == grammar.pcfg.start()
    assert set(copy) == set(original) and len(again.pcfg.productions()) == len(grammar.pcfg.productions())
    assert all(math.isclose(copy[k], original[k], rel_tol=1e-9, abs_tol=0) for k in original)
    assert again.to_string() == text
    assert again.terminals == grammar.terminals and again.nonterminals == grammar.nonterminals


def test_load_grammar_reads_a_pcfg_file(tmp_path):
    path = tmp_path / "tiny.pcfg"
    path.write_text("S -> 'a' S [0.4] | 'b' [0.6]\n")
    grammar = load_grammar(str(path), max_length=5)
    assert grammar.name == "tiny" and grammar.max_length == 5
    assert grammar.is_grammatical(["a", "a", "b"]) and not grammar.is_grammatical(["b", "a"])
    assert all(s[-1] == "b" and len(s) <= 5 for s in grammar.sample(50, seed=0))
    assert math.isclose(grammar.expected_length, 1 / 0.6)
    # A registry grammar written to disk loads back as the same grammar.
    dyck_path = tmp_path / "my_dyck.txt"
    dyck_path.write_text(get("dyck2").to_string())
    assert load_grammar(str(dyck_path)).sample(20, seed=3) == get("dyck2").sample(20, seed=3)


# ----------------------------------------------------------------------------------- errors


def test_unknown_grammar_name_lists_valid_names():
    with pytest.raises(GrammarError, match="unknown grammar 'nope'") as info:
        load_grammar("nope")
    assert all(name in str(info.value) for name in REGISTRY)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("S -> 'a' [1.0]\nS -> -> [0.5]", "line 2"),
        ("S -> 'a' [0.5]\n\nS -> 'b' 0.5", "line 3"),
        ("S -> Foo [1.0]\nFoo -> 'a' [0.5] | 'b' [0.3]", r"Foo sum to 0\.8"),
        ("S -> A 'b' [1.0]", "nonterminal A is used .* but has no productions"),
        ("", "empty"),
        ("  \n\t", "empty"),
        ("S -> S S [0.6] | 'a' [0.4]", "expected sentence length is infinite"),
        ("S -> S 'a' [1.0]", "never derives a finite sentence"),
        ("S -> A [1.0]\nA -> B [1.0]\nB -> A [1.0]", "never derives a finite sentence"),
        ("S -> 'a' [1.5]", "greater than 1"),
        ("S -> 'a' [0.5] | [0.5]", "empty production"),
    ],
)
def test_bad_grammar_text_gives_a_clear_error(text, pattern):
    with pytest.raises(GrammarError, match=pattern):
        Grammar.from_string(text)


@pytest.mark.parametrize("bad", [0, -1, -10, 2.5, "3", None, True])
def test_non_positive_or_non_integer_sample_counts_are_rejected(bad):
    grammar = get("dyck2")
    with pytest.raises(GrammarError, match="n must be a positive integer"):
        grammar.sample(bad)
    with pytest.raises(GrammarError, match="n must be a positive integer"):
        grammar.iter_samples(bad)


def test_numpy_integer_counts_are_accepted():
    assert get("dyck2").sample(np.int64(3), seed=1) == get("dyck2").sample(3, seed=1)


@pytest.mark.parametrize("bad", [0, -5])
def test_bad_max_length_is_rejected(bad):
    with pytest.raises(GrammarError, match="max_length"):
        get("expr").with_max_length(bad)


def test_max_length_below_the_shortest_sentence_is_rejected():
    """Otherwise rejection sampling would loop forever."""
    with pytest.raises(GrammarError, match="shortest sentence"):
        load_grammar("dyck2", max_length=1)
    with pytest.raises(GrammarError, match="shortest sentence"):
        get("english").with_max_length(1)
    assert get("english").with_max_length(2).sample(5, seed=0)  # "pro V" fits


def test_features_of_ungrammatical_sentence_raise():
    with pytest.raises(GrammarError, match="ungrammatical"):
        get("dyck2").features(["o0", "c1"])
    with pytest.raises(GrammarError, match="ungrammatical"):
        get("english").features(["pro1", OOV])


def test_unknown_feature_lists_valid_features():
    grammar = get("expr")
    with pytest.raises(GrammarError, match="no feature 'nope'") as info:
        grammar.feature_spec("nope")
    assert all(name in str(info.value) for name in grammar.feature_names)


def test_english_oct2024_is_the_rebuilt_sae_grammar_with_adj_n():
    """The authors' final create_grammar_english writes `Adj N` (PAPER.md §2.4, corrected): an
    adjective takes a bare noun. Their variant models' pickles (older code) stack adjectives."""
    rebuilt, variant = get("english-oct2024"), get("english-conj0.3")
    stacked, single = ["adj1", "adj2", "noun3", "verb4"], ["adj1", "noun3", "verb4"]
    assert rebuilt.is_grammatical(single) and not rebuilt.is_grammatical(stacked)
    assert variant.is_grammatical(stacked)
    assert all(len(p.rhs()) != 2 or str(p.rhs()[1]) != "NP" or str(p.rhs()[0]) != "Adj" for p in rebuilt.pcfg.productions())

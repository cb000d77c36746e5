"""The [`Grammar`][formal_sae.Grammar]: an ``nltk.PCFG`` with validation, fast sampling, exact parsing and features."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from nltk import PCFG, Nonterminal
from nltk.grammar import read_grammar, standard_nonterm_parser
from nltk.tree import ProbabilisticTree, Tree

from formal_sae.errors import GrammarError
from formal_sae.grammars.features import FeatureFn, FeatureSpec, generic_feature_specs, generic_features
from formal_sae.grammars.recognizer import ChartParser
from formal_sae.grammars.sampler import CompiledSampler

#: The paper's length rule: a sequence (7-token prompt + sentence + ``<eos>``) longer than 118
#: tokens is discarded and redrawn, so sentences have at most 110 tokens.
PAPER_MAX_LENGTH = 110

#: Tolerance on the sum of a nonterminal's production probabilities.
PROBABILITY_TOLERANCE = 1e-3


#: What sampling accepts as a seed: an int, or a numpy SeedSequence or Generator.
Seed = int | np.random.SeedSequence | np.random.Generator

#: An exact membership test: tokens -> grammatical?
Recognizer = Callable[[Sequence[str]], bool]

#: A sentence as the grammar's methods take it: a list or tuple of tokens, or one string of
#: whitespace-separated tokens (the dataset's ``text`` column).
Sentence = Sequence[str] | str


@dataclass(frozen=True)
class LanguageFeature:
    """A grammar-specific feature: its declaration and the function computing it."""

    spec: FeatureSpec
    compute: FeatureFn


class Grammar:
    """A probabilistic context-free grammar with everything formal-sae needs from it.

    Build one with [`formal_sae.load_grammar`][formal_sae.load_grammar] (the paper's grammars) or
    [`Grammar.from_string`][formal_sae.grammars.base.Grammar.from_string] (your own). The underlying ``nltk.PCFG`` is ``grammar.pcfg``.

    Args:
        pcfg: The grammar. Productions must not be empty (NLTK's Viterbi parser cannot parse them).
        name: Registry or user name, stored with datasets and models.
        max_length: Sentences longer than this are rejected and redrawn when sampling (the paper
            uses 110); ``None`` disables the limit.
        language_features: Grammar-specific features, in addition to the generic parse-tree ones.
        description: One line shown by ``formal-sae grammars``.
        recognizer: Optional exact linear-time membership test for this language (the built-in
            Dyck and Expr families have one); it must agree with the grammar on every input, which
            the test-suite checks against ``nltk.ViterbiParser``. Without it, chart parsing is used.
    """

    def __init__(
        self,
        pcfg: PCFG,
        name: str,
        max_length: int | None = PAPER_MAX_LENGTH,
        language_features: Sequence[LanguageFeature] = (),
        description: str = "",
        recognizer: Recognizer | None = None,
    ) -> None:
        if max_length is not None and max_length < 1:
            raise GrammarError(f"max_length must be a positive number of tokens or None, got {max_length}")
        _validate(pcfg)
        shortest = _shortest_length(pcfg)
        if max_length is not None and max_length < shortest:
            raise GrammarError(
                f"max_length={max_length} is below the grammar's shortest sentence ({shortest} tokens), so rejection "
                f"sampling would never stop; use max_length >= {shortest} or None"
            )
        self.pcfg = pcfg
        self.name = name
        self.max_length = max_length
        self.description = description or f"user grammar with {len(pcfg.productions())} productions"
        self._language_features = tuple(language_features)
        self._recognizer = recognizer
        self._sampler = CompiledSampler(pcfg)
        self._parser = ChartParser(pcfg)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_string(
        cls,
        text: str,
        name: str = "custom",
        max_length: int | None = PAPER_MAX_LENGTH,
        description: str = "",
        language_features: Sequence[LanguageFeature] = (),
        recognizer: Recognizer | None = None,
    ) -> Grammar:
        """Build a grammar from PCFG text in NLTK syntax (``A -> B C [0.5] | 'x' [0.5]``).

        The start symbol is the left-hand side of the first production. Raises
        [`GrammarError`][formal_sae.GrammarError] naming the line for malformed text, the
        nonterminal whose probabilities do not sum to 1, undefined or useless nonterminals, empty
        productions, and grammars whose expected sentence length is infinite. Messages are one line
        (they quote the offending text, whose line breaks are folded).
        """
        try:
            return cls(_parse_pcfg_text(text), name, max_length, language_features, description, recognizer)
        except GrammarError as e:
            raise GrammarError(" ".join(part.strip() for part in str(e).splitlines() if part.strip())) from None

    @classmethod
    def from_file(cls, path: str | os.PathLike, name: str | None = None, max_length: int | None = PAPER_MAX_LENGTH) -> Grammar:
        """Build a grammar from a PCFG text file (see [`from_string`][formal_sae.grammars.base.Grammar.from_string]), named after the file
        unless ``name`` is given. Every error names the file."""
        path = Path(path)
        if not path.is_file():
            raise GrammarError(f"grammar file {path} does not exist; fix the path or give a built-in grammar name")
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise GrammarError(f"grammar file {path} cannot be read as UTF-8 text ({e}); fix or restore the file") from None
        try:
            return cls.from_string(text, name=name or path.stem, max_length=max_length)
        except GrammarError as e:
            raise GrammarError(f"grammar file {path}: {e} (edit the file and run again)") from None

    def to_string(self) -> str:
        """The grammar as PCFG text that [`from_string`][formal_sae.grammars.base.Grammar.from_string] reads back to the same grammar."""
        lines = []
        for lhs in self.nonterminals:
            alts = " | ".join(
                " ".join(repr(x) if isinstance(x, str) else str(x) for x in p.rhs()) + f" [{p.prob():.10g}]"
                for p in self.pcfg.productions(lhs=Nonterminal(lhs))
            )
            lines.append(f"{lhs} -> {alts}")
        return "\n".join(lines) + "\n"

    def with_max_length(self, max_length: int | None) -> Grammar:
        """A copy of this grammar with another sentence-length limit."""
        return Grammar(self.pcfg, self.name, max_length, self._language_features, self.description, self._recognizer)

    # ------------------------------------------------------------------ vocabulary
    @cached_property
    def nonterminals(self) -> tuple[str, ...]:
        """Nonterminal names, start symbol first, then in order of first definition."""
        names = dict.fromkeys([self.pcfg.start().symbol()] + [p.lhs().symbol() for p in self.pcfg.productions()])
        return tuple(names)

    @cached_property
    def terminals(self) -> tuple[str, ...]:
        """Terminal tokens in order of first appearance in the grammar: the tokenizer's vocabulary order."""
        return tuple(dict.fromkeys(x for p in self.pcfg.productions() for x in p.rhs() if not isinstance(x, Nonterminal)))

    # ------------------------------------------------------------------ sampling
    def iter_samples(self, n: int, seed: Seed = 0) -> Iterator[list[str]]:
        """Yield ``n`` sentences lazily (see [`sample`][formal_sae.grammars.base.Grammar.sample]); ``seed`` may also be a numpy
        ``SeedSequence`` or ``Generator``."""
        _check_count(n, "n")
        return self._sampler.iter_samples(n, seed, self.max_length)

    def sample(self, n: int, seed: Seed = 0) -> list[list[str]]:
        """Draw ``n`` sentences (token lists) from the grammar.

        Seeded with its own generator (no global random state): the same seed gives the same
        sentences. Sentences over ``max_length`` tokens are rejected and redrawn, as in the paper.
        """
        return list(self.iter_samples(n, seed))

    @cached_property
    def expected_length(self) -> float:
        """Expected number of tokens of a sentence, before the length limit is applied."""
        return _expected_length(self.pcfg)

    # ------------------------------------------------------------------ parsing
    def is_grammatical(self, tokens: Sentence) -> bool:
        """True iff the grammar derives ``tokens`` (same verdict as ``nltk.ViterbiParser``).

        ``tokens`` is a list or tuple of tokens or a whitespace-separated string (``"o0 c0"``).
        Unknown tokens and empty sentences give False, never an exception. The length limit does
        not apply: it is a sampling rule, not part of the language.
        """
        tokens = _sentence_tokens(tokens)
        if self._recognizer is not None:
            return self._recognizer(tokens)
        return self._parser.recognize(tokens)

    def chart_recognize(self, tokens: Sentence) -> bool:
        """Membership by chart parsing, ignoring any language-specific recognizer (a cross-check)."""
        return self._parser.recognize(_sentence_tokens(tokens))

    def parse(self, tokens: Sentence) -> ProbabilisticTree | None:
        """The most probable parse tree of ``tokens`` (list, tuple or string), or None if it is not grammatical."""
        return self._parser.parse(_sentence_tokens(tokens))

    # ------------------------------------------------------------------ features
    @cached_property
    def feature_specs(self) -> tuple[FeatureSpec, ...]:
        """Declarations of every feature [`features`][formal_sae.grammars.base.Grammar.features] returns, in column order."""
        return tuple([f.spec for f in self._language_features] + generic_feature_specs(self.nonterminals))

    def features(self, tokens: Sentence, tree: Tree | None = None) -> dict[str, list[int]]:
        """Ground-truth features of a grammatical sentence: feature name -> one integer per token.

        ``tokens`` is a list, a tuple or a whitespace-separated string. Categorical values index
        ``spec.categories``; see [`feature_specs`][formal_sae.grammars.base.Grammar.feature_specs]. Pass ``tree`` to reuse a parse you
        already have. Raises [`GrammarError`][formal_sae.GrammarError] if ``tokens`` is not grammatical (features
        are defined by its parse).
        """
        tokens = _sentence_tokens(tokens)
        tree = tree if tree is not None else self.parse(tokens)
        if tree is None:
            raise GrammarError(
                f"cannot compute features of an ungrammatical sentence for grammar {self.name!r}: "
                f"{' '.join(tokens)!r}; check it with grammar.is_grammatical(tokens) first"
            )
        out = {f.spec.name: f.compute(tokens, tree) for f in self._language_features}
        out.update(generic_features(tree, self.feature_specs))
        return out

    def feature_spec(self, name: str) -> FeatureSpec:
        """The declaration of feature ``name`` (raises a GrammarError listing valid names)."""
        for spec in self.feature_specs:
            if spec.name == name:
                return spec
        raise GrammarError(f"grammar {self.name!r} has no feature {name!r}; its features are: {', '.join(self.feature_names)}")

    @property
    def feature_names(self) -> list[str]:
        return [s.name for s in self.feature_specs]

    def __repr__(self) -> str:
        return f"Grammar({self.name!r}, {len(self.pcfg.productions())} productions, {len(self.terminals)} terminals)"


# ---------------------------------------------------------------------- helpers


def _check_count(n: int, what: str) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise GrammarError(f"{what} must be a positive integer (the number of sentences to draw), got {n!r}")


def _sentence_tokens(sentence: Sentence) -> Sequence[str]:
    """The tokens of a sentence: a list or tuple as is, a string split on whitespace; anything else
    (ids, arrays, bytes, generators) is refused instead of silently giving False."""
    if isinstance(sentence, str):
        return sentence.split()
    if not isinstance(sentence, (list, tuple)):
        raise GrammarError(
            "a sentence must be a list or tuple of token strings or a whitespace-separated string, "
            f"got {type(sentence).__name__}; e.g. ['o0', 'c0'] or 'o0 c0'"
        )
    for i, token in enumerate(sentence):
        if not isinstance(token, str):
            raise GrammarError(
                f"sentence token {i} is {token!r} of type {type(token).__name__}, not a string; "
                "pass token strings (ids convert with tokenizer.convert_ids_to_tokens)"
            )
    return sentence


_PROB_LINE = re.compile(r"\S")


def _parse_pcfg_text(text: str) -> PCFG:
    if not isinstance(text, str) or not _PROB_LINE.search(text):
        raise GrammarError("grammar text is empty; give productions such as \"S -> 'a' S [0.4] | 'b' [0.6]\"")
    try:
        start, productions = read_grammar(text, standard_nonterm_parser, probabilistic=True)
    except ValueError as e:  # NLTK's message names the line: "Unable to parse line 3: ..."
        msg = str(e).replace("\n", " ")
        raise GrammarError(
            f'malformed grammar text: {msg}. Each line must look like "LHS -> RHS [p] | RHS [p]" '
            "with terminals in quotes and a probability in brackets after every alternative"
        ) from None
    if not productions:
        raise GrammarError("grammar text has no productions")
    _check_probability_sums(productions)
    return PCFG(start, productions)


def _check_probability_sums(productions) -> None:
    sums: dict[Nonterminal, float] = {}
    for p in productions:
        if not 0 <= p.prob() <= 1:
            raise GrammarError(f"production {p} has probability {p.prob()}, outside [0, 1]")
        sums[p.lhs()] = sums.get(p.lhs(), 0.0) + p.prob()
    for lhs, total in sums.items():
        if abs(total - 1) > PROBABILITY_TOLERANCE:
            raise GrammarError(
                f"the probabilities of the productions of {lhs} sum to {total:.6g}, not 1; "
                f"adjust the bracketed probabilities after each alternative of {lhs}"
            )


def _validate(pcfg: PCFG) -> None:
    defined = {p.lhs() for p in pcfg.productions()}
    for p in pcfg.productions():
        if not p.rhs():
            raise GrammarError(
                f"empty production {p.lhs()} -> [] is not supported (Viterbi parsing cannot handle it); rewrite the grammar without it"
            )
        undefined = [x for x in p.rhs() if isinstance(x, Nonterminal) and x not in defined]
        if undefined:
            raise GrammarError(
                f"nonterminal {undefined[0]} is used in '{p}' but has no productions; define it or quote it as a terminal ('{undefined[0]}')"
            )
    if pcfg.start() not in defined:
        raise GrammarError(f"the start symbol {pcfg.start()} has no productions")
    _check_productive(pcfg)
    length = _expected_length(pcfg)
    if not np.isfinite(length):
        raise GrammarError(
            "the grammar's expected sentence length is infinite, so sampling would never stop: the expected number of "
            "nonterminals produced per expansion (spectral radius of the expected-production matrix) is >= 1; "
            "lower the probabilities of the recursive productions"
        )


def _check_productive(pcfg: PCFG) -> None:
    """Every nonterminal must derive some terminal string with positive probability."""
    productive: set[Nonterminal] = set()
    grew = True
    while grew:
        grew = False
        for p in pcfg.productions():
            if (
                p.prob() > 0
                and p.lhs() not in productive
                and all(not isinstance(x, Nonterminal) or x in productive for x in p.rhs())
            ):
                productive.add(p.lhs())
                grew = True
    if pcfg.start() not in productive:
        raise GrammarError(f"the start symbol {pcfg.start()} never derives a finite sentence; every derivation recurses forever")


def _shortest_length(pcfg: PCFG) -> int:
    """Number of tokens of the shortest sentence derived with positive probability."""
    best: dict[Nonterminal, float] = {}
    grew = True
    while grew:
        grew = False
        for p in pcfg.productions():
            if p.prob() > 0:
                n = sum(best.get(x, float("inf")) if isinstance(x, Nonterminal) else 1 for x in p.rhs())
                if n < best.get(p.lhs(), float("inf")):
                    best[p.lhs()] = n
                    grew = True
    return int(best[pcfg.start()])


def _expected_length(pcfg: PCFG) -> float:
    """Expected number of terminals in a sentence: finite iff the expected-production matrix has
    spectral radius < 1 (Booth & Thompson, 1973)."""
    nts = list(dict.fromkeys([pcfg.start()] + [p.lhs() for p in pcfg.productions()]))
    idx = {a: i for i, a in enumerate(nts)}
    m = np.zeros((len(nts), len(nts)))
    terminals = np.zeros(len(nts))
    for p in pcfg.productions():
        for x in p.rhs():
            if isinstance(x, Nonterminal):
                m[idx[p.lhs()], idx[x]] += p.prob()
            else:
                terminals[idx[p.lhs()]] += p.prob()
    if max(abs(np.linalg.eigvals(m))) >= 1 - 1e-9:
        return float("inf")
    return float(np.linalg.solve(np.eye(len(nts)) - m, terminals)[0])


def tokens_feature(fn: Callable[[Sequence[str]], list[int]]) -> FeatureFn:
    """Adapt a feature computed from the tokens alone to the (tokens, tree) signature."""
    return lambda tokens, tree: fn(tokens)

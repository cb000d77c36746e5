"""Fast ancestral sampling from a PCFG.

The straightforward sampler expands every nonterminal recursively with ``random.choices``. This
one draws from exactly the same distribution, faster, by:

* **inlining** nonterminals into the rules that use them (``Digit -> dig0 | ...`` disappears into
  ``Expr -> dig0 | ... | un0 Expr | ...``), so one random draw replaces a chain of expansions;
* expanding with an explicit stack and pre-computed cumulative tables (no recursion, no
  per-call weight lists);
* rejecting a sentence **as soon as** it exceeds the length limit instead of finishing it (a
  near-critical grammar such as Dyck-2 would otherwise spend most of its time on sentences that
  are thrown away);
* drawing uniform numbers in blocks from its own ``numpy`` generator (seeded; no global state).

NLTK has no sampler (``nltk.parse.generate`` enumerates, it does not sample), hence this module.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from itertools import accumulate

import numpy as np
from nltk import PCFG, Nonterminal

_RANDOM_BLOCK = 8192

# An alternative: (probability, right-hand side), where the right-hand side holds terminal strings
# and nonterminal symbols.
_Alternative = tuple[float, tuple]


def _inline(rules: dict[Nonterminal, list[_Alternative]], start: Nonterminal, max_alternatives: int) -> None:
    """Substitute nonterminals into their users while the tables stay small (in place).

    A nonterminal ``B`` other than the start symbol whose own rules do not mention ``B`` is
    removed by replacing each use with each of its alternatives (probabilities multiply). This
    keeps the distribution over terminal strings unchanged.
    """
    changed = True
    while changed:
        changed = False
        for b in sorted(rules, key=lambda s: len(rules[s])):
            if b == start or any(b in rhs for _, rhs in rules[b]):
                continue
            new_rules = {a: _substitute(alts, b, rules[b]) for a, alts in rules.items() if a != b}
            if max(len(alts) for alts in new_rules.values()) > max_alternatives:
                continue
            rules.clear()
            rules.update(new_rules)
            changed = True
            break


def _substitute(alternatives: list[_Alternative], b: Nonterminal, b_alts: list[_Alternative]) -> list[_Alternative]:
    out: list[_Alternative] = []
    for p, rhs in alternatives:
        partial: list[_Alternative] = [(p, ())]
        for sym in rhs:
            if sym == b:
                partial = [(q * pb, pre + rb) for q, pre in partial for pb, rb in b_alts]
            else:
                partial = [(q, (*pre, sym)) for q, pre in partial]
        out.extend(partial)
    return out


class CompiledSampler:
    """Samples sentences (lists of terminal strings) from a PCFG. Build once, sample many times."""

    def __init__(self, pcfg: PCFG, max_alternatives: int = 1024) -> None:
        rules: dict[Nonterminal, list[_Alternative]] = {}
        for prod in pcfg.productions():
            if prod.prob() > 0:
                rules.setdefault(prod.lhs(), []).append((prod.prob(), tuple(prod.rhs())))
        _inline(rules, pcfg.start(), max_alternatives)
        symbols = list(rules)
        index = {s: i for i, s in enumerate(symbols)}
        self._start = index[pcfg.start()]
        # Per symbol: cumulative probabilities, and per alternative the terminals it starts with
        # (emitted at once) and the rest in reverse (pushed on the stack; symbols as ints).
        self._cumulative: list[list[float]] = []
        self._heads: list[list[tuple[str, ...]]] = []
        self._tails: list[list[tuple]] = []
        for s in symbols:
            probs = [p for p, _ in rules[s]]
            total = sum(probs)
            self._cumulative.append([c / total for c in accumulate(probs)][:-1])
            heads, tails = [], []
            for _, rhs in rules[s]:
                n_head = next((i for i, x in enumerate(rhs) if isinstance(x, Nonterminal)), len(rhs))
                heads.append(tuple(rhs[:n_head]))
                tails.append(tuple(index[x] if isinstance(x, Nonterminal) else x for x in reversed(rhs[n_head:])))
            self._heads.append(heads)
            self._tails.append(tails)

    def iter_samples(self, n: int, seed, max_length: int | None) -> Iterator[list[str]]:
        """Yield ``n`` sentences of at most ``max_length`` tokens (longer ones are redrawn).

        ``seed`` is anything ``numpy.random.default_rng`` accepts (a Generator is used as is)."""
        rng = np.random.default_rng(seed)
        limit = max_length if max_length is not None else float("inf")
        cumulative, heads, tails, start = self._cumulative, self._heads, self._tails, self._start
        uniforms: list[float] = []
        produced = 0
        while produced < n:
            out: list[str] = []
            stack: list = [start]
            while stack:
                sym = stack.pop()
                if sym.__class__ is str:
                    out.append(sym)
                else:
                    if not uniforms:
                        uniforms = rng.random(_RANDOM_BLOCK).tolist()
                    choice = bisect_right(cumulative[sym], uniforms.pop())
                    out.extend(heads[sym][choice])
                    stack.extend(tails[sym][choice])
                if len(out) > limit:
                    break
            else:
                produced += 1
                yield out


def naive_sample(pcfg: PCFG, n: int, seed: int, max_length: int | None) -> list[list[str]]:
    """The straightforward recursive sampler: the paper's ``ProbabilisticGenerator``, kept as a baseline.

    As in the authors' code, each nonterminal is expanded recursively by looking up its productions
    in the grammar and calling ``random.choices(productions, weights=[p.prob() ...])``, and a
    sentence longer than ``max_length`` is generated in full and then rejected. Used by the
    benchmark and by the tests that check both samplers give the same distribution.
    """
    import random
    import sys

    rng = random.Random(seed)

    def expand(sym: object, out: list[str]) -> None:
        if not isinstance(sym, Nonterminal):
            out.append(sym)  # type: ignore[arg-type]
            return
        productions = pcfg.productions(lhs=sym)
        for child in rng.choices(productions, weights=[p.prob() for p in productions])[0].rhs():
            expand(child, out)

    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, 100_000))
    try:
        result: list[list[str]] = []
        while len(result) < n:
            out: list[str] = []
            try:
                expand(pcfg.start(), out)
            except RecursionError:  # a sentence so deep it is certainly over any sane limit
                continue
            if max_length is None or len(out) <= max_length:
                result.append(out)
        return result
    finally:
        sys.setrecursionlimit(old_limit)

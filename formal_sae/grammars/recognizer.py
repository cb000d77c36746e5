"""Exact, fast grammaticality checks and most-probable parses for any PCFG.

``nltk.ViterbiParser`` (the paper's check) fills a chart of trees for every span and every
production in pure Python; it is exact but slow. This module gives the same verdicts faster:

* `ChartParser.recognize` is CKY over a binarised copy of the grammar, driven by the
  constituents that exist (end positions kept as integer bit sets) instead of by every span and
  split point. Verdicts are memoised per *lexical signature* (the pre-terminals each token can
  be), which is exact.
* `ChartParser.parse` runs Viterbi only over the cells that the recogniser marked, top
  down from the root, so it never scores a constituent that cannot be part of a parse.

Verdicts equal ``ViterbiParser``'s: a sentence is grammatical iff some derivation exists, even one
that uses a probability-0 production (``ViterbiParser`` keeps such trees when nothing better
covers the span; here they are ranked below every positive-probability tree). Tokens outside the
vocabulary make a sentence ungrammatical instead of raising.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from nltk import PCFG, Nonterminal
from nltk.tree import ProbabilisticTree

# Log-probability given to a probability-0 production: finite so that such derivations still
# count (as in ViterbiParser), and so low that any positive-probability tree outranks them.
_ZERO_LOGPROB = -1e12


# Bound on memoised verdicts (one per distinct lexical signature); the memo is reset when full.
_MAX_MEMOISED = 200_000


def _logprob(p: float) -> float:
    return math.log(p) if p > 0 else _ZERO_LOGPROB


class ChartParser:
    """CKY recogniser and Viterbi parser for a PCFG without empty productions."""

    def __init__(self, pcfg: PCFG) -> None:
        self.start = pcfg.start()
        self._labels: list[object] = []  # per symbol: a Nonterminal, ("T", token) or ("@", suffix)
        self._index: dict[object, int] = {}
        self.lexical: dict[str, list[tuple[int, float]]] = {}
        self.unary: list[tuple[int, int, float]] = []
        self.binary: list[tuple[int, int, int, float]] = []
        for prod in pcfg.productions():
            self._add_production(prod.lhs(), prod.rhs(), _logprob(prod.prob()))
        self._closure_cache: dict[int, int] = {}
        self._verdicts: dict[tuple[int, ...], bool] = {}
        self._bits_cache: dict[int, tuple[int, ...]] = {}
        pair_masks: dict[tuple[int, int], int] = {}
        for a, b, c, _ in self.binary:
            pair_masks[b, c] = pair_masks.get((b, c), 0) | 1 << a
        # Per left symbol B: the (C, mask of every A with A -> B C) it can combine with.
        self._right_of: list[tuple[tuple[int, int], ...]] = [
            tuple((c, m) for (b, c), m in pair_masks.items() if b == left) for left in range(len(self._labels))
        ]
        self._left_mask = self._mask(b for b, _ in pair_masks)
        self.lexical_masks = {tok: self._closure(self._mask(a for a, _ in rules)) for tok, rules in self.lexical.items()}
        self._start_bit = 1 << self._symbol(self.start)

    # ----------------------------------------------------------------- binarisation
    def _symbol(self, label: object) -> int:
        if label not in self._index:
            self._index[label] = len(self._labels)
            self._labels.append(label)
        return self._index[label]

    def _rhs_symbol(self, item: object) -> int:
        if isinstance(item, Nonterminal):
            return self._symbol(item)
        pre = self._symbol(("T", item))
        self.lexical.setdefault(item, [])
        if (pre, 0.0) not in self.lexical[item]:
            self.lexical[item].append((pre, 0.0))
        return pre

    def _add_production(self, lhs: Nonterminal, rhs: Sequence[object], logp: float) -> None:
        a = self._symbol(lhs)
        if len(rhs) == 1 and not isinstance(rhs[0], Nonterminal):
            self.lexical.setdefault(rhs[0], []).append((a, logp))  # type: ignore[arg-type]
        elif len(rhs) == 1:
            self.unary.append((a, self._symbol(rhs[0]), logp))
        else:
            syms = [self._rhs_symbol(x) for x in rhs]
            while len(syms) > 2:  # right-binarise: A -> x1 @(x2..xk), @(x2..xk) -> x2 @(x3..xk) ...
                rest = self._symbol(("@", tuple(syms[1:])))
                self.binary.append((a, syms[0], rest, logp))
                a, syms, logp = rest, syms[1:], 0.0
            self.binary.append((a, syms[0], syms[1], logp))

    # ----------------------------------------------------------------- recognition
    @staticmethod
    def _mask(symbols) -> int:
        m = 0
        for s in symbols:
            m |= 1 << s
        return m

    def _closure(self, mask: int) -> int:
        """All symbols derivable from ``mask`` by chains of unary productions."""
        cached = self._closure_cache.get(mask)
        if cached is None:
            cached, grew = mask, True
            while grew:
                grew = False
                for a, b, _ in self.unary:
                    if cached >> b & 1 and not cached >> a & 1:
                        cached |= 1 << a
                        grew = True
            self._closure_cache[mask] = cached
        return cached

    def _bits(self, mask: int) -> tuple[int, ...]:
        cached = self._bits_cache.get(mask)
        if cached is None:
            cached = self._bits_cache[mask] = tuple(s for s in range(mask.bit_length()) if mask >> s & 1)
        return cached

    def lexical_signature(self, tokens: Sequence[str]) -> tuple[int, ...] | None:
        """Per token, the bit set of symbols deriving it; None if a token is not in the vocabulary.

        Membership depends on the tokens only through this signature, which is why verdicts can
        be memoised per signature (many sentences share one: ``adj3 noun1`` and ``adj7 noun0``).
        """
        get = self.lexical_masks.get
        masks = tuple(get(tok, 0) for tok in tokens)
        return None if 0 in masks else masks

    def chart(self, signature: Sequence[int]) -> list[list[int]]:
        """CKY chart of symbol bit sets: ``chart[i][j]`` covers tokens ``i..j-1`` of a sentence
        with this `lexical_signature`.

        Driven by the constituents that exist rather than by all spans: for a start ``i``, the
        cells ``(i, k)`` are completed for ``k`` ascending, and each left child ``B`` over
        ``(i, k)`` is combined at once with every right child ``C`` starting at ``k``, whose end
        positions are kept as one integer bit set (``ends[k][C]``).
        """
        n, n_sym = len(signature), len(self._labels)
        right_of, left_mask, closure, bits = self._right_of, self._left_mask, self._closure, self._bits
        rows: list[list[int]] = [[0] * (n + 1) for _ in range(n + 1)]
        ends = [[0] * n_sym for _ in range(n + 1)]  # ends[i][C]: bit set of j such that C covers (i, j)
        for i in range(n - 1, -1, -1):
            cell, ends_i = rows[i], ends[i]
            cell[i + 1] = signature[i]
            for k in range(i + 1, n + 1):
                m = cell[k]
                if not m:
                    continue
                m = cell[k] = closure(m)
                bit_k = 1 << k
                for sym in bits(m):
                    ends_i[sym] |= bit_k
                if k == n:
                    break
                ends_k = ends[k]
                for b in bits(m & left_mask):
                    for c, a_mask in right_of[b]:
                        js = ends_k[c]
                        while js:
                            low = js & -js
                            cell[low.bit_length() - 1] |= a_mask
                            js ^= low
        return rows

    def recognize(self, tokens: Sequence[str]) -> bool:
        """True iff ``tokens`` has a derivation from the start symbol."""
        signature = self.lexical_signature(tokens)
        if not signature:
            return False
        verdict = self._verdicts.get(signature)
        if verdict is None:
            if len(self._verdicts) >= _MAX_MEMOISED:
                self._verdicts.clear()
            verdict = self._verdicts[signature] = bool(self.chart(signature)[0][-1] & self._start_bit)
        return verdict

    # ----------------------------------------------------------------- Viterbi parse
    def parse(self, tokens: Sequence[str]) -> ProbabilisticTree | None:
        """The most probable parse tree, or None if the sentence is ungrammatical.

        Ties between equally probable trees go to the first split point from the left.
        """
        tokens = list(tokens)
        signature = self.lexical_signature(tokens)
        if not signature:
            return None
        rows = self.chart(signature)
        if not rows[0][len(tokens)] & self._start_bit:
            return None
        memo: dict[tuple[int, int], dict[int, tuple[float, tuple]]] = {}

        def cell(i: int, j: int) -> dict[int, tuple[float, tuple]]:
            if (i, j) in memo:
                return memo[i, j]
            best: dict[int, tuple[float, tuple]] = {}
            if j == i + 1:
                for a, lp in self.lexical[tokens[i]]:
                    if a not in best or lp > best[a][0]:
                        best[a] = (lp, ("lex",))
            for k in range(i + 1, j):
                left, right = rows[i][k], rows[k][j]
                if not (left and right):
                    continue
                lcell = rcell = None
                for a, b, c, lp in self.binary:
                    if left >> b & 1 and right >> c & 1:
                        lcell = lcell or cell(i, k)
                        rcell = rcell or cell(k, j)
                        score = lp + lcell[b][0] + rcell[c][0]
                        if a not in best or score > best[a][0]:
                            best[a] = (score, ("bin", k, b, c))
            improved = True
            while improved:  # unary chains; log-probs <= 0, so no cycle can keep improving
                improved = False
                for a, b, lp in self.unary:
                    if b in best and (a not in best or lp + best[b][0] > best[a][0]):
                        best[a] = (lp + best[b][0], ("un", b))
                        improved = True
            memo[i, j] = best
            return best

        def build(i: int, j: int, sym: int) -> list:
            score, back = cell(i, j)[sym]
            if back[0] == "lex":
                children: list = [tokens[i]]
            elif back[0] == "un":
                children = build(i, j, back[1])
            else:
                _, k, b, c = back
                children = build(i, k, b) + build(k, j, c)
            label = self._labels[sym]
            if isinstance(label, Nonterminal):
                return [ProbabilisticTree(label.symbol(), children, logprob=score / math.log(2))]
            return children  # pre-terminals of inline terminals and binarisation symbols dissolve

        return build(0, len(tokens), self._symbol(self.start))[0]

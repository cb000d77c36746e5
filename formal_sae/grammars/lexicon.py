"""The paper's lexical probabilities ([The paper: lexical probabilities][paper-lexical-probabilities]: seed 42, Dirichlet alpha = 1e5).

The authors drew these once from a near-uniform Dirichlet; formal-sae uses the published values
instead of re-drawing them. A category of another size than the published one is uniform.
"""

from __future__ import annotations

from formal_sae.errors import GrammarError

_TEN_A = (0.100137, 0.099936, 0.099906, 0.099906, 0.100480, 0.100222, 0.099831, 0.100151, 0.100056, 0.099376)

PUBLISHED: dict[str, tuple[float, ...]] = {
    "noun": _TEN_A,
    "dig": _TEN_A,
    "verb": (0.099738, 0.100158, 0.100523, 0.099987, 0.099886, 0.100094, 0.099869, 0.099966, 0.100054, 0.099724),
    "adj": (0.100274, 0.099628, 0.099594, 0.100076, 0.100247, 0.100068, 0.099977, 0.099919, 0.099868, 0.100348),
    "pro": (0.100102, 0.099877, 0.099785, 0.100193, 0.100326, 0.100294, 0.099734, 0.099901, 0.099848, 0.099940),
    "adv": (0.100151, 0.100323, 0.100009, 0.099691, 0.099883, 0.100389, 0.099922, 0.099800, 0.099825, 0.100007),
    "conj": (0.099728, 0.099825, 0.100273, 0.100087, 0.100014, 0.100290, 0.099761, 0.099880, 0.100077, 0.100066),
    "tverb": (0.199360, 0.200199, 0.200928, 0.199857, 0.199656),
    "iverb": (0.200305, 0.199854, 0.200050, 0.200226, 0.199565),
    "relp": (0.499213, 0.500787),
    "rela": (0.499553, 0.500447),
    "prep": (0.332543, 0.333592, 0.333865),
    "un": (0.331997, 0.333394, 0.334609),
    "bin": (0.333327, 0.332991, 0.333682),
    "tern": (0.333018, 0.333344, 0.333638),
}


def lexical_rule(category: str, prefix: str, n: int) -> str:
    """``Category -> 'prefix0' [p0] | ... | 'prefix{n-1}' [p]``, with the published probabilities."""
    if n < 1:
        raise GrammarError(f"category {category} needs at least one token, got {n}")
    probs = PUBLISHED.get(prefix, ())
    if len(probs) != n:
        probs = (1 / n,) * n
    total = sum(probs)  # the published values are rounded to 6 digits: renormalise exactly
    return f"{category} -> " + " | ".join(f"'{prefix}{i}' [{p / total:.10g}]" for i, p in enumerate(probs))

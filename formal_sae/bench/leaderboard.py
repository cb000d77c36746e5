"""The benchmark's leaderboard: each panel cell's scores over seeds, placed between a floor and a ceiling.

A cell (`group_key`) is one architecture at one width and one L0 target; its seeds are averaged
into one `LeaderboardRow` per language, and the rows of cells present in every language are
averaged again into the overall board (grammar ``'all'``). The ground-truth scores are also given
normalised, so that languages of different difficulty compare:

    norm = (score - floor) / (ceiling - floor)

with floor the untrained SAE of the same width (family ``'floor'``: what a random dictionary of
that size scores) and ceiling the probe dictionary (family ``'ceiling'``: the features' own
directions). 0 is no better than chance, 1 is as good as knowing the features.

`build_leaderboard` makes the rows; `write_leaderboard` writes them as JSON, CSV and markdown;
`formal_sae.bench.pareto` draws them.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from formal_sae.bench.score import BenchScore
from formal_sae.io import atomic_write_text, write_json
from formal_sae.plotting import MISSING, number
from formal_sae.records import Record

#: The grammar of the overall board's rows (the mean over languages).
OVERALL = "all"
#: The metrics of `BenchScore` a row averages over seeds (``<metric>_mean``, ``<metric>_std``).
METRICS = (
    "explained_variance",
    "ce_loss_score",
    "kl_div_score",
    "validity",
    "l0",
    "dead_fraction",
    "dense_fraction",
    "structural_score",
    "lexical_score",
    "coverage",
    "mcc",
    "absorption",
    "gap_closure",
    "not_causal_rate",
    "causal_loss",
    "linearity_error",
    "predictability",
)
#: The ground-truth metrics given normalised between floor and ceiling, and their row fields.
NORMALISED = {"structural_score": "structural_norm", "lexical_score": "lexical_norm", "mcc": "mcc_norm"}

LEADERBOARD_JSON = "leaderboard.json"
LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"


def group_key(score: BenchScore) -> str:
    """The panel cell a score belongs to across seeds, e.g. ``'topk/x4/l0=16'`` (``l0=none`` for a
    dictionary with no L0 target, such as a baseline)."""
    l0 = "none" if score.l0_target is None else f"{score.l0_target:g}"
    return f"{score.architecture}/x{score.expansion_factor:g}/l0={l0}"


@dataclass(eq=False)
class LeaderboardRow(Record):
    """One cell of the panel on one language (or on all of them: grammar ``'all'``).

    Each metric is summarised over the cell's seeds as ``<metric>_mean`` (over the seeds that
    measured it; a NaN counts as not measured) and ``<metric>_std`` (sample standard deviation,
    ``ddof=1``; None below two seeds). On the overall board each is the mean over languages of the
    languages' values (where defined), and ``n_seeds`` the fewest seeds of any language.
    """

    grammar: str
    """the language, or ``'all'`` for the mean over languages"""
    group: str
    """the cell (`group_key`)"""
    architecture: str
    family: str
    """'sae', 'floor', 'baseline' or 'ceiling' (`formal_sae.bench.score.FAMILIES`)"""
    expansion_factor: float
    l0_target: float | None
    n_seeds: int
    explained_variance_mean: float | None
    explained_variance_std: float | None
    ce_loss_score_mean: float | None
    ce_loss_score_std: float | None
    kl_div_score_mean: float | None
    kl_div_score_std: float | None
    validity_mean: float | None
    validity_std: float | None
    l0_mean: float | None
    l0_std: float | None
    dead_fraction_mean: float | None
    dead_fraction_std: float | None
    dense_fraction_mean: float | None
    dense_fraction_std: float | None
    structural_score_mean: float | None
    structural_score_std: float | None
    lexical_score_mean: float | None
    lexical_score_std: float | None
    coverage_mean: float | None
    coverage_std: float | None
    mcc_mean: float | None
    mcc_std: float | None
    absorption_mean: float | None
    absorption_std: float | None
    gap_closure_mean: float | None
    gap_closure_std: float | None
    not_causal_rate_mean: float | None
    not_causal_rate_std: float | None
    causal_loss_mean: float | None
    causal_loss_std: float | None
    linearity_error_mean: float | None
    linearity_error_std: float | None
    predictability_mean: float | None
    predictability_std: float | None
    stability: float | None
    """cross-seed decoder consistency (`formal_sae.bench.stability.decoder_stability`), as given"""
    structural_norm: float | None
    """(structural - floor) / (ceiling - floor); None without a floor or a ceiling above it"""
    lexical_norm: float | None
    """the same normalisation of the lexical score"""
    mcc_norm: float | None
    """the same normalisation of the MCC"""
    structural_floor: float | None
    """the floor of ``structural_norm``: mean structural score of the language's untrained SAEs
    of this width (of any width when there is none); None on the overall board"""
    structural_ceiling: float | None
    """the ceiling of ``structural_norm``: mean structural score of the language's probe
    dictionaries; None on the overall board"""
    structural_ci_low: float | None
    """lower end of a 95% Student-t interval of the structural mean over seeds:
    mean - t(0.975, n-1) std / sqrt(n); None below two seeds. On the overall board, the interval
    of the mean over languages, sqrt(sum of std^2 / n) / (languages), with the fewest seeds' t"""
    structural_ci_high: float | None
    """upper end of that interval"""


def build_leaderboard(scores: Sequence[BenchScore], stability: Mapping[str, float | None] | None = None) -> list[LeaderboardRow]:
    """The leaderboard of ``scores``: one row per language and cell, then the overall rows.

    Args:
        scores: every scored dictionary of the run, all seeds, floors, baselines and ceilings.
        stability: cross-seed stability per cell, keyed by ``f"{grammar}/{group_key}"`` (one
            language) or by ``group_key`` alone (the same value for every language).

    Returns:
        The per-language rows and the overall rows (grammar ``'all'``: cells present in every
        language), sorted by grammar, then by ``structural_norm`` descending (None last), then by
        the structural mean. Floors, ceilings and baselines are rows like the SAEs, told apart by
        their ``family``.
    """
    stability = stability or {}
    cells: dict[tuple[str, str], list[BenchScore]] = {}
    for score in scores:
        cells.setdefault((score.grammar, group_key(score)), []).append(score)
    rows = [_cell_row(grammar, key, cell, scores, stability) for (grammar, key), cell in cells.items()]
    rows += _overall_rows(rows, cells)
    return sorted(rows, key=_rank)


def _cell_row(
    grammar: str, key: str, cell: list[BenchScore], scores: Sequence[BenchScore], stability: Mapping[str, float | None]
) -> LeaderboardRow:
    first = cell[0]
    summary = {}
    for metric in METRICS:
        values = [getattr(s, metric) for s in cell]
        summary[f"{metric}_mean"], summary[f"{metric}_std"] = _mean(values), _std(values)
    norms, floor, ceiling = {}, None, None
    for metric, norm in NORMALISED.items():
        lo = _reference(scores, "floor", metric, grammar, first.expansion_factor)
        hi = _reference(scores, "ceiling", metric, grammar)
        norms[norm] = _normalise(summary[f"{metric}_mean"], lo, hi)
        if metric == "structural_score":
            floor, ceiling = lo, hi
    mean, std = summary["structural_score_mean"], summary["structural_score_std"]
    n = len(_present(s.structural_score for s in cell))
    half = None if std is None or n < 2 else _t95(n) * std / math.sqrt(n)
    return LeaderboardRow(
        grammar=grammar,
        group=key,
        architecture=first.architecture,
        family=first.family,
        expansion_factor=first.expansion_factor,
        l0_target=first.l0_target,
        n_seeds=len(cell),
        **summary,
        stability=stability.get(f"{grammar}/{key}", stability.get(key)),
        **norms,
        structural_floor=floor,
        structural_ceiling=ceiling,
        structural_ci_low=None if half is None else mean - half,
        structural_ci_high=None if half is None else mean + half,
    )


def _overall_rows(rows: list[LeaderboardRow], cells: Mapping[tuple[str, str], list[BenchScore]]) -> list[LeaderboardRow]:
    grammars = {row.grammar for row in rows}
    by_group: dict[str, list[LeaderboardRow]] = {}
    for row in rows:
        by_group.setdefault(row.group, []).append(row)
    overall = []
    for key, group in by_group.items():
        if len(group) < len(grammars):  # a cell missing from a language has no overall score
            continue
        averaged = {
            name: _mean(getattr(row, name) for row in group)
            for name in (
                *(f"{m}_{part}" for m in METRICS for part in ("mean", "std")),
                "stability",
                *NORMALISED.values(),
            )
        }
        # the interval of a mean over languages: the languages' seeds are independent, so variances add
        stds = [row.structural_score_std for row in group]
        counts = [len(_present(s.structural_score for s in cells[(row.grammar, key)])) for row in group]
        half = None
        if all(s is not None for s in stds) and min(counts) >= 2:
            half = _t95(min(counts)) * math.sqrt(sum(s**2 / n for s, n in zip(stds, counts))) / len(group)
        mean = averaged["structural_score_mean"]
        first = group[0]
        overall.append(
            LeaderboardRow(
                grammar=OVERALL,
                group=key,
                architecture=first.architecture,
                family=first.family,
                expansion_factor=first.expansion_factor,
                l0_target=first.l0_target,
                n_seeds=min(row.n_seeds for row in group),
                **averaged,
                structural_floor=None,
                structural_ceiling=None,
                structural_ci_low=None if half is None or mean is None else mean - half,
                structural_ci_high=None if half is None or mean is None else mean + half,
            )
        )
    return overall


def _present(values: Iterable[float | None]) -> list[float]:
    """The measured values: neither None nor NaN."""
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def _mean(values: Iterable[float | None]) -> float | None:
    present = _present(values)
    return float(np.mean(present)) if present else None


def _std(values: Iterable[float | None]) -> float | None:
    present = _present(values)
    return float(np.std(present, ddof=1)) if len(present) >= 2 else None


def _reference(
    scores: Sequence[BenchScore], family: str, metric: str, grammar: str, expansion_factor: float | None = None
) -> float | None:
    """The mean ``metric`` of the language's dictionaries of ``family``, of the given width when
    there are any (a random dictionary's chance score grows with its width)."""
    same = [s for s in scores if s.family == family and s.grammar == grammar]
    if expansion_factor is not None:
        width = _mean(getattr(s, metric) for s in same if s.expansion_factor == expansion_factor)
        if width is not None:
            return width
    return _mean(getattr(s, metric) for s in same)


def _normalise(value: float | None, floor: float | None, ceiling: float | None) -> float | None:
    if value is None or floor is None or ceiling is None or ceiling <= floor:
        return None
    return (value - floor) / (ceiling - floor)


def _t95(n: int) -> float:
    """The Student-t quantile of a two-sided 95% interval of a mean of ``n`` values."""
    return float(stats.t.ppf(0.975, n - 1))


def _rank(row: LeaderboardRow) -> tuple:
    norm, mean = row.structural_norm, row.structural_score_mean
    return (row.grammar, norm is None, -(norm or 0.0), mean is None, -(mean or 0.0), row.group)


# ---- writers ---------------------------------------------------------------------------------


def write_leaderboard(rows: Sequence[LeaderboardRow], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``rows`` to ``out_dir`` as `LEADERBOARD_JSON` (a list of the rows' dicts),
    `LEADERBOARD_CSV` (one line per row, empty cells for None) and `LEADERBOARD_MD` (a table per
    language, 'mean ± std' cells); returns the paths by format (``'json'``, ``'csv'``, ``'md'``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / LEADERBOARD_JSON, "csv": out / LEADERBOARD_CSV, "md": out / LEADERBOARD_MD}
    write_json(paths["json"], [row.to_dict() for row in rows])
    atomic_write_text(paths["csv"], _csv(rows))
    atomic_write_text(paths["md"], leaderboard_markdown(rows))
    return paths


def _csv(rows: Sequence[LeaderboardRow]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[f.name for f in dataclasses.fields(LeaderboardRow)], lineterminator="\n")
    writer.writeheader()
    writer.writerows(row.to_dict() for row in rows)
    return buf.getvalue()


#: The markdown table's columns: header and the metric shown as 'mean ± std' (or a row field).
_MD_COLUMNS = (
    ("structural (norm)", "structural_norm"),
    ("structural", "structural_score"),
    ("95% CI", None),
    ("lexical (norm)", "lexical_norm"),
    ("MCC (norm)", "mcc_norm"),
    ("coverage", "coverage"),
    ("absorption ↓", "absorption"),
    ("expl. var.", "explained_variance"),
    ("CE score", "ce_loss_score"),
    ("KL score", "kl_div_score"),
    ("validity", "validity"),
    ("L0", "l0"),
    ("dead", "dead_fraction"),
    ("dense", "dense_fraction"),
    ("gap closure", "gap_closure"),
    ("not causal ↓", "not_causal_rate"),
    ("causal loss ↓", "causal_loss"),
    ("linearity err. ↓", "linearity_error"),
    ("predictability", "predictability"),
    ("stability", "stability"),
)


def leaderboard_markdown(rows: Sequence[LeaderboardRow]) -> str:
    """The leaderboard as markdown: one table per language (the overall board first), rows in
    leaderboard order, floors, ceilings and baselines labelled after their name."""
    lines = [
        "# Leaderboard",
        "",
        "Cells are mean ± std over seeds. `(norm)`: (score - floor) / (ceiling - floor), where the floor "
        "is the untrained SAE of the same width and the ceiling the probe dictionary (0: chance, 1: the "
        "features' own directions). 95% CI: Student-t interval of the structural mean over seeds. "
        "↓: lower is better.",
    ]
    header = ["#", "dictionary", "width", "L0 target", "seeds", *(title for title, _ in _MD_COLUMNS)]
    for grammar in sorted({row.grammar for row in rows}, key=lambda g: (g != OVERALL, g)):
        title = "all languages (mean over languages)" if grammar == OVERALL else grammar
        lines += ["", f"## {title}", "", _md_line(header), _md_line(["---"] * len(header))]
        for rank, row in enumerate((r for r in rows if r.grammar == grammar), start=1):
            l0 = MISSING if row.l0_target is None else f"{row.l0_target:g}"
            cells = [str(rank), row_label(row), f"x{row.expansion_factor:g}", l0, str(row.n_seeds)]
            cells += [_md_cell(row, field) for _, field in _MD_COLUMNS]
            lines.append(_md_line(cells))
    return "\n".join(lines) + "\n"


def row_label(row: LeaderboardRow) -> str:
    """The architecture, tagged with its family when it is not a trained SAE."""
    tag = {"floor": " (floor)", "ceiling": " (ceiling)", "baseline": " (baseline)"}.get(row.family, "")
    return row.architecture + tag


def _md_cell(row: LeaderboardRow, field: str | None) -> str:
    if field is None:
        low, high = row.structural_ci_low, row.structural_ci_high
        return MISSING if low is None or high is None else f"[{number(low)}, {number(high)}]"
    if field not in METRICS:
        return number(getattr(row, field))
    mean, std = getattr(row, f"{field}_mean"), getattr(row, f"{field}_std")
    return number(mean) if mean is None or std is None else f"{number(mean)} ± {number(std)}"


def _md_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

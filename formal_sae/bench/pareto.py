"""The leaderboard's trade-offs drawn with their Pareto fronts: sparsity against fidelity and
against ground truth, ground truth against causal effect (one subplot per language)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from formal_sae.bench.leaderboard import OVERALL, LeaderboardRow, build_leaderboard, row_label
from formal_sae.bench.score import BenchScore
from formal_sae.plotting import pyplot, save_figure

PARETO_L0_EXPLAINED_VARIANCE = "pareto_l0_explained_variance.png"
PARETO_L0_GROUND_TRUTH = "pareto_l0_ground_truth.png"
PARETO_GROUND_TRUTH_CAUSAL = "pareto_ground_truth_causal.png"


def pareto_front(points: Iterable[tuple[float, float]], minimise_x: bool = True) -> list[tuple[float, float]]:
    """The points no other point beats (on y, and on x: lower if ``minimise_x``, else higher; y is
    always maximised), sorted by x."""
    order = sorted(points, key=lambda p: (p[0] if minimise_x else -p[0], -p[1]))
    front: list[tuple[float, float]] = []
    for x, y in order:  # from the best x on: a point joins when it beats every better-x point on y
        if not front or y > front[-1][1]:
            front.append((x, y))
    return sorted(front)


@dataclass(frozen=True)
class _Axis:
    label: str
    value: Callable[[LeaderboardRow], float | None]
    error: Callable[[LeaderboardRow], float | None]


def _metric_axis(metric: str, label: str) -> _Axis:
    return _Axis(label, lambda r: getattr(r, f"{metric}_mean"), lambda r: getattr(r, f"{metric}_std"))


def _structural_norm_error(row: LeaderboardRow) -> float | None:
    lo, hi, std = row.structural_floor, row.structural_ceiling, row.structural_score_std
    return None if lo is None or hi is None or std is None or hi <= lo else std / (hi - lo)


_L0 = _metric_axis("l0", "L0 (active latents per token)")
_EXPLAINED_VARIANCE = _metric_axis("explained_variance", "explained variance")
_GAP_CLOSURE = _metric_axis("gap_closure", "gap closure (causal)")
_STRUCTURAL = _metric_axis("structural_score", "structural score")
_STRUCTURAL_NORM = _Axis("structural score (0 floor, 1 ceiling)", lambda r: r.structural_norm, _structural_norm_error)


def plot_pareto(scores_or_rows: Sequence[BenchScore] | Sequence[LeaderboardRow], out_dir: str | os.PathLike) -> list[Path]:
    """Draw the benchmark's three trade-offs into ``out_dir``, one subplot per language:
    `PARETO_L0_EXPLAINED_VARIANCE` (L0 against explained variance), `PARETO_L0_GROUND_TRUTH`
    (L0 against the structural score, normalised when any row has a floor and ceiling) and
    `PARETO_GROUND_TRUTH_CAUSAL` (that score against gap closure).

    Each architecture has its colour and marker, with error bars of one std over seeds; floors,
    ceilings and baselines are grey or black markers of their own. The dashed step line is the
    Pareto front of the SAEs (lower L0 is better; higher everything else).

    Args:
        scores_or_rows: the run's scores (made into rows by `build_leaderboard`) or its rows.
        out_dir: the folder of the PNGs.

    Returns:
        The three PNGs' paths.
    """
    rows = list(scores_or_rows)
    if rows and isinstance(rows[0], BenchScore):
        rows = build_leaderboard(rows)  # type: ignore[arg-type]
    rows = [r for r in rows if r.grammar != OVERALL]
    ground_truth = _STRUCTURAL_NORM if any(r.structural_norm is not None for r in rows) else _STRUCTURAL
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = (
        (PARETO_L0_EXPLAINED_VARIANCE, _L0, _EXPLAINED_VARIANCE, True),
        (PARETO_L0_GROUND_TRUTH, _L0, ground_truth, True),
        (PARETO_GROUND_TRUTH_CAUSAL, ground_truth, _GAP_CLOSURE, False),
    )
    paths = []
    for name, x, y, minimise_x in plots:
        _plot_tradeoff(rows, x, y, minimise_x, out / name)
        paths.append(out / name)
    return paths


def _styles(rows: Sequence[LeaderboardRow]) -> dict[str, tuple[str, str]]:
    """(colour, marker) per architecture: colours for SAEs, greys and their own markers for the rest."""
    plt = pyplot()
    colours, markers = plt.colormaps["tab10"], "o^vsPD<>hp"
    saes = sorted({r.architecture for r in rows if r.family == "sae"})
    styles = {arch: (colours(k % 10), markers[k % len(markers)]) for k, arch in enumerate(saes)}
    reference = {"floor": ("0.55", "X"), "ceiling": ("black", "*")}
    others = sorted({(r.family, r.architecture) for r in rows if r.family != "sae"})
    for k, (family, arch) in enumerate(others):
        styles.setdefault(arch, reference.get(family, ("0.35", "dpH8"[k % 4])))
    return styles


def _plot_tradeoff(rows: Sequence[LeaderboardRow], x: _Axis, y: _Axis, minimise_x: bool, path: Path) -> None:
    plt = pyplot()
    grammars = sorted({r.grammar for r in rows}) or ["(no scores)"]
    styles = _styles(rows)
    fig, axes = plt.subplots(1, len(grammars), figsize=(4.4 * len(grammars), 3.8), squeeze=False)
    handles: dict[str, object] = {}
    for ax, grammar in zip(axes[0], grammars):
        points = [r for r in rows if r.grammar == grammar and x.value(r) is not None and y.value(r) is not None]
        for arch in sorted({r.architecture for r in points}):
            mine = [r for r in points if r.architecture == arch]
            colour, marker = styles[arch]
            label = row_label(mine[0])
            xerr, yerr = [x.error(r) or 0.0 for r in mine], [y.error(r) or 0.0 for r in mine]
            handles[label] = ax.errorbar(
                [x.value(r) for r in mine],
                [y.value(r) for r in mine],
                xerr=xerr if any(xerr) else None,  # no bars (nor bar glyphs in the legend) for single dictionaries
                yerr=yerr if any(yerr) else None,
                fmt=marker,
                color=colour,
                markersize=7 if mine[0].family == "sae" else 9,
                elinewidth=0.8,
                capsize=2,
                label=label,
            )
        front = pareto_front([(x.value(r), y.value(r)) for r in points if r.family == "sae"], minimise_x)  # type: ignore[misc]
        if len(front) > 1:
            (line,) = ax.step(*zip(*front), where="post" if minimise_x else "pre", color="0.2", linestyle="--", linewidth=1)
            handles["Pareto front (SAEs)"] = line
        xs = [x.value(r) for r in points]
        if x is _L0 and xs and min(xs) > 0 and max(xs) / min(xs) > 20:  # type: ignore[operator]
            ax.set_xscale("log")
        if not points:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
        ax.set_title(grammar, fontsize=10)
        ax.set_xlabel(x.label)
        ax.set_ylabel(y.label)
        ax.grid(alpha=0.3)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    save_figure(fig, path)

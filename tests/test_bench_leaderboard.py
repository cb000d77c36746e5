"""The benchmark's leaderboard (seeds averaged, floor/ceiling normalisation, overall board, writers,
Pareto plots) and its SAEBench export, on hand-built scores: no model is needed."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from formal_sae.bench.leaderboard import (
    LEADERBOARD_CSV,
    LEADERBOARD_JSON,
    LEADERBOARD_MD,
    METRICS,
    OVERALL,
    LeaderboardRow,
    build_leaderboard,
    group_key,
    leaderboard_markdown,
    write_leaderboard,
)
from formal_sae.bench.pareto import (
    PARETO_GROUND_TRUTH_CAUSAL,
    PARETO_L0_EXPLAINED_VARIANCE,
    PARETO_L0_GROUND_TRUTH,
    pareto_front,
    plot_pareto,
)
from formal_sae.bench.saebench import (
    EVAL_TYPE_ID,
    METRIC_CATEGORIES,
    SAEBENCH_FIELDS,
    saebench_filename,
    saebench_record,
    write_saebench_json,
)
from formal_sae.bench.score import BenchScore
from formal_sae.errors import FormalSAEError


def score(**overrides: Any) -> BenchScore:
    """A plausible trained SAE's score; keyword arguments replace fields."""
    fields: dict[str, Any] = dict(
        sae_id="topk-x2-k4-s0",
        grammar="dyck",
        hook_name="blocks.1.hook_resid_post",
        architecture="topk",
        family="sae",
        d_sae=64,
        expansion_factor=2.0,
        l0_target=4.0,
        seed=0,
        explained_variance=0.8,
        ce_loss_score=0.9,
        kl_div_score=0.85,
        l0=4.0,
        dead_fraction=0.1,
        dense_fraction=0.05,
        structural_score=0.5,
        lexical_score=0.9,
        coverage=0.6,
        mcc=0.4,
        absorption=0.1,
        gap_closure=0.3,
        not_causal_rate=0.2,
        n_causal_features=3,
        feature_scores={"depth": 0.5, "is_open": 0.9},
        validity=0.95,
    )
    fields.update(overrides)
    return BenchScore(**fields)


def floor(grammar: str = "dyck", structural: float = 0.2, expansion_factor: float = 2.0, **overrides: Any) -> BenchScore:
    return score(
        sae_id=f"untrained-x{expansion_factor:g}",
        grammar=grammar,
        architecture="untrained",
        family="floor",
        expansion_factor=expansion_factor,
        l0_target=None,
        seed=None,
        structural_score=structural,
        **{"lexical_score": 0.5, "mcc": 0.1, **overrides},
    )


def ceiling(grammar: str = "dyck", structural: float = 0.9, **overrides: Any) -> BenchScore:
    return score(
        sae_id="probe",
        grammar=grammar,
        architecture="probe",
        family="ceiling",
        expansion_factor=1.0,
        l0_target=None,
        seed=None,
        structural_score=structural,
        **{"lexical_score": 1.0, "mcc": 0.9, **overrides},
    )


def seeds(n: int = 3, **overrides: Any) -> list[BenchScore]:
    """``n`` seeds of one cell, every metric varying with the seed."""
    rng = np.random.default_rng(0)
    out = []
    for seed in range(n):
        values = {m: float(rng.uniform(0.1, 0.9)) for m in METRICS}
        out.append(score(seed=seed, sae_id=f"topk-x2-k4-s{seed}", **{**values, **overrides}))
    return out


def rows_of(rows: list[LeaderboardRow], grammar: str, group: str | None = None) -> list[LeaderboardRow]:
    return [r for r in rows if r.grammar == grammar and (group is None or r.group == group)]


# ---- leaderboard ----------------------------------------------------------------------------


def test_group_key_names_architecture_width_and_l0_target():
    assert group_key(score()) == "topk/x2/l0=4"
    assert group_key(score(expansion_factor=0.5, l0_target=16.0)) == "topk/x0.5/l0=16"
    assert group_key(floor()) == "untrained/x2/l0=none"


def test_mean_and_std_over_seeds_match_numpy():
    cell = seeds(3)
    (row,) = rows_of(build_leaderboard(cell), "dyck")
    assert row.n_seeds == 3 and row.group == "topk/x2/l0=4" and row.family == "sae"
    for metric in METRICS:
        values = [getattr(s, metric) for s in cell]
        assert getattr(row, f"{metric}_mean") == pytest.approx(np.mean(values)), metric
        assert getattr(row, f"{metric}_std") == pytest.approx(np.std(values, ddof=1)), metric


def test_structural_interval_is_a_student_t_interval_over_seeds():
    cell = seeds(3)
    (row,) = rows_of(build_leaderboard(cell), "dyck")
    values = [s.structural_score for s in cell]
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert row.structural_ci_low == pytest.approx(low)
    assert row.structural_ci_high == pytest.approx(high)
    (single,) = rows_of(build_leaderboard(seeds(1)), "dyck")
    assert single.structural_score_std is None and single.structural_ci_low is None and single.structural_ci_high is None


def test_normalisation_places_floor_at_zero_and_ceiling_at_one():
    middle = score(structural_score=0.55, lexical_score=0.75, mcc=0.3)
    rows = build_leaderboard([floor(), ceiling(), middle])
    by_family = {r.family: r for r in rows_of(rows, "dyck")}
    assert by_family["floor"].structural_norm == pytest.approx(0.0)
    assert by_family["ceiling"].structural_norm == pytest.approx(1.0)
    sae = by_family["sae"]
    assert sae.structural_norm == pytest.approx((0.55 - 0.2) / (0.9 - 0.2))
    assert sae.lexical_norm == pytest.approx((0.75 - 0.5) / (1.0 - 0.5))
    assert sae.mcc_norm == pytest.approx((0.3 - 0.1) / (0.9 - 0.1))
    assert (sae.structural_floor, sae.structural_ceiling) == (pytest.approx(0.2), pytest.approx(0.9))


def test_floor_is_of_the_same_width_else_of_any_width():
    scores = [floor(structural=0.2), floor(structural=0.4, expansion_factor=4.0), ceiling()]
    scores += [score(structural_score=0.6), score(expansion_factor=4.0, structural_score=0.6)]
    scores += [score(expansion_factor=8.0, structural_score=0.6)]
    norms = {r.expansion_factor: r.structural_norm for r in rows_of(build_leaderboard(scores), "dyck") if r.family == "sae"}
    assert norms[2.0] == pytest.approx((0.6 - 0.2) / 0.7)
    assert norms[4.0] == pytest.approx((0.6 - 0.4) / 0.5)
    assert norms[8.0] == pytest.approx((0.6 - 0.3) / 0.6)  # no x8 floor: the mean of all floors


def test_missing_values_give_none_not_errors():
    cell = seeds(3, validity=None)
    cell[0] = dataclasses.replace(cell[0], gap_closure=None)
    (row,) = rows_of(build_leaderboard(cell), "dyck")
    assert row.validity_mean is None and row.validity_std is None
    assert row.gap_closure_mean == pytest.approx(np.mean([s.gap_closure for s in cell[1:]]))
    assert row.structural_norm is None  # neither floor nor ceiling
    no_ceiling = build_leaderboard([floor(), score()])
    assert all(r.structural_norm is None and r.lexical_norm is None for r in no_ceiling)
    inverted = build_leaderboard([floor(structural=0.9), ceiling(structural=0.9), score()])
    assert all(r.structural_norm is None for r in inverted)
    nan = build_leaderboard([score(ce_loss_score=math.nan), score(seed=1, ce_loss_score=0.5)])
    assert rows_of(nan, "dyck")[0].ce_loss_score_mean == 0.5


def test_overall_rows_are_means_over_grammars():
    scores = []
    for grammar, shift in (("dyck", 0.0), ("expr", 0.1)):
        scores += [floor(grammar), ceiling(grammar)]
        scores += [score(grammar=grammar, seed=s, structural_score=0.4 + shift + 0.05 * s, l0=4.0 + s) for s in range(3)]
    scores.append(score(grammar="expr", seed=3, structural_score=0.7, l0=8.0))  # expr has a fourth seed
    scores.append(score(grammar="expr", architecture="relu", sae_id="relu"))  # a cell only one language has
    rows = build_leaderboard(scores, stability={"dyck/topk/x2/l0=4": 0.6, "expr/topk/x2/l0=4": 0.8})
    (overall,) = rows_of(rows, OVERALL, "topk/x2/l0=4")
    languages = [rows_of(rows, g, "topk/x2/l0=4")[0] for g in ("dyck", "expr")]
    for name in ("structural_score_mean", "structural_score_std", "l0_mean", "structural_norm", "mcc_norm"):
        assert getattr(overall, name) == pytest.approx(np.mean([getattr(r, name) for r in languages])), name
    assert overall.n_seeds == 3 and overall.stability == pytest.approx(0.7)
    assert rows_of(rows, OVERALL, "relu/x2/l0=4") == []
    assert {r.family for r in rows_of(rows, OVERALL)} == {"sae", "floor", "ceiling"}
    # the interval of a mean of independent means: variances add
    half = stats.t.ppf(0.975, 2) * math.sqrt(sum(r.structural_score_std**2 / r.n_seeds for r in languages)) / 2
    assert overall.structural_ci_high - overall.structural_score_mean == pytest.approx(half)


def test_stability_keyed_by_group_applies_to_every_grammar():
    scores = [score(grammar="dyck"), score(grammar="expr")]
    rows = build_leaderboard(scores, stability={"topk/x2/l0=4": 0.5, "expr/topk/x2/l0=4": 0.9})
    assert rows_of(rows, "dyck")[0].stability == 0.5
    assert rows_of(rows, "expr")[0].stability == 0.9
    assert rows_of(build_leaderboard(scores), "dyck")[0].stability is None


def test_rows_sort_by_grammar_then_normalised_structural_score_none_last():
    scores = [floor("expr"), ceiling("expr"), floor("dyck"), ceiling("dyck")]
    scores += [
        score(grammar="dyck", architecture=a, structural_score=v) for a, v in (("relu", 0.3), ("topk", 0.7), ("gated", 0.5))
    ]
    scores += [score(grammar="dyck", architecture="jumprelu", structural_score=None)]
    rows = build_leaderboard(scores)
    assert [r.grammar for r in rows] == sorted(r.grammar for r in rows)
    assert [r.architecture for r in rows_of(rows, "dyck")] == ["probe", "topk", "gated", "relu", "untrained", "jumprelu"]
    assert rows_of(rows, "dyck")[-1].structural_norm is None


def bench_scores() -> list[BenchScore]:
    """A small run: two languages, two architectures at two L0 targets, three seeds, a floor, a
    ceiling and a PCA baseline per language."""
    rng = np.random.default_rng(1)
    scores = []
    for grammar in ("dyck", "expr"):
        scores += [floor(grammar), ceiling(grammar)]
        scores.append(score(grammar=grammar, architecture="pca", family="baseline", l0_target=None, seed=None, l0=32.0))
        for arch in ("topk", "relu"):
            for k in (4.0, 16.0):
                for seed in range(3):
                    scores.append(
                        score(
                            grammar=grammar,
                            architecture=arch,
                            l0_target=k,
                            seed=seed,
                            l0=k * float(rng.uniform(0.8, 1.2)),
                            explained_variance=float(rng.uniform(0.5, 0.95)),
                            structural_score=float(rng.uniform(0.3, 0.8)),
                            gap_closure=float(rng.uniform(0.0, 0.6)),
                        )
                    )
    return scores


def test_written_leaderboard_reads_back(tmp_path):
    rows = build_leaderboard(bench_scores())
    paths = write_leaderboard(rows, tmp_path / "board")
    assert {p.name for p in paths.values()} == {LEADERBOARD_JSON, LEADERBOARD_CSV, LEADERBOARD_MD}
    assert json.loads(paths["json"].read_text()) == [r.to_dict() for r in rows]
    text = paths["csv"].read_text()
    assert len(text.splitlines()) == len(rows) + 1
    read = list(csv.DictReader(text.splitlines()))
    assert [(r["grammar"], r["group"]) for r in read] == [(r.grammar, r.group) for r in rows]
    assert float(read[0]["structural_score_mean"]) == pytest.approx(rows[0].structural_score_mean)
    assert read[0]["validity_std"] == "" or float(read[0]["validity_std"]) >= 0
    md = paths["md"].read_text()
    assert md == leaderboard_markdown(rows)
    for heading in ("## all languages", "## dyck", "## expr"):
        assert heading in md
    assert "untrained (floor)" in md and "probe (ceiling)" in md and "pca (baseline)" in md
    assert " ± " in md
    table_lines = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith(("| #", "| ---"))]
    assert len(table_lines) == len(rows)


def test_pareto_plots_are_written(tmp_path):
    scores = bench_scores()
    paths = plot_pareto(scores, tmp_path)
    assert [p.name for p in paths] == [PARETO_L0_EXPLAINED_VARIANCE, PARETO_L0_GROUND_TRUTH, PARETO_GROUND_TRUTH_CAUSAL]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    # rows without floors or ceilings: the raw structural score is drawn instead
    bare = [s for s in scores if s.family == "sae"]
    assert all(p.stat().st_size > 1000 for p in plot_pareto(build_leaderboard(bare), tmp_path / "rows"))
    assert all(p.is_file() for p in plot_pareto([], tmp_path / "empty"))


def test_pareto_front_keeps_only_unbeaten_points():
    points = [(1.0, 0.5), (2.0, 0.4), (2.0, 0.7), (3.0, 0.9), (4.0, 0.8)]
    assert pareto_front(points, minimise_x=True) == [(1.0, 0.5), (2.0, 0.7), (3.0, 0.9)]
    assert pareto_front(points, minimise_x=False) == [(3.0, 0.9), (4.0, 0.8)]
    assert pareto_front([]) == []


# ---- SAEBench export ------------------------------------------------------------------------

SAE_CFG = {"d_in": 32, "d_sae": 64, "architecture": "topk", "k": 4}
EVAL_CONFIG = {"grammar": "dyck", "max_sentences": 500, "causal_bar": 0.5}


def test_saebench_record_has_every_field_and_the_score(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    s = score()
    record = saebench_record(s, sae_cfg=SAE_CFG, eval_config=EVAL_CONFIG)
    assert list(record) == [*SAEBENCH_FIELDS, "formal_sae"]
    assert record["formal_sae"] == s.to_dict()
    assert record["eval_type_id"] == EVAL_TYPE_ID
    assert record["eval_config"] == EVAL_CONFIG
    assert record["eval_result_metrics"]["sparsity"]["l0"] == s.l0
    assert record["eval_result_metrics"]["model_performance_preservation"]["ce_loss_score"] == s.ce_loss_score
    assert record["eval_result_metrics"]["ground_truth"]["structural_score"] == s.structural_score
    assert set(record["eval_result_metrics"]) == set(METRIC_CATEGORIES)
    for metrics in record["eval_result_metrics"].values():  # SAEBench's categories are flat
        assert not any(isinstance(v, (dict, list)) for v in metrics.values())
    assert record["eval_result_details"] == [
        {"feature": "depth", "best_latent_score": 0.5},
        {"feature": "is_open", "best_latent_score": 0.9},
    ]
    assert record["sae_cfg_dict"]["architecture"] == "topk" and record["sae_cfg_dict"]["hook_name"] == s.hook_name
    assert isinstance(record["datetime_epoch_millis"], int) and record["datetime_epoch_millis"] > 1_600_000_000_000
    assert saebench_filename(s).endswith("_eval_results.json") and "/" not in saebench_filename(s)
    details = [{"letter": "a", "rate": 0.1}]
    assert saebench_record(s, sae_cfg={}, eval_config={}, details=details)["eval_result_details"] == details


def test_saebench_eval_id_is_stable_and_follows_the_config():
    s = score()
    first = saebench_record(s, sae_cfg=SAE_CFG, eval_config=EVAL_CONFIG)["eval_id"]
    assert saebench_record(s, sae_cfg={}, eval_config=dict(reversed(EVAL_CONFIG.items())))["eval_id"] == first
    assert saebench_record(s, sae_cfg=SAE_CFG, eval_config={**EVAL_CONFIG, "max_sentences": 100})["eval_id"] != first
    assert saebench_record(score(grammar="expr"), sae_cfg=SAE_CFG, eval_config=EVAL_CONFIG)["eval_id"] != first


def test_saebench_time_comes_from_source_date_epoch(monkeypatch, tmp_path):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    record = saebench_record(score(), sae_cfg=SAE_CFG, eval_config=EVAL_CONFIG)
    assert record["datetime_epoch_millis"] == 1_700_000_000_000
    a, b = write_saebench_json(record, tmp_path / "a.json"), tmp_path / "b.json"
    write_saebench_json(saebench_record(score(), sae_cfg=SAE_CFG, eval_config=EVAL_CONFIG), b)
    assert a.read_bytes() == b.read_bytes()  # a rerun writes the same bytes
    assert json.loads(a.read_text()) == record
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(FormalSAEError, match="SOURCE_DATE_EPOCH"):
        saebench_record(score(), sae_cfg=SAE_CFG, eval_config=EVAL_CONFIG)


def test_saebench_record_validates_against_saebench_base_eval_output(monkeypatch):
    """A concrete eval output class built the way SAEBench's own evals build theirs (flat metric
    categories, result details) validates the record."""
    base = pytest.importorskip("sae_bench.evals.base_eval_output")
    from dataclasses import make_dataclass

    from pydantic import TypeAdapter
    from pydantic.dataclasses import dataclass as pydantic_dataclass

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    record = saebench_record(score(), sae_cfg=SAE_CFG, eval_config=EVAL_CONFIG)
    categories = [
        (
            name,
            pydantic_dataclass(
                make_dataclass(f"{name}_metrics", [(m, float | None) for m in metrics], bases=(base.BaseMetrics,))
            ),
        )
        for name, metrics in record["eval_result_metrics"].items()
    ]
    metric_categories = pydantic_dataclass(make_dataclass("Categories", categories, bases=(base.BaseMetricCategories,)))
    detail = pydantic_dataclass(
        make_dataclass("Detail", [("feature", str), ("best_latent_score", float)], bases=(base.BaseResultDetail,))
    )
    output = pydantic_dataclass(
        make_dataclass(
            "FormalSAEEvalOutput",
            [("eval_config", dict[str, Any]), ("eval_result_metrics", metric_categories), ("eval_result_details", list[detail])],
            bases=(base.BaseEvalOutput,),
        )
    )
    parsed = TypeAdapter(output).validate_python(record)
    assert parsed.eval_id == record["eval_id"] and parsed.datetime_epoch_millis == record["datetime_epoch_millis"]
    assert dataclasses.asdict(parsed)["eval_result_metrics"] == record["eval_result_metrics"]
    assert [f.name for f in dataclasses.fields(base.BaseEvalOutput)] == list(SAEBENCH_FIELDS)

"""The fault-injection suite (benchmarks/fault_injection.py) on a few kills: zero mismatches, zero damage."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the suite is a benchmark script

import fault_injection as fi

from formal_sae import outputs


def test_the_suite_uses_the_output_policy_names():
    assert (fi.MARKER_FILE, fi.IN_PROGRESS_SUFFIX, fi.REPLACED_SUFFIX) == (
        outputs.MARKER_FILE,
        outputs.IN_PROGRESS_SUFFIX,
        outputs.REPLACED_SUFFIX,
    )


def test_comparison_ignores_timings_only(tmp_path):
    ref, new = tmp_path / "ref", tmp_path / "new"
    for d, seconds in ((ref, 1.5), (new, 9.0)):
        d.mkdir()
        (d / "m.json").write_text(json.dumps({"loss": 1.0, "train_seconds": seconds, "nested": [{"tokens_per_second": seconds}]}))
        (d / "r.csv").write_text(f"cell,validity,train_seconds\na,0.5,{seconds}\n")
        (d / "r.md").write_text(
            f"Took {seconds} minutes.\n\n| cell | validity | train s |\n|---|---|---|\n| a | 0.5 | {seconds} |\n"
        )
    assert fi.compare(ref, new) == []
    (new / "m.json").write_text(json.dumps({"loss": 2.0, "train_seconds": 1.5, "nested": [{"tokens_per_second": 1}]}))
    (new / "extra.png").write_bytes(b"\x89PNG")
    assert [d.split(":")[0] for d in fi.compare(ref, new)] == ["extra.png", "m.json"]


def _assert_clean(tallies):
    for t in tallies:
        assert t.problems == [], t.problems
        assert (t.mismatches, t.partial, t.damaged, t.bytes_lost, t.leftovers, t.failed_runs) == (0, 0, 0, 0, 0, 0)
        assert t.compared >= t.trials


def test_kills_of_generate_and_train_model_leave_nothing_partial_and_resume_to_the_same_artifact(tmp_path):
    # Forked runs (no imports per run) at the smallest sizes: well under a minute on 2 cores.
    tallies = fi.run_suite(
        tmp_path, ["generate", "train-model"], kills=3, seed=0, launcher=fi.ForkLauncher(), small=True, baseline=False
    )
    _assert_clean(tallies)
    assert [t.trials for t in tallies] == [3, 3] and all(t.overwrite_trials == 1 for t in tallies)
    assert all(t.kills + t.finished_before_kill >= 3 for t in tallies)


def test_kills_at_the_commit_resume(tmp_path):
    # Killed as soon as <out>.in-progress is marked complete: the finished artifact is not in place yet,
    # and the rerun must put it there (or redo it), not refuse the folder.
    tallies = fi.run_suite(
        tmp_path, ["generate"], kills=2, seed=0, launcher=fi.ForkLauncher(), small=True, baseline=False, at_commit=1.0
    )
    _assert_clean(tallies)


@pytest.mark.slow
def test_kills_of_every_command_but_reproduce(tmp_path):
    tallies = fi.run_suite(
        tmp_path,
        ["generate", "train-model", "train-sae", "sweep"],
        kills=6,
        seed=1,
        launcher=fi.ForkLauncher(),
        small=True,
    )
    _assert_clean(tallies)

"""The reproduction pipeline: claims judged from the numbers, a tiny end-to-end run, resume, errors."""

from __future__ import annotations

import copy
import json

import pytest

from formal_sae import CausalConfig, FormalSAEError, OutputError, SAETrainConfig, in_progress_path
from formal_sae import reproduce as reproduce_mod
from formal_sae.outputs import _write_marker
from formal_sae.reproduce import SCALES, Scale, judge_claims, reproduce
from formal_sae.saes.sweep import grid_from_dict


# ------------------------------------------------------------------------------ judge_claims
def results_for(
    grammar: str, *, pearson: float, validities: list[float], n_flagged: int, agreement: float, losses: tuple
) -> dict:
    """The part of a grammar's results that the claims read, with chosen numbers."""
    feature = {"dyck2": "depth", "expr": "pending", "english": "pos=verb"}[grammar]
    sae = {"explained_variance": 0.99, "validity": 0.9, "predictability_error": 1e-6}
    return {
        "analysis": {"features": {feature: {"pearson": pearson, "f1": None, "best_latent": 3}}},
        "sweep": [{"cell_id": f"c{i}", "validity": v} for i, v in enumerate(validities)],
        "causality": {"n_correlated_not_causal": n_flagged, "rank_agreement": agreement},
        "clamp": {
            "feature": feature,
            "latent": 3,
            "generations": {"validity": {"clean": 0.9, "intervened": 0.5}},
        },
        "causal_sae": {"saes": [{**sae, "causal_loss": losses[0]}, {**sae, "causal_loss": losses[1]}]},
    }


SUPPORTIVE = {"pearson": -0.95, "validities": [0.0, 0.9], "n_flagged": 4, "agreement": 0.1, "losses": (2.0, 1.0)}


def test_claims_are_supported_by_supportive_numbers():
    claims = judge_claims({"expr": results_for("expr", **SUPPORTIVE)})
    assert set(claims) == {"C1", "C2", "C3", "C4"}
    assert all(c["supported"] is True for c in claims.values())
    assert "pending" in claims["C1"]["evidence"]  # |rho| counts, whatever its sign
    assert claims["C2"]["numbers"]["expr"] == {"c0": 0.0, "c1": 0.9}
    assert claims["C4"]["numbers"]["expr"]["causal"]["causal_loss"] == 1.0
    json.dumps(claims)  # the claims table is JSON


@pytest.mark.parametrize(
    ("claim", "change"),
    [
        ("C1", {"pearson": 0.89}),  # below the 0.9 bar
        ("C2", {"validities": [0.7, 0.95]}),  # a range of 0.25 < 0.3
        ("C3", {"n_flagged": 0}),  # every well-correlated latent has a large effect
        ("C3", {"agreement": 0.8}),  # correlation ranks latents by effect well
        ("C4", {"losses": (1.0, 1.2)}),  # the causal SAE is no more linear
    ],
)
def test_each_claim_fails_when_its_numbers_do_not_support_it(claim, change):
    claims = judge_claims({"dyck2": results_for("dyck2", **{**SUPPORTIVE, **change})})
    assert claims[claim]["supported"] is False
    assert all(c["supported"] for name, c in claims.items() if name != claim)


def test_one_supportive_language_supports_a_claim():
    weak = {**SUPPORTIVE, "pearson": 0.2}
    claims = judge_claims({"dyck2": results_for("dyck2", **weak), "english": results_for("english", **SUPPORTIVE)})
    assert claims["C1"]["supported"]
    assert "dyck2: no latent with |rho| >= 0.9" in claims["C1"]["evidence"]


# ------------------------------------------------------------------------------ end to end
def tiny_grid(d_in: int):
    base = {"architecture": "paper", "training_tokens": 512, "batch_size_tokens": 128, "lr": 3e-3}
    return grid_from_dict({"name": "tiny", "base": base, "cells": [{"k": 4, "expansion_factor": 2}, {"l1_coefficient": 1.0}]})


TINY = Scale(
    name="tiny",
    n_train=300,
    n_eval=40,
    preset="tiny",
    model_steps={"dyck2": 20, "expr": 20, "english": 20},
    model_lr=3e-3,
    grid=tiny_grid,
    sweep_eval={"n_samples": 4, "repeats": 1, "max_sentences": 20},
    analysis_sentences=30,
    intervention_sentences=10,
    generations=4,
    causal_base=SAETrainConfig(architecture="topk", k=4, expansion_factor=2, batch_size_tokens=128),
    causal=CausalConfig(coefficient=10.0, pretrain_steps=2, steps=2, sentences_per_step=8),
    validity_samples=4,
    validity_repeats=2,
    notes=["a test-sized run"],
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(SCALES, "tiny", TINY)
        claims = reproduce(out, "expr", "tiny")
    return out, claims


def test_reproduce_writes_the_claims_table_and_the_report(tiny_run):
    out, claims = tiny_run
    saved = json.loads((out / "claims.json").read_text())
    assert saved == json.loads(json.dumps(claims))
    assert set(saved) == {"C1", "C2", "C3", "C4"}
    for claim in saved.values():
        assert isinstance(claim["supported"], bool) and claim["evidence"] and isinstance(claim["numbers"], dict)
    report = (out / "report.md").read_text()
    assert "## Claims" in report and "## expr" in report and "a test-sized run" in report
    for figure in ("analysis/correlations.png", "interventions/all_latents/correlation_vs_effect.png", "causal/comparison.png"):
        assert f"expr/{figure}" in report and (out / "expr" / figure).is_file()
    results = json.loads((out / "expr" / "results.json").read_text())
    assert [row["cell_id"] for row in results["sweep"]] == tiny_grid(32).ids


def test_an_interrupted_run_resumes_without_redoing_finished_stages(tiny_run, tmp_path, monkeypatch):
    out, claims = tiny_run
    run = tmp_path / "run"
    work = in_progress_path(run)  # an interrupted run: every stage done but the results file
    (work / "expr").mkdir(parents=True)
    _write_marker(work, "reproduction", {"grammars": ["expr"], "scale": "tiny", "seed": 0}, complete=False)
    for part in ("data", "model", "sweep", "analysis", "interventions", "causal-saes", "causal"):  # all but results.json
        (work / "expr" / part).symlink_to(out / "expr" / part, target_is_directory=True)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    for name in ("generate_dataset", "train_model", "train_causal_sae", "analyze", "causal_report", "compare_generations"):
        monkeypatch.setattr(reproduce_mod, name, must_not_run)
    monkeypatch.setitem(SCALES, "tiny", TINY)
    again = reproduce(run, "expr", "tiny")
    assert {k: (c["supported"], c["numbers"]) for k, c in again.items()} == {
        k: (c["supported"], copy.deepcopy(c["numbers"])) for k, c in claims.items()
    }
    assert (run / "claims.json").is_file() and not work.exists()


def test_a_finished_run_is_not_overwritten_without_overwrite(tiny_run, monkeypatch):
    out, _ = tiny_run
    monkeypatch.setitem(SCALES, "tiny", TINY)
    with pytest.raises(OutputError, match="already exists and holds a formal-sae reproduction; pass overwrite=True"):
        reproduce(out, "expr", "tiny")


def test_unknown_scale_or_grammar_is_refused(tmp_path):
    with pytest.raises(FormalSAEError, match="unknown scale 'huge'; choose one of quick, small, paper"):
        reproduce(tmp_path, "expr", "huge")
    with pytest.raises(FormalSAEError, match=r"not \['expr-postfix'\]"):
        reproduce(tmp_path, "expr-postfix", "quick")


def test_the_claims_table_survives_pipes_in_the_evidence(tiny_run):
    out, _ = tiny_run
    rows = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| **C")]
    assert len(rows) == 4
    for row in rows:  # claim | supported | evidence: 3 cells, whatever the evidence says
        assert len(row.replace("\\|", "").strip("|").split("|")) == 3

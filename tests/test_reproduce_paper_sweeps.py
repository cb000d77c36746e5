"""The authors' whole grid at the paper scale: its plan checked without training (828 SAEs over the
models), and a test-sized run through the variants' models and the distribution-shift sweep, killed
and resumed."""

from __future__ import annotations

import json

import pytest
from test_reproduce import TINY, _tiny_paper, tiny_grid

from formal_sae import FormalSAEError, build_dataset, in_progress_path
from formal_sae.reproduce import SCALES, paper_sweeps, reproduce, stages
from formal_sae.reproduce.estimate import estimate_time
from formal_sae.reproduce.scales import GRAMMARS, model_steps_of
from formal_sae.saes.sweep import PAPER_SWEEPS, PaperSweep, SweepGrid

VARIANTS = ["english-transitive", "english-relative", "english-pp", "dyck2-shallow"]


def test_the_paper_scale_plans_the_authors_828_saes_over_their_models():
    paper = SCALES["paper"]
    groups = paper_sweeps.plan(paper)
    assert [p.group for p in groups] == list(PAPER_SWEEPS)
    assert sum(len(p.grid) for p in groups) == 828
    assert paper_sweeps.extra_grammars(groups) == VARIANTS
    assert all(model_steps_of(paper, g) == 70_000 for g in VARIANTS)  # trained as their main language
    # every SAE once: a cell is told apart by its model, its data and its id
    saes = {(p.group.grammar, p.data_grammar, c.id) for p in groups for c in p.grid.cells}
    assert len(saes) == 828
    # the groups on a main model and its own data are exactly that language's main sweep, taken from it;
    # the others (sparsemax, the variants' models, the shift) train their own 300
    main = {c.id for c in paper.grid(128).cells}
    for grammar in GRAMMARS:
        reused = [c.id for p in groups if p.in_main_sweep and p.group.grammar == grammar for c in p.grid.cells]
        assert sorted(reused) == sorted(main), grammar
    own = [p for p in groups if not p.in_main_sweep]
    assert [p.group.sweeps for p in own] == ["1iii", "3i-3ii", "4i-4ii", "5i-5ii", "6v-6vi", "7i-7ii", "7iii-7iv"]
    assert sum(len(p.grid) for p in own) == 300
    shift = next(p for p in groups if p.group.sae_grammar)
    assert (shift.group.grammar, shift.data_grammar, shift.in_main_sweep) == ("dyck2", "dyck2-shallow", False)
    # only a run of every language at a scale that asks sweeps the grid
    assert paper_sweeps.runs_paper_sweeps(paper, GRAMMARS) and not paper_sweeps.runs_paper_sweeps(paper, ["expr"])
    assert [name for name, s in SCALES.items() if s.paper_sweeps] == ["paper"]


def test_a_cell_is_reused_only_where_the_main_sweep_trained_the_same_sae():
    def grid(tokens: int, *cells: dict) -> SweepGrid:
        return SweepGrid.from_settings("g", {"architecture": "paper", "training_tokens": tokens}, cells)

    main = grid(4096, {"k": 4}, {"k": 8})
    assert paper_sweeps.within(grid(4096, {"k": 4}), main)
    assert not paper_sweeps.within(grid(4096, {"k": 4, "id": "k4", "lr": 1.0}), main)  # same id, other settings
    assert not paper_sweeps.within(grid(4096, {"k": 4}), grid(8192, {"k": 4}, {"k": 16}))  # another activation cache


def test_the_paper_scales_estimate_counts_the_variants_models_and_the_groups_own_saes():
    paper = SCALES["paper"]
    whole, expr_only = estimate_time(paper, list(GRAMMARS)), estimate_time(paper, ["expr"])
    assert list(whole.paper_sweeps) == ["expr", *VARIANTS[:3], "dyck2", VARIANTS[3]]
    for grammar in VARIANTS:
        assert whole.paper_sweeps[grammar]["data"] > 0 and whole.paper_sweeps[grammar]["sweep"] > 0
    assert all(whole.paper_sweeps[g]["model"] > 0 for g in VARIANTS)
    assert whole.paper_sweeps["dyck2"]["model"] == 0 and whole.paper_sweeps["dyck2"]["sweep"] > 0  # the shift sweep
    assert whole.total == pytest.approx(
        sum(sum(s.values()) for s in whole.seconds.values()) + sum(sum(s.values()) for s in whole.paper_sweeps.values())
    )
    assert "the authors' whole grid" in whole.to_text() and "english-pp" in whole.to_text()
    assert not expr_only.paper_sweeps and not estimate_time(SCALES["standard"], list(GRAMMARS)).paper_sweeps


def test_the_field_is_in_the_runs_configuration_only_when_set(tmp_path, monkeypatch):
    """A scale without paper sweeps saves the configuration it saved before the field existed."""

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(stages, "train_model", stop)  # interrupted once its data is written
    for name, scale in (("off", TINY), ("on", _tiny_paper())):
        with pytest.raises(Stop):
            reproduce(tmp_path / name, "expr", scale)
        marker = json.loads((in_progress_path(tmp_path / name) / "formal_sae_artifact.json").read_text())
        assert ("paper_sweeps" in marker["config"]["settings"]) == (name == "on")


def test_sae_data_the_model_reads_otherwise_is_refused(model, ds):
    paper_sweeps.check_transfer(model, ds)  # its own data
    with pytest.raises(FormalSAEError, match="does not tokenise as the data of the 'expr' model"):
        paper_sweeps.check_transfer(model, build_dataset("dyck2", n_train=20, n_validation=5, n_test=5, seed=0))
    with pytest.raises(FormalSAEError, match="prompt"):
        paper_sweeps.check_transfer(
            model, build_dataset("expr", n_train=20, n_validation=5, n_test=5, seed=0, prompt_format="paper")
        )


#: The groups of the test-sized run: one taken from a main sweep, two on variants' models, the shift.
TEST_GROUPS = ("1i-1ii", "3i-3ii", "6v-6vi", "7i-7ii")


def test_a_tiny_paper_scale_run_sweeps_the_variants_and_the_shift_and_resumes_after_a_kill(tmp_path, monkeypatch, capsys):
    scale = _tiny_paper()
    assert scale.paper_sweeps and set(scale.model_steps) == set(GRAMMARS)  # the variants take their language's steps
    monkeypatch.setattr(paper_sweeps, "PAPER_SWEEPS", tuple(g for g in PAPER_SWEEPS if g.sweeps in TEST_GROUPS))
    monkeypatch.setattr(PaperSweep, "grid", lambda self, scale="paper", d_in=128: tiny_grid(d_in))

    def not_tested(*args, **kwargs):  # C1, C3 and C4 are test_reproduce.py's; here they only cost time
        raise FormalSAEError("not measured in this test")

    monkeypatch.setattr(stages, "_c1_c3", not_tested)
    monkeypatch.setattr(stages, "held_out_pairs", not_tested)

    class Killed(BaseException):  # like a KeyboardInterrupt: no stage catches it
        pass

    real_sweep = paper_sweeps.sweep
    swept: list[str] = []

    def sweep_until_the_shift(model, dataset, grid, out_dir, **kwargs):
        if out_dir.name == "6v-6vi":
            raise Killed
        swept.append(out_dir.name)
        return real_sweep(model, dataset, grid, out_dir, **kwargs)

    monkeypatch.setattr(paper_sweeps, "sweep", sweep_until_the_shift)
    run = tmp_path / "run"
    with pytest.raises(Killed):
        reproduce(run, "all", scale)
    printed = capsys.readouterr().out
    assert "then the authors' whole grid" in printed and "english-transitive" in printed
    work = in_progress_path(run)
    assert swept == ["3i-3ii"]  # 1i-1ii is the expr sweep's own cells
    for done in ("expr/paper-sweeps/1i-1ii.json", "english-transitive/paper-sweeps/3i-3ii.json", "english-transitive/model"):
        assert (work / done).exists(), done
    assert (work / "dyck2-shallow" / "data").is_dir() and not (work / "dyck2" / "paper-sweeps" / "6v-6vi.json").exists()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    trained: list[str] = []
    real_train = stages.train_model

    def train_once(dataset, *args, **kwargs):
        trained.append(kwargs["out_dir"].parent.name)
        return real_train(dataset, *args, **kwargs)

    swept.clear()
    monkeypatch.setattr(paper_sweeps, "sweep", lambda *a, **k: (swept.append(a[3].name), real_sweep(*a, **k))[1])
    monkeypatch.setattr(stages, "generate_dataset", must_not_run)
    monkeypatch.setattr(stages, "train_model", train_once)
    reproduce(run, "all", scale)
    assert swept == ["6v-6vi", "7i-7ii"] and trained == ["dyck2-shallow"]  # nothing finished ran again
    assert not work.exists()

    groups = {g: json.loads(p.read_text()) for g, p in ((p.stem, p) for p in run.glob("*/paper-sweeps/*.json"))}
    assert sorted(groups) == sorted(TEST_GROUPS)
    assert all(len(g["rows"]) == len(tiny_grid(32)) for g in groups.values())
    expr_rows = json.loads((run / "expr" / "results.json").read_text())["sweep"]
    assert groups["1i-1ii"]["sweep_dir"] == "expr/sweep" and groups["1i-1ii"]["rows"] == expr_rows
    shift = groups["6v-6vi"]
    assert (shift["grammar"], shift["sae_grammar"], shift["sweep_dir"]) == ("dyck2", "dyck2-shallow", "dyck2/paper-sweeps/6v-6vi")
    manifest = json.loads((run / shift["sweep_dir"] / "grid.json").read_text())
    assert manifest["dataset"]["grammar"] == "dyck2-shallow" and manifest["model"]["name"].startswith("formal-sae/dyck2-")
    report = (run / "report.md").read_text()
    assert "## The authors' whole grid" in report
    for g in TEST_GROUPS:
        assert f"| {g} | topk | none |" in report and f"| {g} | l1 | none |" in report

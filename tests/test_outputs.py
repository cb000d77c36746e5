"""Where files go: refused outputs, overwrite that only replaces formal-sae's own artifacts, atomic
commits, resume of interrupted runs, and modes that follow the umask."""

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import formal_sae
import formal_sae.training as training
from formal_sae import MARKER_FILE, OutputError, in_progress_path, output_dir
from formal_sae import outputs as outputs_mod
from formal_sae.cli import main

SIZES = ["--n-train", "40", "--n-validation", "8", "--n-test", "8"]
TRAIN = ["--preset", "tiny", "--batch-size", "8", "--eval-every", "5", "--checkpoint-every", "5", "--lr", "0.003"]


def one_line_error(capsys, command: str, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"formal-sae {command}: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def precious(tmp_path) -> Path:
    """A user's folder that formal-sae never wrote: notes and a thesis."""
    d = tmp_path / "precious"
    (d / "chapters").mkdir(parents=True)
    (d / "notes.txt").write_text("do not lose")
    (d / "chapters" / "thesis.tex").write_text("\\chapter{SAEs}")
    return d


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "expr"
    assert main(["generate", "expr", "--out", str(out), *SIZES]) == 0
    return out


@pytest.fixture(scope="module")
def model_dir(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "expr"
    assert main(["train-model", "--data", str(data_dir), "--out", str(out), *TRAIN, "--steps", "10"]) == 0
    return out


# ------------------------------------------------------------------------------ user data is safe
def test_overwrite_never_deletes_a_folder_formal_sae_did_not_write(precious, capsys):
    before = snapshot(precious)
    assert main(["generate", "expr", "--out", str(precious), *SIZES, "--overwrite"]) == 2
    one_line_error(capsys, "generate", str(precious), "no formal-sae marker", "did not write it")
    assert main(["generate", "expr", "--out", str(precious), *SIZES]) == 2
    one_line_error(capsys, "generate", "already exists and holds files formal-sae did not write")
    assert snapshot(precious) == before
    assert sorted(p.name for p in precious.parent.iterdir()) == ["precious"]  # no in-progress folder either


@pytest.mark.parametrize("where", ["cwd", "ancestor", "home", "root"])
def test_dangerous_targets_are_refused_even_when_empty_or_with_overwrite(tmp_path, monkeypatch, capsys, where):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / "mine.txt").write_text("keep")
    monkeypatch.chdir(work)
    target = {"cwd": ".", "ancestor": str(tmp_path / "a"), "home": str(Path.home()), "root": "/"}[where]
    reason = {"cwd": "working directory", "ancestor": "contains the working directory", "home": "home folder", "root": "root"}
    for extra in ([], ["--overwrite"]):
        assert main(["generate", "expr", "--out", target, *SIZES, *extra]) == 2
        one_line_error(capsys, "generate", "refusing to write into", reason[where])
    assert (work / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in work.iterdir()) == ["mine.txt"]


def test_overwrite_names_the_files_formal_sae_did_not_write(data_dir, tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["generate", "expr", "--out", str(out), *SIZES]) == 0
    capsys.readouterr()
    (out / "my-notes.md").write_text("mine")
    assert main(["generate", "expr", "--out", str(out), *SIZES, "--seed", "3", "--overwrite"]) == 2
    one_line_error(capsys, "generate", "files formal-sae did not write (my-notes.md)")
    assert (out / "my-notes.md").read_text() == "mine"
    assert formal_sae.dataset_metadata(formal_sae.load_dataset_dir(out)).seed == 0


@pytest.mark.parametrize("command", ["train-model", "train-sae", "analyze", "intervene", "compare-saes", "sweep"])
def test_every_command_refuses_an_existing_output(command, data_dir, model_dir, tmp_path, capsys):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "result.txt").write_text("an earlier result")
    common = ["--data", str(data_dir), "--out", str(out)]
    args = {
        "train-model": ["train-model", *common, *TRAIN, "--steps", "5"],
        "train-sae": ["train-sae", "--model", str(model_dir), *common, "--k", "4", "--training-tokens", "256"],
        "analyze": ["analyze", "--model", str(model_dir), "--sae", str(tmp_path), *common],
        "intervene": ["intervene", "--model", str(model_dir), "--sae", str(tmp_path), *common, "--report"],
        "compare-saes": ["compare-saes", str(tmp_path), "--model", str(model_dir), *common],
        "sweep": ["sweep", "--grid", "paper-small", "--model", str(model_dir), *common],
    }[command]
    assert main(args) == 2
    one_line_error(capsys, command, str(out), "already exists")
    assert (out / "result.txt").read_text() == "an earlier result"


def test_a_short_run_does_not_replace_a_finished_model(data_dir, model_dir, capsys):
    """The reported case: 5 steps into models/dyck2 silently replaced a 300-step model."""
    before = snapshot(model_dir)
    assert main(["train-model", "--data", str(data_dir), "--out", str(model_dir), *TRAIN, "--steps", "5"]) == 2
    one_line_error(capsys, "train-model", "already exists and holds a formal-sae model", "--overwrite")
    assert snapshot(model_dir) == before


# ------------------------------------------------------------------------------ atomic artifacts
def test_ctrl_c_while_overwriting_a_model_leaves_the_old_model_whole(data_dir, model_dir, tmp_path, monkeypatch):
    out = tmp_path / "model"
    assert main(["train-model", "--data", str(data_dir), "--out", str(out), *TRAIN, "--steps", "10"]) == 0
    before = snapshot(out)
    real_lr_at = training.lr_at

    def interrupt_at_step_7(step, cfg):
        if step == 7:
            raise KeyboardInterrupt
        return real_lr_at(step, cfg)

    monkeypatch.setattr(training, "lr_at", interrupt_at_step_7)
    args = ["train-model", "--data", str(data_dir), "--out", str(out), *TRAIN, "--steps", "12", "--seed", "1", "--overwrite"]
    assert main(args) == 130
    assert snapshot(out) == before  # old weights, old metrics and old config, nothing of the new run
    assert (in_progress_path(out) / "checkpoint" / "state.json").is_file()  # the new run waits there
    monkeypatch.setattr(training, "lr_at", real_lr_at)
    assert main(args) == 0  # the same command resumes it and only then replaces the old model
    assert json.loads((out / "metrics.json").read_text())["steps"] == 12
    assert json.loads((out / "config.json").read_text())["model"]["seed"] == 1
    assert not in_progress_path(out).exists()


def test_a_failed_write_leaves_nothing_and_a_failed_replacement_keeps_the_old(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(RuntimeError), output_dir(out, "test", {"a": 1}) as work:
        (work / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    with output_dir(out, "test", {"a": 1}) as work:
        (work / "v1.txt").write_text("one")
    with pytest.raises(RuntimeError), output_dir(out, "test", {"a": 2}, overwrite=True) as work:
        (work / "v2.txt").write_text("two")
        raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == [MARKER_FILE, "v1.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


@pytest.mark.parametrize("exchange", [True, False])
def test_replacement_is_atomic_or_recovers(tmp_path, monkeypatch, exchange):
    """With renameat2 the swap is one step; without it a kill between the two renames is
    repaired on the next run: the previous artifact is put back, whole."""
    out = tmp_path / "art"
    with output_dir(out, "test", {"v": 1}) as work:
        (work / "v.txt").write_text("1")
    if not exchange:
        monkeypatch.setattr(outputs_mod, "exchange", lambda a, b: False)
    with output_dir(out, "test", {"v": 2}, overwrite=True) as work:
        (work / "v.txt").write_text("2")
    assert (out / "v.txt").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    # a kill after the first rename of the fallback: the old artifact sits in <out>.replaced
    replaced = tmp_path / f"art{outputs_mod.REPLACED_SUFFIX}"
    os.replace(out, replaced)
    with output_dir(out, "test", {"v": 3}, overwrite=True) as work:
        assert (out / "v.txt").read_text() == "2"  # put back before anything else happened
        (work / "v.txt").write_text("3")
    assert (out / "v.txt").read_text() == "3" and not replaced.exists()


def test_an_interrupted_run_of_another_configuration_is_named_not_resumed(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(KeyboardInterrupt), output_dir(out, "test", {"lr": 0.1, "steps": 5}, resumable=True) as work:
        (work / "checkpoint").write_text("step 3")
        raise KeyboardInterrupt
    differs = pytest.raises(OutputError, match=r"differs in lr \(0.1 -> 0.2\).*overwrite=True")
    with differs, output_dir(out, "test", {"lr": 0.2, "steps": 5}, resumable=True):
        pass
    with output_dir(out, "test", {"lr": 0.1, "steps": 5}, resumable=True) as work:
        assert (work / "checkpoint").read_text() == "step 3"  # the same configuration resumes
        (work / "checkpoint").unlink()
        (work / "final").write_text("done")
    assert (out / "final").read_text() == "done"


def test_a_stray_in_progress_folder_that_is_not_ours_is_refused(tmp_path):
    stray = in_progress_path(tmp_path / "art")
    stray.mkdir()
    (stray / "user.txt").write_text("mine")
    with (
        pytest.raises(OutputError, match=r"marker .*formal_sae_artifact.json is missing or damaged"),
        output_dir(tmp_path / "art", "test", {}, overwrite=True),
    ):
        pass
    assert (stray / "user.txt").read_text() == "mine"


def test_sae_training_interrupted_then_rerun_gives_the_uninterrupted_sae(model_dir, data_dir, tmp_path, monkeypatch):
    model, ds = formal_sae.load_model(model_dir), formal_sae.load_dataset_dir(data_dir)
    config = formal_sae.SAETrainConfig(architecture="topk", k=4, training_tokens=2048, batch_size_tokens=64, seed=3)
    whole = formal_sae.train_sae(model, ds, config, out_dir=tmp_path / "whole")
    from formal_sae.saes import checkpoints

    real, completed = checkpoints.mark_complete, []

    def complete_then_stop(*args, **kwargs):  # a kill right after the 4th checkpoint of 10
        real(*args, **kwargs)
        completed.append(1)
        if len(completed) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "mark_complete", complete_then_stop)
    with pytest.raises(KeyboardInterrupt):
        formal_sae.train_sae(model, ds, config, out_dir=tmp_path / "resumed")
    assert not (tmp_path / "resumed").exists() and in_progress_path(tmp_path / "resumed").is_dir()
    monkeypatch.undo()
    again = formal_sae.train_sae(model, ds, config, out_dir=tmp_path / "resumed")
    a, b = (load_file(tmp_path / run / "sae_weights.safetensors") for run in ("whole", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(whole.W_dec, again.W_dec)
    assert "checkpoints" not in {p.name for p in (tmp_path / "resumed").iterdir()}


# ------------------------------------------------------------------------------ permissions
def modes(directory: Path) -> set[tuple[str, int]]:
    return {("dir" if p.is_dir() else "file", stat.S_IMODE(p.stat().st_mode)) for p in [directory, *directory.rglob("*")]}


@pytest.mark.parametrize(
    ("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)]
)
def test_every_artifact_follows_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        ds = formal_sae.build_dataset("expr", n_train=40, n_validation=8, n_test=8, seed=0)
        formal_sae.save_dataset(ds, tmp_path / "data")
        formal_sae.generate_dataset("expr", tmp_path / "generated", n_train=20, n_validation=4, n_test=4)
        train = formal_sae.TrainConfig(
            steps=4, batch_size=8, eval_every=4, checkpoint_every=2, validity_samples=4, final_validity_repeats=1
        )
        model = formal_sae.train_model(ds, "tiny", train, out_dir=tmp_path / "model", progress=False)
        sae = formal_sae.train_sae(
            model, ds, architecture="topk", k=4, training_tokens=256, batch_size_tokens=64, out_dir=tmp_path / "sae"
        )
        formal_sae.analyze(model, sae, ds, max_sentences=8).save(tmp_path / "analysis")
    finally:
        os.umask(old)
    for name in ("data", "generated", "model", "sae", "analysis"):
        assert modes(tmp_path / name) == {("file", file_mode), ("dir", dir_mode)}, name


def test_a_kill_while_the_in_progress_folder_is_made_leaves_nothing_that_blocks_a_rerun(tmp_path, monkeypatch):
    """Found by fault injection: a kill between making ``<out>.in-progress`` and writing its marker
    left an unmarked folder that the rerun refused. The folder now gets its name only with its marker."""
    out = tmp_path / "art"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for a SIGKILL inside the marker's write

    monkeypatch.setattr(outputs_mod, "_write_marker", killed)
    with pytest.raises(KeyboardInterrupt), output_dir(out, "test", {"a": 1}, resumable=True):
        pass
    assert not in_progress_path(out).exists()  # only a hidden, unnamed folder may remain
    monkeypatch.undo()
    in_progress_path(out).mkdir()  # as an older version could leave it: empty, or a half-written marker
    (in_progress_path(out) / ".formal_sae_artifact.json.tmp-123-0123abcd").write_bytes(b"")
    with output_dir(out, "test", {"a": 1}, resumable=True) as work:
        (work / "x").write_text("done")
    assert (out / "x").read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


@pytest.mark.parametrize("swap", [True, False])
def test_a_folder_is_replaced_whole_with_or_without_the_one_step_swap(tmp_path, monkeypatch, swap):
    """io.atomic_replace on a folder (the LM checkpoint): renameat2's exchange where the system
    has it, two renames elsewhere; either way the new folder replaces the old and nothing is left beside it."""
    from formal_sae import io as io_mod

    calls = []
    real = io_mod.exchange

    def exchange(a, b):
        calls.append((Path(a).name, Path(b).name))
        return real(a, b) if swap else False

    monkeypatch.setattr(io_mod, "exchange", exchange)
    target = tmp_path / "ckpt"
    for version in ("1", "2"):
        io_mod.atomic_replace(target, lambda tmp, v=version: (tmp.mkdir(), (tmp / "v.txt").write_text(v)))
    assert (target / "v.txt").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert len(calls) == 1 and calls[0][1] == "ckpt"  # asked once: only the second write replaces a folder


def test_config_differences_name_the_setting_inside_lists_of_the_same_length():
    from formal_sae.outputs import config_differences

    old = {"grid": {"cells": [{"lr": 0.01, "k": 4}, {"lr": 0.01, "k": 8}]}, "seed": 0}
    new = {"grid": {"cells": [{"lr": 0.01, "k": 4}, {"lr": 0.003, "k": 8}]}, "seed": 0, "extra": 1}
    assert config_differences(old, new) == ["extra (absent -> 1)", "grid.cells.1.lr (0.01 -> 0.003)"]
    assert config_differences({"cells": [1, 2]}, {"cells": [1]}) == ["cells ([1, 2] -> [1])"]  # no position to name
    assert config_differences(old, old) == []

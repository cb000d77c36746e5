"""The ``formal-sae`` command line, run in-process (``main([...])``) and once as the installed script."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from transformers import AutoTokenizer

import formal_sae
from formal_sae.cli import main

SIZES = ["--n-train", "12", "--n-validation", "3", "--n-test", "2"]
SPLIT_LINE = re.compile(
    r"^\s+(train|validation|test)\s+(\d+) sentences\s+length mean (\S+)\s+min (\d+)\s+median (\S+)\s+max (\d+)$", re.MULTILINE
)


def sizes(ds: datasets.DatasetDict) -> dict[str, int]:
    return {name: len(split) for name, split in ds.items()}


def assert_one_line_error(err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("formal-sae generate: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "formal-sae"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "formal_sae.cli"]


def offline_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# ---------------------------------------------------------------------------- grammars
def test_grammars_lists_every_registry_name(capsys):
    assert main(["grammars"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    names = formal_sae.list_grammars()
    assert len(lines) == len(names)
    assert [line.split()[0] for line in lines] == names
    for line, name in zip(lines, names):
        grammar = formal_sae.load_grammar(name)
        assert f"vocabulary {len(grammar.terminals)}" in line


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"formal-sae {formal_sae.__version__}"


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage: formal-sae" in capsys.readouterr().err


# ---------------------------------------------------------------------------- generate
def test_generate_writes_dataset_and_reports_statistics(tmp_path, capsys):
    out = tmp_path / "dyck"
    assert main(["generate", "dyck2", "--out", str(out), *SIZES, "--seed", "5"]) == 0
    printed = capsys.readouterr().out

    ds = datasets.load_from_disk(str(out))
    assert isinstance(ds, datasets.DatasetDict)
    assert sizes(ds) == {"train": 12, "validation": 3, "test": 2}
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    grammar = formal_sae.load_grammar("dyck2")
    assert tok.convert_tokens_to_ids(list(grammar.terminals)) == [0, 1, 2, 3]
    assert (out / "README.md").is_file()

    # the arguments reached build_dataset: same data as the API with the same settings
    expected = formal_sae.build_dataset("dyck2", 12, 3, 2, seed=5)
    for name in ds:
        assert ds[name]["text"] == expected[name]["text"]
    meta = formal_sae.dataset_metadata(ds)
    assert (meta.seed, meta.grammar, meta.prompt_format) == (5, "dyck2", "bos")

    assert f"wrote {out}: grammar dyck2, seed 5, prompt bos" in printed
    reported = {m[0]: m[1:] for m in SPLIT_LINE.findall(printed)}
    assert set(reported) == {"train", "validation", "test"}
    for name, (count, mean, lo, median, hi) in reported.items():
        lengths = [len(t.split(" ")) for t in ds[name]["text"]]
        assert int(count) == len(lengths)
        assert float(mean) == pytest.approx(statistics.fmean(lengths), abs=0.006)
        assert (int(lo), int(hi)) == (min(lengths), max(lengths))
        assert float(median) == statistics.median(lengths)
    assert f"features: {', '.join(grammar.feature_names)}" in printed


def test_generate_paper_prompt_and_max_length(tmp_path, capsys):
    out = tmp_path / "expr"
    args = ["generate", "expr", "--out", str(out), *SIZES, "--prompt-format", "paper", "--max-length", "5"]
    assert main(args) == 0
    assert "prompt paper" in capsys.readouterr().out
    ds = formal_sae.load_dataset_dir(out)
    grammar = formal_sae.load_grammar("expr")
    n = len(grammar.terminals)
    paper = [n + 4, n + 5, n + 6, n + 7, n + 8, n + 6, n + 9]  # Task: Task0 \n Ops: <null> \n Out:, after <pad> <bos> <eos> <unk>
    for split in ds.values():
        for row in split:
            assert row["input_ids"][:7] == paper
            assert row["length"] <= 5
    assert formal_sae.dataset_metadata(ds).max_length == 5


def test_generate_unknown_grammar(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "no-such-grammar", "--out", str(out), *SIZES]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line = assert_one_line_error(captured.err, "unknown grammar 'no-such-grammar'")
    for name in formal_sae.list_grammars():
        assert name in line
    assert not out.exists()


def test_generate_existing_out_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "dyck2-shallow", "--out", str(out), *SIZES, "--seed", "1"]) == 0
    (out / "marker.txt").write_text("still here")
    capsys.readouterr()

    assert main(["generate", "dyck2-shallow", "--out", str(out), *SIZES, "--seed", "2"]) == 2
    assert_one_line_error(capsys.readouterr().err, str(out), "already exists", "--overwrite")
    assert (out / "marker.txt").read_text() == "still here"
    assert formal_sae.dataset_metadata(formal_sae.load_dataset_dir(out)).seed == 1

    # --overwrite replaces only what formal-sae wrote: the user's file is named, and kept
    assert main(["generate", "dyck2-shallow", "--out", str(out), "--n-train", "4", "--seed", "2", "--overwrite"]) == 2
    assert_one_line_error(capsys.readouterr().err, str(out), "files formal-sae did not write (marker.txt)")
    assert (out / "marker.txt").read_text() == "still here"
    (out / "marker.txt").unlink()
    assert main(["generate", "dyck2-shallow", "--out", str(out), "--n-train", "4", "--seed", "2", "--overwrite"]) == 0
    assert "seed 2" in capsys.readouterr().out
    ds = formal_sae.load_dataset_dir(out)
    assert formal_sae.dataset_metadata(ds).seed == 2
    assert sizes(ds)["train"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old siblings


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--n-train", "-3", "n_train must be a non-negative integer, got -3"),
        ("--n-validation", "-1", "n_validation must be a non-negative integer, got -1"),
        ("--max-length", "0", "max_length must be a positive number of tokens"),
    ],
)
def test_generate_bad_numbers(tmp_path, capsys, flag, value, message):
    out = tmp_path / "out"
    assert main(["generate", "dyck2", "--out", str(out), flag, value]) == 2
    assert_one_line_error(capsys.readouterr().err, message)
    assert not out.exists()


def test_generate_all_sizes_zero(tmp_path, capsys):
    args = ["generate", "dyck2", "--out", str(tmp_path / "out"), "--n-train", "0", "--n-validation", "0", "--n-test", "0"]
    assert main(args) == 2
    assert_one_line_error(capsys.readouterr().err, "all split sizes are 0")


def test_generate_from_pcfg_file(tmp_path, capsys):
    path = tmp_path / "ab.pcfg"
    text = "S -> 'a' S [0.3] | 'b' [0.7]\n"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["generate", str(path), "--out", str(out), *SIZES, "--seed", "3"]) == 0
    assert "grammar ab," in capsys.readouterr().out
    ds = datasets.load_from_disk(str(out))
    assert sizes(ds) == {"train": 12, "validation": 3, "test": 2}
    for split in ds.values():
        assert all(re.fullmatch(r"(a )*b", t) for t in split["text"])
    meta = formal_sae.dataset_metadata(ds)
    assert meta.grammar == "ab"
    assert formal_sae.grammar_of(meta).to_string() == formal_sae.Grammar.from_string(text).to_string()
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    assert tok.convert_tokens_to_ids(["a", "b"]) == [0, 1]


def test_generate_from_malformed_pcfg_file(tmp_path, capsys):
    path = tmp_path / "bad.pcfg"
    path.write_text("S -> 'a' S [0.5] | 'b' [0.2]\n")
    assert main(["generate", str(path), "--out", str(tmp_path / "out")]) == 2
    assert_one_line_error(capsys.readouterr().err, "sum to 0.7")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- the installed script
def test_installed_script(tmp_path):
    """One real process (about 5 s: importing formal_sae imports transformers and datasets)."""
    out = tmp_path / "expr"
    ok = subprocess.run(
        [*cli_command(), "generate", "expr", "--out", str(out), *SIZES, "--seed", "9"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=offline_env(),
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert f"wrote {out}: grammar expr, seed 9" in ok.stdout
    ds = datasets.load_from_disk(str(out))
    assert sizes(ds) == {"train": 12, "validation": 3, "test": 2}
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    assert ds["train"]["text"] == formal_sae.build_dataset("expr", 12, 3, 2, seed=9)["train"]["text"]
    assert "Traceback" not in ok.stderr


# ---------------------------------------------------------------------------- the generated options
def _help(capsys, command: str) -> str:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def _flags(help_text: str) -> set[str]:
    """The flags of the usage lines (up to the first blank line), but --help; ``-k`` as ``--k``."""
    usage = help_text.split("\n\n")[0]
    found = re.findall(r"[\[ ](--?[a-z0-9][a-z0-9-]*)", usage)
    return {"--" + flag.lstrip("-") for flag in found} - {"--h", "--help"}


def test_every_config_field_is_a_flag_with_its_default(capsys):
    """train-sae's flags are SAETrainConfig's (and CausalConfig's, prefixed) fields, defaults and all."""
    import dataclasses

    raw = _help(capsys, "train-sae")
    flags, help_text = _flags(raw), " ".join(raw.split())
    for f in dataclasses.fields(formal_sae.SAETrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in flags, flag
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if default is not None:
            assert re.search(rf"{re.escape(flag)} .*?\(default: {re.escape(str(default))}\)", help_text), flag
    for f in dataclasses.fields(formal_sae.CausalConfig):
        assert "--causal-" + f.name.replace("_", "-") in flags


def test_no_flag_is_declared_outside_the_dataclasses(capsys):
    import dataclasses

    from formal_sae.cli import COMMANDS

    for command in COMMANDS:
        names, todo = set(), [command]
        while todo:
            for f in dataclasses.fields(todo.pop()):
                config = f.metadata.get("config")
                if config is not None:  # a prefixed configuration: --PREFIX-FIELD
                    names |= {f.metadata["prefix"] + g.name for g in dataclasses.fields(config)}
                elif isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
                    todo.append(f.default_factory)  # a nested configuration: its fields are flags
                else:
                    names.add(f.name)
        declared = {"--" + n.replace("_", "-") for n in names} | {"--no-" + n.replace("_", "-") for n in names}
        flags = _flags(_help(capsys, command.name))
        assert flags <= declared, (command.name, flags - declared)
        assert flags >= {"--" + n.replace("_", "-") for n in names if n not in ("grammar", "saes", "directory", "repo_id")}, (
            command.name
        )
        assert "." not in _help(capsys, command.name).split("\n\n")[0]  # no name clash made simple_parsing prefix a flag


def test_the_causal_term_is_on_only_when_a_causal_flag_is_given():
    from formal_sae.cli import build_parser

    base = ["train-sae", "--model", "m", "--data", "d", "--out", "o"]
    assert build_parser().parse_args(base).causal is None
    command = build_parser().parse_args([*base, "--causal-coefficient", "1.0", "--l1-coefficient=0.5"])
    assert command.causal == formal_sae.CausalConfig(coefficient=1.0) and command.sae.l1_coefficient == 0.5
    assert build_parser().parse_args([*base, "--causal-steps=7"]).causal.steps == 7

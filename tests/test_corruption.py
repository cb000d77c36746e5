"""Corrupted artifacts: every loader gives one line naming the file and the fix, or is not affected.

A small seeded matrix (``benchmarks/fuzz_artifacts.py`` runs the large one): each file kind of a
model, an SAE, a dataset, an interrupted sweep and a grammar file is truncated (to 0 bytes, to half,
by one byte), has bytes flipped, is replaced by garbage or by JSON of the wrong shape, or is deleted,
on a fresh copy; then the command that loads it runs through ``formal_sae.cli.main`` and the API
loader is called. See ``corruption_helpers.py`` for what counts as clean and as harmless.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from corruption_helpers import (
    CORRUPTIONS,
    GRAMMAR_TEXT,
    Case,
    Fuzzer,
    build_artifacts,
    corrupt_text,
    corruptions_for,
    judge_grammar_text,
    run_cli,
)

import formal_sae
from formal_sae.io import read_json

FLIP_SEEDS = (0, 1, 2)
FILES = {
    "model": ["model.safetensors", "config.json", "metrics.json", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"],
    "sae": ["sae_weights.safetensors", "cfg.json", "formal_sae_sae_config.json"],
    "data": ["train/data-00000-of-00001.arrow", "train/dataset_info.json", "train/state.json", "dataset_dict.json"],
    "sweep": ["grid.json", "cells/x1/metrics.json"],
    "grammar": ["grammar.pcfg"],
}
CASES = [
    Case(a, f, kind, seed) for a, files in FILES.items() for f in files for kind, seed in corruptions_for(Path(f), FLIP_SEEDS)
]

# A known problem outside the loaders this suite covers (formal_sae/saes/sweep.py): a grid.json edited into
# another valid grid is reported as "holds a different sweep", naming the folder, not the file.
KNOWN = {"sweep:grid.json:flip1": "sweep.py: a grid.json changed into another valid grid is blamed on the folder, not the file"}
#: Corruptions that may leave a command unaffected: files no loader reads, or that a loader can do without.
MAY_BE_HARMLESS = {
    ("model", "metrics.json"): set(CORRUPTIONS),  # written for people; formal-sae never reads it back
    ("sae", "formal_sae_sae_config.json"): {"delete"},  # plain SAELens SAEs have none
    ("sweep", "grid.json"): {"delete"},  # rewritten from the grid given on the command line
    ("sweep", "cells/x1/metrics.json"): set(CORRUPTIONS),  # an unfinished cell: the resumed sweep retrains it
}


def param(case: Case):
    known = KNOWN.get(case.id) or KNOWN.get(case.id.rstrip("0123456789"))
    return pytest.param(case, id=case.id, marks=pytest.mark.xfail(reason=known, strict=False) if known else ())


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory) -> Fuzzer:
    """The pristine artifacts (built once, a few seconds) and the runner that copies and corrupts them."""
    root = tmp_path_factory.mktemp("corruption")
    return Fuzzer(build_artifacts(root / "pristine"), root / "work")


def must_fail(case: Case) -> bool:
    """Deleting or truncating a file a loader reads changes what it reads: that must be an error."""
    return case.corruption in ("delete", "empty", "half") and case.corruption not in MAY_BE_HARMLESS.get(
        (case.artifact, case.file), ()
    )


@pytest.mark.parametrize("case", [param(c) for c in CASES])
def test_the_command_fails_cleanly_or_is_unaffected(fuzzer, case):
    outcome = fuzzer.cli(case)
    assert outcome.kind in ("error", "harmless"), outcome.detail
    assert outcome.kind == "error" or not must_fail(case), f"{case.id} went unnoticed"


@pytest.mark.parametrize("case", [param(c) for c in CASES if c.artifact in ("model", "sae", "data", "grammar")])
def test_the_api_loader_raises_a_formal_sae_error_naming_the_file_or_is_unaffected(fuzzer, case):
    outcome = fuzzer.api(case)
    assert outcome.kind in ("error", "harmless"), outcome.detail
    assert outcome.kind == "error" or not must_fail(case), f"{case.id} went unnoticed"


@pytest.mark.parametrize(("kind", "seed"), [(k, s) for k in CORRUPTIONS for s in (range(12) if k == "flip" else (0,))])
def test_corrupted_grammar_text_gives_one_line_or_a_grammar(kind, seed):
    outcome = judge_grammar_text(corrupt_text(GRAMMAR_TEXT, kind, seed))
    assert outcome.kind in ("error", "harmless"), outcome.detail


# ---------------------------------------------------------------------------- the fixes, one by one
def test_the_cli_folds_a_multi_line_error_into_one_line(monkeypatch):
    def fail(path: str) -> None:
        raise formal_sae.FormalSAEError("2 problems:\n  first\n  second\x1cthird\u2028fourth")

    monkeypatch.setattr(formal_sae, "load_grammar", lambda name, max_length=None: fail(name))
    rc, err, exc = run_cli(["generate", "x", "--out", "/nonexistent/never-written"])
    assert (rc, exc) == (2, "")
    assert err == "formal-sae generate: error: 2 problems: first; second; third; fourth"


def test_read_json_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "thing.json"
    with pytest.raises(formal_sae.FormalSAEError, match=r"thing \S+thing\.json is missing; do this$"):
        read_json(path, what="thing", fix="do this")
    path.write_bytes(b"\xff{")
    with pytest.raises(formal_sae.FormalSAEError, match=r"is corrupt \(not valid JSON: .*\); delete it and regenerate it$"):
        read_json(path)
    path.write_text("[" * 100_000 + "]" * 100_000)  # nesting deeper than the JSON parser's recursion limit
    with pytest.raises(formal_sae.FormalSAEError, match="is corrupt"):
        read_json(path)


def test_a_grammar_file_error_names_the_file(tmp_path):
    path = tmp_path / "mine.pcfg"
    with pytest.raises(formal_sae.GrammarError, match=rf"grammar file {path} does not exist; fix the path"):
        formal_sae.load_grammar(str(path))
    path.write_bytes(b"S -> 'a' [1.0]\n\xff")
    with pytest.raises(formal_sae.GrammarError, match=rf"grammar file {path} cannot be read as UTF-8"):
        formal_sae.load_grammar(str(path))
    path.write_text("S -> 'a' [0.5]\n")
    with pytest.raises(formal_sae.GrammarError, match=rf"grammar file {path}: .*sum to 0\.5.*\(edit the file and run again\)"):
        formal_sae.load_grammar(str(path))
    path.write_text(GRAMMAR_TEXT)
    assert formal_sae.load_grammar(str(path)).to_string() == formal_sae.Grammar.from_string(GRAMMAR_TEXT).to_string()

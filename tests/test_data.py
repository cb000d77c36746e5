"""Tokenizers, datasets, dataset directories and the Hub upload, checked against independent expectations.

Every dataset here is tiny (tens of sentences). Nothing touches the network: the Hub upload is
tested with fakes that record what would have been pushed.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import statistics
from pathlib import Path

import datasets
import huggingface_hub
import pytest
import yaml
from transformers import AutoTokenizer

import formal_sae
from formal_sae import data as data_module
from formal_sae.data import tokenizer as tokenizer_module

# The special tokens after the grammar's terminals, written out by hand (not taken from the module).
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "Task:", "Task0", "\n", "Ops:", "<null>", "Out:"]
PAPER_TOKENS = ["Task:", "Task0", "\n", "Ops:", "<null>", "\n", "Out:"]
AB_TEXT = "S -> 'a' S [0.4] | 'b' [0.6]\n"


def special_id(grammar: formal_sae.Grammar, token: str) -> int:
    return len(grammar.terminals) + SPECIALS.index(token)


def expected_prompt(grammar: formal_sae.Grammar, prompt_format: str) -> list[int]:
    tokens = PAPER_TOKENS if prompt_format == "paper" else ["<bos>"]
    return [special_id(grammar, t) for t in tokens]


def sentence_ids(grammar: formal_sae.Grammar, tokens: list[str]) -> list[int]:
    return [grammar.terminals.index(t) for t in tokens]


def front_matter(card_text: str, is_json: bool = True) -> dict:
    """The metadata block between the first two ``---`` lines, parsed as YAML (and, for our cards, as JSON)."""
    lines = card_text.splitlines()
    assert lines[0] == "---"
    end = lines.index("---", 1)
    block = "\n".join(lines[1:end])
    parsed = yaml.safe_load(block)
    if is_json:
        assert parsed == json.loads(block)  # our front matter is JSON, which is also valid YAML
    return parsed


def card_body(card_text: str) -> str:
    lines = card_text.splitlines()
    return "\n".join(lines[lines.index("---", 1) + 1 :])


def recomputed_stats(lengths: list[int]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(lengths), 3),
        "std": round(statistics.pstdev(lengths), 3),
        "min": min(lengths),
        "median": float(statistics.median(lengths)),
        "max": max(lengths),
    }


def assert_rows_match_grammar(ds: datasets.DatasetDict, grammar: formal_sae.Grammar, prompt_format: str) -> None:
    """Every row re-derived independently from its ``text`` and the grammar."""
    prompt = expected_prompt(grammar, prompt_format)
    eos = special_id(grammar, "<eos>")
    names = [s.name for s in grammar.feature_specs]
    for split in ds.values():
        assert split.column_names == ["input_ids", "text", "length", *names]
        for row in split:
            tokens = row["text"].split(" ")
            assert grammar.is_grammatical(tokens), row["text"]
            assert row["length"] == len(tokens)
            if grammar.max_length is not None:
                assert len(tokens) <= grammar.max_length
            assert row["input_ids"] == [*prompt, *sentence_ids(grammar, tokens), eos]
            truth = grammar.features(tokens)
            for name in names:
                col = row[name]
                assert len(col) == len(row["input_ids"]), name
                assert col[: len(prompt)] == [formal_sae.IGNORE_VALUE] * len(prompt), name
                assert col[-1] == formal_sae.IGNORE_VALUE, name
                assert col[len(prompt) : -1] == truth[name], name
                assert formal_sae.IGNORE_VALUE not in col[len(prompt) : -1], name


def texts(ds: datasets.DatasetDict) -> dict[str, list[str]]:
    return {name: split["text"] for name, split in ds.items()}


def leftovers(parent: Path, name: str) -> list[str]:
    """Anything beside ``name`` that a write left behind (in-progress folders, temporaries)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((f".{name}.", f"{name}.")))


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def dyck() -> formal_sae.Grammar:
    return formal_sae.load_grammar("dyck2")


@pytest.fixture(scope="module")
def expr() -> formal_sae.Grammar:
    return formal_sae.load_grammar("expr")


@pytest.fixture(scope="module")
def dyck_paper(dyck) -> datasets.DatasetDict:
    return formal_sae.build_dataset(dyck, n_train=40, n_validation=10, n_test=8, seed=0, prompt_format="paper")


@pytest.fixture(scope="module")
def generated(tmp_path_factory, expr) -> tuple[Path, datasets.DatasetDict]:
    out = tmp_path_factory.mktemp("gen") / "expr-data"
    ds = formal_sae.generate_dataset(expr, out, n_train=30, n_validation=6, n_test=5, seed=7, prompt_format="paper")
    return out, ds


# ---------------------------------------------------------------------------- tokenizer
@pytest.mark.parametrize("name", ["dyck2", "expr", "english"])
def test_tokenizer_ids_are_terminals_in_order_then_specials(name):
    grammar = formal_sae.load_grammar(name)
    tok = formal_sae.build_tokenizer(grammar)
    n = len(grammar.terminals)
    assert tok.convert_tokens_to_ids(list(grammar.terminals)) == list(range(n))
    assert tok.convert_tokens_to_ids(SPECIALS) == list(range(n, n + len(SPECIALS)))
    assert len(tok) == n + len(SPECIALS)
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == ("<pad>", "<bos>", "<eos>", "<unk>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (n, n + 1, n + 2, n + 3)


def test_tokenizer_encodes_with_bos_and_decodes_back(expr):
    tok = formal_sae.build_tokenizer(expr)
    sentence = expr.sample(1, seed=3)[0] + expr.sample(1, seed=4)[0]  # any terminals, grammatical or not
    text = " ".join(sentence)
    ids = tok(text)["input_ids"]
    assert ids == [special_id(expr, "<bos>"), *sentence_ids(expr, sentence)]
    assert tok(text, add_special_tokens=False)["input_ids"] == sentence_ids(expr, sentence)
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids) == "<bos> " + text
    assert tok.convert_ids_to_tokens(ids[1:]) == sentence
    assert tok("zzz", add_special_tokens=False)["input_ids"] == [special_id(expr, "<unk>")]


def test_paper_prompt_encodes_to_its_seven_ids(dyck):
    assert list(formal_sae.PAPER_PROMPT) == PAPER_TOKENS
    tok = formal_sae.build_tokenizer(dyck)
    ids = formal_sae.prompt_ids(tok, "paper")
    # o0 c0 o1 c1 are ids 0-3; <pad> <bos> <eos> <unk> 4-7; then Task: Task0 \n Ops: <null> Out:
    assert ids == [8, 9, 10, 11, 12, 10, 13]
    assert len(set(ids)) == 6  # the newline token appears twice
    assert tok.unk_token_id not in ids
    # the newline survives text encoding (tokens are split on single spaces only)
    assert tok(" ".join(PAPER_TOKENS), add_special_tokens=False)["input_ids"] == ids
    assert formal_sae.prompt_ids(tok, "bos") == [5]


def test_unknown_prompt_format_for_prompt_ids(dyck):
    tok = formal_sae.build_tokenizer(dyck)
    with pytest.raises(formal_sae.DatasetError, match=r"unknown prompt format 'chat'.*'bos'.*'paper'"):
        formal_sae.prompt_ids(tok, "chat")


def test_saved_tokenizer_reloads_with_auto_tokenizer(tmp_path, expr):
    tok = formal_sae.build_tokenizer(expr, save_dir=tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    via_api = formal_sae.load_tokenizer(tmp_path / "tok")
    sample = [" ".join(s) for s in expr.sample(5, seed=1)] + [" ".join(PAPER_TOKENS)]
    for text in sample:
        assert reloaded(text)["input_ids"] == tok(text)["input_ids"] == via_api(text)["input_ids"]
    assert reloaded.get_vocab() == tok.get_vocab()
    assert reloaded.bos_token_id == tok.bos_token_id and reloaded.eos_token_id == tok.eos_token_id


def test_load_tokenizer_missing(tmp_path):
    with pytest.raises(formal_sae.DatasetError, match="no tokenizer in"):
        formal_sae.load_tokenizer(tmp_path)


@pytest.mark.parametrize("clash", ["<eos>", "<bos>", "<pad>", "Task:", "<null>"])
def test_terminal_clashing_with_special_token_is_rejected(clash):
    grammar = formal_sae.Grammar.from_string(f"S -> 'a' S [0.4] | '{clash}' [0.6]")
    with pytest.raises(formal_sae.DatasetError, match=re.escape(repr(clash))):
        formal_sae.build_tokenizer(grammar)
    with pytest.raises(formal_sae.DatasetError, match="reserved"):
        formal_sae.build_dataset(grammar, 2, 1, 1)


def test_terminal_with_space_is_rejected():
    grammar = formal_sae.Grammar.from_string("S -> 'a b' [1.0]")
    with pytest.raises(formal_sae.DatasetError, match="space"):
        formal_sae.build_tokenizer(grammar)


# ---------------------------------------------------------------------------- build_dataset
def test_split_sizes(dyck_paper):
    assert {name: len(split) for name, split in dyck_paper.items()} == {"train": 40, "validation": 10, "test": 8}


def test_paper_rows_match_independent_recomputation(dyck_paper, dyck):
    assert_rows_match_grammar(dyck_paper, dyck, "paper")
    assert dyck_paper["train"][0]["input_ids"][:7] == [8, 9, 10, 11, 12, 10, 13]


@pytest.mark.parametrize("name", ["expr", "expr-postfix", "english", "dyck2-shallow"])
def test_bos_rows_match_independent_recomputation(name):
    grammar = formal_sae.load_grammar(name)
    ds = formal_sae.build_dataset(name, n_train=20, n_validation=4, n_test=4, seed=11)
    assert {k: len(v) for k, v in ds.items()} == {"train": 20, "validation": 4, "test": 4}
    assert_rows_match_grammar(ds, grammar, "bos")


def test_max_length_is_respected_and_recorded():
    grammar = formal_sae.load_grammar("dyck2", max_length=12)
    ds = formal_sae.build_dataset(grammar, n_train=40, n_validation=2, n_test=2, seed=0)
    assert max(ds["train"]["length"]) <= 12
    meta = formal_sae.dataset_metadata(ds)
    assert meta.max_length == 12
    assert formal_sae.grammar_of(meta).max_length == 12


def test_same_seed_same_data_and_fingerprint(dyck, dyck_paper):
    again = formal_sae.build_dataset(dyck, n_train=40, n_validation=10, n_test=8, seed=0, prompt_format="paper")
    for name in dyck_paper:
        assert again[name].to_dict() == dyck_paper[name].to_dict()
        assert again[name]._fingerprint == dyck_paper[name]._fingerprint


def test_different_seed_different_data(dyck, dyck_paper):
    other = formal_sae.build_dataset(dyck, n_train=40, n_validation=10, n_test=8, seed=1, prompt_format="paper")
    for name in dyck_paper:
        assert other[name]["text"] != dyck_paper[name]["text"]
        assert other[name]._fingerprint != dyck_paper[name]._fingerprint
    assert formal_sae.dataset_metadata(other).seed == 1


def test_splits_have_their_own_random_streams(expr):
    ds = formal_sae.build_dataset(expr, n_train=10, n_validation=10, n_test=10, seed=0)
    assert len({tuple(t) for t in texts(ds).values()}) == 3


def test_metadata(dyck_paper, dyck):
    meta = formal_sae.dataset_metadata(dyck_paper)
    assert meta.grammar == "dyck2"
    assert meta.grammar_text == dyck.to_string()
    assert meta.seed == 0
    assert meta.prompt_format == "paper"
    assert meta.prompt == PAPER_TOKENS and meta.prompt_length == 7
    assert meta.max_length == formal_sae.PAPER_MAX_LENGTH == 110
    assert meta.splits == {"train": 40, "validation": 10, "test": 8}
    assert meta.ignore_value == formal_sae.IGNORE_VALUE == -100
    assert meta.formal_sae_version == formal_sae.__version__
    assert meta.feature_specs == list(dyck.feature_specs)
    assert [f["name"] for f in meta.features] == dyck.feature_names
    for name, split in dyck_paper.items():
        lengths = [len(t.split(" ")) for t in split["text"]]
        assert meta.length_stats[name] == recomputed_stats(lengths)
        assert formal_sae.dataset_metadata(split) == meta  # every split carries it
    assert formal_sae.DatasetMetadata.from_json(meta.to_json()) == meta


def test_grammar_of_registry_grammar(dyck_paper, dyck):
    back = formal_sae.grammar_of(formal_sae.dataset_metadata(dyck_paper))
    assert back.to_string() == dyck.to_string()
    assert back.name == "dyck2"
    assert back.feature_names == dyck.feature_names
    assert "depth" in back.feature_names  # the language-specific features, not only the generic ones


def test_custom_grammar_dataset_and_grammar_of():
    custom = formal_sae.Grammar.from_string(AB_TEXT, name="ab")
    ds = formal_sae.build_dataset(custom, n_train=25, n_validation=5, n_test=5, seed=2)
    assert_rows_match_grammar(ds, custom, "bos")
    assert all(re.fullmatch(r"(a )*b", t) for t in ds["train"]["text"])
    meta = formal_sae.dataset_metadata(ds)
    assert meta.grammar == "ab"
    back = formal_sae.grammar_of(meta)
    assert back.name == "ab"
    assert back.to_string() == custom.to_string()
    assert back.feature_names == custom.feature_names == ["tree_depth", "preterminal", "parent"]
    assert back.features(["a", "a", "b"]) == custom.features(["a", "a", "b"])


def test_grammar_of_custom_rules_under_a_registry_name():
    """A grammar named like a registry grammar but with other rules is rebuilt from its stored text."""
    custom = formal_sae.Grammar.from_string(AB_TEXT, name="dyck2")
    ds = formal_sae.build_dataset(custom, n_train=5, n_validation=1, n_test=1, seed=0)
    assert_rows_match_grammar(ds, custom, "bos")
    back = formal_sae.grammar_of(formal_sae.dataset_metadata(ds))
    assert back.to_string() == custom.to_string() != formal_sae.load_grammar("dyck2").to_string()
    assert back.terminals == ("a", "b")


def test_empty_split_is_allowed(tmp_path, dyck):
    ds = formal_sae.build_dataset(dyck, n_train=6, n_validation=0, n_test=0, seed=0)
    assert {k: len(v) for k, v in ds.items()} == {"train": 6, "validation": 0, "test": 0}
    assert ds["validation"].features == ds["train"].features
    loaded = formal_sae.generate_dataset(dyck, tmp_path / "out", n_train=6, n_validation=0, n_test=0, seed=0)
    assert {k: len(v) for k, v in loaded.items()} == {"train": 6, "validation": 0, "test": 0}
    assert loaded["train"]["text"] == ds["train"]["text"]


def test_cache_dir_receives_arrow_files(tmp_path, expr):
    cache = tmp_path / "cache"
    ds = formal_sae.build_dataset(expr, n_train=30, n_validation=5, n_test=5, seed=4, cache_dir=cache)
    for name in ("train", "validation", "test"):
        arrow = list((cache / name).rglob("*.arrow"))
        assert arrow, f"no Arrow file for {name} under {cache}"
        files = [Path(f["filename"]) for f in ds[name].cache_files]
        assert files and all(cache in f.parents for f in files)  # backed by those files, not held in memory
    in_memory = formal_sae.build_dataset(expr, n_train=30, n_validation=5, n_test=5, seed=4)
    assert texts(ds) == texts(in_memory)


def test_default_build_leaves_no_temporary_directories(tmp_path, monkeypatch, expr):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    formal_sae.build_dataset(expr, n_train=5, n_validation=1, n_test=1, seed=0)
    formal_sae.generate_dataset(expr, tmp_path / "out", n_train=5, n_validation=1, n_test=1, seed=0)
    names = [p.name for p in tmp_path.iterdir()]
    assert not [n for n in names if n.startswith(("formal-sae-data-", "formal-sae-gen-"))], names


def test_build_tokenizer_without_a_folder_leaves_no_temporary_directory(tmp_path, monkeypatch, expr):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    formal_sae.build_tokenizer(expr)  # may make the process's one temporary directory
    before = sorted(p.name for p in tmp_path.iterdir())
    tok = formal_sae.build_tokenizer(expr)
    formal_sae.build_tokenizer(formal_sae.load_grammar("dyck2"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # none left per call
    assert tok("dig0 un0")["input_ids"] == [special_id(expr, "<bos>"), *sentence_ids(expr, ["dig0", "un0"])]


def test_a_forked_worker_that_builds_a_tokenizer_leaves_no_temporary_directory(tmp_path, monkeypatch, expr):
    """A sweep worker is a process forked by multiprocessing, which ends with os._exit: the
    folder it made must still go, and the parent's folder it inherited must stay."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(tokenizer_module, "_SCRATCH", None)
    fork = multiprocessing.get_context("fork")

    def build_in_a_worker():
        worker = fork.Process(target=formal_sae.build_tokenizer, args=(expr,))
        worker.start()
        worker.join()
        assert worker.exitcode == 0

    build_in_a_worker()  # the parent has none yet: the worker makes its own
    assert list(tmp_path.iterdir()) == []
    formal_sae.build_tokenizer(expr)
    parents = list(tmp_path.iterdir())
    assert len(parents) == 1
    build_in_a_worker()  # the worker inherits the parent's and must not delete it
    assert list(tmp_path.iterdir()) == parents and any(parents[0].rglob("tokenizer.json"))


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_train": -1}, r"n_train must be a non-negative integer, got -1"),
        ({"n_validation": 2.5}, r"n_validation must be a non-negative integer, got 2\.5"),
        ({"n_test": "3"}, r"n_test must be a non-negative integer, got '3'"),
        ({"n_train": True}, r"n_train must be a non-negative integer, got True"),
        ({"n_train": 0, "n_validation": 0, "n_test": 0}, r"all split sizes are 0"),
        ({"prompt_format": "chat"}, r"unknown prompt format 'chat'; use one of \['bos', 'paper'\]"),
    ],
)
def test_bad_build_arguments(kwargs, message, dyck):
    args = {"n_train": 2, "n_validation": 1, "n_test": 1, **kwargs}
    with pytest.raises(formal_sae.DatasetError, match=message) as info:
        formal_sae.build_dataset(dyck, **args)
    assert isinstance(info.value, formal_sae.FormalSAEError)


def test_unknown_grammar_name(tmp_path):
    with pytest.raises(formal_sae.GrammarError, match=r"unknown grammar 'nope'") as info:
        formal_sae.build_dataset("nope", 2, 1, 1)
    for name in formal_sae.list_grammars():
        assert name in str(info.value)
    with pytest.raises(formal_sae.GrammarError, match="unknown grammar"):
        formal_sae.generate_dataset("nope", tmp_path / "out", 2, 1, 1)
    assert not (tmp_path / "out").exists()


def test_bad_arguments_write_nothing(tmp_path, dyck):
    with pytest.raises(formal_sae.DatasetError, match="n_train"):
        formal_sae.generate_dataset(dyck, tmp_path / "out", n_train=-5)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- saved directories
def test_generated_directory_opens_with_plain_datasets(generated, expr):
    out, returned = generated
    ds = datasets.load_from_disk(str(out))
    assert isinstance(ds, datasets.DatasetDict)
    assert {k: len(v) for k, v in ds.items()} == {"train": 30, "validation": 6, "test": 5}
    assert_rows_match_grammar(ds, expr, "paper")
    built = formal_sae.build_dataset(expr, n_train=30, n_validation=6, n_test=5, seed=7, prompt_format="paper")
    for name in ds:
        assert ds[name].to_dict() == built[name].to_dict() == returned[name].to_dict()
    assert formal_sae.dataset_metadata(ds) == formal_sae.dataset_metadata(built)
    assert formal_sae.dataset_metadata(formal_sae.load_dataset_dir(out)) == formal_sae.dataset_metadata(built)


def test_generated_directory_has_tokenizer(generated, expr):
    out, ds = generated
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    assert tok.convert_tokens_to_ids(list(expr.terminals)) == list(range(len(expr.terminals)))
    for row in ds["train"]:
        assert tok(row["text"], add_special_tokens=False)["input_ids"] == row["input_ids"][7:-1]
    assert formal_sae.prompt_ids(tok, "paper") == ds["train"][0]["input_ids"][:7]


def test_generated_directory_card(generated, expr):
    out, ds = generated
    text = (out / "README.md").read_text(encoding="utf-8")
    meta = front_matter(text)["formal_sae"]
    assert meta["grammar"] == "expr"
    assert meta["seed"] == 7
    assert meta["version"] == formal_sae.__version__
    assert meta["prompt_format"] == "paper"
    assert meta["splits"] == {"train": 30, "validation": 6, "test": 5}
    for name, split in ds.items():
        assert meta["length_stats"][name] == recomputed_stats(split["length"])
    body = card_body(text)
    assert expr.to_string().rstrip() in body
    for name in expr.feature_names:
        assert f"`{name}`" in body
    assert "`expr`" in body


def test_existing_output_needs_overwrite(tmp_path, dyck):
    out = tmp_path / "out"
    formal_sae.generate_dataset(dyck, out, n_train=5, n_validation=1, n_test=1, seed=0)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(formal_sae.FormalSAEError, match=re.escape(str(out))):
        formal_sae.generate_dataset(dyck, out, n_train=5, n_validation=1, n_test=1, seed=1)
    ds = formal_sae.build_dataset(dyck, 3, 1, 1, seed=2)
    with pytest.raises(formal_sae.FormalSAEError, match="already exists"):
        formal_sae.save_dataset(ds, out)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert formal_sae.dataset_metadata(formal_sae.load_dataset_dir(out)).seed == 0


def test_overwrite_replaces(tmp_path, dyck):
    out = tmp_path / "out"
    formal_sae.generate_dataset(dyck, out, n_train=5, n_validation=1, n_test=1, seed=0)
    formal_sae.generate_dataset(dyck, out, n_train=7, n_validation=2, n_test=2, seed=1, overwrite=True)
    ds = formal_sae.load_dataset_dir(out)
    assert formal_sae.dataset_metadata(ds).seed == 1
    assert {k: len(v) for k, v in ds.items()} == {"train": 7, "validation": 2, "test": 2}
    ds3 = formal_sae.build_dataset(dyck, 3, 1, 1, seed=3)
    assert formal_sae.save_dataset(ds3, out, overwrite=True) == out
    assert formal_sae.dataset_metadata(formal_sae.load_dataset_dir(out)).seed == 3
    assert leftovers(tmp_path, "out") == []


def _boom(*args, **kwargs):
    raise RuntimeError("boom")


def _partial_save(self, path, *args, **kwargs):
    Path(path, "half-written.arrow").write_text("partial")
    raise OSError("disk full")


@pytest.mark.parametrize(
    ("target", "fake", "error"),
    [
        ((data_module, "dataset_card"), _boom, RuntimeError),
        ((datasets.DatasetDict, "save_to_disk"), _partial_save, OSError),
    ],
)
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, dyck, target, fake, error):
    ds = formal_sae.build_dataset(dyck, 4, 1, 1, seed=0)
    monkeypatch.setattr(*target, fake)
    with pytest.raises(error):
        formal_sae.save_dataset(ds, tmp_path / "out")
    with pytest.raises(error):
        formal_sae.generate_dataset(dyck, tmp_path / "gen", 4, 1, 1, seed=0)
    assert list(tmp_path.iterdir()) == []  # no output and no hidden temporary sibling


@pytest.mark.parametrize("via", ["save_dataset", "generate_dataset"])
def test_failed_overwrite_keeps_existing_output(tmp_path, monkeypatch, dyck, via):
    out = tmp_path / "out"
    formal_sae.generate_dataset(dyck, out, n_train=5, n_validation=1, n_test=1, seed=0)
    snapshot = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(data_module, "dataset_card", _boom)
    with pytest.raises(RuntimeError, match="boom"):
        if via == "save_dataset":
            formal_sae.save_dataset(formal_sae.build_dataset(dyck, 3, 1, 1, seed=9), out, overwrite=True)
        else:
            formal_sae.generate_dataset(dyck, out, 3, 1, 1, seed=9, overwrite=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot
    assert leftovers(tmp_path, "out") == []
    assert formal_sae.dataset_metadata(formal_sae.load_dataset_dir(out)).seed == 0


# ---------------------------------------------------------------------------- load_dataset_dir errors
def test_load_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(formal_sae.DatasetError, match=re.escape(str(missing)) + ".*does not exist"):
        formal_sae.load_dataset_dir(missing)


def test_load_empty_directory(tmp_path):
    with pytest.raises(formal_sae.DatasetError, match=re.escape(str(tmp_path)) + " is not a readable dataset"):
        formal_sae.load_dataset_dir(tmp_path)


def test_load_corrupt_dataset_dict(tmp_path):
    (tmp_path / "dataset_dict.json").write_text("{not json")
    with pytest.raises(formal_sae.DatasetError, match="not a readable dataset"):
        formal_sae.load_dataset_dir(tmp_path)


def test_load_dataset_with_missing_split_files(generated, tmp_path):
    out, _ = generated
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    shutil.rmtree(broken / "validation")
    with pytest.raises(formal_sae.DatasetError, match="not a readable dataset"):
        formal_sae.load_dataset_dir(broken)


def test_load_plain_hf_dataset_dict(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a", "b"]})}).save_to_disk(str(tmp_path / "plain"))
    with pytest.raises(formal_sae.DatasetError, match="not built by formal-sae"):
        formal_sae.load_dataset_dir(tmp_path / "plain")
    with pytest.raises(formal_sae.DatasetError, match="not built by formal-sae"):
        formal_sae.dataset_metadata(datasets.Dataset.from_dict({"text": ["a"]}))


def test_load_single_split_dataset(tmp_path):
    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(str(tmp_path / "single"))
    with pytest.raises(formal_sae.DatasetError, match="single split"):
        formal_sae.load_dataset_dir(tmp_path / "single")


# ---------------------------------------------------------------------------- Hub upload (faked)
HUB_CARD = """---
dataset_info:
  features:
  - name: text
    dtype: string
  splits:
  - name: train
    num_examples: 30
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
---
# placeholder card written by push_to_hub
"""


def test_push_dataset_to_hub_with_fakes(generated, monkeypatch):
    out, _ = generated
    calls: list[tuple] = []

    def fake_push_dataset(self, repo_id, **kwargs):
        calls.append(("dataset", self, repo_id, kwargs))

    def fake_load(cls, repo_id_or_path, repo_type=None, token=None, **kwargs):
        calls.append(("load", repo_id_or_path, repo_type, token))
        return cls(HUB_CARD)

    def fake_push_card(self, repo_id, **kwargs):
        calls.append(("card", self, repo_id, kwargs))

    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", fake_push_dataset)
    monkeypatch.setattr(huggingface_hub.DatasetCard, "load", classmethod(fake_load))
    monkeypatch.setattr(huggingface_hub.DatasetCard, "push_to_hub", fake_push_card)

    formal_sae.push_dataset_to_hub(out, "someone/expr-data", private=True, token="t0k")

    assert [c[0] for c in calls] == ["dataset", "load", "card"]
    _, pushed, repo_id, kwargs = calls[0]
    assert repo_id == "someone/expr-data"
    assert kwargs.get("private") is True and kwargs.get("token") == "t0k"
    assert isinstance(pushed, datasets.DatasetDict)
    saved = datasets.load_from_disk(str(out))
    assert {k: v["text"] for k, v in pushed.items()} == {k: v["text"] for k, v in saved.items()}
    assert calls[1][1:] == ("someone/expr-data", "dataset", "t0k")

    _, card, repo_id, kwargs = calls[2]
    assert repo_id == "someone/expr-data"
    assert kwargs.get("repo_type") == "dataset" and kwargs.get("token") == "t0k"
    ours = (out / "README.md").read_text(encoding="utf-8")
    pushed_meta = front_matter(str(card), is_json=False)  # re-serialized as YAML
    expected_meta = front_matter(ours)
    for key, value in expected_meta.items():
        assert pushed_meta[key] == value, key
    assert pushed_meta["formal_sae"]["grammar"] == "expr" and pushed_meta["formal_sae"]["seed"] == 7
    assert pushed_meta["dataset_info"]["splits"][0]["name"] == "train"  # the Hub's own metadata is kept
    assert pushed_meta["configs"][0]["config_name"] == "default"
    assert card.text.strip() == card_body(ours).strip()
    assert "placeholder" not in str(card)


def test_push_missing_directory_fails_before_network(tmp_path, monkeypatch):
    def must_not_be_called(*args, **kwargs):
        raise AssertionError("network call attempted")

    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", must_not_be_called)
    monkeypatch.setattr(huggingface_hub.DatasetCard, "load", must_not_be_called)
    with pytest.raises(formal_sae.DatasetError, match="does not exist"):
        formal_sae.push_dataset_to_hub(tmp_path / "nothing", "someone/x")

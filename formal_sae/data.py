"""Tokenizers and Hugging Face datasets of grammar samples with per-token ground-truth features.

A dataset is a ``datasets.DatasetDict`` with splits ``train``/``validation``/``test``. Each row:

* ``input_ids``: the prompt (``<bos>``, or the paper's 7-token prefix), the sentence, ``<eos>``;
* ``text``: the sentence as space-separated tokens; ``length``: its number of tokens;
* one column per ground-truth feature, aligned with ``input_ids``: the feature of the token at
  that position, and :data:`~formal_sae.IGNORE_VALUE` (-100) at the prompt and ``<eos>``.

Everything needed to interpret the columns (grammar text, feature declarations, prompt, seed)
is stored as JSON in each split's ``info.description`` and in the dataset card (``README.md``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from formal_sae.errors import DatasetError
from formal_sae.grammars import IGNORE_VALUE, FeatureSpec, Grammar, list_grammars, load_grammar
from formal_sae.io import atomic_write_text
from formal_sae.outputs import check_output, output_dir

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
#: The paper's prompt ("instruction decorator"): ``Task: Task0 \n Ops: <null> \n Out:``.
PAPER_PROMPT: tuple[str, ...] = ("Task:", "Task0", "\n", "Ops:", "<null>", "\n", "Out:")
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, *dict.fromkeys(PAPER_PROMPT))
PromptFormat = Literal["bos", "paper"]
PROMPTS: dict[str, tuple[str, ...]] = {"bos": (BOS,), "paper": PAPER_PROMPT}
SPLITS = ("train", "validation", "test")
TOKENIZER_DIR = "tokenizer"
CARD_FILE = "README.md"
SCRATCH_DIR = "scratch"  # Arrow files of a dataset being generated, inside its in-progress folder


# ---------------------------------------------------------------------------- tokenizer
def build_tokenizer(grammar: Grammar, save_dir: str | os.PathLike | None = None) -> PreTrainedTokenizerBase:
    """A Hugging Face fast tokenizer with one id per grammar token, then the special tokens.

    Ids: the grammar's terminals in order (``grammar.terminals``), then ``<pad> <bos> <eos>
    <unk>`` and the paper's prompt tokens. Text is split on single spaces (so the paper's
    newline token survives). ``<bos>`` is prepended on encoding, as TransformerLens expects.

    The tokenizer is written to ``save_dir`` (a temporary directory if None) and reloaded with
    ``AutoTokenizer.from_pretrained``, so that it has a local ``name_or_path``: TransformerLens
    reloads tokenizers from that path.
    """
    clash = set(grammar.terminals) & set(SPECIAL_TOKENS)
    if clash:
        raise DatasetError(f"grammar {grammar.name!r} uses reserved token(s) {sorted(clash)} as terminals; rename them")
    if any(" " in t or not t for t in grammar.terminals):
        raise DatasetError(
            f"grammar {grammar.name!r} has a terminal that is empty or contains a space; tokens are space-separated"
        )
    vocab = {tok: i for i, tok in enumerate((*grammar.terminals, *SPECIAL_TOKENS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="removed")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, add_bos_token=True
    )
    if save_dir is None:
        save_dir = tempfile.mkdtemp(prefix="formal-sae-tokenizer-")
    fast.save_pretrained(str(save_dir))
    return load_tokenizer(save_dir)


def load_tokenizer(directory: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a tokenizer saved by :func:`build_tokenizer` (plain ``AutoTokenizer.from_pretrained``)."""
    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        raise DatasetError(f"no tokenizer in {directory} (tokenizer.json is missing); regenerate the dataset or model")
    return AutoTokenizer.from_pretrained(str(directory))


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt_format: str = "bos") -> list[int]:
    """Token ids of the generation prompt for a prompt format (``"bos"`` or ``"paper"``)."""
    if prompt_format not in PROMPTS:
        raise DatasetError(f"unknown prompt format {prompt_format!r}; use one of {list(PROMPTS)}")
    return tokenizer.convert_tokens_to_ids(list(PROMPTS[prompt_format]))


# ---------------------------------------------------------------------------- dataset metadata
@dataclass
class DatasetMetadata:
    """What a dataset was built from; stored as JSON in ``info.description`` and the card."""

    grammar: str
    grammar_text: str
    max_length: int | None
    prompt_format: str
    prompt: list[str]
    seed: int
    splits: dict[str, int]
    features: list[dict]
    ignore_value: int = IGNORE_VALUE
    formal_sae_version: str = ""
    length_stats: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def prompt_length(self) -> int:
        return len(self.prompt)

    @property
    def feature_specs(self) -> list[FeatureSpec]:
        return [FeatureSpec.from_dict(d) for d in self.features]

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)

    @classmethod
    def from_json(cls, text: str) -> DatasetMetadata:
        return cls(**json.loads(text))


def dataset_metadata(dataset: datasets.DatasetDict | datasets.Dataset) -> DatasetMetadata:
    """The :class:`DatasetMetadata` of a dataset built by formal-sae."""
    split = next(iter(dataset.values())) if isinstance(dataset, datasets.DatasetDict) else dataset
    try:
        return DatasetMetadata.from_json(split.info.description or "")
    except (json.JSONDecodeError, TypeError) as e:
        raise DatasetError(
            f"this dataset was not built by formal-sae (its info.description holds no formal-sae metadata: {e}); "
            "build it with formal_sae.build_dataset or `formal-sae generate`"
        ) from None


def grammar_of(metadata: DatasetMetadata) -> Grammar:
    """The grammar a dataset was sampled from: the registry grammar of that name if its rules
    are unchanged (with its language-specific features), else a grammar built from the stored text."""
    if metadata.grammar in list_grammars():
        grammar = load_grammar(metadata.grammar, max_length=metadata.max_length)
        if grammar.to_string() == metadata.grammar_text:
            return grammar
    return Grammar.from_string(metadata.grammar_text, name=metadata.grammar, max_length=metadata.max_length)


# ---------------------------------------------------------------------------- building
def _features_schema(grammar: Grammar) -> datasets.Features:
    cols: dict[str, Any] = {
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "text": datasets.Value("string"),
        "length": datasets.Value("int32"),
    }
    for spec in grammar.feature_specs:
        cols[spec.name] = datasets.Sequence(datasets.Value("int16"))
    return datasets.Features(cols)


def _rows(
    grammar_text: str,
    grammar_name: str,
    max_length: int | None,
    n: int,
    seed_seq: np.random.SeedSequence,
    prompt: Sequence[int],
    eos: int,
    vocab: dict[str, int],
) -> Iterator[dict]:
    """Rows of one split (a generator, so ``Dataset.from_generator`` writes them in batches)."""
    metadata = DatasetMetadata(grammar_name, grammar_text, max_length, "", [], 0, {}, [])
    grammar = grammar_of(metadata)
    pad = [IGNORE_VALUE] * len(prompt)
    memo: dict[tuple[str, ...], dict[str, list[int]]] = {}
    for sentence in grammar.iter_samples(n, np.random.default_rng(seed_seq)):
        key = tuple(sentence)
        feats = memo.get(key)
        if feats is None:
            if len(memo) > 100_000:
                memo.clear()
            feats = memo[key] = grammar.features(sentence)
        row = {
            "input_ids": [*prompt, *(vocab[t] for t in sentence), eos],
            "text": " ".join(sentence),
            "length": len(sentence),
        }
        for name, values in feats.items():
            row[name] = [*pad, *values, IGNORE_VALUE]
        yield row


def column(split: datasets.Dataset, name: str) -> list:
    """A column as Python values, read through Arrow in one go (fast), honouring any row selection
    (``.select``, ``.shuffle``, ``.filter``)."""
    return split.with_format("arrow")[name].to_pylist()


def _length_stats(split: datasets.Dataset) -> dict[str, float]:
    lengths = np.asarray(split["length"]) if len(split) else np.zeros(1)
    return {
        "mean": round(float(lengths.mean()), 3),
        "std": round(float(lengths.std()), 3),
        "min": int(lengths.min()),
        "median": float(np.median(lengths)),
        "max": int(lengths.max()),
    }


def build_dataset(
    grammar: Grammar | str,
    n_train: int = 10_000,
    n_validation: int = 1_000,
    n_test: int = 1_000,
    seed: int = 0,
    prompt_format: PromptFormat = "bos",
    cache_dir: str | os.PathLike | None = None,
) -> datasets.DatasetDict:
    """Sample a dataset of sentences with token ids and per-token feature columns.

    Args:
        grammar: A :class:`~formal_sae.Grammar` or a registry name.
        n_train: Sentences in the train split. Each split has its own random stream, derived
            from ``seed``; sentences may repeat within and across splits, as in the language.
        n_validation: Sentences in the validation split.
        n_test: Sentences in the test split.
        seed: Same seed, same dataset (and the same fingerprint).
        prompt_format: ``"bos"`` (one ``<bos>`` token) or ``"paper"`` (the 7-token prefix).
        cache_dir: Where Arrow files are written while generating (rows are written in batches,
            never all held in memory); a temporary directory by default.

    Returns:
        A ``DatasetDict`` whose ``info.description`` holds :class:`DatasetMetadata` as JSON.
    """
    from formal_sae import __version__

    grammar = load_grammar(grammar) if isinstance(grammar, str) else grammar
    counts = {"train": n_train, "validation": n_validation, "test": n_test}
    for name, n in counts.items():
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise DatasetError(f"n_{name} must be a non-negative integer, got {n!r}")
    if sum(counts.values()) == 0:
        raise DatasetError("all split sizes are 0; ask for at least one sentence")
    if prompt_format not in PROMPTS:
        raise DatasetError(f"unknown prompt format {prompt_format!r}; use one of {list(PROMPTS)}")
    tokenizer = build_tokenizer(grammar)
    vocab = tokenizer.get_vocab()
    metadata = DatasetMetadata(
        grammar=grammar.name,
        grammar_text=grammar.to_string(),
        max_length=grammar.max_length,
        prompt_format=prompt_format,
        prompt=list(PROMPTS[prompt_format]),
        seed=int(seed),
        splits=dict(counts),
        features=[s.to_dict() for s in grammar.feature_specs],
        formal_sae_version=__version__,
    )
    schema = _features_schema(grammar)
    seeds = np.random.SeedSequence(int(seed)).spawn(len(SPLITS))
    own_cache = cache_dir is None
    cache = Path(tempfile.mkdtemp(prefix="formal-sae-data-")) if own_cache else Path(cache_dir)
    try:
        splits = {}
        for (name, n), split_seed in zip(counts.items(), seeds, strict=True):
            if n == 0:  # from_generator cannot make an empty split ("corresponds to no data")
                splits[name] = datasets.Dataset.from_dict(
                    {col: [] for col in schema}, features=schema, split=datasets.NamedSplit(name)
                )
                continue
            splits[name] = datasets.Dataset.from_generator(
                _rows,
                features=schema,
                cache_dir=str(cache / name),
                gen_kwargs={
                    "grammar_text": metadata.grammar_text,
                    "grammar_name": grammar.name,
                    "max_length": grammar.max_length,
                    "n": int(n),
                    "seed_seq": split_seed,
                    # a tuple, not a list: from_generator shards list-valued gen_kwargs (one shard per element)
                    "prompt": tuple(prompt_ids(tokenizer, prompt_format)),
                    "eos": tokenizer.eos_token_id,
                    "vocab": vocab,
                },
                split=name,
                keep_in_memory=own_cache,  # the temporary Arrow files are deleted below
            )
        metadata.length_stats = {name: _length_stats(ds) for name, ds in splits.items()}
        for ds in splits.values():
            ds.info.description = metadata.to_json()
        return datasets.DatasetDict(splits)
    finally:
        if own_cache:
            shutil.rmtree(cache, ignore_errors=True)


# ---------------------------------------------------------------------------- saving / loading
def _dataset_config(metadata: DatasetMetadata) -> dict[str, Any]:
    """What defines a dataset directory (recorded in its formal-sae marker)."""
    return _run_config(metadata.grammar_text, metadata.seed, metadata.prompt_format, metadata.splits)


def _run_config(grammar_text: str, seed: int, prompt_format: str, splits: dict[str, int]) -> dict[str, Any]:
    return {"grammar_text": grammar_text, "seed": int(seed), "prompt_format": prompt_format, "splits": dict(splits)}


def save_dataset(dataset: datasets.DatasetDict, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a dataset, its tokenizer (``tokenizer/``) and its card (``README.md``) atomically.

    ``datasets.load_from_disk(out)`` opens the result; :func:`load_dataset_dir` also checks it.
    An existing ``out`` is refused unless ``overwrite`` (see :mod:`formal_sae.outputs`).
    """
    metadata = dataset_metadata(dataset)
    with output_dir(out, "dataset", _dataset_config(metadata), overwrite=overwrite) as work:
        _write_dataset(dataset, metadata, work)
    return Path(out)


def _dataset_config(metadata: DatasetMetadata) -> dict[str, Any]:
    """What defines a dataset directory (recorded in its formal-sae marker)."""
    return _run_config(metadata.grammar_text, metadata.seed, metadata.prompt_format, metadata.splits)


def _run_config(grammar_text: str, seed: int, prompt_format: str, splits: dict[str, int]) -> dict[str, Any]:
    return {"grammar_text": grammar_text, "seed": int(seed), "prompt_format": prompt_format, "splits": dict(splits)}


def _write_dataset(dataset: datasets.DatasetDict, metadata: DatasetMetadata, directory: Path) -> None:
    # an empty split saved with the default shard count has no Arrow file and cannot be reloaded
    dataset.save_to_disk(str(directory), num_shards={name: 1 if len(split) == 0 else None for name, split in dataset.items()})
    build_tokenizer(grammar_of(metadata), directory / TOKENIZER_DIR)
    atomic_write_text(directory / CARD_FILE, dataset_card(metadata))


def generate_dataset(
    grammar: Grammar | str,
    out: str | os.PathLike,
    n_train: int = 10_000,
    n_validation: int = 1_000,
    n_test: int = 1_000,
    seed: int = 0,
    prompt_format: PromptFormat = "bos",
    overwrite: bool = False,
) -> datasets.DatasetDict:
    """:func:`build_dataset` then :func:`save_dataset`, streaming through Arrow files on disk
    (suitable for millions of sentences). Returns the saved dataset, loaded from ``out``.

    The scratch Arrow files live in ``out``'s in-progress folder: a killed run leaves nothing
    elsewhere, and a rerun starts afresh."""
    check_output(out, "dataset", overwrite)
    grammar = load_grammar(grammar) if isinstance(grammar, str) else grammar
    config = _run_config(grammar.to_string(), seed, prompt_format, {"train": n_train, "validation": n_validation, "test": n_test})
    with output_dir(out, "dataset", config, overwrite=overwrite) as work:
        scratch = work / SCRATCH_DIR
        ds = build_dataset(grammar, n_train, n_validation, n_test, seed, prompt_format, cache_dir=scratch)
        _write_dataset(ds, dataset_metadata(ds), work)
        del ds
        shutil.rmtree(scratch)
    return load_dataset_dir(out)


def load_dataset_dir(directory: str | os.PathLike) -> datasets.DatasetDict:
    """Open a dataset directory written by formal-sae, with clear errors if it is missing or broken.

    Every file is checked before use: a missing or corrupt ``dataset_dict.json``, ``state.json``,
    ``dataset_info.json`` or Arrow file raises a :class:`~formal_sae.DatasetError` naming it (a
    damaged Arrow file can otherwise crash the process when its rows are read), and so do rows that
    do not fit the metadata: row counts, columns, prompt, ``<eos>``, token ids and feature values
    (vectorised: about 0.1 s per million tokens).
    """
    directory = Path(directory)
    if not directory.exists():
        raise DatasetError(
            f"dataset directory {directory} does not exist; create it with `formal-sae generate GRAMMAR --out {directory}`"
        )
    index = directory / "dataset_dict.json"
    if not index.is_file() and (directory / "dataset_info.json").is_file():
        raise DatasetError(f"{directory} holds a single split, not a DatasetDict with train/validation/test; regenerate it")
    names = _dataset_json(directory, index).get("splits")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and _plain_name(n) for n in names):
        raise _unreadable(directory, f"{index} is corrupt (its 'splits' is not a list of split names)")
    splits = {}
    for name in names:
        if not (directory / name).is_dir():
            raise _unreadable(directory, f"split {name!r} listed in {index} has no folder {directory / name}")
        splits[name] = _load_split(directory, name)
    ds = datasets.DatasetDict(splits)
    texts = {name: split.info.description or "" for name, split in splits.items()}
    common = max(texts.values(), key=list(texts.values()).count)
    count = list(texts.values()).count(common)
    if count < len(texts):  # every split carries the same metadata: the odd ones out are corrupt
        odd = [n for n, text in texts.items() if text != common or count == 1]
        raise _unreadable(directory, f"the metadata in {_infos(directory, odd)} differs from the other splits'")
    meta = dataset_metadata(ds)  # raises if this is not a formal-sae dataset
    try:
        grammar = grammar_of(meta)
        specs = meta.feature_specs
        recorded = sorted(meta.splits)
    except (TypeError, KeyError, ValueError, AttributeError) as e:  # ValueError includes GrammarError
        raise _unreadable(directory, f"the metadata in {_infos(directory, names)} is corrupt ({_one_line(e)})") from None
    if recorded != sorted(names):
        raise _unreadable(
            directory, f"{index} lists splits {names} but the metadata in {_infos(directory, names)} records {recorded}"
        )
    for name, split in splits.items():
        _check_rows(directory, name, split, meta, grammar, specs)
    return ds


def _unreadable(directory: Path, problem: str) -> DatasetError:
    return DatasetError(
        f"{directory} is not a readable dataset: {problem}; regenerate it with `formal-sae generate` or restore it from a copy"
    )


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]


def _infos(directory: Path, names: Sequence[str]) -> str:
    return ", ".join(str(directory / n / "dataset_info.json") for n in names)


def _plain_name(name: str) -> bool:
    """A file or folder name with no path in it: a corrupt index must not send the loader elsewhere."""
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def _dataset_json(directory: Path, path: Path) -> dict:
    if not path.is_file():
        raise _unreadable(directory, f"{path} is missing")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, OSError, RecursionError) as e:  # ValueError includes JSON and UTF-8 errors
        raise _unreadable(directory, f"{path} is corrupt (not valid JSON: {_one_line(e)})") from None
    if not isinstance(data, dict):
        raise _unreadable(directory, f"{path} is corrupt (a JSON {type(data).__name__}, not an object)")
    return data


#: The fields of a split's ``state.json`` that ``datasets`` reads, with their types.
_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "_data_files": (list,),
    "_fingerprint": (str,),
    "_format_columns": (list, type(None)),
    "_format_kwargs": (dict,),
    "_format_type": (str, type(None)),
    "_output_all_columns": (bool,),
    "_split": (str, type(None)),
}


def _load_split(directory: Path, name: str) -> datasets.Dataset:
    """One split, after checking its ``state.json``, ``dataset_info.json`` and Arrow files one by one."""
    import pyarrow as pa

    folder = directory / name
    state_path, info_path = folder / "state.json", folder / "dataset_info.json"
    state = _dataset_json(directory, state_path)
    wrong = sorted(k for k, types in _STATE_TYPES.items() if not isinstance(state.get(k), types))
    files = state.get("_data_files") or []
    if wrong or not files or not all(isinstance(f, dict) and _plain_name(str(f.get("filename", ""))) for f in files):
        raise _unreadable(directory, f"{state_path} is corrupt (bad or missing {', '.join(wrong) or '_data_files'})")
    info = _dataset_json(directory, info_path)
    try:
        if datasets.DatasetInfo.from_dict(info).features is None:
            raise ValueError("no features")
    except Exception as e:  # DatasetInfo raises whatever its fields' constructors raise
        raise _unreadable(directory, f"{info_path} is corrupt ({_one_line(e)})") from None
    arrows = [folder / f["filename"] for f in files]
    for path in arrows:
        if not path.is_file():
            raise _unreadable(directory, f"Arrow file {path} (listed in {state_path}) is missing")
        try:  # read and validate each file now: pyarrow can crash on damaged offsets when the rows are read later
            with pa.memory_map(str(path)) as source:
                table = pa.ipc.open_stream(source).read_all()
            table.validate(full=True)
            datasets.Features.from_arrow_schema(table.schema)
        except Exception as e:
            raise _unreadable(directory, f"Arrow file {path} is corrupt ({_one_line(e)})") from None
    try:
        return datasets.Dataset.load_from_disk(str(folder))
    except Exception as e:  # each file reads, but they do not agree with one another
        files_named = ", ".join(str(p) for p in (state_path, info_path, *arrows))
        raise _unreadable(
            directory, f"the files of split {name!r} do not agree ({_one_line(e)}): one of {files_named} is corrupt"
        ) from None


def _check_rows(
    directory: Path, name: str, split: datasets.Dataset, meta: DatasetMetadata, grammar: Grammar, specs: list[FeatureSpec]
) -> None:
    """Rows that fit the metadata: columns, row count, prompt, ``<eos>``, token ids and feature values."""
    where = f"Arrow file(s) {', '.join(c['filename'] for c in split.cache_files) or directory / name}"
    if split.features != _features_schema(grammar):
        raise _unreadable(
            directory, f"the columns of {where} and {directory / name / 'dataset_info.json'} are not a {meta.grammar!r} dataset's"
        )
    if len(split) != meta.splits[name]:
        raise _unreadable(directory, f"{where} hold(s) {len(split)} rows, but the metadata records {meta.splits[name]}")
    if len(split) == 0:
        return
    table = split.data.table
    ids = table.column("input_ids").combine_chunks()
    offsets, flat = np.asarray(ids.offsets), np.asarray(ids.flatten())
    lengths = np.diff(offsets)
    n_prompt = len(meta.prompt)
    if np.any(lengths != np.asarray(table.column("length")) + n_prompt + 1):
        raise _unreadable(directory, f"{where} hold(s) rows whose input_ids do not match their length column")
    vocab = {tok: i for i, tok in enumerate((*grammar.terminals, *SPECIAL_TOKENS))}
    pos = np.arange(len(flat)) - np.repeat(offsets[:-1], lengths)  # each token's position in its row
    in_prompt = pos < n_prompt
    sentence = ~in_prompt & (pos < np.repeat(lengths, lengths) - 1)
    prompt = np.array([vocab.get(t, -1) for t in meta.prompt])
    if (
        np.any(flat[in_prompt] != prompt[pos[in_prompt]])
        or np.any(flat[offsets[1:] - 1] != vocab[EOS])
        or np.any((flat[sentence] < 0) | (flat[sentence] >= len(grammar.terminals)))
    ):
        raise _unreadable(directory, f"{where} hold(s) token ids outside the grammar's vocabulary, or a damaged prompt or <eos>")
    for spec in specs:
        col = table.column(spec.name).combine_chunks()
        values = np.asarray(col.flatten())
        top = {"categorical": len(spec.categories) - 1, "binary": 1}.get(spec.kind, np.iinfo(np.int16).max)
        if (
            not np.array_equal(np.asarray(col.offsets), offsets)
            or np.any(values[~sentence] != meta.ignore_value)
            or np.any((values[sentence] < 0) | (values[sentence] > top))
        ):
            raise _unreadable(
                directory, f"{where} hold(s) {spec.name!r} values that are misaligned or outside the feature's range"
            )


def dataset_card(metadata: DatasetMetadata) -> str:
    """The dataset card: YAML metadata (grammar, seed, version, lengths) and a readable body."""
    total = sum(metadata.splits.values())
    size = next(
        c
        for limit, c in [(1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"), (float("inf"), "n>1M")]
        if total < limit
    )
    yaml_meta = {
        "pretty_name": f"formal-sae {metadata.grammar}",
        "license": "mit",
        "task_categories": ["text-generation"],
        "tags": ["formal-languages", "pcfg", "interpretability", "sparse-autoencoders", "formal-sae"],
        "size_categories": [size],
        "formal_sae": {
            "grammar": metadata.grammar,
            "seed": metadata.seed,
            "version": metadata.formal_sae_version,
            "prompt_format": metadata.prompt_format,
            "max_length": metadata.max_length,
            "splits": metadata.splits,
            "length_stats": metadata.length_stats,
        },
    }
    feature_rows = "\n".join(
        f"| `{f['name']}` | {f['kind']} | {f['description']}"
        + (f" ({', '.join(f['categories'])})" if f["categories"] else "")
        + " |"
        for f in metadata.features
    )
    length_rows = "\n".join(
        f"| {name} | {metadata.splits[name]} | {s['mean']} | {s['min']} | {s['median']} | {s['max']} |"
        for name, s in metadata.length_stats.items()
    )
    prompt = " ".join(repr(t) if t == "\n" else t for t in metadata.prompt)
    return f"""---
{json.dumps(yaml_meta, indent=2)}
---

# formal-sae dataset: `{metadata.grammar}`

Sentences sampled from a probabilistic context-free grammar with per-token ground-truth
features, made by [formal-sae](https://github.com/formal-sae/formal-sae) {metadata.formal_sae_version}
(seed {metadata.seed}). Use it to train small language models and to test whether sparse
autoencoder latents recover known structure.

## Grammar

```
{metadata.grammar_text.rstrip()}
```

Sentences longer than {metadata.max_length} tokens are rejected and redrawn.

## Columns

- `input_ids`: prompt ({prompt}), sentence tokens, `<eos>`; the tokenizer is in `tokenizer/`.
- `text`: the sentence; `length`: its number of tokens.
- One column per feature, aligned with `input_ids`; prompt and `<eos>` positions hold {metadata.ignore_value}.

| feature | kind | meaning |
|---|---|---|
{feature_rows}

## Splits and sentence lengths

| split | sentences | mean | min | median | max |
|---|---|---|---|---|---|
{length_rows}

## Loading

```python
import datasets, formal_sae
ds = datasets.load_from_disk("path/to/this/directory")   # or datasets.load_dataset(repo_id)
grammar = formal_sae.grammar_of(formal_sae.dataset_metadata(ds))
```
"""


def push_dataset_to_hub(directory: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None) -> None:
    """Upload a saved dataset (its splits, then its card) to the Hugging Face Hub."""
    from huggingface_hub import DatasetCard

    ds = load_dataset_dir(directory)
    ds.push_to_hub(repo_id, private=private, token=token)
    card = DatasetCard.load(repo_id, repo_type="dataset", token=token)  # keeps the dataset_info written by push_to_hub
    ours = DatasetCard((Path(directory) / CARD_FILE).read_text(encoding="utf-8"))
    for key, value in ours.data.to_dict().items():
        card.data[key] = value
    card.text = ours.text
    card.push_to_hub(repo_id, repo_type="dataset", token=token)

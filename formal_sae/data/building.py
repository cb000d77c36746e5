"""Sampling a dataset: rows of token ids with their per-token ground-truth feature columns."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from formal_sae.data.metadata import DatasetMetadata, grammar_of
from formal_sae.data.tokenizer import PROMPTS, PromptFormat, build_tokenizer, prompt_ids
from formal_sae.errors import DatasetError
from formal_sae.grammars import IGNORE_VALUE, Grammar, load_grammar
from formal_sae.version import __version__

SPLITS = ("train", "validation", "test")


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
        grammar: A [`Grammar`][formal_sae.Grammar] or a registry name.
        n_train: Sentences in the train split. Each split has its own random stream, derived
            from ``seed``; sentences may repeat within and across splits, as in the language.
        n_validation: Sentences in the validation split.
        n_test: Sentences in the test split.
        seed: Same seed, same dataset (and the same fingerprint).
        prompt_format: ``"bos"`` (one ``<bos>`` token) or ``"paper"`` (the 7-token prefix).
        cache_dir: Where Arrow files are written while generating (rows are written in batches,
            never all held in memory); a temporary directory by default.

    Returns:
        A ``DatasetDict`` whose ``info.description`` holds [`DatasetMetadata`][formal_sae.DatasetMetadata] as JSON.
    """
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

"""Writing dataset directories: the splits, their tokenizer and their card, as one artifact."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import datasets

from formal_sae.data.building import build_dataset
from formal_sae.data.card import CARD_FILE
from formal_sae.data.loading import load_dataset_dir
from formal_sae.data.metadata import DatasetMetadata, dataset_metadata, grammar_of
from formal_sae.data.tokenizer import TOKENIZER_DIR, PromptFormat, build_tokenizer
from formal_sae.grammars import Grammar, load_grammar
from formal_sae.io import atomic_write_text
from formal_sae.outputs import check_output, output_dir

SCRATCH_DIR = "scratch"  # Arrow files of a dataset being generated, inside its in-progress folder


def save_dataset(dataset: datasets.DatasetDict, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a dataset, its tokenizer (``tokenizer/``) and its card (``README.md``) atomically.

    ``datasets.load_from_disk(out)`` opens the result; [`load_dataset_dir`][formal_sae.load_dataset_dir] also checks it.
    An existing ``out`` is refused unless ``overwrite`` (see `formal_sae.outputs`).
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
    from formal_sae import data  # through the package, where the card writer can be replaced (the tests do)

    atomic_write_text(directory / CARD_FILE, data.dataset_card(metadata))


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
    """[`build_dataset`][formal_sae.build_dataset] then [`save_dataset`][formal_sae.save_dataset], streaming through Arrow files on disk
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

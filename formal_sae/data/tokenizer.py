"""Tokenizers of grammars: one id per grammar token, then the special tokens.

Ids: the grammar's terminals in order (``grammar.terminals``), then ``<pad> <bos> <eos> <unk>``
and the paper's prompt tokens. This is the one place that maps ids to tokens and back.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from formal_sae.errors import DatasetError
from formal_sae.grammars import Grammar

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
#: The paper's prompt ("instruction decorator"): ``Task: Task0 \n Ops: <null> \n Out:``.
PAPER_PROMPT: tuple[str, ...] = ("Task:", "Task0", "\n", "Ops:", "<null>", "\n", "Out:")
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, *dict.fromkeys(PAPER_PROMPT))
PromptFormat = Literal["bos", "paper"]
PROMPTS: dict[str, tuple[str, ...]] = {"bos": (BOS,), "paper": PAPER_PROMPT}
TOKENIZER_DIR = "tokenizer"


def grammar_vocab(grammar: Grammar) -> dict[str, int]:
    """Token -> id for ``grammar``: its terminals in order, then `SPECIAL_TOKENS`."""
    return {tok: i for i, tok in enumerate((*grammar.terminals, *SPECIAL_TOKENS))}


def token_strings(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Id -> token: the token string of every id of ``tokenizer``, in id order."""
    return tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))


def build_tokenizer(grammar: Grammar, save_dir: str | os.PathLike | None = None) -> PreTrainedTokenizerBase:
    """A Hugging Face fast tokenizer with one id per grammar token, then the special tokens.

    Ids: the grammar's terminals in order (``grammar.terminals``), then ``<pad> <bos> <eos>
    <unk>`` and the paper's prompt tokens. Text is split on single spaces (so the paper's
    newline token survives). ``<bos>`` is prepended on encoding, as TransformerLens expects.

    The tokenizer is written to ``save_dir`` and reloaded with ``AutoTokenizer.from_pretrained``,
    so that it has a local ``name_or_path``: TransformerLens reloads tokenizers from that path.
    Without ``save_dir`` it goes to one folder per vocabulary inside a single temporary directory
    per process, deleted when the process exits: repeated calls add nothing.
    """
    clash = set(grammar.terminals) & set(SPECIAL_TOKENS)
    if clash:
        raise DatasetError(f"grammar {grammar.name!r} uses reserved token(s) {sorted(clash)} as terminals; rename them")
    if any(" " in t or not t for t in grammar.terminals):
        raise DatasetError(
            f"grammar {grammar.name!r} has a terminal that is empty or contains a space; tokens are space-separated"
        )
    vocab = grammar_vocab(grammar)
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="removed")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, add_bos_token=True
    )
    if save_dir is None:
        save_dir = _scratch() / hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]
        if (save_dir / "tokenizer.json").is_file():  # the same vocabulary: the same files
            return load_tokenizer(save_dir)
    fast.save_pretrained(str(save_dir))
    return load_tokenizer(save_dir)


_SCRATCH: Path | None = None


def _scratch() -> Path:
    """The process's temporary directory for tokenizers built without a folder (they must outlive
    the call, for TransformerLens); deleted when the process that made it exits.

    Why not ``tempfile.TemporaryDirectory``: its clean-up runs at interpreter exit only, and a
    process forked by `multiprocessing` (the sweep's workers) ends with ``os._exit``, which skips
    it: every worker that built a tokenizer left a folder in the temporary directory (3,567 were
    found after a day of test runs). `multiprocessing.util.Finalize` runs both at interpreter exit
    and when such a worker ends, and a forked child starts without its parent's finalizers, so it
    never deletes the folder it inherited (guarded by the pid as well)."""
    global _SCRATCH
    if _SCRATCH is None or not _SCRATCH.is_dir():
        _SCRATCH = Path(tempfile.mkdtemp(prefix="formal-sae-tokenizer-"))
        multiprocessing.util.Finalize(None, _remove_scratch, args=(_SCRATCH, os.getpid()), exitpriority=0)
    return _SCRATCH


def _remove_scratch(path: Path, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def load_tokenizer(directory: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a tokenizer saved by [`build_tokenizer`][formal_sae.build_tokenizer] (plain ``AutoTokenizer.from_pretrained``)."""
    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        raise DatasetError(f"no tokenizer in {directory} (tokenizer.json is missing); regenerate the dataset or model")
    return AutoTokenizer.from_pretrained(str(directory))


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt_format: str = "bos") -> list[int]:
    """Token ids of the generation prompt for a prompt format (``"bos"`` or ``"paper"``)."""
    if prompt_format not in PROMPTS:
        raise DatasetError(f"unknown prompt format {prompt_format!r}; use one of {list(PROMPTS)}")
    return tokenizer.convert_tokens_to_ids(list(PROMPTS[prompt_format]))

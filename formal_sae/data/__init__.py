"""Tokenizers and Hugging Face datasets of grammar samples with per-token ground-truth features.

A dataset is a ``datasets.DatasetDict`` with splits ``train``/``validation``/``test``. Each row:

* ``input_ids``: the prompt (``<bos>``, or the paper's 7-token prefix), the sentence, ``<eos>``;
* ``text``: the sentence as space-separated tokens; ``length``: its number of tokens;
* one column per ground-truth feature, aligned with ``input_ids``: the feature of the token at
  that position, and `IGNORE_VALUE` (-100) at the prompt and ``<eos>``.

Everything needed to interpret the columns (grammar text, feature declarations, prompt, seed)
is stored as JSON in each split's ``info.description`` and in the dataset card (``README.md``).

One idea per module: `tokenizer` (ids and tokens),
`metadata` (what a dataset was built from), `building`
(sampling rows), `saving` and `loading` (dataset
directories), `card` (the card and the Hub upload).
"""

from formal_sae.data.building import SPLITS, build_dataset, column
from formal_sae.data.card import CARD_FILE, dataset_card, push_dataset_to_hub
from formal_sae.data.loading import load_dataset_dir
from formal_sae.data.metadata import DatasetMetadata, dataset_metadata, grammar_of
from formal_sae.data.saving import SCRATCH_DIR, generate_dataset, save_dataset
from formal_sae.data.tokenizer import (
    BOS,
    EOS,
    PAD,
    PAPER_PROMPT,
    PROMPTS,
    SPECIAL_TOKENS,
    TOKENIZER_DIR,
    UNK,
    PromptFormat,
    build_tokenizer,
    grammar_vocab,
    load_tokenizer,
    prompt_ids,
    token_strings,
)

__all__ = [
    "BOS",
    "CARD_FILE",
    "EOS",
    "PAD",
    "PAPER_PROMPT",
    "PROMPTS",
    "SCRATCH_DIR",
    "SPECIAL_TOKENS",
    "SPLITS",
    "TOKENIZER_DIR",
    "UNK",
    "DatasetMetadata",
    "PromptFormat",
    "build_dataset",
    "build_tokenizer",
    "column",
    "dataset_card",
    "dataset_metadata",
    "generate_dataset",
    "grammar_of",
    "grammar_vocab",
    "load_dataset_dir",
    "load_tokenizer",
    "prompt_ids",
    "push_dataset_to_hub",
    "save_dataset",
    "token_strings",
]

"""The dataset card (``README.md``) and the upload of a dataset directory to the Hugging Face Hub."""

from __future__ import annotations

import json
import os
from pathlib import Path

from formal_sae.data.loading import load_dataset_dir
from formal_sae.data.metadata import DatasetMetadata

CARD_FILE = "README.md"


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

"""The cards (``README.md``) of models and SAEs pushed to the Hugging Face Hub.

[`model_card`][formal_sae.model_card] and [`sae_card`][formal_sae.sae_card] write YAML front matter (the
Hub's metadata, with formal-sae's own under ``formal_sae``) and a readable body, from a saved
folder's config and ``metrics.json``. The front matter records which card formal-sae wrote
(`MODEL_CARD`, `SAE_CARD`) and, for SAEs, every SAE's row, so a later push merges its SAEs into
the card of those already in the repo. The uploads: `formal_sae.hub`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from formal_sae.errors import FormalSAEError, ModelError, SAEError
from formal_sae.io import read_json
from formal_sae.models import CONFIG_FILE, load_model
from formal_sae.saes.paper import ARCHITECTURE as PAPER_ARCHITECTURE
from formal_sae.saes.storage import CFG_FILE

CARD_FILE = "README.md"
METRICS_FILE = "metrics.json"
DOCS_URL = "https://github.com/formal-sae/formal-sae/blob/main/docs/hub.md"
#: ``formal_sae.card`` in a card's front matter: which card formal-sae wrote.
MODEL_CARD, SAE_CARD = "model", "saes"


def _finite(obj: Any) -> Any:
    """JSON values with NaN and infinities as None (YAML front matter has no NaN that JSON writes)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _read(path: Path, what: str, error: type[FormalSAEError]) -> Any:
    try:
        return read_json(path, what=what)
    except FormalSAEError as e:
        raise error(str(e)) from None


def _metrics(folder: Path, error: type[FormalSAEError]) -> dict[str, Any]:
    path = folder / METRICS_FILE
    metrics = _read(path, "metrics file", error) if path.is_file() else {}
    if isinstance(metrics, dict) and "cell_id" in metrics and "metrics" in metrics:  # a sweep cell's record
        metrics = metrics["metrics"] if metrics["metrics"] is not None else {}  # None: the sweep did not evaluate
    if not isinstance(metrics, dict):
        raise error(f"metrics file {path} is not a JSON object; restore it or delete it before pushing")
    return metrics


def _front_matter(meta: dict[str, Any]) -> str:
    return f"---\n{json.dumps(_finite(meta), indent=2)}\n---\n"  # JSON is YAML


def _card_meta(text: str) -> dict[str, Any]:
    """The ``formal_sae`` metadata of a card's front matter ({} for a card formal-sae did not write)."""
    from huggingface_hub import ModelCard

    try:
        meta = ModelCard(text).data.to_dict()
    except Exception:  # no or broken front matter: not a card formal-sae wrote
        return {}
    ours = meta.get("formal_sae")
    return ours if isinstance(ours, dict) and "formal-sae" in (meta.get("tags") or []) else {}


def _card_kind(text: str) -> str | None:
    """Which card formal-sae wrote (`MODEL_CARD`, `SAE_CARD`), or None for any other README.
    Cards from before the ``card`` key are told apart by their metadata."""
    meta = _card_meta(text)
    kind = meta.get("card")
    if kind in (MODEL_CARD, SAE_CARD):
        return kind
    if isinstance(meta.get("saes"), dict):
        return SAE_CARD
    return MODEL_CARD if "model_name" in meta and "architecture" in meta else None


def model_card(model_dir: str | os.PathLike, repo_id: str) -> str:
    """The model card (``README.md``) of a saved model: YAML metadata (``library_name:
    transformer-lens``, the grammar, architecture, validity and loss from ``metrics.json``) and a
    readable body with the grammar and how to load the model, with or without formal-sae."""
    folder = Path(model_dir)
    saved = _read(folder / CONFIG_FILE, "model config", ModelError)
    arch, data = saved["model"], saved.get("data") or {}
    name = saved.get("model_name") or load_model(folder).cfg.model_name  # older config.json files have no name
    metrics = _metrics(folder, ModelError)
    grammar = data.get("grammar")
    results = {k: metrics.get(k) for k in ("validity", "validity_std", "val_loss", "steps") if k in metrics}
    meta = {
        "library_name": "transformer-lens",
        "license": "mit",
        "pipeline_tag": "text-generation",
        "tags": ["transformer-lens", "formal-languages", "pcfg", "interpretability", "formal-sae"]
        + ([grammar] if grammar else []),
        "formal_sae": {
            "card": MODEL_CARD,
            "model_name": name,
            "grammar": grammar,
            "architecture": arch,
            "d_vocab": saved.get("d_vocab"),
        }
        | results,
    }
    rows = "\n".join(f"| `{k}` | {v} |" for k, v in arch.items())
    trained = (
        f"Validity (share of sampled sentences the grammar accepts): **{_fmt(metrics.get('validity'))} ± "
        f"{_fmt(metrics.get('validity_std'))}**; validation loss {_fmt(metrics.get('val_loss'), 4)} after "
        f"{metrics.get('steps', 'n/a')} steps."
        if metrics
        else "No training metrics were saved with this model."
    )
    grammar_text = data.get("grammar_text")
    grammar_section = f"\n## Grammar `{grammar}`\n\n```\n{grammar_text.rstrip()}\n```\n" if grammar_text else ""
    return f"""{_front_matter(meta)}
# `{name}`

A small transformer trained by [formal-sae](https://github.com/formal-sae/formal-sae) on sentences of
{f"the formal language `{grammar}`" if grammar else "a formal language"}, a TransformerLens
`HookedTransformer` (pre-LayerNorm, GPT-2 style) whose tokenizer is in `tokenizer/`.

## Results

{trained}

## Architecture

| field | value |
|---|---|
{rows}
{grammar_section}
## Loading

```python
import formal_sae
model = formal_sae.load_model("{repo_id}")   # a HookedSAETransformer, with its tokenizer and grammar
```

Without formal-sae, with TransformerLens, safetensors and transformers only: see
[Sharing models and SAEs]({DOCS_URL}) (a short function; the logits are identical).
"""


def _sae_entry(folder: Path) -> dict[str, Any]:
    """An SAE's row of the card (and of its front matter): its config and metrics."""
    cfg = _read(folder / CFG_FILE, "SAE config", SAEError)
    meta = cfg.get("metadata", {}) if isinstance(cfg, dict) else {}
    metrics = _metrics(folder, SAEError)
    return {
        "architecture": cfg.get("architecture"),
        "training_architecture": meta.get("training_architecture"),
        "hook_name": meta.get("hook_name"),
        "d_in": cfg.get("d_in"),
        "d_sae": cfg.get("d_sae"),
        "model_name": meta.get("model_name"),
        "grammar": meta.get("dataset_path"),
        "l0": metrics.get("l0", meta.get("l0")),
    } | {
        k: metrics[k]
        for k in ("explained_variance", "ce_loss_score", "dead_fraction", "validity", "validity_std", "causal_loss")
        if k in metrics
    }


def sae_card(saes: Mapping[str, str | os.PathLike], repo_id: str, model_repo_id: str | None = None) -> str:
    """The card (``README.md``) of a repo of SAEs, one per SAE id: YAML metadata
    (``library_name: saelens``, the model, hook, explained variance, L0, validity from each SAE's
    ``metrics.json``) and a body with a table of the SAEs and how to load them."""
    return _sae_card({sid: _sae_entry(Path(folder)) for sid, folder in saes.items()}, repo_id, model_repo_id)


def _sae_card(entries: Mapping[str, dict[str, Any]], repo_id: str, model_repo_id: str | None) -> str:
    """The card of SAEs described by their entries (`_sae_entry`; an earlier card's, when merging)."""
    entries = {sid: {**e, "model_name": e.get("model_name"), "grammar": e.get("grammar")} for sid, e in entries.items()}
    models = sorted({e["model_name"] for e in entries.values() if e["model_name"]})
    grammars = sorted({e["grammar"] for e in entries.values() if e["grammar"]})
    meta = {
        "library_name": "saelens",
        "license": "mit",
        "tags": ["sae-lens", "saelens", "sparse-autoencoder", "formal-languages", "interpretability", "formal-sae", *grammars],
        **({"base_model": model_repo_id} if model_repo_id else {}),
        "formal_sae": {"card": SAE_CARD, "models": models, "saes": entries},
    }
    rows = "\n".join(
        f"| `{sid}` | {e.get('training_architecture') or e.get('architecture')} | `{e.get('hook_name')}` | {e.get('d_sae')} | "
        f"{_fmt(e.get('explained_variance'))} | {_fmt(e.get('l0'), 1)} | {_fmt(e.get('ce_loss_score'))} | "
        f"{_fmt(e.get('validity'))} |"
        for sid, e in entries.items()
    )
    first = next(iter(entries))
    model_line = f"[`{model_repo_id}`](https://huggingface.co/{model_repo_id})" if model_repo_id else None
    trained_on = model_line or ", ".join(f"`{m}`" for m in models) or "a formal-sae model"
    paper = any(e.get("architecture") == PAPER_ARCHITECTURE for e in entries.values())
    paper_note = (
        f"\nArchitecture `{PAPER_ARCHITECTURE}` is formal-sae's: `import formal_sae` registers it with SAELens before loading.\n"
        if paper
        else ""
    )
    model_load = (
        f'model = formal_sae.load_model("{model_repo_id}")\n' if model_repo_id else 'model = formal_sae.load_model("...")\n'
    )
    return f"""{_front_matter(meta)}
# SAEs for {trained_on}

Sparse autoencoders trained by [formal-sae](https://github.com/formal-sae/formal-sae) on the
activations of a small transformer trained on {", ".join(f"`{g}`" for g in grammars) or "a formal language"}.
One folder per SAE, in SAELens's format (`cfg.json`, `sae_weights.safetensors`), with formal-sae's
training config (`formal_sae_sae_config.json`) and, where measured, `metrics.json`. Validity is the share of
sentences the grammar accepts when the model samples with the SAE spliced in.

| SAE id | architecture | hook | d_sae | explained variance | L0 | CE score | validity |
|---|---|---|---|---|---|---|---|
{rows}
{paper_note}
## Loading

```python
from sae_lens import SAE
sae = SAE.from_pretrained("{repo_id}", "{first}")

import formal_sae                       # or with formal-sae's checks, and the model it was trained on
sae = formal_sae.load_sae("{repo_id}/{first}")
{model_load}```
"""


def _merged_sae_card(
    existing: str | None, entries: Mapping[str, dict[str, Any]], in_repo: set[str], repo_id: str, model_repo_id: str | None
) -> str:
    """The card of every SAE in a repo whose ``README.md`` is ``existing`` (None, or formal-sae's SAE
    card): the earlier SAEs still in the repo (``in_repo``, read from its front matter) and these
    ``entries`` (`_sae_entry`), in that order; ``base_model`` kept from it unless ``model_repo_id``."""
    meta = _card_meta(existing) if existing is not None else {}
    earlier = meta.get("saes") if isinstance(meta.get("saes"), dict) else {}
    kept = {sid: e for sid, e in earlier.items() if sid in in_repo and sid not in entries and isinstance(e, dict)}
    base = model_repo_id
    if base is None and existing is not None:
        from huggingface_hub import ModelCard

        base = ModelCard(existing).data.to_dict().get("base_model")
    merged = {sid: entries.get(sid, kept.get(sid)) for sid in [*earlier, *entries] if sid in kept or sid in entries}
    return _sae_card(merged, repo_id, base)

"""Models and SAEs on the Hugging Face Hub: model cards and uploads.

[`push_model_to_hub`][formal_sae.push_model_to_hub] puts a saved model at the root of a model repo, as saved by
[`formal_sae.save_model`][formal_sae.save_model] (``config.json``, ``model.safetensors``, ``tokenizer/``, the
training record) with a model card; [`push_sae_to_hub`][formal_sae.push_sae_to_hub] puts SAEs in SAELens's layout, one
folder per SAE id (``<sae_id>/cfg.json``, ``<sae_id>/sae_weights.safetensors``, formal-sae's
files beside them), so ``sae_lens.SAE.from_pretrained(repo_id, sae_id)`` loads them. Every
folder is loaded and checked before anything is uploaded, and the whole repo is laid out in a
local folder first and sent in one commit (``HfApi.upload_folder``). Loading back:
[`formal_sae.load_model`][formal_sae.load_model] and [`formal_sae.load_sae`][formal_sae.load_sae] take the repo id
(`formal_sae.hub_download`).

SAELens's own ``upload_saes_to_huggingface`` writes the same per-SAE folders, but uploads only
SAELens's files (not ``formal_sae_sae_config.json``, which [`formal_sae.load_sae`][formal_sae.load_sae] checks
``cfg.json`` against, nor ``metrics.json``), always creates public repos, and writes its README
only when there is none; hence one upload here, with its layout.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from formal_sae.errors import FormalSAEError, ModelError, SAEError
from formal_sae.io import read_json
from formal_sae.models import CONFIG_FILE, load_model
from formal_sae.outputs import MARKER_FILE
from formal_sae.saes.paper import ARCHITECTURE as PAPER_ARCHITECTURE
from formal_sae.saes.storage import CFG_FILE, load_sae

CARD_FILE = "README.md"
#: The Hub's repo type of everything formal-sae pushes here (datasets: [`formal_sae.push_dataset_to_hub`][formal_sae.push_dataset_to_hub]).
REPO_TYPE = "model"
METRICS_FILE = "metrics.json"
DOCS_URL = "https://github.com/formal-sae/formal-sae/blob/main/docs/hub.md"


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
    if not isinstance(metrics, dict):
        raise error(f"metrics file {path} is not a JSON object; restore it or delete it before pushing")
    return metrics


def _front_matter(meta: dict[str, Any]) -> str:
    return f"---\n{json.dumps(_finite(meta), indent=2)}\n---\n"  # JSON is YAML


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
        "formal_sae": {"model_name": name, "grammar": grammar, "architecture": arch, "d_vocab": saved.get("d_vocab")} | results,
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


def sae_card(saes: Mapping[str, str | os.PathLike], repo_id: str, model_repo_id: str | None = None) -> str:
    """The card (``README.md``) of a repo of SAEs, one per SAE id: YAML metadata
    (``library_name: saelens``, the model, hook, explained variance, L0, validity from each SAE's
    ``metrics.json``) and a body with a table of the SAEs and how to load them."""
    entries: dict[str, dict[str, Any]] = {}
    for sae_id, folder in saes.items():
        folder = Path(folder)
        cfg = _read(folder / CFG_FILE, "SAE config", SAEError)
        meta = cfg.get("metadata", {}) if isinstance(cfg, dict) else {}
        metrics = _metrics(folder, SAEError)
        entries[sae_id] = {
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
    models = sorted({e["model_name"] for e in entries.values() if e["model_name"]})
    grammars = sorted({e["grammar"] for e in entries.values() if e["grammar"]})
    meta = {
        "library_name": "saelens",
        "license": "mit",
        "tags": ["sae-lens", "saelens", "sparse-autoencoder", "formal-languages", "interpretability", "formal-sae", *grammars],
        **({"base_model": model_repo_id} if model_repo_id else {}),
        "formal_sae": {"models": models, "saes": entries},
    }
    rows = "\n".join(
        f"| `{sid}` | {e['training_architecture'] or e['architecture']} | `{e['hook_name']}` | {e['d_sae']} | "
        f"{_fmt(e.get('explained_variance'))} | {_fmt(e.get('l0'), 1)} | {_fmt(e.get('ce_loss_score'))} | "
        f"{_fmt(e.get('validity'))} |"
        for sid, e in entries.items()
    )
    first = next(iter(entries))
    model_line = f"[`{model_repo_id}`](https://huggingface.co/{model_repo_id})" if model_repo_id else None
    trained_on = model_line or ", ".join(f"`{m}`" for m in models) or "a formal-sae model"
    paper = any(e["architecture"] == PAPER_ARCHITECTURE for e in entries.values())
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


def _check_dir(directory: str | os.PathLike, what: str, error: type[FormalSAEError]) -> Path:
    folder = Path(directory)
    if not folder.is_dir():
        raise error(f"{what} directory {folder} does not exist; push a folder saved by formal-sae")
    return folder


def _copy_files(src: Path, dst: Path) -> None:
    """The artifact's files, without formal-sae's local marker (an output-policy record) or a card."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_file() and str(rel) not in (MARKER_FILE, CARD_FILE) and not rel.name.startswith("."):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst / rel)


def _sae_ids(saes: str | os.PathLike | Mapping[str, str | os.PathLike], sae_id: str | None) -> dict[str, Path]:
    if isinstance(saes, Mapping):
        if sae_id is not None:
            raise SAEError("pass sae_id with a single SAE folder; a mapping already names each SAE")
        mapping = {str(k): _check_dir(v, "SAE", SAEError) for k, v in saes.items()}
    else:
        folder = _check_dir(saes, "SAE", SAEError)
        if sae_id is None:  # SAELens's convention: an SAE's id is its hook
            cfg = _read(folder / CFG_FILE, "SAE config", SAEError)
            sae_id = (cfg.get("metadata") or {}).get("hook_name") if isinstance(cfg, dict) else None
            if not sae_id:
                raise SAEError(f"{folder / CFG_FILE} names no hook; pass sae_id")
        mapping = {sae_id: folder}
    if not mapping:
        raise SAEError("no SAEs to push")
    for sid in mapping:
        parts = sid.split("/")
        if any(p in ("", ".", "..") for p in parts) or sid in (CARD_FILE, ".gitattributes"):
            raise SAEError(f"SAE id {sid!r} is not a folder name in a repo (no empty parts, '.', '..' or leading '/')")
    return mapping


def _upload(
    staged: Path,
    repo_id: str,
    *,
    private: bool,
    revision: str | None,
    token: str | None,
    commit_message: str,
    delete_patterns: list[str] | None = None,
) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type=REPO_TYPE, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(staged),
        repo_type=REPO_TYPE,
        revision=revision,
        commit_message=commit_message,
        delete_patterns=delete_patterns,
    )
    return str(url)


def push_model_to_hub(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a saved model, with a generated model card, to the root of a Hugging Face model repo.

    The model is loaded first ([`formal_sae.load_model`][formal_sae.load_model] checks every file), then its files
    (``config.json``, ``model.safetensors``, ``tokenizer/``, ``metrics.json`` and the rest of
    what training wrote, less formal-sae's local marker) and ``README.md`` ([`model_card`][formal_sae.model_card]) go
    up in one commit. ``formal_sae.load_model(repo_id)`` loads it back.

    Args:
        model_dir: A model folder (``formal-sae train-model --out``, [`formal_sae.save_model`][formal_sae.save_model]).
        repo_id: ``user/name`` or ``org/name``; the repo is created if missing.
        private: Create the repo private (an existing repo keeps its visibility).
        revision: A branch to push to, created if missing (default: the main branch).
        token: A Hugging Face token (default: the one ``hf auth login`` stored).
        commit_message: The commit's message.

    Returns:
        The repo's URL.
    """
    folder = _check_dir(model_dir, "model", ModelError)
    model = load_model(folder)
    with tempfile.TemporaryDirectory(prefix="formal-sae-hub-") as tmp:
        staged = Path(tmp)
        _copy_files(folder, staged)
        (staged / CARD_FILE).write_text(model_card(folder, repo_id), encoding="utf-8")
        return _upload(
            staged,
            repo_id,
            private=private,
            revision=revision,
            token=token,
            commit_message=commit_message or f"Upload {model.cfg.model_name} with formal-sae",
        )


def push_sae_to_hub(
    sae_dir: str | os.PathLike | Mapping[str, str | os.PathLike],
    repo_id: str,
    *,
    sae_id: str | None = None,
    model_repo_id: str | None = None,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload SAEs in SAELens's layout, with a generated card, to a Hugging Face model repo.

    Each SAE goes to the folder ``<sae_id>/`` (default id: its hook name, SAELens's convention),
    so ``sae_lens.SAE.from_pretrained(repo_id, sae_id)`` and
    ``formal_sae.load_sae(f"{repo_id}/{sae_id}")`` load it. Each is loaded and checked
    ([`formal_sae.load_sae`][formal_sae.load_sae]) before the upload; files left in those folders by an earlier
    push are deleted, other folders of the repo are kept, and ``README.md`` ([`sae_card`][formal_sae.sae_card])
    describes the SAEs of this push.

    Args:
        sae_dir: An SAE folder (``formal-sae train-sae --out``), or a mapping of SAE ids to folders.
        repo_id: ``user/name`` or ``org/name``; the repo is created if missing.
        sae_id: The id (folder in the repo) of a single SAE.
        model_repo_id: The Hub repo of the model the SAEs were trained on (the card's ``base_model``).
        private: Create the repo private (an existing repo keeps its visibility).
        revision: A branch to push to, created if missing (default: the main branch).
        token: A Hugging Face token (default: the one ``hf auth login`` stored).
        commit_message: The commit's message.

    Returns:
        The repo's URL.
    """
    mapping = _sae_ids(sae_dir, sae_id)
    for folder in mapping.values():
        load_sae(folder)
    with tempfile.TemporaryDirectory(prefix="formal-sae-hub-") as tmp:
        staged = Path(tmp)
        for sid, folder in mapping.items():
            (staged / sid).mkdir(parents=True)
            _copy_files(folder, staged / sid)
        (staged / CARD_FILE).write_text(sae_card(mapping, repo_id, model_repo_id), encoding="utf-8")
        return _upload(
            staged,
            repo_id,
            private=private,
            revision=revision,
            token=token,
            commit_message=commit_message or f"Upload SAE{'s' if len(mapping) > 1 else ''} {', '.join(mapping)} with formal-sae",
            delete_patterns=[f"{sid}/*" for sid in mapping],
        )

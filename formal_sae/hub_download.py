"""The loading side of the Hugging Face Hub: a repo id becomes a local folder in the HF cache.

[`formal_sae.load_model`][formal_sae.load_model] and [`formal_sae.load_sae`][formal_sae.load_sae] take a folder or a Hub repo id
(``"user/repo"``, ``"user/repo/subfolder"``, ``"user/repo@revision"``, optionally prefixed with
``hf://``). `local_folder` downloads the repo (or only the subfolder) with
``huggingface_hub.snapshot_download`` and returns the folder, which is then loaded and checked like
any other. A model's download is its files only (`MODEL_PATTERNS`), not the SAE folders pushed
beside it; an SAE's is its folder. An existing local path always wins; a path that exists nowhere
is tried on the Hub only when it looks like a repo id and its first component is not a local folder
(``runs/model`` typed in the wrong directory is a missing folder if ``runs/`` exists here, and a
Hub repo ``runs/model`` otherwise, which the message and the log say); ``hf://`` always means the
Hub. Uploading is `formal_sae.hub`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from formal_sae.errors import FormalSAEError

log = logging.getLogger(__name__)

HUB_PREFIX = "hf://"
#: The files formal-sae writes at the root of a model folder (`formal_sae.save_model`, training) and
#: pushes (`formal_sae.push_model_to_hub`), and its folders: what loading a model from the Hub
#: downloads, and what a model push may delete when the new model lacks it.
MODEL_FILES = ("config.json", "model.safetensors", "metrics.json", "train_config.json", "training_curve.png")
MODEL_FOLDERS = ("tokenizer",)
MODEL_PATTERNS = (*MODEL_FILES, *(f"{folder}/*" for folder in MODEL_FOLDERS))
_REPO = re.compile(
    r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[^/]+))?(?:/(?P<subfolder>[^@]+?))?/?",
    flags=re.ASCII,
)


@dataclass(frozen=True)
class HubSource:
    """Where on the Hub an artifact lives: a model repo, a revision (None: the default branch) and
    a folder in it ("" for the repo's root)."""

    repo_id: str
    revision: str | None = None
    subfolder: str = ""


def parse_hub_source(source: str | os.PathLike, revision: str | None = None) -> HubSource | None:
    """The Hub location ``source`` names, or None when it is a local path (one that exists, one
    whose first component is a local folder, or one that does not look like
    ``[hf://]user/repo[@revision][/subfolder]``); ``hf://`` always names the Hub."""
    text = os.fspath(source)
    if text.startswith("hf:/") and not text.startswith(HUB_PREFIX):  # pathlib.Path("hf://x") is "hf:/x" (CLI paths)
        text = HUB_PREFIX + text.removeprefix("hf:/")
    explicit = text.startswith(HUB_PREFIX)
    if not explicit and (
        Path(text).exists() or Path(text).is_absolute() or text.startswith((".", "~")) or _first_part_is_local(text)
    ):
        return None
    match = _REPO.fullmatch(text.removeprefix(HUB_PREFIX))
    if match is None:
        if explicit:
            raise FormalSAEError(f"{text!r} is not a Hub location; write hf://user/repo[@revision][/subfolder]")
        return None
    if match["revision"] and revision and match["revision"] != revision:
        raise FormalSAEError(f"{text!r} names revision {match['revision']!r}, but revision={revision!r} was passed")
    subfolder = (match["subfolder"] or "").strip("/")
    if subfolder and any(part in ("", ".", "..") for part in subfolder.split("/")):
        raise FormalSAEError(f"{text!r} names a subfolder {subfolder!r} that is not a plain path in the repo")
    return HubSource(match["repo"], match["revision"] or revision, subfolder)


def _first_part_is_local(text: str) -> bool:
    """Whether the first component of a relative path is a folder here (``runs`` of ``runs/model``)."""
    parts = Path(text).parts
    return len(parts) > 1 and Path(parts[0]).is_dir()


def local_folder(
    source: str | os.PathLike,
    what: str,
    error: type[FormalSAEError],
    revision: str | None = None,
    allow_patterns: Sequence[str] | None = None,
) -> Path:
    """The local folder of ``source``: itself, or its Hub repo (or subfolder) downloaded into the
    Hugging Face cache. ``allow_patterns`` (relative to that folder) restricts the download to
    the artifact's files (default: the whole folder). Download failures raise ``error`` naming
    the repo and the way out; a missing local folder whose first component exists here raises
    ``error`` saying so (it is not looked up on the Hub)."""
    try:
        hub = parse_hub_source(source, revision)
    except FormalSAEError as e:
        raise error(str(e)) from None
    if hub is None:
        text = os.fspath(source)
        if not Path(text).exists() and _first_part_is_local(text) and _REPO.fullmatch(text):
            first = Path(text).parts[0]
            raise error(
                f"there is no {what} folder {text!r} (no such folder; {first!r} is a folder here, so {text!r} is read as a "
                f"local path, not a Hub repo): check the path and the current directory, or write hf://{text} for the Hub"
            )
        if revision is not None:
            raise error(f"revision={revision!r} applies to Hub repos only, and {text!r} is a local folder")
        return Path(source)
    import huggingface_hub  # looked up at call time (tests replace snapshot_download)

    where = f"{hub.repo_id}{'@' + hub.revision if hub.revision else ''}{'/' + hub.subfolder if hub.subfolder else ''}"
    prefix = f"{hub.subfolder}/" if hub.subfolder else ""
    patterns = [prefix + p for p in allow_patterns] if allow_patterns is not None else [f"{prefix}*"] if prefix else None
    if not os.fspath(source).startswith(("hf://", "hf:/")):
        log.info("there is no folder %r here: loading the %s %s from the Hugging Face Hub", os.fspath(source), what, where)
    try:
        root = huggingface_hub.snapshot_download(
            repo_id=hub.repo_id, repo_type="model", revision=hub.revision, allow_patterns=patterns
        )
    except Exception as e:  # network, authentication, unknown repo or revision: huggingface_hub raises many types
        reason = f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]
        raise error(
            f"there is no folder {os.fspath(source)!r} here, and downloading the {what} {where} from the Hugging Face Hub "
            f"failed ({reason}); check the path or repo id, your network, and `hf auth login` for a private repo"
        ) from None
    folder = Path(root) / hub.subfolder if hub.subfolder else Path(root)
    if not folder.is_dir():
        raise error(f"the Hub repo {hub.repo_id} has no folder {hub.subfolder!r}; the {what} {where} does not exist")
    return folder

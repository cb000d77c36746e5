"""Models and SAEs on the Hugging Face Hub: the uploads, each one commit.

[`push_model_to_hub`][formal_sae.push_model_to_hub] puts a saved model at the root of a model repo, as saved by
[`formal_sae.save_model`][formal_sae.save_model] (``config.json``, ``model.safetensors``, ``tokenizer/``, the
training record) with a model card; [`push_sae_to_hub`][formal_sae.push_sae_to_hub] puts SAEs in SAELens's layout, one
folder per SAE id (``<sae_id>/cfg.json``, ``<sae_id>/sae_weights.safetensors``, formal-sae's
files beside them), so ``sae_lens.SAE.from_pretrained(repo_id, sae_id)`` loads them. Every
folder is loaded and checked before anything is uploaded, and each push is one commit
(``HfApi.create_commit`` with the exact files to add and to delete: ``upload_folder`` commits in
batches with ``hf_xet``, so an interrupted push could leave folders half replaced). Errors of the
Hub (no login, no write access, a bad repo id, no network) become one-line
[`ModelError`][formal_sae.ModelError] / [`SAEError`][formal_sae.SAEError] naming the repo and the fix. Loading back:
[`formal_sae.load_model`][formal_sae.load_model] and [`formal_sae.load_sae`][formal_sae.load_sae] take the repo id
(`formal_sae.hub_download`).

SAELens's own ``upload_saes_to_huggingface`` writes the same per-SAE folders, but uploads only
SAELens's files (not ``formal_sae_sae_config.json``, which [`formal_sae.load_sae`][formal_sae.load_sae] checks
``cfg.json`` against, nor ``metrics.json``), always creates public repos, and writes its README
only when there is none; hence one upload here, with its layout. The cards: `formal_sae.hub_cards`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from formal_sae.errors import FormalSAEError, ModelError, SAEError
from formal_sae.hub_cards import (  # model_card and sae_card are public from here too
    CARD_FILE,
    MODEL_CARD,
    SAE_CARD,
    _card_kind,
    _merged_sae_card,
    _read,
    _sae_card,
    _sae_entry,
    model_card,
    sae_card,  # noqa: F401
)
from formal_sae.hub_download import MODEL_FILES, MODEL_FOLDERS
from formal_sae.models import load_model
from formal_sae.outputs import MARKER_FILE
from formal_sae.saes.storage import CFG_FILE, load_sae

#: The Hub's repo type of everything formal-sae pushes here (datasets: [`formal_sae.push_dataset_to_hub`][formal_sae.push_dataset_to_hub]).
REPO_TYPE = "model"
#: An SAE id: folder names of letters, digits and ``._-+=`` (a sweep's cell ids), joined by ``/``.
SAE_ID = re.compile(r"[A-Za-z0-9._+=-]+(?:/[A-Za-z0-9._+=-]+)*", flags=re.ASCII)

log = logging.getLogger(__name__)


def _check_dir(directory: str | os.PathLike, what: str, error: type[FormalSAEError]) -> Path:
    folder = Path(directory)
    if not folder.is_dir():
        raise error(f"{what} directory {folder} does not exist; push a folder saved by formal-sae")
    return folder


def _artifact_files(src: Path, prefix: str = "") -> dict[str, Path]:
    """The artifact's files by their path in the repo, without formal-sae's local marker (an
    output-policy record), a card or hidden files."""
    files = {}
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_file() and str(rel) not in (MARKER_FILE, CARD_FILE) and not any(p.startswith(".") for p in rel.parts):
            files[prefix + rel.as_posix()] = path
    return files


def _is_model_file(path: str) -> bool:
    """Whether ``path`` (in a repo) is one formal-sae writes for a model at the repo's root."""
    return path in MODEL_FILES or (path.split("/")[0] in MODEL_FOLDERS and "/" in path)


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
    reserved = {CARD_FILE, ".gitattributes", *MODEL_FILES, *MODEL_FOLDERS}
    for sid in mapping:
        if not SAE_ID.fullmatch(sid) or ".." in sid or any(p == "." for p in sid.split("/")):
            raise SAEError(
                f"SAE id {sid!r} is not a folder name in a repo: use letters, digits and ._-+= in folder names joined "
                "by '/' (no empty parts, '.', '..', leading or trailing '/', spaces or wildcards)"
            )
        if sid.split("/")[0] in reserved:
            raise SAEError(
                f"SAE id {sid!r} is not a folder name in a repo: {sid.split('/')[0]!r} is a model's file; choose another id"
            )
    _check_nesting(mapping, set())
    return mapping


def _check_nesting(mapping: Mapping[str, Any], others: set[str]) -> None:
    """Refuse an SAE folder inside another SAE's (of this push, or ``others`` already in the repo):
    replacing the outer one would delete the inner one's files."""
    ids = sorted(mapping)
    for sid in ids:
        for other in [*ids, *sorted(others - set(mapping))]:
            if other != sid and other.startswith(sid + "/"):
                where = "pushed with it" if other in mapping else "already in the repo"
                raise SAEError(
                    f"SAE id {sid!r} is a folder around the SAE {other!r} {where}: pushing it would replace that SAE's "
                    "files; choose ids that are not inside one another"
                )
            if sid.startswith(other + "/") and other not in mapping:
                raise SAEError(
                    f"SAE id {sid!r} is inside the folder of the SAE {other!r} already in the repo; "
                    "choose an id that is not inside another SAE's folder"
                )


def _hub_error(e: Exception, repo_id: str, doing: str, error: type[FormalSAEError]) -> FormalSAEError:
    """One line for an error of ``huggingface_hub`` (its classes differ between versions: told apart by name)."""
    names = {cls.__name__ for cls in type(e).__mro__}
    status = getattr(getattr(e, "response", None), "status_code", None)
    reason = f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]
    login = "log in with `hf auth login` or set HF_TOKEN"
    if "HFValidationError" in names:
        fix = f"check the repo id: {repo_id!r} is not a Hub repo id; write user/name or org/name"
    elif "LocalTokenNotFoundError" in names or status == 401:
        fix = f"you are not logged in to the Hub, or your token is invalid: {login} (a token with write access)"
    elif status == 403:
        fix = (
            f"your token may not write to {repo_id}: {login} with a token that has write access to "
            "that user or organization, and check the repo id"
        )
    elif "RepositoryNotFoundError" in names or status == 404:
        fix = f"check the repo id, and {login} (a private or new repo needs a token with write access)"
    elif "HfHubHTTPError" in names or status is not None:
        fix = f"check the repo id and your token ({login}), or try again later"
    else:
        fix = "check your network: the Hugging Face Hub could not be reached"
    return error(f"pushing to the Hub repo {repo_id!r} failed while {doing} ({reason}); {fix}")


@contextmanager
def _hub_calls(repo_id: str, doing: str, error: type[FormalSAEError]) -> Iterator[None]:
    """Calls of ``huggingface_hub``, whose errors (many types) become ``error``."""
    try:
        yield
    except FormalSAEError:
        raise
    except Exception as e:
        raise _hub_error(e, repo_id, doing, error) from None


class _Repo:
    """A Hub repo (and branch) being pushed to: created if missing, its files listed."""

    def __init__(
        self, repo_id: str, error: type[FormalSAEError], *, private: bool, revision: str | None, token: str | None
    ) -> None:
        from huggingface_hub import HfApi

        self.repo_id, self.error, self.revision = repo_id, error, revision
        self.api = HfApi(token=token)
        with _hub_calls(repo_id, "creating the repo", error):
            self.url = str(self.api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True))
            if revision is not None and revision != "main":
                self.api.create_branch(repo_id, branch=revision, repo_type=REPO_TYPE, exist_ok=True)
        with _hub_calls(repo_id, "listing its files", error):
            try:
                files = self.api.list_repo_files(repo_id, revision=revision, repo_type=REPO_TYPE)
            except Exception as e:  # a new repo without a commit has no tree yet
                if not {"EntryNotFoundError", "RevisionNotFoundError"} & {c.__name__ for c in type(e).__mro__}:
                    raise
                files = []
        self.files: set[str] = set(files)

    def card(self) -> str | None:
        """The repo's ``README.md`` (None: there is none)."""
        if CARD_FILE not in self.files:
            return None
        with _hub_calls(self.repo_id, f"reading its {CARD_FILE}", self.error):
            path = self.api.hf_hub_download(self.repo_id, CARD_FILE, repo_type=REPO_TYPE, revision=self.revision)
        return Path(path).read_text(encoding="utf-8")

    def commit(self, adds: Mapping[str, Path | bytes], deletes: set[str], message: str) -> str:
        """One commit: ``adds`` (path in the repo: a file or its bytes) and ``deletes`` (files)."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        operations: list[Any] = [
            CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(src) if isinstance(src, Path) else src)
            for path, src in sorted(adds.items())
        ]
        operations += [CommitOperationDelete(path_in_repo=path, is_folder=False) for path in sorted(deletes - set(adds))]
        with _hub_calls(self.repo_id, "committing the upload", self.error):
            self.api.create_commit(self.repo_id, operations, commit_message=message, repo_type=REPO_TYPE, revision=self.revision)
        return self.url


def push_model_to_hub(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    overwrite_readme: bool = False,
) -> str:
    """Upload a saved model, with a generated model card, to the root of a Hugging Face model repo.

    The model is loaded first ([`formal_sae.load_model`][formal_sae.load_model] checks every file), then its files
    (``config.json``, ``model.safetensors``, ``tokenizer/``, ``metrics.json`` and the rest of
    what training wrote, less formal-sae's local marker) and ``README.md`` ([`model_card`][formal_sae.model_card]) go
    up in one commit, which also deletes the files formal-sae writes for a model (``metrics.json``,
    ``training_curve.png``, ``tokenizer/...``) that an earlier push left and this model lacks; other
    files of the repo are kept. A ``README.md`` that is not formal-sae's model card (one you
    wrote, or the card of SAEs pushed there) is refused unless ``overwrite_readme``.
    ``formal_sae.load_model(repo_id)`` loads the model back.

    Args:
        model_dir: A model folder (``formal-sae train-model --out``, [`formal_sae.save_model`][formal_sae.save_model]).
        repo_id: ``user/name`` or ``org/name``; the repo is created if missing.
        private: Create the repo private (an existing repo keeps its visibility).
        revision: A branch to push to, created if missing (default: the main branch).
        token: A Hugging Face token (default: the one ``hf auth login`` stored, or ``HF_TOKEN``).
        commit_message: The commit's message.
        overwrite_readme: Replace a ``README.md`` that is not formal-sae's model card.

    Returns:
        The repo's URL.
    """
    folder = _check_dir(model_dir, "model", ModelError)
    model = load_model(folder)
    adds: dict[str, Path | bytes] = dict(_artifact_files(folder))
    adds[CARD_FILE] = model_card(folder, repo_id).encode()
    repo = _Repo(repo_id, ModelError, private=private, revision=revision, token=token)
    existing = repo.card()
    if existing is not None and not overwrite_readme and _card_kind(existing) != MODEL_CARD:
        what = "formal-sae's card of the SAEs there" if _card_kind(existing) == SAE_CARD else "not a card formal-sae wrote"
        raise ModelError(
            f"the Hub repo {repo_id!r} has a {CARD_FILE} that is {what}, and the model's card would replace it: push the "
            "model to another repo, or pass overwrite_readme=True to replace it"
        )
    stale = {path for path in repo.files if _is_model_file(path) and path not in adds}
    return repo.commit(adds, stale, commit_message or f"Upload {model.cfg.model_name} with formal-sae")


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
    ([`formal_sae.load_sae`][formal_sae.load_sae]) before the upload; the push is one commit,
    which deletes the files an earlier push left in those folders and keeps the repo's other files.
    An id is folder names of ``[A-Za-z0-9._+=-]`` joined by ``/``, and not inside another SAE's
    folder (of this push or already in the repo), nor around one.

    The card: if the repo's ``README.md`` is missing or is formal-sae's SAE card, it becomes the
    card ([`sae_card`][formal_sae.sae_card]) of every SAE in the repo, the earlier ones (read from
    its front matter) and these. Any other ``README.md`` (a model's card, one you wrote) is left
    alone, and each SAE of the push gets its card in ``<sae_id>/README.md`` instead.

    Args:
        sae_dir: An SAE folder (``formal-sae train-sae --out``, or a sweep's cell), or a mapping of SAE ids to folders.
        repo_id: ``user/name`` or ``org/name``; the repo is created if missing.
        sae_id: The id (folder in the repo) of a single SAE.
        model_repo_id: The Hub repo of the model the SAEs were trained on (the card's ``base_model``).
        private: Create the repo private (an existing repo keeps its visibility).
        revision: A branch to push to, created if missing (default: the main branch).
        token: A Hugging Face token (default: the one ``hf auth login`` stored, or ``HF_TOKEN``).
        commit_message: The commit's message.

    Returns:
        The repo's URL.
    """
    mapping = _sae_ids(sae_dir, sae_id)
    for folder in mapping.values():
        load_sae(folder)
    entries = {sid: _sae_entry(folder) for sid, folder in mapping.items()}
    adds: dict[str, Path | bytes] = {}
    for sid, folder in mapping.items():
        adds |= _artifact_files(folder, f"{sid}/")
    repo = _Repo(repo_id, SAEError, private=private, revision=revision, token=token)
    in_repo = {path.rsplit("/", 1)[0] for path in repo.files if path.endswith(f"/{CFG_FILE}")}
    _check_nesting(mapping, in_repo)
    existing = repo.card()
    kind = None if existing is None else _card_kind(existing)
    if existing is None or kind == SAE_CARD:
        adds[CARD_FILE] = _merged_sae_card(existing, entries, in_repo, repo_id, model_repo_id).encode()
    else:
        log.info(
            "%s's %s is not formal-sae's SAE card: left alone; each SAE's card goes to <sae_id>/%s", repo_id, CARD_FILE, CARD_FILE
        )
        for sid in mapping:
            adds[f"{sid}/{CARD_FILE}"] = _sae_card({sid: entries[sid]}, repo_id, model_repo_id).encode()
    stale = {path for path in repo.files if any(path.startswith(f"{sid}/") for sid in mapping)}
    message = commit_message or f"Upload SAE{'s' if len(mapping) > 1 else ''} {', '.join(mapping)} with formal-sae"
    return repo.commit(adds, stale, message)

"""An SAE on disk: SAELens's inference format (``cfg.json`` + ``sae_weights.safetensors``) plus
formal-sae's record of the run (``formal_sae_sae_config.json``), written as one artifact
(`formal_sae.outputs`) and loaded back with clear errors for damaged files."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from sae_lens import SAE, TrainingSAE
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from sae_lens.registry import get_sae_class
from safetensors import safe_open

from formal_sae.data import dataset_metadata
from formal_sae.errors import SAEError
from formal_sae.hub_download import local_folder
from formal_sae.io import write_json
from formal_sae.models import model_fingerprint, model_name_of, plausible_weights
from formal_sae.outputs import output_dir
from formal_sae.saes.config import SAETrainConfig

#: formal-sae's record of an SAE's training run, next to SAELens's files.
TRAIN_CONFIG_FILE = "formal_sae_sae_config.json"
#: SAELens's files of a saved inference SAE (SAELens writes them: ``save_inference_model``).
CFG_FILE, WEIGHTS_FILE = SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME


def sae_run_config(config: SAETrainConfig, **more: Any) -> dict[str, Any]:
    """What defines an SAE training run, as recorded in its output's marker (the device does not)."""
    return {"sae": {k: v for k, v in config.to_dict().items() if k != "device"}, **more}


def sae_output_dir(out_dir: str | os.PathLike | None, run: dict[str, Any], overwrite: bool):
    """The SAE's in-progress output folder ([`formal_sae.outputs.output_dir`][formal_sae.output_dir]), or None without ``out_dir``."""
    if out_dir is None:
        return contextlib.nullcontext(None)
    return output_dir(out_dir, "sae", run, overwrite=overwrite, resumable=True)


def to_inference(
    trained: TrainingSAE, model, dataset, config: SAETrainConfig, out_dir: str | os.PathLike | None, extra: dict | None = None
) -> SAE:
    """Save a trained SAE in SAELens's format (to ``out_dir`` or a temporary directory) and load
    it back with ``SAE.load_from_disk``: the result is exactly what users will load later."""
    meta = dataset_metadata(dataset)
    trained.cfg.metadata.model_name = model_name_of(model)
    trained.cfg.metadata.hook_name = config.hook_name
    trained.cfg.metadata.dataset_path = meta.grammar
    trained.cfg.metadata.context_size = model.cfg.n_ctx
    trained.cfg.metadata.model_fingerprint = model_fingerprint(model)  # checked where the SAE is applied (check_sae_model)
    if out_dir is not None:
        save_sae(trained, out_dir, config, extra)
        return load_sae(out_dir, device=config.device)
    with tempfile.TemporaryDirectory(prefix="formal-sae-sae-") as tmp:
        save_sae(trained, tmp, config, extra)
        return load_sae(tmp, device=config.device)


def save_sae(
    trained: TrainingSAE, directory: str | os.PathLike, config: SAETrainConfig, extra: dict | None = None, overwrite: bool = False
) -> Path:
    """Write ``cfg.json`` + ``sae_weights.safetensors`` (SAELens inference format, via
    ``save_inference_model``) and formal-sae's training config into ``directory``, as one
    artifact (an existing ``directory`` is refused unless ``overwrite``; see `formal_sae.outputs`)."""
    with output_dir(directory, "sae", sae_run_config(config, **(extra or {})), overwrite=overwrite) as work:
        trained.save_inference_model(str(work))
        write_json(work / TRAIN_CONFIG_FILE, {**config.to_dict(), **(extra or {})})
    return Path(directory)


def load_sae(directory: str | os.PathLike, device: str = "cpu", revision: str | None = None) -> SAE:
    """Load an SAE saved by formal-sae (plain ``SAE.load_from_disk``, with clear errors).

    ``directory`` is a folder or a Hugging Face Hub location of one pushed by
    [`formal_sae.push_sae_to_hub`][formal_sae.push_sae_to_hub]: ``"user/repo/<sae_id>"`` (the SAE's folder in the repo),
    ``"user/repo@revision/<sae_id>"``, or ``"user/repo"`` for an SAE at the repo's root
    (``hf://`` in front makes it explicit). It is downloaded into the Hugging Face cache and
    loaded from there like a folder.

    Each file is checked first, so a damaged ``cfg.json`` or ``sae_weights.safetensors`` gives an
    [`SAEError`][formal_sae.SAEError] naming it; weights that are not finite, fields SAELens would silently drop,
    and a ``cfg.json`` that disagrees with ``formal_sae_sae_config.json`` (hook, ``k``, width) too.
    """
    directory = local_folder(directory, "SAE", SAEError, revision)
    for name in (CFG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise SAEError(
                f"{directory / name} is missing; {directory} is not a saved SAE (train one with `formal-sae train-sae`)"
            )
    cfg_path, weights_path, train_path = directory / CFG_FILE, directory / WEIGHTS_FILE, directory / TRAIN_CONFIG_FILE

    def corrupt(problem: str) -> SAEError:
        return SAEError(
            f"the SAE in {directory} is corrupt or from an unknown architecture: {problem}; retrain it or restore it from a copy"
        )

    def one_line(e: BaseException) -> str:
        return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]

    def read(path: Path) -> Any:
        try:
            return json.loads(path.read_bytes().decode("utf-8"))
        except (ValueError, OSError, RecursionError) as e:  # ValueError includes JSON and UTF-8 errors
            raise corrupt(f"{path} is not valid JSON ({one_line(e)})") from None

    cfg = read(cfg_path)
    meta = cfg.get("metadata", {}) if isinstance(cfg, dict) else None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("architecture"), str) or not isinstance(meta, dict):
        raise corrupt(f"{cfg_path} is not an SAELens config (no architecture or metadata)")
    try:
        fields = {f.name for f in dataclasses.fields(get_sae_class(cfg["architecture"])[1])}
    except Exception as e:
        raise corrupt(
            f"{cfg_path} names architecture {cfg['architecture']!r}, which SAELens does not know ({one_line(e)})"
        ) from None
    unknown = sorted(set(cfg) - fields - {"metadata", "architecture"})
    if unknown:  # SAELens drops unknown fields and uses defaults: a misspelt field would change the SAE silently
        raise corrupt(f"{cfg_path} has field(s) {unknown} that a {cfg['architecture']!r} SAE does not have")
    known = {"sae_lens_version", "sae_lens_training_version", "model_name", "hook_name", "hook_head_index", "prepend_bos",
             "training_architecture", "training_architecture_details", "l0", "num_dead_features", "dataset_path",
             "context_size", "model_fingerprint", "model_class_name", "hf_hook_name", "model_from_pretrained_kwargs",
             "seqpos_slice", "exclude_special_tokens", "neuronpedia_id"}  # fmt: skip
    for key in set(meta) - known:  # metadata is free-form: only a near miss of a known field is damage
        near = [k for k in sorted(known) if len(k) == len(key) and sum(a != b for a, b in zip(k, key)) <= 3]
        if near:
            raise corrupt(f"{cfg_path} has a metadata field {key!r} that looks like a damaged {near[0]!r}")
    fingerprint = meta.get("model_fingerprint")
    if fingerprint is not None and not (isinstance(fingerprint, str) and re.fullmatch(r"[0-9a-f]{64}", fingerprint)):
        raise corrupt(f"{cfg_path} has a model_fingerprint that is not a SHA-256 digest")
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            list(f.keys())
    except Exception as e:
        raise corrupt(f"{weights_path} is not a readable safetensors file ({one_line(e)})") from None
    try:
        sae = SAE.load_from_disk(str(directory), device=device)
    except Exception as e:  # each file reads, but SAELens cannot build an SAE from them
        raise corrupt(f"{cfg_path} does not describe the weights in {weights_path} ({one_line(e)})") from None
    if not all(plausible_weights(p.detach()) for p in sae.parameters()):
        raise corrupt(f"{weights_path} holds NaN, infinite or absurdly large weights")
    if train_path.is_file():  # formal-sae's own record of the run: cfg.json must agree with it
        train = read(train_path)
        if not isinstance(train, dict):
            raise corrupt(f"{train_path} is not a JSON object")
        checks = {
            "hook_name": (sae.cfg.metadata.hook_name, train.get("hook_name")),
            "d_sae": (
                sae.cfg.d_sae,
                sae.cfg.d_in * train["expansion_factor"] if isinstance(train.get("expansion_factor"), int) else None,
            ),
        }
        if "k" in cfg and train.get("k") is not None:
            checks["k"] = (cfg["k"], train.get("k"))
        wrong = [f"{k} {a!r} against {b!r}" for k, (a, b) in checks.items() if a != b]
        if wrong:
            raise corrupt(f"{cfg_path} and {train_path} disagree ({', '.join(wrong)}): one of them is damaged")
    return sae

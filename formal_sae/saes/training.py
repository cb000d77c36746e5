"""Training SAEs with SAELens's own ``SAETrainer`` on a formal-sae model's activations.

The data provider is formal-sae's (SAELens's ``DataProvider`` is any iterator of activation
batches): activations of sentence tokens only (no prompt, ``<eos>`` or padding, as the paper
trains), computed once into an in-memory cache and served in shuffled batches. The cache is what
lets a sweep train many SAEs without re-running the language model for each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from sae_lens import SAE, LoggingConfig, SAETrainer, TrainingSAE
from sae_lens.config import SAETrainerConfig
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, get_sae_training_class
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer

from formal_sae.activations import DEFAULT_HOOK, check_hook, collect_activations, hook_shape
from formal_sae.data import dataset_metadata
from formal_sae.errors import SAEError
from formal_sae.io import write_json
from formal_sae.models import model_fingerprint
from formal_sae.outputs import output_dir
from formal_sae.saes import checkpoints, paper
from formal_sae.seeding import deterministic

#: formal-sae's name for the paper's architecture (registered in SAELens as ``formal_paper``).
PAPER = "paper"
TRAIN_CONFIG_FILE = "formal_sae_sae_config.json"
CHECKPOINT_DIR = "checkpoints"  # inside an SAE's in-progress folder while it trains
#: Checkpoints taken while an SAE trains into an output directory (each costs one small save).
DEFAULT_CHECKPOINTS = 10


def architectures() -> list[str]:
    """Trainable architecture names: every SAELens training architecture, plus ``paper``."""
    return [PAPER, *(a for a in SAE_TRAINING_CLASS_REGISTRY if a != paper.ARCHITECTURE)]


@dataclass
class SAETrainConfig:
    """Everything that defines an SAE training run (saved as JSON next to the SAE).

    Sparsity fields apply to the architectures that have them: ``k`` (``topk``, ``batchtopk``,
    ``matryoshka_batchtopk``, ``paper`` TopK), ``l1_coefficient`` (``standard``, ``gated``, and
    ``paper`` L1 where it is the paper's sum-reduced alpha), ``l0_coefficient`` (``jumprelu``).
    The ``pre_bias`` / ``normalize_*`` / ``splice`` switches are the paper's variants and need
    ``architecture="paper"``. ``extra`` passes any other field of the SAELens training config.
    """

    architecture: str = "topk"
    hook_name: str = DEFAULT_HOOK
    expansion_factor: int = 4
    k: int | None = None
    l1_coefficient: float | None = None
    l0_coefficient: float | None = None
    pre_bias: bool = False
    normalize_input: bool = False
    normalize_decoder: bool = False
    normalize_recon: bool = False
    splice: str = "scale_correct"
    training_tokens: int = 200_000
    batch_size_tokens: int = 1024
    lr: float = 3e-3  # tiny models, short runs: 3e-4 (usual for LLMs) leaves explained variance near 0 here
    lr_warm_up_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    dead_feature_window: int = 1000
    seed: int = 0
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAETrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise SAEError(f"unknown SAE config field(s) {sorted(unknown)}")
        return cls(**d)

    @property
    def paper_variant(self) -> bool:
        return self.pre_bias or self.normalize_input or self.normalize_decoder or self.normalize_recon

    def validate(self) -> None:
        """Refuse invalid settings with an :class:`SAEError` naming the field, its value and the valid
        range; a warm-up at least as long as the run is shortened to a tenth of it, with a warning."""
        if self.architecture not in architectures():
            raise SAEError(f"unknown SAE architecture {self.architecture!r}; choose one of {', '.join(architectures())}")
        if self.paper_variant and self.architecture != PAPER:
            raise SAEError(
                "pre_bias / normalize_input / normalize_decoder / normalize_recon are the paper's variants: "
                f"use architecture 'paper', not {self.architecture!r}"
            )
        if self.architecture == PAPER and self.k is not None and self.l1_coefficient:
            raise SAEError("the paper SAE is TopK (k) or L1 (l1_coefficient), not both: give one of them")
        for name in ("expansion_factor", "training_tokens", "batch_size_tokens", "dead_feature_window"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise SAEError(f"{name} must be >= 1 (an integer), got {getattr(self, name)!r}")
        if self.k is not None and (not _is_int(self.k) or self.k < 1):
            raise SAEError(f"k={self.k!r} must be between 1 and the dictionary size d_sae = d_in x expansion_factor (an integer)")
        for name in ("l1_coefficient", "l0_coefficient"):  # a negative penalty rewards dense codes; zero is no penalty
            value = getattr(self, name)
            if value is not None and not _is_positive(value):
                raise SAEError(f"{name} must be > 0, got {value!r}; leave it unset (None) for architectures without it")
        if not _is_positive(self.lr):
            raise SAEError(f"lr must be > 0, got {self.lr!r}")
        for name in ("adam_beta1", "adam_beta2"):
            if not _is_real(getattr(self, name)) or not 0 <= getattr(self, name) < 1:
                raise SAEError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not _is_int(self.lr_warm_up_steps) or self.lr_warm_up_steps < 0:
            raise SAEError(f"lr_warm_up_steps must be >= 0 (an integer), got {self.lr_warm_up_steps!r}")
        total = self.training_tokens // self.batch_size_tokens
        # A warm-up as long as the run never reaches lr; adjusted here, so that the saved config holds what ran.
        if 0 < total <= self.lr_warm_up_steps:
            shorter = total // 10
            warnings.warn(
                f"lr_warm_up_steps={self.lr_warm_up_steps} is not shorter than the run ({total} steps = training_tokens // "
                f"batch_size_tokens), so the learning rate would never reach lr={self.lr}; using lr_warm_up_steps={shorter} "
                "(a tenth of the run) instead",
                UserWarning,
                stacklevel=2,
            )
            self.lr_warm_up_steps = shorter
        if self.splice not in ("scale_correct", "paper"):
            raise SAEError(f"splice must be 'scale_correct' or 'paper', got {self.splice!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_positive(value: Any) -> bool:
    """A real number > 0 (NaN is not: ``nan <= 0`` is False, so ``not > 0`` is the test)."""
    return _is_real(value) and value > 0


def sae_hook_width(model: HookedTransformer, hook_name: str) -> int:
    """``d_in`` of an SAE at ``hook_name``, after checking the hook holds one vector per token.

    Per-head hooks (``attn.hook_q/k/v/z``) are refused: their activations are collected flattened,
    but an SAE spliced there receives ``[..., n_heads, d_head]`` and fails."""
    shape = hook_shape(model, hook_name)
    if len(shape) != 1:
        raise SAEError(
            f"{hook_name} has per-head activations (shape {shape} per token), where an SAE cannot be spliced in; "
            "use a hook with one vector per token, e.g. the block's hook_attn_out or hook_resid_post"
        )
    return shape[0]


def _arch_kwargs(cfg: SAETrainConfig, cfg_class: type, d_sae: int) -> dict[str, Any]:
    """Sparsity and variant settings for the SAELens config class, refusing ones it does not have."""
    given = {
        "k": cfg.k,
        "l1_coefficient": cfg.l1_coefficient,
        "l0_coefficient": cfg.l0_coefficient,
        **(
            {
                "pre_bias": cfg.pre_bias,
                "normalize_input": cfg.normalize_input,
                "normalize_decoder": cfg.normalize_decoder,
                "normalize_recon": cfg.normalize_recon,
                "splice": cfg.splice,
            }
            if cfg.architecture == PAPER
            else {}
        ),
        **cfg.extra,
    }
    given = {k: v for k, v in given.items() if v is not None}
    fields = {f.name for f in dataclasses.fields(cfg_class)}
    refused = sorted(set(given) - fields)
    if refused:
        raise SAEError(
            f"architecture {cfg.architecture!r} has no setting {', '.join(refused)}; remove it or choose another architecture"
        )
    if "k" in given and not 0 < given["k"] <= d_sae:
        raise SAEError(f"k={given['k']} must be between 1 and the dictionary size d_sae={d_sae} (d_in x expansion_factor)")
    if cfg.architecture == "matryoshka_batchtopk" and "matryoshka_widths" not in given:
        given["matryoshka_widths"] = [max(1, d_sae // 4), max(2, d_sae // 2), d_sae]
    return given


def build_training_sae(cfg: SAETrainConfig, d_in: int, model_name: str = "formal-sae") -> TrainingSAE:
    """A freshly initialised SAELens ``TrainingSAE`` for ``cfg`` (seeded by ``cfg.seed``)."""
    cfg.validate()
    arch = paper.ARCHITECTURE if cfg.architecture == PAPER else cfg.architecture
    sae_class, cfg_class = get_sae_training_class(arch)
    d_sae = d_in * cfg.expansion_factor
    metadata = SAEMetadata(model_name=model_name, hook_name=cfg.hook_name, hook_head_index=None, prepend_bos=True)
    try:
        sae_cfg = cfg_class(d_in=d_in, d_sae=d_sae, device=cfg.device, metadata=metadata, **_arch_kwargs(cfg, cfg_class, d_sae))
    except (ValueError, TypeError) as e:
        if isinstance(e, SAEError):
            raise
        raise SAEError(f"invalid settings for architecture {cfg.architecture!r}: {e}") from None
    torch.manual_seed(cfg.seed)
    return sae_class(sae_cfg)


_flush_depth = 0


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero on the CPU inside the block (off again afterwards; nestable).

    L1 training drives many latents and their Adam moments towards zero, into the denormal
    range, where CPU arithmetic is ~10x slower: a paper L1 SAE trained and evaluated 5-10x
    slower than its TopK twin without this. Rounding 1e-38 to 0 changes no result.
    """
    global _flush_depth
    _flush_depth += 1
    if _flush_depth == 1:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        _flush_depth -= 1
        if _flush_depth == 0:
            torch.set_flush_denormal(False)


def activation_batches(acts: torch.Tensor, batch_size: int, seed: int, start_step: int = 0) -> Iterator[torch.Tensor]:
    """Endless shuffled batches of rows of ``acts`` (a new permutation each epoch, seeded), from
    batch ``start_step`` on: a resumed run sees exactly the batches an uninterrupted one would."""
    gen = torch.Generator().manual_seed(seed)
    if len(acts) < batch_size:
        raise SAEError(f"only {len(acts)} activation tokens for a batch of {batch_size}; use more data or a smaller batch")
    per_epoch = len(acts) // batch_size
    epoch, offset = divmod(start_step, per_epoch)
    for _ in range(epoch):  # the skipped epochs' permutations are drawn all the same: they advance the generator
        torch.randperm(len(acts), generator=gen)
    while True:
        perm = torch.randperm(len(acts), generator=gen)
        for start in range(offset * batch_size, per_epoch * batch_size, batch_size):
            yield acts.index_select(0, perm[start : start + batch_size])  # ~3x faster than acts[idx] on CPU
        offset = 0


def cache_activations(
    model, dataset: datasets.DatasetDict, hook_name: str, max_tokens: int, split: str = "train"
) -> torch.Tensor:
    """Sentence-token activations of ``split`` at ``hook_name``: up to ``max_tokens``, and at least
    one batch. Training cycles over them (epochs) when the split is smaller than the budget."""
    check_hook(model, hook_name)
    return collect_activations(model, dataset[split], hook_name, max_tokens)


def model_name_of(model) -> str:
    data = getattr(model, "formal_sae_data", None)
    cfg = getattr(model, "formal_sae_config", None)
    return f"formal-sae/{data.grammar if data else 'model'}-{cfg.preset if cfg else 'custom'}"


def train_sae(
    model: HookedTransformer,
    dataset: datasets.DatasetDict,
    config: SAETrainConfig | None = None,
    *,
    activations: torch.Tensor | None = None,
    out_dir: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    n_checkpoints: int | None = None,
    overwrite: bool = False,
    **overrides: Any,
) -> SAE:
    """Train an SAE with SAELens on a model's activations at sentence tokens.

    Args:
        model: A formal-sae model (``HookedSAETransformer``).
        dataset: Its dataset; the ``train`` split supplies the activations.
        config: Training settings; keyword ``overrides`` replace its fields, e.g.
            ``train_sae(model, ds, architecture="topk", k=16, hook_name="blocks.1.hook_resid_post")``.
        activations: Precomputed ``[n_tokens, d_in]`` activations at ``config.hook_name`` (a
            sweep shares one cache across SAEs); computed from the train split if None.
        out_dir: If given, the SAE is saved there (SAELens format, see :func:`save_sae`), built
            in ``<out_dir>.in-progress`` with its training checkpoints and moved into place when
            complete (:mod:`formal_sae.outputs`); an interrupted run with the same settings
            resumes from its last checkpoint and gives the same SAE bitwise.
        checkpoint_dir: Where checkpoints go (default: inside the in-progress folder of ``out_dir``).
        n_checkpoints: Checkpoints during training (default: :data:`DEFAULT_CHECKPOINTS` with an
            ``out_dir`` or ``checkpoint_dir``, else none); see :func:`fit_sae`.
        overwrite: Replace an existing SAE in ``out_dir`` (only one formal-sae wrote).

    Returns:
        The trained SAE as a SAELens inference ``SAE`` (``sae.cfg.metadata.hook_name`` set, so
        ``model.add_sae(sae)`` works), with ``sae.formal_sae_train_seconds`` recorded.
    """
    config = dataclasses.replace(config or SAETrainConfig(), **overrides)
    config.validate()  # before any output directory is made
    if n_checkpoints is None:
        n_checkpoints = DEFAULT_CHECKPOINTS if out_dir is not None or checkpoint_dir is not None else 0
    with sae_output_dir(out_dir, sae_run_config(config), overwrite) as work:
        if checkpoint_dir is None and work is not None:
            checkpoint_dir = work / CHECKPOINT_DIR
        trained, seconds = fit_sae(
            model, dataset, config, activations, checkpoint_dir=checkpoint_dir, n_checkpoints=n_checkpoints
        )
        sae = to_inference(trained, model, dataset, config, work)
        if work is not None:
            shutil.rmtree(work / CHECKPOINT_DIR, ignore_errors=True)
    sae.formal_sae_train_seconds = seconds
    return sae


def sae_run_config(config: SAETrainConfig, **more: Any) -> dict[str, Any]:
    """What defines an SAE training run, as recorded in its output's marker (the device does not)."""
    return {"sae": {k: v for k, v in config.to_dict().items() if k != "device"}, **more}


def sae_output_dir(out_dir: str | os.PathLike | None, run: dict[str, Any], overwrite: bool):
    """The SAE's in-progress output folder (:func:`formal_sae.outputs.output_dir`), or None without ``out_dir``."""
    if out_dir is None:
        return contextlib.nullcontext(None)
    return output_dir(out_dir, "sae", run, overwrite=overwrite, resumable=True)


def fit_sae(
    model,
    dataset: datasets.DatasetDict,
    config: SAETrainConfig,
    activations: torch.Tensor | None = None,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    n_checkpoints: int = 0,
) -> tuple[TrainingSAE, float]:
    """Train a SAELens ``TrainingSAE`` with ``SAETrainer``; returns it and the seconds it took.

    With ``checkpoint_dir``, training first resumes from the latest complete checkpoint there (if
    any; made with the same settings, else an error), and saves ``n_checkpoints`` more on the way
    (crash-safe; only the latest is kept, see :mod:`formal_sae.saes.checkpoints`). The result is
    bitwise that of an uninterrupted run (same machine, same thread count).
    """
    config.validate()
    if n_checkpoints < 0 or (n_checkpoints and checkpoint_dir is None):
        raise SAEError(f"n_checkpoints={n_checkpoints} needs to be >= 0 and a checkpoint_dir to save them in")
    d_in = sae_hook_width(model, config.hook_name)
    if activations is None:
        activations = cache_activations(model, dataset, config.hook_name, config.training_tokens)
    if activations.shape[-1] != d_in:
        raise SAEError(f"activations have width {activations.shape[-1]} but hook {config.hook_name} has width {d_in}")
    training_sae = build_training_sae(config, d_in, model_name_of(model))
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = checkpoints.TrainerCheckpoints(checkpoint_dir, checkpoints.settings(config, activations=list(activations.shape)))
    trainer_cfg = SAETrainerConfig(
        total_training_samples=config.training_tokens,
        train_batch_size_samples=config.batch_size_tokens,
        lr=config.lr,
        lr_end=config.lr,  # constant schedule (SAETrainerConfig has no default here)
        lr_warm_up_steps=config.lr_warm_up_steps,
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        device=config.device,
        dead_feature_window=config.dead_feature_window,
        feature_sampling_window=config.dead_feature_window,
        n_checkpoints=n_checkpoints,
        checkpoint_path=str(checkpoint_dir) if checkpoint_dir is not None else None,
        logger=LoggingConfig(log_to_wandb=False),
    )
    start = ckpt.batches if ckpt else 0
    provider = checkpoints.CountingIterator(
        activation_batches(activations.to(config.device), config.batch_size_tokens, config.seed, start_step=start), start
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=training_sae, data_provider=provider)
    if ckpt:
        ckpt.attach(trainer, provider)  # restores the latest checkpoint's state, and saves the next ones
    t0 = time.perf_counter()
    with flush_denormals(), deterministic():
        trained = trainer.fit()  # SAELens's own loop and progress bar
    return trained, time.perf_counter() - t0 + (ckpt.seconds_before if ckpt else 0.0)


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
    artifact (an existing ``directory`` is refused unless ``overwrite``; see :mod:`formal_sae.outputs`)."""
    with output_dir(directory, "sae", sae_run_config(config, **(extra or {})), overwrite=overwrite) as work:
        trained.save_inference_model(str(work))
        write_json(work / TRAIN_CONFIG_FILE, {**config.to_dict(), **(extra or {})})
    return Path(directory)


def load_sae(directory: str | os.PathLike, device: str = "cpu") -> SAE:
    """Load an SAE saved by formal-sae (plain ``SAE.load_from_disk``, with clear errors).

    Each file is checked first, so a damaged ``cfg.json`` or ``sae_weights.safetensors`` gives an
    :class:`SAEError` naming it; weights that are not finite, fields SAELens would silently drop,
    and a ``cfg.json`` that disagrees with ``formal_sae_sae_config.json`` (hook, ``k``, width) too.
    """
    import json
    import re

    from sae_lens.registry import get_sae_class
    from safetensors import safe_open

    from formal_sae.models import plausible_weights

    directory = Path(directory)
    for name in ("cfg.json", "sae_weights.safetensors"):
        if not (directory / name).is_file():
            raise SAEError(
                f"{directory / name} is missing; {directory} is not a saved SAE (train one with `formal-sae train-sae`)"
            )
    cfg_path, weights_path, train_path = (
        directory / "cfg.json",
        directory / "sae_weights.safetensors",
        directory / TRAIN_CONFIG_FILE,
    )

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

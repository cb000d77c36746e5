"""Model construction, presets, save and load: the only module that builds a TransformerLens model.

Models are [`FormalSAEModel`][formal_sae.FormalSAEModel] instances: a ``sae_lens.HookedSAETransformer`` (a
``HookedTransformer`` that SAEs can be spliced into with ``add_sae``), built from a
[`ModelConfig`][formal_sae.ModelConfig], carrying their tokenizer, the description of the data they were trained on
and, once trained, their training metrics. Keeping construction here means a port to
TransformerLens 4 (``TransformerBridge.boot_native``) touches this file only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from sae_lens import HookedSAETransformer
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformerConfig
from transformer_lens.components import Unembed
from transformer_lens.hook_points import HookPoint
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from formal_sae.configs import check_fields
from formal_sae.data import (
    BOS,
    EOS,
    PAD,
    PROMPTS,
    TOKENIZER_DIR,
    UNK,
    DatasetMetadata,
    build_tokenizer,
    grammar_of,
    grammar_vocab,
)
from formal_sae.errors import FormalSAEError, ModelError
from formal_sae.grammars import Grammar
from formal_sae.hub_download import MODEL_PATTERNS, local_folder
from formal_sae.io import read_json, write_json
from formal_sae.outputs import output_dir
from formal_sae.records import Record

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class ModelConfig:
    """Architecture and initialisation of a model. Presets: `PRESETS`.

    Every model is a pre-LayerNorm GPT-2-style transformer with learned absolute positions and
    exact GELU. ``biases=False`` freezes every bias TransformerLens creates at zero (the paper's
    model has none); ``tie_embeddings`` makes the unembedding the transpose of the embedding.
    """

    preset: str = "custom"
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 2
    d_head: int = 64
    d_mlp: int = 512
    n_ctx: int = 256
    act_fn: str = "gelu"
    biases: bool = False
    tie_embeddings: bool = True
    initializer_range: float = 0.02
    seed: int = 0

    @classmethod
    def from_preset(cls, name: str, **overrides) -> ModelConfig:
        """A preset by name, with fields overridden (e.g. ``seed=1``)."""
        if name not in PRESETS:
            raise ModelError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        check_fields(cls, overrides, ModelError)
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        check_fields(cls, d, ModelError)
        return cls(**d)


#: Built-in presets. ``paper`` is the authors' model ([The paper: the language models][paper-models]): 2 layers, d_model 128,
#: 2 heads of 64, d_mlp 512, context 256, no biases, tied embeddings. ``small`` is the quick-start
#: model (a quarter of the width, trains in minutes on a CPU); ``tiny`` is for tests.
PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig("paper"),
    "small": ModelConfig("small", n_layers=2, d_model=64, n_heads=2, d_head=32, d_mlp=256, n_ctx=128),
    "tiny": ModelConfig("tiny", n_layers=1, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_ctx=128),
}


class TiedUnembed(Unembed):
    """Unembedding that reuses the embedding matrix: logits = resid @ W_E^T (no bias).

    ``W_U`` is a read-only view of ``embed.W_E.T``, so TransformerLens code reading
    ``model.W_U`` keeps working and the state dict holds the matrix once.
    """

    def __init__(self, cfg: HookedTransformerConfig, embed: torch.nn.Module) -> None:
        torch.nn.Module.__init__(self)
        self.cfg = cfg
        object.__setattr__(self, "_embed", embed)  # not a submodule: its parameters belong to model.embed
        self.register_buffer("b_U", torch.zeros(cfg.d_vocab_out, dtype=cfg.dtype))
        self.hook_in = HookPoint()
        self.hook_out = HookPoint()

    @property
    def W_U(self) -> torch.Tensor:  # type: ignore[override]
        return self._embed.W_E.T

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        return self.hook_out(F.linear(self.hook_in(residual), self._embed.W_E, self.b_U))


@dataclass(eq=False)
class TrainingMetrics(Record):
    """What [`train_model`][formal_sae.train_model] measured (``model.formal_sae_metrics``; ``metrics.json`` is its
    ``to_dict()``). Validity is that of the final model over ``final_validity_repeats`` draws.
    ``stopped_early`` and ``best_val_loss`` are set (and in the JSON) only for runs with the plateau
    rule (``TrainConfig.plateau_patience``); ``steps`` is then the steps actually trained."""

    _optional: ClassVar[tuple[str, ...]] = ("stopped_early", "best_val_loss")

    validity: float
    validity_std: float
    val_loss: float
    steps: int
    grammar: str
    preset: str
    mean_length: float
    mean_depth: float
    failures: dict[str, int]
    train_seconds_this_run: float  # this process only: a resumed run counts from where it resumed
    real_tokens_per_second_this_run: float
    history: list[dict[str, float]]  # per evaluation: step, train_loss, val_loss, validity, lr
    stopped_early: bool | None = None  # the plateau rule stopped the run before its maximum steps
    best_val_loss: float | None = None  # the lowest validation loss of the history (with the plateau rule)


class FormalSAEModel(HookedSAETransformer):
    """A formal-sae model: a ``HookedSAETransformer`` with the run's metadata as declared attributes.

    Attributes:
        formal_sae_config: The architecture it was built from (saved in ``config.json``).
        formal_sae_data: The training dataset's metadata (grammar, prompt, features; saved in
            ``config.json``), or None for a model built without one.
        formal_sae_metrics: What [`formal_sae.train_model`][formal_sae.train_model] measured (``metrics.json``), or
            None for a model that was built or loaded rather than trained in this process.
    """

    formal_sae_config: ModelConfig
    formal_sae_data: DatasetMetadata | None
    formal_sae_metrics: TrainingMetrics | None

    def __init__(self, cfg: HookedTransformerConfig, tokenizer: PreTrainedTokenizerBase, config: ModelConfig,
                 data: DatasetMetadata | None = None) -> None:  # fmt: skip
        super().__init__(cfg, tokenizer=tokenizer, move_to_device=False)
        self.formal_sae_config = config
        self.formal_sae_data = data
        self.formal_sae_metrics = None


def model_name(config: ModelConfig | None, data: DatasetMetadata | None) -> str:
    """The name of a formal-sae model, ``formal-sae/<grammar>-<preset>`` (e.g. ``formal-sae/dyck2-small``):
    its ``cfg.model_name``, the ``model_name`` of its ``config.json`` and of its SAEs' metadata.
    A model built without dataset metadata is ``formal-sae/model-<preset>``."""
    return f"formal-sae/{data.grammar if data else 'model'}-{config.preset if config else 'custom'}"


def model_name_of(model: torch.nn.Module) -> str:
    """`model_name` of a model (``formal-sae/model-custom`` for other TransformerLens models)."""
    return model_name(model_config(model), model_data(model))


def _hooked_config(
    config: ModelConfig, d_vocab: int, device: str, data: DatasetMetadata | None = None
) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        model_name=model_name(config, data),
        n_layers=config.n_layers,
        d_model=config.d_model,
        n_heads=config.n_heads,
        d_head=config.d_head,
        d_mlp=config.d_mlp,
        n_ctx=config.n_ctx,
        d_vocab=d_vocab,
        act_fn=config.act_fn,
        normalization_type="LN",
        positional_embedding_type="standard",
        default_prepend_bos=True,
        init_weights=True,
        init_mode="gpt2",
        initializer_range=config.initializer_range,
        seed=config.seed,
        device=device,
    )


def build_model(
    config: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    data: DatasetMetadata | None = None,
    device: str = "cpu",
) -> FormalSAEModel:
    """Build a freshly initialised model for a tokenizer's vocabulary.

    Initialisation follows the paper: weights ~ N(0, initializer_range), the attention and MLP
    output projections ~ N(0, initializer_range / sqrt(2 n_layers)), biases zero.

    Args:
        config: Architecture; ``config.seed`` seeds the initialisation.
        tokenizer: The dataset's tokenizer (``model.to_tokens`` etc. use it).
        data: Metadata of the training dataset (grammar, prompt); stored with the model.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    """
    device = resolve_device(device)
    with warnings.catch_warnings():  # TL 3 warns that HookedTransformer goes away in TL 4; see module docstring
        warnings.simplefilter("ignore", DeprecationWarning)
        model = FormalSAEModel(_hooked_config(config, len(tokenizer), device, data), tokenizer, config, data)
    with torch.no_grad():
        std = config.initializer_range / (2 * config.n_layers) ** 0.5
        for block in model.blocks:
            block.attn.W_O.normal_(0.0, std)
            block.mlp.W_out.normal_(0.0, std)
    if config.tie_embeddings:
        model.unembed = TiedUnembed(model.cfg, model.embed)
        model.setup()  # re-register hook points after replacing a module
    if not config.biases:
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("b"):
                param.data.zero_()
                param.requires_grad_(False)
    return model.to(device, print_details=False)


def resolve_device(device: str | torch.device | None, available: bool = True) -> str:
    """Validate a device string, with a clear error for unknown devices and, with ``available``,
    for devices this machine lacks (a config naming ``cuda`` can still be read on a CPU)."""
    device = str(device or "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ModelError(f"unsupported device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if not available:
        return device
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available on this machine; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r} requested but MPS is not available; use --device cpu")
    return device


def model_data(model: torch.nn.Module) -> DatasetMetadata | None:
    """The training data's metadata of a [`FormalSAEModel`][formal_sae.FormalSAEModel] (None for one built without it,
    and for other TransformerLens models, which carry none)."""
    return model.formal_sae_data if isinstance(model, FormalSAEModel) else None


def model_config(model: torch.nn.Module) -> ModelConfig | None:
    """The [`ModelConfig`][formal_sae.ModelConfig] of a [`FormalSAEModel`][formal_sae.FormalSAEModel] (None for other TransformerLens models)."""
    return model.formal_sae_config if isinstance(model, FormalSAEModel) else None


def model_grammar(model: HookedSAETransformer) -> Grammar:
    """The grammar a formal-sae model was trained on."""
    data = model_data(model)
    if data is None:
        raise ModelError("this model carries no formal-sae training metadata; pass the grammar explicitly")
    return grammar_of(data)


def model_state(model: HookedSAETransformer) -> dict[str, torch.Tensor]:
    """The trainable state of a model as contiguous tensors (TransformerLens buffers excluded)."""
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.endswith((".IGNORE", ".mask"))}


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of a model's weights (names, shapes, dtypes and values), to recognise it across runs
    and processes: an SAE's metadata stores the fingerprint of the model it was trained on.

    About 1.5 ms for the ``paper`` preset on a CPU, so it is not cached. SAEs spliced into the
    model (``add_sae``) are left out: splicing one does not change the model's identity.
    """
    spliced = tuple(f"{name}." for name in getattr(model, "acts_to_saes", {}))
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.endswith((".IGNORE", ".mask")) or (spliced and name.startswith(spliced)):
            continue
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def save_model(model: FormalSAEModel, directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``config.json`` (ModelConfig + training-data metadata), ``model.safetensors`` and the
    tokenizer (``tokenizer/``) as one artifact (see `formal_sae.outputs`: an existing
    ``directory`` is refused unless ``overwrite``)."""
    config, data = model.formal_sae_config, model.formal_sae_data
    with output_dir(directory, "model", {"model": config.to_dict()}, overwrite=overwrite) as work:
        # one metadata key: safetensors writes its metadata in a hash map's order, so two keys came out
        # in either order from run to run and the same model gave different bytes (the preset is in config.json)
        save_file(model_state(model), str(work / WEIGHTS_FILE), metadata={"format": "pt"})
        if data is not None:
            build_tokenizer(grammar_of(data), work / TOKENIZER_DIR)
        else:
            model.tokenizer.save_pretrained(str(work / TOKENIZER_DIR))
        write_json(
            work / CONFIG_FILE,
            {
                "model": config.to_dict(),
                "model_name": model_name(config, data),  # for loaders without formal-sae; derived again on loading
                "d_vocab": model.cfg.d_vocab,
                "data": None if data is None else data.__dict__,
            },
        )
    return Path(directory)


def load_model(directory: str | os.PathLike, device: str = "cpu", revision: str | None = None) -> FormalSAEModel:
    """Load a model saved by [`save_model`][formal_sae.save_model] (or by training) with its tokenizer.

    ``directory`` is a folder or a Hugging Face Hub repo pushed by
    [`formal_sae.push_model_to_hub`][formal_sae.push_model_to_hub]: ``"user/repo"``, ``"user/repo@revision"``,
    ``"user/repo/subfolder"`` (``hf://`` in front makes it explicit; ``revision`` is the same as
    ``@revision``). A repo is downloaded into the Hugging Face cache and loaded from there like a folder.

    Each file is checked, so that a damaged ``config.json``, tokenizer or ``model.safetensors``
    raises a [`ModelError`][formal_sae.ModelError] naming it instead of failing later or loading a different model:
    unknown or mistyped config fields, feature declarations or a vocabulary that do not match the
    stored grammar, and weights of other shapes, not finite or absurdly large.
    """
    directory = local_folder(directory, "model", ModelError, revision, allow_patterns=MODEL_PATTERNS)
    if not directory.is_dir():
        raise ModelError(f"model directory {directory} does not exist; train one with `formal-sae train-model`")
    path = directory / CONFIG_FILE
    try:
        saved = read_json(path, what="model config", fix=_MODEL_FIX)
    except FormalSAEError as e:  # missing or not JSON: a model error, like the other broken-model cases
        raise ModelError(str(e)) from None

    def corrupt(problem: str) -> ModelError:
        return ModelError(f"model config {path} is corrupt ({problem}); {_MODEL_FIX}")

    try:
        fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
        unknown = sorted(set(saved["model"]) - set(fields))
        if unknown:  # named as corruption of this file, not as a user's misspelt setting
            raise corrupt(f"unknown field(s) {unknown}")
        config = ModelConfig.from_dict(saved["model"])
        data = DatasetMetadata(**saved["data"]) if saved.get("data") else None
    except (KeyError, TypeError, AttributeError) as e:
        raise corrupt(_one_line(e)) from None
    for name, f in fields.items():
        value, default = getattr(config, name), f.default
        ok = isinstance(value, float | int) if isinstance(default, float) else type(value) is type(default)
        if not ok:
            raise corrupt(f"model.{name} is {value!r}, not a {type(default).__name__}")
    grammar = None
    if data is not None:
        try:
            grammar = grammar_of(data)
            meaning = [(f["name"], f["kind"], list(f["categories"])) for f in data.features]  # descriptions may be reworded
            if meaning != [(s.name, s.kind, list(s.categories)) for s in grammar.feature_specs]:
                raise ValueError("its feature declarations do not match its grammar")
            if data.prompt != list(PROMPTS[data.prompt_format]):
                raise ValueError(f"its prompt is not the {data.prompt_format!r} prompt")
        except (FormalSAEError, TypeError, KeyError, ValueError, AttributeError) as e:
            raise corrupt(f"data: {_one_line(e)}") from None
    tokenizer = _load_model_tokenizer(directory, grammar, saved.get("d_vocab"))
    try:
        model = build_model(config, tokenizer, data, device=device)
    except FormalSAEError:
        raise
    except Exception as e:  # TransformerLens refuses e.g. an unknown activation function
        raise corrupt(f"TransformerLens cannot build it: {_one_line(e)}") from None
    load_weights(model, directory / WEIGHTS_FILE)
    return model


_MODEL_FIX = "retrain the model (`formal-sae train-model`) or restore it from a copy"
#: No trained model or SAE comes near this; a flipped bit in a float's exponent usually lands far beyond it.
MAX_PLAUSIBLE_WEIGHT = 1e6


def plausible_weights(t: torch.Tensor) -> bool:
    """Finite and at most `MAX_PLAUSIBLE_WEIGHT` in size: what damaged weights usually are not."""
    return t.numel() == 0 or bool((t.abs() <= MAX_PLAUSIBLE_WEIGHT).all())  # NaN compares False


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]


def _load_model_tokenizer(directory: Path, grammar: Grammar | None, d_vocab: object) -> PreTrainedTokenizerBase:
    """The model's tokenizer, checked against its grammar: a damaged file must not change token ids silently."""
    folder = directory / TOKENIZER_DIR
    files = [folder / "tokenizer.json", folder / "tokenizer_config.json"]
    for path in files:
        try:
            if not isinstance(read_json(path, what="tokenizer file", fix=_MODEL_FIX), dict):
                raise ModelError(f"tokenizer file {path} is corrupt (not a JSON object); {_MODEL_FIX}")
        except FormalSAEError as e:
            raise ModelError(str(e)) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # transformers raises many types for files that are JSON but not a tokenizer
        raise ModelError(f"the tokenizer in {files[0]} and {files[1]} is corrupt ({_one_line(e)}); {_MODEL_FIX}") from None
    problem = None
    if grammar is not None:
        vocab = grammar_vocab(grammar)
        specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
        text = " ".join(grammar.terminals)
        if tokenizer.get_vocab() != vocab:
            problem = "its vocabulary is not the grammar's"
        elif any(getattr(tokenizer, k, None) != v for k, v in specials.items()):
            problem = "its special tokens are not <bos> <eos> <pad> <unk>"
        elif tokenizer(text)["input_ids"] != [vocab[BOS], *range(len(grammar.terminals))]:
            problem = "it does not split the grammar's sentences into their tokens"
    if problem is None and d_vocab is not None and d_vocab != len(tokenizer):
        problem = f"it has {len(tokenizer)} tokens, but the config records d_vocab {d_vocab}"
    if problem:
        raise ModelError(
            f"the tokenizer in {files[0]} and {files[1]} does not match the grammar in {directory / CONFIG_FILE} ({problem}); {_MODEL_FIX}"
        )
    return tokenizer


def load_weights(model: HookedSAETransformer, path: str | os.PathLike) -> None:
    """Load a safetensors state dict into ``model``, naming the file if it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} is missing; {_MODEL_FIX}")
    try:
        state = load_file(str(path), device=str(model.cfg.device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"weights file {path} is corrupt ({_one_line(e)}); {_MODEL_FIX}") from None
    expected = model_state(model)
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise ModelError(
            f"weights file {path} does not match the model config next to it (different tensors or shapes); {_MODEL_FIX}"
        )
    if not all(plausible_weights(t) for t in state.values()):
        raise ModelError(f"weights file {path} is corrupt (it holds NaN, infinite or absurdly large weights); {_MODEL_FIX}")
    model.load_state_dict(state, strict=False)

"""The paper's SAE ([The paper: SAE architecture and loss][paper-sae-architecture]) as a SAELens architecture, ``"formal_paper"``.

Forward pass, with every inductive bias the paper sweeps as a switch:

1. ``normalize_input``: ``x <- x / ||x||`` per token (the target is the normalised x);
2. ``pre_bias``: subtract a learned pre-encoder bias (SAELens's ``b_dec`` with
   ``apply_b_dec_to_input``), and only then is there an encoder bias ``b_enc``;
3. ``ReLU(x W_enc + b_enc)``, then TopK if ``k`` is set; or, with ``sparsemax`` (the paper's
   Expr sweep 1iii, "KDS" prototype encoders), ``sparsemax`` over latents of a similarity of the
   unit-norm input to unit-norm prototypes (the columns of ``W_enc``) with a trainable scalar
   ``lambda`` (initialised ``randn()**2``): ``"no-kds"`` ``lambda * cos``, ``"recon-dist"``
   ``cos - lambda * ||x - w||^2``, ``"dist"`` ``-lambda * ||x - w||^2`` (no L1 term, no TopK);
4. decode with unit-norm decoder rows if ``normalize_decoder`` (``W_dec / (||row|| + 1e-8)``),
   add the pre-bias back;
5. ``normalize_recon``: ``recon <- recon / (||recon|| + 1e-8)``.

Loss: ``mean_{tokens, dims} (recon - x)^2 + alpha * sum_{tokens, latents} |l|`` (L1 only): the
paper's reduction, summed over the batch, so its alpha grid means what it meant there. SAELens's
``standard`` loss sums the squared error over dims and averages the L1 over tokens, so
``l1_coefficient_saelens ~= alpha * tokens_per_batch * d_in``.

Saving: an SAE without input or reconstruction normalisation *is* a stock SAELens ``topk`` (k
set) or ``standard`` (L1) SAE once unit-norm decoder rows are folded into ``W_dec``, and is saved
as one, so plain SAELens loads it. Otherwise it is saved as ``"formal_paper"`` (inference class
`PaperSAE`), which needs formal-sae to be imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from entmax import sparsemax  # a maintained sparsemax (Peters et al.), as the authors used a PyPI one
from sae_lens import SAE, SAEConfig, StandardSAEConfig, TopKSAEConfig, TrainingSAE, TrainingSAEConfig
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY, register_sae_class, register_sae_training_class
from sae_lens.saes.sae import TrainCoefficientConfig, TrainStepInput, TrainStepOutput
from sae_lens.saes.topk_sae import calculate_topk_aux_acts
from torch import nn

from formal_sae.errors import SAEError

ARCHITECTURE = "formal_paper"
#: How an SAE trained on normalised inputs is spliced into the model: ``"scale_correct"``
#: normalises the activation, reconstructs, and rescales by the original norm; ``"paper"`` feeds
#: the raw activation, as the authors' evaluation did ([The paper: validity][paper-validity]).
SpliceMode = Literal["scale_correct", "paper"]
_EPS = 1e-8


def _unit_rows(w: torch.Tensor) -> torch.Tensor:
    return w / (w.norm(dim=-1, keepdim=True) + _EPS)


def _unit_tokens(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + _EPS)


#: The paper's sparsemax ("KDS") encoders ([The paper: SAE architecture and loss][paper-sae-architecture]; Expr sweep 1iii).
SPARSEMAX_ENCODERS = ("no-kds", "recon-dist", "dist")


def _sparsemax_encode(x: torch.Tensor, W_enc: torch.Tensor, lam: torch.Tensor, mode: str) -> torch.Tensor:
    """Latents of the paper's prototype encoder ``mode`` for inputs ``x`` [..., d_in]: sparsemax over
    the latents of a score of the unit-norm input against the unit-norm prototypes ``W_enc[:, j]``."""
    x_hat, protos = _unit_tokens(x), W_enc / (W_enc.norm(dim=0, keepdim=True) + _EPS)
    cos = x_hat @ protos
    if mode == "no-kds":
        return sparsemax(lam * cos, dim=-1)
    # ||x_hat - w_j||^2 from the actual norms (both are 1 up to the epsilon)
    dist = x_hat.pow(2).sum(-1, keepdim=True) + protos.pow(2).sum(0) - 2 * cos
    return sparsemax((cos if mode == "recon-dist" else 0) - lam * dist, dim=-1)


def _topk(hidden: torch.Tensor, k: int | None) -> torch.Tensor:
    """``TopK(ReLU(hidden))``, computed as ``ReLU`` of the top k of ``hidden``: the same latents
    and gradients (a selected non-positive entry is zero either way), with the ReLU applied to k
    entries per token instead of all of them."""
    if k is None or k >= hidden.shape[-1]:
        return hidden.relu()
    values, indices = hidden.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(hidden).scatter_(-1, indices, values.relu())


# ------------------------------------------------------------------------------ inference
@dataclass
class PaperSAEConfig(SAEConfig):
    """Inference config of a paper SAE that needs input or reconstruction normalisation."""

    k: int | None = None
    pre_bias: bool = False
    normalize_input: bool = False
    normalize_recon: bool = False
    splice: str = "scale_correct"
    sparsemax: str | None = None

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class PaperSAE(SAE[PaperSAEConfig]):
    """Inference class of the paper SAE (decoder rows already unit-norm if they were trained so)."""

    b_enc: nn.Parameter

    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))
        if self.cfg.sparsemax is not None:
            self.kds_lambda = nn.Parameter(torch.ones((), dtype=self.dtype, device=self.device))

    def _setup_activation_normalization(self) -> None:
        # Per-token L2 normalisation, undone on the way out when splicing scale-correctly.
        if self.cfg.normalize_input and self.cfg.splice == "scale_correct":

            def norm_in(x: torch.Tensor) -> torch.Tensor:
                self._x_norm = x.norm(dim=-1, keepdim=True)
                return x / (self._x_norm + _EPS)

            def norm_out(x: torch.Tensor) -> torch.Tensor:
                return x * self._x_norm

            self.run_time_activation_norm_fn_in, self.run_time_activation_norm_fn_out = norm_in, norm_out
        else:
            self.run_time_activation_norm_fn_in = self.run_time_activation_norm_fn_out = lambda x: x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.sparsemax is not None:
            return self.hook_sae_acts_post(
                _sparsemax_encode(self.process_sae_in(x), self.W_enc, self.kds_lambda, self.cfg.sparsemax)
            )
        hidden = self.hook_sae_acts_pre(self.process_sae_in(x) @ self.W_enc + self.b_enc)
        return self.hook_sae_acts_post(_topk(hidden, self.cfg.k))

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        recon = feature_acts @ self.W_dec + self.b_dec
        if self.cfg.normalize_recon:
            recon = _unit_tokens(recon)
        recon = self.hook_sae_recons(recon)
        return self.reshape_fn_out(self.run_time_activation_norm_fn_out(recon), self.d_head)


# ------------------------------------------------------------------------------ training
@dataclass
class PaperTrainingSAEConfig(TrainingSAEConfig):
    """Training config of the paper SAE. ``k=None`` means L1 with coefficient ``l1_coefficient``
    (the paper's alpha, summed over the batch)."""

    k: int | None = None
    l1_coefficient: float = 0.0
    pre_bias: bool = False
    normalize_input: bool = False
    normalize_decoder: bool = False
    normalize_recon: bool = False
    splice: str = "scale_correct"
    sparsemax: str | None = None  # one of SPARSEMAX_ENCODERS: the prototype encoder instead of ReLU/TopK
    decoder_init_norm: float | None = None  # the paper uses nn.Linear's default (Kaiming-uniform)
    # Not in the paper: TopK's auxiliary loss on dead latents (Gao et al. 2024, as SAELens's own
    # ``topk``), relative to the paper's mean-reduced MSE; 0 is the paper's SAE. A latent counts as
    # dead after ``dead_feature_window`` steps without firing.
    aux_loss_coefficient: float = 0.0

    def __post_init__(self) -> None:
        self.apply_b_dec_to_input = self.pre_bias
        super().__post_init__()
        if self.k is not None and not 0 < self.k <= self.d_sae:
            raise SAEError(f"k={self.k} must be between 1 and the dictionary size d_sae={self.d_sae}")
        if self.k is not None and self.l1_coefficient:
            raise SAEError("a paper SAE is either TopK (k) or L1 (l1_coefficient), not both")
        if self.splice not in ("scale_correct", "paper"):
            raise SAEError(f"splice must be 'scale_correct' or 'paper', got {self.splice!r}")
        if self.sparsemax is not None and self.sparsemax not in SPARSEMAX_ENCODERS:
            raise SAEError(f"sparsemax must be one of {', '.join(SPARSEMAX_ENCODERS)}, got {self.sparsemax!r}")
        if self.sparsemax is not None and (self.k is not None or self.l1_coefficient):
            raise SAEError("a sparsemax paper SAE has neither k nor an L1 coefficient: sparsemax sets the sparsity")
        if self.aux_loss_coefficient and self.k is None:
            raise SAEError("aux_loss_coefficient is TopK's auxiliary loss on dead latents: it needs k")
        if not self.aux_loss_coefficient >= 0:
            raise SAEError(f"aux_loss_coefficient must be >= 0, got {self.aux_loss_coefficient!r}")

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    @property
    def is_stock(self) -> bool:
        """True when the inference SAE is exactly a stock SAELens ``topk``/``standard`` SAE."""
        return not (self.normalize_input or self.normalize_recon or self.sparsemax)

    def get_inference_config_class(self) -> type[SAEConfig]:
        if not self.is_stock:
            return PaperSAEConfig
        return TopKSAEConfig if self.k is not None else StandardSAEConfig

    def get_inference_sae_cfg_dict(self) -> dict[str, Any]:
        cls = self.get_inference_config_class()
        d: dict[str, Any] = {
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": self.dtype,
            "device": self.device,
            "apply_b_dec_to_input": self.pre_bias,
            "normalize_activations": "none",
            "reshape_activations": self.reshape_activations,
            "architecture": cls.architecture(),
            "metadata": self._metadata_with_training_info(),
        }
        if cls is TopKSAEConfig:
            d.update(k=self.k, rescale_acts_by_decoder_norm=False)
        elif cls is PaperSAEConfig:
            d.update(
                k=self.k,
                pre_bias=self.pre_bias,
                normalize_input=self.normalize_input,
                normalize_recon=self.normalize_recon,
                splice=self.splice,
                sparsemax=self.sparsemax,
            )
        return d


class PaperTrainingSAE(TrainingSAE[PaperTrainingSAEConfig]):
    """Training class of the paper SAE; trained by SAELens's ``SAETrainer``."""

    b_enc: nn.Parameter

    def initialize_weights(self) -> None:
        # nn.Linear's default init for both matrices (the paper's encoder and decoder are untied).
        self.W_enc = nn.Parameter(torch.empty(self.cfg.d_in, self.cfg.d_sae, dtype=self.dtype, device=self.device))
        self.W_dec = nn.Parameter(torch.empty(self.cfg.d_sae, self.cfg.d_in, dtype=self.dtype, device=self.device))
        nn.init.kaiming_uniform_(self.W_enc.T, a=5**0.5)
        nn.init.kaiming_uniform_(self.W_dec.T, a=5**0.5)
        if self.cfg.normalize_decoder:  # the paper draws the free decoder from randn
            nn.init.normal_(self.W_dec)
        self.b_dec = nn.Parameter(torch.zeros(self.cfg.d_in, dtype=self.dtype, device=self.device))
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))
        if not self.cfg.pre_bias:  # no pre-bias means no encoder bias either: both frozen at zero
            self.b_dec.requires_grad_(False)
            self.b_enc.requires_grad_(False)
        if self.cfg.sparsemax is not None:  # the prototype encoder's scale, as the authors drew it
            self.kds_lambda = nn.Parameter(torch.randn((), dtype=self.dtype, device=self.device) ** 2)

    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {"l1": self.cfg.l1_coefficient} if self.cfg.k is None and self.cfg.sparsemax is None else {}

    def decoder_matrix(self) -> torch.Tensor:
        return _unit_rows(self.W_dec) if self.cfg.normalize_decoder else self.W_dec

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """What the SAE reconstructs: the input, normalised per token if ``normalize_input``."""
        return _unit_tokens(x) if self.cfg.normalize_input else x

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sae_in = self.process_sae_in(self.target(x))
        if self.cfg.sparsemax is not None:
            acts = _sparsemax_encode(sae_in, self.W_enc, self.kds_lambda, self.cfg.sparsemax)
            return self.hook_sae_acts_post(acts), acts
        hidden = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)
        return self.hook_sae_acts_post(_topk(hidden, self.cfg.k)), hidden

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        recon = feature_acts @ self.decoder_matrix() + self.b_dec
        if self.cfg.normalize_recon:
            recon = _unit_tokens(recon)
        return self.hook_sae_recons(recon)

    def calculate_aux_loss(self, step_input, feature_acts, hidden_pre, sae_out) -> dict[str, torch.Tensor]:
        if self.cfg.k is not None:
            return self._topk_aux_loss(step_input, hidden_pre, sae_out) if self.cfg.aux_loss_coefficient else {}
        if self.cfg.sparsemax is not None:
            return {}
        # The latents are ReLU outputs, so their L1 norm is their plain sum: the same value and
        # (through the ReLU, which zeroes the gradient wherever a latent is 0) the same gradients
        # as ``abs().sum()``, without two [tokens, d_sae] passes for abs and its sign.
        return {"l1_loss": step_input.coefficients["l1"] * feature_acts.sum()}

    def _topk_aux_loss(self, step_input, hidden_pre, sae_out) -> dict[str, torch.Tensor]:
        """SAELens's TopK AuxK loss (``TopKTrainingSAE.calculate_topk_aux_loss``: the top d_in / 2
        dead latents reconstruct the live latents' residual, scaled down while few are dead), with
        this SAE's decoder and target and the paper's mean reduction. Rewritten, not called: the
        SAELens method reads ``TopKTrainingSAEConfig`` fields and the raw ``W_dec``."""
        dead = step_input.dead_neuron_mask
        if dead is None or (n_dead := int(dead.sum())) == 0:
            return {"auxiliary_reconstruction_loss": sae_out.new_tensor(0.0)}
        k_aux = min(self.cfg.d_in // 2, n_dead)
        scale = min(n_dead / (self.cfg.d_in // 2), 1.0)
        residual = (self.target(step_input.sae_in) - sae_out).detach()
        recon = calculate_topk_aux_acts(k_aux=k_aux, hidden_pre=hidden_pre, dead_neuron_mask=dead) @ self.decoder_matrix()
        return {"auxiliary_reconstruction_loss": self.cfg.aux_loss_coefficient * scale * (recon - residual).pow(2).mean()}

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        feature_acts, hidden_pre = self.encode_with_hidden_pre(step_input.sae_in)
        sae_out = self.decode(feature_acts)
        mse = (sae_out - self.target(step_input.sae_in)).pow(2).mean()  # the paper's nn.MSELoss()
        losses = {"mse_loss": mse, **self.calculate_aux_loss(step_input, feature_acts, hidden_pre, sae_out)}
        return TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=sae_out,
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            loss=sum(losses.values()),
            losses=losses,
        )

    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        if self.cfg.normalize_decoder:  # fold the unit-norm rows into the saved decoder
            state_dict["W_dec"] = self.decoder_matrix().detach().clone()


def register() -> None:
    """Register ``formal_paper`` with SAELens; safe to call any number of times. After a reload
    of this module the registry is pointed at the reloaded classes (not the stale ones)."""
    if SAE_CLASS_REGISTRY.get(ARCHITECTURE) != (PaperSAE, PaperSAEConfig):
        SAE_CLASS_REGISTRY.pop(ARCHITECTURE, None)
        register_sae_class(ARCHITECTURE, PaperSAE, PaperSAEConfig)
    if SAE_TRAINING_CLASS_REGISTRY.get(ARCHITECTURE) != (PaperTrainingSAE, PaperTrainingSAEConfig):
        SAE_TRAINING_CLASS_REGISTRY.pop(ARCHITECTURE, None)
        register_sae_training_class(ARCHITECTURE, PaperTrainingSAE, PaperTrainingSAEConfig)


register()

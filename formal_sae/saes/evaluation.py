"""SAE metrics on a dataset split's sentence tokens, with SAELens's definitions, plus validity.

* Reconstruction and sparsity (SAELens ``evals`` formulas): ``mse`` = mean over tokens of the
  squared error summed over dimensions; ``explained_variance`` = 1 - E||x - x_hat||^2 /
  (E||x||^2 - ||E x||^2); ``l0`` = mean number of active latents; ``dead_fraction`` = latents that
  never fire on the split; ``input_dimension`` = principal directions holding
  `INPUT_DIMENSION_VARIANCE` of the inputs' variance on the split, the yardstick of the live
  latents (an input of 3 such directions leaves most of a 256-latent TopK dictionary dead however
  long it trains).
* Downstream (``sae_lens.evals.get_recons_loss``, splicing the SAE at sentence tokens):
  ``ce_loss_score`` = (CE_zero_ablation - CE_sae) / (CE_zero_ablation - CE_clean), and
  ``kl_div_score`` = (KL_ablation - KL_sae) / KL_ablation, over next-token predictions made at
  sentence tokens.
* ``validity``: the paper's grammaticality of generations with the SAE spliced in at every
  position (``formal_sae.evaluate_validity``).

SAEs trained on normalised inputs can be spliced two ways (``splice``): ``"scale_correct"``
(default: normalise, reconstruct, rescale by the activation's norm, so the SAE sees the inputs
it was trained on) or ``"paper"`` (raw activations in, as the authors' evaluation did, which
distorts SAEs with a pre-bias or reconstruction normalisation; [The paper: validity][paper-validity]).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import ClassVar

import datasets
import numpy as np
import torch
from sae_lens import SAE
from sae_lens.evals import get_recons_loss
from sae_lens.training.activation_scaler import ActivationScaler
from transformer_lens import HookedTransformer

from formal_sae.activations import iter_sentence_batches
from formal_sae.data import dataset_metadata, grammar_of
from formal_sae.errors import SAEError
from formal_sae.generation import evaluate_validity
from formal_sae.models import model_fingerprint
from formal_sae.plotting import plot_latent_density
from formal_sae.records import Record
from formal_sae.saes.storage import model_name_of
from formal_sae.saes.training import flush_denormals, sae_hook_width

#: The share of the inputs' variance whose principal directions ``input_dimension`` counts.
INPUT_DIMENSION_VARIANCE = 0.999

#: The latent density histogram written next to an SAE's ``metrics.json`` (`write_latent_density`).
DENSITY_PNG = "latent_density.png"


@dataclass(eq=False)
class SAEMetrics(Record):
    """What [`evaluate_sae`][formal_sae.evaluate_sae] measures (definitions: the module docstring); ``to_dict()`` is the
    JSON written into an SAE's ``metrics.json``. The validity fields are None, and absent from the
    JSON, when validity was not measured."""

    _optional: ClassVar[tuple[str, ...]] = ("validity", "validity_std", "validity_failures", "input_dimension")

    hook_name: str
    architecture: str
    d_sae: int
    splice: str
    n_tokens: int
    mse: float
    explained_variance: float
    l0: float
    dead_fraction: float
    ce_loss_clean: float
    ce_loss_with_sae: float
    ce_loss_with_ablation: float
    ce_loss_score: float
    kl_div_with_sae: float
    kl_div_score: float
    validity: float | None = None
    validity_std: float | None = None
    validity_failures: dict[str, int] | None = None
    input_dimension: int | None = None
    """principal directions holding `INPUT_DIMENSION_VARIANCE` of the inputs' variance (None in files
    written before it was measured)"""
    firing_rates: np.ndarray | None = field(default=None, repr=False, metadata={"json": False})
    """per latent, the fraction of the split's tokens where it fires (an attribute, not in the JSON)"""


def check_sae_fits(model: HookedTransformer, sae: SAE) -> str:
    """The SAE's hook name, after checking the model has it and its width is the SAE's ``d_in``."""
    hook = sae.cfg.metadata.hook_name
    if not hook:
        raise SAEError("the SAE's config has no metadata.hook_name; set sae.cfg.metadata.hook_name to the hook it reads")
    width = sae_hook_width(model, hook)
    if width != sae.cfg.d_in:
        raise SAEError(f"the SAE has d_in={sae.cfg.d_in} but the model's {hook} has width {width}: they do not fit")
    return hook


def check_sae_model(model: HookedTransformer, sae: SAE, allow_other_model: bool = False) -> None:
    """Refuse an SAE trained on another model than ``model``: a model of the same width runs it
    without error but every result is meaningless.

    formal-sae stores the fingerprint of the training model's weights in the SAE's metadata
    (``sae.cfg.metadata.model_fingerprint``, [`formal_sae.model_fingerprint`][formal_sae.model_fingerprint]); SAEs without one
    (trained with plain SAELens, or before formal-sae stored it) are accepted. ``allow_other_model``
    lets a deliberate transfer through. Costs one hash of the weights (about 1.5 ms for the paper
    preset on a CPU).
    """
    expected = sae.cfg.metadata.get("model_fingerprint")
    if allow_other_model or not expected:
        return
    actual = model_fingerprint(model)
    if actual != expected:
        raise SAEError(
            f"SAE {sae.cfg.metadata.hook_name or '(no hook)'} was trained on model {sae.cfg.metadata.model_name or '(unnamed)'} "
            f"(fingerprint {expected[:12]}...), not this model ({model_name_of(model)}, {actual[:12]}...); "
            "pass allow_other_model=True (--allow-other-model) if this is deliberate"
        )


def with_splice(sae: SAE, splice: str) -> SAE:
    """A copy of ``sae`` spliced in the given mode (only SAEs with input normalisation differ)."""
    if splice not in ("scale_correct", "paper"):
        raise SAEError(f"splice must be 'scale_correct' or 'paper', got {splice!r}")
    if getattr(sae.cfg, "splice", splice) == splice:
        return sae
    out = copy.deepcopy(sae)
    out.cfg.splice = splice
    out._setup_activation_normalization()
    return out


@torch.no_grad()
def evaluate_sae(
    model: HookedTransformer,
    sae: SAE,
    dataset: datasets.DatasetDict,
    split: str = "test",
    max_sentences: int | None = 2000,
    splice: str = "scale_correct",
    validity: bool = True,
    n_samples: int = 128,
    repeats: int = 5,
    seed: int = 0,
    batch_size: int = 128,
    *,
    allow_other_model: bool = False,
) -> SAEMetrics:
    """All metrics of an SAE on ``dataset[split]``; see the module docstring for definitions.

    An SAE trained on another model is refused unless ``allow_other_model`` (`check_sae_model`).
    """
    hook = check_sae_fits(model, sae)
    check_sae_model(model, sae, allow_other_model)
    if split not in dataset or len(dataset[split]) == 0:
        raise SAEError(f"the dataset has no sentences in split {split!r}")
    sae = with_splice(sae, splice)
    sae.eval()
    meta = dataset_metadata(dataset)
    tok = model.tokenizer
    grammar_ids = set(tok.convert_tokens_to_ids(list(grammar_of(meta).terminals)))
    non_sentence = sorted(set(range(len(tok))) - grammar_ids)  # the SAE is spliced at sentence tokens only
    n_tokens = 0
    sq_err = sum_sq_x = l0 = 0.0
    sum_vec = torch.zeros(sae.cfg.d_in)
    sum64 = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    sum_outer = torch.zeros(sae.cfg.d_in, sae.cfg.d_in, dtype=torch.float64)
    fire_counts = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    ce = {"clean": 0.0, "sae": 0.0, "ablation": 0.0}
    kl = {"sae": 0.0, "ablation": 0.0}
    n_pred = 0
    for batch in iter_sentence_batches(model, dataset[split], hook, batch_size, max_sentences):
        x = batch.acts.to(sae.device)
        feats = sae.encode(x)
        recon = sae.decode(feats)
        n_tokens += len(x)
        sq_err += float((recon - x).pow(2).sum())
        sum_sq_x += float(x.pow(2).sum())
        sum_vec += x.sum(0).cpu()
        # the covariance in float64 (Expr's activations reach norms of ~2,500); sum_vec stays the float32
        # sum it was, so explained variance keeps its bits
        x64 = x.cpu().double()
        sum64 += x64.sum(0)
        sum_outer += x64.T @ x64
        l0 += float((feats != 0).sum())  # != 0: AbsTopK latents can be negative (as SAELens counts)
        fire_counts += (feats != 0).sum(0).cpu()
        r = get_recons_loss(
            sae, model, ActivationScaler(), batch.tokens.to(model.cfg.device), compute_kl=True, compute_ce_loss=True,
            ignore_tokens=non_sentence, hook_name=hook,
        )  # fmt: skip
        pred_mask = batch.mask[:, :-1]  # predictions made at sentence tokens (targets: next token or <eos>)
        n_pred += int(pred_mask.sum())
        ce["clean"] += float(r["ce_loss_without_sae"].cpu()[pred_mask].sum())
        ce["sae"] += float(r["ce_loss_with_sae"].cpu()[pred_mask].sum())
        ce["ablation"] += float(r["ce_loss_with_ablation"].cpu()[pred_mask].sum())
        kl["sae"] += float(r["kl_div_with_sae"].cpu()[batch.mask].sum())
        kl["ablation"] += float(r["kl_div_with_ablation"].cpu()[batch.mask].sum())
    total_var = sum_sq_x / n_tokens - float((sum_vec / n_tokens).pow(2).sum())
    mean = sum64 / n_tokens
    ce = {k: v / n_pred for k, v in ce.items()}
    kl = {k: v / n_tokens for k, v in kl.items()}
    metrics = SAEMetrics(
        hook_name=hook,
        architecture=sae.cfg.architecture(),
        d_sae=sae.cfg.d_sae,
        splice=splice,
        n_tokens=n_tokens,
        mse=sq_err / n_tokens,
        explained_variance=1 - (sq_err / n_tokens) / total_var,
        l0=l0 / n_tokens,
        dead_fraction=float((fire_counts == 0).float().mean()),
        ce_loss_clean=ce["clean"],
        ce_loss_with_sae=ce["sae"],
        ce_loss_with_ablation=ce["ablation"],
        ce_loss_score=(ce["ablation"] - ce["sae"]) / (ce["ablation"] - ce["clean"]),
        kl_div_with_sae=kl["sae"],
        kl_div_score=(kl["ablation"] - kl["sae"]) / kl["ablation"],
        input_dimension=variance_dimension(sum_outer / n_tokens - torch.outer(mean, mean)),
        firing_rates=(fire_counts.double() / n_tokens).numpy(),
    )
    if validity:
        with flush_denormals():  # a dying L1 SAE emits denormals: generation ran ~8x slower
            v = evaluate_validity(model, n_samples=n_samples, repeats=repeats, seed=seed, saes=[sae])
        metrics.validity, metrics.validity_std, metrics.validity_failures = v.validity, v.validity_std, v.failures
    return metrics


def variance_dimension(covariance: torch.Tensor, fraction: float = INPUT_DIMENSION_VARIANCE) -> int:
    """The fewest principal directions of a covariance matrix that hold ``fraction`` of its variance
    (its trace); 0 for an input without variance."""
    if not 0 < fraction <= 1:
        raise SAEError(f"fraction must be in (0, 1], got {fraction}")
    eig = torch.linalg.eigvalsh(covariance.double()).flip(0).clamp(min=0)
    total = float(eig.sum())
    if total <= 0:
        return 0
    # the tolerance keeps fraction = 1 from counting directions that only rounding gives variance
    return min(int((eig.cumsum(0) < fraction * total * (1 - 1e-12)).sum()) + 1, len(eig))


def write_latent_density(metrics: SAEMetrics, path: str | os.PathLike, title: str | None = None) -> None:
    """The latent density histogram of an evaluated SAE as a PNG: log10 of each latent's firing
    frequency on the evaluated tokens (``metrics.firing_rates``), dead latents counted apart."""
    if metrics.firing_rates is None:
        raise SAEError("these metrics hold no firing rates (they were read back from JSON): evaluate the SAE again")
    title = title or f"{metrics.architecture}, {metrics.d_sae} latents at {metrics.hook_name} ({metrics.n_tokens} tokens)"
    plot_latent_density(metrics.firing_rates, path, title)

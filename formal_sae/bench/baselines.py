"""The dictionaries every trained SAE is measured against: bases, the probe ceiling, the untrained floor.

Each baseline is a real SAELens inference ``SAE`` carrying the metadata of formal-sae's trained
SAEs (hook, model name and fingerprint, grammar, context), so the benchmark scores it with the same
code as a trained SAE, `formal_sae.saes.evaluation.check_sae_model` accepts it on its own model
only, and ``sae_lens.SAE.load_from_disk`` opens it without formal-sae.

The bases and the ceiling are exact linear dictionaries built from ReLU latents in +- pairs: with
encoder directions ``E`` ``[d_in, m]`` and decoder rows ``D`` ``[m, d_in]``, a stock
``StandardSAE`` with ``W_enc = [E, -E]``, ``W_dec = [D; -D]`` and ``apply_b_dec_to_input`` has
``ReLU(s) - ReLU(-s) = s`` for every pre-activation ``s``, so it decodes ``(x - b_dec) E D + b_dec``
(plus what ``b_enc`` adds): the identity for an orthonormal, full ``E = D^T``.
"""

from __future__ import annotations

import tempfile

import datasets
import numpy as np
import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer

from formal_sae.analysis.probe_data import collect_probe_data, probe_targets
from formal_sae.analysis.probe_fits import ridge_fit, standardiser
from formal_sae.errors import SAEError
from formal_sae.models import model_data, model_fingerprint, model_name_of
from formal_sae.saes.config import SAETrainConfig, build_training_sae
from formal_sae.saes.storage import load_sae, save_sae
from formal_sae.saes.training import cache_activations, sae_hook_width

#: The baselines of the benchmark: name -> what the dictionary is.
BASELINES: dict[str, str] = {
    "residual_basis": "+- the model's own coordinates around the mean activation (2 d_in latents; exact reconstruction)",
    "pca": "+- the principal directions of the centred activations (2 d_in latents; exact reconstruction)",
    "probe": "the supervised ceiling: +- each ground-truth target's ridge probe prediction (dense), least-squares decoder",
    "untrained": "the floor: the SAE of the same config at initialisation, never trained",
}


def activations_for(model: HookedTransformer, dataset: datasets.DatasetDict, hook_name: str, max_tokens: int) -> torch.Tensor:
    """``[n_tokens, d_in]`` train-split sentence-token activations at ``hook_name`` (up to
    ``max_tokens``): the tokens the SAEs of the panel train on, which the bases are fitted to."""
    return cache_activations(model, dataset, hook_name, max_tokens)


def residual_basis_sae(model: HookedTransformer, hook_name: str, activations: torch.Tensor) -> SAE:
    """The model's own basis: latent ``i`` is ``ReLU(x_i - mean_i)``, latent ``d_in + i`` is
    ``ReLU(mean_i - x_i)`` (means of ``activations``); it reconstructs every activation exactly."""
    mean = _activation_mean(model, hook_name, activations)
    eye = torch.eye(len(mean), dtype=mean.dtype)
    return _paired_sae(model, hook_name, eye, torch.zeros(len(mean)), eye, mean)


def pca_sae(model: HookedTransformer, hook_name: str, activations: torch.Tensor) -> SAE:
    """The principal directions of the centred ``activations``, by decreasing variance: latents
    ``j`` and ``d_in + j`` are the positive and negative parts of the ``j``-th principal
    component's score; it reconstructs every activation exactly."""
    mean = _activation_mean(model, hook_name, activations)
    if len(activations) < len(mean):
        raise SAEError(f"PCA of {len(mean)} dimensions needs at least {len(mean)} activation tokens, got {len(activations)}")
    # float64: the directions must be orthonormal to ~1e-7 for the reconstruction to be exact
    _, _, vh = torch.linalg.svd(activations.double() - mean.double(), full_matrices=False)
    directions = vh.T.float()
    return _paired_sae(model, hook_name, directions, torch.zeros(len(mean)), directions.T, mean)


@torch.no_grad()
def probe_sae(
    model: HookedTransformer,
    dataset: datasets.DatasetDict,
    hook_name: str,
    *,
    max_sentences: int = 2000,
    ridge: float = 1e-3,
) -> SAE:
    """The supervised ceiling: one +- latent pair per ground-truth target, read out by its ridge probe.

    Targets are those of `formal_sae.probe_features` (ordinal and binary features, and each
    category of a categorical one as ``name=category``) that vary on the first ``max_sentences``
    train sentences. Each is fitted as the probe report fits ordinal targets (ridge regression
    with an intercept on standardised activations, over the tokens where it is defined; binary
    targets too, which makes their probe a linear discriminant). Latent ``j`` is target ``j``'s
    probe prediction minus its minimum over the fit tokens, so it is the prediction up to a
    constant wherever it fires (on every fit token): its correlation with the target is the
    probe's. Latent ``T + j`` is the part below that minimum (held-out tokens only), so the pair
    stays linear. The decoder is the least-squares fit of the activations from the predictions,
    the best reconstruction any linear read-out of these latents allows. The positive latents are
    dense by construction: the ceiling bounds the ground-truth scores, not sparsity.

    The target names, in latent order, are in ``sae.cfg.metadata.probe_targets``.
    """
    data = collect_probe_data(model, dataset["train"], [hook_name], max_sentences)
    x = data.acts[hook_name].numpy().astype(np.float64)
    mean, std = standardiser(x)
    xs = (x - mean) / std
    targets = [t for t in probe_targets(data) if t.mask.any() and np.ptp(t.values[t.mask]) > 0]
    if not targets:
        raise SAEError(f"no ground-truth target varies on the train split at {hook_name}; there is nothing to probe")
    weights, intercepts = np.zeros((x.shape[1], len(targets))), np.zeros(len(targets))
    # one Gram matrix per set of defined tokens (every binary target shares all tokens)
    for key in dict.fromkeys(t.mask.tobytes() for t in targets):
        group = [k for k, t in enumerate(targets) if t.mask.tobytes() == key]
        m = targets[group[0]].mask
        w, b = ridge_fit(xs[m], np.stack([targets[k].values[m] for k in group], axis=1), ridge)
        weights[:, group], intercepts[group] = w / std[:, None], b - (mean / std) @ w  # undo the standardisation
    predictions = x @ weights + intercepts
    floor = predictions.min(axis=0)
    scores = torch.from_numpy(predictions - floor)
    acts = torch.from_numpy(x)
    # gelsd: the minimum-norm fit, which splits a decoder row evenly between identical targets
    decoder = torch.linalg.lstsq(scores - scores.mean(0), acts - acts.mean(0), driver="gelsd").solution  # [T, d_in]
    b_dec = acts.mean(0) - scores.mean(0) @ decoder
    # the encoder sees x - b_dec: its bias puts b_dec back in, so latent j is x . w_j + b_j - floor_j
    b_enc = b_dec @ torch.from_numpy(weights) + torch.from_numpy(intercepts - floor)
    sae = _paired_sae(model, hook_name, torch.from_numpy(weights).float(), b_enc.float(), decoder.float(), b_dec.float())
    sae.cfg.metadata.probe_targets = [t.name for t in targets]
    return sae


def untrained_sae(model: HookedTransformer, config: SAETrainConfig) -> SAE:
    """The floor: the SAE ``config`` trains, at its initialisation (seeded by ``config.seed``), as
    the inference SAE a trained one becomes (saved and loaded back, metadata included)."""
    with torch.random.fork_rng(devices=[]):  # build_training_sae seeds torch: leave the caller's generator alone
        initial = build_training_sae(config, sae_hook_width(model, config.hook_name), model_name_of(model))
    _describe(initial.cfg.metadata, model, config.hook_name)
    with tempfile.TemporaryDirectory(prefix="formal-sae-baseline-") as tmp:
        save_sae(initial, tmp, config)
        return load_sae(tmp, device=config.device)


def _describe(metadata: SAEMetadata, model: HookedTransformer, hook_name: str) -> SAEMetadata:
    """Fill in what a trained SAE's metadata says of its model (as `formal_sae.to_inference` does)."""
    data = model_data(model)
    metadata.model_name = model_name_of(model)
    metadata.hook_name = hook_name
    metadata.hook_head_index = None
    metadata.prepend_bos = True
    metadata.dataset_path = data.grammar if data is not None else None  # the model's data is its dataset's
    metadata.context_size = model.cfg.n_ctx
    metadata.model_fingerprint = model_fingerprint(model)  # so check_sae_model refuses it on another model
    return metadata


def _activation_mean(model: HookedTransformer, hook_name: str, activations: torch.Tensor) -> torch.Tensor:
    """The mean activation, after checking ``activations`` are ``hook_name``'s."""
    width = sae_hook_width(model, hook_name)
    if activations.ndim != 2 or activations.shape[1] != width or len(activations) == 0:
        raise SAEError(f"expected [n_tokens, {width}] activations of {hook_name}, got shape {tuple(activations.shape)}")
    return activations.float().mean(0).cpu()


def _paired_sae(
    model: HookedTransformer,
    hook_name: str,
    encoder: torch.Tensor,
    encoder_bias: torch.Tensor,
    decoder: torch.Tensor,
    b_dec: torch.Tensor,
) -> SAE:
    """A stock ``StandardSAE`` whose latents are the positive and negative parts of
    ``(x - b_dec) @ encoder + encoder_bias`` (``encoder`` ``[d_in, m]``, ``decoder`` ``[m, d_in]``):
    latents ``0..m-1`` the positive parts, ``m..2m-1`` the negative ones."""
    d_in, m = encoder.shape
    cfg = StandardSAEConfig(
        d_in=d_in, d_sae=2 * m, apply_b_dec_to_input=True, metadata=_describe(SAEMetadata(), model, hook_name)
    )
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([encoder, -encoder], dim=1))
        sae.b_enc.copy_(torch.cat([encoder_bias, -encoder_bias]))
        sae.W_dec.copy_(torch.cat([decoder, -decoder], dim=0))
        sae.b_dec.copy_(b_dec)
    return sae.eval()

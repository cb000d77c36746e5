"""The paper SAE's optional AuxK loss (not in the paper; for dead TopK latents): SAELens's TopK
auxiliary loss, checked against SAELens's own implementation on the same weights."""

from __future__ import annotations

import pytest
import torch
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import TrainStepInput

from formal_sae import SAEError, SAETrainConfig
from formal_sae.saes import build_training_sae


def _step(x: torch.Tensor, dead: torch.Tensor | None) -> TrainStepInput:
    return TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False)


def test_auxk_equals_saelens_topk_aux_loss_on_the_same_weights():
    d_in, k = 8, 3
    paper_sae = build_training_sae(
        SAETrainConfig(architecture="paper", k=k, expansion_factor=4, extra={"aux_loss_coefficient": 0.5}), d_in
    )
    topk_class, topk_config = get_sae_training_class("topk")
    reference = topk_class(topk_config(d_in=d_in, d_sae=4 * d_in, k=k, aux_loss_coefficient=0.5, rescale_acts_by_decoder_norm=False,
                                       apply_b_dec_to_input=False, metadata=paper_sae.cfg.metadata))  # fmt: skip
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(reference, name).copy_(getattr(paper_sae, name))
    torch.manual_seed(0)
    x = torch.randn(16, d_in)
    dead = torch.zeros(4 * d_in, dtype=torch.bool)
    dead[::3] = True  # 11 dead latents: more than d_in // 2, so the loss is not scaled down
    ours = paper_sae.training_forward_pass(_step(x, dead)).losses["auxiliary_reconstruction_loss"]
    out = reference.training_forward_pass(_step(x, dead))
    theirs = out.losses["auxiliary_reconstruction_loss"]
    # SAELens sums the squared error over dimensions, the paper's reduction averages it
    assert ours.item() == pytest.approx(theirs.item() / d_in, rel=1e-5)
    assert ours.item() > 0


def test_auxk_is_zero_without_dead_latents_and_off_by_default():
    sae = build_training_sae(
        SAETrainConfig(architecture="paper", k=2, expansion_factor=2, extra={"aux_loss_coefficient": 1.0}), 4
    )
    x = torch.randn(5, 4)
    assert sae.training_forward_pass(_step(x, torch.zeros(8, dtype=torch.bool))).losses["auxiliary_reconstruction_loss"] == 0
    plain = build_training_sae(SAETrainConfig(architecture="paper", k=2, expansion_factor=2), 4)
    assert "auxiliary_reconstruction_loss" not in plain.training_forward_pass(_step(x, torch.ones(8, dtype=torch.bool))).losses


def test_auxk_needs_topk_and_a_non_negative_coefficient():
    with pytest.raises(SAEError, match="needs k"):
        build_training_sae(SAETrainConfig(architecture="paper", l1_coefficient=1e-3, extra={"aux_loss_coefficient": 1.0}), 4)
    with pytest.raises(SAEError, match=">= 0"):
        build_training_sae(SAETrainConfig(architecture="paper", k=2, extra={"aux_loss_coefficient": -1.0}), 4)

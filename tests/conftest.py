"""Settings and fixtures shared by the whole test suite (keep this file small and general)."""

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

import formal_sae

# The test models are tiny: extra intra-op threads only add synchronisation overhead, and on a
# loaded 2-core machine they make each small matmul ~100x slower. One thread keeps tests fast.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ds():
    """A small Expr dataset (modules that need another one define their own ``ds``)."""
    return formal_sae.build_dataset("expr", n_train=300, n_validation=30, n_test=30, seed=0)


@pytest.fixture(scope="module")
def model(ds):
    """A tiny model trained for a few steps on ``ds``."""
    train = formal_sae.TrainConfig(steps=20, eval_every=20, validity_samples=8, final_validity_repeats=1)
    return formal_sae.train_model(ds, "tiny", train, progress=False)


@pytest.fixture
def identity_sae():
    """Makes an exact identity SAE: ReLU(x) - ReLU(-x) = x with W_enc = [I, -I], W_dec = [I; -I]."""

    def make(d: int, hook: str) -> StandardSAE:
        cfg = StandardSAEConfig(d_in=d, d_sae=2 * d, apply_b_dec_to_input=False, metadata=SAEMetadata(hook_name=hook))
        sae = StandardSAE(cfg)
        eye = torch.eye(d)
        with torch.no_grad():
            sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
            sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
            sae.b_enc.zero_()
            sae.b_dec.zero_()
        return sae

    return make

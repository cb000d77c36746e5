"""The paper's sparsemax ("KDS") prototype encoders (Expr sweep 1iii) against a direct computation,
through training and through SAELens save/load."""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE

import formal_sae
from formal_sae import SAEError, SAETrainConfig
from formal_sae.saes import build_training_sae, load_sae, paper, train_sae

HOOK = "blocks.0.hook_resid_post"
SMALL = {"expansion_factor": 2, "training_tokens": 512, "batch_size_tokens": 128, "hook_name": HOOK}
TOL = {"atol": 1e-5, "rtol": 1e-5}


def direct_sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Sparsemax by its closed form (Martins & Astudillo 2016), row by row: the support is the
    largest k with 1 + k z_(k) > sum_{j<=k} z_(j); tau = (sum of the support - 1) / k."""
    out = torch.zeros_like(z)
    for i, row in enumerate(z.double()):
        s = sorted(row.tolist(), reverse=True)
        k = max(k for k in range(1, len(s) + 1) if 1 + k * s[k - 1] > sum(s[:k]))
        tau = (sum(s[:k]) - 1) / k
        out[i] = (row - tau).clamp(min=0).to(z.dtype)
    return out


def direct_scores(x: torch.Tensor, W_enc: torch.Tensor, lam: float, mode: str) -> torch.Tensor:
    """The paper's scores, each written out: cosine to unit prototypes and squared distance."""
    x_hat = x / x.norm(dim=-1, keepdim=True)
    w_hat = (W_enc / W_enc.norm(dim=0, keepdim=True)).T  # prototypes as rows
    cos = x_hat @ w_hat.T
    dist = torch.cdist(x_hat, w_hat) ** 2
    return {"no-kds": lam * cos, "recon-dist": cos - lam * dist, "dist": -lam * dist}[mode]


@pytest.mark.parametrize("mode", paper.SPARSEMAX_ENCODERS)
def test_the_encoder_is_the_papers_formula(mode):
    sae = build_training_sae(SAETrainConfig(architecture="paper", sparsemax=mode, seed=3, **SMALL), d_in=6)
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        latents = sae.encode(x)
        expected = direct_sparsemax(direct_scores(x, sae.W_enc, sae.kds_lambda.item(), mode))
    torch.testing.assert_close(latents, expected, **TOL)
    assert torch.allclose(latents.sum(-1), torch.ones(20), atol=1e-5) and (latents >= 0).all()  # on the simplex
    assert sae.kds_lambda.item() >= 0  # drawn as randn()**2, as the authors did


def test_sparsemax_is_sparse_where_softmax_is_not():
    z = torch.tensor([[3.0, 1.0, 0.9, -2.0]])
    torch.testing.assert_close(paper.sparsemax(z, dim=-1), direct_sparsemax(z))
    assert (paper.sparsemax(z, dim=-1) == 0).sum() == 3  # only the largest score survives here


@pytest.mark.parametrize(
    "variant", [{"normalize_input": True}, {"normalize_recon": True}, {"normalize_input": True, "normalize_recon": True}]
)
def test_a_trained_sparsemax_sae_saves_and_loads_through_saelens(model, ds, tmp_path, variant):
    config = SAETrainConfig(architecture="paper", sparsemax="recon-dist", **variant, **SMALL)
    sae = train_sae(model, ds, config, out_dir=tmp_path / "sae")
    loaded, plain = load_sae(tmp_path / "sae"), SAE.load_from_disk(str(tmp_path / "sae"))  # formal-sae registers the class
    x = torch.randn(8, model.cfg.d_model, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for other in (loaded, plain):
            torch.testing.assert_close(other.encode(x), sae.encode(x), **TOL)
            torch.testing.assert_close(other(x), sae(x), **TOL)
    assert loaded.cfg.sparsemax == "recon-dist"


def test_lambda_is_trained(model, ds):
    config = SAETrainConfig(architecture="paper", sparsemax="dist", normalize_input=True, lr=1e-2, **SMALL)
    before = build_training_sae(config, model.cfg.d_model).kds_lambda.item()
    assert train_sae(model, ds, config).kds_lambda.item() != pytest.approx(before)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"architecture": "paper", "sparsemax": "kds"}, "sparsemax must be one of no-kds, recon-dist, dist"),
        ({"architecture": "paper", "sparsemax": "dist", "k": 4}, "neither k nor l1_coefficient"),
        ({"architecture": "paper", "sparsemax": "dist", "l1_coefficient": 0.1}, "neither k nor l1_coefficient"),
        ({"architecture": "topk", "sparsemax": "dist", "k": 4}, "paper's variants: use architecture 'paper'"),
    ],
)
def test_bad_sparsemax_settings_are_refused(settings, message):
    with pytest.raises(SAEError, match=message):
        SAETrainConfig(**settings)


def test_the_sweep_names_the_sparsity_of_a_sparsemax_cell():
    config = SAETrainConfig(architecture="paper", sparsemax="no-kds", normalize_input=True)
    assert formal_sae.saes.sweep.sparsity_of(config) == ("sparsemax", "encoder", "no-kds")


def test_the_papers_whole_study_is_828_saes_in_the_authors_sweeps():
    """PAPER.md §4.4: the SAE index ranges of each model's sweeps (Expr 0-211, English 0-175,
    the three English variants 0-43 each, Dyck p_nest 0.5 0-219, Dyck p_nest 0.3 0-87)."""
    from collections import Counter

    from formal_sae.saes.sweep import PAPER_SWEEPS

    per_model = Counter()
    for group in PAPER_SWEEPS:
        grid = group.grid("paper", d_in=128)
        assert len(set(grid.ids)) == len(grid)
        per_model[group.model] += len(grid)
    assert per_model == {
        "12owob2t": 212, "3v4gwdfk": 176, "vx8j11gp": 44, "9rts35mx": 44, "bcb19qnd": 44, "cpyib3ss": 220, "87bnn1o6": 88,
    }  # fmt: skip
    assert sum(per_model.values()) == 828
    sparsemax = next(g for g in PAPER_SWEEPS if "sparsemax" in g.sparsity).grid("paper")
    assert len(sparsemax) == 3 * 3 * 4 and {c.config.sparsemax for c in sparsemax.cells} == set(paper.SPARSEMAX_ENCODERS)
    assert all(c.config.lr == 1e-5 and c.config.training_tokens == 5000 * 1024 for c in sparsemax.cells)  # the paper's budget
    shift = [g for g in PAPER_SWEEPS if g.sae_grammar]
    assert [(g.grammar, g.sae_grammar) for g in shift] == [("dyck2", "dyck2-shallow")]  # the distribution-shift sweep


def test_runs_saved_before_sparsemax_existed_still_compare_equal():
    """A config JSON written before the field existed has no "sparsemax" key: an unset field stays out
    of to_dict, so interrupted sweeps and train-sae runs of older versions resume instead of being refused."""
    config = SAETrainConfig(architecture="paper", k=16)
    assert "sparsemax" not in config.to_dict() and SAETrainConfig.from_dict(config.to_dict()) == config
    with_encoder = SAETrainConfig(architecture="paper", sparsemax="dist")
    assert with_encoder.to_dict()["sparsemax"] == "dist" and SAETrainConfig.from_dict(with_encoder.to_dict()) == with_encoder

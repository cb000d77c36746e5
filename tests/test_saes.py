"""SAEs: the paper's SAE against PAPER.md §4.2-4.3 re-implemented here with plain torch ops,
saving as stock SAELens architectures, splicing into the model, every architecture and hook,
``evaluate_sae`` against direct computation, errors, and the ``train-sae`` command."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import itertools
import json
import shutil

import datasets
import numpy as np
import pytest
import torch
from sae_lens import SAE, StandardSAE, TopKSAE
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainStepInput

import formal_sae
from formal_sae import SAEError, SAETrainConfig
from formal_sae.cli import main
from formal_sae.saes import (
    build_training_sae,
    check_sae_fits,
    evaluate_sae,
    load_sae,
    paper,
    train_sae,
    variance_dimension,
    with_splice,
)
from formal_sae.saes.training import cache_activations, save_sae

HOOK = "blocks.0.hook_resid_post"
D_IN = 8  # for the SAE-math tests, which need no model
ALPHA = 0.01
SMALL = {"expansion_factor": 2, "training_tokens": 512, "batch_size_tokens": 128}
TOL = {"atol": 1e-4, "rtol": 1e-5}


@pytest.fixture(scope="module")
def acts(model, ds):
    return cache_activations(model, ds, HOOK, max_tokens=10**6)


@pytest.fixture(scope="module")
def topk_dir(model, ds, acts, tmp_path_factory):
    out = tmp_path_factory.mktemp("topk-sae")
    train_sae(model, ds, SAETrainConfig(architecture="topk", k=4, **SMALL), activations=acts, out_dir=out)
    return out


@pytest.fixture(scope="module")
def topk_sae(topk_dir):
    return load_sae(topk_dir)


# ---------------------------------------------------------------------------- the paper's SAE, by hand
VARIANTS = [
    {"k": k, "pre_bias": pb, "normalize_input": ni, "normalize_decoder": nd, "normalize_recon": nr}
    for k, pb, ni, nd, nr in itertools.product([3, None], *[[False, True]] * 4)
]


def variant_id(v: dict) -> str:
    flags = [name for name in ("pre_bias", "normalize_input", "normalize_decoder", "normalize_recon") if v[name]]
    return "-".join([f"k{v['k']}" if v["k"] else "l1", *flags])


def paper_config(v: dict, **kw) -> SAETrainConfig:
    return SAETrainConfig(architecture="paper", expansion_factor=2, l1_coefficient=None if v["k"] else ALPHA, **v, **kw)


def random_paper_sae(v: dict, seed: int = 0, **kw):
    """A paper training SAE with random weights (decoder rows far from unit norm) and, with a
    pre-bias, random biases."""
    sae = build_training_sae(paper_config(v, **kw), D_IN)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=gen))
        sae.W_dec.copy_(3 * torch.randn(sae.W_dec.shape, generator=gen))
        if v["pre_bias"]:
            sae.b_enc.copy_(torch.randn(sae.b_enc.shape, generator=gen))
            sae.b_dec.copy_(torch.randn(sae.b_dec.shape, generator=gen))
    return sae


def random_inputs(n: int = 12, d: int = D_IN, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(n, d, generator=gen) + 1


@torch.no_grad()
def reference(sae, x, *, k, pre_bias, normalize_input, normalize_decoder, normalize_recon):
    """PAPER.md §4.2 step by step on the SAE's weights: (target, latents, reconstruction)."""
    W_enc, W_dec, b_enc, b_pre = sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec
    target = x / x.norm(dim=-1, keepdim=True) if normalize_input else x
    h = target - b_pre if pre_bias else target
    latents = torch.relu(h @ W_enc + b_enc) if pre_bias else torch.relu(h @ W_enc)
    if k is not None:
        keep = torch.zeros_like(latents).scatter(-1, latents.topk(k, dim=-1).indices, 1.0)
        latents = latents * keep
    D = W_dec / (W_dec.norm(dim=-1, keepdim=True) + 1e-8) if normalize_decoder else W_dec
    recon = latents @ D
    if pre_bias:
        recon = recon + b_pre
    if normalize_recon:
        recon = recon / (recon.norm(dim=-1, keepdim=True) + 1e-8)
    return target, latents, recon


def step_input(x: torch.Tensor, coefficients: dict) -> TrainStepInput:
    return TrainStepInput(sae_in=x, coefficients=coefficients, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False)


@pytest.mark.parametrize("v", VARIANTS, ids=variant_id)
def test_paper_sae_forward_pass_and_loss_follow_the_paper(v):
    sae = random_paper_sae(v)
    assert type(sae) is paper.PaperTrainingSAE
    x = random_inputs()
    target, latents, recon = reference(sae, x, **v)
    if v["k"] is not None:
        assert ((latents > 0).sum(-1) <= v["k"]).all()
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), latents, **TOL)
        torch.testing.assert_close(sae.decode(latents), recon, **TOL)
        coefficients = sae.get_coefficients()
        assert coefficients == ({} if v["k"] else {"l1": ALPHA})
        out = sae.training_forward_pass(step_input(x, coefficients))
    torch.testing.assert_close(out.feature_acts, latents, **TOL)
    torch.testing.assert_close(out.sae_out, recon, **TOL)
    mse = ((recon - target) ** 2).sum() / (x.shape[0] * D_IN)  # nn.MSELoss(): mean over tokens x dims
    torch.testing.assert_close(out.losses["mse_loss"], mse)
    if v["k"] is None:
        l1 = ALPHA * latents.abs().sum()  # torch.norm(latents, p=1): summed over the whole batch
        assert set(out.losses) == {"mse_loss", "l1_loss"}
        torch.testing.assert_close(out.losses["l1_loss"], l1)
        torch.testing.assert_close(out.loss, mse + l1)
    else:
        assert set(out.losses) == {"mse_loss"}
        torch.testing.assert_close(out.loss, mse)
    # the pre-bias is the only source of biases: without it both are zero and frozen
    assert sae.cfg.apply_b_dec_to_input is v["pre_bias"]
    for bias in (sae.b_enc, sae.b_dec):
        assert bias.requires_grad is v["pre_bias"]
        if not v["pre_bias"]:
            assert (bias == 0).all()


def test_paper_loss_on_a_hand_computed_example():
    sae = build_training_sae(SAETrainConfig(architecture="paper", expansion_factor=1, l1_coefficient=0.5), 2)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.W_dec.copy_(2 * torch.eye(2))
        out = sae.training_forward_pass(step_input(torch.tensor([[1.0, -1.0], [3.0, 0.0]]), {"l1": 0.5}))
    # latents [[1, 0], [3, 0]]; recon [[2, 0], [6, 0]]; squared errors 1, 1, 9, 0 over 2 tokens x 2 dims
    assert out.losses["mse_loss"].item() == pytest.approx(11 / 4)
    assert out.losses["l1_loss"].item() == pytest.approx(0.5 * (1 + 3))
    assert out.loss.item() == pytest.approx(11 / 4 + 2)


def test_paper_topk_keeps_the_k_largest_latents_by_hand():
    sae = build_training_sae(SAETrainConfig(architecture="paper", expansion_factor=2, k=2), 2)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 2.0, -1.0, 0.5], [0.0, 1.0, 3.0, -2.0]]))
        latents = sae.encode(torch.tensor([[1.0, 1.0]]))  # pre-activations 1, 3, 2, -1.5
    assert latents.tolist() == [[0.0, 3.0, 2.0, 0.0]]


def test_paper_topk_equals_topk_of_relu_with_its_gradient():
    """``_topk`` takes the top k before the ReLU; the definition is the top k after it. Same
    latents and gradients, also for tokens with fewer than k positive pre-activations."""
    hidden = torch.randn(64, 32)
    hidden[:8] = -hidden[:8].abs()  # no positive entry at all
    hidden[8:16, 3:] = -hidden[8:16, 3:].abs()  # fewer positives than k
    weights = torch.randn(64, 32)
    grads = []
    for fn in (
        lambda h: paper._topk(h, 5),
        lambda h: torch.zeros_like(h).scatter(-1, h.relu().topk(5, dim=-1).indices, h.relu().topk(5, dim=-1).values),
    ):
        h = hidden.clone().requires_grad_(True)
        out = fn(h)
        (out * weights).sum().backward()
        grads.append((out.detach(), h.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=0, atol=0)
    assert ((grads[0][0] > 0).sum(-1) <= 5).all() and (grads[0][0][:8] == 0).all()


@pytest.mark.parametrize("v", [v for v in VARIANTS if v["k"] is None], ids=variant_id)
def test_paper_l1_loss_has_the_gradients_of_the_papers_l1_norm(v):
    """The L1 term is the latents' plain sum (they are ReLU outputs); its gradients must be those
    of the paper's ``torch.norm(latents, p=1)``, exactly."""
    sae = random_paper_sae(v)
    x = random_inputs(n=64)
    with torch.no_grad():  # some latents positive, many exactly 0
        sae.W_enc.mul_(0.1)
    out = sae.training_forward_pass(step_input(x, sae.get_coefficients()))
    assert 0 < (out.feature_acts > 0).float().mean() < 1
    params = [p for p in sae.parameters() if p.requires_grad]
    ours = torch.autograd.grad(out.loss, params, retain_graph=True)
    papers = torch.autograd.grad(out.losses["mse_loss"] + ALPHA * torch.norm(out.feature_acts, p=1), params)
    for a, b in zip(ours, papers, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("pre_bias", [False, True])
def test_frozen_biases_stay_zero_through_saelens_training(model, ds, acts, pre_bias):
    for v in ({"k": 4, "normalize_decoder": True}, {"l1_coefficient": 1e-3, "normalize_input": True}):
        cfg = SAETrainConfig(architecture="paper", pre_bias=pre_bias, **v, **SMALL)
        init = build_training_sae(cfg, acts.shape[1])  # the same seeded initialisation train_sae starts from
        sae = train_sae(model, ds, cfg, activations=acts)
        assert not torch.allclose(sae.W_enc, init.W_enc)  # it did train
        if pre_bias:  # the trainer does update the biases when they exist
            assert sae.b_dec.abs().sum() > 0 and sae.b_enc.abs().sum() > 0
        else:
            assert (sae.b_enc == 0).all() and (sae.b_dec == 0).all()


# ---------------------------------------------------------------------------- saving and loading
@pytest.mark.parametrize("v", VARIANTS, ids=variant_id)
def test_paper_sae_saves_as_a_saelens_sae_with_the_same_outputs(v, tmp_path):
    sae = random_paper_sae(v)
    save_sae(sae, tmp_path, paper_config(v))
    saved = json.loads((tmp_path / "cfg.json").read_text())
    stock = not (v["normalize_input"] or v["normalize_recon"])
    arch = ("topk" if v["k"] else "standard") if stock else "formal_paper"
    assert saved["architecture"] == arch
    loaded = SAE.load_from_disk(str(tmp_path))  # plain SAELens
    assert type(loaded) is {"topk": TopKSAE, "standard": StandardSAE, "formal_paper": paper.PaperSAE}[arch]
    x = random_inputs()
    _, latents, recon = reference(sae, x, **v)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), latents, **TOL)
        if v["normalize_input"]:  # scale-correct splice: ||x|| * recon(x / ||x||)
            torch.testing.assert_close(loaded(x), x.norm(dim=-1, keepdim=True) * recon, **TOL)
            raw = reference(sae, x, **{**v, "normalize_input": False})[2]
            torch.testing.assert_close(with_splice(loaded, "paper")(x), raw, **TOL)  # the raw x is fed
            assert loaded.cfg.splice == "scale_correct"  # with_splice copies
        else:
            torch.testing.assert_close(loaded(x), recon, **TOL)
            torch.testing.assert_close(loaded(x), sae.decode(sae.encode(x)), **TOL)
    if v["normalize_decoder"]:  # unit-norm rows folded into the saved decoder
        torch.testing.assert_close(loaded.W_dec.norm(dim=-1), torch.ones(loaded.cfg.d_sae), **TOL)


def test_paper_splice_is_saved_and_used(tmp_path):
    v = {"k": 3, "pre_bias": True, "normalize_input": True, "normalize_decoder": False, "normalize_recon": False}
    sae = random_paper_sae(v, splice="paper")
    save_sae(sae, tmp_path, paper_config(v, splice="paper"))
    loaded = load_sae(tmp_path)
    assert json.loads((tmp_path / "cfg.json").read_text())["splice"] == loaded.cfg.splice == "paper"
    x = random_inputs()
    raw = reference(sae, x, **{**v, "normalize_input": False})[2]
    scaled = x.norm(dim=-1, keepdim=True) * reference(sae, x, **v)[2]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), raw, **TOL)
        torch.testing.assert_close(with_splice(loaded, "scale_correct")(x), scaled, **TOL)
    assert not torch.allclose(raw, scaled, atol=1e-2)  # with a pre-bias the two splices differ


def test_saved_metadata_lets_the_model_splice_the_sae(model, ds, topk_dir, topk_sae):
    meta = json.loads((topk_dir / "cfg.json").read_text())["metadata"]
    assert meta["hook_name"] == HOOK and meta["model_name"].startswith("formal-sae/expr")
    row = max(ds["test"], key=lambda r: r["length"])
    tokens = torch.tensor([row["input_ids"]])
    with torch.no_grad():
        clean = model(tokens)
        by_hand = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda a, hook: topk_sae.decode(topk_sae.encode(a)))])
        try:
            model.add_sae(topk_sae)
            spliced = model(tokens)
            model.reset_saes()
            model.add_sae(topk_sae, use_error_term=True)
            with_error = model(tokens)
        finally:
            model.reset_saes()
        assert torch.equal(model(tokens), clean)  # reset_saes removed it
    assert not torch.allclose(spliced, clean, atol=1e-3)
    torch.testing.assert_close(spliced, by_hand)
    torch.testing.assert_close(with_error, clean, atol=1e-5, rtol=1e-5)


def test_normalised_paper_sae_splices_scale_correctly_into_the_model(model, ds, acts):
    v = {"k": 4, "pre_bias": True, "normalize_input": True, "normalize_decoder": True, "normalize_recon": False}
    sae = train_sae(model, ds, SAETrainConfig(architecture="paper", **v, **SMALL), activations=acts)
    assert type(sae) is paper.PaperSAE and sae.cfg.metadata.hook_name == HOOK
    folded = {**v, "normalize_decoder": False}  # the loaded decoder rows are already unit-norm
    row = max(ds["test"], key=lambda r: r["length"])
    tokens = torch.tensor([row["input_ids"]])

    def scale_correct(a, hook):
        norm = a.norm(dim=-1, keepdim=True)
        return norm * reference(sae, a / norm, **folded)[2]

    def raw(a, hook):
        return reference(sae, a, **{**folded, "normalize_input": False})[2]

    with torch.no_grad():
        logits = {}
        for splice in ("scale_correct", "paper"):
            try:
                model.add_sae(with_splice(sae, splice))
                logits[splice] = model(tokens)
            finally:
                model.reset_saes()
        torch.testing.assert_close(
            logits["scale_correct"], model.run_with_hooks(tokens, fwd_hooks=[(HOOK, scale_correct)]), **TOL
        )
        torch.testing.assert_close(logits["paper"], model.run_with_hooks(tokens, fwd_hooks=[(HOOK, raw)]), **TOL)
    assert not torch.allclose(logits["scale_correct"], logits["paper"], atol=1e-3)


def test_registration_is_idempotent_and_survives_a_reload():
    saved_module = dict(vars(paper))
    saved_registry = (SAE_CLASS_REGISTRY["formal_paper"], SAE_TRAINING_CLASS_REGISTRY["formal_paper"])
    try:
        paper.register()
        paper.register()
        module = importlib.reload(paper)  # re-runs register() at import
        module.register()
        assert SAE_CLASS_REGISTRY["formal_paper"] == (module.PaperSAE, module.PaperSAEConfig)
        assert SAE_TRAINING_CLASS_REGISTRY["formal_paper"] == (module.PaperTrainingSAE, module.PaperTrainingSAEConfig)
        sae = build_training_sae(SAETrainConfig(architecture="paper", k=2, expansion_factor=1), 4)
        assert type(sae) is module.PaperTrainingSAE  # the reloaded class, not a stale one
        assert "paper" in formal_sae.sae_architectures() and "formal_paper" not in formal_sae.sae_architectures()
    finally:  # leave the classes other tests hold references to in place
        vars(paper).update(saved_module)
        SAE_CLASS_REGISTRY["formal_paper"], SAE_TRAINING_CLASS_REGISTRY["formal_paper"] = saved_registry


# ---------------------------------------------------------------------------- every architecture, any hook
ARCHITECTURES = formal_sae.sae_architectures()
K_ARCHITECTURES = {"topk", "abstopk", "paper"}  # per-token k at inference


def test_the_core_architectures_are_offered():
    assert {"standard", "topk", "batchtopk", "jumprelu", "gated", "matryoshka_batchtopk", "paper"} <= set(ARCHITECTURES)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.filterwarnings("ignore:decoder_init_norm must be set")
def test_every_architecture_trains_and_reloads(arch, model, ds, acts, tmp_path):
    if "transcoder" in arch:
        pytest.skip("transcoders map one hook to another; not an SAE on one hook")
    cfg_class = SAE_TRAINING_CLASS_REGISTRY["formal_paper" if arch == "paper" else arch][1]
    kw = {"k": 4} if "k" in {f.name for f in dataclasses.fields(cfg_class)} else {}
    sae = train_sae(model, ds, SAETrainConfig(architecture=arch, **kw, **SMALL), activations=acts, out_dir=tmp_path)
    assert isinstance(sae, SAE)
    assert sae.cfg.metadata.hook_name == HOOK
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (model.cfg.d_model, 2 * model.cfg.d_model)
    assert json.loads((tmp_path / "cfg.json").read_text())["metadata"]["hook_name"] == HOOK
    reloaded = SAE.load_from_disk(str(tmp_path))
    x = acts[:64]
    with torch.no_grad():
        feats = reloaded.encode(x)
        torch.testing.assert_close(reloaded.decode(feats), sae.decode(sae.encode(x)))
    if arch in K_ARCHITECTURES:
        assert ((feats != 0).sum(-1) <= 4).all()


@pytest.mark.parametrize("hook", ["blocks.0.hook_mlp_out", "hook_embed", "blocks.0.mlp.hook_post"])
def test_an_sae_trains_and_evaluates_at_any_hook(hook, model, ds):
    tokens = torch.tensor([ds["test"][0]["input_ids"]])
    width = model.run_with_cache(tokens, names_filter=hook)[1][hook].shape[-1]
    sae = train_sae(model, ds, SAETrainConfig(architecture="topk", k=4, hook_name=hook, **SMALL))
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.metadata.hook_name) == (width, 2 * width, hook)
    metrics = evaluate_sae(model, sae, ds, validity=False)
    assert metrics["hook_name"] == hook and metrics["n_tokens"] == sum(ds["test"]["length"])
    with torch.no_grad():
        clean = model(tokens)
        try:
            model.add_sae(sae)
            assert not torch.allclose(model(tokens), clean, atol=1e-4)
        finally:
            model.reset_saes()


# ---------------------------------------------------------------------------- evaluate_sae
@torch.no_grad()
def direct_metrics(model, sae, split, hook: str) -> dict[str, float]:
    """The metrics from their definitions, running each test row alone (no padding, no batching)."""
    prompt_len = formal_sae.dataset_metadata(split).prompt_length
    xs, ce, kl = [], {"clean": [], "sae": [], "ablation": []}, {"sae": [], "ablation": []}
    for row in split:
        tokens = torch.tensor([row["input_ids"]])
        sent = slice(prompt_len, prompt_len + row["length"])
        xs.append(model.run_with_cache(tokens, names_filter=hook)[1][hook][0, sent])

        def splice(a, hook, sent=sent):
            a = a.clone()
            a[0, sent] = sae.decode(sae.encode(a[0, sent]))  # at sentence tokens only
            return a

        logprobs = {
            "clean": model(tokens)[0].log_softmax(-1),
            "sae": model.run_with_hooks(tokens, fwd_hooks=[(hook, splice)])[0].log_softmax(-1),
            "ablation": model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda a, hook: torch.zeros_like(a))])[0].log_softmax(-1),
        }
        targets = tokens[0, sent.start + 1 : sent.stop + 1]  # next token after each sentence token (the last: <eos>)
        for name, lp in logprobs.items():
            ce[name].append(-lp[sent].gather(-1, targets[:, None])[:, 0])
            if name != "clean":
                kl[name].append((logprobs["clean"].exp() * (logprobs["clean"] - lp)).sum(-1)[sent])
    x = torch.cat(xs).double()
    feats = sae.encode(x.float())
    recon = sae.decode(feats).double()
    mse = (recon - x).pow(2).sum(-1).mean()
    ce = {k: float(torch.cat(v).double().mean()) for k, v in ce.items()}
    kl = {k: float(torch.cat(v).double().mean()) for k, v in kl.items()}
    return {
        "n_tokens": len(x),
        "mse": float(mse),
        "explained_variance": float(1 - mse / (x.pow(2).sum(-1).mean() - x.mean(0).pow(2).sum())),
        "l0": float((feats != 0).sum(-1).double().mean()),
        "dead_fraction": float(((feats != 0).sum(0) == 0).double().mean()),
        "ce_loss_clean": ce["clean"],
        "ce_loss_with_sae": ce["sae"],
        "ce_loss_with_ablation": ce["ablation"],
        "ce_loss_score": (ce["ablation"] - ce["sae"]) / (ce["ablation"] - ce["clean"]),
        "kl_div_with_sae": kl["sae"],
        "kl_div_score": (kl["ablation"] - kl["sae"]) / kl["ablation"],
        "input_dimension": pca_dimension(x.numpy(), 0.999),
    }


def pca_dimension(x: np.ndarray, fraction: float) -> int:
    """Principal directions holding ``fraction`` of the variance, from an SVD of the centred data
    (evaluate_sae accumulates a covariance and takes its eigenvalues instead)."""
    share = np.cumsum(np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2)
    return int(np.searchsorted(share / share[-1], fraction)) + 1


# The tiny model has one block: after resid_post only position-wise layers follow, while a splice at
# resid_pre reaches later positions through attention (so the masks of CE and KL matter). AbsTopK
# latents can be negative: active means nonzero.
@pytest.mark.parametrize(("arch", "hook"), [("topk", HOOK), ("topk", "blocks.0.hook_resid_pre"), ("abstopk", HOOK)])
def test_evaluate_sae_metrics_match_their_definitions(model, ds, acts, topk_sae, arch, hook):
    if (arch, hook) == ("topk", HOOK):
        sae = topk_sae
    else:
        cache = acts if hook == HOOK else None
        sae = train_sae(model, ds, SAETrainConfig(architecture=arch, k=4, hook_name=hook, **SMALL), activations=cache)
    metrics = evaluate_sae(model, sae, ds, validity=False, batch_size=8)
    expected = direct_metrics(model, sae, ds["test"], hook)
    assert metrics["n_tokens"] == expected["n_tokens"] == sum(ds["test"]["length"])
    assert 0 < expected["dead_fraction"] < 1 and expected["l0"] > 0  # a non-degenerate SAE
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert (metrics["architecture"], metrics["hook_name"], metrics["d_sae"]) == (arch, hook, 64)
    assert "validity" not in metrics
    if arch == "abstopk":  # exactly k signed latents per token, some of them negative
        assert metrics["l0"] == 4 and (sae.encode(acts[:64]) < 0).any()


def test_variance_dimension_counts_principal_directions_by_hand():
    rotation = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    covariance = rotation @ torch.diag(torch.tensor([6.0, 3.0, 1.0, 0.0], dtype=torch.float64)) @ rotation.T  # variance 10
    assert [variance_dimension(covariance, f) for f in (0.5, 0.6, 0.61, 0.9, 0.95, 1.0)] == [1, 1, 2, 2, 3, 3]
    assert variance_dimension(torch.zeros(3, 3)) == 0
    with pytest.raises(SAEError, match="fraction must be in"):
        variance_dimension(covariance, 0.0)


def test_an_exact_identity_sae_scores_perfectly(model, ds, identity_sae):
    sae = identity_sae(model.cfg.d_model, HOOK)
    metrics = evaluate_sae(model, sae, ds, n_samples=16, repeats=2, seed=3)
    assert metrics["mse"] == 0
    assert metrics["explained_variance"] == 1
    assert metrics["l0"] == model.cfg.d_model  # one of the pair fires per nonzero coordinate
    assert metrics["ce_loss_with_sae"] == metrics["ce_loss_clean"] != metrics["ce_loss_with_ablation"]
    assert metrics["ce_loss_score"] == pytest.approx(1, abs=1e-12)
    assert metrics["kl_div_with_sae"] == pytest.approx(0, abs=1e-5)
    assert metrics["kl_div_score"] == pytest.approx(1, abs=1e-4)
    own = formal_sae.evaluate_validity(model, n_samples=16, repeats=2, seed=3)  # no SAE, same seed
    assert (metrics["validity"], metrics["validity_std"], metrics["validity_failures"]) == (
        own.validity,
        own.validity_std,
        own.failures,
    )


# ---------------------------------------------------------------------------- errors
def test_unknown_hook_is_refused_with_the_valid_names(model, ds):
    with pytest.raises(
        SAEError, match=r"no hook point 'blocks\.3\.hook_resid_post'; valid hook names are: .*blocks\.0\.hook_resid_post"
    ):
        train_sae(model, ds, SAETrainConfig(architecture="topk", k=4, hook_name="blocks.3.hook_resid_post", **SMALL))


@pytest.mark.parametrize(("hook", "message"), [("blocks.0.attn.hook_z", "per-head"), ("blocks.0.attn.hook_pattern", "per token")])
def test_hooks_an_sae_cannot_be_spliced_into_are_refused(model, ds, hook, message):
    with pytest.raises(SAEError, match=message):
        train_sae(model, ds, SAETrainConfig(architecture="topk", k=4, hook_name=hook, **SMALL))


def test_an_sae_that_does_not_fit_its_hook_is_refused(model, ds, topk_sae):
    sae = copy.deepcopy(topk_sae)
    sae.cfg.metadata.hook_name = "blocks.0.mlp.hook_post"  # width d_mlp = 64, the SAE reads 32
    message = r"d_in=32 but the model's blocks\.0\.mlp\.hook_post has width 64"
    with pytest.raises(SAEError, match=message):
        check_sae_fits(model, sae)
    with pytest.raises(SAEError, match=message):
        evaluate_sae(model, sae, ds, validity=False)
    sae.cfg.metadata.hook_name = None
    with pytest.raises(SAEError, match=r"no metadata\.hook_name"):
        check_sae_fits(model, sae)
    assert check_sae_fits(model, topk_sae) == HOOK


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"architecture": "topk", "k": 65}, r"k=65 must be between 1 and the dictionary size d_sae=64"),
        ({"architecture": "paper", "k": 65}, r"k=65 must be between 1 and the dictionary size d_sae=64"),
        ({"architecture": "topk", "k": 0}, r"k=0 must be between 1"),
        ({"architecture": "standard", "k": 4}, r"architecture 'standard' has no setting k"),
        ({"architecture": "jumprelu", "l1_coefficient": 1.0}, r"architecture 'jumprelu' has no setting l1_coefficient"),
        ({"architecture": "topk", "k": 4, "normalize_input": True}, r"paper's variants: use architecture 'paper', not 'topk'"),
        ({"architecture": "standard", "pre_bias": True}, r"paper's variants"),
        ({"architecture": "paper", "k": 4, "l1_coefficient": 0.1}, r"TopK \(k\) or L1 \(l1_coefficient\), not both"),
        ({"architecture": "paper", "k": 4, "splice": "raw"}, r"splice must be 'scale_correct' or 'paper'"),
        ({"architecture": "vanilla"}, r"unknown SAE architecture 'vanilla'; choose one of paper, standard.*topk"),
        ({"architecture": "topk", "k": 4, "expansion_factor": 0}, r"expansion_factor.*must be >= 1"),
    ],
)
def test_contradictory_or_unknown_settings_are_refused(config, message):
    with pytest.raises(SAEError, match=message):
        build_training_sae(SAETrainConfig(expansion_factor=config.pop("expansion_factor", 2), **config), 32)


def test_load_sae_names_what_is_missing_or_broken(tmp_path, topk_dir):
    with pytest.raises(SAEError, match=r"cfg\.json is missing; .* is not a saved SAE"):
        load_sae(tmp_path / "nowhere")
    no_weights = tmp_path / "no-weights"
    shutil.copytree(topk_dir, no_weights)
    (no_weights / "sae_weights.safetensors").unlink()
    with pytest.raises(SAEError, match=r"sae_weights\.safetensors is missing"):
        load_sae(no_weights)
    for name, text in [
        ("corrupt", "{not json"),
        ("unknown-arch", json.dumps({"architecture": "nonesuch", "d_in": 32, "d_sae": 64})),
    ]:
        broken = tmp_path / name
        shutil.copytree(topk_dir, broken)
        (broken / "cfg.json").write_text(text)
        with pytest.raises(SAEError, match=r"is corrupt or from an unknown architecture"):
            load_sae(broken)


def test_an_empty_or_missing_split_is_refused(model, ds, topk_sae):
    empty = datasets.DatasetDict({**ds, "test": ds["test"].select([])})
    with pytest.raises(SAEError, match=r"no sentences in split 'test'"):
        evaluate_sae(model, topk_sae, empty, validity=False)
    with pytest.raises(SAEError, match=r"no sentences in split 'holdout'"):
        evaluate_sae(model, topk_sae, ds, split="holdout", validity=False)


# ---------------------------------------------------------------------------- command line
def test_cli_train_sae_writes_the_sae_and_its_metrics(model, ds, tmp_path, capsys):
    model_dir, data_dir, out = tmp_path / "model", tmp_path / "data", tmp_path / "sae"
    formal_sae.save_model(model, model_dir)
    formal_sae.save_dataset(ds, data_dir)
    common = ["train-sae", "--model", str(model_dir), "--data", str(data_dir), "--architecture", "topk", "--k", "4"]
    rest = ["--expansion-factor", "2", "--training-tokens", "2000", "--n-samples", "8", "--repeats", "2"]
    assert main([*common, "--out", str(out), *rest]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    required = {"explained_variance", "mse", "l0", "dead_fraction", "ce_loss_score", "kl_div_score", "validity", "validity_std"}
    assert required | {"hook_name", "architecture"} <= set(metrics)
    assert (metrics["hook_name"], metrics["architecture"], metrics["d_sae"]) == (HOOK, "topk", 64)
    assert 0 < metrics["l0"] <= 4 and 0 <= metrics["validity"] <= 1
    sae = load_sae(out)
    assert type(sae) is TopKSAE and sae.cfg.k == 4 and sae.cfg.metadata.hook_name == HOOK
    capsys.readouterr()

    bad = tmp_path / "bad"
    assert main([*common, "--out", str(bad), *rest, "--hook-name", "blocks.0.hook_nothing"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("formal-sae train-sae: error: ") and "no hook point 'blocks.0.hook_nothing'" in err
    assert "\n" not in err and "Traceback" not in err
    assert not (bad / "cfg.json").exists()


def test_same_seed_same_sae_with_several_threads(model, ds):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        saes = [
            train_sae(
                model, ds, architecture="topk", k=4, expansion_factor=4, training_tokens=4096, batch_size_tokens=256, seed=3
            )
            for _ in range(3)
        ]
    finally:
        torch.set_num_threads(threads)
    for sae in saes[1:]:
        assert all(torch.equal(a, b) for a, b in zip(saes[0].state_dict().values(), sae.state_dict().values()))

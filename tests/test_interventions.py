"""Interventions on SAE latents, each checked against an independent computation.

The reference for every mode is a single plain TransformerLens hook on the SAE's hook point (no
SAE spliced in): ``x -> encode -> edit the latents by hand -> decode (+ x - decode(encode(x)))``,
with ``encode``/``decode`` either the SAE's own methods or written out from its weights (pre-bias,
per-token input normalisation and its undoing: PAPER.md §4.2, the steps the authors' clamping code
skipped, §7.1). The model has the tiny preset's sizes but two layers, so that an edit at one
position reaches later positions through block 1's attention.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from scipy import stats

import formal_sae
from formal_sae import FormalSAEError
from formal_sae.analysis.causal_report import causal_report
from formal_sae.cli import main
from formal_sae.generation import sample_sequences
from formal_sae.interventions import (
    Intervention,
    compare_generations,
    effects_loop_baseline,
    latent_ranges,
    next_token_effects,
    run_intervened,
    single_latent_effects,
    token_classes,
)
from formal_sae.saes.paper import PaperSAE

HOOK = "blocks.0.hook_resid_post"
MLP_HOOK = "blocks.0.hook_mlp_out"
N_SENT = 20  # sentences of the test split used by the split-level functions
DEAD = 5  # a latent every fixture SAE has switched off (encoder bias -1e4): it never fires
EPS = 1e-8  # the paper SAE's normalisation epsilon
VARIANTS = ["topk", "paper_prebias", "paper_normalized"]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ds():
    return formal_sae.build_dataset("expr", n_train=300, n_validation=30, n_test=30, seed=0)


@pytest.fixture(scope="module")
def model(ds):
    config = formal_sae.ModelConfig.from_preset("tiny", n_layers=2)
    # A short warm-up and a high rate: 30 steps then give peaked, context-dependent predictions.
    train = formal_sae.TrainConfig(steps=30, lr=3e-3, warmup_steps=5, eval_every=30, validity_samples=8, final_validity_repeats=1)
    return formal_sae.train_model(ds, config, train, progress=False)


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("sae")


@pytest.fixture(scope="module")
def saes(model, ds, sae_dir):
    """A stock TopK SAE (also saved to ``sae_dir``), the paper's pre-bias + unit-decoder variant
    (saved as a stock TopK SAE with ``b_dec``), the paper's input-normalised variant (PaperSAE,
    scale-correct splice), and a stock TopK SAE at a hook that is not the residual stream."""
    common = {"k": 4, "expansion_factor": 2, "training_tokens": 5000, "batch_size_tokens": 128}  # 39 steps
    out = {
        "topk": formal_sae.train_sae(model, ds, architecture="topk", out_dir=sae_dir, **common),
        "paper_prebias": formal_sae.train_sae(model, ds, architecture="paper", pre_bias=True, normalize_decoder=True, **common),
        "paper_normalized": formal_sae.train_sae(model, ds, architecture="paper", pre_bias=True, normalize_input=True, **common),
        "mlp_out": formal_sae.train_sae(model, ds, architecture="topk", hook_name=MLP_HOOK, **common),
    }
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # Pre-biases far from zero, so that a decode that skips them cannot pass.
        out["paper_prebias"].b_dec += 0.5 * torch.randn(out["paper_prebias"].cfg.d_in, generator=gen)
        out["paper_normalized"].b_dec += 0.1 * torch.randn(out["paper_normalized"].cfg.d_in, generator=gen)
        for sae in out.values():
            sae.b_enc[DEAD] = -1e4
    return out


@pytest.fixture(scope="module")
def tokens(ds, model):
    """Six test sentences, right-padded."""
    return pad(ds["test"]["input_ids"][:6], model.tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def source_tokens(ds, model):
    """Six other sentences (other lengths), to patch latents from."""
    return pad(ds["test"]["input_ids"][6:12], model.tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def classes(ds, model):
    return token_classes(formal_sae.grammar_of(formal_sae.dataset_metadata(ds)), model.tokenizer)[1]


# ----------------------------------------------------------------------------- independent helpers
def pad(rows: list[list[int]], pad_id: int) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def sentence_positions(ds, n: int, width: int) -> torch.Tensor:
    """``[n, width]`` mask of the sentence tokens of the first ``n`` test sentences."""
    prompt = formal_sae.dataset_metadata(ds).prompt_length
    lengths = torch.tensor(ds["test"]["length"][:n])
    pos = torch.arange(width)
    return (pos >= prompt) & (pos < prompt + lengths[:, None])


def manual_encode(sae, x: torch.Tensor) -> torch.Tensor:
    """Latents from the SAE's weights: normalise per token, subtract the pre-bias, ReLU, TopK."""
    if getattr(sae.cfg, "normalize_input", False):
        x = x / (x.norm(dim=-1, keepdim=True) + EPS)
    if sae.cfg.apply_b_dec_to_input:
        x = x - sae.b_dec
    hidden = torch.relu(x @ sae.W_enc + sae.b_enc)
    top = hidden.topk(sae.cfg.k, dim=-1)
    return torch.zeros_like(hidden).scatter(-1, top.indices, top.values)


def manual_decode(sae, latents: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Decoder rows plus the pre-bias, rescaled by the input's norm for an input-normalised SAE."""
    recon = latents @ sae.W_dec + sae.b_dec
    if getattr(sae.cfg, "normalize_recon", False):
        recon = recon / (recon.norm(dim=-1, keepdim=True) + EPS)
    if getattr(sae.cfg, "normalize_input", False):
        recon = recon * x.norm(dim=-1, keepdim=True)
    return recon


CODECS = {
    "manual": (manual_encode, manual_decode),
    "sae": (lambda sae, x: sae.encode(x), lambda sae, latents, x: sae.decode(latents)),
}


@torch.no_grad()
def hook_acts(model, tokens: torch.Tensor, hook: str = HOOK) -> torch.Tensor:
    return model.run_with_cache(tokens, names_filter=hook)[1][hook]


@torch.no_grad()
def reference_logits(model, sae, tokens, edit, error_term: bool, codec: str = "manual", steer=None, hook: str = HOOK):
    """Logits with one plain hook replacing the activation by the decoded, edited latents."""
    encode, decode = CODECS[codec]

    def replace(x, hook):
        out = decode(sae, edit(encode(sae, x)), x)
        if error_term:
            out = out + (x - decode(sae, encode(sae, x), x))
        return out if steer is None else out + steer

    return model.run_with_hooks(tokens, fwd_hooks=[(hook, replace)])


def busiest(sae, x: torch.Tensor, n: int) -> list[int]:
    """The ``n`` latents that fire at the most positions of ``x``."""
    return torch.argsort((manual_encode(sae, x) > 0).sum((0, 1)), descending=True)[:n].tolist()


def set_latents(latents: torch.Tensor, idx: list[int], values) -> torch.Tensor:
    out = latents.clone()
    out[..., idx] = values if isinstance(values, torch.Tensor) else torch.as_tensor(values, dtype=out.dtype)
    return out


@torch.no_grad()
def hand_ranges(model, sae, ds, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-latent min/max over the sentence tokens of the first ``n`` test sentences, one at a time."""
    prompt = formal_sae.dataset_metadata(ds).prompt_length
    acts = []
    for row, length in zip(ds["test"]["input_ids"][:n], ds["test"]["length"][:n], strict=True):
        x = hook_acts(model, torch.tensor([row]))[0, prompt : prompt + length]
        acts.append(manual_encode(sae, x))
    acts = torch.cat(acts)
    return acts.min(0).values, acts.max(0).values


# ----------------------------------------------------------------------------- the fixture SAEs
def test_fixture_saes_are_the_paper_variants(saes, model, tokens):
    prebias, normed = saes["paper_prebias"], saes["paper_normalized"]
    assert type(prebias).__name__ == "TopKSAE" and prebias.cfg.apply_b_dec_to_input
    torch.testing.assert_close(prebias.W_dec.norm(dim=-1), torch.ones(prebias.cfg.d_sae), atol=1e-5, rtol=0)
    assert isinstance(normed, PaperSAE) and normed.cfg.normalize_input and normed.cfg.splice == "scale_correct"
    x = hook_acts(model, tokens)
    for name in VARIANTS:
        sae = saes[name]
        with torch.no_grad():
            torch.testing.assert_close(sae.encode(x), manual_encode(sae, x), atol=1e-5, rtol=1e-5)
            latents = manual_encode(sae, x)
            torch.testing.assert_close(sae.decode(sae.encode(x)), manual_decode(sae, latents, x), atol=1e-5, rtol=1e-5)
        assert (manual_encode(sae, x)[..., DEAD] == 0).all()


# ----------------------------------------------------------------------------- every mode vs hand-written hooks
CASES = ["ablate", "clamp", "clamp_relative", "scale", "keep_only", "steer", "patch", "patch_one_source"]


@pytest.fixture(scope="module")
def ranges(model, saes, ds):
    """latent_ranges of each SAE on the first 20 test sentences."""
    return {name: latent_ranges(model, saes[name], ds["test"], max_sentences=N_SENT) for name in VARIANTS}


@pytest.fixture(scope="module")
def ranges_by_hand(model, saes, ds):
    return {name: hand_ranges(model, saes[name], ds, N_SENT) for name in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS)
def test_latent_ranges_match_rows_run_one_at_a_time(ranges, ranges_by_hand, variant):
    lo, hi = ranges_by_hand[variant]
    torch.testing.assert_close(ranges[variant][0], lo, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ranges[variant][1], hi, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("error_term", [True, False], ids=["error_term", "decode_only"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_mode_matches_hand_written_hook(model, saes, tokens, source_tokens, ranges, ranges_by_hand, variant, case, error_term):
    sae = saes[variant]
    x = hook_acts(model, tokens)
    js = busiest(sae, x, 2)
    steer = None
    if case == "ablate":
        iv, edit = Intervention("ablate", js), lambda lat: set_latents(lat, js, 0.0)
    elif case == "clamp":
        iv, edit = Intervention("clamp", js, 3.0), lambda lat: set_latents(lat, js, 3.0)
    elif case == "clamp_relative":
        lo, hi = ranges_by_hand[variant]
        target = lo[js] + 0.75 * (hi[js] - lo[js])
        iv, edit = Intervention("clamp", js, 0.75, relative=True), lambda lat: set_latents(lat, js, target)
    elif case == "scale":
        iv, edit = Intervention("scale", js, 2.5), lambda lat: set_latents(lat, js, lat[..., js] * 2.5)
    elif case == "keep_only":
        others = [j for j in range(sae.cfg.d_sae) if j not in js]
        iv, edit = Intervention("keep_only", js), lambda lat: set_latents(lat, others, 0.0)
    elif case == "steer":
        iv, edit = Intervention("steer", js, 2.0), lambda lat: lat
        rows = sae.W_dec[js].detach()
        steer = 2.0 * (rows / rows.norm(dim=-1, keepdim=True)).sum(0)
    else:
        src_tokens = source_tokens if case == "patch" else source_tokens[:1]
        x_src = hook_acts(model, src_tokens)
        iv = Intervention("patch", js, source_tokens=src_tokens)

        def edit(lat):
            out = lat.clone()
            n = min(lat.shape[1], x_src.shape[1])
            out[:, :n, js] = manual_encode(sae, x_src)[:, :n][..., js].expand(lat.shape[0], -1, -1)
            return out

    got = run_intervened(model, sae, tokens, iv, use_error_term=error_term, ranges=ranges[variant])
    for codec in CODECS:
        want = reference_logits(model, sae, tokens, edit, error_term, codec, steer)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=f"{codec} codec")
    untouched = reference_logits(model, sae, tokens, lambda lat: lat, error_term)
    assert (got - untouched).abs().max() > 1e-3  # the edit did something, so the comparison can fail


@pytest.mark.parametrize("variant", ["paper_prebias", "paper_normalized"])
def test_the_authors_decode_gives_other_logits(model, saes, tokens, variant):
    """The authors' clamp decoded with ``W_dec`` only (no pre-bias, no rescaling): the check above
    would catch it, since the correct splice differs from it."""
    sae = saes[variant]
    js = busiest(sae, hook_acts(model, tokens), 1)

    def authors(x, hook):
        return set_latents(manual_encode(sae, x), js, 3.0) @ sae.W_dec

    with torch.no_grad():
        theirs = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, authors)])
    ours = run_intervened(model, sae, tokens, Intervention("clamp", js, 3.0), use_error_term=False)
    assert (ours - theirs).abs().max() > 1e-2


# ----------------------------------------------------------------------------- identities
@pytest.mark.parametrize("variant", VARIANTS)
def test_identity_interventions_reproduce_the_clean_model(model, saes, tokens, variant):
    sae = saes[variant]
    js = busiest(sae, hook_acts(model, tokens), 3)
    with torch.no_grad():
        clean = model(tokens)
    for iv in (Intervention("scale", js, 1.0), Intervention("patch", js, source_tokens=tokens)):
        torch.testing.assert_close(run_intervened(model, sae, tokens, iv), clean, atol=1e-5, rtol=0)
    # The same identity without the error term is the SAE's reconstruction: not the model.
    recon = run_intervened(model, sae, tokens, Intervention("scale", js, 1.0), use_error_term=False)
    assert (recon - clean).abs().max() > 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
def test_ablating_a_latent_that_never_fires_changes_nothing(model, saes, ds, tokens, variant):
    sae = saes[variant]
    x = hook_acts(model, tokens)
    silent = (manual_encode(sae, x) == 0).all(0).all(0).nonzero().flatten().tolist()
    assert DEAD in silent
    with torch.no_grad():
        clean = model(tokens)
    for error_term in (True, False):
        base = run_intervened(model, sae, tokens, None, use_error_term=error_term)
        ablated = run_intervened(model, sae, tokens, Intervention("ablate", silent), use_error_term=error_term)
        assert torch.equal(ablated, base)
    torch.testing.assert_close(ablated, reference_logits(model, sae, tokens, lambda lat: lat, False), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(run_intervened(model, sae, tokens, Intervention("ablate", silent)), clean, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- single-latent effects
@torch.no_grad()
def hand_effects(model, sae, ds, classes, hook: str = HOOK) -> dict[str, np.ndarray]:
    """Every latent ablated alone at every position, with the error term: one plain hooked pass of
    the first N_SENT test sentences per latent."""
    toks = pad(ds["test"]["input_ids"][:N_SENT], model.tokenizer.pad_token_id)
    mask = sentence_positions(ds, N_SENT, toks.shape[1])
    x = hook_acts(model, toks, hook)
    fires = manual_encode(sae, x) > 0
    lp_clean = model(toks).log_softmax(-1)
    out = {k: np.zeros(sae.cfg.d_sae) for k in ("kl_active", "class_tv_active", "kl_mean", "n_active")}
    for j in range(sae.cfg.d_sae):
        lp_new = reference_logits(model, sae, toks, lambda lat, j=j: set_latents(lat, [j], 0.0), True, hook=hook).log_softmax(-1)
        kl = (lp_clean.exp() * (lp_clean - lp_new)).sum(-1)
        tv = 0.5 * ((lp_clean.exp() - lp_new.exp()) @ classes).abs().sum(-1)
        active = fires[..., j] & mask
        out["n_active"][j] = int(active.sum())
        out["kl_active"][j] = float(kl[active].mean()) if active.any() else 0.0
        out["class_tv_active"][j] = float(tv[active].mean()) if active.any() else 0.0
        out["kl_mean"][j] = float(kl[mask].sum() / mask.sum())
    return out


@pytest.mark.parametrize("variant", [*VARIANTS, "mlp_out"])
def test_single_latent_effects_match_one_pass_per_latent(model, saes, ds, classes, variant):
    sae = saes[variant]
    got = single_latent_effects(model, sae, ds, max_sentences=N_SENT)
    want = hand_effects(model, sae, ds, classes, hook=sae.cfg.metadata.hook_name)
    np.testing.assert_array_equal(got["n_active"], want["n_active"])
    for key in ("kl_active", "class_tv_active", "kl_mean"):
        np.testing.assert_allclose(got[key], want[key], atol=1e-7, rtol=1e-3, err_msg=key)
    assert got["n_active"][DEAD] == 0
    never = got["n_active"] == 0
    assert (got["kl_active"][never] == 0).all() and (got["class_tv_active"][never] == 0).all()
    assert got["kl_mean"][DEAD] == 0
    assert (got["kl_active"][~never] > 0).all()


def test_single_latent_effects_equal_the_loop_baseline(model, saes, ds):
    sae = saes["paper_normalized"]  # per-token input normalisation: the batched decode must keep it per row
    got = single_latent_effects(model, sae, ds, max_sentences=N_SENT)
    loop = effects_loop_baseline(model, sae, ds, range(sae.cfg.d_sae), max_sentences=N_SENT)
    np.testing.assert_allclose(got["kl_active"], loop, atol=1e-6, rtol=0)
    assert loop[DEAD] == 0 and got["kl_active"][DEAD] == 0


# ----------------------------------------------------------------------------- grammar classes
def test_token_classes_expr(model):
    grammar = formal_sae.load_grammar("expr")
    names, matrix = token_classes(grammar, model.tokenizer)
    assert names == ["Digit", "UnOp", "BinOp", "TernOp", "<eos>", "other"]
    np.testing.assert_array_equal(matrix.sum(1).numpy(), 1.0)
    prefix = {"dig": "Digit", "un": "UnOp", "bin": "BinOp", "tern": "TernOp"}
    for tok_id, tok in enumerate(model.tokenizer.convert_ids_to_tokens(list(range(len(model.tokenizer))))):
        stem = tok.rstrip("0123456789")
        want = prefix.get(stem, "<eos>" if tok == "<eos>" else "other")
        assert names[int(matrix[tok_id].argmax())] == want, tok
    assert matrix[model.tokenizer.convert_tokens_to_ids("dig3"), names.index("Digit")] == 1


def test_token_classes_dyck2():
    grammar = formal_sae.load_grammar("dyck2")
    tok = formal_sae.build_tokenizer(grammar)
    names, matrix = token_classes(grammar, tok)
    assert names == [*grammar.terminals, "<eos>", "other"] and len(grammar.terminals) == 4
    np.testing.assert_array_equal(matrix.sum(1).numpy(), 1.0)
    for t in grammar.terminals:  # each bracket is its own class
        assert matrix[:, names.index(t)].nonzero().flatten().tolist() == [tok.convert_tokens_to_ids(t)]
    assert matrix[tok.eos_token_id, names.index("<eos>")] == 1
    assert matrix[tok.pad_token_id, names.index("other")] == 1 and matrix[tok.bos_token_id, names.index("other")] == 1


# ----------------------------------------------------------------------------- next-token effects
def test_next_token_effects_identity_is_zero(model, saes, ds, tokens):
    sae = saes["topk"]
    js = busiest(sae, hook_acts(model, tokens), 2)
    out = next_token_effects(model, sae, ds, Intervention("scale", js, 1.0), max_sentences=N_SENT)
    assert out["mean_kl"] == pytest.approx(0, abs=1e-9) and out["mean_tv"] == pytest.approx(0, abs=1e-6)
    np.testing.assert_allclose(out["class_prob_clean"], out["class_prob_intervened"], atol=1e-6)
    assert out["n_positions"] == sum(ds["test"]["length"][:N_SENT])


def test_next_token_effects_of_keep_only_match_a_hand_computation(model, saes, ds, classes, tokens):
    sae = saes["topk"]
    j = busiest(sae, hook_acts(model, tokens), 1)
    out = next_token_effects(model, sae, ds, Intervention("keep_only", j), max_sentences=N_SENT)
    toks = pad(ds["test"]["input_ids"][:N_SENT], model.tokenizer.pad_token_id)
    mask = sentence_positions(ds, N_SENT, toks.shape[1])
    others = [i for i in range(sae.cfg.d_sae) if i not in j]
    with torch.no_grad():
        lp_clean = model(toks).log_softmax(-1)
    lp_new = reference_logits(model, sae, toks, lambda lat: set_latents(lat, others, 0.0), True).log_softmax(-1)
    kl = (lp_clean.exp() * (lp_clean - lp_new)).sum(-1)[mask]
    assert out["mean_kl"] > 1e-3
    assert out["mean_kl"] == pytest.approx(float(kl.mean()), rel=1e-4)
    np.testing.assert_allclose(out["class_prob_clean"], (lp_clean.exp() @ classes)[mask].mean(0), atol=1e-5)
    np.testing.assert_allclose(out["class_prob_intervened"], (lp_new.exp() @ classes)[mask].mean(0), atol=1e-5)
    # Grouped by the grammar's pending-operand count: one entry per value it takes.
    assert out["group_by"] == "pending"
    prompt = formal_sae.dataset_metadata(ds).prompt_length
    values = [
        v
        for row, n in zip(ds["test"]["pending"][:N_SENT], ds["test"]["length"][:N_SENT], strict=True)
        for v in row[prompt : prompt + n]
    ]
    assert sorted(out["by_group"]) == sorted(set(values))
    assert {g: r["n"] for g, r in out["by_group"].items()} == {g: values.count(g) for g in set(values)}


# ----------------------------------------------------------------------------- generations
N_GEN, GEN_TOKENS, GEN_SEED = 16, 40, 3


def hand_sample_stats(samples, grammar, tokenizer) -> dict[str, list[float]]:
    id_to_token = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    valid, length = [], []
    for ids in samples:
        ended = bool(ids) and ids[-1] == tokenizer.eos_token_id
        toks = [id_to_token[i] for i in (ids[:-1] if ended else ids)]
        valid.append(float(ended and set(toks) <= set(grammar.terminals) and grammar.is_grammatical(toks)))
        length.append(float(len(toks)))
    return {"valid": valid, "length": length}


def test_compare_generations_identity_gives_identical_samples(model, saes, tokens):
    sae = saes["topk"]
    js = busiest(sae, hook_acts(model, tokens), 2)
    out = compare_generations(
        model, sae, Intervention("scale", js, 1.0), n_samples=N_GEN, seed=GEN_SEED, max_new_tokens=GEN_TOKENS
    )
    assert out["validity"]["clean"] == out["validity"]["intervened"] and out["validity"]["p_value"] == 1.0
    for key, entry in [("length", out["length"]), *out["class_counts"].items()]:
        assert entry["clean"] == entry["intervened"] and entry["p_value"] == pytest.approx(1.0), key
    # The clean samples are the model's with the SAE and its error term spliced in, same seed.
    grammar = formal_sae.model_grammar(model)
    prompt = formal_sae.prompt_ids(model.tokenizer, model.formal_sae_data.prompt_format)
    samples = sample_sequences(model, N_GEN, prompt, GEN_TOKENS, seed=GEN_SEED, saes=[sae], use_error_term=True)
    hand = hand_sample_stats(samples, grammar, model.tokenizer)
    assert out["validity"]["clean"] == pytest.approx(np.mean(hand["valid"]))
    assert out["length"]["clean"] == pytest.approx(np.mean(hand["length"]))


def test_compare_generations_strong_intervention(model, saes, tokens):
    sae = saes["topk"]
    j = busiest(sae, hook_acts(model, tokens), 1)
    out = compare_generations(model, sae, Intervention("keep_only", j), n_samples=N_GEN, seed=GEN_SEED, max_new_tokens=GEN_TOKENS)
    assert set(out) >= {"validity", "length", "depth", "class_counts"} and out["n_samples"] == N_GEN
    assert set(out["class_counts"]) == {"Digit", "UnOp", "BinOp", "TernOp", "<eos>", "other"}
    entries = [out["validity"], out["length"], *out["class_counts"].values()]
    if not np.isnan(out["depth"]["p_value"]):
        entries.append(out["depth"])
    for e in entries:
        assert 0.0 <= e["p_value"] <= 1.0
    # Independent statistics of both sample sets, from the same seeds.
    grammar = formal_sae.model_grammar(model)
    prompt = formal_sae.prompt_ids(model.tokenizer, model.formal_sae_data.prompt_format)
    others = [i for i in range(sae.cfg.d_sae) if i not in j]

    def keep_only(x, hook):
        latents = manual_encode(sae, x)
        return manual_decode(sae, set_latents(latents, others, 0.0), x) + x - manual_decode(sae, latents, x)

    clean = hand_sample_stats(sample_sequences(model, N_GEN, prompt, GEN_TOKENS, seed=GEN_SEED), grammar, model.tokenizer)
    new = hand_sample_stats(
        sample_sequences(model, N_GEN, prompt, GEN_TOKENS, seed=GEN_SEED, fwd_hooks=[(HOOK, keep_only)]), grammar, model.tokenizer
    )
    # Float-level differences between splices could flip a rare draw: compare means loosely.
    assert out["length"]["clean"] == pytest.approx(np.mean(clean["length"]), abs=2.0)
    assert out["length"]["intervened"] == pytest.approx(np.mean(new["length"]), abs=2.0)
    table = [[sum(clean["valid"]), N_GEN - sum(clean["valid"])], [sum(new["valid"]), N_GEN - sum(new["valid"])]]
    if out["validity"]["clean"] == np.mean(clean["valid"]) and out["validity"]["intervened"] == np.mean(new["valid"]):
        assert out["validity"]["p_value"] == pytest.approx(stats.fisher_exact(table).pvalue)


# ----------------------------------------------------------------------------- correlation vs causation
@pytest.fixture(scope="module")
def report(model, saes, ds):
    return causal_report(model, saes["topk"], ds, top_k=3, max_sentences=N_SENT)


def test_causal_report_targets_and_flags(report, model, saes, ds):
    effects = single_latent_effects(model, saes["topk"], ds, max_sentences=N_SENT)
    assert report.targets and len(report.latents) == saes["topk"].cfg.d_sae
    for name, rows in report.targets.items():
        assert 1 <= len(rows) <= 3, name
        rhos = [abs(r["pearson"]) for r in rows]
        assert rhos == sorted(rhos, reverse=True), name
        for r in rows:
            assert r["effect"] == pytest.approx(effects["class_tv_active"][r["latent"]])
            assert r["flag"] == report.latents[r["latent"]]["flag"]
    live = [r for r in report.latents if r["n_active"] > 0]
    median = float(np.median([r["effect"] for r in live]))
    top = float(np.quantile([r["effect"] for r in live], 0.9))
    for r in report.latents:
        assert r["n_active"] == effects["n_active"][r["latent"]]
        if r["n_active"] == 0:
            assert r["flag"] is None
        elif r["max_abs_pearson"] >= 0.5 and r["effect"] < median:
            assert r["flag"] == "correlated_not_causal"
        elif r["effect"] >= top and r["max_abs_pearson"] < 0.3:
            assert r["flag"] == "causal_not_correlated"
        else:
            assert r["flag"] is None
    assert report.latents[DEAD]["flag"] is None and report.latents[DEAD]["n_active"] == 0
    assert report.summary["n_live"] == len(live)


def test_causal_report_markdown_and_save(report, tmp_path):
    md = report.to_markdown()
    for name in report.targets:
        assert f"`{name}`" in md
    report.save(tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(saved["targets"]) == set(report.targets) and len(saved["latents"]) == len(report.latents)
    assert (tmp_path / "report.md").read_text() == md
    png = (tmp_path / "correlation_vs_effect.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    from PIL import Image

    with Image.open(tmp_path / "correlation_vs_effect.png") as im:
        im.verify()


# ----------------------------------------------------------------------------- errors
def test_intervention_errors(model, saes, tokens):
    sae = saes["topk"]
    d = sae.cfg.d_sae
    for bad in (d, -1):
        with pytest.raises(FormalSAEError, match=rf"latent index {bad} is out of range: the SAE has latents 0\.\.{d - 1}"):
            run_intervened(model, sae, tokens, Intervention("ablate", [0, bad]))
    with pytest.raises(FormalSAEError, match=r"mode 'clamp' needs a value"):
        Intervention("clamp", [0]).validate(sae)
    with pytest.raises(FormalSAEError, match=r"unknown intervention mode 'zero'; choose one of ablate, clamp, scale"):
        Intervention("zero", [0]).validate(sae)
    with pytest.raises(FormalSAEError, match=r"mode 'patch' needs source_tokens"):
        run_intervened(model, sae, tokens, Intervention("patch", [0]))
    with pytest.raises(FormalSAEError, match=r"relative=True only applies to mode 'clamp'"):
        Intervention("scale", [0], 2.0, relative=True).validate(sae)
    with pytest.raises(FormalSAEError, match=r"a relative clamp needs the latents' observed ranges"):
        run_intervened(model, sae, tokens, Intervention("clamp", [0], 0.5, relative=True))
    with pytest.raises(FormalSAEError, match=r"needs at least one latent"):
        Intervention("ablate", []).validate(sae)
    with pytest.raises(FormalSAEError, match=r"'patch' .* not generation"):
        compare_generations(model, sae, Intervention("patch", [0], source_tokens=tokens), n_samples=2, max_new_tokens=2)


def test_sae_at_a_hook_the_model_lacks(model, saes, ds, tokens):
    bad = copy.deepcopy(saes["topk"])
    bad.cfg.metadata.hook_name = "blocks.7.hook_resid_post"
    calls = [
        lambda: run_intervened(model, bad, tokens, None),
        lambda: run_intervened(model, bad, tokens, Intervention("ablate", [0])),
        lambda: next_token_effects(model, bad, ds, Intervention("ablate", [0]), max_sentences=4),
        lambda: single_latent_effects(model, bad, ds, max_sentences=4),
        lambda: compare_generations(model, bad, Intervention("ablate", [0]), n_samples=2, max_new_tokens=2),
    ]
    for call in calls:
        with pytest.raises(
            FormalSAEError,
            match=r"no hook point 'blocks\.7\.hook_resid_post'; valid hook names are: .*blocks\.0\.hook_resid_post",
        ):
            call()


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def saved(model, ds, saes, sae_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    formal_sae.save_model(model, root / "model")
    formal_sae.save_dataset(ds, root / "data")
    return root / "model", sae_dir, root / "data"


def test_cli_intervene(saved, tmp_path):
    m, s, d = saved
    out = tmp_path / "out"
    args = ["intervene", "--model", str(m), "--sae", str(s), "--data", str(d), "--out", str(out)]
    assert main([*args, "--latent", "0", "--mode", "ablate", "--n-samples", "8", "--max-sentences", "20"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["latent"] == 0 and report["mode"] == "ablate"
    for key in ("mean_kl", "validity_clean", "validity_intervened"):
        assert isinstance(report[key], float), key
    assert 0 <= report["validity_clean"] <= 1 and 0 <= report["validity_intervened"] <= 1
    # The same numbers as the API on the saved model, SAE and data.
    model, sae, ds = formal_sae.load_model(m), formal_sae.load_sae(s), formal_sae.load_dataset_dir(d)
    api = next_token_effects(model, sae, ds, Intervention("ablate", [0]), max_sentences=20)
    assert report["mean_kl"] == pytest.approx(api["mean_kl"], rel=1e-6, abs=1e-12)


def test_cli_intervene_report(saved, tmp_path):
    m, s, d = saved
    out = tmp_path / "report"
    args = ["intervene", "--model", str(m), "--sae", str(s), "--data", str(d), "--out", str(out)]
    assert main([*args, "--report", "--max-sentences", "20"]) == 0
    saved_report = json.loads((out / "report.json").read_text())
    assert len(saved_report["latents"]) == formal_sae.load_sae(s).cfg.d_sae and saved_report["targets"]
    assert (out / "report.md").is_file() and (out / "correlation_vs_effect.png").is_file()


def test_cli_clamp_without_value(saved, tmp_path, capsys):
    m, s, d = saved
    args = ["intervene", "--model", str(m), "--sae", str(s), "--data", str(d), "--out", str(tmp_path / "x")]
    assert main([*args, "--latent", "0", "--mode", "clamp"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("formal-sae")]
    assert errors == ["formal-sae intervene: error: mode 'clamp' needs a value (--value)"]
    assert not (tmp_path / "x" / "report.json").exists()

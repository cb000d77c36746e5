"""Causal SAEs (PAPER.md §8): the interpolation loss against an independent, per-sentence
computation, its alignment (the authors' code wrote the edited activations 7 positions too early),
pairing, training (gradients reach the SAE only), saving, the held-out loss and the CLI.

The reference computation runs each sentence alone (its own un-padded ``input_ids``), pairs
tokens by exact Euclidean distance, and edits the activation with a plain ``run_with_hooks`` hook
on the hook point (never ``start_at_layer``), so it shares no code path with ``causal_loss`` beyond
the SAE's ``encode``/``decode``. The model has the tiny preset's sizes but two layers, so that
``blocks.1.hook_resid_pre`` shows what block 1 receives after an edit at block 0.
"""

from __future__ import annotations

import copy
import json

import datasets
import pytest
import torch
from sae_lens import SAE, TopKSAE

import formal_sae
from formal_sae import CausalConfig, SAEError, SAETrainConfig
from formal_sae.activations import padded_batch, run_from_hook, sentence_mask
from formal_sae.cli import main
from formal_sae.saes import build_training_sae, load_sae, train_sae
from formal_sae.saes.causal import causal_loss, held_out_causal_loss, nearest_partner, train_causal_sae
from formal_sae.saes.training import TRAIN_CONFIG_FILE

HOOK = "blocks.0.hook_resid_post"
MLP_HOOK = "blocks.0.hook_mlp_out"  # not a residual stream: run_from_hook replaces it with a hook
NEXT = "blocks.1.hook_resid_pre"  # what block 1 receives
D = 32  # tiny preset's d_model
TOL = {"atol": 1e-6, "rtol": 1e-5}
SMALL_SAE = SAETrainConfig(architecture="topk", k=4, expansion_factor=2, batch_size_tokens=128)


def make_ds(prompt_format: str) -> datasets.DatasetDict:
    return formal_sae.build_dataset("english", n_train=300, n_validation=30, n_test=30, seed=0, prompt_format=prompt_format)


@pytest.fixture(scope="module")
def ds():
    return make_ds("paper")


@pytest.fixture(scope="module")
def datasets_by_format(ds):
    # same grammar, same tokenizer: the model runs both prompt formats
    return {"paper": ds, "bos": make_ds("bos")}


@pytest.fixture(scope="module")
def model(ds):
    cfg = formal_sae.ModelConfig.from_preset("tiny", n_layers=2)
    train = formal_sae.TrainConfig(steps=30, eval_every=30, validity_samples=8, final_validity_repeats=1)
    m = formal_sae.train_model(ds, cfg, train, progress=False)
    m.eval()
    return m


def random_sae(hook: str, seed: int = 0):
    return build_training_sae(SAETrainConfig(architecture="topk", k=4, expansion_factor=2, hook_name=hook, seed=seed), D)


def sentences(ds: datasets.DatasetDict, n: int = 8, split: str = "test") -> list[tuple[list[int], int]]:
    """(input_ids, sentence length) of the first ``n`` rows, plus a one-token sentence (prompt,
    first token, ``<eos>``), which has no partner."""
    prompt = formal_sae.dataset_metadata(ds).prompt_length
    rows = ds[split][:n]
    out = list(zip(rows["input_ids"], rows["length"], strict=True))
    ids = out[0][0]
    return [*out[:3], ([*ids[: prompt + 1], ids[-1]], 1), *out[3:]]


def batch_of(model, seqs, prompt: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = padded_batch([ids for ids, _ in seqs], model.tokenizer.pad_token_id)
    return tokens, sentence_mask(torch.tensor([n for _, n in seqs]), prompt, tokens.shape[1])


def reference_terms(model, sae, hook, seqs, prompt, s):
    """Per sentence: (output of the interpolation, interpolation of the outputs) at its paired tokens."""
    outs, targets = [], []
    for ids, n in seqs:
        if n < 2:
            continue
        tokens = torch.tensor([ids])
        pos = torch.arange(prompt, prompt + n)
        with torch.no_grad():
            clean, cache = model.run_with_cache(tokens, names_filter=hook)
        lat = sae.encode(cache[hook][0, pos])
        dist = ((lat[:, None, :] - lat[None, :, :]) ** 2).sum(-1).sqrt() + torch.diag(torch.full((n,), float("inf")))
        partner = dist.argmin(1)
        decoded = sae.decode(lat + s * (lat[partner] - lat))

        def edit(act, hook, decoded=decoded, pos=pos):
            act = act.clone()
            act[0, pos] = decoded
            return act

        outs.append(model.run_with_hooks(tokens, fwd_hooks=[(hook, edit)])[0, pos])
        y = clean[0, pos]
        targets.append(y + s * (y[partner] - y))
    return torch.cat(outs), torch.cat(targets)


def reference_distance(out, target, distance):
    """Per paired token: mean squared logit error, or KL(softmax(target) || softmax(out))."""
    if distance == "mse":
        return ((out - target) ** 2).mean(-1)
    lt, lo = target.log_softmax(-1), out.log_softmax(-1)
    return (lt.exp() * (lt - lo)).sum(-1)


def reference_loss(model, sae, hook, seqs, prompt, s, distance):
    return reference_distance(*reference_terms(model, sae, hook, seqs, prompt, s), distance).mean()


# ---------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("fmt", ["bos", "paper"])
@pytest.mark.parametrize("hook", [HOOK, MLP_HOOK, "blocks.0.hook_resid_pre"])
def test_causal_loss_equals_a_direct_per_sentence_computation(model, datasets_by_format, fmt, hook):
    ds = datasets_by_format[fmt]
    prompt = formal_sae.dataset_metadata(ds).prompt_length
    assert prompt == (7 if fmt == "paper" else 1)
    seqs = sentences(ds)
    tokens, mask = batch_of(model, seqs, prompt)
    sae = random_sae(hook)
    for distance in ("mse", "kl"):
        for s in (0.0, 0.3, 0.75, 1.0):
            with torch.no_grad():
                got, latents = causal_loss(model, sae, hook, tokens, mask, s, distance)
                want = reference_loss(model, sae, hook, seqs, prompt, s, distance)
            assert latents.shape == (int(mask.sum()), sae.cfg.d_sae)
            torch.testing.assert_close(got, want, **TOL, msg=f"{distance} s={s}")
            assert want > 0


def test_causal_loss_gradient_equals_the_direct_computation(model, ds):
    seqs = sentences(ds)
    tokens, mask = batch_of(model, seqs, 7)
    sae = random_sae(HOOK)
    params = [sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec]
    got = torch.autograd.grad(causal_loss(model, sae, HOOK, tokens, mask, 0.4, "kl")[0], params)
    want = torch.autograd.grad(reference_loss(model, sae, HOOK, seqs, 7, 0.4, "kl"), params)
    for g, w in zip(got, want, strict=True):
        assert w.abs().sum() > 0
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("hook", [HOOK, MLP_HOOK])
def test_exact_reconstruction_at_s0_gives_zero_loss(model, ds, hook, identity_sae):
    tokens, mask = batch_of(model, sentences(ds), 7)
    sae = identity_sae(D, hook)
    with torch.no_grad():
        x = model.run_with_cache(tokens, names_filter=hook)[1][hook][mask]
        assert torch.equal(sae.decode(sae.encode(x)), x)
        for distance in ("mse", "kl"):
            assert float(causal_loss(model, sae, hook, tokens, mask, 0.0, distance)[0]) < 1e-6  # float32 round-off
        assert float(causal_loss(model, random_sae(hook), hook, tokens, mask, 0.5)[0]) > 1e-4


def test_nearest_partner_stays_in_its_sentence_by_hand():
    # token 2 (sentence 1) is the nearest vector to tokens 0 and 1 overall, but not in their sentence
    latents = torch.tensor([[0.0], [1.0], [0.1], [0.4], [11.0], [5.0]])
    sentence = torch.tensor([0, 0, 1, 0, 1, 2])
    partner, paired = nearest_partner(latents, sentence)
    assert partner[paired].tolist() == [3, 3, 4, 0, 2]
    assert paired.tolist() == [True, True, True, True, True, False]  # a one-token sentence has no partner
    # sentences need not be contiguous
    partner, paired = nearest_partner(latents[[0, 2, 1, 4]], torch.tensor([0, 1, 0, 1]))
    assert partner.tolist() == [2, 3, 0, 1] and paired.all()


def test_nearest_partner_is_euclidean_and_breaks_ties_by_first_index():
    # from a: b is 3 away (L1 3), c is 2.83 away (L1 4): Euclidean picks c
    latents = torch.tensor([[0.0, 0.0], [3.0, 0.0], [2.0, 2.0]])
    assert nearest_partner(latents, torch.zeros(3, dtype=torch.long))[0].tolist() == [2, 2, 1]
    # ties: token 0 is 1 away from tokens 1 and 2 -> the first; equal vectors are each other's partner
    latents = torch.tensor([[0.0], [1.0], [-1.0], [5.0], [5.0]])
    partner, paired = nearest_partner(latents, torch.zeros(5, dtype=torch.long))
    assert partner.tolist() == [1, 0, 0, 4, 3] and paired.all()


def test_only_one_token_sentences_give_zero_loss(model, ds):
    seqs = [s for s in sentences(ds) if s[1] == 1]
    tokens, mask = batch_of(model, seqs, 7)
    loss, latents = causal_loss(model, random_sae(HOOK), HOOK, tokens, mask, 0.5)
    assert float(loss) == 0 and len(latents) == len(seqs)


# ---------------------------------------------------------------------------- alignment (the authors' bug)
@pytest.mark.parametrize("hook", [HOOK, MLP_HOOK])
def test_edits_land_exactly_at_the_sentence_positions(model, ds, hook):
    """With the paper's 7-token prompt, block 1 receives the decoded interpolations at the sentence
    positions and the clean activations everywhere else (prompt, <eos>, padding)."""
    seqs = sentences(ds)
    tokens, mask = batch_of(model, seqs, 7)
    sae = random_sae(hook)
    s = 0.6
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in (hook, NEXT))
        latents = sae.encode(cache[hook][mask])
        partner, _ = nearest_partner(latents, mask.nonzero(as_tuple=True)[0])
        decoded = sae.decode(latents + s * (latents[partner] - latents))
        seen = []
        with model.hooks(fwd_hooks=[(NEXT, lambda act, hook: seen.append(act.clone()))]):
            causal_loss(model, sae, hook, tokens, mask, s)
    received = seen[-1]  # the last run is run_from_hook's
    clean = cache[NEXT]
    assert torch.equal(received[:, :7], clean[:, :7])  # the prompt is untouched
    assert torch.equal(received[~mask], clean[~mask])
    # at the sentence positions: the decoded vectors (for hook_mlp_out, added to the clean residual)
    expected = decoded if hook == HOOK else clean[mask] - cache[hook][mask] + decoded
    torch.testing.assert_close(received[mask], expected, **TOL)
    assert not torch.allclose(received[mask], clean[mask], atol=1e-3)


def test_a_misaligned_splice_gives_a_different_loss(model, ds):
    """The authors' ``intervene()``: decoded vectors at positions 0..n-1, zeros after, logits read
    at 7..7+n-1. The aligned loss matches the reference; the misaligned one differs from it by far."""
    seqs = sentences(ds)
    tokens, mask = batch_of(model, seqs, 7)
    sae = random_sae(HOOK)
    s = 0.5
    with torch.no_grad():
        aligned, _ = causal_loss(model, sae, HOOK, tokens, mask, s)
        out, target = reference_terms(model, sae, HOOK, seqs, 7, s)
        torch.testing.assert_close(aligned, ((out - target) ** 2).mean(), **TOL)
        clean, cache = model.run_with_cache(tokens, names_filter=HOOK)
        x = cache[HOOK]
        latents = sae.encode(x[mask])
        partner, paired = nearest_partner(latents, mask.nonzero(as_tuple=True)[0])
        decoded = sae.decode(latents + s * (latents[partner] - latents))
        shifted = torch.zeros_like(x)
        start = 0
        for b, (_, n) in enumerate(seqs):
            shifted[b, :n] = decoded[start : start + n]
            start += n
        logits = run_from_hook(model, HOOK, tokens, shifted)
        y = clean[mask]
        misaligned = ((logits[mask] - (y + s * (y[partner] - y)))[paired] ** 2).mean()
    assert abs(misaligned - aligned) > 0.2 * aligned


# ---------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    "kw",
    [
        {"distance": "cosine"},
        {"schedule": "cosine"},
        {"step": 1.5},
        {"step": -0.1},
        {"step": "abc"},
        {"step": float("nan")},
        {"coefficient": -1.0},
        {"steps": -1},
        {"pretrain_steps": -1},
        {"sentences_per_step": 0},
    ],
)
def test_bad_causal_configs_raise_sae_errors(kw):
    with pytest.raises(SAEError):
        CausalConfig(**kw).validate()


def test_valid_causal_configs_and_the_beta_schedule():
    for kw in ({}, {"step": 0}, {"step": 1}, {"step": 0.2}, {"distance": "kl"}, {"coefficient": 0.0}):
        CausalConfig(**kw).validate()
    linear = CausalConfig(coefficient=2.0, schedule="linear", steps=4)
    assert [linear.beta(t) for t in range(4)] == [0.0, 0.5, 1.0, 1.5]  # beta * t / steps (PAPER.md §8.2)
    assert [CausalConfig(coefficient=2.0, steps=4).beta(t) for t in range(4)] == [2.0] * 4


# ---------------------------------------------------------------------------- training
CAUSAL = CausalConfig(coefficient=10.0, pretrain_steps=3, steps=4, sentences_per_step=8)


@pytest.fixture(scope="module")
def causal_dir(model, ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("causal-sae")
    before = copy.deepcopy(model.state_dict())
    grads = [p.requires_grad for p in model.parameters()]
    sae = train_causal_sae(model, ds, SMALL_SAE, CAUSAL, out_dir=out, progress=False)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in model.parameters()] == grads  # frozen during training only
    assert formal_sae.train_seconds(sae) > 0
    return out


def weights(sae) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in sae.state_dict().items()}


def test_the_causal_phase_trains_the_sae_only(model, ds, causal_dir):
    trained = weights(load_sae(causal_dir))
    pretrained = weights(train_causal_sae(model, ds, SMALL_SAE, CausalConfig(**{**CAUSAL.to_dict(), "steps": 0}), progress=False))
    plain = weights(
        train_causal_sae(model, ds, SMALL_SAE, CausalConfig(**{**CAUSAL.to_dict(), "coefficient": 0.0}), progress=False)
    )
    assert trained.keys() == pretrained.keys() == plain.keys()
    assert not all(torch.equal(trained[k], pretrained[k]) for k in trained)  # the causal phase moved the SAE
    assert not all(torch.equal(trained[k], plain[k]) for k in trained)  # ... and the causal term mattered


def test_a_causal_sae_saves_as_a_plain_saelens_sae(causal_dir):
    sae = SAE.load_from_disk(str(causal_dir))
    assert type(sae) is TopKSAE and sae.cfg.k == 4 and sae.cfg.d_sae == 2 * D and sae.cfg.metadata.hook_name == HOOK
    assert json.loads((causal_dir / "cfg.json").read_text())["architecture"] == "topk"
    saved = json.loads((causal_dir / TRAIN_CONFIG_FILE).read_text())
    assert saved["causal"] == CAUSAL.to_dict()
    assert (saved["architecture"], saved["k"]) == ("topk", 4)


def test_too_few_training_sentences_is_an_error_not_a_hang(model, ds):
    with pytest.raises(SAEError, match="sentences_per_step"):
        train_causal_sae(model, ds, SMALL_SAE, CausalConfig(steps=1, sentences_per_step=301), progress=False)


# ---------------------------------------------------------------------------- held-out loss
def with_one_token_sentences(ds: datasets.DatasetDict, n: int = 100) -> datasets.DatasetDict:
    """``n`` train sentences with every third one cut to its first token (a token without partner).
    The held-out loss runs batches of 64 sorted by length: the first batch holds the short ones."""

    def cut(row, i):
        if i % 3:
            return row
        return {"input_ids": [*row["input_ids"][:8], row["input_ids"][-1]], "length": 1}

    return datasets.DatasetDict({"test": ds["train"].select(range(n)).map(cut, with_indices=True)})


def test_held_out_causal_loss_is_the_mean_over_paired_tokens_and_steps(model, ds):
    test = with_one_token_sentences(ds)
    sae = train_sae(model, ds, SMALL_SAE, training_tokens=512)
    steps = (0.25, 0.5, 0.75)
    seqs = list(zip(test["test"]["input_ids"], test["test"]["length"], strict=True))
    assert sum(n == 1 for _, n in seqs) == 34
    with torch.no_grad():
        terms = [reference_terms(model, sae, HOOK, seqs, 7, s) for s in steps]
        for distance in ("mse", "kl"):
            want = torch.cat([reference_distance(out, target, distance) for out, target in terms]).mean()
            got = held_out_causal_loss(model, sae, test, distance=distance, steps=steps)
            assert got == pytest.approx(float(want), rel=1e-5)
            assert held_out_causal_loss(model, sae, test, distance=distance, steps=steps) == got  # deterministic


def test_a_large_causal_coefficient_lowers_the_held_out_causal_loss(model, ds):
    """Same pretraining, same causal-phase schedule and batches; only beta differs (100 vs 0).
    On this tiny model the reduction was 16% for seeds 0-2; the test asks for 5%."""
    cfg = CausalConfig(pretrain_steps=5, steps=10, sentences_per_step=16)
    loss = {
        beta: held_out_causal_loss(
            model,
            train_causal_sae(model, ds, SMALL_SAE, CausalConfig(**{**cfg.to_dict(), "coefficient": beta}), progress=False),
            ds,
        )
        for beta in (0.0, 100.0)
    }
    assert loss[100.0] < 0.95 * loss[0.0]


# ---------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def cli_dirs(model, ds, tmp_path_factory):
    root = tmp_path_factory.mktemp("causal-cli")
    formal_sae.save_model(model, root / "model")
    formal_sae.save_dataset(ds, root / "data")
    return root


def test_cli_trains_a_causal_sae_and_compares_it(cli_dirs, model, ds, capsys):
    root = cli_dirs
    common = ["--model", str(root / "model"), "--data", str(root / "data")]
    args = [
        "train-sae",
        *common,
        "--out",
        str(root / "causal"),
        "--k",
        "4",
        "--expansion-factor",
        "2",
        "--causal-coefficient",
        "10",
    ]
    rest = [
        "--causal-pretrain-steps",
        "5",
        "--causal-steps",
        "5",
        "--training-tokens",
        "5000",
        "--n-samples",
        "8",
        "--repeats",
        "2",
    ]
    assert main([*args, *rest]) == 0
    metrics = json.loads((root / "causal" / "metrics.json").read_text())
    assert metrics["causal_loss"] > 0 and 0 <= metrics["validity"] <= 1
    assert json.loads((root / "causal" / TRAIN_CONFIG_FILE).read_text())["causal"]["coefficient"] == 10.0
    train_sae(model, ds, SMALL_SAE, training_tokens=512, out_dir=root / "plain")
    capsys.readouterr()

    out = root / "cmp"
    assert (
        main(
            [
                "compare-saes",
                str(root / "causal"),
                str(root / "plain"),
                *common,
                "--out",
                str(out),
                "--n-samples",
                "8",
                "--repeats",
                "2",
            ]
        )
        == 0
    )
    assert {"comparison.json", "comparison.md", "comparison.png"} <= {p.name for p in out.iterdir()}
    rows = json.loads((out / "comparison.json").read_text())["saes"]
    assert [r["name"] for r in rows] == ["causal", "plain"]
    assert rows[0]["causal"]["coefficient"] == 10.0 and rows[1].get("causal") is None
    assert rows[0]["causal_loss"] == pytest.approx(metrics["causal_loss"], rel=1e-6)  # same test split, same SAE
    for r in rows:
        assert r["causal_loss"] > 0 and r["linearity_error"] > 0 and 0 <= r["validity"] <= 1
        assert r["linearity_pairs"] > 0
    assert "| causal | 10.0 |" in (out / "comparison.md").read_text()


@pytest.mark.parametrize("step", ["1.5", "abc"])
def test_cli_rejects_a_bad_causal_step(cli_dirs, capsys, step):
    root = cli_dirs
    argv = ["train-sae", "--model", str(root / "model"), "--data", str(root / "data"), "--out", str(root / f"bad{step}")]
    assert main([*argv, "--causal-coefficient", "1", "--causal-step", step]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("formal-sae train-sae: error: ") and "step" in err
    assert "\n" not in err and "Traceback" not in err
    assert not (root / f"bad{step}" / "cfg.json").exists()

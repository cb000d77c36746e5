"""The training loop: batching, padding and loss, schedule, optimiser groups, outputs, resume, errors, CLI."""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import formal_sae
import formal_sae.training as training
from formal_sae import ModelConfig, ModelError, OutputError, TrainConfig, in_progress_path, load_model, train_model
from formal_sae.cli import main
from formal_sae.models import model_state
from formal_sae.packing import pack_rows, pack_sequences
from formal_sae.training import (
    SentenceBatches,
    backward_batch,
    lr_at,
    make_optimizer,
    next_token_loss,
    sequences_of,
    validation_loss,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def small_train(**overrides) -> TrainConfig:
    """A training run of well under a second on the tiny preset."""
    settings = dict(
        steps=30,
        batch_size=16,
        lr=3e-3,
        warmup_steps=5,
        eval_every=10,
        checkpoint_every=10,
        val_sentences=40,
        validity_samples=16,
        final_validity_repeats=2,
        seed=0,
    )
    return TrainConfig(**{**settings, **overrides})


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def expr_ds():
    return formal_sae.build_dataset("expr", n_train=300, n_validation=40, n_test=0, seed=0)


@pytest.fixture(scope="module")
def expr_tokenizer():
    return formal_sae.build_tokenizer(formal_sae.load_grammar("expr"))


@pytest.fixture(scope="module")
def run_a(expr_ds, tmp_path_factory):
    """Run A: uninterrupted, checkpointing every 10 steps, with an output directory."""
    out = tmp_path_factory.mktemp("run-a")
    model = train_model(expr_ds, "tiny", small_train(), out_dir=out, progress=False)
    return model, out


@pytest.fixture(scope="module")
def interrupted(expr_ds, tmp_path_factory):
    """The same run as A, interrupted (KeyboardInterrupt) at step 15, after the checkpoint of step 10."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    real_lr_at = training.lr_at

    def lr_at_then_interrupt(step, cfg):
        if step == 15:
            raise KeyboardInterrupt
        return real_lr_at(step, cfg)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "lr_at", lr_at_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            train_model(expr_ds, "tiny", small_train(), out_dir=out, progress=False)
    assert not out.exists()  # the model appears whole or not at all
    return out


@pytest.fixture
def interrupted_copy(interrupted, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(in_progress_path(interrupted), in_progress_path(dst))
    return dst


def padding_fraction(batch_lengths: list[np.ndarray]) -> float:
    """The share of pad tokens when each batch is padded to its longest sequence."""
    padded = sum(len(b) * b.max() for b in batch_lengths)
    return 1 - sum(b.sum() for b in batch_lengths) / padded


# ---------------------------------------------------------------------------- SentenceBatches
@pytest.fixture(scope="module")
def skewed_lengths():
    return np.random.default_rng(0).geometric(0.1, size=1000) + 2  # long-tailed, like grammar samples


def test_sentence_batches_are_deterministic_and_order_independent(skewed_lengths):
    a = SentenceBatches(len(skewed_lengths), 8, seed=5)
    b = SentenceBatches(len(skewed_lengths), 8, seed=5)
    steps = list(range(300))
    first = [a.batch(s).tolist() for s in steps]
    assert first == [b.batch(s).tolist() for s in reversed(steps)][::-1]  # a resumed run can start anywhere
    c = SentenceBatches(len(skewed_lengths), 8, seed=6)
    assert first != [c.batch(s).tolist() for s in steps]
    assert first[0] != c.batch(0).tolist()


def test_each_epoch_uses_each_sentence_at_most_once(skewed_lengths):
    batch_size = 16
    batches = SentenceBatches(len(skewed_lengths), batch_size, seed=0)
    per_epoch = len(skewed_lengths) // batch_size
    assert batches.per_epoch == per_epoch == 62
    epochs = []
    for epoch in range(3):
        idx = np.concatenate([batches.batch(epoch * per_epoch + i) for i in range(per_epoch)])
        assert all(len(batches.batch(epoch * per_epoch + i)) == batch_size for i in range(per_epoch))
        assert len(idx) == per_epoch * batch_size
        assert len(set(idx.tolist())) == len(idx)  # no repeats within an epoch
        assert idx.min() >= 0 and idx.max() < len(skewed_lengths)
        epochs.append(idx)
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch


def test_batch_composition_does_not_depend_on_length(skewed_lengths):
    """Each batch is a uniform sample: the spread of batch-mean lengths is that of random batches
    (bucketing by length, which biased the models, spreads them several times wider)."""
    batch_size = 16
    batches = SentenceBatches(len(skewed_lengths), batch_size, seed=0)
    means = np.array([skewed_lengths[batches.batch(s)].mean() for s in range(batches.per_epoch * 5)])
    random_spread = skewed_lengths.std() / np.sqrt(batch_size)
    assert 0.7 * random_spread < means.std() < 1.3 * random_spread


def test_dataset_smaller_than_a_batch_repeats_sentences():
    batches = SentenceBatches(3, batch_size=8, seed=0)
    batch = batches.batch(0)
    assert len(batch) == 8 and set(batch.tolist()) == {0, 1, 2}
    assert batches.per_epoch == 1


# ---------------------------------------------------------------------------- packing and loss
def sentence_losses(model, seqs: list[list[int]]) -> torch.Tensor:
    """Every next-token loss term of every sequence, each sequence run alone (no padding, no packing)."""
    terms = []
    for seq in seqs:
        logits = model(torch.tensor([seq]))[0]
        terms += [-torch.log_softmax(logits[t], -1)[seq[t + 1]] for t in range(len(seq) - 1)]
    return torch.stack(terms)


def test_pack_rows_places_every_sentence_once_within_the_width(skewed_lengths):
    lengths = skewed_lengths[:128].tolist()
    rows = pack_rows(lengths)
    assert sorted(i for row in rows for i in row) == list(range(128))
    assert all(sum(lengths[i] for i in row) <= max(lengths) for row in rows)
    fill = sum(lengths) / (len(rows) * max(lengths))
    assert fill > 0.9  # first-fit decreasing: near the bound
    assert len(rows) <= math.ceil(11 / 9 * math.ceil(sum(lengths) / max(lengths))) + 1  # FFD <= 11/9 OPT + 1
    assert padding_fraction([np.array(lengths)]) > 0.4  # the same batch padded to its longest: mostly padding


def test_pack_sequences_by_hand():
    seqs = [[20, 1, 2, 21], [20, 13, 21], [20, 21]]
    packed = pack_sequences(seqs, pad_id=19)
    # width 4, and no two sentences fit together in a row: padded as usual
    assert packed.tokens.tolist() == [[20, 1, 2, 21], [20, 13, 21, 19], [20, 21, 19, 19]]
    assert packed.labels.tolist() == [[1, 2, 21], [13, 21, -100], [21, -100, -100]]
    assert packed.n_targets == 3 + 2 + 1
    packed = pack_sequences([[20, 5, 21], [20, 21], [20, 6, 7, 8, 21], [20, 21]], pad_id=19)
    assert packed.tokens.tolist() == [[20, 6, 7, 8, 21], [20, 5, 21, 20, 21], [20, 21, 19, 19, 19]]
    assert packed.labels.tolist() == [[6, 7, 8, 21], [5, 21, -100, 21], [21, -100, -100, -100]]  # no target across sentences
    assert packed.positions.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert packed.sequences.tolist() == [[2, 2, 2, 2, 2], [0, 0, 0, 1, 1], [3, 3, -1, -1, -1]]
    chunks = list(packed.chunks(10))
    assert [c.tokens.shape[0] for c in chunks] == [2, 1]
    assert torch.equal(torch.cat([c.tokens for c in chunks]), packed.tokens)
    assert [c.tokens.shape[0] for c in packed.chunks(1)] == [1, 1, 1]  # a row wider than the budget goes alone


def test_packed_loss_equals_each_sentence_run_alone(expr_ds, expr_tokenizer):
    """Attention masked to each sentence and positions restarted per sentence: packing changes no
    loss term (second implementation: every sentence through the model on its own)."""
    model = formal_sae.build_model(ModelConfig.from_preset("tiny", seed=1), expr_tokenizer)
    seqs = sequences_of(expr_ds["train"])[:40]
    packed = pack_sequences(seqs, expr_tokenizer.pad_token_id)
    assert packed.tokens.shape[0] < len(seqs) / 2  # really packed several sentences per row
    alone = sentence_losses(model, seqs)
    assert packed.n_targets == len(alone)
    torch.testing.assert_close(next_token_loss(model, packed), alone.sum(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(next_token_loss(model, packed, reduction="mean"), alone.mean(), rtol=1e-5, atol=1e-6)
    assert not model.hook_dict["hook_pos_embed"].fwd_hooks  # the hooks are gone afterwards


def test_packing_without_the_masks_would_change_the_loss(expr_ds, expr_tokenizer):
    """The test above can fail: the same rows run without the hooks give another loss (by far
    more than its tolerance, even for an untrained model)."""
    model = formal_sae.build_model(ModelConfig.from_preset("tiny", seed=1), expr_tokenizer)
    packed = pack_sequences(sequences_of(expr_ds["train"])[:40], expr_tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(packed.tokens)[:, :-1]
        unmasked = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), packed.labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        assert abs(float(unmasked) - float(next_token_loss(model, packed))) > 0.05


def test_packing_refuses_models_without_learned_positions(expr_tokenizer):
    model = formal_sae.build_model(ModelConfig.from_preset("tiny"), expr_tokenizer)
    model.cfg.positional_embedding_type = "rotary"  # positions would have to reach the attention itself
    with pytest.raises(ModelError, match="learned positional embeddings, not 'rotary'"):
        next_token_loss(model, pack_sequences([[20, 1, 21], [20, 21]], expr_tokenizer.pad_token_id))


def test_accumulated_gradient_equals_the_per_sentence_gradient(expr_ds, expr_tokenizer):
    """Gradient accumulation over chunks of packed rows is the gradient of the mean loss over the batch."""
    seqs = sequences_of(expr_ds["train"])[:64]
    model = formal_sae.build_model(ModelConfig.from_preset("tiny"), expr_tokenizer, formal_sae.dataset_metadata(expr_ds))
    expected_loss = sentence_losses(model, seqs).mean()
    expected_loss.backward()
    expected = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    pad = expr_tokenizer.pad_token_id
    loss, n = backward_batch(model, seqs, pad, small_train(micro_batch_tokens=32))
    assert len(list(pack_sequences(seqs, pad).chunks(32))) > 3  # really split
    assert n == sum(len(s) - 1 for s in seqs)
    assert loss == pytest.approx(expected_loss.item(), rel=1e-5)
    for g, p in zip(expected, [p for p in model.parameters() if p.grad is not None]):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_validation_loss_is_token_weighted(expr_tokenizer, expr_ds):
    model = formal_sae.build_model(ModelConfig.from_preset("tiny", seed=1), expr_tokenizer)
    seqs = sequences_of(expr_ds["validation"])[:12]
    expected = sentence_losses(model, seqs).mean().item()
    assert validation_loss(model, seqs, expr_tokenizer.pad_token_id, max_tokens=20) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------- schedule and optimiser
def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=110, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(4, cfg) == pytest.approx(5e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half-way through the cosine
    assert lr_at(35, cfg) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    assert lr_at(500, cfg) == pytest.approx(1e-4)
    values = [lr_at(s, cfg) for s in range(111)]
    assert all(a < b for a, b in itertools.pairwise(values[:10]))  # warm-up rises
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))  # then never rises again
    assert lr_at(0, TrainConfig(steps=10, warmup_steps=0, lr=1e-3)) == pytest.approx(1e-3)


def test_optimizer_decays_matrices_only_and_skips_frozen_biases(expr_tokenizer):
    model = formal_sae.build_model(ModelConfig.from_preset("tiny"), expr_tokenizer)
    cfg = TrainConfig(weight_decay=0.05, lr=2e-3, beta1=0.8, beta2=0.9)
    opt = make_optimizer(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decay["lr"] == 2e-3 and decay["betas"] == (0.8, 0.9)
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    expected_decay = {n for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2}
    assert "embed.W_E" in decay_names and "blocks.0.mlp.W_out" in decay_names
    assert decay_names == expected_decay
    assert no_decay_names == {"blocks.0.ln1.w", "blocks.0.ln2.w", "ln_final.w"}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "blocks.0.attn.b_Q" in frozen and "blocks.0.mlp.b_in" in frozen
    assert not frozen & (decay_names | no_decay_names)


def test_train_config_validation():
    for field, value in [("steps", 0), ("batch_size", 0), ("eval_every", -1), ("validity_samples", 0), ("micro_batch_tokens", 0)]:
        with pytest.raises(ModelError, match=f"{field} must be >= 1"):
            TrainConfig(**{field: value}).validate()
    with pytest.raises(ModelError, match="lr must be > 0"):
        TrainConfig(lr=0).validate()
    with pytest.raises(ModelError, match="unknown device"):
        TrainConfig(device="gpu").validate()


# ---------------------------------------------------------------------------- train_model
def test_training_reduces_the_loss(run_a, expr_ds, expr_tokenizer):
    model, _ = run_a
    fresh = formal_sae.build_model(ModelConfig.from_preset("tiny"), expr_tokenizer)
    val = sequences_of(expr_ds["validation"])
    before = validation_loss(fresh, val, expr_tokenizer.pad_token_id)
    after = validation_loss(model, val, expr_tokenizer.pad_token_id)
    assert before == pytest.approx(math.log(len(expr_tokenizer)), abs=0.1)  # untrained: about uniform
    assert after < before - 0.3
    history = model.formal_sae_metrics["history"]
    assert [h["step"] for h in history] == [10, 20, 30]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert history[-1]["val_loss"] == pytest.approx(after, rel=1e-6)


def test_training_writes_its_outputs(run_a, expr_ds):
    model, out = run_a
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer", "metrics.json", "train_config.json", "training_curve.png"} <= names
    assert "checkpoint" not in names  # removed once the run is complete
    metrics = json.loads((out / "metrics.json").read_text())
    assert isinstance(metrics["validity"], float) and 0 <= metrics["validity"] <= 1
    assert isinstance(metrics["validity_std"], float) and metrics["validity_std"] >= 0
    assert isinstance(metrics["val_loss"], float) and math.isfinite(metrics["val_loss"])
    assert metrics["steps"] == 30 and isinstance(metrics["steps"], int)
    assert metrics["grammar"] == "expr" and metrics["preset"] == "tiny"
    assert metrics["val_loss"] == metrics["history"][-1]["val_loss"]
    assert metrics == json.loads(json.dumps(model.formal_sae_metrics.to_dict()))
    train_config = json.loads((out / "train_config.json").read_text())
    assert train_config["train"] == small_train().to_dict()
    assert train_config["model"] == ModelConfig.from_preset("tiny").to_dict()
    assert train_config["data"]["grammar"] == "expr"
    png = (out / "training_curve.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    from PIL import Image

    with Image.open(out / "training_curve.png") as image:
        image.verify()
        assert image.size[0] > 100 and image.size[1] > 100


def test_saved_model_reproduces_the_trained_model(run_a, expr_ds, expr_tokenizer):
    model, out = run_a
    loaded = load_model(out)
    tokens = pack_sequences(sequences_of(expr_ds["validation"])[:8], expr_tokenizer.pad_token_id).tokens
    assert torch.equal(model(tokens), loaded(tokens))
    assert states_equal(model_state(model), model_state(loaded))
    metrics = json.loads((out / "metrics.json").read_text())
    val = validation_loss(loaded, sequences_of(expr_ds["validation"]), expr_tokenizer.pad_token_id)
    assert val == pytest.approx(metrics["val_loss"], rel=1e-6)
    final = formal_sae.evaluate_validity(loaded, n_samples=16, repeats=2, seed=0)  # the final evaluation, redone
    assert final.validity == metrics["validity"] and final.validity_std == metrics["validity_std"]


def test_same_seed_gives_identical_weights(run_a, expr_ds):
    model, _ = run_a
    again = train_model(expr_ds, "tiny", small_train(), progress=False)  # no out_dir: nothing written
    assert states_equal(model_state(model), model_state(again))
    other = train_model(expr_ds, "tiny", small_train(seed=1, steps=10), progress=False)
    assert not torch.equal(model_state(other)["embed.W_E"], model_state(model)["embed.W_E"])


# ---------------------------------------------------------------------------- resume
def test_interrupted_run_leaves_a_checkpoint(interrupted):
    ckpt = in_progress_path(interrupted) / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 10
    assert [h["step"] for h in state["history"]] == [10]
    assert not interrupted.exists()  # the run did not finish
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "optimizer.pt", "state.json"}


@pytest.mark.parametrize("resume", [True, False])  # False: a rerun of the same command resumes by itself
def test_resume_reaches_the_uninterrupted_weights_exactly(run_a, interrupted_copy, expr_ds, resume):
    model_a, out_a = run_a
    resumed = train_model(expr_ds, "tiny", small_train(), out_dir=interrupted_copy, resume=resume, progress=False)
    state_a, state_b = model_state(model_a), model_state(resumed)
    assert set(state_a) == set(state_b)
    for k in state_a:
        assert torch.equal(state_a[k], state_b[k]), k
    metrics_a = json.loads((out_a / "metrics.json").read_text())
    metrics_b = json.loads((interrupted_copy / "metrics.json").read_text())
    assert metrics_b["history"] == metrics_a["history"]
    for key in ("validity", "validity_std", "val_loss", "steps", "failures"):
        assert metrics_b[key] == metrics_a[key], key
    assert not (interrupted_copy / "checkpoint").exists() and not in_progress_path(interrupted_copy).exists()
    assert torch.equal(load_model(interrupted_copy).embed.W_E, model_a.embed.W_E)


def test_resume_without_a_checkpoint(expr_ds, tmp_path):
    with pytest.raises(ModelError, match="nothing to resume"):
        train_model(expr_ds, "tiny", small_train(), out_dir=tmp_path / "fresh", resume=True, progress=False)
    with pytest.raises(ModelError, match="resume=True needs the out_dir"):
        train_model(expr_ds, "tiny", small_train(), resume=True, progress=False)


def differing_fields(message: str) -> set[str]:
    match = re.search(r"interrupted run with another configuration; it differs in (.+)\. Rerun with the same settings", message)
    assert match, message
    return set(re.findall(r"(?:^|, )([\w.]+) \(", match.group(1)))


def test_resume_with_another_config_names_the_differences(interrupted_copy, expr_ds):
    with pytest.raises(OutputError) as err:
        train_model(expr_ds, "tiny", small_train(lr=1e-2), out_dir=interrupted_copy, resume=True, progress=False)
    assert differing_fields(str(err.value)) == {"train.lr"}
    assert "train.lr (0.003 -> 0.01)" in str(err.value)
    with pytest.raises(OutputError) as err:
        train_model(
            expr_ds,
            ModelConfig.from_preset("tiny", seed=4),
            small_train(steps=40),
            out_dir=interrupted_copy,
            resume=True,
            progress=False,
        )
    assert differing_fields(str(err.value)) == {"model.seed", "train.steps"}


def test_resume_with_another_grammar(interrupted_copy):
    dyck = formal_sae.build_dataset("dyck2", n_train=40, n_validation=5, n_test=0, seed=0)
    with pytest.raises(OutputError, match=r"data.grammar \(\"expr\" -> \"dyck2\"\)"):
        train_model(dyck, "tiny", small_train(), out_dir=interrupted_copy, resume=True, progress=False)


def test_another_run_keeps_the_interrupted_one_unless_overwrite(interrupted_copy, expr_ds):
    state = in_progress_path(interrupted_copy) / "checkpoint" / "state.json"
    before = state.read_text()
    with pytest.raises(OutputError, match="pass overwrite=True"):
        train_model(expr_ds, "tiny", small_train(seed=5), out_dir=interrupted_copy, progress=False)
    assert state.read_text() == before
    model = train_model(expr_ds, "tiny", small_train(seed=5, steps=12), out_dir=interrupted_copy, progress=False, overwrite=True)
    assert json.loads((interrupted_copy / "metrics.json").read_text())["steps"] == 12
    assert torch.equal(load_model(interrupted_copy).embed.W_E, model.embed.W_E)
    assert not in_progress_path(interrupted_copy).exists()


def test_corrupt_optimizer_state_names_the_file(interrupted_copy, expr_ds):
    path = in_progress_path(interrupted_copy) / "checkpoint" / "optimizer.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelError, match="is corrupt") as err:
        train_model(expr_ds, "tiny", small_train(), out_dir=interrupted_copy, resume=True, progress=False)
    assert f"checkpoint file {path}" in str(err.value)
    path.unlink()
    with pytest.raises(ModelError, match=f"checkpoint file {re.escape(str(path))} is missing"):
        train_model(expr_ds, "tiny", small_train(), out_dir=interrupted_copy, resume=True, progress=False)


def test_corrupt_checkpoint_state_and_weights(interrupted_copy, expr_ds):
    ckpt = in_progress_path(interrupted_copy) / "checkpoint"
    weights = ckpt / "model.safetensors"
    weights.write_bytes(b"junk")
    with pytest.raises(ModelError, match="is corrupt") as err:
        train_model(expr_ds, "tiny", small_train(), out_dir=interrupted_copy, resume=True, progress=False)
    assert str(weights) in str(err.value)
    (ckpt / "state.json").write_text("{broken")
    with pytest.raises(ModelError, match="not valid JSON") as err:
        train_model(expr_ds, "tiny", small_train(), out_dir=interrupted_copy, resume=True, progress=False)
    assert str(ckpt / "state.json") in str(err.value)


# ---------------------------------------------------------------------------- dataset errors
def test_sequences_longer_than_the_context(expr_ds):
    longest = max(map(len, sequences_of(expr_ds["train"]) + sequences_of(expr_ds["validation"])))
    with pytest.raises(ModelError, match=rf"sequences of {longest} tokens but the model's context is 8"):
        train_model(expr_ds, ModelConfig.from_preset("tiny", n_ctx=8), small_train(), progress=False)


def test_empty_validation_split():
    ds = formal_sae.build_dataset("expr", n_train=20, n_validation=0, n_test=0, seed=0)
    with pytest.raises(ModelError, match="the dataset has no 'validation' sentences"):
        train_model(ds, "tiny", small_train(), progress=False)


# ---------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def expr_dir(expr_ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "expr"
    formal_sae.save_dataset(expr_ds, out)
    return out


def test_cli_train_model(expr_dir, tmp_path, capsys):
    out = tmp_path / "model"
    args = ["train-model", "--data", str(expr_dir), "--out", str(out), "--preset", "tiny", "--steps", "10"]
    args += ["--batch-size", "16", "--eval-every", "5", "--checkpoint-every", "5", "--lr", "0.003", "--seed", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 10 and metrics["grammar"] == "expr" and metrics["preset"] == "tiny"
    assert [h["step"] for h in metrics["history"]] == [5, 10]
    assert f"wrote {out}: expr / tiny, 10 steps, val loss {metrics['val_loss']:.4f}" in printed
    train_config = json.loads((out / "train_config.json").read_text())
    assert train_config["train"]["lr"] == 0.003 and train_config["train"]["seed"] == 2
    assert train_config["model"]["seed"] == 2
    assert load_model(out).cfg.d_model == ModelConfig.from_preset("tiny").d_model


def test_cli_unknown_preset_is_a_one_line_error(expr_dir, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["train-model", "--data", str(expr_dir), "--out", str(out), "--preset", "giant", "--steps", "3"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("formal-sae train-model: error: unknown model preset 'giant'")
    assert all(name in lines[0] for name in formal_sae.PRESETS)
    assert not out.exists()


def test_cli_resume_errors_are_one_line(expr_dir, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["train-model", "--data", str(expr_dir), "--out", str(out), "--preset", "tiny", "--resume"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "nothing to resume" in lines[0]


def test_same_seed_same_weights_with_several_threads(expr_ds):
    """With 2 threads the embedding's backward pass accumulates in a varying order: without
    deterministic kernels three runs of this size gave three different models."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        states = [
            model_state(train_model(expr_ds, "tiny", small_train(steps=60, batch_size=64), progress=False)) for _ in range(3)
        ]
    finally:
        torch.set_num_threads(threads)
    assert states_equal(states[0], states[1]) and states_equal(states[0], states[2])
    assert not torch.are_deterministic_algorithms_enabled()  # the setting is restored afterwards


# ---------------------------------------------------------------------------- the plateau rule
def test_plateau_rule_on_histories():
    from formal_sae.training import plateau

    def h(*losses):
        return [{"step": i, "val_loss": v} for i, v in enumerate(losses)]

    assert plateau(h(3.0, 2.0, 1.99, 1.995), 2, 0.01) == (True, 1.99)  # 1.99 and 1.995 are within 1% of 2.0
    assert plateau(h(3.0, 2.0, 1.99, 1.5), 2, 0.01) == (False, 1.5)  # the last one improves: the count restarts
    assert plateau(h(3.0, 2.0, 1.99), 2, 0.0)[0] is False  # min_delta 0: any decrease improves
    assert plateau(h(3.0, float("nan"), float("nan")), 2, 0.01)[0] is True  # NaN never improves
    assert plateau(h(3.0, 3.0, 3.0, 3.0), None, 0.01)[0] is False  # no rule: never
    assert plateau([], 1, 0.01) == (False, None)
    for value in (0, -1):
        with pytest.raises(ModelError, match="plateau_patience must be None or >= 1"):
            TrainConfig(plateau_patience=value)
    with pytest.raises(ModelError, match=r"plateau_min_delta must be in \[0, 1\)"):
        TrainConfig(plateau_patience=2, plateau_min_delta=1.0)


def test_without_the_plateau_rule_the_json_is_unchanged(run_a):
    assert "plateau_patience" not in TrainConfig().to_dict() and "plateau_min_delta" not in TrainConfig().to_dict()
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
    with_rule = TrainConfig(plateau_patience=3, plateau_min_delta=0.02)
    assert with_rule.to_dict()["plateau_patience"] == 3 and TrainConfig.from_dict(with_rule.to_dict()) == with_rule
    _, out = run_a
    metrics = json.loads((out / "metrics.json").read_text())
    assert "stopped_early" not in metrics and "best_val_loss" not in metrics


def flat_train(**overrides) -> TrainConfig:
    """A run whose loss cannot move (lr 1e-9): the plateau rule stops it after its third evaluation."""
    return small_train(**{"steps": 60, "lr": 1e-9, "eval_every": 5, "checkpoint_every": 5, "plateau_patience": 2, **overrides})


def test_plateau_rule_stops_a_flat_run_and_not_an_improving_one(expr_ds, tmp_path):
    flat = train_model(expr_ds, "tiny", flat_train(), out_dir=tmp_path / "flat", progress=False)
    m = flat.formal_sae_metrics
    assert [h["step"] for h in m.history] == [5, 10, 15]  # the first evaluation improves, the next two do not
    assert m.steps == 15 and m.stopped_early is True and m.best_val_loss == min(h["val_loss"] for h in m.history)
    saved = json.loads((tmp_path / "flat" / "metrics.json").read_text())
    assert saved["steps"] == 15 and saved["stopped_early"] is True and saved["best_val_loss"] == m.best_val_loss
    assert not (tmp_path / "flat" / "checkpoint").exists()
    improving = train_model(expr_ds, "tiny", small_train(plateau_patience=2, plateau_min_delta=0.001), progress=False)
    m = improving.formal_sae_metrics
    assert m.steps == 30 and m.stopped_early is False and [h["step"] for h in m.history] == [10, 20, 30]
    assert [h["val_loss"] for h in m.history] == sorted((h["val_loss"] for h in m.history), reverse=True)


def test_a_run_stopped_by_the_plateau_rule_resumes_to_the_same_stop(expr_ds, tmp_path):
    """Killed at step 12 (after the checkpoint of step 10), then resumed: the same stop, the same weights."""
    whole = train_model(expr_ds, "tiny", flat_train(), out_dir=tmp_path / "whole", progress=False)
    out = tmp_path / "killed"
    real_lr_at = training.lr_at

    def lr_at_then_interrupt(step, cfg):
        if step == 12:
            raise KeyboardInterrupt
        return real_lr_at(step, cfg)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "lr_at", lr_at_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            train_model(expr_ds, "tiny", flat_train(), out_dir=out, progress=False)
    state = json.loads((in_progress_path(out) / "checkpoint" / "state.json").read_text())
    assert state["step"] == 10
    resumed = train_model(expr_ds, "tiny", flat_train(), out_dir=out, resume=True, progress=False)
    assert states_equal(model_state(whole), model_state(resumed))
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    for key in ("steps", "stopped_early", "best_val_loss", "history", "validity", "val_loss"):
        assert a[key] == b[key], key
    assert b["steps"] == 15

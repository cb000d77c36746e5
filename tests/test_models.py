"""Model presets, construction (init, biases, tied embeddings), tokenizer, save/load and errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import formal_sae
from formal_sae import ModelConfig, ModelError, build_model, load_model, save_model
from formal_sae.models import PRESETS, model_grammar, model_state, resolve_device


@pytest.fixture(scope="module")
def dyck_tokenizer():
    return formal_sae.build_tokenizer(formal_sae.load_grammar("dyck2"))


@pytest.fixture(scope="module")
def expr_meta():
    ds = formal_sae.build_dataset("expr", n_train=5, n_validation=2, n_test=0, seed=0)
    return formal_sae.dataset_metadata(ds)


@pytest.fixture(scope="module")
def paper_model(dyck_tokenizer):
    return build_model(ModelConfig.from_preset("paper"), dyck_tokenizer)


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory, expr_meta):
    """A tiny expr model saved once; tests that break it work on a copy (:func:`copy_of`)."""
    tokenizer = formal_sae.build_tokenizer(formal_sae.grammar_of(expr_meta))
    model = build_model(ModelConfig.from_preset("tiny", seed=3), tokenizer, expr_meta)
    out = tmp_path_factory.mktemp("tiny-model")
    save_model(model, out)
    return model, out


def copy_of(directory: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(directory, dst)
    return dst


def sample_tokens(model, n_tokens: int = 12) -> torch.Tensor:
    """A fixed batch of token ids that covers the whole vocabulary."""
    vocab = model.cfg.d_vocab
    return torch.arange(2 * n_tokens).reshape(2, n_tokens) % vocab


# ---------------------------------------------------------------------------- presets and architecture
def test_paper_preset_matches_the_papers_architecture():
    cfg = ModelConfig.from_preset("paper")
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.n_ctx) == (2, 128, 2, 64, 512, 256)
    assert cfg.act_fn == "gelu" and cfg.biases is False and cfg.tie_embeddings is True
    assert cfg.initializer_range == 0.02


def test_paper_model_trainable_parameter_count_matches_hand_computation(paper_model, dyck_tokenizer):
    vocab = len(dyck_tokenizer)
    assert vocab == 4 + 10  # o0 o1 c0 c1, then <pad> <bos> <eos> <unk> and the 6 distinct paper-prompt tokens
    d, d_mlp, n_ctx, n_layers = 128, 512, 256, 2
    per_block = 4 * d * d + 2 * d * d_mlp + 2 * d  # Q K V O, W_in W_out, ln1.w ln2.w
    expected = n_layers * per_block + vocab * d + n_ctx * d + d  # + embedding (tied: no W_U) + positions + ln_final.w
    assert per_block == 196_864  # PAPER.md §3.1
    trainable = sum(p.numel() for p in paper_model.parameters() if p.requires_grad)
    assert trainable == expected


def test_biases_are_zero_and_frozen(paper_model):
    biases = {name: p for name, p in paper_model.named_parameters() if name.rsplit(".", 1)[-1].startswith("b")}
    expected_names = {
        f"blocks.{i}.{b}" for i in range(2) for b in ("ln1.b", "ln2.b", "attn.b_Q", "attn.b_K", "attn.b_V", "attn.b_O")
    }
    expected_names |= {f"blocks.{i}.mlp.{b}" for i in range(2) for b in ("b_in", "b_out")} | {"ln_final.b"}
    assert set(biases) == expected_names
    for name, p in biases.items():
        assert not p.requires_grad, name
        assert torch.count_nonzero(p) == 0, name
    assert torch.count_nonzero(paper_model.unembed.b_U) == 0
    # every other parameter (weights, LayerNorm gains) is trainable
    for name, p in paper_model.named_parameters():
        if name not in biases:
            assert p.requires_grad, name


def test_unembedding_is_tied_to_the_embedding(paper_model):
    assert torch.equal(paper_model.W_U, paper_model.embed.W_E.T)
    assert "unembed.W_U" not in paper_model.state_dict()  # stored once
    tokens = sample_tokens(paper_model)
    logits, cache = paper_model.run_with_cache(tokens)
    by_hand = cache["ln_final.hook_normalized"] @ paper_model.embed.W_E.T
    torch.testing.assert_close(logits, by_hand, rtol=1e-5, atol=1e-6)
    # the tie is live: changing W_E changes W_U
    with torch.no_grad():
        paper_model.embed.W_E[0, 0] += 1.0
        try:
            assert paper_model.W_U[0, 0] == paper_model.embed.W_E[0, 0]
        finally:
            paper_model.embed.W_E[0, 0] -= 1.0


def test_untied_embeddings_have_their_own_unembedding(tmp_path, dyck_tokenizer):
    model = build_model(ModelConfig.from_preset("tiny", tie_embeddings=False), dyck_tokenizer)
    assert model.unembed.W_U.requires_grad
    assert not torch.equal(model.W_U, model.embed.W_E.T)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    tokens = sample_tokens(model)
    assert torch.equal(model(tokens), loaded(tokens))


def test_output_projection_init_is_scaled_by_depth(paper_model):
    target_out = 0.02 / (2 * 2) ** 0.5  # 0.01 for two layers
    for block in paper_model.blocks:
        assert block.attn.W_O.std().item() == pytest.approx(target_out, rel=0.05)
        assert block.mlp.W_out.std().item() == pytest.approx(target_out, rel=0.05)
        for w in (block.attn.W_Q, block.attn.W_K, block.attn.W_V, block.mlp.W_in):
            assert w.std().item() == pytest.approx(0.02, rel=0.05)
            assert abs(w.mean().item()) < 0.002
    assert paper_model.pos_embed.W_pos.std().item() == pytest.approx(0.02, rel=0.05)
    assert paper_model.embed.W_E.std().item() == pytest.approx(0.02, rel=0.1)
    for ln in [paper_model.ln_final, *(b.ln1 for b in paper_model.blocks), *(b.ln2 for b in paper_model.blocks)]:
        assert torch.equal(ln.w, torch.ones_like(ln.w))


def test_output_projection_init_uses_the_config_depth(dyck_tokenizer):
    model = build_model(ModelConfig.from_preset("tiny", d_mlp=512), dyck_tokenizer)  # one layer: 0.02 / sqrt(2)
    assert model.blocks[0].mlp.W_out.std().item() == pytest.approx(0.02 / 2**0.5, rel=0.05)


def test_seed_controls_the_initialisation(dyck_tokenizer):
    a = model_state(build_model(ModelConfig.from_preset("tiny", seed=1), dyck_tokenizer))
    b = model_state(build_model(ModelConfig.from_preset("tiny", seed=1), dyck_tokenizer))
    c = model_state(build_model(ModelConfig.from_preset("tiny", seed=2), dyck_tokenizer))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["embed.W_E"], c["embed.W_E"])


def test_from_preset_overrides_and_rejects_unknown_fields():
    cfg = ModelConfig.from_preset("small", seed=7, n_ctx=64)
    assert (cfg.preset, cfg.seed, cfg.n_ctx, cfg.d_model) == ("small", 7, 64, 64)
    assert PRESETS["small"].seed == 0 and PRESETS["small"].n_ctx == 128  # the preset itself is unchanged
    with pytest.raises(ModelError, match=r"unknown ModelConfig field\(s\) \['width'\]"):
        ModelConfig.from_preset("small", width=3)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ModelError, match=r"unknown ModelConfig field\(s\) \['future_field'\]"):
        ModelConfig.from_dict(cfg.to_dict() | {"future_field": 1})


# ---------------------------------------------------------------------------- tokenizer
def test_model_carries_its_tokenizer(dyck_tokenizer):
    model = build_model(ModelConfig.from_preset("tiny"), dyck_tokenizer)
    vocab = dyck_tokenizer.get_vocab()
    tokens = model.to_tokens("o0 c0 o1 c1")
    assert tokens.tolist() == [[vocab["<bos>"], vocab["o0"], vocab["c0"], vocab["o1"], vocab["c1"]]]
    assert tokens[0, 0].item() == dyck_tokenizer.bos_token_id
    assert model.to_string(tokens[0, 1:]) == "o0 c0 o1 c1"
    assert model.to_str_tokens("o1 c1") == ["<bos>", "o1", "c1"]
    assert model.cfg.d_vocab == len(dyck_tokenizer) == 14


# ---------------------------------------------------------------------------- save / load
def test_save_load_round_trip(saved_tiny, expr_meta):
    model, out = saved_tiny
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer"}
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    loaded = load_model(out)
    tokens = sample_tokens(model)
    assert torch.equal(model(tokens), loaded(tokens))
    assert loaded.formal_sae_config == model.formal_sae_config
    assert loaded.formal_sae_data.grammar == "expr"
    assert loaded.formal_sae_data == expr_meta
    assert model_grammar(loaded).name == "expr"
    assert loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    assert loaded.to_tokens("bin0 dig1 dig2").tolist() == model.to_tokens("bin0 dig1 dig2").tolist()


def test_weights_file_is_plain_safetensors(saved_tiny):
    model, out = saved_tiny
    state = load_file(str(out / "model.safetensors"))
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith((".IGNORE", ".mask"))}
    assert set(state) == set(expected)
    for k, v in expected.items():
        assert torch.equal(state[k], v), k
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["preset"] == "tiny" and config["model"]["seed"] == 3
    assert config["d_vocab"] == model.cfg.d_vocab
    assert config["data"]["grammar"] == "expr"


def test_save_load_without_dataset_metadata(tmp_path, dyck_tokenizer):
    model = build_model(ModelConfig.from_preset("tiny"), dyck_tokenizer)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.formal_sae_data is None
    assert loaded.to_tokens("o1 c1").tolist() == [[5, 2, 3]]
    tokens = sample_tokens(model)
    assert torch.equal(model(tokens), loaded(tokens))
    with pytest.raises(ModelError, match="carries no formal-sae training metadata"):
        model_grammar(loaded)


# ---------------------------------------------------------------------------- errors
def test_unknown_preset_lists_the_presets():
    with pytest.raises(ModelError) as err:
        ModelConfig.from_preset("huge")
    msg = str(err.value)
    assert "unknown model preset 'huge'" in msg
    for name in PRESETS:
        assert name in msg


@pytest.mark.parametrize(
    ("device", "pattern"),
    [("gpu", r"unknown device 'gpu'"), ("cpux:0", r"unknown device 'cpux:0'"), ("meta", r"unsupported device 'meta'")],
)
def test_bad_device_strings(device, pattern, dyck_tokenizer):
    with pytest.raises(ModelError, match=pattern):
        resolve_device(device)
    with pytest.raises(ModelError, match=pattern):
        build_model(ModelConfig.from_preset("tiny"), dyck_tokenizer, device=device)


def test_valid_device_strings():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(None) == "cpu"
    assert resolve_device(torch.device("cpu")) == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_requested_without_cuda(saved_tiny, dyck_tokenizer):
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ModelError, match=rf"device '{device}' requested but CUDA is not available"):
            build_model(ModelConfig.from_preset("tiny"), dyck_tokenizer, device=device)
    with pytest.raises(ModelError, match="CUDA is not available"):
        load_model(saved_tiny[1], device="cuda")


def test_missing_model_directory(tmp_path):
    with pytest.raises(ModelError, match=r"model directory .*nowhere does not exist"):
        load_model(tmp_path / "nowhere")


def test_missing_config(saved_tiny, tmp_path):
    out = copy_of(saved_tiny[1], tmp_path)
    (out / "config.json").unlink()
    with pytest.raises(ModelError, match=rf"model config {re.escape(str(out / 'config.json'))} is missing"):
        load_model(out)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('{"model": {"n_layers": 1', "not valid JSON"),
        ("\xff\xfe garbage", "not valid JSON"),
        ('{"d_vocab": 29}', "is corrupt"),
        ('{"model": [1, 2], "data": null}', "is corrupt"),
        ("[]", "is corrupt"),
    ],
)
def test_corrupt_config(saved_tiny, tmp_path, text, pattern):
    out = copy_of(saved_tiny[1], tmp_path)
    (out / "config.json").write_text(text, encoding="latin-1")
    with pytest.raises(ModelError, match=pattern) as err:
        load_model(out)
    assert str(out / "config.json") in str(err.value)


def test_missing_weights(saved_tiny, tmp_path):
    out = copy_of(saved_tiny[1], tmp_path)
    (out / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=rf"weights file {re.escape(str(out / 'model.safetensors'))} is missing"):
        load_model(out)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_weights_name_the_file(saved_tiny, tmp_path, damage):
    out = copy_of(saved_tiny[1], tmp_path)
    path = out / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x07not a safetensors file" * 10, "empty": b""}[damage])
    with pytest.raises(ModelError, match="is corrupt") as err:
        load_model(out)
    assert str(path) in str(err.value)


def test_weights_that_do_not_match_the_config(saved_tiny, tmp_path):
    out = copy_of(saved_tiny[1], tmp_path)
    config = json.loads((out / "config.json").read_text())
    config["model"]["d_mlp"] = 32  # the weights have d_mlp 64
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="does not match the model config") as err:
        load_model(out)
    assert str(out / "model.safetensors") in str(err.value)


def test_weights_with_a_missing_tensor(saved_tiny, tmp_path):
    from safetensors.torch import save_file

    out = copy_of(saved_tiny[1], tmp_path)
    state = load_file(str(out / "model.safetensors"))
    del state["blocks.0.mlp.W_out"]
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(ModelError, match="different tensors or shapes"):
        load_model(out)


def test_saved_weights_have_the_same_bytes_in_every_process(tmp_path):
    """safetensors writes its metadata in a hash map's order, which changes from process to
    process: with more than one key the same model gave different files. One key, one order."""
    import json
    import struct

    import formal_sae

    ds = formal_sae.build_dataset("expr", n_train=20, n_validation=2, n_test=0, seed=0)
    meta = formal_sae.dataset_metadata(ds)
    model = formal_sae.build_model(
        formal_sae.ModelConfig.from_preset("tiny"), formal_sae.build_tokenizer(formal_sae.grammar_of(meta)), meta
    )
    formal_sae.save_model(model, tmp_path / "m")
    raw = (tmp_path / "m" / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert json.loads(raw[8 : 8 + n])["__metadata__"] == {"format": "pt"}

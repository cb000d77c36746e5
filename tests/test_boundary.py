"""Validation at the boundary: inputs that used to give silently wrong answers are accepted,
refused or adjusted with a warning (grammar sentences, SAEs applied to another model, training
coefficients, rates and warm-ups)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

import formal_sae
from formal_sae.cli import build_parser, main
from formal_sae.errors import GrammarError, ModelError, SAEError
from formal_sae.interventions import Intervention, single_latent_effects
from formal_sae.interventions.predictability import effect_predictability
from formal_sae.reproduce import SCALES
from formal_sae.saes import check_sae_model, evaluate_sae, load_sae, train_sae
from formal_sae.saes.causal import CausalConfig
from formal_sae.saes.causal_metrics import held_out_pairs, interpolation_metrics
from formal_sae.saes.training import TRAIN_CONFIG_FILE, SAETrainConfig
from formal_sae.training import TrainConfig, lr_at

HOOK = "blocks.0.hook_resid_post"
SAE_WARM_UP = 50  # longer than the 20-step run below: shortened to 2


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained_sae(model, ds, tmp_path_factory):
    """A TopK SAE trained on ``model`` (20 steps, a warm-up of 50 asked for) and the warnings it raised."""
    out = tmp_path_factory.mktemp("boundary") / "sae"
    config = SAETrainConfig(
        architecture="topk", k=4, expansion_factor=2, hook_name=HOOK, training_tokens=20 * 128, batch_size_tokens=128
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sae = train_sae(model, ds, config, out_dir=out, lr_warm_up_steps=SAE_WARM_UP)
    return sae, out, [w for w in caught if issubclass(w.category, UserWarning) and "lr_warm_up_steps" in str(w.message)]


@pytest.fixture(scope="module")
def other_model(model):
    """A model of the same architecture, width and vocabulary as ``model``, with other weights."""
    return formal_sae.build_model(
        formal_sae.ModelConfig.from_preset("tiny", seed=1), model.tokenizer, model.formal_sae_data
    ).eval()


@pytest.fixture(scope="module")
def saved(model, other_model, ds, trained_sae, tmp_path_factory):
    """Directories of both models, the dataset and the SAE, for the CLI."""
    root = tmp_path_factory.mktemp("boundary-cli")
    formal_sae.save_model(model, root / "model")
    formal_sae.save_model(other_model, root / "other")
    formal_sae.save_dataset(ds, root / "data")
    return root, trained_sae[1]


# ---------------------------------------------------------------------------- grammar inputs
def test_grammar_methods_accept_a_whitespace_separated_string(ds):
    dyck = formal_sae.load_grammar("dyck2")
    assert dyck.is_grammatical("o1 c1") and dyck.chart_recognize("o1 c1")
    assert dyck.is_grammatical("  o0 o1\tc1\nc0 ") and not dyck.is_grammatical("o1 c0") and not dyck.is_grammatical("")
    tokens = ["o0", "o1", "c1", "c0", "o1", "c1"]
    assert dyck.parse(" ".join(tokens)) == dyck.parse(tokens) == dyck.parse(tuple(tokens)) is not None
    assert dyck.features(" ".join(tokens)) == dyck.features(tokens)
    expr = formal_sae.grammar_of(formal_sae.dataset_metadata(ds))
    row = ds["test"][0]  # the dataset's text column is a string
    assert expr.is_grammatical(row["text"]) and expr.parse(row["text"]) == expr.parse(row["text"].split())
    assert expr.features(row["text"]) == expr.features(row["text"].split())


def test_grammar_methods_refuse_other_types_naming_them():
    dyck = formal_sae.load_grammar("dyck2")
    methods = (dyck.is_grammatical, dyck.chart_recognize, dyck.parse, dyck.features)
    for bad, named in [
        (None, "NoneType"),
        (b"o1 c1", "bytes"),
        (np.array(["o1", "c1"]), "ndarray"),
        (iter(["o1", "c1"]), "list_iterator"),
        ([2, 3], "int"),  # token ids instead of tokens used to give False
        (("o1", 3), "int"),
    ]:
        for method in methods:
            with pytest.raises(GrammarError, match=rf"got {named}|of type {named}, not a string"):
                method(bad)
    # unknown tokens are part of the input space, not a type error: as before, ungrammatical
    assert not dyck.is_grammatical(["o1", "nope"]) and dyck.parse(["o1", "nope"]) is None
    assert not dyck.is_grammatical("o1 nope") and not dyck.chart_recognize(["o1", "c1", "c1"])


# ---------------------------------------------------------------------------- model fingerprint
def test_model_fingerprint_identifies_the_weights(model, other_model, identity_sae):
    fp = formal_sae.model_fingerprint(model)
    assert len(fp) == 64 and fp == formal_sae.model_fingerprint(model)
    assert fp != formal_sae.model_fingerprint(other_model)
    copy = formal_sae.build_model(model.formal_sae_config, model.tokenizer, model.formal_sae_data)
    copy.load_state_dict(model.state_dict())
    assert formal_sae.model_fingerprint(copy) == fp
    with torch.no_grad():
        copy.blocks[0].mlp.W_in[0, 0] += 1e-3
    assert formal_sae.model_fingerprint(copy) != fp
    model.add_sae(identity_sae(model.cfg.d_model, HOOK))  # a spliced SAE is not part of the model
    try:
        assert formal_sae.model_fingerprint(model) == fp
    finally:
        model.reset_saes()


def test_trained_sae_records_its_model_fingerprint(model, trained_sae):
    sae, out, _ = trained_sae
    fp = formal_sae.model_fingerprint(model)
    assert sae.cfg.metadata.model_fingerprint == fp
    assert json.loads((out / "cfg.json").read_text())["metadata"]["model_fingerprint"] == fp  # SAELens's own file
    assert load_sae(out).cfg.metadata.model_fingerprint == fp


ENTRY_POINTS = {
    "evaluate_sae": lambda m, s, d, **kw: evaluate_sae(m, s, d, validity=False, max_sentences=5, **kw),
    "analyze": lambda m, s, d, **kw: formal_sae.analyze(m, s, d, max_sentences=5, **kw),
    "causal_report": lambda m, s, d, **kw: formal_sae.causal_report(m, s, d, max_sentences=5, **kw),
    "single_latent_effects": lambda m, s, d, **kw: single_latent_effects(m, s, d, max_sentences=5, **kw),
    "next_token_effects": lambda m, s, d, **kw: formal_sae.next_token_effects(
        m, s, d, Intervention("ablate", [0]), max_sentences=5, **kw
    ),
    "compare_generations": lambda m, s, d, **kw: formal_sae.compare_generations(
        m, s, Intervention("ablate", [0]), d, n_samples=2, max_new_tokens=8, **kw
    ),
    "compare_saes": lambda m, s, d, **kw: formal_sae.compare_saes(m, d, [s], n_samples=2, repeats=1, max_sentences=5, **kw),
    "held_out_causal_loss": lambda m, s, d, **kw: formal_sae.held_out_causal_loss(m, s, d, max_sentences=5, **kw),
    "interpolation_metrics": lambda m, s, d, **kw: interpolation_metrics(
        m, s, d, held_out_pairs(m, d, n_pairs=4, max_sentences=5), **kw
    ),
    "effect_predictability": lambda m, s, d, **kw: effect_predictability(m, s, d, {"f": 0}, max_sentences=5, **kw),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_an_sae_of_another_model_is_refused(entry, other_model, trained_sae, ds):
    sae = trained_sae[0]
    with pytest.raises(SAEError, match=r"was trained on model formal-sae/expr-tiny \(fingerprint [0-9a-f]{12}\.\.\.\), not this"):
        ENTRY_POINTS[entry](other_model, sae, ds)


def test_allow_other_model_lets_a_deliberate_transfer_through(model, other_model, trained_sae, ds, identity_sae):
    sae = trained_sae[0]
    with pytest.raises(SAEError, match=r"pass allow_other_model=True \(--allow-other-model\) if this is deliberate"):
        check_sae_model(other_model, sae)
    check_sae_model(other_model, sae, allow_other_model=True)
    check_sae_model(model, sae)  # its own model
    check_sae_model(other_model, identity_sae(other_model.cfg.d_model, HOOK))  # no fingerprint: trained elsewhere
    for entry in ("evaluate_sae", "held_out_causal_loss", "next_token_effects", "analyze"):
        assert ENTRY_POINTS[entry](other_model, sae, ds, allow_other_model=True) is not None
    assert ENTRY_POINTS["evaluate_sae"](model, sae, ds)["n_tokens"] > 0  # the sweep's case: same model, no flag


def test_cli_refuses_an_sae_of_another_model_in_one_line(saved, tmp_path, capsys):
    root, sae_dir = saved
    args = ["analyze", "--sae", str(sae_dir), "--data", str(root / "data"), "--max-sentences", "5"]
    assert main([*args, "--model", str(root / "other"), "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("formal-sae analyze: error: SAE blocks.0.hook_resid_post was trained on model formal-sae/expr-tiny")
    assert "--allow-other-model" in err
    assert not (tmp_path / "refused" / "report.json").exists()
    assert main([*args, "--model", str(root / "other"), "--out", str(tmp_path / "deliberate"), "--allow-other-model"]) == 0
    assert (tmp_path / "deliberate" / "report.json").is_file()
    assert main([*args, "--model", str(root / "model"), "--out", str(tmp_path / "own")]) == 0
    latent = ["--latent", "0", "--n-samples", "2", "--max-sentences", "5"]
    argv = ["intervene", "--model", str(root / "other"), "--sae", str(sae_dir), "--data", str(root / "data"), *latent]
    assert main([*argv, "--out", str(tmp_path / "intervene")]) == 2
    assert "was trained on model" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["analyze", "intervene", "compare-saes", "train-sae"])
def test_cli_commands_that_apply_an_sae_take_allow_other_model(command):
    required = {
        "analyze": ["--model", "m", "--sae", "s", "--data", "d", "--out", "o"],
        "intervene": ["--model", "m", "--sae", "s", "--data", "d", "--out", "o", "--report"],
        "compare-saes": ["s", "--model", "m", "--data", "d", "--out", "o"],
        "train-sae": ["--model", "m", "--data", "d", "--out", "o"],
    }[command]
    parser = build_parser()
    assert parser.parse_args([command, *required, "--allow-other-model"]).allow_other_model is True
    assert parser.parse_args([command, *required]).allow_other_model is False


# ---------------------------------------------------------------------------- coefficients and rates
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"architecture": "standard", "l1_coefficient": -1.0}, r"l1_coefficient must be > 0, got -1\.0"),
        ({"architecture": "paper", "l1_coefficient": 0.0}, r"l1_coefficient must be > 0, got 0\.0"),
        ({"architecture": "standard", "l1_coefficient": math.nan}, r"l1_coefficient must be > 0, got nan"),
        ({"architecture": "jumprelu", "l0_coefficient": 0}, r"l0_coefficient must be > 0, got 0"),
        ({"architecture": "topk", "k": 4, "lr": 0.0}, r"lr must be > 0, got 0\.0"),
        ({"architecture": "topk", "k": 4, "lr": -1e-3}, r"lr must be > 0, got -0\.001"),
        ({"architecture": "topk", "k": 2.5}, r"k=2\.5 must be between 1 and the dictionary size d_sae"),
        ({"architecture": "topk", "k": -3}, r"k=-3 must be between 1 and the dictionary size d_sae"),
        ({"architecture": "topk", "k": 4, "batch_size_tokens": 0}, r"batch_size_tokens must be >= 1 \(an integer\), got 0"),
        ({"architecture": "topk", "k": 4, "training_tokens": -5}, r"training_tokens must be >= 1 \(an integer\), got -5"),
        ({"architecture": "topk", "k": 4, "lr_warm_up_steps": -1}, r"lr_warm_up_steps must be >= 0 \(an integer\), got -1"),
        ({"architecture": "topk", "k": 4, "adam_beta1": 1.0}, r"adam_beta1 must be in \[0, 1\), got 1\.0"),
    ],
)
def test_sae_config_refuses_bad_coefficients_and_rates(settings, message):
    with pytest.raises(SAEError, match=message):
        SAETrainConfig(**settings).validate()


def test_k_must_fit_the_dictionary():
    with pytest.raises(SAEError, match=r"k=65 must be between 1 and the dictionary size d_sae=64"):
        formal_sae.saes.build_training_sae(SAETrainConfig(architecture="topk", k=65, expansion_factor=2), 32)
    with pytest.raises(SAEError, match=r"k=True must be between 1"):
        SAETrainConfig(architecture="topk", k=True).validate()


def test_cli_train_sae_refuses_a_negative_l1(saved, tmp_path, capsys):
    root, _ = saved
    argv = ["train-sae", "--model", str(root / "model"), "--data", str(root / "data"), "--out", str(tmp_path / "anti")]
    assert main([*argv, "--architecture", "standard", "--l1-coefficient", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("formal-sae train-sae: error: ") and "\n" not in err
    assert "l1_coefficient must be > 0, got -1.0" in err
    assert not (tmp_path / "anti" / "cfg.json").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"finetune_lr": 0.0}, r"finetune_lr must be > 0, got 0\.0"),
        ({"finetune_lr": -1e-4}, r"finetune_lr must be > 0, got -0\.0001"),
        ({"finetune_lr": math.nan}, r"finetune_lr must be > 0, got nan"),
        ({"coefficient": math.nan}, r"causal coefficient must be >= 0, got nan"),
        ({"steps": 2.5}, r"causal steps must be >= 0 \(an integer\), got 2\.5"),
    ],
)
def test_causal_config_refuses_bad_rates(settings, message):
    with pytest.raises(SAEError, match=message):
        CausalConfig(**settings).validate()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lr": math.nan}, r"lr must be > 0, got nan"),
        ({"grad_clip": 0.0}, r"grad_clip must be > 0, got 0\.0"),
        ({"min_lr_ratio": 2.0}, r"min_lr_ratio must be in \[0, 1\]"),
        ({"weight_decay": -0.1}, r"weight_decay must be >= 0, got -0\.1"),
        ({"beta2": 1.0}, r"beta2 must be in \[0, 1\), got 1\.0"),
        ({"warmup_steps": -1}, r"warmup_steps must be >= 0, got -1"),
        ({"val_sentences": 0}, r"val_sentences must be >= 1, got 0"),
    ],
)
def test_lm_train_config_refuses_bad_rates(settings, message):
    with pytest.raises(ModelError, match=message):
        TrainConfig(**settings).validate()


# ---------------------------------------------------------------------------- warm-up longer than the run
def test_lm_warmup_longer_than_the_run_is_shortened_with_a_warning(ds, tmp_path):
    with pytest.warns(UserWarning, match=r"warmup_steps=200 is not shorter than the run \(steps=50\).*using warmup_steps=5"):
        cfg = TrainConfig(steps=50, warmup_steps=200)  # validated when built
    assert cfg.warmup_steps == 5
    assert max(lr_at(step, cfg) for step in range(cfg.steps)) == pytest.approx(cfg.lr)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        cfg.validate()  # adjusted once: validating again (e.g. on resume) changes nothing
        TrainConfig(steps=50, warmup_steps=49).validate()
    with pytest.warns(UserWarning, match=r"warmup_steps=200 .* using warmup_steps=0"):
        train = TrainConfig(steps=4, batch_size=16, eval_every=4, val_sentences=8, validity_samples=4, final_validity_repeats=1)
    formal_sae.train_model(ds, "tiny", train, out_dir=tmp_path / "model", progress=False)
    assert json.loads((tmp_path / "model" / "train_config.json").read_text())["train"]["warmup_steps"] == 0  # what ran


def test_sae_warmup_longer_than_the_run_is_shortened_with_a_warning(trained_sae):
    _, out, caught = trained_sae
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert f"lr_warm_up_steps={SAE_WARM_UP} is not shorter than the run (20 steps" in str(caught[0].message)
    assert "using lr_warm_up_steps=2" in str(caught[0].message)
    assert json.loads((out / TRAIN_CONFIG_FILE).read_text())["lr_warm_up_steps"] == 2  # the saved config is what ran
    with pytest.warns(UserWarning, match=r"lr_warm_up_steps=4 .* using lr_warm_up_steps=0"):
        cfg = SAETrainConfig(training_tokens=512, batch_size_tokens=128, lr_warm_up_steps=4)  # validated when built
    assert cfg.lr_warm_up_steps == 0


def test_the_reproduction_scales_need_no_adjustment():
    """Guard: every scale's own settings validate silently (reproduce.py shortens its warm-up itself)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for scale in SCALES.values():
            for steps in scale.model_steps.values():
                TrainConfig(steps=steps, lr=scale.model_lr, warmup_steps=min(200, steps // 10)).validate()
            for cell in scale.grid(64).cells:
                cell.config.validate()
            scale.causal_base.validate()
            scale.causal.validate()

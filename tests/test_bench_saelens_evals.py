"""SAELens's own ``run_evals``, given formal-sae's sentences through ``saelens_eval``, reports the
explained variance and CE-loss score that ``formal_sae.evaluate_sae`` reports, on the same tokens."""

from __future__ import annotations

import pytest

import formal_sae
from formal_sae import FormalSAEError
from formal_sae.bench.saelens_evals import SAELensEval, saelens_eval, sentence_rows

HOOK = "blocks.0.hook_resid_post"
N_SENT = 30  # every test sentence of the tiny dataset
#: Both evaluations score the same tokens with the same formulas; what is left is float32 noise
#: from other batch shapes and summation orders (measured: at most 4e-6).
TOL = 1e-4


@pytest.fixture(scope="module")
def topk_sae(model, ds):
    """A briefly trained TopK SAE (poor, so that no score sits at a bound where errors hide)."""
    config = formal_sae.SAETrainConfig(architecture="topk", k=4, expansion_factor=2, training_tokens=2048, batch_size_tokens=256)
    return formal_sae.train_sae(model, ds, config)


def assert_agree(result: SAELensEval, metrics) -> None:
    assert result.n_tokens == metrics.n_tokens
    assert result.explained_variance == pytest.approx(metrics.explained_variance, abs=TOL)
    assert result.ce_loss_score == pytest.approx(metrics.ce_loss_score, abs=TOL)
    assert result.metrics["kl_div_score"] == pytest.approx(metrics.kl_div_score, abs=TOL)
    assert result.metrics["l0"] == pytest.approx(metrics.l0, abs=TOL)
    assert result.metrics["mse"] == pytest.approx(metrics.mse, rel=TOL)
    assert result.metrics["ce_loss_without_sae"] == pytest.approx(metrics.ce_loss_clean, abs=TOL)


def test_identity_sae_explains_everything_in_both(model, ds, identity_sae):
    sae = identity_sae(model.cfg.d_model, HOOK)
    result = saelens_eval(model, sae, ds, max_sentences=N_SENT)
    metrics = formal_sae.evaluate_sae(model, sae, ds, validity=False, max_sentences=N_SENT)
    assert result.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert metrics.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert result.ce_loss_score == pytest.approx(1.0, abs=1e-6)
    assert_agree(result, metrics)
    assert result.n_tokens == sum(ds["test"]["length"][:N_SENT])  # sentence tokens only, each once


@pytest.mark.parametrize("batch_size", [128, 8])  # one batch; 4 batches of 8 with 2 all-<pad> filler rows
def test_trained_sae_agrees_with_evaluate_sae(model, ds, topk_sae, batch_size):
    result = saelens_eval(model, topk_sae, ds, max_sentences=N_SENT, batch_size=batch_size)
    metrics = formal_sae.evaluate_sae(model, topk_sae, ds, validity=False, max_sentences=N_SENT)
    assert_agree(result, metrics)
    assert result.explained_variance < 0.99  # a real test: the SAE is far from exact
    s = result.settings
    assert (s["tokens_column"], s["prepend_bos"], s["disable_concat_sequences"]) == ("tokens", False, True)
    assert s["batch_size_prompts"] * s["n_batches"] == N_SENT + s["filler_rows"]
    assert s["filler_rows"] == (2 if batch_size == 8 else 0)


def test_fewer_sentences_than_the_split(model, ds, topk_sae):
    result = saelens_eval(model, topk_sae, ds, max_sentences=11, batch_size=4)
    metrics = formal_sae.evaluate_sae(model, topk_sae, ds, validity=False, max_sentences=11)
    assert_agree(result, metrics)


def test_paper_prompt_tokens_are_excluded():
    """The paper's 7-token prompt is not among the tokenizer's special-token attributes, so
    SAELens's default exclusion would score it; the explicit exclusion list leaves it out."""
    ds = formal_sae.build_dataset("expr", n_train=200, n_validation=10, n_test=20, seed=1, prompt_format="paper")
    train = formal_sae.TrainConfig(steps=10, warmup_steps=1, eval_every=10, validity_samples=4, final_validity_repeats=1)
    model = formal_sae.train_model(ds, "tiny", train, progress=False)
    config = formal_sae.SAETrainConfig(architecture="topk", k=4, expansion_factor=2, training_tokens=1024, batch_size_tokens=256)
    sae = formal_sae.train_sae(model, ds, config)
    result = saelens_eval(model, sae, ds, max_sentences=20)
    metrics = formal_sae.evaluate_sae(model, sae, ds, validity=False, max_sentences=20)
    assert {"Task:", "Out:", "<bos>", "<pad>", "<eos>"} <= set(result.settings["exclude_special_tokens"])
    assert result.n_tokens == sum(ds["test"]["length"][:20])
    assert_agree(result, metrics)


def test_sentence_rows_pad_to_whole_batches():
    tokens, batch_size, n_batches = sentence_rows([[5, 1, 2], [5, 3], [5, 4, 4, 4]], pad_id=0, batch_size=2)
    assert (batch_size, n_batches) == (2, 2)
    assert tokens.tolist() == [[5, 1, 2, 0], [5, 3, 0, 0], [5, 4, 4, 4], [0, 0, 0, 0]]
    _, batch_size, n_batches = sentence_rows([[1]] * 10, pad_id=0, batch_size=4)
    assert (batch_size, n_batches) == (4, 3)  # 12 rows: 2 fillers, not 4 + 4 + 2 with a short batch


def test_refuses_bad_arguments(model, ds, topk_sae):
    with pytest.raises(FormalSAEError, match="no split"):
        saelens_eval(model, topk_sae, ds, split="nope")
    with pytest.raises(FormalSAEError, match="batch_size"):
        saelens_eval(model, topk_sae, ds, batch_size=0)
    with pytest.raises(FormalSAEError, match="max_sentences"):
        saelens_eval(model, topk_sae, ds, max_sentences=0)

"""Sentence-token activations: what ``iter_sentence_batches`` / ``collect_activations`` return,
checked against the model run directly on each row alone (no padding, no batching)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import formal_sae
from formal_sae import DatasetError, SAEError
from formal_sae.activations import collect_activations, hook_shape, hook_width, iter_sentence_batches, padded_batch

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def paper_prompt_setup():
    """A dataset with the paper's 7-token prompt and an (untrained) model for it."""
    ds = formal_sae.build_dataset("expr", n_train=40, n_validation=4, n_test=4, seed=1, prompt_format="paper")
    meta = formal_sae.dataset_metadata(ds)
    tokenizer = formal_sae.build_tokenizer(formal_sae.grammar_of(meta))
    return ds, formal_sae.build_model(formal_sae.ModelConfig.from_preset("tiny", seed=5), tokenizer, meta)


@torch.no_grad()
def direct_row_acts(model, split, hook: str) -> list[torch.Tensor]:
    """Per row: activations at its sentence positions, from running that row's input_ids alone."""
    prompt_len = formal_sae.dataset_metadata(split).prompt_length
    out = []
    for row in split:
        tokens = torch.tensor([row["input_ids"]])
        _, cache = model.run_with_cache(tokens, names_filter=hook)
        act = cache[hook][0].reshape(tokens.shape[1], -1)
        out.append(act[prompt_len : prompt_len + row["length"]])
    return out


# ---------------------------------------------------------------------------- iter_sentence_batches
@pytest.mark.parametrize("prompt", ["bos", "paper"])
def test_sentence_batches_hold_exactly_the_sentence_tokens_of_each_row(prompt, ds, model, paper_prompt_setup):
    if prompt == "paper":
        ds, model = paper_prompt_setup
    split = ds["test"] if prompt == "bos" else ds["train"]
    prompt_len = 1 if prompt == "bos" else 7
    terminals = set(model.tokenizer.convert_tokens_to_ids(list(formal_sae.grammar_of(formal_sae.dataset_metadata(ds)).terminals)))
    direct = direct_row_acts(model, split, HOOK)
    lengths = list(split["length"])
    seen = []
    # a small batch size: several batches, each with padding after its shorter rows
    for batch in iter_sentence_batches(model, split, HOOK, batch_size=8):
        assert batch.acts.shape == (len(batch.rows), model.cfg.d_model)
        assert int(batch.mask.sum()) == len(batch.acts)
        assert set(batch.tokens[batch.mask].tolist()) <= terminals  # no prompt, <eos> or <pad> token
        for i, r in enumerate(batch.batch_rows):  # the padded batch holds each row's input_ids
            ids = split[int(r)]["input_ids"]
            assert batch.tokens[i, : len(ids)].tolist() == ids
        for act, r, p in zip(batch.acts, batch.rows, batch.positions):
            r, p = int(r), int(p)
            assert prompt_len <= p < prompt_len + lengths[r]
            torch.testing.assert_close(act, direct[r][p - prompt_len], atol=1e-5, rtol=1e-5)
            seen.append((r, p))
    expected = [(r, prompt_len + j) for r, n in enumerate(lengths) for j in range(n)]
    assert len(seen) == sum(lengths) and sorted(seen) == expected  # every sentence token exactly once


def test_max_sentences_takes_the_first_rows(ds, model):
    rows = np.concatenate([b.rows for b in iter_sentence_batches(model, ds["test"], HOOK, batch_size=4, max_sentences=10)])
    assert sorted(set(rows.tolist())) == list(range(10))
    assert len(rows) == sum(list(ds["test"]["length"])[:10])


# ---------------------------------------------------------------------------- collect_activations
def test_an_explicit_order_runs_exactly_those_rows_in_that_order(ds, model):
    order = np.array([7, 2, 11, 0, 5])
    batches = list(iter_sentence_batches(model, ds["test"], HOOK, batch_size=2, order=order))
    assert [b.batch_rows.tolist() for b in batches] == [[7, 2], [11, 0], [5]]
    alone = {
        int(r): b.acts[b.rows == r]
        for b in iter_sentence_batches(model, ds["test"], HOOK, batch_size=1, order=order)
        for r in b.batch_rows
    }
    for b in batches:
        for r in b.batch_rows:
            torch.testing.assert_close(b.acts[b.rows == r], alone[int(r)])  # padding changes nothing


def test_padded_batch_by_hand():
    assert padded_batch([[5, 6, 7], [8], [9, 10]], pad_id=0).tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]


def test_collect_activations_returns_all_sentence_tokens_in_dataset_order(ds, model):
    acts = collect_activations(model, ds["validation"], HOOK, batch_size=8)
    expected = torch.cat(direct_row_acts(model, ds["validation"], HOOK))
    assert acts.shape == (sum(ds["validation"]["length"]), model.cfg.d_model)
    torch.testing.assert_close(acts, expected, atol=1e-5, rtol=1e-5)


def test_collect_activations_with_the_paper_prompt_skips_the_prompt(paper_prompt_setup):
    ds, model = paper_prompt_setup  # a 7-token prompt before every sentence, packed several to a row
    acts = collect_activations(model, ds["train"], HOOK, batch_size=8)
    torch.testing.assert_close(acts, torch.cat(direct_row_acts(model, ds["train"], HOOK)), atol=1e-5, rtol=1e-5)


def test_collect_activations_budget_is_a_prefix_of_the_split_not_its_shortest_sentences(ds, model):
    split = ds["train"]
    lengths = np.asarray(list(split["length"]))
    direct = torch.cat(direct_row_acts(model, split, HOOK))  # row by row, in dataset order
    # median length 1, mean > 5: a budget filled from a length-sorted pool (8 x 16 rows) would hold only 1-token sentences
    assert np.median(lengths) == 1 and lengths[: np.searchsorted(np.cumsum(lengths), 100) + 1].mean() > 2
    # a budget far below one pool, one ending inside a sentence, and one above the whole split
    for budget in (100, int(lengths[:150].sum()) + 1, int(lengths.sum()) + 50):
        acts = collect_activations(model, split, HOOK, max_tokens=budget, batch_size=8)
        assert len(acts) == min(budget, lengths.sum())
        torch.testing.assert_close(acts, direct[:budget], atol=1e-5, rtol=1e-5)


def test_cache_activations_reads_the_train_split_up_to_the_budget(ds, model):
    from formal_sae.saes.training import cache_activations

    acts = cache_activations(model, ds, HOOK, max_tokens=123)
    torch.testing.assert_close(acts, collect_activations(model, ds["train"], HOOK)[:123])


# ---------------------------------------------------------------------------- hooks
@pytest.mark.parametrize(
    ("hook", "shape"),
    [
        ("hook_embed", (32,)),
        ("blocks.0.mlp.hook_post", (64,)),
        ("blocks.0.attn.hook_z", (2, 16)),
        ("blocks.0.ln1.hook_scale", (1,)),
    ],
)
def test_hook_shape_and_width_match_the_cache(model, hook, shape):
    _, cache = model.run_with_cache(torch.tensor([[0, 1, 2]]), names_filter=hook)
    assert tuple(cache[hook].shape[2:]) == shape == hook_shape(model, hook)
    assert hook_width(model, hook) == int(np.prod(shape))


def test_activations_at_another_hook_are_its_own(ds, model):
    acts = collect_activations(model, ds["validation"], "blocks.0.mlp.hook_post")
    expected = torch.cat(direct_row_acts(model, ds["validation"], "blocks.0.mlp.hook_post"))
    assert acts.shape[1] == model.cfg.d_mlp
    torch.testing.assert_close(acts, expected, atol=1e-5, rtol=1e-5)


def test_unknown_hook_is_an_error_that_lists_the_valid_hooks(ds, model):
    with pytest.raises(SAEError, match=r"no hook point 'blocks\.7\.hook_resid_post'.*blocks\.0\.hook_resid_post"):
        next(iter_sentence_batches(model, ds["test"], "blocks.7.hook_resid_post"))
    with pytest.raises(SAEError, match=r"valid hook names are:.*hook_embed"):
        hook_width(model, "resid0")


@pytest.mark.parametrize(
    ("hook", "message"),
    [("blocks.0.attn.hook_pattern", "one activation per token"), ("blocks.0.attn.hook_result", "never runs hook")],
)
def test_hooks_without_per_token_activations_are_refused(model, hook, message):
    with pytest.raises(SAEError, match=message):
        hook_width(model, hook)


def test_empty_split_is_a_dataset_error(ds, model):
    with pytest.raises(DatasetError, match="empty"):
        next(iter_sentence_batches(model, ds["test"].select([]), HOOK))

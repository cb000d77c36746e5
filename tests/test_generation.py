"""Sampling (determinism, stopping, full context, KV cache vs full recompute) and the validity measure."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

import formal_sae
from formal_sae import ModelConfig, ModelError, evaluate_validity, sample_sequences

FORCE_HOOK = "unembed.hook_out"  # the logits


@pytest.fixture(scope="module")
def expr_meta():
    return formal_sae.dataset_metadata(formal_sae.build_dataset("expr", n_train=5, n_validation=2, n_test=0, seed=0))


@pytest.fixture(scope="module")
def tokenizer(expr_meta):
    return formal_sae.build_tokenizer(formal_sae.grammar_of(expr_meta))


@pytest.fixture(scope="module")
def model(tokenizer, expr_meta):
    """An untrained tiny expr model (about uniform next-token distributions)."""
    return formal_sae.build_model(ModelConfig.from_preset("tiny", seed=0), tokenizer, expr_meta)


@pytest.fixture(scope="module")
def sharp_model(tokenizer, expr_meta):
    """Large initial weights: peaked, strongly context-dependent distributions and sharp attention."""
    return formal_sae.build_model(ModelConfig.from_preset("tiny", seed=1, initializer_range=0.3), tokenizer, expr_meta)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(text.split())


def forcing_hook(schedule):
    """A hook on the logits that makes step ``i`` of generation emit ``schedule(i)`` with certainty.

    ``schedule(i)`` returns one token id or a list of ids (then uniform among them). The sampling
    loop calls the model once per generated token, so a call counter gives the step.
    """
    calls = [0]

    def hook(logits, hook):
        allowed = schedule(calls[0])
        calls[0] += 1
        forced = torch.full_like(logits[:, -1], -1e9)
        forced[:, allowed] = 0.0
        logits = logits.clone()
        logits[:, -1] = forced
        return logits

    return hook


def force_sentence(token_ids: list[int]):
    """Emit ``token_ids`` then repeat the last one forever."""
    return forcing_hook(lambda i: token_ids[min(i, len(token_ids) - 1)])


# ---------------------------------------------------------------------------- sample_sequences
def test_same_seed_same_samples_other_seed_other_samples(model, tokenizer):
    prompt = [tokenizer.bos_token_id]
    a = sample_sequences(model, 12, prompt, max_new_tokens=20, seed=4)
    b = sample_sequences(model, 12, prompt, max_new_tokens=20, seed=4)
    c = sample_sequences(model, 12, prompt, max_new_tokens=20, seed=5)
    assert a == b
    assert a != c
    assert len(a) == 12 and all(all(0 <= t < len(tokenizer) for t in seq) for seq in a)


def test_samples_end_at_the_first_stop_token(model, tokenizer):
    eos, max_new = tokenizer.eos_token_id, 40
    samples = sample_sequences(model, 48, [tokenizer.bos_token_id], max_new_tokens=max_new, seed=0)
    ended = [s for s in samples if s and s[-1] == eos]
    assert ended and len(ended) < len(samples)  # both kinds occur with this seed
    for seq in samples:
        assert eos not in seq[:-1]
        assert seq[-1] == eos or len(seq) == max_new
        assert 1 <= len(seq) <= max_new
    stop = tokenizer.convert_tokens_to_ids("dig0")  # any token can be the stop token
    for seq in sample_sequences(model, 24, [tokenizer.bos_token_id], max_new_tokens=max_new, seed=1, stop_token=stop):
        assert stop not in seq[:-1]
        assert seq[-1] == stop or len(seq) == max_new


def test_generation_stops_early_once_every_sequence_has_ended(model, tokenizer):
    eos = tokenizer.eos_token_id
    hook = force_sentence([*ids(tokenizer, "bin0 dig1 dig2"), eos])
    samples = sample_sequences(model, 5, [tokenizer.bos_token_id], max_new_tokens=50, fwd_hooks=[(FORCE_HOOK, hook)])
    assert samples == [[*ids(tokenizer, "bin0 dig1 dig2"), eos]] * 5


def test_generation_fills_the_whole_context(model, tokenizer):
    n_ctx = model.cfg.n_ctx
    for prompt in ([tokenizer.bos_token_id], formal_sae.prompt_ids(tokenizer, "paper")):
        max_new = n_ctx - len(prompt)
        samples = sample_sequences(model, 3, prompt, max_new_tokens=max_new, stop_token=-1, seed=2)
        assert [len(s) for s in samples] == [max_new] * 3
    with pytest.raises(ModelError, match=rf"prompt \(1\) \+ max_new_tokens \({n_ctx}\) exceeds the model's context of {n_ctx}"):
        sample_sequences(model, 1, [tokenizer.bos_token_id], max_new_tokens=n_ctx)


def test_kv_cache_sampling_equals_full_recompute(sharp_model, tokenizer):
    """Tokens and logits of the cached loop equal a loop that recomputes the whole prefix each step."""
    model, n, steps, seed, temperature = sharp_model, 6, 20, 11, 0.8
    prompt = formal_sae.prompt_ids(tokenizer, "paper")
    seen: list[torch.Tensor] = []

    def record(logits, hook):
        seen.append(logits[:, -1].detach().clone())

    samples = sample_sequences(
        model,
        n,
        prompt,
        max_new_tokens=steps,
        temperature=temperature,
        seed=seed,
        stop_token=-1,
        fwd_hooks=[(FORCE_HOOK, record)],
    )
    # the reference: no cache, no attention mask, the same generator and the same calls
    gen = torch.Generator(device="cpu").manual_seed(seed)
    tokens = torch.tensor([prompt] * n)
    reference_logits = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(tokens)[:, -1].float()
            reference_logits.append(logits)
            nxt = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=gen)
            tokens = torch.cat([tokens, nxt], dim=1)
    assert samples == tokens[:, len(prompt) :].tolist()
    assert len(seen) == steps
    for cached, full in zip(seen, reference_logits):
        torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)
    assert len({tuple(s) for s in samples}) == n  # the distributions are not degenerate
    assert float(torch.stack(reference_logits).std()) > 1.0


def test_dropping_finished_sequences_changes_no_sample(model, tokenizer):
    """Compaction (finished rows leave the batch and the KV cache) gives the samples of a batch
    that keeps every row to the end, with the same seed."""
    prompt = [tokenizer.bos_token_id]
    for seed in range(3):
        compacted = sample_sequences(model, 40, prompt, max_new_tokens=30, seed=seed)
        full = sample_sequences(model, 40, prompt, max_new_tokens=30, seed=seed, compact=False)
        assert compacted == full
    lengths = {len(s) for s in compacted}
    assert min(lengths) < 30 and len(lengths) > 3  # rows really did finish at different steps


def test_hooks_see_the_batch_shrink_as_sequences_end(model, tokenizer):
    batch_sizes: list[int] = []

    def record(logits, hook):
        batch_sizes.append(logits.shape[0])

    samples = sample_sequences(model, 40, [tokenizer.bos_token_id], max_new_tokens=30, fwd_hooks=[(FORCE_HOOK, record)])
    ended = [sum(1 for s in samples if len(s) <= step and s[-1] == tokenizer.eos_token_id) for step in range(len(batch_sizes))]
    assert batch_sizes == [40 - e for e in ended]


def test_sampling_errors(model, tokenizer):
    prompt = [tokenizer.bos_token_id]
    with pytest.raises(ModelError, match="number of samples must be >= 1, got 0"):
        sample_sequences(model, 0, prompt, max_new_tokens=5)
    for temperature in (0.0, -1.0):
        with pytest.raises(ModelError, match="temperature must be > 0"):
            sample_sequences(model, 2, prompt, max_new_tokens=5, temperature=temperature)


# ---------------------------------------------------------------------------- evaluate_validity
def test_forced_grammatical_sentence_is_fully_valid(model, tokenizer):
    grammar = formal_sae.load_grammar("expr")
    sentence = "tern0 dig1 un2 dig3 bin1 dig4 dig5"
    assert grammar.is_grammatical(sentence.split())
    hook = force_sentence([*ids(tokenizer, sentence), tokenizer.eos_token_id])
    result = evaluate_validity(model, n_samples=6, repeats=3, seed=0, fwd_hooks=[(FORCE_HOOK, hook)])
    assert result.validity == 1.0
    assert result.validity_std == 0.0
    assert result.per_repeat == [1.0, 1.0, 1.0]
    assert result.failures == {}
    assert result.mean_length == 7.0
    assert result.mean_depth == grammar.parse(sentence.split()).height()
    assert (result.n_samples, result.repeats) == (6, 3)
    assert result.examples[0] == f"[valid] {sentence}"


@pytest.mark.parametrize(
    ("sentence", "reason", "length"),
    [
        ("bin0 dig1", "ungrammatical", 2),  # a binary operator with one operand
        ("", "ungrammatical", 0),  # the empty sentence
        ("dig1 <pad>", "special_token", 2),
        ("<bos> dig1", "special_token", 2),
    ],
)
def test_forced_invalid_sentences_are_counted_by_reason(model, tokenizer, sentence, reason, length):
    hook = force_sentence([*ids(tokenizer, sentence), tokenizer.eos_token_id])
    result = evaluate_validity(model, n_samples=5, repeats=2, seed=0, fwd_hooks=[(FORCE_HOOK, hook)])
    assert result.validity == 0.0 and result.validity_std == 0.0
    assert result.failures == {reason: 10}
    assert result.mean_length == length
    assert math.isnan(result.mean_depth)


def test_no_eos_within_the_budget(model, tokenizer):
    hook = force_sentence(ids(tokenizer, "dig1"))
    result = evaluate_validity(model, n_samples=4, repeats=2, max_new_tokens=9, fwd_hooks=[(FORCE_HOOK, hook)])
    assert result.validity == 0.0
    assert result.failures == {"no_eos": 8}
    assert math.isnan(result.mean_length) and math.isnan(result.mean_depth)


def test_validity_statistics_over_repeats(model, tokenizer):
    """First token dig1 (valid alone) or bin0 (invalid alone) at random, then <eos>."""
    eos, first = tokenizer.eos_token_id, ids(tokenizer, "dig1 bin0")
    n_samples, repeats, seed = 10, 5, 3

    def hooks():
        return [(FORCE_HOOK, forcing_hook(lambda i: first if i == 0 else eos))]

    result = evaluate_validity(model, n_samples=n_samples, repeats=repeats, seed=seed, fwd_hooks=hooks())
    samples = sample_sequences(model, n_samples * repeats, [tokenizer.bos_token_id], seed=seed, fwd_hooks=hooks())
    assert all(len(s) == 2 and s[0] in first and s[1] == eos for s in samples)
    valid = [s[0] == first[0] for s in samples]
    expected = [sum(valid[r * n_samples : (r + 1) * n_samples]) / n_samples for r in range(repeats)]
    assert len(result.per_repeat) == repeats
    assert result.per_repeat == pytest.approx(expected)
    assert len(set(expected)) > 1  # the repeats differ, so the std is a real check
    assert result.validity == pytest.approx(statistics.mean(expected))
    assert result.validity_std == pytest.approx(statistics.stdev(expected))  # unbiased (n - 1)
    assert result.failures == {"ungrammatical": valid.count(False)}
    assert result.mean_length == 1.0 and result.mean_depth == formal_sae.load_grammar("expr").parse(["dig1"]).height()
    single = evaluate_validity(model, n_samples=n_samples, repeats=1, seed=seed, fwd_hooks=hooks())
    assert single.validity_std == 0.0 and len(single.per_repeat) == 1


def test_validity_is_deterministic_in_the_seed(model):
    a = evaluate_validity(model, n_samples=8, repeats=2, max_new_tokens=20, seed=1)
    b = evaluate_validity(model, n_samples=8, repeats=2, max_new_tokens=20, seed=1)
    assert repr(a) == repr(b)  # (mean_depth may be NaN, which is not == itself)
    c = evaluate_validity(model, n_samples=8, repeats=2, max_new_tokens=20, seed=2)
    assert c.examples != a.examples
    assert sum(a.failures.values()) == 16 - round(a.validity * 16)


def test_validity_uses_the_prompt_format(model, tokenizer):
    """The paper prompt is 7 tokens: with it, a budget of n_ctx - 1 new tokens no longer fits."""
    n_ctx = model.cfg.n_ctx
    evaluate_validity(model, n_samples=1, repeats=1, max_new_tokens=n_ctx - 1, prompt_format="bos")
    with pytest.raises(ModelError, match=r"prompt \(7\)"):
        evaluate_validity(model, n_samples=1, repeats=1, max_new_tokens=n_ctx - 1, prompt_format="paper")


def test_validity_errors(model, tokenizer):
    with pytest.raises(ModelError, match="n_samples and repeats must be >= 1, got 0 and 5"):
        evaluate_validity(model, n_samples=0)
    with pytest.raises(ModelError, match="n_samples and repeats must be >= 1, got 4 and 0"):
        evaluate_validity(model, n_samples=4, repeats=0)
    with pytest.raises(ModelError, match="temperature must be > 0"):
        evaluate_validity(model, n_samples=2, repeats=1, temperature=0)
    bare = formal_sae.build_model(ModelConfig.from_preset("tiny"), tokenizer)  # no training metadata
    with pytest.raises(ModelError, match="no formal-sae training metadata"):
        evaluate_validity(bare, n_samples=2, repeats=1)
    ok = evaluate_validity(bare, formal_sae.load_grammar("expr"), n_samples=2, repeats=1, max_new_tokens=3)
    assert ok.n_samples == 2

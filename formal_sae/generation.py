"""Sampling from a model and the paper's validity measure (grammaticality of generations).

The paper's protocol: ancestral sampling at temperature 1 over the full vocabulary from the
prompt, up to 118 new tokens, cut at ``<eos>``; a sample is valid iff the grammar accepts it;
128 samples, 5 repeats, mean and (unbiased) std. formal-sae runs it in one batch with the
TransformerLens KV cache, stops as soon as every sequence has ended, and checks grammaticality
with the fast exact recognizer.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformer_lens import HookedTransformer, TransformerLensKeyValueCache

from formal_sae.data import prompt_ids, token_strings
from formal_sae.errors import ModelError
from formal_sae.grammars import Grammar
from formal_sae.models import model_grammar

#: The paper's generation budget: ``max_sample_length - 10`` new tokens.
PAPER_MAX_NEW_TOKENS = 118

FwdHook = tuple[str | Callable[[str], bool], Callable]


@contextlib.contextmanager
def spliced(model: HookedTransformer, fwd_hooks: Sequence[FwdHook] = (), saes: Sequence = (), use_error_term: bool | None = None):
    """Run the block with forward hooks added and SAEs spliced in (removed afterwards).

    ``use_error_term`` (SAELens): True adds the SAE's reconstruction error back, so only edits of
    its latents change the model; None keeps each SAE's own setting."""
    with contextlib.ExitStack() as stack:
        if saes:
            if not hasattr(model, "saes"):
                raise ModelError("splicing SAEs needs a sae_lens.HookedSAETransformer (formal-sae models are)")
            stack.enter_context(model.saes(saes=list(saes), use_error_term=use_error_term))
        if fwd_hooks:
            stack.enter_context(model.hooks(fwd_hooks=list(fwd_hooks)))
        yield model


@torch.no_grad()
def sample_sequences(
    model: HookedTransformer,
    n: int,
    prompt: Sequence[int],
    max_new_tokens: int = PAPER_MAX_NEW_TOKENS,
    temperature: float = 1.0,
    seed: int = 0,
    stop_token: int | None = None,
    fwd_hooks: Sequence[FwdHook] = (),
    saes: Sequence = (),
    use_error_term: bool | None = None,
    compact: bool = True,
) -> list[list[int]]:
    """Ancestral sampling of ``n`` continuations of ``prompt`` in one batch, with the KV cache.

    Returns the generated ids of each sequence (prompt excluded), cut after the first
    ``stop_token`` (default: the tokenizer's ``<eos>``), which is kept. Generation stops when
    every sequence has produced it or after ``max_new_tokens``. ``seed`` drives a private
    ``torch.Generator``: the same seed gives the same samples. With ``compact`` (the default)
    finished sequences leave the batch, so the long tail of a few unfinished sequences costs
    little; hooks then see a batch that shrinks. ``compact=False`` keeps every row to the end
    (for hooks that depend on the row); both give the same samples.
    """
    if n < 1:
        raise ModelError(f"number of samples must be >= 1, got {n}")
    if len(prompt) + max_new_tokens > model.cfg.n_ctx:
        raise ModelError(
            f"prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) exceeds the model's context of {model.cfg.n_ctx} tokens"
        )
    if temperature <= 0:
        raise ModelError(f"temperature must be > 0, got {temperature}")
    stop = model.tokenizer.eos_token_id if stop_token is None else stop_token
    device = model.cfg.device
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    tokens = torch.tensor([list(prompt)] * n, dtype=torch.long, device=device)
    out = torch.empty((n, max_new_tokens), dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    rows = torch.arange(n)  # the rows of ``out`` still in the batch
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, n)
    probs = torch.zeros(n, model.cfg.d_vocab)
    steps = 0
    with spliced(model, fwd_hooks, saes, use_error_term):
        for steps in range(1, max_new_tokens + 1):
            # An explicit all-ones mask: a sampled <pad> must not be masked out of later attention.
            logits = model(tokens, past_kv_cache=cache, attention_mask=torch.ones_like(tokens))[:, -1].float().cpu()
            # Rows that left the batch keep their last distribution and are sampled anyway (their
            # samples are cut off): multinomial draws the same random numbers for every row of a
            # full batch, so every row gets the same sample as without compaction.
            probs[rows] = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            out[:, steps - 1] = nxt
            done |= nxt == stop
            if bool(done.all()):
                break
            if compact and bool(done[rows].any()):
                keep = (~done[rows]).nonzero().squeeze(1)
                rows = rows[keep]
                _select_rows(cache, keep.to(device))
            tokens = nxt[rows].unsqueeze(1).to(device)
    result = []
    for row in out[:, :steps].tolist():
        cut = row.index(stop) + 1 if stop in row else len(row)
        result.append(row[:cut])
    return result


def _select_rows(cache: TransformerLensKeyValueCache, keep: torch.Tensor) -> None:
    """Keep only the batch rows ``keep`` of a TransformerLens key-value cache."""
    for entry in cache.entries:
        entry.past_keys = entry.past_keys[keep]
        entry.past_values = entry.past_values[keep]
    cache.previous_attention_mask = cache.previous_attention_mask[keep]


@dataclass
class ValidityResult:
    """Outcome of [`evaluate_validity`][formal_sae.evaluate_validity].

    Attributes:
        validity: Mean over repeats of the fraction of grammatical samples.
        validity_std: Unbiased standard deviation over repeats (0 for one repeat).
        per_repeat: Validity of each repeat.
        mean_length: Mean sentence length (tokens before ``<eos>``) of samples that ended.
        mean_depth: Mean parse-tree height of the grammatical samples (NaN if none).
        failures: Counts of invalid samples by reason: ``no_eos`` (no end-of-sentence within
            the budget), ``special_token`` (a non-grammar token before ``<eos>``),
            ``ungrammatical`` (grammar tokens the grammar rejects, including the empty sentence).
        n_samples: Samples per repeat; ``repeats``: number of repeats.
    """

    validity: float
    validity_std: float
    per_repeat: list[float]
    mean_length: float
    mean_depth: float
    failures: dict[str, int]
    n_samples: int
    repeats: int
    examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def classify_sample(
    ids: Sequence[int], id_to_token: Sequence[str], terminals: frozenset[str], eos: int, grammar: Grammar
) -> tuple[str, list[str]]:
    """Verdict on one generated sequence: ``"valid"`` or the failure reason, and its sentence tokens."""
    if not ids or ids[-1] != eos:
        return "no_eos", []
    tokens = [id_to_token[i] for i in ids[:-1]]
    if not terminals.issuperset(tokens):
        return "special_token", tokens
    return ("valid" if grammar.is_grammatical(tokens) else "ungrammatical"), tokens


def evaluate_validity(
    model: HookedTransformer,
    grammar: Grammar | None = None,
    n_samples: int = 128,
    repeats: int = 5,
    max_new_tokens: int = PAPER_MAX_NEW_TOKENS,
    temperature: float = 1.0,
    seed: int = 0,
    prompt_format: str | None = None,
    fwd_hooks: Sequence[FwdHook] = (),
    saes: Sequence = (),
    n_examples: int = 5,
) -> ValidityResult:
    """The paper's validity: the fraction of generations the grammar accepts (mean ± std over repeats).

    Args:
        model: A formal-sae model (or any HookedTransformer with the dataset's tokenizer).
        grammar: Defaults to the grammar the model was trained on.
        n_samples: Samples per repeat (paper: 128).
        repeats: Repeats (paper: 5); all ``n_samples * repeats`` samples run in one batch.
        max_new_tokens: Generation budget (paper: 118).
        temperature: Sampling temperature (paper: 1, over the full vocabulary).
        seed: Seeds the sampling.
        prompt_format: ``"bos"`` or ``"paper"``; defaults to the model's training prompt.
        fwd_hooks: TransformerLens forward hooks active during generation.
        saes: SAEs spliced in during generation (``HookedSAETransformer.saes``).
        n_examples: How many sample sentences to keep in the result.
    """
    if repeats < 1 or n_samples < 1:
        raise ModelError(f"n_samples and repeats must be >= 1, got {n_samples} and {repeats}")
    grammar = grammar if grammar is not None else model_grammar(model)
    data = getattr(model, "formal_sae_data", None)
    fmt = prompt_format or (data.prompt_format if data is not None else "bos")
    tok = model.tokenizer
    samples = sample_sequences(
        model, n_samples * repeats, prompt_ids(tok, fmt), max_new_tokens, temperature, seed, fwd_hooks=fwd_hooks, saes=saes
    )
    id_to_token = token_strings(tok)
    terminals = frozenset(grammar.terminals)
    verdicts, lengths, depths, examples = [], [], [], []
    depth_memo: dict[tuple[str, ...], int] = {}
    for ids in samples:
        verdict, tokens = classify_sample(ids, id_to_token, terminals, tok.eos_token_id, grammar)
        verdicts.append(verdict)
        if verdict != "no_eos":
            lengths.append(len(tokens))
        if verdict == "valid":
            key = tuple(tokens)
            if key not in depth_memo:
                depth_memo[key] = grammar.parse(tokens).height()
            depths.append(depth_memo[key])
        if len(examples) < n_examples:
            examples.append(f"[{verdict}] " + " ".join(tokens))
    valid = np.array([v == "valid" for v in verdicts], dtype=float).reshape(repeats, n_samples).mean(axis=1)
    return ValidityResult(
        validity=float(valid.mean()),
        validity_std=float(valid.std(ddof=1)) if repeats > 1 else 0.0,
        per_repeat=valid.tolist(),
        mean_length=float(np.mean(lengths)) if lengths else float("nan"),
        mean_depth=float(np.mean(depths)) if depths else float("nan"),
        failures={k: v for k, v in Counter(verdicts).items() if k != "valid"},
        n_samples=n_samples,
        repeats=repeats,
        examples=examples,
    )

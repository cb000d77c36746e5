"""Benchmark: model training throughput and the validity evaluation, against the paper's baselines.

Prints markdown tables of measured ratios, each against a baseline run in the same process:

1. training real tokens/s of train_model (random batches packed into rows) vs padding every sequence to 128 tokens
   (same model, batch size and optimiser; real tokens = non-padding targets);
2. ``evaluate_validity`` (batched, KV cache, early stop, fast recognizer) vs the reference
   protocol (no KV cache, always 118 steps, one repeat at a time, ``nltk.ViterbiParser``), on the
   same trained model and sample count;
3. ``--targets``: the quick-start preset trained for a fixed wall-clock budget (default 180 s)
   on each grammar, with the validity it reaches.

Usage: ``python benchmarks/bench_models.py [--quick] [--targets] [--budget 180]``
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import machine
from nltk import ViterbiParser

import formal_sae
from formal_sae.data import column
from formal_sae.generation import PAPER_MAX_NEW_TOKENS, classify_sample, evaluate_validity
from formal_sae.training import SentenceBatches, TrainConfig, backward_batch, make_optimizer, sequences_of


def padded_128_step(model, chunk: list[list[int]], pad_id: int) -> int:
    """The paper's batching: every sequence right-padded to 128 tokens, one plain forward."""
    tokens = torch.tensor([s + [pad_id] * (128 - len(s)) for s in chunk])
    labels = tokens[:, 1:].masked_fill(tokens[:, 1:] == pad_id, -100)
    logits = model(tokens, return_type="logits")[:, :-1]
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100).backward()
    return int((labels != -100).sum())


def training_throughput(grammar: str, preset: str, steps: int, batch_size: int = 128, rounds: int = 3) -> tuple[float, float]:
    """Real tokens/s of ``train_model``'s step (random batches, packed) and of the same batches
    padded to 128 tokens: the best of ``rounds`` alternating rounds of ``steps`` steps each, after
    one warm-up step (the machine is shared; the best round is the least disturbed)."""
    ds = formal_sae.build_dataset(grammar, n_train=batch_size * max(rounds * steps + 1, 64), n_validation=10, n_test=10, seed=0)
    tok = formal_sae.build_tokenizer(formal_sae.grammar_of(formal_sae.dataset_metadata(ds)))
    seqs = sequences_of(ds["train"])
    cfg = TrainConfig(steps=steps, batch_size=batch_size)
    batches = SentenceBatches(len(seqs), batch_size, 0)
    steppers = {
        "packed": lambda model, chunk: backward_batch(model, chunk, tok.pad_token_id, cfg)[1],
        "padded128": lambda model, chunk: padded_128_step(model, chunk, tok.pad_token_id),
    }
    runs = {}
    for mode in steppers:
        torch.manual_seed(0)
        model = formal_sae.build_model(formal_sae.ModelConfig.from_preset(preset), tok)
        runs[mode] = (model, make_optimizer(model, cfg))
    for mode, step_fn in steppers.items():
        timed_steps(step_fn, *runs[mode], [[seqs[i] for i in batches.batch(0)]])  # warm-up, discarded
    best = dict.fromkeys(steppers, 0.0)
    for round_ in range(rounds):
        for mode, step_fn in steppers.items():
            todo = [[seqs[i] for i in batches.batch(1 + round_ * steps + i)] for i in range(steps)]
            best[mode] = max(best[mode], timed_steps(step_fn, *runs[mode], todo))
    return best["packed"], best["padded128"]


def timed_steps(step_fn, model, opt, chunks: list[list[list[int]]]) -> float:
    """Real tokens/s of optimiser steps on ``chunks``, one batch each."""
    real, t0 = 0, time.perf_counter()
    for chunk in chunks:
        opt.zero_grad()
        real += step_fn(model, chunk)
        opt.step()
    return real / (time.perf_counter() - t0)


@torch.no_grad()
def reference_validity(model, grammar, n_samples: int, repeats: int, seed: int = 0) -> float:
    """The paper's protocol: recompute the whole prefix at every step, always 118 steps, ViterbiParser."""
    tok = model.tokenizer
    parser = ViterbiParser(grammar.pcfg, max_time=None)
    id_to_token = tok.convert_ids_to_tokens(list(range(len(tok))))
    gen = torch.Generator().manual_seed(seed)
    valid = []
    for _ in range(repeats):
        tokens = torch.tensor([formal_sae.prompt_ids(tok, "bos")] * n_samples)
        for _ in range(PAPER_MAX_NEW_TOKENS):
            probs = torch.softmax(model(tokens)[:, -1].float(), dim=-1)
            tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=gen)], dim=1)
        ok = 0
        for row in tokens[:, 1:].tolist():
            ids = row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row
            verdict, sentence = classify_sample(ids, id_to_token, frozenset(grammar.terminals), tok.eos_token_id, grammar)
            if verdict in ("valid", "ungrammatical"):  # the reference's own verdict: ViterbiParser
                ok += next(iter(parser.parse(sentence)), None) is not None if sentence else False
        valid.append(ok / n_samples)
    return sum(valid) / len(valid)


def validity_speed(
    grammar: str, preset: str, train_steps: int, n_samples: int, repeats: int
) -> tuple[float, float, float, float]:
    ds = formal_sae.build_dataset(grammar, n_train=20_000, n_validation=200, n_test=10, seed=0)
    model = formal_sae.train_model(
        ds, preset, TrainConfig(steps=train_steps, lr=3e-3, eval_every=train_steps, final_validity_repeats=1), progress=False
    )
    g = formal_sae.model_grammar(model)
    t0 = time.perf_counter()
    fast = evaluate_validity(model, g, n_samples=n_samples, repeats=repeats).validity
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = reference_validity(model, g, n_samples, repeats)
    t_ref = time.perf_counter() - t0
    return t_fast, t_ref, fast, ref


def quick_preset_target(grammar: str, budget_s: float, steps_per_s: float) -> dict:
    steps = int(budget_s * steps_per_s)
    ds = formal_sae.build_dataset(grammar, n_train=100_000, n_validation=1_000, n_test=10, seed=0)
    t0 = time.perf_counter()
    model = formal_sae.train_model(
        ds, "small", TrainConfig(steps=steps, lr=3e-3, eval_every=max(1, steps // 4), checkpoint_every=10**9), progress=False
    )
    m = model.formal_sae_metrics
    data_length = sum(column(ds["validation"], "length")) / len(ds["validation"])
    return {
        "steps": steps,
        "seconds": time.perf_counter() - t0,
        "validity": m["validity"],
        "std": m["validity_std"],
        "length": m["mean_length"],
        "data_length": data_length,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test of the script)")
    parser.add_argument("--targets", action="store_true", help="also train the quick preset for --budget seconds per grammar")
    parser.add_argument("--budget", type=float, default=180.0)
    parser.add_argument("--grammars", nargs="*", default=["dyck2", "expr", "english"])
    args = parser.parse_args()
    print(machine() + "\n")

    steps = 5 if args.quick else 20
    print(f"## Training throughput (real tokens/s, batch 128, best of 3 alternating rounds of {steps} steps)\n")
    print("| grammar | preset | packed (train_model) | padded to 128 | ratio |\n|---|---|---|---|---|")
    for g in args.grammars:
        for preset in ("small", "paper"):
            fast, slow = training_throughput(g, preset, steps)
            print(f"| {g} | {preset} | {fast:,.0f} | {slow:,.0f} | {fast / slow:.1f}x |", flush=True)

    n, reps, train_steps = (32, 1, 50) if args.quick else (128, 5, 600)
    print(f"\n## Validity evaluation ({n} samples x {reps} repeats, small preset trained {train_steps} steps)\n")
    print("| grammar | formal-sae (s) | reference (s) | speed-up | validity (formal-sae / reference) |\n|---|---|---|---|---|")
    for g in args.grammars:
        t_fast, t_ref, v_fast, v_ref = validity_speed(g, "small", train_steps, n, reps)
        print(f"| {g} | {t_fast:.2f} | {t_ref:.1f} | {t_ref / t_fast:.0f}x | {v_fast:.3f} / {v_ref:.3f} |", flush=True)

    if args.targets:
        print(f"\n## Quick-start preset within {args.budget:.0f} s of training\n")
        print(
            "| grammar | steps | seconds (incl. evaluation) | validity (5 x 128) | mean length: generated / data |\n|---|---|---|---|---|"
        )
        for g in args.grammars:
            fast, _ = training_throughput(g, "small", 10)
            ds = formal_sae.build_dataset(g, n_train=2000, n_validation=10, n_test=10, seed=0)
            mean_len = sum(len(s) for s in sequences_of(ds["train"])) / len(ds["train"])
            steps_per_s = 0.8 * fast / (128 * (mean_len - 1))  # keep ~20% of the budget for evaluation
            r = quick_preset_target(g, args.budget, steps_per_s)
            print(
                f"| {g} | {r['steps']} | {r['seconds']:.0f} | {r['validity']:.3f} ± {r['std']:.3f} | {r['length']:.1f} / {r['data_length']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

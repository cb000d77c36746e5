"""Benchmark: model training throughput and the validity evaluation, against the paper's baselines.

Prints markdown tables of measured ratios, each against a baseline run in the same process:

1. training real tokens/s of train_model (random batches in length-sorted micro-batches) vs padding every sequence to 128 tokens
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

import numpy as np
import torch
from common import machine
from nltk import ViterbiParser

import formal_sae
from formal_sae.data import column
from formal_sae.generation import PAPER_MAX_NEW_TOKENS, classify_sample, evaluate_validity
from formal_sae.training import (
    SentenceBatches,
    TrainConfig,
    backward_batch,
    make_optimizer,
    next_token_loss,
    pad_batch,
    sequences_of,
)


def training_throughput(grammar: str, preset: str, steps: int, batch_size: int = 128) -> tuple[float, float]:
    """Real tokens/s of ``train_model``'s step (random batches, length-sorted micro-batches) and of
    the same batches padded to 128 tokens."""
    ds = formal_sae.build_dataset(grammar, n_train=batch_size * max(steps, 64), n_validation=10, n_test=10, seed=0)
    tok = formal_sae.build_tokenizer(formal_sae.grammar_of(formal_sae.dataset_metadata(ds)))
    seqs = sequences_of(ds["train"])
    cfg = TrainConfig(steps=steps, batch_size=batch_size)
    results = []
    for mode in ("micro-batched", "padded128"):
        torch.manual_seed(0)
        model = formal_sae.build_model(formal_sae.ModelConfig.from_preset(preset), tok)
        opt = make_optimizer(model, cfg)
        batches = SentenceBatches(np.array([len(s) for s in seqs]), batch_size, 0)
        real, t0 = 0, time.perf_counter()
        for step in range(steps):
            chunk = [seqs[i] for i in batches.batch(step)]
            opt.zero_grad()
            if mode == "padded128":  # the paper: every sequence right-padded to 128 tokens
                tokens, labels = pad_batch([s + [tok.pad_token_id] * (128 - len(s)) for s in chunk], tok.pad_token_id, "cpu")
                labels[labels == tok.pad_token_id] = -100
                next_token_loss(model, tokens, labels).backward()
                real += int((labels != -100).sum())
            else:
                real += backward_batch(model, chunk, tok.pad_token_id, cfg)[1]
            opt.step()
        results.append(real / (time.perf_counter() - t0))
    return results[0], results[1]


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

    steps = 5 if args.quick else 40
    print("## Training throughput (real tokens/s, batch 128)\n")
    print("| grammar | preset | micro-batched (train_model) | padded to 128 | ratio |\n|---|---|---|---|---|")
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

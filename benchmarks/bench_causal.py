"""Benchmark: causal SAEs (PAPER.md §8) against a plain SAE with the same architecture and budget.

For each language a ``small`` model is trained (or loaded from ``--model-dir``), then two SAEs
are trained at the paper's causal-SAE architecture (TopK, k=16, expansion 2) with
``train_causal_sae`` and the *identical* schedule: ``--pretrain-steps`` plain SAELens steps, then
``--causal-steps`` steps of ``--sentences-per-step`` sentences with the causal term (s ~ U(0, 1),
MSE on logits). The only difference is beta: ``--coefficient`` for the causal SAE and 0 for the
plain one (the matched baseline: same data, batches, optimiser, learning rates and steps).

Both are measured on the same held-out sentences with ``compare_saes``: held-out causal loss
(fixed s in {0.25, 0.5, 0.75}), reconstruction (MSE per token summed over dimensions, explained
variance), L0, dead latents, CE-loss score, validity (``--n-samples`` x ``--repeats``, seed 0),
and ``linearity_error`` (on held-out token pairs drawn once, without either SAE: the distance
between the output at interpolated latents and the interpolation of the outputs, over the distance
between the endpoint outputs; see ``formal_sae.saes.causal_metrics``). Prints a markdown table
(stdout; progress goes to stderr).

Usage: ``python benchmarks/bench_causal.py [--grammars expr,english,dyck2] [--model-dir TEMPLATE]
[--quick]``. ``--model-dir`` is a path with ``{grammar}``: a model found there is reused, else one
is trained (``--lm-steps`` steps at lr ``--lm-lr``) and saved there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from common import fresh_dataset, log, machine, small_model

import formal_sae
from formal_sae import CausalConfig, SAETrainConfig
from formal_sae.comparison import compare_saes
from formal_sae.saes.causal import train_causal_sae


def run_grammar(grammar: str, args, workdir: Path) -> list[dict]:
    _, model, _ = small_model(
        grammar, args.lm_steps, n_train=50_000, lr=args.lm_lr, out_dir=args.model_dir.format(grammar=grammar)
    )
    ds = fresh_dataset(model, args.sae_sentences, args.eval_sentences)
    base_validity = formal_sae.evaluate_validity(model, n_samples=args.n_samples, repeats=args.repeats, seed=0)
    config = SAETrainConfig(architecture="topk", k=16, expansion_factor=2, batch_size_tokens=args.batch_size_tokens, seed=0)
    dirs, seconds = [], {}
    for name, beta in (("plain (beta 0)", 0.0), (f"causal (beta {args.coefficient:g})", args.coefficient)):
        causal = CausalConfig(
            coefficient=beta,
            pretrain_steps=args.pretrain_steps,
            steps=args.causal_steps,
            sentences_per_step=args.sentences_per_step,
        )
        out = workdir / grammar / ("causal" if beta else "plain")
        log(f"[{grammar}] training {name}: {args.pretrain_steps} pretrain + {args.causal_steps} causal steps ...")
        t0 = time.perf_counter()
        train_causal_sae(model, ds, config, causal, out_dir=out, progress=False)
        seconds[name] = time.perf_counter() - t0
        dirs.append((name, out))
    log(f"[{grammar}] comparing ...")
    comparison = compare_saes(
        model,
        ds,
        [d for _, d in dirs],
        names=[n for n, _ in dirs],
        n_samples=args.n_samples,
        repeats=args.repeats,
        max_sentences=args.eval_sentences,
    )
    rows = []
    for row in comparison.rows:
        row.update(grammar=grammar, train_seconds=seconds[row["name"]], base_validity=base_validity.validity)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| language | SAE | held-out causal loss | vs plain | MSE | explained var. | L0 | dead | CE score "
        "| validity (model alone) | linearity error | train s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    plain = {r["grammar"]: r for r in rows if r["name"].startswith("plain")}
    for r in rows:
        rel = r["causal_loss"] / plain[r["grammar"]]["causal_loss"] - 1
        lines.append(
            f"| {r['grammar']} | {r['name']} | {r['causal_loss']:.4g} | {rel:+.1%} | {r['mse']:.4g} "
            f"| {r['explained_variance']:.3f} | {r['l0']:.1f} | {r['dead_fraction']:.2f} | {r['ce_loss_score']:.3f} "
            f"| {r['validity']:.3f} ± {r['validity_std']:.3f} ({r['base_validity']:.3f}) "
            f"| {'–' if r['linearity_error'] is None else format(r['linearity_error'], '.3g')} | {r['train_seconds']:.0f} |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grammars", default="expr,english,dyck2")
    p.add_argument("--model-dir", default="/tmp/formal-sae-bench-causal/model-{grammar}", help="path template with {grammar}")
    p.add_argument("--lm-steps", type=int, default=2000)
    p.add_argument("--lm-lr", type=float, default=3e-3)
    p.add_argument("--coefficient", type=float, default=100.0, help="beta of the causal SAE")
    p.add_argument("--pretrain-steps", type=int, default=2000, help="plain SAE steps (batches of --batch-size-tokens tokens)")
    p.add_argument("--causal-steps", type=int, default=2000, help="steps of --sentences-per-step sentences")
    p.add_argument("--sentences-per-step", type=int, default=32)
    p.add_argument("--batch-size-tokens", type=int, default=1024)
    p.add_argument("--sae-sentences", type=int, default=50_000, help="train sentences for the SAEs")
    p.add_argument("--eval-sentences", type=int, default=500, help="held-out sentences for every metric")
    p.add_argument("--n-samples", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    p.add_argument("--workdir", default="/tmp/formal-sae-bench-causal/saes")
    p.add_argument("--quick", action="store_true", help="tiny budgets, to check the script runs")
    args = p.parse_args()
    if args.quick:
        args.lm_steps, args.pretrain_steps, args.causal_steps, args.sae_sentences = 100, 20, 20, 2000
        args.eval_sentences, args.n_samples, args.repeats = 100, 16, 1
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = []
    for grammar in args.grammars.split(","):
        rows += run_grammar(grammar, args, Path(args.workdir))
        print("\n".join(table(rows)), file=sys.stderr, flush=True)
    print(
        f"{machine()} Total {time.perf_counter() - t0:.0f} s.\n"
        f"SAEs: TopK k=16, expansion 2 at `blocks.0.hook_resid_post`; both {args.pretrain_steps} pretraining steps "
        f"x {args.batch_size_tokens} tokens (lr {SAETrainConfig().lr:g}), then {args.causal_steps} steps x {args.sentences_per_step} sentences "
        f"(lr {SAETrainConfig().lr / 10:g}: the default after pretraining, s ~ U(0,1), MSE on logits); plain: beta 0, causal: beta {args.coefficient:g}. "
        f"Metrics on {args.eval_sentences} held-out sentences; validity {args.n_samples} x {args.repeats}.\n"
    )
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()

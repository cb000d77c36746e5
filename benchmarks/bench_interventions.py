"""Benchmark: the effect of zero-ablating every SAE latent alone, batched vs one pass per latent.

``single_latent_effects`` runs the model once per batch of sentences, then reruns from the SAE's
hook onwards only the (latent, sequence) pairs where the latent fires, many pairs per forward
pass. The baseline, ``effects_loop_baseline``, is the obvious loop: for each latent, one full
forward pass of the split with an ablation hook. Both measure ``kl_active`` (mean KL of the
next-token distribution at the tokens where the latent fires) on the same sentences; the table
gives both times, their ratio and the largest absolute difference between the two results.

A small-preset model is trained here on each grammar (or pass ``--model``/``--data``), then a
TopK SAE of each size in ``--expansions`` at ``blocks.0.hook_resid_post``.

Usage: ``python benchmarks/bench_interventions.py [--quick] [--grammars expr dyck2] [--threads 1]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import machine, small_model

import formal_sae
from formal_sae.interventions import effects_loop_baseline, single_latent_effects


def bench(label: str, model, ds, expansions: list[int], k: int, sae_tokens: int, sentences: int, loop_latents: int | None):
    m = getattr(model, "formal_sae_metrics", {}) or {}
    print(
        f"\n{label}: val loss {m.get('val_loss', float('nan')):.3f}, validity {m.get('validity', float('nan')):.3f}",
        flush=True,
    )
    rows = []
    for expansion in expansions:
        sae = formal_sae.train_sae(
            model, ds, architecture="topk", k=k, expansion_factor=expansion, training_tokens=sae_tokens, batch_size_tokens=256
        )
        d = sae.cfg.d_sae
        t0 = time.perf_counter()
        fast = single_latent_effects(model, sae, ds, max_sentences=sentences)
        t_fast = time.perf_counter() - t0
        latents = list(range(d)) if loop_latents is None else list(range(min(d, loop_latents)))
        t0 = time.perf_counter()
        loop = effects_loop_baseline(model, sae, ds, latents, max_sentences=sentences)
        t_loop = (time.perf_counter() - t0) * d / len(latents)  # extrapolated to every latent if subsampled
        diff = float(np.abs(fast["kl_active"][latents] - loop).max())
        live = int((fast["n_active"] > 0).sum())
        rows.append((label, d, k, live, sentences, t_fast, t_loop, len(latents) < d, diff))
        print(f"  d_sae {d}: batched {t_fast:.2f} s, loop {t_loop:.1f} s, max |diff| {diff:.1e}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs (a smoke test of the script)")
    parser.add_argument("--grammars", nargs="*", default=["expr", "dyck2"])
    parser.add_argument("--model", help="a trained model directory (instead of training one per grammar)")
    parser.add_argument("--data", help="its dataset directory (with --model)")
    parser.add_argument("--steps", type=int, default=400, help="training steps of each small-preset model")
    parser.add_argument("--expansions", type=int, nargs="*", default=[2, 4, 8], help="SAE sizes: d_sae = 64 x expansion")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--sentences", type=int, default=200, help="test sentences both methods use")
    parser.add_argument("--loop-latents", type=int, help="time the loop on this many latents and extrapolate")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a small shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.expansions, args.sentences = 30, [1, 2], 20
    print(
        machine(),
        flush=True,
    )
    rows = []
    if args.model:
        if not args.data:
            parser.error("--model needs --data")
        model, ds = formal_sae.load_model(args.model), formal_sae.load_dataset_dir(args.data)
        rows += bench(args.model, model, ds, args.expansions, args.k, 50_000, args.sentences, args.loop_latents)
    else:
        for g in args.grammars:
            ds, model, seconds = small_model(g, args.steps, n_eval=args.sentences)
            print(f"trained small on {g}: {args.steps} steps in {seconds:.0f} s", flush=True)
            label = f"{g} (small, {args.steps} steps)"
            rows += bench(label, model, ds, args.expansions, args.k, 50_000, args.sentences, args.loop_latents)

    print(
        "\n| model | d_sae | k | live latents | sentences | batched (s) | loop, one pass per latent (s) | speed-up | max abs diff of kl_active |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, d, k, live, n, t_fast, t_loop, extrapolated, diff in rows:
        loop = f"{t_loop:.1f}" + (" (extrapolated)" if extrapolated else "")
        print(f"| {label} | {d} | {k} | {live} | {n} | {t_fast:.2f} | {loop} | {t_loop / t_fast:.0f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()

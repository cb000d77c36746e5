"""Causally regularised SAEs (the paper's interpolation loss): train one, train a plain SAE with
the same budget (the same run with the causal coefficient at 0), and compare them on held-out
causal loss, the linearity of the model along latent interpolations, reconstruction, feature
recovery and how predictable single-latent clamps are from natural data.

    python examples/06_causal_sae.py --out runs/examples/06       # makes a small model first
    python examples/06_causal_sae.py --model runs/examples/02/model --data runs/examples/02/data \\
        --coefficient 1.0 --steps 1000 --out runs/examples/06
    python examples/06_causal_sae.py --tiny --out /tmp/ex06          # seconds, for tests

Writes `OUT/sae-causal/` and `OUT/sae-plain/` (SAELens format), and `OUT/comparison/`
(comparison.json, comparison.md, comparison.png).
"""

from __future__ import annotations

import argparse

from common import dataset_and_model, example_parser, parse_example_args

import formal_sae
from formal_sae.interventions.predictability import effect_predictability


def _fmt(x) -> str:
    return "none" if x is None else f"{x:.4g}"


def parse_args() -> argparse.Namespace:
    p = example_parser(__doc__, "06")
    p.add_argument("--hook", default="blocks.0.hook_resid_post")
    p.add_argument("--k", type=int, default=16, help="TopK sparsity (paper: 16)")
    p.add_argument("--expansion-factor", type=int, default=2, help="(paper: 2)")
    p.add_argument("--coefficient", type=float, default=1.0, help="beta, the weight of the causal loss")
    p.add_argument("--distance", choices=["mse", "kl"], default="mse", help="distance between logits")
    p.add_argument("--pretrain-steps", type=int, default=200, help="plain SAELens training first (batches of 1024 tokens)")
    p.add_argument("--steps", type=int, default=300, help="steps with the causal term")
    p.add_argument("--sentences-per-step", type=int, default=32)
    p.add_argument("--max-sentences", type=int, default=200, help="test sentences for the comparison")
    args = parse_example_args(p)
    if args.tiny:
        args.k, args.pretrain_steps, args.steps, args.sentences_per_step, args.max_sentences = 4, 2, 6, 8, 20
    return args


def main() -> None:
    args = parse_args()
    ds, model = dataset_and_model(args)

    # --- 1. The base SAE: any SAELens architecture (or "paper"); here TopK as in the paper -----
    base = formal_sae.SAETrainConfig(
        architecture="topk",
        k=args.k,
        expansion_factor=args.expansion_factor,
        hook_name=args.hook,
        batch_size_tokens=128 if args.tiny else 1024,
        device=args.device,
    )

    # --- 2. Train with and without the causal term, at the same budget ------------------------
    # Phase 1: `pretrain_steps` of the plain objective with SAELens's SAETrainer. Phase 2: `steps`
    # with loss = SAE loss + beta * L_caus, where L_caus compares the model's logits after decoding
    # an interpolation between two tokens' latents with the interpolation of their logits.
    dirs = {}
    for name, coefficient in (("causal", args.coefficient), ("plain", 0.0)):
        causal = formal_sae.CausalConfig(
            coefficient=coefficient,  # 0: the same optimiser, data and steps, without the causal term
            distance=args.distance,
            step="random",  # s ~ U(0, 1) each step, as in the paper
            pretrain_steps=args.pretrain_steps,
            steps=args.steps,
            sentences_per_step=args.sentences_per_step,
        )
        dirs[name] = args.out / f"sae-{name}"
        sae = formal_sae.train_causal_sae(model, ds, base, causal, out_dir=dirs[name], progress=not args.tiny)
        # The result is a plain SAELens SAE of the base architecture (here a TopKSAE).
        held_out = formal_sae.held_out_causal_loss(model, sae, ds, distance=args.distance, max_sentences=args.max_sentences)
        print(
            f"{name}: {type(sae).__name__}, trained in {formal_sae.train_seconds(sae):.1f}s, held-out causal loss {held_out:.4g}"
        )

    # --- 3. Compare side by side --------------------------------------------------------------
    # Per SAE: evaluate_sae metrics, held-out causal loss, coverage / MCC from analyze, and the
    # linearity error along latent interpolations on held-out token pairs drawn once, without any
    # SAE, for both: ||g(interpolated latents) - interpolation of g|| / ||g(l_i) - g(l_j)||
    # (scale-free; 0 = the rest of the model is affine along the segment).
    comparison = formal_sae.compare_saes(
        model,
        ds,
        [dirs["causal"], dirs["plain"]],  # directories (or SAE objects); directories also give the causal settings
        names=["causal", "plain"],
        n_samples=8 if args.tiny else 128,
        repeats=1 if args.tiny else 3,
        max_sentences=args.max_sentences,
        n_pairs=100 if args.tiny else 1000,
    )
    print("\n" + comparison.to_markdown())
    causal_row, plain_row = comparison.rows
    for column in ("causal_loss", "linearity_error", "explained_variance"):
        print(f"{column}: causal {_fmt(causal_row[column])} vs plain {_fmt(plain_row[column])}")

    # --- 4. Are single-latent clamps predictable from natural data? -----------------------------
    # The same features in both SAEs, each matched to that SAE's best-correlated latent (by feature,
    # not by index). R^2 of the observed clamp shift of the next-token class distribution against the
    # shift predicted from tokens with similar natural latent values; None: the clamp does nothing.
    saes = {name: formal_sae.load_sae(d) for name, d in dirs.items()}
    reports = {name: formal_sae.analyze(model, sae, ds, max_sentences=args.max_sentences) for name, sae in saes.items()}
    features = sorted(reports["plain"].targets, key=lambda f: -abs(reports["plain"].targets[f]["pearson"] or 0))[:3]
    for name, sae in saes.items():
        latents = {f: reports[name].targets[f]["best_latent"] for f in features}
        found = effect_predictability(model, sae, ds, latents, max_sentences=args.max_sentences)
        print(f"{name}: " + ", ".join(f"{f} (latent {p.latent}) R^2 {_fmt(p.r2)}" for f, p in found.items()))
    out = comparison.save(args.out / "comparison")
    print(f"saved {out}")


if __name__ == "__main__":
    main()

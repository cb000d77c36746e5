"""Interventions on SAE latents: does a latent that *correlates* with a feature also *cause* the
model's behaviour? Ablate and clamp the best latent of a feature, measure the effect on
next-token predictions (by grammar class) and on generations, then rank every latent by
correlation and by causal effect.

    python examples/05_intervene.py --out runs/examples/05      # makes a model and an SAE first
    python examples/05_intervene.py --model runs/examples/02/model --data runs/examples/02/data \\
        --sae runs/examples/03/sae-topk --feature depth --out runs/examples/05
    python examples/05_intervene.py --tiny --out /tmp/ex05         # seconds, for tests

Writes `OUT/effects.json` (next-token and generation effects of each intervention) and
`OUT/causal/` (report.json, report.md, correlation_vs_effect.png).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from common import dataset_and_model, example_parser, parse_example_args, sae_to_study

import formal_sae


def parse_args() -> argparse.Namespace:
    p = example_parser(__doc__, "05", sae=True)
    p.add_argument("--feature", help="intervene on the best latent of this target (default: the best-correlated one)")
    p.add_argument("--n-samples", type=int, default=200, help="generations per condition")
    p.add_argument("--max-sentences", type=int, default=300, help="test sentences for teacher-forced effects")
    args = parse_example_args(p)
    if args.tiny:
        args.n_samples, args.max_sentences = 8, 30
    return args


def show_classes(effects: dict) -> None:
    """Mean next-token probability of each grammar class, clean vs intervened."""
    for name, clean, new in zip(effects["classes"], effects["class_prob_clean"], effects["class_prob_intervened"]):
        print(f"    P({name}) {clean:.3f} -> {new:.3f}")


def main() -> None:
    args = parse_args()
    ds, model = dataset_and_model(args)
    sae = sae_to_study(args, model, ds)

    # --- 1. Pick a latent: the best-correlated latent of a feature (example 04) -------------------
    analysis = formal_sae.analyze(model, sae, ds, max_sentences=args.max_sentences)
    if args.feature is None:
        args.feature = max(analysis.targets, key=lambda t: abs(analysis.targets[t]["pearson"] or 0))
    latent = analysis.targets[args.feature]["best_latent"]
    print(f"target {args.feature!r}: best latent {latent}, Pearson {analysis.targets[args.feature]['pearson']}")

    # --- 2. Interventions ----------------------------------------------------------------------
    # With the SAE spliced in *with its error term*, only the edit changes the model's output.
    interventions = {
        "ablate": formal_sae.Intervention("ablate", [latent]),  # set to 0
        "clamp_max": formal_sae.Intervention("clamp", [latent], value=1.0, relative=True),  # top of its observed range
    }
    # Other modes: Intervention("clamp", [j], value=3.0) (absolute), ("scale", [j], value=2.0),
    # ("keep_only", latents), ("steer", [j], value=5.0), ("patch", [j], source_tokens=tokens).
    results = {}
    for name, intervention in interventions.items():
        # Teacher forcing on test sentences: how do next-token predictions move?
        effects = formal_sae.next_token_effects(model, sae, ds, intervention, max_sentences=args.max_sentences)
        print(f"\n{name}: mean KL {effects['mean_kl']:.4f}, mean class TV {effects['mean_class_tv']:.4f}")
        show_classes(effects)
        if effects["group_by"]:  # e.g. by depth for Dyck: which contexts does the latent matter in?
            for group, g in list(effects["by_group"].items())[:4]:
                eos = effects["classes"].index("<eos>")
                print(
                    f"    {effects['group_by']}={group} ({g['n']} tokens): "
                    f"P(<eos>) {g['class_prob_clean'][eos]:.3f} -> {g['class_prob_intervened'][eos]:.3f}"
                )
        # Free generation from the prompt, clean vs intervened (same seeds): the paper's comparison.
        generations = formal_sae.compare_generations(model, sae, intervention, dataset=ds, n_samples=args.n_samples)
        v = generations["validity"]
        print(f"  generations: validity {v['clean']:.2f} -> {v['intervened']:.2f} (Fisher p={v['p_value']:.3g})")
        length = generations["length"]
        print(f"  length {length['clean']:.1f} -> {length['intervened']:.1f} (Cohen's d {length['cohens_d']:.2f})")
        results[name] = {"latent": latent, "target": args.feature, "next_token": effects, "generations": generations}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "effects.json").write_text(json.dumps(results, indent=2, default=float))

    # --- 3. Correlation vs causation, for every latent --------------------------------------------
    # Each latent is zero-ablated alone; its effect is compared with its correlation with features.
    # Flags: "correlated_not_causal" (the paper's central finding) and "causal_not_correlated".
    report = formal_sae.causal_report(model, sae, ds, analysis=analysis, max_sentences=args.max_sentences)
    print("\n" + report.to_markdown())
    flagged = [r["latent"] for r in report.latents if r["flag"] == "correlated_not_causal"]
    print(f"correlated but not causal: {flagged}")
    effects = np.array([r["effect"] for r in report.latents])
    print(f"most causal latents: {np.argsort(-effects)[:5].tolist()}")
    report.save(args.out / "causal")
    print(f"saved {args.out / 'effects.json'} and {args.out / 'causal'}")


if __name__ == "__main__":
    main()

"""Which SAE latents track which ground-truth features? Score every latent against every feature
of the grammar (correlations, detectors, probe alignment, absorption), print the markdown
report and save it with its figures.

    python examples/04_analyze_latents.py --out runs/examples/04      # makes a model and an SAE first
    python examples/04_analyze_latents.py --model runs/examples/02/model --data runs/examples/02/data \\
        --sae runs/examples/03/sae-topk --out runs/examples/04
    python examples/04_analyze_latents.py --tiny --out /tmp/ex04         # seconds, for tests

Writes `OUT/analysis/`: report.json, report.md, correlations.png, a depth heat map
(depth_latent<N>.png, for grammars with a depth feature) and top_activations.html.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import dataset_and_model, example_parser, parse_example_args, sae_to_study

import formal_sae


def parse_args() -> argparse.Namespace:
    p = example_parser(__doc__, "04", sae=True)
    p.add_argument("--features", nargs="*", help="features to analyse (default: all of the grammar's)")
    p.add_argument("--max-sentences", type=int, default=1000, help="sentences per split to analyse")
    args = parse_example_args(p)
    if args.tiny:
        args.max_sentences = 50
    return args


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"  # scores that do not apply (e.g. no binary target) are None


def main() -> None:
    args = parse_args()
    ds, model = dataset_and_model(args)
    sae = sae_to_study(args, model, ds)

    # --- 1. Analyse ---------------------------------------------------------------------------
    # Each feature becomes one or more targets: binary and ordinal features as they are, a
    # categorical one as one binary target per category ("bracket_type=type0"). The best latent of
    # a target and the threshold of its detector are chosen on the validation split and scored on
    # the test split, so the scores are not overfit.
    report = formal_sae.analyze(model, sae, ds, features=args.features, max_sentences=args.max_sentences)
    print(report.to_markdown())

    # --- 2. Use the numbers ---------------------------------------------------------------------
    s = report.summary
    print(f"coverage {fmt(s['coverage'])}, MCC {s['mcc']:.3f}, dead {s['dead_fraction']:.2f}, dense {s['dense_fraction']:.2f}")
    best = max(report.targets.items(), key=lambda item: abs(item[1]["pearson"] or 0))
    print(f"best-tracked target: {best[0]!r} by latent {best[1]['best_latent']} (Pearson {best[1]['pearson']:.3f})")
    # report.correlations is the full [d_sae, n_targets] Pearson matrix on the test split (NaN for
    # latents that never fire).
    for k, name in enumerate(report.target_names[:5]):
        column = np.nan_to_num(report.correlations[:, k])
        top = np.argsort(-np.abs(column))[:3]
        print(f"  {name:<28} top latents {top.tolist()} with Pearson {[round(float(column[j]), 3) for j in top]}")
    for a in report.absorption:  # e.g. Dyck: does the "opening bracket" latent skip outermost ones?
        print(f"absorption {a['parent']} vs {a['child']}: gap {fmt(a['gap'])}")

    # --- 3. Save the report and its figures ---------------------------------------------------
    out = report.save(args.out / "analysis")
    print(f"\nsaved {', '.join(sorted(p.name for p in out.iterdir()))} in {out}")


if __name__ == "__main__":
    main()

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
from pathlib import Path

import numpy as np
import torch

import formal_sae


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="a model directory (example 02); needs --data. Default: train a small one")
    p.add_argument("--data", type=Path, help="the model's dataset directory")
    p.add_argument("--sae", type=Path, help="an SAE directory (example 03). Default: train a TopK SAE here")
    p.add_argument("--grammar", default="dyck2", help="grammar of the model trained when --model is not given")
    p.add_argument("--features", nargs="*", help="features to analyse (default: all of the grammar's)")
    p.add_argument("--max-sentences", type=int, default=1000, help="sentences per split to analyse")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("runs/examples/04"))
    p.add_argument("--tiny", action="store_true", help="tiny model, data and SAE: finishes in seconds")
    args = p.parse_args()
    if args.model is not None and args.data is None:
        p.error("--model needs --data (the dataset the model was trained on)")
    if args.sae is not None and args.model is None:
        p.error("--sae needs --model and --data (the model and dataset it was trained on)")
    if args.tiny:
        torch.set_num_threads(1)  # tiny matrices: extra threads only add overhead
        args.max_sentences = 50
    return args


def dataset_and_model(args: argparse.Namespace):
    """The dataset and model to study: loaded from --data / --model, or made here (saved under OUT)."""
    if args.data is not None:
        ds = formal_sae.load_dataset_dir(args.data)
    else:
        n = 300 if args.tiny else 10_000
        ds = formal_sae.build_dataset(args.grammar, n_train=n, n_validation=n // 10, n_test=n // 10, seed=0)
        formal_sae.save_dataset(ds, args.out / "data", overwrite=True)
    if args.model is not None:
        return ds, formal_sae.load_model(args.model, device=args.device)
    train = formal_sae.TrainConfig(
        steps=30 if args.tiny else 1500,
        batch_size=32 if args.tiny else 64,
        eval_every=10**9,  # no evaluation during training: a final validity check only
        validity_samples=8 if args.tiny else 64,
        final_validity_repeats=1,
        device=args.device,
    )
    preset = "tiny" if args.tiny else "small"
    model = formal_sae.train_model(ds, preset, train, out_dir=args.out / "model", progress=not args.tiny)
    print(f"trained a model: validity {model.formal_sae_metrics['validity']:.2f}")
    return ds, model


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"  # scores that do not apply (e.g. no binary target) are None


def main() -> None:
    args = parse_args()
    ds, model = dataset_and_model(args)
    if args.sae is not None:
        sae = formal_sae.load_sae(args.sae, device=args.device)  # = sae_lens.SAE.load_from_disk
    else:
        sae = formal_sae.train_sae(
            model,
            ds,
            architecture="topk",
            k=4 if args.tiny else 8,
            expansion_factor=2 if args.tiny else 4,
            training_tokens=1024 if args.tiny else 500_000,
            batch_size_tokens=256 if args.tiny else 1024,
            device=args.device,
            out_dir=args.out / "sae",
        )

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

"""Benchmark: the ground-truth benchmark panel (`formal_sae.bench`) against its time targets.

Runs the panel (``--preset``, default ``quick``) on the models of a study folder (``reproduce``'s
``<study>/<grammar>/model`` and ``data``), then scores one of the panel's SAEs as an external SAE
(`score_saes`: the SAE, three untrained floors of its architecture, the basis, PCA and probe
baselines). Prints a markdown table: wall seconds per part, the number of dictionaries scored,
and the targets of the benchmark issue (quick panel <= 15 minutes, one external SAE <= 1 minute,
on 2 CPU cores).

Usage: ``python benchmarks/bench_panel.py --study STUDY --out DIR [--preset quick] [--workers 2]
[--grammars dyck2,expr,english]``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import log, machine

import formal_sae
from formal_sae.bench import bench, score_saes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default="quick")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--grammars", default="dyck2,expr,english")
    args = p.parse_args()
    grammars = args.grammars.split(",")
    shutil.rmtree(args.out, ignore_errors=True)
    languages = [
        (formal_sae.load_model(args.study / g / "model"), formal_sae.load_dataset_dir(args.study / g / "data")) for g in grammars
    ]
    log(machine())
    t0 = time.perf_counter()
    result = bench(languages, args.out / "panel", args.preset, workers=args.workers)
    panel_s = time.perf_counter() - t0
    first = next(s for s in result.scores if s.family == "sae")
    t0 = time.perf_counter()
    own = score_saes(
        *languages[0], [args.out / "panel" / grammars[0] / "panel" / "cells" / first.sae_id], args.out / "own", progress=False
    )
    own_s = time.perf_counter() - t0
    print(machine())
    print()
    print("| part | dictionaries scored | wall s | target |")
    print("|---|---|---|---|")
    print(
        f"| panel `{args.preset}`, {len(grammars)} language(s), workers {args.workers} | {len(result.scores)} | {panel_s:.0f} | quick: <= 900 s |"
    )
    print(f"| one external SAE with its baselines (`score_saes`) | {len(own.scores)} | {own_s:.0f} | <= 60 s |")
    if result.unreached:
        print()
        for c in result.unreached:
            print(f"- not reached: {c.architecture} x{c.expansion_factor} at L0 {c.l0_target} (closest {c.l0:.1f})")


if __name__ == "__main__":
    main()

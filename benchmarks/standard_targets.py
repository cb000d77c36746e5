"""The `standard` scale's targets (issue: models and SAEs strong enough to carry the claims), read
from a finished or running study folder (``formal-sae reproduce --scale standard --out STUDY``).

Per language: the model's validity (128 samples x 5 repeats at the standard scale) against 0.98;
the mean length of its generations against the data's (within 10%); the analysed SAE's explained
variance against 0.95; and the dead fraction (on test tokens) of the plain TopK SAEs at k = 16,
every width, against 20%. Prints a markdown table; ``--wall MINUTES`` adds the run's wall time
against the 60-minute target.

Usage: ``python benchmarks/standard_targets.py STUDY [--wall MINUTES]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import formal_sae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", type=Path)
    p.add_argument("--wall", type=float, default=None)
    args = p.parse_args()
    print(
        "| language | steps (plateau) | validity (>= 0.98) | generated / data mean length (within 10%) | analysed SAE | its EV (>= 0.95) | dead at k = 16, x1 / x2 / x4 / x8 (<= 0.20) | minutes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for g in ("dyck2", "expr", "english"):
        results = args.study / g / "results.json"
        if not results.is_file():
            continue
        r = json.loads(results.read_text())
        model = json.loads((args.study / g / "model" / "metrics.json").read_text())
        data = formal_sae.load_dataset_dir(args.study / g / "data")["train"]
        data_length = float(np.mean(data["length"]))
        rows = {c["cell_id"]: c for c in r["sweep"]}
        analysed = rows.get(r["analysed_cell"]) if r["analysed_cell"] else None
        dead16 = [rows[f"topk-k16-x{w}-none"]["dead_fraction"] for w in (1, 2, 4, 8) if f"topk-k16-x{w}-none" in rows]
        length_ratio = model["mean_length"] / data_length
        print(
            f"| {g} | {model['steps']} ({'stopped' if model.get('stopped_early') else 'max'}) | {model['validity']:.3f} "
            f"| {model['mean_length']:.2f} / {data_length:.2f} ({length_ratio - 1:+.1%}) | `{r['analysed_cell']}` "
            f"| {'–' if analysed is None else format(analysed['explained_variance'], '.3f')} "
            f"| {' / '.join(f'{d:.2f}' for d in dead16)} | {r['seconds'] / 60:.1f} |"
        )
    if args.wall is not None:
        print(f"\nWhole run: {args.wall:.1f} minutes wall (target <= 60).")


if __name__ == "__main__":
    main()

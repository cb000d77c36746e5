"""Why paper-L1 SAEs collapse on our Expr model where the authors' did not (docs: Training SAEs).

The paper's loss mixes a mean-reduced MSE (quadratic in the activation norm) with a sum-reduced L1
(linear in it), so whether an alpha collapses an SAE depends on the scale of the activations. The
control: the same activations, scaled by 10, at the same alpha, budget and learning rate.

    python benchmarks/l1_activation_scale.py runs/quick/expr/model runs/quick/expr/data

Prints one JSON line for the activations and one per (alpha, scale) run.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import formal_sae
from formal_sae.saes.training import cache_activations

HOOK = "blocks.0.hook_resid_post"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--steps", type=int, default=5000, help="the paper's 5,000 steps")
    parser.add_argument("--batch-tokens", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, ds = formal_sae.load_model(args.model), formal_sae.load_dataset_dir(args.data)
    acts = cache_activations(model, ds, HOOK, 200_000)
    test = cache_activations(model, ds, HOOK, 20_000, split="test")
    norm = acts.norm(dim=-1)
    print(json.dumps({"d_model": model.cfg.d_model, "mean_norm": norm.mean().item(), "median_norm": norm.median().item()}))
    for alpha in (1e-3, 1e-2):
        for scale in (1.0, 10.0):
            config = formal_sae.SAETrainConfig(
                architecture="paper", l1_coefficient=alpha, expansion_factor=2, lr=1e-5, hook_name=HOOK,
                training_tokens=args.steps * args.batch_tokens, batch_size_tokens=args.batch_tokens,
            )  # fmt: skip
            t0 = time.perf_counter()
            sae = formal_sae.train_sae(model, ds, config, activations=acts * scale)
            with torch.no_grad():
                x = test * scale
                latents = sae.encode(x)
                ev = 1 - ((sae.decode(latents) - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
            print(json.dumps({
                "alpha": alpha, "scale": scale, "explained_variance": ev.item(),
                "l0": (latents > 0).float().sum(-1).mean().item(),
                "dead_fraction": ((latents > 0).sum(0) == 0).float().mean().item(),
                "seconds": time.perf_counter() - t0,
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

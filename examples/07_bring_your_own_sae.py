"""Bring your own SAE: formal-sae's ground-truth analysis works on any SAELens SAE, however it
was trained. Here the activations come from plain TransformerLens (`run_with_cache` on the
dataset's `input_ids`) and a stock SAELens `TopKSAE` is trained on them with a few lines of
torch; formal-sae only supplies the data, the model, and the scoring at the end.

    python examples/07_bring_your_own_sae.py --out runs/examples/07   # makes a small model first
    python examples/07_bring_your_own_sae.py --model runs/examples/02/model --data runs/examples/02/data \\
        --out runs/examples/07
    python examples/07_bring_your_own_sae.py --tiny --out /tmp/ex07      # seconds, for tests

To analyse an SAE you already have, skip to step 4: any `sae_lens.SAE` whose `d_in` is the width
of the hook it reads works, once `sae.cfg.metadata.hook_name` names that hook.

Writes `OUT/sae/` (SAELens format), `OUT/metrics.json` and `OUT/analysis/` (report.json,
report.md, figures).
"""

from __future__ import annotations

import argparse
import json

import datasets
import torch
from common import dataset_and_model, example_parser, parse_example_args
from sae_lens import SAE, TopKSAE, TopKSAEConfig

import formal_sae


def parse_args() -> argparse.Namespace:
    p = example_parser(__doc__, "07")
    p.add_argument("--hook", default="blocks.0.hook_resid_post")
    p.add_argument("--expansion-factor", type=int, default=4)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=512, help="activation vectors per step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--max-sentences", type=int, default=1000, help="test sentences to analyse")
    args = parse_example_args(p)
    if args.tiny:
        args.expansion_factor, args.k, args.steps, args.batch_size, args.max_sentences = 2, 4, 50, 128, 50
    return args


@torch.no_grad()
def sentence_activations(model, split: datasets.Dataset, hook: str, feature: str, batch_size: int = 64) -> torch.Tensor:
    """Activations at `hook` of every sentence token of a split, with plain TransformerLens.

    Feature columns hold IGNORE_VALUE (-100) at the prompt and at <eos>, so they double as a mask of
    sentence tokens. Sequences are right-padded: with causal attention, padding never changes the
    activations of the real tokens before it.
    """
    pad = model.tokenizer.pad_token_id
    chunks = []
    for start in range(0, len(split), batch_size):
        rows = split[start : start + batch_size]
        width = max(len(ids) for ids in rows["input_ids"])
        tokens = torch.full((len(rows["input_ids"]), width), pad, dtype=torch.long)
        mask = torch.zeros(tokens.shape, dtype=torch.bool)
        for i, (ids, values) in enumerate(zip(rows["input_ids"], rows[feature])):
            tokens[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = torch.tensor(values) != formal_sae.IGNORE_VALUE
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=hook)
        chunks.append(cache[hook][mask.to(model.cfg.device)])
    return torch.cat(chunks)


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    ds, model = dataset_and_model(args)

    # --- 1. Activations, the TransformerLens way ----------------------------------------------
    any_feature = formal_sae.dataset_metadata(ds).feature_specs[0].name
    acts = sentence_activations(model, ds["train"], args.hook, any_feature)
    print(f"{len(acts)} activation vectors of width {acts.shape[1]} at {args.hook}")

    # --- 2. A stock SAELens TopK SAE, trained with plain torch -----------------------------------
    d_in = acts.shape[1]
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_in * args.expansion_factor, k=args.k, device=args.device))
    with torch.no_grad():
        sae.b_dec.copy_(acts.mean(0))  # start the decoder bias at the data mean
    optimizer = torch.optim.Adam(sae.parameters(), lr=args.lr)
    for step in range(args.steps):
        x = acts[torch.randint(len(acts), (args.batch_size,), device=acts.device)]
        loss = (sae.decode(sae.encode(x)) - x).pow(2).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # unit-norm decoder rows, a common TopK convention
            sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))
        if step % max(1, args.steps // 5) == 0 or step == args.steps - 1:
            print(f"  step {step:>5}: reconstruction MSE {loss.item():.4f}")

    # --- 3. Tell the SAE where it reads, save it in SAELens's format, reload it ----------------
    # This metadata is all that formal-sae (and HookedSAETransformer.add_sae) need to know.
    sae.cfg.metadata.hook_name = args.hook
    sae.save_model(str(args.out / "sae"))
    sae = SAE.load_from_disk(str(args.out / "sae"), device=args.device)
    print(f"saved and reloaded a {type(sae).__name__} ({sae.cfg.d_sae} latents) from {args.out / 'sae'}")

    # --- 4. The ground-truth metrics of formal-sae, on this SAE ---------------------------------
    metrics = formal_sae.evaluate_sae(
        model, sae, ds, max_sentences=args.max_sentences, n_samples=8 if args.tiny else 128, repeats=1 if args.tiny else 3
    )
    print(
        f"explained variance {metrics.explained_variance:.3f}, L0 {metrics.l0:.1f}, "
        f"CE loss score {metrics.ce_loss_score:.3f}, validity with the SAE spliced in {metrics.validity:.2f}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(metrics.to_dict(), indent=2))

    report = formal_sae.analyze(model, sae, ds, max_sentences=args.max_sentences)
    print(report.to_markdown())
    report.save(args.out / "analysis")
    print(f"saved {args.out / 'analysis'}")


if __name__ == "__main__":
    main()

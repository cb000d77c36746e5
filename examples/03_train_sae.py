"""Train SAEs with SAELens on a formal-sae model: a TopK SAE and the paper's architecture with one
of its variants; evaluate them, reload them with plain SAELens and splice them into the model.

    python examples/03_train_sae.py --out runs/examples/03          # makes a small model first
    python examples/03_train_sae.py --model runs/examples/02/model --data runs/examples/02/data --out runs/examples/03
    python examples/03_train_sae.py --tiny --out /tmp/ex03             # seconds, for tests

Writes `OUT/sae-topk/` and `OUT/sae-paper/` (SAELens format: cfg.json,
sae_weights.safetensors, plus formal-sae's training config) and `OUT/metrics.json`; when no
`--model` is given, also `OUT/data/` and `OUT/model/`.
"""

from __future__ import annotations

import argparse
import json

import torch
from common import dataset_and_model, example_parser, parse_example_args
from sae_lens import SAE

import formal_sae


def parse_args() -> argparse.Namespace:
    p = example_parser(__doc__, "03")
    p.add_argument("--hook", default="blocks.0.hook_resid_post", help="where the SAE reads (the paper's res0)")
    p.add_argument("--expansion-factor", type=int, default=4, help="d_sae = d_model x this")
    p.add_argument("--k", type=int, default=8, help="active latents per token (TopK)")
    p.add_argument("--training-tokens", type=int, default=500_000)
    args = parse_example_args(p)
    if args.tiny:
        args.expansion_factor, args.k, args.training_tokens = 2, 4, 1024
    return args


def main() -> None:
    args = parse_args()
    ds, model = dataset_and_model(args)

    # --- 1. Train: SAELens's SAETrainer on the model's activations at sentence tokens ----------
    # SAETrainConfig holds everything; architecture is any SAELens training architecture, or
    # "paper" (the authors' SAE, registered with SAELens when formal_sae is imported).
    print("architectures:", ", ".join(formal_sae.sae_architectures()))
    common = dict(
        hook_name=args.hook,
        expansion_factor=args.expansion_factor,
        training_tokens=args.training_tokens,
        batch_size_tokens=256 if args.tiny else 1024,
        device=args.device,
    )
    topk_cfg = formal_sae.SAETrainConfig(architecture="topk", k=args.k, **common)
    # The paper's SAE with a variant: a pre-encoder bias and inputs normalised to unit norm.
    # (Other switches: normalize_decoder, normalize_recon; L1 instead of TopK: l1_coefficient=...)
    paper_cfg = formal_sae.SAETrainConfig(architecture="paper", k=args.k, pre_bias=True, normalize_input=True, **common)

    saes = {}
    for name, cfg in (("topk", topk_cfg), ("paper", paper_cfg)):
        sae = formal_sae.train_sae(model, ds, cfg, out_dir=args.out / f"sae-{name}")
        print(f"trained {name}: {sae.cfg.d_sae} latents at {sae.cfg.metadata.hook_name} in {formal_sae.train_seconds(sae):.1f}s")
        saes[name] = sae

    # --- 2. Evaluate: reconstruction, sparsity, downstream loss, and validity with the SAE spliced in
    metrics = {}
    for name, sae in saes.items():
        metrics[name] = formal_sae.evaluate_sae(
            model,
            sae,
            ds,
            max_sentences=100 if args.tiny else 1000,
            n_samples=8 if args.tiny else 128,
            repeats=1 if args.tiny else 3,
        )
    print(f"\n{'':<8}" + "".join(f"{c:>20}" for c in ("explained_variance", "l0", "dead_fraction", "ce_loss_score", "validity")))
    for name, m in metrics.items():
        print(
            f"{name:<8}"
            + "".join(
                f"{getattr(m, c):>20.3f}" for c in ("explained_variance", "l0", "dead_fraction", "ce_loss_score", "validity")
            )
        )
    (args.out / "metrics.json").write_text(json.dumps({name: m.to_dict() for name, m in metrics.items()}, indent=2))

    # --- 3. Reload with plain SAELens ---------------------------------------------------------
    # The directories are ordinary SAELens SAEs. (The paper architecture needs `import formal_sae`
    # first, which registers it with SAELens; TopK is stock SAELens.)
    sae = SAE.load_from_disk(str(args.out / "sae-topk"), device=args.device)
    print(f"\nreloaded {type(sae).__name__}: d_in={sae.cfg.d_in} d_sae={sae.cfg.d_sae} hook={sae.cfg.metadata.hook_name}")
    paper_sae = SAE.load_from_disk(str(args.out / "sae-paper"), device=args.device)
    print(f"reloaded {type(paper_sae).__name__} ({paper_sae.cfg.architecture()})")

    # --- 4. Splice it in: the model is a sae_lens.HookedSAETransformer --------------------------
    torch.set_grad_enabled(False)
    tokens = model.to_tokens(ds["test"][0]["text"])
    clean_loss = model(tokens, return_type="loss")
    model.add_sae(sae)  # the model's activation at the hook is now the SAE's reconstruction
    spliced_loss = model(tokens, return_type="loss")
    _, cache = model.run_with_cache(tokens)  # the SAE's hook points are cached like any other
    latents = cache[f"{args.hook}.hook_sae_acts_post"][0]
    model.reset_saes()
    print(f"loss on a test sentence: clean {float(clean_loss):.3f}, with the SAE spliced in {float(spliced_loss):.3f}")
    print(f"latents per token: shape {tuple(latents.shape)}, active per token {(latents > 0).sum(-1).tolist()}")

    # Or for one call only, with the error term added back (the model's output is unchanged, but
    # the latents are there to read or edit: see example 05).
    logits, cache = model.run_with_cache_with_saes(tokens, saes=[paper_sae], use_error_term=True)
    assert torch.allclose(logits, model(tokens), atol=1e-4)
    print(
        "paper SAE latents at the first sentence token:",
        cache[f"{args.hook}.hook_sae_acts_post"][0, 1].nonzero().flatten().tolist(),
    )


if __name__ == "__main__":
    main()

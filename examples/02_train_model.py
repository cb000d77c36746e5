"""Train a small transformer on a formal-language dataset, measure how often its generations are
grammatical (the paper's validity), save and reload it, and use it as an ordinary
TransformerLens model.

    python examples/02_train_model.py --out runs/examples/02                    # builds a Dyck-2 dataset
    python examples/02_train_model.py --data runs/examples/01/dyck2 --out runs/examples/02
    python examples/02_train_model.py --preset paper --steps 20000 --data DATA --out runs/paper-model
    python examples/02_train_model.py --tiny --out /tmp/ex02                   # seconds, for tests

Writes `OUT/model/` (config.json, model.safetensors, tokenizer/, metrics.json,
train_config.json, training_curve.png) and, when no `--data` is given, `OUT/data/`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformer_lens import HookedTransformer

import formal_sae


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="a dataset directory (example 01); default: build one from --grammar")
    p.add_argument("--grammar", default="dyck2", help="grammar of the dataset built when --data is not given")
    p.add_argument("--n-train", type=int, default=10_000, help="sentences of the dataset built when --data is not given")
    p.add_argument("--preset", default="small", choices=list(formal_sae.PRESETS), help="model size")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/examples/02"))
    p.add_argument("--tiny", action="store_true", help="a tiny model trained for a few steps: finishes in seconds")
    args = p.parse_args()
    if args.tiny:
        torch.set_num_threads(1)  # tiny matrices: extra threads only add overhead
        args.n_train, args.preset, args.steps, args.batch_size = 300, "tiny", 30, 32
    return args


def main() -> None:
    args = parse_args()

    # --- 1. The dataset -------------------------------------------------------------------
    if args.data is not None:
        ds = formal_sae.load_dataset_dir(args.data)
    else:
        n_eval = max(30, args.n_train // 10)
        ds = formal_sae.build_dataset(args.grammar, n_train=args.n_train, n_validation=n_eval, n_test=n_eval, seed=args.seed)
        formal_sae.save_dataset(ds, args.out / "data", overwrite=True)
    grammar = formal_sae.grammar_of(formal_sae.dataset_metadata(ds))
    print(f"dataset: {grammar.name}, {len(ds['train'])} training sentences")

    # --- 2. Train ---------------------------------------------------------------------------
    # Presets: "paper" is the authors' model (2 layers, d_model 128), "small" a quarter of its
    # width, "tiny" for tests. Any field can be overridden, or pass a formal_sae.ModelConfig.
    config = formal_sae.ModelConfig.from_preset(args.preset, seed=args.seed)
    train = formal_sae.TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=min(200, args.steps // 10),
        eval_every=max(1, args.steps // 3),  # validation loss + validity, shown on the progress bar
        checkpoint_every=max(1, args.steps // 2),  # resumable: train_model(..., resume=True)
        validity_samples=8 if args.tiny else 64,
        final_validity_repeats=1 if args.tiny else 3,
        val_sentences=32 if args.tiny else 512,
        seed=args.seed,
        device=args.device,
    )
    model_dir = args.out / "model"
    model = formal_sae.train_model(ds, config, train, out_dir=model_dir, progress=not args.tiny)
    m = model.formal_sae_metrics
    print(f"trained {args.steps} steps in {m['train_seconds_this_run']:.1f}s: val loss {m['val_loss']:.3f}")
    print(f"validity at the end of training: {m['validity']:.3f} ± {m['validity_std']:.3f}, failures {m['failures']}")

    # --- 3. Validity, the paper's measure: sample from the prompt, parse with the grammar ----
    validity = formal_sae.evaluate_validity(model, n_samples=8 if args.tiny else 128, repeats=1 if args.tiny else 5, seed=1)
    print(f"validity: {validity.validity:.3f} ± {validity.validity_std:.3f} (per repeat {validity.per_repeat})")
    print(f"mean length {validity.mean_length:.1f}, mean parse depth {validity.mean_depth:.1f}")
    for example in validity.examples:
        print("  ", example)

    # --- 4. Save / load -----------------------------------------------------------------------
    # train_model(out_dir=...) already saved it; save_model writes the same files anywhere.
    loaded = formal_sae.load_model(model_dir, device=args.device)
    tokens = torch.tensor([ds["test"][0]["input_ids"]], device=args.device)
    assert torch.allclose(model(tokens), loaded(tokens), atol=1e-5), "the reloaded model must compute the same logits"
    print(f"\nreloaded from {model_dir}; trained on {formal_sae.model_grammar(loaded).name!r}")

    # --- 5. It is a plain TransformerLens model (a sae_lens.HookedSAETransformer) -------------
    assert isinstance(loaded, HookedTransformer)
    print(f"{type(loaded).__name__}: {loaded.cfg.n_layers} layers, d_model {loaded.cfg.d_model}, vocabulary {loaded.cfg.d_vocab}")
    torch.set_grad_enabled(False)  # inference only from here on
    sentence = ds["test"][0]["text"]
    tokens = loaded.to_tokens(sentence)  # the tokenizer prepends <bos>, as in the dataset
    print("to_tokens:", loaded.to_str_tokens(sentence))
    logits, cache = loaded.run_with_cache(tokens)
    print("cached activations, e.g.:")
    for name in (
        "hook_embed",
        "blocks.0.hook_resid_post",
        "blocks.0.attn.hook_pattern",
        f"blocks.{loaded.cfg.n_layers - 1}.mlp.hook_post",
    ):
        print(f"  {name:<28} {tuple(cache[name].shape)}")
    # The next-token distribution after each prefix of the sentence.
    probs = logits[0].softmax(-1)
    str_tokens = loaded.to_str_tokens(tokens[0])
    for pos in range(min(6, len(str_tokens))):
        top = probs[pos].topk(3)
        guesses = ", ".join(f"{loaded.tokenizer.decode([int(i)])}={float(p):.2f}" for p, i in zip(top.values, top.indices))
        print(f"  after {' '.join(str_tokens[: pos + 1])!r:<40} next: {guesses}")
    # Loss in TransformerLens's own convention (averaged over every position, prompt included).
    print("TransformerLens loss on this sentence:", float(loaded(tokens, return_type="loss")))


if __name__ == "__main__":
    main()

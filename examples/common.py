"""What examples 03-07 share: the model/dataset arguments and making (or loading) a model and SAE.

The examples run as ``python examples/NN_*.py``, so this folder is on ``sys.path``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets
import torch
from sae_lens import SAE
from transformer_lens import HookedTransformer

import formal_sae


def example_parser(doc: str, number: str, sae: bool = False) -> argparse.ArgumentParser:
    """A parser with the arguments every example takes: the model (or a grammar to train one on),
    its dataset, optionally an SAE, the device, the output folder and ``--tiny``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="a model directory (example 02); needs --data. Default: train a small one")
    p.add_argument("--data", type=Path, help="the model's dataset directory")
    if sae:
        p.add_argument("--sae", type=Path, help="an SAE directory (example 03). Default: train a TopK SAE here")
    p.add_argument("--grammar", default="dyck2", help="grammar of the model trained when --model is not given")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path(f"runs/examples/{number}"))
    p.add_argument("--tiny", action="store_true", help="tiny model, data and SAE: finishes in seconds")
    return p


def parse_example_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse and check the shared arguments."""
    args = p.parse_args()
    if args.model is not None and args.data is None:
        p.error("--model needs --data (the dataset the model was trained on)")
    if getattr(args, "sae", None) is not None and args.model is None:
        p.error("--sae needs --model and --data (the model and dataset it was trained on)")
    if args.tiny:
        torch.set_num_threads(1)  # tiny matrices: extra threads only add overhead
    return args


def dataset_and_model(args: argparse.Namespace) -> tuple[datasets.DatasetDict, HookedTransformer]:
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


def sae_to_study(args: argparse.Namespace, model: HookedTransformer, ds: datasets.DatasetDict) -> SAE:
    """The SAE from --sae (``sae_lens.SAE.load_from_disk`` underneath), or a TopK SAE trained here."""
    if args.sae is not None:
        return formal_sae.load_sae(args.sae, device=args.device)
    return formal_sae.train_sae(
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

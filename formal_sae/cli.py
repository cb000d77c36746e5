"""The ``formal-sae`` command line. It only calls the public API of :mod:`formal_sae`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import formal_sae
from formal_sae.errors import FormalSAEError

Command = Callable[[argparse.Namespace], None]
ALLOW_OTHER_MODEL_HELP = "apply the SAE even though its metadata names another model than --model (a deliberate transfer)"
OVERWRITE_HELP = "replace an existing output directory (only one formal-sae wrote: see 'Where your files go' in the docs)"


def _grammars(args: argparse.Namespace) -> None:
    names = formal_sae.list_grammars()
    width = max(map(len, names))
    for name in names:
        g = formal_sae.load_grammar(name)
        print(
            f"{name:<{width}}  {g.description} (vocabulary {len(g.terminals)}, expected length {g.expected_length:.1f} before the length limit)"
        )


def _generate(args: argparse.Namespace) -> None:
    grammar = formal_sae.load_grammar(args.grammar, max_length=args.max_length)
    ds = formal_sae.generate_dataset(
        grammar,
        args.out,
        n_train=args.n_train,
        n_validation=args.n_validation,
        n_test=args.n_test,
        seed=args.seed,
        prompt_format=args.prompt_format,
        overwrite=args.overwrite,
    )
    meta = formal_sae.dataset_metadata(ds)
    print(f"wrote {args.out}: grammar {grammar.name}, seed {args.seed}, prompt {args.prompt_format}")
    for split, stats in meta.length_stats.items():
        print(
            f"  {split:<10} {meta.splits[split]:>9} sentences  length mean {stats['mean']:.2f}"
            f"  min {stats['min']}  median {stats['median']:g}  max {stats['max']}"
        )
    print(f"  features: {', '.join(s.name for s in meta.feature_specs)}")


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="sample a grammar into a Hugging Face dataset directory")
    p.add_argument("grammar", help="registry name (see `formal-sae grammars`) or path of a PCFG text file")
    p.add_argument("--out", required=True, help="output directory (datasets.load_from_disk opens it)")
    p.add_argument("--n-train", type=int, default=10_000)
    p.add_argument("--n-validation", type=int, default=1_000)
    p.add_argument("--n-test", type=int, default=1_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt-format", choices=["bos", "paper"], default="bos")
    p.add_argument("--max-length", type=int, default=formal_sae.PAPER_MAX_LENGTH, help="reject longer sentences")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_generate)


def _train_model(args: argparse.Namespace) -> None:
    dataset = formal_sae.load_dataset_dir(args.data)
    config = formal_sae.ModelConfig.from_preset(args.preset, seed=args.seed)
    train = formal_sae.TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
    )
    model = formal_sae.train_model(dataset, config, train, out_dir=args.out, resume=args.resume, overwrite=args.overwrite)
    m = model.formal_sae_metrics
    print(
        f"wrote {args.out}: {m['grammar']} / {m['preset']}, {m['steps']} steps, val loss {m['val_loss']:.4f}, "
        f"validity {m['validity']:.3f} ± {m['validity_std']:.3f}"
    )


def _add_train_model(sub: argparse._SubParsersAction) -> None:
    defaults = formal_sae.TrainConfig()
    p = sub.add_parser("train-model", help="train a HookedTransformer on a dataset directory")
    p.add_argument("--data", required=True, help="dataset directory from `formal-sae generate`")
    p.add_argument("--out", required=True, help="model directory (config.json, model.safetensors, tokenizer/, metrics.json)")
    p.add_argument("--preset", default="small", help=f"model preset: {', '.join(formal_sae.PRESETS)}")
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", default=defaults.device, help="cpu, cuda, cuda:N or mps")
    p.add_argument("--eval-every", type=int, default=defaults.eval_every)
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    p.add_argument(
        "--resume",
        action="store_true",
        help="require an interrupted run to continue (a rerun with the same settings resumes anyway)",
    )
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_train_model)


def _float_arg(value: str, flag: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise formal_sae.FormalSAEError(f"{flag} must be 'random' or a number, got {value!r}") from None


def _train_sae(args: argparse.Namespace) -> None:
    from formal_sae.io import write_json

    formal_sae.check_output(args.out, "sae", args.overwrite)  # before loading anything
    model = formal_sae.load_model(args.model, device=args.device)
    dataset = formal_sae.load_dataset_dir(args.data)
    config = formal_sae.SAETrainConfig(
        architecture=args.architecture,
        hook_name=args.hook,
        expansion_factor=args.expansion,
        k=args.k,
        l1_coefficient=args.l1,
        l0_coefficient=args.l0,
        pre_bias=args.pre_bias,
        normalize_input=args.normalize_input,
        normalize_decoder=args.normalize_decoder,
        normalize_recon=args.normalize_recon,
        splice=args.splice,
        training_tokens=args.training_tokens,
        batch_size_tokens=args.batch_size_tokens,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
    )
    causal = None
    if args.causal_coefficient is not None:
        causal = formal_sae.CausalConfig(
            coefficient=args.causal_coefficient,
            distance=args.causal_distance,
            step=args.causal_step if args.causal_step == "random" else _float_arg(args.causal_step, "--causal-step"),
            schedule=args.causal_schedule,
            pretrain_steps=args.pretrain_steps,
            steps=args.causal_steps,
            finetune_lr=args.finetune_lr,
        )
        causal.validate()
    config.validate()
    evaluation = {"n_samples": args.n_samples, "repeats": args.repeats, "splice": args.splice, "distance": args.causal_distance}
    run = {"sae": config.to_dict() | {"device": None}, "causal": causal and causal.to_dict(), "evaluation": evaluation}
    # The SAE and its metrics.json form one artifact: an interrupted run resumes from its last
    # training checkpoint, and nothing appears at --out before the metrics are written.
    with formal_sae.output_dir(args.out, "sae", run, overwrite=args.overwrite, resumable=True) as work:
        if causal is not None:
            sae = formal_sae.train_causal_sae(model, dataset, config, causal, out_dir=work)
        else:
            sae = formal_sae.train_sae(model, dataset, config, out_dir=work)
        metrics = formal_sae.evaluate_sae(
            model,
            sae,
            dataset,
            split="test",
            splice=args.splice,
            n_samples=args.n_samples,
            repeats=args.repeats,
            allow_other_model=args.allow_other_model,
        )
        metrics["causal_loss"] = formal_sae.held_out_causal_loss(
            model, sae, dataset, split="test", distance=args.causal_distance, allow_other_model=args.allow_other_model
        )
        metrics["train_seconds"] = sae.formal_sae_train_seconds
        write_json(work / "metrics.json", metrics)
    print(
        f"wrote {args.out}: {metrics['architecture']} d_sae {metrics['d_sae']} at {metrics['hook_name']}: "
        f"explained variance {metrics['explained_variance']:.3f}, L0 {metrics['l0']:.1f}, "
        f"CE score {metrics['ce_loss_score']:.3f}, validity {metrics['validity']:.3f} ± {metrics['validity_std']:.3f}"
    )


def _add_train_sae(sub: argparse._SubParsersAction) -> None:
    d = formal_sae.SAETrainConfig()
    p = sub.add_parser("train-sae", help="train an SAE with SAELens on a model's activations")
    p.add_argument("--model", required=True, help="model directory from `formal-sae train-model`")
    p.add_argument("--data", required=True, help="the model's dataset directory")
    p.add_argument("--out", required=True, help="SAE directory (SAELens format + metrics.json)")
    p.add_argument("--hook", default=d.hook_name, help="hook point (default: the paper's res0)")
    p.add_argument("--architecture", default=d.architecture, help=f"one of: {', '.join(formal_sae.sae_architectures())}")
    p.add_argument("--expansion", type=int, default=d.expansion_factor, help="d_sae = d_in x expansion")
    p.add_argument("--k", type=int, help="active latents (topk, batchtopk, matryoshka_batchtopk, paper TopK)")
    p.add_argument("--l1", type=float, help="L1 coefficient (standard, gated; for paper: the paper's sum-reduced alpha)")
    p.add_argument("--l0", type=float, help="L0 coefficient (jumprelu)")
    p.add_argument("--pre-bias", action="store_true", help="paper variant: tied pre-encoder bias (and an encoder bias)")
    p.add_argument("--normalize-input", action="store_true", help="paper variant: unit-norm inputs per token")
    p.add_argument("--normalize-decoder", action="store_true", help="paper variant: unit-norm decoder rows")
    p.add_argument("--normalize-recon", action="store_true", help="paper variant: unit-norm reconstructions")
    p.add_argument("--splice", choices=["scale_correct", "paper"], default=d.splice, help="how to splice a normalised SAE in")
    p.add_argument("--training-tokens", type=int, default=d.training_tokens)
    p.add_argument("--batch-size-tokens", type=int, default=d.batch_size_tokens)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device)
    p.add_argument("--n-samples", type=int, default=128, help="validity: samples per repeat")
    p.add_argument("--repeats", type=int, default=5, help="validity: repeats")
    p.add_argument("--allow-other-model", action="store_true", help=ALLOW_OTHER_MODEL_HELP)
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    c = formal_sae.CausalConfig()
    g = p.add_argument_group("causal regularisation (PAPER.md §8; enabled by --causal-coefficient)")
    g.add_argument("--causal-coefficient", type=float, help="beta: weight of the interpolation loss")
    g.add_argument("--causal-distance", choices=["mse", "kl"], default=c.distance)
    g.add_argument("--causal-step", default="random", help="'random' (s ~ U(0,1)) or a fixed s in [0, 1]")
    g.add_argument("--causal-schedule", choices=["constant", "linear"], default=c.schedule)
    g.add_argument("--pretrain-steps", type=int, default=c.pretrain_steps, help="plain SAE steps before the causal phase")
    g.add_argument("--causal-steps", type=int, default=c.steps, help="steps with the causal term")
    g.add_argument("--finetune-lr", type=float, help="learning rate of the causal phase")
    p.set_defaults(func=_train_sae)


def _compare_saes(args: argparse.Namespace) -> None:
    formal_sae.check_output(args.out, "comparison", args.overwrite)  # before minutes of work
    model = formal_sae.load_model(args.model, device=args.device)
    dataset = formal_sae.load_dataset_dir(args.data)
    comparison = formal_sae.compare_saes(
        model, dataset, args.saes, n_samples=args.n_samples, repeats=args.repeats, allow_other_model=args.allow_other_model
    )
    comparison.save(args.out, overwrite=args.overwrite)
    print(comparison.to_markdown())


def _add_compare_saes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare-saes", help="compare SAEs (e.g. causal vs plain) on the same model and data")
    p.add_argument("saes", nargs="+", help="SAE directories")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="comparison directory (comparison.md, comparison.json, comparison.png)")
    p.add_argument("--n-samples", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--allow-other-model", action="store_true", help=ALLOW_OTHER_MODEL_HELP)
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_compare_saes)


def _analyze(args: argparse.Namespace) -> None:
    formal_sae.check_output(args.out, "analysis", args.overwrite)  # before minutes of work
    model = formal_sae.load_model(args.model, device=args.device)
    sae = formal_sae.load_sae(args.sae, device=args.device)
    dataset = formal_sae.load_dataset_dir(args.data)
    report = formal_sae.analyze(
        model,
        sae,
        dataset,
        split=args.split,
        selection_split=args.selection_split,
        features=args.features,
        max_sentences=args.max_sentences,
        allow_other_model=args.allow_other_model,
    )
    report.save(args.out, overwrite=args.overwrite)
    s = report.summary
    print(
        f"wrote {args.out}: {len(report.targets)} targets over {s['n_tokens']} tokens; "
        f"coverage {'n/a (no binary features)' if s['coverage'] is None else format(s['coverage'], '.3f')}, MCC {s['mcc']:.3f}"
    )
    for name, t in report.targets.items():
        if t["n_latents_abs_rho_ge_0.9"] or (t["f1"] or 0) >= 0.9:
            print(
                f"  {name}: latent {t['best_latent']} (Pearson {t['pearson']:.3f}), F1 {t['f1'] if t['f1'] is None else round(t['f1'], 3)}"
            )


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="score every SAE latent against the ground-truth features")
    p.add_argument("--model", required=True)
    p.add_argument("--sae", required=True, help="SAE directory (SAELens format)")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="report directory (report.json, report.md, figures)")
    p.add_argument("--split", default="test")
    p.add_argument("--selection-split", default="validation", help="split used to choose best latents and thresholds")
    p.add_argument("--features", nargs="*", help="feature names to analyse (default: all)")
    p.add_argument("--allow-other-model", action="store_true", help=ALLOW_OTHER_MODEL_HELP)
    p.add_argument("--max-sentences", type=int, default=2000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_analyze)


def _intervene(args: argparse.Namespace) -> None:
    from formal_sae.io import write_json

    formal_sae.check_output(args.out, "interventions", args.overwrite)  # before minutes of work
    model = formal_sae.load_model(args.model, device=args.device)
    sae = formal_sae.load_sae(args.sae, device=args.device)
    dataset = formal_sae.load_dataset_dir(args.data)
    if args.report:
        report = formal_sae.causal_report(
            model, sae, dataset, top_k=args.top_k, max_sentences=args.max_sentences, allow_other_model=args.allow_other_model
        )
        report.save(args.out, overwrite=args.overwrite)
        s = report.summary
        print(
            f"wrote {args.out}: {s['n_live']} live latents; {s['n_correlated_not_causal']} correlated but not causal, "
            f"{s['n_causal_not_correlated']} causal but uncorrelated; rank agreement {s['rank_agreement']:.3f}"
        )
        return
    if args.latent is None:
        raise formal_sae.FormalSAEError("give --latent J (with --mode) for one intervention, or --report for every latent")
    intervention = formal_sae.Intervention(args.mode.replace("-", "_"), [args.latent], args.value, relative=args.relative)
    intervention.validate(sae)
    effects = formal_sae.next_token_effects(
        model, sae, dataset, intervention, max_sentences=args.max_sentences, allow_other_model=args.allow_other_model
    )
    gens = formal_sae.compare_generations(
        model, sae, intervention, dataset, n_samples=args.n_samples, seed=args.seed, allow_other_model=args.allow_other_model
    )
    out = {
        "latent": args.latent,
        "mode": intervention.mode,
        "value": args.value,
        "relative": args.relative,
        "mean_kl": effects["mean_kl"],
        "mean_tv": effects["mean_tv"],
        "mean_class_tv": effects["mean_class_tv"],
        "validity_clean": gens["validity"]["clean"],
        "validity_intervened": gens["validity"]["intervened"],
        "next_token": effects,
        "generations": gens,
    }
    with formal_sae.output_dir(args.out, "interventions", overwrite=args.overwrite) as work:
        write_json(work / "report.json", out)
    print(
        f"wrote {args.out}: {intervention.mode} latent {args.latent}: mean KL {out['mean_kl']:.4g}, validity "
        f"{out['validity_clean']:.3f} -> {out['validity_intervened']:.3f} (p = {gens['validity']['p_value']:.3g})"
    )


def _add_intervene(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("intervene", help="intervene on SAE latents and measure the effect on the model")
    p.add_argument("--model", required=True)
    p.add_argument("--sae", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--latent", type=int, help="the latent to intervene on")
    what.add_argument("--report", action="store_true", help="correlation-vs-causation report over every latent")
    p.add_argument("--mode", default="ablate", choices=["ablate", "clamp", "scale", "keep-only", "steer"])
    p.add_argument("--value", type=float, help="clamp value, scale factor or steering coefficient")
    p.add_argument("--relative", action="store_true", help="clamp: --value is a fraction of the latent's observed range")
    p.add_argument("--n-samples", type=int, default=100, help="generations per condition")
    p.add_argument("--top-k", type=int, default=3, help="--report: latents per feature")
    p.add_argument("--allow-other-model", action="store_true", help=ALLOW_OTHER_MODEL_HELP)
    p.add_argument("--max-sentences", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_intervene)


def _sweep(args: argparse.Namespace) -> None:
    model = formal_sae.load_model(args.model, device=args.device)
    dataset = formal_sae.load_dataset_dir(args.data)
    scale = args.scale or ("small" if args.grid == "paper" else None)  # --scale is the paper grid's alone
    grid = formal_sae.saes.resolve_grid(args.grid, model=model, scale=scale)
    evaluation = {"n_samples": args.n_samples, "repeats": args.repeats, "max_sentences": args.max_sentences}
    rows = formal_sae.sweep(
        model, dataset, grid, args.out, evaluate_kwargs=evaluation, workers=args.workers, overwrite=args.overwrite
    )
    valid = [r["validity"] for r in rows if r.get("validity") is not None]
    print(f"wrote {args.out}: {len(rows)} SAEs of grid {grid.name!r}; validity {min(valid):.3f}-{max(valid):.3f}; see results.md")


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="train and evaluate a grid of SAEs on shared activations (resumable)")
    p.add_argument("--grid", default="paper", help="'paper', 'paper-small' or a JSON grid file")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--scale", choices=["small", "paper"], default=None, help="training budget of the paper grid (default: small)")
    p.add_argument("--n-samples", type=int, default=64, help="validity samples per repeat, per cell")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-sentences", type=int, default=500, help="test sentences for the metrics of each cell")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="cells at once, each in a process on one CPU core (CPU only; try the number of cores)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_sweep)


def _reproduce(args: argparse.Namespace) -> None:
    from formal_sae.reproduce import reproduce  # the pipeline module, on top of the public API

    claims = reproduce(args.out, args.grammar, args.scale, seed=args.seed, device=args.device, overwrite=args.overwrite)
    print(f"wrote {args.out}/report.md and {args.out}/claims.json")
    for name, claim in claims.items():
        per_language = ", ".join(f"{g} {v.verdict}" for g, v in claim.languages.items())
        print(f"  {name}: {claim.overall.verdict} ({per_language})")


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="run the whole study and write a report with the paper's claims")
    p.add_argument("--grammar", default="all", choices=["all", "dyck2", "expr", "english"])
    p.add_argument("--scale", default="quick", choices=["quick", "small", "paper"])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_reproduce)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="formal-sae", description="Sparse autoencoders on formal languages, with ground truth.")
    parser.add_argument("--version", action="version", version=f"formal-sae {formal_sae.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("grammars", help="list the built-in grammars").set_defaults(func=_grammars)
    _add_generate(sub)
    _add_train_model(sub)
    _add_train_sae(sub)
    _add_analyze(sub)
    _add_intervene(sub)
    _add_sweep(sub)
    _add_compare_saes(sub)
    _add_reproduce(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FormalSAEError as e:
        # One line, whatever the message holds (a list of problems, a quoted line of a damaged file):
        # str.splitlines also breaks at \v, \f, \x1c-\x1e, \x85, \u2028 and \u2029, which a terminal may show as breaks.
        parts = [part.strip() for part in str(e).splitlines() if part.strip()]
        message = "".join(p if i == 0 else (" " if parts[i - 1].endswith(":") else "; ") + p for i, p in enumerate(parts))
        print(f"formal-sae {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"formal-sae {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

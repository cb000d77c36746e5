"""The stages of the study for one language, each resumable the same way, and the evidence they yield.

Every stage writes its result (JSON) under the language's folder and is skipped when that file
exists, so an interrupted run resumes; artifacts (dataset, model, sweep, SAEs, reports) follow
`formal_sae.outputs` and appear whole.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from transformer_lens import HookedTransformer

from formal_sae import (
    CELLS_DIR,
    METRICS_FILE,
    RESULTS_JSON,
    STRUCTURAL,
    FormalSAEError,
    ModelConfig,
    ProbeReport,
    RayBackend,
    SAETrainConfig,
    TrainConfig,
    analyze,
    atomic_write_text,
    bootstrap_abs_pearson,
    build_training_sae,
    default_probe_hooks,
    effect_predictability,
    evaluate_sae,
    feature_interventions,
    feature_role,
    generate_dataset,
    held_out_pairs,
    interpolation_metrics,
    load_dataset_dir,
    load_model,
    load_sae,
    output_dir,
    predictability_summary,
    probe_direction,
    probe_features,
    read_json,
    sae_hook_width,
    sweep,
    targets_of,
    to_inference,
    train_causal_sae,
    train_model,
    train_sae,
    write_json,
)
from formal_sae.reproduce.claims import C1_BAR, sane
from formal_sae.reproduce.evidence import (
    C1Evidence,
    C2Evidence,
    C3Evidence,
    C4Evidence,
    Cell,
    FeatureCorrelation,
    InterventionEvidence,
    SeedPair,
)
from formal_sae.reproduce.scales import Scale, model_steps_of

#: Folder and file names inside a language's folder.
DATA_DIR, MODEL_DIR, SWEEP_DIR = "data", "model", "sweep"
ANALYSIS_DIR, SEEDS_DIR, PROBES_DIR = "analysis", "analysed-seeds", "probes"
CAUSAL_SAES_DIR, EVIDENCE_FILE = "causal-saes", "evidence.json"
#: The probe report this module writes into `PROBES_DIR`.
PROBES_JSON, PROBES_MD, PROBES_PNG = "probes.json", "probes.md", "probes.png"


def stage(path: Path, compute: Callable[[], Any]) -> Any:
    """Run ``compute`` unless ``path`` (its JSON result) exists: the resume mechanism. A stage that
    saves an artifact holding ``path`` has written it already (artifacts appear whole)."""
    if path.is_file():
        return read_json(path)
    result = compute()
    if not path.is_file():
        write_json(path, result)
    return result


def guarded(run: Callable[[], Any], failed: Callable[[str], Any]) -> Any:
    """``run()``, or, when it fails with a user-facing error (say an SAE too small for a matched
    null), ``failed(message)``: the claims that stage measures read "not tested" with the reason,
    and the other claims are still judged. The failed stage is not saved, so a rerun tries it again."""
    try:
        return run()
    except FormalSAEError as e:
        return failed(str(e))


def language_data(grammar: str, out: Path, scale: Scale, seed: int = 0) -> datasets.DatasetDict:
    """The language's dataset in ``out/DATA_DIR``: generated at the scale's sizes and sequence format
    unless it is there already."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / DATA_DIR).exists():
        generate_dataset(
            grammar, out / DATA_DIR, n_train=scale.n_train, n_validation=scale.n_eval, n_test=scale.n_eval, seed=seed,
            prompt_format=scale.prompt_format,
        )  # fmt: skip
    return load_dataset_dir(out / DATA_DIR)


def language_model(
    grammar: str, out: Path, dataset: datasets.DatasetDict, scale: Scale, seed: int = 0, device: str = "cpu"
) -> tuple[HookedTransformer, dict[str, Any]]:
    """The language's model in ``out/MODEL_DIR``, trained on ``dataset`` at the scale's settings unless
    it is there already, and its metrics (``metrics.json``)."""
    if not (out / MODEL_DIR).exists():  # an interrupted training run resumes by itself
        steps = model_steps_of(scale, grammar)
        settings = {
            "steps": steps, "lr": scale.model_lr, "seed": seed, "device": device, "eval_every": max(1, steps // 4),
            "warmup_steps": min(200, steps // 10), "checkpoint_every": max(1, steps // 4),
            "validity_samples": scale.validity_samples, "final_validity_repeats": scale.validity_repeats,
        }  # fmt: skip
        train = TrainConfig(**{**settings, **scale.model_train})  # the scale's own settings win
        train_model(dataset, ModelConfig.from_preset(scale.preset, seed=seed), train, out_dir=out / MODEL_DIR)
    return load_model(out / MODEL_DIR, device=device), read_json(out / MODEL_DIR / METRICS_FILE)


def sweep_workers(scale: Scale, device: str, backend: str | RayBackend) -> int:
    """The sweep's ``workers``: the scale's forked processes on the local CPU, else 1 (a GPU or Ray
    runs cells otherwise)."""
    return scale.workers if device == "cpu" and backend == "local" else 1


def run_language(
    grammar: str, out: Path, scale: Scale, seed: int = 0, device: str = "cpu", backend: str | RayBackend = "local"
) -> dict[str, Any]:
    """Every stage for one language; returns its model summary, sweep rows and evidence (JSON)."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dataset = language_data(grammar, out, scale, seed)
    model, model_metrics = language_model(grammar, out, dataset, scale, seed, device)
    if (out / SWEEP_DIR).exists():
        rows = read_json(out / SWEEP_DIR / RESULTS_JSON, what="sweep results")
    else:
        rows = sweep(model, dataset, scale.grid(model.cfg.d_model).on_device(device), out / SWEEP_DIR, evaluation=scale.sweep_eval, backend=backend,
                     workers=sweep_workers(scale, device, backend))  # fmt: skip
    c2 = guarded(
        lambda: stage(
            out / "c2.json", lambda: c2_evidence(grammar, model, dataset, rows, out, scale, model_metrics["validity"]).to_dict()
        ),
        lambda e: C2Evidence(grammar, failed=e).to_dict(),
    )
    analysed = choose_analysed(rows)
    c1, c3 = C1Evidence(grammar, False, "no sane SAE in the sweep", 0), C3Evidence(grammar, False, "no sane SAE in the sweep")
    if analysed is not None:
        c1_c3 = guarded(
            lambda: stage(out / "c1_c3.json", lambda: _c1_c3(grammar, model, dataset, rows, analysed, out, scale, seed, device)),
            lambda e: {
                "C1": C1Evidence(grammar, True, "", 0, failed=e).to_dict(),
                "C3": C3Evidence(grammar, True, "", failed=e).to_dict(),
            },
        )
        c1, c3 = C1Evidence.from_dict(c1_c3["C1"]), C3Evidence.from_dict(c1_c3["C3"])
    c4 = C4Evidence.from_dict(
        guarded(
            lambda: stage(out / "c4.json", lambda: c4_evidence(grammar, model, dataset, out, scale, seed, device).to_dict()),
            lambda e: C4Evidence(grammar, why_not_tested=f"its stage failed: {e}").to_dict(),
        )
    )
    return {
        "grammar": grammar,
        "model": {k: model_metrics[k] for k in ("validity", "validity_std", "val_loss", "steps", "preset")},
        "sweep": rows,
        "analysed_cell": None if analysed is None else analysed["cell_id"],
        "evidence": {"C1": c1.to_dict(), "C2": C2Evidence.from_dict(c2).to_dict(), "C3": c3.to_dict(), "C4": c4.to_dict()},
        "seconds": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------------ C2
def factors_of(row: dict[str, Any]) -> dict[str, Any]:
    """The inductive biases of a sweep cell (the factors of C2)."""
    family = "topk" if row.get("k") is not None else "l1"
    norm = "+".join(
        n for n, f in (("input", "normalize_input"), ("recon", "normalize_recon"), ("dec", "normalize_decoder")) if row.get(f)
    )
    sparsity = row.get("k") if family == "topk" else row.get("l1_coefficient")
    return {"family": family, "expansion": row["expansion_factor"], "sparsity": sparsity, "normalisation": norm or "none",
            "pre_bias": bool(row.get("pre_bias"))}  # fmt: skip


def _se(metrics: dict[str, Any], repeats: int) -> float | None:
    """Standard error of validity from its standard deviation over ``repeats``."""
    return None if metrics.get("validity_std") is None else metrics["validity_std"] / max(repeats, 1) ** 0.5


def c2_evidence(
    grammar: str, model, dataset, rows: list[dict], out: Path, scale: Scale, model_validity: float | None = None
) -> C2Evidence:
    """Every cell's factors and outcomes; normalised cells are evaluated again with the paper's raw
    splice (the others splice identically either way)."""
    repeats = scale.sweep_eval.get("repeats", 1)
    cells = []
    for row in rows:
        paper, paper_se = row.get("validity"), _se(row, repeats)
        if row.get("normalize_input"):
            sae = load_sae(out / SWEEP_DIR / CELLS_DIR / row["cell_id"])
            m = evaluate_sae(model, sae, dataset, splice="paper", **{**scale.sweep_eval, "max_sentences": 32})
            paper, paper_se = m["validity"], _se(m, repeats)
        cells.append(
            Cell(
                row["cell_id"],
                factors_of(row),
                row.get("explained_variance"),
                row.get("l0"),
                row.get("validity"),
                _se(row, repeats),
                paper,
                paper_se,
            )
        )
    return C2Evidence(grammar, cells, model_validity=model_validity)


# ------------------------------------------------------------------------------ C1 and C3
#: The sparsest the analysed SAE may be: the authors analysed TopK k = 16 SAEs (docs: The paper,
#: Interpretability and The causal loss). Without this bound a grid reaching k = 128 at d_in = 128
#: picks its densest cell (validity rises with k), whose latents are not the sparse code the claims
#: are about.
ANALYSED_MAX_K = 16


def choose_analysed(rows: list[dict]) -> dict | None:
    """The SAE the latents are analysed in: the best sane TopK cell with k <= `ANALYSED_MAX_K`,
    without normalisation or pre-bias (by validity, then explained variance); None if the sweep
    has no sane one."""
    plain = [
        r
        for r in rows
        if r.get("variant") == "none" and r.get("k") is not None and r["k"] <= ANALYSED_MAX_K and r.get("validity") is not None
    ]
    good = [r for r in plain if sane(r.get("explained_variance"), r.get("l0"))[0]]
    return max(good, key=lambda r: (round(r["validity"], 2), r["explained_variance"]), default=None)


def _config_of(row: dict[str, Any]) -> SAETrainConfig:
    names = {f.name for f in dataclasses.fields(SAETrainConfig)}
    return SAETrainConfig.from_dict({k: v for k, v in row.items() if k in names})


def _c1_c3(grammar, model, dataset, rows, analysed, out: Path, scale: Scale, seed: int, device: str) -> dict[str, Any]:
    config = dataclasses.replace(_config_of(analysed), device=device)
    saes = [load_sae(out / SWEEP_DIR / CELLS_DIR / analysed["cell_id"], device=device)]
    for s in range(1, scale.analysis_seeds):
        d = out / SEEDS_DIR / f"seed{s}"
        saes.append(
            load_sae(d, device=device) if d.exists() else train_sae(model, dataset, config, out_dir=d, seed=config.seed + s)
        )
    reports = [analyze(model, sae, dataset, max_sentences=scale.analysis_sentences) for sae in saes]
    if not (out / ANALYSIS_DIR).exists():
        reports[0].save(out / ANALYSIS_DIR)
    hook = saes[0].cfg.metadata.hook_name
    probes = _probes(model, dataset, hook, out, scale)
    controls = _control_correlations(model, dataset, config, scale, seed)
    ok, why = sane(analysed.get("explained_variance"), analysed.get("l0"))
    c1 = C1Evidence(grammar, ok, why, len(saes), _feature_correlations(reports, controls, probes, hook))
    c3 = C3Evidence(grammar, ok, why, _interventions(model, saes[0], dataset, reports[0], c1, hook, scale, seed))
    return {"C1": c1.to_dict(), "C3": c3.to_dict()}


def _probes(model, dataset, hook: str, out: Path, scale: Scale) -> ProbeReport:
    if (out / PROBES_DIR / PROBES_JSON).is_file():
        return ProbeReport.from_dict(read_json(out / PROBES_DIR / PROBES_JSON))
    report = probe_features(model, dataset, hooks=default_probe_hooks(model), max_sentences=scale.analysis_sentences)
    with output_dir(out / PROBES_DIR, "probes") as work:
        write_json(work / PROBES_JSON, report.to_dict())
        atomic_write_text(work / PROBES_MD, report.to_markdown())
        report.plot(work / PROBES_PNG)
    return report


def _control_correlations(model, dataset, config: SAETrainConfig, scale: Scale, seed: int) -> dict[str, list[float]]:
    """Per target, the test |rho| of the best (validation-chosen) latent of each untrained SAE."""
    d_in = sae_hook_width(model, config.hook_name)
    out: dict[str, list[float]] = {}
    for c in range(scale.control_saes):
        untrained = build_training_sae(dataclasses.replace(config, seed=seed + 1000 + c), d_in)
        sae = to_inference(untrained, model, dataset, config, None)
        for name, t in analyze(model, sae, dataset, max_sentences=scale.analysis_sentences).targets.items():
            out.setdefault(name, []).append(abs(t["pearson"] or 0.0))
    return out


def _feature_correlations(reports, controls, probes: ProbeReport, hook: str) -> list[FeatureCorrelation]:
    first = reports[0]
    aligned = first.aligned
    values = {t.name: t.values for t in targets_of(aligned)}
    out = []
    for name, entry in first.targets.items():
        if name not in values:
            continue
        latents = np.stack([r.aligned.latent(r.targets[name]["best_latent"]) for r in reports], axis=1)
        rho, lo, hi = bootstrap_abs_pearson(latents, values[name], aligned.rows)
        f1s = [r.targets[name]["f1"] for r in reports if r.targets[name]["f1"] is not None]
        runs = controls.get(name, [0.0])
        out.append(
            FeatureCorrelation(
                feature=name,
                role=feature_role(aligned.token_ids, values[name]),
                kind=entry["kind"],
                latent=entry["best_latent"],
                abs_rho=rho,
                abs_rho_ci=(lo, hi),
                f1=float(np.mean(f1s)) if f1s else None,
                control_abs_rho=max(runs),
                control_runs=runs,
                probe=_probe_value(probes, name, hook),
                probe_embed=_probe_value(probes, name, "hook_embed"),
            )
        )
    return out


def _probe_value(probes: ProbeReport, feature: str, hook: str) -> float | None:
    try:
        return float(probes.score(feature, hook).skill)  # R², or accuracy rescaled from the majority class (0) to perfect (1)
    except Exception:  # a target the probes skipped (constant on the fit split)
        return None


def _interventions(model, sae, dataset, report, c1: C1Evidence, hook: str, scale: Scale, seed: int) -> list[InterventionEvidence]:
    """C3's interventions on every structural feature that has a latent at the C1 bar."""
    out = []
    names = report.target_names
    for f in c1.features:
        if f.role != STRUCTURAL or f.feature not in names:
            continue
        column = np.abs(np.nan_to_num(report.correlations[:, names.index(f.feature)]))
        group = [int(j) for j in np.argsort(-column) if column[j] >= C1_BAR]
        if not group:
            continue
        best = report.targets[f.feature]["best_latent"]
        group = [best, *[j for j in group if j != best]]
        direction = probe_direction(model, dataset, hook, f.feature, max_sentences=scale.analysis_sentences)
        r = _interventions_with_a_null(model, sae, dataset, f.feature, group, best, direction, scale, seed)
        group = r.latents
        out.append(
            InterventionEvidence(
                feature=f.feature,
                latents=group,
                clamp_gap_closure=r.clamp.gap_closure,
                null_clamp_interval=tuple(r.null_clamp.interval_95),
                group_ablation_effect=r.group_ablation.effect,
                null_ablation_interval=tuple(r.null_ablation.interval_95),
                probe_ablation_effect=r.probe_control.effect,
                what_the_clamp_did=r.clamp.describe(),
            )
        )
    return out


def _interventions_with_a_null(model, sae, dataset, feature, group, best, direction, scale: Scale, seed: int):
    """[`feature_interventions`][formal_sae.feature_interventions], halving the group (best latents first) while the SAE has too few
    other live latents to draw matched null groups of its size."""
    while True:
        try:
            return feature_interventions(
                model, sae, dataset, feature, group, clamp_latents=[best], probe_direction=direction, n_null=scale.n_null,
                max_sentences=scale.intervention_sentences, seed=seed,
            )  # fmt: skip
        except FormalSAEError as e:
            if "too few" not in str(e) or len(group) == 1:
                raise
            group = group[: len(group) // 2]


# ------------------------------------------------------------------------------ C4
def c4_evidence(grammar: str, model, dataset, out: Path, scale: Scale, seed: int, device: str) -> C4Evidence:
    """Plain and causal SAEs of ``scale.causal_seeds`` seeds, measured on the same held-out pairs."""
    pairs = held_out_pairs(model, dataset, max_sentences=scale.intervention_sentences, seed=seed)
    base = dataclasses.replace(scale.causal_base, device=device)
    results = []
    for s in range(scale.causal_seeds):
        measured = {}
        for name, beta in (("plain", 0.0), ("causal", scale.causal.coefficient)):
            d = out / CAUSAL_SAES_DIR / f"{name}-seed{s}"
            sae = (
                load_sae(d, device=device) if d.exists()
                else train_causal_sae(model, dataset, dataclasses.replace(base, seed=seed + s),
                                      dataclasses.replace(scale.causal, coefficient=beta), out_dir=d, progress=False)
            )  # fmt: skip
            measured[name] = _c4_measures(model, sae, dataset, pairs, scale)
        results.append(SeedPair(seed + s, measured["plain"], measured["causal"]))
    return C4Evidence(grammar, results)


def _c4_measures(model, sae, dataset, pairs, scale: Scale) -> dict[str, float | None]:
    m = evaluate_sae(model, sae, dataset, n_samples=scale.validity_samples, repeats=scale.validity_repeats,
                     max_sentences=scale.intervention_sentences)  # fmt: skip
    interp = interpolation_metrics(model, sae, dataset, pairs)
    report = analyze(model, sae, dataset, max_sentences=scale.intervention_sentences)
    # every structural feature's best latent: the same features in both SAEs (matched by feature, not index)
    values = {t.name: t.values for t in targets_of(report.aligned)}
    structural = {
        name: t["best_latent"] for name, t in report.targets.items()
        if name in values and feature_role(report.aligned.token_ids, values[name]) == STRUCTURAL
    }  # fmt: skip
    results = list(effect_predictability(model, sae, dataset, structural, max_sentences=scale.intervention_sentences).values())
    measured = [p for p in results if p.r2 is not None]
    return {
        "causal_loss": interp.causal_loss,
        "linearity_error": interp.linearity_error,
        "predictability": predictability_summary(results),
        "predictability_r2_median": float(np.median([p.r2 for p in measured])) if measured else None,
        "predictability_slope_median": float(np.median([p.slope for p in measured if p.slope is not None])) if measured else None,
        "explained_variance": m["explained_variance"],
        "ce_loss_score": m["ce_loss_score"],
        "validity": m["validity"],
    }

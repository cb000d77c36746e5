"""The reproduction report: the claims table, every threshold, and each language's evidence with its uncertainty."""

from __future__ import annotations

from typing import Any

from formal_sae import CORRELATIONS_PNG, MISSING, number
from formal_sae.reproduce.claims import THRESHOLDS, ClaimResult, main_effects, sane
from formal_sae.reproduce.evidence import C1Evidence, C2Evidence, C3Evidence, C4Evidence
from formal_sae.reproduce.paper_sweeps import PaperSweepResult
from formal_sae.reproduce.scales import Scale
from formal_sae.reproduce.stages import ANALYSIS_DIR, PROBES_DIR, PROBES_MD, PROBES_PNG


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # "|rho|" must not split a table cell


def report_markdown(
    results: dict[str, dict], claims: dict[str, ClaimResult], scale: Scale, paper_sweeps: list[PaperSweepResult] | None = None
) -> str:
    seconds = sum(r["seconds"] for r in results.values())
    langs = list(results)
    lines = [
        "# formal-sae reproduction report",
        "",
        f"Scale `{scale.name}`, languages {', '.join(langs)}; {seconds / 60:.1f} minutes. Every number below was measured in "
        "this run. Each claim is a pre-registered test per language (supported / mixed / not supported / not tested); "
        "overall, a claim is supported when at least two languages support it (C4 follows English).",
        "",
        "## Claims",
        "",
        "| claim | overall | " + " | ".join(langs) + " |",
        "|---|---|" + "---|" * len(langs),
    ]
    for c in claims.values():
        row = [f"**{c.claim}**: {c.statement}", f"**{c.overall.verdict}**"]
        row += [c.languages[g].verdict if g in c.languages else MISSING for g in langs]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "### Why", ""]
    for c in claims.values():
        lines.append(f"- **{c.claim}** ({c.overall.verdict}): {_cell(c.overall.reason)}")
        for g, v in c.languages.items():
            lines.append(f"    - {g}: **{v.verdict}**: {_cell(v.reason)}")
    lines += ["", "### Thresholds", "", "| name | value | why |", "|---|---|---|"]
    lines += [f"| `{name}` | {value:g} | {why} |" for name, (value, why) in THRESHOLDS.items()]
    lines += ["", "## Where this run differs from the paper", ""] + [f"- {n}" for n in scale.notes]
    lines += [
        "- validity uses formal-sae's scale-correct splice for normalised SAEs; C2 also reports the paper's raw splice",
        "- the causal loss writes edited activations at the sentence positions (the authors' code was shifted by 7 positions)",
    ]
    for g, r in results.items():
        lines += _language(g, r)
    if paper_sweeps:
        lines += _paper_sweeps(paper_sweeps)
    return "\n".join(lines) + "\n"


def _language(g: str, r: dict[str, Any]) -> list[str]:
    m, ev = r["model"], r["evidence"]
    lines = [
        "",
        f"## {g}",
        "",
        f"Model: `{m['preset']}` preset, {m['steps']} steps, validity {m['validity']:.3f} ± {m['validity_std']:.3f}, "
        f"validation loss {m['val_loss']:.3f}. Analysed SAE: `{r['analysed_cell']}`.",
    ]
    lines += _c1(C1Evidence.from_dict(ev["C1"]), g)
    lines += _c2(C2Evidence.from_dict(ev["C2"]))
    lines += _c3(C3Evidence.from_dict(ev["C3"]), g)
    lines += _c4(C4Evidence.from_dict(ev["C4"]))
    return lines


def _c1(ev: C1Evidence, g: str) -> list[str]:
    lines = [
        "",
        f"### C1: latents vs features ({ev.n_seeds} seed(s); 95% bootstrap interval over sentences)",
        "",
        "| feature | role | best latent | \\|rho\\| [95% CI] | F1 | untrained SAEs (max) | probe at hook | probe at embedding |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in sorted(ev.features, key=lambda f: (f.role, -f.abs_rho)):
        lines.append(
            f"| `{f.feature}` | {f.role} | {f.latent} | {number(f.abs_rho)} [{number(f.abs_rho_ci[0])}, {number(f.abs_rho_ci[1])}] | "
            f"{number(f.f1)} | {number(f.control_abs_rho)} | {number(f.probe, 2)} | {number(f.probe_embed, 2)} |"
        )
    return [
        *lines,
        "",
        f"Probe columns: the linear probe at the SAE's hook (R², or accuracy rescaled from the majority class, 0, to perfect, 1: "
        f"the ceiling a latent is read against) and the same probe on the "
        f"token embedding (the control: decodable there means present in the token). Every hook: [{g}/{PROBES_DIR}/{PROBES_MD}]"
        f"({g}/{PROBES_DIR}/{PROBES_MD}).",
        "",
        f"![correlations]({g}/{ANALYSIS_DIR}/{CORRELATIONS_PNG}) ![probes]({g}/{PROBES_DIR}/{PROBES_PNG})",
    ]


def _c2(ev: C2Evidence) -> list[str]:
    lines = [
        "",
        "### C2: the sweep and the main effect of each factor",
        "",
        "| cell | factors | explained variance | L0 | validity (scale-correct) | validity (paper's splice) |",
        "|---|---|---|---|---|---|",
    ]
    for c in ev.cells:
        factors = ", ".join(f"{k} {v}" for k, v in c.factors.items())
        lines.append(
            f"| `{c.cell_id}` | {factors} | {number(c.explained_variance)} | {number(c.l0, 1)} | "
            f"{number(c.validity, 2)} ± {number(c.validity_se, 2)} | {number(c.validity_paper_splice, 2)} ± {number(c.validity_paper_splice_se, 2)} |"
        )
    lines += [
        "",
        "| factor | validity effect ± SE | (paper's splice) | explained-variance effect | groups |",
        "|---|---|---|---|---|",
    ]
    good = [c for c in ev.cells if sane(c.explained_variance, c.l0)[0]]
    for v, p, e in zip(main_effects(good), main_effects(good, "validity_paper_splice"), main_effects(good, "explained_variance"),
                       strict=True):  # fmt: skip
        lines.append(
            f"| {v.factor} | {number(v.effect, 2)} ± {number(v.se, 2)} | {number(p.effect, 2)} ± {number(p.se, 2)} | {number(e.effect)} | {v.n_groups} |"
        )
    return lines


def _c3(ev: C3Evidence, g: str) -> list[str]:
    lines = [
        "",
        "### C3: interventions on well-correlated latents, against matched random latents and the probe direction",
        "",
        "| feature | latents | clamp gap closure | null 95% | group ablation effect | null 95% | probe-direction ablation | what the clamp did |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in ev.features:
        lines.append(
            f"| `{f.feature}` | {', '.join(map(str, f.latents[:6]))}{' ...' if len(f.latents) > 6 else ''} | "
            f"{number(f.clamp_gap_closure, 2)} | [{number(f.null_clamp_interval[0], 2)}, {number(f.null_clamp_interval[1], 2)}] | "
            f"{number(f.group_ablation_effect)} | [{number(f.null_ablation_interval[0])}, {number(f.null_ablation_interval[1])}] | "
            f"{number(f.probe_ablation_effect)} | {_cell(f.what_the_clamp_did)} |"
        )
    if not ev.features:
        lines.append(f"| {MISSING} | no structural feature has a latent at the C1 bar | | | | | | |")
    return lines


def _c4(ev: C4Evidence) -> list[str]:
    keys = ("causal_loss", "linearity_error", "predictability", "explained_variance", "ce_loss_score", "validity")
    lines = ["", "### C4: plain vs causal SAE per seed (same held-out pairs)", "", "| seed | SAE | " + " | ".join(keys) + " |"]
    lines.append("|---|---|" + "---|" * len(keys))
    for p in ev.pairs:
        for name, m in (("plain", p.plain), ("causal", p.causal)):
            lines.append(f"| {p.seed} | {name} | " + " | ".join(number(m.get(k), 4) for k in keys) + " |")
    return lines


def _paper_sweeps(groups: list[PaperSweepResult]) -> list[str]:
    lines = [
        "",
        "## The authors' whole grid",
        "",
        f"{sum(len(g.rows) for g in groups)} SAEs in {len(groups)} groups of the paper's sweeps. A group whose cells are "
        "its language's main sweep's (same model, data and settings) takes that sweep's SAEs.",
        "",
        "| sweeps | model | SAE data | SAEs | where |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {g.sweeps} | {g.grammar} (`{g.model}`) | {g.sae_grammar} | {len(g.rows)} | [{g.sweep_dir}]({g.sweep_dir}) |"
        for g in groups
    ]
    lines += [
        "",
        "| sweeps | sparsity | variant | best validity | its SAE | explained variance | L0 |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        for kind, variant, row in g.best_validity():
            if row is None:
                lines.append(f"| {g.sweeps} | {kind} | {variant} | {MISSING} | | | |")
                continue
            lines.append(
                f"| {g.sweeps} | {kind} | {variant} | {number(row['validity'], 2)} | `{row['cell_id']}` | "
                f"{number(row.get('explained_variance'))} | {number(row.get('l0'), 1)} |"
            )
    return lines

"""How long a study will take, from its scale's sizes and per-unit costs measured on 2 CPU cores.

[`reproduce`][formal_sae.reproduce.reproduce] prints `estimate_time`'s table before it starts, and
warns when the total exceeds `CPU_HOURS_BOUND` on the CPU. Every unit cost is a named constant
with the measurement it comes from: the benchmarks page (docs/benchmarks.md: AMD EPYC, 2 cores,
torch 2.13 CPU), or one calibration run of ``reproduce --grammar expr --scale quick`` on the same
kind of machine (2026-11-30, load average 1.0-2.0 from other jobs, so these figures are upper
bounds: 87 s for that language where the idle three-language run took 153 s). Stages are
estimated at their maxima (a model with the plateau rule at its maximum steps). Other devices have
no measured costs: the CPU figures are shown as an upper bound, without the warning.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

from formal_sae import PAPER_PROMPT, PRESETS, SweepGrid
from formal_sae.reproduce.paper_sweeps import extra_grammars, plan, runs_paper_sweeps
from formal_sae.reproduce.scales import Scale, model_steps_of

#: Mean sentence length in tokens (docs/benchmarks.md, "Grammars": mean length over 5,000 samples),
#: of the main languages and of the variants the authors' grid names (`paper_sweeps`).
MEAN_SENTENCE_TOKENS = {
    "dyck2": 11.8, "expr": 4.7, "english": 7.5,
    "english-transitive": 11.0, "english-relative": 22.3, "english-pp": 20.6, "dyck2-shallow": 7.1,
}  # fmt: skip
#: Real target tokens per second of ``train_model``'s step (packed batches of 128 sentences):
#: docs/benchmarks.md "Training throughput", the lowest of the three grammars per preset
#: (``small`` 39,038-50,233, ``paper`` 20,206-22,578). ``tiny`` was not benchmarked: ``small``'s
#: figure, an upper bound on its time.
LM_TOKENS_PER_SECOND = {"tiny": 39_000.0, "small": 39_000.0, "paper": 20_000.0}
#: Cost of a forward pass relative to the ``small`` preset (the ratio of the two presets'
#: training throughputs above, ~2.0): scales every model-bound cost measured on ``small``.
PRESET_COST = {"tiny": 1.0, "small": 1.0, "paper": 2.0}
#: Seconds per generated validity sample (``small``): docs/benchmarks.md "Validity", 0.42-0.55 s
#: for 128 x 5 samples.
VALIDITY_SECONDS_PER_SAMPLE = 0.55 / 640
#: Seconds per sentence of data generation (sampling, features, Arrow files) per sentence token:
#: the calibration run, 3.9 s for 22,000 Expr sentences of 4.7 tokens.
DATA_SECONDS_PER_TOKEN = 3.9 / (22_000 * 4.7)
#: Seconds per SAE per 1,000 training tokens: ``a + b * d_in * d_sae`` (2 torch threads, one
#: process). TopK: docs/benchmarks.md "SAEs" (b), 4.8 ms per 1,024-token step at d_in 64,
#: d_sae 256 (profile), and the 19-cell TopK panel's 16.3 s of training for 200,000 tokens a cell.
#: L1: the same page, 0.94 ms at d_sae 128 and 3.38 ms at d_sae 512 (d_in 64, 2 threads).
#: Sparsemax encoders (the authors' sweep 1iii) were not measured: TopK's figure (both sort each
#: token's pre-activations), not a measurement.
SAE_SECONDS_PER_1K_TOKENS = {"topk": (0.6e-3, 2.5e-7), "l1": (0.13e-3, 1.0e-7), "sparsemax": (0.6e-3, 2.5e-7)}
#: Speed-up of ``sweep(workers=2)`` over one process on both cores: docs/benchmarks.md (b),
#: 1.31x-1.50x (the lower end; more workers were not measured, so they count as 2).
WORKERS_SPEEDUP = 1.3
#: Seconds per token of the sweep's shared activation cache (``small``): docs/benchmarks.md (b),
#: 1.1-1.7 s per 200,000 tokens.
ACTIVATION_SECONDS_PER_TOKEN = 1.7 / 200_000
#: Seconds of a sweep cell's evaluation: a fixed part (metrics files, latent density plot) plus
#: per test sentence (``small``); validity samples are counted apart. The calibration run: 7.8 s
#: for 8 cells of 300 sentences and 64 x 2 samples.
SWEEP_EVAL_FIXED_SECONDS = 0.3
SWEEP_EVAL_SECONDS_PER_SENTENCE = 1.7e-3
#: Seconds per sentence of ``probe_features`` at every residual hook (``small``): the calibration
#: run, 7.8 s for 600 sentences.
PROBE_SECONDS_PER_SENTENCE = 7.8 / 600
#: Seconds per sentence per SAE of ``analyze`` (``small``): the calibration run, 1.47 s for 3,000
#: sentence-analyses.
ANALYZE_SECONDS_PER_SENTENCE = 1.47 / 3_000
#: Seconds per sentence per random group of ``feature_interventions`` (``small``): the
#: calibration run, 0.33 s for one feature with 10 null groups on 150 sentences.
INTERVENTION_SECONDS_PER_SENTENCE = 0.33 / (11 * 150)
#: Seconds per sentence of a causal fine-tuning step (``small``): the calibration run, 6.7 s for
#: 4 SAEs x (60 pre-training steps + 60 steps of 32 sentences).
CAUSAL_SECONDS_PER_SENTENCE = 0.7e-3
#: Seconds per test sentence of the C4 measures of one SAE, validity apart (``small``): the
#: calibration run, 5.9 s for 4 SAEs on 150 sentences.
C4_SECONDS_PER_SENTENCE = 9e-3
#: Structural features intervened on per language (C3), for the estimate: the quick run had 1.
C3_FEATURES = 2
#: The bound above which a run on the CPU is warned about before it starts.
CPU_HOURS_BOUND = 8.0

STAGES = ("data", "model", "sweep", "analysis", "causal")


@dataclass
class TimeEstimate:
    """Estimated seconds per language and stage (`STAGES`), their total, and the device they are for."""

    scale: str
    device: str
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    paper_sweeps: dict[str, dict[str, float]] = field(default_factory=dict)
    """the authors' whole grid after the languages, per model grammar (`estimate_paper_sweeps`)"""

    @property
    def total(self) -> float:
        return sum(sum(stages.values()) for part in (self.seconds, self.paper_sweeps) for stages in part.values())

    @property
    def exceeds_bound(self) -> bool:
        """On the CPU, the total is above `CPU_HOURS_BOUND`."""
        return self.device == "cpu" and self.total > CPU_HOURS_BOUND * 3600

    def to_text(self) -> str:
        """The table ``reproduce`` prints."""
        where = "2 CPU cores" if self.device == "cpu" else f"2 CPU cores (no measured costs on {self.device}: an upper bound)"
        width = max(9, *(len(g) for part in (self.seconds, self.paper_sweeps) for g in part))
        lines = [f"estimated time of scale {self.scale!r} on {where}, per stage:"]
        lines.append("  " + " ".join([f"{'language':>{width}}", *(f"{h:>9}" for h in (*STAGES, "total"))]))
        lines += [_row(grammar, stages, width) for grammar, stages in self.seconds.items()]
        if self.paper_sweeps:
            lines.append("  then the authors' whole grid (PAPER_SWEEPS: the variants' models and the groups' own SAEs):")
            lines += [_row(grammar, stages, width) for grammar, stages in self.paper_sweeps.items()]
        lines.append(f"  total: {duration(self.total)}")
        return "\n".join(lines)

    def warning(self) -> str | None:
        """The warning printed before a run whose estimate exceeds the bound, or None."""
        if not self.exceeds_bound:
            return None
        return (
            f"scale {self.scale!r} is estimated to take {duration(self.total)} on this CPU (over {CPU_HOURS_BOUND:g} hours): "
            "run it on a GPU (--device cuda) or choose a smaller scale (--scale standard or quick)"
        )


def _row(label: str, stages: dict[str, float], width: int) -> str:
    cells = [duration(stages[s]) if stages[s] else "-" for s in STAGES] + [duration(sum(stages.values()))]
    return "  " + " ".join([f"{label:>{width}}", *(f"{c:>9}" for c in cells)])


def duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3.4 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def sae_seconds(tokens: int, d_in: int, d_sae: int, family: str) -> float:
    """Training seconds of one SAE (one process on 2 cores)."""
    a, b = SAE_SECONDS_PER_1K_TOKENS[family]
    return tokens / 1000 * (a + b * d_in * d_sae)


def _tokens(scale: Scale, grammar: str) -> float:
    """Mean tokens of a sequence: the prompt, the sentence, ``<eos>``."""
    return MEAN_SENTENCE_TOKENS[grammar] + (len(PAPER_PROMPT) if scale.prompt_format == "paper" else 1) + 1


def data_seconds(scale: Scale, grammar: str) -> float:
    """Generating a language's dataset."""
    return (scale.n_train + 2 * scale.n_eval) * MEAN_SENTENCE_TOKENS[grammar] * DATA_SECONDS_PER_TOKEN


def model_seconds(scale: Scale, grammar: str) -> float:
    """Training a language's model, its evaluations and final validity included."""
    cost, tokens = PRESET_COST[scale.preset], _tokens(scale, grammar)
    steps = model_steps_of(scale, grammar)
    train = {"eval_every": max(1, steps // 4), "validity_samples": scale.validity_samples,
             "val_sentences": 1024, "batch_size": 128, **scale.model_train}  # fmt: skip
    evals = math.ceil(steps / train["eval_every"])
    validation_tokens = min(train["val_sentences"], scale.n_eval) * tokens  # a forward pass: ~a third of a training step
    per_eval = train["validity_samples"] * VALIDITY_SECONDS_PER_SAMPLE * cost + validation_tokens / (
        3 * LM_TOKENS_PER_SECOND[scale.preset]
    )
    final = scale.validity_samples * scale.validity_repeats * VALIDITY_SECONDS_PER_SAMPLE * cost
    return steps * train["batch_size"] * tokens / LM_TOKENS_PER_SECOND[scale.preset] + evals * per_eval + final


def sweep_seconds(scale: Scale, grid: SweepGrid, grammar: str) -> float:
    """Sweeping ``grid`` on a model of the scale's preset, on SAE data of ``grammar``: its cells
    (their training and evaluation) and the shared activation cache."""
    cost, d_in = PRESET_COST[scale.preset], PRESETS[scale.preset].d_model
    speedup = WORKERS_SPEEDUP if scale.workers > 1 else 1.0
    ev = scale.sweep_eval
    samples = ev.get("n_samples", 64) * ev.get("repeats", 2)
    eval_cell = (
        SWEEP_EVAL_FIXED_SECONDS
        + (ev.get("max_sentences", 256) * SWEEP_EVAL_SECONDS_PER_SENTENCE + samples * VALIDITY_SECONDS_PER_SAMPLE) * cost
    )
    cells = 0.0
    for cell in grid.cells:
        c = cell.config
        family = "topk" if c.k is not None else "sparsemax" if c.sparsemax else "l1"
        cells += sae_seconds(c.training_tokens, d_in, d_in * c.expansion_factor, family) + eval_cell
    length = MEAN_SENTENCE_TOKENS[grammar]
    cache = min(max(c.config.training_tokens for c in grid.cells), scale.n_train * length) * ACTIVATION_SECONDS_PER_TOKEN * cost
    return cells / speedup + cache


def estimate_language(scale: Scale, grammar: str) -> dict[str, float]:
    """Estimated seconds of each stage of one language at ``scale`` on 2 CPU cores."""
    cost = PRESET_COST[scale.preset]
    d_in = PRESETS[scale.preset].d_model
    grid = scale.grid(d_in)

    analysed_tokens = max(c.config.training_tokens for c in grid.cells)
    n = scale.analysis_sentences
    analysis = (
        (scale.analysis_seeds - 1) * sae_seconds(analysed_tokens, d_in, 2 * d_in, "topk")
        + (scale.analysis_seeds + scale.control_saes) * n * ANALYZE_SECONDS_PER_SENTENCE * cost
        + n * PROBE_SECONDS_PER_SENTENCE * cost
        + C3_FEATURES * (scale.n_null + 1) * scale.intervention_sentences * INTERVENTION_SECONDS_PER_SENTENCE * cost
    )

    base, causal = scale.causal_base, scale.causal
    one_sae = (
        sae_seconds(causal.pretrain_steps * base.batch_size_tokens, d_in, d_in * base.expansion_factor, "topk")
        + causal.steps * causal.sentences_per_step * CAUSAL_SECONDS_PER_SENTENCE * cost
        + scale.intervention_sentences * C4_SECONDS_PER_SENTENCE * cost
        + scale.validity_samples * scale.validity_repeats * VALIDITY_SECONDS_PER_SAMPLE * cost
    )
    return {
        "data": data_seconds(scale, grammar),
        "model": model_seconds(scale, grammar),
        "sweep": sweep_seconds(scale, grid, grammar),
        "analysis": analysis,
        "causal": 2 * scale.causal_seeds * one_sae,
    }


def estimate_paper_sweeps(scale: Scale) -> dict[str, dict[str, float]]:
    """Estimated seconds of the authors' whole grid after the main languages (`paper_sweeps`), per
    model grammar and stage: the variants' data and models, and the groups that train SAEs of
    their own (the others take the main sweeps')."""
    groups = plan(scale)
    out = {g: {s: 0.0 for s in STAGES} for g in dict.fromkeys(p.group.grammar for p in groups if not p.in_main_sweep)}
    for grammar in extra_grammars(groups):
        stages = out.setdefault(grammar, {s: 0.0 for s in STAGES})
        stages["data"] = data_seconds(scale, grammar)
        if grammar in {p.group.grammar for p in groups}:
            stages["model"] = model_seconds(scale, grammar)
    for p in groups:
        if not p.in_main_sweep:
            out[p.group.grammar]["sweep"] += sweep_seconds(scale, p.grid, p.data_grammar)
    return out


def estimate_time(scale: Scale, grammars: list[str], device: str = "cpu") -> TimeEstimate:
    """The estimated time of ``reproduce`` at ``scale`` for ``grammars``, per language and stage, and
    of the authors' whole grid after them where the run sweeps it."""
    extra = estimate_paper_sweeps(scale) if runs_paper_sweeps(scale, grammars) else {}
    return TimeEstimate(
        scale.name, "cpu" if device == "cpu" else device, {g: estimate_language(scale, g) for g in grammars}, extra
    )


def announce(estimate: TimeEstimate) -> None:
    """Print the estimate, and warn (``UserWarning``, also printed) when it exceeds the bound."""
    print(estimate.to_text(), flush=True)
    message = estimate.warning()
    if message:
        print(f"warning: {message}", flush=True)
        warnings.warn(message, UserWarning, stacklevel=3)

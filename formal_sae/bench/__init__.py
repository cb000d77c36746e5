"""A ground-truth benchmark of SAE architectures (``formal-sae bench``).

Every trainable SAELens architecture, the paper's SAE and the causal SAE are trained on each
language's model at matched L0 (coefficients calibrated, not guessed), several widths and seeds,
and scored against features known to be true in that model, and on whether their latents
causally matter: each score beside the untrained SAE of the same width (the floor), the model's
own basis and PCA, and the supervised probe dictionary (the ceiling). Modules follow the run:
`config` (what a run is), `calibration` (matched L0), `baselines`, `scoring` and `stability`
(one dictionary's scores), `saelens_evals` (SAELens's own evaluation of the same tokens), `leaderboard`, `pareto` and `saebench` (outputs), `runner` (the panel) and
`external` (your own SAEs).
"""

from formal_sae.bench.baselines import BASELINES
from formal_sae.bench.calibration import Calibration, calibrate
from formal_sae.bench.config import BENCH_PRESETS, CAUSAL, BenchConfig, ScoringSettings, panel_architectures
from formal_sae.bench.external import score_saes
from formal_sae.bench.leaderboard import LeaderboardRow, build_leaderboard
from formal_sae.bench.runner import BenchResult, bench, panel_grid
from formal_sae.bench.saelens_evals import SAELensEval, saelens_eval
from formal_sae.bench.score import BenchScore
from formal_sae.bench.scoring import score_sae
from formal_sae.bench.stability import decoder_stability

__all__ = [
    "BASELINES",
    "BENCH_PRESETS",
    "CAUSAL",
    "BenchConfig",
    "BenchResult",
    "BenchScore",
    "Calibration",
    "LeaderboardRow",
    "SAELensEval",
    "ScoringSettings",
    "bench",
    "build_leaderboard",
    "calibrate",
    "decoder_stability",
    "panel_architectures",
    "panel_grid",
    "saelens_eval",
    "score_sae",
    "score_saes",
]

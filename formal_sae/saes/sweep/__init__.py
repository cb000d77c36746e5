"""Sweeps: grids of SAEs trained on one model's shared activations, evaluated, tabulated and plotted.

* `grid`: [`SweepGrid`][formal_sae.SweepGrid] (named cells with stable ids), its JSON form, [`load_grid`][formal_sae.load_grid];
* `paper`: the paper's grid as data, [`paper_grid`][formal_sae.paper_grid];
* `evaluation`: [`SweepEvaluation`][formal_sae.SweepEvaluation], how each cell is evaluated;
* `runner`: [`sweep`][formal_sae.sweep], which trains every cell into ``out_dir/cells/<id>/``, resumably;
* `cells`: one cell trained, saved and evaluated into its folder, the same on every backend;
* `workers` and `ray_backend`: where cells run (forked processes here, or
  [`RayBackend`][formal_sae.RayBackend]: tasks on a Ray cluster, which `ray_cluster` connects to and checks);
* `results`: the result rows, ``results.csv``/``.json``/``.md`` and the validity heat maps
  (drawn by `formal_sae.plotting`).

Every file is written atomically.
"""

from formal_sae.saes.sweep.evaluation import SweepEvaluation
from formal_sae.saes.sweep.grid import SweepCell, SweepGrid, cell_id
from formal_sae.saes.sweep.loading import load_grid
from formal_sae.saes.sweep.paper import (
    BUILT_IN_GRIDS,
    DEFAULT_PAPER_VARIANTS,
    PAPER_D_IN,
    PAPER_EXPANSION_FACTORS,
    PAPER_L1_ALPHAS,
    PAPER_SCALES,
    PAPER_SWEEPS,
    PAPER_TOPK_KS,
    PAPER_VARIANTS,
    PaperSweep,
    paper_grid,
)
from formal_sae.saes.sweep.ray_backend import RayBackend
from formal_sae.saes.sweep.results import (
    HEATMAP_DIR,
    RESULTS_CSV,
    RESULTS_JSON,
    RESULTS_MD,
    result_row,
    results_markdown,
    sparsity_of,
    variant_of,
    write_results,
)
from formal_sae.saes.sweep.runner import CELLS_DIR, GRID_FILE, MANIFEST_FORMAT, METRICS_FILE, sweep

__all__ = [
    "BUILT_IN_GRIDS",
    "CELLS_DIR",
    "DEFAULT_PAPER_VARIANTS",
    "GRID_FILE",
    "HEATMAP_DIR",
    "MANIFEST_FORMAT",
    "METRICS_FILE",
    "PAPER_D_IN",
    "PAPER_EXPANSION_FACTORS",
    "PAPER_L1_ALPHAS",
    "PAPER_SCALES",
    "PAPER_SWEEPS",
    "PAPER_TOPK_KS",
    "PAPER_VARIANTS",
    "RESULTS_CSV",
    "RESULTS_JSON",
    "RESULTS_MD",
    "PaperSweep",
    "RayBackend",
    "SweepCell",
    "SweepEvaluation",
    "SweepGrid",
    "cell_id",
    "load_grid",
    "paper_grid",
    "result_row",
    "results_markdown",
    "sparsity_of",
    "sweep",
    "variant_of",
    "write_results",
]

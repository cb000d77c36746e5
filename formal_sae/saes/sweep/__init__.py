"""Sweeps: grids of SAEs trained on one model's shared activations, evaluated, tabulated and plotted.

* :mod:`.grid`: :class:`SweepGrid` (named cells with stable ids), its JSON form, :func:`load_grid`;
* :mod:`.paper`: the paper's grid as data, :func:`paper_grid`;
* :mod:`.evaluation`: :class:`SweepEvaluation`, how each cell is evaluated;
* :mod:`.runner`: :func:`sweep`, which trains every cell into ``out_dir/cells/<id>/``, resumably;
* :mod:`.results`: the result rows, ``results.csv``/``.json``/``.md`` and the validity heat maps
  (drawn by :mod:`formal_sae.plotting`).

Every file is written atomically.
"""

from formal_sae.saes.sweep.evaluation import SweepEvaluation
from formal_sae.saes.sweep.grid import SweepCell, SweepGrid, cell_id
from formal_sae.saes.sweep.loading import load_grid
from formal_sae.saes.sweep.paper import (
    BUILT_IN_GRIDS,
    PAPER_D_IN,
    PAPER_EXPANSION_FACTORS,
    PAPER_L1_ALPHAS,
    PAPER_SCALES,
    PAPER_TOPK_KS,
    PAPER_VARIANTS,
    paper_grid,
)
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
    "GRID_FILE",
    "HEATMAP_DIR",
    "MANIFEST_FORMAT",
    "METRICS_FILE",
    "PAPER_D_IN",
    "PAPER_EXPANSION_FACTORS",
    "PAPER_L1_ALPHAS",
    "PAPER_SCALES",
    "PAPER_TOPK_KS",
    "PAPER_VARIANTS",
    "RESULTS_CSV",
    "RESULTS_JSON",
    "RESULTS_MD",
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

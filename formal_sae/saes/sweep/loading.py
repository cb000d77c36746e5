"""One way to get a grid: a [`SweepGrid`][formal_sae.SweepGrid], its JSON form as a mapping, a built-in name or a
JSON grid file. Above both the grid classes and the paper's grid, which is built from them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from formal_sae.errors import FormalSAEError, SAEError
from formal_sae.io import read_json
from formal_sae.saes.sweep.grid import SweepGrid
from formal_sae.saes.sweep.paper import BUILT_IN_GRIDS, built_in_grid


def load_grid(
    grid: SweepGrid | Mapping[str, Any] | str | os.PathLike,
    *,
    scale: str | None = None,
    d_in: int | None = None,
    device: str | None = None,
) -> SweepGrid:
    """A [`SweepGrid`][formal_sae.SweepGrid] from a grid, a mapping (`SweepGrid.from_dict`), a built-in name
    or the path of a JSON grid file.

    Built-in names (`BUILT_IN_GRIDS`): ``"paper"`` (the paper's
    grid, at the paper's scale unless ``scale`` says otherwise) and ``"paper-small"`` (the same
    cells at scale ``small``), sized for a hook of width ``d_in`` (default 128, the paper model's):
    TopK cells with k > d_in x expansion factor are left out. ``scale`` applies to built-in grids
    only; ``d_in`` is ignored by the others. ``device``: every cell's SAE trains there
    ([`SweepGrid.on_device`][formal_sae.saes.sweep.grid.SweepGrid.on_device], replacing the device the
    grid gives); None keeps the grid's (a built-in grid's is ``cpu``).
    """
    if isinstance(grid, (str, os.PathLike)) and str(grid) in BUILT_IN_GRIDS:
        loaded = built_in_grid(str(grid), scale=scale, d_in=d_in)
    else:
        if isinstance(grid, (SweepGrid, Mapping)):
            loaded, source = (grid if isinstance(grid, SweepGrid) else SweepGrid.from_dict(grid)), "a grid object"
        else:
            loaded, source = _read_grid_file(Path(str(grid))), f"the grid file {grid}"
        if scale is not None:
            raise SAEError(f"scale applies to the built-in paper grid only, not to {source}")
    return loaded if device is None else loaded.on_device(device)


def _read_grid_file(path: Path) -> SweepGrid:
    if not path.is_file():
        raise SAEError(f"unknown grid {str(path)!r}: use 'paper', 'paper-small' or the path of a JSON grid file")
    try:
        data = read_json(path, what="grid file")
    except FormalSAEError as e:
        raise SAEError(str(e)) from None
    return SweepGrid.from_dict(data)

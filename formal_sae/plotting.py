"""The package's one matplotlib setup and its one number formatter for tables and figures.

Every figure formal-sae draws goes through :func:`pyplot`; every number it prints in a table goes
through :func:`number`. matplotlib is imported lazily: most commands draw nothing, and importing it
costs about half a second.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from formal_sae.io import atomic_write_bytes

#: What a table shows for a missing value (None or NaN).
MISSING = "–"


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def number(value: Any, digits: int = 3, style: str = "f") -> str:
    """A value for a table: :data:`MISSING` for None or NaN, floats with ``digits`` in ``style``
    (``"f"`` fixed, ``"g"`` significant), anything else as ``str``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:.{digits}{style}}"
    return str(value)


def plot_heatmap(
    values: list[list[float]], row_labels: Sequence[str], col_labels: Sequence[str], title: str, xlabel: str, path: Path
) -> None:
    """An annotated heat map of values in [0, 1] (rows: expansion factor, columns: ``xlabel``) as a PNG."""
    plt = pyplot()
    data = np.array(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.1 + 0.8 * len(col_labels), 1.2 + 0.55 * len(row_labels)))
    cmap = plt.colormaps["viridis"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(col_labels)), labels=list(col_labels))
    ax.set_yticks(range(len(row_labels)), labels=list(row_labels))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("expansion factor")
    ax.set_title(title, fontsize=9)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v = data[i, j]
            ax.text(j, i, number(float(v), 2), ha="center", va="center", fontsize=8,
                    color="black" if np.isnan(v) or v > 0.6 else "white")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())

"""A sweep's results: one row per cell (its config's fields, what it is, its metrics), written as
``results.csv``, ``results.json`` and ``results.md``, with the validity heat maps and the
trade-off plots (L0 against explained variance and against validity, one colour per architecture,
variant and expansion factor).

Rows stay plain dicts: they are a table with one column per config field and per metric, and a
metric an evaluation adds becomes a column without a change here.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from formal_sae.io import atomic_write_text, canonical, to_jsonable, write_json
from formal_sae.plotting import MISSING, number, plot_heatmap, plot_tradeoff
from formal_sae.saes.config import PAPER, SAETrainConfig
from formal_sae.saes.sweep.grid import VARIANT_FIELDS, VARIANT_PARTS, SweepCell, SweepGrid, id_part, sanitize_id

RESULTS_CSV, RESULTS_JSON, RESULTS_MD = "results.csv", "results.json", "results.md"
HEATMAP_DIR = "heatmaps"
TRADEOFF_DIR = "tradeoffs"
#: The trade-off plots: metric -> (file stem, axis label).
TRADEOFFS = {
    "explained_variance": ("l0_vs_explained_variance", "explained variance"),
    "validity": ("l0_vs_validity", "validity (± std over repeats)"),
}

#: The ``SAETrainConfig`` fields that set a SAELens architecture's sparsity, in the order looked at.
SPARSITY_FIELDS = ("k", "l1_coefficient", "l0_coefficient")
#: Record columns renamed in a row, where a metric's name is also a config field's.
_RENAMED = {"architecture": "saved_architecture", "splice": "eval_splice"}
_TIMINGS = ("train_seconds", "train_wall_seconds", "eval_seconds")


def variant_of(config: SAETrainConfig | dict[str, Any]) -> str:
    """The pipeline variant's name: ``none``, ``input``, ``input+recon``, ``prebias+input+dec``, ..."""
    d = config.to_dict() if isinstance(config, SAETrainConfig) else config
    return "+".join(VARIANT_PARTS[f] for f in VARIANT_FIELDS if d.get(f)) or "none"


def sparsity_of(config: SAETrainConfig | dict[str, Any]) -> tuple[str, str, float | int | None]:
    """``(kind, column label, value)``: ``("topk", "k", 16)``, ``("l1", "alpha", 0.01)``, or for a
    SAELens architecture its name with its sparsity setting, e.g. ``("jumprelu", "l0_coefficient", 1.0)``."""
    d = config.to_dict() if isinstance(config, SAETrainConfig) else config
    arch = d.get("architecture")
    if arch == PAPER and d.get("sparsemax"):
        return "sparsemax", "encoder", d["sparsemax"]
    if arch == PAPER:
        return ("topk", "k", d["k"]) if d.get("k") is not None else ("l1", "alpha", d.get("l1_coefficient") or 0.0)
    for name in SPARSITY_FIELDS:
        if d.get(name) is not None:
            return arch, name, d[name]
    return arch, "sparsity", None


def result_row(cell: SweepCell, record: dict[str, Any]) -> dict[str, Any]:
    """A cell's row: ``cell_id``, its config's fields, ``variant``, ``sparsity``/``sparsity_value``,
    the timings and the metrics of its record (the ``metrics.json`` the sweep wrote for it)."""
    config = cell.config.to_dict()
    kind, _, value = sparsity_of(config)
    row: dict[str, Any] = {"cell_id": cell.id, **config, "variant": variant_of(config), "sparsity": kind}
    row["sparsity_value"] = value
    row.update({key: record.get(key) for key in _TIMINGS})
    for key, val in (record.get("metrics") or {}).items():
        if key != "hook_name":  # the config's already
            row[_RENAMED.get(key, key)] = val
    return row


def write_results(
    out: str | os.PathLike, rows: list[dict[str, Any]], grid: SweepGrid, manifest: dict[str, Any], plots: bool = True
) -> list[Path]:
    """Write ``results.csv``, ``results.json``, ``results.md`` and (if ``plots``) the heat maps and
    trade-off plots; returns the heat-map paths."""
    out = Path(out)
    write_json(out / RESULTS_JSON, rows)
    atomic_write_text(out / RESULTS_CSV, results_csv(rows))
    heatmaps = write_heatmaps(out / HEATMAP_DIR, rows) if plots else []
    tradeoffs = write_tradeoff_plots(out / TRADEOFF_DIR, rows) if plots else []
    relative = [p.relative_to(out) for p in heatmaps]
    atomic_write_text(out / RESULTS_MD, results_markdown(rows, grid, manifest, relative, [p.relative_to(out) for p in tradeoffs]))
    return heatmaps


def results_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV: every column any row has, in order of appearance; lists and dicts as JSON."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    return buf.getvalue()


def _csv_value(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(to_jsonable(value), sort_keys=True)
    return "" if value is None else value


def results_markdown(
    rows: list[dict[str, Any]],
    grid: SweepGrid,
    manifest: dict[str, Any],
    heatmaps: Sequence[Path] = (),
    tradeoffs: Sequence[Path] = (),
) -> str:
    """A markdown report: the sweep's settings, one table row per cell, links to the trade-off
    plots and heat maps."""
    ev = manifest.get("evaluation")
    lines = [
        f"# Sweep `{grid.name}`",
        "",
        f"- model: `{manifest['model']['name']}` (weights sha256 `{manifest['model']['fingerprint'][:12]}`)",
        f"- dataset: grammar `{manifest['dataset']['grammar']}`, seed {manifest['dataset']['seed']}",
        f"- cells: {len(rows)} of {len(grid)} finished",
        "- evaluation: "
        + (
            "none"
            if ev is None
            else f"split `{ev['split']}` ({ev['max_sentences']} sentences), validity {ev['n_samples']} samples x {ev['repeats']} repeats, "
            f"splice {ev['splice'] or 'per cell'}"
        ),
        "",
        "| cell | sparsity | value | x | variant | validity | expl. var. | L0 | CE score | dead | input dim. | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        validity = number(r.get("validity"), 2)
        if r.get("validity_std") is not None and validity != MISSING:
            validity += f" ± {number(r['validity_std'], 2)}"
        lines.append(
            f"| `{r['cell_id']}` | {r['sparsity']} | {number(r['sparsity_value'])} | {r['expansion_factor']} | {r['variant']} "
            f"| {validity} | {number(r.get('explained_variance'))} | {number(r.get('l0'), 1)} "
            f"| {number(r.get('ce_loss_score'))} | {number(r.get('dead_fraction'), 2)} | {number(r.get('input_dimension'))} "
            f"| {number(r.get('train_seconds'), 1)} |"
        )
    if tradeoffs:
        lines += ["", "## Sparsity trade-offs", "", "L0 (mean active latents per token) against each metric, one line per "
                  "sparsity kind, variant and expansion factor.", ""]  # fmt: skip
        lines += [f"![{p.stem}]({p.as_posix()})" for p in tradeoffs]
    if heatmaps:
        lines += ["", "## Validity heat maps", ""]
        lines += [f"![{p.stem}]({p.as_posix()})" for p in heatmaps]
    return "\n".join(lines) + "\n"


def write_heatmaps(directory: str | os.PathLike, rows: list[dict[str, Any]], metric: str = "validity") -> list[Path]:
    """The paper-style heat maps of a sweep's ``metric`` (expansion factor x sparsity value), one
    per sparsity kind and variant (and any other setting that varies), from its result rows
    ; cells without the metric (not evaluated) produce none.
    Returns the paths."""
    rows = [r for r in rows if isinstance(r.get(metric), (int, float))]
    paths = []
    for stem, (title, label, group) in _heatmap_groups(rows).items():
        exps = sorted({r["expansion_factor"] for r in group})
        values = sorted({r["sparsity_value"] for r in group if r["sparsity_value"] is not None})
        table = [[math.nan] * len(values) for _ in exps]
        for r in group:
            if r["sparsity_value"] is not None:
                table[exps.index(r["expansion_factor"])][values.index(r["sparsity_value"])] = float(r[metric])
        path = Path(directory) / f"{stem}.png"
        plot_heatmap(table, [str(e) for e in exps], [number(v, 6, "g") for v in values], title, label, path)
        paths.append(path)
    return paths


def _heatmap_groups(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str, list[dict[str, Any]]]]:
    """Rows grouped into heat maps: file stem -> (title, column label, rows). A heat map holds
    the cells that differ only in expansion factor and sparsity value."""
    fields = [
        f.name for f in dataclasses.fields(SAETrainConfig) if f.name not in ("expansion_factor", "device", *SPARSITY_FIELDS)
    ]
    groups: dict[str, list[dict[str, Any]]] = {}
    keys: dict[str, dict[str, Any]] = {}
    for row in rows:
        rest = {f: row.get(f) for f in fields}
        key = json.dumps([row["sparsity"], canonical(rest)], sort_keys=True)
        groups.setdefault(key, []).append(row)
        keys[key] = rest
    varying = [f for f in fields if len({json.dumps(canonical(keys[k][f]), sort_keys=True) for k in groups}) > 1]
    out: dict[str, tuple[str, str, list[dict[str, Any]]]] = {}
    for key, group in groups.items():
        first, distinct = group[0], {f: keys[key][f] for f in varying if f not in VARIANT_FIELDS}
        parts = [first["sparsity"], first["variant"], *(id_part(f, v) for f, v in distinct.items())]
        stem = sanitize_id("-".join(["validity", *parts]))
        title = f"validity: {first['sparsity']} SAEs, variant {first['variant']}"
        if distinct:
            title += " (" + ", ".join(f"{f}={number(v, 6, 'g')}" for f, v in distinct.items()) + ")"
        out[stem] = (title, sparsity_of(first)[1], group)
    return out


def tradeoff_group(row: dict[str, Any]) -> str:
    """The legend entry of a cell in the trade-off plots: sparsity kind, variant, expansion factor."""
    return f"{row['sparsity']} / {row['variant']} / x{number(row.get('expansion_factor'), 6, 'g')}"


def tradeoff_points(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """The points of the L0-vs-``metric`` plot: cells with both as finite numbers, each
    ``{"l0", metric, "group", "y_err"}`` (``y_err``: the metric's ``_std`` column, if any)."""

    def finite(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    points = []
    for r in rows:
        if finite(r.get("l0")) and finite(r.get(metric)):
            err = r.get(f"{metric}_std")
            points.append({"l0": float(r["l0"]), metric: float(r[metric]), "group": tradeoff_group(r),
                           "y_err": float(err) if finite(err) else None})  # fmt: skip
    return points


def write_tradeoff_plots(directory: str | os.PathLike, rows: list[dict[str, Any]]) -> list[Path]:
    """L0 vs explained variance and L0 vs validity (with its std as error bars), one colour per
    `tradeoff_group`; a metric no cell has gives no plot. Returns the paths."""
    paths = []
    for metric, (stem, label) in TRADEOFFS.items():
        points = tradeoff_points(rows, metric)
        if not points:
            continue
        path = Path(directory) / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        plot_tradeoff(points, "l0", metric, path, f"L0 vs {label.split(' (')[0]}", "L0 (active latents per token)", label)
        paths.append(path)
    return paths


def log_sweep(rows: list[dict[str, Any]], out_dir: str | os.PathLike, project: str | None, name: str | None = None) -> None:
    """Log a finished sweep to W&B as one run (`formal_sae.tracking`): its result rows as the
    table ``results`` (the columns of ``results.csv``), the trade-off plots of ``out_dir`` as
    images, and ``n_cells`` in the summary. One run per sweep rather than per cell: cells train
    in worker processes and across resumed invocations. Nothing when ``project`` is None."""
    if project is None:
        return
    from formal_sae.tracking import _wandb, wandb_run

    wandb = _wandb()

    out = Path(out_dir)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    data = [[_table_value(row.get(k)) for k in columns] for row in rows]
    with wandb_run(project, name=name or out.name, config={"out_dir": out}, job_type="sweep") as run:
        logged: dict[str, Any] = {"results": wandb.Table(columns=columns, data=data, allow_mixed_types=True)}
        for stem, _ in TRADEOFFS.values():
            if (out / TRADEOFF_DIR / f"{stem}.png").is_file():
                logged[f"plots/{stem}"] = wandb.Image(str(out / TRADEOFF_DIR / f"{stem}.png"))
        run.log(logged)
        run.summary["n_cells"] = len(rows)


def _table_value(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(to_jsonable(value), sort_keys=True)
    return value

"""Sweep grids: named lists of SAE training configs, each cell with a stable id.

A cell's id is its directory name, so it must stay the same from run to run (resume finds finished
cells by it) and read as what the cell is: `cell_id` derives it from the settings that make
the cell differ from the grid's base (``topk-k16-x4``, ``a0.01-x2-prebias``). Grids of settings over
a base are built by [`SweepGrid.from_settings`][formal_sae.saes.sweep.grid.SweepGrid.from_settings], which names cells that way;
[`SweepGrid.from_dict`][formal_sae.saes.sweep.grid.SweepGrid.from_dict] is the JSON contract on top of it, and [`load_grid`][formal_sae.load_grid] the one entry
point (a grid, a mapping, a built-in name or a JSON file).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from formal_sae.errors import FormalSAEError, SAEError
from formal_sae.io import write_json
from formal_sae.plotting import number
from formal_sae.saes.training import SAETrainConfig

#: The pipeline-variant switches of ``SAETrainConfig``, with the word each adds to ids and variant names.
VARIANT_PARTS = {"pre_bias": "prebias", "normalize_input": "input", "normalize_recon": "recon", "normalize_decoder": "dec"}
VARIANT_FIELDS = tuple(VARIANT_PARTS)

#: The keys of a grid's JSON form ([`SweepGrid.from_dict`][formal_sae.saes.sweep.grid.SweepGrid.from_dict]).
GRID_KEYS = ("name", "base", "axes", "cells", "exclude", "description")

_ABBREVIATIONS = {
    "expansion_factor": "x",
    "k": "k",
    "l1_coefficient": "a",
    "l0_coefficient": "l0c",
    "training_tokens": "t",
    "batch_size_tokens": "b",
    "lr": "lr",
    "seed": "s",
    "lr_warm_up_steps": "wu",
    "dead_feature_window": "dfw",
}
_VERBATIM = ("architecture", "hook_name", "splice", "sparsemax")  # their values are names already
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


def id_part(name: str, value: Any) -> str:
    """A readable id fragment for one setting, e.g. ``x4``, ``k16``, ``a0.01``, ``topk``, ``noinput``."""
    if name in _VERBATIM:
        return str(value)
    if isinstance(value, bool):
        word = VARIANT_PARTS.get(name, name)
        return word if value else f"no{word}"
    if name in _ABBREVIATIONS:
        return _ABBREVIATIONS[name] + ("none" if value is None else number(value, 6, "g"))
    return f"{name}={number(value, 6, 'g')}"


def sanitize_id(text: str) -> str:
    """``text`` as a plain file name: anything but ``[A-Za-z0-9._+=-]`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", text).strip("_.") or "cell"


def cell_id(settings: Mapping[str, Any], fallback: str = "cell") -> str:
    """The id of the cell that ``settings`` (field -> value, in order) make differ from its grid's
    base: their `id_part` joined by ``-``; ``fallback`` when there are none."""
    return sanitize_id("-".join(id_part(k, v) for k, v in settings.items()) or fallback)


@dataclass
class SweepCell:
    """One SAE of a sweep: a stable id (its directory name) and its full training config."""

    id: str
    config: SAETrainConfig

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "config": self.config.to_dict()}


@dataclass
class SweepGrid:
    """A named list of SAE training runs. ``to_dict``/``from_dict`` round-trip through JSON."""

    name: str
    cells: list[SweepCell]

    def __post_init__(self) -> None:
        if not self.cells:
            raise SAEError(f"grid {self.name!r} has no cells")
        seen: set[str] = set()
        for cell in self.cells:
            if not _ID_RE.match(cell.id):
                raise SAEError(f"cell id {cell.id!r} of grid {self.name!r} is not a plain file name ([A-Za-z0-9._+=-])")
            if cell.id in seen:
                raise SAEError(f"grid {self.name!r} has two cells with id {cell.id!r}; cell ids must be unique")
            seen.add(cell.id)

    def __len__(self) -> int:
        return len(self.cells)

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.cells]

    def __getitem__(self, cell_id: str) -> SweepCell:
        for cell in self.cells:
            if cell.id == cell_id:
                return cell
        raise KeyError(cell_id)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cells": [c.to_dict() for c in self.cells]}

    def on_device(self, device: str) -> SweepGrid:
        """This grid with every cell's SAE trained on ``device`` (cpu, cuda, cuda:N or mps); the
        ids stay, and so does the experiment (a sweep resumes on another device)."""
        if not isinstance(device, str) or not device:
            raise SAEError(f"device must be a device name such as 'cpu' or 'cuda:0', got {device!r}")
        cells = [SweepCell(c.id, dataclasses.replace(c.config, device=device)) for c in self.cells]
        return SweepGrid(self.name, cells)

    def save(self, path: str | os.PathLike) -> Path:
        write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def from_settings(cls, name: str, base: SAETrainConfig | Mapping[str, Any], cells: Iterable[Mapping[str, Any]]) -> SweepGrid:
        """A grid of one cell per mapping of ``SAETrainConfig`` settings over ``base``; a cell's id
        is its ``"id"`` entry if it has one, else `cell_id` of its settings.

        Example: ``SweepGrid.from_settings("k", {"architecture": "topk"}, [{"k": 8}, {"k": 16}])``
        has cells ``k8`` and ``k16``."""
        base = base.to_dict() if isinstance(base, SAETrainConfig) else dict(base)
        built = []
        for entry in cells:
            settings = {k: v for k, v in entry.items() if k != "id"}
            cell = str(entry.get("id") or cell_id(settings))
            built.append(SweepCell(cell, _config(base, settings, f"grid {name!r}, cell {cell!r}")))
        return cls(name, built)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SweepGrid:
        """A grid from its JSON form.

        Keys (`GRID_KEYS`): ``name``; ``base`` (``SAETrainConfig`` fields shared by every
        cell); ``axes`` (field -> list of values: the cells are their cartesian product, ids like
        ``topk-k16-x4``); ``cells`` (explicit cells, each ``{"id": ..., "config": {...}}`` as
        written by `to_dict` or a dict of field settings with an optional ``"id"``);
        ``exclude`` (a list of partial settings; a product cell matching every item of one of
        them is dropped, e.g. ``{"architecture": "standard", "k": 8}``); ``description``.

        Example::

            SweepGrid.from_dict({"name": "topk-vs-batchtopk", "base": {"training_tokens": 100_000},
                                 "axes": {"architecture": ["topk", "batchtopk"], "k": [8, 16],
                                          "expansion_factor": [2, 4]}})   # 8 cells
        """
        if not isinstance(d, Mapping):
            raise SAEError(f"a grid must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - set(GRID_KEYS))
        if unknown:
            raise SAEError(f"unknown grid key(s) {unknown}; use {', '.join(GRID_KEYS)}")
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise SAEError("a grid needs a non-empty string 'name'")
        base = d.get("base") or {}
        if isinstance(base, SAETrainConfig):
            base = base.to_dict()
        if not isinstance(base, Mapping):
            raise SAEError(f"grid {name!r}: 'base' must be an object of SAETrainConfig fields")
        cells = [*_product(name, base, d.get("axes") or {}, d.get("exclude") or []), *_explicit(name, d.get("cells") or [])]
        if not cells:
            raise SAEError(f"grid {name!r} defines no cells: give 'axes' and/or 'cells'")
        return cls.from_settings(name, base, cells)


def _product(name: str, base: Mapping[str, Any], axes: Any, exclude: Any) -> list[dict[str, Any]]:
    """The settings of the cells of ``axes``'s cartesian product, less the ``exclude``d ones."""
    if not isinstance(axes, Mapping):
        raise SAEError(f"grid {name!r}: 'axes' must map SAETrainConfig fields to lists of values")
    if not axes:
        return []
    bad = sorted(set(axes) - {f.name for f in dataclasses.fields(SAETrainConfig)})
    if bad:
        raise SAEError(
            f"grid {name!r}: axes {bad} are not SAETrainConfig fields (settings of a SAELens architecture go in base.extra)"
        )
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise SAEError(f"grid {name!r}: axis {key!r} must be a non-empty list of values")
    if not isinstance(exclude, list) or not all(isinstance(e, Mapping) for e in exclude):
        raise SAEError(f"grid {name!r}: 'exclude' must be a list of objects of field values")
    combos = (dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values()))
    return [s for s in combos if not any(all(s.get(k, base.get(k)) == v for k, v in e.items()) for e in exclude)]


def _explicit(name: str, cells: Any) -> list[dict[str, Any]]:
    """The settings of explicitly listed cells, each with its id (``cell<i>`` when it has no settings)."""
    if not isinstance(cells, list):
        raise SAEError(f"grid {name!r}: 'cells' must be a list")
    out = []
    for i, entry in enumerate(cells):
        if not isinstance(entry, Mapping):
            raise SAEError(f"grid {name!r}: cell {i} must be an object")
        settings = {**(entry.get("config") or {}), **{k: v for k, v in entry.items() if k not in ("id", "config")}}
        out.append({**settings, "id": entry.get("id") or cell_id(settings, fallback=f"cell{i}")})
    return out


def _config(base: Mapping[str, Any], settings: Mapping[str, Any], where: str) -> SAETrainConfig:
    merged = {**base, **settings}
    if "extra" in settings and "extra" in base:  # a cell adds to the base's architecture settings
        merged["extra"] = {**base["extra"], **settings["extra"]}
    try:
        config = SAETrainConfig.from_dict(merged)
        config.validate()
    except FormalSAEError as e:
        raise SAEError(f"{where}: {e}") from None
    except TypeError as e:
        raise SAEError(f"{where}: invalid SAE config ({e})") from None
    return config

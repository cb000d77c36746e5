"""The authors' whole SAE grid after the main languages: [`PAPER_SWEEPS`][formal_sae.saes.sweep.paper.PAPER_SWEEPS]'s
16 groups (828 SAEs at d_in 128) on every model they name.

A scale with ``paper_sweeps`` runs this stage once every language of `GRAMMARS` is done
([`reproduce`][formal_sae.reproduce.reproduce]):

* the variants' models (``english-transitive``, ``english-relative``, ``english-pp``,
  ``dyck2-shallow``) are made exactly as a main language's, in ``<run>/<grammar>/{data,model}``
  (`stages.language_data`, `stages.language_model`);
* each group sweeps its cells of the paper's grid (at the paper's SAE budget) on its model into
  ``<run>/<model grammar>/paper-sweeps/<sweeps>/``, and its rows are saved in
  ``<run>/<model grammar>/paper-sweeps/<sweeps>.json`` (a `PaperSweepResult`): the group's stage,
  skipped when that file exists, while an interrupted sweep resumes from its finished cells;
* a group whose cells are cells of its main language's sweep (same settings, same model and data,
  same activation cache: `within`) takes that sweep's rows instead of training the same SAEs a
  second time: at the paper scale that is 9 of the 16 groups, 528 of the 828 SAEs;
* the distribution-shift group (``sae_grammar``) trains on the ``sae_grammar``'s own dataset (the
  one its model trains on, ``<run>/dyck2-shallow/data``) over the model of ``grammar``. `sweep`
  takes any formal-sae dataset whose token ids fit the model (its manifest records the data's
  grammar), so no flag is needed; `check_transfer` first makes sure the data's tokens and prompt
  mean the same to that model. Its cells are evaluated on that dataset's test split (validity is
  the model's own generations either way).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
from transformer_lens import HookedTransformer

from formal_sae import RESULTS_JSON, FormalSAEError, ModelConfig, RayBackend, dataset_metadata, grammar_of, read_json, sweep
from formal_sae.data import grammar_vocab
from formal_sae.models import model_data
from formal_sae.reproduce.scales import GRAMMARS, Scale
from formal_sae.reproduce.stages import SWEEP_DIR, language_data, language_model, stage, sweep_workers
from formal_sae.saes.sweep import PAPER_SWEEPS, PaperSweep, SweepGrid

#: The folder of the groups' sweeps and results inside their model grammar's folder.
PAPER_SWEEPS_DIR = "paper-sweeps"
#: The SAE budget of every group (``PAPER_SCALES``): the authors' grid is the paper's own.
GRID_BUDGET = "paper"


@dataclass(frozen=True)
class PlannedGroup:
    """A group of the authors' grid as a run will sweep it."""

    group: PaperSweep
    grid: SweepGrid
    """its cells at `GRID_BUDGET` for the scale's model width"""
    in_main_sweep: bool
    """its cells are its main language's sweep's (`within`): that sweep's rows are taken"""

    @property
    def data_grammar(self) -> str:
        """The grammar of the dataset its SAEs train on."""
        return self.group.sae_grammar or self.group.grammar


@dataclass
class PaperSweepResult:
    """One group's result, as ``<sweeps>.json`` holds it and the report reads it."""

    sweeps: str
    """the paper's sweep numbers, e.g. ``"6v-6vi"``"""
    model: str
    """the authors' run id of the language model"""
    grammar: str
    """the model's grammar"""
    sae_grammar: str
    """the grammar of the SAEs' training data"""
    sweep_dir: str
    """where its SAEs are, relative to the run's folder"""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """one sweep row per SAE (`formal_sae.sweep`'s rows)"""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PaperSweepResult:
        return cls(**d)

    def best_validity(self) -> list[tuple[str, str, dict[str, Any] | None]]:
        """Per sparsity kind and variant (in grid order): the row of the highest validity, or None
        when no SAE of that pair has one."""
        best: dict[tuple[str, str], dict[str, Any] | None] = {}
        for row in self.rows:
            key = (row["sparsity"], row["variant"])
            held = best.setdefault(key, None)
            if row.get("validity") is not None and (held is None or row["validity"] > held["validity"]):
                best[key] = row
        return [(kind, variant, row) for (kind, variant), row in best.items()]


def runs_paper_sweeps(scale: Scale, grammars: Iterable[str]) -> bool:
    """Whether a run of ``grammars`` at ``scale`` sweeps the authors' whole grid: the scale asks for
    it and the run covers every main language (the groups reuse their models and sweeps)."""
    return scale.paper_sweeps and set(GRAMMARS) <= set(grammars)


def within(grid: SweepGrid, main: SweepGrid) -> bool:
    """Whether a sweep of ``main`` trained the SAEs a sweep of ``grid`` would: every cell of ``grid``
    is a cell of ``main`` with the same settings, and both cache the same activations (the most
    training tokens per hook, which sets the cache every cell samples its batches from)."""
    cells = {c.id: c.config.to_dict() for c in main.cells}
    if any(cells.get(c.id) != c.config.to_dict() for c in grid.cells):
        return False

    def cache_tokens(g: SweepGrid) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in g.cells:
            out[c.config.hook_name] = max(out.get(c.config.hook_name, 0), c.config.training_tokens)
        return out

    in_main = cache_tokens(main)
    return all(in_main[hook] == tokens for hook, tokens in cache_tokens(grid).items())


def plan(scale: Scale) -> list[PlannedGroup]:
    """Every group of `PAPER_SWEEPS` as a run at ``scale`` sweeps it, in the authors' order
    (checked without training: the grids are sized by the scale's model preset)."""
    d_in = ModelConfig.from_preset(scale.preset).d_model
    main = scale.grid(d_in)
    planned = []
    for group in PAPER_SWEEPS:
        grid = group.grid(GRID_BUDGET, d_in=d_in)
        reused = group.sae_grammar is None and group.grammar in GRAMMARS and within(grid, main)
        planned.append(PlannedGroup(group, grid, reused))
    return planned


def extra_grammars(groups: Iterable[PlannedGroup]) -> list[str]:
    """The grammars of the groups' models and data that are no main language, in the groups' order."""
    names = [g for p in groups for g in (p.group.grammar, p.data_grammar)]
    return [g for g in dict.fromkeys(names) if g not in GRAMMARS]


def check_transfer(model: HookedTransformer, dataset: datasets.DatasetDict) -> None:
    """Refuse SAE training data that ``model`` would read otherwise than its own: another vocabulary
    (the same id, another token) or another prompt. `sweep` checks only that the ids fit."""
    own, data = model_data(model), dataset_metadata(dataset)
    if own is None:
        raise FormalSAEError("the model carries no formal-sae training metadata: cannot check the SAE data against it")
    if grammar_vocab(grammar_of(own)) != grammar_vocab(grammar_of(data)) or own.prompt != data.prompt:
        raise FormalSAEError(
            f"SAE data of grammar {data.grammar!r} (prompt {data.prompt}) does not tokenise as the data of the "
            f"{own.grammar!r} model (prompt {own.prompt}): its activations would mean nothing"
        )


@dataclass
class _Languages:
    """Each grammar's dataset and model in ``out/<grammar>``, made as a main language's and loaded once."""

    out: Path
    scale: Scale
    seed: int
    device: str
    data: dict[str, datasets.DatasetDict] = field(default_factory=dict)
    models: dict[str, HookedTransformer] = field(default_factory=dict)

    def dataset(self, grammar: str) -> datasets.DatasetDict:
        if grammar not in self.data:
            self.data[grammar] = language_data(grammar, self.out / grammar, self.scale, self.seed)
        return self.data[grammar]

    def model(self, grammar: str) -> HookedTransformer:
        if grammar not in self.models:
            data = self.dataset(grammar)
            self.models[grammar] = language_model(grammar, self.out / grammar, data, self.scale, self.seed, self.device)[0]
        return self.models[grammar]


def run_paper_sweeps(
    out: str | os.PathLike,
    scale: Scale,
    results: dict[str, dict[str, Any]],
    seed: int = 0,
    device: str = "cpu",
    backend: str | RayBackend = "local",
) -> list[PaperSweepResult]:
    """Every group of `PAPER_SWEEPS` in the run's folder ``out``, each a resumable stage; ``results``:
    the main languages' results (`stages.run_language`), whose sweeps the covered groups read."""
    out = Path(out)
    languages = _Languages(out, scale, seed, device)
    done = []
    for planned in plan(scale):
        where = out / planned.group.grammar / PAPER_SWEEPS_DIR
        result = stage(where / f"{planned.group.sweeps}.json", lambda p=planned: _run_group(p, out, languages, results, backend))
        done.append(PaperSweepResult.from_dict(result))
    return done


def _run_group(
    planned: PlannedGroup, out: Path, languages: _Languages, results: dict[str, dict[str, Any]], backend: str | RayBackend
) -> dict[str, Any]:
    group = planned.group
    if planned.in_main_sweep:
        main = {row["cell_id"]: row for row in results[group.grammar]["sweep"]}
        where, rows = f"{group.grammar}/{SWEEP_DIR}", [main[c.id] for c in planned.grid.cells]
    else:
        where = f"{group.grammar}/{PAPER_SWEEPS_DIR}/{group.sweeps}"
        if (out / where).exists():  # finished before its result was saved
            rows = read_json(out / where / RESULTS_JSON, what="sweep results")
        else:
            model, dataset = languages.model(group.grammar), languages.dataset(planned.data_grammar)
            if planned.data_grammar != group.grammar:
                check_transfer(model, dataset)
            scale, device = languages.scale, languages.device
            rows = sweep(model, dataset, planned.grid.on_device(device), out / where, evaluation=scale.sweep_eval, backend=backend,
                         workers=sweep_workers(scale, device, backend))  # fmt: skip
    return PaperSweepResult(group.sweeps, group.model, group.grammar, planned.data_grammar, where, rows).to_dict()

"""The commands of ``formal-sae``: one dataclass each, whose fields are its flags.

A command's own fields are its paths and switches; the settings of the run are the API's own
configuration dataclasses, nested (``TrainSAECommand.sae`` is a [`formal_sae.SAETrainConfig`][formal_sae.SAETrainConfig]),
so that each setting is declared, documented and defaulted once: a flag is its field's name with
dashes, its help the docstring below the field. Defaults of the other options are those of the
API function they are passed to (read from its signature). Each command's ``run`` calls the public
API only, and prints what it wrote.

This module is the registry: `COMMANDS`, in the order ``formal-sae --help`` lists them. The commands
live by the data they work on: `formal_sae.cli.data` (grammars, datasets, models),
`formal_sae.cli.saes` (training, sweeping and comparing SAEs), `formal_sae.cli.analysis` (an SAE
against its model) `formal_sae.cli.study` (the whole study, the Hub) and `formal_sae.cli.bench` (the benchmark), on `formal_sae.cli.base`.
"""

from __future__ import annotations

from formal_sae.cli.analysis import AnalyzeCommand, InterveneCommand
from formal_sae.cli.base import Command, api_default, sweep_backend
from formal_sae.cli.bench import BenchCommand
from formal_sae.cli.data import GenerateCommand, GrammarsCommand, TrainModelCommand
from formal_sae.cli.saes import CompareSAEsCommand, SweepCommand, TrainSAECommand
from formal_sae.cli.study import PushCommand, ReproduceCommand

__all__ = [
    "COMMANDS",
    "AnalyzeCommand",
    "BenchCommand",
    "Command",
    "CompareSAEsCommand",
    "GenerateCommand",
    "GrammarsCommand",
    "InterveneCommand",
    "PushCommand",
    "ReproduceCommand",
    "SweepCommand",
    "TrainModelCommand",
    "TrainSAECommand",
    "api_default",
    "sweep_backend",
]

COMMANDS: tuple[type[Command], ...] = (
    GrammarsCommand,
    GenerateCommand,
    TrainModelCommand,
    TrainSAECommand,
    AnalyzeCommand,
    InterveneCommand,
    SweepCommand,
    CompareSAEsCommand,
    ReproduceCommand,
    BenchCommand,
    PushCommand,
)

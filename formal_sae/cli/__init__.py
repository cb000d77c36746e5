"""The ``formal-sae`` command line, generated from dataclasses (`formal_sae.cli.commands`).

Each command is a dataclass whose fields are its flags; it nests the API's configuration
dataclasses, so a flag is a configuration field's name with dashes (``--hook-name``,
``--l1-coefficient``), with the field's docstring as help and its default. It only calls the
public API of `formal_sae`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import formal_sae
from formal_sae.cli.commands import COMMANDS, Command
from formal_sae.cli.parsing import ArgumentParser
from formal_sae.errors import FormalSAEError

__all__ = ["COMMANDS", "build_parser", "main"]


def build_parser() -> ArgumentParser:
    """The parser of every command; its ``parse_args(argv)`` returns the command dataclass to run."""
    parser = ArgumentParser(prog="formal-sae", description="Sparse autoencoders on formal languages, with ground truth.")
    parser.add_argument("--version", action="version", version=f"formal-sae {formal_sae.__version__}")
    subparsers = parser.add_subparsers(dest="command_name", metavar="command", required=True, parser_class=ArgumentParser)
    for command in COMMANDS:
        parser.add_command(subparsers, command)
    return parser


def one_line(error: Exception) -> str:
    """The message on one line, whatever it holds (a list of problems, a quoted line of a damaged file):
    str.splitlines also breaks at \\v, \\f, \\x1c-\\x1e, \\x85, \\u2028 and \\u2029, which a terminal may show as breaks."""
    parts = [part.strip() for part in str(error).splitlines() if part.strip()]
    return "".join(p if i == 0 else (" " if parts[i - 1].endswith(":") else "; ") + p for i, p in enumerate(parts))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``formal-sae ARGV``: 0 on success, 2 on a user error (one line on stderr) or a bad flag, 130 on Ctrl-C."""
    try:
        command: Command = build_parser().parse_args(argv)  # exits 2 with the usage on a bad flag
    except FormalSAEError as e:  # a configuration refused a value when the flags built it
        name = next((a for a in argv or sys.argv[1:] if a in {c.name for c in COMMANDS}), None)
        print(f"formal-sae{' ' + name if name else ''}: error: {one_line(e)}", file=sys.stderr)
        return 2
    try:
        command.run()
    except FormalSAEError as e:
        print(f"formal-sae {command.name}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"formal-sae {command.name}: interrupted", file=sys.stderr)
        return 130
    return 0

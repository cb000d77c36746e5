"""The parser the ``formal-sae`` commands are generated with: simple_parsing's, with formal-sae's conventions.

Every field of a command dataclass (and of the configuration dataclasses it nests) becomes a flag
of the same name with dashes (``hook_name`` -> ``--hook-name``), its help the attribute docstring
written below the field, its default the dataclass's. Conventions added here:

* no abbreviated flags (``--hook`` is not ``--hook-name``), so that a flag given is a flag named;
* a boolean is ``--flag`` / ``--no-flag`` (argparse's own action);
* a dict field takes JSON (``--extra '{"l1_warm_up_steps": 10}'``);
* a nested configuration declared with `prefixed` gets flags ``--PREFIX-FIELD`` and is
  None unless one of them is given (the causal term of ``train-sae``: ``--causal-coefficient``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Sequence
from typing import Any

import simple_parsing
from simple_parsing import DashVariant, SimpleHelpFormatter
from simple_parsing.help_formatter import TEMPORARY_TOKEN
from simple_parsing.helpers.custom_actions import BooleanOptionalAction


def prefixed(config: type, prefix: str) -> Any:
    """A command field holding an optional ``config`` whose flags are ``--PREFIX-FIELD``: None
    unless one of those flags is given, then ``config`` with the given fields."""
    return simple_parsing.field(default=None, cmd=False, metadata={"config": config, "prefix": f"{prefix}_"})


def prefixed_flags(config: type, prefix: str) -> list[str]:
    return [f"--{prefix}{f.name}".replace("_", "-") for f in dataclasses.fields(config) if f.init]


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    return value


_json_object.__name__ = "json"


def _adapt(options: dict[str, Any]) -> dict[str, Any]:
    """formal-sae's conventions on the options simple_parsing generated for one flag."""
    if options.get("action") is BooleanOptionalAction:
        keep = ("dest", "default", "required", "help")
        options = {k: v for k, v in options.items() if k in keep} | {"action": argparse.BooleanOptionalAction}
    elif options.get("type") is dict or typing.get_origin(options.get("type")) is dict:
        options = options | {"type": _json_object, "metavar": "json"}
    return options


class HelpFormatter(SimpleHelpFormatter):
    """simple_parsing's (types as metavars, "(default: ...)"), without a default for a required flag or None."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default is None:
            return (action.help or "").replace(TEMPORARY_TOKEN, "")
        return super()._get_help_string(action)


class ArgumentParser(simple_parsing.ArgumentParser):
    """A simple_parsing parser with dashed flags, no abbreviations, ``--no-`` booleans and JSON dicts;
    ``parse_args`` of the top-level parser returns the command dataclass to run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["add_option_string_dash_variants"] = DashVariant.DASH  # also resets simple_parsing's global switch
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument_group(self, title: str | None = None, description: str | None = None, **kwargs: Any):
        title = title and title.split(" [")[0]  # simple_parsing's "SAETrainConfig ['command.sae']"
        if title and title.endswith("Command"):  # the command's own options, beside --help
            group = self._optionals
        else:
            group = super().add_argument_group(title, description, **kwargs)
        add = group.add_argument
        group.add_argument = lambda *flags, **options: add(*flags, **_adapt(options))  # type: ignore[method-assign]
        return group

    def add_command(self, subparsers: argparse._SubParsersAction, command: type) -> None:
        """A subcommand from a command dataclass (its ``name``, its docstring, its fields)."""
        doc = (command.__doc__ or "").strip()
        parser = subparsers.add_parser(command.name, help=doc.splitlines()[0], description=doc, epilog=command.epilog())
        parser.add_arguments(command, dest="command")
        for f in dataclasses.fields(command):
            if "prefix" in f.metadata:
                parser.add_arguments(f.metadata["config"], dest=f.name, prefix=f.metadata["prefix"])

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None) -> Any:  # type: ignore[override]
        """The command dataclass of ``args``, its prefixed configurations in place (or None)."""
        args = sys.argv[1:] if args is None else list(args)
        parsed = super().parse_args(args, namespace)
        command = parsed.command
        given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
        for f in dataclasses.fields(command):
            if "prefix" in f.metadata:
                on = given & set(prefixed_flags(f.metadata["config"], f.metadata["prefix"]))
                setattr(command, f.name, getattr(parsed, f.name) if on else None)
        return command

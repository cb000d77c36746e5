"""The one contract of every configuration's ``from_dict``: a key that is not a field is an error.

A misspelt setting must not be dropped silently (the run would use the default instead), so
`check_fields` refuses unknown keys with the configuration's own error class, naming them
and the valid ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from formal_sae.errors import FormalSAEError


def check_fields(cls: type, keys: Iterable[str], error: type[FormalSAEError] = FormalSAEError, what: str | None = None) -> None:
    """Raise ``error`` if a key of ``keys`` is not a field of the dataclass ``cls``: "unknown
    ``what`` field(s) [...]; valid fields: ..." (``what`` defaults to the class name)."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(keys) - set(names))
    if unknown:
        raise error(f"unknown {what or cls.__name__} field(s) {unknown}; valid fields: {', '.join(names)}")

"""``Record``: the base of the typed results that cross modules (metrics, report rows, summaries).

A result is a dataclass with typed, documented fields; ``to_dict()`` gives its JSON form, the
content of the file it is saved in. It also reads as a read-only mapping of that JSON form
(``metrics["validity"]``, ``"validity" in metrics``, ``dict(metrics)``), so that code written
against the plain dicts these results used to be keeps working; new code reads the attributes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar


class Record(Mapping[str, Any]):
    """Mixin for result dataclasses: ``to_dict()`` and read-only key access to that dict.

    Class settings: ``_keys`` renames fields in the JSON form (for keys that are not Python
    names, e.g. ``"n_latents_abs_rho_ge_0.9"``); ``_optional`` lists fields left out of it when
    they are None (keys that are absent, not null, when not measured). A field declared with
    ``field(metadata={"json": False})`` is an attribute only (e.g. a per-latent array a figure
    needs), never in the JSON form. Declare records with
    ``@dataclass(eq=False)``: they then compare as mappings, equal to each other and to a dict
    exactly when their keys and values are.
    """

    _keys: ClassVar[dict[str, str]] = {}
    _optional: ClassVar[tuple[str, ...]] = ()

    def _present(self) -> Iterator[tuple[str, str]]:
        """(JSON key, field name) of the fields in the JSON form, in field order."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if (f.name in self._optional and getattr(self, f.name) is None) or f.metadata.get("json") is False:
                continue
            yield self._keys.get(f.name, f.name), f.name

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: fields in order, nested records and lists of them as plain dicts and lists."""
        return {key: _plain(getattr(self, name)) for key, name in self._present()}

    def __getitem__(self, key: str) -> Any:
        for k, name in self._present():
            if k == key:
                return getattr(self, name)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._present())

    def __len__(self) -> int:
        return sum(1 for _ in self._present())


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value

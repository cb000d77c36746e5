"""mkdocs hook: expand ``<!-- fields: DOTTED.PATH -->`` into a table of a dataclass's fields, and
``<!-- constants: PACKAGE -->`` into a table of the package's public constants and their values.

One row per field: name, type, default (evaluated from the dataclass itself, so the table cannot
drift from the code) and the field's description from the class docstring's ``Attributes:``
section when it has one.
"""

from __future__ import annotations

import dataclasses
import html
import importlib
import inspect
import re
from pathlib import Path

_MARKER = re.compile(r"<!-- fields: ([\w.]+) -->")
_ITEM = re.compile(r"^    ([\w, ]+):\s+(.*)$")
_CODE = re.compile(r"``?([^`]+)``?")


def resolve(path: str) -> type:
    """The object at a dotted path (``formal_sae.ModelConfig``, ``formal_sae.reproduce.scales.Scale``)."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _descriptions(cls: type) -> dict[str, str]:
    """Field descriptions from a Google-style ``Attributes:`` section (``a, b: text`` covers both)."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    out: dict[str, str] = {}
    names: list[str] = []
    inside = False
    for line in lines:
        if line.strip() == "Attributes:":
            inside = True
        elif inside and line and not line.startswith(" "):
            break
        elif inside and (m := _ITEM.match(line)):
            names = [n.strip() for n in m.group(1).split(",")]
            out.update(dict.fromkeys(names, m.group(2).strip()))
        elif inside and line.strip():
            out.update({n: out[n] + " " + line.strip() for n in names})
    return out


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    text = getattr(value, "__name__", None) if callable(value) else None
    return f"<code>{html.escape(text or repr(value))}</code>"


def _type(field: dataclasses.Field) -> str:
    return html.escape(field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type)))


def _meaning(text: str) -> str:
    text = _CODE.sub(r"<code>\1</code>", html.escape(text, quote=False))
    return re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<em>\1</em>", text)


def field_table(path: str) -> str:
    """An HTML table of the fields of the dataclass at ``path``, with their defaults."""
    cls = resolve(path)
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{path} is not a dataclass")
    described = _descriptions(cls)
    rows = "\n".join(
        f"<tr><td><code>{f.name}</code></td><td><code>{_type(f)}</code></td><td>{_default(f)}</td>"
        f"<td>{_meaning(described.get(f.name, ''))}</td></tr>"
        for f in dataclasses.fields(cls)
        if f.init
    )
    return (
        f'<table class="config-fields" data-dataclass="{path}">\n<thead><tr><th>field</th><th>type</th>'
        f"<th>default</th><th>meaning</th></tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>\n"
    )


_CONSTANTS = re.compile(r"<!-- constants: ([\w.]+) -->")


def _constant_comment(name: str, package: str) -> str:
    """The ``#:`` comment above the first assignment of ``name`` in the package's source."""
    root = Path(importlib.import_module(package).__file__).parent
    assignment = re.compile(rf"^(?:[\w, ]*\b)?{re.escape(name)}\b[\w, ]*(?::[^=]+)?=")
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if assignment.match(line):
                j = i
                while j > 0 and lines[j - 1].startswith("#:"):
                    j -= 1
                comment = " ".join(line[2:].strip() for line in lines[j:i])
                if comment:
                    return comment
    return ""


def constants_table(package: str) -> str:
    """A table of the package's public constants (non-callable names in ``__all__``) and their values."""
    module = importlib.import_module(package)
    rows = []
    for name in module.__all__:
        value = getattr(module, name)
        if callable(value) or inspect.ismodule(value):
            continue
        shown = f"dict: {', '.join(map(repr, value))}" if isinstance(value, dict) else repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        rows.append(
            f'<tr><td id="{package}.{name}"><code>{name}</code></td><td><code>{html.escape(shown)}</code></td>'
            f"<td>{_meaning(_constant_comment(name, package))}</td></tr>"
        )
    return (
        '<table class="constants">\n<thead><tr><th>name</th><th>value</th><th>meaning</th></tr></thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody>\n</table>\n"
    )


def on_page_markdown(markdown: str, **kwargs) -> str:
    markdown = _MARKER.sub(lambda m: f"**Fields of `{m.group(1).rpartition('.')[2]}`**\n\n" + field_table(m.group(1)), markdown)
    return _CONSTANTS.sub(lambda m: constants_table(m.group(1)), markdown)

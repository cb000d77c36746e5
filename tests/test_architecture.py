"""The house as the docs draw it: imports follow the data, and docs/architecture.md names every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "formal_sae"

#: The floors of docs/architecture.md, lowest first: a module may import its own floor and below.
FLOORS = [
    {"errors", "version", "io", "configs", "records", "plotting", "outputs", "seeding", "hub_download", "tracking"},
    {"grammars"},
    {"packing", "data"},
    {"models", "activations"},
    {"generation"},
    {"saes", "training", "training_config"},
    {"interventions"},
    {"analysis"},
    {"comparison", "hub", "hub_cards"},
    {"__init__"},
    {"reproduce", "bench"},
    {"cli"},
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def room(path: Path) -> str:
    """The floor-plan name of a module: its top-level module or package under formal_sae/."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_rooms(path: Path) -> set[str]:
    """formal_sae modules that ``path`` imports, anywhere in the file (type-checking and function-level included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module == "formal_sae" and node.level == 0:
            # `from formal_sae import data` takes a module; `from formal_sae import sweep`, the public API
            names = [f"formal_sae.{a.name}" if a.name in FLOOR else "formal_sae" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "formal_sae":
                found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_data(path):
    here = room(path)
    assert here in FLOOR, f"{here} is on no floor of tests/test_architecture.py (and docs/architecture.md)"
    upward = sorted(r for r in imported_rooms(path) - {here} if FLOOR[r] > FLOOR[here])
    assert not upward, f"{path.relative_to(ROOT)} imports {upward}, above its floor"


def test_the_floor_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from formal_sae.analysis import analyze\n")
    assert imported_rooms(bad) == {"analysis"} and FLOOR["analysis"] > FLOOR["models"]


def documented() -> set[str]:
    rows = re.findall(r"^\| `([^`]+)` \|", (ROOT / "docs" / "architecture.md").read_text(), flags=re.MULTILINE)
    names = set()
    for row in rows:
        brace = re.fullmatch(r"(.*)\{(.*)\}(.*)", row)
        names |= {f"{brace[1]}{part}{brace[3]}" for part in brace[2].split(",")} if brace else {row}
    return names


def test_the_architecture_page_names_every_module_and_only_those():
    code = {
        str(p.relative_to(PACKAGE))
        for p in modules()
        if p.name not in ("__init__.py", "__main__.py") or (p.parent.name == "cli" and p.name == "__init__.py")
    }
    docs = documented()
    assert not code - docs, f"modules missing from docs/architecture.md: {sorted(code - docs)}"
    assert not docs - code, f"docs/architecture.md names modules that do not exist: {sorted(docs - code)}"

"""The tutorials in notebooks/ execute top to bottom at tiny settings, and are committed clean.

Each notebook is run with nbclient in a temporary folder, with ``FORMAL_SAE_TINY=1`` (the settings
cell switches to tiny data, model and SAEs) and ``FORMAL_SAE_OUT`` pointing into that folder: the
notebooks in the repository are read, never written.
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COLAB = "https://colab.research.google.com/github/formal-sae/formal-sae/blob/main/notebooks/{}"
BUDGET_S = 120  # each takes well under a minute on an idle machine; generous for a loaded one


def test_the_three_tutorials_exist_and_are_in_the_docs():
    names = [p.stem for p in NOTEBOOKS]
    assert len(names) >= 3
    assert any("quick_start" in n for n in names)
    assert any("bring_your_own_sae" in n for n in names)
    assert any("causal" in n for n in names)
    nav = (ROOT / "mkdocs.yml").read_text()
    for p in NOTEBOOKS:
        assert f"notebooks/{p.name}" in nav, f"{p.name} is not in the docs' nav"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_with_badge_install_and_settings(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    first, install, settings = nb.cells[:3]
    assert first.cell_type == "markdown" and COLAB.format(path.name) in first.source
    assert "colab-badge.svg" in first.source
    assert install.cell_type == "code" and "%pip install" in install.source and 'find_spec("formal_sae")' in install.source
    assert 'os.environ.get("FORMAL_SAE_TINY") == "1"' in settings.source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    source = "\n".join(c.source for c in code)
    assert "import formal_sae" in source
    assert "from formal_sae." not in source and "import formal_sae." not in source, "use the public API only"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_at_tiny_settings(path, tmp_path, monkeypatch):
    monkeypatch.setenv("FORMAL_SAE_TINY", "1")
    monkeypatch.setenv("FORMAL_SAE_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=BUDGET_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}, allow_errors=False
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    assert elapsed < BUDGET_S, f"{path.name} took {elapsed:.0f}s"
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(o.output_type in ("stream", "display_data", "execute_result") for o in outputs)
    assert any((tmp_path / "out").iterdir()), "the notebook wrote nothing under FORMAL_SAE_OUT"
    assert not list(tmp_path.glob("runs")), "outputs must go to FORMAL_SAE_OUT"

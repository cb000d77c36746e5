"""The docs site: builds with ``--strict``, typesets formulas offline, and documents the whole API.

The site is built once (``mkdocs build --strict``) into a temporary folder. Formulas are rendered
to KaTeX HTML at build time (docs/hooks/katex_math.py, KaTeX from the npm registry), so pages
need neither JavaScript nor a CDN to show them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import formal_sae
import formal_sae.reproduce.scales

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).with_name("mkdocs")
SPHINX_ROLES = re.compile(r":(func|class|mod|meth|data|attr|obj|exc):`")
#: The configuration dataclasses, each with a generated field table in the API page.
CONFIGS = [
    formal_sae.ModelConfig,
    formal_sae.TrainConfig,
    formal_sae.SAETrainConfig,
    formal_sae.CausalConfig,
    formal_sae.SweepEvaluation,
    formal_sae.SweepGrid,
    formal_sae.Intervention,
    formal_sae.reproduce.scales.Scale,
]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


def test_formulas_are_typeset_at_build_time_from_local_assets(site):
    html = page(site, "causal-saes")
    assert 'class="katex-display"' in html and 'class="katex"' in html
    assert "\\[" not in re.sub(r"<annotation.*?</annotation>", "", html, flags=re.DOTALL), "a raw LaTeX formula is left"
    assert 'href="../assets/katex/katex.min.css"' in html
    assert (site / "assets/katex/katex.min.css").is_file()
    assert any((site / "assets/katex/fonts").glob("KaTeX_Main-Regular.woff2"))
    for path in site.rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        # (notebook pages keep nbconvert's inline MathJax config, with an empty URL, and a mermaid loader
        # that runs only on pages with diagrams: neither fetches anything)
        assert not re.search(r"jsdelivr|unpkg|fonts\.googleapis|libs/mathjax|tex-mml-chtml|katex@", text, re.IGNORECASE), path
        assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?://", text), f"{path} loads an asset from the network"
    for name in ("analysis", "paper"):
        assert 'class="katex"' in page(site, name), name


def test_api_page_has_no_raw_sphinx_roles(site):
    text = page(site, "api")
    found = SPHINX_ROLES.findall(text)
    assert not found, f"{len(found)} raw Sphinx roles in the API page"


def test_every_public_name_is_in_the_api_reference(site):
    source = (ROOT / "docs/api.md").read_text()
    documented = {target.rpartition(".")[2] for target in re.findall(r"^::: ([\w.]+)$", source, re.MULTILINE)}
    api = page(site, "api")
    missing = [name for name in formal_sae.__all__ if name not in documented and f'id="formal_sae.{name}"' not in api]
    assert not missing, f"missing from docs/api.md: {missing}"
    for name in ("CausalReport", "SAEComparison", "SweepGrid", "IGNORE_VALUE", "PRESETS"):
        assert f'id="formal_sae.{name}"' in api or f"formal_sae.saes.sweep.{name}" in api, name


def test_every_config_dataclass_has_a_generated_field_table(site):
    api = page(site, "api")
    for cls in CONFIGS:
        match = re.search(rf'<table class="config-fields" data-dataclass="[\w.]*\.{cls.__name__}">(.*?)</table>', api, re.DOTALL)
        assert match, f"no field table for {cls.__name__}"
        for field in dataclasses.fields(cls):
            assert f"<td><code>{field.name}</code></td>" in match.group(1), f"{cls.__name__}.{field.name}"
    table = re.search(r'data-dataclass="formal_sae.ModelConfig">(.*?)</table>', api, re.DOTALL).group(1)
    assert f"<td><code>d_model</code></td><td><code>int</code></td><td><code>{formal_sae.ModelConfig().d_model}</code>" in table


def test_the_paper_page_has_the_sections_the_code_cites(site):
    source = (ROOT / "docs/paper.md").read_text()
    html = page(site, "paper")
    anchors = ["paper-grammars", "paper-lexical-probabilities", "paper-models", "paper-sae-architecture", "paper-grid"]
    anchors += ["paper-validity", "paper-interpretability", "paper-interventions", "paper-causal-loss", "paper-bugs"]
    for anchor in anchors:
        assert f"[](){{#{anchor}}}" in source, anchor  # an autorefs anchor: [The paper: ...][paper-...] anywhere
    for heading in ("the-hyperparameter-grid", "validity", "the-causal-loss", "bugs-avoided"):
        assert f'id="{heading}"' in html
    # docstrings cite it (rendered in the API page), and so do the workflow pages
    assert 'href="../paper/#the-hyperparameter-grid"' in page(site, "api")
    assert 'href="../paper/#the-causal-loss"' in page(site, "causal-saes")


def test_nothing_cites_the_reference_file_users_do_not_have():
    offenders = []
    for folder in ("formal_sae", "docs", "examples", "notebooks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".ipynb") and "PAPER.md" in path.read_text(encoding="utf-8"):
                offenders.append(str(path.relative_to(ROOT)))
    if "PAPER.md" in (ROOT / "README.md").read_text(encoding="utf-8"):
        offenders.append("README.md")
    assert not offenders, f"cite docs/paper.md (the docs' 'The paper' page) instead of PAPER.md in: {offenders}"


def test_notebooks_are_rendered_as_tutorials(site):
    for name in ("01_quick_start", "02_bring_your_own_sae", "03_interventions_and_causal_saes"):
        html = (site / "notebooks" / name / "index.html").read_text(encoding="utf-8")
        assert "colab.research.google.com/github/formal-sae/formal-sae/blob/main/notebooks/" in html
        assert "import formal_sae" in html

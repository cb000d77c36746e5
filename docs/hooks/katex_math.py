"""mkdocs hook: render every formula to HTML with KaTeX at build time, so pages need no CDN.

``pymdownx.arithmatex`` (generic mode) leaves ``<span class="arithmatex">\\(...\\)</span>`` and
``<div class="arithmatex">\\[...\\]</div>`` in the pages. After the build, this hook renders all of
them in one Node.js call with KaTeX and copies KaTeX's stylesheet and fonts into the site
(``assets/katex/``, referenced from ``extra_css`` in mkdocs.yml): the pages show typeset maths
offline, without any JavaScript.

KaTeX comes from the npm registry: on first use ``npm pack katex@KATEX_VERSION`` fetches the
package tarball into ``build/katex-VERSION/`` (git-ignored; ``make docs`` / ``make test`` and a
plain ``mkdocs build`` all go through here). Set ``FORMAL_SAE_KATEX_DIR`` to an unpacked KaTeX
package (the folder holding ``dist/``) to use one already on disk.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

KATEX_VERSION = "0.19.1"
ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / f"katex-{KATEX_VERSION}"
#: Where the stylesheet and fonts go in the site (mkdocs.yml's extra_css points here).
SITE_ASSETS = "assets/katex"

_MATH = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.DOTALL)
_DELIMITERS = {"span": (r"\(", r"\)"), "div": (r"\[", r"\]")}

# Reads a JSON list of [tex, display] pairs on stdin, writes the list of HTML strings.
_RENDER_JS = """
const katex = require(process.argv[1]);
let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const out = JSON.parse(input).map(([tex, display]) =>
    katex.renderToString(tex, {displayMode: display, throwOnError: false, output: "htmlAndMathml"}));
  process.stdout.write(JSON.stringify(out));
});
"""


def katex_dir() -> Path:
    """The unpacked KaTeX npm package (fetched with ``npm pack`` on first use)."""
    if os.environ.get("FORMAL_SAE_KATEX_DIR"):
        return Path(os.environ["FORMAL_SAE_KATEX_DIR"])
    if (CACHE / "dist" / "katex.min.css").exists():
        return CACHE
    if shutil.which("npm") is None:
        raise RuntimeError("the docs need Node.js and npm to fetch KaTeX from the npm registry (apt-get install nodejs npm)")
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE.parent) as tmp:
        subprocess.run(
            ["npm", "pack", f"katex@{KATEX_VERSION}", "--silent", "--pack-destination", tmp],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with tarfile.open(Path(tmp) / f"katex-{KATEX_VERSION}.tgz") as tar:
            tar.extractall(tmp, filter="data")
        try:
            (Path(tmp) / "package").rename(CACHE)  # atomic: a concurrent build may have won the race
        except OSError:
            if not (CACHE / "dist" / "katex.min.css").exists():
                raise
    return CACHE


def _unwrap(kind: str, body: str) -> str:
    tex = html.unescape(body).strip()
    left, right = _DELIMITERS[kind]
    if tex.startswith(left) and tex.endswith(right):
        tex = tex[len(left) : -len(right)]
    return tex.strip()


def render(formulas: list[tuple[str, bool]], package: Path) -> list[str]:
    """KaTeX HTML of each ``(tex, display_mode)``, in one Node.js process."""
    if not formulas:
        return []
    result = subprocess.run(
        ["node", "-e", _RENDER_JS, str(package / "dist" / "katex.js")],
        input=json.dumps(formulas),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def on_post_build(config, **kwargs) -> None:
    package = katex_dir()
    site = Path(config["site_dir"])
    pages = {path: path.read_text(encoding="utf-8") for path in site.rglob("*.html")}
    found = {path: list(_MATH.finditer(text)) for path, text in pages.items()}
    formulas = sorted({(_unwrap(m.group(1), m.group(2)), m.group(1) == "div") for ms in found.values() for m in ms})
    rendered = dict(zip(formulas, render(formulas, package)))
    for path, matches in found.items():
        if not matches:
            continue

        def replace(m: re.Match) -> str:
            kind = m.group(1)
            return f'<{kind} class="arithmatex">{rendered[(_unwrap(kind, m.group(2)), kind == "div")]}</{kind}>'

        path.write_text(_MATH.sub(replace, pages[path]), encoding="utf-8")
    assets = site / SITE_ASSETS
    shutil.rmtree(assets, ignore_errors=True)
    assets.mkdir(parents=True)
    shutil.copy(package / "dist" / "katex.min.css", assets / "katex.min.css")
    shutil.copytree(package / "dist" / "fonts", assets / "fonts")

"""mkdocs hook: expand ``<!-- grammar: NAME -->`` into the grammar's rules and feature table.

The rules shown in the docs are printed by the code itself, so they cannot drift from it.
"""

from __future__ import annotations

import re

import formal_sae

_MARKER = re.compile(r"<!-- grammar: ([\w.\-]+) -->")


def _render(name: str) -> str:
    g = formal_sae.load_grammar(name)
    rows = "\n".join(
        f"| `{s.name}` | {s.kind} | {s.description}" + (f" ({', '.join(s.categories)})" if s.categories else "") + " |"
        for s in g.feature_specs
    )
    return (
        f"*{g.description}.* Vocabulary: {len(g.terminals)} tokens; expected length "
        f"{g.expected_length:.2f} tokens before the {g.max_length}-token limit.\n\n"
        f"```\n{g.to_string().rstrip()}\n```\n\n| feature | kind | meaning |\n|---|---|---|\n{rows}\n"
    )


def on_page_markdown(markdown: str, **kwargs) -> str:
    return _MARKER.sub(lambda m: _render(m.group(1)), markdown)

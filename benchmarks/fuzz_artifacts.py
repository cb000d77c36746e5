"""Corruption fuzzer: every file of every artifact, corrupted in seeded ways, through the CLI.

Builds a tiny dataset, model, SAE, two-cell sweep and grammar file, then for every file of each
(the dataset's Arrow files, ``dataset_info.json``, ``state.json``, ``dataset_dict.json``, card and
tokenizer; the model's weights, config, metrics and tokenizer; the SAE's three files; the sweep's
``grid.json``, results and cell files; the grammar file) tries: truncation to 0 bytes, to half and
by one byte, random byte flips (``--seeds`` seeds), garbage text, valid JSON of the wrong shape
(JSON files), deletion. Each corruption runs on a fresh copy through the command that loads it
(``analyze`` for datasets, ``train-sae`` for models, ``intervene`` for SAEs and a sweep cell's SAE
files, ``sweep`` resuming an interrupted sweep, ``generate`` for a grammar file), plus
``Grammar.from_string`` on corrupted grammar text. Each outcome is one of:

- a clean error: exit code 2, one stderr line naming the file and the fix, no output written;
- harmless: the command succeeded and the artifact loads with its pristine structure (flipped
  bits in float weights or metric values cannot be detected);
- a failure: a traceback, several lines, the wrong file named, no fix, output left behind, or a
  success with a changed structure (a silent wrong result).

Prints a markdown table (stdout; progress on stderr) and exits 1 if any corruption failed.
Usage: ``python benchmarks/fuzz_artifacts.py [--seeds 8] [--only model,sae] [--verbose]``.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the corruption helpers live with the tests

import torch
from common import log, machine
from corruption_helpers import (
    CORRUPTIONS,
    GRAMMAR_TEXT,
    Case,
    Fuzzer,
    Outcome,
    artifact_files,
    build_artifacts,
    corrupt_text,
    corruptions_for,
    judge_grammar_text,
)

ARTIFACTS = ("data", "model", "sae", "cell", "sweep", "grammar")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="byte-flip seeds per file")
    parser.add_argument("--garbage-seeds", type=int, default=2, help="garbage-text seeds per file")
    parser.add_argument("--only", help="comma-separated artifacts (data, model, sae, cell, sweep, grammar)")
    parser.add_argument("--verbose", action="store_true", help="print every clean error line too")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: extra threads only add overhead on a shared machine
    chosen = args.only.split(",") if args.only else list(ARTIFACTS)
    t0 = time.perf_counter()
    rows: dict[tuple[str, str], collections.Counter] = {}
    failures: list[tuple[str, Outcome]] = []
    with tempfile.TemporaryDirectory(prefix="formal-sae-fuzz-") as tmp:
        log("building the artifacts ...")
        arts = build_artifacts(Path(tmp) / "pristine")
        fuzzer = Fuzzer(arts, Path(tmp) / "work")
        for artifact in chosen:
            if artifact not in ARTIFACTS:
                parser.error(f"unknown artifact {artifact!r}; use {', '.join(ARTIFACTS)}")
            for file in artifact_files(arts, artifact):
                counts = rows.setdefault((artifact, file), collections.Counter())
                pairs = corruptions_for(Path(file), range(args.seeds), range(args.garbage_seeds))
                for kind, seed in pairs:
                    case = Case(artifact, file, kind, seed)
                    outcome = fuzzer.cli(case)
                    counts[outcome.kind] += 1
                    if outcome.kind == "failure":
                        failures.append((case.id, outcome))
                    if outcome.kind == "failure" or args.verbose:
                        log(f"  {outcome.kind:<8} {case.id}: {outcome.detail}")
                log(f"{artifact}/{file}: {dict(counts)} ({time.perf_counter() - t0:.0f} s)")
        if "grammar" in chosen:
            counts = rows.setdefault(("grammar", "Grammar.from_string(text)"), collections.Counter())
            for kind in CORRUPTIONS:
                for seed in range(args.seeds if kind == "flip" else args.garbage_seeds if kind == "garbage" else 1):
                    outcome = judge_grammar_text(corrupt_text(GRAMMAR_TEXT, kind, seed))
                    counts[outcome.kind] += 1
                    if outcome.kind == "failure":
                        failures.append((f"grammar:text:{kind}{seed}", outcome))
                        log(f"  failure  grammar:text:{kind}{seed}: {outcome.detail}")
    wall = time.perf_counter() - t0

    print(machine())
    print()
    print("| artifact | file | corruptions tried | clean one-line errors | harmless (command succeeded) | failures |")
    print("|---|---|---:|---:|---:|---:|")
    total: collections.Counter = collections.Counter()
    for (artifact, file), counts in rows.items():
        tried = sum(counts.values())
        total.update(counts)
        print(f"| {artifact} | `{file}` | {tried} | {counts['error']} | {counts['harmless']} | {counts['failure']} |")
    print(
        f"| **all** | {len(rows)} files | {sum(total.values())} | {total['error']} | {total['harmless']} | {total['failure']} |"
    )
    print()
    print(f"Wall time {wall:.0f} s.")
    for case_id, outcome in failures:
        print(f"- FAILURE {case_id}: {outcome.detail}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

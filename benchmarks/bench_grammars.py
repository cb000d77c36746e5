"""Benchmark the grammar layer against its baselines, for every registry grammar.

* Sampling: ``Grammar.sample`` against ``naive_sample`` (recursive ``random.choices``, the
  paper's sampler), same number of sentences and same length limit.
* Grammaticality: ``Grammar.is_grammatical`` (the linear-time Dyck/Expr recognizers, chart
  parsing otherwise) and the generic ``Grammar.chart_recognize`` against
  ``nltk.ViterbiParser(max_time=None)`` (the paper's check), on the same sentences drawn from the
  grammar. The fast recognizers memoise verdicts, so each is timed on a freshly built
  ``Grammar`` whose caches start cold.

Usage: ``python benchmarks/bench_grammars.py [--quick] [--grammars dyck2,expr]``. The results
table (markdown) goes to stdout, progress to stderr; nothing is written to disk.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from collections.abc import Sequence

import nltk
from common import best_time, log, machine

from formal_sae import list_grammars, load_grammar
from formal_sae.grammars.sampler import naive_sample

TARGET_SAMPLER = 10.0  # sampler >= 10x naive_sample
TARGET_RECOGNIZER = 300.0  # is_grammatical >= 300x ViterbiParser


def time_recognizer(name: str, method: str, sentences: Sequence[list[str]], repeats: int) -> float:
    """Seconds to check ``sentences`` with a fresh grammar (cold memo caches); best of ``repeats``."""
    times = []
    for _ in range(repeats):
        check = getattr(load_grammar(name), method)
        start = time.perf_counter()
        verdicts = [check(s) for s in sentences]
        times.append(time.perf_counter() - start)
        if not all(verdicts):
            raise AssertionError(f"{name}: {method} rejected a sampled sentence")
    return min(times)


def time_viterbi(name: str, sentences: Sequence[list[str]], repeats: int) -> float:
    """Seconds for ``nltk.ViterbiParser`` to parse ``sentences``; best of ``repeats``."""
    parser = nltk.ViterbiParser(load_grammar(name).pcfg, max_time=None)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        verdicts = [next(iter(parser.parse(s)), None) is not None for s in sentences]
        times.append(time.perf_counter() - start)
        if not all(verdicts):
            raise AssertionError(f"{name}: ViterbiParser rejected a sampled sentence")
    return min(times)


def bench(name: str, n_sample: int, n_recognize: int, n_viterbi: int, repeats: int, slow_repeats: int) -> dict:
    """Rates for one grammar. Every time is the best of several runs, which filters out
    scheduling noise on a shared machine: ``repeats`` runs for the fast code, ``slow_repeats``
    for the baselines (whose runs are long, so less noisy)."""
    grammar = load_grammar(name)
    fast_s = best_time(lambda: grammar.sample(n_sample, seed=0), repeats)
    naive_s = best_time(lambda: naive_sample(grammar.pcfg, n_sample, seed=0, max_length=grammar.max_length), slow_repeats)
    sentences = grammar.sample(n_recognize, seed=1)
    subset = sentences[:n_viterbi]  # ViterbiParser is slow: it sees the first sentences only
    viterbi_s = time_viterbi(name, subset, slow_repeats)
    rec_subset_s = time_recognizer(name, "is_grammatical", subset, repeats)
    chart_subset_s = time_recognizer(name, "chart_recognize", subset, repeats)
    rec_all_s = time_recognizer(name, "is_grammatical", sentences, repeats)
    chart_all_s = time_recognizer(name, "chart_recognize", sentences, repeats)
    return {
        "name": name,
        "mean_len": statistics.mean(len(s) for s in sentences),
        "mean_len_subset": statistics.mean(len(s) for s in subset),
        "fast": n_sample / fast_s,
        "naive": n_sample / naive_s,
        "viterbi": n_viterbi / viterbi_s,
        "rec_subset": n_viterbi / rec_subset_s,
        "chart_subset": n_viterbi / chart_subset_s,
        "rec_all": n_recognize / rec_all_s,
        "chart_all": n_recognize / chart_all_s,
    }


def fmt(rate: float) -> str:
    return f"{rate:,.0f}"


def table(rows: list[dict], n_sample: int, n_recognize: int, n_viterbi: int) -> str:
    lines = [
        f"Sampling: {n_sample} sentences per sampler. Recognition: ViterbiParser, is_grammatical and chart_recognize on the "
        f"same first {n_viterbi} sampled sentences (ratios marked 'same'); is_grammatical and chart_recognize also on all "
        f"{n_recognize} sentences (ratios marked 'all', against the ViterbiParser rate). Rates in sentences/s.",
        "",
        "| grammar | mean len (all / first) | sample | naive_sample | sampler × | ViterbiParser | is_grammatical (same) "
        "| × (same) | chart_recognize (same) | × (same) | is_grammatical (all) | × (all) | chart_recognize (all) | × (all) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        v = r["viterbi"]
        lines.append(
            f"| {r['name']} | {r['mean_len']:.1f} / {r['mean_len_subset']:.1f} | {fmt(r['fast'])} | {fmt(r['naive'])} "
            f"| {r['fast'] / r['naive']:.1f} | {fmt(v)} | {fmt(r['rec_subset'])} | {r['rec_subset'] / v:,.0f} "
            f"| {fmt(r['chart_subset'])} | {r['chart_subset'] / v:,.0f} | {fmt(r['rec_all'])} | {r['rec_all'] / v:,.0f} "
            f"| {fmt(r['chart_all'])} | {r['chart_all'] / v:,.0f} |"
        )
    sampler_ok = [r["name"] for r in rows if r["fast"] / r["naive"] >= TARGET_SAMPLER]
    rec_ok = [r["name"] for r in rows if r["rec_subset"] / r["viterbi"] >= TARGET_RECOGNIZER]
    lines += [
        "",
        f"Sampler target (>= {TARGET_SAMPLER:g}x naive_sample) met for {len(sampler_ok)}/{len(rows)} grammars"
        + (
            f"; missed for: {', '.join(r['name'] for r in rows if r['name'] not in sampler_ok)}"
            if len(sampler_ok) < len(rows)
            else ""
        )
        + ".",
        f"Recognizer target (>= {TARGET_RECOGNIZER:g}x ViterbiParser, same sentences) met for {len(rec_ok)}/{len(rows)} grammars"
        + (f"; missed for: {', '.join(r['name'] for r in rows if r['name'] not in rec_ok)}" if len(rec_ok) < len(rows) else "")
        + ".",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run, noisy numbers)")
    parser.add_argument("--grammars", default=",".join(list_grammars()), help="comma-separated registry names")
    args = parser.parse_args(argv)
    if args.quick:
        n_sample, n_recognize, n_viterbi, repeats, slow_repeats = 500, 500, 20, 3, 1
    else:
        n_sample, n_recognize, n_viterbi, repeats, slow_repeats = 5000, 5000, 200, 7, 2
    names = [n for n in args.grammars.split(",") if n]

    started = datetime.datetime.now()
    print("## Grammars: sampling and grammaticality\n")
    print(f"{machine()} NLTK {nltk.__version__}.\n")
    rows = []
    for name in names:
        log(f"[bench] {name} ...")
        t = time.perf_counter()
        rows.append(bench(name, n_sample, n_recognize, n_viterbi, repeats, slow_repeats))
        log(f"[bench] {name} done in {time.perf_counter() - t:.1f}s")
    print(table(rows, n_sample, n_recognize, n_viterbi))
    print(f"\nTotal benchmark time: {(datetime.datetime.now() - started).total_seconds():.0f} s.")


if __name__ == "__main__":
    main()

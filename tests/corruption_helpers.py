"""Seeded corruptions of formal-sae artifacts, and the judge of what a command did with them.

Shared by ``tests/test_corruption.py`` (a small matrix in the default suite) and
``benchmarks/fuzz_artifacts.py`` (every file, more seeds; it puts this folder on ``sys.path``).

A corruption is handled well when the command either fails cleanly (exit code 2, one line of
stderr naming the corrupted file and saying what to do, nothing written) or is not affected by it
(it succeeds, and what it loaded has the same structure as the pristine artifact: a flipped bit in
a float weight cannot be detected, a changed configuration, vocabulary or row count must be).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import shutil
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import formal_sae
from formal_sae.cli import main
from formal_sae.io import read_json
from formal_sae.outputs import MARKER_FILE

#: What each corruption does to a file's bytes (``delete`` removes the file).
CORRUPTIONS = ("empty", "half", "minus_one", "flip", "garbage", "json_list", "json_object", "json_wrong_field", "delete")
JSON_SHAPES = {"json_list": b"[]", "json_object": b"{}", "json_wrong_field": b'{"model": 3}'}
#: Words of a message that tells the user what to do.
FIX_WORDS = (
    "regenerate",
    "retrain",
    "restore",
    "delete",
    "rerun",
    "rebuild",
    "train one",
    "create it",
    "edit",
    "fix ",
    "choose another",
)
#: Loggers whose handlers write to the real stderr: their records count as stderr lines.
LOGGERS = ("", "datasets", "transformers", "sae_lens", "transformer_lens", "huggingface_hub")
#: Grammar text given to ``Grammar.from_string`` and written to the grammar file (two nonterminals).
GRAMMAR_TEXT = "S -> '(' S ')' S [0.2] | '[' S ']' [0.2] | T [0.6]\nT -> 'x' [0.6] | 'y' 'x' [0.4]\n"
#: Fields that record a model's or SAE's history (initialisation, training settings, provenance), not what it computes.
MODEL_INFO_FIELDS = ("preset", "seed", "initializer_range")
DATA_INFO_FIELDS = ("grammar", "seed", "splits", "formal_sae_version", "length_stats")
SAE_INFO_FIELDS = ("sae_lens_version", "sae_lens_training_version", "model_name", "dataset_path", "context_size", "l0")
SAE_INFO_FIELDS += ("num_dead_features", "training_architecture_details")


# ---------------------------------------------------------------------------- corruptions
def corrupt_bytes(data: bytes, kind: str, seed: int = 0) -> bytes | None:
    """``data`` corrupted by ``kind`` (seeded); None for ``delete``."""
    rng = random.Random(f"{kind}:{seed}")
    if kind == "empty":
        return b""
    if kind == "half":
        return data[: len(data) // 2]
    if kind == "minus_one":
        return data[:-1]
    if kind == "flip":  # XOR 1-3 random bytes with a random non-zero byte
        out = bytearray(data)
        for i in rng.sample(range(len(out)), min(len(out), rng.randint(1, 3))):
            out[i] ^= rng.randint(1, 255)
        return bytes(out)
    if kind == "garbage":
        words = ["lorem", "ipsum", "{", "]", "0x7f", "NaN", "null", "\u00e9t\u00e9", "\t", "\n"]
        return " ".join(rng.choice(words) for _ in range(rng.randint(3, 40))).encode("utf-8")
    if kind in JSON_SHAPES:
        return JSON_SHAPES[kind]
    if kind == "delete":
        return None
    raise ValueError(f"unknown corruption {kind!r}; use one of {CORRUPTIONS}")


def corrupt_file(path: Path, kind: str, seed: int = 0) -> None:
    data = corrupt_bytes(path.read_bytes(), kind, seed)
    if data is None:
        path.unlink()
    else:
        path.write_bytes(data)


def corrupt_text(text: str, kind: str, seed: int = 0) -> str | None:
    """Grammar text corrupted by ``kind``: like :func:`corrupt_bytes`, on characters (None for ``delete``)."""
    if kind == "flip":  # replace 1-3 characters with random ones, some of them outside ASCII
        rng = random.Random(f"text:{seed}")
        chars = list(text)
        for i in rng.sample(range(len(chars)), min(len(chars), rng.randint(1, 3))):
            chars[i] = chr(rng.choice([rng.randint(32, 126), rng.randint(0, 31), rng.randint(0x80, 0x2FFF)]))
        return "".join(chars)
    data = corrupt_bytes(text.encode("utf-8"), kind, seed)
    return None if data is None else data.decode("utf-8", errors="replace")


def corruptions_for(path: Path, flip_seeds: Sequence[int], garbage_seeds: Sequence[int] = (0,)) -> list[tuple[str, int]]:
    """The (corruption, seed) pairs tried on one file; the JSON shapes only on JSON files."""
    pairs = [("empty", 0), ("half", 0), ("minus_one", 0)]
    pairs += [("flip", s) for s in flip_seeds] + [("garbage", s) for s in garbage_seeds]
    if path.suffix == ".json":
        pairs += [(kind, 0) for kind in JSON_SHAPES]
    return [*pairs, ("delete", 0)]


# ---------------------------------------------------------------------------- artifacts
@dataclass
class Artifacts:
    """Pristine artifacts, each a directory (the grammar: a directory holding ``grammar.pcfg``)."""

    data: Path
    model: Path
    sae: Path
    sweep: Path
    grid: Path
    grammar: Path

    def dir(self, artifact: str) -> Path:
        return getattr(self, "sweep" if artifact == "cell" else artifact)


GRID = {"name": "fuzz", "base": {"k": 4, "training_tokens": 256, "batch_size_tokens": 64}, "axes": {"expansion_factor": [1, 2]}}
EVALUATION = {"n_samples": 2, "repeats": 1, "max_sentences": 4}


def build_artifacts(root: Path) -> Artifacts:
    """A tiny dataset, model, SAE, two-cell sweep and grammar file under ``root`` (a few seconds)."""
    root.mkdir(parents=True, exist_ok=True)
    with quiet():
        ds = formal_sae.generate_dataset("expr", root / "data", n_train=60, n_validation=8, n_test=8, seed=0)
        train = formal_sae.TrainConfig(steps=4, eval_every=4, batch_size=16, validity_samples=4, final_validity_repeats=1)
        model = formal_sae.train_model(ds, "tiny", train, out_dir=root / "model", progress=False)
        config = formal_sae.SAETrainConfig(k=4, expansion_factor=2, training_tokens=512, batch_size_tokens=64)
        formal_sae.train_sae(model, ds, config, out_dir=root / "sae")
        (root / "grid.json").write_text(json.dumps(GRID))
        formal_sae.sweep(model, ds, root / "grid.json", root / "sweep", evaluation=EVALUATION, progress=False, plots=False)
    interrupted(root / "sweep", root / "sweep.in-progress")
    (root / "grammar").mkdir()
    (root / "grammar" / "grammar.pcfg").write_text(GRAMMAR_TEXT)
    return Artifacts(
        root / "data", root / "model", root / "sae", root / "sweep.in-progress", root / "grid.json", root / "grammar"
    )


def interrupted(done: Path, work: Path) -> None:
    """``done``, a finished sweep, as the in-progress folder of one killed after its last cell: the
    state in which ``formal-sae sweep`` reads ``grid.json`` and each cell's ``metrics.json`` (to resume)."""
    shutil.copytree(done, work)
    marker = json.loads((work / MARKER_FILE).read_text())
    marker["complete"] = False
    marker.pop("files", None)
    (work / MARKER_FILE).write_text(json.dumps(marker))


def command(arts: Artifacts, artifact: str, copy: Path, out: Path) -> list[str]:
    """The CLI command that loads ``artifact`` (replaced by ``copy``), writing to ``out``."""
    paths = {"model": arts.model, "sae": arts.sae, "data": arts.data, artifact: copy}
    if artifact == "grammar":
        return [
            "generate",
            str(copy / "grammar.pcfg"),
            "--out",
            str(out),
            "--n-train",
            "12",
            "--n-validation",
            "3",
            "--n-test",
            "2",
        ]
    if artifact == "sweep":  # resumes the interrupted sweep ``copy`` into ``out``
        evaluation = ["--n-samples", "2", "--repeats", "1", "--max-sentences", "4"]
        return [
            "sweep",
            "--grid",
            str(arts.grid),
            "--model",
            str(arts.model),
            "--data",
            str(arts.data),
            "--out",
            str(out),
            *evaluation,
        ]
    if artifact == "cell":  # a sweep cell's SAE files: the SAE loader reads them
        paths["sae"] = copy / "cells" / first_cell(copy)
    if artifact == "model":  # not through an SAE: its stored model fingerprint would catch flipped weights first
        return ["train-sae", "--model", str(copy), "--data", str(arts.data), "--out", str(out), "--training-tokens", "128",
                "--batch-size-tokens", "64", "--k", "4", "--expansion-factor", "1", "--n-samples", "2", "--repeats", "1"]  # fmt: skip
    loaded = ["--model", str(paths["model"]), "--sae", str(paths["sae"]), "--data", str(paths["data"]), "--out", str(out)]
    if artifact == "data":  # analyze reads every feature column
        return ["analyze", *loaded, "--max-sentences", "4"]
    return ["intervene", *loaded, "--latent", "0", "--n-samples", "2", "--max-sentences", "4"]  # 3x faster than analyze


def first_cell(sweep_dir: Path) -> str:
    return sorted(p.name for p in (sweep_dir / "cells").iterdir())[0]


def artifact_files(arts: Artifacts, artifact: str) -> list[str]:
    """Every file of an artifact, relative to its directory (a sweep's cell SAE files are the ``cell`` artifact)."""
    root = arts.dir(artifact)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    cell_sae = ("cfg.json", "sae_weights.safetensors", "formal_sae_sae_config.json")
    if artifact == "sweep":
        return [f for f in files if not (f.startswith("cells/") and f.endswith(cell_sae))]
    if artifact == "cell":
        return [f for f in files if f.startswith(f"cells/{first_cell(root)}/") and f.endswith(cell_sae)]
    return files


# ---------------------------------------------------------------------------- what the loaders see
def describe(artifact: str, path: Path) -> Any:
    """The structure of an artifact as the API loads it (no weight or metric values: flips there are undetectable)."""
    if artifact == "model":
        m = formal_sae.load_model(path)
        return {
            "config": {k: v for k, v in m.formal_sae_config.to_dict().items() if k not in MODEL_INFO_FIELDS},
            "data": {k: v for k, v in m.formal_sae_data.__dict__.items() if k not in DATA_INFO_FIELDS and k != "features"},
            "features": [(f["name"], f["kind"], f["categories"]) for f in m.formal_sae_data.features],  # not the wording
            "vocab": m.tokenizer.get_vocab(),
            "special": m.tokenizer.special_tokens_map,
            "shapes": {k: tuple(v.shape) for k, v in m.state_dict().items()},
        }
    if artifact in ("sae", "cell"):
        sae = formal_sae.load_sae(path if artifact == "sae" else path / "cells" / first_cell(path))
        cfg = sae.cfg.to_dict()
        cfg["metadata"] = {k: v for k, v in cfg["metadata"].items() if k not in SAE_INFO_FIELDS}
        return {"cfg": cfg, "shapes": {k: tuple(v.shape) for k, v in sae.state_dict().items()}}
    if artifact == "data":
        ds = formal_sae.load_dataset_dir(path)
        return {n: (len(s), s.features.to_dict(), s.info.description, s.column_names) for n, s in ds.items()}
    if artifact == "sweep":  # the finished sweep
        rows = read_json(path / "results.json")
        rows = rows["rows"] if isinstance(rows, dict) and "rows" in rows else rows
        return {"grid": read_json(path / "grid.json"), "cells": sorted(str(r.get("cell_id")) for r in rows)}
    return None  # a grammar file: any grammar it still holds is the user's grammar


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- running and judging
@dataclass
class Outcome:
    """``error`` (clean), ``harmless`` (succeeded, same structure) or ``failure`` (with why)."""

    kind: str
    detail: str = ""


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class _Lines(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(f"{record.name}: {record.getMessage()}")


def run_cli(argv: list[str]) -> tuple[int | None, str, str]:
    """Run ``formal-sae ARGV`` in-process: (exit code or None if it raised, stderr, the exception).

    Warnings and log records count as stderr: a user running the script sees them there."""
    err, extra = io.StringIO(), []
    handler = _Lines(extra)
    loggers = [logging.getLogger(name) for name in LOGGERS]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(record=True) as caught,
        ):
            try:
                rc: int | None = main(argv)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
            except Exception as e:
                frames = [f for f in traceback.extract_tb(e.__traceback__) if "formal_sae" in f.filename] or traceback.extract_tb(
                    e.__traceback__
                )
                where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
                return None, err.getvalue(), f"{type(e).__name__} at {where}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    lines = err.getvalue().splitlines() + extra + [f"{w.category.__name__}: {w.message}" for w in caught]
    return rc, "\n".join(lines), ""


def names_file(line: str, path: Path) -> bool:
    """The message names ``path`` with its folder (``train/state.json``, not just ``state.json``)."""
    return f"{path.parent.name}{os.sep}{path.name}" in line


def judge_error(message: str, path: Path) -> Outcome:
    """A clean one-line error that names the file and the fix, or a failure saying what is wrong."""
    lines = message.strip().splitlines()
    if len(lines) != 1:
        return Outcome("failure", f"{len(lines)} lines: {' | '.join(lines)[:200]}")
    if not names_file(lines[0], path):
        return Outcome("failure", f"does not name {path.parent.name}/{path.name}: {lines[0][:200]}")
    if not any(w in lines[0].lower() for w in FIX_WORDS):
        return Outcome("failure", f"says no fix: {lines[0][:200]}")
    return Outcome("error", lines[0])


def judge_cli(argv: list[str], corrupted: Path, out: Path, keep: Path | None, same: Callable[[], str]) -> Outcome:
    """Run a command on a corrupted artifact and judge it.

    ``out``: the output directory; after a failure neither it nor a sibling of its name (an
    in-progress or replaced folder) may exist, except ``keep`` (an interrupted run the command
    resumes), which must then be as it was. ``same``: after a success, "" if the artifact loads
    with its pristine structure, else why not."""
    before = snapshot(keep) if keep is not None else None
    rc, err, exc = run_cli(argv)
    if rc is None:
        return Outcome("failure", f"traceback: {exc}")
    if rc == 0:
        why = same()
        return Outcome("failure", f"silent change: {why}") if why else Outcome("harmless")
    if rc != 2:
        return Outcome("failure", f"exit code {rc}: {err[:200]}")
    outcome = judge_error(err, corrupted)
    line = err.strip()
    if outcome.kind == "error" and not line.startswith(f"formal-sae {argv[0]}: error: "):
        return Outcome("failure", f"not a formal-sae error line: {line[:200]}")
    left = sorted(p.name for p in out.parent.iterdir() if (p.name == out.name or p.name.startswith(f"{out.name}.")) and p != keep)
    if left:
        return Outcome("failure", f"partial output: {', '.join(left)} left after the error")
    if keep is not None and snapshot(keep) != before:
        return Outcome("failure", f"partial output: {keep.name} changed although the command failed")
    return outcome


def judge_api(load: Callable[[], Any], corrupted: Path, same: Callable[[], str]) -> Outcome:
    """Call an API loader on a corrupted artifact: a one-line FormalSAEError naming the file, or the pristine structure."""
    try:
        with quiet():
            load()
    except formal_sae.FormalSAEError as e:
        return judge_error(str(e), corrupted)
    except Exception as e:
        return Outcome("failure", f"traceback: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200])
    why = same()
    return Outcome("failure", f"silent change: {why}") if why else Outcome("harmless")


API_LOADERS: dict[str, Callable[[Path], Any]] = {
    "model": formal_sae.load_model,
    "sae": formal_sae.load_sae,
    "cell": lambda p: formal_sae.load_sae(p / "cells" / first_cell(p)),
    "data": formal_sae.load_dataset_dir,
    "grammar": lambda p: formal_sae.load_grammar(str(p / "grammar.pcfg")),
}


@dataclass
class Case:
    artifact: str  # model, sae, cell, data, sweep, grammar
    file: str  # relative to the artifact's directory
    corruption: str
    seed: int = 0

    @property
    def id(self) -> str:
        return f"{self.artifact}:{self.file}:{self.corruption}{self.seed if self.corruption in ('flip', 'garbage') else ''}"


class Fuzzer:
    """Runs cases against pristine artifacts, each on a fresh copy under ``work``."""

    def __init__(self, arts: Artifacts, work: Path) -> None:
        self.arts, self.work, self._pristine, self._n = arts, work, {}, 0

    def pristine(self, artifact: str) -> Any:
        if artifact not in self._pristine:
            path = self.arts.dir(artifact)
            with quiet():  # a sweep's pristine structure: the finished sweep the interrupted one was made from
                self._pristine[artifact] = describe(artifact, path.parent / "sweep" if artifact == "sweep" else path)
        return self._pristine[artifact]

    def _copy(self, case: Case) -> tuple[Path, Path]:
        self._n += 1
        base = self.work / f"case{self._n}"
        copy = base / self.arts.dir(case.artifact).name
        shutil.copytree(self.arts.dir(case.artifact), copy)
        corrupt_file(copy / case.file, case.corruption, case.seed)
        return base, copy

    def _same(self, artifact: str, loaded: Path) -> Callable[[], str]:
        def check() -> str:
            try:
                with quiet():
                    now = describe(artifact, loaded)
            except Exception as e:  # the command succeeded, yet the artifact no longer loads
                return f"the command succeeded but the API loader then raised {type(e).__name__}: {str(e)[:150]}"
            if now == self.pristine(artifact):
                return ""
            return f"{artifact} loads with another structure than the pristine one ({diff(self.pristine(artifact), now)})"

        return check

    def cli(self, case: Case) -> Outcome:
        self.pristine(case.artifact)
        base, copy = self._copy(case)
        sweep = case.artifact == "sweep"
        out = base / "sweep" if sweep else base / "out"
        argv = command(self.arts, case.artifact, copy, out)
        try:
            return judge_cli(
                argv, copy / case.file, out, copy if sweep else None, self._same(case.artifact, out if sweep else copy)
            )
        finally:
            shutil.rmtree(base, ignore_errors=True)

    def api(self, case: Case) -> Outcome:
        self.pristine(case.artifact)
        base, copy = self._copy(case)
        try:
            return judge_api(lambda: API_LOADERS[case.artifact](copy), copy / case.file, self._same(case.artifact, copy))
        finally:
            shutil.rmtree(base, ignore_errors=True)


def diff(a: Any, b: Any, where: str = "") -> str:
    """Where two nested structures first differ, for failure messages."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k):
                return diff(a.get(k), b.get(k), f"{where}.{k}")
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return diff(x, y, f"{where}[{i}]")
    return f"{where or 'value'}: {str(a)[:60]!r} -> {str(b)[:60]!r}"


def judge_grammar_text(text: str | None) -> Outcome:
    """``Grammar.from_string`` on corrupted text: a one-line GrammarError, or a grammar (the user's)."""
    try:
        formal_sae.Grammar.from_string(text)  # type: ignore[arg-type]
    except formal_sae.GrammarError as e:
        lines = str(e).strip().splitlines()
        return Outcome("error", lines[0]) if len(lines) == 1 else Outcome("failure", f"{len(lines)} lines: {str(e)[:200]}")
    except Exception as e:
        return Outcome("failure", f"traceback: {type(e).__name__}: {str(e)[:150]}")
    return Outcome("harmless")

"""One benchmark score as an SAEBench eval result, so that SAEBench's tooling reads formal-sae's results.

SAEBench (https://github.com/adamkarvonen/SAEBench) writes one JSON per SAE and eval, the fields
of its ``BaseEvalOutput``: metrics in named flat categories, per-item details, the eval's config
and the SAE's. `saebench_record` fills those fields from a `BenchScore` (eval type
`EVAL_TYPE_ID`) and adds the score itself as a ``formal_sae`` block; SAEBench's readers ignore
the extra key. The SAEs are custom ones, so the ids follow SAEBench's convention for a custom SAE:
its unique id as the release and ``'custom_sae'`` as the SAELens id (`saebench_filename`).

The file is reproducible: ``eval_id`` is a UUID derived from the dictionary and the eval config,
not a random one, and ``datetime_epoch_millis`` is taken from ``SOURCE_DATE_EPOCH`` when it is set
(the reproducible-builds convention), so a rerun writes the same bytes.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from formal_sae.bench.score import BenchScore
from formal_sae.errors import FormalSAEError
from formal_sae.io import canonical, to_jsonable, write_json
from formal_sae.version import __version__

#: The top-level fields of SAEBench's eval output, in its order: ``BaseEvalOutput`` in
#: ``sae_bench/evals/base_eval_output.py`` of sae-bench 0.6.0 (the PyPI wheel).
SAEBENCH_FIELDS = (
    "eval_type_id",
    "eval_config",
    "eval_id",
    "datetime_epoch_millis",
    "eval_result_metrics",
    "eval_result_details",
    "sae_bench_commit_hash",
    "sae_lens_id",
    "sae_lens_release_id",
    "sae_lens_version",
    "sae_cfg_dict",
    "eval_result_unstructured",
)
#: The eval type of formal-sae's records (SAEBench's own are 'core', 'absorption_first_letter', ...).
EVAL_TYPE_ID = "formal_sae_ground_truth"
#: The metric categories of ``eval_result_metrics`` and the `BenchScore` fields in each. The
#: fidelity and sparsity categories take the names of SAEBench's core eval, whose readers (e.g.
#: ``get_core_results`` of ``sae_bench_utils/graphing_utils.py``) look up ``sparsity.l0`` and
#: ``model_performance_preservation.ce_loss_score``.
METRIC_CATEGORIES: dict[str, tuple[str, ...]] = {
    "model_behavior_preservation": ("kl_div_score", "validity"),
    "model_performance_preservation": ("ce_loss_score",),
    "reconstruction_quality": ("explained_variance",),
    "sparsity": ("l0", "dead_fraction", "dense_fraction"),
    "ground_truth": ("structural_score", "lexical_score", "coverage", "mcc", "absorption"),
    "causal": ("gap_closure", "not_causal_rate", "n_causal_features", "causal_loss", "linearity_error", "predictability"),
}
#: SAEBench's value of ``sae_bench_commit_hash`` when it cannot tell its commit: no SAEBench ran here.
UNKNOWN = "Unknown"
#: SAEBench's SAELens id of a custom SAE (``load_and_format_sae`` in ``sae_bench_utils/general_utils.py``).
CUSTOM_SAE = "custom_sae"

# A fixed namespace: the same dictionary and config give the same eval_id on any machine.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://formal-sae.github.io/formal-sae/bench/saebench")


def saebench_record(
    score: BenchScore, *, sae_cfg: Mapping[str, Any], eval_config: Mapping[str, Any], details: list | None = None
) -> dict[str, Any]:
    """One SAE's score as an SAEBench eval output (plain JSON values).

    Args:
        score: the dictionary's score on one language.
        sae_cfg: its configuration (e.g. the SAELens config's ``to_dict()``); ``architecture``,
            ``d_sae`` and ``hook_name`` are filled in from ``score`` when missing, since SAEBench's
            graphing reads the first two.
        eval_config: how it was scored (e.g. the scoring settings and the language).
        details: ``eval_result_details``, a list of flat objects; None: one per ground-truth
            feature, ``{"feature": name, "best_latent_score": score}``.

    Returns:
        A dict with every field of `SAEBENCH_FIELDS`, in order, then ``formal_sae``: ``score.to_dict()``.
        ``eval_id`` is a UUID5 of the language, the dictionary's id and the eval config's
        canonical JSON; ``datetime_epoch_millis`` is ``SOURCE_DATE_EPOCH`` (seconds) times 1000
        when that variable is set, else the current time.
    """
    config = canonical(eval_config)
    cfg = to_jsonable(dict(sae_cfg))
    for key, value in (("architecture", score.architecture), ("d_sae", score.d_sae), ("hook_name", score.hook_name)):
        cfg.setdefault(key, value)
    metrics = {category: {name: getattr(score, name) for name in names} for category, names in METRIC_CATEGORIES.items()}
    if details is None:
        details = [{"feature": name, "best_latent_score": value} for name, value in score.feature_scores.items()]
    return {
        "eval_type_id": EVAL_TYPE_ID,
        "eval_config": config,
        "eval_id": saebench_eval_id(score, config),
        "datetime_epoch_millis": _epoch_millis(),
        "eval_result_metrics": metrics,
        "eval_result_details": to_jsonable(details),
        "sae_bench_commit_hash": UNKNOWN,
        "sae_lens_id": CUSTOM_SAE,
        "sae_lens_release_id": _release_id(score),
        "sae_lens_version": _sae_lens_version(),
        "sae_cfg_dict": cfg,
        "eval_result_unstructured": {"formal_sae_version": __version__},
        "formal_sae": score.to_dict(),
    }


def saebench_eval_id(score: BenchScore, eval_config: Mapping[str, Any]) -> str:
    """The record's ``eval_id``: a UUID5 of the language, the dictionary's id and the eval config
    (key order ignored), where SAEBench draws a random UUID4, so that reruns match."""
    name = json.dumps([score.grammar, score.sae_id, canonical(eval_config)], sort_keys=True)
    return str(uuid.uuid5(_NAMESPACE, name))


def saebench_filename(score: BenchScore) -> str:
    """The record's file name as SAEBench names its results (``get_results_filepath``:
    ``{release}_{sae_id}_eval_results.json``, slashes made underscores), which its readers find
    by the ``eval_results.json`` suffix."""
    return f"{_release_id(score)}_{CUSTOM_SAE}_eval_results.json".replace("/", "_")


def write_saebench_json(record: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a record atomically as indented JSON; returns the path."""
    write_json(path, record)
    return Path(path)


def _release_id(score: BenchScore) -> str:
    # a baseline's sae_id (e.g. 'pca') repeats across languages: the language makes it unique
    return f"formal_sae_{score.grammar}_{score.sae_id}"


def _epoch_millis() -> int:
    stamp = os.environ.get("SOURCE_DATE_EPOCH")
    if stamp is None:
        return int(time.time() * 1000)
    try:
        seconds = int(stamp)
    except ValueError:
        raise FormalSAEError(f"SOURCE_DATE_EPOCH must be an integer number of seconds, got {stamp!r}") from None
    if seconds < 0:
        raise FormalSAEError(f"SOURCE_DATE_EPOCH must be >= 0, got {stamp!r}")
    return seconds * 1000


def _sae_lens_version() -> str | None:
    try:
        return version("sae-lens")
    except PackageNotFoundError:
        return None

"""SAELens's own evaluation (``sae_lens.evals.run_evals``) run on formal-sae's sentences.

[`evaluate_sae`][formal_sae.evaluate_sae] computes the explained variance and CE-loss score with
SAELens's formulas but its own loop over sentence tokens. `saelens_eval` runs the real
``run_evals``, through an ``ActivationsStore``, on the same sentences, so anyone can check that
the numbers formal-sae reports are the numbers SAELens would report. Out of the box SAELens is
built for long web text and scores other tokens than formal-sae; these settings make it score
exactly the sentence tokens:

* **One sentence per row, pretokenized** (a ``tokens`` column). SAELens reads pretokenized rows
  as they are, truncated to ``context_size``: it neither concatenates rows nor inserts ``<bos>``.
  The text route cannot work: by default it packs several sentences into one context, separated
  by ``<bos>`` (a later sentence then attends to the earlier ones, which changes every activation
  after the first attention layer, and the loss at a sentence's end predicts across the
  separator), and with ``disable_concat_sequences=True`` it *drops* every sequence shorter than
  ``context_size`` (``concat_and_batch_sequences``), so short sentences of varying length would
  be mostly or entirely skipped. ``disable_concat_sequences=True`` is still set, to document the
  intent; it has no effect on pretokenized rows.
* **``context_size`` = the longest row** (prompt, sentence and ``<eos>``), shorter rows
  right-padded with ``<pad>``: ``get_batch_tokens`` stacks rows, so they must share one length,
  and a pretokenized dataset whose first row is shorter than ``context_size`` is refused. Right
  padding changes nothing before it in a causal model without attention masks, so every
  sentence token sees exactly the context it has in formal-sae's length-sorted batches.
* **``prepend_bos=False``**: each row already starts with formal-sae's prompt (``<bos>``, or the
  paper's 7-token prefix); ``run_evals`` runs token tensors, to which TransformerLens adds nothing.
  (The SAE's metadata says ``prepend_bos=True``, which ``ActivationsStore.from_sae`` would copy:
  true of the rows, but the store reads the flag only on the text route, where it would add one
  ``<bos>`` per packed context, not per sentence.)
* **``exclude_special_tokens`` = every id that is not a grammar terminal** (the ids formal-sae
  passes as ``ignore_tokens``). SAELens's default (``True``) excludes only the tokenizer's
  ``bos/eos/pad/sep`` ids (``get_special_token_ids``): right for the ``"bos"`` prompt format, but
  it would score the paper prompt's tokens and ``<unk>``. With the explicit list, the
  reconstruction metrics use only sentence positions, the SAE is spliced only there, and the CE
  loss counts the predictions made at sentence tokens (``mask[:, :-1]``: the one from the last
  sentence token, of ``<eos>``, is in; the one from ``<bos>``, of the first token, is out), as
  formal-sae counts them.
* **Whole batches, each row read once**: ``run_evals`` reads ``n_batches x batch_size`` rows and
  the store silently restarts at the end of the dataset, so the rows are padded to a whole number
  of batches with all-``<pad>`` rows, whose every position is excluded. The reconstruction pass
  ends exactly at the end of the dataset, so the sparsity and variance pass restarts at its first
  row (``ActivationsStore.reset_input_dataset`` resets a different iterator and would not).
* **No activation scaling** (``ActivationScaler()``, ``normalize_activations="none"``): as in
  ``evaluate_sae``, an SAE trained on normalised inputs does its own scaling (``splice``).

With these settings both evaluations score the same tokens with the same formulas; what differs
is only floating point: batch shapes (formal-sae sorts rows by length and pads each batch to its
own longest row) and summation order. Measured on tiny Expr models (``bos`` and ``paper`` prompts,
11 to 200 test sentences, batch sizes 4 to 128): the identity SAE scores exactly 1 in both, and a
briefly trained TopK SAE differs by at most 2e-6 in explained variance and 4e-6 in CE-loss score
(KL-divergence score: at most 1e-7); the tests allow 1e-4. Without these settings the difference is not
noise: on 200 test sentences of the ``bos`` model, formal-sae and `saelens_eval` report an
explained variance of -1.820 and a CE-loss score of 0.928 for that SAE, while SAELens's default
text route (``text`` column, sentences concatenated with ``<bos>`` separators, ``context_size=64``)
reports -1.266 and 1.143, and with ``disable_concat_sequences=True`` (``context_size=32``) keeps 6
of the 200 sentences (-1.611 and 0.890).

Not covered: SAELens's ``l2_norm``, ``cossim`` and feature-density metrics (left to
``run_evals``; formal-sae has no counterpart to compare), per-head hooks with ``hook_head_index``
(formal-sae's SAEs read whole hooks), and the tokenizer check SAELens makes on a pretokenized
dataset given by name (the rows here come from the formal-sae dataset itself).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import datasets
import torch
from sae_lens import SAE
from sae_lens.evals import EvalConfig, run_evals
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.activations_store import ActivationsStore
from transformer_lens import HookedTransformer

from formal_sae.activations import check_split, padded_batch
from formal_sae.data import column, dataset_metadata, grammar_of
from formal_sae.errors import DatasetError, SAEError
from formal_sae.saes import check_sae_fits, check_sae_model, with_splice

#: The ``run_evals`` metrics that `SAELensEval.metrics` keeps (SAELens group, metric).
KEPT_METRICS: tuple[tuple[str, str], ...] = (
    ("reconstruction_quality", "explained_variance"),
    ("reconstruction_quality", "mse"),
    ("sparsity", "l0"),
    ("model_performance_preservation", "ce_loss_score"),
    ("model_performance_preservation", "ce_loss_without_sae"),
    ("model_performance_preservation", "ce_loss_with_sae"),
    ("model_performance_preservation", "ce_loss_with_ablation"),
    ("model_behavior_preservation", "kl_div_score"),
)


@dataclass
class SAELensEval:
    """What SAELens's ``run_evals`` reports for an SAE on a split's sentences (`saelens_eval`).

    Attributes:
        explained_variance: SAELens's ``reconstruction_quality.explained_variance``.
        ce_loss_score: SAELens's ``model_performance_preservation.ce_loss_score``.
        n_tokens: the sentence tokens SAELens scored (the positions it did not exclude), the same
            count as ``SAEMetrics.n_tokens``.
        settings: the SAELens settings used (store, eval config, excluded tokens), for the record.
        metrics: the other scalar metrics of ``run_evals`` in `KEPT_METRICS`, by name.
    """

    explained_variance: float
    ce_loss_score: float
    n_tokens: int
    settings: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)


def sentence_token_ids(tokenizer: Any, dataset: datasets.Dataset | datasets.DatasetDict) -> list[int]:
    """The ids of the grammar's terminals (the tokens of sentences) in ``tokenizer``."""
    terminals = grammar_of(dataset_metadata(dataset)).terminals
    return sorted(set(tokenizer.convert_tokens_to_ids(list(terminals))))


def sentence_rows(input_ids: list[list[int]], pad_id: int, batch_size: int) -> tuple[torch.Tensor, int, int]:
    """Rows for a pretokenized ``ActivationsStore``: one sentence per row, right-padded to the
    longest, then all-``<pad>`` rows up to a whole number of batches.

    The batch size is evened out (``ceil(n / n_batches)``) so that fewer than ``n_batches`` filler
    rows are needed. Returns ``(tokens [rows, width], batch_size, n_batches)``.
    """
    n_batches = math.ceil(len(input_ids) / batch_size)
    batch_size = math.ceil(len(input_ids) / n_batches)
    tokens = padded_batch(input_ids, pad_id)
    filler = torch.full((n_batches * batch_size - len(input_ids), tokens.shape[1]), pad_id, dtype=tokens.dtype)
    return torch.cat([tokens, filler]), batch_size, n_batches


@torch.no_grad()
def saelens_eval(
    model: HookedTransformer,
    sae: SAE,
    dataset: datasets.DatasetDict,
    *,
    split: str = "test",
    max_sentences: int | None = 2000,
    batch_size: int = 128,
    splice: str = "scale_correct",
    allow_other_model: bool = False,
) -> SAELensEval:
    """SAELens's ``run_evals`` on the first ``max_sentences`` sentences of ``dataset[split]``,
    scoring exactly the tokens [`evaluate_sae`][formal_sae.evaluate_sae] scores (the settings and
    why: the module docstring).

    Args:
        model: the formal-sae model the SAE reads.
        sae: the SAE; checked against the model as ``evaluate_sae`` checks it.
        dataset: the formal-sae dataset (rows with ``input_ids``: prompt, sentence, ``<eos>``).
        split: the split to evaluate on.
        max_sentences: how many sentences, from the start of the split (all when None).
        batch_size: sentences per ``run_evals`` batch (evened out to avoid filler rows).
        splice: how an SAE trained on normalised inputs is spliced (``with_splice``).
        allow_other_model: evaluate an SAE trained on another model (``check_sae_model``).
    """
    hook = check_sae_fits(model, sae)
    check_sae_model(model, sae, allow_other_model)
    if split not in dataset:
        raise SAEError(f"the dataset has no split {split!r}")
    rows = dataset[split]
    check_split(rows, max_sentences, "evaluate on")
    if batch_size < 1:
        raise SAEError(f"batch_size must be >= 1, got {batch_size}")
    sae = with_splice(sae, splice)
    sae.eval()
    n = len(rows) if max_sentences is None else min(len(rows), max_sentences)
    tok = model.tokenizer
    tokens, batch_size, n_batches = sentence_rows(column(rows, "input_ids")[:n], tok.pad_token_id, batch_size)
    width = tokens.shape[1]
    if width > model.cfg.n_ctx:
        raise DatasetError(f"sequences of {width} tokens exceed the model's context of {model.cfg.n_ctx}")
    if int(tokens.max()) >= model.cfg.d_vocab:
        raise DatasetError(
            f"the dataset uses token id {int(tokens.max())} but the model's vocabulary has {model.cfg.d_vocab} tokens: "
            "dataset and model do not match"
        )
    sentence_ids = set(sentence_token_ids(tok, dataset))
    excluded = [i for i in range(len(tok)) if i not in sentence_ids]
    device = model.cfg.device
    store = ActivationsStore(
        model=model,
        dataset=datasets.Dataset.from_dict({"tokens": tokens.tolist()}),
        streaming=False,
        hook_name=hook,
        hook_head_index=sae.cfg.metadata.hook_head_index,
        context_size=width,
        d_in=sae.cfg.d_in,
        n_batches_in_buffer=1,
        total_training_tokens=len(tokens),  # the store warns when the dataset has fewer rows than this
        store_batch_size_prompts=batch_size,
        train_batch_size_tokens=batch_size * width,
        prepend_bos=False,
        normalize_activations="none",
        device=torch.device(device),
        dtype="float32",
        exclude_special_tokens=torch.tensor(excluded, dtype=torch.long, device=device),
        disable_concat_sequences=True,
    )
    eval_config = EvalConfig(
        batch_size_prompts=batch_size,
        n_eval_reconstruction_batches=n_batches,
        n_eval_sparsity_variance_batches=n_batches,
        compute_kl=True,
        compute_ce_loss=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        git_hash="unknown",  # run_evals never reads it; the default runs git in site-packages' parent
    )
    with warnings.catch_warnings():
        # the store re-wraps every torch-formatted row with torch.tensor(), warning once per row
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
        results, _ = run_evals(sae, store, model, ActivationScaler(), eval_config, exclude_special_tokens=excluded)
    metrics = {name: float(results[group][name]) for group, name in KEPT_METRICS}
    n_tokens = int((~torch.isin(tokens, torch.tensor(excluded))).sum())
    try:
        sae_lens_version = version("sae-lens")
    except PackageNotFoundError:  # a source checkout without installed metadata
        sae_lens_version = "unknown"
    settings = {
        "sae_lens_version": sae_lens_version,
        "is_dataset_tokenized": store.is_dataset_tokenized,
        "tokens_column": store.tokens_column,
        "context_size": width,
        "padding": f"right, {tok.pad_token}",
        "prepend_bos": False,
        "disable_concat_sequences": True,
        "exclude_special_tokens": tok.convert_ids_to_tokens(excluded),
        "normalize_activations": "none",
        "splice": splice,
        "batch_size_prompts": batch_size,
        "n_batches": n_batches,
        "n_sentences": n,
        "filler_rows": len(tokens) - n,
    }
    return SAELensEval(
        explained_variance=metrics["explained_variance"],
        ce_loss_score=metrics["ce_loss_score"],
        n_tokens=n_tokens,
        settings=settings,
        metrics=metrics,
    )

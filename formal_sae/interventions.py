"""Interventions on SAE latents and their causal effect on what the model does (PAPER.md §7).

An :class:`Intervention` edits latents at the SAE's hook (SAELens's ``hook_sae_acts_post`` on a
``HookedSAETransformer``), during a forward pass or during generation. With the error term
(default) the model's activation is ``decode(edited latents) + (x - decode(latents))``: only the
edit changes the output, never the reconstruction error, and decoding is the SAE's own (pre-bias,
normalisations and all), unlike the authors' clamping code which skipped both.

Modes: ``ablate`` (set to 0), ``clamp`` (set to ``value``; with ``relative=True`` the value is a
fraction of the latent's observed [min, max] range), ``scale`` (multiply by ``value``),
``keep_only`` (zero every other latent: the paper's complement ablation), ``steer`` (add
``value`` times the latent's unit decoder direction to the activation) and ``patch`` (copy the
latents' values from another input, position by position: an interchange intervention).

Effects are measured on the next-token distribution (KL, total variation), on *grammar classes*
(the probability of the next token's pre-terminal category, e.g. noun / verb, a digit / an
operator, each bracket, or ``<eos>``), and on generations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from sae_lens import SAE
from scipy import stats
from transformer_lens import HookedTransformer

from formal_sae.activations import check_hook, iter_sentence_batches, run_from_hook
from formal_sae.data import column, dataset_metadata, grammar_of
from formal_sae.errors import FormalSAEError
from formal_sae.generation import PAPER_MAX_NEW_TOKENS, classify_sample, sample_sequences, spliced
from formal_sae.grammars import Grammar
from formal_sae.saes.evaluation import check_sae_fits, check_sae_model

MODES = ("ablate", "clamp", "scale", "keep_only", "steer", "patch")


@dataclass
class Intervention:
    """An edit of some latents. See the module docstring for the modes."""

    mode: str
    latents: list[int]
    value: float | None = None
    relative: bool = False
    source_tokens: torch.Tensor | None = field(default=None, repr=False)

    def validate(self, sae: SAE) -> None:
        if self.mode not in MODES:
            raise FormalSAEError(f"unknown intervention mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if not self.latents:
            raise FormalSAEError("an intervention needs at least one latent")
        bad = [j for j in self.latents if not 0 <= j < sae.cfg.d_sae]
        if bad:
            raise FormalSAEError(f"latent index {bad[0]} is out of range: the SAE has latents 0..{sae.cfg.d_sae - 1}")
        if self.mode in ("clamp", "scale", "steer") and self.value is None:
            raise FormalSAEError(f"mode {self.mode!r} needs a value (--value)")
        if self.mode == "patch" and self.source_tokens is None:
            raise FormalSAEError("mode 'patch' needs source_tokens: the input to copy the latents from")
        if self.relative and self.mode != "clamp":
            raise FormalSAEError("relative=True only applies to mode 'clamp'")


@torch.no_grad()
def latent_ranges(
    model, sae: SAE, split: datasets.Dataset, max_sentences: int | None = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-latent (min, max) over the sentence tokens of a split: the range ``relative`` clamps use."""
    lo = torch.full((sae.cfg.d_sae,), float("inf"))
    hi = torch.full((sae.cfg.d_sae,), float("-inf"))
    for batch in iter_sentence_batches(model, split, sae.cfg.metadata.hook_name, 256, max_sentences):
        acts = sae.encode(batch.acts.to(sae.device)).float().cpu()
        lo, hi = torch.minimum(lo, acts.min(0).values), torch.maximum(hi, acts.max(0).values)
    return lo, hi


@torch.no_grad()
def source_latents(model: HookedTransformer, sae: SAE, source_tokens: torch.Tensor) -> torch.Tensor:
    """Latents of the SAE on ``source_tokens`` (``[batch, pos, d_sae]``), for patching."""
    hook = sae.cfg.metadata.hook_name
    _, cache = model.run_with_cache(source_tokens.to(model.cfg.device), names_filter=hook)
    return sae.encode(cache[hook]).detach()


def intervention_hooks(
    model, sae: SAE, intervention: Intervention, ranges: tuple[torch.Tensor, torch.Tensor] | None = None
) -> list:
    """Forward hooks (for a model with ``sae`` attached) that carry out ``intervention``."""
    intervention.validate(sae)
    hook = sae.cfg.metadata.hook_name
    check_hook(model, hook)  # else SAELens skips the SAE with a warning and the hook name is a KeyError
    idx = torch.tensor(intervention.latents, dtype=torch.long)
    mode, value = intervention.mode, intervention.value
    if mode == "steer":
        direction = sae.W_dec[idx].detach()
        direction = (direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)).sum(0)

        def steer(out: torch.Tensor, hook) -> torch.Tensor:
            return out + value * direction.to(out.dtype).reshape(out.shape[-1:] if out.dim() else out.shape)

        return [(f"{hook}.hook_sae_output", steer)]
    if mode == "clamp" and intervention.relative:
        if ranges is None:
            raise FormalSAEError("a relative clamp needs the latents' observed ranges (latent_ranges(...))")
        lo, hi = ranges
        value_vec = lo[idx] + value * (hi[idx] - lo[idx])
    else:
        value_vec = torch.full((len(idx),), float(value or 0.0))
    patch = source_latents(model, sae, intervention.source_tokens) if mode == "patch" else None

    def edit(acts: torch.Tensor, hook) -> torch.Tensor:
        acts = acts.clone()
        if mode == "ablate":
            acts[..., idx] = 0
        elif mode == "clamp":
            acts[..., idx] = value_vec.to(acts)
        elif mode == "scale":
            acts[..., idx] = acts[..., idx] * value
        elif mode == "keep_only":
            keep = torch.zeros(acts.shape[-1], dtype=torch.bool, device=acts.device)
            keep[idx] = True
            acts = torch.where(keep, acts, torch.zeros_like(acts))
        else:  # patch, position by position over the common length
            n = min(acts.shape[1], patch.shape[1])
            src = patch[:, :n][..., idx].to(acts)
            acts[:, :n, idx] = src.expand(acts.shape[0], -1, -1) if src.shape[0] == 1 else src
        return acts

    return [(f"{hook}.hook_sae_acts_post", edit)]


def run_intervened(
    model, sae: SAE, tokens: torch.Tensor, intervention: Intervention | None, use_error_term: bool = True, ranges=None
) -> torch.Tensor:
    """Logits with the SAE spliced in and the intervention applied (None: no intervention)."""
    check_hook(model, sae.cfg.metadata.hook_name)  # SAELens would skip the SAE and return clean logits
    hooks = intervention_hooks(model, sae, intervention, ranges) if intervention is not None else []
    with spliced(model, hooks, [sae], use_error_term):
        return model(tokens.to(model.cfg.device))


# ------------------------------------------------------------------------------ grammar classes
def token_classes(grammar: Grammar, tokenizer) -> tuple[list[str], torch.Tensor]:
    """Grammar classes of the vocabulary: each terminal's pre-terminal category (a nonterminal
    whose only productions emit single terminals, e.g. ``N``, ``Digit``), or the terminal itself
    (Dyck brackets), plus ``<eos>`` and ``other`` (every other special token). Returns the class
    names and a ``[vocab, n_classes]`` 0/1 matrix."""
    lexical: dict[str, str] = {}
    for lhs in grammar.nonterminals:
        prods = grammar.pcfg.productions(lhs=_nonterminal(lhs))
        if prods and all(len(p.rhs()) == 1 and isinstance(p.rhs()[0], str) for p in prods):
            for p in prods:
                lexical[p.rhs()[0]] = lhs
    names = list(dict.fromkeys([lexical.get(t, t) for t in grammar.terminals] + ["<eos>", "other"]))
    matrix = torch.zeros(len(tokenizer), len(names))
    for tok_id, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        name = "<eos>" if tok_id == tokenizer.eos_token_id else lexical.get(tok, tok if tok in grammar.terminals else "other")
        matrix[tok_id, names.index(name)] = 1.0
    return names, matrix


def _nonterminal(name: str):
    from nltk import Nonterminal

    return Nonterminal(name)


def distribution_shift(clean_logits: torch.Tensor, new_logits: torch.Tensor, classes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per position: KL(p_clean || p_new) over tokens, total variation over tokens, and total
    variation over grammar classes, plus both class distributions."""
    lp_clean, lp_new = clean_logits.float().log_softmax(-1), new_logits.float().log_softmax(-1)
    p_clean, p_new = lp_clean.exp(), lp_new.exp()
    c_clean, c_new = p_clean @ classes, p_new @ classes
    return {
        "kl": (p_clean * (lp_clean - lp_new)).sum(-1),
        "tv": 0.5 * (p_clean - p_new).abs().sum(-1),
        "class_tv": 0.5 * (c_clean - c_new).abs().sum(-1),
        "class_clean": c_clean,
        "class_new": c_new,
    }


@torch.no_grad()
def next_token_effects(
    model: HookedTransformer,
    sae: SAE,
    dataset: datasets.DatasetDict,
    intervention: Intervention,
    split: str = "test",
    max_sentences: int | None = 500,
    group_by: str | None = None,
    use_error_term: bool = True,
    *,
    allow_other_model: bool = False,
) -> dict[str, Any]:
    """Effect of an intervention on next-token predictions at sentence tokens (teacher forcing).

    Returns mean KL / total variation, the mean probability of every grammar class clean vs
    intervened, and the same per value of the feature ``group_by`` (default: ``depth`` or
    ``pending`` if the grammar has it), e.g. P(<eos>) by pending-operand count for Expr. An SAE
    trained on another model is refused unless ``allow_other_model`` (:func:`~formal_sae.saes.check_sae_model`).
    """
    check_sae_fits(model, sae)
    check_sae_model(model, sae, allow_other_model)
    meta = dataset_metadata(dataset)
    grammar = grammar_of(meta)
    names, classes = token_classes(grammar, model.tokenizer)
    feature_names = [s.name for s in meta.feature_specs]
    group_by = group_by or next((f for f in ("pending", "stack_size", "depth", "conj_index") if f in feature_names), None)
    ranges = latent_ranges(model, sae, dataset[split], max_sentences) if intervention.relative else None
    split_ds = dataset[split]
    group_col = column(split_ds, group_by) if group_by else None
    rows: dict[str, list] = {"kl": [], "tv": [], "class_tv": [], "class_clean": [], "class_new": [], "group": []}
    for batch in iter_sentence_batches(model, split_ds, sae.cfg.metadata.hook_name, 128, max_sentences):
        clean = run_intervened(model, sae, batch.tokens, None, use_error_term=True)
        new = run_intervened(model, sae, batch.tokens, intervention, use_error_term=use_error_term, ranges=ranges)
        shift = distribution_shift(clean.cpu(), new.cpu(), classes)
        for key in ("kl", "tv", "class_tv", "class_clean", "class_new"):
            rows[key].append(shift[key][batch.mask])
        if group_col is not None:
            b, p = batch.mask.nonzero(as_tuple=True)
            rows["group"].append(
                torch.tensor([group_col[batch.batch_rows[i]][j] for i, j in zip(b.tolist(), p.tolist(), strict=True)])
            )
    cat = {k: torch.cat(v) for k, v in rows.items() if v}
    out: dict[str, Any] = {
        "n_positions": len(cat["kl"]),
        "mean_kl": float(cat["kl"].mean()),
        "mean_tv": float(cat["tv"].mean()),
        "mean_class_tv": float(cat["class_tv"].mean()),
        "classes": names,
        "class_prob_clean": cat["class_clean"].mean(0).tolist(),
        "class_prob_intervened": cat["class_new"].mean(0).tolist(),
        "group_by": group_by,
        "by_group": {},
    }
    if group_by:
        for g in sorted(set(cat["group"].tolist())):
            sel = cat["group"] == g
            out["by_group"][int(g)] = {
                "n": int(sel.sum()),
                "class_prob_clean": cat["class_clean"][sel].mean(0).tolist(),
                "class_prob_intervened": cat["class_new"][sel].mean(0).tolist(),
            }
    return out


# ------------------------------------------------------------------------------ generations
def _sample_stats(
    samples: list[list[int]], grammar: Grammar, tokenizer, class_names: list[str], classes: torch.Tensor
) -> dict[str, np.ndarray]:
    id_to_token = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    terminals = frozenset(grammar.terminals)
    valid, length, depth, counts = [], [], [], []
    for ids in samples:
        verdict, tokens = classify_sample(ids, id_to_token, terminals, tokenizer.eos_token_id, grammar)
        valid.append(verdict == "valid")
        length.append(len(ids) - (verdict != "no_eos"))
        depth.append(grammar.parse(tokens).height() if verdict == "valid" else np.nan)
        ids_body = torch.tensor(ids[:-1] if verdict != "no_eos" else ids, dtype=torch.long)
        counts.append(classes[ids_body].sum(0).numpy() if len(ids_body) else np.zeros(len(class_names)))
    return {
        "valid": np.array(valid, float),
        "length": np.array(length, float),
        "depth": np.array(depth, float),
        "counts": np.array(counts),
    }


def _effect(clean: np.ndarray, new: np.ndarray) -> dict[str, float]:
    """Means, Cohen's d and a two-sided Mann-Whitney U p-value (NaNs dropped)."""
    a, b = clean[~np.isnan(clean)], new[~np.isnan(new)]
    if len(a) < 2 or len(b) < 2:
        return {
            "clean": float(a.mean()) if len(a) else float("nan"),
            "intervened": float(b.mean()) if len(b) else float("nan"),
            "cohens_d": float("nan"),
            "p_value": float("nan"),
        }
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    p = 1.0 if np.array_equal(np.unique(a), np.unique(b)) and len(np.unique(a)) == 1 else float(stats.mannwhitneyu(a, b).pvalue)
    return {
        "clean": float(a.mean()),
        "intervened": float(b.mean()),
        "cohens_d": float((b.mean() - a.mean()) / pooled) if pooled > 0 else 0.0,
        "p_value": p,
    }


@torch.no_grad()
def compare_generations(
    model: HookedTransformer,
    sae: SAE,
    intervention: Intervention,
    dataset: datasets.DatasetDict | None = None,
    n_samples: int = 100,
    seed: int = 0,
    max_new_tokens: int = PAPER_MAX_NEW_TOKENS,
    use_error_term: bool = True,
    *,
    allow_other_model: bool = False,
) -> dict[str, Any]:
    """The paper's comparison: ``n_samples`` clean vs intervened generations from the prompt.

    Clean generations run with the SAE spliced in with its error term and no edit, which is exactly
    the model. Compares validity, length, parse depth and counts of each grammar class, with
    Cohen's d and Mann-Whitney p-values (Fisher's exact test for validity). An SAE trained on
    another model is refused unless ``allow_other_model``.
    """
    check_sae_fits(model, sae)
    check_sae_model(model, sae, allow_other_model)
    if intervention.mode == "patch":  # with the KV cache each new token is position 0 of its forward pass
        raise FormalSAEError(
            "mode 'patch' copies latents position by position from a fixed input: use it with teacher forcing, not generation"
        )
    grammar = grammar_of(model.formal_sae_data)
    names, classes = token_classes(grammar, model.tokenizer)
    from formal_sae.data import prompt_ids

    prompt = prompt_ids(model.tokenizer, model.formal_sae_data.prompt_format)
    ranges = latent_ranges(model, sae, dataset["validation"]) if intervention.relative and dataset is not None else None
    if intervention.relative and ranges is None:
        raise FormalSAEError("a relative clamp during generation needs the dataset (for the latents' observed ranges)")
    clean = sample_sequences(model, n_samples, prompt, max_new_tokens, seed=seed, saes=[sae], use_error_term=True)
    hooks = intervention_hooks(model, sae, intervention, ranges)
    new = sample_sequences(
        model, n_samples, prompt, max_new_tokens, seed=seed, saes=[sae], fwd_hooks=hooks, use_error_term=use_error_term
    )
    a, b = (
        _sample_stats(clean, grammar, model.tokenizer, names, classes),
        _sample_stats(new, grammar, model.tokenizer, names, classes),
    )
    table = [
        [int(a["valid"].sum()), int(len(a["valid"]) - a["valid"].sum())],
        [int(b["valid"].sum()), int(len(b["valid"]) - b["valid"].sum())],
    ]
    out = {
        "validity": {
            "clean": float(a["valid"].mean()),
            "intervened": float(b["valid"].mean()),
            "p_value": float(stats.fisher_exact(table).pvalue),
        },
        "length": _effect(a["length"], b["length"]),
        "depth": _effect(a["depth"], b["depth"]),
        "class_counts": {name: _effect(a["counts"][:, k], b["counts"][:, k]) for k, name in enumerate(names)},
        "n_samples": n_samples,
    }
    return out


# ------------------------------------------------------------------------------ all latents at once
@torch.no_grad()
def single_latent_effects(
    model: HookedTransformer,
    sae: SAE,
    dataset: datasets.DatasetDict,
    split: str = "test",
    max_sentences: int | None = 200,
    max_batch: int = 512,
    *,
    allow_other_model: bool = False,
) -> dict[str, np.ndarray]:
    """Effect of zero-ablating each latent alone (with the error term), for every latent.

    For latent ``j``: ``kl_active[j]`` / ``class_tv_active[j]`` are the mean KL over tokens and the
    mean total variation over grammar classes of the next-token distribution at the positions where
    ``j`` fires; ``kl_mean[j]`` averages the KL over every sentence position (including positions
    after the ones where ``j`` fires, which later layers can change; zero where nothing changed);
    ``n_active[j]`` counts the sentence positions where ``j`` fires. Batched: the model runs once
    per batch of sentences; then only the sequences in which a latent fires (in the prompt or the
    sentence) are rerun from the hook onwards, many (latent, sequence) pairs per forward pass. An
    ablated latent that never fires changes nothing and costs nothing. An SAE trained on another
    model is refused unless ``allow_other_model``.
    """
    hook = check_sae_fits(model, sae)
    check_sae_model(model, sae, allow_other_model)
    grammar = grammar_of(dataset_metadata(dataset))
    _, classes = token_classes(grammar, model.tokenizer)
    d = sae.cfg.d_sae
    kl_sum, tv_sum, n_active, kl_all = np.zeros(d), np.zeros(d), np.zeros(d), np.zeros(d)
    total_positions = 0
    prompt_len = dataset_metadata(dataset).prompt_length
    for batch in iter_sentence_batches(model, dataset[split], hook, 64, max_sentences):
        tokens = batch.tokens.to(model.cfg.device)
        clean_logits, cache = model.run_with_cache(tokens, names_filter=hook)
        x = cache[hook]
        latents = sae.encode(x)
        error = x - sae.decode(latents)
        fires = (latents > 0) & batch.mask.to(latents.device)[..., None]
        # Positions whose latents can change a prediction at a sentence token: prompt and sentence.
        reach = batch.mask.clone()
        reach[:, :prompt_len] = True
        total_positions += int(batch.mask.sum())
        # (sequence, latent) with the latent active where it can change a sentence prediction
        pairs = ((latents > 0) & reach.to(latents.device)[..., None]).any(1).nonzero().tolist()
        for start in range(0, len(pairs), max_batch):
            chunk = pairs[start : start + max_batch]
            seq = torch.tensor([p[0] for p in chunk])
            lat = torch.tensor([p[1] for p in chunk])
            # Re-encode the chunk's rows: an SAE with per-token input normalisation (PaperSAE,
            # scale-correct splice) keeps the norms of the last encoded input for its decode.
            edited = sae.encode(x[seq]).clone()
            edited[torch.arange(len(chunk)), :, lat] = 0
            x_new = sae.decode(edited) + error[seq]
            logits = run_from_hook(model, hook, tokens[seq], x_new)
            shift = distribution_shift(clean_logits[seq].cpu(), logits.cpu(), classes)
            active = fires[seq, :, lat].cpu()  # [chunk, pos]
            np.add.at(kl_sum, lat.numpy(), (shift["kl"] * active).sum(1).numpy())
            np.add.at(tv_sum, lat.numpy(), (shift["class_tv"] * active).sum(1).numpy())
            np.add.at(n_active, lat.numpy(), active.sum(1).numpy())
            np.add.at(kl_all, lat.numpy(), (shift["kl"] * batch.mask[seq]).sum(1).numpy())
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "kl_active": np.where(n_active > 0, kl_sum / n_active, 0.0),
            "class_tv_active": np.where(n_active > 0, tv_sum / n_active, 0.0),
            "kl_mean": kl_all / max(total_positions, 1),
            "n_active": n_active,
        }


@torch.no_grad()
def effects_loop_baseline(
    model, sae: SAE, dataset, latents: Sequence[int], split: str = "test", max_sentences: int | None = 200
) -> np.ndarray:
    """``kl_active`` of :func:`single_latent_effects`, the slow way: one full forward pass of the
    whole split per latent, with an ablation hook. The benchmark's baseline and the tests' check."""
    hook = check_sae_fits(model, sae)
    grammar = grammar_of(dataset_metadata(dataset))
    _, classes = token_classes(grammar, model.tokenizer)
    out = np.zeros(len(latents))
    for k, j in enumerate(latents):
        total, count = 0.0, 0
        for batch in iter_sentence_batches(model, dataset[split], hook, 64, max_sentences):
            clean = run_intervened(model, sae, batch.tokens, None)
            _, cache = model.run_with_cache(batch.tokens.to(model.cfg.device), names_filter=hook)
            active = (sae.encode(cache[hook])[..., j] > 0).cpu() & batch.mask
            new = run_intervened(model, sae, batch.tokens, Intervention("ablate", [j]))
            total += float(distribution_shift(clean.cpu(), new.cpu(), classes)["kl"][active].sum())
            count += int(active.sum())
        out[k] = total / count if count else 0.0
    return out


# ------------------------------------------------------------------------------ correlation vs causation
#: A latent is "correlated" with a target when |Pearson| >= this, "uncorrelated" below 0.3.
CORRELATED = 0.5
UNCORRELATED = 0.3


@dataclass
class CausalReport:
    """Correlation vs causal effect of SAE latents: per target its best-correlated latents with
    their ablation effects, and flags for the two kinds of mismatch."""

    targets: dict[str, list[dict[str, Any]]]
    latents: list[dict[str, Any]]
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary, "targets": self.targets, "latents": self.latents}

    def to_markdown(self) -> str:
        s = self.summary
        lines = [
            f"# Correlation vs causation: {s['grammar']}, {s['d_sae']}-latent SAE at `{s['hook_name']}`",
            "",
            "Causal effect of a latent = mean total variation of the next-token distribution over grammar classes "
            "when the latent alone is zero-ablated (with the SAE error term), at the tokens where it fires.",
            f"High effect = at least the live latents' median ({s['median_effect']:.2e}).",
            "",
            f"- correlated (|rho| >= {CORRELATED}) but with little effect: **{s['n_correlated_not_causal']}** latents",
            f"- effect in the top decile but uncorrelated (max |rho| < {UNCORRELATED}): **{s['n_causal_not_correlated']}** latents",
            f"- Spearman rank correlation between max |rho| and effect over live latents: {s['rank_agreement']:.3f}",
            "",
            "| target | latent | Pearson | rank by abs(rho) | effect (class TV) | KL | rank by effect | flag |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, rows in self.targets.items():
            for r in rows:
                lines.append(
                    f"| `{name}` | {r['latent']} | {r['pearson']:.3f} | {r['rank_by_correlation']} | {r['effect']:.2e} | "
                    f"{r['kl']:.2e} | {r['rank_by_effect']} | {r['flag'] or ''} |"
                )
        return "\n".join(lines) + "\n"

    def save(self, out_dir, overwrite: bool = False) -> None:
        """Write ``report.json``, ``report.md`` and ``correlation_vs_effect.png`` as one artifact
        (an existing ``out_dir`` is refused unless ``overwrite``; see :mod:`formal_sae.outputs`)."""
        from formal_sae.io import atomic_write_text, write_json
        from formal_sae.outputs import output_dir

        with output_dir(out_dir, "interventions", overwrite=overwrite) as out:
            write_json(out / "report.json", self.to_dict())
            atomic_write_text(out / "report.md", self.to_markdown())
            _scatter(self, out / "correlation_vs_effect.png")


def _scatter(report: CausalReport, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live = [r for r in report.latents if r["n_active"] > 0]
    colours = {"correlated_not_causal": "tab:red", "causal_not_correlated": "tab:orange", None: "tab:blue"}
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for flag, colour in colours.items():
        pts = [r for r in live if r["flag"] == flag]
        if pts:
            ax.scatter(
                [r["max_abs_pearson"] for r in pts], [max(r["effect"], 1e-8) for r in pts], s=12, c=colour, label=flag or "other"
            )
    ax.set_yscale("log")
    ax.set_xlabel("max |Pearson| with any feature")
    ax.set_ylabel("ablation effect (class TV at active tokens)")
    ax.set_title(f"{report.summary['grammar']}: correlation vs causal effect", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def causal_report(
    model,
    sae: SAE,
    dataset,
    analysis=None,
    top_k: int = 3,
    split: str = "test",
    max_sentences: int | None = 200,
    *,
    allow_other_model: bool = False,
) -> CausalReport:
    """For each feature, take its ``top_k`` best-correlated latents (from ``analysis``, computed if
    None) and measure their single-latent ablation effects; rank latents both ways and flag high
    correlation with little effect (the paper's central claim) and effect without correlation.
    An SAE trained on another model is refused unless ``allow_other_model``."""
    from formal_sae.analysis import analyze

    check_sae_fits(model, sae)
    check_sae_model(model, sae, allow_other_model)
    # checked once above: the calls below need not hash the weights again
    if analysis is None:
        analysis = analyze(model, sae, dataset, split=split, max_sentences=max_sentences, allow_other_model=True)
    eff = single_latent_effects(model, sae, dataset, split, max_sentences, allow_other_model=True)
    effect = eff["class_tv_active"]
    live = eff["n_active"] > 0
    corr = np.nan_to_num(np.abs(analysis.correlations))  # [d_sae, n_targets]
    max_corr = corr.max(axis=1)
    median = float(np.median(effect[live])) if live.any() else 0.0
    top_decile = float(np.quantile(effect[live], 0.9)) if live.any() else np.inf

    def flag(j: int) -> str | None:
        if not live[j]:
            return None
        if max_corr[j] >= CORRELATED and effect[j] < median:
            return "correlated_not_causal"
        if effect[j] >= top_decile and max_corr[j] < UNCORRELATED:
            return "causal_not_correlated"
        return None

    order_eff = {int(j): r + 1 for r, j in enumerate(np.argsort(-np.where(live, effect, -1)))}
    latents = [
        {
            "latent": j,
            "max_abs_pearson": float(max_corr[j]),
            "effect": float(effect[j]),
            "kl": float(eff["kl_active"][j]),
            "n_active": int(eff["n_active"][j]),
            "flag": flag(j),
        }
        for j in range(sae.cfg.d_sae)
    ]
    targets = {}
    for k, name in enumerate(analysis.target_names):
        best = [int(j) for j in np.argsort(-corr[:, k])[:top_k] if corr[j, k] > 0]
        targets[name] = [
            {
                "latent": j,
                "pearson": float(analysis.correlations[j, k]),
                "rank_by_correlation": int(1 + (corr[:, k] > corr[j, k]).sum()),
                "effect": float(effect[j]),
                "kl": float(eff["kl_active"][j]),
                "rank_by_effect": order_eff[j],
                "flag": flag(j),
            }
            for j in best
        ]
    rank_agreement = float(stats.spearmanr(max_corr[live], effect[live]).statistic) if live.sum() > 2 else float("nan")
    summary = {
        "grammar": analysis.summary["grammar"],
        "hook_name": analysis.summary["hook_name"],
        "d_sae": sae.cfg.d_sae,
        "n_live": int(live.sum()),
        "median_effect": median,
        "n_correlated_not_causal": sum(r["flag"] == "correlated_not_causal" for r in latents),
        "n_causal_not_correlated": sum(r["flag"] == "causal_not_correlated" for r in latents),
        "rank_agreement": rank_agreement,
    }
    return CausalReport(targets=targets, latents=latents, summary=summary)

"""Effects of an intervention: on next-token distributions, on grammar classes and on generations.

Effects are measured on the next-token distribution (KL, total variation), on *grammar classes*
(the probability of the next token's pre-terminal category, e.g. noun / verb, a digit / an
operator, each bracket, or ``<eos>``), and on generations. Results are typed records
(`ResultDict`) that also read as the dicts they used to be, and are written as the same JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from sae_lens import SAE
from scipy import stats
from transformer_lens import HookedTransformer

from formal_sae.activations import iter_sentence_batches, run_from_hook
from formal_sae.data import column, dataset_metadata, grammar_of, prompt_ids, token_strings
from formal_sae.errors import FormalSAEError
from formal_sae.generation import PAPER_MAX_NEW_TOKENS, classify_sample, sample_sequences
from formal_sae.grammars import PROGRESS, Grammar, feature_for
from formal_sae.interventions.edits import Intervention, intervention_hooks, latent_ranges, run_intervened
from formal_sae.saes.evaluation import check_sae_fits, check_sae_model


class ResultDict(dict):
    """Base of the typed results: a dataclass whose fields are also its items (as in transformers'
    ``ModelOutput``), so ``r.mean_kl == r["mean_kl"]``, ``json.dumps(r)`` writes what the dict of
    earlier versions wrote, and code that reads it as a dict keeps working. Read-only as a dict."""

    def __post_init__(self) -> None:
        dict.update(self, {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    def to_dict(self) -> dict:
        """Plain JSON values (nested records, arrays and tensors included)."""
        return {k: _plain(v) for k, v in self.items()}

    def __reduce__(self):  # copy and pickle through the fields: the dict methods that would refill it are off
        return type(self), tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def _read_only(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is a read-only result")

    __setitem__ = __delitem__ = __ior__ = update = pop = popitem = clear = setdefault = _read_only  # type: ignore[assignment]
    __hash__ = None  # type: ignore[assignment]


def _plain(v):
    if isinstance(v, ResultDict):
        return v.to_dict()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (np.ndarray, torch.Tensor)):
        return v.tolist()
    return v


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
    for tok_id, tok in enumerate(token_strings(tokenizer)):
        name = "<eos>" if tok_id == tokenizer.eos_token_id else lexical.get(tok, tok if tok in grammar.terminals else "other")
        matrix[tok_id, names.index(name)] = 1.0
    return names, matrix


def _nonterminal(name: str):
    from nltk import Nonterminal

    return Nonterminal(name)


@dataclass(frozen=True)
class DistributionShift:
    """Per position: KL(p_clean || p_new) and total variation over tokens, total variation over
    grammar classes, and both class distributions (``[..., n_classes]``)."""

    kl: torch.Tensor
    tv: torch.Tensor
    class_tv: torch.Tensor
    class_clean: torch.Tensor
    class_new: torch.Tensor


def distribution_shift(clean_logits: torch.Tensor, new_logits: torch.Tensor, classes: torch.Tensor) -> DistributionShift:
    """How far ``new_logits`` moved the next-token distribution from ``clean_logits``, position by position."""
    lp_clean, lp_new = clean_logits.float().log_softmax(-1), new_logits.float().log_softmax(-1)
    p_clean, p_new = lp_clean.exp(), lp_new.exp()
    c_clean, c_new = p_clean @ classes, p_new @ classes
    return DistributionShift(
        kl=(p_clean * (lp_clean - lp_new)).sum(-1),
        tv=0.5 * (p_clean - p_new).abs().sum(-1),
        class_tv=0.5 * (c_clean - c_new).abs().sum(-1),
        class_clean=c_clean,
        class_new=c_new,
    )


# ------------------------------------------------------------------------------ next-token effects
@dataclass(frozen=True, eq=False)
class GroupClassProbs(ResultDict):
    """Mean class probabilities, clean and intervened, over the ``n`` tokens of one feature value."""

    n: int
    class_prob_clean: list[float]
    class_prob_intervened: list[float]


@dataclass(frozen=True, eq=False)
class NextTokenEffects(ResultDict):
    """Result of [`next_token_effects`][formal_sae.next_token_effects]."""

    n_positions: int
    mean_kl: float
    mean_tv: float
    mean_class_tv: float
    classes: list[str]
    class_prob_clean: list[float]
    class_prob_intervened: list[float]
    group_by: str | None
    by_group: dict[int, GroupClassProbs]


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
) -> NextTokenEffects:
    """Effect of an intervention on next-token predictions at sentence tokens (teacher forcing).

    Returns mean KL / total variation, the mean probability of every grammar class clean vs
    intervened, and the same per value of the feature ``group_by`` (default: the one the grammar
    declares for `PROGRESS`, if any), e.g. P(<eos>) by pending-operand count for Expr. An SAE
    trained on another model is refused unless ``allow_other_model`` (`check_sae_model`).
    """
    check_sae_fits(model, sae)
    check_sae_model(model, sae, allow_other_model)
    meta = dataset_metadata(dataset)
    grammar = grammar_of(meta)
    names, classes = token_classes(grammar, model.tokenizer)
    group_by = group_by or feature_for(PROGRESS, meta.feature_specs)
    ranges = latent_ranges(model, sae, dataset[split], max_sentences) if intervention.relative else None
    split_ds = dataset[split]
    group_col = column(split_ds, group_by) if group_by else None
    keys = ("kl", "tv", "class_tv", "class_clean", "class_new")
    rows: dict[str, list] = {k: [] for k in (*keys, "group")}
    for batch in iter_sentence_batches(model, split_ds, sae.cfg.metadata.hook_name, 128, max_sentences):
        clean = run_intervened(model, sae, batch.tokens, None, use_error_term=True)
        new = run_intervened(model, sae, batch.tokens, intervention, use_error_term=use_error_term, ranges=ranges)
        shift = distribution_shift(clean.cpu(), new.cpu(), classes)
        for key in keys:
            rows[key].append(getattr(shift, key)[batch.mask])
        if group_col is not None:
            b, p = batch.mask.nonzero(as_tuple=True)
            rows["group"].append(
                torch.tensor([group_col[batch.batch_rows[i]][j] for i, j in zip(b.tolist(), p.tolist(), strict=True)])
            )
    cat = {k: torch.cat(v) for k, v in rows.items() if v}
    by_group = {}
    if group_by:
        for g in sorted(set(cat["group"].tolist())):
            sel = cat["group"] == g
            by_group[int(g)] = GroupClassProbs(
                n=int(sel.sum()),
                class_prob_clean=cat["class_clean"][sel].mean(0).tolist(),
                class_prob_intervened=cat["class_new"][sel].mean(0).tolist(),
            )
    return NextTokenEffects(
        n_positions=len(cat["kl"]),
        mean_kl=float(cat["kl"].mean()),
        mean_tv=float(cat["tv"].mean()),
        mean_class_tv=float(cat["class_tv"].mean()),
        classes=names,
        class_prob_clean=cat["class_clean"].mean(0).tolist(),
        class_prob_intervened=cat["class_new"].mean(0).tolist(),
        group_by=group_by,
        by_group=by_group,
    )


# ------------------------------------------------------------------------------ generations
@dataclass(frozen=True, eq=False)
class ShiftStat(ResultDict):
    """One statistic of the samples, clean vs intervened: means, Cohen's d and a two-sided
    Mann-Whitney U p-value (NaNs dropped)."""

    clean: float
    intervened: float
    cohens_d: float
    p_value: float


@dataclass(frozen=True, eq=False)
class ValidityTest(ResultDict):
    """Fraction of grammatical samples, clean vs intervened, and Fisher's exact test."""

    clean: float
    intervened: float
    p_value: float


@dataclass(frozen=True, eq=False)
class GenerationComparison(ResultDict):
    """Result of [`compare_generations`][formal_sae.compare_generations]."""

    validity: ValidityTest
    length: ShiftStat
    depth: ShiftStat
    class_counts: dict[str, ShiftStat]
    n_samples: int


def _sample_stats(
    samples: list[list[int]], grammar: Grammar, tokenizer, class_names: list[str], classes: torch.Tensor
) -> dict[str, np.ndarray]:
    id_to_token = token_strings(tokenizer)
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


def _effect(clean: np.ndarray, new: np.ndarray) -> ShiftStat:
    a, b = clean[~np.isnan(clean)], new[~np.isnan(new)]
    if len(a) < 2 or len(b) < 2:
        return ShiftStat(
            clean=float(a.mean()) if len(a) else float("nan"),
            intervened=float(b.mean()) if len(b) else float("nan"),
            cohens_d=float("nan"),
            p_value=float("nan"),
        )
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    p = 1.0 if np.array_equal(np.unique(a), np.unique(b)) and len(np.unique(a)) == 1 else float(stats.mannwhitneyu(a, b).pvalue)
    return ShiftStat(
        clean=float(a.mean()),
        intervened=float(b.mean()),
        cohens_d=float((b.mean() - a.mean()) / pooled) if pooled > 0 else 0.0,
        p_value=p,
    )


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
) -> GenerationComparison:
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
    return GenerationComparison(
        validity=ValidityTest(
            clean=float(a["valid"].mean()), intervened=float(b["valid"].mean()), p_value=float(stats.fisher_exact(table).pvalue)
        ),
        length=_effect(a["length"], b["length"]),
        depth=_effect(a["depth"], b["depth"]),
        class_counts={name: _effect(a["counts"][:, k], b["counts"][:, k]) for k, name in enumerate(names)},
        n_samples=n_samples,
    )


# ------------------------------------------------------------------------------ all latents at once
@dataclass(frozen=True, eq=False)
class LatentEffects(ResultDict):
    """Result of [`single_latent_effects`][formal_sae.single_latent_effects]: ``[d_sae]`` arrays, see there."""

    kl_active: np.ndarray
    class_tv_active: np.ndarray
    kl_mean: np.ndarray
    n_active: np.ndarray


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
) -> LatentEffects:
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
            np.add.at(kl_sum, lat.numpy(), (shift.kl * active).sum(1).numpy())
            np.add.at(tv_sum, lat.numpy(), (shift.class_tv * active).sum(1).numpy())
            np.add.at(n_active, lat.numpy(), active.sum(1).numpy())
            np.add.at(kl_all, lat.numpy(), (shift.kl * batch.mask[seq]).sum(1).numpy())
    with np.errstate(invalid="ignore", divide="ignore"):
        return LatentEffects(
            kl_active=np.where(n_active > 0, kl_sum / n_active, 0.0),
            class_tv_active=np.where(n_active > 0, tv_sum / n_active, 0.0),
            kl_mean=kl_all / max(total_positions, 1),
            n_active=n_active,
        )


@torch.no_grad()
def effects_loop_baseline(
    model, sae: SAE, dataset, latents: Sequence[int], split: str = "test", max_sentences: int | None = 200
) -> np.ndarray:
    """``kl_active`` of [`single_latent_effects`][formal_sae.single_latent_effects], the slow way: one full forward pass of the
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
            total += float(distribution_shift(clean.cpu(), new.cpu(), classes).kl[active].sum())
            count += int(active.sum())
        out[k] = total / count if count else 0.0
    return out

"""Interventions on SAE latents: what to edit, and the hooks that edit it ([The paper: interventions][paper-interventions]).

An [`Intervention`][formal_sae.Intervention] edits latents at the SAE's hook (SAELens's ``hook_sae_acts_post`` on a
``HookedSAETransformer``), during a forward pass or during generation. With the error term
(default) the model's activation is ``decode(edited latents) + (x - decode(latents))``: only the
edit changes the output, never the reconstruction error, and decoding is the SAE's own (pre-bias,
normalisations and all), unlike the authors' clamping code which skipped both.

Modes (the table `EDITS`): ``ablate`` (set to 0), ``clamp`` (set to ``value``; with
``relative=True`` the value is a fraction of the latent's observed [min, max] range), ``scale``
(multiply by ``value``), ``keep_only`` (zero every other latent: the paper's complement ablation),
``steer`` (add ``value`` times the latent's unit decoder direction to the activation) and
``patch`` (copy the latents' values from another input, position by position: an interchange
intervention).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
from sae_lens import SAE
from transformer_lens import HookedTransformer

from formal_sae.activations import check_hook, iter_sentence_batches
from formal_sae.errors import FormalSAEError
from formal_sae.generation import spliced

Ranges = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Intervention:
    """An edit of some latents. See the module docstring for the modes."""

    mode: str
    latents: list[int]
    value: float | None = None
    relative: bool = False
    source_tokens: torch.Tensor | None = field(default=None, repr=False)

    def validate(self, sae: SAE) -> None:
        if self.mode not in EDITS:
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
def latent_ranges(model, sae: SAE, split: datasets.Dataset, max_sentences: int | None = 1000) -> Ranges:
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


# ------------------------------------------------------------------------------ the modes
@dataclass(frozen=True)
class Mode:
    """One intervention mode: the SAE hook it edits, what it needs prepared once per call, and the
    edit itself, ``edit(copy of the tensor, latent indices, prepared argument) -> edited tensor``."""

    point: str
    prepare: Callable[[HookedTransformer, SAE, Intervention, torch.Tensor, Ranges | None], Any]
    edit: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def _nothing(model, sae, iv, idx, ranges) -> None:
    return None


def _value(model, sae, iv, idx, ranges) -> float:
    return iv.value


def _clamp_values(model, sae, iv, idx, ranges) -> torch.Tensor:
    if not iv.relative:
        return torch.full((len(idx),), float(iv.value))
    if ranges is None:
        raise FormalSAEError("a relative clamp needs the latents' observed ranges (latent_ranges(...))")
    lo, hi = ranges
    return lo[idx] + iv.value * (hi[idx] - lo[idx])


def _steer_vector(model, sae, iv, idx, ranges) -> torch.Tensor:
    direction = sae.W_dec[idx].detach()
    return iv.value * (direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)).sum(0)


def _patch_source(model, sae, iv, idx, ranges) -> torch.Tensor:
    return source_latents(model, sae, iv.source_tokens)


def _set(acts: torch.Tensor, idx: torch.Tensor, values) -> torch.Tensor:
    acts[..., idx] = values.to(acts) if isinstance(values, torch.Tensor) else values
    return acts


def _keep_only(acts: torch.Tensor, idx: torch.Tensor, _) -> torch.Tensor:
    keep = torch.zeros(acts.shape[-1], dtype=torch.bool, device=acts.device)
    keep[idx] = True
    return torch.where(keep, acts, torch.zeros_like(acts))


def _steer(out: torch.Tensor, idx: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    return out + vector.to(out.dtype).reshape(out.shape[-1:] if out.dim() else out.shape)


def _patch(acts: torch.Tensor, idx: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    n = min(acts.shape[1], patch.shape[1])  # position by position over the common length
    src = patch[:, :n][..., idx].to(acts)
    acts[:, :n, idx] = src.expand(acts.shape[0], -1, -1) if src.shape[0] == 1 else src
    return acts


LATENTS, OUTPUT = "hook_sae_acts_post", "hook_sae_output"
#: Every mode, by name (the order is the one error messages list).
EDITS: dict[str, Mode] = {
    "ablate": Mode(LATENTS, _nothing, lambda acts, idx, _: _set(acts, idx, 0)),
    "clamp": Mode(LATENTS, _clamp_values, _set),
    "scale": Mode(LATENTS, _value, lambda acts, idx, value: _set(acts, idx, acts[..., idx] * value)),
    "keep_only": Mode(LATENTS, _nothing, _keep_only),
    "steer": Mode(OUTPUT, _steer_vector, _steer),  # adds to the SAE's output, so its hook is the output
    "patch": Mode(LATENTS, _patch_source, _patch),
}
MODES = tuple(EDITS)


def intervention_hooks(model, sae: SAE, intervention: Intervention, ranges: Ranges | None = None) -> list:
    """Forward hooks (for a model with ``sae`` attached) that carry out ``intervention``."""
    intervention.validate(sae)
    hook = sae.cfg.metadata.hook_name
    check_hook(model, hook)  # else SAELens skips the SAE with a warning and the hook name is a KeyError
    mode = EDITS[intervention.mode]
    idx = torch.tensor(intervention.latents, dtype=torch.long)
    argument = mode.prepare(model, sae, intervention, idx, ranges)

    def edit(tensor: torch.Tensor, hook) -> torch.Tensor:
        return mode.edit(tensor.clone(), idx, argument)

    return [(f"{hook}.{mode.point}", edit)]


def run_intervened(
    model, sae: SAE, tokens: torch.Tensor, intervention: Intervention | None, use_error_term: bool = True, ranges=None
) -> torch.Tensor:
    """Logits with the SAE spliced in and the intervention applied (None: no intervention)."""
    check_hook(model, sae.cfg.metadata.hook_name)  # SAELens would skip the SAE and return clean logits
    hooks = intervention_hooks(model, sae, intervention, ranges) if intervention is not None else []
    with spliced(model, hooks, [sae], use_error_term):
        return model(tokens.to(model.cfg.device))

"""SAE latents aligned with the ground-truth features of the tokens they were computed on.

Activations come from `formal_sae.activations.iter_sentence_batches` (sentence tokens only,
unshuffled, each with its dataset row and position), so every latent value sits next to the
features of its token. Latents are kept sparse (most are zero) and handed out in dense chunks of
latents, so memory stays bounded: 1M tokens x 4096 latents never exist as one dense matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from sae_lens import SAE

from formal_sae.activations import check_split, iter_sentence_batches
from formal_sae.data import column, dataset_metadata
from formal_sae.grammars import FeatureSpec


@dataclass
class AlignedLatents:
    """Latents, activations and features of the sentence tokens of one dataset split.

    Attributes:
        features: feature name -> ``[n_tokens]`` integer values (see ``specs``).
        specs: The features' declarations (kind, categories).
        acts: ``[n_tokens, d_in]`` model activations at the SAE's hook.
        token_ids, rows, positions: ``[n_tokens]`` token id, dataset row, position in the row.
        d_sae: Number of latents.
    """

    features: dict[str, np.ndarray]
    specs: dict[str, FeatureSpec]
    acts: torch.Tensor
    token_ids: np.ndarray
    rows: np.ndarray
    positions: np.ndarray
    d_sae: int
    _lat_token: np.ndarray  # sparse latents, sorted by latent: token index, latent index, value
    _lat_index: np.ndarray
    _lat_value: np.ndarray

    @property
    def n_tokens(self) -> int:
        return len(self.rows)

    def latent_chunk(self, start: int, stop: int) -> np.ndarray:
        """Dense ``[n_tokens, stop - start]`` float32 activations of latents ``start..stop-1``."""
        lo, hi = np.searchsorted(self._lat_index, [start, stop])
        out = np.zeros((self.n_tokens, stop - start), dtype=np.float32)
        out[self._lat_token[lo:hi], self._lat_index[lo:hi] - start] = self._lat_value[lo:hi]
        return out

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, dense chunk)`` over all latents, ``size`` latents at a time."""
        for start in range(0, self.d_sae, size):
            yield start, self.latent_chunk(start, min(start + size, self.d_sae))

    def latent(self, j: int) -> np.ndarray:
        return self.latent_chunk(j, j + 1)[:, 0]

    def firing_counts(self) -> np.ndarray:
        """Number of tokens on which each latent is > 0."""
        return np.bincount(self._lat_index[self._lat_value > 0], minlength=self.d_sae)


@torch.no_grad()
def collect_aligned(
    model, sae: SAE, split: datasets.Dataset, max_sentences: int | None = None, batch_size: int = 256
) -> AlignedLatents:
    """Run the model and the SAE over ``split`` and align latents with token features."""
    check_split(split, max_sentences, "analyse")
    meta = dataset_metadata(split)
    specs = {s.name: s for s in meta.feature_specs}
    columns = {name: column(split, name) for name in specs}
    ids = column(split, "input_ids")
    acts, token_ids, rows, positions = [], [], [], []
    feats: dict[str, list[np.ndarray]] = {name: [] for name in specs}
    lat_t, lat_j, lat_v = [], [], []
    offset = 0
    for batch in iter_sentence_batches(model, split, sae.cfg.metadata.hook_name, batch_size, max_sentences):
        latents = sae.encode(batch.acts.to(sae.device)).float().cpu()
        t, j = latents.nonzero(as_tuple=True)
        lat_t.append((t + offset).numpy())
        lat_j.append(j.numpy())
        lat_v.append(latents[t, j].numpy())
        acts.append(batch.acts)
        rows.append(batch.rows)
        positions.append(batch.positions)
        token_ids.append(np.array([ids[r][p] for r, p in zip(batch.rows, batch.positions, strict=True)]))
        for name in specs:
            feats[name].append(np.array([columns[name][r][p] for r, p in zip(batch.rows, batch.positions, strict=True)]))
        offset += len(batch.acts)
    lat_t_all, lat_j_all, lat_v_all = np.concatenate(lat_t), np.concatenate(lat_j), np.concatenate(lat_v)
    order = np.argsort(lat_j_all, kind="stable")
    return AlignedLatents(
        features={name: np.concatenate(v).astype(np.int64) for name, v in feats.items()},
        specs=specs,
        acts=torch.cat(acts),
        token_ids=np.concatenate(token_ids),
        rows=np.concatenate(rows),
        positions=np.concatenate(positions),
        d_sae=sae.cfg.d_sae,
        _lat_token=lat_t_all[order],
        _lat_index=lat_j_all[order],
        _lat_value=lat_v_all[order],
    )

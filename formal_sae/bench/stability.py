"""Cross-seed stability of a dictionary: do SAEs trained with different seeds learn the same latents?

``decoder_stability`` is the mean, over ordered pairs of seeds ``(i, j)``, of the mean over decoder
rows of SAE ``i`` of their best |cosine| with any decoder row of SAE ``j``: the MMCS of SAE ``i``'s
rows against SAE ``j``'s dictionary (`formal_sae.analysis.metrics.mmcs`). 1 when every latent of
every seed has an exact (up to sign) copy in every other seed; near 0 for unrelated random
dictionaries of a high-dimensional space. Pairs are ordered because the measure is not symmetric
(a wider or redundant dictionary matches a narrow one better than the other way round).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import permutations

import numpy as np
import torch

from formal_sae.analysis.metrics import mmcs
from formal_sae.errors import FormalSAEError


def decoder_stability(decoders: Sequence[torch.Tensor | np.ndarray]) -> float | None:
    """Cross-seed consistency of latents from the decoders (``W_dec``, ``[d_sae, d_in]`` each) of
    SAEs that differ only in their seed; None for fewer than two.

    A zero row (a latent never trained) matches nothing: it counts as cosine 0.
    """
    if len(decoders) < 2:
        return None
    rows = [_as_array(d) for d in decoders]
    if any(r.ndim != 2 for r in rows) or len({r.shape[1] for r in rows}) != 1:
        raise FormalSAEError(f"decoders must all be [d_sae, d_in] with one d_in, got shapes {[r.shape for r in rows]}")
    # mmcs(dictionary, directions): mean over directions (rows of i) of the best row of j
    return float(np.mean([mmcs(rows[j], rows[i]) for i, j in permutations(range(len(rows)), 2)]))


def _as_array(decoder: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(decoder, torch.Tensor):
        decoder = decoder.detach().float().cpu().numpy()
    return np.asarray(decoder, dtype=np.float64)

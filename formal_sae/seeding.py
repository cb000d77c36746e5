"""Bitwise-reproducible training: the same seed gives the same weights on the same machine.

Seeding is not enough on a multi-core CPU: some PyTorch kernels (the embedding's backward pass,
for one) accumulate in parallel in an order that changes from run to run, so two runs with the
same seed drifted apart within a hundred steps. Inside `deterministic` PyTorch picks its
deterministic kernels instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Use PyTorch's deterministic algorithms inside the block (usable as a decorator).

    ``warn_only``: an operation without a deterministic implementation (some CUDA kernels) warns
    instead of failing. The previous setting is restored afterwards.
    """
    was_on, was_warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn_only)

"""Settings shared by the whole test suite (keep this file small and general)."""

import torch

# The test models are tiny: extra intra-op threads only add synchronisation overhead, and on a
# loaded 2-core machine they make each small matmul ~100x slower. One thread keeps tests fast.
torch.set_num_threads(1)

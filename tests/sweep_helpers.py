"""Helpers shared by the sweep tests of both backends (tests/test_sweep.py, tests/test_ray.py)."""

import pytest

from formal_sae.outputs import in_progress_path
from formal_sae.saes import training as training_mod
from formal_sae.saes.sweep import cells as cells_mod
from formal_sae.saes.sweep import sweep


def interrupt_sweep(model, ds, grid, out, after: int, **kwargs) -> None:
    """Run a sweep that is interrupted (KeyboardInterrupt) when its cell number ``after`` + 1 starts."""
    calls = []

    def train_then_stop(*args, **kw):
        calls.append(1)
        if len(calls) > after:
            raise KeyboardInterrupt
        return training_mod.train_sae(*args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cells_mod, "train_sae", train_then_stop)
        with pytest.raises(KeyboardInterrupt):
            sweep(model, ds, grid, out, progress=False, **kwargs)
    assert not out.exists() and in_progress_path(out).is_dir()  # a sweep appears whole or not at all

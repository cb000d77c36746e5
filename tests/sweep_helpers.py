"""Helpers shared by the sweep tests of both backends (tests/test_sweep.py, tests/test_ray.py)."""

import pytest

import formal_sae
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


def untrained_expr_model():
    """A tiny untrained Expr model and its small dataset (an SAE costs the same on any weights)."""
    ds = formal_sae.build_dataset("expr", n_train=300, n_validation=10, n_test=20, seed=0)
    meta = formal_sae.dataset_metadata(ds)
    tok = formal_sae.build_tokenizer(formal_sae.grammar_of(meta))
    model = formal_sae.build_model(formal_sae.ModelConfig.from_preset("tiny"), tok, meta)
    return model, ds

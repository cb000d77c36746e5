"""SAE training checkpoints: a run killed after a checkpoint and resumed ends bitwise where an
uninterrupted run ends (every architecture, and the causal SAE's two phases), the data stream
restarts mid-epoch exactly, half-written checkpoints are ignored, other settings are refused, and
leaving out any piece of the restored state does change the result (so the equality means something).

A kill is simulated by a batch stream that raises :class:`Killed` (not an ``Exception``: nothing
on the way catches it) when asked for its n-th batch; the same wrapper counts the batches a resumed
run draws, which shows it resumed where it should rather than starting over.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import shutil

import pytest
import torch
from sae_lens import TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, register_sae_training_class

import formal_sae.saes.causal as causal_mod
import formal_sae.saes.checkpoints as checkpoints
import formal_sae.saes.training as training
from formal_sae import CausalConfig, SAEError, SAETrainConfig
from formal_sae.saes import train_sae
from formal_sae.saes.causal import _sentence_batches, train_causal_sae
from formal_sae.saes.training import activation_batches, architectures, cache_activations, fit_sae

HOOK = "blocks.0.hook_resid_post"
# 12 steps of 128 over 600 tokens (4 batches an epoch, so 3 epochs); checkpoints after steps 5 and 9
# (samples > 512, > 1024). The dead-feature window of 3 makes the sparsity-window resets and the
# dead-latent masks (TopK's aux loss) part of the state, the lr warm-up the scheduler's.
BASE = {"expansion_factor": 2, "training_tokens": 1536, "batch_size_tokens": 128, "dead_feature_window": 3}
BASE |= {"lr_warm_up_steps": 2}
N_CHECKPOINTS = 2
FIRST, SECOND, TOTAL = 5, 9, 12  # steps done at each checkpoint, and in all
PAPER_VARIANTS = {
    "paper-l1-pre_bias-normalize_decoder": {"l1_coefficient": 0.01, "pre_bias": True, "normalize_decoder": True},
    "paper-l1": {"l1_coefficient": 0.01},
    "paper-topk-normalize_input": {"k": 4, "normalize_input": True},
    "paper-topk-normalize_input-normalize_recon-pre_bias": {"k": 4, "normalize_input": True, "normalize_recon": True},
}


def arch_config(name: str) -> SAETrainConfig:
    if name in PAPER_VARIANTS:
        return SAETrainConfig(architecture="paper", **PAPER_VARIANTS[name], **BASE)
    cfg_class = SAE_TRAINING_CLASS_REGISTRY[name][1]
    k = {"k": 4} if "k" in {f.name for f in dataclasses.fields(cfg_class)} else {}
    return SAETrainConfig(architecture=name, **k, **BASE)


ARCHS = [a for a in architectures() if a != "paper"] + list(PAPER_VARIANTS)


class Killed(BaseException):
    """A simulated SIGKILL."""


def stream(monkeypatch, module, name: str, kill_at: int | None = None) -> list[int]:
    """Wrap the batch iterator ``module.name``: count the batches drawn (in the returned list's
    only item) and raise :class:`Killed` when batch number ``kill_at`` (0-based) is asked for."""
    real, drawn = getattr(module, name), [0]

    def wrapped(*args, **kwargs):
        for batch in real(*args, **kwargs):
            if drawn[0] == kill_at:
                raise Killed
            drawn[0] += 1
            yield batch

    monkeypatch.setattr(module, name, wrapped)
    return drawn


def state(sae) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in sae.state_dict().items()}


def same(a, b) -> bool:
    """Bitwise-equal weights and buffers, and the end-of-training metadata."""
    sa, sb = state(a), state(b)
    meta = [(s.cfg.metadata.l0, s.cfg.metadata.num_dead_features) for s in (a, b)]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa) and meta[0] == meta[1]


def folders(directory) -> list[str]:
    return sorted((p.name for p in directory.iterdir() if p.is_dir()), key=int)


@pytest.fixture(scope="module")
def acts(model, ds):
    return cache_activations(model, ds, HOOK, max_tokens=10**6)[:600]


def killed_run(model, ds, acts, config, directory, kill_at: int = 7) -> None:
    """A run killed while drawing batch ``kill_at`` (after the checkpoint at step 5)."""
    with pytest.MonkeyPatch.context() as m:
        stream(m, training, "activation_batches", kill_at)
        with pytest.raises(Killed):
            fit_sae(model, ds, config, acts, checkpoint_dir=directory, n_checkpoints=N_CHECKPOINTS)


def resumed_run(model, ds, acts, config, directory, monkeypatch) -> tuple[object, int]:
    """Resume in ``directory``; the trained SAE and how many batches the resumed run drew."""
    saved = []
    with monkeypatch.context() as m:
        drawn = stream(m, training, "activation_batches")
        m.setattr(
            checkpoints,
            "mark_complete",
            lambda path, marker, real=checkpoints.mark_complete: (saved.append(path.name), real(path, marker)),
        )
        sae, _ = fit_sae(model, ds, config, acts, checkpoint_dir=directory, n_checkpoints=N_CHECKPOINTS)
    assert saved == [str(SECOND * 128)]  # no burst of checkpoints at the thresholds already passed
    return sae, drawn[0]


@pytest.fixture(scope="module")
def uninterrupted(model, ds, acts, tmp_path_factory):
    cache = {}

    def get(name: str):
        if name not in cache:
            out = tmp_path_factory.mktemp(f"uninterrupted-{name}")
            cache[name] = fit_sae(model, ds, arch_config(name), acts, checkpoint_dir=out, n_checkpoints=N_CHECKPOINTS)[0]
        return cache[name]

    return get


# ---------------------------------------------------------------------------- the data stream
@pytest.mark.parametrize(
    ("n", "batch", "start"), [(600, 128, 0), (600, 128, 3), (600, 128, 4), (600, 128, 9), (100, 7, 30), (50, 50, 3), (64, 10, 13)]
)
def test_activation_batches_restart_exactly_at_any_step(n, batch, start):
    acts = torch.arange(3 * n, dtype=torch.float32).reshape(n, 3)  # distinct rows
    per_epoch = n // batch
    whole = list(itertools.islice(activation_batches(acts, batch, seed=5), start + 2 * per_epoch + 1))
    tail = list(itertools.islice(activation_batches(acts, batch, seed=5, start_step=start), 2 * per_epoch + 1))
    assert len(tail) == len(whole[start:]) and all(torch.equal(a, b) for a, b in zip(whole[start:], tail))


@pytest.mark.parametrize("start", [0, 5, 37, 80])  # 300 sentences in batches of 8: 37 an epoch
def test_sentence_batches_restart_exactly_at_any_step(ds, start):
    make = lambda s: _sentence_batches(ds["train"], 8, 3, 0, 2, start_step=s)  # noqa: E731
    whole = list(itertools.islice(make(0), start + 40))[start:]
    tail = list(itertools.islice(make(start), 40))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole, tail))


# ---------------------------------------------------------------------------- fit_sae
@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.filterwarnings("ignore:decoder_init_norm must be set")
def test_a_killed_run_resumes_bitwise_identically(name, model, ds, acts, uninterrupted, tmp_path, monkeypatch):
    config = arch_config(name)
    killed_run(model, ds, acts, config, tmp_path)
    assert folders(tmp_path) == [str(FIRST * 128)]
    sae, drawn = resumed_run(model, ds, acts, config, tmp_path, monkeypatch)
    assert drawn == TOTAL - FIRST  # resumed at the checkpoint, not from scratch
    assert same(sae, uninterrupted(name))
    assert folders(tmp_path) == [str(SECOND * 128)]  # only the latest is kept


class NoisyConfig(TopKTrainingSAEConfig):
    @classmethod
    def architecture(cls) -> str:
        return "test_noisy_topk"

    def get_inference_config_class(self) -> type:
        return TopKSAEConfig


class NoisySAE(TopKTrainingSAE):
    """TopK with input noise drawn from the global RNG during training, as dropout would."""

    def training_forward_pass(self, step_input):
        noise = 0.01 * torch.randn_like(step_input.sae_in)
        return super().training_forward_pass(dataclasses.replace(step_input, sae_in=step_input.sae_in + noise))


@pytest.fixture
def noisy():
    register_sae_training_class(NoisyConfig.architecture(), NoisySAE, NoisyConfig)
    yield NoisyConfig.architecture()
    del SAE_TRAINING_CLASS_REGISTRY[NoisyConfig.architecture()]


def test_an_architecture_drawing_from_the_global_rng_resumes_bitwise_identically(
    noisy, model, ds, acts, uninterrupted, tmp_path, monkeypatch
):
    # none of SAELens's architectures draws random numbers while training today; this one does
    killed_run(model, ds, acts, arch_config(noisy), tmp_path)
    sae, drawn = resumed_run(model, ds, acts, arch_config(noisy), tmp_path, monkeypatch)
    assert drawn == TOTAL - FIRST and same(sae, uninterrupted(noisy))


@pytest.mark.parametrize("left_out", ["optimizer", "data position"])
def test_resuming_without_part_of_the_state_differs(left_out, model, ds, acts, uninterrupted, tmp_path, monkeypatch):
    config = arch_config("topk")
    killed_run(model, ds, acts, config, tmp_path)
    with monkeypatch.context() as m:
        if left_out == "optimizer":
            m.setattr(torch.optim.Adam, "load_state_dict", lambda self, state_dict: None)
        else:
            m.setattr(training, "activation_batches", lambda acts, b, seed, start_step=0: activation_batches(acts, b, seed))
        sae, _ = fit_sae(model, ds, config, acts, checkpoint_dir=tmp_path, n_checkpoints=N_CHECKPOINTS)
    assert not same(sae, uninterrupted("topk"))


@pytest.mark.parametrize("torn", ["no marker", "torn marker"])
def test_a_half_written_checkpoint_is_ignored(torn, model, ds, acts, uninterrupted, tmp_path, monkeypatch):
    config = arch_config("batchtopk")
    real_write, calls = checkpoints.write_json, []

    def write_json(path, obj):  # the kill hits while the second checkpoint is being completed
        calls.append(path)
        if len(calls) == 2:
            if torn == "torn marker":
                path.write_text('{"format": 1, "settings": {')
            raise Killed
        real_write(path, obj)

    with monkeypatch.context() as m:
        m.setattr(checkpoints, "write_json", write_json)
        with pytest.raises(Killed):
            fit_sae(model, ds, config, acts, checkpoint_dir=tmp_path, n_checkpoints=N_CHECKPOINTS)
    junk = tmp_path / "99999"  # a bigger, never-completed checkpoint with garbage in it
    junk.mkdir()
    (junk / "sae_weights.safetensors").write_bytes(b"garbage")
    assert folders(tmp_path) == [str(FIRST * 128), str(SECOND * 128), "99999"]
    sae, drawn = resumed_run(model, ds, acts, config, tmp_path, monkeypatch)
    assert drawn == TOTAL - FIRST  # from the complete checkpoint
    assert same(sae, uninterrupted("batchtopk"))
    assert folders(tmp_path) == [str(SECOND * 128)]


def test_a_resume_with_other_settings_is_refused(model, ds, acts, tmp_path):
    config = arch_config("topk")
    killed_run(model, ds, acts, config, tmp_path)
    with pytest.raises(SAEError, match=r"k: 4 in the checkpoint, 5 now.*same settings.*delete"):
        fit_sae(model, ds, dataclasses.replace(config, k=5), acts, checkpoint_dir=tmp_path)
    with pytest.raises(SAEError, match=r"activations: \[600, 32\] in the checkpoint, \[599, 32\] now"):
        fit_sae(model, ds, config, acts[:599], checkpoint_dir=tmp_path)
    fit_sae(model, ds, config, acts, checkpoint_dir=tmp_path)  # the refusals left the checkpoint usable
    with pytest.raises(SAEError, match="checkpoint_dir"):
        fit_sae(model, ds, config, acts, n_checkpoints=2)


def test_train_sae_checkpoints_and_trains_the_same_sae(model, ds, acts, tmp_path):
    config = arch_config("topk")
    plain = train_sae(model, ds, config, activations=acts)
    checkpointed = train_sae(model, ds, config, activations=acts, checkpoint_dir=tmp_path, n_checkpoints=1)
    assert same(plain, checkpointed)
    (latest,) = folders(tmp_path)
    marker = json.loads((tmp_path / latest / checkpoints.MARKER).read_text())
    assert marker["settings"]["k"] == 4 and "device" not in marker["settings"] and marker["n_training_steps"] == 7


# ---------------------------------------------------------------------------- the causal SAE
CAUSAL_SAE = SAETrainConfig(architecture="topk", k=4, expansion_factor=2, batch_size_tokens=128, dead_feature_window=2)
# pretraining: 3 steps, checkpoint after 2 (samples > 192); causal loop: 4 steps, checkpoint after 2
CAUSAL = CausalConfig(coefficient=10.0, pretrain_steps=3, steps=4, sentences_per_step=8)


def causal_run(model, ds, directory, monkeypatch, kill_pretrain=None, kill_causal=None, arch="topk") -> tuple[object, int, int]:
    """A causal run; the SAE, and the batches its pretraining and its causal loop drew."""
    config = dataclasses.replace(CAUSAL_SAE, architecture=arch)
    with monkeypatch.context() as m:
        pre = stream(m, training, "activation_batches", kill_pretrain)
        loop = stream(m, causal_mod, "_sentence_batches", kill_causal)
        sae = train_causal_sae(model, ds, config, CAUSAL, progress=False, checkpoint_dir=directory, n_checkpoints=1)
    return sae, pre[0], loop[0]


@pytest.mark.parametrize("arch", ["topk", "noisy"])
def test_a_killed_causal_run_resumes_bitwise_identically_in_both_phases(arch, model, ds, tmp_path, monkeypatch, request):
    if arch == "noisy":  # draws from the global RNG in both phases
        arch = request.getfixturevalue("noisy")
    causal_run = functools.partial(globals()["causal_run"], arch=arch)
    reference, _, _ = causal_run(model, ds, tmp_path / "reference", monkeypatch)
    run = tmp_path / "run"
    with pytest.raises(Killed):  # killed in the pretraining, after its checkpoint
        causal_run(model, ds, run, monkeypatch, kill_pretrain=2)
    assert folders(run / "pretrain") == ["256"] and not (run / "causal").exists()
    with pytest.raises(Killed):  # resumed, then killed in the causal loop, after its checkpoint
        causal_run(model, ds, run, monkeypatch, kill_causal=2)
    assert folders(run / "causal") == ["2"] and not (run / "pretrain").exists()
    shutil.copytree(run, tmp_path / "copy")
    sae, pre, loop = causal_run(model, ds, run, monkeypatch)
    assert (pre, loop) == (0, 2)  # the pretrained SAE came from the checkpoint
    assert same(sae, reference)
    assert sae.cfg.metadata.to_dict() == reference.cfg.metadata.to_dict()
    with monkeypatch.context() as m:  # the optimizer state matters
        m.setattr(torch.optim.Adam, "load_state_dict", lambda self, state_dict: None)
        assert not same(causal_run(model, ds, tmp_path / "copy", monkeypatch)[0], reference)


def test_a_causal_resume_with_other_settings_is_refused(model, ds, tmp_path, monkeypatch):
    with pytest.raises(Killed):
        causal_run(model, ds, tmp_path, monkeypatch, kill_causal=2)
    other = CausalConfig(**{**CAUSAL.to_dict(), "coefficient": 1.0})
    with pytest.raises(SAEError, match=r"causal: .*coefficient.*delete"):
        train_causal_sae(model, ds, CAUSAL_SAE, other, progress=False, checkpoint_dir=tmp_path)

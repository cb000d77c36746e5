"""Hub publishing and loading (up to the huggingface_hub API, which a fake stands in for), model
names, and the documented plain-TransformerLens recipe (run with formal-sae unimportable)."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard

import formal_sae
from formal_sae import ModelError, SAEError
from formal_sae.cli import main
from formal_sae.hub_download import HubSource, parse_hub_source
from formal_sae.models import model_name, model_name_of

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny expr model trained for a few steps into a folder (with metrics.json), its dataset,
    and a tiny SAE on it in a folder (with a metrics.json as train-sae writes one)."""
    out = tmp_path_factory.mktemp("hub")
    ds = formal_sae.build_dataset("expr", n_train=200, n_validation=20, n_test=20, seed=0)
    train = formal_sae.TrainConfig(steps=5, eval_every=5, warmup_steps=0, validity_samples=4, final_validity_repeats=1)
    model = formal_sae.train_model(ds, "tiny", train, progress=False, out_dir=out / "model")
    formal_sae.train_sae(model, ds, training_tokens=2000, batch_size_tokens=256, hook_name=HOOK, out_dir=out / "sae")
    metrics = {"explained_variance": 0.625, "l0": 12.5, "ce_loss_score": 0.75, "validity": 0.5, "validity_std": 0.1}
    (out / "sae" / "metrics.json").write_text(json.dumps(metrics))
    return model, out / "model", out / "sae"


class FakeHub:
    """The huggingface_hub API boundary: repos are folders; every call is recorded."""

    def __init__(self, root: Path) -> None:
        self.root, self.calls = root, []

    def repo(self, repo_id: str) -> Path:
        return self.root / repo_id

    def files(self, repo_id: str) -> set[str]:
        repo = self.repo(repo_id)
        return {str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()}

    def install(self, monkeypatch) -> FakeHub:
        hub = self

        def create_repo(self, repo_id, **kwargs):
            hub.calls.append(("create_repo", repo_id, kwargs))
            hub.repo(repo_id).mkdir(parents=True, exist_ok=True)
            return f"https://huggingface.co/{repo_id}"

        def create_branch(self, repo_id, **kwargs):
            hub.calls.append(("create_branch", repo_id, kwargs))

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            staged = Path(folder_path)
            uploaded = {str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file()}
            hub.calls.append(("upload_folder", repo_id, {**kwargs, "files": uploaded}))
            repo = hub.repo(repo_id)
            for name in hub.files(repo_id) - uploaded:  # what upload_folder's delete_patterns do
                if any(fnmatch.fnmatch(name, p) for p in kwargs.get("delete_patterns") or []):
                    (repo / name).unlink()
            shutil.copytree(staged, repo, dirs_exist_ok=True)

        def snapshot_download(repo_id, **kwargs):
            hub.calls.append(("snapshot_download", repo_id, kwargs))
            if not hub.repo(repo_id).is_dir():
                raise OSError(f"404: {repo_id} not found")  # huggingface_hub raises RepositoryNotFoundError
            return str(hub.repo(repo_id))

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
        return self

    def named(self, name: str) -> list[tuple[str, dict]]:
        return [(repo, kwargs) for call, repo, kwargs in self.calls if call == name]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    return FakeHub(tmp_path / "hub").install(monkeypatch)


def tokens_for(model) -> torch.Tensor:
    return torch.arange(24).reshape(2, 12) % model.cfg.d_vocab


def front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


# ---------------------------------------------------------------------------- model names
def test_models_are_named_by_grammar_and_preset(trained, tmp_path):
    model, model_dir, sae_dir = trained
    assert model.cfg.model_name == model_name_of(model) == "formal-sae/expr-tiny"
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["model_name"] == "formal-sae/expr-tiny"
    assert json.loads((sae_dir / "cfg.json").read_text())["metadata"]["model_name"] == "formal-sae/expr-tiny"
    bare = formal_sae.build_model(formal_sae.ModelConfig.from_preset("tiny"), model.tokenizer)
    assert bare.cfg.model_name == model_name(bare.formal_sae_config, None) == "formal-sae/model-tiny"
    assert formal_sae.load_model(model_dir).cfg.model_name == "formal-sae/expr-tiny"


def test_a_config_json_without_a_model_name_still_loads(trained, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained[1], old)
    saved = json.loads((old / "config.json").read_text())
    del saved["model_name"]
    (old / "config.json").write_text(json.dumps(saved))
    loaded = formal_sae.load_model(old)
    assert loaded.cfg.model_name == "formal-sae/expr-tiny"
    assert torch.equal(loaded(tokens_for(loaded)), trained[0](tokens_for(loaded)))


# ---------------------------------------------------------------------------- Hub locations
@pytest.mark.parametrize(
    ("text", "revision", "expected"),
    [
        ("user/repo", None, HubSource("user/repo")),
        ("hf://user/repo", None, HubSource("user/repo")),
        ("user/repo@v1", None, HubSource("user/repo", "v1")),
        ("user/repo", "v2", HubSource("user/repo", "v2")),
        (f"org/my.saes@main/{HOOK}", None, HubSource("org/my.saes", "main", HOOK)),
        ("hf://user/repo/cells/a/", None, HubSource("user/repo", None, "cells/a")),
        (Path("hf://user/repo@v1/a"), None, HubSource("user/repo", "v1", "a")),  # the CLI's paths
        ("/abs/olute", None, None),
        ("./user/repo", None, None),
        ("just-a-name", None, None),
    ],
)
def test_hub_locations(text, revision, expected):
    assert parse_hub_source(text, revision) == expected


def test_an_existing_folder_is_never_a_hub_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "user" / "repo").mkdir(parents=True)
    assert parse_hub_source("user/repo") is None
    assert parse_hub_source("hf://user/repo") == HubSource("user/repo")


@pytest.mark.parametrize(
    ("text", "revision", "pattern"),
    [
        ("hf://nouser", None, "is not a Hub location"),
        ("user/repo@v1", "v2", "names revision 'v1', but revision='v2'"),
        ("hf://user/repo/a/../b", None, "not a plain path"),
    ],
)
def test_bad_hub_locations(text, revision, pattern, hub):
    with pytest.raises(ModelError, match=re.escape(pattern)):
        formal_sae.load_model(text, revision=revision)
    assert not hub.calls


def test_a_failed_download_names_the_repo_and_the_fixes(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match=r"no folder 'you/missing' here, and downloading the model you/missing .*404"):
        formal_sae.load_model("you/missing")
    (tmp_path / "hub" / "you" / "saes").mkdir(parents=True)
    with pytest.raises(SAEError, match=r"has no folder 'nothing-here'"):
        formal_sae.load_sae("you/saes/nothing-here")
    with pytest.raises(ModelError, match="revision='v1' applies to Hub repos only"):
        formal_sae.load_model(tmp_path, revision="v1")


# ---------------------------------------------------------------------------- models
def test_model_round_trips_through_the_hub(trained, hub):
    model, model_dir, _ = trained
    url = formal_sae.push_model_to_hub(model_dir, "you/expr-tiny")
    assert url == "https://huggingface.co/you/expr-tiny"
    assert hub.named("create_repo") == [("you/expr-tiny", {"repo_type": "model", "private": False, "exist_ok": True})]
    assert not hub.named("create_branch")
    [(repo, upload)] = hub.named("upload_folder")
    source = {str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file()}
    expected = (source - {formal_sae.MARKER_FILE}) | {"README.md"}
    assert {"config.json", "model.safetensors", "tokenizer/tokenizer.json", "metrics.json"} <= expected
    assert repo == "you/expr-tiny" and upload["files"] == expected == hub.files("you/expr-tiny")
    assert upload["repo_type"] == "model" and upload["revision"] is None and upload["delete_patterns"] is None
    assert "formal-sae/expr-tiny" in upload["commit_message"]

    loaded = formal_sae.load_model("you/expr-tiny")
    assert hub.named("snapshot_download") == [("you/expr-tiny", {"repo_type": "model", "revision": None, "allow_patterns": None})]
    assert formal_sae.model_fingerprint(loaded) == formal_sae.model_fingerprint(model)
    assert torch.equal(loaded(tokens_for(model)), model(tokens_for(model)))
    assert loaded.formal_sae_data == model.formal_sae_data and loaded.cfg.model_name == "formal-sae/expr-tiny"


def test_model_card(trained, hub):
    model, model_dir, _ = trained
    formal_sae.push_model_to_hub(model_dir, "you/expr-tiny")
    text = (hub.repo("you/expr-tiny") / "README.md").read_text()
    card = ModelCard(text)  # what the Hub parses
    assert card.data.library_name == "transformer-lens" and card.data.license == "mit"
    assert {"transformer-lens", "formal-sae", "expr"} <= set(card.data.tags)
    meta = front_matter(text)["formal_sae"]
    metrics = model.formal_sae_metrics
    assert meta["model_name"] == "formal-sae/expr-tiny" and meta["grammar"] == "expr"
    assert meta["validity"] == metrics.validity and meta["val_loss"] == metrics.val_loss and meta["steps"] == 5
    assert meta["architecture"] == model.formal_sae_config.to_dict()
    assert 'formal_sae.load_model("you/expr-tiny")' in text and model.formal_sae_data.grammar_text.strip() in text
    assert "NaN" not in text


def test_private_push_to_a_branch_and_loading_that_revision(trained, hub):
    formal_sae.push_model_to_hub(trained[1], "you/m", private=True, revision="v1", token="hf_x", commit_message="m1")
    assert hub.named("create_repo") == [("you/m", {"repo_type": "model", "private": True, "exist_ok": True})]
    assert hub.named("create_branch") == [("you/m", {"branch": "v1", "repo_type": "model", "exist_ok": True})]
    [(_, upload)] = hub.named("upload_folder")
    assert upload["revision"] == "v1" and upload["commit_message"] == "m1"
    formal_sae.load_model("you/m@v1")
    formal_sae.load_model("hf://you/m", revision="v1")
    assert [kw["revision"] for _, kw in hub.named("snapshot_download")] == ["v1", "v1"]


def test_a_damaged_model_is_refused_before_any_upload(trained, hub, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained[1], broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match=r"model\.safetensors is corrupt"):
        formal_sae.push_model_to_hub(broken, "you/m")
    with pytest.raises(ModelError, match="does not exist"):
        formal_sae.push_model_to_hub(tmp_path / "nowhere", "you/m")
    assert not hub.calls


# ---------------------------------------------------------------------------- SAEs
def test_sae_round_trips_through_the_hub_in_saelens_layout(trained, hub, monkeypatch):
    model, _, sae_dir = trained
    formal_sae.push_sae_to_hub(sae_dir, "you/expr-saes", model_repo_id="you/expr-tiny")
    [(repo, upload)] = hub.named("upload_folder")
    expected = {"README.md"} | {
        f"{HOOK}/{name}" for name in ("cfg.json", "sae_weights.safetensors", "formal_sae_sae_config.json", "metrics.json")
    }
    assert repo == "you/expr-saes" and upload["files"] == expected == hub.files("you/expr-saes")
    assert upload["repo_type"] == "model" and upload["delete_patterns"] == [f"{HOOK}/*"]

    original = formal_sae.load_sae(sae_dir)
    loaded = formal_sae.load_sae(f"you/expr-saes/{HOOK}")
    assert hub.named("snapshot_download")[-1] == (
        "you/expr-saes",
        {"repo_type": "model", "revision": None, "allow_patterns": [f"{HOOK}/*"]},
    )
    state = original.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    assert loaded.cfg.metadata.model_fingerprint == formal_sae.model_fingerprint(model)

    # SAELens's own loader, for users without formal-sae: hf_hub_download reads the same repo
    import sae_lens.loading.pretrained_sae_loaders as loaders
    from sae_lens import SAE

    def hf_hub_download(repo_id, filename, **kwargs):
        path = hub.repo(repo_id) / filename
        if not path.is_file():
            raise huggingface_hub.errors.EntryNotFoundError(f"{filename} not found")
        return str(path)

    monkeypatch.setattr(loaders, "hf_hub_download", hf_hub_download)
    plain = SAE.from_pretrained("you/expr-saes", HOOK)
    assert all(torch.equal(v, state[k]) for k, v in plain.state_dict().items())
    assert plain.cfg.metadata.hook_name == HOOK


def test_sae_card(trained, hub):
    formal_sae.push_sae_to_hub(trained[2], "you/expr-saes", model_repo_id="you/expr-tiny")
    text = (hub.repo("you/expr-saes") / "README.md").read_text()
    card = ModelCard(text)
    assert card.data.library_name == "saelens" and card.data.base_model == "you/expr-tiny"
    assert {"sae-lens", "saelens", "formal-sae", "expr"} <= set(card.data.tags)
    entry = front_matter(text)["formal_sae"]["saes"][HOOK]
    assert entry["explained_variance"] == 0.625 and entry["l0"] == 12.5 and entry["validity"] == 0.5
    assert entry["hook_name"] == HOOK and entry["model_name"] == "formal-sae/expr-tiny" and entry["grammar"] == "expr"
    assert f'SAE.from_pretrained("you/expr-saes", "{HOOK}")' in text
    assert f'formal_sae.load_sae("you/expr-saes/{HOOK}")' in text
    assert f"| `{HOOK}` | topk | `{HOOK}` |" in text and "| 0.625 | 12.5 | 0.750 | 0.500 |" in text


def test_several_saes_one_folder_each_and_a_second_push_replaces_a_folder(trained, hub, tmp_path):
    sae_dir = trained[2]
    formal_sae.push_sae_to_hub({"a": sae_dir, "cells/b": sae_dir}, "you/sweep")
    assert {f.split("/")[0] for f in hub.files("you/sweep")} == {"README.md", "a", "cells"}
    assert "cells/b/cfg.json" in hub.files("you/sweep")
    without_metrics = tmp_path / "sae"
    shutil.copytree(sae_dir, without_metrics)
    (without_metrics / "metrics.json").unlink()
    formal_sae.push_sae_to_hub(without_metrics, "you/sweep", sae_id="a")
    files = hub.files("you/sweep")
    assert "a/metrics.json" not in files and "a/cfg.json" in files and "cells/b/metrics.json" in files
    assert [u["delete_patterns"] for _, u in hub.named("upload_folder")] == [["a/*", "cells/b/*"], ["a/*"]]


@pytest.mark.parametrize("sae_id", ["", "../x", "a//b", "/a", "README.md"])
def test_bad_sae_ids(trained, hub, sae_id):
    with pytest.raises(SAEError, match="is not a folder name"):
        formal_sae.push_sae_to_hub(trained[2], "you/s", sae_id=sae_id)
    assert not hub.calls


def test_a_damaged_sae_is_refused_before_any_upload(trained, hub, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained[2], broken)
    (broken / "sae_weights.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(SAEError, match="not a readable safetensors file"):
        formal_sae.push_sae_to_hub(broken, "you/s")
    assert not hub.calls


# ---------------------------------------------------------------------------- CLI
def test_cli_push_model_and_sae(trained, hub, capsys):
    _, model_dir, sae_dir = trained
    assert main(["push", str(model_dir), "you/m", "--private", "--revision", "v1"]) == 0
    assert "pushed model" in capsys.readouterr().out
    assert hub.named("create_repo")[-1] == ("you/m", {"repo_type": "model", "private": True, "exist_ok": True})
    assert hub.named("upload_folder")[-1][1]["revision"] == "v1"
    assert main(["push", str(sae_dir), "you/s", "--sae-id", "x", "--model-repo-id", "you/m"]) == 0
    assert "formal_sae.load_sae('you/s/x')" in capsys.readouterr().out
    assert "x/cfg.json" in hub.files("you/s")
    assert main(["push", str(model_dir), "you/m", "--sae-id", "x"]) == 2
    assert "--sae-id and --model-repo-id are for SAEs" in capsys.readouterr().err


# ---------------------------------------------------------------------------- plain TransformerLens
def documented_recipe() -> str:
    text = (ROOT / "docs" / "hub.md").read_text()
    return re.search(r"<!-- plain-transformer-lens-recipe -->\n```python\n(.*?)```", text, flags=re.DOTALL)[1]


def test_the_documented_plain_transformer_lens_recipe_gives_identical_logits(trained, tmp_path):
    model, model_dir, _ = trained
    recipe = documented_recipe()
    assert not re.search(r"(import|from) formal_sae", recipe)
    tokens = tokens_for(model)
    torch.save(tokens, tmp_path / "tokens.pt")
    script = tmp_path / "plain.py"
    script.write_text(
        "import sys\n"
        "sys.modules['formal_sae'] = None  # any import of formal_sae raises ImportError\n"
        + recipe
        + textwrap.dedent(
            """
            import torch
            model = load_formal_sae_model(sys.argv[1])
            assert type(model) is HookedTransformer and model.cfg.model_name == "formal-sae/expr-tiny"
            torch.save(model(torch.load(sys.argv[2])).detach(), sys.argv[3])
            assert not [m for m in sys.modules if m.startswith("formal_sae") and sys.modules[m] is not None]
            """
        )
    )
    subprocess.run(
        [sys.executable, str(script), str(model_dir), str(tmp_path / "tokens.pt"), str(tmp_path / "logits.pt")],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    plain = torch.load(tmp_path / "logits.pt")
    with torch.no_grad():
        ours = formal_sae.load_model(model_dir)(tokens)
    assert torch.equal(plain, ours)

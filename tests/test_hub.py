"""Hub publishing and loading (up to the huggingface_hub API, which a fake stands in for), model
names, and the documented plain-TransformerLens recipe (run with formal-sae unimportable)."""

from __future__ import annotations

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
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard
from huggingface_hub.utils import filter_repo_objects

import formal_sae
from formal_sae import ModelError, SAEError
from formal_sae.cli import main
from formal_sae.hub_download import MODEL_FILES, MODEL_FOLDERS, MODEL_PATTERNS, HubSource, parse_hub_source
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
    """The huggingface_hub API boundary: repos are folders; every call is recorded. A commit
    applies its operations as the Hub does (deleting a missing file fails); a download copies
    the files ``allow_patterns`` select (huggingface_hub's own filter) into a fresh folder.
    ``fail[name] = exception`` makes the call ``name`` raise it."""

    def __init__(self, root: Path) -> None:
        self.root, self.calls, self.fail = root, [], {}

    def repo(self, repo_id: str) -> Path:
        return self.root / "repos" / repo_id

    def files(self, repo_id: str) -> set[str]:
        repo = self.repo(repo_id)
        return {p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()}

    def put(self, repo_id: str, path: str, text: str) -> None:
        (self.repo(repo_id) / path).parent.mkdir(parents=True, exist_ok=True)
        (self.repo(repo_id) / path).write_text(text)

    def install(self, monkeypatch) -> FakeHub:
        hub = self

        def record(name, repo_id, kwargs):
            hub.calls.append((name, repo_id, kwargs))
            if name in hub.fail:
                raise hub.fail[name]

        def create_repo(self, repo_id, **kwargs):
            huggingface_hub.utils.validate_repo_id(repo_id)  # what huggingface_hub checks before any request
            record("create_repo", repo_id, kwargs)
            hub.repo(repo_id).mkdir(parents=True, exist_ok=True)
            return f"https://huggingface.co/{repo_id}"

        def create_branch(self, repo_id, **kwargs):
            record("create_branch", repo_id, kwargs)

        def list_repo_files(self, repo_id, **kwargs):
            record("list_repo_files", repo_id, kwargs)
            return sorted(hub.files(repo_id))

        def hf_hub_download(self, repo_id, filename, **kwargs):
            record("hf_hub_download", repo_id, {"filename": filename, **kwargs})
            return str(hub.repo(repo_id) / filename)

        def create_commit(self, repo_id, operations, **kwargs):
            operations = list(operations)
            ops = [("delete" if isinstance(op, CommitOperationDelete) else "add", op.path_in_repo) for op in operations]
            record("create_commit", repo_id, {**kwargs, "operations": ops})
            repo = hub.repo(repo_id)
            for op in operations:
                if isinstance(op, CommitOperationDelete):
                    assert not op.is_folder and (repo / op.path_in_repo).is_file(), f"no file {op.path_in_repo}"
                    (repo / op.path_in_repo).unlink()
                else:
                    assert isinstance(op, CommitOperationAdd)
                    (repo / op.path_in_repo).parent.mkdir(parents=True, exist_ok=True)
                    src = op.path_or_fileobj
                    (repo / op.path_in_repo).write_bytes(src if isinstance(src, bytes) else Path(src).read_bytes())

        def snapshot_download(repo_id, **kwargs):
            record("snapshot_download", repo_id, kwargs)
            if not hub.repo(repo_id).is_dir():
                raise OSError(f"404: {repo_id} not found")  # huggingface_hub raises RepositoryNotFoundError
            out = hub.root / "cache" / str(len(hub.calls))
            for name in filter_repo_objects(sorted(hub.files(repo_id)), allow_patterns=kwargs.get("allow_patterns")):
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(hub.repo(repo_id) / name, out / name)
            out.mkdir(parents=True, exist_ok=True)
            return str(out)

        for name, fn in [
            ("create_repo", create_repo),
            ("create_branch", create_branch),
            ("list_repo_files", list_repo_files),
            ("hf_hub_download", hf_hub_download),
            ("create_commit", create_commit),
        ]:
            monkeypatch.setattr(HfApi, name, fn)
        monkeypatch.setattr(HfApi, "upload_folder", None)  # batches with hf_xet: one push must be one commit
        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
        return self

    def named(self, name: str) -> list[tuple[str, dict]]:
        return [(repo, kwargs) for call, repo, kwargs in self.calls if call == name]

    def commits(self) -> list[tuple[str, dict]]:
        return self.named("create_commit")

    def ops(self, repo_id: str | None = None) -> list[list[tuple[str, str]]]:
        return [kw["operations"] for repo, kw in self.commits() if repo_id in (None, repo)]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    return FakeHub(tmp_path / "hub").install(monkeypatch)


def adds(files) -> list[tuple[str, str]]:
    return [("add", f) for f in sorted(files)]


def deletes(files) -> list[tuple[str, str]]:
    return [("delete", f) for f in sorted(files)]


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
    hub.repo("you/saes").mkdir(parents=True)
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
    [(repo, commit)] = hub.commits()
    source = {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()}
    expected = (source - {formal_sae.MARKER_FILE}) | {"README.md"}
    assert {"config.json", "model.safetensors", "tokenizer/tokenizer.json", "metrics.json"} <= expected
    assert repo == "you/expr-tiny" and commit["operations"] == adds(expected) and hub.files("you/expr-tiny") == expected
    assert commit["repo_type"] == "model" and commit["revision"] is None
    assert "formal-sae/expr-tiny" in commit["commit_message"]
    assert [c for c, _, _ in hub.calls] == ["create_repo", "list_repo_files", "create_commit"]

    loaded = formal_sae.load_model("you/expr-tiny")
    assert hub.named("snapshot_download") == [
        ("you/expr-tiny", {"repo_type": "model", "revision": None, "allow_patterns": list(MODEL_PATTERNS)})
    ]
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
    assert hub.named("list_repo_files") == [("you/m", {"revision": "v1", "repo_type": "model"})]
    [(_, commit)] = hub.commits()
    assert commit["revision"] == "v1" and commit["commit_message"] == "m1"
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
    [(repo, commit)] = hub.commits()
    expected = {"README.md"} | {
        f"{HOOK}/{name}" for name in ("cfg.json", "sae_weights.safetensors", "formal_sae_sae_config.json", "metrics.json")
    }
    assert repo == "you/expr-saes" and commit["operations"] == adds(expected) and hub.files("you/expr-saes") == expected
    assert commit["repo_type"] == "model" and commit["revision"] is None

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
    first, second = hub.ops("you/sweep")
    assert not [op for op in first if op[0] == "delete"]
    a_files = [f"a/{f}" for f in ("cfg.json", "formal_sae_sae_config.json", "sae_weights.safetensors")]
    assert second == adds(["README.md", *a_files]) + deletes(["a/metrics.json"])  # the one commit, exactly


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


# ---------------------------------------------------------------------------- review fixes
def http_error(status: int) -> Exception:
    import httpx2

    response = httpx2.Response(status, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
    return huggingface_hub.errors.HfHubHTTPError(f"{status} Client Error", response=response)


@pytest.mark.parametrize(
    ("repo_id", "call", "exc", "pattern"),
    [
        ("not a repo", None, None, r"'not a repo' failed while creating the repo \(HFValidationError.*check the repo id"),
        ("you/m", "create_repo", huggingface_hub.errors.LocalTokenNotFoundError("no token"), r"hf auth login.*HF_TOKEN"),
        ("you/m", "create_commit", http_error(401), r"while committing the upload .*not logged in.*hf auth login.*HF_TOKEN"),
        ("you/m", "create_repo", http_error(403), r"may not write to you/m.*write access"),
        ("you/m", "list_repo_files", OSError("Connection refused"), r"while listing its files.*check your network"),
    ],
)
def test_hub_errors_are_one_line_errors_naming_the_repo_and_the_fix(trained, hub, capsys, repo_id, call, exc, pattern):
    if call:
        hub.fail[call] = exc
    with pytest.raises(ModelError, match=pattern) as raised:
        formal_sae.push_model_to_hub(trained[1], repo_id)
    assert "\n" not in str(raised.value) and raised.value.__cause__ is None
    with pytest.raises(SAEError, match=pattern):
        formal_sae.push_sae_to_hub(trained[2], repo_id, sae_id="x")
    assert main(["push", str(trained[1]), repo_id]) == 2
    err = capsys.readouterr().err
    assert err.startswith("formal-sae push: error: pushing to the Hub repo") and err.count("\n") == 1


@pytest.mark.parametrize("sae_id", ["*", "l[0]", "a?", "a b", "x/../y", "a..b", "a/./b", "tokenizer/x", "config.json"])
def test_sae_ids_with_wildcards_or_that_name_model_files_are_refused(trained, hub, sae_id):
    with pytest.raises(SAEError, match="is not a folder name"):
        formal_sae.push_sae_to_hub(trained[2], "you/s", sae_id=sae_id)
    assert not hub.calls


def test_a_push_deletes_exactly_the_files_under_its_sae_folders(trained, hub, tmp_path):
    sae_dir = trained[2]
    formal_sae.push_sae_to_hub({"l0": sae_dir, "l1": sae_dir, "l0x": sae_dir, "topk-k8-lr=0.001": sae_dir}, "you/s")
    hub.put("you/s", "notes/l0.txt", "mine")
    bare = tmp_path / "bare"
    shutil.copytree(sae_dir, bare)
    (bare / "metrics.json").unlink()
    formal_sae.push_sae_to_hub(bare, "you/s", sae_id="l0")
    assert hub.ops("you/s")[-1] == adds(
        ["README.md", "l0/cfg.json", "l0/formal_sae_sae_config.json", "l0/sae_weights.safetensors"]
    ) + deletes(["l0/metrics.json"])
    files = hub.files("you/s")
    assert {"l1/metrics.json", "l0x/metrics.json", "topk-k8-lr=0.001/metrics.json", "notes/l0.txt"} <= files


def test_nested_sae_ids_are_refused(trained, hub):
    with pytest.raises(SAEError, match="'a' is a folder around the SAE 'a/b' pushed with it"):
        formal_sae.push_sae_to_hub({"a": trained[2], "a/b": trained[2]}, "you/s")
    assert not hub.calls
    formal_sae.push_sae_to_hub(trained[2], "you/s", sae_id="a/b")
    with pytest.raises(SAEError, match="'a' is a folder around the SAE 'a/b' already in the repo"):
        formal_sae.push_sae_to_hub(trained[2], "you/s", sae_id="a")
    with pytest.raises(SAEError, match="'a/b/c' is inside the folder of the SAE 'a/b' already in the repo"):
        formal_sae.push_sae_to_hub(trained[2], "you/s", sae_id="a/b/c")
    assert len(hub.commits()) == 1 and "a/b/cfg.json" in hub.files("you/s")


def test_the_sae_card_lists_every_sae_of_the_repo_across_pushes(trained, hub):
    formal_sae.push_sae_to_hub(trained[2], "you/s", sae_id="a", model_repo_id="you/m")
    formal_sae.push_sae_to_hub(trained[2], "you/s", sae_id="b")
    text = (hub.repo("you/s") / "README.md").read_text()
    meta = front_matter(text)
    assert meta["formal_sae"]["card"] == "saes" and list(meta["formal_sae"]["saes"]) == ["a", "b"]
    assert meta["base_model"] == "you/m" and meta["formal_sae"]["saes"]["a"]["explained_variance"] == 0.625
    assert "| `a` | topk |" in text and "| `b` | topk |" in text


def test_saes_pushed_into_a_model_repo_keep_its_card(trained, hub):
    formal_sae.push_model_to_hub(trained[1], "you/m")
    model_card = (hub.repo("you/m") / "README.md").read_text()
    formal_sae.push_sae_to_hub(trained[2], "you/m", sae_id="x")
    assert (hub.repo("you/m") / "README.md").read_text() == model_card
    assert ("add", "README.md") not in hub.ops("you/m")[-1]
    assert list(front_matter((hub.repo("you/m") / "x" / "README.md").read_text())["formal_sae"]["saes"]) == ["x"]
    formal_sae.push_model_to_hub(trained[1], "you/m")  # its own card: replaced
    formal_sae.push_sae_to_hub(trained[2], "you/s")
    with pytest.raises(ModelError, match=r"formal-sae's card of the SAEs there.*overwrite_readme=True"):
        formal_sae.push_model_to_hub(trained[1], "you/s")  # the SAEs' card would be swapped away


def test_a_readme_formal_sae_did_not_write_is_kept(trained, hub):
    hub.put("you/r", "README.md", "# My own notes\n")
    formal_sae.push_sae_to_hub(trained[2], "you/r", sae_id="x")
    assert (hub.repo("you/r") / "README.md").read_text() == "# My own notes\n"
    assert "x/README.md" in hub.files("you/r")
    with pytest.raises(ModelError, match=r"has a README\.md that is not a card formal-sae wrote.*overwrite_readme=True"):
        formal_sae.push_model_to_hub(trained[1], "you/r")
    assert len(hub.commits()) == 1
    formal_sae.push_model_to_hub(trained[1], "you/r", overwrite_readme=True)
    assert front_matter((hub.repo("you/r") / "README.md").read_text())["formal_sae"]["card"] == "model"


def test_a_sweep_cells_record_gives_the_card_its_metrics(trained, hub, tmp_path):
    cell, unevaluated = tmp_path / "cell", tmp_path / "unevaluated"
    for folder, metrics in ((cell, {"explained_variance": 0.875, "l0": 3.5, "ce_loss_score": 0.5}), (unevaluated, None)):
        shutil.copytree(trained[2], folder)
        record = {"cell_id": folder.name, "config": {}, "train_seconds": 1.0, "eval_seconds": None, "metrics": metrics}
        (folder / "metrics.json").write_text(json.dumps(record))
    formal_sae.push_sae_to_hub({"cell": cell, "unevaluated": unevaluated}, "you/sweep")
    text = (hub.repo("you/sweep") / "README.md").read_text()
    saes = front_matter(text)["formal_sae"]["saes"]
    assert saes["cell"]["explained_variance"] == 0.875 and saes["cell"]["l0"] == 3.5
    assert "| 0.875 | 3.5 | 0.500 |" in text and "explained_variance" not in saes["unevaluated"]


def test_a_mistyped_local_path_is_not_looked_up_on_the_hub(hub, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert parse_hub_source("runs/model") is None
    with pytest.raises(ModelError, match=r"there is no model folder 'runs/model' \(no such folder; 'runs' is a folder here"):
        formal_sae.load_model("runs/model")
    with pytest.raises(SAEError, match="no such folder"):
        formal_sae.load_sae("runs/sae/x")
    assert not hub.calls
    with pytest.raises(ModelError, match="downloading the model runs/model"):
        formal_sae.load_model("hf://runs/model")  # hf:// always means the Hub
    with caplog.at_level("INFO", logger="formal_sae.hub_download"), pytest.raises(ModelError, match="from the Hugging Face Hub"):
        formal_sae.load_model("you/model")  # no folder you/ here: a Hub repo, and the log says so
    assert "there is no folder 'you/model' here: loading the model you/model from the Hugging Face Hub" in caplog.text
    assert [repo for repo, _ in hub.named("snapshot_download")] == ["runs/model", "you/model"]


def test_loading_a_model_downloads_its_files_only(trained, hub):
    model, model_dir, sae_dir = trained
    formal_sae.push_model_to_hub(model_dir, "you/m")
    formal_sae.push_sae_to_hub(sae_dir, "you/m", sae_id="x")
    loaded = formal_sae.load_model("you/m")
    [(_, kwargs)] = hub.named("snapshot_download")
    assert kwargs["allow_patterns"] == list(MODEL_PATTERNS)
    downloaded = Path(huggingface_hub.snapshot_download("you/m", allow_patterns=kwargs["allow_patterns"]))
    assert not (downloaded / "x").exists() and (downloaded / "tokenizer").is_dir()
    assert formal_sae.model_fingerprint(loaded) == formal_sae.model_fingerprint(model)
    formal_sae.load_sae("you/m/x")
    assert hub.named("snapshot_download")[-1][1]["allow_patterns"] == ["x/*"]


def test_the_model_files_are_formal_saes(trained):
    from formal_sae import training
    from formal_sae.data.tokenizer import TOKENIZER_DIR
    from formal_sae.models import CONFIG_FILE, WEIGHTS_FILE

    names = (CONFIG_FILE, WEIGHTS_FILE, training.METRICS_FILE, training.TRAIN_CONFIG_FILE, training.CURVE_FILE)
    assert set(MODEL_FILES) == set(names) and MODEL_FOLDERS == (TOKENIZER_DIR,)
    saved = {p.relative_to(trained[1]).as_posix() for p in trained[1].rglob("*") if p.is_file()}
    assert set(filter_repo_objects(saved, allow_patterns=list(MODEL_PATTERNS))) == saved - {formal_sae.MARKER_FILE}


def test_a_model_push_deletes_the_model_files_an_earlier_push_left(trained, hub, tmp_path):
    for name in ("metrics.json", "training_curve.png", "tokenizer/old_vocab.json", "notes.txt", "x/metrics.json"):
        hub.put("you/m", name, "old")
    bare = tmp_path / "bare"
    shutil.copytree(trained[1], bare)
    for name in ("metrics.json", "training_curve.png", "train_config.json"):
        (bare / name).unlink()
    formal_sae.push_model_to_hub(bare, "you/m")
    ops = hub.ops("you/m")[-1]
    assert [op for op in ops if op[0] == "delete"] == deletes(["metrics.json", "tokenizer/old_vocab.json", "training_curve.png"])
    assert {"notes.txt", "x/metrics.json", "config.json"} <= hub.files("you/m") and "metrics.json" not in hub.files("you/m")


# ---------------------------------------------------------------------------- CLI
def test_cli_push_model_and_sae(trained, hub, capsys):
    _, model_dir, sae_dir = trained
    assert main(["push", str(model_dir), "you/m", "--private", "--revision", "v1"]) == 0
    assert "pushed model" in capsys.readouterr().out
    assert hub.named("create_repo")[-1] == ("you/m", {"repo_type": "model", "private": True, "exist_ok": True})
    assert hub.commits()[-1][1]["revision"] == "v1"
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


def test_the_cli_replaces_a_foreign_readme_only_when_told(trained, hub, capsys):
    hub.put("you/r", "README.md", "# My own notes\n")
    assert main(["push", str(trained[1]), "you/r"]) == 2
    assert "overwrite_readme" in capsys.readouterr().err
    assert main(["push", str(trained[1]), "you/r", "--overwrite-readme"]) == 0
    assert front_matter((hub.repo("you/r") / "README.md").read_text())["formal_sae"]["card"] == "model"
    assert main(["push", str(trained[2]), "you/r", "--sae-id", "x", "--overwrite-readme"]) == 2  # models only

"""Checkpoints to and from Hugging Face Hub model repositories (app/hub.py, `avstudio hub push|pull`).

Nothing here reaches the Hub: a push runs everything but the upload call (``app.hub.upload_folder``,
replaced), and a pull reads a folder laid out as the Hub's cache with ``HF_HUB_OFFLINE=1``, so
``snapshot_download`` takes the same code path as online after its (refused) network call.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from app import hub
from app.errors import UserError
from app.settings import REPO_ROOT
from app.testing import open_test_studio
from trainer.checkpoints import load_checkpoint, read_card

SECRET = "hf_test_secret_token_do_not_log_0123456789"
STAR = 3  # the class index the doctored network always predicts ("star" in shapes' labels)


def cli(studio, *args: str, env: dict[str, str] | None = None):
    """``avstudio ARGS`` against ``studio`` (its home, database and plugins), with extra ``env``."""
    from app.cli import cli as avstudio
    from app.hub_cli import hub as hub_group  # TEMPORARY until app/cli.py adds it

    avstudio.commands.setdefault("hub", hub_group)

    full = {"AVSTUDIO_HOME": str(studio.home), "AVSTUDIO_DB_URL": studio.settings.db_url, "AVSTUDIO_DEVICE": "cpu",
            "AVSTUDIO_PLUGINS": "", "AVSTUDIO_EXTRA_PLUGINS": "", **(env or {})}
    saved = {k: os.environ.get(k) for k in full}
    try:
        return CliRunner().invoke(avstudio, list(args), env=full, catch_exceptions=False)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def studio(tmp_path):
    with open_test_studio(tmp_path / "home") as opened:
        yield opened


@pytest.fixture
def uploads(monkeypatch):
    """Replace the upload call (only it): each call's folder contents and arguments are recorded."""
    calls: list[dict] = []

    def fake_upload(folder, repo_id, *, private, token, repo_type="model", commit_message=""):
        files = {p.name: p.read_bytes() for p in Path(folder).iterdir()}
        calls.append({"files": files, "repo_id": repo_id, "private": private, "token": token,
                      "repo_type": repo_type})
        return f"https://huggingface.co/{repo_id}/commit/0123abcd"

    monkeypatch.setattr(hub, "upload_folder", fake_upload)
    return calls


def doctored_run(studio) -> int:
    """A finished s3pool run whose checkpoint ``resnet-max`` is the shipped max-pool ResNet with its last
    layer replaced, so that it answers "star" for every image (a demo using it is easy to recognise)."""
    shipped = load_checkpoint(REPO_ROOT / "assets" / "s3pool" / "resnet-max.safetensors")
    tensors = dict(shipped.tensors)
    tensors["net.fc.weight"] = torch.zeros_like(tensors["net.fc.weight"])
    tensors["net.fc.bias"] = torch.full_like(tensors["net.fc.bias"], -10.0)
    tensors["net.fc.bias"][STAR] = 10.0
    with studio.train_context("s3pool", "classifier", {"steps": 7, "downsample": "max"}) as ctx:
        ctx.log_metrics(7, val_error=0.25, train_loss=1.5)
        ctx.save_checkpoint("resnet-max", tensors, shipped.metadata)
        run_id = ctx.run_id
    return run_id


# --------------------------------------------------------------------------------------------
# push
# --------------------------------------------------------------------------------------------


def readme_arxiv_ids() -> dict[str, str]:
    """plugin → arXiv id, from README.md's plugin table."""
    rows = re.findall(r"^\| `(\w+)` \|.*?arXiv:(\d{4}\.\d{4,5})", (REPO_ROOT / "README.md").read_text(), re.MULTILINE)
    return dict(rows)


def test_every_built_in_method_has_the_arxiv_id_of_the_readme_table(studio):
    ids = readme_arxiv_ids()
    assert set(ids) >= {"blockdrop", "multitask", "s3pool", "vgan"}
    for slug, arxiv in ids.items():
        assert hub.arxiv_id(studio.registry.method(slug)) == arxiv


@pytest.mark.parametrize("ref", ["s3pool/resnet-max", "blockdrop/backbone", "vgan/vgan", "multitask/thin"])
def test_upload_folder_of_a_shipped_checkpoint_file_by_file(studio, tmp_path, ref):
    method, name = ref.split("/")
    source = hub.resolve_source(ref, studio.store, studio.registry, studio.settings.assets_dir)
    assert (source.method, source.name, source.origin) == (method, name, "shipped")
    folder = hub.build_upload_folder(source, tmp_path / "up", "someone/studio-model", studio.registry)
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{name}.safetensors", f"{name}.json", "README.md"])
    shipped = REPO_ROOT / "assets" / method / f"{name}.safetensors"
    assert (folder / f"{name}.safetensors").read_bytes() == shipped.read_bytes()
    assert json.loads((folder / f"{name}.json").read_text()) == read_card(shipped)  # the studio's card, as it is

    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == hub.LIBRARY_NAME
    assert f"arxiv:{readme_arxiv_ids()[method]}" in data["tags"]
    assert data["datasets"] == ["shapes" if method != "multitask" else "persons"]
    assert data["pipeline_tag"] == ("unconditional-image-generation" if method == "vgan" else "image-classification")
    studio_record = load_checkpoint(shipped).studio
    metrics = {k: v for k, v in studio_record["metrics"].items()}
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) == set(metrics)
    for key, value in metrics.items():
        assert results[key].metric_value == pytest.approx(value, abs=1e-6)
        assert results[key].task_type == data["pipeline_tag"] and results[key].dataset_type == data["datasets"][0]
    assert "model-index" in card.content.split("---")[1]  # the metadata block the Hub reads
    command = hub.train_command(studio_record)
    assert command.startswith(f"avstudio train {method} {studio_record['recipe']} --set ")
    assert command in card.text
    assert f"avstudio hub pull someone/studio-model --slot {method}/{name}" in card.text


def test_the_reproduce_command_sets_the_recorded_config_as_train_reads_it():
    studio_record = {"method": "s3pool", "recipe": "classifier",
                     "config": {"grid_sizes": [16, 8], "augment": False, "lr": 0.05, "name": "a b", "none": None}}
    assert hub.train_command(studio_record) == ("avstudio train s3pool classifier --set grid_sizes=16,8 "
                                                "--set augment=false --set lr=0.05 --set 'name=a b'")
    assert hub.train_command({"method": "s3pool"}) is None


def test_push_a_promoted_slot_through_the_cli_uses_hf_token_and_never_keeps_it(studio, uploads):
    run_id = doctored_run(studio)
    studio.promote(run_id, "resnet-max")
    result = cli(studio, "hub", "push", "s3pool/resnet-max", "someone/s3pool-max", "--private",
                 env={"HF_TOKEN": SECRET})
    assert result.exit_code == 0, result.output
    assert "pushed s3pool/resnet-max (promoted, run" in result.output
    assert "https://huggingface.co/someone/s3pool-max/commit/" in result.output
    [call] = uploads
    assert (call["repo_id"], call["private"], call["token"], call["repo_type"]) == \
        ("someone/s3pool-max", True, SECRET, "model")
    assert set(call["files"]) == {"resnet-max.safetensors", "resnet-max.json", "README.md"}
    readme = call["files"]["README.md"].decode()
    assert "val_error" in readme and "avstudio train s3pool classifier" in readme and "--set steps=7" in readme
    # the token is nowhere but in the upload call: not printed, not in the run store, not in the files sent
    assert SECRET not in result.output
    for path in studio.home.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert not any(SECRET.encode() in content for content in call["files"].values())


def test_push_a_run_checkpoint_by_id(studio, uploads, monkeypatch):
    run_id = doctored_run(studio)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    source = hub.resolve_source(f"{run_id}/resnet-max", studio.store, studio.registry, studio.settings.assets_dir)
    assert (source.origin, source.run_id, source.name) == ("run", run_id, "resnet-max")
    assert hub.resolve_source(str(run_id), studio.store, studio.registry, studio.settings.assets_dir).path == source.path
    hub.push(source, "someone/run-model", studio.registry, studio.home / "work", private=False)
    [call] = uploads
    assert call["private"] is False
    assert load_file(str(source.path)).keys() == load_checkpoint(source.path).tensors.keys()


def test_push_without_hf_token_is_refused_in_one_line(studio, uploads, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    result = cli(studio, "hub", "push", "s3pool/resnet-max", "someone/x", env={"HF_TOKEN": ""})
    assert result.exit_code == 2 and "HF_TOKEN" in result.output and uploads == []


@pytest.mark.parametrize(("ref", "message"), [("s3pool/nothing", "no promoted or shipped checkpoint 'nothing'"),
                                              ("nomethod/x", "unknown method 'nomethod'"),
                                              ("999", "no run 999"),
                                              ("a/b/c", "expected METHOD/SLOT or RUN_ID")])
def test_push_of_what_does_not_exist_says_what_does(studio, ref, message):
    with pytest.raises(UserError, match=re.escape(message)):
        hub.resolve_source(ref, studio.store, studio.registry, studio.settings.assets_dir)


def test_a_pickle_is_never_pushed(studio, tmp_path):
    with studio.train_context("s3pool", "classifier", {"steps": 1}) as ctx:
        path = ctx.run_dir / "resnet-max.safetensors"
        torch.save({"net.fc.bias": torch.zeros(10)}, path)  # a pickle under a safetensors name
        (ctx.run_dir / "resnet-max.json").write_text(json.dumps({"format": 2, "studio": {}, "metadata": {}}))
        studio.store.add_artifact(ctx.run_id, "resnet-max", "checkpoint", str(path))
        run_id = ctx.run_id
    source = hub.resolve_source(str(run_id), studio.store, studio.registry, studio.settings.assets_dir)
    with pytest.raises(UserError, match="not a safetensors checkpoint"):
        hub.build_upload_folder(source, tmp_path / "up", "someone/x", studio.registry)


def test_the_upload_call_creates_the_repository_and_uploads_the_folder_in_one_commit(monkeypatch, tmp_path):
    from huggingface_hub import HfApi

    seen: list[tuple] = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: seen.append(("create", repo_id, kw)))

    class Info:
        commit_url = "https://huggingface.co/o/n/commit/abc"

    def upload(self, **kw):
        seen.append(("upload", kw["repo_id"], kw))
        return Info()

    monkeypatch.setattr(HfApi, "upload_folder", upload)
    assert hub.upload_folder(tmp_path, "o/n", private=True, token=SECRET) == Info.commit_url
    assert seen[0] == ("create", "o/n", {"repo_type": "model", "private": True, "exist_ok": True})
    assert seen[1][2]["folder_path"] == str(tmp_path) and seen[1][2]["repo_type"] == "model"

    def fail(self, repo_id, **kw):
        raise RuntimeError(f"401 Unauthorized for token {SECRET}")

    monkeypatch.setattr(HfApi, "create_repo", fail)
    with pytest.raises(UserError) as refused:
        hub.upload_folder(tmp_path, "o/n", private=False, token=SECRET)
    assert SECRET not in str(refused.value) and "401" in str(refused.value)

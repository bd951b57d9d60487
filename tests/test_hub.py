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
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from app import hub, hub_card
from app.errors import UserError
from app.settings import REPO_ROOT
from app.testing import open_test_studio
from trainer.checkpoints import load_checkpoint, read_card

SECRET = "hf_test_secret_token_do_not_log_0123456789"
STAR = 3  # the class index the doctored network always predicts ("star" in shapes' labels)


@pytest.fixture
def studio(tmp_path):
    with open_test_studio(tmp_path / "home") as opened:
        yield opened


@pytest.fixture
def uploads(monkeypatch):
    """Replace the upload call (only it): each call's folder contents and arguments are recorded."""
    calls: list[dict] = []

    def fake_upload(folder, repo_id, *, private, token, repo_type="model", commit_message="", delete_patterns=None):
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
        assert hub_card.arxiv_id(studio.registry.method(slug)) == arxiv


def test_the_readme_links_each_paper_on_arxiv_and_its_front_matter_tags_the_space():
    import yaml

    text = (REPO_ROOT / "README.md").read_text()
    for slug, arxiv in readme_arxiv_ids().items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{slug}` |"))
        assert f"[arXiv:{arxiv}](https://arxiv.org/abs/{arxiv})" in row
    front = yaml.safe_load(re.match(r"---\n(.*?)\n---\n", text, re.DOTALL).group(1))
    assert front["tags"] and all(isinstance(t, str) for t in front["tags"])
    # `models` lists what AVSTUDIO_HUB_MODELS pulls at start-up; this repository pulls none by default
    assert front.get("models", []) == hub.hub_models({})


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
    assert data["library_name"] == hub_card.LIBRARY_NAME
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
    command = hub_card.train_command(studio_record)
    assert command.startswith(f"avstudio train {method} {studio_record['recipe']} --set ")
    assert command in card.text
    assert f"avstudio hub pull someone/studio-model --slot {method}/{name}" in card.text


def test_the_reproduce_command_sets_the_recorded_config_as_train_reads_it():
    studio_record = {"method": "s3pool", "recipe": "classifier",
                     "config": {"grid_sizes": [16, 8], "augment": False, "lr": 0.05, "name": "a b", "none": None}}
    assert hub_card.train_command(studio_record) == ("avstudio train s3pool classifier --set grid_sizes=16,8 "
                                                "--set augment=false --set lr=0.05 --set 'name=a b'")
    assert hub_card.train_command({"method": "s3pool"}) is None


def test_push_a_promoted_slot_through_the_cli_uses_hf_token_and_never_keeps_it(studio, uploads):
    run_id = doctored_run(studio)
    studio.promote(run_id, "resnet-max")
    result = studio.cli("hub", "push", "s3pool/resnet-max", "someone/s3pool-max", "--private",
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
    result = studio.cli("hub", "push", "s3pool/resnet-max", "someone/x", env={"HF_TOKEN": ""})
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


# --------------------------------------------------------------------------------------------
# pull
# --------------------------------------------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_as_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes], *, revision: str = "main",
                         commit: str = COMMIT) -> Path:
    """Write ``files`` as the Hub's cache holds a downloaded repository: blobs by hash, a snapshot of links to
    them named by the commit, and a ref from the revision to the commit. Returns the snapshot folder."""
    import hashlib

    storage = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        blob = storage / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / revision).write_text(commit)
    return snapshot


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 (read by huggingface_hub at import, so its constant too) and a Hub cache in tmp_path."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def pushed_files(studio, source: str, repo_id: str, uploads) -> dict[str, bytes]:
    result = studio.cli("hub", "push", source, repo_id, env={"HF_TOKEN": SECRET})
    assert result.exit_code == 0, result.output
    return uploads[-1]["files"]


def test_push_then_pull_then_the_demo_uses_the_pulled_checkpoint(tmp_path, uploads, offline):
    """A run's checkpoint pushed from one studio (upload replaced), pulled into a fresh studio from the Hub's
    cache layout (offline), promoted there, and the S3Pool demo's answer comes from it."""
    with open_test_studio(tmp_path / "trainer-home") as origin:
        files = pushed_files(origin, str(doctored_run(origin)), "someone/s3pool-max", uploads)
    lay_out_as_hub_cache(offline, "someone/s3pool-max", files)

    with open_test_studio(tmp_path / "demo-home") as studio:
        shipped = studio.demo_context("s3pool").checkpoint_path("resnet-max")
        result = studio.cli("hub", "pull", "someone/s3pool-max", "--slot", "s3pool/resnet-max")
        assert result.exit_code == 0, result.output
        assert "as s3pool/resnet-max: the s3pool demo now uses" in result.output
        [run] = studio.store.list_runs()
        assert (run.method, run.recipe, run.status) == ("s3pool", "hub-pull", "succeeded")
        assert run.config == {"repo": "someone/s3pool-max", "revision": "main", "commit": COMMIT,
                              "file": "resnet-max.safetensors"}
        assert run.latest_metrics["val_error"] == pytest.approx(0.25)
        ctx = studio.demo_context("s3pool")  # (a demo sees another process's promotion within a second)
        pulled = ctx.checkpoint_path("resnet-max")
        assert pulled != shipped and pulled.is_relative_to(studio.settings.runs_dir / str(run.id))
        assert pulled.read_bytes() == files["resnet-max.safetensors"]
        assert {c.name: c.source for c in ctx.checkpoints()}["resnet-max"] == "promoted"

        blocks = studio.build_demo("s3pool")
        run_fn = next(f for f in blocks.fns.values() if f.api_name == "s3pool_run")
        example = sorted((REPO_ROOT / "assets" / "s3pool" / "examples").glob("*.png"))[0]
        max_top3 = run_fn.fn(str(example), 16, 1)[5]
        confidences = {c["label"]: c["confidence"] for c in max_top3["confidences"]} if "confidences" in max_top3 \
            else max_top3
        assert max(confidences, key=confidences.get) == "star"  # only the doctored network says so

        # pulled again (same commit): promoted again, not copied twice; unpromote brings the shipped one back
        assert studio.cli("hub", "pull", "someone/s3pool-max").exit_code == 0
        assert len(studio.store.list_runs()) == 1
        assert studio.cli("runs", "unpromote", "s3pool", "resnet-max").exit_code == 0
        assert studio.demo_context("s3pool").checkpoint_path("resnet-max") == shipped


def test_pull_reads_the_slot_from_the_card_and_a_revision(studio, uploads, offline):
    files = pushed_files(studio, "s3pool/resnet-s3pool", "someone/s3", uploads)
    lay_out_as_hub_cache(offline, "someone/s3", files, revision="v1", commit="f" * 40)
    done = hub.pull("someone/s3@v1", studio.store, studio.registry, studio.settings.runs_dir)
    assert (done.method, done.slot, done.artifact_name) == ("s3pool", "resnet-s3pool", "resnet-s3pool")
    assert studio.store.get_run(done.run_id).config["revision"] == "v1"
    with pytest.raises(UserError, match="Cannot find an appropriate cached snapshot"):
        hub.pull("someone/s3@v2", studio.store, studio.registry, studio.settings.runs_dir)


@pytest.mark.parametrize("extra", ["pytorch_model.bin", "model.pt", "weights.pkl", "modeling_custom.py",
                                   "sub/loader.py", "state.ckpt", "arrays.npy"])
def test_a_repository_with_pickles_or_code_is_refused(studio, uploads, offline, extra):
    files = pushed_files(studio, "s3pool/resnet-max", "someone/bad", uploads)
    lay_out_as_hub_cache(offline, "someone/bad", {**files, extra: b"\x80\x04 pickled or code"})
    with pytest.raises(UserError, match=rf"refusing to pull someone/bad: it carries pickles or code \({re.escape(extra)}"):
        hub.pull("someone/bad", studio.store, studio.registry, studio.settings.runs_dir)
    assert studio.store.list_runs() == []


def test_custom_code_in_config_json_is_refused(studio, uploads, offline):
    files = pushed_files(studio, "s3pool/resnet-max", "someone/auto", uploads)
    config = json.dumps({"auto_map": {"AutoModel": "modeling.Net"}}).encode()
    lay_out_as_hub_cache(offline, "someone/auto", {**files, "config.json": config})
    with pytest.raises(UserError, match="custom code"):
        hub.pull("someone/auto", studio.store, studio.registry, studio.settings.runs_dir)


def test_online_the_file_list_is_checked_before_anything_is_downloaded(studio, monkeypatch):
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo_id, **kw: ["model.safetensors", "model.bin"])
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda *a, **kw: pytest.fail("downloaded"))
    with pytest.raises(UserError, match=r"carries pickles or code \(model.bin\)"):
        hub.download("someone/mixed")


def test_snapshot_download_is_asked_for_checkpoint_files_only(monkeypatch, tmp_path):
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo_id, **kw: ["a.safetensors", "a.json"])
    asked = {}

    def snapshot_download(repo_id, **kw):
        asked.update(kw, repo_id=repo_id)
        return str(tmp_path)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    assert hub.download("someone/ok", "v2") == tmp_path
    assert asked["allow_patterns"] == ["*.safetensors", "*.json", "README.md"] and asked["revision"] == "v2"


def doctor_card(files: dict[str, bytes], name: str, change) -> dict[str, bytes]:
    card = json.loads(files[f"{name}.json"])
    change(card)
    return {**files, f"{name}.json": json.dumps(card).encode()}


@pytest.mark.parametrize(("change", "slot", "message"), [
    (lambda c: c.update(format=9), None, "format 9; this studio reads formats 1 to 2"),
    (lambda c: c.pop("studio"), None, "needs a 'studio' and a 'metadata' object"),
    (lambda c: c["studio"].update(method="vgan"), "s3pool/resnet-max", "is a vgan checkpoint"),
    (lambda c: None, "s3pool/policy", "s3pool has no checkpoint slot 'policy'"),
    (lambda c: c["metadata"]["net"].update(width=16), None, "cannot promote resnet-max.safetensors of someone/m as "
                                                            "s3pool/resnet-max: not an S3Pool-plugin network"),
])
def test_the_card_and_the_slot_check_refuse_what_cannot_fill_the_slot(studio, uploads, offline, change, slot, message):
    files = doctor_card(pushed_files(studio, "s3pool/resnet-max", "someone/m", uploads), "resnet-max", change)
    lay_out_as_hub_cache(offline, "someone/m", files)
    with pytest.raises(UserError, match=re.escape(message)):
        hub.pull("someone/m", studio.store, studio.registry, studio.settings.runs_dir, slot=slot)
    assert studio.store.list_runs() == [] and not any(studio.settings.runs_dir.iterdir())


def test_a_checkpoint_without_its_card_or_not_safetensors_is_refused(studio, uploads, offline):
    files = pushed_files(studio, "s3pool/resnet-max", "someone/nocard", uploads)
    lay_out_as_hub_cache(offline, "someone/nocard", {"resnet-max.safetensors": files["resnet-max.safetensors"]})
    with pytest.raises(UserError, match="has no studio card"):
        hub.pull("someone/nocard", studio.store, studio.registry, studio.settings.runs_dir, slot="s3pool/resnet-max")
    lay_out_as_hub_cache(offline, "someone/fake", {**files, "resnet-max.safetensors": b"\x80\x04not tensors"})
    with pytest.raises(UserError, match="not a safetensors checkpoint"):
        hub.pull("someone/fake", studio.store, studio.registry, studio.settings.runs_dir)


def test_several_checkpoints_need_a_slot_naming_one(studio, uploads, offline):
    files = {**pushed_files(studio, "s3pool/resnet-max", "someone/two", uploads),
             **pushed_files(studio, "s3pool/resnet-s3pool", "someone/two", uploads)}
    lay_out_as_hub_cache(offline, "someone/two", files)
    with pytest.raises(UserError, match="holds several checkpoints"):
        hub.pull("someone/two", studio.store, studio.registry, studio.settings.runs_dir)
    done = hub.pull("someone/two", studio.store, studio.registry, studio.settings.runs_dir, slot="s3pool/resnet-s3pool")
    assert done.artifact_name == "resnet-s3pool"


def test_models_named_in_avstudio_hub_models_are_pulled_at_start_up(studio, uploads, offline):
    lay_out_as_hub_cache(offline, "someone/max", pushed_files(studio, "s3pool/resnet-max", "someone/max", uploads))
    lay_out_as_hub_cache(offline, "someone/s3", pushed_files(studio, "s3pool/resnet-s3pool", "someone/s3", uploads))
    env = {"AVSTUDIO_HUB_MODELS": "someone/max=s3pool/resnet-max, someone/s3@main ,someone/missing"}
    assert hub.hub_models(env) == ["someone/max", "someone/s3", "someone/missing"]
    lines = hub.pull_at_startup(studio.settings, studio.registry, env)
    assert lines[0].startswith("promoted run") and lines[1].startswith("promoted run")
    assert lines[2].startswith("someone/missing: cannot download someone/missing")  # logged, not fatal
    assert set(studio.store.promotions("s3pool")) == {("s3pool", "resnet-max"), ("s3pool", "resnet-s3pool")}
    assert hub.pull_at_startup(studio.settings, studio.registry, env)[:2] == lines[:2]  # a restart: nothing new
    assert len(studio.store.list_runs()) == 2
    assert hub.pull_at_startup(studio.settings, studio.registry, {"AVSTUDIO_HUB_MODELS": "not a repo"})[0] \
        .startswith("AVSTUDIO_HUB_MODELS: expected a Hub model repository")


def test_the_runs_tab_pushes_a_runs_checkpoint_gated_like_promotion(studio, uploads, monkeypatch):
    """The Runs tab's push button: the chosen checkpoint artifact, HF_TOKEN, the admin gate, clear errors."""
    import dataclasses

    import gradio as gr

    from app.ui.runs_actions import RunsActions

    run_id = doctored_run(studio)
    artifact = next(a for a in studio.store.artifacts(run_id) if a.kind == "checkpoint")
    settings = dataclasses.replace(studio.settings, enable_training=True, admin_token="s3cret")
    actions = RunsActions(studio.store, studio.registry, settings)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with pytest.raises(gr.Error):
        actions.push_checkpoint(artifact.id, "someone/model", True, "wrong")  # the admin gate
    assert uploads == []
    with pytest.raises(gr.Error, match="OWNER/NAME"):
        actions.push_checkpoint(artifact.id, "no-owner", True, "s3cret")
    with pytest.raises(gr.Error, match="pick a checkpoint"):
        actions.push_checkpoint(None, "someone/model", True, "s3cret")
    message = actions.push_checkpoint(artifact.id, "someone/model", False, "s3cret")
    assert f"run #{run_id}" in message and "someone/model" in message and SECRET not in message
    (call,) = uploads
    assert call["repo_id"] == "someone/model" and call["private"] is False and call["token"] == SECRET
    assert {f"{artifact.name}.safetensors", "README.md"} <= set(call["files"])
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(gr.Error, match="HF_TOKEN"):
        actions.push_checkpoint(artifact.id, "someone/model", True, "s3cret")

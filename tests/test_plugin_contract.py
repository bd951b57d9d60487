"""The plugin contract end to end, as a third-party author meets it: the test harness, checkpoint
listing and promotion slots, cards, a plugin's own assets, command contexts, threads, and what a
user sees when something fails."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import gradio as gr
import pytest
import torch

from app import api
from app.api import training as training_kit
from app.settings import ASSETS_DIR, REPO_ROOT
from app.testing import open_test_studio
from app.ui import build_app, check_demos

COUNTER = "tests.plugins_for_tests.counter_plugin"


def write_module(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def importable(tmp_path, monkeypatch) -> Path:
    """A directory on sys.path for plugin modules written by a test."""
    directory = tmp_path / "modules"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    return directory


# -- the harness ---------------------------------------------------------------------------------


def test_the_harness_trains_through_the_worker_path_and_promotes(tmp_path):
    with open_test_studio(tmp_path, [COUNTER]) as studio:
        assert studio.plugin(COUNTER).status == "ok" and studio.plugin(COUNTER).methods == ["counter"]
        result = studio.train("counter", "count", {"steps": 3})
        assert result.status == "succeeded", result.error
        assert [step for step, _ in result.metrics["loss"]] == [0, 1, 2] and result.last("loss") == 1 / 3
        assert result.run.commit == subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
                                                   capture_output=True, text=True).stdout.strip()
        assert set(result.checkpoints) == {"model"}
        ctx = studio.demo_context("counter")
        assert isinstance(ctx, api.DemoContext) and ctx.checkpoints() == []
        studio.promote(result.run_id)
        (info,) = ctx.checkpoints()
        assert (info.name, info.source, info.path) == ("model", "promoted", result.checkpoints["model"])
        assert info.card["studio"]["run_id"] == result.run_id
        with pytest.raises(api.ConfigError, match="steps: expected int"):
            studio.train("counter", "count", {"steps": "many"})


def test_the_harness_interrupts_a_run_and_resumes_it(tmp_path):
    with open_test_studio(tmp_path, [COUNTER]) as studio:
        assert studio.plugin(COUNTER).source == "extra"
        killed = studio.train("counter", "count", {"steps": 6}, interrupt_after=4)
        assert killed.status == "interrupted" and killed.last("counted") == 2
        resumed = studio.resume(killed.run_id)
        assert resumed.status == "succeeded" and resumed.run.latest_metrics["final_step"] == 6
        assert resumed.metrics["start_step"][-1] == (3, 3.0)  # continued after the last checkpoint
        with pytest.raises(api.UserError, match="only failed, cancelled, interrupted runs can resume"):
            studio.resume(killed.run_id)


def test_a_failure_inside_train_context_fails_the_run(tmp_path):
    with open_test_studio(tmp_path, [COUNTER]) as studio:
        with pytest.raises(RuntimeError), studio.train_context("counter", "count") as ctx:
            raise RuntimeError("broke while testing")
        assert studio.result(ctx.run_id).status == "failed"


def test_a_command_gets_a_one_line_error_when_a_checkpoint_is_missing(tmp_path):
    with open_test_studio(tmp_path) as studio:
        with pytest.raises(api.UserError, match="no checkpoint 'blockdrop/nothing'"):
            studio.command_context().load_checkpoint("blockdrop/nothing")


def test_the_harness_gives_a_real_train_context(tmp_path):
    with open_test_studio(tmp_path, [COUNTER]) as studio:
        with studio.train_context("counter", "count") as ctx:
            assert isinstance(ctx, api.TrainContext)
            ctx.log_metrics(1, loss=0.5)
            ctx.save_checkpoint("model", {"step": torch.tensor([1])}, {"note": "by hand"})
        result = studio.result(ctx.run_id)
        assert result.metrics["loss"] == [(1, 0.5)] and result.status == "succeeded"
        assert training_kit.load_checkpoint(result.checkpoints["model"]).metadata == {"note": "by hand"}


def test_the_harness_resumes_a_run(tmp_path):
    with open_test_studio(tmp_path, [COUNTER]) as studio:
        failed = studio.train("counter", "count", {"steps": 5, "fail_at": 3})
        assert failed.status == "failed" and failed.error == "train: RuntimeError: boom at step 3"
        run_id = studio.store.enqueue("counter", "count", {"steps": 3})
        studio.store.request_cancel(run_id)  # cancelled while queued
        resumed = studio.resume(run_id)
        assert resumed.status == "succeeded" and resumed.run.resume_count == 1
        assert resumed.run.latest_metrics["final_step"] == 3 and resumed.last("counted") == 2


# -- cards ---------------------------------------------------------------------------------------


def test_plugin_metadata_never_overwrites_the_studio_record(tmp_path):
    with open_test_studio(tmp_path, [COUNTER]) as studio:
        with studio.train_context("counter", "count", {"steps": 2}) as ctx:
            path = ctx.save_checkpoint("model", {"step": torch.tensor([0])}, {"run_id": 999, "config": "mine"})
        checkpoint = training_kit.load_checkpoint(path)
        assert checkpoint.studio["run_id"] == ctx.run_id and checkpoint.studio["config"]["steps"] == 2
        assert checkpoint.metadata == {"run_id": 999, "config": "mine"}
        assert checkpoint.card["format"] == 2


def test_old_flat_cards_of_the_shipped_assets_still_load():
    checkpoint = training_kit.load_checkpoint(ASSETS_DIR / "blockdrop" / "policy-g1.safetensors")
    assert checkpoint.metadata["gamma"] == 1.0 and checkpoint.studio["method"] == "blockdrop"


def test_a_pickled_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"weights": Payload()}, tmp_path / "evil.safetensors")
    with pytest.raises(ValueError, match="not a safetensors checkpoint"):
        training_kit.load_checkpoint(tmp_path / "evil.safetensors")
    assert not marker.exists()


# -- checkpoint listing and promotion slots --------------------------------------------------------


def _blockdrop_artifact(studio, name: str, source: str = "policy-g1", gamma: float | None = None) -> int:
    """A BlockDrop run whose checkpoint ``name`` is a copy of a shipped one (its card's γ set to ``gamma``)."""
    run_id = studio.store.enqueue("blockdrop", "finetune", {})
    target = studio.settings.runs_dir / str(run_id) / f"{name}.safetensors"
    target.parent.mkdir(parents=True)
    shutil.copy(ASSETS_DIR / "blockdrop" / f"{source}.safetensors", target)
    card = json.loads((ASSETS_DIR / "blockdrop" / f"{source}.json").read_text())
    if gamma is not None:
        card["metadata"]["gamma"] = gamma
    target.with_suffix(".json").write_text(json.dumps(card))
    studio.store.add_artifact(run_id, name, "checkpoint", str(target))
    studio.store.finish(run_id, "succeeded")
    return run_id


def test_a_promoted_policy_appears_in_the_blockdrop_selector(tmp_path):
    from plugins.blockdrop.demo import BlockDropDemo

    with open_test_studio(tmp_path) as studio:
        demo = BlockDropDemo(studio.demo_context("blockdrop"))
        assert demo.policy_names() == ["policy-g0.5", "policy-g1", "policy-g2"]
        run_id = _blockdrop_artifact(studio, "policy-g0.25", gamma=0.25)
        studio.promote(run_id, "policy-g0.25")
        assert demo.policy_names() == ["policy-g0.25", "policy-g0.5", "policy-g1", "policy-g2"]
        sources = {c.name: c.source for c in studio.demo_context("blockdrop").checkpoints()}
        assert sources["policy-g0.25"] == "promoted" and sources["backbone"] == "shipped"


def test_the_blockdrop_tab_reads_gamma_and_the_networks_from_the_cards_not_the_names(tmp_path):
    from plugins.blockdrop.demo import BlockDropDemo, intro

    with open_test_studio(tmp_path) as studio:
        studio.promote(_blockdrop_artifact(studio, "policy-g9", gamma=0.1), "policy-g9")
        studio.promote(_blockdrop_artifact(studio, "policy-gnew", gamma=1.5), "policy-gnew")
        ctx = studio.demo_context("blockdrop")
        assert BlockDropDemo(ctx).policy_names() == ["policy-g9", "policy-g0.5", "policy-g1", "policy-gnew",
                                                     "policy-g2"]
        shipped = {c.name: c.metadata for c in ctx.checkpoints()}["policy-g1"]  # a strided policy, a ResNet-32
        assert intro(shipped).startswith("A small policy network (three wide stride-2 convolutions) looks at")
        assert "blocks of a ResNet-32 to run" in intro(shipped)
        assert intro({"policy": {"arch": "resnet8"}, "backbone": {"depth": 110}}).startswith(
            "A ResNet-8 policy network looks at the image once and picks which residual blocks of a ResNet-110")


def test_promotion_refuses_undeclared_slots_and_other_architectures(tmp_path):
    with open_test_studio(tmp_path, [COUNTER]) as studio:
        run_id = _blockdrop_artifact(studio, "policy-g1")
        with pytest.raises(api.UserError, match="blockdrop has no checkpoint slot 'best'; its demo reads: "
                                                "backbone, policy-g\\*, policy"):
            studio.promote(run_id, "policy-g1", slot="best")
        counter = studio.train("counter", "count", {"steps": 1})
        fake = studio.store.enqueue("blockdrop", "backbone", {})
        studio.store.add_artifact(fake, "backbone", "checkpoint", str(counter.checkpoints["model"]))
        with pytest.raises(api.UserError, match="cannot promote 'backbone' of run .* as blockdrop/backbone: "
                                                "not a BlockDrop ResNet"):
            studio.promote(fake, "backbone")
        assert studio.store.promotions() == {}
        done = studio.promote(run_id, "policy-g1", slot="policy-g1")
        assert (done.method, done.slot) == ("blockdrop", "policy-g1")


def test_cli_promote_show_unpromote(tmp_path):
    with open_test_studio(tmp_path, [COUNTER]) as studio:
        run = studio.train("counter", "count", {"steps": 2})
        refused = studio.cli("runs", "promote", str(run.run_id), "--slot", "best")
        assert refused.exit_code == 2 and "counter has no checkpoint slot 'best'; its demo reads: model" in refused.output
        promoted = studio.cli("runs", "promote", str(run.run_id))
        assert promoted.exit_code == 0, promoted.output
        shown = studio.cli("runs", "show", str(run.run_id))
        assert "[promoted as counter/model]" in shown.output
        as_json = json.loads(studio.cli("runs", "show", str(run.run_id), "--json").output)
        assert as_json["artifacts"][0]["promoted_as"] == ["counter/model"]
        undone = studio.cli("runs", "unpromote", "counter", "model")
        assert undone.exit_code == 0 and studio.store.promotions() == {}
        again = studio.cli("runs", "unpromote", "counter", "model")
        assert again.exit_code == 2 and "nothing is promoted as counter/model" in again.output


# -- a plugin's own assets ------------------------------------------------------------------------


def test_a_plugin_ships_checkpoints_and_examples_in_its_own_package(tmp_path, importable):
    package = importable / "shipper"
    (package / "assets" / "examples").mkdir(parents=True)
    training_kit.save_checkpoint(package / "assets" / "weights.safetensors", {"w": torch.ones(2)}, {"kind": "mine"})
    (package / "assets" / "examples" / "one.png").write_bytes(b"")
    (package / "__init__.py").write_text(textwrap.dedent("""
        from pathlib import Path
        from app.api import CheckpointSlot, Method, hookimpl

        @hookimpl
        def register_methods(register):
            register(Method(slug="shipper", title="Shipper", paper="-", summary="-",
                            checkpoint_slots=[CheckpointSlot("weights")],
                            assets_dir=Path(__file__).parent / "assets"))
    """))
    with open_test_studio(tmp_path / "home", ["shipper", COUNTER]) as studio:
        ctx = studio.demo_context("shipper")
        assert ctx.assets_dir == package / "assets"
        assert ctx.load_checkpoint("weights").metadata == {"kind": "mine"}
        assert [(c.name, c.source) for c in ctx.checkpoints()] == [("weights", "shipped")]
        assert (ctx.assets_dir / "examples" / "one.png").is_file()
        with studio.train_context("counter", "count") as train_ctx:  # any recipe can load it by reference
            assert train_ctx.load_checkpoint("shipper/weights").tensors["w"].tolist() == [1.0, 1.0]
        assert studio.command_context().load_checkpoint("shipper/weights").path == package / "assets" / "weights.safetensors"


# -- commands ------------------------------------------------------------------------------------


def test_a_command_context_follows_the_global_options(tmp_path):
    with open_test_studio(tmp_path / "home", [COUNTER]) as studio:
        ctx = studio.command_context()
        assert isinstance(ctx, api.CommandContext)
        assert ctx.home == tmp_path / "home" and ctx.device == torch.device("cpu")
        assert [c.name for c in ctx.checkpoints("blockdrop")][:1] == ["backbone"]
        assert len(ctx.dataset("shapes", "val", num_train=8, num_val=8, num_test=8)) == 8


# -- threads -------------------------------------------------------------------------------------


def test_one_thread_setting_reaches_recipes_and_workers(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    write_module(plugins, "threads", """
        from dataclasses import dataclass
        import torch
        from app.api import Method, Recipe, hookimpl

        @dataclass
        class Config:
            pass

        def train(config, ctx):
            return {"threads": torch.get_num_threads()}

        @hookimpl
        def register_methods(register):
            register(Method(slug="threads", title="-", paper="-", summary="-", recipes=[Recipe("run", Config, train)]))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVSTUDIO_")}
    env.update(AVSTUDIO_HOME=str(tmp_path / "home"), AVSTUDIO_PLUGINS="", PYTHONPATH=str(REPO_ROOT),
               AVSTUDIO_PLUGINS_DIR=str(plugins))

    def avstudio(*args, **extra):
        return subprocess.run([sys.executable, "-m", "app.cli", *args], env={**env, **extra}, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=180)

    inline = avstudio("--threads", "1", "train", "threads", "run")
    assert inline.returncode == 0, inline.stderr
    assert "threads = 1" in inline.stdout
    queued = avstudio("train", "threads", "run", "--detach")
    assert queued.returncode == 0, queued.stderr
    worker = avstudio("worker", "--exit-when-idle", AVSTUDIO_THREADS="1")
    assert worker.returncode == 0, worker.stderr
    shown = avstudio("runs", "show", "2")
    assert "threads = 1" in shown.stdout, shown.stdout
    bad = avstudio("--threads", "lots", "runs", "list")
    assert bad.returncode == 2 and "AVSTUDIO_THREADS must be a positive integer" in bad.stderr


# -- failures a user sees --------------------------------------------------------------------------

FAILING_DEMOS = """
    from app.api import Method, UserError, hookimpl

    def build_broken(ctx):
        raise RuntimeError("no widgets today")

    def build_strict(ctx):
        import gradio as gr

        def handler(text):
            raise UserError("that is not a number: " + text)

        gr.Button("go").click(handler, gr.Textbox(), gr.Textbox(), api_name="strict_go")

    @hookimpl
    def register_methods(register):
        register(Method(slug="broken-demo", title="Broken", paper="-", summary="-", build_demo=build_broken))
        register(Method(slug="strict", title="Strict", paper="-", summary="-", build_demo=build_strict))
"""


def test_a_demo_that_fails_to_build_fails_its_plugin_everywhere(tmp_path, importable):
    write_module(importable, "demos_plugin", FAILING_DEMOS)
    with open_test_studio(tmp_path, ["demos_plugin"]) as studio:
        errors = check_demos(studio.settings, studio.registry)
        assert errors == {"broken-demo": "build_demo of broken-demo: RuntimeError: no widgets today"}
        status = studio.plugin("demos_plugin")
        assert status.status == "failed" and status.error == errors["broken-demo"]
        assert "strict" in studio.registry.methods  # its recipes and other demos still work


def test_a_user_error_in_a_demo_is_one_line_for_the_user_and_the_log(tmp_path, importable, caplog):
    write_module(importable, "demos_plugin2", FAILING_DEMOS)
    with open_test_studio(tmp_path, ["demos_plugin2"]) as studio:
        blocks = build_app(studio.settings, studio.registry, studio.store)
        (fn,) = [f.fn for f in blocks.fns.values() if f.api_name == "strict_go"]
        with caplog.at_level(logging.INFO, logger="avstudio.ui"), pytest.raises(gr.Error) as info:
            fn("seven")
        assert info.value.message == "that is not a number: seven"
        assert info.value.print_exception is False  # Gradio prints no traceback for it
        lines = [r for r in caplog.records if "that is not a number" in r.getMessage()]
        assert len(lines) == 1 and "\n" not in lines[0].getMessage() and lines[0].exc_info is None


def test_an_unknown_method_after_a_plugin_failed_says_why(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    write_module(plugins, "edges", "import numpyy\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVSTUDIO_")}
    env.update(AVSTUDIO_HOME=str(tmp_path / "home"), AVSTUDIO_PLUGINS="", PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-m", "app.cli", "--plugins-dir", str(plugins), "train", "edges", "fit"],
                            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown method 'edges'" in result.stderr
    assert "edges (import: ModuleNotFoundError: No module named 'numpyy')" in result.stderr
    selected = subprocess.run([sys.executable, "-m", "app.cli", "plugins", "--no-demos"],
                              env={**env, "AVSTUDIO_PLUGINS": "not-installed"}, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)
    assert selected.returncode == 1 and "not-installed" in selected.stderr


def test_help_config_shows_choices_and_ranges(tmp_path):
    with open_test_studio(tmp_path) as studio:
        shown = studio.cli("train", "blockdrop", "finetune", "--help-config")
        assert shown.exit_code == 0, shown.output
        row = next(line for line in shown.output.splitlines() if line.startswith("train_forward"))
        assert "one of: skip, masked" in row
        epochs = next(line for line in shown.output.splitlines() if line.startswith("epochs"))
        assert "≥ 1" in epochs


def test_datasets_show_passes_dataset_options(tmp_path):
    from PIL import Image

    for split, cls in (("train", "cat"), ("train", "dog"), ("val", "cat"), ("test", "dog")):
        (tmp_path / "images" / split / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10, 10), (200, 10, 10)).save(tmp_path / "images" / split / cls / "a.png")
    with open_test_studio(tmp_path / "home") as studio:
        out = tmp_path / "grid.png"
        shown = studio.cli("datasets", "show", "imagefolder", "-o", f"path={tmp_path / 'images'}", "-o", "size=16",
                           "--out", str(out))
        assert shown.exit_code == 0, shown.output
        assert Image.open(out).size[0] > 16
        missing = studio.cli("datasets", "show", "imagefolder")
        assert missing.exit_code == 2 and "needs the option path=DIR" in missing.output


def test_the_blockdrop_selector_refreshes_when_opened(tmp_path):
    from plugins.blockdrop.demo import BlockDropDemo

    with open_test_studio(tmp_path) as studio:
        blocks = studio.build_demo("blockdrop")
        (focus,) = [f for f in blocks.fns.values() if f.api_name == "blockdrop_policies"]
        demo = BlockDropDemo(studio.demo_context("blockdrop"))
        studio.promote(_blockdrop_artifact(studio, "policy-g0.25", gamma=0.25), "policy-g0.25")
        update = demo.refresh_policy_choices("policy-g2")
        assert update["choices"] == ["policy-g0.25", "policy-g0.5", "policy-g1", "policy-g2"]
        # the value is left alone: a γ picked before this answer arrived is not put back to the one held
        assert "value" not in update
        assert demo.refresh_policy_choices("policy-g7")["value"] == "policy-g1"  # gone: the default
        assert [c._id for c in focus.inputs] == [c._id for c in focus.outputs]  # the selector itself

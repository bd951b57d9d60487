"""The Gradio shell: handlers as plain functions over a temporary run store, the built Blocks, one launch."""

from __future__ import annotations

import dataclasses
import time

import gradio as gr
import numpy as np
import pytest
import torch

from app import api
from app.plugin_manager import PluginStatus, Registry, load_registry
from app.settings import Settings
from app.testing import free_port as _free_port
from app.ui import _asset_paths, build_app, launch
from app.ui.curves import PANEL_H, PANEL_W, TOP
from app.ui.datasets_tab import DatasetActions
from app.ui.plugins_tab import plugins_table
from app.ui.runs_actions import RunsActions
from tests.pixels import colour_pixels
from trainer.checkpoints import save_checkpoint
from trainer.records import MetricPoint

COUNTER_PLUGIN = "tests.plugins_for_tests.counter_plugin"


@pytest.fixture(autouse=True)
def _quiet_gradio(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-tmp"))


@dataclasses.dataclass
class FancyConfig:
    mode: str = api.config_field("fast", "how to run", choices=("fast", "slow"))
    verbose: bool = api.config_field(False, "print more")
    name: str = api.config_field("x", "a label")


def _broken_demo(ctx: api.DemoContext) -> None:
    gr.Markdown("half built")
    raise RuntimeError("the demo could not find its weights")


def make_registry(*, with_broken: bool = False) -> Registry:
    """The counter test plugin, a method with every kind of config field, a failed plugin, optionally a broken demo."""
    registry = load_registry(plugins="", extra_plugins=(COUNTER_PLUGIN,))
    registry.methods = {"counter": registry.methods["counter"]}  # the built-in demos are tested by their plugins
    registry.methods["fancy"] = api.Method(slug="fancy", title="Fancy", paper="-", summary="form fields",
                                           recipes=[api.Recipe("go", FancyConfig, train=lambda c, ctx: None)])
    registry.plugins.append(PluginStatus(name="broken_import", source="plugins-dir", status="failed",
                                         error="ImportError: no module named nowhere"))
    if with_broken:
        registry.methods["broken"] = api.Method(slug="broken", title="Broken", paper="-", summary="fails",
                                                build_demo=_broken_demo)
    return registry


@pytest.fixture
def settings(avstudio_home, tmp_path, store_url) -> Settings:
    return Settings(home=avstudio_home, db_url=store_url, assets_dir=tmp_path / "assets", enable_training=True)


@pytest.fixture
def actions(store, settings) -> RunsActions:
    return RunsActions(store, make_registry(), settings)


def _components(demo: gr.Blocks) -> dict[str, dict]:
    """The built components by elem_id, as the browser receives them."""
    return {c["props"]["elem_id"]: c for c in demo.config["components"] if c.get("props", {}).get("elem_id")}


def _api_names(demo: gr.Blocks) -> set[str]:
    return {d["api_name"] for d in demo.config["dependencies"] if d.get("api_visibility") == "public"}


# -- handlers ------------------------------------------------------------------------------------

def test_runs_list_shows_runs_with_progress_and_metrics(actions, store):
    run_id = store.enqueue("counter", "count", {"steps": 3}, device="cpu")
    store.set_progress(run_id, 0.25, "step 1")
    store.log_metrics(run_id, [MetricPoint(1, "loss", 0.5, time.time())])
    table = actions.runs_list()
    row = table[table["id"] == run_id].iloc[0]
    assert (row["method"], row["recipe"], row["status"], row["device"]) == ("counter", "count", "queued", "cpu")
    assert row["progress %"] == pytest.approx(25.0) and row["latest metrics"] == "loss=0.5"
    assert actions.run_choices()[0][1] == run_id


def test_run_metrics_and_detail(actions, store, tmp_path):
    run_id = store.enqueue("counter", "count", {"steps": 3})
    store.log_metrics(run_id, [MetricPoint(s, k, v, time.time()) for s, k, v in
                               [(0, "loss", 1.0), (1, "loss", 0.6), (2, "loss", 0.3), (2, "acc", 0.9)]])
    frame = actions.run_metrics(run_id, "loss")
    assert list(frame.columns) == ["step", "value", "key"]
    assert frame["step"].tolist() == [0, 1, 2] and frame["value"].tolist() == pytest.approx([1.0, 0.6, 0.3])
    assert len(actions.run_metrics(run_id, None)) == 4 and set(actions.metric_keys(run_id)) == {"loss", "acc"}
    assert actions.run_metrics(None, None).empty
    assert actions.metrics_table(run_id, "loss") == {"headers": ["step", "value", "key"],
                                                     "data": [[0, 1.0, "loss"], [1, 0.6, "loss"], [2, 0.3, "loss"]]}
    # drawn: a panel per metric (two side by side), one for the metric picked, nothing for no run
    both, one = actions.run_curves(run_id, None), actions.run_curves(run_id, "loss")
    assert both.size == (2 * PANEL_W, TOP + PANEL_H) and one.size == (PANEL_W, TOP + PANEL_H)
    assert colour_pixels(one) > 100 and actions.run_curves(None, None) is None

    artifact = store.add_artifact(run_id, "model", "checkpoint", str(tmp_path / "m.safetensors"))
    store.promote("counter", "model", artifact)
    detail = actions.run_detail(run_id)
    assert detail["config"] == {"steps": 3} and detail["latest_metrics"] == {"loss": pytest.approx(0.3),
                                                                             "acc": pytest.approx(0.9)}
    assert detail["artifacts"][0]["promoted_as"] == "counter/model"
    with pytest.raises(gr.Error, match="999"):
        actions.run_detail(999)


def test_the_curves_are_drawn_again_only_when_the_run_logged_more(actions, store):
    """The Runs tab polls every 2 s: the same picture until the run logs another point."""
    run_id = store.enqueue("counter", "count", {"steps": 3})
    store.log_metrics(run_id, [MetricPoint(s, "loss", 1.0 / (s + 1), time.time()) for s in range(3)])
    one = actions.run_curves(run_id, "loss")
    assert actions.run_curves(run_id, "loss") is one and actions.run_curves(str(run_id), "loss") is one
    store.log_metrics(run_id, [MetricPoint(3, "loss", 0.2, time.time())])
    assert actions.run_curves(run_id, "loss") is not one


def test_compare_runs_builds_one_frame_with_a_run_column(actions, store):
    ids = [store.enqueue("counter", "count", {}) for _ in range(2)]
    for n, run_id in enumerate(ids):
        store.log_metrics(run_id, [MetricPoint(s, "loss", 1.0 / (s + 1 + n), time.time()) for s in range(3)])
    drawn = actions.compare_curves([str(i) for i in ids], "loss")
    assert drawn.size == (PANEL_W, TOP + PANEL_H) and colour_pixels(drawn, "#ff7f0e") > 50  # the second run's line
    assert len(actions.compare_table([str(i) for i in ids], "loss")["data"]) == 6
    frame = actions.compare_runs([str(i) for i in ids], "loss")
    assert list(frame.columns) == ["step", "value", "run"] and len(frame) == 6
    assert frame["run"].nunique() == 2 and all(f"#{i} " in " ".join(frame["run"].unique()) for i in ids)
    assert actions.compare_keys(ids) == ["loss"]
    with pytest.raises(gr.Error, match="pick a metric"):
        actions.compare_runs(ids, "")


def test_queue_run_validates_and_types_the_config(actions, store):
    run_id = actions.queue_run("counter", "count", '{"steps": "7", "sleep_s": 0.5}', "cpu")
    run = store.get_run(run_id)
    assert (run.status, run.device) == ("queued", "cpu")
    assert {"steps": 7, "sleep_s": 0.5, "fail_at": -1}.items() <= run.config.items()
    assert store.get_run(actions.queue_run("counter", "count", {"steps": 2.0})).config["steps"] == 2
    with pytest.raises(gr.Error, match="steps: expected int"):
        actions.queue_run("counter", "count", {"steps": "many"})
    with pytest.raises(gr.Error, match="valid keys: steps, sleep_s, fail_at"):
        actions.queue_run("counter", "count", {"stepz": 1})
    with pytest.raises(gr.Error, match="not one of: fast, slow"):
        actions.queue_run("fancy", "go", {"mode": "medium"})
    with pytest.raises(gr.Error, match="no recipe 'nope'"):
        actions.queue_run("counter", "nope", {})
    with pytest.raises(gr.Error, match="not valid JSON"):
        actions.queue_run("counter", "count", "{steps: 3")
    assert len(store.list_runs()) == 2  # the failures queued nothing


def test_cancel_resume_promote(actions, store, tmp_path):
    run_id = actions.queue_run("counter", "count", {})
    assert "cancelled" in actions.cancel_run(run_id) and store.get_run(run_id).status == "cancelled"
    with pytest.raises(gr.Error):
        actions.cancel_run(run_id)  # already finished
    assert "resume" in actions.resume_run(str(run_id)) and store.get_run(run_id).status == "queued"
    with pytest.raises(gr.Error, match="pick a run"):
        actions.resume_run(None)

    from trainer.checkpoints import save_checkpoint

    save_checkpoint(tmp_path / "m.safetensors", {"step": torch.tensor([3])}, {})
    artifact = store.add_artifact(run_id, "model", "checkpoint", str(tmp_path / "m.safetensors"))
    figure = store.add_artifact(run_id, "curve", "figure", str(tmp_path / "c.png"))
    assert actions.checkpoint_choices(run_id) == [(f"model (artifact {artifact})", artifact)]
    with pytest.raises(gr.Error, match="counter has no checkpoint slot 'best'; its demo reads: model"):
        actions.promote_checkpoint(artifact, "best")  # a slot no demo reads
    assert store.promotions() == {}
    actions.promote_checkpoint(artifact, "")  # the slot defaults to the artifact's name
    assert store.promoted("counter", "model").id == artifact
    assert actions.promotion_choices() == [(f"counter/model ← run #{run_id} model", "counter/model")]
    assert "no longer promoted" in actions.unpromote_checkpoint("counter/model")
    assert store.promotions() == {} and actions.promotion_choices() == []
    with pytest.raises(gr.Error, match="nothing is promoted as counter/model"):
        actions.unpromote_checkpoint("counter/model")
    save_checkpoint(tmp_path / "other.safetensors", {"weights": torch.ones(2)}, {})
    wrong = store.add_artifact(run_id, "other", "checkpoint", str(tmp_path / "other.safetensors"))
    with pytest.raises(gr.Error, match="not a counter checkpoint"):
        actions.promote_checkpoint(wrong, "model")  # another kind of checkpoint
    with pytest.raises(gr.Error, match="not a checkpoint"):
        actions.promote_checkpoint(figure, "x")
    with pytest.raises(gr.Error, match="no checkpoint artifact 12345"):
        actions.promote_checkpoint(12345, "x")


def test_dataset_preview_reports_a_load_failure_instead_of_raising(settings):
    registry = make_registry()

    def missing(split, root, **options):
        raise api.UserError(f"CIFAR-10 files not found under {root}; download them first")

    registry.datasets["real"] = api.DatasetSpec(name="real", title="Real", task="classification",
                                                description="needs files", load=missing, labels=["cat", "dog"])
    image, text = DatasetActions(registry, settings).dataset_preview("real", "train", 8)
    assert image is None and "CIFAR-10 files not found" in text and "cat, dog" in text
    with pytest.raises(gr.Error, match="unknown dataset 'nope'"):
        DatasetActions(registry, settings).dataset_preview("nope", "train", 8)


def test_dataset_preview_draws_a_grid(settings):

    registry = make_registry()
    samples = [(torch.full((3, 16, 16), i / 10), i % 2) for i in range(10)]  # sample i: grey level i/10
    loaded = []

    def load(split, root):
        loaded.append(split)
        return samples

    registry.datasets["tiny"] = api.DatasetSpec(name="tiny", title="Tiny squares", task="classification",
                                                description="grey squares", load=load,
                                                labels=["dark", "light"], image_size=(16, 16))
    image, text = DatasetActions(registry, settings).dataset_preview("tiny", "val", 8)
    assert "Tiny squares" in text and "dark, light" in text and "Could not load" not in text
    assert loaded == ["val"]
    # the first 8 samples in one row of 8 with 2 px white padding, every pixel drawn as a k×k block
    assert image is not None and image.mode == "RGB"
    k = image.height // (2 + 16 + 2)
    assert k >= 1 and image.size == (k * (2 + 8 * (16 + 2)), k * (2 + 16 + 2))
    pixels = np.asarray(image)
    for i in range(8):
        left = k * (2 + i * 18)
        tile = pixels[2 * k:18 * k, left:left + 16 * k]
        assert np.abs(tile.astype(float) - i / 10 * 255).max() <= 0.5, f"tile {i} is not sample {i}'s grey"
        assert (pixels[:, left - 2 * k:left] == 255).all()  # the white padding before it
    assert (pixels[:2 * k] == 255).all() and (pixels[-2 * k:] == 255).all() and (pixels[:, -2 * k:] == 255).all()


def test_dataset_preview_draws_small_samples_at_a_readable_size(settings):
    from app.ui.datasets_tab import GRID_CSS, READABLE_SAMPLE_PX, sample_upscale

    assert READABLE_SAMPLE_PX >= 64
    assert [sample_upscale(s) for s in [(16, 16), (28, 28), (32, 32), (64, 64), (224, 224)]] == [6, 4, 3, 2, 1]
    registry = make_registry()
    samples = [(torch.full((3, 32, 32), i / 10), i % 2) for i in range(10)]
    registry.datasets["small"] = api.DatasetSpec(name="small", title="Small", task="classification",
                                                 description="32 px", load=lambda split, root: samples,
                                                 labels=["a", "b"], image_size=(32, 32))
    image, _ = DatasetActions(registry, settings).dataset_preview("small", "val", 8)
    assert image.height >= 32 * 3 and image.width >= 8 * 32 * 3  # each 32 px sample drawn ≥ 96 px
    assert "#dataset-grid img" in GRID_CSS and "image-rendering: pixelated" in GRID_CSS


def test_datasets_tab_opens_on_the_first_builtin_dataset(settings):
    from app.ui.datasets_tab import default_dataset

    registry = make_registry()
    assert sorted(registry.datasets)[0] != "shapes" and not registry.datasets[sorted(registry.datasets)[0]].builtin
    assert default_dataset(registry) == "shapes" == next(n for n, s in registry.datasets.items() if s.builtin)
    external = {n: dataclasses.replace(s, builtin=False) for n, s in registry.datasets.items()}
    registry.datasets = external
    assert default_dataset(registry) == sorted(external)[0]  # no built-in: the first by name
    registry.datasets = {"zeta": dataclasses.replace(external["shapes"], name="zeta", builtin=True), **external}
    assert default_dataset(registry) == "zeta"
    registry.datasets = {}
    assert default_dataset(registry) is None


def test_datasets_tab_previews_its_default_on_page_load_not_at_build(store, settings):
    registry = make_registry()
    loaded = []
    samples = [(torch.full((3, 32, 32), i / 40), i % 2) for i in range(40)]

    def load(split, root, **options):
        loaded.append(split)
        return samples

    registry.datasets["shapes"] = dataclasses.replace(registry.datasets["shapes"], load=load)
    demo = build_app(settings, registry, store)
    assert loaded == []  # building the app computed no preview
    components = _components(demo)
    assert components["dataset-select"]["props"]["value"] == "shapes"
    assert components["dataset-split"]["props"]["value"] == "val"
    assert components["dataset-grid"]["props"].get("value") is None
    grid, info = components["dataset-grid"]["id"], components["dataset-info"]["id"]
    loads = [d for d in demo.config["dependencies"]
             if any(t[1] == "load" for t in d["targets"]) and d["outputs"] == [grid, info]]
    assert len(loads) == 1, "the Datasets tab must draw its preview when the page loads"
    assert loads[0]["api_name"] == "dataset_preview_on_load"
    fn = demo.fns[loads[0]["id"]]
    image, text = fn.fn(*[c.value for c in fn.inputs])  # what the page load runs
    assert loaded == ["val"] and image is not None and image.width >= 8 * 32 * 3
    assert "Shapes" in text and "Could not load" not in text


# -- the built app -------------------------------------------------------------------------------

def test_training_controls_only_when_enabled(store, settings):
    registry = make_registry()
    on = build_app(settings, registry, store)
    components = _components(on)
    assert {"queue-button", "cancel-button", "resume-button", "promote-button"} <= set(components)
    assert "training-disabled" not in components
    assert {"queue_run", "cancel_run", "resume_run", "promote_checkpoint"} <= _api_names(on)
    # the form is generated from the recipe config dataclasses
    steps, sleep_s = components["cfg-counter-count-steps"], components["cfg-counter-count-sleep_s"]
    assert steps["type"] == "number" and steps["props"]["precision"] == 0 and steps["props"]["value"] == 5
    helps = {d["name"]: d["help"] for d in api.config_fields(registry.recipe("counter", "count").config_cls)}
    assert sleep_s["type"] == "number" and steps["props"]["info"] == helps["steps"]
    assert components["cfg-fancy-go-mode"]["type"] == "dropdown"
    assert components["cfg-fancy-go-verbose"]["type"] == "checkbox"
    assert components["cfg-fancy-go-name"]["type"] == "textbox"
    # the Queue button sends the chosen recipe's fields, typed, to the store
    queue = next(f for f in on.fns.values() if f.name == "queue_from_form")
    values = [9 if c.elem_id == "cfg-counter-count-steps" else c.value for c in queue.inputs[3:]]
    message, _ = queue.fn("counter", "count", "cpu", *values)
    run = store.list_runs()[0]
    assert f"#{run.id}" in message and run.config["steps"] == 9 and run.config["fail_at"] == -1

    disabled = dataclasses.replace(settings, enable_training=False)
    off = build_app(disabled, make_registry(), store)
    components = _components(off)
    assert "training-disabled" in components and "AVSTUDIO_ENABLE_TRAINING=1" in components[
        "training-disabled"]["props"]["value"]
    assert not {"queue-button", "cancel-button", "promote-button", "cfg-counter-count-steps"} & set(components)
    assert not {"queue_run", "cancel_run", "resume_run", "promote_checkpoint"} & _api_names(off)
    assert {"runs_list", "run_detail", "run_metrics", "compare_runs", "dataset_preview",
            "plugins_list"} <= _api_names(off)


def test_a_change_of_the_run_picker_keeps_the_checkpoint_and_metric_picked_choosing_a_run_drops_them(
        store, settings, tmp_path):
    """Gradio also fires the run picker's change when nothing a user sees changed (the runs' labels were
    re-sent): a checkpoint picked just before must survive it, or Promote gets none (CI's browser test).
    Choosing a run (in the picker, the table, or by queueing one) starts its pickers afresh."""
    demo = build_app(settings, make_registry(), store)
    ids = {name: c["id"] for name, c in _components(demo).items()}
    run_id = store.enqueue("counter", "count", {}, device="cpu")
    artifact = store.add_artifact(run_id, "model", "checkpoint", str(tmp_path / "m.safetensors"))
    store.log_metrics(run_id, [MetricPoint(1, "loss", 1.0, 0.0)])

    def events(trigger: tuple[str, str] | None, output: str) -> list[dict]:
        return [d for d in demo.config["dependencies"] if d["outputs"] == [ids[output]]
                and (trigger is None or [ids[trigger[0]], trigger[1]] in [list(t) for t in d["targets"]])]

    for output, choices in (("promote-artifact", [(f"model (artifact {artifact})", artifact)]),
                            ("metric-select", ["loss"])):
        changed = events(("run-select", "change"), output)
        assert len(changed) == 1
        update = demo.fns[changed[0]["id"]].fn(run_id)
        assert update["choices"] == choices and "value" not in update  # re-listed, the pick left alone
        chosen = events(("run-select", "select"), output)
        assert len(chosen) == 1 and demo.fns[chosen[0]["id"]].fn(run_id) == {"__type__": "update",
                                                                             "choices": choices, "value": None}
        # after a row of the table and after the Queue button: chained events (no trigger of their own)
        follow_ups = [d for d in events(None, output) if d["trigger_after"] is not None]
        after = {demo.fns[d["trigger_after"]].name for d in follow_ups}
        assert after == {"_row_run_id", "queue_from_form"}, after
        assert all(demo.fns[d["id"]].fn(run_id)["value"] is None for d in follow_ups)


def test_a_failing_demo_leaves_the_app_up_and_is_listed(store, settings):
    registry = make_registry(with_broken=True)
    demo = build_app(settings, registry, store)
    assert "weights" in demo.studio_demo_errors["broken"]
    assert "demo-error-broken" in _components(demo)
    tabs = [c["props"].get("label") for c in demo.config["components"] if c["type"] == "tabitem"]
    assert tabs[:3] == ["Counter", "Fancy", "Broken"] and tabs[-4:] == ["Runs", "Datasets", "Plugins", "About"]
    table = plugins_table(registry, demo.studio_demo_errors)
    failed = table[table["status"] == "failed"]
    assert set(failed["error"]) == {"ImportError: no module named nowhere",
                                    "build_demo of broken: RuntimeError: the demo could not find its weights"}


def test_gradio_may_serve_the_outermost_asset_directories_only(settings, tmp_path):
    """Gradio resolves every allowed path for each file it sends: a directory inside another is not listed."""
    registry = make_registry()
    registry.methods["fancy"].assets_dir = settings.assets_dir / "fancy" / "extra"  # inside the assets root
    registry.methods["outside"] = api.Method(slug="outside", title="Outside", paper="-", summary="-",
                                             assets_dir=tmp_path / "package" / "assets")
    assert _asset_paths(settings, registry) == sorted([str(settings.assets_dir.resolve()),
                                                       str((tmp_path / "package" / "assets").resolve())])


def test_launched_app_answers_gradio_client(store, settings, tmp_path, monkeypatch):
    from gradio_client import Client

    monkeypatch.setenv("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1")
    monkeypatch.delenv("GRADIO_ANALYTICS_CACHE_FREQUENCY")  # unset here, restored after the test
    store.enqueue("counter", "count", {"steps": 2})
    demo = launch(settings, make_registry(with_broken=True), port=_free_port(), start_worker=False,
                  prevent_thread_lock=True)
    try:
        # Gradio's monitoring summary (a pandas frame of up to 10,000 events) is rebuilt every 100 events,
        # not after every one
        assert demo._queue.ANAYLTICS_CACHE_FREQUENCY == 100
        client = Client(demo.local_url, verbose=False)
        plugins = client.predict(api_name="/plugins_list")
        names = [row[0] for row in plugins["data"]]
        assert "broken_import" in names and "failed" in [row[4] for row in plugins["data"]]
        runs = client.predict(api_name="/runs_list")
        assert runs["headers"][:4] == ["id", "method", "recipe", "status"]
        assert [row[1:4] for row in runs["data"]] == [["counter", "count", "queued"]]
        run_id = client.predict("counter", "count", '{"steps": 4}', "cpu", api_name="/queue_run")
        assert store.get_run(int(run_id)).config["steps"] == 4
        detail = client.predict(run_id, api_name="/run_detail")  # a run id typed by a script, not picked
        assert (detail["id"], detail["status"], detail["config"]["steps"]) == (run_id, "queued", 4)
        # promoting a checkpoint through the API changes what the running demo tab loads
        assert client.predict(2, api_name="/counter_echo").endswith("checkpoint_step=None")
        path = save_checkpoint(tmp_path / "run" / "model.safetensors", {"step": torch.tensor([7])}, {"step": 7})
        artifact = store.add_artifact(run_id, "model", "checkpoint", str(path))
        assert "'model'" in client.predict(artifact, "", api_name="/promote_checkpoint")
        assert client.predict(2, api_name="/counter_echo") == "value=2 checkpoint_step=7"
    finally:
        demo.close()


def test_server_options_for_local_and_space():
    from app.main import server_options

    assert server_options({}, False) == ("127.0.0.1", 7860, True)
    assert server_options({"SPACE_ID": "me/studio", "PORT": "8080"}, False) == ("0.0.0.0", 8080, False)
    assert server_options({"SPACE_ID": "me/studio"}, True) == ("0.0.0.0", 7860, True)
    env = {"SPACE_ID": "x", "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": "7000", "PORT": "1",
           "AVSTUDIO_NO_WORKER": "1"}
    assert server_options(env, True) == ("127.0.0.1", 7000, False)


def test_python_app_main_serves_and_stops_on_sigterm(avstudio_home):
    """`python app/main.py` from the repo root, as a Space starts it: answers HTTP, exits on SIGTERM."""
    import os
    import signal
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    port = _free_port()
    env = {**os.environ, "SPACE_ID": "test/studio", "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "AVSTUDIO_PLUGINS": ""}
    proc = subprocess.Popen([sys.executable, "app/main.py"], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, status = time.time() + 90, None
        while time.time() < deadline and proc.poll() is None and status is None:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status
            except OSError:
                time.sleep(0.5)
        assert status == 200, proc.stdout.read() if proc.poll() is not None else "no answer in 90 s"
        assert (avstudio_home / "runs.db").is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

"""Safety for a public studio: the web UI's training controls are gated in their handlers (an API call
is refused, not only a hidden button); a pickled checkpoint is refused without running; a bad config
value queues nothing, from the UI or the CLI; and path-like values a visitor sends reach no file outside
the studio's home."""

from __future__ import annotations

import ast
import dataclasses
import hmac
import os
import pickle
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import text

from app import api
from app.demo_context import StudioDemoContext
from app.errors import UserError
from app.plugin_manager import load_registry
from app.promotion import promote_artifact
from app.testing import free_port as _free_port
from app.testing import open_test_studio
from app.ui import build_app, launch
from app.ui.runs_actions import RunsActions
from trainer.checkpoints import load_checkpoint, save_checkpoint
from trainer.context import resolve_checkpoint

COUNTER = "tests.plugins_for_tests.counter_plugin"
REPO = Path(__file__).resolve().parent.parent
TOKEN = "correct horse battery staple"
WRITES = {  # each gated handler and its arguments before the admin token
    "queue_run": ("counter", "count", {"steps": 1}, "cpu"),
    "cancel_run": (1,),
    "resume_run": (1,),
    "promote_checkpoint": (1, "model"),
    "unpromote_checkpoint": ("counter/model",),
}


@pytest.fixture(autouse=True)
def _quiet_gradio(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-tmp"))


@pytest.fixture
def studio(tmp_path, avstudio_home):
    with open_test_studio(avstudio_home, [COUNTER]) as opened:
        yield opened


def _rows(store) -> tuple[int, int]:
    """How many runs (queued jobs included) and params rows the store holds."""
    with store.engine.connect() as connection:
        return tuple(connection.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in ("runs", "params"))


@dataclass
class BoundedConfig:
    epochs: int = api.config_field(2, "epochs", min=1, max=100)
    lr: float = api.config_field(0.1, "learning rate", min=0, max=1)
    mode: str = api.config_field("fast", "speed", choices=("fast", "slow"))
    init: str = api.config_field("", "a checkpoint: METHOD/NAME, run:ID[/NAME] or a path")
    dataset_options: list[str] = api.config_field([], "key=value options of the dataset")


def _read_demo(ctx: api.DemoContext) -> None:
    """A demo with a file upload, wrapped as the built-in demos wrap theirs."""
    from app.images import lenient_upload

    upload = lenient_upload(gr.Image(type="filepath"))
    out = gr.Textbox()
    upload.change(lambda path: f"read {len(Path(path).read_bytes())} bytes", upload, out, api_name="probe_read")


def _small_registry():
    """The counter test plugin, a method with bounded and path-taking fields, a demo that reads an upload."""
    registry = load_registry(plugins="", extra_plugins=(COUNTER,))
    registry.methods = {"counter": registry.methods["counter"]}
    registry.methods["bounded"] = api.Method(slug="bounded", title="Bounded", paper="-", summary="bounded fields",
                                             recipes=[api.Recipe("go", BoundedConfig, train=lambda c, ctx: None)],
                                             build_demo=_read_demo)
    return registry


# -- training and run management from the web UI -----------------------------------------------------


def test_with_training_off_every_web_training_action_is_refused_in_its_handler(studio):
    actions = RunsActions(studio.store, studio.registry, dataclasses.replace(studio.settings, enable_training=False))
    run_id = studio.store.enqueue("counter", "count", {})
    for name, args in WRITES.items():
        with pytest.raises(gr.Error, match="AVSTUDIO_ENABLE_TRAINING=1") as refused:
            getattr(actions, name)(*args, TOKEN)
        assert "\n" not in str(refused.value)
    run = studio.store.get_run(run_id)
    assert _rows(studio.store)[0] == 1 and (run.status, run.cancel_requested) == ("queued", False)
    assert actions.run_detail(run_id)["status"] == "queued"  # reading runs stays open


def test_with_an_admin_token_every_web_training_action_needs_it(studio, monkeypatch):
    settings = dataclasses.replace(studio.settings, admin_token=TOKEN)
    assert TOKEN not in repr(settings)  # settings get logged and printed; the token does not
    actions = RunsActions(studio.store, studio.registry, settings)
    compared = []
    constant_time = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append(a) or constant_time(a, b))
    for name, args in WRITES.items():
        for token in ("", None, "wrong", TOKEN[:-1], TOKEN + " "):
            with pytest.raises(gr.Error, match="needs the admin token"):
                getattr(actions, name)(*args, token)
    assert _rows(studio.store) == (0, 0) and len(compared) == 5 * len(WRITES)

    run_id = actions.queue_run("counter", "count", {"steps": 1}, "cpu", TOKEN)
    assert "cancelled" in actions.cancel_run(run_id, TOKEN)
    assert "resume" in actions.resume_run(run_id, TOKEN)
    path = save_checkpoint(studio.settings.runs_dir / str(run_id) / "model.safetensors", {"step": torch.tensor([1])},
                           {})
    artifact = studio.store.add_artifact(run_id, "model", "checkpoint", str(path))
    assert "Promoted" in actions.promote_checkpoint(artifact, "", TOKEN)
    assert "no longer promoted" in actions.unpromote_checkpoint("counter/model", TOKEN)


def test_the_runs_tab_asks_for_the_token_and_sends_it_with_every_action(studio):
    def components(demo):
        return {c["props"]["elem_id"]: c for c in demo.config["components"] if c.get("props", {}).get("elem_id")}

    demo = build_app(dataclasses.replace(studio.settings, admin_token=TOKEN), _small_registry(), studio.store)
    box = components(demo)["admin-token"]
    assert box["type"] == "textbox" and box["props"]["type"] == "password" and box["props"]["visible"] is True
    gated = {"queue_from_form", "cancel_run", "resume_run", "promote_checkpoint", "unpromote_checkpoint"}
    senders = {f.name for f in demo.fns.values() if any(c._id == box["id"] for c in f.inputs)}
    assert gated <= senders
    queue = next(f for f in demo.fns.values() if f.name == "queue_from_form")
    values = [c.value for c in queue.inputs[3:]]
    with pytest.raises(gr.Error, match="admin token"):
        queue.fn("counter", "count", "cpu", *values)  # the box left empty
    assert _rows(studio.store) == (0, 0)
    message, _ = queue.fn("counter", "count", "cpu", *values[:-1], TOKEN)
    assert "Queued run #1" in message

    plain = components(build_app(studio.settings, _small_registry(), studio.store))
    assert plain["admin-token"]["props"]["visible"] is False  # no token set: nothing to type
    off = components(build_app(dataclasses.replace(studio.settings, enable_training=False), _small_registry(),
                               studio.store))
    assert "admin-token" not in off and "AVSTUDIO_ENABLE_TRAINING=1" in off["training-disabled"]["props"]["value"]


def test_api_calls_through_gradio_client_are_refused_without_the_token(studio):
    from gradio_client import Client

    settings = dataclasses.replace(studio.settings, admin_token=TOKEN)
    demo = launch(settings, _small_registry(), port=_free_port(), start_worker=False, prevent_thread_lock=True)
    try:
        client = Client(demo.local_url, verbose=False)
        for token in ((), ("wrong",)):
            with pytest.raises(Exception, match="needs the admin token"):
                client.predict("counter", "count", '{"steps": 1}', "cpu", *token, api_name="/queue_run")
        assert _rows(studio.store) == (0, 0)
        run_id = client.predict("counter", "count", '{"steps": 1}', "cpu", TOKEN, api_name="/queue_run")
        for endpoint in ("/cancel_run", "/resume_run"):
            with pytest.raises(Exception, match="needs the admin token"):
                client.predict(run_id, "wrong", api_name=endpoint)
        assert studio.store.get_run(run_id).status == "queued" and not studio.store.get_run(run_id).cancel_requested
        assert client.predict(api_name="/runs_list")["data"][0][0] == run_id  # reading stays open
        assert "cancelled" in client.predict(run_id, TOKEN, api_name="/cancel_run")

        # a file input given a server path (not an upload) is refused before the handler reads it
        import httpx

        secret = studio.home.parent / "outside" / "secret.txt"
        secret.parent.mkdir()
        secret.write_text("server secret")
        for path in ("/etc/passwd", str(secret), os.path.relpath(secret), "~/.bashrc", "../../../../etc/passwd"):
            data = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}]}
            event = httpx.post(f"{demo.local_url}gradio_api/call/probe_read", json=data, timeout=30).json()
            answer = httpx.get(f"{demo.local_url}gradio_api/call/probe_read/{event['event_id']}", timeout=30).text
            assert "event: error" in answer and "read " not in answer, (path, answer)
    finally:
        demo.close()


# -- checkpoints carrying pickles -----------------------------------------------------------------------


class _Payload:
    """Creates ``marker`` when unpickled: a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_files(folder: Path, marker: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"step": _Payload(marker)}, folder / "evil.pt")
    torch.save({"step": _Payload(marker)}, folder / "zip-pickle.safetensors")
    (folder / "raw-pickle.safetensors").write_bytes(pickle.dumps({"step": _Payload(marker)}))
    return [folder / "evil.pt", folder / "zip-pickle.safetensors", folder / "raw-pickle.safetensors"]


def test_the_crafted_checkpoints_do_run_code_when_unpickled(tmp_path):
    """The payloads are live: unpickled the unsafe way, each file creates its marker."""
    for n in range(3):
        marker = tmp_path / f"ran-{n}"
        path = _evil_files(tmp_path / f"live-{n}", marker)[n]
        if path.name.startswith("raw-"):
            pickle.loads(path.read_bytes())
        else:
            with open(path, "rb") as file:  # a file object: torch.load reads a .safetensors *path* as safetensors
                torch.load(file, weights_only=False)
        assert marker.exists()


def test_a_pickled_checkpoint_is_refused_by_every_loading_path(studio, tmp_path):
    marker = tmp_path / "pwned"
    with studio.train_context("counter", "count", {"steps": 1}) as ctx:
        run_id = ctx.run_id
        for evil in _evil_files(studio.settings.runs_dir / str(run_id), marker):
            with pytest.raises(ValueError, match="not a safetensors checkpoint"):
                load_checkpoint(evil)
            with pytest.raises(ValueError, match="not a safetensors checkpoint"):
                ctx.load_checkpoint(str(evil))  # a recipe given a path
            studio.store.add_artifact(run_id, "model", "checkpoint", str(evil))
            with pytest.raises(ValueError, match="not a safetensors checkpoint"):
                ctx.load_checkpoint(f"run:{run_id}/model")
            with pytest.raises(UserError, match="not a safetensors checkpoint"):
                studio.command_context().load_checkpoint(str(evil))  # a plugin's CLI command
    for artifact in studio.store.artifacts(run_id, kind="checkpoint"):
        with pytest.raises(UserError, match="cannot promote .*not a safetensors checkpoint"):
            promote_artifact(studio.store, studio.registry, artifact.id, "model")
        studio.store.promote("counter", "model", artifact.id)  # as if promoted before the file was swapped
        with pytest.raises(UserError, match="cannot be loaded.*not a safetensors checkpoint"):
            StudioDemoContext("counter", studio.settings, studio.registry, studio.store).load_checkpoint("model")
        studio.store.unpromote("counter", "model")
    result = studio.cli("runs", "promote", str(run_id), "--name", "model")
    assert result.exit_code != 0 and "not a safetensors checkpoint" in result.output
    # a worker resuming a run whose newest checkpoint was swapped for a pickle
    failed = studio.train("counter", "count", {"steps": 3, "fail_at": 1})
    for evil in _evil_files(studio.settings.runs_dir / str(failed.run_id), marker):
        studio.store.add_artifact(failed.run_id, "model", "checkpoint", str(evil))
        resumed = studio.resume(failed.run_id)
        assert resumed.status == "failed" and "not a safetensors checkpoint" in resumed.error
    assert not marker.exists()


def test_a_built_in_demo_refuses_a_promoted_pickle(studio, tmp_path):
    marker = tmp_path / "pwned"
    run_id = studio.store.enqueue("blockdrop", "backbone", {})
    for evil in _evil_files(studio.settings.runs_dir / str(run_id), marker):
        studio.store.promote("blockdrop", "backbone", studio.store.add_artifact(run_id, evil.stem, "checkpoint",
                                                                                str(evil)))
        blocks = studio.build_demo("blockdrop")
        run = next(f for f in blocks.fns.values() if f.name == "run" and f.api_name == "blockdrop_predict")
        with pytest.raises((UserError, gr.Error), match="cannot be loaded"):
            run.fn(np.zeros((32, 32, 3), np.uint8), "policy-g1")
    assert not marker.exists()


def test_no_code_in_the_repository_unpickles():
    """Every torch.load passes weights_only=True; no pickle.load(s), no np.load(allow_pickle=True)."""
    offenders = []
    for folder in ("app", "trainer", "plugins", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                    continue
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
                keywords = {k.arg: k.value for k in node.keywords}
                safe_torch = isinstance(keywords.get("weights_only"), ast.Constant) and keywords[
                    "weights_only"].value is True
                if ((owner, node.func.attr) == ("torch", "load") and not safe_torch
                        or owner in ("pickle", "dill", "cloudpickle") and node.func.attr in ("load", "loads")
                        or (owner, node.func.attr) == ("np", "load") and "allow_pickle" in keywords
                        and not (isinstance(keywords["allow_pickle"], ast.Constant)
                                 and keywords["allow_pickle"].value is False)):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


# -- config values ---------------------------------------------------------------------------------------

BAD_CONFIGS = [  # method, recipe, key, value as typed on the CLI or sent as JSON text, what the refusal says
    ("blockdrop", "backbone", "epochs", "0", "out of range"),
    ("blockdrop", "backbone", "epochs", "-3", "out of range"),
    ("blockdrop", "backbone", "epochs", "2.5", "expected int"),
    ("blockdrop", "backbone", "epochs", "many", "expected int"),
    ("blockdrop", "backbone", "lr", "nan", "finite"),
    ("blockdrop", "backbone", "lr", "inf", "finite"),
    ("blockdrop", "backbone", "lr", "-0.1", "out of range"),
    ("blockdrop", "backbone", "momentum", "1.5", "out of range"),
    ("blockdrop", "backbone", "flip", "maybe", "true/false"),
    ("blockdrop", "backbone", "depht", "20", "unknown config key"),
    ("blockdrop", "policy", "alpha", "0.2", "out of range"),
    ("s3pool", "classifier", "downsample", "bogus", "not one of"),
]


@pytest.mark.parametrize("method, recipe, key, value, says", BAD_CONFIGS)
def test_a_bad_config_value_queues_nothing_from_the_ui_or_the_cli(studio, method, recipe, key, value, says):
    actions = RunsActions(studio.store, studio.registry, studio.settings)
    with pytest.raises(gr.Error, match=says):
        actions.queue_run(method, recipe, {key: value}, "cpu")
    result = studio.cli("train", method, recipe, "--set", f"{key}={value}", "--detach")
    assert result.exit_code == 2 and says in result.output
    assert _rows(studio.store) == (0, 0)


def test_typed_values_from_the_web_are_checked_too(studio):
    actions = RunsActions(studio.store, studio.registry, studio.settings)
    refused = [
        ({"epochs": 2.5}, "expected an integer"), ({"epochs": True}, "expected int"),
        ({"lr": float("nan")}, "finite"), ({"lr": float("inf")}, "finite"), ({"epochs": [3]}, "expected int"),
        ({"dataset": None}, "expected str"), ({"dataset": {"a": 1}}, "expected str"),
        ({"dataset": ["shapes"]}, "expected str"), ({"dataset": "x" * 5000}, "at most 4096"),
        ('{"lr": NaN}', "finite"), ('{"lr": 1e999}', "finite"), ("[1, 2]", "JSON object"),
    ]
    for config, says in refused:
        with pytest.raises(gr.Error, match=says):
            actions.queue_run("blockdrop", "backbone", config, "cpu")
    for device in ("gpu", "cuda:x", "cuda:0; rm -rf /", "../cpu", "cpu\x00"):
        with pytest.raises(gr.Error, match="unknown device"):
            actions.queue_run("blockdrop", "backbone", {}, device)
    result = studio.cli("train", "blockdrop", "backbone", "--device", "gpu", "--detach")
    assert result.exit_code == 2 and "unknown device" in result.output
    assert _rows(studio.store) == (0, 0)


def test_the_queue_form_refuses_out_of_range_numbers(studio):
    settings = studio.settings
    demo = build_app(settings, _small_registry(), studio.store)
    queue = next(f for f in demo.fns.values() if f.name == "queue_from_form")

    def form(**changes):
        values = []
        for c in queue.inputs[3:-1]:
            name = c.elem_id.rpartition("-")[2] if c.elem_id and c.elem_id.startswith("cfg-bounded-go-") else None
            values.append(changes.get(name, c.value) if name else c.value)
        return queue.fn("bounded", "go", "cpu", *values, "")

    for changes, says in [({"epochs": 0}, "out of range"), ({"epochs": 101}, "out of range"),
                          ({"lr": 1.5}, "out of range"), ({"lr": float("nan")}, "finite"),
                          ({"mode": "warp"}, "not one of"), ({"init": "/etc/passwd"}, "outside the studio's home")]:
        with pytest.raises(gr.Error, match=says):
            form(**changes)
    assert _rows(studio.store) == (0, 0)
    assert "Queued run" in form(epochs=3, lr=0.5)[0]


# -- path-like values ------------------------------------------------------------------------------------


def _path_values(studio, secret: Path) -> list[str]:
    """Values that would reach a file outside the studio's home if taken as a path."""
    return ["../../etc/passwd", "/etc/passwd", "/etc", "~", "~/.ssh/id_rsa", "a\x00b", "blockdrop\x00/x",
            "http://127.0.0.1:9/x.safetensors", "file:///etc/passwd", "run:1/../../x", "..", "../backbone",
            str(secret), os.path.relpath(secret), os.path.relpath(secret, Path.cwd() / "blockdrop"),
            os.path.relpath(secret.with_suffix(""), REPO / "assets" / "blockdrop"),
            "\\..\\..\\etc\\passwd", "x" * 5000]


@pytest.fixture
def secret(tmp_path) -> Path:
    """A valid checkpoint outside the studio's home: a visitor must not be able to load it."""
    return save_checkpoint(tmp_path / "outside" / "secret.safetensors", {"step": torch.tensor([666])}, {})


def test_gated_actions_refuse_refs_and_options_that_leave_the_home(studio, secret):
    actions = RunsActions(studio.store, studio.registry, studio.settings)
    run_id = studio.store.enqueue("blockdrop", "backbone", {})  # so that run:1 exists
    for value in _path_values(studio, secret):
        for method, recipe, key in [("blockdrop", "policy", "backbone"), ("blockdrop", "backbone", "init"),
                                    ("multitask", "wide", "dataset")]:
            with pytest.raises(gr.Error):
                actions.queue_run(method, recipe, {key: value}, "cpu")
        with pytest.raises(gr.Error):
            actions.queue_run("multitask", "wide", {"dataset_options": [f"path={value}"]}, "cpu")
        for handler, args in [("cancel_run", (value,)), ("resume_run", (value,)),
                              ("promote_checkpoint", (value, "backbone")), ("promote_checkpoint", (1, value)),
                              ("unpromote_checkpoint", (f"blockdrop/{value}",)), ("run_detail", (value,)),
                              ("compare_runs", ([value], "loss")), ("compare_curves", ([value], "loss"))]:
            with pytest.raises(gr.Error):
                getattr(actions, handler)(*args)
        assert actions.run_metrics(run_id, value).empty and actions.run_images(run_id) == []
        assert actions.run_curves(run_id, value) is None
    assert _rows(studio.store)[0] == 1
    # what stays allowed from the web: references, and files under the studio's home
    mine = studio.settings.data_dir / "mine"
    for config in [{"backbone": "blockdrop/backbone"}, {"backbone": f"run:{run_id}/model"},
                   {"backbone": str(studio.home / "runs" / "1" / "model.safetensors")}]:
        actions.queue_run("blockdrop", "policy", config, "cpu")
    actions.queue_run("multitask", "wide", {"dataset_options": [f"path={mine}"]}, "cpu")
    assert _rows(studio.store)[0] == 5
    # the CLI's user is on the machine: any file
    result = studio.cli("train", "blockdrop", "policy", "--set", f"backbone={secret}", "--detach")
    assert result.exit_code == 0 and _rows(studio.store)[0] == 6


def test_checkpoint_lookups_refuse_names_that_are_paths(studio, secret):
    lookup = StudioDemoContext("blockdrop", studio.settings, studio.registry, studio.store)
    for value in _path_values(studio, secret):
        if value.startswith("run:") or value.startswith("http") or value.startswith("file:"):
            continue  # no '/'-free name: covered by the checks below
        with pytest.raises(UserError, match="not a checkpoint name"):
            lookup.checkpoint_path(value)
        with pytest.raises(UserError):
            lookup.load_checkpoint(value)
    for ref in ("../backbone", "blockdrop/..", "~x/y", "blockdrop/\x00", "x" * 5000):
        with pytest.raises(ValueError, match="bad checkpoint reference"):
            resolve_checkpoint(ref, studio.store, lambda m: REPO / "assets" / m)


class _FileAudit:
    """Records the files this process opens or lists while ``active`` (a sys audit hook)."""

    def __init__(self) -> None:
        self.active = False
        self.opened: list[tuple[str, bool]] = []  # (path, for writing)
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1] or "", args[2] or 0
            writing = any(m in str(mode) for m in "wax+") or bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            self.opened.append((os.fsdecode(args[0]), writing))
        elif event in ("os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
            self.opened.append((os.fsdecode(args[0]), False))


_AUDIT: _FileAudit | None = None


def _image_value(component: gr.components.Component, tmp_path: Path):
    """A small valid image in the form ``component`` hands its handler."""
    array = np.full((32, 32, 3), 200, np.uint8)
    kind = getattr(component, "type", "numpy")
    if kind == "filepath":
        path = tmp_path / "upload.png"
        Image.fromarray(array).save(path)
        value = str(path)
    else:
        value = Image.fromarray(array) if kind == "pil" else array
    if isinstance(component, gr.ImageEditor):
        return {"background": value, "layers": [], "composite": value}
    return value


def test_path_like_values_in_every_public_text_input_reach_no_outside_file(studio, secret, tmp_path, monkeypatch):
    """Every public and undocumented endpoint of the built studio (all four methods, Runs, Datasets), each of
    its text inputs (dropdowns, radios, text boxes) given path-like values, called past Gradio's own
    checks: each call answers or refuses with a clear message, and no file outside the home is opened or listed."""
    import plugins.blockdrop.demo as blockdrop_demo
    from trainer import checkpoints

    global _AUDIT
    _AUDIT = _AUDIT or _FileAudit()
    read_tensors = checkpoints.load_file  # safetensors opens files in Rust, unseen by the audit hook

    def audited_load_file(path, *args, **kwargs):
        if _AUDIT.active:
            _AUDIT.opened.append((os.fsdecode(path), False))
        return read_tensors(path, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "load_file", audited_load_file)
    _AUDIT.opened.clear()
    _AUDIT.active = True
    checkpoints.load_checkpoint(secret)  # the audit sees a checkpoint load and a plain read
    _AUDIT.active = False
    assert [Path(p) for p, _ in _AUDIT.opened[:2]] == [secret, secret.with_suffix(".json")]
    # the BlockDrop dataset panel answers an unknown policy with the first one's panel: keep that panel small
    monkeypatch.setattr(blockdrop_demo, "PANEL_IMAGES", 16)
    shapes = studio.registry.datasets["shapes"]
    monkeypatch.setitem(studio.registry.datasets, "shapes", dataclasses.replace(
        shapes, load=lambda split, root, **o: shapes.load(split, root, num_train=32, num_val=32, num_test=32, **o)))
    settings = dataclasses.replace(studio.settings, enable_training=False)
    demo = build_app(settings, studio.registry, studio.store)
    visibility = {d["id"]: d.get("api_visibility") for d in demo.config["dependencies"]}
    forbidden = [Path("/etc").resolve(), secret.parent.resolve(), Path("~").expanduser().resolve() / ".ssh"]
    writable = [studio.home.resolve(), tmp_path.resolve()]
    text_inputs = (gr.Dropdown, gr.Radio, gr.Textbox)
    calls, unclear = 0, []
    for fn_id, fn in demo.fns.items():
        if visibility.get(fn_id) == "private" or fn.fn is None or not any(isinstance(c, text_inputs) for c in fn.inputs):
            continue
        defaults = [_image_value(c, tmp_path) if isinstance(c, (gr.Image, gr.ImageEditor)) else c.value
                    for c in fn.inputs]
        for index, component in enumerate(fn.inputs):
            if not isinstance(component, text_inputs):
                continue
            for value in _path_values(studio, secret):
                args = list(defaults)
                args[index] = value
                _AUDIT.opened.clear()
                _AUDIT.active = True
                try:
                    answer = fn.fn(*args)
                    if isinstance(answer, types.GeneratorType):
                        answer = list(answer)
                except (gr.Error, UserError, KeyError) as exc:  # a refusal: one line for the visitor
                    answer = str(exc)
                except Exception as exc:  # a refusal too, but not a clear one
                    answer = str(exc)
                    unclear.append(f"{fn.api_name} input {index} = {value[:30]!r}: {type(exc).__name__}: {exc}"[:200])
                finally:
                    _AUDIT.active = False
                calls += 1
                where = f"{fn.name} ({fn.api_name}) input {index} = {value[:40]!r}"
                assert "root:x:0:0" not in str(answer), where
                for path, writing in _AUDIT.opened:
                    resolved = Path(path).resolve()
                    assert not any(resolved == f or f in resolved.parents for f in forbidden), (where, path)
                    assert resolved != Path("~").expanduser().resolve(), (where, path)
                    if writing:
                        assert any(resolved == w or w in resolved.parents for w in writable), (where, path)
    assert calls > 100 and unclear == []

"""The ``avstudio`` CLI, run as subprocesses (``python -m app.cli``) against a scratch studio home.

Uses the counter test plugin (method "counter", recipe "count": steps, sleep_s, fail_at).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from app.plugin_manager import load_registry
from app.settings import REPO_ROOT, Settings
from app.worker_process import start_background_worker, stop_background_worker
from tests.plugins_for_tests import failing_plugin
from trainer.store import RunStore

COUNTER = "tests.plugins_for_tests.counter_plugin"
FAILING = "tests.plugins_for_tests.failing_plugin"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-home")


@pytest.fixture(scope="module")
def env(home: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AVSTUDIO_")}
    return {**clean, "AVSTUDIO_HOME": str(home), "AVSTUDIO_EXTRA_PLUGINS": COUNTER, "AVSTUDIO_PLUGINS": "",
            "AVSTUDIO_DEVICE": "cpu", "PYTHONPATH": str(REPO_ROOT)}


@pytest.fixture
def store(home: Path):
    opened = RunStore(f"sqlite:///{home / 'runs.db'}")
    yield opened
    opened.close()


def avstudio(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def _queued_id(result: subprocess.CompletedProcess) -> int:
    assert result.returncode == 0, result.stderr
    assert "a worker will pick it up" in result.stdout
    return int(result.stdout.split("queued run ")[1].split()[0])


def test_foreground_train_retries_a_lost_database_for_the_configured_time(env, monkeypatch, tmp_path):
    """AVSTUDIO_DB_RETRY_S reaches `avstudio train`'s run, not only `avstudio worker`'s."""
    from click.testing import CliRunner

    import trainer.execution
    from app import cli

    seen = {}

    def fake_execute_run(*args, **kwargs):
        seen.update(kwargs)
        return "succeeded"

    monkeypatch.setattr(trainer.execution, "execute_run", fake_execute_run)
    for key, value in {**env, "AVSTUDIO_HOME": str(tmp_path), "AVSTUDIO_DB_RETRY_S": "7"}.items():
        if key.startswith("AVSTUDIO_"):
            monkeypatch.setenv(key, value)
    result = CliRunner().invoke(cli.cli, ["train", "counter", "count", "--set", "steps=2"])
    assert seen.get("db_retry_s") == 7.0, result.output


def test_train_inline_then_list_and_show(env, store):
    result = avstudio("train", "counter", "count", "--set", "steps=4", env=env)
    assert result.returncode == 0, result.stderr
    assert "succeeded" in result.stdout and "loss = 0.25" in result.stdout
    assert "counting" in result.stderr  # the tqdm bar
    run = store.list_runs(method="counter", limit=1)[0]
    assert (run.status, run.config["steps"], run.device) == ("succeeded", 4, "cpu")
    assert run.latest_metrics["loss"] == pytest.approx(0.25)

    listed = avstudio("runs", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    row = next(r for r in json.loads(listed.stdout) if r["id"] == run.id)
    assert row["status"] == "succeeded" and row["latest_metrics"]["counted"] == 3
    table = avstudio("runs", "list", "--method", "counter", env=env).stdout.splitlines()
    assert table[0].split() == ["id", "method", "recipe", "status", "device", "host", "created", "metrics"]
    assert any(line.split()[:6] == [str(run.id), "counter", "count", "succeeded", "cpu", socket.gethostname()]
               for line in table[2:])  # the host whose worker (here: `avstudio train` itself) ran it

    shown = avstudio("runs", "show", str(run.id), env=env)
    assert shown.returncode == 0, shown.stderr
    assert "[succeeded]" in shown.stdout and "steps = 4" in shown.stdout and "model (checkpoint)" in shown.stdout
    details = json.loads(avstudio("runs", "show", str(run.id), "--json", env=env).stdout)
    assert details["params"]["steps"] == "4"
    assert Path(details["artifacts"][0]["path"]).is_file()


@pytest.mark.parametrize(("assignment", "message"), [
    ("stepz=3", "Error: unknown config key 'stepz'; valid keys: steps, sleep_s, fail_at, dataset"),
    ("steps=four", "Error: steps: expected int, got 'four'"),
])
def test_bad_config_values_get_a_one_line_error(env, store, assignment, message):
    before = len(store.list_runs())
    result = avstudio("train", "counter", "count", "--set", assignment, env=env)
    assert result.returncode == 2
    assert _one_line_error(result) == message
    assert len(store.list_runs()) == before  # nothing was queued


def test_unknown_method_or_recipe_names_the_valid_ones(env):
    described = avstudio("train", "counter", "count", "--help-config", env=env)
    assert described.returncode == 0, described.stderr
    keys = [line.split()[0] for line in described.stdout.splitlines()[2:]]
    assert keys == ["steps", "sleep_s", "fail_at", "dataset"]
    result = avstudio("train", "nope", "count", env=env)
    assert result.returncode == 2
    assert "valid methods:" in _one_line_error(result) and "counter" in result.stderr
    result = avstudio("train", "counter", "nope", env=env)
    assert result.returncode == 2
    assert _one_line_error(result) == "Error: method 'counter' has no recipe 'nope'; valid recipes: count, stubborn"


def test_a_failing_run_exits_non_zero_with_its_error(env, store):
    result = avstudio("train", "counter", "count", "--set", "fail_at=1", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].endswith("failed: train: RuntimeError: boom at step 1")
    run = store.list_runs(limit=1)[0]
    assert run.status == "failed" and run.error.startswith("train: RuntimeError: boom at step 1")


@pytest.mark.parametrize("kind, message", [("user", failing_plugin.USER_MESSAGE),
                                           ("config", failing_plugin.CONFIG_MESSAGE)])
def test_a_user_error_raised_by_a_recipe_is_one_line(env, store, kind, message):
    """As the docs promise: the CLI shows a UserError's one-line message, never a traceback."""
    result = avstudio("train", "failing", "fit", "--set", f"kind={kind}",
                      env={**env, "AVSTUDIO_EXTRA_PLUGINS": f"{COUNTER},{FAILING}"})
    assert result.returncode == 1
    run = store.list_runs(limit=1)[0]
    assert (run.method, run.status) == ("failing", "failed")
    started, *rest = result.stderr.strip().splitlines()
    assert started.startswith(f"run {run.id}: failing/fit")
    assert rest == [f"Error: run {run.id} failed: {message}"], result.stderr


def test_detach_then_a_worker_runs_it_and_compare(env, store):
    assert avstudio("train", "counter", "count", "--set", "steps=3", env=env).returncode == 0
    first = store.list_runs(limit=1)[0].id
    second = _queued_id(avstudio("train", "counter", "count", "--set", "steps=6", "--detach", env=env))
    assert store.get_run(second).status == "queued"
    worker = avstudio("worker", "--exit-when-idle", env=env)
    assert worker.returncode == 0, worker.stderr
    assert [store.get_run(i).status for i in (first, second)] == ["succeeded", "succeeded"]
    assert store.get_run(second).worker_id != store.get_run(first).worker_id

    table = avstudio("runs", "compare", str(first), str(second), env=env)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line.split()[1:] for line in table.stdout.splitlines()[2:]}
    assert rows["config.steps"] == ["3", "6"]
    assert "config.fail_at" not in rows  # equal values are not differences
    compared = json.loads(avstudio("runs", "compare", str(first), str(second), "--metric", "loss",
                                   "--json", env=env).stdout)
    assert compared["config_differences"] == {"steps": [3, 6]}
    assert compared["metrics"]["loss"] == pytest.approx([1 / 3, 1 / 6])
    bad = avstudio("runs", "compare", str(first), "--metric", "accuracy", env=env)
    assert bad.returncode == 2 and "loss" in _one_line_error(bad)


def _train_inline(env: dict[str, str], store: RunStore, steps: int = 2):
    """A run of its own that succeeded (the module's home is shared: never rely on another test's run)."""
    before = {r.id for r in store.list_runs(method="counter", limit=1000)}
    trained = avstudio("train", "counter", "count", "--set", f"steps={steps}", env=env)
    assert trained.returncode == 0, trained.stderr
    (run,) = [r for r in store.list_runs(method="counter", limit=1000) if r.id not in before]
    assert run.status == "succeeded"
    return run


def test_promote_a_runs_checkpoint(env, store):
    run = _train_inline(env, store)
    result = avstudio("runs", "promote", str(run.id), env=env)
    assert result.returncode == 0, result.stderr
    promoted = store.promoted("counter", "model")
    assert promoted is not None and promoted.run_id == run.id
    assert promoted.path in result.stdout
    other = avstudio("runs", "promote", str(run.id), "--name", "nothing", env=env)
    assert other.returncode == 2
    assert _one_line_error(other) == f"Error: run {run.id} has no checkpoint 'nothing'; checkpoints: model"
    slot = avstudio("runs", "promote", str(run.id), "--slot", "best", env=env)  # a slot no demo reads
    assert slot.returncode == 2
    assert _one_line_error(slot) == "Error: counter has no checkpoint slot 'best'; its demo reads: model"
    assert store.promoted("counter", "best") is None


def test_cancel_a_queued_run_and_unknown_runs(env, store):
    run_id = _queued_id(avstudio("train", "counter", "count", "--detach", env=env))
    result = avstudio("runs", "cancel", str(run_id), env=env)
    assert result.returncode == 0 and f"run {run_id} cancelled" in result.stdout
    assert store.get_run(run_id).status == "cancelled"
    again = avstudio("runs", "cancel", str(run_id), env=env)
    assert again.returncode == 1 and "already finished" in _one_line_error(again)
    resumed = avstudio("runs", "resume", str(run_id), env=env)
    assert resumed.returncode == 0 and "a worker will pick it up" in resumed.stdout
    assert store.get_run(run_id).status == "queued"
    assert avstudio("runs", "cancel", str(run_id), env=env).returncode == 0
    inline = avstudio("runs", "resume", str(run_id), "--inline", env=env)
    assert inline.returncode == 0, inline.stderr
    final = store.get_run(run_id)
    assert (final.status, final.resume_count, final.latest_metrics["counted"]) == ("succeeded", 2, 4)
    finished = avstudio("runs", "resume", str(run_id), env=env)
    assert finished.returncode == 1 and "succeeded" in _one_line_error(finished)
    for command in (["runs", "show", "9999"], ["runs", "cancel", "9999"], ["runs", "promote", "9999"]):
        missing = avstudio(*command, env=env)
        assert missing.returncode == 1
        assert _one_line_error(missing).startswith("Error: no run 9999")


def test_ctrl_c_cancels_an_inline_run(env, store):
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "train", "counter", "count",
                             "--set", "steps=400", "--set", "sleep_s=0.05"],
                            env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        run = None
        while time.monotonic() < deadline:
            runs = [r for r in store.list_runs(status="running") if r.config.get("steps") == 400]
            if runs and runs[0].latest_metrics.get("counted", -1) >= 1:
                run = runs[0]
                break
            time.sleep(0.2)
        assert run is not None, "the inline run did not start"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    final = store.get_run(run.id)
    assert final.status == "cancelled"
    assert final.latest_metrics["counted"] < 399


def test_plugins_json_lists_failures_and_plugin_commands_work(env, tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('broken on purpose')\n")
    (tmp_path / "hello.py").write_text(
        "import click\nfrom app.api import Method, hookimpl\n\n"
        "@hookimpl\ndef register_methods(register):\n"
        "    register(Method(slug='hello', title='Hello', paper='-', summary='hi'))\n\n"
        "@hookimpl\ndef register_commands(cli, ctx):\n"
        "    @cli.command()\n    @click.argument('who')\n"
        "    def greet(who):\n        click.echo(f'hello {who} from {ctx.home.name}')\n\n"
        "    @cli.command()\n    def train():\n        click.echo('hijacked')\n"
    )
    (tmp_path / "badcommands.py").write_text(
        "from app.api import hookimpl\n\n@hookimpl\ndef register_commands(cli):\n    raise ValueError('no commands today')\n"
    )
    result = avstudio("--plugins-dir", str(tmp_path), "plugins", env=env)
    assert result.returncode == 1, result.stderr  # a failed plugin is a failure of `avstudio plugins`
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: 2 plugin(s) failed: badcommands (register_commands: ValueError: no commands today); "
        "broken (import: RuntimeError: broken on purpose)")
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert set(plugins) == {"broken", "hello", "badcommands", COUNTER}  # built-ins hidden without --all
    assert plugins[COUNTER]["source"] == "extra" and plugins[COUNTER]["methods"] == ["counter"]
    assert plugins["broken"]["status"] == "failed" and "broken on purpose" in plugins["broken"]["error"]
    assert plugins["hello"]["status"] == "ok"
    assert plugins["hello"]["hooks"] == ["register_commands", "register_methods"]
    assert plugins["badcommands"]["status"] == "failed"
    assert "register_commands: ValueError: no commands today" == plugins["badcommands"]["error"]
    assert all(set(p) >= {"name", "version", "hooks", "status", "error", "source"} for p in plugins.values())

    everything = json.loads(avstudio("--plugins-dir", str(tmp_path), "plugins", "--all", env=env).stdout)
    builtins = {p["name"]: p["status"] for p in everything if p["source"] == "builtin"}
    assert builtins == {"plugins.datasets": "ok", "plugins.blockdrop": "ok", "plugins.s3pool": "ok", "plugins.vgan": "ok",
                        "plugins.multitask": "ok"}

    greet = avstudio("--plugins-dir", str(tmp_path), "greet", "world", env=env)
    assert greet.returncode == 0, greet.stderr
    assert greet.stdout.strip() == f"hello world from {Path(env['AVSTUDIO_HOME']).name}"
    elsewhere = avstudio("--plugins-dir", str(tmp_path), "--home", str(tmp_path / "other-home"), "greet", "you",
                         env=env)
    assert elsewhere.stdout.strip() == "hello you from other-home"  # the command sees the global options
    # A plugin cannot replace a built-in command.
    kept = avstudio("--plugins-dir", str(tmp_path), "train", "counter", "nope", env=env)
    assert kept.returncode == 2 and "hijacked" not in kept.stdout


def test_datasets_list_matches_the_registry(env):
    result = avstudio("datasets", env=env)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:]}
    registry = load_registry(plugins="")
    assert set(rows) == set(registry.datasets)
    for name, spec in registry.datasets.items():
        assert f" {len(spec.labels)} " in rows[name] and spec.task in rows[name]


def test_global_options_override_the_environment(env, tmp_path):
    other = tmp_path / "other-home"
    result = avstudio("--home", str(other), "runs", "list", env=env)
    assert result.returncode == 0 and "no runs yet" in result.stdout
    assert (other / "runs.db").is_file()
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert avstudio("--db-url", url, "runs", "list", env=env).returncode == 0
    assert (tmp_path / "elsewhere.db").is_file() and not (other / "elsewhere.db").exists()


def test_serve_calls_the_ui_with_the_options(monkeypatch, tmp_path):
    from app import cli, ui

    calls = []
    monkeypatch.setattr(ui, "launch", lambda settings, registry, **kw: calls.append((settings, registry, kw)))
    for name in ("AVSTUDIO_DB_URL", "AVSTUDIO_PLUGINS_DIR", "AVSTUDIO_DATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AVSTUDIO_HOME", str(tmp_path))
    monkeypatch.setenv("AVSTUDIO_PLUGINS", "")
    monkeypatch.setenv("AVSTUDIO_EXTRA_PLUGINS", COUNTER)
    result = CliRunner().invoke(cli.cli, ["serve", "--port", "7999", "--no-worker", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    (settings, registry, options), = calls
    assert options == {"host": "0.0.0.0", "port": 7999, "start_worker": False, "share": False, "mcp": False}
    assert settings.home == tmp_path and "counter" in registry.methods


def test_background_worker_process_runs_queued_work_and_stops(monkeypatch, tmp_path):
    monkeypatch.setenv("AVSTUDIO_EXTRA_PLUGINS", COUNTER)
    monkeypatch.setenv("AVSTUDIO_PLUGINS", "")
    monkeypatch.delenv("AVSTUDIO_DB_URL", raising=False)
    settings = Settings(home=tmp_path / "bg", device="cpu")
    settings.ensure_dirs()
    opened = RunStore(settings.db_url)
    try:
        run_id = opened.enqueue("counter", "count", {"steps": 3, "sleep_s": 0.0, "fail_at": -1, "dataset": "none"})
        proc = start_background_worker(settings)
        try:
            deadline = time.monotonic() + 90
            while opened.get_run(run_id).status in ("queued", "running") and time.monotonic() < deadline:
                time.sleep(0.3)
            assert opened.get_run(run_id).status == "succeeded"
            assert proc.poll() is None  # still waiting for more work
        finally:
            code = stop_background_worker(proc, timeout=20)
        assert proc.poll() is not None and code is not None
        assert stop_background_worker(proc) == code  # idempotent
    finally:
        opened.close()


TINY_DATASET_PLUGIN = '''
import torch
from app.api import DatasetSpec, UserError, hookimpl


def load(split, root, download=False, **options):
    if not download:
        raise UserError("tiny: files missing; pass download=True (avstudio datasets show tiny --download)")
    images = torch.linspace(0, 1, 6 * 3 * 8 * 8).reshape(6, 3, 8, 8)
    return [(images[i], i % 2) for i in range(6)]


@hookimpl
def register_datasets(register):
    register(DatasetSpec(name="tiny", title="Tiny", task="classification", description="six images",
                         load=load, labels=["even", "odd"], image_size=(8, 8)))
'''


def test_datasets_show_writes_a_preview_grid(env, tmp_path):
    plugins_dir = tmp_path / "plugins"
    plugins_dir.mkdir()
    (plugins_dir / "tiny.py").write_text(TINY_DATASET_PLUGIN)
    out = tmp_path / "grid.png"
    missing = avstudio("--plugins-dir", str(plugins_dir), "datasets", "show", "tiny", "--out", str(out), env=env)
    assert missing.returncode == 2 and "--download" in _one_line_error(missing)
    result = avstudio("--plugins-dir", str(plugins_dir), "datasets", "show", "tiny", "--download",
                      "--out", str(out), "-n", "4", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    with Image.open(out) as grid:
        assert grid.format == "PNG"
        assert grid.width > 4 * 8 and grid.height >= 8 and grid.width > 2 * grid.height  # one row of 4

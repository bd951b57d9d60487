"""The repository runs as a Hugging Face Space as it stands: README front matter, requirements.txt that
repeats the tested lock (requirements-lock.txt, within pyproject.toml's ranges), a start-up that loads no
model and queues no run, and the start-up benchmark."""

from __future__ import annotations

import json
import re
import sys
import urllib.request

import pytest
import torch
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from app.settings import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
SPACE_COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}


def front_matter() -> dict:
    text = (REPO_ROOT / "README.md").read_text()
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "README.md must start with the Space's YAML front matter between two '---' lines"
    return yaml.safe_load(match.group(1))


def runtime_requirements() -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, PYPROJECT["project"]["dependencies"])}


def requirement_lines(path: str) -> list[str]:
    """The requirement lines of a requirements file, in order (comments, blank lines and options left out)."""
    kept = [line.split(" #")[0].strip() for line in (REPO_ROOT / path).read_text().splitlines()]
    return [k for k in kept if k and not k.startswith(("#", "-"))]


def space_requirements() -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, requirement_lines("requirements.txt"))}


def pinned_version(requirement: Requirement) -> str | None:
    pins = [s.version for s in requirement.specifier if s.operator == "=="]
    return pins[0] if len(pins) == 1 else None


def test_readme_front_matter_is_a_gradio_space_config():
    config = front_matter()
    assert config["sdk"] == "gradio"
    assert (REPO_ROOT / config["app_file"]).is_file() and config["app_file"] == "app/main.py"
    # the Space runs the gradio CI last passed with (the lock's), and pyproject allows it
    assert config["sdk_version"] == pinned_version(space_requirements()["gradio"]), \
        "set sdk_version to the gradio pinned in requirements.txt (the tested lock)"
    assert config["sdk_version"] in runtime_requirements()["gradio"].specifier
    python = str(config["python_version"])  # a string: YAML would read 3.10 as 3.1
    assert isinstance(config["python_version"], str) and re.fullmatch(r"3\.\d+(\.\d+)?", python)
    # the lock was resolved on the Python the Space runs
    lock_python = re.search(r"on Python (3\.\d+)", (REPO_ROOT / "requirements-lock.txt").read_text())
    assert lock_python and ".".join(python.split(".")[:2]) == lock_python.group(1), \
        "the lock was resolved on another Python than the Space's: refresh it on the Space's Python"
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(python + ".0" * (python.count(".") == 1))
    assert config["title"] and config["emoji"] and {config["colorFrom"], config["colorTo"]} <= SPACE_COLORS
    assert len(config.get("short_description", "")) <= 60  # the Hub refuses a longer one
    assert (REPO_ROOT / "docs" / "hosting.md").is_file()
    assert "(docs/hosting.md)" in (REPO_ROOT / "README.md").read_text()


def test_requirements_txt_is_the_lock_within_pyproject_ranges():
    """The Space installs the tested lock: requirements.txt repeats requirements-lock.txt pin for pin
    (`python .ci/refresh-lock` writes both), so every runtime dependency is pinned inside its range."""
    assert requirement_lines("requirements.txt") == requirement_lines("requirements-lock.txt"), \
        "requirements.txt differs from requirements-lock.txt: run `python .ci/refresh-lock`"
    ours, space = runtime_requirements(), space_requirements()
    for name, wanted in ours.items():
        assert name in space, f"{name}: pyproject.toml depends on it, requirements.txt does not pin it"
        pin = pinned_version(space[name])
        assert pin is not None, f"{name}: {space[name]} is not one exact pin"
        assert wanted.specifier.contains(pin, prereleases=True), f"{name}: {space[name]} is outside {wanted}"


def test_requirements_check_catches_a_drifted_pin(monkeypatch):
    monkeypatch.setitem(PYPROJECT["project"], "dependencies",
                        [*PYPROJECT["project"]["dependencies"][:-1], "click>=99"])
    with pytest.raises(AssertionError, match="click"):
        test_requirements_txt_is_the_lock_within_pyproject_ranges()


def test_start_up_loads_no_checkpoint_builds_no_network_and_queues_no_run(avstudio_home, monkeypatch):
    """The app as a Space starts it (every installed plugin, training off): serving the first page has
    loaded no checkpoint, built no torch module, generated no dataset and created no run."""
    from app import demo_context
    from app.main import server_options
    from app.model_cache import ModelCache
    from app.plugin_manager import registry_from_env
    from app.settings import Settings
    from app.ui import launch
    from benchmarks.startup import free_port, page_tabs
    from trainer import checkpoints
    from trainer.store import RunStore

    seen: list[str] = []

    def record(what, real):
        def recorded(*args, **kwargs):
            seen.append(what)
            return real(*args, **kwargs)
        return recorded

    monkeypatch.setattr(checkpoints, "load_file", record("safetensors load", checkpoints.load_file))
    monkeypatch.setattr(torch, "load", record("torch.load", torch.load))
    monkeypatch.setattr(ModelCache, "get", record("ModelCache.get", ModelCache.get))
    monkeypatch.setattr(demo_context.StudioDemoContext, "load_checkpoint",
                        record("ctx.load_checkpoint", demo_context.StudioDemoContext.load_checkpoint))
    monkeypatch.setattr(torch.nn.Module, "__init__", record("nn.Module built", torch.nn.Module.__init__))

    settings = Settings()
    registry = registry_from_env()
    host, port, start_worker = server_options({"SPACE_ID": "test/studio", "GRADIO_SERVER_NAME": "127.0.0.1",
                                               "GRADIO_SERVER_PORT": str(free_port())}, settings.enable_training)
    assert not start_worker  # a public Space (training off) runs no worker
    demo = launch(settings, registry, host=host, port=port, start_worker=start_worker, prevent_thread_lock=True)
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read().decode()
    finally:
        demo.close()
    assert {m.title for m in registry.methods.values()} <= set(page_tabs(page))
    assert {"blockdrop", "multitask", "s3pool", "vgan"} <= set(registry.methods)
    assert seen == [], f"start-up did work it should leave to the first request: {sorted(set(seen))}"
    assert not any(settings.data_dir.iterdir()) and not any(settings.runs_dir.iterdir())
    store = RunStore(settings.db_url)
    try:
        assert store.list_runs() == []
    finally:
        store.close()


def test_page_tabs_reads_the_config_a_page_embeds():
    from benchmarks.startup import page_tabs

    config = {"components": [{"type": "tabitem", "props": {"label": "BlockDrop"}},
                             {"type": "image", "props": {"label": "Upload"}},
                             {"type": "tabitem", "props": {"label": "Runs"}}]}
    page = f"<html><script>window.gradio_config = {json.dumps(config)};</script></html>"
    assert page_tabs(page) == ["BlockDrop", "Runs"]
    with pytest.raises(ValueError, match="no Gradio config"):
        page_tabs("<html></html>")


def test_startup_benchmark_times_python_app_main_to_a_page_with_every_tab(tmp_path):
    """One timed start of `python app/main.py` from the repo root, with every installed plugin."""
    from benchmarks import startup

    report = json.loads(startup.main(["--runs", "1", "--out", str(tmp_path / "startup.json")]).read_text())
    figures = report["figures"]
    assert report["benchmark"] == "startup" and report["machine"]["cpu_count"] >= 1
    assert figures["runs_s"] == [figures["startup_s"]] and 0 < figures["startup_s"] < 120
    assert figures["startup_min_s"] == figures["startup_max_s"] == figures["startup_s"]
    assert {"BlockDrop", "S3Pool", "VGAN", "Multi-task widening", "Runs", "About"} <= set(figures["tabs"])
    assert report["targets"]["startup_under_target"] == (figures["startup_s"] < 10.0)

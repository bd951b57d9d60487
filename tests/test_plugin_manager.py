"""The plugin manager: built-ins through the same hooks, broken plugins contained, selection."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from app import api
from app.errors import UserError
from app.plugin_manager import DEFAULT_PLUGINS, load_registry


def write_plugin(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


GOOD = """
from dataclasses import dataclass
from app.api import hookimpl, Method, Recipe, config_field

@dataclass
class Config:
    steps: int = config_field(2, "how many steps")

def train(config, ctx):
    return {"steps": config.steps}

@hookimpl
def register_methods(register):
    register(Method(slug="good", title="Good", paper="-", summary="a plugin that works",
                    recipes=[Recipe("run", Config, train)]))
"""


def test_builtins_are_registered_through_the_hooks():
    registry = load_registry(plugins="")
    names = [p.name for p in registry.plugins]
    assert names[: len(DEFAULT_PLUGINS)] == list(DEFAULT_PLUGINS)
    assert all(p.source == "builtin" for p in registry.plugins)
    # the built-in plugins were called through pluggy, so they report the hooks they implement
    for status in registry.plugins:
        if status.status == "ok":
            assert status.hooks, f"{status.name} implements no hook"


def test_plugins_dir_loads_single_file_plugins(tmp_path):
    write_plugin(tmp_path, "good", GOOD)
    registry = load_registry(plugins="", plugins_dir=tmp_path)
    assert "good" in registry.methods
    recipe = registry.recipe("good", "run")
    config = api.make_config(recipe.config_cls, {"steps": "3"})
    assert recipe.train(config, None) == {"steps": 3}
    status = next(p for p in registry.plugins if p.name == "good")
    assert status.source == "plugins-dir" and status.status == "ok"
    assert status.hooks == ["register_methods"]


def test_plugin_failing_at_import_is_reported_and_others_load(tmp_path, caplog):
    write_plugin(tmp_path, "good", GOOD)
    write_plugin(tmp_path, "broken_import", "import this_module_does_not_exist\n")
    registry = load_registry(plugins="", plugins_dir=tmp_path)
    assert "good" in registry.methods
    broken = next(p for p in registry.plugins if p.name == "broken_import")
    assert broken.status == "failed"
    assert "ModuleNotFoundError" in broken.error
    assert "this_module_does_not_exist" in broken.traceback
    assert "broken_import" in caplog.text  # the traceback went to the log


def test_plugin_failing_at_registration_is_reported(tmp_path):
    write_plugin(tmp_path, "good", GOOD)
    write_plugin(tmp_path, "broken_register", """
        from app.api import hookimpl
        @hookimpl
        def register_methods(register):
            raise RuntimeError("cannot register today")
    """)
    registry = load_registry(plugins="", plugins_dir=tmp_path)
    broken = next(p for p in registry.plugins if p.name == "broken_register")
    assert broken.status == "failed"
    assert "register_methods" in broken.error and "cannot register today" in broken.error
    assert "good" in registry.methods
    assert [p.name for p in registry.failed()] == ["broken_register"]


def test_registering_a_duplicate_method_fails_that_plugin_only(tmp_path):
    write_plugin(tmp_path, "good", GOOD)
    write_plugin(tmp_path, "zz_again", GOOD)  # loaded after "good" (sorted)
    registry = load_registry(plugins="", plugins_dir=tmp_path)
    assert registry.methods["good"].title == "Good"
    statuses = {p.name: p.status for p in registry.plugins}
    assert statuses["good"] == "ok" and statuses["zz_again"] == "failed"


def test_unknown_names_give_errors_listing_the_valid_ones(tmp_path):
    write_plugin(tmp_path, "good", GOOD)
    registry = load_registry(plugins="", plugins_dir=tmp_path)
    with pytest.raises(UserError, match="valid methods: .*good"):
        registry.method("nope")
    with pytest.raises(UserError, match="valid recipes: run"):
        registry.recipe("good", "nope")
    with pytest.raises(UserError, match="valid datasets"):
        registry.dataset_spec("nope")


def test_missing_plugins_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_registry(plugins="", plugins_dir=tmp_path / "missing")


def test_plugin_selection_filters_entry_points(monkeypatch):
    class FakeDist:
        metadata = {"Name": "avstudio-fake"}
        version = "9.9"

    class FakePoint:
        name = "fake"
        dist = FakeDist()

        def load(self):
            import types
            return types.ModuleType("fake_plugin_module")

    import importlib.metadata as md
    monkeypatch.setattr(md, "entry_points", lambda group: [FakePoint()] if group == "avstudio" else [])
    assert "fake" not in [p.name for p in load_registry(plugins="").plugins]
    assert "fake" not in [p.name for p in load_registry(plugins="other").plugins]
    loaded = {p.name: p for p in load_registry(plugins="avstudio-fake").plugins}
    assert loaded["fake"].version == "9.9" and loaded["fake"].source == "entrypoint"
    assert "fake" in [p.name for p in load_registry(plugins=None).plugins]

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
    assert names == list(DEFAULT_PLUGINS)
    assert all(p.source == "builtin" for p in registry.plugins)
    assert registry.failed() == [], [p.error for p in registry.failed()]
    # what each built-in registered came through its hook implementations, attributed to it
    by_name = {p.name: p for p in registry.plugins}
    assert by_name["plugins.blockdrop"].hooks == ["register_methods"]
    assert by_name["plugins.blockdrop"].methods == ["blockdrop"]
    assert by_name["plugins.datasets"].hooks == ["register_datasets"]
    assert {"shapes", "persons", "cifar10", "imagefolder"} <= set(by_name["plugins.datasets"].datasets)
    assert set(registry.datasets) == set(by_name["plugins.datasets"].datasets)
    assert registry.owner("blockdrop").name == "plugins.blockdrop"
    assert by_name["plugins.s3pool"].methods == ["s3pool"] and registry.owner("s3pool").name == "plugins.s3pool"
    assert by_name["plugins.vgan"].methods == ["vgan"] and registry.owner("vgan").name == "plugins.vgan"
    assert by_name["plugins.multitask"].methods == ["multitask"]
    assert registry.owner("multitask").name == "plugins.multitask"
    assert sorted(impl.plugin_name for impl in registry.pm.hook.register_methods.get_hookimpls()) == [
        "plugins.blockdrop", "plugins.multitask", "plugins.s3pool", "plugins.vgan"]


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
    assert broken.error == "import: ModuleNotFoundError: No module named 'this_module_does_not_exist'"
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


def test_registration_is_all_or_nothing_per_plugin(tmp_path):
    write_plugin(tmp_path, "half", """
        from app.api import DatasetSpec, Method, hookimpl

        @hookimpl
        def register_datasets(register):
            register(DatasetSpec(name="half-data", title="Half", task="classification", description="-",
                                 load=lambda split, root, **o: None))

        @hookimpl
        def register_methods(register):
            register(Method(slug="half-method", title="Half", paper="-", summary="-"))
            raise RuntimeError("second method broke")
    """)
    registry = load_registry(plugins="", plugins_dir=tmp_path)
    status = registry.status("half")
    assert status.status == "failed" and status.error == "register_methods: RuntimeError: second method broke"
    assert "half-data" not in registry.datasets and "half-method" not in registry.methods
    assert status.methods == [] and status.datasets == []


def test_a_duplicate_names_both_plugins(tmp_path):
    write_plugin(tmp_path, "good", GOOD)
    write_plugin(tmp_path, "zz_again", GOOD)
    registry = load_registry(plugins="", plugins_dir=tmp_path)
    assert registry.status("zz_again").error == (
        "register_methods: ValueError: method 'good' is registered twice: by plugin 'good' and by 'zz_again'")
    assert registry.owner("good").name == "good"


def test_an_unknown_method_mentions_the_plugins_that_failed(tmp_path):
    write_plugin(tmp_path, "edges", "import this_module_does_not_exist\n")
    registry = load_registry(plugins="", plugins_dir=tmp_path)
    with pytest.raises(UserError) as info:
        registry.method("edges")
    message = str(info.value)
    assert message.startswith("unknown method 'edges'; valid methods: blockdrop, multitask, s3pool")
    assert "edges (import: ModuleNotFoundError: No module named 'this_module_does_not_exist')" in message


def test_an_unknown_name_in_the_selection_is_a_failed_plugin(monkeypatch):
    import importlib.metadata as md

    monkeypatch.setattr(md, "entry_points", lambda group: [])
    registry = load_registry(plugins="edgez")
    status = registry.status("edgez")
    assert status is not None and status.status == "failed"
    assert "no installed plugin has that entry-point or distribution name" in status.error


def test_call_hook_isolates_failures_and_formats_them_once(tmp_path, caplog):
    write_plugin(tmp_path, "cmds", """
        from app.api import hookimpl

        @hookimpl
        def register_commands(cli, ctx):
            cli.append(("cmds", ctx))
    """)
    write_plugin(tmp_path, "onlycli", """
        from app.api import Method, hookimpl

        @hookimpl
        def register_methods(register):
            register(Method(slug="onlycli", title="-", paper="-", summary="-"))

        @hookimpl
        def register_commands(cli):
            raise KeyError("nope")
    """)
    registry = load_registry(plugins="", plugins_dir=tmp_path)
    seen: list = []
    results = list(registry.call_hook("register_commands", cli=seen, ctx="CTX"))
    assert seen == [("cmds", "CTX")] and [name for name, _ in results] == ["cmds"]
    status = registry.status("onlycli")
    assert status.status == "failed" and status.error == "register_commands: KeyError: 'nope'"
    assert "onlycli" not in registry.methods  # all or nothing: its method is withdrawn too
    assert caplog.text.count("plugin onlycli failed in register_commands") == 1

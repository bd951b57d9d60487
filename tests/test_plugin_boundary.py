"""The contract is the only door: a plugin (built in, scaffolded or third party) imports nothing of the
studio except the core, ``app.api``, and the two kits beside it, ``app.api.training`` and ``app.api.demo``
(and its own package's modules); its tests may also import the test harness, ``app.testing``. The contract
itself reaches no higher than what it hands on (no harness, no CLI, no UI), and the core no kit."""

from __future__ import annotations

import ast

import pytest

from app.scaffold import render
from app.settings import REPO_ROOT

STUDIO_PACKAGES = ("app", "trainer", "plugins")
CONTRACT = ("app.api", "app.api.training", "app.api.demo")  # the core, then the kits
HARNESS = "app.testing"


def is_test_module(label: str) -> bool:
    """Whether the module labelled ``label`` (a path, maybe ``scaffold:``-prefixed) is a test module."""
    parts = label.split(":")[-1].split("/")
    return "tests" in parts[:-1] or parts[-1].startswith("test_") or parts[-1] == "conftest.py"


def studio_imports(source: str, own_package: str | None, *, test_module: bool = False) -> list[str]:
    """The studio modules ``source`` imports, other than the contract and its own package (and the test
    harness, for a test module)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # a relative import stays inside the plugin's own package
                continue
            base = node.module or ""
            # `from app import api` is the contract too; `from app import cli` is not
            names = [f"{base}.{alias.name}" if base in STUDIO_PACKAGES else base for alias in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top not in STUDIO_PACKAGES:
                continue
            if any(name == module or name.startswith(module + ".") for module in CONTRACT):
                continue
            if test_module and (name == HARNESS or name.startswith(HARNESS + ".")):
                continue
            if own_package and (name == own_package or name.startswith(own_package + ".")):
                continue
            found.append(name)
    return found


def plugin_sources() -> list[tuple[str, str, str]]:
    """(label, own package, source) of every module under plugins/ and of the scaffold's generated code."""
    sources = []
    for path in sorted((REPO_ROOT / "plugins").rglob("*.py")):
        package = ".".join(path.relative_to(REPO_ROOT).parts[:2])  # plugins.<name>
        sources.append((path.relative_to(REPO_ROOT).as_posix(), package, path.read_text()))
    for relative, text in render("edge-gain").items():
        if relative.endswith(".py"):
            sources.append((f"scaffold:{relative}", "avstudio_edge_gain", text))
    return sources


@pytest.mark.parametrize("label, package, source", plugin_sources(), ids=[s[0] for s in plugin_sources()])
def test_plugins_import_only_the_contract(label, package, source):
    assert studio_imports(source, package, test_module=is_test_module(label)) == [], (
        f"{label} imports studio modules outside the contract; expose what it needs through app.api or a kit")


def test_the_scaffolded_tests_are_checked_as_tests():
    tests = [label for label, _, _ in plugin_sources() if is_test_module(label)]
    assert tests and all(label.startswith("scaffold:") for label in tests)


ABOVE_THE_CONTRACT = ("app.testing", "app.cli", "app.ui", "app.plugin_manager", "app.main", "app.demo_context",
                      "app.startup", "app.mcp", "plugins")


def _all_imports(source: str) -> set[str]:
    """Every module ``source`` imports (absolute imports; ``from app import x`` as ``app.x``)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            base = node.module or ""
            found |= {f"{base}.{alias.name}" if base in STUDIO_PACKAGES else base for alias in node.names}
    return found


@pytest.mark.parametrize("module", CONTRACT)
def test_the_contract_does_not_reach_up_to_the_harness_or_the_cli(module):
    path = REPO_ROOT / module.replace(".", "/")
    source = (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text()
    reached = {name for name in _all_imports(source)
               if any(name == above or name.startswith(above + ".") for above in ABOVE_THE_CONTRACT)}
    assert reached == set(), f"{module} imports {sorted(reached)}: the contract must not import the studio above it"


def test_the_core_imports_no_kit():
    imported = _all_imports((REPO_ROOT / "app" / "api" / "__init__.py").read_text())
    assert not imported & set(CONTRACT[1:]), "the kits build on the core, never the other way round"


def test_a_fresh_interpreter_imports_the_contract_without_the_cli_or_gradio():
    import subprocess
    import sys

    code = ("import sys, app.api, app.api.training, app.api.demo; "
            "print(sorted(m for m in sys.modules if m in ('gradio', 'click', 'app.cli', 'app.ui', 'app.testing', "
            "'app.plugin_manager')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_every_built_in_plugin_is_checked():
    checked = {label.split("/")[1] for label, _, _ in plugin_sources() if label.startswith("plugins/")}
    on_disk = {p.name for p in (REPO_ROOT / "plugins").iterdir() if (p / "__init__.py").is_file()}
    assert on_disk <= checked and {"blockdrop", "datasets"} <= checked


@pytest.mark.parametrize("source, expected", [
    ("from app.api import hookimpl", []),
    ("from app import api", []),
    ("import app.api", []),
    ("from app.api.training import TrainLoop", []),
    ("from app.api.demo import enlarge", []),
    ("from app.api import demo, training", []),
    ("from app.images import load_rgb_image", ["app.images"]),
    ("from app.model_cache import ModelCache", ["app.model_cache"]),
    ("from plugins.blockdrop.model import x", []),
    ("from trainer.checkpoints import load_checkpoint", ["trainer.checkpoints"]),
    ("from app.plugin_manager import load_registry", ["app.plugin_manager"]),
    ("from app import cli", ["app.cli"]),
    ("import trainer", ["trainer"]),
    ("def f():\n    from trainer import datasets", ["trainer.datasets"]),
    ("from plugins.datasets.shapes import load_shapes", ["plugins.datasets.shapes"]),
    ("from app.testing import open_test_studio", ["app.testing"]),
])
def test_the_check_catches_every_way_of_importing(source, expected):
    assert studio_imports(source, "plugins.blockdrop") == expected


@pytest.mark.parametrize("source, expected", [
    ("from app.testing import open_test_studio", []),
    ("from app import testing", []),
    ("from app.cli import cli", ["app.cli"]),
    ("from trainer.store import RunStore", ["trainer.store"]),
])
def test_a_test_module_may_import_the_harness_too(source, expected):
    assert studio_imports(source, "plugins.blockdrop", test_module=True) == expected


@pytest.mark.parametrize("label, expected", [
    ("scaffold:tests/test_plugin.py", True), ("plugins/blockdrop/model.py", False),
    ("scaffold:avstudio_edge_gain/__init__.py", False), ("plugins/x/tests/helpers.py", True),
])
def test_which_modules_are_tests(label, expected):
    assert is_test_module(label) is expected

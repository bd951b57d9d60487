"""The contract is the only door: a plugin (built in, scaffolded or third party) imports nothing of the
studio except ``app.api`` (and its own package's modules)."""

from __future__ import annotations

import ast

import pytest

from app.scaffold import render
from app.settings import REPO_ROOT

STUDIO_PACKAGES = ("app", "trainer", "plugins")
CONTRACT = "app.api"


def studio_imports(source: str, own_package: str | None) -> list[str]:
    """The studio modules ``source`` imports, other than the contract and its own package."""
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
            if name == CONTRACT or name.startswith(CONTRACT + "."):
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
    assert studio_imports(source, package) == [], (
        f"{label} imports studio modules outside the contract; expose what it needs through app.api")


def test_every_built_in_plugin_is_checked():
    checked = {label.split("/")[1] for label, _, _ in plugin_sources() if label.startswith("plugins/")}
    on_disk = {p.name for p in (REPO_ROOT / "plugins").iterdir() if (p / "__init__.py").is_file()}
    assert on_disk <= checked and {"blockdrop", "datasets"} <= checked


@pytest.mark.parametrize("source, expected", [
    ("from app.api import hookimpl", []),
    ("from app import api", []),
    ("import app.api", []),
    ("from plugins.blockdrop.model import x", []),
    ("from trainer.checkpoints import load_checkpoint", ["trainer.checkpoints"]),
    ("from app.plugin_manager import load_registry", ["app.plugin_manager"]),
    ("from app import cli", ["app.cli"]),
    ("import trainer", ["trainer"]),
    ("def f():\n    from trainer import datasets", ["trainer.datasets"]),
    ("from plugins.datasets.shapes import load_shapes", ["plugins.datasets.shapes"]),
])
def test_the_check_catches_every_way_of_importing(source, expected):
    assert studio_imports(source, "plugins.blockdrop") == expected

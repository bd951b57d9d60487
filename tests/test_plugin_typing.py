"""Plugins are typed against the contract: every context a plugin function takes is annotated with the
protocol the studio hands it (app.api), and CI type-checks the contract, its kits and the plugins with mypy
(pyproject's [tool.mypy], run by .ci/run; tests/test_scaffold.py checks a scaffolded plugin the same way)."""

from __future__ import annotations

import ast
import sys

import pytest

from app.settings import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONTEXTS = {"TrainContext", "DemoContext", "CommandContext"}
AUTOGRAD = {"FunctionCtx"}  # torch.autograd.Function's own ctx (plugins/s3pool/layer.py)
HOOK_ARGUMENTS = {"register", "cli"}


def untyped_contexts(source: str) -> list[str]:
    """``function(argument: annotation)`` for each ``ctx`` argument not annotated with a context protocol,
    and each hook argument (``register``, ``cli``) with no annotation at all."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        arguments = node.args
        for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
            annotation = ast.unparse(arg.annotation) if arg.annotation is not None else None
            if arg.arg == "ctx" and annotation not in CONTEXTS | AUTOGRAD:
                found.append(f"{node.name}(ctx: {annotation})")
            elif arg.arg in HOOK_ARGUMENTS and annotation is None:
                found.append(f"{node.name}({arg.arg})")
    return found


PLUGIN_FILES = sorted((REPO_ROOT / "plugins").rglob("*.py"))


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=[p.relative_to(REPO_ROOT).as_posix() for p in PLUGIN_FILES])
def test_plugin_functions_take_their_context_as_the_protocol(path):
    assert untyped_contexts(path.read_text()) == [], (
        f"{path.relative_to(REPO_ROOT)}: annotate ctx with app.api's TrainContext, DemoContext or CommandContext")


@pytest.mark.parametrize("source, expected", [
    ("def f(ctx: TrainContext): pass", []),
    ("def f(config, ctx: Any): pass", ["f(ctx: Any)"]),
    ("class D:\n    def __init__(self, ctx) -> None: pass", ["__init__(ctx: None)"]),
    ("def register_methods(register) -> None: pass", ["register_methods(register)"]),
    ("def register_commands(cli: click.Group, ctx: CommandContext): pass", []),
])
def test_the_check_catches_untyped_contexts(source, expected):
    assert untyped_contexts(source) == expected


def test_ci_type_checks_the_contract_its_kits_and_the_plugins():
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    files = config["tool"]["mypy"]["files"]
    assert {"app/api", "plugins"} <= set(files)
    assert any(dep.startswith("mypy") for dep in config["project"]["optional-dependencies"]["dev"])
    lines = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()]
    assert "mypy" in lines and lines.index("mypy") > lines.index("python -m pytest"), (
        ".ci/run runs `mypy` after the default suite")

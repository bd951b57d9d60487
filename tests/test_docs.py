"""The plugin author's guide documents every hook, argument and field of the contract (app/api/__init__.py)."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

from app import api
from app.plugin_manager import hook_names
from app.settings import REPO_ROOT

GUIDE = (REPO_ROOT / "docs" / "plugins.md").read_text()
HOOK_HEADING = re.compile(r"^### (\w+)\((.*)\)$", re.MULTILINE)


def _section(heading_line: str) -> str:
    """The text from a ``###`` heading up to the next heading of the same or a higher level."""
    start = GUIDE.index(heading_line + "\n")
    end = re.compile(r"^#{1,3} ", re.MULTILINE).search(GUIDE, start + len(heading_line))
    return GUIDE[start:end.start() if end else len(GUIDE)]


def _protocol_members(protocol: type) -> list[str]:
    own = vars(protocol)
    return [*own.get("__annotations__", {}),
            *(n for n, v in own.items() if callable(v) and not n.startswith("_"))]


# The hooks as pluggy registers them from the contract: a new hookspec is checked without anyone
# adding it to a list here.
HOOKS = [(name, getattr(api, name)) for name in hook_names()]


def test_the_hook_list_comes_from_the_plugin_manager():
    assert {name for name, _ in HOOKS} >= {"register_methods", "register_datasets", "register_commands"}
    # every function of the contract marked as a hookspec is one pluggy knows, and vice versa
    marked = {name for name, value in vars(api).items() if hasattr(value, f"{api.PROJECT_NAME}_spec")}
    assert marked == set(hook_names()) == {name for name, _ in api.iter_hooks()}


def test_an_undocumented_new_hookspec_would_fail_the_docs_check(monkeypatch):
    @api.hookspec
    def register_gadgets(register):
        """Register gadgets."""

    monkeypatch.setattr(api, "register_gadgets", register_gadgets, raising=False)
    assert "register_gadgets" in hook_names()
    heading = "### register_gadgets(register)"
    assert heading + "\n" not in GUIDE  # so test_every_hook_and_argument_is_documented would fail for it


@pytest.mark.parametrize(("name", "hook"), HOOKS, ids=[n for n, _ in HOOKS])
def test_every_hook_has_a_docstring(name, hook):
    assert (inspect.getdoc(hook) or "").strip(), f"hook {name} in app/api/__init__.py has no docstring"


@pytest.mark.parametrize(("name", "hook"), HOOKS, ids=[n for n, _ in HOOKS])
def test_every_hook_and_argument_is_documented(name, hook):
    arguments = list(inspect.signature(hook).parameters)
    heading = f"### {name}({', '.join(arguments)})"
    assert heading + "\n" in GUIDE, f"docs/plugins.md needs a section headed {heading!r}"
    section = _section(heading)
    for argument in arguments:
        assert f"- `{argument}`:" in section, f"argument {argument!r} of {name} is not described"


def test_the_guide_documents_no_hook_that_does_not_exist():
    hook_names = {name for name, _ in HOOKS}
    documented = {m.group(1) for m in HOOK_HEADING.finditer(GUIDE) if m.group(1).startswith("register_")}
    assert documented == hook_names


@pytest.mark.parametrize("cls", [api.Method, api.Recipe, api.DatasetSpec, api.CheckpointSlot],
                         ids=lambda c: c.__name__)
def test_every_field_of_what_a_plugin_registers_is_documented(cls):
    section = _section(f"### {cls.__name__}")
    for f in dataclasses.fields(cls):
        assert f"| `{f.name}` |" in section, f"{cls.__name__}.{f.name} is not in docs/plugins.md"


@pytest.mark.parametrize("protocol", [api.TrainContext, api.DemoContext, api.CommandContext],
                         ids=lambda c: c.__name__)
def test_every_member_of_the_contexts_is_documented(protocol):
    section = _section(f"### {protocol.__name__}")
    members = _protocol_members(protocol)
    assert len(members) >= 5
    for member in members:
        assert re.search(rf"^\| `{member}[`(]", section, re.MULTILINE), \
            f"{protocol.__name__}.{member} is not in docs/plugins.md"


def test_the_guide_walks_through_the_whole_plugin_life():
    for step in ("avstudio new-plugin", "pip install -e", "avstudio plugins", "avstudio serve",
                 "avstudio train", "python -m pytest", "--plugins-dir", "AVSTUDIO_PLUGINS"):
        assert step in GUIDE, f"the walkthrough does not mention {step!r}"


def test_every_name_the_contract_exports_is_documented():
    for name in api.__all__:
        assert re.search(rf"`[^`\n]*\b{name}\b[^`\n]*`", GUIDE), \
            f"app.api.{name} is exported but not mentioned (in code) in docs/plugins.md"


# -- the kits beside the core ---------------------------------------------------------------------------

KITS = ("app.api.training", "app.api.demo")


@pytest.mark.parametrize("module", KITS)
def test_every_kit_has_its_section_and_every_name_it_hands_on_is_documented(module):
    import importlib

    kit = importlib.import_module(module)
    heading = f"## The {module.rsplit('.', 1)[1]} kit: `{module}`"
    assert heading + "\n" in GUIDE, f"docs/plugins.md needs a section headed {heading!r}"
    assert (kit.__doc__ or "").strip() and "docs/plugins.md" in kit.__doc__
    start = GUIDE.index(heading)
    end = re.compile(r"^## ", re.MULTILINE).search(GUIDE, start + len(heading))
    section = GUIDE[start:end.start() if end else len(GUIDE)]
    for name in kit.__all__:
        assert re.search(rf"`[^`\n]*\b{name}\b[^`\n]*`", section), \
            f"{module}.{name} is not mentioned (in code) in its section of docs/plugins.md"
        assert (inspect.getdoc(getattr(kit, name)) or "").strip() or not callable(getattr(kit, name)), \
            f"{module}.{name} has no docstring"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


@pytest.mark.parametrize("doc", ["plugins.md", "datasets.md"])
def test_the_docs_show_a_plugin_only_the_imports_the_boundary_allows(doc):
    """What docs/plugins.md promises a plugin (the core, the kits, the harness in tests) is all the code
    examples import of the studio, in the plugin guide and in the guide to the datasets."""
    allowed = ("app.api", *KITS, "app.testing")
    text = (REPO_ROOT / "docs" / doc).read_text()
    imported = set()
    for block in _python_blocks(text):
        imported |= set(re.findall(r"^\s*from ((?:app|trainer|plugins)\.[\w.]+) import", block, re.MULTILINE))
        imported |= set(re.findall(r"^\s*import ((?:app|trainer|plugins)\.[\w.]+)", block, re.MULTILINE))
    assert imported and not imported - set(allowed), f"docs/{doc} shows imports outside the contract"

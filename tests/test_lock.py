"""requirements-lock.txt, the tested lock (`python .ci/refresh-lock` writes it from the environment .ci/run
passed in): one exact pin per package under its PEP 503 name, and every dependency pyproject.toml declares
(runtime and dev) pinned inside its range."""

from __future__ import annotations

import re
import sys
from collections import Counter

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from app.settings import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LOCK_TEXT = (REPO_ROOT / "requirements-lock.txt").read_text()
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def lock_python(text: str) -> str:
    """The Python the lock was resolved on, as its header states it ("on Python 3.11")."""
    match = re.search(r"on Python (3\.\d+)", text)
    assert match, "the lock's header must say which Python it was resolved on (.ci/refresh-lock writes it)"
    return match.group(1)


def lock_pins(text: str) -> list[Requirement]:
    """Every requirement line of a requirements file (comments, blank lines and options left out)."""
    lines = (line.split(" #")[0].strip() for line in text.splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith(("#", "-"))]


def declared(pyproject: dict) -> list[Requirement]:
    """What the lock must pin: [project] dependencies and the dev extra the CI environment installs."""
    return [Requirement(r) for r in (*pyproject["project"]["dependencies"],
                                     *pyproject["project"]["optional-dependencies"]["dev"])]


def lock_problems(text: str, pyproject: dict) -> list[str]:
    """Everything wrong with a lock, one sentence each (empty for a good lock)."""
    problems: list[str] = []
    try:
        pins = lock_pins(text)
    except InvalidRequirement as error:
        return [f"not a requirement line: {error}"]
    for req in pins:
        specs = list(req.specifier)
        if req.url or req.extras or len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            problems.append(f"{req}: not one exact `name==version` pin")
        if req.name != canonicalize_name(req.name):
            problems.append(f"{req.name}: write the PEP 503 name {canonicalize_name(req.name)}")
    names = [canonicalize_name(r.name) for r in pins]
    problems += [f"{name}: pinned {n} times" for name, n in Counter(names).items() if n > 1]
    if names != sorted(names):
        problems.append("the pins are not sorted by name (.ci/refresh-lock sorts them)")
    version = {canonicalize_name(r.name): next(iter(r.specifier)).version for r in pins if len(r.specifier) == 1}
    python = lock_python(text)
    environment = {"python_version": python, "python_full_version": f"{python}.0", "platform_system": "Linux",
                   "sys_platform": "linux", "os_name": "posix", "extra": ""}
    for wanted in declared(pyproject):
        if wanted.marker and not wanted.marker.evaluate(environment):
            continue  # e.g. tomli, only below the lock's Python
        name = canonicalize_name(wanted.name)
        if name not in version:
            problems.append(f"{name}: pyproject.toml depends on it ({wanted}), the lock does not pin it")
        elif not wanted.specifier.contains(version[name], prereleases=True):
            problems.append(f"{name}=={version[name]} lies outside pyproject.toml's range {wanted}")
    return problems


def test_the_lock_pins_every_dependency_exactly_within_pyproject_ranges():
    assert lock_problems(LOCK_TEXT, PYPROJECT) == []


def test_the_lock_names_the_python_it_was_resolved_on_and_how_to_refresh_it():
    assert re.fullmatch(r"3\.\d+", lock_python(LOCK_TEXT))
    header = "\n".join(line for line in LOCK_TEXT.splitlines() if line.startswith("#"))
    assert "python .ci/refresh-lock" in header and "pip install -r requirements-lock.txt -e ." in header
    assert (REPO_ROOT / ".ci" / "refresh-lock").is_file()


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def _pin(name: str) -> str:
    return next(line for line in LOCK_TEXT.splitlines() if canonicalize_name(line.split("==")[0]) == name)


@pytest.mark.parametrize(("old", "new", "problem"), [
    (_pin("click"), "click==8.0.0", r"click==8\.0\.0 lies outside pyproject\.toml's range click>=8\.1"),
    (_pin("gradio"), "gradio==7.0.0", r"gradio==7\.0\.0 lies outside .*gradio<7,>=6\.0"),
    (_pin("pytest"), "pytest==7.4.4", r"pytest==7\.4\.4 lies outside .*pytest>=8"),
    (_pin("pluggy") + "\n", "", r"pluggy: pyproject\.toml depends on it .* the lock does not pin it"),
    (_pin("sqlalchemy"), "sqlalchemy>=2.0", r"sqlalchemy>=2\.0: not one exact"),
    (_pin("sqlalchemy"), "SQLAlchemy==2.1.0", r"SQLAlchemy: write the PEP 503 name sqlalchemy"),
    (_pin("tqdm"), f"{_pin('tqdm')}\ntqdm==4.66.0", r"tqdm: pinned 2 times"),
])
def test_the_check_fails_when_the_lock_drifts(old, new, problem):
    problems = lock_problems(_edit(LOCK_TEXT, old, new), PYPROJECT)
    assert any(re.search(problem, p) for p in problems), problems


def test_the_check_fails_when_pyproject_moves_away_from_the_lock():
    moved = {"project": {**PYPROJECT["project"],
                         "dependencies": [*PYPROJECT["project"]["dependencies"], "numpy<2"]}}
    assert any(p.startswith("numpy==") and "outside" in p for p in lock_problems(LOCK_TEXT, moved))

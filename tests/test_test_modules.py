"""The test suite's own layout: a test module never imports another test module. What several test files
share lives in plain helper modules beside them (tests/demo_helpers.py, tests/processes.py, ...) or in
conftest.py's fixtures, so running, moving or deleting one test file never changes what another collects."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _test_modules_imported(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every test module (``test_*``) that ``path`` imports, however it is spelled:
    ``import tests.test_x``, ``from tests.test_x import y``, ``from tests import test_x``, ``import test_x``,
    ``from .test_x import y``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ("tests." * bool(node.level)) + (node.module or "")
            names = [base, *(f"{base.rstrip('.')}.{alias.name}" for alias in node.names)]
        else:
            continue
        modules = set()
        for name in names:
            parts = [p for p in name.split(".") if p]
            if parts and parts[0] == "tests":
                parts = parts[1:]
            if parts and parts[0].startswith("test_"):
                modules.add(parts[0])
        found += [(node.lineno, module) for module in sorted(modules)]
    return found


def test_no_test_module_imports_another_test_module():
    offences = [f"{path.relative_to(TESTS.parent)}:{line} imports {module}"
                for path in sorted(TESTS.rglob("*.py"))
                for line, module in _test_modules_imported(path)
                if module != path.stem]  # a module importing itself (to patch or pickle) is fine
    assert not offences, "move what is shared into a helper module or a conftest fixture:\n" + "\n".join(offences)


def test_the_check_sees_each_way_of_importing_a_test_module(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text("import tests.test_a\nfrom tests.test_b import x\nfrom tests import test_c, helpers\n"
                      "import test_d\nfrom .test_e import y\nimport tests.test_sample as this\n"
                      "from tests.demo_helpers import z\nimport testing\n")
    assert _test_modules_imported(sample) == [(1, "test_a"), (2, "test_b"), (3, "test_c"), (4, "test_d"),
                                              (5, "test_e"), (6, "test_sample")]

"""Compare two logged trajectories point by point, key by key, with a tolerance.

``pytest.approx`` compares flat sequences and flat mappings of numbers only (pytest 9 refuses a list of
``(step, value)`` tuples or of metric dicts outright), so a resume test that wants "the same curve as an
uninterrupted run" calls :func:`assert_same_trajectory` instead. It works on every pytest the project
allows and names the first point and key that differ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import pytest


def assert_same_trajectory(got: Sequence[Any], expected: Sequence[Any], *, rel: float = 1e-6,
                           abs: float = 1e-12, label: str = "") -> None:
    """Fail unless ``got`` has the points of ``expected``, in order, each equal within the tolerance.

    A point is a number, a tuple or list (e.g. ``(step, value)``), a mapping (e.g. ``{"loss": ...}``), or
    any nesting of those. Integers (steps, counts) must match exactly; other numbers within ``rel`` and
    ``abs`` of the expected value, as ``pytest.approx(expected, rel=rel, abs=abs)`` has it; NaN matches
    NaN only. Sequences must have the same length and mappings the same keys; strings and other values
    must be equal.
    """
    __tracebackhide__ = True
    prefix = f"{label}: " if label else ""
    if len(got) != len(expected):
        pytest.fail(f"{prefix}got {len(got)} points, expected {len(expected)}\n"
                    f"  got:      {list(got)!r}\n  expected: {list(expected)!r}", pytrace=False)
    for index, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        problem = _difference(mine, theirs, "", rel, abs)
        if problem:
            where, why = problem
            at = f"point {index}" + (f", at {where}" if where else "")
            pytest.fail(f"{prefix}trajectories differ first at {at}: {why}\n"
                        f"  got point:      {mine!r}\n  expected point: {theirs!r}", pytrace=False)


def _difference(got: Any, expected: Any, where: str, rel: float, abs: float) -> tuple[str, str] | None:
    """``(path, reason)`` of the first difference between ``got`` and ``expected``, or None."""
    if isinstance(expected, Mapping):
        if not isinstance(got, Mapping):
            return where, f"got {got!r}, expected a mapping"
        missing, extra = [k for k in expected if k not in got], [k for k in got if k not in expected]
        if missing or extra:
            return where, f"keys differ: missing {missing}, unexpected {extra}"
        for key in expected:
            problem = _difference(got[key], expected[key], f"{where}[{key!r}]", rel, abs)
            if problem:
                return problem
        return None
    if isinstance(expected, Sequence) and not isinstance(expected, (str, bytes)):
        if not isinstance(got, Sequence) or isinstance(got, (str, bytes)):
            return where, f"got {got!r}, expected a sequence"
        if len(got) != len(expected):
            return where, f"got {len(got)} items, expected {len(expected)}"
        for index, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
            problem = _difference(mine, theirs, f"{where}[{index}]", rel, abs)
            if problem:
                return problem
        return None
    if _is_number(expected) and _is_number(got):
        if isinstance(expected, Integral) and isinstance(got, Integral):
            same = got == expected
            wanted = f"{expected!r}"
        elif math.isnan(expected) or math.isnan(got):
            same = math.isnan(expected) and math.isnan(got)
            wanted = f"{expected!r}"
        else:
            same = got == pytest.approx(expected, rel=rel, abs=abs)
            wanted = f"{expected!r} ± {max(rel * math.fabs(expected), abs):.1e}"
        return None if same else (where, f"got {got!r}, expected {wanted}")
    return None if got == expected else (where, f"got {got!r}, expected {expected!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)

"""tests/trajectories.py: the point-by-point comparison the resume tests rely on passes on the same
trajectory, and fails, naming the first point and key, on a drifted value, a missing key or a lost point."""

from __future__ import annotations

import math

import pytest

from tests.trajectories import assert_same_trajectory

STEPS = [(1, 0.5), (2, 0.25), (3, 0.125)]
CARDS = [(1, {"loss": 0.5, "accuracy": 0.25}), (2, {"loss": 0.4, "accuracy": 0.5})]


def test_the_same_trajectory_passes_within_the_tolerance():
    assert_same_trajectory(STEPS, [(1, 0.5), (2, 0.25 * (1 + 1e-7)), (3, 0.125)])
    assert_same_trajectory(CARDS, [(1, {"accuracy": 0.25, "loss": 0.5}), (2, {"loss": 0.4 + 1e-6, "accuracy": 0.5})],
                           rel=1e-5)
    assert_same_trajectory([{"loss": math.nan}], [{"loss": math.nan}])  # a NaN logged on both runs
    assert_same_trajectory([], [])


def test_a_drifted_value_fails_naming_its_point_and_key():
    drifted = [(1, {"loss": 0.5, "accuracy": 0.25}), (2, {"loss": 0.4, "accuracy": 0.5 * (1 + 1e-4)})]
    with pytest.raises(pytest.fail.Exception, match=r"first at point 1, at \[1\]\['accuracy'\]: got 0.50005"):
        assert_same_trajectory(drifted, CARDS, rel=1e-5)
    assert_same_trajectory(drifted, CARDS, rel=1e-3)  # the tolerance is the caller's
    with pytest.raises(pytest.fail.Exception, match=r"loss: trajectories differ first at point 2, at \[1\]"):
        assert_same_trajectory([(1, 0.5), (2, 0.25), (3, 0.126)], STEPS, rel=1e-5, label="loss")
    with pytest.raises(pytest.fail.Exception, match=r"point 0, at \['loss'\]: got nan"):
        assert_same_trajectory([{"loss": math.nan}], [{"loss": 1.0}])


def test_steps_and_other_integers_must_match_exactly():
    with pytest.raises(pytest.fail.Exception, match=r"point 2, at \[0\]: got 4, expected 3\n"):
        assert_same_trajectory([(1, 0.5), (2, 0.25), (4, 0.125)], STEPS, rel=0.5)


def test_a_missing_key_or_point_fails():
    with pytest.raises(pytest.fail.Exception, match=r"point 1, at \[1\]: keys differ: missing \['accuracy'\]"):
        assert_same_trajectory([CARDS[0], (2, {"loss": 0.4})], CARDS)
    with pytest.raises(pytest.fail.Exception, match="unexpected \\['extra'\\]"):
        assert_same_trajectory([CARDS[0], (2, {**CARDS[1][1], "extra": 1.0})], CARDS)
    with pytest.raises(pytest.fail.Exception, match="got 2 points, expected 3"):
        assert_same_trajectory(STEPS[:2], STEPS)
    with pytest.raises(pytest.fail.Exception, match="got 3 points, expected 2"):
        assert_same_trajectory(STEPS, STEPS[:2])
    with pytest.raises(pytest.fail.Exception, match=r"point 0: got 1 items, expected 2"):
        assert_same_trajectory([(1,)], [(1, 0.5)])
    with pytest.raises(pytest.fail.Exception, match="expected a mapping"):
        assert_same_trajectory([(1, 0.5)], [(1, {"loss": 0.5})])

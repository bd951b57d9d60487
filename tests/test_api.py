"""The plugin-facing contract: recipe configs are validated with messages that name the choices."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from app import api


@dataclass
class Config:
    epochs: int = api.config_field(3, "training epochs")
    lr: float = api.config_field(0.1, "learning rate")
    augment: bool = api.config_field(True, "random crops and flips")
    dataset: str = api.config_field("shapes", "dataset", choices=("shapes", "persons"))
    gammas: list[float] = api.config_field([1.0, 5.0], "penalties")
    limit: int | None = api.config_field(None, "optional cap")


def test_defaults_and_help_are_described():
    described = {d["name"]: d for d in api.config_fields(Config)}
    assert described["epochs"]["default"] == 3 and described["epochs"]["help"] == "training epochs"
    assert described["dataset"]["choices"] == ("shapes", "persons")
    assert described["gammas"]["default"] == [1.0, 5.0]


def test_strings_are_coerced_to_the_field_types():
    config = api.make_config(Config, api.parse_assignments(
        ["epochs=5", "lr=1e-3", "augment=off", "dataset=persons", "gammas=2,10", "limit=7"]))
    assert config == Config(epochs=5, lr=0.001, augment=False, dataset="persons", gammas=[2.0, 10.0], limit=7)
    assert api.make_config(Config, {"limit": "none"}).limit is None


@pytest.mark.parametrize("values, message", [
    ({"epoch": "1"}, "unknown config key 'epoch'; valid keys: epochs, lr, augment, dataset, gammas, limit"),
    ({"epochs": "three"}, "epochs: expected int, got 'three'"),
    ({"epochs": 2.5}, "epochs: expected an integer"),
    ({"augment": "maybe"}, "augment: expected true/false"),
    ({"dataset": "cifar"}, "dataset: 'cifar' is not one of: shapes, persons"),
])
def test_bad_values_raise_one_line_config_errors(values, message):
    with pytest.raises(api.ConfigError) as info:
        api.make_config(Config, values)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_assignment_without_equals_is_an_error():
    with pytest.raises(api.ConfigError, match="expected key=value"):
        api.parse_assignments(["epochs"])


def test_every_hook_has_a_docstring():
    for name, hook in api.iter_hooks():
        assert hook.__doc__ and hook.__doc__.strip(), f"hook {name} is undocumented"


@dataclass
class Ranged:
    epochs: int = api.config_field(3, "training epochs", min=1)
    rate: float = api.config_field(0.5, "a fraction", min=0.0, max=1.0)
    widths: list[int] = api.config_field([16], "channels per stage", min=1)


@pytest.mark.parametrize("values, message", [
    ({"epochs": "0"}, "epochs: 0 is out of range (must be ≥ 1)"),
    ({"rate": "1.5"}, "rate: 1.5 is out of range (must be 0 … 1)"),
    ({"widths": "16,0"}, "widths: 0 is out of range (must be ≥ 1)"),
])
def test_values_out_of_range_are_refused_before_anything_is_queued(values, message):
    with pytest.raises(api.ConfigError) as info:
        api.make_config(Ranged, values)
    assert str(info.value) == message


def test_ranges_are_described():
    described = {d["name"]: d for d in api.config_fields(Ranged)}
    assert (described["rate"]["min"], described["rate"]["max"]) == (0.0, 1.0)
    assert api.describe_constraints(described["epochs"]) == "≥ 1"
    assert api.describe_constraints(described["rate"]) == "0 … 1"
    assert api.describe_constraints({"choices": ("a", "b")}) == "one of: a, b"
    assert api.make_config(Ranged, {"epochs": "1", "rate": "1"}) == Ranged(epochs=1, rate=1.0)

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


# -- the core's size and the kits beside it -------------------------------------------------------------


def test_the_core_stays_small_and_hands_on_no_kit_name():
    from app.api import demo as demo_kit
    from app.api import training as training_kit

    assert len(api.__all__) <= 22, "app.api is the core a plugin must know; shared helpers go into a kit"
    assert all(hasattr(api, name) for name in api.__all__)
    kits = set(training_kit.__all__) | set(demo_kit.__all__)
    assert not kits & set(api.__all__) and not set(training_kit.__all__) & set(demo_kit.__all__)
    assert all(hasattr(training_kit, n) for n in training_kit.__all__)
    assert all(hasattr(demo_kit, n) for n in demo_kit.__all__)


# -- a dataset built on another registered dataset --------------------------------------------------------


def _gray_shapes_plugin():
    """A plugin whose dataset is the registered ``shapes`` in grayscale (``datasets`` loads it)."""
    import types

    import torch

    from app.api.training import ImageTensorDataset

    def load_gray(split, root, download=False, *, datasets, **options):
        colour = datasets("shapes", split, **options)
        gray = (colour.images.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        return ImageTensorDataset(gray.round().to(torch.uint8), colour.targets, colour.labels, "classification",
                                  name="shapes-gray")

    def load_loop(split, root, download=False, *, datasets):
        return datasets("loop-b", split)

    def load_loop_b(split, root, download=False, *, datasets):
        return datasets("loop-a", split)

    @api.hookimpl
    def register_datasets(register):
        register(api.DatasetSpec(name="shapes-gray", title="Shapes in grey", task="classification",
                                 description="shapes, one channel", load=load_gray, channels=1))
        register(api.DatasetSpec(name="loop-a", title="a", task="classification", description="", load=load_loop))
        register(api.DatasetSpec(name="loop-b", title="b", task="classification", description="", load=load_loop_b))

    module = types.ModuleType("gray_shapes_plugin")
    module.register_datasets = register_datasets
    return module


def test_a_dataset_can_load_another_registered_dataset(tmp_path):
    import torch

    from app.testing import open_test_studio

    small = {"num_train": "20", "num_val": "10", "num_test": "10", "size": "16"}
    with open_test_studio(tmp_path, [_gray_shapes_plugin()]) as studio:
        gray = studio.dataset("shapes-gray", "val", **small)
        colour = studio.dataset("shapes", "val", **small)
        assert gray.images.shape == (10, 1, 16, 16) and torch.equal(gray.targets, colour.targets)
        expected = (colour.images[0].float() * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0).round()
        assert torch.equal(gray.images[0, 0], expected.to(torch.uint8))
        assert gray.labels == colour.labels
        with pytest.raises(api.UserError, match="dataset 'shapes' has no option 'colour'"):
            studio.dataset("shapes-gray", "val", colour="red")  # options reach the dataset it builds on
        with pytest.raises(api.UserError, match="dataset 'loop-a' loads itself: loop-a -> loop-b -> loop-a"):
            studio.dataset("loop-a", "train")
        # a loader that does not declare `datasets` is called as before (the built-ins take **options)
        assert len(studio.registry.load_dataset("shapes", "test", studio.settings.data_dir, **small)) == 10

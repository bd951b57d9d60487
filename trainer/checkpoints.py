"""Checkpoints: tensors in safetensors, plus a JSON model card beside them.

Loading never executes code from the file: safetensors holds only tensors, and the card is JSON.

The card (``NAME.json`` beside ``NAME.safetensors``) keeps the studio's record of where the
checkpoint came from apart from what the plugin stored::

    {"format": 2,
     "studio":   {"method", "recipe", "run_id", "checkpoint", "config", "dataset", "commit",
                  "device", "torch", "created", "metrics"},
     "metadata": {... whatever the recipe passed to ctx.save_checkpoint ...}}

Cards written before format 2 are flat (one dict); they still load: their ``metadata`` is the
whole card and their ``studio`` record the studio's keys found in it.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trainer.files import atomic_write, atomic_write_text

CARD_FORMAT = 2
STUDIO_KEYS = ("method", "recipe", "run_id", "checkpoint", "config", "dataset", "commit", "device", "torch",
               "created", "metrics")


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors (from safetensors) and its JSON model card."""

    path: Path
    tensors: dict[str, torch.Tensor]
    card: dict[str, Any]

    @property
    def metadata(self) -> dict[str, Any]:
        """What the plugin stored with the checkpoint (the ``metadata`` of ``save_checkpoint``)."""
        if self.card.get("format", 1) >= 2:
            return dict(self.card.get("metadata") or {})
        return dict(self.card)

    @property
    def studio(self) -> dict[str, Any]:
        """The studio's record: method, recipe, run_id, checkpoint name, config, dataset, commit, metrics, …"""
        if self.card.get("format", 1) >= 2:
            return dict(self.card.get("studio") or {})
        return {k: self.card[k] for k in STUDIO_KEYS if k in self.card}


@dataclass
class CheckpointInfo:
    """A checkpoint a demo may offer: its name (the slot), where it comes from, its file and card."""

    name: str
    source: str  # "promoted" (a run's checkpoint, `avstudio runs promote`) or "shipped" (the method's assets)
    path: Path
    card: dict[str, Any]

    @property
    def metadata(self) -> dict[str, Any]:
        """The plugin's part of the card (see :attr:`Checkpoint.metadata`)."""
        return Checkpoint(self.path, {}, self.card).metadata


def read_card(path: Path | str) -> dict[str, Any]:
    """The JSON card beside a ``.safetensors`` file ({} when there is none or it is unreadable)."""
    try:
        return json.loads(card_path(path).read_text())
    except (OSError, ValueError):
        return {}


def make_card(studio: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A format-2 model card: the studio's record and the plugin's metadata, side by side."""
    return {"format": CARD_FORMAT, "studio": dict(studio), "metadata": dict(metadata or {})}


def card_path(path: Path | str) -> Path:
    """The model card that belongs to a ``.safetensors`` file."""
    return Path(path).with_suffix(".json")


def save_checkpoint(path: Path | str, tensors: Mapping[str, torch.Tensor], card: Mapping[str, Any]) -> Path:
    """Write ``tensors`` to ``path`` (.safetensors) and ``card`` to the .json beside it, atomically."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp))
    atomic_write_text(card_path(path), json.dumps(dict(card), indent=2, sort_keys=True, default=str) + "\n")
    return path


def load_checkpoint(path: Path | str, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint` (the card may be missing: then it is {}).

    Raises FileNotFoundError when there is no file, ValueError when it is not a safetensors file
    (a pickled ``torch.save`` file included: it is refused, never unpickled).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path} is not a safetensors checkpoint ({exc}); the studio loads nothing else") from None
    return Checkpoint(path=path, tensors=tensors, card=read_card(path))


def shipped_checkpoint(assets_dir: Path | str | None, name: str) -> Path | None:
    """The checkpoint ``assets_dir/NAME.safetensors`` of a method's shipped assets, if there is one."""
    if assets_dir is None:
        return None
    path = Path(assets_dir) / f"{name}.safetensors"
    return path if path.is_file() else None


def module_tensors(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """A module's state dict with every key under ``prefix.`` (``backbone.conv1.weight``): how
    checkpoints, TrainLoop's included, store a model, so one file can hold several."""
    return {f"{prefix}.{key}": value for key, value in module.state_dict().items()}


def load_module_tensors(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], prefix: str) -> Any:
    """Load the ``prefix.``-keyed tensors of a checkpoint into ``module`` (strict: every key must fit);
    returns the module. ValueError when the checkpoint has no ``prefix.*`` tensors."""
    state = {key[len(prefix) + 1:]: value for key, value in tensors.items() if key.startswith(prefix + ".")}
    if not state:
        raise ValueError(f"checkpoint has no '{prefix}.*' tensors")
    module.load_state_dict(state)
    return module


DataclassT = TypeVar("DataclassT")


def dataclass_from_dict(cls: type[DataclassT], values: Mapping[str, Any]) -> DataclassT:
    """Rebuild a config dataclass stored in a card (``dataclasses.asdict``): unknown keys are an
    error (a card from another architecture), missing ones take the field's default, and lists
    become tuples where the field is a tuple."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {unknown[0]!r} (fields: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if typing.get_origin(hints[key]) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)

"""Checkpoints: tensors in safetensors, plus a JSON model card beside them.

Loading never executes code from the file: safetensors holds only tensors, and the card is JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors (from safetensors) and its JSON model card."""

    path: Path
    tensors: dict[str, torch.Tensor]
    card: dict[str, Any]


def card_path(path: Path | str) -> Path:
    """The model card that belongs to a ``.safetensors`` file."""
    return Path(path).with_suffix(".json")


def _atomic_write(path: Path, write) -> None:
    # Write beside the target and rename, so a crash never leaves a half-written checkpoint.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(path: Path | str, tensors: Mapping[str, torch.Tensor], card: Mapping[str, Any]) -> Path:
    """Write ``tensors`` to ``path`` (.safetensors) and ``card`` to the .json beside it, atomically."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic_write(path, lambda tmp: save_file(contiguous, tmp))
    text = json.dumps(dict(card), indent=2, sort_keys=True, default=str)
    _atomic_write(card_path(path), lambda tmp: Path(tmp).write_text(text + "\n"))
    return path


def load_checkpoint(path: Path | str, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint` (the card may be missing: then it is {})."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    tensors = load_file(str(path), device=str(device))
    card_file = card_path(path)
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    return Checkpoint(path=path, tensors=tensors, card=card)


def shipped_checkpoint(assets_dir: Path | str, method: str, name: str) -> Path | None:
    """The checkpoint shipped in ``assets/<method>/<name>.safetensors``, if there is one."""
    path = Path(assets_dir) / method / f"{name}.safetensors"
    return path if path.is_file() else None

"""What makes a :class:`trainer.loop.TrainLoop` run repeat and resume exactly: seeding every random
generator, and nested state (optimiser and scheduler state dicts, RNG states) as tensors + JSON, the form
a resume state stores what is not a flat tensor dict in."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import torch


def flatten(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of ``value`` whose tensors (and numpy arrays) move into ``tensors`` under dotted
    keys (``optimizer.0.state.3.momentum_buffer``); :func:`unflatten` reverses it exactly (int keys,
    tuples and non-finite floats included)."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach()
        return {"__tensor__": key}
    if type(value).__module__ == "numpy" and hasattr(value, "dtype"):
        if getattr(value, "ndim", 0):
            tensors[key] = torch.from_numpy(value.astype("int64" if value.dtype.kind in "iub" else "float64"))
            return {"__ndarray__": key, "dtype": str(value.dtype)}
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [flatten(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [flatten(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: flatten(v, f"{key}.{k}", tensors) for k, v in value.items()}
        return {"__items__": [[k, flatten(v, f"{key}.{k}", tensors)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save {key} ({type(value).__name__}) in a resume state")


def unflatten(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The value :func:`flatten` took apart, with its tensors taken from ``tensors``."""
    if isinstance(value, list):
        return [unflatten(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].cpu().numpy().astype(value["dtype"])
    if "__float__" in value:
        return float(value["__float__"])
    if "__tuple__" in value:
        return tuple(unflatten(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {k: unflatten(v, tensors) for k, v in value["__items__"]}
    return {k: unflatten(v, tensors) for k, v in value.items()}


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch (CPU and CUDA), Python ``random`` and numpy; return a CPU generator for shuffling."""
    seed_globals(seed)
    return torch.Generator().manual_seed(seed)


def seed_globals(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is optional
        pass

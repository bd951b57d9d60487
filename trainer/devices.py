"""Which torch device to train or run a demo on."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for ``name``: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:N" or "mps".

    Raises ValueError saying what to use instead when the device is unknown or not available here.
    """
    text = (name or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index_text = text.partition(":")[2]
        if index_text and not index_text.isdigit():
            raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N (N a GPU index) or mps")
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but CUDA is not available here; use cpu or auto")
        count = torch.cuda.device_count()
        if index_text and int(index_text) >= count:
            raise ValueError(f"device {name!r} does not exist: this machine has {count} CUDA device(s) "
                             f"(cuda:0 .. cuda:{count - 1})")
        return torch.device(text)
    if text == "mps":
        if not _mps_available():
            raise ValueError("device 'mps' was asked for but Apple MPS is not available here; use cpu or auto")
        return torch.device("mps")
    raise ValueError(f"unknown device {name!r}; use one of: {', '.join(DEVICE_CHOICES)}")


def available_devices() -> list[str]:
    """The device names that :func:`resolve_device` accepts on this machine, "auto" first."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def describe_device(device: torch.device | str) -> str:
    """A human label, e.g. "cuda:0 (NVIDIA H100 80GB HBM3)" or "cpu"."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)

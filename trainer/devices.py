"""Which torch device to train or run a demo on."""

from __future__ import annotations

import re

import torch

from trainer.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def check_device_name(name: str) -> str:
    """``name`` stripped and lower-cased if it is one of auto, cpu, cuda, cuda:N or mps (whether the
    device exists is checked where the run starts: the worker may be another machine). ConfigError (a ValueError) otherwise."""
    text = str(name).strip().lower()
    if text in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:[0-9]{1,4}", text):
        return text
    raise ConfigError(f"unknown device {str(name)[:40]!r}; use one of: {', '.join(DEVICE_CHOICES)}")


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


def apply_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads for torch's math in this process (None: leave torch's default).

    On 2 cores with another process busy, a default recipe took 2 min 42 s with torch's default
    threads against 14 s with one: oversubscribed OpenMP threads spin-wait on each other.
    """
    if threads is not None:
        torch.set_num_threads(int(threads))

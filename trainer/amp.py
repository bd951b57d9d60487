"""How a :class:`~trainer.loop.TrainLoop` uses an accelerator: mixed precision (AMP), data kept on the
device, ``torch.compile`` and the channels-last layout. Each is a setting of the loop (an argument of
``TrainLoop``), whose default comes from the environment of the process that trains:

========================== ============================= =====================================================
variable                   values (default first)        meaning
========================== ============================= =====================================================
``AVSTUDIO_AMP``           auto, off, bf16, fp16         autocast precision of the training step; ``auto`` is
                                                         bf16 on a CUDA GPU that has it, float32 (off) elsewhere;
                                                         fp16 adds a gradient scaler
``AVSTUDIO_COMPILE``       off, on                       ``torch.compile`` the forward passes the recipe wraps
                                                         in ``loop.compiled``
``AVSTUDIO_CHANNELS_LAST`` auto, on, off                 the models' 4-D weights in NHWC; ``auto`` is on for
                                                         CUDA with AMP (tensor cores want NHWC), off elsewhere
========================== ============================= =====================================================

A resumed run keeps the precision it was saved with (its resume state holds the mode and the gradient
scaler's state), whatever the variables say now: a resume continues the same trajectory. Weights,
optimiser state, evaluation and checkpoints stay float32 in every mode; autocast only runs the step's
matrix products and convolutions in the lower precision.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

import torch

from trainer.errors import ConfigError

AMP_MODES = ("auto", "off", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SWITCHES = ("auto", "on", "off")
DATA_FRACTION = 0.5  # tensor datasets go to a GPU when they take at most this share of its free memory

_TRUE, _FALSE = ("1", "on", "true", "yes"), ("0", "off", "false", "no", "")


def check_amp(name: str | None) -> str:
    """``name`` as one of auto, off, bf16, fp16 (None: ``AVSTUDIO_AMP``, else auto); ConfigError otherwise."""
    text = (os.environ.get("AVSTUDIO_AMP", "auto") if name is None else str(name)).strip().lower()
    aliases = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "none": "off", "fp32": "off",
               "float32": "off", "0": "off", "false": "off"}
    text = aliases.get(text, text) or "auto"
    if text not in AMP_MODES:
        raise ConfigError(f"AVSTUDIO_AMP / amp: unknown precision {str(name)[:40]!r}; use one of: {', '.join(AMP_MODES)}")
    return text


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 natively (a CUDA GPU from Ampere on; the CPU's autocast always does)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    return device.type == "cpu"


def resolve_amp(name: str | None, device: torch.device) -> str:
    """The precision a run on ``device`` trains in: off, bf16 or fp16. ``auto`` is bf16 on a CUDA GPU that
    supports it and off everywhere else (a CPU trains faster in float32; an older GPU may choose fp16
    explicitly). ConfigError for bf16 on a GPU without it."""
    mode = check_amp(name)
    if mode == "auto":
        return "bf16" if device.type == "cuda" and bf16_supported(device) else "off"
    if mode == "bf16" and device.type == "cuda" and not bf16_supported(device):
        raise ConfigError("amp: this GPU has no bfloat16 (it needs Ampere or newer); use fp16 or off")
    return mode


def check_switch(value: bool | str | None, variable: str) -> str:
    """auto, on or off from a bool, a string, or (None) the environment variable ``variable``."""
    if value is None:
        value = os.environ.get(variable, "auto")
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip().lower()
    if text in _TRUE:
        return "on"
    if text in _FALSE:
        return "off"
    if text == "auto":
        return "auto"
    raise ConfigError(f"{variable}: use on, off or auto, got {str(value)[:40]!r}")


def use_channels_last(setting: bool | str | None, device: torch.device, amp: str) -> bool:
    """``AVSTUDIO_CHANNELS_LAST``: auto is on for CUDA with mixed precision (NHWC feeds the tensor cores)."""
    switch = check_switch(setting, "AVSTUDIO_CHANNELS_LAST")
    return device.type == "cuda" and amp != "off" if switch == "auto" else switch == "on"


def use_compile(setting: bool | str | None) -> bool:
    """``AVSTUDIO_COMPILE``: off unless asked for (compiling takes minutes and pays off on long GPU runs)."""
    return check_switch(setting, "AVSTUDIO_COMPILE") == "on"


def free_device_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device in bytes; None for a device whose free memory is not measured."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def fits_on_device(nbytes: int, device: torch.device, free: int | None = None,
                   fraction: float = DATA_FRACTION) -> bool:
    """Whether ``nbytes`` of data should live on ``device``: always on the CPU (it is there) and MPS
    (shared memory); on a GPU when it takes at most ``fraction`` of the free memory (``free``: measured
    when None), so that the model, its activations and the optimiser keep room."""
    if device.type != "cuda":
        return True
    free = free_device_bytes(device) if free is None else free
    return free is not None and nbytes <= fraction * free


class Precision:
    """One run's precision: the autocast context and, for fp16, the gradient scaler (with its state)."""

    def __init__(self, mode: str, device: torch.device) -> None:
        if mode not in ("off", "bf16", "fp16"):
            raise ValueError(f"resolve the precision first (off, bf16 or fp16), got {mode!r}")
        self.mode = mode
        self.device = torch.device(device)
        self.dtype = AMP_DTYPES.get(mode)
        self.scaler = torch.amp.GradScaler(self.device.type) if mode == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` in this precision on the device's type; a context that does nothing when off."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to backpropagate: scaled under fp16 (small fp16 gradients would flush to zero)."""
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("mode") != self.mode:
            raise ValueError(f"the state is of precision {state.get('mode')!r}, this one is {self.mode!r}")
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(dict(state["scaler"]))


__all__ = [
    "AMP_MODES", "DATA_FRACTION", "Precision", "bf16_supported", "check_amp", "check_switch", "fits_on_device",
    "free_device_bytes", "resolve_amp", "use_channels_last", "use_compile",
]

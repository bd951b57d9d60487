"""Recipe configs: dataclasses whose fields carry a default, help text, choices and a range.

The CLI (``--set``), the Runs tab, the queue and the worker all build configs through
:func:`make_config`, so a value is validated the same way wherever it comes from.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import field
from typing import Any

from trainer.errors import ConfigError

MAX_TEXT = 4096  # characters of one text value: paths and references are far shorter
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_flag(value: Any, default: bool = False) -> bool:
    """A yes/no setting from text (``1 true yes on`` / ``0 false no off``, any case); ``default`` when empty.

    Raises ValueError for anything else, so a typo never silently reads as "off".
    """
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip().lower()
    if not text:
        return default
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def config_field(default: Any, help: str, *, choices: tuple | None = None,
                 min: float | None = None, max: float | None = None) -> Any:
    """A recipe config field with a default and help text (shown by the CLI and the Runs form).

    ``choices`` restricts the value to a fixed set (rendered as a dropdown); ``min`` / ``max``
    bound a number (inclusive; for a list, every item). Use inside a ``@dataclass`` recipe config:
    ``epochs: int = config_field(30, "training epochs", min=1)``.
    """
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if min is not None:
        metadata["min"] = min
    if max is not None:
        metadata["max"] = max
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def config_fields(config_cls: type) -> list[dict[str, Any]]:
    """Describe a recipe config dataclass: name, type, default, help, choices, min and max of each field."""
    hints = typing.get_type_hints(config_cls)
    described = []
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"{config_cls.__name__}.{f.name} needs a default")
        described.append({
            "name": f.name, "type": hints[f.name], "default": default, "help": f.metadata.get("help", ""),
            "choices": f.metadata.get("choices"), "min": f.metadata.get("min"), "max": f.metadata.get("max"),
        })
    return described


def describe_constraints(d: Mapping[str, Any]) -> str:
    """``"one of: a, b"``, ``"≥ 1"``, ``"0 … 1"`` or "" for a field described by :func:`config_fields`."""
    if d.get("choices") is not None:
        return "one of: " + ", ".join(map(str, d["choices"]))
    low, high = d.get("min"), d.get("max")
    if low is not None and high is not None:
        return f"{low:g} … {high:g}"
    if low is not None:
        return f"≥ {low:g}"
    if high is not None:
        return f"≤ {high:g}"
    return ""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _coerce(name: str, kind: Any, value: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(name, args[0], value)
    if kind is bool:
        try:
            return parse_flag(value)
        except ValueError:
            raise ConfigError(f"{name}: expected true/false, got {value!r}") from None
    if kind in (int, float, str):
        # only a scalar: str() of a list, dict or None would pass for text and fail later, in the run
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{name}: expected {kind.__name__}, got {_shown(value)}")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            coerced = kind(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{name}: expected {kind.__name__}, got {_shown(value)}") from None
        if kind is float and not math.isfinite(coerced):
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        if kind is str and ("\x00" in coerced or len(coerced) > MAX_TEXT):
            raise ConfigError(f"{name}: text must be at most {MAX_TEXT} characters without NUL bytes")
        return coerced
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple, str)):
            raise ConfigError(f"{name}: expected a list (or comma-separated text), got {_shown(value)}")
        (item_kind, *_) = typing.get_args(kind) or (str,)
        items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v]
        return origin(_coerce(name, item_kind, v) for v in items)
    return value


def _check_range(name: str, value: Any, low: float | None, high: float | None) -> None:
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if item is None or isinstance(item, (str, bool)):
            continue
        if (low is not None and item < low) or (high is not None and item > high):
            bound = describe_constraints({"min": low, "max": high})
            raise ConfigError(f"{name}: {item!r} is out of range (must be {bound})")


def make_config(config_cls: type, values: Mapping[str, Any] | None = None) -> Any:
    """Build a recipe config from ``values`` (strings or typed), validating keys, types, choices and ranges.

    Raises :class:`ConfigError` with a one-line message naming the valid keys, choices or range.
    """
    described = {d["name"]: d for d in config_fields(config_cls)}
    kwargs = {}
    for key, value in (values or {}).items():
        if key not in described:
            valid = ", ".join(described) or "(none)"
            raise ConfigError(f"unknown config key {key!r}; valid keys: {valid}")
        d = described[key]
        coerced = _coerce(key, d["type"], value)
        if d["choices"] is not None and coerced not in d["choices"]:
            valid = ", ".join(map(str, d["choices"]))
            raise ConfigError(f"{key}: {coerced!r} is not one of: {valid}")
        _check_range(key, coerced, d["min"], d["max"])
        kwargs[key] = coerced
    return config_cls(**kwargs)


def parse_assignments(assignments: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Turn ``["epochs=3", "lr=0.1"]`` into a dict; a ConfigError for an item without ``=``."""
    values = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected key=value, got {item!r}")
        values[key.strip()] = value.strip()
    return values


def config_to_dict(config: Any) -> dict[str, Any]:
    """A recipe config as a JSON-ready dict."""
    return dataclasses.asdict(config)

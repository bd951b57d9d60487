"""The plugin-facing contract of Adaptive Vision Studio: the whole of it, in one module.

A plugin (built in or third party) imports only from here::

    from app.api import hookimpl, Method, Recipe, config_field

    @hookimpl
    def register_methods(register):
        register(Method(slug="echo", title="Echo", paper="-", summary="...", build_demo=build))

Hooks are bare functions with one docstring each (the docs test reads them); the objects a plugin
fills in are dataclasses; the contexts the studio hands to plugins are Protocols, so the trainer
and the app can implement them without importing each other.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pluggy

PROJECT_NAME = "avstudio"
"""pluggy project name and the entry-point group external plugins register under."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --------------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------------


@hookspec
def register_methods(register: Callable[[Method], None]) -> None:
    """Register methods: call ``register(Method(...))`` once for each method the plugin provides."""


@hookspec
def register_datasets(register: Callable[[DatasetSpec], None]) -> None:
    """Register datasets: call ``register(DatasetSpec(...))`` once for each dataset the plugin provides."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``avstudio`` CLI: ``cli`` is its click group; use ``@cli.command()``."""


HOOK_NAMES = ("register_methods", "register_datasets", "register_commands")


# --------------------------------------------------------------------------------------------
# Errors a user can cause; the UI shows their message, never a traceback.
# --------------------------------------------------------------------------------------------


from app.errors import ConfigError, UserError  # noqa: E402  (re-exported)

# --------------------------------------------------------------------------------------------
# What a plugin registers
# --------------------------------------------------------------------------------------------


def config_field(default: Any, help: str, *, choices: tuple | None = None) -> Any:
    """A recipe config field with a default and help text (shown by the CLI and the Runs form).

    ``choices`` restricts the value to a fixed set (rendered as a dropdown).
    Use inside a ``@dataclass`` recipe config: ``epochs: int = config_field(30, "training epochs")``.
    """
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class Recipe:
    """One way to train (part of) a method.

    ``train(config, ctx)`` is a plain function: it talks to the world only through ``ctx``
    (:class:`TrainContext`) and returns a dict of final metrics (or None).
    ``config_cls`` is a dataclass whose fields all have defaults (use :func:`config_field`).
    """

    name: str
    config_cls: type
    train: Callable[[Any, TrainContext], Mapping[str, float] | None]
    description: str = ""


@dataclass
class Method:
    """A method the studio shows in its own tab and can train.

    ``build_demo(ctx)`` is called inside a ``gr.Tab`` while the Gradio Blocks are built; it adds
    the components and events of the demo (give every event an ``api_name``). ``ctx`` is a
    :class:`DemoContext`.
    """

    slug: str
    title: str
    paper: str
    summary: str
    build_demo: Callable[[DemoContext], None] | None = None
    recipes: list[Recipe] = field(default_factory=list)
    paper_url: str = ""

    def recipe(self, name: str) -> Recipe:
        """The recipe called ``name``; a UserError naming the valid ones otherwise."""
        for recipe in self.recipes:
            if recipe.name == name:
                return recipe
        valid = ", ".join(r.name for r in self.recipes) or "(none)"
        raise UserError(f"method {self.slug!r} has no recipe {name!r}; valid recipes: {valid}")


@dataclass
class DatasetSpec:
    """A dataset the studio can train on and show.

    ``load(split, root, download=False, **options)`` returns a ``torch.utils.data.Dataset`` whose
    items are ``(image, target)``: ``image`` a float tensor C×H×W in [0, 1]; ``target`` a class index
    (``task="classification"``) or a float vector of 0/1 per attribute (``task="multilabel"``).
    Built-in datasets also expose ``images`` (uint8 N×C×H×W), ``targets`` and, where defined,
    ``difficulty`` (float N in [0, 1]) as tensors, for fast whole-split training and analysis.
    ``root`` is the studio's data directory (the dataset caches or finds its files below it).
    ``labels`` are the class names or the attribute names, in target order.
    """

    name: str
    title: str
    task: str
    description: str
    load: Callable[..., Any]
    labels: list[str] = field(default_factory=list)
    image_size: tuple[int, int] = (32, 32)
    channels: int = 3
    splits: tuple[str, ...] = ("train", "val", "test")
    builtin: bool = False


from trainer.checkpoints import Checkpoint  # noqa: E402  (re-exported: what load_checkpoint returns)

# --------------------------------------------------------------------------------------------
# What the studio hands to a plugin
# --------------------------------------------------------------------------------------------


@runtime_checkable
class Progress(Protocol):
    """A progress reporter (tqdm on the CLI, a progress fraction in the Runs tab)."""

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps."""

    def __enter__(self) -> Progress: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class TrainContext(Protocol):
    """What a recipe's ``train(config, ctx)`` may use; nothing else of the studio."""

    run_id: int
    """The run being executed (its row in the run store)."""
    device: Any
    """The ``torch.device`` to train on (``auto`` resolved to CUDA, then MPS, then CPU)."""
    data_dir: Path
    """Where datasets are cached and looked for."""
    run_dir: Path
    """A directory owned by this run, for checkpoints and figures."""

    def dataset(self, name: str, split: str, **options: Any) -> Any:
        """Load a registered dataset split (see :class:`DatasetSpec`)."""

    def log_metrics(self, step: int, **values: float) -> None:
        """Record metric values at ``step``; written to the run store in batches."""

    def save_checkpoint(
        self, name: str, tensors: Mapping[str, Any], metadata: Mapping[str, Any] | None = None
    ) -> Path:
        """Save tensors (safetensors) plus a JSON model card; registered as the run's artifact ``name``.

        ``metadata`` goes into the card (e.g. ``{"epoch": 3, "metrics": {...}}``). Saving the same
        name again replaces the file: the last one is what ``resume_checkpoint`` returns.
        """

    def load_checkpoint(self, ref: str) -> Checkpoint:
        """Load a checkpoint: a file path, ``run:ID[/NAME]``, or ``METHOD/NAME`` (promoted, else shipped)."""

    def resume_checkpoint(self, name: str | None = None) -> Checkpoint | None:
        """When this run is being resumed: its last saved checkpoint (of ``name``), else None."""

    def should_stop(self) -> bool:
        """True once the run was cancelled: save what is worth saving and return promptly."""

    def progress(self, total: int, desc: str = "") -> Progress:
        """A progress reporter for ``total`` steps: ``with ctx.progress(n, "epoch 1") as bar: bar.update()``."""


@runtime_checkable
class DemoContext(Protocol):
    """What a method's ``build_demo(ctx)`` may use."""

    method: str
    """The method's slug."""
    device: Any
    """The ``torch.device`` demos run on (CPU unless ``AVSTUDIO_DEMO_DEVICE`` says otherwise)."""
    data_dir: Path
    """Where datasets are cached and looked for."""
    assets_dir: Path
    """The shipped assets of this method (``assets/<slug>``): checkpoints, model cards, examples."""
    training_enabled: bool
    """Whether this studio lets its users start training (``AVSTUDIO_ENABLE_TRAINING=1``)."""

    def checkpoint_path(self, name: str) -> Path | None:
        """The file the demo should use for checkpoint ``name``: the promoted one, else the shipped one."""

    def load_checkpoint(self, name: str) -> Checkpoint | None:
        """Load :meth:`checkpoint_path` (None when there is neither a promoted nor a shipped one)."""

    def dataset(self, name: str, split: str, **options: Any) -> Any:
        """Load a registered dataset split."""


# --------------------------------------------------------------------------------------------
# Recipe configs: from strings and dicts, validated
# --------------------------------------------------------------------------------------------


def config_fields(config_cls: type) -> list[dict[str, Any]]:
    """Describe a recipe config dataclass: name, type, default, help and choices of each field."""
    hints = typing.get_type_hints(config_cls)
    described = []
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"{config_cls.__name__}.{f.name} needs a default")
        described.append(
            {
                "name": f.name,
                "type": hints[f.name],
                "default": default,
                "help": f.metadata.get("help", ""),
                "choices": f.metadata.get("choices"),
            }
        )
    return described


def _coerce(name: str, kind: Any, value: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(name, args[0], value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if kind in (int, float, str):
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        if kind is not str and isinstance(value, bool):
            raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}")
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}") from None
    if origin in (list, tuple):
        (item_kind, *_) = typing.get_args(kind) or (str,)
        items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v]
        return origin(_coerce(name, item_kind, v) for v in items)
    return value


def make_config(config_cls: type, values: Mapping[str, Any] | None = None) -> Any:
    """Build a recipe config from ``values`` (strings or typed), validating keys, types and choices.

    Raises :class:`ConfigError` with a one-line message naming the valid keys or choices.
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


def iter_hooks() -> Iterator[tuple[str, Callable]]:
    """The hook specifications defined in this module, by name."""
    for name in HOOK_NAMES:
        yield name, globals()[name]


# Image input helpers for demos (any mode, any size, EXIF rotation; a UserError otherwise).
from app.images import image_to_tensor, load_rgb_image  # noqa: E402

__all__ = [
    "Checkpoint", "ConfigError", "DatasetSpec", "DemoContext", "Method", "Progress", "Recipe",
    "TrainContext", "UserError", "config_field", "config_fields", "config_to_dict", "hookimpl",
    "hookspec", "image_to_tensor", "load_rgb_image", "make_config", "parse_assignments",
]

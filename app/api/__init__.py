"""The core of the plugin contract of Adaptive Vision Studio: what every plugin must know.

A plugin (built in or third party) imports from here::

    from app.api import hookimpl, Method, Recipe, config_field

    @hookimpl
    def register_methods(register):
        register(Method(slug="echo", title="Echo", paper="-", summary="...", build_demo=build))

Hooks are bare functions with one docstring each (the docs test reads them); the objects a plugin
fills in are dataclasses; the contexts the studio hands to plugins are Protocols, so the trainer
and the app can implement them without importing each other. Beside the core, two kits hold what
plugins share: :mod:`app.api.training` (the training loop, checkpoint files, dataset building blocks)
and :mod:`app.api.demo` (uploads, the image panel, model cache, small-image display, latency timing,
slot checks). A plugin imports these three and nothing else of the studio (a test holds it); its tests
may also import the test harness, :mod:`app.testing`. The core imports neither the kits nor anything
above them (no harness, no CLI, no UI).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pluggy

from trainer.checkpoints import Checkpoint, CheckpointInfo
from trainer.config import (  # recipe configs, validated one way everywhere
    config_field,
    config_fields,
    config_to_dict,
    describe_constraints,
    make_config,
    parse_assignments,
)
from trainer.errors import ConfigError, UserError  # errors a user can cause: shown as their message

if TYPE_CHECKING:
    import click
    import torch
    from PIL import Image

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
def register_commands(cli: click.Group, ctx: CommandContext) -> None:
    """Add commands to the ``avstudio`` CLI: ``cli`` is its click group (``@cli.command()``); ``ctx`` a CommandContext."""


def hook_names() -> list[str]:
    """The names of the hook specifications defined in this module (what pluggy registers)."""
    return [name for name, value in globals().items()
            if callable(value) and hasattr(value, f"{PROJECT_NAME}_spec")]


def iter_hooks() -> Iterator[tuple[str, Callable]]:
    """The hook specifications defined in this module, by name."""
    for name in hook_names():
        yield name, globals()[name]


# --------------------------------------------------------------------------------------------
# What a plugin registers
# --------------------------------------------------------------------------------------------


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
class CheckpointSlot:
    """A checkpoint a method's demo reads, by name (``"backbone"``) or name pattern (``"policy-g*"``).

    ``check(checkpoint)`` (optional) raises UserError when a checkpoint cannot fill the slot (another
    architecture, another number of classes): promotion refuses it with that message.
    """

    name: str
    description: str = ""
    check: Callable[[Checkpoint], None] | None = None

    def matches(self, name: str) -> bool:
        """Whether checkpoint ``name`` fills this slot."""
        return fnmatch.fnmatchcase(name, self.name)


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
    checkpoint_slots: list[CheckpointSlot] = field(default_factory=list)
    """The checkpoints its demo reads: the only slots a run's checkpoint can be promoted into."""
    assets_dir: Path | None = None
    """Shipped checkpoints (``NAME.safetensors`` + ``NAME.json``) and example images. A third-party
    plugin points this into its own package (``Path(__file__).parent / "assets"``); None means the
    studio's ``assets/<slug>`` (the built-ins)."""

    def slot(self, name: str) -> CheckpointSlot | None:
        """The declared slot that ``name`` fills (an exact name or a ``*`` pattern), or None."""
        return next((s for s in self.checkpoint_slots if s.matches(name)), None)

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

    A dataset built on another registered one (a grayscale ``shapes``) declares a keyword parameter
    ``datasets``: ``load(split, root, download=False, *, datasets, **options)`` then gets a callable
    ``datasets(name, split, **options)`` that loads that other dataset as ``ctx.dataset`` would (the same
    data directory; a dataset that ends up loading itself is a UserError).
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
    device: torch.device
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
        self, name: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
    ) -> Path:
        """Save tensors (safetensors) plus a JSON model card; registered as the run's artifact ``name``.

        ``metadata`` goes into the card (e.g. ``{"epoch": 3, "metrics": {...}}``). Saving the same
        name again replaces the file: the last one is what ``resume_checkpoint`` returns.
        """

    def load_checkpoint(self, ref: str) -> Checkpoint:
        """Load a checkpoint: a file path, ``run:ID[/NAME]``, or ``METHOD/NAME`` (promoted, else shipped)."""

    def save_image(self, name: str, image: Image.Image, step: int | None = None) -> Path:
        """Save a PIL image (e.g. a grid of samples) as a PNG artifact of kind ``image``, named ``NAME-STEP``
        when ``step`` is given (saving the same name again replaces it); the Runs tab shows them."""

    def resume_checkpoint(self, name: str | None = None) -> Checkpoint | None:
        """When this run is being resumed: its last saved checkpoint (of ``name``), else None."""

    def save_state(self, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> Path:
        """Save what resuming needs to continue the same trajectory (weights, optimiser, schedule, RNG
        states) in one file of the run directory, replaced on every call; not a promotable checkpoint."""

    def resume_state(self) -> Checkpoint | None:
        """When this run is being resumed: what :meth:`save_state` saved last, else None."""

    def should_stop(self) -> bool:
        """True once the run was cancelled, or interrupted (its worker is stopping or died): save what is
        worth saving and return promptly. An interrupted run resumes from its last checkpoint."""

    def progress(self, total: int, desc: str = "") -> Progress:
        """A progress reporter for ``total`` steps: ``with ctx.progress(n, "epoch 1") as bar: bar.update()``."""


@runtime_checkable
class DemoContext(Protocol):
    """What a method's ``build_demo(ctx)`` may use."""

    method: str
    """The method's slug."""
    device: torch.device
    """The ``torch.device`` demos run on (``AVSTUDIO_DEMO_DEVICE``; auto: CUDA when the server has one, else the CPU)."""
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

    def checkpoints(self) -> list[CheckpointInfo]:
        """Every checkpoint the demo may offer, promoted and shipped, by name (with its card)."""

    def dataset(self, name: str, split: str, **options: Any) -> Any:
        """Load a registered dataset split."""


@runtime_checkable
class CommandContext(Protocol):
    """What a plugin's CLI commands (``register_commands(cli, ctx)``) may use; read when a command runs,
    so global options (``avstudio --home DIR mycommand``) apply."""

    home: Path
    """The studio's home (``AVSTUDIO_HOME``): run store, runs, data."""
    data_dir: Path
    """Where datasets are cached and looked for."""
    device: torch.device
    """The ``torch.device`` the studio's settings ask for (``AVSTUDIO_DEVICE``)."""

    def load_checkpoint(self, ref: str) -> Checkpoint:
        """Load a checkpoint: a file path, ``run:ID[/NAME]``, or ``METHOD/NAME`` (promoted, else shipped)."""

    def checkpoints(self, method: str) -> list[CheckpointInfo]:
        """Every checkpoint ``method``'s demo may use, promoted and shipped (as DemoContext.checkpoints)."""

    def dataset(self, name: str, split: str, **options: Any) -> Any:
        """Load a registered dataset split."""


__all__ = [
    # hooks
    "hookimpl", "hookspec", "hook_names", "iter_hooks",
    # what a plugin registers
    "Method", "Recipe", "CheckpointSlot", "DatasetSpec",
    # what the studio hands to a plugin
    "TrainContext", "DemoContext", "CommandContext", "Progress", "Checkpoint", "CheckpointInfo",
    # errors a user can fix
    "UserError", "ConfigError",
    # recipe configs
    "config_field", "config_fields", "config_to_dict", "describe_constraints", "make_config", "parse_assignments",
]

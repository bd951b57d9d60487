"""Finds, loads and registers plugins; a plugin that fails is reported, never fatal.

Built-in plugins come from ``DEFAULT_PLUGINS`` and go through exactly the same hooks as external
ones (found through the ``avstudio`` entry-point group, or single files in a plugins directory).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from app import api
from app.errors import UserError

log = logging.getLogger("avstudio.plugins")

DEFAULT_PLUGINS = (
    "plugins.datasets",
    "plugins.blockdrop",
)


@dataclass
class PluginStatus:
    """One plugin as ``avstudio plugins`` and the Plugins tab show it."""

    name: str
    source: str  # "builtin", "entrypoint" or "plugins-dir"
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    status: str = "ok"  # "ok" or "failed"
    error: str | None = None  # one line; the traceback goes to the log
    traceback: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "version": self.version, "hooks": self.hooks,
                "status": self.status, "error": self.error}


@dataclass
class Registry:
    """Everything the plugins registered: methods, datasets, and how each plugin fared."""

    pm: pluggy.PluginManager
    methods: dict[str, api.Method] = field(default_factory=dict)
    datasets: dict[str, api.DatasetSpec] = field(default_factory=dict)
    plugins: list[PluginStatus] = field(default_factory=list)

    def method(self, slug: str) -> api.Method:
        if slug not in self.methods:
            valid = ", ".join(sorted(self.methods)) or "(none loaded)"
            raise UserError(f"unknown method {slug!r}; valid methods: {valid}")
        return self.methods[slug]

    def recipe(self, method: str, recipe: str) -> api.Recipe:
        return self.method(method).recipe(recipe)

    def dataset_spec(self, name: str) -> api.DatasetSpec:
        if name not in self.datasets:
            valid = ", ".join(sorted(self.datasets)) or "(none loaded)"
            raise UserError(f"unknown dataset {name!r}; valid datasets: {valid}")
        return self.datasets[name]

    def load_dataset(self, name: str, split: str, root: Path | str, **options: Any) -> Any:
        spec = self.dataset_spec(name)
        if split not in spec.splits:
            raise UserError(f"dataset {name!r} has no split {split!r}; valid splits: {', '.join(spec.splits)}")
        return spec.load(split, Path(root), **options)

    def failed(self) -> list[PluginStatus]:
        return [p for p in self.plugins if p.status != "ok"]


def _one_line(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}".splitlines()[0][:300]


def _module_from_path(path: Path) -> ModuleType:
    name = f"avstudio_local_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wanted_entrypoints(selection: str | None) -> list[importlib.metadata.EntryPoint]:
    """Entry points of the ``avstudio`` group; ``selection`` (AVSTUDIO_PLUGINS) filters by name.

    None loads every installed plugin; "" loads none; "a,b" loads those entry-point or
    distribution names only.
    """
    points = list(importlib.metadata.entry_points(group=api.PROJECT_NAME))
    if selection is None:
        return points
    wanted = {s.strip() for s in selection.split(",") if s.strip()}
    chosen = []
    for point in points:
        dist = getattr(point, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        if point.name in wanted or (dist_name and dist_name in wanted):
            chosen.append(point)
    return chosen


def _candidates(plugins: str | None, plugins_dir: Path | None, extra: tuple[str, ...]):
    """Yield (name, source, version, loader) for every plugin to try."""
    for module_name in (*DEFAULT_PLUGINS, *extra):
        yield module_name, "builtin", None, lambda m=module_name: importlib.import_module(m)
    for point in _wanted_entrypoints(plugins):
        dist = getattr(point, "dist", None)
        version = dist.version if dist is not None else None
        yield point.name, "entrypoint", version, point.load
    if plugins_dir is not None:
        directory = Path(plugins_dir)
        if not directory.is_dir():
            raise UserError(f"plugins directory {directory} does not exist")
        for path in sorted(directory.glob("*.py")):
            if not path.name.startswith("_"):
                yield path.stem, "plugins-dir", None, lambda p=path: _module_from_path(p)


def load_registry(plugins: str | None = None, plugins_dir: Path | str | None = None,
                  extra_plugins: tuple[str, ...] = ()) -> Registry:
    """Load all plugins and collect what they register.

    ``plugins`` is the AVSTUDIO_PLUGINS selection of external plugins (None: all installed);
    ``plugins_dir`` a directory of single-file plugins; ``extra_plugins`` more module names to
    register like the built-ins (tests use this).
    """
    pm = pluggy.PluginManager(api.PROJECT_NAME)
    pm.add_hookspecs(api)
    registry = Registry(pm=pm)
    for name, source, version, loader in _candidates(plugins, Path(plugins_dir) if plugins_dir else None,
                                                     tuple(extra_plugins)):
        status = PluginStatus(name=name, source=source, version=version)
        registry.plugins.append(status)
        try:
            module = loader()
            if pm.is_registered(module) or pm.get_plugin(name) is not None:
                registry.plugins.pop()
                continue
            pm.register(module, name=name)
            status.hooks = sorted(h.name for h in pm.get_hookcallers(module) or [])
            if version is None:
                status.version = getattr(module, "__version__", None)
        except Exception as exc:  # a broken plugin must not take the studio down
            status.status, status.error, status.traceback = "failed", _one_line(exc), traceback.format_exc()
            log.error("plugin %s failed to load:\n%s", name, status.traceback)
    _collect(registry)
    return registry


def _collect(registry: Registry) -> None:
    """Call the registration hooks plugin by plugin, so one failure is attributed and contained."""
    by_name = {p.name: p for p in registry.plugins}

    def call(hook_name: str, register) -> None:
        for impl in getattr(registry.pm.hook, hook_name).get_hookimpls():
            status = by_name.get(impl.plugin_name)
            if status is not None and status.status != "ok":
                continue
            try:
                impl.function(register)
            except Exception as exc:
                log.error("plugin %s failed in %s:\n%s", impl.plugin_name, hook_name, traceback.format_exc())
                if status is not None:
                    status.status, status.error = "failed", f"{hook_name}: {_one_line(exc)}"
                    status.traceback = traceback.format_exc()

    def registrar(kind: type, into: dict, key: str, what: str):
        """The ``register`` callback a hook receives: type-checked, each name registered once."""
        def register(obj: Any) -> None:
            if not isinstance(obj, kind):
                raise TypeError(f"register_{what}s expects {kind.__name__} objects, got {type(obj).__name__}")
            name = getattr(obj, key)
            if name in into:
                raise ValueError(f"{what} {name!r} is registered twice")
            into[name] = obj
        return register

    call("register_datasets", registrar(api.DatasetSpec, registry.datasets, "name", "dataset"))
    call("register_methods", registrar(api.Method, registry.methods, "slug", "method"))


def registry_from_env() -> Registry:
    """The registry the environment asks for (AVSTUDIO_PLUGINS, AVSTUDIO_PLUGINS_DIR, AVSTUDIO_EXTRA_PLUGINS).

    A module-level function, so a worker process started with ``spawn`` can rebuild the same registry.
    """
    extra = tuple(m for m in os.environ.get("AVSTUDIO_EXTRA_PLUGINS", "").split(",") if m.strip())
    return load_registry(plugins=os.environ.get("AVSTUDIO_PLUGINS"),
                         plugins_dir=os.environ.get("AVSTUDIO_PLUGINS_DIR") or None,
                         extra_plugins=extra)

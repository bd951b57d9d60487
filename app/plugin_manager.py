"""Finds, loads and registers plugins; a plugin that fails is reported, never fatal.

Built-in plugins come from ``DEFAULT_PLUGINS`` and go through exactly the same hooks as external
ones (found through the ``avstudio`` entry-point group, or single files in a plugins directory).

Registration is all or nothing per plugin: a plugin's datasets and methods are collected first and
kept only if every one of its registration hooks succeeded. Every hook call goes through
:meth:`Registry.call_hook`, which isolates failures and records them in one format.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from app import api
from app.errors import UserError
from trainer.errors import failure_line

log = logging.getLogger("avstudio.plugins")

DEFAULT_PLUGINS = (
    "plugins.datasets",
    "plugins.blockdrop",
    "plugins.s3pool",
    "plugins.vgan",
    "plugins.multitask",
)


def hook_names() -> list[str]:
    """The hooks plugins can implement, as pluggy registers them from the contract's hookspecs."""
    pm = pluggy.PluginManager(api.PROJECT_NAME)
    pm.add_hookspecs(api)
    return sorted(name for name in dir(pm.hook) if not name.startswith("_"))


@dataclass
class PluginStatus:
    """One plugin as ``avstudio plugins`` and the Plugins tab show it."""

    name: str
    source: str  # "builtin", "extra" (AVSTUDIO_EXTRA_PLUGINS, the test harness), "entrypoint" or "plugins-dir"
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    status: str = "ok"  # "ok" or "failed"
    error: str | None = None  # one line; the traceback goes to the log
    traceback: str | None = None
    methods: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "version": self.version, "hooks": self.hooks,
                "status": self.status, "error": self.error, "methods": self.methods, "datasets": self.datasets}


def _declares(fn: Callable[..., Any], parameter: str) -> bool:
    """Whether ``fn`` names ``parameter`` in its signature (not merely ``**kwargs``)."""
    try:
        found = inspect.signature(fn).parameters.get(parameter)
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return found is not None and found.kind not in (found.VAR_POSITIONAL, found.VAR_KEYWORD)


@dataclass
class Registry:
    """Everything the plugins registered: methods, datasets, and how each plugin fared."""

    pm: pluggy.PluginManager
    methods: dict[str, api.Method] = field(default_factory=dict)
    datasets: dict[str, api.DatasetSpec] = field(default_factory=dict)
    plugins: list[PluginStatus] = field(default_factory=list)

    # -- lookups -------------------------------------------------------------------------------
    def method(self, slug: str) -> api.Method:
        if slug not in self.methods:
            valid = ", ".join(sorted(self.methods)) or "(none loaded)"
            raise UserError(f"unknown method {slug!r}; valid methods: {valid}{self._failures_hint()}")
        return self.methods[slug]

    def recipe(self, method: str, recipe: str) -> api.Recipe:
        return self.method(method).recipe(recipe)

    def dataset_spec(self, name: str) -> api.DatasetSpec:
        if name not in self.datasets:
            valid = ", ".join(sorted(self.datasets)) or "(none loaded)"
            raise UserError(f"unknown dataset {name!r}; valid datasets: {valid}{self._failures_hint()}")
        return self.datasets[name]

    def load_dataset(self, name: str, split: str, root: Path | str, **options: Any) -> Any:
        """Load split ``split`` of dataset ``name`` with its ``options`` (a UserError names the valid splits).
        A ``load`` that declares a ``datasets`` parameter gets a loader of the other registered datasets."""
        return self._load_dataset(name, split, Path(root), options, ())

    def _load_dataset(self, name: str, split: str, root: Path, options: dict[str, Any],
                      loading: tuple[str, ...]) -> Any:
        spec = self.dataset_spec(name)
        if split not in spec.splits:
            raise UserError(f"dataset {name!r} has no split {split!r}; valid splits: {', '.join(spec.splits)}")
        if name in loading:
            raise UserError(f"dataset {name!r} loads itself: {' -> '.join((*loading, name))}")
        if not _declares(spec.load, "datasets"):
            return spec.load(split, root, **options)
        if "datasets" in options:
            raise UserError(f"dataset {name!r} has no option 'datasets' (the studio passes it)")

        def datasets(other: str, other_split: str, **other_options: Any) -> Any:
            return self._load_dataset(other, other_split, root, other_options, (*loading, name))

        return spec.load(split, root, datasets=datasets, **options)

    def status(self, name: str) -> PluginStatus | None:
        return next((p for p in self.plugins if p.name == name), None)

    def owner(self, slug: str) -> PluginStatus | None:
        """The plugin that registered method ``slug``."""
        return next((p for p in self.plugins if slug in p.methods), None)

    def failed(self) -> list[PluginStatus]:
        return [p for p in self.plugins if p.status != "ok"]

    def _failures_hint(self) -> str:
        failed = self.failed()
        if not failed:
            return ""
        listed = "; ".join(f"{p.name} ({p.error})" for p in failed)
        return f". {len(failed)} plugin(s) failed to load, which may be why: {listed} (see `avstudio plugins`)"

    # -- failures ------------------------------------------------------------------------------
    def fail(self, plugin: str, where: str, exc: BaseException, *, withdraw: bool = True) -> None:
        """Mark ``plugin`` failed (first failure kept) and log its traceback once; unless ``withdraw`` is
        false (a demo that failed to build: its recipes still train), withdraw what it registered."""
        status = self.status(plugin)
        tb = "".join(traceback.format_exception(exc))
        log.error("plugin %s failed in %s:\n%s", plugin, where, tb)
        if status is None:
            return
        if status.status == "ok":
            status.status, status.error, status.traceback = "failed", failure_line(where, exc), tb
        if not withdraw:
            return
        for slug in status.methods:
            self.methods.pop(slug, None)
        for name in status.datasets:
            self.datasets.pop(name, None)
        status.methods, status.datasets = [], []

    def call_hook(self, hook_name: str, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        """Call ``hook_name`` on every plugin that implements it and is still ok, one at a time.

        Each implementation gets only the arguments it declares. A plugin that raises is marked
        failed (:meth:`fail`) and the others go on. Yields ``(plugin_name, result)`` for each success.
        """
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            status = self.status(impl.plugin_name)
            if status is not None and status.status != "ok":
                continue
            try:
                result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            except Exception as exc:
                self.fail(impl.plugin_name, hook_name, exc)
                continue
            yield impl.plugin_name, result

    def run_hook(self, hook_name: str, **kwargs: Any) -> None:
        """:meth:`call_hook` for hooks called for their effect."""
        for _ in self.call_hook(hook_name, **kwargs):
            pass


def _module_from_path(path: Path) -> ModuleType:
    name = f"avstudio_local_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dist_name(point: importlib.metadata.EntryPoint) -> str | None:
    dist = getattr(point, "dist", None)
    return dist.metadata["Name"] if dist is not None else None


def _wanted_entrypoints(selection: str | None) -> tuple[list[importlib.metadata.EntryPoint], list[str]]:
    """Entry points of the ``avstudio`` group that ``selection`` (AVSTUDIO_PLUGINS) asks for, and the
    names it asks for that no installed plugin has.

    None loads every installed plugin; "" loads none; "a,b" loads those entry-point or
    distribution names only.
    """
    points = list(importlib.metadata.entry_points(group=api.PROJECT_NAME))
    if selection is None:
        return points, []
    wanted = [s.strip() for s in selection.split(",") if s.strip()]
    chosen = [p for p in points if p.name in wanted or _dist_name(p) in wanted]
    known = {p.name for p in points} | {_dist_name(p) for p in points}
    return chosen, [name for name in wanted if name not in known]


Candidate = tuple[str, str, "str | None", Callable[[], ModuleType]]


def _candidates(plugins: str | None, plugins_dir: Path | None, extra: tuple[Any, ...]) -> Iterator[Candidate]:
    """Yield (name, source, version, loader) for every plugin to try."""
    for module_name in DEFAULT_PLUGINS:
        yield module_name, "builtin", None, lambda m=module_name: importlib.import_module(m)
    for item in extra:  # module names or module objects, registered like the built-ins (tests)
        if isinstance(item, ModuleType):
            yield item.__name__, "extra", None, lambda m=item: m
        else:
            yield str(item), "extra", None, lambda m=str(item): importlib.import_module(m)
    points, missing = _wanted_entrypoints(plugins)
    for point in points:
        dist = getattr(point, "dist", None)
        yield point.name, "entrypoint", dist.version if dist is not None else None, point.load
    for name in missing:
        def not_installed(name: str = name) -> ModuleType:
            raise LookupError(f"AVSTUDIO_PLUGINS names {name!r}, but no installed plugin has that entry-point or "
                              f"distribution name (install it, e.g. `pip install -e PATH`, or fix the name)")
        yield name, "entrypoint", None, not_installed
    if plugins_dir is not None:
        directory = Path(plugins_dir)
        if not directory.is_dir():
            raise UserError(f"plugins directory {directory} does not exist")
        for path in sorted(directory.glob("*.py")):
            if not path.name.startswith("_"):
                yield path.stem, "plugins-dir", None, lambda p=path: _module_from_path(p)


def load_registry(plugins: str | None = None, plugins_dir: Path | str | None = None,
                  extra_plugins: tuple[Any, ...] = ()) -> Registry:
    """Load all plugins and collect what they register.

    ``plugins`` is the AVSTUDIO_PLUGINS selection of external plugins (None: all installed);
    ``plugins_dir`` a directory of single-file plugins; ``extra_plugins`` more modules (or module
    names) to register like the built-ins (the test harness uses this).
    """
    pm = pluggy.PluginManager(api.PROJECT_NAME)
    pm.add_hookspecs(api)
    registry = Registry(pm=pm)
    for name, source, version, loader in _candidates(plugins, Path(plugins_dir) if plugins_dir else None,
                                                     tuple(extra_plugins)):
        status = PluginStatus(name=name, source=source, version=version)
        try:
            module = loader()
            if pm.is_registered(module) or pm.get_plugin(name) is not None:
                continue  # the same module asked for twice (e.g. a built-in also given as extra)
            registry.plugins.append(status)
            pm.register(module, name=name)
            status.hooks = sorted(h.name for h in pm.get_hookcallers(module) or [])
            if version is None:
                status.version = getattr(module, "__version__", None)
        except Exception as exc:  # a broken plugin must not take the studio down
            if status not in registry.plugins:
                registry.plugins.append(status)
            registry.fail(name, "import", exc)
    _collect(registry)
    return registry


def _collect(registry: Registry) -> None:
    """Call each plugin's registration hooks into a staging area; keep what it registered only if all
    of them succeeded (datasets of every plugin first, so recipes can use any registered dataset)."""
    staged: dict[str, dict[str, dict[str, Any]]] = {}

    def registrar(kind: type, what: str, into: str, key: str):
        """The ``register`` callback a hook receives: type-checked, each name registered once."""
        current: list[str] = []

        def register(obj: Any) -> None:
            if not isinstance(obj, kind):
                raise TypeError(f"register_{what}s expects {kind.__name__} objects, got {type(obj).__name__}")
            name = getattr(obj, key)
            plugin = current[0]
            taken = getattr(registry, into)
            owner = next((p for p, kinds in staged.items() if name in kinds.get(into, {})), None)
            if name in taken or owner is not None:
                owner = owner or next((p.name for p in registry.plugins if name in getattr(p, into)), "?")
                raise ValueError(f"{what} {name!r} is registered twice: by plugin {owner!r} and by {plugin!r}")
            staged.setdefault(plugin, {}).setdefault(into, {})[name] = obj

        return register, current

    for hook, kind, what, into, key in (("register_datasets", api.DatasetSpec, "dataset", "datasets", "name"),
                                        ("register_methods", api.Method, "method", "methods", "slug")):
        register, current = registrar(kind, what, into, key)
        for impl in getattr(registry.pm.hook, hook).get_hookimpls():
            status = registry.status(impl.plugin_name)
            if status is None or status.status != "ok":
                continue
            current[:] = [impl.plugin_name]
            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except Exception as exc:
                staged.pop(impl.plugin_name, None)
                registry.fail(impl.plugin_name, hook, exc)
        # what this hook staged becomes visible now, so later plugins' duplicates are caught
        for plugin, kinds in list(staged.items()):
            status = registry.status(plugin)
            objects = kinds.pop(into, {})
            if status is None or status.status != "ok":
                continue
            getattr(registry, into).update(objects)
            getattr(status, into).extend(objects)


def registry_from_env() -> Registry:
    """The registry the environment asks for (AVSTUDIO_PLUGINS, AVSTUDIO_PLUGINS_DIR, AVSTUDIO_EXTRA_PLUGINS).

    A module-level function, so a worker process started with ``spawn`` can rebuild the same registry.
    """
    extra = tuple(m for m in os.environ.get("AVSTUDIO_EXTRA_PLUGINS", "").split(",") if m.strip())
    return load_registry(plugins=os.environ.get("AVSTUDIO_PLUGINS"),
                         plugins_dir=os.environ.get("AVSTUDIO_PLUGINS_DIR") or None,
                         extra_plugins=extra)

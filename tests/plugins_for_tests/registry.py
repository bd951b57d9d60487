"""A picklable registry factory for workers in tests: the built-ins plus the counter plugin."""

from __future__ import annotations

from app.plugin_manager import Registry, load_registry

PLUGINS = ("tests.plugins_for_tests.counter_plugin",)


def make_registry() -> Registry:
    """The registry a test worker uses (no external plugins)."""
    return load_registry(plugins="", extra_plugins=PLUGINS)

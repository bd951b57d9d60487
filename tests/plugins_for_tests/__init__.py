"""Plugins used by the tests (loaded with ``load_registry(extra_plugins=...)``)."""

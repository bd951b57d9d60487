"""The Plugins tab: every plugin the studio tried to load, and every demo tab that failed to build."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

PLUGIN_COLUMNS = ["name", "source", "version", "hooks", "status", "error"]


def plugins_table(registry: Any, demo_errors: dict[str, str]) -> pd.DataFrame:
    """One row per plugin (failed ones included), then one per method whose demo failed to build."""
    rows = [[p.name, p.source, p.version or "", ", ".join(p.hooks), p.status, p.error or ""]
            for p in registry.plugins]
    for slug, error in demo_errors.items():
        method = registry.methods.get(slug)
        owner = getattr(getattr(method, "build_demo", None), "__module__", "") or slug
        rows.append([owner, f"demo tab '{slug}'", "", "build_demo", "failed", error])
    return pd.DataFrame(rows, columns=PLUGIN_COLUMNS)


def build_plugins_tab(registry: Any, demo_errors: dict[str, str]) -> None:
    """Add the Plugins tab's table and its ``plugins_list`` endpoint (call inside ``gr.Tab``)."""

    def plugins_list() -> pd.DataFrame:
        """Every plugin: name, source, version, hooks, status (ok/failed) and the one-line error."""
        return plugins_table(registry, demo_errors)

    failed = sum(p.status != "ok" for p in registry.plugins) + len(demo_errors)
    gr.Markdown(f"### Plugins\n{len(registry.plugins)} plugins loaded"
                + (f", **{failed} failed** (tracebacks are in the server log)." if failed else "."))
    table = gr.Dataframe(value=plugins_list(), headers=PLUGIN_COLUMNS, interactive=False, wrap=True,
                         elem_id="plugins-table", label="Plugins")
    refresh = gr.Button("Refresh", size="sm", elem_id="plugins-refresh")
    refresh.click(plugins_list, None, table, api_name="plugins_list", concurrency_limit=None)

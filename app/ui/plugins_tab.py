"""The Plugins tab: every plugin the studio tried to load, and every demo tab that failed to build."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

PLUGIN_COLUMNS = ["name", "source", "version", "hooks", "status", "error"]


def plugins_table(registry: Any, demo_errors: dict[str, str]) -> pd.DataFrame:
    """One row per plugin (failed ones included: a demo that failed to build fails its plugin), then one
    per failed demo whose method has no known plugin."""
    rows = [[p.name, p.source, p.version or "", ", ".join(p.hooks), p.status, p.error or ""]
            for p in registry.plugins]
    for slug, error in _ownerless(registry, demo_errors).items():
        rows.append([slug, f"demo tab '{slug}'", "", "build_demo", "failed", error])
    return pd.DataFrame(rows, columns=PLUGIN_COLUMNS)


def build_plugins_tab(registry: Any, demo_errors: dict[str, str]) -> None:
    """Add the Plugins tab's table and its ``plugins_list`` endpoint (call inside ``gr.Tab``)."""

    def plugins_list() -> pd.DataFrame:
        """Every plugin: name, source, version, hooks, status (ok/failed) and the one-line error."""
        return plugins_table(registry, demo_errors)

    failed = len(registry.failed()) + len(_ownerless(registry, demo_errors))
    gr.Markdown(f"### Plugins\n{len(registry.plugins)} plugins loaded"
                + (f", **{failed} failed** (tracebacks are in the server log)." if failed else "."))
    table = gr.Dataframe(value=plugins_list(), headers=PLUGIN_COLUMNS, interactive=False, wrap=True,
                         elem_id="plugins-table", label="Plugins")
    refresh = gr.Button("Refresh", size="sm", elem_id="plugins-refresh")
    refresh.click(plugins_list, None, table, api_name="plugins_list", concurrency_limit=None)


def _ownerless(registry: Any, demo_errors: dict[str, str]) -> dict[str, str]:
    return {slug: error for slug, error in demo_errors.items() if registry.owner(slug) is None}

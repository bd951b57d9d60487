"""Start the studio the way a Hugging Face Space does: ``python app/main.py`` from the repo root.

Settings come from the environment (``AVSTUDIO_*``). Port: ``GRADIO_SERVER_PORT`` or ``PORT``
(default 7860). Host: ``GRADIO_SERVER_NAME``; default 127.0.0.1, or 0.0.0.0 on a Space (``SPACE_ID``
set). Training from the web UI stays off unless ``AVSTUDIO_ENABLE_TRAINING=1``; on a Space with
training off, no background worker is started (``AVSTUDIO_NO_WORKER=1`` turns it off anywhere). Before the
app opens the run store, ``app.startup.prepare_home`` restores an empty home from ``AVSTUDIO_BACKUP``, pulls
``AVSTUDIO_HUB_MODELS`` and starts backups; ``AVSTUDIO_MCP=1`` also serves the MCP server (docs/hosting.md).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
REPO_ROOT = APP_DIR.parent
# `python app/main.py` puts app/ itself first on sys.path (so `api`, `settings`, ... would shadow
# top-level modules) and not the repo root (so `import app` would fail without a pip install).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != APP_DIR]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def server_options(env: Mapping[str, str], enable_training: bool) -> tuple[str, int, bool]:
    """(host, port, start_worker) for this environment, as described at the top of this file.

    Raises ValueError (naming the variable) when AVSTUDIO_NO_WORKER is not a yes/no value.
    """
    from app.settings import env_flag

    on_space = bool(env.get("SPACE_ID"))
    host = env.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if on_space else "127.0.0.1")
    port = int(env.get("GRADIO_SERVER_PORT") or env.get("PORT") or 7860)
    no_worker = env_flag("AVSTUDIO_NO_WORKER", env)
    return host, port, not no_worker and not (on_space and not enable_training)


def main() -> None:
    """Build settings and the plugin registry from the environment and serve the studio."""
    from app.mcp import check_mcp_installed, mcp_requested
    from app.plugin_manager import registry_from_env
    from app.settings import Settings
    from app.startup import prepare_home
    from app.ui import launch

    try:
        settings = Settings()
        host, port, start_worker = server_options(os.environ, settings.enable_training)
        mcp = mcp_requested(None)  # AVSTUDIO_MCP
        if mcp:
            check_mcp_installed()
        registry = registry_from_env()
        prepare_home(settings, registry)  # AVSTUDIO_BACKUP restore, AVSTUDIO_HUB_MODELS, backups
    except ValueError as exc:  # a malformed AVSTUDIO_* value, or no mcp package: one line, not a traceback
        sys.exit(f"avstudio: {exc}")
    launch(settings, registry, host=host, port=port, start_worker=start_worker, mcp=mcp)


if __name__ == "__main__":
    main()

"""What ``avstudio serve`` and ``python app/main.py`` do before the app opens the run store: restore an empty
home from ``AVSTUDIO_BACKUP`` (app/backup.py), pull and promote ``AVSTUDIO_HUB_MODELS`` (app/hub.py), and start
the backup loop, stopped (with a last backup) when the process exits."""

from __future__ import annotations

import atexit
import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("avstudio.startup")


def prepare_home(settings: Any, registry: Any, env: Mapping[str, str] | None = None) -> Any:
    """Restore, pull, start backing up; returns the backup loop (None without ``AVSTUDIO_BACKUP``).

    Raises ValueError (naming the variable) for a malformed ``AVSTUDIO_BACKUP*`` setting; anything that fails
    at run time (an unreadable backup, a model that cannot be pulled) is logged and the studio starts anyway.
    """
    from app.backup import backup_settings, restore_at_startup, start_backups
    from app.hub import pull_at_startup

    backup_settings(env)  # a malformed setting stops the start-up with one line
    settings.ensure_dirs()
    restore_at_startup(settings, env)  # each logs what it did, or why it could not
    pull_at_startup(settings, registry, env)
    loop = start_backups(settings, env)
    if loop is not None:
        atexit.register(loop.stop)
    return loop

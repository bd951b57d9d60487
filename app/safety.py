"""What the web UI checks before it acts for a visitor: who may use the training controls, and
which files a config value from the browser may name.

The CLI does not go through here: its user is already on the machine.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from app.errors import UserError

TRAINING_OFF = ("Training from the web UI is off: start the studio with AVSTUDIO_ENABLE_TRAINING=1 "
                "(or use the CLI: avstudio train METHOD RECIPE).")
TOKEN_NEEDED = ("This action needs the admin token: enter the value of AVSTUDIO_ADMIN_TOKEN in the "
                "Runs tab's 'Admin token' box.")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def check_training_allowed(settings: Any, token: Any) -> None:
    """Raise UserError unless this studio lets the web UI train and, when it has an admin token,
    ``token`` is that token (compared in constant time)."""
    if not settings.enable_training:
        raise UserError(TRAINING_OFF)
    expected = getattr(settings, "admin_token", "") or ""
    if expected and not hmac.compare_digest(str(token or "").encode(), expected.encode()):
        raise UserError(TOKEN_NEEDED)


def _texts(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
        # a key=value item (dataset options such as path=DIR) names its file in the value
        if "=" in value:
            yield value.partition("=")[2]
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item)


def _names_a_file(text: str) -> bool:
    """Whether a run could read ``text`` as a path: absolute, ``~``, ``..``, a backslash, or an
    existing file or folder relative to the server's working directory (checkpoint references
    and dataset options are tried as paths first)."""
    if not text.strip():
        return False
    path = Path(text)
    try:
        return (path.is_absolute() or text.startswith("~") or "\\" in text or ".." in path.parts
                or path.exists())
    except (OSError, ValueError):
        return True


def check_config_files(config: Mapping[str, Any], roots: Iterable[Path | str]) -> None:
    """Refuse a config from the web UI whose values name a file outside ``roots`` (the studio's
    home and data directory), a URL, or text with a NUL byte: a visitor's run may read only the
    studio's own files. ``run:ID[/NAME]`` and ``METHOD/NAME`` references name no file and pass."""
    allowed = [Path(r).expanduser().resolve() for r in roots]
    for key, value in config.items():
        for text in _texts(value):
            if "\x00" in text:
                raise UserError(f"{key}: the value contains a NUL byte")
            if _URL.match(text):
                raise UserError(f"{key}: a URL ({text[:60]!r}) is not accepted from the web UI")
            if not _names_a_file(text):
                continue
            if text.startswith("~"):
                raise UserError(f"{key}: {text[:60]!r} names a file by '~'; from the web UI give a path under "
                                f"{allowed[0]}")
            resolved = (Path.cwd() / text).resolve()
            if not any(resolved.is_relative_to(root) for root in allowed):
                raise UserError(f"{key}: {text[:60]!r} is outside the studio's home; from the web UI a file must "
                                f"lie under {allowed[0]} (the CLI can use any file)")

"""The git commit the code runs from (recorded with every run and in every model card)."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def current_commit(path: Path | str | None = None) -> str | None:
    """The full hash of HEAD of the git checkout containing ``path`` (default: this code).

    None when git is missing, ``path`` is not in a repository, or anything else goes wrong; never raises.
    """
    try:
        result = subprocess.run(
            ["git", "-C", str(path if path is not None else REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except Exception:
        return None
    commit = result.stdout.strip()
    if result.returncode != 0 or len(commit) < 7:
        return None
    return commit

"""Runs that survive a restart without PostgreSQL: the studio's side of ``trainer/backup.py``.

Settings (environment):

- ``AVSTUDIO_BACKUP=DIR``: the backup folder. At start-up, when the home is empty (no run store, no run
  directory), the store and run directories are restored from it; while the app runs, a backup is written
  there every ``AVSTUDIO_BACKUP_EVERY_MIN`` minutes (default 10) and once more when it stops.
- ``AVSTUDIO_BACKUP_REPO=OWNER/NAME``: also keep the backup folder in this Hub dataset repository (created
  private), with ``HF_TOKEN``. At start-up an empty backup folder is first filled from it (``snapshot_download``);
  after each backup the folder is uploaded (``upload_folder``, deleting files the home no longer has).

The upload runs in the backup thread right after each backup, never beside one: huggingface_hub's
``CommitScheduler`` assumes files are only appended to and opens them after releasing its lock, while a backup
replaces ``runs.db`` whole, so a scheduled commit could send a truncated database.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import UserError
from trainer import backup as backups

log = logging.getLogger("avstudio.backup")

DEFAULT_EVERY_MIN = 10.0


@dataclass(frozen=True)
class BackupSettings:
    folder: Path | None
    repo: str | None
    every_min: float


def backup_settings(env: Mapping[str, str] | None = None) -> BackupSettings:
    """``AVSTUDIO_BACKUP``, ``AVSTUDIO_BACKUP_REPO`` and ``AVSTUDIO_BACKUP_EVERY_MIN`` of ``env`` (default:
    the environment). Raises ValueError naming the variable for a bad value."""
    env = os.environ if env is None else env
    folder = env.get("AVSTUDIO_BACKUP", "").strip()
    repo = env.get("AVSTUDIO_BACKUP_REPO", "").strip() or None
    every_text = env.get("AVSTUDIO_BACKUP_EVERY_MIN", "").strip()
    try:
        every = float(every_text) if every_text else DEFAULT_EVERY_MIN
    except ValueError:
        every = 0.0
    if not every > 0 or every == float("inf"):
        raise ValueError(f"AVSTUDIO_BACKUP_EVERY_MIN must be a positive number of minutes, got {every_text!r}")
    if repo and not folder:
        raise ValueError("AVSTUDIO_BACKUP_REPO needs AVSTUDIO_BACKUP, the local folder it mirrors")
    if repo:
        from app.hub import parse_repo_ref

        try:
            if parse_repo_ref(repo)[1] is not None:
                raise UserError("a revision")
        except UserError:
            raise ValueError(f"AVSTUDIO_BACKUP_REPO must be a Hub dataset repository OWNER/NAME, got {repo!r}") from None
    return BackupSettings(Path(folder).expanduser() if folder else None, repo, every)


def upload_backup(folder: Path | str, repo: str, *, private: bool = True) -> str:
    """Send a backup folder to the Hub dataset repository ``repo`` (one commit; files the home no longer has
    are deleted there too). Returns the commit URL."""
    from app.hub import hub_token, upload_folder

    return upload_folder(folder, repo, private=private, token=hub_token(required=True), repo_type="dataset",
                         commit_message="Run store backup from Adaptive Vision Studio",
                         delete_patterns=[f"{backups.RUNS_NAME}/**"])


def download_backup(repo: str, folder: Path | str) -> Path:
    """Fill ``folder`` with the backup kept in the Hub dataset repository ``repo``."""
    from huggingface_hub import snapshot_download

    from app.hub import _hub_error, hub_token

    token = hub_token(required=False)
    try:
        return Path(snapshot_download(repo, repo_type="dataset", local_dir=str(folder), token=token))
    except Exception as exc:
        raise _hub_error(f"cannot download the backup {repo}", exc, token) from None


def backup_now(settings: Any, folder: Path | str, repo: str | None = None,
               upload: Callable[..., str] | None = None) -> str:
    """Write a backup of ``settings``' store and run directories into ``folder`` (and upload it to ``repo``).
    Returns one line saying what was done."""
    try:
        info = backups.backup(settings.db_url, settings.runs_dir, folder)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    line = (f"backed up {info.runs} run(s) and {info.files} file(s) to {folder} "
            f"({info.copied} copied, {info.removed} removed)")
    if repo:
        url = (upload or upload_backup)(folder, repo)
        line += f"; uploaded to the dataset {repo}: {url}"
    return line


def restore_at_startup(settings: Any, env: Mapping[str, str] | None = None,
                       download: Callable[[str, Path], Any] | None = None) -> str | None:
    """Restore the home from ``AVSTUDIO_BACKUP`` (filled first from ``AVSTUDIO_BACKUP_REPO`` if it holds no
    backup) when the home is empty. Returns what happened in one line, or None when there was nothing to do.
    A backup that cannot be restored is logged: the studio starts with an empty home rather than not at all."""
    config = backup_settings(env)
    if config.folder is None:
        return None
    try:
        if not backups.home_is_empty(settings.db_url, settings.runs_dir):
            return None  # never overwrite: the home has a store already (a restart on a kept disk)
        if backups.read_manifest(config.folder) is None and config.repo:
            (download or download_backup)(config.repo, config.folder)
        if backups.read_manifest(config.folder) is None:
            return None
        manifest = backups.restore(config.folder, settings.db_url, settings.runs_dir)
    except (UserError, ValueError, OSError) as exc:
        log.warning("AVSTUDIO_BACKUP: not restored: %s", exc)
        return f"not restored from {config.folder}: {exc}"
    line = (f"restored {manifest.get('runs', '?')} run(s) from the backup in {config.folder} "
            f"(made {manifest.get('created', '?')})")
    log.warning("%s", line)
    return line


class BackupLoop:
    """Back the home up every ``every_min`` minutes in a daemon thread (and upload it), and once more at stop."""

    def __init__(self, settings: Any, config: BackupSettings, upload: Callable[..., str] | None = None) -> None:
        self.settings, self.config, self.upload = settings, config, upload
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.last: str | None = None
        self._thread = threading.Thread(target=self._run, name="avstudio-backup", daemon=True)

    def start(self) -> BackupLoop:
        self._thread.start()
        return self

    def backup(self) -> str | None:
        """One backup (and upload) now; a failure is logged and returned, never raised."""
        with self._lock:
            try:
                self.last = backup_now(self.settings, self.config.folder, self.config.repo, self.upload)
                log.info("%s", self.last)
            except Exception as exc:  # a full disk, the Hub down: the studio keeps serving
                self.last = f"backup failed: {type(exc).__name__}: {exc}".splitlines()[0]
                log.warning("%s", self.last)
            return self.last

    def _run(self) -> None:
        while not self._stop.wait(self.config.every_min * 60):
            self.backup()

    def stop(self) -> str | None:
        """Stop the loop and write a last backup (once: a second call only returns the last line)."""
        if self._stop.is_set():
            return self.last
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        return self.backup()


def start_backups(settings: Any, env: Mapping[str, str] | None = None) -> BackupLoop | None:
    """The backup loop of ``AVSTUDIO_BACKUP`` (None when it is not set, or the store is not SQLite)."""
    config = backup_settings(env)
    if config.folder is None:
        return None
    try:
        backups.sqlite_file(settings.db_url)
    except ValueError as exc:
        log.warning("AVSTUDIO_BACKUP ignored: %s", exc)
        return None
    return BackupLoop(settings, config).start()

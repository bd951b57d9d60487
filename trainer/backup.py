"""Back up and restore a SQLite run store and its run directories, so runs survive a host that keeps no disk
(a Space restarts with an empty disk) without PostgreSQL.

A backup folder holds::

    runs.db       a consistent snapshot of the live store, made with sqlite3's online backup API (a reader
                  that sees one committed state, whatever the writers do meanwhile; never a copy of the file)
    runs/         the run directories (checkpoints, images, resume state), mirrored: a file is copied only
                  when its size or modification time changed, and removed when it is gone from the home
    backup.json   what the backup holds: when, from where, the schema revision, counts

The snapshot is taken before the run directories are copied, so every file the snapshot records was written
before the copy began (checkpoints are written atomically, so a copy sees a whole file). A backup folder is a
plain directory: a mounted storage bucket, or a folder that huggingface_hub's CommitScheduler or
``upload_folder`` sends to a Hub dataset repository (``app/backup.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.engine import make_url

DB_NAME = "runs.db"
RUNS_NAME = "runs"
MANIFEST_NAME = "backup.json"
BACKUP_FORMAT = 1


@dataclass
class BackupInfo:
    """What one backup wrote (also its ``backup.json``)."""

    format: int
    created: str
    source_db: str
    source_runs_dir: str
    schema_revision: str | None
    runs: int
    files: int
    copied: int  # files copied this time (the others were unchanged)
    removed: int  # files removed from the backup (gone from the home)


def sqlite_file(db_url: str) -> Path:
    """The database file of a ``sqlite:///`` URL; ValueError for another database or an in-memory one."""
    url = make_url(db_url)
    if url.get_backend_name() != "sqlite":
        raise ValueError(f"only a SQLite run store is backed up this way, not {url.get_backend_name()} "
                         "(back a PostgreSQL store up with pg_dump)")
    if not url.database or url.database == ":memory:":
        raise ValueError("an in-memory SQLite store has nothing to back up")
    return Path(url.database).expanduser()


def _snapshot(source: Path, target: Path) -> None:
    """A consistent copy of the SQLite database ``source`` at ``target`` (replaced atomically)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        src = sqlite3.connect(str(source), timeout=30)
        try:
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)  # all pages in one step: one read transaction, one committed state
                dst.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file, no -wal beside it
            finally:
                dst.close()
        finally:
            src.close()
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _schema_revision(db: Path) -> str | None:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    except sqlite3.Error:
        return None
    finally:
        con.close()


def _count_runs(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def _mirror(source: Path, target: Path) -> tuple[int, int, int]:
    """Make ``target`` hold the files of ``source``: copy new or changed ones (size or mtime differ; copied to
    a temporary name, then renamed), remove those gone. Returns (files, copied, removed)."""
    files = copied = removed = 0
    wanted: set[Path] = set()
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue  # an atomic write in progress (trainer/files.py: ".NAME.*") is not a file yet
            rel = path.relative_to(source)
            wanted.add(rel)
            files += 1
            dest = target / rel
            try:
                stat = path.stat()
            except FileNotFoundError:  # replaced or removed meanwhile
                continue
            if dest.is_file():
                have = dest.stat()
                if have.st_size == stat.st_size and int(have.st_mtime) == int(stat.st_mtime):
                    continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.copy.tmp")
            try:
                shutil.copy2(path, tmp)
            except FileNotFoundError:
                continue
            os.replace(tmp, dest)
            copied += 1
    if target.is_dir():
        for path in sorted(target.rglob("*"), reverse=True):
            rel = path.relative_to(target)
            if path.is_file() and rel not in wanted:
                path.unlink()
                removed += 1
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    return files, copied, removed


def backup(db_url: str, runs_dir: Path | str, dest: Path | str) -> BackupInfo:
    """Write a backup of the SQLite store at ``db_url`` and of ``runs_dir`` into ``dest`` (created; a backup
    already there is brought up to date). Safe while the studio, workers and runs are writing."""
    db, runs_dir, dest = sqlite_file(db_url), Path(runs_dir), Path(dest)
    if not db.is_file():
        raise ValueError(f"no run store at {db} to back up")
    dest.mkdir(parents=True, exist_ok=True)
    _snapshot(db, dest / DB_NAME)
    files, copied, removed = _mirror(runs_dir, dest / RUNS_NAME)
    info = BackupInfo(format=BACKUP_FORMAT, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      source_db=str(db), source_runs_dir=str(runs_dir.resolve()),
                      schema_revision=_schema_revision(dest / DB_NAME), runs=_count_runs(dest / DB_NAME),
                      files=files, copied=copied, removed=removed)
    tmp = dest / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(asdict(info), indent=2) + "\n")
    os.replace(tmp, dest / MANIFEST_NAME)
    return info


def read_manifest(src: Path | str) -> dict | None:
    """The ``backup.json`` of a backup folder, or None when ``src`` holds no backup."""
    src = Path(src)
    if not (src / DB_NAME).is_file():
        return None
    try:
        return json.loads((src / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return {}


def home_is_empty(db_url: str, runs_dir: Path | str) -> bool:
    """Whether there is nothing to lose: no database file and no run directory."""
    runs_dir = Path(runs_dir)
    return not sqlite_file(db_url).exists() and not (runs_dir.is_dir() and any(runs_dir.iterdir()))


def restore(src: Path | str, db_url: str, runs_dir: Path | str) -> dict:
    """Bring back a backup written by :func:`backup` into an empty home: the store at ``db_url`` and the
    run directories under ``runs_dir``. Returns the backup's manifest.

    Raises ValueError when ``src`` holds no backup or the home is not empty (nothing is overwritten).
    Artifact paths recorded without a path relative to the run directories (older rows) are given one, so
    a home at another path finds the files.
    """
    src, runs_dir = Path(src), Path(runs_dir)
    manifest = read_manifest(src)
    if manifest is None:
        raise ValueError(f"{src} holds no run store backup ({DB_NAME})")
    if not home_is_empty(db_url, runs_dir):
        raise ValueError(f"the home is not empty ({sqlite_file(db_url)} or {runs_dir} exists); "
                         "restore only into an empty one")
    db = sqlite_file(db_url)
    _mirror(src / RUNS_NAME, runs_dir)
    _snapshot(src / DB_NAME, db)
    old_runs = manifest.get("source_runs_dir")
    if old_runs:
        con = sqlite3.connect(db)
        try:
            with con:
                prefix = str(old_runs).rstrip("/") + "/"
                rows = con.execute("SELECT id, path FROM artifacts WHERE run_path IS NULL").fetchall()
                for artifact_id, path in rows:
                    if str(path).startswith(prefix):
                        con.execute("UPDATE artifacts SET run_path = ? WHERE id = ?",
                                    (str(path)[len(prefix):], artifact_id))
        except sqlite3.Error:
            pass  # an older schema without run_path: the migrations on open handle it
        finally:
            con.close()
    return manifest

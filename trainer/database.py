"""The run store's database: its engine (SQLite tuned for crash safety and concurrent writers, any other
SQLAlchemy URL with a pre-pinging pool), the Alembic migrations that build its schema, and the retry of a
store call while the database is unreachable (:func:`retrying`)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, NoSuchModuleError, OperationalError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_KEY = 0x61767374  # "avst": the PostgreSQL advisory lock held while migrating
SCHEMA_REVISION = "0003"  # the head migration (a test checks it), so opening a current database skips alembic
RETRY_FIRST_DELAY_S = 0.25  # back-off of a store call whose database is unreachable: 0.25 s, doubling ...
RETRY_MAX_DELAY_S = 5.0  # ... up to 5 s between tries

log = logging.getLogger("avstudio.store")


def is_transient(exc: BaseException) -> bool:
    """Whether a database error may go away by itself: a lost or refused connection, a server that is
    restarting, a busy SQLite file, a deadlock. Worth retrying; a constraint or a syntax error is not."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (OperationalError, InterfaceError))


def retrying(method: Callable) -> Callable:
    """Retry ``method`` with back-off while its database is unreachable, for up to the store's ``retry_s``.

    Each store call is one transaction, so a retry repeats a unit of work that did not commit, or whose
    commit went through but whose answer was lost with the connection: a call that must not be done twice
    checks ``self._local.attempt`` (0 on the first try) and looks first (:meth:`log_metrics`). Only the
    outermost call retries (a call inside another one leaves the retry to it).
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:  # self: a RunStore
        if self.retry_s <= 0 or getattr(self._local, "retrying", False):
            return method(self, *args, **kwargs)
        self._local.retrying = True
        try:
            deadline = time.monotonic() + self.retry_s
            delay = RETRY_FIRST_DELAY_S
            self._local.attempt = 0
            while True:
                try:
                    return method(self, *args, **kwargs)
                except (DBAPIError, InterfaceError) as exc:
                    if not is_transient(exc) or time.monotonic() + delay > deadline:
                        raise
                    log.warning("run store unreachable in %s (%s); retrying in %.2g s", method.__name__,
                                str(exc.orig if exc.orig is not None else exc).strip().splitlines()[0], delay)
                    if self.give_up is not None and self.give_up.wait(delay):
                        raise
                    if self.give_up is None:
                        time.sleep(delay)
                    delay = min(2 * delay, RETRY_MAX_DELAY_S)
                    self._local.attempt += 1
        finally:
            self._local.retrying = False
            self._local.attempt = 0

    return wrapper


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get their directory, WAL, a busy timeout and foreign keys.

    Other databases get a pool that tests each connection before use (``pool_pre_ping``): after a
    server restart the first call reconnects instead of failing. A URL whose driver is not installed
    raises ModuleNotFoundError saying what to install.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        try:
            return create_engine(url, pool_pre_ping=True)
        except (ModuleNotFoundError, NoSuchModuleError) as exc:
            hint = ('pip install "adaptive-vision-studio[postgres]" (psycopg 3); use a postgresql+psycopg:// URL'
                    if parsed.get_backend_name() == "postgresql" else "install the SQLAlchemy driver it names")
            raise ModuleNotFoundError(f"no database driver for {parsed.drivername}:// ({exc}); {hint}") from exc
    if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 20})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        # Crash-safe against a killed process (tests/test_crash_consistency.py SIGKILLs the app and
        # `avstudio train` mid-write): in WAL mode a transaction counts only once its commit frame is in
        # the log, so a process killed mid-transaction leaves nothing half-written, and its locks die
        # with it. synchronous=NORMAL: a returned COMMIT is in the OS's cache, which outlives the
        # process; a power loss may lose the last commits but never corrupts the file. FULL would keep
        # those too, for an fsync per commit (4 ms here against 0.07 ms, with other writers queued
        # behind it). busy_timeout: wait up to 20 s for another writer's lock, not "database is locked".
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=20000", "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    return engine


def alembic_config(url: str | None = None) -> Any:
    """A programmatic Alembic config for the migrations shipped in ``trainer/migrations``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest migration's revision id, as Alembic sees it."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade_to_head(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema with the Alembic migrations, in one transaction.

    On SQLite the transaction takes the write lock first (BEGIN IMMEDIATE), on PostgreSQL an
    advisory lock, so processes that open a new database together migrate it once. On SQLite
    foreign keys are off meanwhile: a batch migration copies a table and drops the old one,
    which would otherwise cascade-delete the rows that refer to it.
    """
    if current_revision(engine) == (SCHEMA_REVISION if revision == "head" else revision):
        return
    _migrate(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema down to ``revision`` ("base": no tables), as :func:`upgrade_to_head` takes it up.

    What a newer revision added is dropped with its data; the rows themselves stay.
    """
    _migrate(engine, "downgrade", revision)


def _migrate(engine: Engine, direction: str, revision: str) -> None:
    from alembic import command  # imported only when there is something to do (it is slow to import)

    config = alembic_config()
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")  # only takes effect outside a transaction
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        try:
            config.attributes["connection"] = connection
            getattr(command, direction)(config, revision)
            connection.commit()
        finally:
            if connection.in_transaction():
                connection.rollback()
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()

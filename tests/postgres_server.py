"""A PostgreSQL server for the tests (not a test module): AVSTUDIO_TEST_PG_URL (a role that may create
databases), else one on 127.0.0.1:5432 or the local socket; without one, the tests that need it skip, saying
how to get one. The fixtures ``pg_admin_url`` and ``pg_url`` (a new database for each test) reach every test
module through conftest; ``on_postgres_too`` runs a store or migration test of the default suite on
PostgreSQL as well, under the ``postgres`` marker."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest

CANDIDATES = ("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", "postgresql+psycopg:///postgres")
HOW = ("set AVSTUDIO_TEST_PG_URL=postgresql+psycopg://USER@HOST:PORT/postgres (a role that may create "
       "databases), or start one: eval \"$(.ci/postgres start /tmp/avstudio-pg)\"")


def find_server() -> tuple[str | None, str]:
    """(admin URL, "") of a reachable server, or (None, why not)."""
    try:
        import psycopg
    except ImportError:
        return None, "psycopg is not installed: pip install -e '.[postgres]'"
    from sqlalchemy.engine import make_url

    given = os.environ.get("AVSTUDIO_TEST_PG_URL")
    failures = []
    for url in [given] if given else CANDIDATES:
        try:
            parsed = make_url(url)
            psycopg.connect(**connect_args(parsed), connect_timeout=3).close()
            return url, ""
        except Exception as exc:  # any reason it cannot be reached is a reason to skip
            failures.append(f"{url}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
    return None, f"no PostgreSQL server reachable ({'; '.join(failures)}); {HOW}"


def connect_args(url) -> dict:
    """psycopg.connect's keywords for a SQLAlchemy URL."""
    return url.translate_connect_args(username="user", database="dbname")


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    url, why = find_server()
    if url is None:
        pytest.skip(why)
    return url


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """The URL of a new, empty database on the server (dropped afterwards)."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(pg_admin_url)
    name = f"avstudio_test_{uuid.uuid4().hex[:12]}"
    connect = {**connect_args(admin), "autocommit": True}
    with psycopg.connect(**connect) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield admin.set(database=name).render_as_string(hide_password=False)
    for _ in range(20):  # the server may still be starting again after the restart test
        try:
            with psycopg.connect(**connect) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            break
        except psycopg.OperationalError:
            time.sleep(0.5)


# The "postgres" case of conftest's ``store_url``: a new database on the server (``pg_url``), marked postgres.
on_postgres_too = pytest.mark.parametrize(
    "store_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)

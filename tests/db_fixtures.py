"""pytest plugin: `db_url` on both backends, and `store`, a migrated Store on it.

SQLite: a file in tmp_path. PostgreSQL: one database `dunning_test_<random>` per test
session (dropped at the end), a fresh `public` schema per test. The PostgreSQL lane never
skips silently: if no server answers, its tests fail with the reason, unless
DUNNING_TEST_POSTGRES=skip. Admin connection: DUNNING_TEST_PG_ADMIN_URL, else
postgres@127.0.0.1:5432/test, else root@127.0.0.1:5432/test.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from dunning.store.store import Store

SKIP_ENV = "DUNNING_TEST_POSTGRES"
ADMIN_ENV = "DUNNING_TEST_PG_ADMIN_URL"
DEFAULT_ADMIN_URLS = ["postgresql://postgres@127.0.0.1:5432/test", "postgresql://root@127.0.0.1:5432/test"]


def _libpq(url: str, database: str | None = None) -> str:
    """A psycopg conninfo URL (no `+driver`), optionally for another database."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def _admin() -> tuple[str, psycopg.Connection]:
    candidates = [os.environ[ADMIN_ENV]] if os.environ.get(ADMIN_ENV) else []
    errors = []
    for url in candidates + DEFAULT_ADMIN_URLS:
        try:
            return url, psycopg.connect(_libpq(url), autocommit=True, connect_timeout=5)
        except psycopg.Error as err:
            errors.append(f"  {make_url(url).render_as_string(hide_password=True)}: {str(err).strip()}")
    message = (
        "PostgreSQL is unreachable for the postgres test lane:\n" + "\n".join(errors) + "\n"
        f"Start it (pg_ctlcluster ... main start), point {ADMIN_ENV} at a server, "
        f"or set {SKIP_ENV}=skip to skip this lane on purpose."
    )
    if os.environ.get(SKIP_ENV) == "skip":
        pytest.skip(f"{SKIP_ENV}=skip: " + message.splitlines()[0])
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """SQLAlchemy URL of a PostgreSQL database made for this test session."""
    admin_url, conn = _admin()
    name = f"dunning_test_{secrets.token_hex(6)}"
    with conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_url(admin_url).set(drivername="postgresql+psycopg", database=name).render_as_string(
        hide_password=False
    )
    with psycopg.connect(_libpq(admin_url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _fresh_schema(url: str) -> None:
    with psycopg.connect(_libpq(url), autocommit=True, connect_timeout=5) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty database: SQLite file, or PostgreSQL with no tables."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'dunning.db'}"
    url = request.getfixturevalue("pg_database_url")
    _fresh_schema(url)
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store.open(db_url)
    yield s
    s.dispose()

"""pytest fixtures for PostgreSQL-backed tests (marker ``postgres``).

* ``pg_server`` (session): the libpq URL of ONE PostgreSQL for the whole run — the
  embedded one (pgserver, in a session tmp dir), or ``LEDGERFLUX_TEST_DATABASE_URL`` when
  set (a real server in CI).
* ``database_url`` (function): a fresh database with a unique name on that server,
  dropped after the test, so tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from ledgerflux.embedded.postgres import running_postgres

__all__ = ["database_url", "pg_server", "server_data_dir", "with_database"]

ENV_URL = "LEDGERFLUX_TEST_DATABASE_URL"


def with_database(url: str, dbname: str) -> str:
    """``url`` with its database replaced by ``dbname`` (query, host and user kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


@contextlib.contextmanager
def server_data_dir() -> Iterator[Path]:
    """A temporary data dir for an embedded PostgreSQL, removed afterwards.

    Not under pytest's ``tmp_path``: run as root, the server runs as the ``pgserver`` user,
    which must traverse every parent folder, and each new pytest session (another run on
    the same machine) resets pytest's base temp folder to mode 0700, locking it out."""
    folder = Path(tempfile.mkdtemp(prefix="ledgerflux-pg-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """URL of the session's PostgreSQL server (an admin database on it)."""
    external = os.environ.get(ENV_URL)
    if external:
        yield external
        return
    with server_data_dir() as folder, running_postgres(folder) as server:
        yield server.url


@pytest.fixture
def database_url(pg_server: str) -> Iterator[str]:
    """URL of a fresh, empty database; dropped (connections forced out) after the test."""
    name = f"lf_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(pg_server, name)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

"""Pytest fixtures for tests against a real PostgreSQL server started from the Debian binaries.

- `postgres`: one private server for the whole session (`siaga.pgserver.PostgresProcess`, a free
  loopback port, fsync off: nothing here needs to survive a power cut), stopped at the end.
- `pg_dsn`: a new empty database on it for one test, so tests never see each other's rows.
- `store_target`: where a command center store lives, once per engine: a SQLite file, then a fresh
  PostgreSQL database (a test taking it runs twice).

Never the machine's own PostgreSQL service. Tests are skipped, with the reason, only when the
server binaries are not installed (`make test` installs the `postgresql` package).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from siaga.pgserver import PostgresNotFoundError, PostgresProcess

_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresProcess]:
    try:
        server = PostgresProcess(durable=False)
    except PostgresNotFoundError as exc:
        pytest.skip(str(exc))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(postgres: PostgresProcess) -> str:
    return postgres.create_database(f"t{next(_numbers)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    if request.param == "sqlite":
        return tmp_path / "cc.sqlite3"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn

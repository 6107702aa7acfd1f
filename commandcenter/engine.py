"""The two database engines under commandcenter.store: one SQLite file (the embedded default, one
process) or a PostgreSQL database shared by several command center processes.

The store's SQL is written once, in SQLite's dialect with `?` placeholders, and `Conn` runs it on
either engine. What differs is small and kept here:

- placeholders: `?` becomes psycopg's `%s` (and a literal `%` is doubled);
- rows: read by column name and by position on both (sqlite3.Row; `_PgRow`);
- a list parameter: `members()` is SQLite's json_each over JSON text, PostgreSQL's unnest of an array;
- row locks: `lock()` is `FOR UPDATE` on PostgreSQL and nothing on SQLite, where a write transaction
  (`BEGIN IMMEDIATE`) already holds the file's only write lock;
- notifications: `notify()` is `pg_notify` on PostgreSQL, nothing on SQLite (one process);
- the schema version: `PRAGMA user_version`, or a one-row table read and written under a
  transaction-level advisory lock, so that processes starting together migrate one after another;
- migration DDL: `schema.for_postgresql` translates the types.

Write transactions on PostgreSQL are READ COMMITTED with explicit row locks; `retryable()` names the
errors after which the store runs a whole transaction again (see store.Store._write).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiosqlite
import psycopg
import psycopg_pool
from psycopg import pq

from .schema import for_postgresql

log = logging.getLogger(__name__)

Params = Sequence[Any]

POSTGRESQL_SCHEMES = ("postgresql", "postgres")


def is_postgresql_url(target: object) -> bool:
    return isinstance(target, str) and urlsplit(target).scheme in POSTGRESQL_SCHEMES


def redacted(url: str) -> str:
    """A database URL fit for a log line: without a password, should one be in it."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def advisory_key(name: str) -> int:
    """A 64-bit advisory lock key of our own: a hash of the name, so it meets no other program's key."""
    return int.from_bytes(hashlib.sha256(b"siaga-cc:" + name.encode()).digest()[:8], "big", signed=True)


class StoreError(Exception):
    pass


class Row(Protocol):
    def __getitem__(self, key: str | int, /) -> Any: ...


class Conn(ABC):
    """One transaction's connection; the same calls on both engines."""

    engine: ClassVar[str]
    # Several processes use the database: row locks and notifications to the others matter.
    shared: ClassVar[bool]

    @abstractmethod
    async def execute(self, sql: str, params: Params = ()) -> None: ...

    @abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Params]) -> None: ...

    @abstractmethod
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    @abstractmethod
    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    @abstractmethod
    def members(self, sql_type: str) -> str:
        """A subquery of the values of one list parameter (give it `array(values)`), for `IN (...)`."""

    @abstractmethod
    def members_table(self, sql_type: str, alias: str) -> str:
        """The values of one list parameter as a table `alias` with the column `value`, for FROM."""

    @abstractmethod
    def array(self, values: Iterable[Any]) -> Any:
        """The parameter for `members` and `members_table`."""

    @abstractmethod
    def lock(self, of: str | None = None, *, skip_locked: bool = False) -> str:
        """What a SELECT ends with to lock the rows it returns until the transaction ends."""

    @abstractmethod
    async def notify(self, channel: str, payload: str) -> None:
        """Tell the other processes, when (and only if) this transaction commits."""


# ---- SQLite -----------------------------------------------------------------------------------------


class _SqliteConn(Conn):
    engine = "sqlite"
    shared = False

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, params: Params = ()) -> None:
        await self._db.execute(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        await self._db.executemany(sql, rows)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return list(await self._db.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        async with self._db.execute(sql, params) as cur:
            row: Row | None = await cur.fetchone()
            return row

    def members(self, sql_type: str) -> str:
        return "SELECT value FROM json_each(?)"

    def members_table(self, sql_type: str, alias: str) -> str:
        return f"json_each(?) AS {alias}"

    def array(self, values: Iterable[Any]) -> Any:
        return json.dumps(list(values))

    def lock(self, of: str | None = None, *, skip_locked: bool = False) -> str:
        return ""

    async def notify(self, channel: str, payload: str) -> None:
        return None


class Database(ABC):
    """An open database: transactions, and what the one migration runner (store._migrate) needs."""

    engine: ClassVar[str]
    shared: ClassVar[bool]

    @abstractmethod
    def transaction(self, *, write: bool) -> Any:
        """`async with db.transaction(write=...) as conn:` commits at the end, rolls back on an error."""

    @abstractmethod
    def retryable(self, exc: BaseException) -> bool:
        """The transaction lost a race with another process and may simply run again."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def lock_schema(self, conn: Conn) -> None:
        """Inside the migration's write transaction, before the version is read."""

    @abstractmethod
    async def schema_version(self, conn: Conn) -> int: ...

    @abstractmethod
    async def set_schema_version(self, conn: Conn, version: int) -> None: ...

    @abstractmethod
    def ddl(self, statement: str) -> str: ...

    @property
    @abstractmethod
    def describe(self) -> str:
        """For log lines: the file, or the URL without a password."""


class SqliteDatabase(Database):
    """One file, one connection (WAL, synchronous=FULL), one transaction at a time."""

    engine = "sqlite"
    shared = False

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self._path = path
        # aiosqlite shares one connection between all coroutines, so without this lock the
        # statements of two requests would interleave inside one SQLite transaction.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteDatabase:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the sqlite3 module must not open transactions behind our back;
        # every transaction here is an explicit BEGIN ... COMMIT.
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            db.row_factory = aiosqlite.Row
            await _configure(db)
        except BaseException:
            await db.close()
            raise
        return cls(db, path)

    @property
    def describe(self) -> str:
        return str(self._path)

    @asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[Conn]:
        async with self._lock:
            # IMMEDIATE takes the write lock at once, so a write transaction never fails halfway
            # with SQLITE_BUSY because another process (a backup, a CLI) got in first.
            await self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield _SqliteConn(self._db)
                await self._db.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (disk full): never leave the connection mid-transaction.
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise

    def retryable(self, exc: BaseException) -> bool:
        return False  # one connection: nobody to lose a race against

    async def close(self) -> None:
        async with self._lock:
            await self._db.close()

    async def lock_schema(self, conn: Conn) -> None:
        return None  # BEGIN IMMEDIATE already holds the file's write lock

    async def schema_version(self, conn: Conn) -> int:
        row = await conn.fetchone("PRAGMA user_version")
        return 0 if row is None else int(row[0])

    async def set_schema_version(self, conn: Conn, version: int) -> None:
        # PRAGMA takes no bound parameters; the value is our own integer.
        await conn.execute(f"PRAGMA user_version = {int(version)}")

    def ddl(self, statement: str) -> str:
        return statement


async def _configure(db: aiosqlite.Connection) -> None:
    async with db.execute("PRAGMA journal_mode = WAL") as cur:
        row = await cur.fetchone()
    if row is None or str(row[0]).lower() != "wal":
        raise StoreError("SQLite refused WAL mode (is the database on a network file system?)")
    # FULL: a 201 to the gateway promises the alarm is on disk; NORMAL would allow losing the
    # last transactions on power loss in WAL mode.
    await db.execute("PRAGMA synchronous = FULL")
    await db.execute("PRAGMA foreign_keys = ON")
    await db.execute("PRAGMA busy_timeout = 5000")


# ---- PostgreSQL -------------------------------------------------------------------------------------

# SQLSTATEs after which a whole transaction is run again: another process inserted the same key first
# (an event id, an open incident's key), and the two classic losers of concurrency.
_RETRY_SQLSTATES = frozenset({"23505", "40001", "40P01"})  # unique_violation, serialization_failure, deadlock
_SCHEMA_LOCK = advisory_key("schema")
# The dedicated connections (LISTEN, the leader's lock) must notice a dead peer: the client by TCP
# keepalives, the server by its own, set per session, so that a lost holder's lock is freed.
_KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                               "keepalives_count": 3}
_SERVER_KEEPALIVES = ("SET tcp_keepalives_idle = 10", "SET tcp_keepalives_interval = 5",
                      "SET tcp_keepalives_count = 3")


@lru_cache(maxsize=1024)
def pyformat(sql: str) -> str:
    """SQLite's `?` placeholders as psycopg's `%s`; a `%` of the SQL itself doubled. Text between
    single quotes is left alone, apart from the doubled `%` (psycopg reads the whole text)."""
    out: list[str] = []
    quoted = False
    for ch in sql:
        if ch == "'":
            quoted = not quoted
            out.append(ch)
        elif ch == "%":
            out.append("%%")
        elif ch == "?" and not quoted:
            out.append("%s")
        else:
            out.append(ch)
    return "".join(out)


class _PgRow:
    """A row read by column name or by position, like sqlite3.Row."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: Sequence[Any]) -> None:
        self._index = index
        self._values = values

    def __getitem__(self, key: str | int) -> Any:
        return self._values[key if isinstance(key, int) else self._index[key]]

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values, strict=True))!r})"


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], _PgRow]:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> _PgRow:
        return _PgRow(index, values)

    return make


class _PgConn(Conn):
    engine = "postgresql"
    shared = True

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> None:
        await self._conn.execute(pyformat(sql), params)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        async with self._conn.cursor() as cur:
            await cur.executemany(pyformat(sql), list(rows))

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        cur = await self._conn.execute(pyformat(sql), params)
        return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        cur = await self._conn.execute(pyformat(sql), params)
        row: Row | None = await cur.fetchone()
        return row

    def members(self, sql_type: str) -> str:
        return f"SELECT unnest(?::{sql_type}[])"

    def members_table(self, sql_type: str, alias: str) -> str:
        return f"unnest(?::{sql_type}[]) AS {alias}(value)"

    def array(self, values: Iterable[Any]) -> Any:
        return list(values)

    def lock(self, of: str | None = None, *, skip_locked: bool = False) -> str:
        return " FOR UPDATE" + (f" OF {of}" if of else "") + (" SKIP LOCKED" if skip_locked else "")

    async def notify(self, channel: str, payload: str) -> None:
        await self.execute("SELECT pg_notify(?, ?)", (channel, payload))


class PostgresDatabase(Database):
    """A pool of connections to one PostgreSQL database, shared with the other processes."""

    engine = "postgresql"
    shared = True

    def __init__(self, pool: psycopg_pool.AsyncConnectionPool[Any], url: str, password: str | None) -> None:
        self._pool = pool
        self._url = url
        self._password = password

    @classmethod
    async def open(
        cls, url: str, *, password: str | None = None, pool_size: int = 10, connect_timeout_s: float = 15.0
    ) -> PostgresDatabase:
        kwargs: dict[str, Any] = {"autocommit": True, "row_factory": _row_factory, "application_name": "siaga-cc"}
        if password is not None:
            kwargs["password"] = password
        pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
            url,
            kwargs=kwargs,
            min_size=1,
            max_size=pool_size,
            open=False,
            # A connection handed out is known to be alive: after a database restart, requests do
            # not fail one by one on the pool's stale connections.
            check=psycopg_pool.AsyncConnectionPool.check_connection,
            name="siaga-cc",
        )
        try:
            await pool.open(wait=True, timeout=connect_timeout_s)
        except psycopg_pool.PoolTimeout:
            await pool.close()
            raise StoreError(
                f"cannot connect to PostgreSQL at {redacted(url)} within {connect_timeout_s:.0f} s"
            ) from None
        return cls(pool, url, password)

    @property
    def describe(self) -> str:
        return redacted(self._url)

    @asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[Conn]:
        async with self._pool.connection() as conn:
            # Reads see one snapshot across their statements, as a SQLite read transaction does
            # (REPEATABLE READ READ ONLY never fails for serialization). Writes are READ COMMITTED
            # with explicit row locks: each statement sees what others committed before it.
            await conn.execute("BEGIN" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield _PgConn(conn)
                await conn.execute("COMMIT")
            except BaseException:
                if conn.info.transaction_status != pq.TransactionStatus.IDLE and not conn.closed:
                    try:
                        await conn.execute("ROLLBACK")
                    except psycopg.Error:
                        pass  # a broken connection: the pool throws it away
                raise

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.Error) and exc.sqlstate in _RETRY_SQLSTATES

    async def close(self) -> None:
        await self._pool.close()

    async def lock_schema(self, conn: Conn) -> None:
        # Held until the migration's transaction ends: a second process starting at the same time
        # waits here, then finds the schema current. The version table is made under the lock too.
        await conn.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")

    async def schema_version(self, conn: Conn) -> int:
        row = await conn.fetchone("SELECT MAX(version) FROM schema_version")
        return 0 if row is None or row[0] is None else int(row[0])

    async def set_schema_version(self, conn: Conn, version: int) -> None:
        await conn.execute("DELETE FROM schema_version")
        await conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    def ddl(self, statement: str) -> str:
        return for_postgresql(statement)

    async def connect(self, purpose: str) -> psycopg.AsyncConnection[Any]:
        """A connection of its own, outside the pool (autocommit), for a LISTEN or a session lock:
        what it holds lasts as long as the connection, so it must not go back to a pool."""
        kwargs: dict[str, Any] = {"autocommit": True, "application_name": f"siaga-cc {purpose}", **_KEEPALIVES}
        if self._password is not None:
            kwargs["password"] = self._password
        conn = await psycopg.AsyncConnection.connect(self._url, **kwargs)
        try:
            for statement in _SERVER_KEEPALIVES:
                await conn.execute(statement)
        except BaseException:
            await conn.close()
            raise
        return conn

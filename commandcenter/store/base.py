"""The database a Store holds, and what every part of the store does with it: read transactions,
write transactions run again when they lose a race with another process, and telling the other
processes what a write changed."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg

from ..engine import Conn, Database, PostgresDatabase, StoreError
from .changes import CHANGES_CHANNEL, Change

log = logging.getLogger(__name__)

T = TypeVar("T")


class StoreBase:
    """The connection the parts of Store share (Store in __init__.py is made of them)."""

    # A write transaction that lost a race with another process runs again, up to this many times in all.
    WRITE_ATTEMPTS = 8

    def __init__(self, db: Database) -> None:
        self._db = db
        # Names this process's changes, so that its own notifications are not delivered twice.
        self.origin = secrets.token_hex(8)

    @property
    def shared(self) -> bool:
        """The database is PostgreSQL, which other command center processes may use at the same time."""
        return self._db.shared

    @property
    def engine(self) -> str:
        return self._db.engine

    @property
    def describe(self) -> str:
        return self._db.describe

    async def connect(self, purpose: str) -> psycopg.AsyncConnection[Any]:
        """A dedicated PostgreSQL connection (LISTEN, the leader's lock); see PostgresDatabase.connect."""
        if not isinstance(self._db, PostgresDatabase):
            raise StoreError("dedicated connections exist only with PostgreSQL")
        return await self._db.connect(purpose)

    async def close(self) -> None:
        await self._db.close()

    @asynccontextmanager
    async def _tx(self, *, write: bool) -> AsyncIterator[Conn]:
        async with self._db.transaction(write=write) as db:
            yield db

    async def _write(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `work` in a write transaction, again from the start when it lost a race with another
        process (engine.PostgresDatabase.retryable); `work` must not change anything outside the
        database before it returns. With SQLite nothing is retried: one connection races nobody."""
        for attempt in itertools.count(1):
            try:
                async with self._db.transaction(write=True) as db:
                    return await work(db)
            except Exception as exc:
                if attempt >= self.WRITE_ATTEMPTS or not self._db.retryable(exc):
                    raise
                log.debug("write transaction lost a race (%s); attempt %d", exc, attempt + 1)
                # A short random pause, so the same two transactions do not collide again at once.
                await asyncio.sleep(random.uniform(0, 0.005 * attempt))
        raise AssertionError("unreachable")

    async def _announce(self, db: Conn, change: Change) -> None:
        """Tell the other processes (PostgreSQL only): delivered when this transaction commits."""
        if db.shared:
            for payload in change.payloads():
                await db.notify(CHANGES_CHANNEL, payload)

"""Several command center processes on one PostgreSQL database: which of them runs the background
loops (the state-report sender, the webhook sender, escalation).

One process leads: it holds a PostgreSQL session advisory lock (`pg_try_advisory_lock`) on a
connection of its own, and runs the loops while it holds it. The others try again every second. The
lock belongs to the connection, so it is freed when the leader stops, crashes or loses the database:
at a clean stop the loops end first and the connection is closed; after a crash the server sees the
connection close; after a network cut or a frozen machine, its TCP keepalives (set per session, about
25 s) end the session. The next process to try takes over, and finds in the outboxes whatever the
old leader had not delivered.

Why one leader rather than every process claiming rows (`FOR UPDATE SKIP LOCKED`):
- the state reports of one alarm event must reach the gateway in order (a late "acknowledged" must
  not overwrite "resolved"); one sender keeps the order exactly as with one process, while claims
  would have to hold a row lock (and a pooled connection) across each HTTP request, or add lease
  columns to the schema;
- the loads are small (one report per event and action, a webhook per escalation): one sender with
  `concurrency` requests in flight is far from a limit, and spreading it buys nothing;
- the group of gateways is remembered by one sender (the instance that answered last), not probed
  by every process.
The cost is a hand-over of about a second after a clean stop or a crash, during which reports wait in
the outbox, as they do while a gateway is down. Escalation claims its incidents with SKIP LOCKED all
the same (store.Store.escalate_due), so that even an overlap at a hand-over escalates each once; an
overlap of two senders (a leader that has not yet noticed its connection is gone) can send a report
twice, which protocol §7 allows: the gateway takes repeats as harmless.

A change made by another process (a new incident to escalate, a report queued by an operator's action
there) reaches the leader through live.Relay, which wakes the loop concerned at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from .engine import advisory_key
from .store import Store

log = logging.getLogger(__name__)

BACKGROUND_LOCK = advisory_key("background-loops")


class Leadership:
    """Background task: `start()`, `stop()`. Calls `on_elected()` when this process becomes the leader
    and `await on_deposed()` when it stops being one (also at `stop()`)."""

    def __init__(
        self,
        store: Store,
        *,
        on_elected: Callable[[], None],
        on_deposed: Callable[[], Awaitable[None]],
        retry_s: float = 1.0,
        key: int = BACKGROUND_LOCK,
    ) -> None:
        self._store = store
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._retry_s = retry_s
        self._key = key
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.leading = False
        self.elected = 0  # how often this process became the leader

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("leadership already started")
        self._task = asyncio.create_task(self._run(), name="siaga-cc-leadership")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=10)
            except TimeoutError:
                log.warning("leadership did not stop in time")
            except Exception:
                log.exception("leadership failed")
            self._task = None
        await self._depose()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await self._store.connect("leader")
                while not self._stopping.is_set():
                    if not self.leading:
                        cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,))
                        row = await cur.fetchone()
                        if row is not None and row[0]:
                            self._elect()
                    else:
                        # The lock lives as long as this connection: a failure here means it may be
                        # gone already, and another process may lead.
                        await conn.execute("SELECT 1")
                    await self._sleep(self._retry_s)
            except Exception as exc:
                if not isinstance(exc, psycopg.Error | OSError):
                    log.exception("leadership failed; starting over")
                elif self.leading:
                    log.warning("lost the database connection that holds the leadership (%s); "
                                "stopping the background loops", exc)
                else:
                    log.warning("leadership: cannot reach the database (%s); trying again", exc)
                await self._depose()
                await self._sleep(self._retry_s)
            finally:
                if self._stopping.is_set():
                    await self._depose()  # the loops end before the lock is released
                if conn is not None:
                    with contextlib.suppress(psycopg.Error, OSError):
                        await conn.close()  # frees the session lock

    def _elect(self) -> None:
        self.leading = True
        self.elected += 1
        log.info("this process now runs the background loops (state reports, webhooks, escalation)")
        self._on_elected()

    async def _depose(self) -> None:
        if self.leading:
            self.leading = False
            await self._on_deposed()
            log.info("this process no longer runs the background loops")

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

"""The outboxes: state reports to the gateway (callback_outbox) and webhook events (webhook_outbox),
queued by the transactions that cause them and read and marked here by their senders
(callbacks.py). Sent by one process at a time (cluster.Leadership), so a row is not claimed here:
with several processes, only the leader's sender reads and marks them."""

from __future__ import annotations

from datetime import datetime

from ..domain import rfc3339
from ..engine import Conn
from .base import StoreBase
from .records import CALLBACK_OUTBOX, Outbox, OutboxRow


def _head_of_key(outbox: Outbox) -> str:
    """The oldest undelivered row of each key: reports of one event go out in order, so that a late
    "acknowledged" cannot arrive after "resolved"; different keys do not wait for each other.
    (Table and column names come from the two Outbox constants, never from input.)"""
    return f"""
    o.delivered_at IS NULL AND {outbox.rows("o")} AND NOT EXISTS (
        SELECT 1 FROM {outbox.table} p
        WHERE p.{outbox.key} = o.{outbox.key} AND p.delivered_at IS NULL AND p.id < o.id AND {outbox.rows("p")})
"""


class Outboxes(StoreBase):
    async def due(self, outbox: Outbox, now: float, limit: int) -> list[OutboxRow]:
        """Rows whose time has come, at most one per key (the oldest undelivered one)."""
        async with self._tx(write=False) as db:
            rows = await db.fetchall(
                f"""SELECT o.id, o.{outbox.key} AS key, o.body, o.attempts FROM {outbox.table} o
                    WHERE {_head_of_key(outbox)} AND o.next_attempt_at <= ?
                    ORDER BY o.next_attempt_at, o.id LIMIT ?""",
                (now, limit),
            )
        return [OutboxRow(r["id"], r["key"], r["body"], r["attempts"]) for r in rows]

    async def next_due(self, outbox: Outbox) -> float | None:
        """When the next row may be sent (Unix time), or None when none is waiting."""
        async with self._tx(write=False) as db:
            row = await db.fetchone(
                f"SELECT MIN(o.next_attempt_at) AS t FROM {outbox.table} o WHERE {_head_of_key(outbox)}"
            )
        return None if row is None else row["t"]

    async def mark_delivered(self, outbox: Outbox, row_id: int, *, now: datetime) -> None:
        async def work(db: Conn) -> None:
            await db.execute(
                f"""UPDATE {outbox.table} SET attempts = attempts + 1, last_attempt_at = ?,
                       delivered_at = ?, last_error = NULL
                   WHERE id = ?""",
                (rfc3339(now), rfc3339(now), row_id),
            )

        await self._write(work)

    async def mark_failed(
        self, outbox: Outbox, row_id: int, *, now: datetime, next_attempt_at: float, error: str
    ) -> None:
        async def work(db: Conn) -> None:
            await db.execute(
                f"""UPDATE {outbox.table} SET attempts = attempts + 1, last_attempt_at = ?,
                       next_attempt_at = ?, last_error = ?
                   WHERE id = ?""",
                (rfc3339(now), next_attempt_at, error[:500], row_id),
            )

        await self._write(work)

    async def pending(self, outbox: Outbox) -> int:
        async with self._tx(write=False) as db:
            row = await db.fetchone(
                f"SELECT COUNT(*) AS n FROM {outbox.table} o WHERE o.delivered_at IS NULL AND {outbox.rows('o')}"
            )
        return 0 if row is None else row["n"]

    async def pending_callbacks(self) -> int:
        return await self.pending(CALLBACK_OUTBOX)

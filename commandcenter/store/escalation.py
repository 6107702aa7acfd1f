"""Escalation in the store: incidents still `new` a set time after they opened are marked escalated,
once each, with a history entry and (when a webhook is configured) a queued webhook event."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta

from ..domain import parse_rfc3339, rfc3339
from ..engine import Conn
from .base import StoreBase
from .changes import Change, Wake
from .queries import _incidents
from .records import Incident


class Escalations(StoreBase):
    async def escalate_due(
        self,
        *,
        now: datetime,
        after_s: float,
        webhook_body: Callable[[Incident, datetime], str] | None = None,
        limit: int = 500,
    ) -> list[Incident]:
        """Escalate every incident still `new` `after_s` after its creation that has not been
        escalated yet: mark it, record it in its history, and queue a webhook event (when
        `webhook_body` is given), all in one transaction. Returns the escalated incidents.

        Only one process escalates (cluster.Leadership); the rows are claimed with FOR UPDATE SKIP
        LOCKED all the same, so that even two escalating at once (a hand-over) escalate each incident
        once: the second skips what the first holds, and then finds it escalated."""
        cutoff = rfc3339(now - timedelta(seconds=after_s))
        at = rfc3339(now)

        async def work(db: Conn) -> list[Incident]:
            rows = await db.fetchall(
                f"""SELECT id FROM incidents WHERE state = 'new' AND escalated_at IS NULL AND created_at <= ?
                   ORDER BY created_at, id LIMIT ?{db.lock(skip_locked=True)}""",
                (cutoff, limit),
            )
            numbers = [r["id"] for r in rows]
            if not numbers:
                return []
            await db.executemany(
                "UPDATE incidents SET escalated_at = ?, updated_at = ? WHERE id = ?",
                [(at, at, n) for n in numbers],
            )
            await db.executemany(
                """INSERT INTO incident_history (incident_id, at, actor, from_state, to_state, detail, kind)
                   VALUES (?, ?, 'system:escalation', 'new', 'new', ?, 'escalation')""",
                [(n, at, json.dumps({"after_s": after_s})) for n in numbers],
            )
            escalated = await _incidents(db, numbers)
            if webhook_body is not None:
                await db.executemany(
                    """INSERT INTO webhook_outbox (incident_id, kind, body, created_at, next_attempt_at)
                       VALUES (?, 'incident.escalated', ?, ?, ?)""",
                    [(i.ref, webhook_body(i, now), at, now.timestamp()) for i in escalated],
                )
            wake: tuple[Wake, ...] = ("webhooks",) if webhook_body is not None else ()
            await self._announce(db, Change(self.origin, "escalation", incidents=tuple(numbers), wake=wake))
            return escalated

        return await self._write(work)

    async def next_escalation_due(self, *, after_s: float) -> datetime | None:
        """When the next incident escalates if nobody acknowledges it, or None when none waits."""
        async with self._tx(write=False) as db:
            row = await db.fetchone(
                "SELECT MIN(created_at) AS t FROM incidents WHERE state = 'new' AND escalated_at IS NULL"
            )
        if row is None or row["t"] is None:
            return None
        return parse_rfc3339(row["t"]) + timedelta(seconds=after_s)

"""Escalation in the store: incidents still `new` a set time after they opened are marked escalated,
once each, with a history entry and (when a webhook is configured) a queued webhook event. An
escalated incident still `new` a further set time after its escalation escalates a second time, once,
to the supervisors on duty (their open shifts), with an audit entry besides."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta

from ..domain import parse_rfc3339, rfc3339
from ..engine import Conn
from .audit import _audit
from .base import StoreBase
from .changes import Change, Wake
from .queries import _incidents
from .records import SECOND_LEVEL_KIND, Incident

# Builds the webhook body of a second-level escalation: (incident, now, supervisors on duty) -> JSON.
SecondBody = Callable[[Incident, datetime, list[str]], str]
ESCALATION_ACTOR = "system:escalation"


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

    async def escalate_second_due(
        self,
        *,
        now: datetime,
        after_s: float,
        webhook_body: SecondBody | None = None,
        second_receiver: bool = False,
        limit: int = 500,
    ) -> list[Incident]:
        """Escalate a second time every incident still `new` `after_s` after its first escalation:
        set `escalated2_at`, record in its history and the audit log (`escalated_2`) which supervisors
        were on duty then, and queue a webhook event (with `webhook_body`; for the second receiver's
        lane when `second_receiver`), all in one transaction. Claimed as escalate_due claims."""
        cutoff = rfc3339(now - timedelta(seconds=after_s))
        at = rfc3339(now)
        kind = SECOND_LEVEL_KIND if second_receiver else "incident.escalated"

        async def work(db: Conn) -> list[Incident]:
            rows = await db.fetchall(
                f"""SELECT id FROM incidents
                   WHERE state = 'new' AND escalated_at IS NOT NULL AND escalated2_at IS NULL AND escalated_at <= ?
                   ORDER BY escalated_at, id LIMIT ?{db.lock(skip_locked=True)}""",
                (cutoff, limit),
            )
            numbers = [r["id"] for r in rows]
            if not numbers:
                return []
            on_duty = await _supervisors_on_duty(db)
            detail = {"level": 2, "after_s": after_s, "supervisors_on_duty": on_duty}
            await db.executemany(
                "UPDATE incidents SET escalated2_at = ?, updated_at = ? WHERE id = ?",
                [(at, at, n) for n in numbers],
            )
            await db.executemany(
                """INSERT INTO incident_history (incident_id, at, actor, from_state, to_state, detail, kind)
                   VALUES (?, ?, ?, 'new', 'new', ?, 'escalation')""",
                [(n, at, ESCALATION_ACTOR, json.dumps(detail, ensure_ascii=False)) for n in numbers],
            )
            escalated = await _incidents(db, numbers)
            for incident in escalated:
                await _audit(db, at, ESCALATION_ACTOR, "escalated_2", incident.ref, detail)
            if webhook_body is not None:
                await db.executemany(
                    """INSERT INTO webhook_outbox (incident_id, kind, body, created_at, next_attempt_at)
                       VALUES (?, ?, ?, ?, ?)""",
                    [(i.ref, kind, webhook_body(i, now, on_duty), at, now.timestamp()) for i in escalated],
                )
            wake: tuple[Wake, ...] = ("webhooks",) if webhook_body is not None else ()
            await self._announce(db, Change(self.origin, "escalation", incidents=tuple(numbers), wake=wake))
            return escalated

        return await self._write(work)

    async def next_second_escalation_due(self, *, after_s: float) -> datetime | None:
        """When the next escalated incident escalates a second time if nobody acknowledges it."""
        async with self._tx(write=False) as db:
            row = await db.fetchone(
                """SELECT MIN(escalated_at) AS t FROM incidents
                   WHERE state = 'new' AND escalated_at IS NOT NULL AND escalated2_at IS NULL"""
            )
        if row is None or row["t"] is None:
            return None
        return parse_rfc3339(row["t"]) + timedelta(seconds=after_s)

    async def reroute_second_level_webhooks(self) -> int:
        """Give the first receiver the second-level events still waiting for a second receiver that
        is no longer configured, so that none waits for ever; returns how many."""

        async def work(db: Conn) -> int:
            row = await db.fetchone(
                "SELECT COUNT(*) AS n FROM webhook_outbox WHERE kind = ? AND delivered_at IS NULL",
                (SECOND_LEVEL_KIND,),
            )
            n = 0 if row is None else int(row["n"])
            if n:
                await db.execute(
                    "UPDATE webhook_outbox SET kind = 'incident.escalated' WHERE kind = ? AND delivered_at IS NULL",
                    (SECOND_LEVEL_KIND,),
                )
            return n

        return await self._write(work)


async def _supervisors_on_duty(db: Conn) -> list[str]:
    """The supervisors with an open shift, longest on duty first."""
    rows = await db.fetchall(
        "SELECT operator FROM shifts WHERE ended_at IS NULL AND role = 'supervisor' ORDER BY started_at, id"
    )
    return [r["operator"] for r in rows]

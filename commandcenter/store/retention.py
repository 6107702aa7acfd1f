"""Retention in the store: the personal details of incidents closed long ago are removed, their figures
kept (docs/retention.md).

What is removed: the text of notes (history entries and audit entries keep their place, who and when,
with the text emptied and `"purged": true`), the reasons of declined dispatches, the addresses of the
incident and of its alarm events, the copies of them in delivered webhook events, and the exact
location (lat/lon rounded to 2 decimals, about 1.1 km: the scale of a kelurahan); and the handover
notes of shifts ended as long ago. What stays: ids, states, kinds, times, area codes, device ids, who
acted, the referral channel and ticket, so every figure and every column of the export other than
address and location is the same after a purge as before.

A purge is idempotent: an incident is purged once (`purged_at`), and a second run finds nothing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..domain import incident_ref, rfc3339
from ..engine import Conn
from .audit import _audit
from .base import StoreBase

RETENTION_ACTOR = "system:retention"
# Two decimals of a degree: 1.1 km of latitude, at most 1.1 km of longitude. Enough to count alarms per
# neighbourhood, too coarse to find a house.
LOCATION_DECIMALS = 2
# The keys of a history or audit detail that hold free text written by people.
_TEXT_KEYS = ("note", "reason")


@dataclass(frozen=True, slots=True)
class PurgeOutcome:
    incidents: int = 0
    notes: int = 0  # history and audit entries whose text was removed
    decline_reasons: int = 0  # dispatches and dispatch history entries
    alarms: int = 0  # alarm events whose address and location were reduced
    webhook_events: int = 0  # delivered webhook events deleted (they held a copy of the incident)
    handover_notes: int = 0

    def __bool__(self) -> bool:
        return any((self.incidents, self.notes, self.decline_reasons, self.alarms, self.webhook_events,
                    self.handover_notes))


def coarse(value: float) -> float:
    return round(value, LOCATION_DECIMALS)


def _scrubbed(detail_json: str | None) -> str | None:
    """The detail without its free text, or None when it has none."""
    if not detail_json:
        return None
    try:
        detail = json.loads(detail_json)
    except ValueError:
        return None
    if not isinstance(detail, dict) or not any(detail.get(k) for k in _TEXT_KEYS):
        return None
    for key in _TEXT_KEYS:
        if key in detail:
            detail[key] = ""
    detail["purged"] = True
    return json.dumps(detail, ensure_ascii=False)


class Retention(StoreBase):
    async def purge_closed(self, *, now: datetime, days: int, limit: int = 500) -> PurgeOutcome:
        """Purge up to `limit` incidents closed more than `days` ago, in one transaction with an audit
        entry `retention_purge` that counts what was removed (none when nothing was). A caller with
        more to do calls again."""
        cutoff = rfc3339(now - timedelta(days=days))
        at = rfc3339(now)

        async def work(db: Conn) -> PurgeOutcome:
            rows = await db.fetchall(
                f"""SELECT id, lat, lon FROM incidents
                   WHERE closed_at IS NOT NULL AND purged_at IS NULL AND closed_at < ?
                   ORDER BY closed_at, id LIMIT ?{db.lock(skip_locked=True)}""",
                (cutoff, limit),
            )
            numbers = [r["id"] for r in rows]
            outcome = PurgeOutcome(
                incidents=len(numbers),
                notes=await _purge_history(db, numbers) + await _purge_audit(db, numbers),
                decline_reasons=await _purge_reasons(db, numbers),
                alarms=await _coarsen_alarms(db, numbers),
                webhook_events=await _drop_webhook_copies(db, numbers),
                handover_notes=await _purge_handovers(db, cutoff),
            )
            await db.executemany(
                "UPDATE incidents SET address = '', lat = ?, lon = ?, purged_at = ? WHERE id = ?",
                [(coarse(r["lat"]), coarse(r["lon"]), at, r["id"]) for r in rows],
            )
            if outcome:
                detail: dict[str, Any] = {"days": days, "closed_before": cutoff, **_counts(outcome)}
                await _audit(db, at, RETENTION_ACTOR, "retention_purge", None, detail)
            return outcome

        return await self._write(work)

    async def purge_due(self, *, now: datetime, days: int) -> int:
        """How many incidents are closed more than `days` ago and not yet purged (0 after a purge)."""
        async with self._tx(write=False) as db:
            row = await db.fetchone(
                """SELECT COUNT(*) AS n FROM incidents
                   WHERE closed_at IS NOT NULL AND purged_at IS NULL AND closed_at < ?""",
                (rfc3339(now - timedelta(days=days)),),
            )
        return 0 if row is None else int(row["n"])


def _counts(o: PurgeOutcome) -> dict[str, int]:
    return {"incidents": o.incidents, "notes": o.notes, "decline_reasons": o.decline_reasons, "alarms": o.alarms,
            "webhook_events": o.webhook_events, "handover_notes": o.handover_notes}


async def _purge_history(db: Conn, numbers: Sequence[int]) -> int:
    return await _scrub_details(db, "incident_history", "incident_id", "bigint", numbers)


async def _purge_audit(db: Conn, numbers: Sequence[int]) -> int:
    """The audit entries about these incidents (target: their public id) keep who did what and when."""
    return await _scrub_details(db, "audit_log", "target", "text", [incident_ref(n) for n in numbers])


async def _scrub_details(db: Conn, table: str, column: str, sql_type: str, keys: Sequence[int | str]) -> int:
    """Remove the notes from the JSON `detail` of `table`'s rows whose `column` is one of `keys`
    (table and column are constants of this module, not input); returns how many rows changed."""
    if not keys:
        return 0
    rows = await db.fetchall(
        f"SELECT id, detail FROM {table} WHERE {column} IN ({db.members(sql_type)}) AND detail IS NOT NULL",
        (db.array(keys),),
    )
    changed = [(text, r["id"]) for r in rows if (text := _scrubbed(r["detail"])) is not None]
    await db.executemany(f"UPDATE {table} SET detail = ? WHERE id = ?", changed)
    return len(changed)


async def _purge_reasons(db: Conn, numbers: Sequence[int]) -> int:
    if not numbers:
        return 0
    found = 0
    for table in ("dispatches", "dispatch_history"):  # constants, not input
        where = f"incident_id IN ({db.members('bigint')}) AND reason IS NOT NULL AND reason <> ''"
        row = await db.fetchone(f"SELECT COUNT(*) AS n FROM {table} WHERE {where}", (db.array(numbers),))
        n = 0 if row is None else int(row["n"])
        if n:
            await db.execute(f"UPDATE {table} SET reason = '' WHERE {where}", (db.array(numbers),))
        found += n
    return found


async def _coarsen_alarms(db: Conn, numbers: Sequence[int]) -> int:
    if not numbers:
        return 0
    rows = await db.fetchall(
        f"SELECT id, lat, lon FROM alarms WHERE incident_id IN ({db.members('bigint')})", (db.array(numbers),)
    )
    await db.executemany(
        "UPDATE alarms SET address = '', lat = ?, lon = ? WHERE id = ?",
        [(coarse(r["lat"]), coarse(r["lon"]), r["id"]) for r in rows],
    )
    return len(rows)


async def _drop_webhook_copies(db: Conn, numbers: Sequence[int]) -> int:
    """Delivered webhook events carry the incident as it was (address, location): the receiver has
    them, the outbox needs them no more. Undelivered ones stay until delivered."""
    if not numbers:
        return 0
    refs = [incident_ref(n) for n in numbers]
    where = f"incident_id IN ({db.members('text')}) AND delivered_at IS NOT NULL"
    row = await db.fetchone(f"SELECT COUNT(*) AS n FROM webhook_outbox WHERE {where}", (db.array(refs),))
    n = 0 if row is None else int(row["n"])
    if n:
        await db.execute(f"DELETE FROM webhook_outbox WHERE {where}", (db.array(refs),))
    return n


async def _purge_handovers(db: Conn, cutoff: str) -> int:
    """Handover notes may name callers and places like an incident note; kept as long."""
    where = "ended_at IS NOT NULL AND ended_at < ? AND handover_note IS NOT NULL AND handover_note <> ''"
    row = await db.fetchone(f"SELECT COUNT(*) AS n FROM shifts WHERE {where}", (cutoff,))
    n = 0 if row is None else int(row["n"])
    if n:
        await db.execute(f"UPDATE shifts SET handover_note = '' WHERE {where}", (cutoff,))
    return n

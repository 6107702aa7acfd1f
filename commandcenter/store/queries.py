"""Reading incidents (one, several, a list for the console, a period for the figures), the alarm
events of an incident and its history; and the row readers the writing parts share."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from ..domain import DispatchStatus, HistoryKind, IncidentState, parse_rfc3339, rfc3339
from ..engine import Conn, Row
from .base import StoreBase
from .records import AlarmEvent, Dispatch, DispatchHistoryEntry, HistoryEntry, Incident

_INCIDENT_SELECT = """
    SELECT i.*, (SELECT COUNT(*) FROM alarms a WHERE a.incident_id = i.id) AS event_count,
           (SELECT b.battery_mv FROM device_battery b WHERE b.device_id = i.device_id) AS battery_mv
    FROM incidents i
"""


# An open incident whose every dispatch was declined (domain.needs_dispatch), in SQL for the order.
_NEEDS_DISPATCH = """i.state IN ('acknowledged', 'dispatched')
    AND EXISTS (SELECT 1 FROM dispatches d WHERE d.incident_id = i.id)
    AND NOT EXISTS (SELECT 1 FROM dispatches d WHERE d.incident_id = i.id AND d.status <> 'declined')"""


class IncidentQueries(StoreBase):
    async def get_incident(self, number: int) -> Incident | None:
        async with self._tx(write=False) as db:
            return await _incident(db, number)

    async def get_incidents(self, numbers: Sequence[int]) -> list[Incident]:
        """The incidents with these numbers (unknown ones left out), in the order given."""
        async with self._tx(write=False) as db:
            return await _incidents(db, numbers)

    async def incidents_created_between(self, start: datetime, end: datetime, *, limit: int) -> list[Incident]:
        """Incidents whose first press arrived in [start, end), oldest first."""
        async with self._tx(write=False) as db:
            rows = await db.fetchall(
                f"{_INCIDENT_SELECT} WHERE i.created_at >= ? AND i.created_at < ? ORDER BY i.created_at, i.id LIMIT ?",
                (rfc3339(start), rfc3339(end), limit),
            )
            return await _built(db, rows)

    async def list_incidents(
        self,
        *,
        states: Sequence[IncidentState] | None = None,
        limit: int = 100,
        agency: str | None = None,
    ) -> list[Incident]:
        """Unacknowledged first, then the other open ones, then closed ones; newest first in each.
        An incident every asked agency declined (needs_dispatch) comes before all of them: it is back
        with the room. `agency`: only incidents with a dispatch to that agency, in any status."""
        conditions, params = [], []
        if states:
            conditions.append(f"i.state IN ({', '.join('?' for _ in states)})")
            params = [s.value for s in states]
        if agency is not None:
            conditions.append("EXISTS (SELECT 1 FROM dispatches d WHERE d.incident_id = i.id AND d.agency = ?)")
            params.append(agency)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = f"""{_INCIDENT_SELECT} {where}
            ORDER BY CASE WHEN {_NEEDS_DISPATCH} THEN 0
                          WHEN i.state = 'new' THEN 1
                          WHEN i.state IN ('acknowledged', 'dispatched') THEN 2
                          ELSE 3 END,
                     i.id DESC
            LIMIT ?"""
        async with self._tx(write=False) as db:
            rows = await db.fetchall(sql, (*params, limit))
            return await _built(db, rows)

    async def incident_events(self, number: int) -> list[AlarmEvent]:
        async with self._tx(write=False) as db:
            rows = await db.fetchall("SELECT * FROM alarms WHERE incident_id = ? ORDER BY id", (number,))
        return [
            AlarmEvent(
                event_id=r["event_id"],
                gateway_id=r["gateway_id"],
                device_id=r["device_id"],
                seq=r["seq"],
                kind=r["kind"],
                test=bool(r["test"]),
                raised_at=_time(r["raised_at"]),
                received_at=parse_rfc3339(r["received_at"]),
                intake_at=parse_rfc3339(r["intake_at"]),
                incident_key=r["incident_key"],
                press_count=r["press_count"],
                sources=None if r["sources"] is None else tuple(json.loads(r["sources"])),
            )
            for r in rows
        ]

    async def dispatch_history(self, number: int) -> list[DispatchHistoryEntry]:
        """Every status change of the incident's dispatches, oldest first."""
        async with self._tx(write=False) as db:
            rows = await db.fetchall(
                """SELECT d.agency, h.at, h.actor, h.from_status, h.to_status, h.reason
                   FROM dispatch_history h JOIN dispatches d ON d.id = h.dispatch_id
                   WHERE h.incident_id = ? ORDER BY h.id""",
                (number,),
            )
        return [
            DispatchHistoryEntry(
                agency=r["agency"],
                at=parse_rfc3339(r["at"]),
                actor=r["actor"],
                from_status=DispatchStatus(r["from_status"]) if r["from_status"] else None,
                to_status=DispatchStatus(r["to_status"]),
                reason=r["reason"],
            )
            for r in rows
        ]

    async def incident_history(self, number: int) -> list[HistoryEntry]:
        async with self._tx(write=False) as db:
            rows = await db.fetchall("SELECT * FROM incident_history WHERE incident_id = ? ORDER BY id", (number,))
        return [
            HistoryEntry(
                at=parse_rfc3339(r["at"]),
                actor=r["actor"],
                from_state=IncidentState(r["from_state"]) if r["from_state"] else None,
                to_state=IncidentState(r["to_state"]),
                detail=json.loads(r["detail"]) if r["detail"] else None,
                kind=HistoryKind(r["kind"]),
            )
            for r in rows
        ]


async def _incidents(db: Conn, numbers: Sequence[int]) -> list[Incident]:
    if not numbers:
        return []
    rows = await db.fetchall(f"{_INCIDENT_SELECT} WHERE i.id IN ({db.members('bigint')})", (db.array(numbers),))
    found = {i.number: i for i in await _built(db, rows)}
    return [found[n] for n in numbers if n in found]


async def _incident(db: Conn, number: int) -> Incident | None:
    row = await db.fetchone(f"{_INCIDENT_SELECT} WHERE i.id = ?", (number,))
    if row is None:
        return None
    return (await _built(db, [row]))[0]


async def _built(db: Conn, rows: Sequence[Row]) -> list[Incident]:
    """Incidents from their rows, with their devices and dispatches: two queries for any number of
    rows, however long the list."""
    numbers = [r["id"] for r in rows]
    sources = await _sources_of(db, numbers)
    dispatches = await _dispatches_of(db, numbers)
    return [_to_incident(r, sources.get(r["id"], ()), dispatches.get(r["id"], ())) for r in rows]


async def _dispatches_of(db: Conn, numbers: Sequence[int]) -> dict[int, tuple[Dispatch, ...]]:
    """The dispatches of each incident, in the order they were requested."""
    if not numbers:
        return {}
    rows = await db.fetchall(
        f"SELECT * FROM dispatches WHERE incident_id IN ({db.members('bigint')}) ORDER BY id",
        (db.array(numbers),),
    )
    found: dict[int, list[Dispatch]] = {}
    for r in rows:
        found.setdefault(r["incident_id"], []).append(_to_dispatch(r))
    return {number: tuple(ds) for number, ds in found.items()}


def _to_dispatch(r: Row) -> Dispatch:
    return Dispatch(
        agency=r["agency"],
        status=DispatchStatus(r["status"]),
        reason=r["reason"],
        requested_at=parse_rfc3339(r["requested_at"]),
        requested_by=r["requested_by"],
        accepted_at=_time(r["accepted_at"]),
        en_route_at=_time(r["en_route_at"]),
        on_scene_at=_time(r["on_scene_at"]),
        done_at=_time(r["done_at"]),
        declined_at=_time(r["declined_at"]),
        updated_at=parse_rfc3339(r["updated_at"]),
        updated_by=r["updated_by"],
        escalated_at=_time(r["escalated_at"]),
    )


async def _sources_of(db: Conn, numbers: Sequence[int]) -> dict[int, tuple[str, ...]]:
    """The devices of each incident in order of first appearance. A separate query rather than
    json_group_array in the incident query: the order of an aggregate's input is not guaranteed
    before SQLite 3.44."""
    if not numbers:
        return {}
    rows = await db.fetchall(
        f"""SELECT incident_id, device_id FROM incident_sources
           WHERE incident_id IN ({db.members('bigint')}) ORDER BY id""",
        (db.array(numbers),),
    )
    found: dict[int, list[str]] = {}
    for r in rows:
        found.setdefault(r["incident_id"], []).append(r["device_id"])
    return {number: tuple(devices) for number, devices in found.items()}


def _time(text: str | None) -> datetime | None:
    return None if text is None else parse_rfc3339(text)


def _to_incident(r: Row, sources: tuple[str, ...], dispatches: tuple[Dispatch, ...] = ()) -> Incident:
    return Incident(
        number=r["id"],
        state=IncidentState(r["state"]),
        device_id=r["device_id"],
        kind=r["kind"],
        test=bool(r["test"]),
        lat=r["lat"],
        lon=r["lon"],
        address=r["address"],
        area=r["area"],
        created_at=parse_rfc3339(r["created_at"]),
        updated_at=parse_rfc3339(r["updated_at"]),
        acknowledged_at=_time(r["acknowledged_at"]),
        acknowledged_by=r["acknowledged_by"],
        dispatched_at=_time(r["dispatched_at"]),
        dispatched_by=r["dispatched_by"],
        agency=r["agency"],
        closed_at=_time(r["closed_at"]),
        closed_by=r["closed_by"],
        event_count=r["event_count"],
        incident_key=r["incident_key"],
        sources=sources,
        escalated_at=_time(r["escalated_at"]),
        battery_mv=r["battery_mv"],
        referred_to=r["referred_to"],
        referral_ref=r["referral_ref"],
        escalated2_at=_time(r["escalated2_at"]),
        purged_at=_time(r["purged_at"]),
        dispatches=dispatches,
    )

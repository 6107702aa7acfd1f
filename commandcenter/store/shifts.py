"""Shifts in the store: who is on duty (signed on, not yet handed over), the handover with its note and
the incidents still open at that moment, and the recorded times the per-operator figures are made of.

At most one open shift per person: the unique index `shifts_one_open` holds it even when two sign-ons
race in two processes (the second transaction then runs again and finds the first's shift)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ..domain import OPEN_STATES, incident_ref, parse_rfc3339, rfc3339
from ..engine import Conn, Row, StoreError
from .audit import _audit
from .base import StoreBase


class ShiftOpenError(StoreError):
    """The person already has an open shift."""

    def __init__(self, shift: Shift) -> None:
        super().__init__(f"{shift.operator} is already on duty since {rfc3339(shift.started_at)}")
        self.shift = shift


class NoOpenShiftError(StoreError):
    """The person has no open shift to hand over."""


@dataclass(frozen=True, slots=True)
class Shift:
    id: int
    operator: str
    role: str
    started_at: datetime
    ended_at: datetime | None
    handover_note: str | None
    handed_to: str | None
    open_at_handover: tuple[str, ...]  # incident ids, e.g. "inc-000017"


@dataclass(frozen=True, slots=True)
class Handling:
    """One incident as the per-operator figures see it: when it opened, who acknowledged it when, and
    who asked for its first dispatch when (the earliest row of `dispatches`; before any, the
    incident's own `dispatched_at`)."""

    created_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    dispatched_at: datetime | None
    dispatched_by: str | None


_OPEN = tuple(sorted(s.value for s in OPEN_STATES))


class Shifts(StoreBase):
    async def start_shift(self, operator: str, role: str, *, now: datetime) -> Shift:
        """Sign `operator` on. ShiftOpenError when they already are."""
        at = rfc3339(now)

        async def work(db: Conn) -> Shift:
            current = await _open_shift(db, operator)
            if current is not None:
                raise ShiftOpenError(current)
            await db.execute(
                "INSERT INTO shifts (operator, role, started_at) VALUES (?, ?, ?)", (operator, role, at)
            )
            shift = await _open_shift(db, operator)
            assert shift is not None
            await _audit(db, at, operator, "shift_started", f"shift-{shift.id}", {"role": role})
            return shift

        return await self._write(work)

    async def current_shift(self, operator: str) -> Shift | None:
        async with self._tx(write=False) as db:
            return await _open_shift(db, operator)

    async def on_duty(self) -> list[Shift]:
        """The open shifts, longest on duty first."""
        async with self._tx(write=False) as db:
            rows = await db.fetchall("SELECT * FROM shifts WHERE ended_at IS NULL ORDER BY started_at, id")
        return [_shift(r) for r in rows]

    async def hand_over(self, operator: str, *, note: str, to: str | None, now: datetime) -> Shift:
        """End `operator`'s shift with `note`, to `to`, recording the incidents open at this moment;
        NoOpenShiftError when they are not on duty."""
        at = rfc3339(now)

        async def work(db: Conn) -> Shift:
            current = await _open_shift(db, operator, lock=True)
            if current is None:
                raise NoOpenShiftError(f"{operator} is not on duty")
            rows = await db.fetchall(
                f"SELECT id FROM incidents WHERE state IN ({', '.join('?' for _ in _OPEN)}) ORDER BY id", _OPEN
            )
            still_open = [incident_ref(r["id"]) for r in rows]
            await db.execute(
                """UPDATE shifts SET ended_at = ?, handover_note = ?, handed_to = ?, open_at_handover = ?
                   WHERE id = ?""",
                (at, note, to, json.dumps(still_open), current.id),
            )
            await _audit(db, at, operator, "shift_handover", f"shift-{current.id}",
                         {"to": to, "open": len(still_open)})
            ended = await _shift_by_id(db, current.id)
            assert ended is not None
            return ended

        return await self._write(work)

    async def get_shift(self, shift_id: int) -> Shift | None:
        async with self._tx(write=False) as db:
            return await _shift_by_id(db, shift_id)

    async def list_shifts(
        self, *, since: datetime, until: datetime, operator: str | None = None, limit: int = 100
    ) -> list[Shift]:
        """Shifts that overlap [since, until), newest first."""
        sql = "SELECT * FROM shifts WHERE started_at < ? AND (ended_at IS NULL OR ended_at >= ?)"
        params: list[object] = [rfc3339(until), rfc3339(since)]
        if operator is not None:
            sql += " AND operator = ?"
            params.append(operator)
        async with self._tx(write=False) as db:
            rows = await db.fetchall(f"{sql} ORDER BY started_at DESC, id DESC LIMIT ?", (*params, limit))
        return [_shift(r) for r in rows]

    async def handlings(self, *, since: datetime, until: datetime) -> list[Handling]:
        """The real (not test) incidents acknowledged, or first dispatched, in [since, until): the
        figures keep only what falls in the window, and this returns every incident that may."""
        s, u = rfc3339(since), rfc3339(until)
        async with self._tx(write=False) as db:
            rows = await db.fetchall(
                """SELECT id, created_at, acknowledged_at, acknowledged_by, dispatched_at, dispatched_by
                   FROM incidents i WHERE i.test = 0 AND (
                       (i.acknowledged_at >= ? AND i.acknowledged_at < ?)
                       OR (i.dispatched_at >= ? AND i.dispatched_at < ?)
                       OR EXISTS (SELECT 1 FROM dispatches d WHERE d.incident_id = i.id
                                  AND d.requested_at >= ? AND d.requested_at < ?))
                   ORDER BY i.id""",
                (s, u, s, u, s, u),
            )
            first = await _first_dispatches(db, [r["id"] for r in rows])
        found = []
        for r in rows:
            at, by = first.get(r["id"], (r["dispatched_at"], r["dispatched_by"]))
            found.append(
                Handling(
                    created_at=parse_rfc3339(r["created_at"]),
                    acknowledged_at=_time(r["acknowledged_at"]),
                    acknowledged_by=r["acknowledged_by"],
                    dispatched_at=_time(at),
                    dispatched_by=by,
                )
            )
        return found


async def _first_dispatches(db: Conn, numbers: Sequence[int]) -> dict[int, tuple[str, str]]:
    """(requested_at, requested_by) of each incident's earliest dispatch."""
    if not numbers:
        return {}
    rows = await db.fetchall(
        f"""SELECT incident_id, requested_at, requested_by FROM dispatches
           WHERE incident_id IN ({db.members('bigint')}) ORDER BY requested_at, id""",
        (db.array(numbers),),
    )
    first: dict[int, tuple[str, str]] = {}
    for r in rows:
        first.setdefault(r["incident_id"], (r["requested_at"], r["requested_by"]))
    return first


async def _open_shift(db: Conn, operator: str, *, lock: bool = False) -> Shift | None:
    row = await db.fetchone(
        f"SELECT * FROM shifts WHERE operator = ? AND ended_at IS NULL{db.lock() if lock else ''}", (operator,)
    )
    return None if row is None else _shift(row)


async def _shift_by_id(db: Conn, shift_id: int) -> Shift | None:
    row = await db.fetchone("SELECT * FROM shifts WHERE id = ?", (shift_id,))
    return None if row is None else _shift(row)


def _time(text: str | None) -> datetime | None:
    return None if text is None else parse_rfc3339(text)


def _shift(r: Row) -> Shift:
    return Shift(
        id=r["id"],
        operator=r["operator"],
        role=r["role"],
        started_at=parse_rfc3339(r["started_at"]),
        ended_at=_time(r["ended_at"]),
        handover_note=r["handover_note"],
        handed_to=r["handed_to"],
        open_at_handover=tuple(json.loads(r["open_at_handover"])) if r["open_at_handover"] else (),
    )

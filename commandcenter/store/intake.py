"""Intake of alarm events: each event is stored once (its event_id), and opens an incident or joins
the open one its `incident_key` names; an event that joins an incident already acted on gets its
state report queued at once. A batch is planned in Python (`_IntakePlan`) and written with one
statement per table."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..domain import Action, IncidentState, callback_body, incident_ref, parse_rfc3339, rfc3339
from ..engine import Conn, Row
from .base import StoreBase
from .changes import Change, Wake
from .records import IntakeOutcome, NewAlarm

# The latest battery voltage of a device, from an alarm (here) or a fault report (faults.py).
_UPSERT_BATTERY = """INSERT INTO device_battery (device_id, battery_mv, at, source) VALUES (?, ?, ?, ?)
    ON CONFLICT (device_id) DO UPDATE SET battery_mv = excluded.battery_mv, at = excluded.at,
        source = excluded.source
    WHERE excluded.at >= device_battery.at"""


@dataclass(slots=True)
class _Target:
    """An incident that events of the current intake transaction join. Mutable on purpose: it is
    bookkeeping inside one transaction and never leaves the store."""

    number: int
    first: NewAlarm | None  # the event that opens it, if it is opened in this transaction
    test: bool  # a test incident becomes real as soon as one real press joins it
    # What a newly attached event must be told at once: the incident was already acted on, and the
    # button that joins it has only heard "received" from its gateway.
    report: tuple[Action, datetime, str] | None = None

    @classmethod
    def existing(cls, r: Row) -> _Target:
        state = IncidentState(r["state"])
        report = None
        if state is IncidentState.ACKNOWLEDGED:
            report = (Action.ACKNOWLEDGE, parse_rfc3339(r["acknowledged_at"]), r["acknowledged_by"])
        elif state is IncidentState.DISPATCHED:
            report = (Action.DISPATCH, parse_rfc3339(r["dispatched_at"]), r["dispatched_by"])
        return cls(number=r["id"], first=None, test=bool(r["test"]), report=report)


class _IntakePlan:
    """The rows one intake transaction writes, decided event by event in the order given."""

    def __init__(
        self,
        *,
        now: datetime,
        numbers: Iterator[int],
        known: dict[str, tuple[int, str]],
        open_by_key: dict[str, _Target],
    ) -> None:
        self._now = now
        self._at = rfc3339(now)
        self._numbers = numbers  # for the incidents this plan opens, ascending
        self._known = known  # event_id -> (incident, fingerprint), grows with the events added
        self._open_by_key = open_by_key  # grows with the incidents opened
        self._targets: dict[int, _Target] = {}
        self._alarms: list[tuple[Any, ...]] = []
        self._sources: dict[tuple[int, str], None] = {}  # ordered set
        self._reports: list[tuple[Any, ...]] = []
        self._batteries: list[tuple[str, int, str, str]] = []
        self.outcomes: list[IntakeOutcome] = []

    def add(self, alarm: NewAlarm) -> None:
        seen = self._known.get(alarm.event_id)
        if seen is not None:
            self.outcomes.append(
                IntakeOutcome(
                    created=False,
                    event_id=alarm.event_id,
                    incident=seen[0],
                    same_body=seen[1] == alarm.fingerprint,
                )
            )
            return
        key = alarm.incident_key
        target = None if key is None else self._open_by_key.get(key)
        opened = target is None
        if target is None:
            target = _Target(number=next(self._numbers), first=alarm, test=alarm.test)
            if key is not None:
                self._open_by_key[key] = target
        elif target.test and not alarm.test:
            target.test = False
        self._targets[target.number] = target
        self._known[alarm.event_id] = (target.number, alarm.fingerprint)
        self._alarms.append(
            (
                alarm.event_id,
                alarm.gateway_id,
                alarm.device_id,
                alarm.seq,
                alarm.kind,
                int(alarm.test),
                alarm.lat,
                alarm.lon,
                alarm.address,
                alarm.area,
                rfc3339(alarm.raised_at) if alarm.raised_at else None,
                rfc3339(alarm.received_at),
                self._at,
                alarm.fingerprint,
                target.number,
                key,
                alarm.press_count,
                None if alarm.sources is None else json.dumps(list(alarm.sources)),
                alarm.battery_mv,
            )
        )
        if alarm.battery_mv is not None:
            self._batteries.append(
                (alarm.device_id, alarm.battery_mv, rfc3339(alarm.received_at), alarm.event_id)
            )
        # The gateway lists the group's devices in order of their first alarm; the sender itself
        # is added in case a sender leaves it out.
        for device in (*(alarm.sources or ()), alarm.device_id):
            self._sources[(target.number, device)] = None
        if target.report is not None:
            action, at, by = target.report
            body = callback_body(
                event_id=alarm.event_id,
                device_id=alarm.device_id,
                seq=alarm.seq,
                state=action,
                incident=incident_ref(target.number),
                at=at,
                by=by,
            )
            self._reports.append(
                (alarm.event_id, alarm.gateway_id, action.value, body, self._at, self._now.timestamp())
            )
        self.outcomes.append(
            IntakeOutcome(
                created=True,
                event_id=alarm.event_id,
                incident=target.number,
                same_body=True,
                opened=opened,
                reported=target.report is not None,
            )
        )

    @property
    def opened(self) -> int:
        """How many incidents the plan opens."""
        return sum(t.first is not None for t in self._targets.values())

    @property
    def reports(self) -> bool:
        return bool(self._reports)

    async def write(self, db: Conn) -> None:
        # Targets were added in order of first use, so new incident numbers are inserted ascending.
        opened = [(t.number, t.test, t.first) for t in self._targets.values() if t.first is not None]
        attached = [t for t in self._targets.values() if t.first is None]
        if opened:
            await db.executemany(
                """INSERT INTO incidents (id, state, device_id, kind, test, lat, lon, address, area,
                       created_at, updated_at, incident_key)
                   VALUES (?, 'new', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [
                    (
                        n,
                        a.device_id,
                        a.kind,
                        int(test),
                        a.lat,
                        a.lon,
                        a.address,
                        a.area,
                        self._at,
                        self._at,
                        a.incident_key,
                    )
                    for n, test, a in opened
                ],
            )
            await db.executemany(
                """INSERT INTO incident_history (incident_id, at, actor, from_state, to_state, detail)
                   VALUES (?, ?, ?, NULL, 'new', ?)""",
                [(n, self._at, f"gateway:{a.gateway_id}", json.dumps({"event_id": a.event_id})) for n, _, a in opened],
            )
        if attached:
            # An attached event is an update of its incident, not a state change: no history entry.
            await db.executemany(
                "UPDATE incidents SET updated_at = ?, test = ? WHERE id = ?",
                [(self._at, int(t.test), t.number) for t in attached],
            )
        if self._alarms:
            await db.executemany(
                """INSERT INTO alarms (event_id, gateway_id, device_id, seq, kind, test, lat, lon,
                       address, area, raised_at, received_at, intake_at, fingerprint, incident_id,
                       incident_key, press_count, sources, battery_mv)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                self._alarms,
            )
        if self._batteries:
            # By device (stable: one device's reports keep their order), so that two processes
            # updating the same devices lock their rows in the same order and do not deadlock.
            await db.executemany(_UPSERT_BATTERY, sorted(self._batteries, key=lambda b: b[0]))
        if self._sources:
            await db.executemany(
                "INSERT INTO incident_sources (incident_id, device_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                list(self._sources),
            )
        if self._reports:
            await db.executemany(
                """INSERT INTO callback_outbox (event_id, gateway_id, state, body, created_at, next_attempt_at)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                self._reports,
            )


class Intake(StoreBase):
    async def record_alarm(self, alarm: NewAlarm, *, now: datetime) -> IntakeOutcome:
        """Store an alarm event once; a known event_id returns what the first call created."""
        [outcome] = await self.record_alarms([alarm], now=now)
        return outcome

    async def record_alarms(self, alarms: Sequence[NewAlarm], *, now: datetime) -> list[IntakeOutcome]:
        """Store alarm events in the order given, in one transaction; one outcome per event.

        A known event_id (also one earlier in `alarms`) creates nothing and returns the incident of
        its first arrival. A new event whose `incident_key` names an open incident (also one opened
        earlier in `alarms`) attaches to it; any other new event opens an incident.

        The plan is made in Python from three lookups and then written with one executemany per
        table: every statement is a round trip (to aiosqlite's thread, or to PostgreSQL), and a batch
        of 500 events must not cost thousands of them.
        """
        if not alarms:
            return []

        async def work(db: Conn) -> list[IntakeOutcome]:
            known = await db.fetchall(
                f"SELECT event_id, incident_id, fingerprint FROM alarms WHERE event_id IN ({db.members('text')})",
                (db.array(a.event_id for a in alarms),),
            )
            keys = sorted({a.incident_key for a in alarms if a.incident_key is not None})
            # CROSS JOIN: SQLite keeps this loop order, so each key is one lookup in the partial index
            # incidents_open_by_key (whose condition the WHERE repeats), however many are open. With
            # PostgreSQL the rows are locked, in id order: an operator closing one of these incidents
            # now waits for this transaction, or this one sees it closed and opens a new incident.
            open_rows = (
                await db.fetchall(
                    f"""SELECT i.id, i.incident_key, i.state, i.test, i.acknowledged_at, i.acknowledged_by,
                              i.dispatched_at, i.dispatched_by
                       FROM {db.members_table('text', 'k')} CROSS JOIN incidents AS i
                       WHERE i.incident_key = k.value AND i.incident_key IS NOT NULL
                         AND i.state IN ('new', 'acknowledged', 'dispatched')
                       ORDER BY i.id{db.lock('i')}""",
                    (db.array(keys),),
                )
                if keys
                else []
            )

            def plan(numbers: Iterator[int]) -> _IntakePlan:
                made = _IntakePlan(
                    now=now,
                    numbers=numbers,
                    known={r["event_id"]: (r["incident_id"], r["fingerprint"]) for r in known},
                    open_by_key={r["incident_key"]: _Target.existing(r) for r in open_rows},
                )
                for alarm in alarms:
                    made.add(alarm)
                return made

            if db.shared:
                # Numbers come from the sequence, which hands each out once across all processes:
                # a dry run tells how many this batch opens, and exactly that many are taken.
                final = plan(iter(await _take_incident_numbers(db, plan(itertools.count(1)).opened)))
            else:
                final = plan(itertools.count(await _next_incident_number(db)))
            await final.write(db)
            created = [o for o in final.outcomes if o.created]
            if created:
                wake: list[Wake] = []
                if final.reports:
                    wake.append("callbacks")
                if any(o.opened for o in created):
                    wake.append("escalation")
                numbers = tuple(dict.fromkeys(o.incident for o in created))
                await self._announce(db, Change(self.origin, "incident", incidents=numbers, wake=tuple(wake)))
            return final.outcomes

        return await self._write(work)


async def _next_incident_number(db: Conn) -> int:
    """SQLite: the number the next incident gets. Intake assigns numbers itself instead of leaving them
    to AUTOINCREMENT, so that a batch can insert all its incidents with one executemany and still know
    their numbers. It runs inside the write transaction, so nobody else takes a number meanwhile, and
    an explicit id advances sqlite_sequence, so numbers are still never reused."""
    row = await db.fetchone(
        """SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'incidents'), 0),
                      COALESCE((SELECT MAX(id) FROM incidents), 0)) + 1"""
    )
    assert row is not None
    return int(row[0])


async def _take_incident_numbers(db: Conn, count: int) -> list[int]:
    """PostgreSQL: `count` numbers from the incidents' identity sequence, ascending. Other processes
    take numbers at the same time, so they need not be consecutive; a number taken by a transaction
    that then rolls back (or runs again) is never used: a gap, never a duplicate."""
    if count == 0:
        return []
    rows = await db.fetchall(
        "SELECT nextval(pg_get_serial_sequence('incidents', 'id')) FROM generate_series(1, ?)", (count,)
    )
    return sorted(int(r[0]) for r in rows)

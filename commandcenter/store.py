"""Durable state of the command center: alarms, incidents, their history, the outboxes (state reports
to the gateway, webhook events), device faults, browser sessions and the audit log.

One SQLite file (WAL, synchronous=FULL) accessed through aiosqlite. The schema is versioned with
`PRAGMA user_version`; see schema.MIGRATIONS.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite

from .domain import (
    Action,
    HistoryKind,
    IncidentState,
    callback_body,
    can_apply,
    incident_ref,
    parse_rfc3339,
    rfc3339,
)
from .schema import MIGRATIONS

log = logging.getLogger(__name__)


class StoreError(Exception):
    pass


class SchemaTooNewError(StoreError):
    """The database was written by a newer version of the command center; refuse to touch it."""


class IncidentNotFoundError(StoreError):
    pass


class InvalidTransitionError(StoreError):
    def __init__(self, current: IncidentState, action: Action) -> None:
        super().__init__(f"cannot move an incident from {current.value} to {action.value}")
        self.current = current
        self.action = action


SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True, slots=True)
class NewAlarm:
    event_id: str
    gateway_id: str
    device_id: str
    seq: int
    kind: str
    test: bool
    lat: float
    lon: float
    address: str
    area: str
    raised_at: datetime | None
    received_at: datetime
    fingerprint: str  # hash of the validated request body, to spot a reused key with other content
    # The gateway's incident layer (protocol §7); all None from senders that do not group.
    incident_key: str | None = None
    press_count: int | None = None
    sources: tuple[str, ...] | None = None
    battery_mv: int | None = None  # optional (protocol §7); kept per device for the console


@dataclass(frozen=True, slots=True)
class IntakeOutcome:
    created: bool
    event_id: str
    incident: int
    same_body: bool  # False: the key was seen before with a different body
    opened: bool = False  # this event opened its incident (created and not attached)
    reported: bool = False  # a state report was queued for it (it joined an incident already acted on)


@dataclass(frozen=True, slots=True)
class NewFault:
    event_id: str
    gateway_id: str
    device_id: str
    fault: str
    active: bool
    at: datetime
    detail: dict[str, Any]
    location: tuple[float, float, str, str] | None  # lat, lon, address, area
    fingerprint: str


@dataclass(frozen=True, slots=True)
class FaultOutcome:
    created: bool
    event_id: str
    same_body: bool


@dataclass(frozen=True, slots=True)
class DeviceFault:
    """The latest report of one fault of one device."""

    device_id: str
    fault: str
    active: bool
    since: datetime  # when it became active (or cleared, if not active)
    at: datetime  # the latest report's time
    event_id: str
    gateway_id: str
    detail: dict[str, Any]
    location: tuple[float, float, str, str] | None


@dataclass(frozen=True, slots=True)
class Incident:
    number: int
    state: IncidentState
    device_id: str
    kind: str
    test: bool
    lat: float
    lon: float
    address: str
    area: str
    created_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    dispatched_at: datetime | None
    dispatched_by: str | None
    agency: str | None
    closed_at: datetime | None
    closed_by: str | None
    event_count: int
    incident_key: str | None
    sources: tuple[str, ...]  # devices, in order of first appearance
    escalated_at: datetime | None = None
    battery_mv: int | None = None  # the latest known battery voltage of `device_id`

    @property
    def ref(self) -> str:
        return incident_ref(self.number)


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    event_id: str
    gateway_id: str
    device_id: str
    seq: int
    kind: str
    test: bool
    raised_at: datetime | None
    received_at: datetime
    intake_at: datetime
    incident_key: str | None
    press_count: int | None
    sources: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    at: datetime
    actor: str
    from_state: IncidentState | None
    to_state: IncidentState
    detail: dict[str, Any] | None
    kind: HistoryKind = HistoryKind.STATE


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    key: str  # what its order is kept within: the alarm event (reports) or the incident (webhooks)
    body: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Outbox:
    """One outbox table. Rows with the same `key` go out in the order they were queued."""

    table: str
    key: str


CALLBACK_OUTBOX = Outbox("callback_outbox", "event_id")
WEBHOOK_OUTBOX = Outbox("webhook_outbox", "incident_id")


@dataclass(frozen=True, slots=True)
class Session:
    operator: str
    csrf_token: str
    expires_at: datetime
    credential: str  # credential_id of the token the session was made with


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    detail: dict[str, Any] | None


# Columns written by each action besides `state`.
_ACTION_COLUMNS: dict[Action, tuple[str, str]] = {
    Action.ACKNOWLEDGE: ("acknowledged_at", "acknowledged_by"),
    Action.DISPATCH: ("dispatched_at", "dispatched_by"),
    Action.RESOLVE: ("closed_at", "closed_by"),
    Action.FALSE_ALARM: ("closed_at", "closed_by"),
}

_INCIDENT_SELECT = """
    SELECT i.*, (SELECT COUNT(*) FROM alarms a WHERE a.incident_id = i.id) AS event_count,
           (SELECT b.battery_mv FROM device_battery b WHERE b.device_id = i.device_id) AS battery_mv
    FROM incidents i
"""


def _head_of_key(outbox: Outbox) -> str:
    """The oldest undelivered row of each key: reports of one event go out in order, so that a late
    "acknowledged" cannot arrive after "resolved"; different keys do not wait for each other.
    (Table and column names come from the two Outbox constants, never from input.)"""
    return f"""
    o.delivered_at IS NULL AND NOT EXISTS (
        SELECT 1 FROM {outbox.table} p
        WHERE p.{outbox.key} = o.{outbox.key} AND p.delivered_at IS NULL AND p.id < o.id)
"""


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
    def existing(cls, r: aiosqlite.Row) -> _Target:
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
        next_number: int,
        known: dict[str, tuple[int, str]],
        open_by_key: dict[str, _Target],
    ) -> None:
        self._now = now
        self._at = rfc3339(now)
        self._next_number = next_number
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
            target = _Target(number=self._next_number, first=alarm, test=alarm.test)
            self._next_number += 1
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

    async def write(self, db: aiosqlite.Connection) -> None:
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
            await db.executemany(_UPSERT_BATTERY, self._batteries)
        if self._sources:
            await db.executemany(
                "INSERT OR IGNORE INTO incident_sources (incident_id, device_id) VALUES (?, ?)",
                list(self._sources),
            )
        if self._reports:
            await db.executemany(
                """INSERT INTO callback_outbox (event_id, gateway_id, state, body, created_at, next_attempt_at)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                self._reports,
            )


class Store:
    """All database access. Use `await Store.open(path)` and `await store.close()`."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        # aiosqlite shares one connection between all coroutines, so without this lock the
        # statements of two requests would interleave inside one SQLite transaction.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the sqlite3 module must not open transactions behind our back;
        # every transaction here is an explicit BEGIN ... COMMIT.
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            db.row_factory = aiosqlite.Row
            await _configure(db)
            await _migrate(db)
        except BaseException:
            await db.close()
            raise
        return cls(db)

    async def close(self) -> None:
        async with self._lock:
            await self._db.close()

    @asynccontextmanager
    async def _tx(self, *, write: bool) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            # IMMEDIATE takes the write lock at once, so a write transaction never fails halfway
            # with SQLITE_BUSY because another process (a backup, a CLI) got in first.
            await self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (disk full): never leave the connection mid-transaction.
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise

    # ---- intake -------------------------------------------------------------------------------

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
        table: every statement is a round trip to aiosqlite's thread, and a batch of 500 events must
        not cost thousands of them.
        """
        if not alarms:
            return []
        async with self._tx(write=True) as db:
            known = await db.execute_fetchall(
                """SELECT event_id, incident_id, fingerprint FROM alarms
                   WHERE event_id IN (SELECT value FROM json_each(?))""",
                (json.dumps([a.event_id for a in alarms]),),
            )
            keys = sorted({a.incident_key for a in alarms if a.incident_key is not None})
            # CROSS JOIN: SQLite keeps this loop order, so each key is one lookup in the partial index
            # incidents_open_by_key (whose condition the WHERE repeats), however many are open.
            open_rows = (
                await db.execute_fetchall(
                    """SELECT i.id, i.incident_key, i.state, i.test, i.acknowledged_at, i.acknowledged_by,
                              i.dispatched_at, i.dispatched_by
                       FROM json_each(?) AS k CROSS JOIN incidents AS i ON i.incident_key = k.value
                       WHERE i.incident_key IS NOT NULL AND i.state IN ('new', 'acknowledged', 'dispatched')""",
                    (json.dumps(keys),),
                )
                if keys
                else []
            )
            plan = _IntakePlan(
                now=now,
                next_number=await _next_incident_number(db),
                known={r["event_id"]: (r["incident_id"], r["fingerprint"]) for r in known},
                open_by_key={r["incident_key"]: _Target.existing(r) for r in open_rows},
            )
            for alarm in alarms:
                plan.add(alarm)
            await plan.write(db)
            return plan.outcomes

    # ---- device faults ------------------------------------------------------------------------

    async def record_fault(self, fault: NewFault, *, now: datetime) -> FaultOutcome:
        """Store a fault report once and update the device's current state of that fault. A fault
        never opens an incident (protocol §7): it is a matter for supervisors, not dispatchers."""
        return (await self.record_faults([fault], now=now))[0]

    async def record_faults(self, faults: Sequence[NewFault], *, now: datetime) -> list[FaultOutcome]:
        """record_fault for many reports, in one transaction (a gateway's batch)."""
        async with self._tx(write=True) as db:
            return [await self._record_fault(db, fault, now) for fault in faults]

    async def _record_fault(self, db: aiosqlite.Connection, fault: NewFault, now: datetime) -> FaultOutcome:
        row = await _one(db, "SELECT fingerprint FROM device_faults WHERE event_id = ?", (fault.event_id,))
        if row is not None:
            return FaultOutcome(
                created=False, event_id=fault.event_id, same_body=row["fingerprint"] == fault.fingerprint
            )
        lat, lon, address, area = fault.location or (None, None, None, None)
        at = rfc3339(fault.at)
        detail = json.dumps(fault.detail, sort_keys=True, ensure_ascii=False)
        intake_at = rfc3339(now)
        await db.execute(
            """INSERT INTO device_faults (event_id, gateway_id, device_id, fault, active, at, detail,
                   lat, lon, address, area, intake_at, fingerprint)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                fault.event_id,
                fault.gateway_id,
                fault.device_id,
                fault.fault,
                int(fault.active),
                at,
                detail,
                lat,
                lon,
                address,
                area,
                intake_at,
                fault.fingerprint,
            ),
        )
        # Only a report at least as new as the stored one changes the current state: the gateway
        # retries, so an old "active" may arrive after the "cleared" that followed it. In the SET
        # clause the unqualified table name is the row as it was, `excluded` the new report.
        await db.execute(
            """INSERT INTO device_fault_state (device_id, fault, active, since, at, event_id,
                   gateway_id, detail, lat, lon, address, area, intake_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (device_id, fault) DO UPDATE SET
                   since = CASE WHEN device_fault_state.active = excluded.active
                                THEN device_fault_state.since ELSE excluded.since END,
                   active = excluded.active, at = excluded.at, event_id = excluded.event_id,
                   gateway_id = excluded.gateway_id, detail = excluded.detail,
                   lat = COALESCE(excluded.lat, device_fault_state.lat),
                   lon = COALESCE(excluded.lon, device_fault_state.lon),
                   address = COALESCE(excluded.address, device_fault_state.address),
                   area = COALESCE(excluded.area, device_fault_state.area),
                   intake_at = excluded.intake_at
               WHERE excluded.at >= device_fault_state.at""",
            (
                fault.device_id,
                fault.fault,
                int(fault.active),
                at,
                at,
                fault.event_id,
                fault.gateway_id,
                detail,
                lat,
                lon,
                address,
                area,
                intake_at,
            ),
        )
        battery = fault.detail.get("battery_mv")
        # bool is an int in Python; `true` is not a voltage.
        if isinstance(battery, int) and not isinstance(battery, bool) and 0 <= battery < 100_000:
            await db.execute(_UPSERT_BATTERY, (fault.device_id, battery, at, fault.event_id))
        return FaultOutcome(created=True, event_id=fault.event_id, same_body=True)

    async def active_faults(self, *, limit: int = 1000) -> list[DeviceFault]:
        """Faults whose latest report says active, the most recently started first."""
        async with self._tx(write=False) as db:
            rows = await db.execute_fetchall(
                """SELECT * FROM device_fault_state WHERE active = 1
                   ORDER BY since DESC, device_id, fault LIMIT ?""",
                (limit,),
            )
        return [
            DeviceFault(
                device_id=r["device_id"],
                fault=r["fault"],
                active=bool(r["active"]),
                since=parse_rfc3339(r["since"]),
                at=parse_rfc3339(r["at"]),
                event_id=r["event_id"],
                gateway_id=r["gateway_id"],
                detail=json.loads(r["detail"]),
                location=None if r["lat"] is None else (r["lat"], r["lon"], r["address"], r["area"]),
            )
            for r in rows
        ]

    # ---- operator actions ---------------------------------------------------------------------

    async def apply_action(
        self,
        number: int,
        action: Action,
        *,
        actor: str,
        now: datetime,
        agency: str | None = None,
        note: str | None = None,
    ) -> Incident:
        """Move an incident to the action's state, record who did it, and queue one state report
        per event of the incident, all in one transaction (the transactional-outbox pattern: the
        report exists if and only if the change does)."""
        async with self._tx(write=True) as db:
            incident = await _incident(db, number)
            if incident is None:
                raise IncidentNotFoundError(incident_ref(number))
            if not can_apply(action, incident.state):
                raise InvalidTransitionError(incident.state, action)
            at = rfc3339(now)
            at_col, by_col = _ACTION_COLUMNS[action]
            assignments = f"state = ?, updated_at = ?, {at_col} = ?, {by_col} = ?"
            params: list[Any] = [action.target.value, at, at, actor]
            if action is Action.DISPATCH:
                assignments += ", agency = ?"
                params.append(agency)
            await db.execute(f"UPDATE incidents SET {assignments} WHERE id = ?", (*params, number))
            detail = {k: v for k, v in (("agency", agency), ("note", note)) if v is not None}
            detail_json = json.dumps(detail, ensure_ascii=False) if detail else None
            await db.execute(
                """INSERT INTO incident_history (incident_id, at, actor, from_state, to_state, detail)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                (number, at, actor, incident.state.value, action.target.value, detail_json),
            )
            await _audit(db, at, actor, action.value, incident_ref(number), detail or None)
            events = await db.execute_fetchall(
                "SELECT event_id, gateway_id, device_id, seq FROM alarms WHERE incident_id = ? ORDER BY id",
                (number,),
            )
            for ev in events:
                body = callback_body(
                    event_id=ev["event_id"],
                    device_id=ev["device_id"],
                    seq=ev["seq"],
                    state=action,
                    incident=incident_ref(number),
                    at=now,
                    by=actor,
                )
                await db.execute(
                    """INSERT INTO callback_outbox (event_id, gateway_id, state, body, created_at,
                           next_attempt_at)
                       VALUES (?, ?, ?, ?, ?, ?)""",
                    (ev["event_id"], ev["gateway_id"], action.value, body, at, now.timestamp()),
                )
            updated = await _incident(db, number)
            assert updated is not None
            return updated

    # ---- queries ------------------------------------------------------------------------------

    async def add_note(self, number: int, note: str, *, actor: str, now: datetime) -> Incident:
        """Record an operator's note in the incident's history; the state stays as it is."""
        async with self._tx(write=True) as db:
            incident = await _incident(db, number)
            if incident is None:
                raise IncidentNotFoundError(incident_ref(number))
            at = rfc3339(now)
            await db.execute("UPDATE incidents SET updated_at = ? WHERE id = ?", (at, number))
            await db.execute(
                """INSERT INTO incident_history (incident_id, at, actor, from_state, to_state, detail, kind)
                   VALUES (?, ?, ?, ?, ?, ?, 'note')""",
                (number, at, actor, incident.state.value, incident.state.value,
                 json.dumps({"note": note}, ensure_ascii=False)),
            )
            await _audit(db, at, actor, "note", incident_ref(number), {"note": note})
            updated = await _incident(db, number)
            assert updated is not None
            return updated

    # ---- escalation ---------------------------------------------------------------------------

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
        `webhook_body` is given), all in one transaction. Returns the escalated incidents."""
        cutoff = rfc3339(now - timedelta(seconds=after_s))
        at = rfc3339(now)
        async with self._tx(write=True) as db:
            rows = await db.execute_fetchall(
                """SELECT id FROM incidents WHERE state = 'new' AND escalated_at IS NULL AND created_at <= ?
                   ORDER BY created_at, id LIMIT ?""",
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
            return escalated

    async def next_escalation_due(self, *, after_s: float) -> datetime | None:
        """When the next incident escalates if nobody acknowledges it, or None when none waits."""
        async with self._tx(write=False) as db:
            row = await _one(
                db, "SELECT MIN(created_at) AS t FROM incidents WHERE state = 'new' AND escalated_at IS NULL", ()
            )
        if row is None or row["t"] is None:
            return None
        return parse_rfc3339(row["t"]) + timedelta(seconds=after_s)

    # ---- queries ------------------------------------------------------------------------------

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
            rows = await db.execute_fetchall(
                f"{_INCIDENT_SELECT} WHERE i.created_at >= ? AND i.created_at < ? ORDER BY i.created_at, i.id LIMIT ?",
                (rfc3339(start), rfc3339(end), limit),
            )
            sources = await _sources_of(db, [r["id"] for r in rows])
        return [_to_incident(r, sources.get(r["id"], ())) for r in rows]

    async def list_incidents(
        self,
        *,
        states: Sequence[IncidentState] | None = None,
        limit: int = 100,
        agency: str | None = None,
    ) -> list[Incident]:
        """Unacknowledged first, then the other open ones, then closed ones; newest first in each.
        `agency`: only incidents dispatched to that agency."""
        conditions, params = [], []
        if states:
            conditions.append(f"i.state IN ({', '.join('?' for _ in states)})")
            params = [s.value for s in states]
        if agency is not None:
            conditions.append("i.agency = ?")
            params.append(agency)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = f"""{_INCIDENT_SELECT} {where}
            ORDER BY CASE i.state WHEN 'new' THEN 0
                                  WHEN 'acknowledged' THEN 1 WHEN 'dispatched' THEN 1
                                  ELSE 2 END,
                     i.id DESC
            LIMIT ?"""
        async with self._tx(write=False) as db:
            rows = await db.execute_fetchall(sql, (*params, limit))
            sources = await _sources_of(db, [r["id"] for r in rows])
        return [_to_incident(r, sources.get(r["id"], ())) for r in rows]

    async def incident_events(self, number: int) -> list[AlarmEvent]:
        async with self._tx(write=False) as db:
            rows = await db.execute_fetchall("SELECT * FROM alarms WHERE incident_id = ? ORDER BY id", (number,))
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

    async def incident_history(self, number: int) -> list[HistoryEntry]:
        async with self._tx(write=False) as db:
            rows = await db.execute_fetchall(
                "SELECT * FROM incident_history WHERE incident_id = ? ORDER BY id", (number,)
            )
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

    # ---- outboxes: state reports to the gateway, webhook events ------------------------------

    async def due(self, outbox: Outbox, now: float, limit: int) -> list[OutboxRow]:
        """Rows whose time has come, at most one per key (the oldest undelivered one)."""
        async with self._tx(write=False) as db:
            rows = await db.execute_fetchall(
                f"""SELECT o.id, o.{outbox.key} AS key, o.body, o.attempts FROM {outbox.table} o
                    WHERE {_head_of_key(outbox)} AND o.next_attempt_at <= ?
                    ORDER BY o.next_attempt_at, o.id LIMIT ?""",
                (now, limit),
            )
        return [OutboxRow(r["id"], r["key"], r["body"], r["attempts"]) for r in rows]

    async def next_due(self, outbox: Outbox) -> float | None:
        """When the next row may be sent (Unix time), or None when none is waiting."""
        async with self._tx(write=False) as db:
            row = await _one(
                db, f"SELECT MIN(o.next_attempt_at) AS t FROM {outbox.table} o WHERE {_head_of_key(outbox)}", ()
            )
        return None if row is None else row["t"]

    async def mark_delivered(self, outbox: Outbox, row_id: int, *, now: datetime) -> None:
        async with self._tx(write=True) as db:
            await db.execute(
                f"""UPDATE {outbox.table} SET attempts = attempts + 1, last_attempt_at = ?,
                       delivered_at = ?, last_error = NULL
                   WHERE id = ?""",
                (rfc3339(now), rfc3339(now), row_id),
            )

    async def mark_failed(
        self, outbox: Outbox, row_id: int, *, now: datetime, next_attempt_at: float, error: str
    ) -> None:
        async with self._tx(write=True) as db:
            await db.execute(
                f"""UPDATE {outbox.table} SET attempts = attempts + 1, last_attempt_at = ?,
                       next_attempt_at = ?, last_error = ?
                   WHERE id = ?""",
                (rfc3339(now), next_attempt_at, error[:500], row_id),
            )

    async def pending(self, outbox: Outbox) -> int:
        async with self._tx(write=False) as db:
            row = await _one(db, f"SELECT COUNT(*) AS n FROM {outbox.table} WHERE delivered_at IS NULL", ())
        return 0 if row is None else row["n"]

    async def pending_callbacks(self) -> int:
        return await self.pending(CALLBACK_OUTBOX)

    # ---- browser sessions ---------------------------------------------------------------------

    async def create_session(
        self, token_hash: str, *, operator: str, csrf_token: str, credential: str, now: datetime, ttl: timedelta
    ) -> Session:
        expires = now + ttl
        async with self._tx(write=True) as db:
            # Expired sessions are dropped here, so the table stays as small as the active staff.
            await db.execute("DELETE FROM sessions WHERE expires_at <= ?", (rfc3339(now),))
            await db.execute(
                """INSERT INTO sessions (token_hash, operator, csrf_token, created_at, expires_at, credential)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                (token_hash, operator, csrf_token, rfc3339(now), rfc3339(expires), credential),
            )
            await _audit(db, rfc3339(now), operator, "login", None, None)
        return Session(operator, csrf_token, expires, credential)

    async def get_session(self, token_hash: str, *, now: datetime) -> Session | None:
        async with self._tx(write=False) as db:
            row = await _one(
                db,
                "SELECT operator, csrf_token, expires_at, credential FROM sessions"
                " WHERE token_hash = ? AND expires_at > ?",
                (token_hash, rfc3339(now)),
            )
        if row is None:
            return None
        return Session(row["operator"], row["csrf_token"], parse_rfc3339(row["expires_at"]), row["credential"])

    async def delete_session(self, token_hash: str, *, actor: str, now: datetime) -> None:
        async with self._tx(write=True) as db:
            await db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))
            await _audit(db, rfc3339(now), actor, "logout", None, None)

    # ---- audit log ----------------------------------------------------------------------------

    async def audit(
        self, *, actor: str, action: str, now: datetime, target: str | None = None, detail: dict[str, Any] | None = None
    ) -> None:
        async with self._tx(write=True) as db:
            await _audit(db, rfc3339(now), actor, action, target, detail)

    async def audit_many(self, entries: Sequence[tuple[str, str, str, str | None, dict[str, Any] | None]]) -> None:
        """Several audit entries (at, actor, action, target, detail) in one transaction."""
        if not entries:
            return
        async with self._tx(write=True) as db:
            for at, actor, action, target, detail in entries:
                await _audit(db, at, actor, action, target, detail)

    async def audit_entries(self, *, limit: int = 200, before_id: int | None = None) -> list[AuditEntry]:
        """The newest entries first; `before_id` pages back."""
        async with self._tx(write=False) as db:
            rows = await db.execute_fetchall(
                "SELECT * FROM audit_log WHERE id < ? ORDER BY id DESC LIMIT ?",
                (before_id if before_id is not None else 2**63 - 1, limit),
            )
        return [
            AuditEntry(
                id=r["id"],
                at=parse_rfc3339(r["at"]),
                actor=r["actor"],
                action=r["action"],
                target=r["target"],
                detail=json.loads(r["detail"]) if r["detail"] else None,
            )
            for r in rows
        ]


async def _configure(db: aiosqlite.Connection) -> None:
    row = await _one(db, "PRAGMA journal_mode = WAL", ())
    if row is None or str(row[0]).lower() != "wal":
        raise StoreError("SQLite refused WAL mode (is the database on a network file system?)")
    # FULL: a 201 to the gateway promises the alarm is on disk; NORMAL would allow losing the
    # last transactions on power loss in WAL mode.
    await db.execute("PRAGMA synchronous = FULL")
    await db.execute("PRAGMA foreign_keys = ON")
    await db.execute("PRAGMA busy_timeout = 5000")


async def _migrate(db: aiosqlite.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION in a single transaction: all steps or none."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        row = await _one(db, "PRAGMA user_version", ())
        version = 0 if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"database schema version {version} is newer than this command center knows "
                f"({SCHEMA_VERSION}); upgrade the software or restore a matching backup"
            )
        for number in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[number]:
                await db.execute(statement)
            log.info("database schema migrated to version %d", number + 1)
        # PRAGMA takes no bound parameters; the value is our own integer.
        await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        await db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            await db.execute("ROLLBACK")
        raise


async def _one(db: aiosqlite.Connection, sql: str, params: Sequence[Any]) -> aiosqlite.Row | None:
    async with db.execute(sql, params) as cur:
        return await cur.fetchone()


async def _audit(
    db: aiosqlite.Connection, at: str, actor: str, action: str, target: str | None, detail: dict[str, Any] | None
) -> None:
    await db.execute(
        "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
        (at, actor, action, target, json.dumps(detail, ensure_ascii=False) if detail else None),
    )


async def _incidents(db: aiosqlite.Connection, numbers: Sequence[int]) -> list[Incident]:
    if not numbers:
        return []
    rows = await db.execute_fetchall(
        f"{_INCIDENT_SELECT} WHERE i.id IN (SELECT value FROM json_each(?))", (json.dumps(list(numbers)),)
    )
    sources = await _sources_of(db, [r["id"] for r in rows])
    found = {r["id"]: _to_incident(r, sources.get(r["id"], ())) for r in rows}
    return [found[n] for n in numbers if n in found]


async def _incident(db: aiosqlite.Connection, number: int) -> Incident | None:
    row = await _one(db, f"{_INCIDENT_SELECT} WHERE i.id = ?", (number,))
    if row is None:
        return None
    sources = await _sources_of(db, [number])
    return _to_incident(row, sources.get(number, ()))


async def _sources_of(db: aiosqlite.Connection, numbers: Sequence[int]) -> dict[int, tuple[str, ...]]:
    """The devices of each incident in order of first appearance. A separate query rather than
    json_group_array in the incident query: the order of an aggregate's input is not guaranteed
    before SQLite 3.44."""
    if not numbers:
        return {}
    rows = await db.execute_fetchall(
        """SELECT incident_id, device_id FROM incident_sources
           WHERE incident_id IN (SELECT value FROM json_each(?)) ORDER BY id""",
        (json.dumps(list(numbers)),),
    )
    found: dict[int, list[str]] = {}
    for r in rows:
        found.setdefault(r["incident_id"], []).append(r["device_id"])
    return {number: tuple(devices) for number, devices in found.items()}


async def _next_incident_number(db: aiosqlite.Connection) -> int:
    """The number the next incident gets. Intake assigns numbers itself instead of leaving them to
    AUTOINCREMENT, so that a batch can insert all its incidents with one executemany and still know
    their numbers. It runs inside the write transaction, so nobody else takes a number meanwhile, and
    an explicit id advances sqlite_sequence, so numbers are still never reused."""
    row = await _one(
        db,
        """SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'incidents'), 0),
                      COALESCE((SELECT MAX(id) FROM incidents), 0)) + 1""",
        (),
    )
    assert row is not None
    return int(row[0])


def _time(text: str | None) -> datetime | None:
    return None if text is None else parse_rfc3339(text)


def _to_incident(r: aiosqlite.Row, sources: tuple[str, ...]) -> Incident:
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
    )

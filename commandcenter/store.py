"""Durable state of the command center: alarms, incidents, their history, the outboxes (state reports
to the gateway, webhook events), device faults, browser sessions and the audit log.

Two engines, one set of SQL (engine.py): one SQLite file (WAL, synchronous=FULL) through aiosqlite,
the embedded default for one process; or a PostgreSQL database, which several command center
processes share. The schema is versioned (`PRAGMA user_version`, or the table `schema_version`) and
migrated by one runner from one list, schema.MIGRATIONS.

Concurrency between processes (PostgreSQL): write transactions are READ COMMITTED and lock the rows
they change (`SELECT ... FOR UPDATE`): an operator action locks its incident, so two actions on one
incident run one after the other and the second sees the first's result (no lost update; one of two
acknowledges wins, the other is refused as today); intake locks the open incidents that its events
join, so an event cannot join an incident that an operator is closing at that moment. Where two
processes insert the same key at once (an event id, an open incident's `incident_key`), the unique
index makes the second wait and fail; the store then runs its whole transaction again (`_write`),
and the second run sees the first's rows: the event is a repeat, or joins the incident just opened.
Deadlocks and serialization failures are retried the same way. Incident numbers come from the
incidents table's sequence, so two processes never take the same number; a retried or rolled-back
transaction leaves a gap, which is harmless (numbers are references, not a count).

Each write that changes what a console shows also tells the other processes, inside its
transaction (`Change`, PostgreSQL NOTIFY: sent only if the transaction commits); live.Relay
listens.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import psycopg

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
from .engine import Conn, Database, PostgresDatabase, Row, SqliteDatabase, StoreError, is_postgresql_url
from .schema import MIGRATIONS

log = logging.getLogger(__name__)

T = TypeVar("T")


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


# The PostgreSQL channel the processes of one database tell each other about their changes on.
CHANGES_CHANNEL = "siaga_cc_changes"
# PostgreSQL refuses a NOTIFY payload of 8000 bytes or more; a larger change goes out in parts.
_PAYLOAD_MAX = 7800
ChangeKind = Literal["incident", "escalation", "fault"]
# Background loops that a change gives work to: the leader (cluster.Leadership) wakes them at once.
Wake = Literal["callbacks", "webhooks", "escalation"]


@dataclass(frozen=True, slots=True)
class FaultNote:
    """A fault report as the console's `fault` event carries it."""

    device_id: str
    fault: str
    active: bool
    at: datetime


@dataclass(frozen=True, slots=True)
class Change:
    """What a committed write changed, told to the other processes of a shared database (live.Relay).
    It carries ids, not rows: the listener reads the incidents itself, so a payload stays small
    whatever an incident holds; the fault events are small enough to carry whole."""

    origin: str  # Store.origin of the process that made it: that process has published it already
    kind: ChangeKind
    incidents: tuple[int, ...] = ()
    faults: tuple[FaultNote, ...] = ()
    wake: tuple[Wake, ...] = ()

    def payloads(self) -> Iterator[str]:
        """The change as NOTIFY payloads under PostgreSQL's size limit: split in halves until each
        part fits."""
        body = {"o": self.origin, "k": self.kind, "w": list(self.wake), "i": list(self.incidents),
                "f": [[f.device_id, f.fault, f.active, rfc3339(f.at)] for f in self.faults]}
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        parts = len(self.incidents) + len(self.faults)
        if len(text.encode()) <= _PAYLOAD_MAX or parts <= 1:
            yield text
            return
        half_i, half_f = len(self.incidents) // 2, len(self.faults) // 2
        for part in (
            Change(self.origin, self.kind, self.incidents[:half_i], self.faults[:half_f], self.wake),
            Change(self.origin, self.kind, self.incidents[half_i:], self.faults[half_f:], self.wake),
        ):
            if part.incidents or part.faults:
                yield from part.payloads()

    @classmethod
    def decode(cls, payload: str) -> Change:
        """Raises ValueError (or KeyError, TypeError) for a payload that is not a change."""
        body = json.loads(payload)
        kind = body["k"]
        if kind not in ("incident", "escalation", "fault"):
            raise ValueError(f"unknown change kind {kind!r}")
        wake = tuple(w for w in body.get("w", ()) if w in ("callbacks", "webhooks", "escalation"))
        return cls(
            origin=str(body["o"]),
            kind=kind,
            incidents=tuple(int(n) for n in body.get("i", ())),
            faults=tuple(FaultNote(str(d), str(f), bool(a), parse_rfc3339(at)) for d, f, a, at in body.get("f", ())),
            wake=wake,
        )


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


class Store:
    """All database access. Use `await Store.open(path or postgresql:// URL)` and `await store.close()`."""

    # A write transaction that lost a race with another process runs again, up to this many times in all.
    WRITE_ATTEMPTS = 8

    def __init__(self, db: Database) -> None:
        self._db = db
        # Names this process's changes, so that its own notifications are not delivered twice.
        self.origin = secrets.token_hex(8)

    @classmethod
    async def open(cls, target: str | Path, *, password: str | None = None, pool_size: int = 10) -> Store:
        """`target`: a SQLite file, or a `postgresql://` URL (then `password`, if the server wants one,
        and at most `pool_size` connections besides the two dedicated ones of live.Relay and
        cluster.Leadership)."""
        db: Database
        if is_postgresql_url(target):
            db = await PostgresDatabase.open(str(target), password=password, pool_size=pool_size)
        else:
            db = await SqliteDatabase.open(Path(target))
        try:
            await _migrate(db)
        except BaseException:
            await db.close()
            raise
        return cls(db)

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

    # ---- device faults ------------------------------------------------------------------------

    async def record_fault(self, fault: NewFault, *, now: datetime) -> FaultOutcome:
        """Store a fault report once and update the device's current state of that fault. A fault
        never opens an incident (protocol §7): it is a matter for supervisors, not dispatchers."""
        return (await self.record_faults([fault], now=now))[0]

    async def record_faults(self, faults: Sequence[NewFault], *, now: datetime) -> list[FaultOutcome]:
        """record_fault for many reports, in one transaction (a gateway's batch)."""

        async def work(db: Conn) -> list[FaultOutcome]:
            outcomes = [await self._record_fault(db, fault, now) for fault in faults]
            notes = tuple(
                FaultNote(f.device_id, f.fault, f.active, f.at)
                for f, o in zip(faults, outcomes, strict=True)
                if o.created
            )
            if notes:
                await self._announce(db, Change(self.origin, "fault", faults=notes))
            return outcomes

        return await self._write(work)

    async def _record_fault(self, db: Conn, fault: NewFault, now: datetime) -> FaultOutcome:
        row = await db.fetchone("SELECT fingerprint FROM device_faults WHERE event_id = ?", (fault.event_id,))
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
            rows = await db.fetchall(
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
        report exists if and only if the change does). The incident's row is locked first, so an
        action in another process waits and then judges the state this one left."""

        async def work(db: Conn) -> Incident:
            incident = await _locked_incident(db, number)
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
            events = await db.fetchall(
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
            await self._announce(db, Change(self.origin, "incident", incidents=(number,), wake=("callbacks",)))
            return updated

        return await self._write(work)

    async def add_note(self, number: int, note: str, *, actor: str, now: datetime) -> Incident:
        """Record an operator's note in the incident's history; the state stays as it is."""

        async def work(db: Conn) -> Incident:
            incident = await _locked_incident(db, number)
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
            await self._announce(db, Change(self.origin, "incident", incidents=(number,)))
            return updated

        return await self._write(work)

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
            rows = await db.fetchall(
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
            rows = await db.fetchall(sql, (*params, limit))
            sources = await _sources_of(db, [r["id"] for r in rows])
        return [_to_incident(r, sources.get(r["id"], ())) for r in rows]

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

    # ---- outboxes: state reports to the gateway, webhook events ------------------------------
    # Sent by one process at a time (cluster.Leadership), so a row is not claimed here: with several
    # processes, only the leader's sender reads and marks them.

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
            row = await db.fetchone(f"SELECT COUNT(*) AS n FROM {outbox.table} WHERE delivered_at IS NULL")
        return 0 if row is None else row["n"]

    async def pending_callbacks(self) -> int:
        return await self.pending(CALLBACK_OUTBOX)

    # ---- browser sessions ---------------------------------------------------------------------

    async def create_session(
        self, token_hash: str, *, operator: str, csrf_token: str, credential: str, now: datetime, ttl: timedelta
    ) -> Session:
        expires = now + ttl

        async def work(db: Conn) -> None:
            # Expired sessions are dropped here, so the table stays as small as the active staff.
            await db.execute("DELETE FROM sessions WHERE expires_at <= ?", (rfc3339(now),))
            await db.execute(
                """INSERT INTO sessions (token_hash, operator, csrf_token, created_at, expires_at, credential)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                (token_hash, operator, csrf_token, rfc3339(now), rfc3339(expires), credential),
            )
            await _audit(db, rfc3339(now), operator, "login", None, None)

        await self._write(work)
        return Session(operator, csrf_token, expires, credential)

    async def get_session(self, token_hash: str, *, now: datetime) -> Session | None:
        async with self._tx(write=False) as db:
            row = await db.fetchone(
                "SELECT operator, csrf_token, expires_at, credential FROM sessions"
                " WHERE token_hash = ? AND expires_at > ?",
                (token_hash, rfc3339(now)),
            )
        if row is None:
            return None
        return Session(row["operator"], row["csrf_token"], parse_rfc3339(row["expires_at"]), row["credential"])

    async def delete_session(self, token_hash: str, *, actor: str, now: datetime) -> None:
        async def work(db: Conn) -> None:
            await db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))
            await _audit(db, rfc3339(now), actor, "logout", None, None)

        await self._write(work)

    # ---- audit log ----------------------------------------------------------------------------

    async def audit(
        self, *, actor: str, action: str, now: datetime, target: str | None = None, detail: dict[str, Any] | None = None
    ) -> None:
        async def work(db: Conn) -> None:
            await _audit(db, rfc3339(now), actor, action, target, detail)

        await self._write(work)

    async def audit_many(self, entries: Sequence[tuple[str, str, str, str | None, dict[str, Any] | None]]) -> None:
        """Several audit entries (at, actor, action, target, detail) in one transaction."""
        if not entries:
            return

        async def work(db: Conn) -> None:
            for at, actor, action, target, detail in entries:
                await _audit(db, at, actor, action, target, detail)

        await self._write(work)

    async def audit_entries(self, *, limit: int = 200, before_id: int | None = None) -> list[AuditEntry]:
        """The newest entries first; `before_id` pages back."""
        async with self._tx(write=False) as db:
            rows = await db.fetchall(
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


async def _migrate(db: Database) -> None:
    """Bring the schema to SCHEMA_VERSION in a single transaction: all steps or none. The one runner
    for both engines; `db` supplies the lock, where the version lives, and the DDL's dialect."""
    async with db.transaction(write=True) as conn:
        await db.lock_schema(conn)
        version = await db.schema_version(conn)
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"database schema version {version} is newer than this command center knows "
                f"({SCHEMA_VERSION}); upgrade the software or restore a matching backup"
            )
        for number in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[number]:
                await conn.execute(db.ddl(statement))
            log.info("database schema migrated to version %d", number + 1)
        if version != SCHEMA_VERSION:
            await db.set_schema_version(conn, SCHEMA_VERSION)


async def _audit(
    db: Conn, at: str, actor: str, action: str, target: str | None, detail: dict[str, Any] | None
) -> None:
    await db.execute(
        "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
        (at, actor, action, target, json.dumps(detail, ensure_ascii=False) if detail else None),
    )


async def _incidents(db: Conn, numbers: Sequence[int]) -> list[Incident]:
    if not numbers:
        return []
    rows = await db.fetchall(f"{_INCIDENT_SELECT} WHERE i.id IN ({db.members('bigint')})", (db.array(numbers),))
    sources = await _sources_of(db, [r["id"] for r in rows])
    found = {r["id"]: _to_incident(r, sources.get(r["id"], ())) for r in rows}
    return [found[n] for n in numbers if n in found]


async def _incident(db: Conn, number: int) -> Incident | None:
    row = await db.fetchone(f"{_INCIDENT_SELECT} WHERE i.id = ?", (number,))
    if row is None:
        return None
    sources = await _sources_of(db, [number])
    return _to_incident(row, sources.get(number, ()))


async def _locked_incident(db: Conn, number: int) -> Incident | None:
    """The incident, its row locked until the transaction ends (PostgreSQL; SQLite's write
    transaction already excludes every other writer). Read after the lock is granted, so it is the
    state the previous holder committed."""
    if db.shared:
        await db.fetchone(f"SELECT id FROM incidents WHERE id = ?{db.lock()}", (number,))
    return await _incident(db, number)


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


def _time(text: str | None) -> datetime | None:
    return None if text is None else parse_rfc3339(text)


def _to_incident(r: Row, sources: tuple[str, ...]) -> Incident:
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

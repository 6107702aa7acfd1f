"""Durable state of the command center: alarms, incidents, their history, and the callback outbox.

One SQLite file (WAL, synchronous=FULL) accessed through aiosqlite. The schema is versioned with
`PRAGMA user_version`; see MIGRATIONS.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite

from .domain import (
    Action,
    IncidentState,
    callback_body,
    can_apply,
    incident_ref,
    parse_rfc3339,
    rfc3339,
)

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


# Each entry is one schema version: a tuple of single statements (not a script, because
# sqlite3's executescript() commits first, which would break the one-transaction guarantee).
# Never edit a released entry; append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # AUTOINCREMENT: incident ids are public references and must never be reused.
        """CREATE TABLE incidents (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            state           TEXT NOT NULL CHECK (state IN
                                ('new', 'acknowledged', 'dispatched', 'resolved', 'false_alarm')),
            device_id       TEXT NOT NULL,
            kind            TEXT NOT NULL,
            test            INTEGER NOT NULL CHECK (test IN (0, 1)),
            lat             REAL NOT NULL,
            lon             REAL NOT NULL,
            address         TEXT NOT NULL,
            area            TEXT NOT NULL,
            created_at      TEXT NOT NULL,
            updated_at      TEXT NOT NULL,
            acknowledged_at TEXT,
            acknowledged_by TEXT,
            dispatched_at   TEXT,
            dispatched_by   TEXT,
            agency          TEXT,
            closed_at       TEXT,
            closed_by       TEXT
        )""",
        "CREATE INDEX incidents_by_state ON incidents (state, id)",
        # One row per alarm event from a gateway. event_id is the idempotency key; incident_id is
        # the event -> incident mapping, kept per event so that incidents can later be merged.
        """CREATE TABLE alarms (
            id          INTEGER PRIMARY KEY,
            event_id    TEXT NOT NULL UNIQUE,
            gateway_id  TEXT NOT NULL,
            device_id   TEXT NOT NULL,
            seq         INTEGER NOT NULL,
            kind        TEXT NOT NULL,
            test        INTEGER NOT NULL CHECK (test IN (0, 1)),
            lat         REAL NOT NULL,
            lon         REAL NOT NULL,
            address     TEXT NOT NULL,
            area        TEXT NOT NULL,
            raised_at   TEXT,
            received_at TEXT NOT NULL,
            intake_at   TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            incident_id INTEGER NOT NULL REFERENCES incidents (id)
        )""",
        "CREATE INDEX alarms_by_incident ON alarms (incident_id, id)",
        "CREATE INDEX alarms_by_device ON alarms (device_id, seq)",
        # Audit trail: every state change, including creation (from_state NULL).
        """CREATE TABLE incident_history (
            id          INTEGER PRIMARY KEY,
            incident_id INTEGER NOT NULL REFERENCES incidents (id),
            at          TEXT NOT NULL,
            actor       TEXT NOT NULL,
            from_state  TEXT,
            to_state    TEXT NOT NULL,
            detail      TEXT
        )""",
        "CREATE INDEX incident_history_by_incident ON incident_history (incident_id, id)",
        # State reports waiting for (or already given to) the gateway. next_attempt_at is Unix time
        # in seconds: it is scheduling state, compared with the clock, not a record for people.
        """CREATE TABLE callback_outbox (
            id              INTEGER PRIMARY KEY,
            event_id        TEXT NOT NULL REFERENCES alarms (event_id),
            gateway_id      TEXT NOT NULL,
            state           TEXT NOT NULL,
            body            TEXT NOT NULL,
            created_at      TEXT NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_attempt_at TEXT,
            last_error      TEXT,
            delivered_at    TEXT
        )""",
        "CREATE INDEX callback_outbox_pending ON callback_outbox (event_id, id) WHERE delivered_at IS NULL",
        "CREATE INDEX callback_outbox_due ON callback_outbox (next_attempt_at) WHERE delivered_at IS NULL",
    ),
)

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


@dataclass(frozen=True, slots=True)
class IntakeOutcome:
    created: bool
    event_id: str
    incident: int
    same_body: bool  # False: the key was seen before with a different body


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


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    at: datetime
    actor: str
    from_state: IncidentState | None
    to_state: IncidentState
    detail: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    event_id: str
    gateway_id: str
    body: str
    attempts: int


# Columns written by each action besides `state`.
_ACTION_COLUMNS: dict[Action, tuple[str, str]] = {
    Action.ACKNOWLEDGE: ("acknowledged_at", "acknowledged_by"),
    Action.DISPATCH: ("dispatched_at", "dispatched_by"),
    Action.RESOLVE: ("closed_at", "closed_by"),
    Action.FALSE_ALARM: ("closed_at", "closed_by"),
}

_INCIDENT_SELECT = """
    SELECT i.*, (SELECT COUNT(*) FROM alarms a WHERE a.incident_id = i.id) AS event_count
    FROM incidents i
"""

# The oldest undelivered report of each event: reports of one event go out in order, so that a
# late "acknowledged" cannot arrive after "resolved"; different events do not wait for each other.
_HEAD_OF_EVENT = """
    o.delivered_at IS NULL AND NOT EXISTS (
        SELECT 1 FROM callback_outbox p
        WHERE p.event_id = o.event_id AND p.delivered_at IS NULL AND p.id < o.id)
"""


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
        async with self._tx(write=True) as db:
            row = await _one(db, "SELECT incident_id, fingerprint FROM alarms WHERE event_id = ?", (alarm.event_id,))
            if row is not None:
                return IntakeOutcome(
                    created=False,
                    event_id=alarm.event_id,
                    incident=row["incident_id"],
                    same_body=row["fingerprint"] == alarm.fingerprint,
                )
            number = await self._incident_for(db, alarm, now)
            await db.execute(
                """INSERT INTO alarms (event_id, gateway_id, device_id, seq, kind, test, lat, lon,
                       address, area, raised_at, received_at, intake_at, fingerprint, incident_id)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
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
                    rfc3339(now),
                    alarm.fingerprint,
                    number,
                ),
            )
            return IntakeOutcome(created=True, event_id=alarm.event_id, incident=number, same_body=True)

    async def _incident_for(self, db: aiosqlite.Connection, alarm: NewAlarm, now: datetime) -> int:
        """The incident a new alarm belongs to. For now each alarm opens its own incident; this is
        where grouping repeated presses of one button (DESIGN.md, incident layer) will go."""
        at = rfc3339(now)
        cur = await db.execute(
            """INSERT INTO incidents (state, device_id, kind, test, lat, lon, address, area,
                   created_at, updated_at)
               VALUES ('new', ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                alarm.device_id,
                alarm.kind,
                int(alarm.test),
                alarm.lat,
                alarm.lon,
                alarm.address,
                alarm.area,
                at,
                at,
            ),
        )
        number = cur.lastrowid
        assert number is not None
        await db.execute(
            """INSERT INTO incident_history (incident_id, at, actor, from_state, to_state, detail)
               VALUES (?, ?, ?, NULL, 'new', ?)""",
            (number, at, f"gateway:{alarm.gateway_id}", json.dumps({"event_id": alarm.event_id})),
        )
        return number

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
            await db.execute(
                """INSERT INTO incident_history (incident_id, at, actor, from_state, to_state, detail)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                (
                    number,
                    at,
                    actor,
                    incident.state.value,
                    action.target.value,
                    json.dumps(detail, ensure_ascii=False) if detail else None,
                ),
            )
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

    async def get_incident(self, number: int) -> Incident | None:
        async with self._tx(write=False) as db:
            return await _incident(db, number)

    async def list_incidents(
        self, *, states: Sequence[IncidentState] | None = None, limit: int = 100
    ) -> list[Incident]:
        """Unacknowledged first, then the other open ones, then closed ones; newest first in each."""
        where, params = "", []
        if states:
            where = f"WHERE i.state IN ({', '.join('?' for _ in states)})"
            params = [s.value for s in states]
        sql = f"""{_INCIDENT_SELECT} {where}
            ORDER BY CASE i.state WHEN 'new' THEN 0
                                  WHEN 'acknowledged' THEN 1 WHEN 'dispatched' THEN 1
                                  ELSE 2 END,
                     i.id DESC
            LIMIT ?"""
        async with self._tx(write=False) as db:
            rows = await db.execute_fetchall(sql, (*params, limit))
        return [_to_incident(r) for r in rows]

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
            )
            for r in rows
        ]

    # ---- callback outbox ----------------------------------------------------------------------

    async def due_callbacks(self, now: float, limit: int) -> list[OutboxRow]:
        """Reports whose time has come, at most one per event (the oldest undelivered one)."""
        async with self._tx(write=False) as db:
            rows = await db.execute_fetchall(
                f"""SELECT o.id, o.event_id, o.gateway_id, o.body, o.attempts FROM callback_outbox o
                    WHERE {_HEAD_OF_EVENT} AND o.next_attempt_at <= ?
                    ORDER BY o.next_attempt_at, o.id LIMIT ?""",
                (now, limit),
            )
        return [OutboxRow(r["id"], r["event_id"], r["gateway_id"], r["body"], r["attempts"]) for r in rows]

    async def next_callback_due(self) -> float | None:
        """When the next report may be sent (Unix time), or None when none is waiting."""
        async with self._tx(write=False) as db:
            row = await _one(
                db, f"SELECT MIN(o.next_attempt_at) AS t FROM callback_outbox o WHERE {_HEAD_OF_EVENT}", ()
            )
        return None if row is None else row["t"]

    async def mark_delivered(self, row_id: int, *, now: datetime) -> None:
        async with self._tx(write=True) as db:
            await db.execute(
                """UPDATE callback_outbox SET attempts = attempts + 1, last_attempt_at = ?,
                       delivered_at = ?, last_error = NULL
                   WHERE id = ?""",
                (rfc3339(now), rfc3339(now), row_id),
            )

    async def mark_failed(self, row_id: int, *, now: datetime, next_attempt_at: float, error: str) -> None:
        async with self._tx(write=True) as db:
            await db.execute(
                """UPDATE callback_outbox SET attempts = attempts + 1, last_attempt_at = ?,
                       next_attempt_at = ?, last_error = ?
                   WHERE id = ?""",
                (rfc3339(now), next_attempt_at, error[:500], row_id),
            )

    async def pending_callbacks(self) -> int:
        async with self._tx(write=False) as db:
            row = await _one(db, "SELECT COUNT(*) AS n FROM callback_outbox WHERE delivered_at IS NULL", ())
        return 0 if row is None else row["n"]


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


async def _incident(db: aiosqlite.Connection, number: int) -> Incident | None:
    row = await _one(db, f"{_INCIDENT_SELECT} WHERE i.id = ?", (number,))
    return None if row is None else _to_incident(row)


def _time(text: str | None) -> datetime | None:
    return None if text is None else parse_rfc3339(text)


def _to_incident(r: aiosqlite.Row) -> Incident:
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
    )

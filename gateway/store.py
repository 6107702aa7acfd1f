"""The gateway's durable store: device registry, alarm inbox, forwarding outbox, audit log.

`Store` is the interface; `SQLiteStore` the default implementation (aiosqlite, WAL). Every rule of
uniqueness lives in the schema — (device, seq) for alarms, the event id for forwards — so that a
PostgreSQL implementation sharing the alarm stream across gateway instances keeps them too.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiosqlite

from .codec import Alarm, DeviceKey, Reject, Status
from .replay import ReplayWindow

log = logging.getLogger(__name__)


class StoreError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    created_ms: int
    revoked_ms: int | None
    lat_e6: int | None
    lon_e6: int | None
    address: str
    area: str
    last_seen_ms: int | None
    battery_mv: int | None
    firmware: str | None
    # The secret is deliberately not a field: a Device can be logged, listed and serialised.


@dataclass(frozen=True, slots=True)
class StoredAlarm:
    id: int
    device_id: str
    seq: int
    state: str
    incident_id: str | None
    changed: bool  # this call stored it (intake) or moved its state forward (set_state)


@dataclass(frozen=True, slots=True)
class Forward:
    """An alarm waiting in the outbox to be forwarded to the command center."""

    alarm_id: int
    event_id: str
    attempts: int
    device_id: str
    seq: int
    kind: str
    test: bool
    lat_e6: int
    lon_e6: int
    address: str
    area: str
    raised_ts: int | None
    received_ms: int


@dataclass(slots=True)
class Batch:
    """Everything one group commit writes. The MQTT acks wait until it is committed."""

    alarms: list[tuple[Alarm, int]] = field(default_factory=list)        # (alarm, received ms)
    statuses: list[tuple[Status, int]] = field(default_factory=list)
    offline: list[tuple[str, int]] = field(default_factory=list)         # (device, ms) from wills
    windows: dict[str, ReplayWindow] = field(default_factory=dict)
    rejects: list[tuple[Reject, int]] = field(default_factory=list)


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def add_device(self, device_id: str, secret: bytes, *, now_ms: int, lat_e6: int | None = None,
                         lon_e6: int | None = None, address: str = "", area: str = "") -> None: ...
    async def revoke_device(self, device_id: str, now_ms: int) -> bool: ...
    async def device_keys(self) -> dict[str, DeviceKey]: ...
    async def devices(self) -> list[Device]: ...
    async def windows(self) -> dict[str, ReplayWindow]: ...
    async def alarm_exists(self, device_id: str, seq: int) -> bool: ...
    async def commit(self, batch: Batch, gateway_id: str) -> list[StoredAlarm]: ...
    async def due_forwards(self, now_ms: int, limit: int) -> list[Forward]: ...
    async def forwarded(self, alarm_id: int, incident_id: str | None, now_ms: int) -> None: ...
    async def forward_failed(self, alarm_id: int, next_ms: int, error: str) -> None: ...
    async def set_state(self, device_id: str, seq: int, state: str, rank: int, incident_id: str | None,
                        by: str | None, at_ms: int) -> StoredAlarm | None: ...
    async def latest_alarms(self) -> dict[str, int]: ...
    async def audit(self, limit: int) -> list[dict[str, object]]: ...
    async def outbox_depth(self) -> int: ...


MIGRATIONS: Sequence[str] = (
    # 1: the walking skeleton's schema.
    """
    CREATE TABLE devices (
        id            TEXT PRIMARY KEY,
        secret_hex    TEXT NOT NULL CHECK (length(secret_hex) = 64),
        created_ms    INTEGER NOT NULL,
        revoked_ms    INTEGER,
        lat_e6        INTEGER,
        lon_e6        INTEGER,
        address       TEXT NOT NULL DEFAULT '',
        area          TEXT NOT NULL DEFAULT '',
        high_seq      INTEGER NOT NULL DEFAULT -1,
        seq_window    TEXT NOT NULL DEFAULT '0',   -- 64-bit bitmap in hex (SQLite integers are signed)
        last_seen_ms  INTEGER,
        battery_mv    INTEGER,
        rssi          INTEGER,
        firmware      TEXT,
        tamper        INTEGER
    );
    CREATE TABLE alarms (
        id            INTEGER PRIMARY KEY,
        device_id     TEXT NOT NULL REFERENCES devices(id),
        seq           INTEGER NOT NULL,
        kind          TEXT NOT NULL,
        test          INTEGER NOT NULL,
        lat_e6        INTEGER NOT NULL,
        lon_e6        INTEGER NOT NULL,
        address       TEXT NOT NULL,
        area          TEXT NOT NULL,
        raised_ts     INTEGER,
        uptime_ms     INTEGER NOT NULL,
        received_ms   INTEGER NOT NULL,
        body          BLOB NOT NULL,               -- the exact signed bytes, for evidence
        state         TEXT NOT NULL DEFAULT 'received',
        state_rank    INTEGER NOT NULL DEFAULT 0,
        state_ms      INTEGER,
        incident_id   TEXT,
        forwarded_ms  INTEGER,
        UNIQUE (device_id, seq)
    );
    CREATE TABLE outbox (
        alarm_id        INTEGER PRIMARY KEY REFERENCES alarms(id),
        device_id       TEXT NOT NULL,
        event_id        TEXT NOT NULL UNIQUE,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL,
        last_error      TEXT
    );
    CREATE INDEX outbox_due ON outbox (next_attempt_ms, alarm_id);
    CREATE INDEX outbox_device ON outbox (device_id, alarm_id);
    CREATE TABLE state_log (
        id          INTEGER PRIMARY KEY,
        alarm_id    INTEGER NOT NULL REFERENCES alarms(id),
        state       TEXT NOT NULL,
        incident_id TEXT,
        by          TEXT,
        at_ms       INTEGER NOT NULL
    );
    CREATE TABLE audit (
        id        INTEGER PRIMARY KEY,
        at_ms     INTEGER NOT NULL,
        device_id TEXT,
        topic     TEXT NOT NULL,
        reason    TEXT NOT NULL,
        detail    TEXT NOT NULL
    );
    """,
)


class SQLiteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(self.path, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the MQTT ack goes out, even across a power cut
            # (NORMAL in WAL mode may lose the last transactions on power loss, though not on a crash).
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=5000")
            await self._migrate(db)
        except BaseException:
            await db.close()
            raise
        self._db = db

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        (version,) = await (await db.execute("PRAGMA user_version")).fetchone()  # type: ignore[misc]
        if version > len(MIGRATIONS):
            raise StoreError(f"database {self.path} has schema {version}, newer than this gateway "
                             f"knows ({len(MIGRATIONS)}): upgrade the gateway, do not downgrade")
        for number in range(version + 1, len(MIGRATIONS) + 1):
            # executescript would commit on its own; run each statement inside one transaction.
            await db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[number - 1].split(";"):
                    if statement.strip():
                        await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {number}")
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            log.info("store %s migrated to schema %d", self.path, number)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    # ------------------------------------------------------------ registry

    async def add_device(self, device_id: str, secret: bytes, *, now_ms: int, lat_e6: int | None = None,
                         lon_e6: int | None = None, address: str = "", area: str = "") -> None:
        try:
            await self.db.execute(
                "INSERT INTO devices (id, secret_hex, created_ms, lat_e6, lon_e6, address, area) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (device_id, secret.hex(), now_ms, lat_e6, lon_e6, address, area))
        except sqlite3.IntegrityError:
            raise StoreError(f"device {device_id} is already registered") from None

    async def revoke_device(self, device_id: str, now_ms: int) -> bool:
        cur = await self.db.execute(
            "UPDATE devices SET revoked_ms = ? WHERE id = ? AND revoked_ms IS NULL", (now_ms, device_id))
        return cur.rowcount == 1

    async def device_keys(self) -> dict[str, DeviceKey]:
        rows = await self.db.execute_fetchall("SELECT id, secret_hex, revoked_ms FROM devices")
        return {r["id"]: DeviceKey(bytes.fromhex(r["secret_hex"]), r["revoked_ms"] is not None) for r in rows}

    async def devices(self) -> list[Device]:
        rows = await self.db.execute_fetchall(
            "SELECT id, created_ms, revoked_ms, lat_e6, lon_e6, address, area, last_seen_ms, battery_mv, "
            "firmware FROM devices ORDER BY id")
        return [Device(**dict(r)) for r in rows]

    async def windows(self) -> dict[str, ReplayWindow]:
        rows = await self.db.execute_fetchall("SELECT id, high_seq, seq_window FROM devices")
        return {r["id"]: ReplayWindow(r["high_seq"], int(r["seq_window"], 16)) for r in rows}

    async def alarm_exists(self, device_id: str, seq: int) -> bool:
        rows = await self.db.execute_fetchall(
            "SELECT 1 FROM alarms WHERE device_id = ? AND seq = ?", (device_id, seq))
        return bool(rows)

    async def latest_alarms(self) -> dict[str, int]:
        """The newest alarm's sequence number per device (its ack is the retained one)."""
        rows = await self.db.execute_fetchall("SELECT device_id, max(seq) AS s FROM alarms GROUP BY device_id")
        return {r["device_id"]: r["s"] for r in rows}

    # ------------------------------------------------------------ intake

    async def commit(self, batch: Batch, gateway_id: str) -> list[StoredAlarm]:
        """Write one batch in one transaction; return the stored state of every alarm in it."""
        db = self.db
        out: list[StoredAlarm] = []
        await db.execute("BEGIN IMMEDIATE")
        try:
            for alarm, received_ms in batch.alarms:
                loc = alarm.location
                cur = await db.execute(
                    "INSERT INTO alarms (device_id, seq, kind, test, lat_e6, lon_e6, address, area, raised_ts, "
                    "uptime_ms, received_ms, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (device_id, seq) DO NOTHING",
                    (alarm.device_id, alarm.seq, alarm.kind, int(alarm.test), loc.lat_e6, loc.lon_e6,
                     loc.address, loc.area, alarm.raised_ts, alarm.uptime_ms, received_ms, alarm.body))
                if cur.rowcount == 1:
                    alarm_id = cur.lastrowid
                    assert alarm_id is not None
                    await db.execute(
                        "INSERT INTO outbox (alarm_id, device_id, event_id, next_attempt_ms) VALUES (?, ?, ?, ?)",
                        (alarm_id, alarm.device_id, f"{gateway_id}:{alarm.device_id}:{alarm.seq}", received_ms))
                    out.append(StoredAlarm(alarm_id, alarm.device_id, alarm.seq, "received", None, True))
                else:
                    row = await (await db.execute(
                        "SELECT id, state, incident_id FROM alarms WHERE device_id = ? AND seq = ?",
                        (alarm.device_id, alarm.seq))).fetchone()
                    assert row is not None
                    out.append(StoredAlarm(row["id"], alarm.device_id, alarm.seq, row["state"],
                                           row["incident_id"], False))
                await db.execute("UPDATE devices SET last_seen_ms = ? WHERE id = ?", (received_ms, alarm.device_id))
            for status, received_ms in batch.statuses:
                await db.execute(
                    "UPDATE devices SET last_seen_ms = ?, battery_mv = ?, rssi = ?, firmware = ?, tamper = ? "
                    "WHERE id = ?",
                    (received_ms, status.battery_mv, status.rssi, status.firmware, int(status.tamper),
                     status.device_id))
            await self._write_windows(batch.windows)
            await self._write_rejects(batch.rejects)
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        return out

    async def _write_windows(self, windows: dict[str, ReplayWindow]) -> None:
        await self.db.executemany(
            "UPDATE devices SET high_seq = ?, seq_window = ? WHERE id = ?",
            [(w.high, format(w.bits, "x"), dev) for dev, w in windows.items()])

    async def _write_rejects(self, rejects: Iterable[tuple[Reject, int]]) -> None:
        await self.db.executemany(
            "INSERT INTO audit (at_ms, device_id, topic, reason, detail) VALUES (?, ?, ?, ?, ?)",
            [(at, r.device_id, r.topic, r.reason.value, r.detail) for r, at in rejects])

    # ------------------------------------------------------------ forwarding

    async def due_forwards(self, now_ms: int, limit: int) -> list[Forward]:
        """Due rows, oldest first, skipping any device whose earlier alarm is still waiting to be
        retried: a device's alarms reach the command center in the order they were stored."""
        rows = await self.db.execute_fetchall(
            "SELECT o.alarm_id, o.event_id, o.attempts, a.device_id, a.seq, a.kind, a.test, a.lat_e6, "
            "a.lon_e6, a.address, a.area, a.raised_ts, a.received_ms FROM outbox o JOIN alarms a "
            "ON a.id = o.alarm_id WHERE o.next_attempt_ms <= ? AND NOT EXISTS (SELECT 1 FROM outbox w "
            "WHERE w.device_id = o.device_id AND w.alarm_id < o.alarm_id AND w.next_attempt_ms > ?) "
            "ORDER BY o.alarm_id LIMIT ?", (now_ms, now_ms, limit))
        return [Forward(**{**dict(r), "test": bool(r["test"])}) for r in rows]

    async def forwarded(self, alarm_id: int, incident_id: str | None, now_ms: int) -> None:
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute("DELETE FROM outbox WHERE alarm_id = ?", (alarm_id,))
            await db.execute("UPDATE alarms SET forwarded_ms = ?, incident_id = coalesce(incident_id, ?) "
                             "WHERE id = ?", (now_ms, incident_id, alarm_id))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    async def forward_failed(self, alarm_id: int, next_ms: int, error: str) -> None:
        await self.db.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ?, last_error = ? WHERE alarm_id = ?",
            (next_ms, error[:300], alarm_id))

    async def outbox_depth(self) -> int:
        rows = await self.db.execute_fetchall("SELECT count(*) AS n FROM outbox")
        return int(rows[0]["n"])

    # ------------------------------------------------------------ state from the command center

    async def set_state(self, device_id: str, seq: int, state: str, rank: int, incident_id: str | None,
                        by: str | None, at_ms: int) -> StoredAlarm | None:
        """Record a command-center state; states only move forward. None if the alarm is unknown."""
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            row = await (await db.execute(
                "SELECT id, state, state_rank, incident_id FROM alarms WHERE device_id = ? AND seq = ?",
                (device_id, seq))).fetchone()
            if row is None:
                await db.execute("ROLLBACK")
                return None
            changed = rank > row["state_rank"]
            if changed:
                await db.execute(
                    "UPDATE alarms SET state = ?, state_rank = ?, state_ms = ?, "
                    "incident_id = coalesce(?, incident_id) WHERE id = ?",
                    (state, rank, at_ms, incident_id, row["id"]))
                await db.execute(
                    "INSERT INTO state_log (alarm_id, state, incident_id, by, at_ms) VALUES (?, ?, ?, ?, ?)",
                    (row["id"], state, incident_id, by, at_ms))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        return StoredAlarm(row["id"], device_id, seq, state if changed else row["state"],
                           incident_id or row["incident_id"], changed)

    async def audit(self, limit: int) -> list[dict[str, object]]:
        rows = await self.db.execute_fetchall(
            "SELECT at_ms, device_id, topic, reason, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]

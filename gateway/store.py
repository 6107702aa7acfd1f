"""The gateway's durable store: device registry, alarm inbox, forwarding outbox, faults, audit log.

`Store` is the interface. `SQLStore` holds the logic once, as functions of a database connection,
for both engines: `SQLiteStore` (the embedded default: one file, one gateway) and `PostgresStore`
(gateway/store_pg.py: several gateway instances sharing one database). `open_store` picks one from
the configured `db`. One list of migrations and one migration runner serve both engines; the few
differences of SQL dialect are translated in one place (`pg_sql`, `pg_ddl`).

Every uniqueness rule lives in the schema — (device, seq) for alarms, the event id for forwards —
and everything several instances must agree on is decided inside the intake transaction: whether
an alarm is new, which incident group it joins (under a lock per site), whether a fault starts or
clears (against the table of active faults). So any instance may take any message.

SQLiteStore runs each operation as one function on a single database thread, so a group commit of
hundreds of alarms costs one thread hop instead of one per statement (what per-statement async
wrappers such as aiosqlite cost). The connection is used by that thread only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import itertools
import json
import logging
import queue
import re
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from .codec import Alarm, OtaStatus, Reject, Status, redact_config
from .config import Person, Role, is_postgres
from .grouping import Group, extend
from .replay import ReplayWindow
from .supervision import Fault, FaultChange

log = logging.getLogger(__name__)

T = TypeVar("T")


class StoreError(Exception):
    pass


def _database_down() -> tuple[type[Exception], ...]:
    errors: list[type[Exception]] = [sqlite3.OperationalError]
    try:
        import psycopg
    except ImportError:  # a SQLite-only installation
        pass
    else:
        errors.append(psycopg.OperationalError)
    return tuple(errors)


# The database or its disk failed, not a message: the gateway stops with the messages unacknowledged,
# is restarted by its supervisor (systemd), and the broker delivers them again.
DATABASE_DOWN = _database_down()


# Who a registry change is recorded for when code in the gateway's own process makes it (the demo
# stack, tests) rather than a person through the admin API. The brackets keep it apart from every
# configured name (config.PERSON_NAME).
IN_PROCESS = Person("(in-process)", Role.ADMIN)

# What the fleet change log records (docs/gateway.md, "Who changed the fleet").
FleetAction = Literal["register", "revoke", "rotate-key", "update", "decommission", "requeue", "configure",
                      "firmware-upload", "rollout-start", "rollout-widen", "rollout-resume", "rollout-cancel"]


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A registry entry as the service holds it in memory. Never serialised: it has the secret."""

    id: str
    secret: bytes = field(repr=False)
    revoked: bool
    site: str | None
    lat_e6: int | None
    lon_e6: int | None
    address: str
    area: str
    pending: bytes | None = field(default=None, repr=False)
    phone: str | None = None  # the button's SIM number (E.164, "+62..."): its SMS are taken from it alone


@dataclass(frozen=True, slots=True)
class Device:
    """A registry entry for the admin API and exports: no secret."""

    id: str
    created_ms: int
    revoked_ms: int | None
    site: str | None
    lat_e6: int | None
    lon_e6: int | None
    address: str
    area: str
    last_seen_ms: int | None
    battery_mv: int | None
    rssi: int | None
    firmware: str | None
    tamper: bool | None
    every_s: int | None
    faults: tuple[str, ...]
    key_pending: bool
    decommissioned_ms: int | None
    phone: str | None
    sms_seen_ms: int | None  # its latest valid SMS (the backup path's last success)
    # Remote configuration (protocol.md §10): the version last pushed (0: none), the one the button
    # last reported applied (0: none) and refused (None: none), and the whole desired `set`.
    config_ver: int = 0
    config_applied: int = 0
    config_rejected: int | None = None
    config_desired: dict[str, Any] = field(default_factory=dict)
    # Firmware over the air (protocol.md §11): the board its heartbeats report, and its latest
    # rollout entry {"rollout", "version", "state", "detail"} (None: never in a rollout).
    board: str | None = None
    ota: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PushedConfig:
    """A device's desired remote configuration, as the service publishes it (with the secret)."""

    device_id: str
    ver: int
    settings: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Offer:
    """A device's current firmware offer (protocol.md §11), or with bundle_id "" its withdrawal."""

    device_id: str
    rollout_id: int
    ver: int
    bundle_id: str = ""
    version: str = ""
    sha256: str = ""
    size: int = 0
    state: str = "offered"
    chunk: int = 0      # the chunk size the offer names: kept with it, so a re-published offer never changes


@dataclass(frozen=True, slots=True)
class NewBundle:
    id: str
    sha256: str
    version: str
    board: str
    size: int
    min_boot: int
    manifest: str
    data: bytes = field(repr=False)


class RolloutConflict(StoreError):
    """The rollout cannot do that in its state (halted, done, a percent that shrinks); `reason` a
    word for clients ("downgrade": a targeted device runs a newer version)."""

    def __init__(self, detail: str, reason: str = "conflict") -> None:
        super().__init__(detail)
        self.reason = reason


class NotFound(StoreError):
    """No such rollout, or no bundle of that version."""


ROLLOUT_STATES = ("offered", "downloading", "installed", "updated", "failed", "withdrawn")
LIVE_OFFER = ("offered", "downloading", "installed")   # offers a button may still act on
# What an update report makes of the device's rollout entry, and the states it may move it from: a
# refusal or a rollback fails the entry whatever came before (a trial that fails after the button
# said `confirmed` is still a failure); nothing moves a withdrawn or failed entry.
STATE_OF_REPORT = {"downloading": "downloading", "installed": "installed", "confirmed": "updated",
                   "current": "updated", "refused": "failed", "rolled_back": "failed"}
MOVES_FROM = {"downloading": LIVE_OFFER, "installed": LIVE_OFFER, "updated": LIVE_OFFER,
              "failed": (*LIVE_OFFER, "updated")}
# Why an entry was withdrawn (its detail): only those withdrawn at a halt are offered again on resume.
WITHDRAWN_AT_HALT = "halted"
OTA_LOCK_NAMESPACE = 0x51A6C   # PostgreSQL advisory lock of the rollouts (store_pg.py uses 0x51A6A-B)
ROLLOUTS_LISTED = 20     # finished rollouts GET /api/v1/rollouts lists by default, besides those under way
ROLLOUT_BUTTONS_LISTED = 500  # buttons of its rollouts the gateway report lists (commandcenter/plumbing.py)


def _version_key(version: str | None) -> tuple[int, ...] | None:
    """MAJOR.MINOR.PATCH as numbers for comparing; None for anything else (never compared)."""
    if not version or not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,9}){2}", version):
        return None
    return tuple(int(x) for x in version.split("."))


@dataclass(frozen=True, slots=True)
class StoredAlarm:
    id: int
    device_id: str
    seq: int
    state: str
    incident_id: str | None
    changed: bool  # this call stored it (intake) or moved its state forward (set_state)


@dataclass(frozen=True, slots=True)
class NewAlarm:
    alarm: Alarm
    received_ms: int
    site: str  # the incident group's site: the registry's site, or the device itself
    battery_mv: int | None  # of the device's latest heartbeat, sent with the alarm
    via: Literal["mqtt", "sms"] = "mqtt"  # the path it came by: an SMS alarm is no news of the MQTT path


@dataclass(frozen=True, slots=True)
class OutboundEvent:
    id: int
    kind: str            # "alarm" | "fault" | "state"
    event_id: str
    device_id: str
    body: str
    attempts: int
    alarm_id: int | None
    created_ms: int


@dataclass(frozen=True, slots=True)
class Delivery:
    outbox_id: int
    alarm_id: int | None
    incident_id: str | None


@dataclass(frozen=True, slots=True)
class Retry:
    outbox_id: int
    next_ms: int
    error: str
    spend_attempt: bool = True


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A message the gateway could not process (an unexpected error, not a reject): kept with its
    raw bytes for someone to look at, and acknowledged so the broker never delivers it again."""

    device_id: str | None
    topic: str
    payload: bytes
    error: str
    at_ms: int


# (change, fault history id) -> (event id, JSON body) for the outbox
FaultEventMaker = Callable[[FaultChange, int], tuple[str, str]]
# (alarm, the incident group after it joined) -> (event id, JSON body) for the outbox: made inside
# the intake transaction, once the group is decided, and fixed there so every retry sends the same bytes
AlarmEventMaker = Callable[[NewAlarm, Group], tuple[str, str]]

# (the stored alarm's row, state, incident id, by, at ms, state log row id) -> (event id, JSON body)
StateEventMaker = Callable[[Any, str, str | None, str | None, int, int], tuple[str, str]]

# Which outbox events a forwarding lane takes (gateway/forwarding.py): alarms never wait behind
# faults. The "fault" lane takes every other kind (faults and state changes).
Lane = Literal["alarm", "fault"]

# The destination of the outbox rows of a store that was not told its destinations (the reference
# command center of [command_center]; gateway/config.py).
PRIMARY = "command-center"
EVENT_KINDS = ("alarm", "fault", "state")


@dataclass(slots=True)
class Batch:
    """Everything one group commit writes. The MQTT acks wait until it is committed."""

    alarms: list[NewAlarm] = field(default_factory=list)
    duplicates: list[tuple[str, int]] = field(default_factory=list)   # (device, seq) to re-acknowledge
    statuses: list[tuple[Status, int]] = field(default_factory=list)  # (heartbeat, received ms)
    windows: dict[str, ReplayWindow] = field(default_factory=dict)
    faults: list[FaultChange] = field(default_factory=list)
    rejects: list[tuple[Reject, int]] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    sms_seen: dict[str, int] = field(default_factory=dict)  # device -> received ms of its latest valid SMS
    # Firmware over the air: update reports that passed this instance's replay check, (report, received
    # ms). The commit writes each keyed on (device, bundle id) and fills `ota_moved` with the rollout
    # entries they moved: (rollout id, device, bundle id, new state).
    ota_reports: list[tuple[OtaStatus, int]] = field(default_factory=list)
    ota_moved: list[tuple[int, str, str, str]] = field(default_factory=list)


class Store(Protocol):
    """What the gateway needs from its storage (SQLStore implements it for SQLite and PostgreSQL)."""

    shared: bool  # several gateway instances may use this database at once
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    # registry: every change is written with its entry in the fleet change log, in one transaction
    async def add_device(self, device_id: str, secret: bytes, *, now_ms: int, site: str | None = None,
                         lat_e6: int | None = None, lon_e6: int | None = None, address: str = "",
                         area: str = "", phone: str | None = None, by: Person = IN_PROCESS) -> None: ...
    async def revoke_device(self, device_id: str, now_ms: int, by: Person = IN_PROCESS) -> bool: ...
    async def set_key(self, device_id: str, secret: bytes, *, pending: bool, now_ms: int,
                      by: Person | None = IN_PROCESS) -> bool: ...
    async def decommission(self, device_id: str, now_ms: int, by: Person = IN_PROCESS) -> bool: ...
    async def update_device(self, device_id: str, fields: dict[str, Any], *, now_ms: int,
                            by: Person = IN_PROCESS) -> bool: ...
    async def configure(self, device_id: str, settings: dict[str, Any], *, now_ms: int,
                        by: Person = IN_PROCESS) -> bool: ...
    async def pushed_config(self, device_id: str) -> PushedConfig | None: ...
    async def unconfirmed_configs(self) -> list[PushedConfig]: ...
    async def fleet_changes(self, *, device_id: str | None, limit: int) -> list[dict[str, Any]]: ...
    async def registry(self) -> list[DeviceRecord]: ...
    async def devices(self, device_id: str | None = None) -> list[Device]: ...
    # state the service loads at start
    async def windows(self) -> dict[str, ReplayWindow]: ...
    async def sms_seen(self) -> dict[str, int]: ...
    async def latest_alarms(self) -> dict[str, int]: ...
    async def registry_version(self) -> int: ...
    async def device_health(self) -> list[tuple[str, int | None, int | None, dict[Fault, int], int | None]]: ...
    # intake
    async def alarm_exists(self, device_id: str, seq: int) -> bool: ...
    async def commit(self, batch: Batch, fault_event: FaultEventMaker,
                     alarm_event: AlarmEventMaker) -> list[StoredAlarm]: ...
    async def record_faults(self, changes: Sequence[FaultChange], fault_event: FaultEventMaker) -> None: ...
    async def quarantine(self, entries: Sequence[Quarantined]) -> None: ...
    # forwarding and acks
    # each destination's queue: which kinds of event go where (set before open)
    def route(self, routes: Mapping[str, Sequence[str]], primary: str = PRIMARY) -> None: ...
    async def due_events(self, now_ms: int, limit: int, lane: Lane,
                         destination: str = PRIMARY) -> list[OutboundEvent]: ...
    async def settle(self, delivered: Sequence[Delivery], retries: Sequence[Retry], now_ms: int,
                     destination: str = PRIMARY, primary: bool = True) -> None: ...
    async def refuse(self, outbox_ids: Sequence[int], errors: Sequence[str], now_ms: int) -> None: ...
    async def requeue(self, outbox_id: int, now_ms: int, by: Person = IN_PROCESS) -> bool: ...
    async def outbox_depth(self) -> int: ...
    async def outbox_depths(self) -> dict[str, int]: ...
    async def deliveries(self, event_id: str) -> list[dict[str, Any]]: ...
    async def set_state(self, device_id: str, seq: int, state: str, rank: int, incident_id: str | None,
                        by: str | None, at_ms: int, state_event: StateEventMaker | None = None,
                        source: str | None = None) -> StoredAlarm | None: ...
    async def current_acks(self, since_ms: int) -> list[StoredAlarm]: ...
    # queries for the admin API
    async def alarms(self, *, device_id: str | None, limit: int) -> list[dict[str, Any]]: ...
    async def groups(self, limit: int) -> list[dict[str, Any]]: ...
    async def audit(self, limit: int, reason: str | None = None) -> list[dict[str, Any]]: ...
    async def quarantined(self, limit: int) -> list[dict[str, Any]]: ...
    async def refused(self, limit: int) -> list[dict[str, Any]]: ...
    # the forwarder: in a shared database, one instance at a time (gateway/store_pg.py, Leadership)
    async def lead(self, leader: asyncio.Event, wake: Callable[[Lane], None]) -> None: ...
    # several instances: each holds its name while it lives; the leader takes over a dead one's session
    async def hold_instance(self, name: str, client_id: str, now_ms: int, held: asyncio.Event) -> None: ...
    async def orphans(self, me: str) -> list[tuple[str, str]]: ...
    async def release_orphan(self, name: str, *, forget: bool) -> None: ...
    # firmware over the air (gateway/ota.py)
    async def add_bundle(self, bundle: NewBundle, *, now_ms: int, by: Person) -> tuple[bool, dict[str, Any]]: ...
    async def bundles(self) -> list[dict[str, Any]]: ...
    async def bundle_data(self, bundle_ids: Sequence[str]) -> dict[str, bytes]: ...
    async def live_offers(self) -> list[Offer]: ...
    async def ota_version(self) -> int: ...
    async def ota_status_seqs(self) -> dict[str, int]: ...
    async def start_rollout(self, version: str, percent: int, max_failed_percent: int | None, *, resume: bool,
                            allow_downgrade: bool = False, default_max_failed_percent: int = 20, chunk: int = 512,
                            now_ms: int, by: Person) -> tuple[bool, int, list[Offer], list[int]]: ...
    async def check_rollout(self, rollout_id: int, now_ms: int, *, halt: bool = True) -> tuple[str, list[Offer]]: ...
    async def cancel_rollout(self, rollout_id: int, now_ms: int, by: Person) -> list[Offer]: ...
    async def withdraw_device(self, device_id: str, why: str, now_ms: int) -> list[Offer]: ...
    async def rollouts(self, rollout_id: int | None = None, *,
                       limit: int = ROLLOUTS_LISTED) -> list[dict[str, Any]]: ...
    async def firmware_versions(self) -> dict[str, int]: ...
    async def rollout_buttons(self, rollout_ids: Sequence[int], *,
                              limit: int = ROLLOUT_BUTTONS_LISTED) -> tuple[list[dict[str, Any]], int]: ...
    async def record_audit(self, at_ms: int, device_id: str | None, topic: str, reason: str, detail: str) -> None: ...


MIGRATIONS: Sequence[Sequence[str]] = (
    (  # 1: the first schema
        """CREATE TABLE devices (
            id            TEXT PRIMARY KEY,
            secret_hex    TEXT NOT NULL CHECK (length(secret_hex) = 64),
            created_ms    INTEGER NOT NULL,
            revoked_ms    INTEGER,
            site          TEXT,
            lat_e6        INTEGER,
            lon_e6        INTEGER,
            address       TEXT NOT NULL DEFAULT '',
            area          TEXT NOT NULL DEFAULT '',
            high_seq      INTEGER NOT NULL DEFAULT -1,
            seq_window    TEXT NOT NULL DEFAULT '0',   -- 64-bit bitmap in hex (SQLite integers are signed)
            last_seen_ms  INTEGER,
            every_s       INTEGER,
            battery_mv    INTEGER,
            rssi          INTEGER,
            firmware      TEXT,
            tamper        INTEGER
        )""",
        """CREATE TABLE incident_groups (
            id         INTEGER PRIMARY KEY,
            site       TEXT NOT NULL,
            opened_ms  INTEGER NOT NULL,
            last_ms    INTEGER NOT NULL,
            presses    INTEGER NOT NULL,
            sources    TEXT NOT NULL                  -- JSON list of device ids
        )""",
        "CREATE INDEX groups_by_last ON incident_groups (last_ms)",
        """CREATE TABLE alarms (
            id            INTEGER PRIMARY KEY,
            device_id     TEXT NOT NULL REFERENCES devices (id),
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
            body          BLOB NOT NULL,              -- the exact signed bytes, as evidence
            group_id      INTEGER NOT NULL REFERENCES incident_groups (id),
            press_count   INTEGER NOT NULL,
            state         TEXT NOT NULL DEFAULT 'received',
            state_rank    INTEGER NOT NULL DEFAULT 0,
            state_ms      INTEGER,
            incident_id   TEXT,
            forwarded_ms  INTEGER,
            UNIQUE (device_id, seq)
        )""",
        "CREATE INDEX alarms_by_state_time ON alarms (state_ms)",
        """CREATE TABLE outbox (
            id              INTEGER PRIMARY KEY,
            device_id       TEXT NOT NULL,
            event_id        TEXT NOT NULL UNIQUE,
            kind            TEXT NOT NULL CHECK (kind IN ('alarm', 'fault')),
            body            TEXT NOT NULL,
            alarm_id        INTEGER REFERENCES alarms (id),
            created_ms      INTEGER NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_ms INTEGER NOT NULL,
            last_error      TEXT
        )""",
        "CREATE INDEX outbox_due ON outbox (next_attempt_ms, id)",
        "CREATE INDEX outbox_device ON outbox (device_id, id)",
        """CREATE TABLE faults (
            id         INTEGER PRIMARY KEY,
            device_id  TEXT NOT NULL REFERENCES devices (id),
            fault      TEXT NOT NULL,
            active     INTEGER NOT NULL,
            at_ms      INTEGER NOT NULL,
            detail     TEXT NOT NULL
        )""",
        """CREATE TABLE device_faults (
            device_id  TEXT NOT NULL REFERENCES devices (id),
            fault      TEXT NOT NULL,
            since_ms   INTEGER NOT NULL,
            PRIMARY KEY (device_id, fault)
        )""",
        """CREATE TABLE state_log (
            id          INTEGER PRIMARY KEY,
            alarm_id    INTEGER NOT NULL REFERENCES alarms (id),
            state       TEXT NOT NULL,
            incident_id TEXT,
            by          TEXT,
            at_ms       INTEGER NOT NULL
        )""",
        """CREATE TABLE audit (
            id        INTEGER PRIMARY KEY,
            at_ms     INTEGER NOT NULL,
            device_id TEXT,
            topic     TEXT NOT NULL,
            reason    TEXT NOT NULL,
            detail    TEXT NOT NULL
        )""",
        "CREATE INDEX audit_by_reason ON audit (reason, id)",
    ),
    (  # 2: key rotation and decommissioning
        "ALTER TABLE devices ADD COLUMN pending_secret_hex TEXT CHECK (length(pending_secret_hex) = 64)",
        "ALTER TABLE devices ADD COLUMN decommissioned_ms INTEGER",
    ),
    (  # 3: quarantine, refused events, and the ack state "undelivered" after "received"
        """CREATE TABLE quarantine (
            id         INTEGER PRIMARY KEY,
            device_id  TEXT,
            topic      TEXT NOT NULL,
            payload    BLOB NOT NULL,             -- the exact bytes received
            digest     TEXT NOT NULL,             -- sha256 of topic and payload: one row per message
            error      TEXT NOT NULL,
            count      INTEGER NOT NULL,          -- how often it came
            first_ms   INTEGER NOT NULL,
            last_ms    INTEGER NOT NULL,
            UNIQUE (digest)
        )""",
        "ALTER TABLE outbox ADD COLUMN refused_ms INTEGER",
        # The alarm lane's query: the alarms waiting, in order, without reading the fault backlog.
        "CREATE INDEX outbox_alarms ON outbox (id) WHERE kind = 'alarm' AND refused_ms IS NULL",
        # protocol.md §4.4 gained a state at rank 1; the later states move up one.
        "UPDATE alarms SET state_rank = state_rank + 1 WHERE state_rank >= 1",
    ),
    (  # 4: the fleet change log: who changed the registry, when, and what (never a secret)
        """CREATE TABLE fleet_changes (
            id         INTEGER PRIMARY KEY,
            at_ms      INTEGER NOT NULL,
            person     TEXT NOT NULL,            -- the name of [[api.people]] (or "admin", the admin token)
            role       TEXT NOT NULL,
            action     TEXT NOT NULL,            -- register, revoke, rotate-key, update, decommission, requeue
            device_id  TEXT,
            detail     TEXT NOT NULL             -- JSON: what changed; an update's fields as [before, after]
        )""",
        "CREATE INDEX fleet_changes_by_device ON fleet_changes (device_id, id)",
    ),
    (  # 5: several instances: incident groups are found by site inside the intake transaction, and
        # each instance's MQTT session is known, so that another can take it over when it dies
        "CREATE INDEX groups_by_site ON incident_groups (site, id)",
        """CREATE TABLE gateway_instances (
            name        TEXT PRIMARY KEY,
            client_id   TEXT NOT NULL,           -- its MQTT client id: the broker keeps its session by it
            started_ms  INTEGER NOT NULL
        )""",
    ),
    (  # 6: several destinations (issue 15): each has its own queue position in the outbox (one row
        # per event and destination), state changes travel to the destinations that follow them,
        # and each confirmed delivery is recorded per destination (the chain of custody)
        """CREATE TABLE outbox_new (
            id              INTEGER PRIMARY KEY,
            destination     TEXT NOT NULL,
            device_id       TEXT NOT NULL,
            event_id        TEXT NOT NULL,
            kind            TEXT NOT NULL CHECK (kind IN ('alarm', 'fault', 'state')),
            body            TEXT NOT NULL,
            alarm_id        INTEGER REFERENCES alarms (id),
            created_ms      INTEGER NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_ms INTEGER NOT NULL,
            last_error      TEXT,
            refused_ms      INTEGER,
            UNIQUE (destination, event_id)
        )""",
        # Row ids are given again in the same order (a device's events keep their order); the
        # rows waiting were all for the one command center of [command_center].
        "INSERT INTO outbox_new (destination, device_id, event_id, kind, body, alarm_id, created_ms, attempts, "
        "next_attempt_ms, last_error, refused_ms) SELECT 'command-center', device_id, event_id, kind, body, "
        "alarm_id, created_ms, attempts, next_attempt_ms, last_error, refused_ms FROM outbox ORDER BY id",
        "DROP TABLE outbox",
        "ALTER TABLE outbox_new RENAME TO outbox",
        "CREATE INDEX outbox_due ON outbox (destination, next_attempt_ms, id)",
        "CREATE INDEX outbox_device ON outbox (destination, device_id, id)",
        "CREATE INDEX outbox_alarms ON outbox (destination, id) WHERE kind = 'alarm' AND refused_ms IS NULL",
        """CREATE TABLE deliveries (
            destination   TEXT NOT NULL,
            event_id      TEXT NOT NULL,
            kind          TEXT NOT NULL,
            device_id     TEXT NOT NULL,
            delivered_ms  INTEGER NOT NULL,
            reference     TEXT,                 -- what the destination called it (an incident id), if it said
            attempts      INTEGER NOT NULL,
            PRIMARY KEY (destination, event_id)
        )""",
    ),
    (  # 7: the GSM/SMS path (issue 17): each button's SIM number, whose SMS alone are taken as the
        # button's, and its latest valid SMS for the supervision of that path. One number is one
        # button's: the intake finds the device by the sender.
        "ALTER TABLE devices ADD COLUMN phone TEXT",
        "ALTER TABLE devices ADD COLUMN sms_seen_ms INTEGER",
        "CREATE UNIQUE INDEX devices_by_phone ON devices (phone) WHERE phone IS NOT NULL",
    ),
    (  # 8: remote configuration (issue 18, protocol.md §10): per device the version last pushed,
        # what its heartbeats report applied and refused, and the whole desired configuration
        "ALTER TABLE devices ADD COLUMN config_ver INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE devices ADD COLUMN config_applied INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE devices ADD COLUMN config_rejected INTEGER",
        "ALTER TABLE devices ADD COLUMN config_desired TEXT NOT NULL DEFAULT '{}'",
    ),
    (  # 9: firmware over the air (issue 18, protocol.md §11): the signed bundles uploaded, staged
        # rollouts and each device's place in them; per device its board, the version of the last
        # offer made to it and the sequence number of its last update report (replay check)
        """CREATE TABLE firmware_bundles (
            id           TEXT PRIMARY KEY,          -- the first 16 hex digits of sha256
            sha256       TEXT NOT NULL,             -- of the whole bundle file
            version      TEXT NOT NULL,
            board        TEXT NOT NULL,
            size         INTEGER NOT NULL,
            min_boot     INTEGER NOT NULL,
            manifest     TEXT NOT NULL,             -- JSON, as signed
            data         BLOB NOT NULL,             -- the bundle file, byte for byte
            uploaded_ms  INTEGER NOT NULL,
            uploaded_by  TEXT NOT NULL
        )""",
        "CREATE INDEX firmware_by_version ON firmware_bundles (version, board)",
        """CREATE TABLE rollouts (
            id                  INTEGER PRIMARY KEY,
            version             TEXT NOT NULL,
            percent             INTEGER NOT NULL,
            state               TEXT NOT NULL CHECK (state IN ('active', 'halted', 'done', 'cancelled')),
            max_failed_percent  INTEGER NOT NULL,
            created_ms          INTEGER NOT NULL,
            created_by          TEXT NOT NULL,
            updated_ms          INTEGER NOT NULL,
            halted_reason       TEXT CHECK (halted_reason IN ('failures', 'cancelled')),
            eligible            INTEGER NOT NULL DEFAULT 0  -- devices it could reach, counted at start/widen
        )""",
        # One rollout under way (active or halted) per version, whatever two requests do at once.
        "CREATE UNIQUE INDEX rollouts_one_live ON rollouts (version) WHERE state IN ('active', 'halted')",
        "CREATE INDEX rollouts_by_state ON rollouts (state, id)",
        """CREATE TABLE rollout_devices (
            rollout_id  INTEGER NOT NULL REFERENCES rollouts (id),
            device_id   TEXT NOT NULL REFERENCES devices (id),
            bundle_id   TEXT NOT NULL REFERENCES firmware_bundles (id),
            offer_ver   INTEGER NOT NULL,
            chunk       INTEGER NOT NULL,           -- the chunk size its offer names (fixed for the offer)
            state       TEXT NOT NULL CHECK (state IN ('offered', 'downloading', 'installed', 'updated', 'failed',
                                                        'withdrawn')),
            detail      TEXT NOT NULL DEFAULT '',
            updated_ms  INTEGER NOT NULL,
            PRIMARY KEY (rollout_id, device_id)
        )""",
        "CREATE INDEX rollout_devices_by_device ON rollout_devices (device_id, rollout_id)",
        # Grows with every change of the offers (a start, widening, halt, cancel or withdrawal): another
        # instance that sees it grow reloads the offers it serves.
        "CREATE TABLE ota_changes (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)",
        "INSERT INTO ota_changes (id, version) VALUES (1, 0)",
        "ALTER TABLE devices ADD COLUMN board TEXT",
        "ALTER TABLE devices ADD COLUMN ota_offer_ver INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE devices ADD COLUMN ota_status_seq INTEGER NOT NULL DEFAULT -1",
    ),
)

_PLACE = ("site", "lat_e6", "lon_e6", "address", "area")
# What `update_device` may change: the place, and the SIM's number.
_UPDATABLE = (*_PLACE, "phone")

# What a database connection must offer the store's functions: sqlite3.Connection does, and
# store_pg.PgConnection does for psycopg (rows readable by column name and by position).
Db = Any


def _api_value(column: str, value: Any) -> Any:
    """A registry column as the admin API shows it: coordinates in degrees."""
    if column in ("lat_e6", "lon_e6") and value is not None:
        return value / 1e6
    return value


def _log_change(db: Db, by: Person, at_ms: int, action: FleetAction, device_id: str | None,
                detail: dict[str, Any]) -> None:
    db.execute("INSERT INTO fleet_changes (at_ms, person, role, action, device_id, detail) VALUES (?, ?, ?, ?, ?, ?)",
               (at_ms, by.name, by.role.value, action, device_id, json.dumps(detail, ensure_ascii=False)))


def _event(r: Any) -> OutboundEvent:
    return OutboundEvent(r["id"], r["kind"], r["event_id"], r["device_id"], r["body"], r["attempts"], r["alarm_id"],
                         r["created_ms"])


def _id(row: Any) -> int:
    return int(row[0])


class DatabaseThread:
    """The one thread that uses the SQLite connection, taking urgent work first.

    An executor with one worker runs work in the order it was submitted, so an alarm's commit
    would wait behind whatever the fault lane queued before it (a round's query, its settlement).
    Here each piece of work is urgent (an alarm's path: its commit, the alarm lane's queries, the
    acks' states) or not, and the thread always takes the oldest urgent piece first. A piece
    already running is not interrupted, so an alarm waits at most for one ordinary transaction.
    """

    URGENT, ORDINARY, STOP = 0, 1, 2

    def __init__(self, name: str) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, urgent: bool, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((self.URGENT if urgent else self.ORDINARY, next(self._order), (future, fn, args)))
        return future

    def _run(self) -> None:
        while True:
            _, _, work = self._queue.get()
            if work is None:
                return
            future, fn, args = work
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller, as an executor does
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put((self.STOP, next(self._order), None))
        self._thread.join()


class SQLStore:
    """The store's logic, once for both engines. A subclass supplies the connection handling:
    `_read(fn)` runs fn(db) and `_write(fn)` runs it in a transaction, both off the event loop;
    `_lock_sites` and `_notify` are what only a shared database needs."""

    shared = False
    # What the engine raises for a broken unique key (a device registered twice).
    integrity_errors: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)

    def __init__(self, *, group_window_ms: int = 300_000) -> None:
        self.group_window_ms = group_window_ms
        self.routes: dict[str, tuple[str, ...]] = {"alarm": (PRIMARY,), "fault": (PRIMARY,), "state": ()}
        self.primary = PRIMARY

    def route(self, routes: Mapping[str, Sequence[str]], primary: str = PRIMARY) -> None:
        """Which destinations each kind of event is queued for from now on (gateway/config.py), and
        the primary one: its alarm lane's work is urgent on the database thread (the button's ack
        follows it); the other destinations' is ordinary, so that their rounds never make the
        primary's wait."""
        self.routes = {kind: tuple(routes.get(kind, ())) for kind in EVENT_KINDS}
        self.primary = primary

    async def _read(self, fn: Callable[[Db], T], *, urgent: bool = False) -> T:
        raise NotImplementedError

    async def _write(self, fn: Callable[[Db], T], *, urgent: bool = False) -> T:
        raise NotImplementedError

    def _lock_sites(self, db: Db, sites: Sequence[str]) -> None:
        """Serialise, until the transaction ends, other instances' intake of alarms of these sites."""

    def _notify(self, db: Db, lane: Lane) -> None:
        """Tell the forwarding instance, when this transaction commits, that events wait in a lane."""

    def _stored_alarms(self, db: Db, keys: set[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, str, str | None]]:
        """(device, seq) -> (id, state, incident id) of those of `keys` already stored."""
        out = {}
        for device_id, seq in keys:
            row = db.execute("SELECT id, state, incident_id FROM alarms WHERE device_id = ? AND seq = ?",
                             (device_id, seq)).fetchone()
            if row is not None:
                out[(device_id, seq)] = (row[0], row[1], row[2])
        return out

    def _latest_groups(self, db: Db, sites: Sequence[str]) -> dict[str, Group]:
        """Each site's newest incident group."""
        out = {}
        for site in sites:
            r = db.execute("SELECT id, site, opened_ms, last_ms, presses, sources FROM incident_groups "
                           "WHERE site = ? ORDER BY id DESC LIMIT 1", (site,)).fetchone()
            if r is not None:
                out[site] = Group(r["id"], r["site"], r["opened_ms"], r["last_ms"], r["presses"],
                                  json.loads(r["sources"]))
        return out

    def _new_ids(self, db: Db, table: Literal["alarms", "incident_groups"], n: int) -> list[int]:
        """n unused row ids of `table` (one writer at a time: after the largest)."""
        if n == 0:
            return []
        top = _id(db.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone())
        return list(range(top + 1, top + 1 + n))

    async def lead(self, leader: asyncio.Event, wake: Callable[[Lane], None]) -> None:
        """The one instance of an unshared database always forwards."""
        leader.set()
        await asyncio.Event().wait()

    async def hold_instance(self, name: str, client_id: str, now_ms: int, held: asyncio.Event) -> None:
        """An unshared database has one instance: nobody to hold the name against."""
        held.set()
        await asyncio.Event().wait()

    async def orphans(self, me: str) -> list[tuple[str, str]]:
        return []

    async def release_orphan(self, name: str, *, forget: bool) -> None:
        return None

    # ------------------------------------------------------------ migrations (one runner for both engines)

    def _schema_version(self, db: Db) -> int:
        raise NotImplementedError

    def _set_schema_version(self, db: Db, version: int) -> None:
        raise NotImplementedError

    def _ddl(self, statement: str) -> str:
        return statement

    def _migrate(self, db: Db, where: str) -> None:
        """Bring the schema to the newest version, in the caller's transaction: all of it or nothing."""
        version = self._schema_version(db)
        if version > len(MIGRATIONS):
            raise StoreError(f"database {where} has schema {version}, newer than this gateway "
                             f"knows ({len(MIGRATIONS)}): upgrade the gateway, do not downgrade")
        for number in range(version + 1, len(MIGRATIONS) + 1):
            for statement in MIGRATIONS[number - 1]:
                db.execute(self._ddl(statement))
            self._set_schema_version(db, number)
            log.info("store %s migrated to schema %d", where, number)

    # ------------------------------------------------------------ registry

    async def add_device(self, device_id: str, secret: bytes, *, now_ms: int, site: str | None = None,
                         lat_e6: int | None = None, lon_e6: int | None = None, address: str = "",
                         area: str = "", phone: str | None = None, by: Person = IN_PROCESS) -> None:
        def add(db: Db) -> None:
            if db.execute("SELECT 1 FROM devices WHERE id = ?", (device_id,)).fetchone() is not None:
                raise StoreError(f"device {device_id} is already registered")
            self._phone_free(db, phone, device_id)
            try:
                db.execute("INSERT INTO devices (id, secret_hex, created_ms, site, lat_e6, lon_e6, address, area, "
                           "phone) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (device_id, secret.hex(), now_ms, site, lat_e6, lon_e6, address, area, phone))
            except self.integrity_errors:  # registered at this moment through another instance
                taken = f"device {device_id}" + (f" or phone {phone}" if phone else "")
                raise StoreError(f"{taken} is already registered") from None
            place = dict(zip(_PLACE, (site, lat_e6, lon_e6, address, area), strict=True))
            detail = {k.removesuffix("_e6"): _api_value(k, v) for k, v in place.items()}
            if phone is not None:
                detail["phone"] = phone
            _log_change(db, by, now_ms, "register", device_id, detail)
        await self._write(add)

    def _phone_free(self, db: Db, phone: str | None, device_id: str) -> None:
        """One SIM is one button's: the SMS intake finds the device by the sender's number."""
        if phone is None:
            return
        other = db.execute("SELECT id FROM devices WHERE phone = ? AND id <> ?", (phone, device_id)).fetchone()
        if other is not None:
            raise StoreError(f"phone {phone} is registered to device {other['id']} already")

    async def revoke_device(self, device_id: str, now_ms: int, by: Person = IN_PROCESS) -> bool:
        def revoke(db: Db) -> bool:
            cur = db.execute("UPDATE devices SET revoked_ms = ? WHERE id = ? AND revoked_ms IS NULL",
                             (now_ms, device_id))
            if cur.rowcount == 1:
                _log_change(db, by, now_ms, "revoke", device_id, {})
            return bool(cur.rowcount == 1)
        return await self._write(revoke)

    async def registry(self) -> list[DeviceRecord]:
        def read(db: Db) -> list[DeviceRecord]:
            rows = db.execute("SELECT id, secret_hex, revoked_ms, site, lat_e6, lon_e6, address, area, "
                              "pending_secret_hex, phone FROM devices").fetchall()
            return [DeviceRecord(r["id"], bytes.fromhex(r["secret_hex"]), r["revoked_ms"] is not None, r["site"],
                                 r["lat_e6"], r["lon_e6"], r["address"], r["area"],
                                 bytes.fromhex(r["pending_secret_hex"]) if r["pending_secret_hex"] else None,
                                 r["phone"])
                    for r in rows]
        return await self._read(read)

    async def registry_version(self) -> int:
        """Grows with every change of the registry by a person (the fleet change log's newest
        entry): an instance that sees it grow reloads the registry another instance changed."""
        return await self._read(lambda db: _id(db.execute("SELECT coalesce(max(id), 0) FROM fleet_changes")
                                                 .fetchone()))

    async def devices(self, device_id: str | None = None) -> list[Device]:
        def read(db: Db) -> list[Device]:
            where, args = ("WHERE d.id = ?", (device_id,)) if device_id else ("", ())
            rows = db.execute(
                "SELECT d.id, d.created_ms, d.revoked_ms, d.site, d.lat_e6, d.lon_e6, d.address, d.area, "
                "d.last_seen_ms, d.battery_mv, d.rssi, d.firmware, d.tamper, d.every_s, d.decommissioned_ms, "
                "d.phone, d.sms_seen_ms, d.config_ver, d.config_applied, d.config_rejected, d.config_desired, "
                "d.board, d.pending_secret_hex IS NOT NULL AS key_pending, "
                "(SELECT group_concat(f.fault) FROM device_faults f WHERE f.device_id = d.id) AS faults "
                f"FROM devices d {where} ORDER BY d.id", args).fetchall()
            where, args = ("WHERE rd.device_id = ?", (device_id,)) if device_id else ("", ())
            ota: dict[str, dict[str, Any]] = {}
            for r in db.execute("SELECT rd.device_id, rd.rollout_id, r.version, rd.state, rd.detail "
                                "FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id "
                                f"{where} ORDER BY rd.rollout_id", args).fetchall():
                ota[r["device_id"]] = {"rollout": r["rollout_id"], "version": r["version"], "state": r["state"],
                                       "detail": r["detail"]}
            return [Device(**{**dict(r), "tamper": None if r["tamper"] is None else bool(r["tamper"]),
                              "key_pending": bool(r["key_pending"]),
                              "config_desired": json.loads(r["config_desired"]),
                              "faults": tuple(sorted((r["faults"] or "").split(",")) if r["faults"] else ()),
                              "ota": ota.get(r["id"])})
                    for r in rows]
        return await self._read(read)

    async def set_key(self, device_id: str, secret: bytes, *, pending: bool, now_ms: int,
                      by: Person | None = IN_PROCESS) -> bool:
        """Rotate a device's secret: at once (the old one stops working now), or pending (both work
        until the device first uses the new one). The change log records the mode, not the key;
        by=None records nothing (a device's first use of its pending key, which ends a rotation)."""
        def write(db: Db) -> bool:
            if pending:
                cur = db.execute("UPDATE devices SET pending_secret_hex = ? WHERE id = ?", (secret.hex(), device_id))
            else:
                cur = db.execute("UPDATE devices SET secret_hex = ?, pending_secret_hex = NULL WHERE id = ?",
                                 (secret.hex(), device_id))
            if cur.rowcount == 1 and by is not None:
                _log_change(db, by, now_ms, "rotate-key", device_id, {"mode": "pending" if pending else "immediate"})
            return bool(cur.rowcount == 1)
        return await self._write(write)

    async def decommission(self, device_id: str, now_ms: int, by: Person = IN_PROCESS) -> bool:
        """Retire a device for good: revoked, its supervision faults closed; its history is kept.
        Its SIM's number is let go (the change log keeps it), so the SIM can serve another button."""
        def write(db: Db) -> bool:
            before = db.execute("SELECT phone FROM devices WHERE id = ?", (device_id,)).fetchone()
            cur = db.execute("UPDATE devices SET decommissioned_ms = ?, revoked_ms = coalesce(revoked_ms, ?), "
                             "pending_secret_hex = NULL, phone = NULL WHERE id = ? AND decommissioned_ms IS NULL",
                             (now_ms, now_ms, device_id))
            db.execute("DELETE FROM device_faults WHERE device_id = ?", (device_id,))
            if cur.rowcount == 1:
                _log_change(db, by, now_ms, "decommission", device_id,
                            {"phone": [before["phone"], None]} if before is not None and before["phone"] else {})
            return bool(cur.rowcount == 1)
        return await self._write(write)

    async def update_device(self, device_id: str, fields: dict[str, Any], *, now_ms: int,
                            by: Person = IN_PROCESS) -> bool:
        """Correct a device's site, location or phone. The change log records each field that changed
        as [before, after]; a correction that changes nothing records nothing."""
        if not fields or set(fields) - set(_UPDATABLE):
            raise StoreError(f"can only update {', '.join(sorted(_UPDATABLE))}")
        def write(db: Db) -> bool:
            before = db.execute(f"SELECT {', '.join(fields)} FROM devices WHERE id = ?", (device_id,)).fetchone()
            if before is None:
                return False
            self._phone_free(db, fields.get("phone"), device_id)
            sets = ", ".join(f"{k} = ?" for k in fields)  # keys checked against _UPDATABLE above
            try:
                db.execute(f"UPDATE devices SET {sets} WHERE id = ?", (*fields.values(), device_id))
            except self.integrity_errors:  # the same number given to another device at this moment
                raise StoreError(f"phone {fields.get('phone')} is registered to another device already") from None
            changed = {k.removesuffix("_e6"): [_api_value(k, before[k]), _api_value(k, v)]
                       for k, v in fields.items() if before[k] != v}
            if changed:
                _log_change(db, by, now_ms, "update", device_id, changed)
            if changed.keys() & {"lat", "lon", "address", "area"}:
                # The button signs its own location into its alarms: a corrected one goes to it too.
                place = db.execute("SELECT lat_e6, lon_e6, address, area FROM devices WHERE id = ?",
                                   (device_id,)).fetchone()
                if place["lat_e6"] is not None and place["lon_e6"] is not None:
                    self._configure(db, device_id, {"loc": {
                        "lat_e6": place["lat_e6"], "lon_e6": place["lon_e6"], "addr": place["address"],
                        "area": place["area"]}}, now_ms, by)
            return True
        return await self._write(write)

    def _configure(self, db: Db, device_id: str, settings: dict[str, Any], now_ms: int, by: Person) -> bool | None:
        """Merge `settings` into the device's desired remote configuration (an "sms" object key by
        key, every other key whole) and give it the next version. None: no such device; False: it
        changes nothing (no new version)."""
        row = db.execute("SELECT config_ver, config_applied, config_desired FROM devices WHERE id = ?",
                         (device_id,)).fetchone()
        if row is None:
            return None
        desired = json.loads(row["config_desired"])
        merged = dict(desired)
        for key, value in settings.items():
            merged[key] = {**desired.get(key, {}), **value} if key == "sms" else value
        if merged == desired:
            return False
        # After the button's own: one that reports a version this database never gave (restored
        # from an older backup) would otherwise ignore the next ones as old.
        ver = max(row["config_ver"], row["config_applied"]) + 1
        db.execute("UPDATE devices SET config_ver = ?, config_desired = ? WHERE id = ?",
                   (ver, json.dumps(merged, sort_keys=True, ensure_ascii=False), device_id))
        # Wi-Fi networks by name only: the change log never holds a password (docs/protocol.md §10.2).
        before, after = redact_config(desired), redact_config(merged)
        changed = {k: [before.get(k), after[k]] for k in settings if desired.get(k) != merged[k]}
        _log_change(db, by, now_ms, "configure", device_id, {"version": ver, **changed})
        return True

    async def configure(self, device_id: str, settings: dict[str, Any], *, now_ms: int,
                        by: Person = IN_PROCESS) -> bool:
        """Change a device's desired remote configuration (protocol.md §10): whether a new version
        was made. The caller publishes it (pushed_config) once this has committed."""
        def write(db: Db) -> bool:
            done = self._configure(db, device_id, settings, now_ms, by)
            if done is None:
                raise StoreError(f"no device {device_id}")
            return done
        return await self._write(write)

    async def pushed_config(self, device_id: str) -> PushedConfig | None:
        """The device's current desired configuration and its version; None if it has none."""
        def read(db: Db) -> PushedConfig | None:
            r = db.execute("SELECT id, config_ver, config_desired FROM devices WHERE id = ? AND config_ver > 0",
                           (device_id,)).fetchone()
            return None if r is None else PushedConfig(r["id"], r["config_ver"], json.loads(r["config_desired"]))
        return await self._read(read)

    async def unconfirmed_configs(self) -> list[PushedConfig]:
        """Configurations of live devices that their heartbeats have not reported applied yet (nor
        refused: the button would refuse the same version again)."""
        def read(db: Db) -> list[PushedConfig]:
            rows = db.execute("SELECT id, config_ver, config_desired FROM devices WHERE config_ver > config_applied "
                              "AND config_ver <> coalesce(config_rejected, -1) AND revoked_ms IS NULL "
                              "ORDER BY id").fetchall()
            return [PushedConfig(r["id"], r["config_ver"], json.loads(r["config_desired"])) for r in rows]
        return await self._read(read)

    async def fleet_changes(self, *, device_id: str | None, limit: int) -> list[dict[str, Any]]:
        """The fleet change log, newest first."""
        def read(db: Db) -> list[dict[str, Any]]:
            where, args = ("WHERE device_id = ?", (device_id,)) if device_id else ("", ())
            rows = db.execute(f"SELECT id, at_ms, person, role, action, device_id, detail FROM fleet_changes "
                              f"{where} ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
            return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]
        return await self._read(read)

    async def device_health(self) -> list[tuple[str, int | None, int | None, dict[Fault, int], int | None]]:
        """(device, last seen ms, heartbeat interval s, active faults with their start ms, battery mV)
        for supervision."""
        def read(db: Db) -> list[tuple[str, int | None, int | None, dict[Fault, int], int | None]]:
            faults: dict[str, dict[Fault, int]] = {}
            for r in db.execute("SELECT device_id, fault, since_ms FROM device_faults").fetchall():
                faults.setdefault(r["device_id"], {})[Fault(r["fault"])] = r["since_ms"]
            rows = db.execute("SELECT id, last_seen_ms, every_s, battery_mv FROM devices "
                              "WHERE revoked_ms IS NULL").fetchall()
            return [(r["id"], r["last_seen_ms"], r["every_s"], faults.get(r["id"], {}), r["battery_mv"])
                    for r in rows]
        return await self._read(read)

    async def sms_seen(self) -> dict[str, int]:
        """The latest valid SMS of each device that sent one (ms): the backup path's last success,
        for supervision at start and across instances."""
        def read(db: Db) -> dict[str, int]:
            rows = db.execute("SELECT id, sms_seen_ms FROM devices WHERE sms_seen_ms IS NOT NULL "
                              "AND revoked_ms IS NULL").fetchall()
            return {r["id"]: r["sms_seen_ms"] for r in rows}
        return await self._read(read)

    async def windows(self) -> dict[str, ReplayWindow]:
        def read(db: Db) -> dict[str, ReplayWindow]:
            rows = db.execute("SELECT id, high_seq, seq_window FROM devices").fetchall()
            return {r["id"]: ReplayWindow(r["high_seq"], int(r["seq_window"], 16)) for r in rows}
        return await self._read(read)

    async def latest_alarms(self) -> dict[str, int]:
        """The newest alarm's sequence number per device (its ack is the retained one)."""
        def read(db: Db) -> dict[str, int]:
            rows = db.execute("SELECT device_id, max(seq) AS s FROM alarms GROUP BY device_id").fetchall()
            return {r["device_id"]: r["s"] for r in rows}
        return await self._read(read)

    async def alarm_exists(self, device_id: str, seq: int) -> bool:
        def read(db: Db) -> bool:
            return db.execute("SELECT 1 FROM alarms WHERE device_id = ? AND seq = ?",
                              (device_id, seq)).fetchone() is not None
        return await self._read(read, urgent=True)

    # ------------------------------------------------------------ intake

    async def commit(self, batch: Batch, fault_event: FaultEventMaker,
                     alarm_event: AlarmEventMaker) -> list[StoredAlarm]:
        """Write one batch in one transaction; return the stored state of every alarm in it."""
        return await self._write(lambda db: self._commit(db, batch, fault_event, alarm_event),
                                 urgent=bool(batch.alarms or batch.duplicates))

    def _commit(self, db: Db, batch: Batch, fault_event: FaultEventMaker,
                alarm_event: AlarmEventMaker) -> list[StoredAlarm]:
        # Leaves `batch` as it was: a transaction the database aborted (a deadlock between
        # instances) runs this again from the start. Set-based: a few statements per batch, not
        # per alarm, since each statement is a round trip to a PostgreSQL server.
        out: list[StoredAlarm] = []
        self._lock_sites(db, sorted({n.site for n in batch.alarms}))
        # Under the sites' locks: an instance storing the same alarm now has committed or waits.
        stored = self._stored_alarms(db, {(n.alarm.device_id, n.alarm.seq) for n in batch.alarms}
                                     | set(batch.duplicates))
        latest: dict[str, Group | None] = dict(self._latest_groups(db, sorted({n.site for n in batch.alarms})))
        touched: dict[int, Group] = {}   # group id -> its state after this batch (new ones: ids < 0 for now)
        opened = 0
        fresh: list[tuple[NewAlarm, Group]] = []  # each alarm with its group as it stood right after it joined
        duplicates = list(batch.duplicates)
        for n in batch.alarms:
            key = (n.alarm.device_id, n.alarm.seq)
            if key in stored:
                duplicates.append(key)  # stored already: re-acknowledged below
                continue
            group = extend(latest.get(n.site), n.site, n.alarm.device_id, n.received_ms, self.group_window_ms)
            if group.id == 0:
                opened += 1
                group.id = -opened  # numbered below, once the batch's new incidents are counted
            latest[n.site] = touched[group.id] = group
            fresh.append((n, group))
        # New incidents and alarms are numbered by the database, unique across instances.
        number = dict(zip(range(-1, -opened - 1, -1), self._new_ids(db, "incident_groups", opened), strict=True))
        new = set(number.values())
        for g in [*touched.values(), *(g for _, g in fresh)]:
            if g.id < 0:
                g.id = number[g.id]
        db.executemany("INSERT INTO incident_groups (id, site, opened_ms, last_ms, presses, sources) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       [(g.id, g.site, g.opened_ms, g.last_ms, g.presses, json.dumps(g.sources))
                        for g in touched.values() if g.id in new])
        db.executemany("UPDATE incident_groups SET last_ms = ?, presses = ?, sources = ? WHERE id = ?",
                       [(g.last_ms, g.presses, json.dumps(g.sources), g.id) for g in touched.values()
                        if g.id not in new])
        alarm_ids = self._new_ids(db, "alarms", len(fresh))
        # Each alarm's group as it stood right after that alarm joined: its press count and sources.
        made = [(n, alarm_id, alarm_event(n, g)) for (n, g), alarm_id in zip(fresh, alarm_ids, strict=True)]
        db.executemany(
            "INSERT INTO alarms (id, device_id, seq, kind, test, lat_e6, lon_e6, address, area, raised_ts, "
            "uptime_ms, received_ms, body, group_id, press_count) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(alarm_id, n.alarm.device_id, n.alarm.seq, n.alarm.kind, int(n.alarm.test), n.alarm.location.lat_e6,
              n.alarm.location.lon_e6, n.alarm.location.address, n.alarm.location.area, n.alarm.raised_ts,
              n.alarm.uptime_ms, n.received_ms, n.alarm.body, g.id, g.presses)
             for (n, g), alarm_id in zip(fresh, alarm_ids, strict=True)])
        db.executemany("INSERT INTO outbox (destination, device_id, event_id, kind, body, alarm_id, created_ms, "
                       "next_attempt_ms) VALUES (?, ?, ?, 'alarm', ?, ?, ?, ?)",
                       [(dest, n.alarm.device_id, event_id, body, alarm_id, n.received_ms, n.received_ms)
                        for dest in self.routes["alarm"] for n, alarm_id, (event_id, body) in made])
        out += [StoredAlarm(alarm_id, n.alarm.device_id, n.alarm.seq, "received", None, True)
                for n, alarm_id, _ in made]
        # A duplicate of an alarm stored before, or earlier in this batch (a button's resend that
        # came with the original).
        stored.update({(n.alarm.device_id, n.alarm.seq): (alarm_id, "received", None) for n, alarm_id, _ in made})
        for device_id, seq in duplicates:
            row = stored.get((device_id, seq))
            if row is not None:
                out.append(StoredAlarm(row[0], device_id, seq, row[1], row[2], False))
        # Rows of devices in one order (by id), so that two instances' transactions never wait for
        # each other in a circle.
        seen: dict[str, int] = {}
        sms = dict(batch.sms_seen)
        for n in batch.alarms:
            # An alarm that came by SMS proves the SMS path, not the MQTT one (supervision.py).
            last = sms if n.via == "sms" else seen
            last[n.alarm.device_id] = max(last.get(n.alarm.device_id, 0), n.received_ms)
        db.executemany("UPDATE devices SET last_seen_ms = greatest(coalesce(last_seen_ms, 0), ?) WHERE id = ?",
                       [(ms, dev) for dev, ms in sorted(seen.items())])
        db.executemany(
            "UPDATE devices SET last_seen_ms = greatest(coalesce(last_seen_ms, 0), ?), battery_mv = ?, rssi = ?, "
            "firmware = ?, tamper = ?, every_s = ? WHERE id = ?",
            [(ms, s.battery_mv, s.rssi, s.firmware, int(s.tamper), s.every_s, s.device_id)
             for s, ms in sorted(batch.statuses, key=lambda e: e[0].device_id)])
        db.executemany("UPDATE devices SET sms_seen_ms = greatest(coalesce(sms_seen_ms, 0), ?) WHERE id = ?",
                       [(ms, dev) for dev, ms in sorted(sms.items())])
        # What the button reports of its remote configuration (protocol.md §10), as it reports it: a
        # button rewritten over USB starts again from 0.
        db.executemany("UPDATE devices SET config_applied = ?, config_rejected = ? WHERE id = ?",
                       [(s.config_applied, s.config_rejected, s.device_id)
                        for s, _ in sorted(batch.statuses, key=lambda e: e[0].device_id)
                        if s.config_applied is not None])
        # The board a heartbeat names (firmware from §11 on); older firmware names none.
        db.executemany("UPDATE devices SET board = ? WHERE id = ?",
                       [(s.board, s.device_id) for s, _ in sorted(batch.statuses, key=lambda e: e[0].device_id)
                        if s.board is not None])
        self._write_ota(db, batch)
        # A window written by an instance that has not seen the device's newest messages must not
        # take the newer one back: the highest sequence number wins.
        db.executemany("UPDATE devices SET seq_window = CASE WHEN ? >= high_seq THEN ? ELSE seq_window END, "
                       "high_seq = greatest(high_seq, ?) WHERE id = ?",
                       [(w.high, format(w.bits, "x"), w.high, dev) for dev, w in sorted(batch.windows.items())])
        self._write_faults(db, batch.faults, fault_event)
        db.executemany("INSERT INTO audit (at_ms, device_id, topic, reason, detail) VALUES (?, ?, ?, ?, ?)",
                       [(at, r.device_id, r.topic, r.reason.value, r.detail) for r, at in batch.rejects])
        self._quarantine(db, batch.quarantined)
        if any(s.changed for s in out):
            self._notify(db, "alarm")
        return out

    def _write_ota(self, db: Db, batch: Batch) -> None:
        """Update reports, in the order each device sent them. A report counts once: its seq must be
        after the device's last in the database (whichever instance took that one); it moves the
        device's entry for its bundle (in the newest rollout that offered that bundle) only forward
        (MOVES_FROM), so a late report never revives a withdrawn entry; confirmed, current and
        rolled_back name the firmware the button runs. The entries moved go to batch.ota_moved."""
        batch.ota_moved.clear()
        for st, at in sorted(batch.ota_reports, key=lambda e: e[0].device_id):
            if db.execute("UPDATE devices SET ota_status_seq = ? WHERE id = ? AND ota_status_seq < ? RETURNING id",
                          (st.seq, st.device_id, st.seq)).fetchone() is None:
                continue   # this report or a later one was taken already
            if st.state in ("confirmed", "current", "rolled_back") and st.firmware:
                db.execute("UPDATE devices SET firmware = ? WHERE id = ?", (st.firmware, st.device_id))
            state = STATE_OF_REPORT.get(st.state)
            if state is None or not st.id:
                continue
            froms = MOVES_FROM[state]
            r = db.execute(
                "UPDATE rollout_devices SET state = ?, detail = ?, updated_ms = greatest(updated_ms, ?) "
                f"WHERE device_id = ? AND bundle_id = ? AND state IN ({', '.join('?' * len(froms))}) "
                "AND rollout_id = (SELECT max(rollout_id) FROM rollout_devices WHERE device_id = ? AND bundle_id = ?) "
                "RETURNING rollout_id", (state, st.detail, at, st.device_id, st.id, *froms, st.device_id, st.id)
            ).fetchone()
            if r is not None:
                batch.ota_moved.append((int(r["rollout_id"]), st.device_id, st.id, state))

    def _quarantine(self, db: Db, entries: Sequence[Quarantined]) -> None:
        db.executemany(
            "INSERT INTO quarantine (device_id, topic, payload, digest, error, count, first_ms, last_ms) "
            "VALUES (?, ?, ?, ?, ?, 1, ?, ?) ON CONFLICT (digest) DO UPDATE SET count = quarantine.count + 1, "
            "last_ms = excluded.last_ms, error = excluded.error",
            [(q.device_id, q.topic, q.payload,
              hashlib.sha256(q.topic.encode("utf-8", "replace") + b"\0" + q.payload).hexdigest(),
              q.error[:500], q.at_ms, q.at_ms) for q in entries])

    async def quarantine(self, entries: Sequence[Quarantined]) -> None:
        await self._write(lambda db: self._quarantine(db, entries))

    def _write_faults(self, db: Db, changes: Sequence[FaultChange], fault_event: FaultEventMaker) -> None:
        """Record fault starts and clears. The table of active faults decides: a start of a fault
        already active, or a clear of one that is not, is dropped, so two instances that both saw
        a device come back report it once."""
        for ch in changes:
            if ch.active:
                effective = db.execute("INSERT INTO device_faults (device_id, fault, since_ms) VALUES (?, ?, ?) "
                                       "ON CONFLICT (device_id, fault) DO NOTHING RETURNING device_id",
                                       (ch.device_id, ch.fault.value, ch.at_ms)).fetchone()
            else:
                effective = db.execute("DELETE FROM device_faults WHERE device_id = ? AND fault = ? "
                                       "RETURNING device_id", (ch.device_id, ch.fault.value)).fetchone()
            if effective is None:
                continue
            number = _id(db.execute("INSERT INTO faults (device_id, fault, active, at_ms, detail) "
                                    "VALUES (?, ?, ?, ?, ?) RETURNING id",
                                    (ch.device_id, ch.fault.value, int(ch.active), ch.at_ms,
                                     json.dumps(ch.detail))).fetchone())
            event_id, body = fault_event(ch, number)
            db.executemany("INSERT INTO outbox (destination, device_id, event_id, kind, body, created_ms, "
                           "next_attempt_ms) VALUES (?, ?, ?, 'fault', ?, ?, ?)",
                           [(dest, ch.device_id, event_id, body, ch.at_ms, ch.at_ms) for dest in self.routes["fault"]])
        if changes:
            self._notify(db, "fault")

    async def record_faults(self, changes: Sequence[FaultChange], fault_event: FaultEventMaker) -> None:
        await self._write(lambda db: self._write_faults(db, changes, fault_event))

    # ------------------------------------------------------------ forwarding

    async def due_events(self, now_ms: int, limit: int, lane: Lane, destination: str = PRIMARY) -> list[OutboundEvent]:
        """Due events of one lane, oldest first, skipping any device whose earlier event is still
        waiting for a retry: a device's events reach the command center in the order they were
        stored. Refused events are out of the way (they wait for an operator, not for a retry).

        The alarm lane takes the waiting alarms and, ahead of each, its device's earlier faults (so
        that the device's order holds); it reads the alarms through their own index, never the
        fault backlog of a power cut. The fault lane takes the faults of devices with no alarm
        waiting. A fault both lanes take (its device's alarm came while the fault lane was sending
        it) goes twice: the command center's idempotency key makes that harmless. Each destination
        has its own queue: one slow destination never holds back another."""
        if lane == "alarm":
            return await self._read(lambda db: self._due_alarms(db, destination, now_ms, limit),
                                    urgent=destination == self.primary)
        return await self._read(lambda db: self._due_faults(db, destination, now_ms, limit))

    _EVENT = "SELECT id, kind, event_id, device_id, body, attempts, alarm_id, created_ms, next_attempt_ms FROM outbox"

    def _due_alarms(self, db: Db, destination: str, now_ms: int, limit: int) -> list[OutboundEvent]:
        alarms = db.execute(f"{self._EVENT} INDEXED BY outbox_alarms WHERE destination = ? AND kind = 'alarm' "
                            "AND refused_ms IS NULL AND next_attempt_ms <= ? ORDER BY id LIMIT ?",
                            (destination, now_ms, limit)).fetchall()
        if not alarms:
            return []
        last = {}
        for a in alarms:
            last[a["device_id"]] = a["id"]
        out: list[OutboundEvent] = []
        for rows in self._pending_events(db, destination, last).values():
            # The device's pending events up to its last alarm taken, in order; stop at the first
            # one that waits for a retry (or is not due): nothing of this device may overtake it.
            for r in rows:
                if r["next_attempt_ms"] > now_ms:
                    break
                out.append(_event(r))
        out.sort(key=lambda e: e.id)
        return out[:limit]

    def _pending_events(self, db: Db, destination: str, upto: dict[str, int]) -> dict[str, list[Any]]:
        """Each device's events not refused, up to the outbox id given for it, in order."""
        return {device_id: db.execute(f"{self._EVENT} WHERE destination = ? AND device_id = ? AND id <= ? "
                                      "AND refused_ms IS NULL ORDER BY id", (destination, device_id, last)).fetchall()
                for device_id, last in upto.items()}

    def _due_faults(self, db: Db, destination: str, now_ms: int, limit: int) -> list[OutboundEvent]:
        rows = db.execute(
            f"{self._EVENT} o WHERE o.destination = ? AND o.next_attempt_ms <= ? "
            "AND o.kind <> 'alarm' AND o.refused_ms IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM outbox a INDEXED BY outbox_device WHERE a.destination = o.destination "
            "AND a.device_id = o.device_id AND a.id > o.id AND a.kind = 'alarm' AND a.refused_ms IS NULL) "
            "AND NOT EXISTS (SELECT 1 FROM outbox w INDEXED BY outbox_device WHERE w.destination = o.destination "
            "AND w.device_id = o.device_id AND w.id < o.id AND w.refused_ms IS NULL AND w.next_attempt_ms > ?) "
            "ORDER BY o.id LIMIT ?", (destination, now_ms, now_ms, limit)).fetchall()
        return [_event(r) for r in rows]

    async def settle(self, delivered: Sequence[Delivery], retries: Sequence[Retry], now_ms: int,
                     destination: str = PRIMARY, primary: bool = True) -> None:
        """Record a round of deliveries to one destination in one transaction: each confirmed
        event's custody passes to the destination (a row in `deliveries`) and it leaves that
        destination's queue. The primary destination's answer is the alarm's forwarding time and
        incident id (what the button and the admin API show)."""
        def write(db: Db) -> None:
            db.executemany("INSERT INTO deliveries (destination, event_id, kind, device_id, delivered_ms, reference, "
                           "attempts) SELECT destination, event_id, kind, device_id, ?, ?, attempts + 1 FROM outbox "
                           "WHERE id = ? ON CONFLICT (destination, event_id) DO NOTHING",
                           [(now_ms, d.incident_id, d.outbox_id) for d in delivered])
            db.executemany("DELETE FROM outbox WHERE id = ?", [(d.outbox_id,) for d in delivered])
            if primary:
                db.executemany("UPDATE alarms SET forwarded_ms = ?, incident_id = coalesce(incident_id, ?) "
                               "WHERE id = ?",
                               [(now_ms, d.incident_id, d.alarm_id) for d in delivered if d.alarm_id is not None])
            db.executemany("UPDATE outbox SET attempts = attempts + ?, next_attempt_ms = ?, last_error = ? "
                           "WHERE id = ?", [(int(r.spend_attempt), r.next_ms, r.error[:300], r.outbox_id)
                                            for r in retries])
        # An alarm round's settlement is on the alarm path: until it is written, the alarm lane's
        # next query would find the same alarms again.
        await self._write(write, urgent=primary and any(d.alarm_id is not None for d in delivered))

    async def refuse(self, outbox_ids: Sequence[int], errors: Sequence[str], now_ms: int) -> None:
        """Events the command center refused for good: kept, out of the forwarding queue."""
        def write(db: Db) -> None:
            db.executemany("UPDATE outbox SET refused_ms = ?, attempts = attempts + 1, last_error = ? WHERE id = ?",
                           [(now_ms, e[:300], i) for i, e in zip(outbox_ids, errors, strict=True)])
        await self._write(write)

    async def requeue(self, outbox_id: int, now_ms: int, by: Person = IN_PROCESS) -> bool:
        """Send a refused event again (an operator fixed the cause)."""
        def write(db: Db) -> bool:
            row = db.execute("SELECT device_id, event_id, kind FROM outbox WHERE id = ? AND refused_ms IS NOT NULL",
                             (outbox_id,)).fetchone()
            if row is None:
                return False
            db.execute("UPDATE outbox SET refused_ms = NULL, next_attempt_ms = ? WHERE id = ?", (now_ms, outbox_id))
            _log_change(db, by, now_ms, "requeue", row["device_id"],
                        {"outbox_id": outbox_id, "event_id": row["event_id"], "kind": row["kind"]})
            self._notify(db, "alarm" if row["kind"] == "alarm" else "fault")
            return True
        return await self._write(write)

    async def outbox_depth(self) -> int:
        return await self._read(lambda db: _id(db.execute("SELECT count(*) FROM outbox WHERE refused_ms IS NULL")
                                                 .fetchone()))

    async def outbox_depths(self) -> dict[str, int]:
        """Events waiting, per destination (refused ones are not waiting)."""
        def read(db: Db) -> dict[str, int]:
            rows = db.execute("SELECT destination, count(*) FROM outbox WHERE refused_ms IS NULL "
                              "GROUP BY destination").fetchall()
            return {r[0]: int(r[1]) for r in rows}
        return await self._read(read)

    async def deliveries(self, event_id: str) -> list[dict[str, Any]]:
        """Where an event is: each destination that confirmed it, and each still waiting or refused."""
        def read(db: Db) -> list[dict[str, Any]]:
            done = db.execute("SELECT destination, kind, delivered_ms, reference, attempts FROM deliveries "
                              "WHERE event_id = ? ORDER BY destination", (event_id,)).fetchall()
            waiting = db.execute("SELECT destination, kind, attempts, next_attempt_ms, refused_ms, last_error "
                                 "FROM outbox WHERE event_id = ? ORDER BY destination", (event_id,)).fetchall()
            return ([{**dict(r), "status": "delivered"} for r in done]
                    + [{**dict(r), "status": "refused" if r["refused_ms"] is not None else "waiting"} for r in waiting])
        return await self._read(read)

    # ------------------------------------------------------------ state from the command center

    async def set_state(self, device_id: str, seq: int, state: str, rank: int, incident_id: str | None,
                        by: str | None, at_ms: int, state_event: StateEventMaker | None = None,
                        source: str | None = None) -> StoredAlarm | None:
        """Record a command-center state; states only move forward. None if the alarm is unknown.
        A change is queued, in the same transaction, for the destinations that follow states,
        except the one it came from (`source`)."""
        def write(db: Db) -> StoredAlarm | None:
            row = db.execute("SELECT id, device_id, seq, kind, test, lat_e6, lon_e6, address, area, received_ms, "
                             "group_id, state, state_rank, incident_id FROM alarms WHERE device_id = ? AND seq = ?",
                             (device_id, seq)).fetchone()
            if row is None:
                return None
            # Moves forward only if no other instance moved it further meanwhile (the WHERE).
            changed = db.execute("UPDATE alarms SET state = ?, state_rank = ?, state_ms = ?, "
                                 "incident_id = coalesce(?, incident_id) WHERE id = ? AND state_rank < ?",
                                 (state, rank, at_ms, incident_id, row["id"], rank)).rowcount == 1
            if changed:
                number = _id(db.execute("INSERT INTO state_log (alarm_id, state, incident_id, by, at_ms) "
                                        "VALUES (?, ?, ?, ?, ?) RETURNING id",
                                        (row["id"], state, incident_id, by, at_ms)).fetchone())
                followers = [d for d in self.routes["state"] if d != source]
                if followers and state_event is not None:
                    event_id, body = state_event(row, state, incident_id or row["incident_id"], by, at_ms, number)
                    db.executemany("INSERT INTO outbox (destination, device_id, event_id, kind, body, alarm_id, "
                                   "created_ms, next_attempt_ms) VALUES (?, ?, ?, 'state', ?, ?, ?, ?)",
                                   [(dest, device_id, event_id, body, row["id"], at_ms, at_ms) for dest in followers])
                    self._notify(db, "fault")
            return StoredAlarm(row["id"], device_id, seq, state if changed else row["state"],
                               incident_id or row["incident_id"], changed)
        return await self._write(write, urgent=True)  # the button waits for this state

    async def current_acks(self, since_ms: int) -> list[StoredAlarm]:
        """Each device's newest alarm, if it was stored or changed state since since_ms."""
        def read(db: Db) -> list[StoredAlarm]:
            rows = db.execute(
                "SELECT a.id, a.device_id, a.seq, a.state, a.incident_id FROM alarms a JOIN "
                "(SELECT device_id, max(seq) AS seq FROM alarms GROUP BY device_id) m "
                "ON m.device_id = a.device_id AND m.seq = a.seq "
                "WHERE greatest(a.received_ms, coalesce(a.state_ms, 0)) >= ?", (since_ms,)).fetchall()
            return [StoredAlarm(r["id"], r["device_id"], r["seq"], r["state"], r["incident_id"], False) for r in rows]
        return await self._read(read)

    # ------------------------------------------------------------ queries for the admin API

    # ------------------------------------------------------------ firmware over the air (protocol.md §11)

    def _lock_rollouts(self, db: Db) -> None:
        """Serialise, until the transaction ends, the transactions that change rollouts (a start,
        widening, resume, check, cancel or withdrawal), other instances' too: each reads what the one
        before it committed. SQLite has one writer and needs nothing; on PostgreSQL (READ COMMITTED,
        a pool of threads) a transaction-scoped advisory lock, as for sites (store_pg.py)."""

    def _touch_offers(self, db: Db) -> None:
        """The offers changed: the other instances reload theirs (ota_version)."""
        db.execute("UPDATE ota_changes SET version = version + 1 WHERE id = 1")

    async def add_bundle(self, bundle: NewBundle, *, now_ms: int, by: Person) -> tuple[bool, dict[str, Any]]:
        """Keep a checked bundle: (whether it is new, its entry). The same bundle again changes nothing.
        A new one is written to the fleet change log with the person."""
        def write(db: Db) -> tuple[bool, dict[str, Any]]:
            new = db.execute("SELECT 1 FROM firmware_bundles WHERE id = ?", (bundle.id,)).fetchone() is None
            if new:
                db.execute("INSERT INTO firmware_bundles (id, sha256, version, board, size, min_boot, manifest, "
                           "data, uploaded_ms, uploaded_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                           "ON CONFLICT (id) DO NOTHING",
                           (bundle.id, bundle.sha256, bundle.version, bundle.board, bundle.size, bundle.min_boot,
                            bundle.manifest, bundle.data, now_ms, by.name))
                _log_change(db, by, now_ms, "firmware-upload", None,
                            {"bundle": bundle.id, "version": bundle.version, "board": bundle.board,
                             "sha256": bundle.sha256})
            return new, self._bundle_rows(db, bundle.id)[0]
        return await self._write(write)

    def _bundle_rows(self, db: Db, bundle_id: str | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE id = ?", (bundle_id,)) if bundle_id else ("", ())
        rows = db.execute("SELECT id, sha256, version, board, size, min_boot, manifest, uploaded_ms, uploaded_by "
                          f"FROM firmware_bundles {where} ORDER BY uploaded_ms DESC, id", args).fetchall()
        return [{**dict(r), "manifest": json.loads(r["manifest"])} for r in rows]

    async def bundles(self) -> list[dict[str, Any]]:
        return await self._read(self._bundle_rows)

    async def bundle_data(self, bundle_ids: Sequence[str]) -> dict[str, bytes]:
        def read(db: Db) -> dict[str, bytes]:
            out = {}
            for bundle_id in bundle_ids:
                r = db.execute("SELECT data FROM firmware_bundles WHERE id = ?", (bundle_id,)).fetchone()
                if r is not None:
                    out[bundle_id] = bytes(r["data"])
            return out
        return await self._read(read)

    def _offers(self, db: Db, where: str, args: Sequence[Any]) -> list[Offer]:
        rows = db.execute("SELECT rd.device_id, rd.rollout_id, rd.offer_ver, rd.bundle_id, rd.state, rd.chunk, "
                          "b.version, b.sha256, b.size FROM rollout_devices rd "
                          "JOIN firmware_bundles b ON b.id = rd.bundle_id "
                          f"JOIN rollouts r ON r.id = rd.rollout_id WHERE {where} ORDER BY rd.device_id, rd.rollout_id",
                          args).fetchall()
        return [Offer(r["device_id"], r["rollout_id"], r["offer_ver"], r["bundle_id"], r["version"], r["sha256"],
                      r["size"], r["state"], r["chunk"]) for r in rows]

    async def live_offers(self) -> list[Offer]:
        """Every offer a button may still act on: offered, downloading or installed, in a rollout
        that is not cancelled, of a live device (one per device: the newest)."""
        def read(db: Db) -> list[Offer]:
            offers = self._offers(db, "rd.state IN ('offered', 'downloading', 'installed') AND r.state <> 'cancelled' "
                                      "AND rd.device_id IN (SELECT id FROM devices WHERE revoked_ms IS NULL)", ())
            return list({o.device_id: o for o in offers}.values())
        return await self._read(read)

    async def ota_version(self) -> int:
        """Grows with every change of the offers (any instance's): one that sees it grow reloads them."""
        return await self._read(lambda db: _id(db.execute("SELECT version FROM ota_changes WHERE id = 1").fetchone()))

    async def ota_status_seqs(self) -> dict[str, int]:
        def read(db: Db) -> dict[str, int]:
            rows = db.execute("SELECT id, ota_status_seq FROM devices WHERE ota_status_seq >= 0").fetchall()
            return {r["id"]: r["ota_status_seq"] for r in rows}
        return await self._read(read)

    def _next_offer_ver(self, db: Db, device_id: str) -> int:
        return int(db.execute("UPDATE devices SET ota_offer_ver = ota_offer_ver + 1 WHERE id = ? "
                              "RETURNING ota_offer_ver", (device_id,)).fetchone()[0])

    def _withdraw(self, db: Db, rollout_id: int, device_ids: Sequence[str], now_ms: int, why: str) -> list[Offer]:
        """Withdraw these devices' entries of the rollout (`why` in their detail): each a new offer
        version, whose withdrawal frame replaces the retained offer."""
        out = []
        for device_id in device_ids:
            ver = self._next_offer_ver(db, device_id)
            db.execute("UPDATE rollout_devices SET state = 'withdrawn', detail = ?, offer_ver = ?, updated_ms = ? "
                       "WHERE rollout_id = ? AND device_id = ?", (why, ver, now_ms, rollout_id, device_id))
            out.append(Offer(device_id, rollout_id, ver, state="withdrawn"))
        if out:
            self._touch_offers(db)
        return out

    def _eligible(self, db: Db, rollout_id: int, version: str) -> tuple[list[str], dict[str, str], set[str]]:
        """The rollout's devices in their order (those it targets and those it could), each device's
        bundle, and those it could offer the version to now: live, reporting a board with a bundle
        of the version, not running it, and that never failed with that bundle."""
        bundle_of_board = {r["board"]: r["id"] for r in db.execute(
            "SELECT board, id FROM firmware_bundles WHERE version = ? ORDER BY uploaded_ms, id", (version,)).fetchall()}
        rows = db.execute("SELECT id, board FROM devices WHERE revoked_ms IS NULL AND decommissioned_ms IS NULL "
                          "AND board IS NOT NULL AND (firmware IS NULL OR firmware <> ?)", (version,)).fetchall()
        failed = {(r["device_id"], r["bundle_id"]) for r in db.execute(
            "SELECT DISTINCT rd.device_id, rd.bundle_id FROM rollout_devices rd JOIN firmware_bundles b "
            "ON b.id = rd.bundle_id WHERE rd.state = 'failed' AND b.version = ?", (version,)).fetchall()}
        bundle = {r["id"]: bundle_of_board[r["board"]] for r in rows
                  if r["board"] in bundle_of_board and (r["id"], bundle_of_board[r["board"]]) not in failed}
        reachable = set(bundle)
        for r in db.execute("SELECT device_id, bundle_id FROM rollout_devices WHERE rollout_id = ?",
                            (rollout_id,)).fetchall():
            bundle[r["device_id"]] = r["bundle_id"]
        order = sorted(bundle, key=lambda d: hashlib.sha256(f"{rollout_id}:{d}".encode()).digest())
        return order, bundle, reachable

    async def start_rollout(self, version: str, percent: int, max_failed_percent: int | None, *, resume: bool,
                            allow_downgrade: bool = False, default_max_failed_percent: int = 20, chunk: int = 512,
                            now_ms: int, by: Person) -> tuple[bool, int, list[Offer], list[int]]:
        """Start the rollout of `version`, or widen (resume: also resume) the one under way: (whether
        it is new, its id, the offers and withdrawals to publish once this has committed, the other
        rollouts whose entries gave way to it). `max_failed_percent` None keeps the rollout's limit
        (a new one takes `default_max_failed_percent`); entries withdrawn at a halt are offered again
        (a new offer version) to the devices that can still take it. A device that runs a newer
        version than `version` refuses the whole request (reason "downgrade") unless allow_downgrade."""
        def write(db: Db) -> tuple[bool, int, list[Offer], list[int]]:
            self._lock_rollouts(db)
            if db.execute("SELECT 1 FROM firmware_bundles WHERE version = ?", (version,)).fetchone() is None:
                raise NotFound(f"no bundle of version {version} has been uploaded")
            r = db.execute("SELECT id, percent, state, max_failed_percent FROM rollouts WHERE version = ? "
                           "AND state IN ('active', 'halted') ORDER BY id DESC LIMIT 1", (version,)).fetchone()
            if r is None:
                if resume:
                    raise RolloutConflict(f"no halted rollout of version {version} to resume")
                limit = default_max_failed_percent if max_failed_percent is None else max_failed_percent
                rollout_id = int(db.execute(
                    "INSERT INTO rollouts (version, percent, state, max_failed_percent, created_ms, created_by, "
                    "updated_ms) VALUES (?, ?, 'active', ?, ?, ?, ?) RETURNING id",
                    (version, percent, limit, now_ms, by.name, now_ms)).fetchone()[0])
                new = True
                action: FleetAction = "rollout-start"
            else:
                rollout_id, new = int(r["id"]), False
                if r["state"] == "halted" and not resume:
                    raise RolloutConflict(f"rollout {rollout_id} of version {version} is halted: resume it explicitly")
                if percent < r["percent"]:
                    raise RolloutConflict(f"rollout {rollout_id} is at {r['percent']} %; a rollout only widens")
                limit = r["max_failed_percent"] if max_failed_percent is None else max_failed_percent
                db.execute("UPDATE rollouts SET percent = ?, state = 'active', updated_ms = ?, halted_reason = NULL, "
                           "max_failed_percent = ? WHERE id = ?", (percent, now_ms, limit, rollout_id))
                action = "rollout-resume" if r["state"] == "halted" else "rollout-widen"
            order, bundle, reachable = self._eligible(db, rollout_id, version)
            entries = {row["device_id"]: (row["state"], row["detail"]) for row in db.execute(
                "SELECT device_id, state, detail FROM rollout_devices WHERE rollout_id = ?", (rollout_id,)).fetchall()}
            want = -(-percent * len(order) // 100)
            fresh = [d for d in order[:want] if d not in entries]
            halted = [d for d, (state, detail) in entries.items()
                      if state == "withdrawn" and detail == WITHDRAWN_AT_HALT]
            again = [d for d in halted if d in reachable]
            if not allow_downgrade:
                self._refuse_downgrade(db, version, [*fresh, *again])
            if halted:   # those that cannot take it any more stay withdrawn, for good
                gone = [d for d in halted if d not in reachable]
                db.executemany("UPDATE rollout_devices SET detail = 'ineligible', updated_ms = ? "
                               "WHERE rollout_id = ? AND device_id = ?", [(now_ms, rollout_id, d) for d in gone])
            touched: set[int] = set()
            for device_id in sorted([*fresh, *again]):
                # One offer per device: an older rollout's offer it has not acted on yet gives way.
                for old in db.execute("UPDATE rollout_devices SET state = 'withdrawn', detail = 'superseded', "
                                      "updated_ms = ? WHERE device_id = ? AND rollout_id <> ? "
                                      "AND state IN ('offered', 'downloading') RETURNING rollout_id",
                                      (now_ms, device_id, rollout_id)).fetchall():
                    touched.add(int(old["rollout_id"]))
                ver = self._next_offer_ver(db, device_id)
                if device_id in entries:
                    db.execute("UPDATE rollout_devices SET state = 'offered', detail = '', offer_ver = ?, chunk = ?, "
                               "updated_ms = ? WHERE rollout_id = ? AND device_id = ?",
                               (ver, chunk, now_ms, rollout_id, device_id))
                else:
                    db.execute("INSERT INTO rollout_devices (rollout_id, device_id, bundle_id, offer_ver, chunk, "
                               "state, detail, updated_ms) VALUES (?, ?, ?, ?, ?, 'offered', '', ?)",
                               (rollout_id, device_id, bundle[device_id], ver, chunk, now_ms))
            db.execute("UPDATE rollouts SET eligible = ? WHERE id = ?", (len(order), rollout_id))
            changed = set(fresh) | set(again)
            offers = [o for o in self._offers(db, "rd.rollout_id = ? AND rd.state = 'offered'", (rollout_id,))
                      if o.device_id in changed]
            self._touch_offers(db)
            _log_change(db, by, now_ms, action, None,
                        {"rollout": rollout_id, "version": version, "percent": percent, "max_failed_percent": limit,
                         "offered": len(offers), **({"allow_downgrade": True} if allow_downgrade else {})})
            return new, rollout_id, offers, sorted(touched - {rollout_id})
        try:
            return await self._write(write)
        except self.integrity_errors:
            # Two requests at once on a database without the lock: the second finds the first's rollout.
            raise RolloutConflict(f"another rollout of version {version} was started at the same time: "
                                  "try again") from None

    def _refuse_downgrade(self, db: Db, version: str, device_ids: Sequence[str]) -> None:
        target = _version_key(version)
        if not device_ids or target is None:
            return
        newer = []
        for device_id in device_ids:
            r = db.execute("SELECT firmware FROM devices WHERE id = ?", (device_id,)).fetchone()
            running = _version_key(r["firmware"] if r is not None else None)
            if running is not None and running > target:
                newer.append((device_id, r["firmware"]))
        if newer:
            device_id, firmware = min(newer)
            raise RolloutConflict(f"{len(newer)} of the devices it would reach run newer firmware than {version} "
                                  f"({device_id} runs {firmware}): set allow_downgrade (siaga fleet update "
                                  "--allow-downgrade) to roll it out all the same",
                                  "downgrade")

    async def check_rollout(self, rollout_id: int, now_ms: int, *, halt: bool = True) -> tuple[str, list[Offer]]:
        """Halt the rollout when too many of its devices failed (withdrawing the offers not acted on
        yet), or mark it done: at 100 %, none of its entries live or withdrawn at a halt. Withdrawn
        entries are in neither count. Only a new failure halts (`halt`: after reports), so a rollout
        just resumed is not halted again by the failures that halted it. (what happened: "halted",
        "done" or "", the withdrawals to publish.)"""
        def write(db: Db) -> tuple[str, list[Offer]]:
            self._lock_rollouts(db)
            r = db.execute("SELECT percent, state, max_failed_percent FROM rollouts WHERE id = ?",
                           (rollout_id,)).fetchone()
            if r is None or r["state"] != "active":
                return "", []
            counts = dict.fromkeys(ROLLOUT_STATES, 0)
            for row in db.execute("SELECT state, count(*) AS n FROM rollout_devices WHERE rollout_id = ? "
                                  "GROUP BY state", (rollout_id,)).fetchall():
                counts[row["state"]] = row["n"]
            targeted = sum(counts.values()) - counts["withdrawn"]
            if halt and counts["failed"] * 100 > r["max_failed_percent"] * targeted:
                db.execute("UPDATE rollouts SET state = 'halted', halted_reason = 'failures', updated_ms = ? "
                           "WHERE id = ?", (now_ms, rollout_id))
                waiting = [row["device_id"] for row in db.execute(
                    "SELECT device_id FROM rollout_devices WHERE rollout_id = ? AND state = 'offered' "
                    "ORDER BY device_id", (rollout_id,)).fetchall()]
                db.execute("INSERT INTO audit (at_ms, device_id, topic, reason, detail) VALUES (?, NULL, ?, ?, ?)",
                           (now_ms, f"rollout/{rollout_id}", "rollout_halted",
                            f"{counts['failed']} of {targeted} devices failed, more than {r['max_failed_percent']} %"))
                return "halted", self._withdraw(db, rollout_id, waiting, now_ms, WITHDRAWN_AT_HALT)
            live = sum(counts[s] for s in LIVE_OFFER)
            if r["percent"] == 100 and live == 0 and db.execute(
                    "SELECT 1 FROM rollout_devices WHERE rollout_id = ? AND state = 'withdrawn' AND detail = ? "
                    "LIMIT 1", (rollout_id, WITHDRAWN_AT_HALT)).fetchone() is None:
                db.execute("UPDATE rollouts SET state = 'done', updated_ms = ? WHERE id = ?", (now_ms, rollout_id))
                return "done", []
            return "", []
        return await self._write(write)

    async def cancel_rollout(self, rollout_id: int, now_ms: int, by: Person) -> list[Offer]:
        """Cancel a rollout that is active or halted: its offers not yet installed are withdrawn."""
        def write(db: Db) -> list[Offer]:
            self._lock_rollouts(db)
            r = db.execute("SELECT state, version FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
            if r is None:
                raise NotFound(f"no rollout {rollout_id}")
            if r["state"] not in ("active", "halted"):
                raise RolloutConflict(f"rollout {rollout_id} is already {r['state']}")
            db.execute("UPDATE rollouts SET state = 'cancelled', updated_ms = ?, halted_reason = coalesce("
                       "halted_reason, 'cancelled') WHERE id = ?", (now_ms, rollout_id))
            waiting = [row["device_id"] for row in db.execute(
                "SELECT device_id FROM rollout_devices WHERE rollout_id = ? AND state IN ('offered', 'downloading') "
                "ORDER BY device_id", (rollout_id,)).fetchall()]
            _log_change(db, by, now_ms, "rollout-cancel", None,
                        {"rollout": rollout_id, "version": r["version"], "withdrawn": len(waiting)})
            self._touch_offers(db)
            return self._withdraw(db, rollout_id, waiting, now_ms, "cancelled")
        return await self._write(write)

    async def withdraw_device(self, device_id: str, why: str, now_ms: int) -> list[Offer]:
        """A revoked or decommissioned device leaves the rollouts under way: its live entries are
        withdrawn (`why` in their detail), so that they neither wait nor count."""
        def write(db: Db) -> list[Offer]:
            self._lock_rollouts(db)
            out = []
            for r in db.execute("SELECT rd.rollout_id FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id "
                                "WHERE rd.device_id = ? AND rd.state IN ('offered', 'downloading', 'installed') "
                                "AND r.state IN ('active', 'halted') ORDER BY rd.rollout_id", (device_id,)).fetchall():
                out += self._withdraw(db, int(r["rollout_id"]), [device_id], now_ms, why)
            return out
        return await self._write(write)

    async def rollouts(self, rollout_id: int | None = None, *, limit: int = ROLLOUTS_LISTED) -> list[dict[str, Any]]:
        """Rollouts, newest first, with their counts: those under way or halted and the newest
        `limit` others; one (rollout_id) also with its devices. One query per list for the counts;
        `eligible` is what the rollout could reach when it was last started or widened."""
        columns = ("SELECT id, version, percent, state, max_failed_percent, halted_reason, created_ms, created_by, "
                   "updated_ms, eligible FROM rollouts ")

        def read(db: Db) -> list[dict[str, Any]]:
            if rollout_id is not None:
                rows = db.execute(columns + "WHERE id = ?", (rollout_id,)).fetchall()
            else:
                rows = [*db.execute(columns + "WHERE state IN ('active', 'halted') ORDER BY id DESC").fetchall(),
                        *db.execute(columns + "WHERE state NOT IN ('active', 'halted') ORDER BY id DESC LIMIT ?",
                                    (limit,)).fetchall()]
                rows.sort(key=lambda r: -r["id"])
            counts: dict[int, dict[str, int]] = {r["id"]: dict.fromkeys(ROLLOUT_STATES, 0) for r in rows}
            if counts:
                marks = ", ".join("?" * len(counts))
                for row in db.execute(f"SELECT rollout_id, state, count(*) AS n FROM rollout_devices WHERE rollout_id "
                                      f"IN ({marks}) GROUP BY rollout_id, state", tuple(counts)).fetchall():
                    counts[row["rollout_id"]][row["state"]] = row["n"]
            out = []
            for r in rows:
                entry = {**dict(r), "counts": counts[r["id"]], "targeted": sum(counts[r["id"]].values())}
                if rollout_id is not None:
                    entry["devices"] = [dict(d) for d in db.execute(
                        "SELECT device_id, state, detail, updated_ms FROM rollout_devices WHERE rollout_id = ? "
                        "ORDER BY device_id", (r["id"],)).fetchall()]
                out.append(entry)
            return out
        return await self._read(read)

    async def firmware_versions(self) -> dict[str, int]:
        """How many live devices report each firmware version."""
        def read(db: Db) -> dict[str, int]:
            rows = db.execute("SELECT firmware, count(*) AS n FROM devices WHERE revoked_ms IS NULL "
                              "AND firmware IS NOT NULL GROUP BY firmware ORDER BY firmware").fetchall()
            return {r["firmware"]: r["n"] for r in rows}
        return await self._read(read)

    async def rollout_buttons(self, rollout_ids: Sequence[int], *,
                              limit: int = ROLLOUT_BUTTONS_LISTED) -> tuple[list[dict[str, Any]], int]:
        """The buttons of these rollouts, each with its state in the rollout and what its heartbeats
        say (firmware, board): the failed first, then those under way (downloading, installed, then
        offered), then the updated and the withdrawn; the latest change first within each. At most
        `limit` of them, in one query, and how many there are in all."""
        if not rollout_ids:
            return [], 0
        marks = ", ".join("?" * len(rollout_ids))

        def read(db: Db) -> tuple[list[dict[str, Any]], int]:
            rows = db.execute(
                "SELECT rd.device_id, rd.rollout_id, rd.state, rd.detail, rd.updated_ms, d.firmware, d.board, "
                "count(*) OVER () AS total FROM rollout_devices rd JOIN devices d ON d.id = rd.device_id "
                f"WHERE rd.rollout_id IN ({marks}) ORDER BY CASE rd.state WHEN 'failed' THEN 0 "
                "WHEN 'downloading' THEN 1 WHEN 'installed' THEN 1 WHEN 'offered' THEN 2 WHEN 'updated' THEN 3 "
                "ELSE 4 END, rd.updated_ms DESC, rd.rollout_id DESC, rd.device_id LIMIT ?",
                (*rollout_ids, limit)).fetchall()
            total = int(rows[0]["total"]) if rows else 0
            return [{"device_id": r["device_id"], "rollout": int(r["rollout_id"]), "state": r["state"],
                     "detail": r["detail"], "firmware": r["firmware"], "board": r["board"],
                     "updated_ms": int(r["updated_ms"])} for r in rows], total
        return await self._read(read)

    async def record_audit(self, at_ms: int, device_id: str | None, topic: str, reason: str, detail: str) -> None:
        def write(db: Db) -> None:
            db.execute("INSERT INTO audit (at_ms, device_id, topic, reason, detail) VALUES (?, ?, ?, ?, ?)",
                       (at_ms, device_id, topic[:128], reason, detail[:500]))
        await self._write(write)

    async def alarms(self, *, device_id: str | None, limit: int) -> list[dict[str, Any]]:
        def read(db: Db) -> list[dict[str, Any]]:
            where, args = ("WHERE device_id = ?", (device_id,)) if device_id else ("", ())
            rows = db.execute(
                "SELECT id, device_id, seq, kind, test, lat_e6, lon_e6, address, area, raised_ts, received_ms, "
                f"group_id, press_count, state, state_ms, incident_id, forwarded_ms FROM alarms {where} "
                "ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
            return [{**dict(r), "test": bool(r["test"])} for r in rows]
        return await self._read(read)

    async def groups(self, limit: int) -> list[dict[str, Any]]:
        def read(db: Db) -> list[dict[str, Any]]:
            rows = db.execute("SELECT id, site, opened_ms, last_ms, presses, sources FROM incident_groups "
                              "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
            return [{**dict(r), "sources": json.loads(r["sources"])} for r in rows]
        return await self._read(read)

    async def audit(self, limit: int, reason: str | None = None) -> list[dict[str, Any]]:
        def read(db: Db) -> list[dict[str, Any]]:
            where, args = ("WHERE reason = ?", (reason,)) if reason else ("", ())
            rows = db.execute(f"SELECT at_ms, device_id, topic, reason, detail FROM audit {where} "
                              "ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
            return [dict(r) for r in rows]
        return await self._read(read)

    async def quarantined(self, limit: int) -> list[dict[str, Any]]:
        def read(db: Db) -> list[dict[str, Any]]:
            rows = db.execute("SELECT id, device_id, topic, payload, error, count, first_ms, last_ms "
                              "FROM quarantine ORDER BY last_ms DESC, id DESC LIMIT ?", (limit,)).fetchall()
            return [{**dict(r), "payload": bytes(r["payload"])} for r in rows]
        return await self._read(read)

    async def refused(self, limit: int) -> list[dict[str, Any]]:
        def read(db: Db) -> list[dict[str, Any]]:
            rows = db.execute("SELECT id, destination, kind, event_id, device_id, created_ms, refused_ms, attempts, "
                              "last_error FROM outbox WHERE refused_ms IS NOT NULL "
                              "ORDER BY refused_ms DESC, id DESC LIMIT ?", (limit,)).fetchall()
            return [dict(r) for r in rows]
        return await self._read(read)


def _greatest(a: Any, b: Any) -> Any:
    """PostgreSQL's greatest() for SQLite (two arguments; NULL is ignored, as there)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if a >= b else b


class SQLiteStore(SQLStore):
    def __init__(self, path: str | Path, *, group_window_ms: int = 300_000) -> None:
        super().__init__(group_window_ms=group_window_ms)
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._pool: DatabaseThread | None = None

    async def _call(self, fn: Callable[..., T], *args: Any, urgent: bool = False) -> T:
        if self._pool is None:
            raise StoreError("store is not open")
        return await asyncio.wrap_future(self._pool.submit(urgent, fn, *args))

    @property
    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None
        return self._db

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    async def _read(self, fn: Callable[[Db], T], *, urgent: bool = False) -> T:
        return await self._call(lambda: fn(self._conn), urgent=urgent)

    async def _write(self, fn: Callable[[Db], T], *, urgent: bool = False) -> T:
        return await self._call(self._tx, fn, urgent=urgent)

    async def open(self) -> None:
        self._pool = DatabaseThread("siaga-store")
        try:
            await self._call(self._open)
        except BaseException:
            self._pool.shutdown()
            self._pool = None
            raise

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the MQTT ack goes out, even across a power cut
            # (NORMAL in WAL mode may lose the last transactions on power loss, though not on a crash).
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
            db.create_function("greatest", 2, _greatest, deterministic=True)
            self._db = db
            self._tx(lambda db: self._migrate(db, str(self.path)))
        except BaseException:
            db.close()
            self._db = None
            raise

    def _schema_version(self, db: Db) -> int:
        return int(db.execute("PRAGMA user_version").fetchone()[0])

    def _set_schema_version(self, db: Db, version: int) -> None:
        db.execute(f"PRAGMA user_version = {int(version)}")  # PRAGMA takes no bound parameters

    async def close(self) -> None:
        if self._pool is not None:
            await self._call(self._close)
            self._pool.shutdown()
            self._pool = None

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def open_store(db: str | Path, *, group_window_ms: int = 300_000) -> Store:
    """The store a `db` setting names: a postgresql:// URL, or the path of a SQLite file."""
    if is_postgres(db):
        from .store_pg import PostgresStore  # psycopg is needed only here
        return PostgresStore(str(db), group_window_ms=group_window_ms)
    return SQLiteStore(db, group_window_ms=group_window_ms)

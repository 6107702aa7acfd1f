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

The callers see one object, `Store`, opened here (with the migration runner); its methods come from
one module per concern:
- records.py: the errors and the records the store takes and returns;
- base.py: the database a Store holds: transactions, retried writes, telling the other processes;
- changes.py: what a committed write tells the other processes (`Change`, NOTIFY payloads);
- intake.py: alarm events into incidents (the intake plan);
- faults.py: device fault reports and the current faults;
- actions.py: operator actions on an incident, and notes;
- dispatches.py: agencies dispatched to an incident, their answers, and the unanswered ones;
- escalation.py: incidents nobody acknowledged in time;
- queries.py: reading incidents, their events and their history;
- outboxes.py: the rows the senders deliver (state reports to the gateway, webhook events);
- sessions.py: browser sessions;
- shifts.py: who is on duty, handovers, and the times the per-operator figures are made of;
- retention.py: removing the personal details of incidents closed long ago, keeping their figures;
- preferences.py: what each person chose for themselves (the console's language);
- audit.py: the audit log.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..engine import Database, PostgresDatabase, SqliteDatabase, StoreError, is_postgresql_url
from ..schema import MIGRATIONS
from .actions import IncidentActions
from .audit import AuditLog
from .changes import CHANGES_CHANNEL, Change, ChangeKind, FaultNote, Wake
from .dispatches import DispatchActions
from .escalation import Escalations
from .faults import Faults
from .intake import Intake
from .outboxes import Outboxes
from .preferences import Preferences
from .queries import IncidentQueries
from .records import (
    CALLBACK_OUTBOX,
    SECOND_LEVEL_KIND,
    SECOND_WEBHOOK_OUTBOX,
    WEBHOOK_OUTBOX,
    AlarmEvent,
    AuditEntry,
    DeviceFault,
    Dispatch,
    DispatchExistsError,
    DispatchHistoryEntry,
    DispatchNotFoundError,
    FaultOutcome,
    HistoryEntry,
    Incident,
    IncidentNotFoundError,
    IntakeOutcome,
    InvalidDispatchMoveError,
    InvalidTransitionError,
    NewAlarm,
    NewFault,
    Outbox,
    OutboxRow,
    SchemaTooNewError,
    Session,
)
from .retention import Retention
from .sessions import Sessions
from .shifts import Shifts

__all__ = [
    "CALLBACK_OUTBOX",
    "CHANGES_CHANNEL",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SECOND_LEVEL_KIND",
    "SECOND_WEBHOOK_OUTBOX",
    "WEBHOOK_OUTBOX",
    "AlarmEvent",
    "AuditEntry",
    "Change",
    "ChangeKind",
    "DeviceFault",
    "Dispatch",
    "DispatchExistsError",
    "DispatchHistoryEntry",
    "DispatchNotFoundError",
    "FaultNote",
    "FaultOutcome",
    "HistoryEntry",
    "Incident",
    "IncidentNotFoundError",
    "IntakeOutcome",
    "InvalidDispatchMoveError",
    "InvalidTransitionError",
    "NewAlarm",
    "NewFault",
    "Outbox",
    "OutboxRow",
    "SchemaTooNewError",
    "Session",
    "Store",
    "StoreError",
    "Wake",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = len(MIGRATIONS)


class Store(
    Intake, Faults, IncidentActions, DispatchActions, Escalations,
    IncidentQueries, Outboxes, Sessions, Preferences, Shifts, Retention, AuditLog,
):
    """All database access. Use `await Store.open(path or postgresql:// URL)` and `await store.close()`."""

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

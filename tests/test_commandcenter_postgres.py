"""The command center's store on both engines, and what several processes on one PostgreSQL
database rely on.

The store cases run twice through the `store_target` fixture: on a SQLite file and on a fresh
PostgreSQL database of the private server in tests/support/postgres.py (real engines, nothing mocked). The
PostgreSQL-only cases open two `Store`s (two connection pools, as two processes have) on one
database: concurrent intake of the same alarms, concurrent actions, migrations started together,
the change relay (LISTEN/NOTIFY) with a dropped connection, and the election of the one process that
runs the background loops. The configuration of all this is at the end.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from siaga.commandcenter import store as store_module
from siaga.commandcenter.cluster import Leadership
from siaga.commandcenter.config import CCConfig, Role
from siaga.commandcenter.deps import Principal
from siaga.commandcenter.domain import Action, IncidentState, incident_ref
from siaga.commandcenter.engine import pyformat, redacted
from siaga.commandcenter.live import Broadcaster, LiveEvent, Relay
from siaga.commandcenter.schema import MIGRATIONS, for_postgresql
from siaga.commandcenter.store import (
    CALLBACK_OUTBOX,
    Change,
    FaultNote,
    IncidentNotFoundError,
    InvalidTransitionError,
    NewAlarm,
    NewFault,
    SchemaTooNewError,
    Store,
)
from siaga.settings import ConfigError
from tests.test_commandcenter import _MINIMAL, _write_config

NOW = datetime(2026, 11, 24, 3, 12, 10, tzinfo=UTC)
OPERATOR = Principal("operator-1", Role.OPERATOR, None)


def new_alarm(seq: int, device: str = "jkt-menteng-0042", *, key: str | None = None, **changes: Any) -> NewAlarm:
    fields: dict[str, Any] = {
        "event_id": f"gw-1:{device}:{seq}",
        "gateway_id": "gw-1",
        "device_id": device,
        "seq": seq,
        "kind": "medical",
        "test": False,
        "lat": -6.195733,
        "lon": 106.832085,
        "address": "Jl. Menteng Raya 12 (50% ?)",  # a % and a ? must pass through as text
        "area": "31.71.06.1001",
        "raised_at": None,
        "received_at": NOW,
        "fingerprint": f"fp-{device}-{seq}",
        "incident_key": key,
        "press_count": None if key is None else 1,
        "sources": None,
    }
    fields.update(changes)
    return NewAlarm(**fields)


def new_fault(n: int, *, active: bool = True, at: datetime = NOW, battery: int | None = None) -> NewFault:
    return NewFault(
        event_id=f"gw-1:fault:{n}",
        gateway_id="gw-1",
        device_id="jkt-menteng-0042",
        fault="low_battery",
        active=active,
        at=at,
        detail={} if battery is None else {"battery_mv": battery},
        location=None,
        fingerprint=f"fault-{n}",
    )


# ---- the two engines ---------------------------------------------------------------------------------



@pytest.fixture
async def store(store_target: str | Path) -> AsyncIterator[Store]:
    opened = await Store.open(store_target)
    try:
        yield opened
    finally:
        await opened.close()


def rows(target: str | Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """A query outside the store, with a plain driver: `?` placeholders on both engines."""
    if isinstance(target, str):
        with psycopg.connect(target) as conn:
            return [tuple(r) for r in conn.execute(pyformat(sql), params).fetchall()]
    with closing(sqlite3.connect(target)) as db:
        return db.execute(sql, params).fetchall()


def stored_version(target: str | Path) -> int:
    if isinstance(target, str):
        return int(rows(target, "SELECT version FROM schema_version")[0][0])
    return int(rows(target, "PRAGMA user_version")[0][0])


def set_stored_version(target: str | Path, version: int) -> None:
    if isinstance(target, str):
        with psycopg.connect(target) as conn:
            conn.execute("UPDATE schema_version SET version = %s", (version,))
    else:
        with closing(sqlite3.connect(target)) as db:
            db.execute(f"PRAGMA user_version = {version}")


async def test_intake_is_idempotent(store: Store, store_target: str | Path) -> None:
    first = await store.record_alarm(new_alarm(1), now=NOW)
    again = await store.record_alarm(new_alarm(1), now=NOW + timedelta(seconds=5))
    other_body = await store.record_alarm(new_alarm(1, fingerprint="something else"), now=NOW)
    assert (first.created, first.opened, first.same_body) == (True, True, True)
    assert (again.created, again.incident, again.same_body) == (False, first.incident, True)
    assert (other_body.created, other_body.same_body) == (False, False)
    # Repeats inside one batch too: the batch's first occurrence counts.
    batch = await store.record_alarms([new_alarm(2), new_alarm(2), new_alarm(1)], now=NOW)
    assert [o.created for o in batch] == [True, False, False]
    assert batch[1].incident == batch[0].incident
    assert rows(store_target, "SELECT COUNT(*) FROM alarms") == [(2,)]
    [incident] = await store.get_incidents([first.incident])
    assert (incident.lat, incident.lon, incident.address) == (-6.195733, 106.832085, "Jl. Menteng Raya 12 (50% ?)")


async def test_incident_numbers_ascend_and_grouping_attaches(store: Store) -> None:
    outcomes = await store.record_alarms(
        [new_alarm(1, key="g1"), new_alarm(2, "jkt-menteng-0043", key="g1"), new_alarm(3), new_alarm(4, key="g2")],
        now=NOW,
    )
    numbers = [o.incident for o in outcomes]
    assert numbers[0] == numbers[1] < numbers[2] < numbers[3]
    assert [o.opened for o in outcomes] == [True, False, True, True]
    grouped = await store.get_incident(numbers[0])
    assert grouped is not None
    assert (grouped.event_count, grouped.sources) == (2, ("jkt-menteng-0042", "jkt-menteng-0043"))
    # Numbering continues after the highest one; a closed incident's key opens a new incident.
    await store.apply_action(numbers[0], Action.FALSE_ALARM, actor="operator-1", now=NOW)
    later = await store.record_alarm(new_alarm(5, key="g1"), now=NOW)
    assert later.opened
    assert later.incident > numbers[3]


async def test_actions_move_incidents_and_queue_one_report_per_event(store: Store, store_target: str | Path) -> None:
    [a, b] = await store.record_alarms([new_alarm(1, key="g"), new_alarm(2, "jkt-menteng-0043", key="g")], now=NOW)
    number = a.incident
    acked = await store.apply_action(number, Action.ACKNOWLEDGE, actor="operator-1", now=NOW)
    assert (acked.state, acked.acknowledged_by) == (IncidentState.ACKNOWLEDGED, "operator-1")
    with pytest.raises(InvalidTransitionError):
        await store.apply_action(number, Action.ACKNOWLEDGE, actor="operator-2", now=NOW)
    dispatched = await store.apply_action(number, Action.DISPATCH, actor="operator-1", now=NOW, agency="fire")
    assert (dispatched.state, dispatched.agency) == (IncidentState.DISPATCHED, "fire")
    noted = await store.add_note(number, "two units on site", actor="operator-1", now=NOW)
    assert noted.state is IncidentState.DISPATCHED
    # A button joining an incident already acted on is told at once.
    joined = await store.record_alarm(new_alarm(3, "jkt-menteng-0044", key="g"), now=NOW)
    assert (joined.incident, joined.reported) == (number, True)
    await store.apply_action(number, Action.RESOLVE, actor="operator-1", now=NOW)
    with pytest.raises(IncidentNotFoundError):
        await store.apply_action(9999, Action.ACKNOWLEDGE, actor="operator-1", now=NOW)

    history = await store.incident_history(number)
    assert [(h.kind, h.to_state.value) for h in history] == [
        ("state", "new"), ("state", "acknowledged"), ("state", "dispatched"), ("note", "dispatched"),
        ("state", "resolved"),
    ]
    assert rows(store_target, "SELECT event_id, state FROM callback_outbox ORDER BY id") == [
        (a.event_id, "acknowledged"), (b.event_id, "acknowledged"),
        (a.event_id, "dispatched"), (b.event_id, "dispatched"),
        ("gw-1:jkt-menteng-0044:3", "dispatched"),
        (a.event_id, "resolved"), (b.event_id, "resolved"), ("gw-1:jkt-menteng-0044:3", "resolved"),
    ]
    assert [e.event_id for e in await store.incident_events(number)] == [
        a.event_id, b.event_id, "gw-1:jkt-menteng-0044:3"
    ]


async def test_outbox_rows_are_due_one_per_key_in_order(store: Store) -> None:
    [a] = await store.record_alarms([new_alarm(1)], now=NOW)
    [b] = await store.record_alarms([new_alarm(2, "jkt-menteng-0043")], now=NOW)
    for action in (Action.ACKNOWLEDGE, Action.RESOLVE):
        await store.apply_action(a.incident, action, actor="operator-1", now=NOW)
    await store.apply_action(b.incident, Action.ACKNOWLEDGE, actor="operator-1", now=NOW)
    clock = NOW.timestamp()
    due = await store.due(CALLBACK_OUTBOX, clock, 10)
    assert [(r.key, json.loads(r.body)["state"]) for r in due] == [
        (a.event_id, "acknowledged"), (b.event_id, "acknowledged")
    ]
    assert await store.pending_callbacks() == 3
    assert await store.next_due(CALLBACK_OUTBOX) == pytest.approx(clock)

    # A failed row is rescheduled and holds up the later report of its own event only.
    await store.mark_failed(CALLBACK_OUTBOX, due[0].id, now=NOW, next_attempt_at=clock + 60, error="HTTP 503")
    await store.mark_delivered(CALLBACK_OUTBOX, due[1].id, now=NOW)
    assert await store.due(CALLBACK_OUTBOX, clock + 1, 10) == []
    assert await store.next_due(CALLBACK_OUTBOX) == pytest.approx(clock + 60)
    [retry] = await store.due(CALLBACK_OUTBOX, clock + 61, 10)
    assert (retry.id, retry.attempts) == (due[0].id, 1)
    await store.mark_delivered(CALLBACK_OUTBOX, retry.id, now=NOW)
    [resolved] = await store.due(CALLBACK_OUTBOX, clock + 61, 10)
    assert json.loads(resolved.body)["state"] == "resolved"
    await store.mark_delivered(CALLBACK_OUTBOX, resolved.id, now=NOW)
    assert (await store.pending_callbacks(), await store.next_due(CALLBACK_OUTBOX)) == (0, None)


async def test_sessions_and_audit(store: Store) -> None:
    session = await store.create_session("h1", operator="operator-1", csrf_token="c", credential="cred", now=NOW,
                                         ttl=timedelta(hours=1))
    assert await store.get_session("h1", now=NOW) == session
    assert await store.get_session("h1", now=NOW + timedelta(hours=2)) is None  # expired
    await store.create_session("h2", operator="operator-2", csrf_token="d", credential="c2",
                               now=NOW + timedelta(hours=2), ttl=timedelta(hours=1))  # drops the expired one
    assert await store.get_session("h1", now=NOW) is None
    await store.delete_session("h2", actor="operator-2", now=NOW + timedelta(hours=2))
    assert await store.get_session("h2", now=NOW + timedelta(hours=2)) is None

    await store.audit(actor="supervisor-1", action="export", now=NOW, target="2026-11", detail={"rows": 3})
    await store.audit_many([(f"2026-11-24T03:13:0{i}.000Z", "x", "login_failed", "127.0.0.1", {"attempts": i})
                            for i in range(3)])
    entries = await store.audit_entries(limit=3)
    assert [e.action for e in entries] == ["login_failed"] * 3
    older = await store.audit_entries(limit=10, before_id=entries[-1].id)
    assert [e.action for e in older] == ["export", "logout", "login", "login"]
    assert older[0].detail == {"rows": 3}


async def test_faults_and_batteries(store: Store) -> None:
    created = await store.record_faults([new_fault(1, battery=3500), new_fault(1, battery=3500)], now=NOW)
    assert [o.created for o in created] == [True, False]
    # An older "cleared" that arrives late does not clear the newer "active".
    await store.record_fault(new_fault(2, active=False, at=NOW - timedelta(minutes=5)), now=NOW)
    [fault] = await store.active_faults()
    assert (fault.fault, fault.active, fault.detail) == ("low_battery", True, {"battery_mv": 3500})
    [a] = await store.record_alarms([new_alarm(1)], now=NOW)
    incident = await store.get_incident(a.incident)
    assert incident is not None and incident.battery_mv == 3500


async def test_escalation_marks_each_incident_once(store: Store, store_target: str | Path) -> None:
    [a] = await store.record_alarms([new_alarm(1)], now=NOW)
    assert await store.next_escalation_due(after_s=60) == NOW + timedelta(seconds=60)
    assert await store.escalate_due(now=NOW + timedelta(seconds=30), after_s=60) == []
    [escalated] = await store.escalate_due(now=NOW + timedelta(seconds=61), after_s=60,
                                           webhook_body=lambda i, at: json.dumps({"incident": i.ref}))
    assert escalated.number == a.incident and escalated.escalated_at is not None
    assert await store.escalate_due(now=NOW + timedelta(seconds=120), after_s=60) == []
    assert await store.next_escalation_due(after_s=60) is None
    assert rows(store_target, "SELECT incident_id, kind FROM webhook_outbox") == [(incident_ref(a.incident),
                                                                              "incident.escalated")]


async def test_migrations_reach_the_current_version_and_reopen(store_target: str | Path) -> None:
    for _ in range(2):
        opened = await Store.open(store_target)
        await opened.close()
    assert stored_version(store_target) == store_module.SCHEMA_VERSION == len(MIGRATIONS)


async def test_a_newer_schema_is_refused_and_left_alone(store_target: str | Path) -> None:
    opened = await Store.open(store_target)
    await opened.close()
    set_stored_version(store_target, store_module.SCHEMA_VERSION + 1)
    with pytest.raises(SchemaTooNewError, match="newer than this command center knows"):
        await Store.open(store_target)
    assert stored_version(store_target) == store_module.SCHEMA_VERSION + 1


async def test_a_failing_migration_changes_nothing(store_target: str | Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = (*MIGRATIONS, ("CREATE TABLE extra (x INTEGER)", "THIS IS NOT SQL"))
    monkeypatch.setattr(store_module, "MIGRATIONS", broken)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(broken))
    with pytest.raises((sqlite3.OperationalError, psycopg.errors.SyntaxError)):
        await Store.open(store_target)
    # DDL is transactional on both engines: not even the first version's tables are left.
    tables = (
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        if isinstance(store_target, str)
        else "SELECT name FROM sqlite_master WHERE type = 'table'"
    )
    assert rows(store_target, tables) == []


# ---- PostgreSQL: the schema as translated ---------------------------------------------------------------


def test_sqlite_types_become_postgresql_types() -> None:
    assert for_postgresql("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER, x REAL, b BLOB)") == (
        "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT, x DOUBLE PRECISION, "
        "b BYTEA)"
    )
    assert for_postgresql("INSERT OR IGNORE INTO t (a) SELECT a FROM u") == (
        "INSERT INTO t (a) SELECT a FROM u ON CONFLICT DO NOTHING"
    )
    assert pyformat("SELECT '?', ? WHERE a LIKE '5%'") == "SELECT '?', %s WHERE a LIKE '5%%'"


def test_redacted_urls_hide_the_password() -> None:
    assert redacted("postgresql://cc:s3cret@db.example:5433/siaga") == "postgresql://cc:***@db.example:5433/siaga"
    assert redacted("postgresql://cc@db/siaga") == "postgresql://cc@db/siaga"


async def test_postgresql_columns_keep_64_bit_integers_and_double_precision(pg_dsn: str) -> None:
    opened = await Store.open(pg_dsn)
    await opened.close()
    types = dict(rows(pg_dsn, """SELECT column_name, data_type FROM information_schema.columns
                                 WHERE table_name = 'alarms'"""))
    assert (types["id"], types["seq"], types["lat"], types["sources"]) == (
        "bigint", "bigint", "double precision", "text"
    )


async def test_a_version_2_postgresql_database_is_migrated(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statements in MIGRATIONS[:2]:
            for statement in statements:
                conn.execute(pyformat(for_postgresql(statement)))
        for n, (at, mv) in enumerate((("2026-11-24T02:00:00.000Z", 3500), ("2026-11-24T01:00:00.000Z", 3900)), 1):
            conn.execute("""INSERT INTO device_faults (event_id, gateway_id, device_id, fault, active, at, detail,
                               intake_at, fingerprint)
                            VALUES (%s, 'gw-1', 'jkt-menteng-0042', 'low_battery', 1, %s, %s, %s, 'x')""",
                         (f"f{n}", at, json.dumps({"battery_mv": mv}), at))
        conn.execute("INSERT INTO schema_version VALUES (2)")
    opened = await Store.open(pg_dsn)
    await opened.close()
    assert stored_version(pg_dsn) == store_module.SCHEMA_VERSION
    # The latest report's voltage, as SQLite's migration keeps it.
    assert rows(pg_dsn, "SELECT device_id, battery_mv, source FROM device_battery") == [
        ("jkt-menteng-0042", 3500, "f1")
    ]


# ---- PostgreSQL: two processes on one database -----------------------------------------------------------


@pytest.fixture
async def two_stores(pg_dsn: str) -> AsyncIterator[tuple[Store, Store]]:
    """What two command center processes have: a pool each on one database."""
    a, b = await asyncio.gather(Store.open(pg_dsn), Store.open(pg_dsn))  # migrating at the same time
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_processes_starting_together_migrate_once(pg_dsn: str) -> None:
    opened = await asyncio.gather(*(Store.open(pg_dsn) for _ in range(4)))
    for s in opened:
        await s.close()
    assert rows(pg_dsn, "SELECT version FROM schema_version") == [(store_module.SCHEMA_VERSION,)]


async def test_two_processes_taking_the_same_200_alarms_store_each_once(
    two_stores: tuple[Store, Store], pg_dsn: str
) -> None:
    a, b = two_stores
    # 100 alarms of their own, and 50 pairs that belong together (an incident_key each): the race is
    # then both on the event ids and on opening the incident of a key.
    alarms = [new_alarm(i, f"jkt-menteng-{i:04d}") for i in range(100)]
    alarms += [new_alarm(i, f"jkt-menteng-{i:04d}", key=f"group-{i % 50}") for i in range(100, 200)]
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(s.record_alarm(alarm, now=NOW) for alarm in alarms for s in (a, b))
    )
    elapsed = time.monotonic() - started
    print(f"400 concurrent intakes of 200 alarms by two pools: {elapsed * 1000:.0f} ms")
    by_event: dict[str, list[Any]] = {}
    for alarm, outcome in zip([x for x in alarms for _ in (0, 1)], outcomes, strict=True):
        by_event.setdefault(alarm.event_id, []).append(outcome)
    for event_id, pair in by_event.items():
        assert sorted(o.created for o in pair) == [False, True], event_id  # exactly once
        assert pair[0].incident == pair[1].incident, event_id  # both answers name the same incident

    assert rows(pg_dsn, "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM alarms") == [(200, 200)]
    incidents = rows(pg_dsn, "SELECT id FROM incidents")
    assert len(incidents) == 150  # 100 alone + 50 groups
    assert len({r[0] for r in incidents}) == 150
    assert {o.incident for o in outcomes} == {r[0] for r in incidents}
    # Each group is one incident with both its devices.
    per_key = rows(pg_dsn, """SELECT incident_key, COUNT(DISTINCT incident_id) FROM alarms
                              WHERE incident_key IS NOT NULL GROUP BY incident_key""")
    assert len(per_key) == 50 and {n for _, n in per_key} == {1}


async def test_concurrent_acknowledges_in_two_processes_let_exactly_one_win(
    two_stores: tuple[Store, Store], pg_dsn: str
) -> None:
    a, b = two_stores
    first, _ = await a.record_alarms([new_alarm(1, key="g"), new_alarm(2, "jkt-menteng-0043", key="g")], now=NOW)
    for seq in range(100, 105):  # a race is a matter of luck: run it a few times on fresh incidents
        number = (await a.record_alarm(new_alarm(seq), now=NOW)).incident
        results = await asyncio.gather(
            a.apply_action(number, Action.ACKNOWLEDGE, actor="operator-1", now=NOW),
            b.apply_action(number, Action.ACKNOWLEDGE, actor="operator-2", now=NOW),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["Incident", "InvalidTransitionError"], results
    # Different actions at once: both apply, one after the other, neither overwrites the other.
    await asyncio.gather(
        a.apply_action(first.incident, Action.ACKNOWLEDGE, actor="operator-1", now=NOW),
        b.add_note(first.incident, "caller is on the line", actor="operator-2", now=NOW),
    )
    history = await b.incident_history(first.incident)
    assert sorted(h.kind.value for h in history) == ["note", "state", "state"]
    assert rows(pg_dsn, "SELECT COUNT(*) FROM callback_outbox WHERE state = 'acknowledged'") == [(7,)]


async def test_an_alarm_joining_while_the_incident_closes_is_reported_or_opens_anew(
    two_stores: tuple[Store, Store], pg_dsn: str
) -> None:
    a, b = two_stores
    number = (await a.record_alarm(new_alarm(1, key="g"), now=NOW)).incident
    await a.apply_action(number, Action.ACKNOWLEDGE, actor="operator-1", now=NOW)
    joined, _ = await asyncio.gather(
        b.record_alarm(new_alarm(2, "jkt-menteng-0043", key="g"), now=NOW),
        a.apply_action(number, Action.RESOLVE, actor="operator-1", now=NOW),
    )
    if joined.incident == number:
        # Joined first: the resolve that followed reported to the new button as well.
        assert rows(pg_dsn, "SELECT state FROM callback_outbox WHERE event_id = ? ORDER BY id",
                    ("gw-1:jkt-menteng-0043:2",)) == [("acknowledged",), ("resolved",)]
    else:
        # Resolved first: the button opened a new incident; nothing joined a closed one.
        assert joined.opened
    assert rows(pg_dsn, "SELECT COUNT(*) FROM incidents WHERE state = 'resolved'") == [(1,)]


# ---- PostgreSQL: changes relayed between processes (LISTEN/NOTIFY) --------------------------------------


def test_a_large_change_is_split_under_the_notify_limit() -> None:
    faults = tuple(FaultNote(f"jkt-menteng-{i:04d}", "offline", True, NOW) for i in range(400))
    change = Change("origin", "incident", incidents=tuple(range(1_000_000, 1_003_000)), faults=faults,
                    wake=("callbacks",))
    payloads = list(change.payloads())
    assert len(payloads) > 1
    assert all(len(p.encode()) < 8000 for p in payloads)
    parts = [Change.decode(p) for p in payloads]
    assert [n for p in parts for n in p.incidents] == list(change.incidents)
    assert tuple(f for p in parts for f in p.faults) == faults
    assert {p.wake for p in parts} == {("callbacks",)}


async def next_event(queue: asyncio.Queue[LiveEvent | None], timeout_s: float = 5.0) -> LiveEvent | None:
    return await asyncio.wait_for(queue.get(), timeout_s)


def terminate(dsn: str, application_name: str) -> int:
    """Kill this database's server sessions of that name, as a network cut or an admin would."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute(
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE application_name = %s AND datname = current_database()""",
            (application_name,),
        ).fetchall()
    return len(found)


async def test_changes_of_another_process_reach_this_ones_consoles_and_a_dropped_listener_resyncs(
    two_stores: tuple[Store, Store], pg_dsn: str
) -> None:
    a, b = two_stores
    live = Broadcaster()
    woken: list[str] = []
    relay = Relay(a, live, wake=woken.extend, retry_s=0.1, ping_s=0.5)
    await relay.start()
    assert relay.listening
    try:
        sub = live.subscribe(OPERATOR)
        # Another process's alarm: on this process's stream, read back as this process sees it.
        started = time.monotonic()
        opened = await b.record_alarm(new_alarm(1), now=NOW)
        event = await next_event(sub.queue)
        print(f"another process's alarm relayed in {(time.monotonic() - started) * 1000:.1f} ms")
        assert event is not None and event.type == "incident"
        assert json.loads(event.data)["id"] == incident_ref(opened.incident)
        assert "escalation" in woken  # a new incident: the leader's escalation timer looks at it

        await b.apply_action(opened.incident, Action.ACKNOWLEDGE, actor="operator-2", now=NOW)
        event = await next_event(sub.queue)
        assert event is not None and json.loads(event.data)["state"] == "acknowledged"
        assert "callbacks" in woken
        await b.record_faults([new_fault(1)], now=NOW)
        event = await next_event(sub.queue)
        assert event is not None and event.type == "fault" and json.loads(event.data)["device_id"] == "jkt-menteng-0042"

        # This process's own change is not delivered a second time (it publishes its own after commit).
        await a.record_alarm(new_alarm(2), now=NOW)
        # A change rolled back is never told: NOTIFY is sent at commit only.
        async def announce_then_roll_back() -> None:
            async with b._tx(write=True) as db:
                await b._announce(db, Change(b.origin, "incident", incidents=(opened.incident,)))
                raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            await announce_then_roll_back()
        await asyncio.sleep(0.3)
        assert sub.queue.empty()

        # The listening connection dies: the relay reconnects and ends the streams, so that every
        # console re-syncs (what was committed meanwhile is not on the stream).
        assert terminate(pg_dsn, "siaga-cc listen") == 1
        assert await next_event(sub.queue) is None
        assert relay.connections == 2
        again = live.subscribe(OPERATOR)
        await b.apply_action(opened.incident, Action.RESOLVE, actor="operator-2", now=NOW)
        event = await next_event(again.queue)
        assert event is not None and json.loads(event.data)["state"] == "resolved"
    finally:
        await relay.stop()
        live.close()


async def test_one_process_runs_the_background_loops_and_another_takes_over(
    two_stores: tuple[Store, Store], pg_dsn: str
) -> None:
    a, b = two_stores
    events: list[str] = []

    def leadership(store: Store, name: str) -> Leadership:
        async def deposed() -> None:
            events.append(f"{name}-")

        return Leadership(store, on_elected=lambda: events.append(f"{name}+"), on_deposed=deposed, retry_s=0.1)

    async def until(check: Callable[[], bool], timeout_s: float = 5.0) -> float:
        started = time.monotonic()
        while not check():
            assert time.monotonic() - started < timeout_s, events
            await asyncio.sleep(0.02)
        return time.monotonic() - started

    first, second = leadership(a, "a"), leadership(b, "b")
    first.start()
    await until(lambda: first.leading)
    second.start()
    await asyncio.sleep(0.5)
    assert (first.leading, second.leading, events) == (True, False, ["a+"])
    try:
        # A clean stop: the loops end, then the lock is freed and the other process takes over.
        await first.stop()
        took = await until(lambda: second.leading)
        assert events == ["a+", "a-", "b+"]
        assert took < 1.0
        # The leader's connection dies (a crash, a network cut): it stops its loops, and the lock is
        # free for whoever asks next (here the same process, the only one left).
        assert terminate(pg_dsn, "siaga-cc leader") == 1
        await until(lambda: second.elected == 2)
        assert events == ["a+", "a-", "b+", "b-", "b+"]
    finally:
        await first.stop()
        await second.stop()
    assert events[-1] == "b-"


# ---- configuration ---------------------------------------------------------------------------------------


def test_a_postgresql_store_is_configured_by_url_or_in_place_of_the_path(tmp_path: Path) -> None:
    url = "postgresql://siaga@db.example:5432/siaga_cc"
    (tmp_path / "db.password").write_text("correct horse battery staple\n")
    cfg = CCConfig.load(_write_config(
        tmp_path, _MINIMAL + f'[store]\nurl = "{url}"\npassword_file = "db.password"\npool_size = 4\n'))
    assert (cfg.db_url, cfg.database, cfg.db_password, cfg.db_pool_size) == (
        url, url, "correct horse battery staple", 4)
    assert "correct horse" not in repr(cfg)
    cfg = CCConfig.load(_write_config(tmp_path, _MINIMAL + f'[store]\npath = "{url}"\n'))
    assert cfg.database == url
    cfg = CCConfig.load(_write_config(tmp_path, _MINIMAL + '[store]\npath = "data/cc.db"\n'))
    assert (cfg.db_url, cfg.database) == (None, tmp_path / "data" / "cc.db")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[store]\nurl = "postgresql://cc:hunter2hunter2@db/cc"\n', "holds a password"),
        ('[store]\nurl = "mysql://db/cc"\n', "must be a postgresql:// URL"),
        ('[store]\npath = "cc.db"\nurl = "postgresql://db/cc"\n', "keep one"),
        ('[store]\npassword_file = "gw.token"\n', "without a PostgreSQL url"),
        ('[store]\nurl = "postgresql://db/cc"\npassword = "inline"\n', "store.password"),
        ('[gateway]\nurl = "http://a:1"\nurls = ["http://b:1"]\ntoken_file = "gw.token"\n', "not both"),
        ('[gateway]\nurls = []\ntoken_file = "gw.token"\n', "non-empty array"),
        ('[gateway]\nurls = ["http://a:1", "ftp://b:1"]\ntoken_file = "gw.token"\n', "must start with http"),
        ('[gateway]\nurls = ["http://a:1", "http://a:1/"]\ntoken_file = "gw.token"\n', "twice"),
        ("[server]\nport = 8300\ndirect_port = 8300\n", "direct_port"),
        ('[server]\nreuse_port = "yes"\n', "server.reuse_port"),
    ],
)
def test_store_gateway_group_and_port_mistakes(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        CCConfig.load(_write_config(tmp_path, _MINIMAL + extra))
    assert "hunter2" not in str(raised.value)


def test_a_gateway_group_and_a_shared_port_are_configured(tmp_path: Path) -> None:
    cfg = CCConfig.load(_write_config(tmp_path, _MINIMAL + """
[server]
port = 8300
reuse_port = true
direct_port = 8301
[gateway]
urls = ["http://gw-a.internal:8081/", "http://gw-b.internal:8081"]
token_file = "gw.token"
"""))
    assert cfg.gateway_urls == ("http://gw-a.internal:8081", "http://gw-b.internal:8081")
    assert cfg.gateway_url == "http://gw-a.internal:8081"
    assert (cfg.reuse_port, cfg.direct_port) == (True, 8301)
    # One url is a group of one; code that builds the config itself keeps passing gateway_url.
    single = replace(cfg, gateway_url="http://gw:8081", gateway_urls=())
    assert single.gateway_urls == ("http://gw:8081",)

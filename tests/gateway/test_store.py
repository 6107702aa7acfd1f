"""The gateway's store, the same tests on both engines: SQLite (a file) and PostgreSQL (a private
server started from the Debian binaries, tests/support/postgres.py). Each test gets a new database.

The last tests are PostgreSQL's own: two stores on one database stand for two gateway instances,
and what they must agree on (a resent alarm is one alarm, presses of one site are one incident,
a fault starts once) is decided by the database.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from siaga.gateway.codec import Alarm, Location, Reject, RejectReason, Status
from siaga.gateway.config import Person, Role
from siaga.gateway.grouping import Group
from siaga.gateway.replay import ReplayWindow
from siaga.gateway.store import (
    MIGRATIONS,
    Batch,
    Delivery,
    NewAlarm,
    Quarantined,
    Retry,
    SQLiteStore,
    Store,
    StoreError,
    open_store,
)
from siaga.gateway.supervision import Fault, FaultChange

WINDOW_MS = 300_000
SECRET = bytes(range(32))
ALICE = Person("alice", Role.ADMIN)


def alarm(device: str, seq: int, kind: str = "medical") -> Alarm:
    return Alarm(device, seq, kind, False, Location(-6_200_000, 106_816_666, "Jl. Kenari 1", "31.71.03"), 1000,
                 None, f'{{"seq":{seq}}}'.encode())


def new(device: str, seq: int, at_ms: int, site: str | None = None) -> NewAlarm:
    return NewAlarm(alarm(device, seq), at_ms, site or device, 3900)


def fault_event(change: FaultChange, number: int) -> tuple[str, str]:
    return f"gw:{change.device_id}:fault:{number}", json.dumps({"fault": change.fault.value, "active": change.active})


def alarm_event(n: NewAlarm, group: Group) -> tuple[str, str]:
    return (f"gw:{n.alarm.device_id}:{n.alarm.seq}",
            json.dumps({"seq": n.alarm.seq, "group": group.id, "press": group.presses, "sources": group.sources}))


async def commit(store: Store, batch: Batch) -> list:  # type: ignore[type-arg]
    return await store.commit(batch, fault_event, alarm_event)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "gateway.sqlite3")
    return str(request.getfixturevalue("pg_dsn"))


@pytest.fixture
async def store(db: str) -> AsyncIterator[Store]:
    s = open_store(db, group_window_ms=WINDOW_MS)
    await s.open()
    for device in ("btn-a", "btn-b", "btn-c"):
        await s.add_device(device, SECRET, now_ms=1, site="pasar" if device != "btn-c" else None,
                           lat_e6=-6_200_000, lon_e6=106_816_666, address="Pasar Baru", area="31.71")
    yield s
    await s.close()


# ---------------------------------------------------------------- registry


async def test_the_registry_and_its_change_log(store: Store) -> None:
    with pytest.raises(StoreError, match="already registered"):
        await store.add_device("btn-a", SECRET, now_ms=2)
    before = await store.registry_version()
    assert await store.update_device("btn-a", {"address": "Jl. Baru 2", "lat_e6": -6_100_000}, now_ms=5, by=ALICE)
    assert not await store.update_device("nobody", {"address": "x"}, now_ms=5)
    assert await store.revoke_device("btn-b", 6, by=ALICE)
    assert not await store.revoke_device("btn-b", 7, by=ALICE)  # once
    assert await store.set_key("btn-c", bytes(32), pending=True, now_ms=8, by=ALICE)
    assert await store.registry_version() > before
    records = {r.id: r for r in await store.registry()}
    assert records["btn-a"].address == "Jl. Baru 2" and records["btn-a"].lat_e6 == -6_100_000
    assert records["btn-b"].revoked and not records["btn-a"].revoked
    assert records["btn-c"].pending == bytes(32) and records["btn-c"].secret == SECRET
    changes = await store.fleet_changes(device_id=None, limit=10)
    # The corrected location also became the button's remote configuration (protocol.md §10).
    assert [c["action"] for c in changes][:4] == ["rotate-key", "revoke", "configure", "update"]
    assert changes[3]["detail"] == {"address": ["Pasar Baru", "Jl. Baru 2"], "lat": [-6.2, -6.1]}
    assert changes[2]["detail"]["version"] == 1
    assert changes[0]["person"] == "alice" and changes[0]["detail"] == {"mode": "pending"}
    assert await store.decommission("btn-c", 9)
    devices = {d.id: d for d in await store.devices()}
    assert devices["btn-c"].decommissioned_ms == 9 and devices["btn-c"].revoked_ms == 9
    assert devices["btn-a"].key_pending is False and devices["btn-a"].faults == ()
    with pytest.raises(StoreError, match="can only update"):
        await store.update_device("btn-a", {"secret_hex": "00"}, now_ms=10)


async def test_remote_configuration_versions_and_what_heartbeats_report(store: Store) -> None:
    assert await store.configure("btn-a", {"heartbeat_s": 30, "sms": {"fallback_s": 20}}, now_ms=2, by=ALICE)
    assert await store.configure("btn-a", {"sms": {"test_every_s": 0}}, now_ms=3)
    assert not await store.configure("btn-a", {"heartbeat_s": 30}, now_ms=4)   # nothing new: no version
    pushed = await store.pushed_config("btn-a")
    assert pushed is not None and pushed.ver == 2
    assert pushed.settings == {"heartbeat_s": 30, "sms": {"fallback_s": 20, "test_every_s": 0}}
    assert await store.configure("btn-b", {"heartbeat_s": 90}, now_ms=5)
    assert await store.pushed_config("btn-c") is None
    assert [(p.device_id, p.ver) for p in await store.unconfirmed_configs()] == [("btn-a", 2), ("btn-b", 1)]
    # btn-a applied version 2, btn-b refused version 1; a heartbeat of older firmware says nothing.
    statuses = [(Status("btn-a", 1, None, None, "2.0", False, 0, 5, 60, 2, None), 10),
                (Status("btn-b", 1, None, None, "2.0", False, 0, 5, 60, 0, 1), 10),
                (Status("btn-c", 1, None, None, "1.0", False, 0, 5, 60), 10)]
    await commit(store, Batch(statuses=statuses))
    assert await store.unconfirmed_configs() == []
    devices = {d.id: d for d in await store.devices()}
    assert (devices["btn-a"].config_ver, devices["btn-a"].config_applied, devices["btn-a"].config_rejected) == (2, 2,
                                                                                                              None)
    assert (devices["btn-b"].config_applied, devices["btn-b"].config_rejected) == (0, 1)
    assert devices["btn-c"].config_desired == {} and devices["btn-c"].config_ver == 0
    with pytest.raises(StoreError, match="no device"):
        await store.configure("nobody", {"heartbeat_s": 30}, now_ms=6)


# ---------------------------------------------------------------- intake


async def test_an_alarm_is_stored_once_and_a_resend_is_reacknowledged(store: Store) -> None:
    first = await commit(store, Batch(alarms=[new("btn-a", 1, 1_000)]))
    assert [(s.device_id, s.seq, s.state, s.changed) for s in first] == [("btn-a", 1, "received", True)]
    again = await commit(store, Batch(alarms=[new("btn-a", 1, 2_000)]))
    assert [(s.id, s.changed) for s in again] == [(first[0].id, False)]
    # A resend that came in the same batch as its original is re-acknowledged too.
    both = await commit(store, Batch(alarms=[new("btn-b", 1, 2_500)], duplicates=[("btn-b", 1)]))
    assert [(s.seq, s.changed) for s in both] == [(1, True), (1, False)] and both[0].id == both[1].id
    assert await store.alarm_exists("btn-a", 1) and not await store.alarm_exists("btn-a", 2)
    rows = await store.alarms(device_id="btn-a", limit=10)
    assert len(rows) == 1 and rows[0]["received_ms"] == 1_000 and rows[0]["test"] is False
    events = await store.due_events(10_000, 10, "alarm")
    assert [e.event_id for e in events] == ["gw:btn-a:1", "gw:btn-b:1"]
    assert await store.outbox_depth() == 2
    assert (await store.devices("btn-a"))[0].last_seen_ms == 2_000


async def test_presses_of_one_site_are_one_incident_until_a_quiet_window(store: Store) -> None:
    await commit(store, Batch(alarms=[new("btn-a", 1, 0, "pasar"), new("btn-b", 1, 10_000, "pasar")]))
    await commit(store, Batch(alarms=[new("btn-c", 1, 20_000), new("btn-a", 2, 200_000, "pasar")]))
    await commit(store, Batch(alarms=[new("btn-a", 3, 200_000 + WINDOW_MS + 1, "pasar")]))
    bodies = [json.loads(e.body) for e in await store.due_events(10**9, 10, "alarm")]
    market = bodies[0]["group"]
    assert [(b["seq"], b["group"] == market, b["press"]) for b in bodies] == [
        (1, True, 1), (1, True, 2), (1, False, 1), (2, True, 3), (3, False, 1)]
    assert bodies[3]["sources"] == ["btn-a", "btn-b"]
    assert len({bodies[2]["group"], bodies[4]["group"], market}) == 3
    groups = {g["id"]: g for g in await store.groups(10)}
    assert groups[market]["presses"] == 3 and groups[market]["last_ms"] == 200_000


async def test_heartbeats_windows_faults_rejects_and_quarantine(store: Store) -> None:
    status = Status("btn-a", 7, 3300, -70, "1.2.0", True, 0, 5000, 60)
    window = ReplayWindow()
    window.accept(7)
    start = FaultChange("btn-a", Fault.LOW_BATTERY, True, 5_000, {"battery_mv": 3300})
    reject = Reject(RejectReason.BAD_SIGNATURE, "btn-b", "siaga/v1/dev/btn-b/alarm", "mac mismatch")
    junk = Quarantined("btn-b", "siaga/v1/dev/btn-b/status", b"\xff\x00", "ValueError: x", 5_000)
    await commit(store, Batch(statuses=[(status, 5_000)], windows={"btn-a": window}, faults=[start],
                              rejects=[(reject, 5_000)], quarantined=[junk]))
    # The same start again (another instance saw it too) and the same bytes again are one entry each.
    await commit(store, Batch(faults=[start], quarantined=[junk]))
    health = {h[0]: h for h in await store.device_health()}
    assert health["btn-a"][1:] == (5_000, 60, {Fault.LOW_BATTERY: 5_000}, 3300)
    assert (await store.windows())["btn-a"] == window
    faults = await store.due_events(10**9, 10, "fault")
    assert [json.loads(e.body) for e in faults] == [{"fault": "low_battery", "active": True}]
    await store.record_faults([FaultChange("btn-a", Fault.LOW_BATTERY, False, 6_000, {}),
                               FaultChange("btn-a", Fault.LOW_BATTERY, False, 6_000, {})], fault_event)
    assert len(await store.due_events(10**9, 10, "fault")) == 2  # the start and one clear
    assert [a["reason"] for a in await store.audit(10)] == ["bad_signature"]
    quarantined = await store.quarantined(10)
    assert len(quarantined) == 1 and quarantined[0]["count"] == 2 and quarantined[0]["payload"] == b"\xff\x00"


async def test_a_window_from_an_instance_behind_does_not_take_the_newer_one_back(store: Store) -> None:
    ahead, behind = ReplayWindow(), ReplayWindow()
    for seq in (10, 11, 12):
        ahead.accept(seq)
    behind.accept(5)
    await commit(store, Batch(windows={"btn-a": ahead}))
    await commit(store, Batch(windows={"btn-a": behind}))
    assert (await store.windows())["btn-a"] == ahead


async def test_forwarding_keeps_each_devices_order_and_settles(store: Store) -> None:
    await store.record_faults([FaultChange("btn-a", Fault.TAMPER, True, 100, {})], fault_event)
    await commit(store, Batch(alarms=[new("btn-a", 1, 200), new("btn-b", 1, 300)]))
    lane = await store.due_events(1_000, 10, "alarm")
    assert [(e.kind, e.device_id) for e in lane] == [("fault", "btn-a"), ("alarm", "btn-a"), ("alarm", "btn-b")]
    assert await store.due_events(1_000, 10, "fault") == []  # btn-a's fault goes ahead of its alarm
    # btn-a's fault fails and waits; its alarm must not overtake it; btn-b's goes.
    await store.settle([Delivery(lane[2].id, lane[2].alarm_id, "INC-7")], [Retry(lane[0].id, 5_000, "503")], 1_000)
    assert await store.due_events(2_000, 10, "alarm") == []
    assert (await store.alarms(device_id="btn-b", limit=1))[0]["incident_id"] == "INC-7"
    again = await store.due_events(5_000, 10, "alarm")
    assert [e.id for e in again] == [lane[0].id, lane[1].id] and again[0].attempts == 1
    await store.refuse([lane[1].id], ["422 bad"], 5_000)
    assert [r["id"] for r in await store.refused(10)] == [lane[1].id]
    assert await store.outbox_depth() == 1
    assert await store.requeue(lane[1].id, 6_000, by=ALICE)
    assert not await store.requeue(lane[1].id, 6_000, by=ALICE)
    assert await store.outbox_depth() == 2


async def test_states_move_forward_only_and_the_latest_acks_are_found(store: Store) -> None:
    await commit(store, Batch(alarms=[new("btn-a", 1, 100), new("btn-a", 2, 200)]))
    assert await store.set_state("btn-a", 9, "acknowledged", 2, None, "op", 300) is None
    moved = await store.set_state("btn-a", 2, "dispatched", 3, "INC-1", "op", 300)
    assert moved is not None and moved.changed and moved.state == "dispatched"
    back = await store.set_state("btn-a", 2, "acknowledged", 2, None, "op", 400)
    assert back is not None and not back.changed and back.state == "dispatched" and back.incident_id == "INC-1"
    acks = await store.current_acks(250)
    assert [(a.device_id, a.seq, a.state) for a in acks] == [("btn-a", 2, "dispatched")]
    assert await store.current_acks(301) == []
    assert await store.latest_alarms() == {"btn-a": 2}


def state_event(row, state, incident_id, by, at_ms, number):  # type: ignore[no-untyped-def]
    return f"gw:{row['device_id']}:{row['seq']}:state:{number}", json.dumps({"state": state, "kind": row["kind"]})


async def test_each_destination_has_its_own_queue_and_custody(store: Store) -> None:
    store.route({"alarm": ["cc", "cad", "arc"], "fault": ["cc", "arc"], "state": ["cad", "arc"]})
    await commit(store, Batch(alarms=[new("btn-a", 1, 100)]))
    await store.record_faults([FaultChange("btn-b", Fault.LOW_BATTERY, True, 150, {})], fault_event)
    assert await store.outbox_depths() == {"cc": 2, "cad": 1, "arc": 2}
    cc, cad = await store.due_events(1_000, 10, "alarm", "cc"), await store.due_events(1_000, 10, "alarm", "cad")
    assert [e.event_id for e in cc] == [e.event_id for e in cad] == ["gw:btn-a:1"]
    # The command center confirms; the CAD is down: its copy waits, the command center's is done.
    await store.settle([Delivery(cc[0].id, cc[0].alarm_id, "INC-1")], [], 1_000, "cc", True)
    await store.settle([], [Retry(cad[0].id, 60_000, "connect refused")], 1_000, "cad", False)
    assert await store.due_events(2_000, 10, "alarm", "cad") == []
    assert [e.event_id for e in await store.due_events(2_000, 10, "alarm", "arc")] == ["gw:btn-a:1"]
    where = {r["destination"]: r for r in await store.deliveries("gw:btn-a:1")}
    assert where["cc"]["status"] == "delivered" and where["cc"]["reference"] == "INC-1"
    assert where["cad"]["status"] == "waiting" and where["cad"]["last_error"] == "connect refused"
    assert where["arc"]["status"] == "waiting" and where["arc"]["attempts"] == 0
    # Only the primary's answer is the alarm's forwarding time and incident id.
    await store.settle([Delivery(cad[0].id, cad[0].alarm_id, "CAD-9")], [], 3_000, "cad", False)
    stored = (await store.alarms(device_id="btn-a", limit=1))[0]
    assert (stored["incident_id"], stored["forwarded_ms"]) == ("INC-1", 1_000)
    # A state change reported through the CAD goes to the other followers, not back to the CAD.
    moved = await store.set_state("btn-a", 1, "acknowledged", 2, "CAD-9", "op", 4_000, state_event, "cad")
    assert moved is not None and moved.changed
    assert await store.due_events(5_000, 10, "fault", "cad") == []
    arc = await store.due_events(5_000, 10, "fault", "arc")
    assert [(e.kind, e.device_id) for e in arc] == [("fault", "btn-b"), ("state", "btn-a")]
    assert json.loads(arc[1].body) == {"state": "acknowledged", "kind": "medical"}
    assert await store.outbox_depths() == {"arc": 3, "cc": 1}


async def test_a_queue_of_schema_5_moves_to_the_command_center_destination(db: str) -> None:
    """Events waiting in an outbox of before issue 15 keep their order and go to [commandcenter]."""
    store = open_store(db)
    await store.open()
    try:
        await store.add_device("btn-a", SECRET, now_ms=1)
        await commit(store, Batch(alarms=[new("btn-a", 1, 100), new("btn-a", 2, 200)]))
        before = [e.event_id for e in await store.due_events(1_000, 10, "alarm")]
    finally:
        await store.close()
    # Rebuild the old table by hand and mark the schema 5, then open again: migration 6 runs.
    old = MIGRATIONS[0][5].replace("CREATE TABLE outbox", "CREATE TABLE outbox_old")
    moves = [old, "ALTER TABLE outbox_old ADD COLUMN refused_ms INTEGER",
             "INSERT INTO outbox_old (device_id, event_id, kind, body, alarm_id, created_ms, next_attempt_ms) "
             "SELECT device_id, event_id, kind, body, alarm_id, created_ms, next_attempt_ms FROM outbox ORDER BY id",
             "DROP TABLE outbox", "DROP TABLE deliveries", "ALTER TABLE outbox_old RENAME TO outbox",
             "DROP INDEX devices_by_phone", "ALTER TABLE devices DROP COLUMN phone",
             "ALTER TABLE devices DROP COLUMN sms_seen_ms", "ALTER TABLE devices DROP COLUMN config_ver",
             "ALTER TABLE devices DROP COLUMN config_applied", "ALTER TABLE devices DROP COLUMN config_rejected",
             "ALTER TABLE devices DROP COLUMN config_desired",
             # migration 9 (updates over the air)
             "DROP TABLE rollout_devices", "DROP TABLE rollouts", "DROP TABLE firmware_bundles",
             "DROP TABLE ota_changes", "ALTER TABLE devices DROP COLUMN board",
             "ALTER TABLE devices DROP COLUMN ota_offer_ver", "ALTER TABLE devices DROP COLUMN ota_status_seq"]
    again = open_store(db)
    await again.open()
    try:
        if isinstance(again, SQLiteStore):
            def downgrade(d):  # type: ignore[no-untyped-def]
                for m in moves:
                    d.execute(m)
                d.execute("PRAGMA user_version = 5")
        else:
            from siaga.gateway.store_pg import pg_ddl

            def downgrade(d):  # type: ignore[no-untyped-def]
                for m in moves:
                    d.execute(pg_ddl(m))
                d.execute("UPDATE schema_version SET version = 5")
        await again._write(downgrade)  # type: ignore[attr-defined]
    finally:
        await again.close()
    migrated = open_store(db)
    await migrated.open()
    try:
        assert [e.event_id for e in await migrated.due_events(1_000, 10, "alarm")] == before
        assert await migrated.outbox_depths() == {"command-center": 2}
    finally:
        await migrated.close()


async def test_a_database_of_a_newer_gateway_is_refused_and_data_survive_a_reopen(db: str, store: Store) -> None:
    await commit(store, Batch(alarms=[new("btn-a", 1, 100)]))
    await store.close()
    again = open_store(db)
    await again.open()
    try:
        assert await again.alarm_exists("btn-a", 1)
        newer = len(MIGRATIONS) + 1
        if isinstance(again, SQLiteStore):
            await again._write(lambda d: d.execute(f"PRAGMA user_version = {newer}"))
        else:
            await again._write(lambda d: d.execute("UPDATE schema_version SET version = ?", (newer,)))
    finally:
        await again.close()
    newest = open_store(db)
    with pytest.raises(StoreError, match="newer than this gateway"):
        await newest.open()


# ---------------------------------------------------------------- two instances on PostgreSQL


@pytest.fixture
async def pair(pg_dsn: str) -> AsyncIterator[tuple[Store, Store]]:
    one, two = open_store(pg_dsn, group_window_ms=WINDOW_MS), open_store(pg_dsn, group_window_ms=WINDOW_MS)
    await asyncio.gather(one.open(), two.open())  # both migrate at once: one does it, the other waits
    for n in range(20):
        await one.add_device(f"btn-{n:02}", SECRET, now_ms=1, site=f"site-{n % 4}")
    yield one, two
    await asyncio.gather(one.close(), two.close())


async def test_two_instances_taking_the_same_alarms_store_each_once(pair: tuple[Store, Store]) -> None:
    one, two = pair
    batches: Callable[[int], list[Batch]] = lambda offset: [  # noqa: E731
        Batch(alarms=[new(f"btn-{(n + offset + k) % 20:02}", seq, 1_000 + seq, f"site-{(n + offset + k) % 4}")
                      for k in range(5)]) for seq in range(1, 11) for n in range(0, 20, 5)]
    stored = await asyncio.gather(*(commit(s, b) for s, b in
                                    zip([one, two] * 40, batches(0) + batches(5), strict=True)))
    fresh = [(a.device_id, a.seq) for result in stored for a in result if a.changed]
    assert len(fresh) == len(set(fresh)) == 200  # 20 devices x 10 sequence numbers, each once
    again = [(a.device_id, a.seq) for result in stored for a in result if not a.changed]
    assert sorted(again) == sorted(fresh)  # the other copy of each was re-acknowledged
    events = await one.due_events(10**9, 1000, "alarm")
    assert len(events) == 200
    groups = {json.loads(e.body)["group"] for e in events}
    assert len(groups) == 4  # one incident per site, though two instances took its presses
    presses = sorted(json.loads(e.body)["press"] for e in events)
    assert presses == sorted(list(range(1, 51)) * 4)


async def test_a_fault_two_instances_report_starts_once(pair: tuple[Store, Store]) -> None:
    one, two = pair
    change = FaultChange("btn-01", Fault.OFFLINE, True, 5_000, {"reason": "connection lost (last will)"})
    await asyncio.gather(*(s.record_faults([change], fault_event) for s in (one, two, one, two)))
    assert len(await two.due_events(10**9, 10, "fault")) == 1


async def test_one_instance_leads_and_another_takes_over(pair: tuple[Store, Store]) -> None:
    _, two = pair
    leaders = [asyncio.Event(), asyncio.Event()]
    woken: list[str] = []
    tasks = [asyncio.create_task(s.lead(e, woken.append)) for s, e in zip(pair, leaders, strict=True)]
    try:
        await asyncio.wait_for(asyncio.wait([asyncio.create_task(e.wait()) for e in leaders],
                                            return_when=asyncio.FIRST_COMPLETED), 10)
        first = 0 if leaders[0].is_set() else 1
        await asyncio.sleep(1.5)
        assert not leaders[1 - first].is_set()  # never two at once
        woken.clear()
        await commit(two, Batch(alarms=[new("btn-03", 1, 100, "site-3")]))  # stored through either
        for _ in range(100):
            if "alarm" in woken:
                break
            await asyncio.sleep(0.05)
        assert "alarm" in woken  # the leader heard of it at once (NOTIFY), not at its next poll
        tasks[first].cancel()  # the leader's connection closes: its lock is released
        await asyncio.wait_for(leaders[1 - first].wait(), 5)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

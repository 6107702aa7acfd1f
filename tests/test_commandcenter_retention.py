"""Data retention in the command center (docs/retention.md): the personal details of incidents closed
more than `[retention] days` ago are purged, their figures kept.

The app runs in-process on a real SQLite file; incidents are opened, handled and closed at chosen
instants (the store takes `now=`), some of them long ago. The purge must remove the notes, decline
reasons, addresses and exact locations of the old closed incidents only, leave every figure of the
stats endpoint and every other column of the CSV export as they were, record itself in the audit
log, and find nothing more to do when run again."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from siaga.commandcenter.config import CCConfig, Operator, RetentionSettings, Role
from siaga.commandcenter.domain import Action, incident_ref, rfc3339, utc_now
from siaga.commandcenter.retention import RetentionTask
from siaga.commandcenter.store import SECOND_WEBHOOK_OUTBOX, WEBHOOK_OUTBOX, NewAlarm, Store
from siaga.settings import ConfigError
from tests.support.waiting import wait_for
from tests.test_commandcenter import INTAKE_TOKEN, OPERATOR_TOKEN, Api, db_rows, running_api

SUPERVISOR_TOKEN = "supervisor-" + "s" * 24
SUPERVISOR = {"Authorization": f"Bearer {SUPERVISOR_TOKEN}"}
PEOPLE: dict[str, Any] = {
    "operator_tokens": {OPERATOR_TOKEN: "operator-1", SUPERVISOR_TOKEN: "sup-1"},
    "operators": {"sup-1": Operator("sup-1", Role.SUPERVISOR)},
}
NOW = utc_now().replace(microsecond=0)
LAT, LON = -6.195733, 106.832085
PERSONAL = "Ibu Sari, 0812-3456-7890, rumah hijau"  # what a note may hold: it must go
CSV_PERSONAL = ("address", "lat", "lon")


def ago(days: float, seconds: float = 0) -> datetime:
    return NOW - timedelta(days=days) + timedelta(seconds=seconds)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    # The app's own purge is off (days = 0): the test runs the rounds itself, at instants it chooses.
    async with running_api(tmp_path / "cc.sqlite3", retention=RetentionSettings(days=0), **PEOPLE) as running:
        yield running


async def incident(store: Store, seq: int, opened: datetime, *, device: str = "jkt-menteng-0042") -> int:
    outcome = await store.record_alarm(
        NewAlarm(event_id=f"gw-1:{device}:{seq}", gateway_id="gw-1", device_id=device, seq=seq, kind="medical",
                 test=False, lat=LAT, lon=LON, address="Jl. Menteng Raya 12", area="31.71.06.1001",
                 raised_at=None, received_at=opened, fingerprint=f"f{seq}"),
        now=opened,
    )
    return outcome.incident


async def handled(store: Store, db_path: Path, seq: int, opened: datetime, *, close: bool) -> int:
    """An incident acknowledged and dispatched with notes, one agency declining with a reason; closed
    a day after it opened when `close`."""
    number = await incident(store, seq, opened)
    await store.apply_action(number, Action.ACKNOWLEDGE, actor="operator-1", now=opened + timedelta(seconds=14),
                             note=f"caller {PERSONAL}")
    await store.add_note(number, f"neighbour says {PERSONAL}", actor="operator-1", now=opened + timedelta(seconds=20))
    await store.apply_action(number, Action.DISPATCH, actor="operator-1", now=opened + timedelta(seconds=75),
                             agency="ambulance")
    declined = rfc3339(opened + timedelta(seconds=90))
    with closing(sqlite3.connect(db_path)) as db, db:
        cur = db.execute(
            """INSERT INTO dispatches (incident_id, agency, status, reason, requested_at, requested_by, declined_at,
                   updated_at, updated_by) VALUES (?, 'fire', 'declined', ?, ?, 'operator-1', ?, ?, 'damkar-1')""",
            (number, f"no unit free near {PERSONAL}", declined, declined, declined),
        )
        db.execute(
            """INSERT INTO dispatch_history (dispatch_id, incident_id, at, actor, from_status, to_status, reason)
               VALUES (?, ?, ?, 'damkar-1', 'requested', 'declined', ?)""",
            (cur.lastrowid, number, declined, f"no unit free near {PERSONAL}"),
        )
        # A delivered webhook event: a copy of the incident, address and location included.
        db.execute(
            """INSERT INTO webhook_outbox (incident_id, kind, body, created_at, next_attempt_at, delivered_at)
               VALUES (?, 'incident.escalated', ?, ?, 0, ?)""",
            (incident_ref(number), json.dumps({"address": "Jl. Menteng Raya 12"}), declined, declined),
        )
    if close:
        await store.apply_action(number, Action.RESOLVE, actor="operator-1", now=opened + timedelta(days=1),
                                 note=f"taken to hospital with {PERSONAL}")
    return number


async def figures(api: Api, first: datetime, last: datetime) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The stats answer and the CSV rows of the days [first, last]."""
    days = {"from": first.date().isoformat(), "to": last.date().isoformat()}
    stats = await api.client.get("/api/v1/stats", headers=SUPERVISOR, params=days)
    export = await api.client.get("/api/v1/export/incidents.csv", headers=SUPERVISOR, params=days)
    assert stats.status_code == export.status_code == 200, (stats.text, export.text)
    return stats.json(), list(csv.DictReader(io.StringIO(export.text)))


def without_addresses(stats: dict[str, Any]) -> dict[str, Any]:
    """The stats answer less the device's address, which is a detail shown beside the figures."""
    copy = json.loads(json.dumps(stats))
    for row in copy["false_alarms_by_device"]:
        row.pop("address")
    return copy


def table(db: Path, name: str) -> list[tuple[Any, ...]]:
    return db_rows(db, f"SELECT * FROM {name} ORDER BY 1")  # names from this file, never input


async def test_purge_removes_personal_details_of_old_closed_incidents_and_keeps_every_figure(api: Api) -> None:
    store, db = api.app.state.services.store, api.cfg.db_path
    old_closed = await handled(store, db, 1, ago(400), close=True)
    old_open = await handled(store, db, 2, ago(400, 600), close=False)  # still open after 400 days: kept whole
    recent = await handled(store, db, 3, ago(10), close=True)
    before_old, before_recent = await figures(api, ago(401), ago(398)), await figures(api, ago(11), ago(8))
    history_before = db_rows(db, "SELECT incident_id, at, actor, kind FROM incident_history ORDER BY id")
    audit_before = db_rows(db, "SELECT id, at, actor, action, target FROM audit_log ORDER BY id")

    outcome = await RetentionTask(store, RetentionSettings(days=365)).run_once(NOW)

    assert (outcome.incidents, outcome.alarms, outcome.webhook_events) == (1, 1, 1)
    # notes: the acknowledge, the note and the resolve, each in the history and in the audit log
    assert (outcome.notes, outcome.decline_reasons) == (6, 2)
    rows = {n: rest for n, *rest in db_rows(db, "SELECT id, address, lat, lon, purged_at FROM incidents")}
    assert rows[old_closed] == ["", round(LAT, 2), round(LON, 2), rfc3339(NOW)]
    assert rows[old_open] == rows[recent] == ["Jl. Menteng Raya 12", LAT, LON, None]
    alarms = {n: rest for n, *rest in db_rows(db, "SELECT incident_id, address, lat, lon FROM alarms")}
    assert alarms[old_closed] == ["", round(LAT, 2), round(LON, 2)]
    assert alarms[recent] == ["Jl. Menteng Raya 12", LAT, LON]

    def texts(sql: str, number: int) -> list[str]:
        return [t for (t,) in db_rows(db, sql, (number,)) if t]

    for number, kept in ((old_closed, False), (old_open, True), (recent, True)):
        history = " ".join(texts("SELECT detail FROM incident_history WHERE incident_id = ?", number))
        audit = " ".join(texts("SELECT detail FROM audit_log WHERE target = ?", incident_ref(number)))
        reasons = texts("SELECT reason FROM dispatches WHERE incident_id = ?", number) + texts(
            "SELECT reason FROM dispatch_history WHERE incident_id = ?", number)
        assert (PERSONAL in history, PERSONAL in audit, len(reasons) == 2) == (kept, kept, kept), number
    # The entries stay, with who and when: only their text went.
    assert db_rows(db, "SELECT incident_id, at, actor, kind FROM incident_history ORDER BY id") == history_before
    assert db_rows(db, "SELECT id, at, actor, action, target FROM audit_log ORDER BY id")[:-1] == audit_before
    notes = [json.loads(d) for (d,) in db_rows(
        db, "SELECT detail FROM incident_history WHERE incident_id = ? AND kind = 'note'", (old_closed,))]
    assert notes == [{"note": "", "purged": True}]
    assert db_rows(db, "SELECT incident_id FROM webhook_outbox") == [(incident_ref(old_open),),
                                                                    (incident_ref(recent),)]

    after_old, after_recent = await figures(api, ago(401), ago(398)), await figures(api, ago(11), ago(8))
    assert without_addresses(after_old[0]) == without_addresses(before_old[0])
    assert after_recent == before_recent
    for before_row, after_row in zip(before_old[1], after_old[1], strict=True):
        assert {k: v for k, v in after_row.items() if k not in CSV_PERSONAL} == {
            k: v for k, v in before_row.items() if k not in CSV_PERSONAL}
        if after_row["id"] == incident_ref(old_closed):
            assert (after_row["address"], after_row["lat"], after_row["lon"]) == ("", "-6.200000", "106.830000")
    assert after_old[0]["overall"]["dispatch"]["count"] == 2  # not an empty answer compared with another

    [(actor, detail)] = db_rows(db, "SELECT actor, detail FROM audit_log WHERE action = 'retention_purge'")
    assert actor == "system:retention"
    assert json.loads(detail) == {"days": 365, "closed_before": rfc3339(ago(365)), "incidents": 1, "notes": 6,
                                  "decline_reasons": 2, "alarms": 1, "webhook_events": 1, "handover_notes": 0}
    shown = (await api.client.get(f"/api/v1/incidents/{incident_ref(old_closed)}", headers=SUPERVISOR)).json()
    assert shown["purged_at"] == rfc3339(NOW) and shown["location"]["address"] == ""

    # Idempotent: a second round, even much later, finds nothing and writes nothing.
    snapshot = {name: table(db, name) for name in ("incidents", "alarms", "incident_history", "audit_log",
                                                   "dispatches", "dispatch_history", "webhook_outbox")}
    again = await RetentionTask(store, RetentionSettings(days=365)).run_once(NOW + timedelta(hours=1))
    assert not again
    assert {name: table(db, name) for name in snapshot} == snapshot
    assert await store.purge_due(now=NOW, days=365) == 0


async def test_the_leader_purges_when_it_starts_and_then_on_its_schedule(tmp_path: Path) -> None:
    db = tmp_path / "cc.sqlite3"
    store = await Store.open(db)
    try:
        number = await incident(store, 1, ago(40))
        await store.apply_action(number, Action.FALSE_ALARM, actor="operator-1", now=ago(39), note=PERSONAL)
        fresh = await incident(store, 2, ago(20), device="jkt-menteng-0043")
        await store.apply_action(fresh, Action.FALSE_ALARM, actor="operator-1", now=ago(19))
    finally:
        await store.close()
    async with running_api(db, retention=RetentionSettings(days=30, every_s=3600), **PEOPLE):
        purged = await asyncio.to_thread(wait_for, lambda: db_rows(
            db, "SELECT id FROM incidents WHERE purged_at IS NOT NULL"), 5, "a purge by the background task")
    assert purged == [(number,)]
    assert len(db_rows(db, "SELECT id FROM audit_log WHERE action = 'retention_purge'")) == 1


def test_retention_and_second_escalation_are_configured_in_the_toml(tmp_path: Path) -> None:
    (tmp_path / "intake.token").write_text(INTAKE_TOKEN)
    (tmp_path / "op.token").write_text(OPERATOR_TOKEN)
    base = '[intake]\ntoken_file = "intake.token"\n[[operators]]\nname = "op-1"\ntoken_file = "op.token"\n'

    def load(extra: str) -> CCConfig:
        (tmp_path / "cc.toml").write_text(base + extra)
        return CCConfig.load(tmp_path / "cc.toml")

    cfg = load("")
    assert (cfg.retention.days, cfg.retention.every_s, cfg.escalation.second_after_s) == (365, 3600.0, 300.0)
    cfg = load('[retention]\ndays = 0\nevery_s = 60\n[escalation]\nsecond_after_s = 0\n'
               'second_webhook_url = "https://sup.example.go.id/hook"\n')
    assert (cfg.retention.days, cfg.retention.every_s) == (0, 60.0)
    assert (cfg.escalation.second_after_s, cfg.escalation.second_webhook_url) == (0.0, "https://sup.example.go.id/hook")
    for extra, message in (
        ("[retention]\ndays = -1\n", "retention.days"),
        ('[retention]\ndays = "365"\n', "retention.days"),
        ("[retention]\nevery_s = 0\n", "retention.every_s"),
        ("[retention]\nkeep = 3\n", "keep"),
        ('[escalation]\nsecond_webhook_url = "ftp://x"\n', "second_webhook_url"),
        ("[escalation]\nsecond_after_s = -5\n", "second_after_s"),
    ):
        with pytest.raises(ConfigError, match=message):
            load(extra)


@pytest.fixture
async def any_store(store_target: str | Path) -> AsyncIterator[Store]:
    store = await Store.open(store_target)
    try:
        yield store
    finally:
        await store.close()


async def test_shifts_second_escalation_and_purge_in_either_engine(any_store: Store) -> None:
    """The SQL of shifts, the second level and the purge, on SQLite and on PostgreSQL alike."""
    store = any_store
    await store.start_shift("sup-1", "supervisor", now=ago(2))
    number = await incident(store, 1, ago(1))
    [first] = await store.escalate_due(now=ago(1, 60), after_s=60)
    [second] = await store.escalate_second_due(now=ago(1, 360), after_s=300, webhook_body=lambda i, t, s: "{}",
                                               second_receiver=True)
    assert second.escalated2_at == ago(1, 360) and first.number == second.number == number
    assert await store.escalate_second_due(now=ago(1, 900), after_s=300) == []  # once
    assert (await store.pending(SECOND_WEBHOOK_OUTBOX), await store.pending(WEBHOOK_OUTBOX)) == (1, 0)
    assert await store.reroute_second_level_webhooks() == 1
    assert (await store.pending(SECOND_WEBHOOK_OUTBOX), await store.pending(WEBHOOK_OUTBOX)) == (0, 1)
    await store.apply_action(number, Action.ACKNOWLEDGE, actor="sup-1", now=ago(1, 1000), note=PERSONAL)
    [handling] = await store.handlings(since=ago(2), until=NOW)
    assert handling.acknowledged_at == ago(1, 1000) and handling.dispatched_at is None
    ended = await store.hand_over("sup-1", note=PERSONAL, to=None, now=ago(1, 2000))
    assert ended.open_at_handover == (incident_ref(number),)
    await store.apply_action(number, Action.FALSE_ALARM, actor="sup-1", now=ago(0.5))
    done = await store.purge_closed(now=NOW + timedelta(days=1), days=1)
    assert (done.incidents, done.notes, done.alarms, done.handover_notes) == (1, 2, 1, 1)
    assert not await store.purge_closed(now=NOW + timedelta(days=1), days=1)
    purged = await store.get_incident(number)
    assert purged is not None and (purged.address, purged.lat, purged.purged_at) == ("", round(LAT, 2),
                                                                                   NOW + timedelta(days=1))

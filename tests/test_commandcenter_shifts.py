"""Shifts, per-operator and per-shift figures, and the second escalation level of the command center.

The app runs in-process on a real SQLite file. The figures are checked exactly: incidents are opened,
acknowledged and dispatched at chosen instants (the store takes `now=`; dispatch rows are written as
schema version 7 defines them), and the expected values are computed here from those instants with
the standard library's `statistics`. The second escalation's webhook is received by a real HTTP
server."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import statistics
import threading
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from siaga.commandcenter.config import EscalationSettings, Operator, Role
from siaga.commandcenter.domain import Action, incident_ref, rfc3339
from siaga.commandcenter.store import NewAlarm, Store
from tests.support.receiver import Answer, HttpReceiver, Request
from tests.test_commandcenter import (
    INTAKE_TOKEN,
    OPERATOR,
    OPERATOR2,
    OPERATOR2_TOKEN,
    OPERATOR_TOKEN,
    Api,
    db_rows,
    running_api,
)

SUPERVISOR_TOKEN = "supervisor-" + "s" * 24
AGENCY_TOKEN = "agency-" + "a" * 24
SUPERVISOR = {"Authorization": f"Bearer {SUPERVISOR_TOKEN}"}
AGENCY = {"Authorization": f"Bearer {AGENCY_TOKEN}"}
PEOPLE: dict[str, Any] = {
    "operator_tokens": {OPERATOR_TOKEN: "operator-1", OPERATOR2_TOKEN: "operator-2",
                        SUPERVISOR_TOKEN: "sup-1", AGENCY_TOKEN: "damkar-1"},
    "operators": {"sup-1": Operator("sup-1", Role.SUPERVISOR),
                  "damkar-1": Operator("damkar-1", Role.AGENCY, agency="fire")},
}
assert INTAKE_TOKEN not in PEOPLE["operator_tokens"]
# Far enough back that nothing of the wall clock's own incidents falls in the windows used here.
T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path / "cc.sqlite3", **PEOPLE) as running:
        yield running


def store_of(api: Api) -> Store:
    return api.app.state.services.store


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def open_incident(store: Store, seq: int, created_s: float, *, test: bool = False) -> int:
    outcome = await store.record_alarm(
        NewAlarm(event_id=f"gw-1:jkt-menteng-0042:{seq}", gateway_id="gw-1", device_id="jkt-menteng-0042",
                 seq=seq, kind="medical", test=test, lat=-6.195733, lon=106.832085,
                 address="Jl. Menteng Raya 12", area="31.71.06.1001", raised_at=None,
                 received_at=at(created_s), fingerprint=f"f{seq}"),
        now=at(created_s),
    )
    return outcome.incident


def add_dispatch(db: Path, number: int, agency: str, by: str, requested_s: float) -> None:
    """A dispatch row as schema version 7 defines it (the dispatch store writes the same)."""
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            """INSERT INTO dispatches (incident_id, agency, status, requested_at, requested_by, updated_at,
                   updated_by) VALUES (?, ?, 'requested', ?, ?, ?, ?)""",
            (number, agency, rfc3339(at(requested_s)), by, rfc3339(at(requested_s)), by),
        )


# ---- signing on, on duty, handover ------------------------------------------------------------------


async def test_sign_on_twice_is_409_and_agency_accounts_have_no_shifts(api: Api) -> None:
    r = await api.client.post("/api/v1/shifts", headers=OPERATOR)
    assert r.status_code == 201, r.text
    shift = r.json()
    assert (shift["operator"], shift["role"], shift["ended_at"], shift["open_at_handover"]) == (
        "operator-1", "operator", None, [])
    again = await api.client.post("/api/v1/shifts", headers=OPERATOR)
    assert again.status_code == 409
    assert again.json()["detail"] == f"operator-1 is already on duty since {shift['started_at']}"
    assert (await api.client.post("/api/v1/shifts", headers=AGENCY)).status_code == 403
    assert (await api.client.get("/api/v1/shifts/current", headers=OPERATOR)).json()["id"] == shift["id"]
    assert (await api.client.get("/api/v1/shifts/current", headers=OPERATOR2)).status_code == 404
    [(n,)] = db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM shifts")
    assert n == 1


async def test_handover_carries_the_open_incidents_over(api: Api) -> None:
    assert (await api.client.post("/api/v1/shifts", headers=OPERATOR)).status_code == 201
    assert (await api.client.post("/api/v1/shifts", headers=SUPERVISOR)).status_code == 201
    on_duty = (await api.client.get("/api/v1/shifts/on-duty", headers=AGENCY)).json()
    assert [(s["operator"], s["role"]) for s in on_duty] == [("operator-1", "operator"), ("sup-1", "supervisor")]

    still_new = await api.new_incident(seq=1)
    acknowledged = await api.new_incident(seq=2, device="jkt-menteng-0043")
    closed = await api.new_incident(seq=3, device="jkt-menteng-0044")
    assert (await api.act(acknowledged, "acknowledge")).status_code == 200
    assert (await api.act(closed, "false-alarm")).status_code == 200

    for bad in ({"note": "x", "to": "not a name"}, {"note": ""}, {"note": "x", "open": []}):
        r = await api.client.post("/api/v1/shifts/current/handover", headers=OPERATOR, json=bad)
        assert r.status_code == 422, bad
    assert (await api.client.get("/api/v1/shifts/current", headers=OPERATOR)).status_code == 200  # still on
    r = await api.client.post("/api/v1/shifts/current/handover", headers=OPERATOR,
                              json={"note": "Menteng 12: caller hard of hearing", "to": "operator-2"})
    assert r.status_code == 200, r.text
    ended = r.json()
    assert ended["open_at_handover"] == sorted([still_new, acknowledged])
    assert (ended["handover_note"], ended["handed_to"]) == ("Menteng 12: caller hard of hearing", "operator-2")
    assert ended["ended_at"] is not None
    assert (await api.client.get("/api/v1/shifts/current", headers=OPERATOR)).status_code == 404
    assert (await api.client.post("/api/v1/shifts/current/handover", headers=OPERATOR,
                                  json={"note": "again"})).status_code == 404
    on_duty = (await api.client.get("/api/v1/shifts/on-duty", headers=OPERATOR)).json()
    assert [s["operator"] for s in on_duty] == ["sup-1"]
    # The next shift of the same person is a new one.
    assert (await api.client.post("/api/v1/shifts", headers=OPERATOR)).json()["id"] != ended["id"]
    listed = await api.client.get("/api/v1/shifts", headers=SUPERVISOR, params={"operator": "operator-1"})
    assert [s["id"] for s in listed.json()][1] == ended["id"]  # newest first
    actions = [a for (a,) in db_rows(api.cfg.db_path, "SELECT action FROM audit_log WHERE action LIKE 'shift%'")]
    assert actions == ["shift_started", "shift_started", "shift_handover", "shift_started"]


# ---- figures ----------------------------------------------------------------------------------------


async def test_per_operator_and_per_shift_figures_are_exact(api: Api) -> None:
    store, db = store_of(api), api.cfg.db_path
    shift = await store.start_shift("operator-1", "operator", now=at(0))
    # (created, acknowledged by, at): seconds after T0
    one = await open_incident(store, 1, 10)
    await store.apply_action(one, Action.ACKNOWLEDGE, actor="operator-1", now=at(22.5))
    add_dispatch(db, one, "ambulance", "operator-1", 70)
    two = await open_incident(store, 2, 100)
    await store.apply_action(two, Action.ACKNOWLEDGE, actor="operator-1", now=at(104.25))
    add_dispatch(db, two, "fire", "operator-2", 190)  # the first dispatch: operator-2's
    add_dispatch(db, two, "police", "operator-1", 300)  # a later one counts for nobody
    three = await open_incident(store, 3, 200)
    await store.apply_action(three, Action.ACKNOWLEDGE, actor="operator-2", now=at(230))
    test_press = await open_incident(store, 4, 240, test=True)
    await store.apply_action(test_press, Action.ACKNOWLEDGE, actor="operator-1", now=at(241))
    await store.hand_over("operator-1", note="quiet night", to=None, now=at(400))
    five = await open_incident(store, 5, 500)
    await store.apply_action(five, Action.ACKNOWLEDGE, actor="operator-1", now=at(520))
    outside = await open_incident(store, 6, 2000)  # after the period asked for
    await store.apply_action(outside, Action.ACKNOWLEDGE, actor="operator-2", now=at(2001))

    window = {"since": rfc3339(at(0)), "until": rfc3339(at(1000))}
    r = await api.client.get("/api/v1/stats/operators", headers=SUPERVISOR, params=window)
    assert r.status_code == 200, r.text
    acks = {"operator-1": [22.5 - 10, 104.25 - 100, 520 - 500], "operator-2": [230 - 200]}
    dispatches = {"operator-1": [70 - 10], "operator-2": [190 - 100]}
    expected = [
        {"operator": name, "answered": len(acks[name]), "ack_s_mean": statistics.mean(acks[name]),
         "ack_s_median": statistics.median(acks[name]), "ack_s_max": max(acks[name]),
         "dispatched": len(dispatches[name]), "dispatch_s_mean": statistics.mean(dispatches[name]),
         "dispatch_s_median": statistics.median(dispatches[name])}
        for name in ("operator-1", "operator-2")
    ]
    assert r.json() == expected

    r = await api.client.get(f"/api/v1/shifts/{shift.id}/figures", headers=SUPERVISOR)
    assert r.status_code == 200, r.text
    figures = r.json()
    in_shift = [22.5 - 10, 104.25 - 100]  # incident 5 was acknowledged after the handover
    assert figures["shift"]["id"] == shift.id and figures["shift"]["ended_at"] == rfc3339(at(400))
    assert {k: v for k, v in figures.items() if k != "shift"} == {
        "operator": "operator-1", "answered": 2, "ack_s_mean": statistics.mean(in_shift),
        "ack_s_median": statistics.median(in_shift), "ack_s_max": max(in_shift),
        "dispatched": 1, "dispatch_s_mean": 70 - 10, "dispatch_s_median": 70 - 10,
    }
    # Open at the handover, the test press too (a technician may still be on site): they carry over.
    assert figures["shift"]["open_at_handover"] == [incident_ref(n) for n in (one, two, three, test_press)]


async def test_figures_are_for_supervisors_and_refuse_a_bad_period(api: Api) -> None:
    for headers in (OPERATOR, AGENCY):
        assert (await api.client.get("/api/v1/stats/operators", headers=headers)).status_code == 403
        assert (await api.client.get("/api/v1/shifts", headers=headers)).status_code == 403
        assert (await api.client.get("/api/v1/shifts/1/figures", headers=headers)).status_code == 403
    r = await api.client.get("/api/v1/stats/operators", headers=SUPERVISOR,
                             params={"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"})
    assert r.status_code == 422 and r.json()["detail"] == "'since' must be before 'until'"
    r = await api.client.get("/api/v1/stats/operators", headers=SUPERVISOR, params={"since": "yesterday"})
    assert r.status_code == 422
    r = await api.client.get("/api/v1/shifts/99/figures", headers=SUPERVISOR)
    assert r.status_code == 404 and r.json()["detail"] == "no shift 99"
    r = await api.client.get("/api/v1/stats/operators", headers=SUPERVISOR)
    assert r.status_code == 200 and r.json() == []  # nothing acknowledged in the last seven days


# ---- second escalation level ------------------------------------------------------------------------


class Hook(HttpReceiver):
    """A city's receiver: keeps every body it is sent, answers 204."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        super().__init__(self._take)

    def _take(self, request: Request) -> Answer:
        return Answer(204, after=lambda: self._keep(json.loads(request.body)))

    def _keep(self, body: dict[str, Any]) -> None:
        with self._cond:
            self.bodies.append(body)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.bodies) >= n, timeout_s):
                raise AssertionError(f"{n} webhook events not received within {timeout_s} s: {self.bodies}")
            return list(self.bodies)


async def test_second_escalation_names_the_supervisor_on_duty_and_reaches_its_webhook(tmp_path: Path) -> None:
    with Hook() as first, Hook() as second:
        escalation = EscalationSettings(after_s=0.1, webhook_url=first.url, second_after_s=0.3,
                                        second_webhook_url=second.url)
        async with running_api(tmp_path / "cc.sqlite3", escalation=escalation, **PEOPLE) as api:
            assert (await api.client.post("/api/v1/shifts", headers=SUPERVISOR)).status_code == 201
            assert (await api.client.post("/api/v1/shifts", headers=OPERATOR)).status_code == 201
            ref = await api.new_incident(seq=1)
            [body] = await asyncio.to_thread(second.wait_for, 1)
            incident = (await api.client.get(f"/api/v1/incidents/{ref}", headers=OPERATOR)).json()
            await asyncio.sleep(0.5)  # time for a wrong third escalation, to any receiver
            first_bodies = first.bodies
        second_bodies = second.bodies

    assert [b["event_id"] for b in first_bodies] == [f"{ref}:escalated"]  # level 1 only
    assert [b["event_id"] for b in second_bodies] == [f"{ref}:escalated:2"]  # once
    assert (body["event"], body["level"], body["supervisors_on_duty"]) == ("incident.escalated", 2, ["sup-1"])
    assert body["incident"]["id"] == ref and body["incident"]["escalated2_at"] is not None
    escalated = datetime.fromisoformat(incident["escalated_at"])
    escalated2 = datetime.fromisoformat(incident["escalated2_at"])
    assert escalated2 - escalated >= timedelta(seconds=0.3)
    [entry] = [h for h in incident["history"] if h["kind"] == "escalation" and (h["detail"] or {}).get("level")]
    assert entry["detail"] == {"level": 2, "after_s": 0.3, "supervisors_on_duty": ["sup-1"]}
    [(actor, target, detail)] = db_rows(tmp_path / "cc.sqlite3",
                                        "SELECT actor, target, detail FROM audit_log WHERE action = 'escalated_2'")
    assert (actor, target, json.loads(detail)["supervisors_on_duty"]) == ("system:escalation", ref, ["sup-1"])


async def test_without_a_second_url_the_second_level_goes_to_the_first_webhook(tmp_path: Path) -> None:
    with Hook() as first:
        escalation = EscalationSettings(after_s=0.1, webhook_url=first.url, second_after_s=0.1)
        async with running_api(tmp_path / "cc.sqlite3", escalation=escalation, **PEOPLE) as api:
            ref = await api.new_incident(seq=1)
            bodies = await asyncio.to_thread(first.wait_for, 2)
    assert [(b["event_id"], b.get("level")) for b in bodies] == [(f"{ref}:escalated", None),
                                                                 (f"{ref}:escalated:2", 2)]
    assert bodies[1]["supervisors_on_duty"] == []  # nobody signed on: said so, not left out

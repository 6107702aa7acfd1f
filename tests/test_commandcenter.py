"""Tests of the reference command center.

Fast cases run the ASGI app in-process (httpx.ASGITransport, with the real lifespan and a real SQLite
file); the chain-of-custody cases run it as a real separate process (tests/support/ccproc.py) and
receive its state reports with a real HTTP server standing in for the gateway.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st

import siaga.commandcenter
from siaga.commandcenter import store as store_module
from siaga.commandcenter.app import create_app
from siaga.commandcenter.callbacks import backoff_delay
from siaga.commandcenter.config import CallbackSettings, CCConfig
from siaga.commandcenter.domain import ALLOWED_FROM, IncidentState
from siaga.commandcenter.store import SchemaTooNewError, Store
from siaga.settings import ConfigError
from tests.support.ccproc import CommandCenterProcess
from tests.support.net import free_port
from tests.support.receiver import Answer, HttpReceiver, Request

INTAKE_TOKEN = "intake-" + "i" * 24
OPERATOR_TOKEN = "operator-" + "o" * 24
OPERATOR2_TOKEN = "operator2-" + "p" * 24
GATEWAY_TOKEN = "gateway-" + "g" * 24


def alarm(seq: int = 4711, device: str = "jkt-menteng-0042", gateway: str = "gw-1", **changes: Any) -> dict:
    body: dict[str, Any] = {
        "event_id": f"{gateway}:{device}:{seq}",
        "gateway_id": gateway,
        "device_id": device,
        "seq": seq,
        "kind": "medical",
        "test": False,
        "location": {
            "lat": -6.195733,
            "lon": 106.832085,
            "address": "Jl. Menteng Raya 12",
            "area": "31.71.06.1001",
        },
        "raised_at": "2026-11-24T03:12:09Z",
        "received_at": "2026-11-24T03:12:09.412Z",
    }
    body.update(changes)
    return body


def intake_headers(event_id: str, token: str = INTAKE_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Idempotency-Key": event_id}


OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
OPERATOR2 = {"Authorization": f"Bearer {OPERATOR2_TOKEN}"}


# ---- in-process app ----------------------------------------------------------------------------


@dataclass
class Api:
    client: httpx.AsyncClient
    cfg: CCConfig
    app: FastAPI

    async def post_alarm(self, body: dict, **kw: Any) -> httpx.Response:
        return await self.client.post("/api/v1/alarms", json=body, headers=intake_headers(body["event_id"]), **kw)

    async def new_incident(self, seq: int = 4711, device: str = "jkt-menteng-0042") -> str:
        r = await self.post_alarm(alarm(seq=seq, device=device))
        assert r.status_code == 201, r.text
        return r.json()["incident_id"]

    async def act(self, incident: str, action: str, headers: dict[str, str] = OPERATOR, **body: Any) -> httpx.Response:
        return await self.client.post(f"/api/v1/incidents/{incident}/{action}", json=body or None, headers=headers)


def make_config(db_path: Path, **changes: Any) -> CCConfig:
    fields: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 8300,
        "db_path": db_path,
        "intake_token": INTAKE_TOKEN,
        "operator_tokens": {OPERATOR_TOKEN: "operator-1", OPERATOR2_TOKEN: "operator-2"},
    }
    fields.update(changes)
    return CCConfig(**fields)


@asynccontextmanager
async def running_api(db_path: Path, **config_changes: Any) -> AsyncIterator[Api]:
    """The app on `db_path`, in-process (also used by tests/test_commandcenter_grouping.py and
    tests/test_commandcenter_console.py)."""
    cfg = make_config(db_path, **config_changes)
    app = create_app(cfg)
    # ASGITransport does not run the lifespan; run it here so the store really opens and closes.
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cc.test") as client:
            yield Api(client, cfg, app)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path / "cc.sqlite3") as running:
        yield running


def db_rows(db_path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    with closing(sqlite3.connect(db_path)) as db:
        return db.execute(sql, params).fetchall()


async def test_health_needs_no_token(api: Api) -> None:
    r = await api.client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_intake_creates_an_incident(api: Api) -> None:
    r = await api.post_alarm(alarm())
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer == {
        "event_id": "gw-1:jkt-menteng-0042:4711",
        "incident_id": answer["incident_id"],
        "state": "received",
    }
    assert answer["incident_id"].startswith("inc-")
    assert len(answer["incident_id"]) == 10

    r = await api.client.get(f"/api/v1/incidents/{answer['incident_id']}", headers=OPERATOR)
    assert r.status_code == 200, r.text
    inc = r.json()
    assert inc["state"] == "new"
    assert inc["device_id"] == "jkt-menteng-0042"
    assert inc["kind"] == "medical"
    assert inc["test"] is False
    assert inc["location"] == {
        "lat": -6.195733,
        "lon": 106.832085,
        "address": "Jl. Menteng Raya 12",
        "area": "31.71.06.1001",
    }
    assert inc["event_count"] == 1
    # Without the incident-layer fields (protocol §7) the alarm is an incident of its own.
    assert (inc["press_count"], inc["sources"], inc["incident_key"]) == (1, ["jkt-menteng-0042"], None)
    [event] = inc["events"]
    assert event["event_id"] == "gw-1:jkt-menteng-0042:4711"
    assert event["seq"] == 4711
    assert event["raised_at"] == "2026-11-24T03:12:09.000Z"
    assert event["received_at"] == "2026-11-24T03:12:09.412Z"
    [created] = inc["history"]
    assert created["actor"] == "gateway:gw-1"
    assert created["from_state"] is None
    assert created["to_state"] == "new"


async def test_repeated_key_answers_200_with_the_same_body_and_creates_nothing(api: Api) -> None:
    first = await api.post_alarm(alarm())
    again = await api.post_alarm(alarm())
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.content == first.content

    incidents = (await api.client.get("/api/v1/incidents", headers=OPERATOR)).json()
    assert [i["id"] for i in incidents] == [first.json()["incident_id"]]
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM alarms") == [(1,)]
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM incidents") == [(1,)]


async def test_repeated_key_after_acknowledge_still_answers_the_same(api: Api) -> None:
    first = await api.post_alarm(alarm())
    assert (await api.act(first.json()["incident_id"], "acknowledge")).status_code == 200
    again = await api.post_alarm(alarm())
    assert again.status_code == 200
    assert again.json() == first.json()


async def test_concurrent_sends_of_one_key_create_one_alarm(api: Api) -> None:
    answers = await asyncio.gather(*(api.post_alarm(alarm()) for _ in range(20)))
    assert sorted(a.status_code for a in answers) == [200] * 19 + [201]
    assert len({a.content for a in answers}) == 1
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM alarms") == [(1,)]
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM incidents") == [(1,)]


async def test_a_null_raised_at_is_accepted(api: Api) -> None:
    r = await api.post_alarm(alarm(raised_at=None))
    assert r.status_code == 201, r.text
    inc = (await api.client.get(f"/api/v1/incidents/{r.json()['incident_id']}", headers=OPERATOR)).json()
    assert inc["events"][0]["raised_at"] is None


async def test_idempotency_key_must_equal_event_id(api: Api) -> None:
    body = alarm()
    r = await api.client.post("/api/v1/alarms", json=body, headers=intake_headers("gw-1:jkt-menteng-0042:4712"))
    assert r.status_code == 422
    assert "Idempotency-Key" in r.text
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM alarms") == [(0,)]


async def test_idempotency_key_is_required(api: Api) -> None:
    r = await api.client.post("/api/v1/alarms", json=alarm(), headers={"Authorization": f"Bearer {INTAKE_TOKEN}"})
    assert r.status_code == 422
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM alarms") == [(0,)]


async def test_a_reused_key_with_a_different_body_is_refused(api: Api) -> None:
    assert (await api.post_alarm(alarm())).status_code == 201
    r = await api.post_alarm(alarm(kind="fire"))
    assert r.status_code == 422
    assert "different body" in r.text
    assert db_rows(api.cfg.db_path, "SELECT kind FROM alarms") == [("medical",)]


def _without(key: str) -> dict:
    body = alarm()
    del body[key]
    return body


def _location(**changes: Any) -> dict:
    body = alarm()
    body["location"] = {**body["location"], **changes}
    return body


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_without("received_at"), id="missing-received_at"),
        pytest.param(_without("location"), id="missing-location"),
        pytest.param(_without("raised_at"), id="missing-raised_at"),
        pytest.param(alarm(seq=-1, event_id="gw-1:jkt-menteng-0042:-1"), id="negative-seq"),
        pytest.param(alarm(seq=2**31, event_id=f"gw-1:jkt-menteng-0042:{2**31}"), id="seq-too-big"),
        pytest.param(alarm(seq="4711"), id="seq-as-string"),
        pytest.param(alarm(test="yes"), id="test-not-bool"),
        pytest.param(alarm(kind="Medical!"), id="kind-malformed"),
        pytest.param(alarm(device="X", event_id="gw-1:X:4711"), id="device-id-malformed"),
        pytest.param(alarm(event_id="gw-1:jkt-menteng-0042:4712"), id="event-id-not-gw-dev-seq"),
        pytest.param(alarm(received_at="2026-11-24T03:12:09"), id="naive-time"),
        pytest.param(alarm(received_at="yesterday"), id="not-a-time"),
        pytest.param(_location(lat=91.0), id="lat-out-of-range"),
        pytest.param(_location(lon=-180.5), id="lon-out-of-range"),
        pytest.param(_location(address=None), id="address-null"),
    ],
)
async def test_invalid_bodies_are_refused_with_422(api: Api, body: dict) -> None:
    r = await api.client.post("/api/v1/alarms", json=body, headers=intake_headers(body["event_id"]))
    assert r.status_code == 422, r.text
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM alarms") == [(0,)]


async def test_malformed_json_is_refused_with_422(api: Api) -> None:
    r = await api.client.post(
        "/api/v1/alarms",
        content=b'{"event_id": ',
        headers={**intake_headers("gw-1:jkt-menteng-0042:4711"), "Content-Type": "application/json"},
    )
    assert r.status_code == 422


async def test_unknown_fields_are_ignored_and_unknown_kinds_accepted(api: Api) -> None:
    # A newer gateway or firmware must still get its alarm through (protocol §4: unknown fields
    # are ignored); an unknown kind is shown as sent rather than dropped.
    r = await api.post_alarm(alarm(kind="flood", firmware="2.0", extra={"x": 1}))
    assert r.status_code == 201, r.text
    inc = (await api.client.get(f"/api/v1/incidents/{r.json()['incident_id']}", headers=OPERATOR)).json()
    assert inc["kind"] == "flood"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-token"),
        pytest.param({"Authorization": "Bearer wrong-token-wrong-token"}, id="wrong-token"),
        pytest.param({"Authorization": f"Basic {INTAKE_TOKEN}"}, id="wrong-scheme"),
        pytest.param({"Authorization": f"Bearer {OPERATOR_TOKEN}"}, id="operator-token"),
        pytest.param({"Authorization": "Bearer tökén-tökén-tökén-tökén".encode("latin-1")}, id="non-ascii"),
    ],
)
async def test_intake_needs_the_intake_token(api: Api, headers: dict[str, str | bytes]) -> None:
    body = alarm()
    r = await api.client.post("/api/v1/alarms", json=body, headers={**headers, "Idempotency-Key": body["event_id"]})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM alarms") == [(0,)]


async def test_authentication_comes_before_validation(api: Api) -> None:
    # An unauthenticated caller learns nothing from validation messages.
    r = await api.client.post("/api/v1/alarms", json={"nonsense": True})
    assert r.status_code == 401


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-token"),
        pytest.param({"Authorization": f"Bearer {INTAKE_TOKEN}"}, id="intake-token"),
        pytest.param({"Authorization": "Bearer wrong-token-wrong-token"}, id="wrong-token"),
    ],
)
async def test_operator_endpoints_need_an_operator_token(api: Api, headers: dict[str, str]) -> None:
    incident = await api.new_incident()
    assert (await api.client.get("/api/v1/incidents", headers=headers)).status_code == 401
    assert (await api.client.get(f"/api/v1/incidents/{incident}", headers=headers)).status_code == 401
    assert (await api.act(incident, "acknowledge", headers=headers)).status_code == 401
    inc = (await api.client.get(f"/api/v1/incidents/{incident}", headers=OPERATOR)).json()
    assert inc["state"] == "new"


def test_transition_rules_only_move_up_the_button_order() -> None:
    # Protocol §4.4: a button ignores a state that ranks below the one it holds, so the command
    # center must never report one.
    rank = {s: i for i, s in enumerate(IncidentState)}
    for action, sources in ALLOWED_FROM.items():
        for source in sources:
            assert rank[action.target] > rank[source], (source, action)


@pytest.mark.parametrize(
    "steps",
    [
        [("acknowledge", 200), ("dispatch", 200), ("resolve", 200)],
        [("acknowledge", 200), ("resolve", 200)],
        [("false-alarm", 200)],
        [("acknowledge", 200), ("false-alarm", 200)],
        [("acknowledge", 200), ("dispatch", 200), ("false-alarm", 200)],
        [("resolve", 409)],
        [("dispatch", 409)],
        [("acknowledge", 200), ("acknowledge", 409)],
        [("acknowledge", 200), ("dispatch", 200), ("dispatch", 409), ("acknowledge", 409)],
        [("acknowledge", 200), ("resolve", 200), ("false-alarm", 409), ("dispatch", 409), ("resolve", 409)],
        [("false-alarm", 200), ("acknowledge", 409), ("resolve", 409)],
        [("refer", 200)],
        [("acknowledge", 200), ("refer", 200), ("acknowledge", 409)],
        [("acknowledge", 200), ("dispatch", 200), ("refer", 200), ("false-alarm", 409), ("refer", 409)],
        [("acknowledge", 200), ("resolve", 200), ("refer", 409)],
        [("false-alarm", 200), ("refer", 409)],
    ],
    ids=lambda steps: "-".join(f"{a}:{s}" for a, s in steps),
)
async def test_state_transitions(api: Api, steps: list[tuple[str, int]]) -> None:
    incident = await api.new_incident()
    expected_state = "new"
    for action, status in steps:
        body = {"agency": "ambulance"} if action == "dispatch" else {}
        r = await api.act(incident, action, **body)
        assert r.status_code == status, (action, r.text)
        if status == 200:
            expected_state = r.json()["state"]
        else:
            assert expected_state in r.json()["detail"]
    inc = (await api.client.get(f"/api/v1/incidents/{incident}", headers=OPERATOR)).json()
    assert inc["state"] == expected_state
    # One history entry per successful change, plus the creation.
    assert len(inc["history"]) == 1 + sum(1 for _, s in steps if s == 200)


async def test_concurrent_acknowledges_let_exactly_one_win(api: Api) -> None:
    incident = await api.new_incident()
    answers = await asyncio.gather(*(api.act(incident, "acknowledge", headers=h) for h in [OPERATOR, OPERATOR2] * 5))
    assert sorted(a.status_code for a in answers) == [200] + [409] * 9
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM callback_outbox") == [(1,)]


async def test_actions_record_who_and_when(api: Api) -> None:
    incident = await api.new_incident()
    now = datetime.now().astimezone()
    before = now.replace(microsecond=now.microsecond // 1000 * 1000)  # times are kept to the millisecond
    assert (await api.act(incident, "acknowledge", headers=OPERATOR)).status_code == 200
    r = await api.act(incident, "dispatch", headers=OPERATOR2, agency="fire", note="two units")
    assert r.status_code == 200, r.text
    r = await api.act(incident, "resolve", headers=OPERATOR)
    assert r.status_code == 200
    inc = (await api.client.get(f"/api/v1/incidents/{incident}", headers=OPERATOR)).json()
    assert inc["state"] == "resolved"
    assert (inc["acknowledged_by"], inc["dispatched_by"], inc["closed_by"]) == (
        "operator-1",
        "operator-2",
        "operator-1",
    )
    assert inc["agency"] == "fire"
    times = [datetime.fromisoformat(inc[k]) for k in ("acknowledged_at", "dispatched_at", "closed_at")]
    assert before <= times[0] <= times[1] <= times[2]
    assert [(h["actor"], h["from_state"], h["to_state"]) for h in inc["history"]] == [
        ("gateway:gw-1", None, "new"),
        ("operator-1", "new", "acknowledged"),
        ("operator-2", "acknowledged", "dispatched"),
        ("operator-1", "dispatched", "resolved"),
    ]
    assert inc["history"][2]["detail"] == {"agency": "fire", "note": "two units"}


async def test_dispatch_needs_an_agency(api: Api) -> None:
    incident = await api.new_incident()
    await api.act(incident, "acknowledge")
    assert (await api.act(incident, "dispatch")).status_code == 422
    assert (await api.act(incident, "dispatch", agency="")).status_code == 422
    assert (await api.act(incident, "dispatch", agency="damkar-jakpus")).status_code == 422  # not configured
    assert (await api.act(incident, "resolve", nonsense=1)).status_code == 422


@pytest.mark.parametrize("incident", ["inc-999999", "inc-17", "17", "garbage"])
async def test_unknown_incidents_are_404(api: Api, incident: str) -> None:
    await api.new_incident()
    assert (await api.client.get(f"/api/v1/incidents/{incident}", headers=OPERATOR)).status_code == 404
    assert (await api.act(incident, "acknowledge")).status_code == 404


async def test_list_puts_unacknowledged_first_then_newest(api: Api) -> None:
    a = await api.new_incident(seq=1)
    b = await api.new_incident(seq=2)
    c = await api.new_incident(seq=3)
    d = await api.new_incident(seq=4)
    await api.act(c, "acknowledge")
    await api.act(d, "false-alarm")
    r = await api.client.get("/api/v1/incidents", headers=OPERATOR)
    assert [i["id"] for i in r.json()] == [b, a, c, d]

    r = await api.client.get("/api/v1/incidents?state=new&state=acknowledged&limit=2", headers=OPERATOR)
    assert [i["id"] for i in r.json()] == [b, a]
    r = await api.client.get("/api/v1/incidents?state=false_alarm", headers=OPERATOR)
    assert [i["id"] for i in r.json()] == [d]
    assert (await api.client.get("/api/v1/incidents?state=bogus", headers=OPERATOR)).status_code == 422


async def test_actions_queue_one_state_report_per_event(api: Api) -> None:
    # No gateway is configured here: reports are kept in the outbox, not dropped.
    incident = await api.new_incident()
    await api.act(incident, "acknowledge")
    await api.act(incident, "resolve")
    rows = db_rows(api.cfg.db_path, "SELECT state, body, delivered_at FROM callback_outbox ORDER BY id")
    assert [(r[0], r[2]) for r in rows] == [("acknowledged", None), ("resolved", None)]
    body = json.loads(rows[0][1])
    assert body == {
        "event_id": "gw-1:jkt-menteng-0042:4711",
        "device_id": "jkt-menteng-0042",
        "seq": 4711,
        "state": "acknowledged",
        "incident_id": incident,
        "at": body["at"],
        "by": "operator-1",
    }


# ---- not an emergency: referred to LAPOR! -------------------------------------------------------


async def test_an_incident_referred_to_lapor_is_resolved_with_the_referral_recorded(api: Api) -> None:
    incident = await api.new_incident()
    assert (await api.act(incident, "acknowledge")).status_code == 200
    r = await api.act(incident, "refer", headers=OPERATOR2, channel="LAPOR!", reference="LPR-2026-0412",
                      note="jalan berlubang, bukan darurat")
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["state"], out["referred_to"], out["referral_ref"], out["closed_by"]) == (
        "resolved", "LAPOR!", "LPR-2026-0412", "operator-2")
    inc = (await api.client.get(f"/api/v1/incidents/{incident}", headers=OPERATOR)).json()
    assert (inc["state"], inc["referred_to"], inc["referral_ref"]) == ("resolved", "LAPOR!", "LPR-2026-0412")
    assert inc["closed_at"] is not None
    last = inc["history"][-1]
    assert (last["kind"], last["actor"], last["from_state"], last["to_state"]) == (
        "state", "operator-2", "acknowledged", "resolved")
    assert last["detail"] == {"referred_to": "LAPOR!", "reference": "LPR-2026-0412",
                              "note": "jalan berlubang, bukan darurat"}
    audit = db_rows(api.cfg.db_path, "SELECT actor, target, detail FROM audit_log WHERE action = 'referred'")
    assert [(actor, target, json.loads(detail)) for actor, target, detail in audit] == [
        ("operator-2", incident, last["detail"])]
    # The button is told `resolved` (protocol §7): the call was handled; there is no referral state.
    rows = db_rows(api.cfg.db_path, "SELECT event_id, state, body FROM callback_outbox ORDER BY id")
    assert [(r[0], r[1]) for r in rows] == [
        ("gw-1:jkt-menteng-0042:4711", "acknowledged"), ("gw-1:jkt-menteng-0042:4711", "resolved")]
    body = json.loads(rows[1][2])
    assert (body["state"], body["incident_id"], body["by"]) == ("resolved", incident, "operator-2")
    # Other closings leave the referral empty.
    other = await api.new_incident(seq=5000, device="jkt-menteng-0043")
    await api.act(other, "false-alarm")
    got = (await api.client.get(f"/api/v1/incidents/{other}", headers=OPERATOR)).json()
    assert (got["state"], got["referred_to"], got["referral_ref"]) == ("false_alarm", None, None)


async def test_a_referral_without_a_body_goes_to_lapor_from_new(api: Api) -> None:
    incident = await api.new_incident()
    r = await api.act(incident, "refer")
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["referred_to"], r.json()["referral_ref"]) == ("resolved", "LAPOR!", None)
    assert db_rows(api.cfg.db_path, "SELECT state FROM callback_outbox") == [("resolved",)]


@pytest.mark.parametrize(
    "body",
    [{"channel": ""}, {"channel": "x" * 101}, {"reference": ""}, {"reference": "7" * 101},
     {"note": "x" * 2001}, {"channel": 7}, {"reference": ["LPR-1"]}, {"channel": "LAPOR!", "ticket": "1"}],
)
async def test_a_referral_with_a_bad_field_is_refused_and_changes_nothing(api: Api, body: dict[str, Any]) -> None:
    incident = await api.new_incident()
    r = await api.act(incident, "refer", **body)
    assert r.status_code == 422, (body, r.text)
    inc = (await api.client.get(f"/api/v1/incidents/{incident}", headers=OPERATOR)).json()
    assert (inc["state"], inc["referred_to"]) == ("new", None)
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM callback_outbox") == [(0,)]


async def test_a_closed_incident_cannot_be_referred(api: Api) -> None:
    incident = await api.new_incident()
    await api.act(incident, "acknowledge")
    await api.act(incident, "resolve")
    r = await api.act(incident, "refer", channel="LAPOR!")
    assert r.status_code == 409
    assert r.json()["detail"] == f"{incident} is resolved; it cannot become referred"
    inc = (await api.client.get(f"/api/v1/incidents/{incident}", headers=OPERATOR)).json()
    assert inc["referred_to"] is None
    assert (await api.act("inc-999999", "refer")).status_code == 404


async def test_a_version_5_database_is_migrated_to_record_referrals(tmp_path: Path) -> None:
    path = tmp_path / "cc.sqlite3"
    with closing(sqlite3.connect(path)) as db:
        for statement in [s for version in store_module.MIGRATIONS[:5] for s in version]:
            db.execute(statement)
        db.execute(
            """INSERT INTO incidents (state, device_id, kind, test, lat, lon, address, area, created_at, updated_at,
                   closed_at, closed_by)
               VALUES ('resolved', 'jkt-menteng-0042', 'medical', 0, -6.2, 106.8, 'Jl. Menteng Raya 12',
                   '31.71.06.1001', '2026-11-24T03:00:00.000Z', '2026-11-24T03:10:00.000Z',
                   '2026-11-24T03:10:00.000Z', 'operator-1')"""
        )
        db.execute("PRAGMA user_version = 5")
        db.commit()
    store = await Store.open(path)
    try:
        old = await store.get_incident(1)
        assert old is not None
        assert (old.state, old.referred_to, old.referral_ref) == (IncidentState.RESOLVED, None, None)
    finally:
        await store.close()
    assert db_rows(path, "PRAGMA user_version") == [(store_module.SCHEMA_VERSION,)]


async def test_intake_queues_no_state_report(api: Api) -> None:
    await api.new_incident()
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM callback_outbox") == [(0,)]


async def test_openapi_documents_the_api(api: Api) -> None:
    doc = (await api.client.get("/openapi.json")).json()
    paths = doc["paths"]
    assert set(paths) >= {
        "/health",
        "/api/v1/alarms",
        "/api/v1/incidents",
        "/api/v1/incidents/{incident_id}",
        "/api/v1/incidents/{incident_id}/acknowledge",
        "/api/v1/incidents/{incident_id}/dispatch",
        "/api/v1/incidents/{incident_id}/resolve",
        "/api/v1/incidents/{incident_id}/false-alarm",
        "/api/v1/incidents/{incident_id}/refer",
        "/api/v1/alarms/batch",
        "/api/v1/faults",
        "/api/v1/devices/faults",
    }
    post = paths["/api/v1/alarms"]["post"]
    assert post["summary"]
    assert {"200", "201", "401", "422"} <= set(post["responses"])
    assert any(p["name"] == "Idempotency-Key" and p["required"] for p in post["parameters"])
    assert post["security"] == [{"intakeToken": []}]
    assert {"AlarmIn", "AlarmAccepted", "IncidentOut", "IncidentDetail", "DispatchRequest"} <= set(
        doc["components"]["schemas"]
    )
    # The batch validates its entries one by one, and documents them as AlarmIn (or anything, rejected alone).
    batch = paths["/api/v1/alarms/batch"]["post"]
    assert batch["security"] == [{"intakeToken": []}]
    schemas = doc["components"]["schemas"]
    items = schemas["AlarmBatchIn"]["properties"]["alarms"]
    assert items["items"]["anyOf"][0] == {"$ref": "#/components/schemas/AlarmIn"}
    assert (items["minItems"], items["maxItems"]) == (1, 500)
    assert {"incident_key", "press_count", "sources"} <= set(schemas["AlarmIn"]["properties"])
    assert paths["/api/v1/faults"]["post"]["security"] == [{"intakeToken": []}]
    # People sign in with their bearer token (API clients) or the console's session cookie.
    assert paths["/api/v1/devices/faults"]["get"]["security"] == [{"operatorToken": []}, {"sessionCookie": []}]


# ---- store -------------------------------------------------------------------------------------


async def test_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "cc.sqlite3"
    store = await Store.open(path)
    await store.close()
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {store_module.SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaTooNewError):
        await Store.open(path)


async def test_store_reopens_an_existing_database(tmp_path: Path) -> None:
    path = tmp_path / "cc.sqlite3"
    for _ in range(2):
        store = await Store.open(path)
        await store.close()
    assert db_rows(path, "PRAGMA user_version") == [(store_module.SCHEMA_VERSION,)]
    assert db_rows(path, "PRAGMA journal_mode") == [("wal",)]


async def test_a_failing_migration_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cc.sqlite3"
    broken = (*store_module.MIGRATIONS, ("CREATE TABLE extra (x INTEGER)", "THIS IS NOT SQL"))
    monkeypatch.setattr(store_module, "MIGRATIONS", broken)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(broken))
    with pytest.raises(sqlite3.OperationalError):
        await Store.open(path)
    # All steps ran in one transaction: not even the first migration's tables are left.
    assert db_rows(path, "PRAGMA user_version") == [(0,)]
    assert db_rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'") == []


async def test_a_newer_schema_stops_the_app_at_startup(tmp_path: Path) -> None:
    path = tmp_path / "cc.sqlite3"
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 999")
    app = create_app(make_config(path))
    with pytest.raises(SchemaTooNewError):
        async with app.router.lifespan_context(app):
            pass


# ---- backoff -----------------------------------------------------------------------------------


class _Ceiling(random.Random):
    """Always the top of the range, to see the ceiling full jitter draws from."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_ceiling_doubles_and_is_capped() -> None:
    settings = CallbackSettings(initial_backoff_s=1.0, max_backoff_s=60.0)
    ceilings = [backoff_delay(n, settings, _Ceiling()) for n in range(1, 10)]
    assert ceilings == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert backoff_delay(10_000, settings, _Ceiling()) == 60


@settings(database=None)  # no example database in the working tree
@given(attempts=st.integers(min_value=1, max_value=10_000), seed=st.integers())
def test_backoff_is_full_jitter_within_the_ceiling(attempts: int, seed: int) -> None:
    settings = CallbackSettings(initial_backoff_s=0.5, max_backoff_s=120.0)
    delay = backoff_delay(attempts, settings, random.Random(seed))
    assert 0.0 <= delay <= min(120.0, 0.5 * 2.0 ** min(attempts - 1, 60))


# ---- config ------------------------------------------------------------------------------------


def _write_config(tmp_path: Path, text: str) -> Path:
    (tmp_path / "intake.token").write_text(INTAKE_TOKEN + "\n")
    (tmp_path / "op1.token").write_text(OPERATOR_TOKEN + "\n")
    (tmp_path / "gw.token").write_text(GATEWAY_TOKEN + "\n")
    path = tmp_path / "cc.toml"
    path.write_text(text)
    return path


_MINIMAL = """
[intake]
token_file = "intake.token"
[[operators]]
name = "operator-1"
token_file = "op1.token"
"""


def test_config_loads_secrets_from_files_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC_TEST_OP2", OPERATOR2_TOKEN)
    path = _write_config(
        tmp_path,
        _MINIMAL
        + """
[[operators]]
name = "operator-2"
token_env = "CC_TEST_OP2"
[server]
port = 8411
[store]
path = "data/cc.db"
[gateway]
url = "http://127.0.0.1:8200/"
token_file = "gw.token"
[callbacks]
max_backoff_s = 30
""",
    )
    cfg = CCConfig.load(path)
    assert cfg.port == 8411
    assert cfg.host == "127.0.0.1"
    assert cfg.db_path == tmp_path.resolve() / "data" / "cc.db"
    assert cfg.intake_token == INTAKE_TOKEN
    assert dict(cfg.operator_tokens) == {OPERATOR_TOKEN: "operator-1", OPERATOR2_TOKEN: "operator-2"}
    assert cfg.gateway_url == "http://127.0.0.1:8200"
    assert cfg.gateway_token == GATEWAY_TOKEN
    assert cfg.callbacks.max_backoff_s == 30
    # Secrets stay out of reprs (and so out of logs and tracebacks).
    for token in (INTAKE_TOKEN, OPERATOR_TOKEN, OPERATOR2_TOKEN, GATEWAY_TOKEN):
        assert token not in repr(cfg)


def test_config_without_gateway(tmp_path: Path) -> None:
    cfg = CCConfig.load(_write_config(tmp_path, _MINIMAL))
    assert cfg.gateway_url is None
    assert cfg.gateway_token is None


def test_config_is_immutable(tmp_path: Path) -> None:
    cfg = CCConfig.load(_write_config(tmp_path, _MINIMAL))
    with pytest.raises(AttributeError):
        cfg.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.operator_tokens["x" * 20] = "intruder"  # type: ignore[index]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[server]\nport = "8300"', "server.port"),
        ("[server]\nport = 70000", "port"),
        ('[intake]\ntoken = "inline-inline-inline"', "inline"),
        ('[[operators]]\nname = "operator-2"\ntoken_file = "op1.token"', "already used"),
        ('[[operators]]\nname = "operator-1"\ntoken_file = "gw.token"', "twice"),
        ('[[operators]]\nname = "operator-2"\ntoken_file = "intake.token"', "intake token"),
        ('[[operators]]\nname = "bad name"\ntoken_file = "gw.token"', "operator name"),
        ('[gateway]\nurl = "http://gw"', "token"),
        ('[gateway]\ntoken_file = "gw.token"', "url"),
        ('[gateway]\nurl = "ftp://gw"\ntoken_file = "gw.token"', "http"),
        ("[callbacks]\nmax_backoff_s = 0.1\ninitial_backoff_s = 1", "backoff"),
        ("[callbacks]\nretries = 3", "unknown"),
        ('[server]\nlog_level = "loud"', "log_level"),
        ("[sever]\nport = 8300", "unknown setting.*sever"),
        ("[server]\nprot = 8300", "unknown setting.*prot"),
        ('[[operators]]\nname = "operator-2"\ntoken_fiel = "gw.token"', "unknown setting.*token_fiel"),
    ],
)
def test_config_errors(tmp_path: Path, extra: str, message: str) -> None:
    # A TOML table may not appear twice, so a case that brings its own [intake] gets a base without.
    base = _MINIMAL
    if extra.startswith("[intake]"):
        base = _MINIMAL.replace('[intake]\ntoken_file = "intake.token"\n', "")
    path = _write_config(tmp_path, base + "\n" + extra + "\n")
    with pytest.raises(ConfigError, match=message):
        CCConfig.load(path)


def test_short_tokens_are_refused(tmp_path: Path) -> None:
    path = _write_config(tmp_path, _MINIMAL)
    (tmp_path / "intake.token").write_text("short\n")
    with pytest.raises(ConfigError, match="intake token") as err:
        CCConfig.load(path)
    assert "short" not in str(err.value)


def test_the_example_config_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(siaga.commandcenter.__file__).parent / "cc.example.toml"
    (tmp_path / "cc.toml").write_text(example.read_text())
    (tmp_path / "secrets").mkdir()
    for name in ("intake", "operator-1", "supervisor-1", "damkar-jakpus", "gateway"):
        (tmp_path / "secrets" / f"{name}.token").write_text(f"{name}-" + "x" * 30)
    monkeypatch.setenv("SIAGA_CC_OPERATOR2_TOKEN", "operator-2-" + "y" * 30)
    cfg = CCConfig.load(tmp_path / "cc.toml")
    assert sorted(cfg.operator_tokens.values()) == ["damkar-jakpus", "operator-1", "operator-2", "supervisor-1"]
    assert [op.role.value for _, op in sorted(cfg.operators.items())] == ["agency", "operator", "operator",
                                                                          "supervisor"]
    assert cfg.gateway_url is not None
    assert cfg.callbacks == CallbackSettings()


# ---- real process, real gateway stand-in -------------------------------------------------------


@dataclass(frozen=True)
class Received:
    path: str
    authorization: str | None
    content_type: str | None
    body: dict[str, Any]
    status: int


class GatewayStandIn(HttpReceiver):
    """A real HTTP server playing the gateway's `POST /api/v1/cc/state`.

    `respond(body)` chooses the status of each answer (default: always 200).
    """

    def __init__(self, port: int = 0, respond: Callable[[dict[str, Any]], int] | None = None) -> None:
        self.received: list[Received] = []
        self._cond = threading.Condition()
        self._respond = respond or (lambda body: 200)
        super().__init__(self._report, port=port)

    def _report(self, request: Request) -> Answer:
        body = json.loads(request.body)
        status = self._respond(body)
        headers = request.headers
        record = Received(request.path, headers.get("authorization"), headers.get("content-type"), body, status)
        return Answer(status, b"{}", {"Content-Type": "application/json"}, after=lambda: self._record(record))

    def _record(self, record: Received) -> None:
        with self._cond:
            self.received.append(record)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout_s: float = 10.0) -> list[Received]:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.received), timeout_s):
                raise AssertionError(f"gateway stand-in did not get what was expected; got {self.received}")
            return list(self.received)


def delivered(n: int, state: str | None = None) -> Callable[[list[Received]], bool]:
    def check(received: list[Received]) -> bool:
        ok = [r for r in received if 200 <= r.status < 300 and (state is None or r.body["state"] == state)]
        return len(ok) >= n

    return check


def post_alarm(cc: CommandCenterProcess, body: dict) -> httpx.Response:
    return httpx.post(f"{cc.url}/api/v1/alarms", json=body, headers=cc.intake_headers(body["event_id"]))


def operator_action(cc: CommandCenterProcess, incident: str, action: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{cc.url}/api/v1/incidents/{incident}/{action}", json=body or None, headers=cc.operator_headers()
    )


def get_incident(cc: CommandCenterProcess, incident: str) -> dict[str, Any]:
    r = httpx.get(f"{cc.url}/api/v1/incidents/{incident}", headers=cc.operator_headers())
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def gateway() -> Iterator[GatewayStandIn]:
    with GatewayStandIn() as gw:
        yield gw


@pytest.mark.e2e
def test_process_serves_intake_and_stops_gracefully(command_center: CommandCenterProcess) -> None:
    cc = command_center
    assert httpx.get(f"{cc.url}/health").json() == {"status": "ok"}
    r = post_alarm(cc, alarm())
    assert r.status_code == 201, r.text
    r = httpx.post(f"{cc.url}/api/v1/alarms", json=alarm(), headers={"Idempotency-Key": alarm()["event_id"]})
    assert r.status_code == 401
    assert cc.stopped_cleanly(cc.stop())
    log = cc.log()
    assert "Application shutdown complete" in log
    assert "Traceback" not in log
    for token in (cc.intake_token, cc.operator_token):
        assert token not in log


@pytest.mark.e2e
def test_ctrl_c_stops_gracefully_without_a_traceback(command_center: CommandCenterProcess) -> None:
    assert command_center.stop(sig=signal.SIGINT) == 130
    assert command_center.stopped_cleanly(130)
    assert "Traceback" not in command_center.log()


@pytest.mark.e2e
def test_data_survives_a_restart(command_center: CommandCenterProcess) -> None:
    cc = command_center
    first = post_alarm(cc, alarm())
    assert first.status_code == 201
    incident = first.json()["incident_id"]
    assert operator_action(cc, incident, "acknowledge").status_code == 200

    assert cc.stopped_cleanly(cc.stop())
    cc.start()

    assert get_incident(cc, incident)["state"] == "acknowledged"
    again = post_alarm(cc, alarm())
    assert again.status_code == 200
    assert again.json() == first.json()
    assert db_rows(cc.db_path, "SELECT COUNT(*) FROM alarms") == [(1,)]
    # The next incident continues the numbering instead of reusing an id.
    nxt = post_alarm(cc, alarm(seq=4712)).json()["incident_id"]
    assert nxt > incident


@pytest.mark.e2e
def test_a_201_survives_a_crash(command_center: CommandCenterProcess) -> None:
    cc = command_center
    answers = [post_alarm(cc, alarm(seq=seq)) for seq in range(1, 6)]
    assert [a.status_code for a in answers] == [201] * 5
    cc.kill()  # SIGKILL right after the answers: no shutdown code runs
    cc.start()
    r = httpx.get(f"{cc.url}/api/v1/incidents", headers=cc.operator_headers())
    assert sorted(i["id"] for i in r.json()) == sorted(a.json()["incident_id"] for a in answers)


@pytest.mark.e2e
def test_acknowledge_is_reported_to_the_gateway(tmp_path: Path, gateway: GatewayStandIn) -> None:
    with CommandCenterProcess(tmp_path, gateway_url=gateway.url, gateway_token=GATEWAY_TOKEN) as cc:
        incident = post_alarm(cc, alarm()).json()["incident_id"]
        time.sleep(0.2)
        assert gateway.received == []  # intake itself reports nothing: the gateway said "received"
        assert operator_action(cc, incident, "acknowledge").status_code == 200

        [report] = gateway.wait_for(delivered(1))
        assert report.path == "/api/v1/cc/state"
        assert report.authorization == f"Bearer {GATEWAY_TOKEN}"
        assert report.content_type == "application/json"
        assert report.body == {
            "event_id": "gw-1:jkt-menteng-0042:4711",
            "device_id": "jkt-menteng-0042",
            "seq": 4711,
            "state": "acknowledged",
            "incident_id": incident,
            "at": get_incident(cc, incident)["acknowledged_at"],
            "by": "operator-1",
        }
        assert report.body["at"].endswith("Z")
        assert GATEWAY_TOKEN not in cc.log()


@pytest.mark.e2e
def test_a_refused_report_is_retried_until_2xx(tmp_path: Path) -> None:
    answers = iter([503, 503])
    with (
        GatewayStandIn(respond=lambda body: next(answers, 200)) as gateway,
        CommandCenterProcess(tmp_path, gateway_url=gateway.url, gateway_token=GATEWAY_TOKEN) as cc,
    ):
        incident = post_alarm(cc, alarm()).json()["incident_id"]
        assert operator_action(cc, incident, "acknowledge").status_code == 200
        received = gateway.wait_for(delivered(1))
        assert [r.status for r in received] == [503, 503, 200]
        assert len({json.dumps(r.body, sort_keys=True) for r in received}) == 1  # the same report
        time.sleep(0.3)  # nothing more after the 2xx
        assert len(gateway.received) == 3
        assert db_rows(cc.db_path, "SELECT attempts, delivered_at IS NOT NULL FROM callback_outbox") == [(3, 1)]


@pytest.mark.e2e
def test_one_refused_event_does_not_block_the_others(tmp_path: Path) -> None:
    stuck = "gw-1:jkt-menteng-0001:1"
    with (
        GatewayStandIn(respond=lambda body: 500 if body["event_id"] == stuck else 200) as gateway,
        CommandCenterProcess(tmp_path, gateway_url=gateway.url, gateway_token=GATEWAY_TOKEN) as cc,
    ):
        a = post_alarm(cc, alarm(seq=1, device="jkt-menteng-0001")).json()["incident_id"]
        b = post_alarm(cc, alarm(seq=2, device="jkt-menteng-0002")).json()["incident_id"]
        assert operator_action(cc, a, "acknowledge").status_code == 200
        assert operator_action(cc, b, "acknowledge").status_code == 200
        assert operator_action(cc, b, "resolve").status_code == 200
        received = gateway.wait_for(
            lambda rs: delivered(1, "resolved")(rs) and sum(r.body["event_id"] == stuck for r in rs) >= 3
        )
        ok = [(r.body["event_id"], r.body["state"]) for r in received if r.status == 200]
        assert ok == [("gw-1:jkt-menteng-0002:2", "acknowledged"), ("gw-1:jkt-menteng-0002:2", "resolved")]


@pytest.mark.e2e
def test_reports_of_one_event_arrive_in_order_even_after_a_failure(tmp_path: Path) -> None:
    answers = iter([503])
    with (
        GatewayStandIn(respond=lambda body: next(answers, 200)) as gateway,
        CommandCenterProcess(
            tmp_path,
            gateway_url=gateway.url,
            gateway_token=GATEWAY_TOKEN,
            initial_backoff_s=0.3,
            max_backoff_s=0.5,
        ) as cc,
    ):
        incident = post_alarm(cc, alarm()).json()["incident_id"]
        assert operator_action(cc, incident, "acknowledge").status_code == 200
        gateway.wait_for(lambda rs: len(rs) >= 1)  # the first try has failed ...
        assert operator_action(cc, incident, "dispatch", agency="ambulance").status_code == 200
        assert operator_action(cc, incident, "resolve").status_code == 200  # ... more states queue up
        received = gateway.wait_for(delivered(1, "resolved"))
        assert [(r.body["state"], r.status) for r in received] == [
            ("acknowledged", 503),
            ("acknowledged", 200),
            ("dispatched", 200),
            ("resolved", 200),
        ]


@pytest.mark.e2e
def test_reports_wait_in_the_outbox_while_the_gateway_is_down(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here yet
    cc = CommandCenterProcess(tmp_path, gateway_url=f"http://127.0.0.1:{port}", gateway_token=GATEWAY_TOKEN)
    with cc:
        incident = post_alarm(cc, alarm()).json()["incident_id"]
        assert operator_action(cc, incident, "acknowledge").status_code == 200
        deadline = time.monotonic() + 10
        while db_rows(cc.db_path, "SELECT attempts FROM callback_outbox")[0][0] < 2:
            assert time.monotonic() < deadline, cc.log()
            time.sleep(0.05)
        assert cc.stopped_cleanly(cc.stop())  # the report must survive a restart, not only the outage

    with GatewayStandIn(port=port) as gateway:
        cc.start()
        try:
            [report] = gateway.wait_for(delivered(1))
            assert (report.body["incident_id"], report.body["state"]) == (incident, "acknowledged")
        finally:
            cc.stop()


@pytest.mark.e2e
def test_stopping_does_not_hang_on_a_silent_gateway(tmp_path: Path) -> None:
    release = threading.Event()

    def hang(body: dict[str, Any]) -> int:
        release.wait(30)
        return 200

    with GatewayStandIn(respond=hang) as gateway:
        cc = CommandCenterProcess(tmp_path, gateway_url=gateway.url, gateway_token=GATEWAY_TOKEN, request_timeout_s=60)
        with cc:
            incident = post_alarm(cc, alarm()).json()["incident_id"]
            assert operator_action(cc, incident, "acknowledge").status_code == 200
            time.sleep(0.5)  # the report is now in flight and the gateway does not answer
            started = time.monotonic()
            code = cc.stop()
            assert time.monotonic() - started < 8
            assert cc.stopped_cleanly(code), cc.log()
        release.set()
    # Not delivered, so still in the outbox for the next start.
    assert db_rows(cc.db_path, "SELECT delivered_at FROM callback_outbox") == [(None,)]


@pytest.mark.e2e
def test_a_too_new_database_stops_the_process_at_startup(tmp_path: Path) -> None:
    cc = CommandCenterProcess(tmp_path)
    with closing(sqlite3.connect(cc.db_path)) as db:
        db.execute("PRAGMA user_version = 999")
    with pytest.raises(RuntimeError, match="exited with 3"):
        cc.start()
    assert "newer than this command center knows" in cc.log()
    assert db_rows(cc.db_path, "SELECT name FROM sqlite_master") == []


def test_a_bad_config_exits_with_2_and_a_message(tmp_path: Path) -> None:
    path = _write_config(tmp_path, _MINIMAL + '[server]\nport = "x"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "siaga.commandcenter", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "server.port" in proc.stderr
    assert "Traceback" not in proc.stderr

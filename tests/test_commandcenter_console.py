"""Tests of what the operator console stands on: roles enforced by the API (over real HTTP), browser
sessions with CSRF protection, the live event stream, notes and the audit log, escalation with its
webhook, response-time figures from recorded timestamps, the CSV export, device batteries, and
schema version 3.

The page itself is tested in a real browser in tests/test_console_browser.py.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from siaga.commandcenter import store as store_module
from siaga.commandcenter.config import (
    DEFAULT_AGENCIES,
    Agency,
    CCConfig,
    ConsoleSettings,
    EscalationSettings,
    Operator,
    Role,
)
from siaga.commandcenter.deps import Principal
from siaga.commandcenter.domain import Action
from siaga.commandcenter.live import QUEUE_MAX, Broadcaster, LiveEvent, visible_to
from siaga.commandcenter.stats import median, percentile
from siaga.commandcenter.store import NewAlarm, NewFault, Store
from siaga.settings import ConfigError
from tests.support.ccproc import CommandCenterProcess
from tests.test_commandcenter import (
    GATEWAY_TOKEN,
    INTAKE_TOKEN,
    OPERATOR,
    OPERATOR2_TOKEN,
    OPERATOR_TOKEN,
    Api,
    GatewayStandIn,
    alarm,
    db_rows,
    intake_headers,
    make_config,
    running_api,
)

SUPERVISOR_TOKEN = "supervisor-" + "s" * 24
AGENCY_TOKEN = "agency-fire-" + "a" * 24
SUPERVISOR = {"Authorization": f"Bearer {SUPERVISOR_TOKEN}"}
AGENCY = {"Authorization": f"Bearer {AGENCY_TOKEN}"}
INTAKE = {"Authorization": f"Bearer {INTAKE_TOKEN}"}

ROLES: dict[str, Any] = {
    "operator_tokens": {
        OPERATOR_TOKEN: "operator-1",
        OPERATOR2_TOKEN: "operator-2",
        SUPERVISOR_TOKEN: "supervisor-1",
        AGENCY_TOKEN: "viewer-fire",
    },
    "operators": {
        "supervisor-1": Operator("supervisor-1", Role.SUPERVISOR),
        "viewer-fire": Operator("viewer-fire", Role.AGENCY, "fire"),
    },
}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path / "cc.sqlite3", **ROLES) as running:
        yield running


# ---- roles, enforced by the API over real HTTP ----------------------------------------------------


@pytest.fixture(scope="module")
def cc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CommandCenterProcess]:
    with CommandCenterProcess(tmp_path_factory.mktemp("roles"), record_failures_every_s=0.2) as running:
        yield running


_seq = iter(range(1, 1_000_000))


def new_incident(cc: CommandCenterProcess, device: str = "jkt-menteng-0042", **changes: Any) -> str:
    body = alarm(seq=next(_seq), device=device, **changes)
    r = httpx.post(f"{cc.url}/api/v1/alarms", json=body, headers=cc.intake_headers(body["event_id"]))
    assert r.status_code == 201, r.text
    return r.json()["incident_id"]


def dispatched_to(cc: CommandCenterProcess, agency: str) -> str:
    ref = new_incident(cc)
    # Accepted by the room on the agency's behalf, so that it is dispatched whether or not the agency
    # answers on screen (the fire brigade does: it has an account).
    for action, body in (("acknowledge", None), ("dispatch", {"agency": agency, "accepted": True})):
        r = httpx.post(f"{cc.url}/api/v1/incidents/{ref}/{action}", json=body, headers=cc.operator_headers())
        assert r.status_code == 200, r.text
    return ref


# What each role may do: (method, path, body) -> status. `{inc}` is an incident that is new and not
# dispatched to anyone; `{fire}` one dispatched to the fire brigade.
ACCESS: list[tuple[str, str, dict[str, Any] | None, dict[str, int]]] = [
    ("GET", "/api/v1/incidents", None, {"operator": 200, "supervisor": 200, "agency": 200}),
    ("GET", "/api/v1/incidents/{inc}", None, {"operator": 200, "supervisor": 200, "agency": 404}),
    ("GET", "/api/v1/incidents/{fire}", None, {"operator": 200, "supervisor": 200, "agency": 200}),
    ("POST", "/api/v1/incidents/{inc}/acknowledge", None, {"operator": 200, "supervisor": 200, "agency": 403}),
    ("POST", "/api/v1/incidents/{fire}/resolve", None, {"operator": 200, "supervisor": 200, "agency": 403}),
    ("POST", "/api/v1/incidents/{inc}/false-alarm", None, {"operator": 200, "supervisor": 200, "agency": 403}),
    ("POST", "/api/v1/incidents/{fire}/refer", {"channel": "LAPOR!"},
     {"operator": 200, "supervisor": 200, "agency": 403}),
    ("POST", "/api/v1/incidents/{fire}/notes", {"note": "on site"},
     {"operator": 201, "supervisor": 201, "agency": 403}),
    ("GET", "/api/v1/devices/faults", None, {"operator": 200, "supervisor": 200, "agency": 403}),
    ("GET", "/api/v1/stats", None, {"operator": 403, "supervisor": 200, "agency": 403}),
    ("GET", "/api/v1/export/incidents.csv", None, {"operator": 403, "supervisor": 200, "agency": 403}),
    ("GET", "/api/v1/audit", None, {"operator": 403, "supervisor": 200, "agency": 403}),
    ("GET", "/api/v1/settings", None, {"operator": 403, "supervisor": 200, "agency": 403}),
    ("GET", "/api/v1/console/settings", None, {"operator": 200, "supervisor": 200, "agency": 200}),
    ("GET", "/api/v1/session", None, {"operator": 200, "supervisor": 200, "agency": 200}),
]


def _headers(cc: CommandCenterProcess, role: str) -> dict[str, str]:
    return {
        "operator": cc.operator_headers,
        "supervisor": cc.supervisor_headers,
        "agency": cc.agency_headers,
        "intake": lambda: {"Authorization": f"Bearer {cc.intake_token}"},
        "nobody": dict,
    }[role]()


@pytest.mark.e2e
@pytest.mark.parametrize("role", ["operator", "supervisor", "agency", "intake", "nobody"])
def test_each_role_may_do_exactly_what_it_is_allowed_to(cc: CommandCenterProcess, role: str) -> None:
    for method, path, body, allowed in ACCESS:
        # Fresh incidents for every request, so that a state change of one row does not answer 409.
        url = cc.url + path.format(inc=new_incident(cc), fire=dispatched_to(cc, "fire"))
        r = httpx.request(method, url, json=body, headers=_headers(cc, role), timeout=5)
        expected = allowed.get(role, 401)
        assert r.status_code == expected, (role, method, path, r.status_code, r.text)
        if expected == 401:
            assert r.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.e2e
def test_an_agency_viewer_lists_only_incidents_dispatched_to_its_agency(cc: CommandCenterProcess) -> None:
    fire = dispatched_to(cc, "fire")
    police = dispatched_to(cc, "police")
    waiting = new_incident(cc)
    listed = httpx.get(f"{cc.url}/api/v1/incidents?limit=1000", headers=cc.agency_headers()).json()
    ids = {i["id"] for i in listed}
    assert fire in ids
    assert not ids & {police, waiting}
    assert {i["agency"] for i in listed} == {"fire"}
    assert httpx.get(f"{cc.url}/api/v1/incidents/{police}", headers=cc.agency_headers()).status_code == 404
    # Only its own agency is offered to it.
    settings = httpx.get(f"{cc.url}/api/v1/console/settings", headers=cc.agency_headers()).json()
    assert [a["id"] for a in settings["agencies"]] == ["fire"]
    everyone = httpx.get(f"{cc.url}/api/v1/console/settings", headers=cc.operator_headers()).json()
    assert [a["id"] for a in everyone["agencies"]] == [a.id for a in DEFAULT_AGENCIES]


# ---- sessions --------------------------------------------------------------------------------------


@contextmanager
def signed_in(cc: CommandCenterProcess, name: str, token: str) -> Iterator[tuple[httpx.Client, str]]:
    """A client holding a session cookie, and the session's CSRF token."""
    with httpx.Client(base_url=cc.url, timeout=5) as client:
        r = client.post("/api/v1/session", json={"name": name, "token": token})
        assert r.status_code == 200, r.text
        yield client, r.json()["csrf_token"]


@pytest.mark.e2e
def test_sign_in_sets_a_strict_http_only_cookie_and_stores_only_its_hash(cc: CommandCenterProcess) -> None:
    with httpx.Client(base_url=cc.url, timeout=5) as client:
        r = client.post("/api/v1/session", json={"name": cc.supervisor_name, "token": cc.supervisor_token})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["name"] == cc.supervisor_name
        assert (body["role"], body["agency"], body["via"]) == ("supervisor", None, "session")
        assert len(body["csrf_token"]) >= 40
        cookie_header = r.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower() for part in cookie_header.split(";")}
        assert {"httponly", "path", "max-age", "samesite"} <= attributes
        assert "samesite=strict" in cookie_header.lower()
        assert "secure" not in attributes  # plain HTTP here; [console] secure_cookie = true behind TLS
        cookie = client.cookies["siaga_session"]
        assert cookie not in cc.supervisor_token and cc.supervisor_token not in cookie
        stored = db_rows(cc.db_path, "SELECT token_hash, csrf_token FROM sessions")
        assert cookie not in {row[0] for row in stored}
        # The cookie alone authenticates reads.
        me = client.get("/api/v1/session").json()
        assert (me["name"], me["via"], me["csrf_token"]) == (cc.supervisor_name, "session", body["csrf_token"])
        assert client.get("/api/v1/stats").status_code == 200


@pytest.mark.e2e
def test_a_cookie_authenticated_post_needs_the_csrf_header(cc: CommandCenterProcess) -> None:
    with signed_in(cc, cc.operator_name, cc.operator_token) as (client, csrf):
        ref = new_incident(cc)
        assert client.post(f"/api/v1/incidents/{ref}/acknowledge").status_code == 403
        wrong = {"X-CSRF-Token": "x" * 43}
        assert client.post(f"/api/v1/incidents/{ref}/acknowledge", headers=wrong).status_code == 403
        assert httpx.get(f"{cc.url}/api/v1/incidents/{ref}", headers=cc.operator_headers()).json()["state"] == "new"
        r = client.post(f"/api/v1/incidents/{ref}/acknowledge", headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text
        assert r.json()["acknowledged_by"] == cc.operator_name


@pytest.mark.e2e
def test_sign_in_refuses_wrong_tokens_and_is_audited(cc: CommandCenterProcess) -> None:
    bad = [
        {"name": cc.operator_name, "token": "wrong-" + "x" * 30},
        {"name": cc.operator_name, "token": cc.supervisor_token},  # a valid token of someone else
        {"name": "nobody", "token": cc.operator_token},
    ]
    for body in bad:
        r = httpx.post(f"{cc.url}/api/v1/session", json=body)
        assert r.status_code == 401, r.text
        assert "set-cookie" not in r.headers
    # A cross-site HTML form can only send form or text bodies: they are not a sign-in.
    r = httpx.post(f"{cc.url}/api/v1/session", content=json.dumps({"name": cc.operator_name,
                   "token": cc.operator_token}), headers={"Content-Type": "text/plain"})
    assert r.status_code == 422
    # Failed attempts are written as one entry per name and address, a moment later; a name that is
    # not configured is not written at all (it could be someone's token typed into the wrong field).
    def failed_sign_ins() -> dict[str, int]:
        audit = httpx.get(f"{cc.url}/api/v1/audit?limit=1000", headers=cc.supervisor_headers()).json()
        assert cc.operator_token not in json.dumps(audit)
        counts: dict[str, int] = {}
        for a in audit:
            if a["action"] == "login_failed":
                counts[a["actor"]] = counts.get(a["actor"], 0) + a["detail"]["attempts"]
        return counts

    deadline = time.monotonic() + 10
    while (counts := failed_sign_ins()).get(cc.operator_name, 0) < 2 or "(unknown name)" not in counts:
        assert time.monotonic() < deadline, counts
        time.sleep(0.1)
    assert "nobody" not in counts


@pytest.mark.e2e
def test_sign_out_ends_the_session(cc: CommandCenterProcess) -> None:
    with signed_in(cc, cc.operator_name, cc.operator_token) as (client, csrf):
        cookie = client.cookies["siaga_session"]
        assert client.delete("/api/v1/session").status_code == 403  # no CSRF header
        r = client.delete("/api/v1/session", headers={"X-CSRF-Token": csrf})
        assert r.status_code == 204
        # Even a client that keeps the old cookie is out.
        r = httpx.get(f"{cc.url}/api/v1/incidents", cookies={"siaga_session": cookie})
        assert r.status_code == 401


@pytest.mark.e2e
def test_a_bearer_token_wins_over_a_cookie(cc: CommandCenterProcess) -> None:
    with signed_in(cc, cc.supervisor_name, cc.supervisor_token) as (client, _):
        assert client.get("/api/v1/stats", headers={"Authorization": "Bearer wrong-" + "y" * 30}).status_code == 401
        assert client.get("/api/v1/stats", headers=cc.operator_headers()).status_code == 403


@pytest.mark.e2e
def test_a_session_survives_a_restart(tmp_path: Path) -> None:
    with CommandCenterProcess(tmp_path) as cc, signed_in(cc, cc.operator_name, cc.operator_token) as (client, _):
        cc.stop()
        cc.start()
        assert client.get("/api/v1/incidents").status_code == 200


@pytest.mark.e2e
def test_an_expired_session_is_refused_by_the_server(tmp_path: Path) -> None:
    # 0.0005 h = 1.8 s. The cookie is sent by hand afterwards: a browser would drop it at its
    # Max-Age, but the server must not rely on that.
    with CommandCenterProcess(tmp_path, extra_toml="[console]\nsession_hours = 0.0005\n") as cc:
        with signed_in(cc, cc.operator_name, cc.operator_token) as (client, _):
            cookie = client.cookies["siaga_session"]
            assert client.get("/api/v1/incidents").status_code == 200
        time.sleep(2.0)
        r = httpx.get(f"{cc.url}/api/v1/incidents", cookies={"siaga_session": cookie})
        assert r.status_code == 401


# ---- the live event stream -------------------------------------------------------------------------


class EventReader:
    """Reads `GET /api/v1/events` in a thread, as a browser's EventSource would."""

    def __init__(self, cc: CommandCenterProcess, headers: dict[str, str]) -> None:
        self.events: list[tuple[str, Any]] = []
        self.status: int | None = None
        self.content_type: str | None = None
        self.ended = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(cc.url, headers), daemon=True)
        self._thread.start()
        self.wait(lambda ev: ev and ev[0][0] == "hello")

    def _read(self, url: str, headers: dict[str, str]) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(5, read=30)) as client,
                client.stream("GET", f"{url}/api/v1/events", headers=headers) as resp,
            ):
                self.status = resp.status_code
                self.content_type = resp.headers.get("content-type")
                name = None
                for line in resp.iter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: ") and name is not None:
                        with self._cond:
                            self.events.append((name, json.loads(line[6:])))
                            self._cond.notify_all()
                        name = None
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()
            with self._cond:
                self._cond.notify_all()

    def wait(self, predicate: Any, timeout_s: float = 10.0) -> list[tuple[str, Any]]:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.events) or self.ended.is_set(), timeout_s):
                raise AssertionError(f"events so far: {self.events}")
            return list(self.events)


@pytest.mark.e2e
def test_the_event_stream_needs_a_sign_in(cc: CommandCenterProcess) -> None:
    assert httpx.get(f"{cc.url}/api/v1/events").status_code == 401
    intake = {"Authorization": f"Bearer {cc.intake_token}"}
    assert httpx.get(f"{cc.url}/api/v1/events", headers=intake).status_code == 401


@pytest.mark.e2e
def test_the_event_stream_carries_every_change_and_filters_for_agency_viewers(tmp_path: Path) -> None:
    with CommandCenterProcess(tmp_path) as cc:
        operator = EventReader(cc, cc.operator_headers())
        viewer = EventReader(cc, cc.agency_headers())
        assert operator.status == 200
        assert operator.content_type is not None and operator.content_type.startswith("text/event-stream")
        hello = operator.events[0][1]
        assert (hello["name"], hello["role"]) == (cc.operator_name, "operator")

        ref = new_incident(cc)
        operator.wait(lambda ev: any(n == "incident" and d["id"] == ref for n, d in ev))
        for action, body in (("acknowledge", None), ("dispatch", {"agency": "fire", "accepted": True})):
            httpx.post(f"{cc.url}/api/v1/incidents/{ref}/{action}", json=body, headers=cc.operator_headers())
        httpx.post(f"{cc.url}/api/v1/incidents/{ref}/notes", json={"note": "crew on site"},
                   headers=cc.operator_headers())
        police = dispatched_to(cc, "police")
        fault = {"event_id": "gw-1:jkt-menteng-0042:fault:1", "gateway_id": "gw-1", "device_id": "jkt-menteng-0042",
                 "fault": "offline", "active": True, "at": "2026-11-24T03:20:00Z"}
        httpx.post(f"{cc.url}/api/v1/faults", json=fault, headers=cc.intake_headers(fault["event_id"]))

        events = operator.wait(lambda ev: any(n == "fault" for n, _ in ev))
        mine = [(n, d["state"]) for n, d in events if n == "incident" and d["id"] == ref]
        assert mine == [("incident", "new"), ("incident", "acknowledged"), ("incident", "dispatched"),
                        ("incident", "dispatched")]  # the last one: the note
        assert any(d["id"] == police for n, d in events if n == "incident")
        assert ("fault", {"device_id": "jkt-menteng-0042", "fault": "offline", "active": True,
                          "at": "2026-11-24T03:20:00.000Z"}) in events

        # The fire brigade's viewer saw its incident from the dispatch on, and nothing else.
        seen = viewer.wait(lambda ev: sum(n == "incident" for n, _ in ev) >= 2)
        time.sleep(0.3)
        seen = viewer.events
        assert {d["id"] for n, d in seen if n == "incident"} == {ref}
        assert [d["state"] for n, d in seen if n == "incident"] == ["dispatched", "dispatched"]
        assert not [n for n, _ in seen if n == "fault"]

        # Stopping with open streams is prompt and clean: the streams end first.
        started = time.monotonic()
        assert cc.stopped_cleanly(cc.stop())
        assert time.monotonic() - started < 5
        assert operator.ended.wait(5)
        assert viewer.ended.wait(5)


def test_a_console_that_falls_too_far_behind_is_cut_off_not_buffered() -> None:
    live = Broadcaster()
    slow = live.subscribe(Principal("operator-1", Role.OPERATOR, None))
    for n in range(QUEUE_MAX):
        live.publish(LiveEvent("fault", json.dumps({"n": n})))
    assert slow.queue.qsize() == QUEUE_MAX
    live.publish(LiveEvent("fault", "{}"))
    # Ended (its browser reconnects and re-syncs from the list), and nothing kept for it.
    assert slow.queue.qsize() == 1
    assert slow.queue.get_nowait() is None
    assert live.cut_off == 1
    assert not live.has_subscribers


def test_who_sees_which_live_event() -> None:
    fire_viewer = Principal("viewer-fire", Role.AGENCY, "fire")
    operator = Principal("operator-1", Role.OPERATOR, None)
    assert visible_to(LiveEvent("incident", "{}", frozenset({"fire"})), fire_viewer)
    assert visible_to(LiveEvent("incident", "{}", frozenset({"police", "fire"})), fire_viewer)
    assert not visible_to(LiveEvent("incident", "{}", frozenset({"police"})), fire_viewer)
    assert not visible_to(LiveEvent("incident", "{}"), fire_viewer)
    assert not visible_to(LiveEvent("fault", "{}"), fire_viewer)
    assert all(visible_to(LiveEvent(t, "{}"), operator) for t in ("incident", "escalation", "fault"))


def test_closing_the_broadcaster_ends_every_stream() -> None:
    live = Broadcaster()
    subs = [live.subscribe(Principal(f"op-{n}", Role.OPERATOR, None)) for n in range(3)]
    live.close()
    assert [s.queue.get_nowait() for s in subs] == [None, None, None]
    late = live.subscribe(Principal("late", Role.OPERATOR, None))
    assert late.queue.get_nowait() is None


# ---- notes and the audit log -------------------------------------------------------------------------


async def test_a_note_is_recorded_with_who_and_when_and_keeps_the_state(api: Api) -> None:
    ref = await api.new_incident()
    r = await api.client.post(f"/api/v1/incidents/{ref}/notes", json={"note": "caller says two injured"},
                              headers=OPERATOR)
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "new"
    await api.act(ref, "false-alarm")
    # Notes are allowed on closed incidents too: findings often come afterwards.
    r = await api.client.post(f"/api/v1/incidents/{ref}/notes", json={"note": "kids pressed it"}, headers=SUPERVISOR)
    assert r.status_code == 201
    history = (await api.client.get(f"/api/v1/incidents/{ref}", headers=OPERATOR)).json()["history"]
    assert [(h["kind"], h["actor"], h["from_state"], h["to_state"], h["detail"]) for h in history[1:]] == [
        ("note", "operator-1", "new", "new", {"note": "caller says two injured"}),
        ("state", "operator-1", "new", "false_alarm", None),
        ("note", "supervisor-1", "false_alarm", "false_alarm", {"note": "kids pressed it"}),
    ]
    # A note is not a state: nothing goes to the gateway for it.
    assert db_rows(api.cfg.db_path, "SELECT state FROM callback_outbox") == [("false_alarm",)]
    for bad in ({}, {"note": ""}, {"note": "x" * 2001}, {"note": "ok", "extra": 1}):
        r = await api.client.post(f"/api/v1/incidents/{ref}/notes", json=bad, headers=OPERATOR)
        assert r.status_code == 422, bad
    assert (await api.client.post("/api/v1/incidents/inc-999999/notes", json={"note": "x"},
                                  headers=OPERATOR)).status_code == 404


async def test_every_action_is_in_the_audit_log_with_who_and_when(api: Api) -> None:
    ref = await api.new_incident()
    now = datetime.now(UTC)
    before = now.replace(microsecond=now.microsecond // 1000 * 1000)  # times are kept to the millisecond
    await api.act(ref, "acknowledge")
    await api.act(ref, "dispatch", headers=SUPERVISOR, agency="ambulance", note="unit 7")
    await api.client.post(f"/api/v1/incidents/{ref}/notes", json={"note": "arrived"}, headers=OPERATOR)
    await api.act(ref, "resolve")
    await api.client.get("/api/v1/export/incidents.csv", headers=SUPERVISOR)
    audit = (await api.client.get("/api/v1/audit", headers=SUPERVISOR)).json()
    assert [(a["actor"], a["action"], a["target"], a["detail"]) for a in reversed(audit)] == [
        ("operator-1", "acknowledged", ref, None),
        ("supervisor-1", "dispatch_requested", ref, {"agencies": ["ambulance"], "note": "unit 7"}),
        ("supervisor-1", "dispatched", ref, {"agency": "ambulance", "note": "unit 7"}),
        ("operator-1", "note", ref, {"note": "arrived"}),
        ("operator-1", "resolved", ref, None),
        ("supervisor-1", "export", "incidents.csv", audit[0]["detail"]),
    ]
    assert all(datetime.fromisoformat(a["at"]) >= before for a in audit)
    page = (await api.client.get(f"/api/v1/audit?limit=2&before_id={audit[1]['id']}", headers=SUPERVISOR)).json()
    assert [a["id"] for a in page] == [audit[2]["id"], audit[3]["id"]]


# ---- escalation ----------------------------------------------------------------------------------------


async def _until(predicate: Any, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s (last value {value!r})")
        await asyncio.sleep(0.05)


async def test_an_unacknowledged_incident_escalates_once_and_the_webhook_is_retried_until_2xx(
    tmp_path: Path,
) -> None:
    answers = iter([503, 500])  # two failures, then 200s
    with GatewayStandIn(respond=lambda body: next(answers, 200)) as hook:
        escalation = EscalationSettings(after_s=0.4, webhook_url=hook.url + "/hook", webhook_token="hook-" + "h" * 24)
        async with running_api(tmp_path / "cc.sqlite3", escalation=escalation,
                               callbacks=_fast_retries(), **ROLES) as api:
            waiting = await api.new_incident(seq=1)
            answered = await api.new_incident(seq=2)
            await api.act(answered, "acknowledge")
            closed = await api.new_incident(seq=3)
            await api.act(closed, "false-alarm")

            async def escalated() -> dict[str, Any] | None:
                inc = (await api.client.get(f"/api/v1/incidents/{waiting}", headers=OPERATOR)).json()
                return inc if inc["escalated_at"] else None

            inc = await _until(escalated)
            delivered = await asyncio.to_thread(
                hook.wait_for, lambda got: any(r.status == 200 for r in got), 10.0
            )
            await asyncio.sleep(0.6)  # long enough for a second escalation, were there one
            assert [r.status for r in hook.received] == [503, 500, 200]
            [ok] = [r for r in delivered if r.status == 200]
            assert ok.path == "/hook"
            assert ok.authorization == "Bearer hook-" + "h" * 24
            assert ok.content_type == "application/json"
            body = ok.body
            assert (body["event"], body["event_id"], body["after_s"]) == ("incident.escalated", f"{waiting}:escalated",
                                                                          0.4)
            assert body["incident"]["id"] == waiting
            assert body["incident"]["escalated_at"] == inc["escalated_at"] == body["at"]
            waited = datetime.fromisoformat(inc["escalated_at"]) - datetime.fromisoformat(inc["created_at"])
            assert timedelta(seconds=0.4) <= waited < timedelta(seconds=1.5)
            assert [h["kind"] for h in inc["history"]] == ["state", "escalation"]
            assert inc["history"][1]["actor"] == "system:escalation"
            assert inc["state"] == "new"  # escalation is not a state: the button is told nothing new
            for other in (answered, closed):
                got = (await api.client.get(f"/api/v1/incidents/{other}", headers=OPERATOR)).json()
                assert got["escalated_at"] is None
            rows = db_rows(api.cfg.db_path, "SELECT incident_id, attempts, delivered_at FROM webhook_outbox")
            assert [(r[0], r[1], r[2] is not None) for r in rows] == [(waiting, 3, True)]
            settings = (await api.client.get("/api/v1/settings", headers=SUPERVISOR)).json()
            assert settings["escalation_after_s"] == 0.4
            assert settings["escalation_webhook_url"] == hook.url + "/hook"
            assert settings["escalation_webhook_pending"] == 0


def _fast_retries() -> Any:
    from siaga.commandcenter.config import CallbackSettings

    return CallbackSettings(initial_backoff_s=0.05, max_backoff_s=0.2, idle_poll_s=0.5)


async def test_escalation_is_decided_from_recorded_times(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "cc.sqlite3")
    try:
        t0 = datetime(2026, 11, 24, 3, 0, 0, tzinfo=UTC)
        first = (await store.record_alarm(_new_alarm(1), now=t0)).incident
        second = (await store.record_alarm(_new_alarm(2), now=t0 + timedelta(seconds=30))).incident
        assert await store.next_escalation_due(after_s=60) == t0 + timedelta(seconds=60)
        assert await store.escalate_due(now=t0 + timedelta(seconds=59.999), after_s=60) == []
        [escalated] = await store.escalate_due(now=t0 + timedelta(seconds=60), after_s=60)
        assert (escalated.number, escalated.escalated_at) == (first, t0 + timedelta(seconds=60))
        assert await store.next_escalation_due(after_s=60) == t0 + timedelta(seconds=90)
        # Acknowledged in time: never escalates; nothing waits any more.
        await store.apply_action(second, Action.ACKNOWLEDGE, actor="operator-1", now=t0 + timedelta(seconds=80))
        assert await store.escalate_due(now=t0 + timedelta(hours=1), after_s=60) == []
        assert await store.next_escalation_due(after_s=60) is None
        # No webhook configured: escalated all the same, nothing queued.
        assert await store.pending(store_module.WEBHOOK_OUTBOX) == 0
    finally:
        await store.close()


def _new_alarm(seq: int, device: str = "jkt-menteng-0042", **changes: Any) -> NewAlarm:
    fields: dict[str, Any] = {
        "event_id": f"gw-1:{device}:{seq}",
        "gateway_id": "gw-1",
        "device_id": device,
        "seq": seq,
        "kind": "medical",
        "test": False,
        "lat": -6.195733,
        "lon": 106.832085,
        "address": "Jl. Menteng Raya 12",
        "area": "31.71.06.1001",
        "raised_at": None,
        "received_at": datetime(2026, 11, 24, 3, 0, tzinfo=UTC),
        "fingerprint": f"fp-{seq}",
    }
    fields.update(changes)
    return NewAlarm(**fields)


# ---- response-time figures from recorded timestamps ---------------------------------------------------


def test_median_and_nearest_rank_percentile() -> None:
    assert median([]) is None
    assert percentile([], 90) is None
    assert median([5]) == percentile([5], 90) == 5
    assert median([40, 10, 30, 20]) == 25
    assert median([3, 1, 2]) == 2
    values = list(range(1, 11))  # 1..10
    assert percentile(values, 90) == 9
    assert percentile(values, 91) == 10
    assert percentile(values, 50) == 5
    assert percentile(values, 100) == 10
    with pytest.raises(ValueError, match="p must be"):
        percentile(values, 0)


# (first press in UTC, device, area, test, [(seconds after the press, action, agency)])
HISTORY: list[tuple[str, str, str, bool, list[tuple[float, Action, str | None]]]] = [
    # 00:00 WIB on 20 November: the first instant of the period.
    ("2026-11-19T17:00:00.000Z", "jkt-gambir-0001", "31.71.01.1001", False,
     [(10, Action.ACKNOWLEDGE, None), (70, Action.DISPATCH, "fire"), (1000, Action.RESOLVE, None)]),
    ("2026-11-20T02:00:00.000Z", "jkt-gambir-0002", "31.71.01.1001", False,
     [(20, Action.ACKNOWLEDGE, None), (100, Action.DISPATCH, "fire"), (2000, Action.RESOLVE, None)]),
    ("2026-11-20T03:00:00.000Z", "jkt-senen-0007", "31.71.05.1001", False,
     [(30, Action.ACKNOWLEDGE, None), (40, Action.DISPATCH, "ambulance"), (600, Action.RESOLVE, None)]),
    # 01:00 WIB on 21 November, although still the 20th in UTC.
    ("2026-11-20T18:00:00.000Z", "jkt-senen-0007", "31.71.05.1001", False,
     [(40, Action.ACKNOWLEDGE, None), (100, Action.FALSE_ALARM, None)]),
    ("2026-11-21T05:00:00.000Z", "jkt-senen-0007", "31.71.05.1001", False,
     [(55.5, Action.ACKNOWLEDGE, None), (60, Action.FALSE_ALARM, None)]),
    ("2026-11-21T06:00:00.000Z", "jkt-gambir-0001", "31.71.01.1001", False, []),  # still unacknowledged
    ("2026-11-21T07:00:00.000Z", "jkt-gambir-0001", "31.71.01.1001", True, [(1, Action.ACKNOWLEDGE, None)]),
    # Outside the period: one millisecond before it, and 00:00 WIB on the 22nd.
    ("2026-11-19T16:59:59.999Z", "jkt-gambir-0001", "31.71.01.1001", False, [(1, Action.ACKNOWLEDGE, None)]),
    ("2026-11-21T17:00:00.000Z", "jkt-gambir-0001", "31.71.01.1001", False, [(1, Action.ACKNOWLEDGE, None)]),
]


def figure(count: int, median_s: float | None = None, p90_s: float | None = None) -> dict[str, Any]:
    return {"count": count, "median_s": median_s, "p90_s": p90_s}


def group(key: str, incidents: int, unack: int, false: int, ack: dict, dispatch: dict, resolve: dict,
          referrals: int = 0) -> dict:
    return {"key": key, "incidents": incidents, "unacknowledged": unack, "false_alarms": false,
            "referrals": referrals, "acknowledge": ack, "dispatch": dispatch, "resolve": resolve}


async def test_response_time_figures_are_computed_from_recorded_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "cc.sqlite3"
    store = await Store.open(path)
    try:
        for n, (first, device, area, test, steps) in enumerate(HISTORY, 1):
            t0 = datetime.fromisoformat(first)
            number = (await store.record_alarm(_new_alarm(n, device, area=area, test=test), now=t0)).incident
            for after_s, action, agency in steps:
                await store.apply_action(number, action, actor="operator-1", now=t0 + timedelta(seconds=after_s),
                                         agency=agency)
        await store.record_fault(_fault(1, "jkt-pasarbaru-0005", "offline", True, "2026-11-21T04:00:00Z"),
                                 now=datetime.now(UTC))
        await store.record_fault(_fault(2, "jkt-gambir-0002", "offline", True, "2026-11-21T04:00:00Z"),
                                 now=datetime.now(UTC))
        await store.record_fault(_fault(3, "jkt-gambir-0002", "offline", False, "2026-11-21T04:10:00Z"),
                                 now=datetime.now(UTC))
        await store.record_fault(_fault(4, "jkt-senen-0007", "low_battery", True, "2026-11-21T04:00:00Z"),
                                 now=datetime.now(UTC))
    finally:
        await store.close()

    console = ConsoleSettings(timezone="Asia/Jakarta")
    async with running_api(path, console=console, **ROLES) as api:
        r = await api.client.get("/api/v1/stats?from=2026-11-20&to=2026-11-21", headers=SUPERVISOR)
        assert r.status_code == 200, r.text
        s = r.json()
    assert (s["timezone"], s["start"], s["end"]) == ("Asia/Jakarta", "2026-11-19T17:00:00.000Z",
                                                      "2026-11-21T17:00:00.000Z")
    assert (s["test_incidents_excluded"], s["truncated"]) == (1, False)
    none = figure(0)
    assert s["overall"] == group("all", 6, 1, 2, figure(5, 30.0, 55.5), figure(3, 70.0, 100.0),
                                 figure(3, 1000.0, 2000.0))
    assert s["by_day"] == [
        group("2026-11-20", 3, 0, 0, figure(3, 20.0, 30.0), figure(3, 70.0, 100.0), figure(3, 1000.0, 2000.0)),
        group("2026-11-21", 3, 1, 2, figure(2, 47.75, 55.5), none, none),
    ]
    assert s["by_agency"] == [
        group("ambulance", 1, 0, 0, figure(1, 30.0, 30.0), figure(1, 40.0, 40.0), figure(1, 600.0, 600.0)),
        group("fire", 2, 0, 0, figure(2, 15.0, 20.0), figure(2, 85.0, 100.0), figure(2, 1500.0, 2000.0)),
    ]
    assert s["by_area"] == [
        group("31.71.01.1001", 3, 1, 0, figure(2, 15.0, 20.0), figure(2, 85.0, 100.0), figure(2, 1500.0, 2000.0)),
        group("31.71.05.1001", 3, 0, 2, figure(3, 40.0, 55.5), figure(1, 40.0, 40.0), figure(1, 600.0, 600.0)),
    ]
    assert [(d["device_id"], d["incidents"], d["false_alarms"], d["rate"]) for d in s["false_alarms_by_device"]] == [
        ("jkt-senen-0007", 3, 2, 0.6667),
        ("jkt-gambir-0001", 2, 0, 0.0),
        ("jkt-gambir-0002", 1, 0, 0.0),
    ]
    assert [(f["device_id"], f["since"]) for f in s["devices_offline"]] == [
        ("jkt-pasarbaru-0005", "2026-11-21T04:00:00.000Z")
    ]


async def test_referrals_are_counted_per_button_next_to_false_alarms(tmp_path: Path) -> None:
    # Bandung's reports: most presses were not emergencies but complaints, referred to LAPOR!.
    path = tmp_path / "cc.sqlite3"
    t0 = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
    store = await Store.open(path)
    try:
        closings: list[tuple[str, Action, tuple[str, str | None] | None]] = [
            ("bdg-coblong-0001", Action.RESOLVE, ("LAPOR!", "LPR-1")),
            ("bdg-coblong-0001", Action.RESOLVE, ("LAPOR!", None)),
            ("bdg-coblong-0001", Action.FALSE_ALARM, None),
            ("bdg-coblong-0001", Action.RESOLVE, None),
            ("bdg-sukajadi-0002", Action.RESOLVE, ("Hotline Sampurasun", None)),
            ("bdg-sukajadi-0002", Action.ACKNOWLEDGE, None),
        ]
        for n, (device, action, referral) in enumerate(closings, 1):
            t = t0 + timedelta(hours=n)
            number = (await store.record_alarm(_new_alarm(n, device), now=t)).incident
            await store.apply_action(number, Action.ACKNOWLEDGE, actor="operator-1", now=t + timedelta(seconds=10))
            if action is not Action.ACKNOWLEDGE:
                await store.apply_action(number, action, actor="operator-1", now=t + timedelta(seconds=100 * n),
                                         referral=referral)
        with pytest.raises(ValueError, match="referral"):
            await store.apply_action(number, Action.FALSE_ALARM, actor="operator-1", now=t0, referral=("LAPOR!", None))
    finally:
        await store.close()
    async with running_api(path, **ROLES) as api:
        r = await api.client.get("/api/v1/stats?from=2026-11-20&to=2026-11-20", headers=SUPERVISOR)
        assert r.status_code == 200, r.text
        s = r.json()
        export = await api.client.get("/api/v1/export/incidents.csv?from=2026-11-20&to=2026-11-20",
                                      headers=SUPERVISOR)
        assert [(row["state"], row["referred_to"], row["referral_ref"])
                for row in csv.DictReader(io.StringIO(export.text))][:2] == [
            ("resolved", "LAPOR!", "LPR-1"), ("resolved", "LAPOR!", "")]
        # An agency viewer may not refer (nor close) an incident.
        fresh = await api.new_incident(seq=99, device="bdg-coblong-0001")
        assert (await api.act(fresh, "refer", headers=AGENCY, channel="LAPOR!")).status_code == 403
        assert (await api.act(fresh, "refer", headers=SUPERVISOR, channel="LAPOR!")).status_code == 200
    o = s["overall"]
    assert (o["incidents"], o["false_alarms"], o["referrals"], o["unacknowledged"]) == (6, 1, 3, 0)
    # Press -> resolve counts only incidents resolved as emergencies: the fourth, at 400 s.
    assert o["resolve"] == figure(1, 400.0, 400.0)
    assert [(d["device_id"], d["incidents"], d["false_alarms"], d["rate"], d["referrals"])
            for d in s["false_alarms_by_device"]] == [
        ("bdg-coblong-0001", 4, 1, 0.25, 2),
        ("bdg-sukajadi-0002", 2, 0, 0.0, 1),
    ]


async def test_the_stats_period_is_checked(api: Api) -> None:
    for query in ("from=2026-11-21&to=2026-11-20", "from=2025-01-01&to=2026-11-20", "from=yesterday"):
        r = await api.client.get(f"/api/v1/stats?{query}", headers=SUPERVISOR)
        assert r.status_code == 422, query
    r = await api.client.get("/api/v1/stats", headers=SUPERVISOR)  # the last seven days by default
    assert r.status_code == 200
    assert (datetime.fromisoformat(r.json()["end"]) - datetime.fromisoformat(r.json()["start"])).days == 7


def _fault(n: int, device: str, kind: str, active: bool, at: str, **detail: Any) -> NewFault:
    return NewFault(event_id=f"gw-1:{device}:fault:{n}", gateway_id="gw-1", device_id=device, fault=kind,
                    active=active, at=datetime.fromisoformat(at), detail=detail, location=None,
                    fingerprint=f"fault-{n}")


# ---- CSV export ----------------------------------------------------------------------------------------------


async def test_the_csv_export_has_one_row_per_incident_and_defuses_formulas(api: Api) -> None:
    plain = await api.new_incident(seq=1)
    await api.act(plain, "acknowledge")
    await api.act(plain, "dispatch", agency="ambulance")
    r = await api.client.post(f"/api/v1/incidents/{plain}/dispatch", headers=OPERATOR,
                              json={"agencies": ["police", "fire"]})  # fire answers on its screen
    assert r.status_code == 200, r.text
    body = alarm(seq=2, location={"lat": -6.2, "lon": 106.8, "address": "=HYPERLINK(\"http://x\")",
                                  "area": "+31"}, test=True)
    tricky = (await api.post_alarm(body)).json()["incident_id"]
    r = await api.client.get("/api/v1/export/incidents.csv", headers=SUPERVISOR)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"].startswith('attachment; filename="siaga-incidents-')
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["id"] for row in rows] == [plain, tricky]
    first, second = rows
    assert (first["state"], first["agency"], first["acknowledged_by"], first["test"]) == (
        "dispatched", "ambulance", "operator-1", "0")
    assert first["agencies"] == "ambulance:accepted police:accepted fire:requested"
    assert second["agencies"] == ""
    assert float(first["seconds_to_acknowledge"]) <= float(first["seconds_to_dispatch"])
    assert first["seconds_to_close"] == ""
    assert (first["lat"], first["lon"]) == ("-6.195733", "106.832085")  # numbers stay numbers
    assert second["address"] == "'=HYPERLINK(\"http://x\")"
    assert second["area"] == "'+31"
    assert second["test"] == "1"
    assert (await api.client.get("/api/v1/export/incidents.csv", headers=OPERATOR)).status_code == 403


# ---- device battery ------------------------------------------------------------------------------------------


async def test_the_latest_known_battery_is_shown_with_the_incident(api: Api) -> None:
    r = await api.post_alarm(alarm(seq=1, battery_mv=3710, received_at="2026-11-24T03:00:00Z"))
    ref = r.json()["incident_id"]

    async def battery() -> int | None:
        return (await api.client.get(f"/api/v1/incidents/{ref}", headers=OPERATOR)).json()["battery_mv"]

    assert await battery() == 3710
    faults = [
        ("2026-11-24T03:10:00Z", {"battery_mv": 3350}, 3350),  # newer: taken
        ("2026-11-24T02:00:00Z", {"battery_mv": 4100}, 3350),  # older, arriving late: ignored
        ("2026-11-24T03:20:00Z", {"battery_mv": True}, 3350),  # not a voltage
        ("2026-11-24T03:30:00Z", {"reason": "3 heartbeats missed"}, 3350),  # none given
    ]
    for n, (at, detail, expected) in enumerate(faults, 1):
        body = {"event_id": f"gw-1:jkt-menteng-0042:fault:{n}", "gateway_id": "gw-1",
                "device_id": "jkt-menteng-0042", "fault": "low_battery", "active": True, "at": at, "detail": detail}
        assert (await api.client.post("/api/v1/faults", json=body,
                                      headers=intake_headers(body["event_id"]))).status_code == 201
        assert await battery() == expected, detail
    # The battery is a fact about the device, not part of the alarm: a retry stating another
    # voltage is the same alarm.
    again = await api.post_alarm(alarm(seq=1, battery_mv=3600, received_at="2026-11-24T03:00:00Z"))
    assert (again.status_code, again.json()["incident_id"]) == (200, ref)
    for bad in (-1, 100_000, "3700", 3.7):
        assert (await api.post_alarm(alarm(seq=9, battery_mv=bad))).status_code == 422, bad


# ---- schema version 3 ----------------------------------------------------------------------------------------


def make_v2_database(path: Path) -> None:
    """A database as version 2 left it: one new incident, a fault report with a battery voltage."""
    with closing(sqlite3.connect(path)) as db:
        for statements in store_module.MIGRATIONS[:2]:
            for statement in statements:
                db.execute(statement)
        db.execute(
            """INSERT INTO incidents (id, state, device_id, kind, test, lat, lon, address, area, created_at,
                   updated_at)
               VALUES (3, 'new', 'jkt-menteng-0042', 'fire', 0, -6.19, 106.83, 'Jl. Menteng Raya 12',
                   '31.71.06.1001', '2026-11-24T03:00:00.000Z', '2026-11-24T03:00:00.000Z')"""
        )
        db.execute(
            """INSERT INTO incident_history (incident_id, at, actor, from_state, to_state, detail)
               VALUES (3, '2026-11-24T03:00:00.000Z', 'gateway:gw-1', NULL, 'new', NULL)"""
        )
        for n, (at, mv) in enumerate((("2026-11-24T02:00:00.000Z", 3500), ("2026-11-24T01:00:00.000Z", 3900)), 1):
            db.execute(
                """INSERT INTO device_faults (event_id, gateway_id, device_id, fault, active, at, detail,
                       intake_at, fingerprint)
                   VALUES (?, 'gw-1', 'jkt-menteng-0042', 'low_battery', 1, ?, ?, ?, 'x')""",
                (f"f{n}", at, json.dumps({"battery_mv": mv}), at),
            )
        db.execute("PRAGMA user_version = 2")
        db.commit()


async def test_a_version_2_database_is_migrated_to_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "cc.sqlite3"
    make_v2_database(path)
    store = await Store.open(path)
    try:
        assert db_rows(path, "PRAGMA user_version") == [(store_module.SCHEMA_VERSION,)]
        incident = await store.get_incident(3)
        assert incident is not None
        assert (incident.escalated_at, incident.battery_mv) == (None, 3500)  # the latest report's voltage
        [history] = await store.incident_history(3)
        assert history.kind == "state"
        # An incident left unacknowledged across the upgrade escalates as soon as it is due.
        [escalated] = await store.escalate_due(now=datetime(2026, 11, 24, 3, 5, tzinfo=UTC), after_s=60)
        assert escalated.number == 3
    finally:
        await store.close()


async def test_a_version_6_database_keeps_its_dispatches_as_dispatch_rows(tmp_path: Path) -> None:
    # Versions 1-6 recorded one agency per incident; version 7 turns each into a dispatch row:
    # accepted while the incident is dispatched, done once it is closed.
    path = tmp_path / "cc.sqlite3"
    with closing(sqlite3.connect(path)) as db:
        for statements in store_module.MIGRATIONS[:6]:
            for statement in statements:
                db.execute(statement)
        for number, state, closed in ((1, "dispatched", None), (2, "resolved", "2026-11-24T04:00:00.000Z"),
                                      (3, "acknowledged", None)):
            db.execute(
                """INSERT INTO incidents (id, state, device_id, kind, test, lat, lon, address, area, created_at,
                       updated_at, acknowledged_at, acknowledged_by, dispatched_at, dispatched_by, agency,
                       closed_at, closed_by)
                   VALUES (?, ?, 'jkt-0001', 'fire', 0, -6.19, 106.83, 'Jl. Menteng Raya 12', '31.71.06.1001',
                       '2026-11-24T03:00:00.000Z', '2026-11-24T03:10:00.000Z', '2026-11-24T03:01:00.000Z', 'op',
                       ?, ?, ?, ?, ?)""",
                (number, state, None if number == 3 else "2026-11-24T03:02:00.000Z", None if number == 3 else "op",
                 None if number == 3 else "fire", closed, "op" if closed else None),
            )
        db.execute("PRAGMA user_version = 6")
        db.commit()
    store = await Store.open(path)
    await store.close()
    assert db_rows(path, "PRAGMA user_version") == [(store_module.SCHEMA_VERSION,)]
    assert db_rows(path, "SELECT incident_id, agency, status, requested_at, requested_by, accepted_at, done_at "
                         "FROM dispatches ORDER BY incident_id") == [
        (1, "fire", "accepted", "2026-11-24T03:02:00.000Z", "op", "2026-11-24T03:02:00.000Z", None),
        (2, "fire", "done", "2026-11-24T03:02:00.000Z", "op", "2026-11-24T03:02:00.000Z", "2026-11-24T04:00:00.000Z"),
    ]
    assert db_rows(path, "SELECT count(*) FROM shifts") == [(0,)]


async def test_schema_version_8_is_the_current_one() -> None:
    # A reminder that a ninth version is a new MIGRATIONS entry, and needs a migration test like
    # the ones above (version 4's: tests/test_http_entrances.py, sessions bound to a credential;
    # version 5's: tests/test_gateway_liveness.py, the gateways' self-reports; version 6's:
    # tests/test_commandcenter.py, referrals of incidents that were not an emergency; version 7's
    # above, dispatches; version 8's: shifts, preferences, second escalation and retention columns,
    # empty or NULL after the upgrade, as the test above checks for shifts).
    assert store_module.SCHEMA_VERSION == 8


# ---- configuration ------------------------------------------------------------------------------------------------


def _config_file(tmp_path: Path, text: str) -> Path:
    for name, token in (("intake", INTAKE_TOKEN), ("op1", OPERATOR_TOKEN), ("sup", SUPERVISOR_TOKEN),
                        ("fire", AGENCY_TOKEN), ("hook", "hook-" + "k" * 24), ("gw", GATEWAY_TOKEN)):
        (tmp_path / f"{name}.token").write_text(token + "\n")
    path = tmp_path / "cc.toml"
    path.write_text(text)
    return path


_BASE = """
[intake]
token_file = "intake.token"
[[operators]]
name = "operator-1"
token_file = "op1.token"
[[operators]]
name = "supervisor-1"
role = "supervisor"
token_file = "sup.token"
[[operators]]
name = "damkar-viewer"
role = "agency"
agency = "fire"
token_file = "fire.token"
"""


def test_config_reads_roles_agencies_escalation_and_console(tmp_path: Path) -> None:
    cfg = CCConfig.load(_config_file(tmp_path, _BASE + """
[[agencies]]
id = "fire"
name = "Damkar Jakarta Pusat"
[[agencies]]
id = "ambulance"
name = "Ambulans Gawat Darurat"
[escalation]
after_s = 45
webhook_url = "https://alerts.example.org/siaga?key=abc"
webhook_token_file = "hook.token"
[console]
timezone = "Asia/Jakarta"
session_hours = 10
secure_cookie = true
map_center = [-6.2, 106.8]
map_zoom = 13
tile_url = "https://{s}.tiles.example.org/{z}/{x}/{y}.png"
"""))
    assert cfg.operator("operator-1") == Operator("operator-1", Role.OPERATOR, None)
    assert cfg.operator("supervisor-1").role is Role.SUPERVISOR
    assert cfg.operator("damkar-viewer") == Operator("damkar-viewer", Role.AGENCY, "fire")
    assert cfg.agencies == (Agency("fire", "Damkar Jakarta Pusat"), Agency("ambulance", "Ambulans Gawat Darurat"))
    assert cfg.escalation.after_s == 45
    assert cfg.escalation.webhook_token == "hook-" + "k" * 24
    assert "hook-" not in repr(cfg)
    assert (cfg.console.timezone, cfg.console.session_hours, cfg.console.secure_cookie) == ("Asia/Jakarta", 10, True)
    assert cfg.console.map_center == (-6.2, 106.8)
    assert cfg.console.tile_origin == "https://*.tiles.example.org"


def test_config_defaults_keep_older_files_working(tmp_path: Path) -> None:
    cfg = CCConfig.load(_config_file(tmp_path, '[intake]\ntoken_file = "intake.token"\n[[operators]]\n'
                                     'name = "operator-1"\ntoken_file = "op1.token"\n'))
    assert cfg.operator("operator-1").role is Role.OPERATOR
    assert [a.id for a in cfg.agencies][:5] == ["fire", "ambulance", "police", "disaster", "public-order"]
    assert {"sar", "transport", "electricity", "water"} <= {a.id for a in cfg.agencies}
    assert cfg.escalation == EscalationSettings()
    assert cfg.escalation.after_s == 60
    assert cfg.console.timezone == "UTC"
    # Built in code without roles (as the demo does): everyone is an operator.
    assert make_config(tmp_path / "x.db").operator("operator-2").role is Role.OPERATOR


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[[operators]]\nname = "x"\nrole = "boss"\ntoken_file = "hook.token"', "role must be one of"),
        ('[[operators]]\nname = "x"\nrole = "agency"\ntoken_file = "hook.token"', "needs agency"),
        ('[[operators]]\nname = "x"\nrole = "agency"\nagency = "navy"\ntoken_file = "hook.token"', "needs agency"),
        ('[[operators]]\nname = "x"\nagency = "fire"\ntoken_file = "hook.token"', "only for role 'agency'"),
        ('[[agencies]]\nid = "Fire Dept"\nname = "x"', "agency id"),
        ('[[agencies]]\nid = "fire"\nname = "a"\n[[agencies]]\nid = "fire"\nname = "b"', "twice"),
        ("[escalation]\nafter_s = 0", "after_s"),
        ('[escalation]\nwebhook_url = "ftp://x"', "http"),
        ('[escalation]\nwebhook_token_file = "hook.token"', "without webhook_url"),
        ('[escalation]\nwebhook_url = "http://x"\nwebhook_token_file = "op1.token"', "differ"),
        ('[escalation]\nwebhook_url = "http://x"\nwebhook_token = "inline-inline-inline"', "inline"),
        ('[console]\ntimezone = "Mars/Olympus"', "IANA"),
        ('[console]\ntile_url = "tiles/{z}/{x}/{y}.png"', "tile_url"),
        ('[console]\ntile_url = "https://t.example.org/tile.png"', "tile_url"),
        ("[console]\nmap_center = [1]", "map_center"),
        ("[console]\nsecure_cookie = 1", "true or false"),
        ("[console]\nsession_hours = 0", "session_hours"),
        ("[console]\ntheme = \"dark\"", "unknown setting.*theme"),
    ],
)
def test_config_errors_for_the_console(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CCConfig.load(_config_file(tmp_path, _BASE + "\n" + extra + "\n"))


# ---- OpenAPI -------------------------------------------------------------------------------------------------------


async def test_openapi_documents_the_console_api(api: Api) -> None:
    doc = (await api.client.get("/openapi.json")).json()
    paths = doc["paths"]
    assert set(paths) >= {
        "/api/v1/session",
        "/api/v1/events",
        "/api/v1/console/settings",
        "/api/v1/incidents/{incident_id}/notes",
        "/api/v1/stats",
        "/api/v1/export/incidents.csv",
        "/api/v1/audit",
        "/api/v1/settings",
    }
    assert set(paths["/api/v1/session"]) == {"get", "post", "delete"}
    assert "text/event-stream" in paths["/api/v1/events"]["get"]["responses"]["200"]["content"]
    assert "403" in paths["/api/v1/stats"]["get"]["responses"]
    assert "/console" not in paths
    schemes = doc["components"]["securitySchemes"]
    cookie = schemes["sessionCookie"]
    assert (cookie["type"], cookie["in"], cookie["name"]) == ("apiKey", "cookie", "siaga_session")
    assert {"escalated_at", "battery_mv"} <= set(doc["components"]["schemas"]["IncidentOut"]["properties"])

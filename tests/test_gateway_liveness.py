"""Path supervision (issue 16, "the room sees its own plumbing"): a real gateway process reports itself
to a real command center every second; stopped for longer than the command center's `silence_s`, it
is shown silent to everyone signed in, with an audit entry and an escalation webhook event; started
again, the fault clears the same way. Also the supervisor's decision and one round of it on a store,
and what the intake refuses."""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from siaga import i18n
from siaga.commandcenter import plumbing
from siaga.commandcenter.callbacks import signed_body
from siaga.commandcenter.plumbing import (
    REPORT_BODY_MAX,
    GatewayReportIn,
    GatewayState,
    apply_transitions,
    decide,
    record_report,
)
from siaga.commandcenter.schema import MIGRATIONS
from siaga.commandcenter.store import Store
from siaga.gateway.config import GatewayConfig
from siaga.settings import ConfigError
from tests.support.ccproc import CommandCenterProcess
from tests.support.gateway import GatewayProcess
from tests.support.mosquitto import MosquittoProcess
from tests.support.net import free_port
from tests.support.receiver import HttpReceiver, Request
from tests.support.waiting import wait_for

SILENCE_S = 3
STATIC = Path(__file__).resolve().parents[1] / "commandcenter" / "static"


class Hooks(HttpReceiver):
    """The escalation webhook's receiver: keeps the bodies of what it was sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        super().__init__(self._take, path="/hooks")

    def _take(self, request: Request) -> int:
        with self._lock:
            self.bodies.append(json.loads(request.body))
        return 204

    def events(self) -> list[str]:
        with self._lock:
            return [b["event"] for b in self.bodies]


def _gateways(cc: CommandCenterProcess, headers: dict[str, str]) -> dict[str, Any]:
    r = httpx.get(f"{cc.url}/api/v1/gateways", headers=headers, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def _status(cc: CommandCenterProcess) -> str | None:
    found = _gateways(cc, cc.operator_headers())["gateways"]
    return found[0]["status"] if found else None


def _audit_actions(cc: CommandCenterProcess) -> list[str]:
    r = httpx.get(f"{cc.url}/api/v1/audit", headers=cc.supervisor_headers(), timeout=5)
    assert r.status_code == 200, r.text
    return [a["action"] for a in r.json() if a["actor"] == plumbing.ACTOR]


def test_a_stopped_gateway_is_shown_silent_and_clears_when_it_returns(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    gw_port, callback_token = free_port(), secrets.token_urlsafe(24)
    with Hooks() as hooks:
        cc = CommandCenterProcess(tmp_path, gateway_url=f"http://127.0.0.1:{gw_port}", gateway_token=callback_token,
                                  webhook_url=hooks.url, extra_toml=f"[plumbing]\nsilence_s = {SILENCE_S}\n")
        gateway = GatewayProcess(tmp_path, mqtt_port=mosquitto.port, mqtt_password=mosquitto.gateway_password,
                                 cc_url=cc.url, cc_token=cc.intake_token, port=gw_port, callback_token=callback_token,
                                 cc_settings="report_every_s = 1")
        with cc, gateway:  # both started
            gateway.register("gw-live-0001", secrets.token_hex(32), lat=-6.2, lon=106.8, address="Jl. Uji 1",
                             area="31.71")
            # Reporting: every field of the report, for every role (the banner is room-wide).
            report = wait_for(lambda: next(iter(g for g in _gateways(cc, cc.operator_headers())["gateways"]
                                                if g["buttons"]["registered"] == 1), None), 10, "a report")
            assert report["gateway_id"] == gateway.gateway_id
            assert report["status"] == "reporting" and report["silent_at"] is None
            assert report["broker_connected"] is True
            assert report["outbox"]["total"] == sum(report["outbox"]["by_destination"].values()) == 0
            assert report["version"] and report["uptime_s"] >= 0
            for headers in (cc.supervisor_headers(), cc.agency_headers()):
                assert _gateways(cc, headers)["gateways"][0]["gateway_id"] == gateway.gateway_id
            assert _gateways(cc, cc.operator_headers())["silence_s"] == SILENCE_S
            assert httpx.get(f"{cc.url}/api/v1/gateways", timeout=5).status_code == 401

            # Stopped: silent within silence_s and one check of the supervisor (and a little slack).
            gateway.stop()
            stopped = time.monotonic()
            wait_for(lambda: _status(cc) == "silent", SILENCE_S + 4, "the gateway shown silent")
            assert time.monotonic() - stopped <= SILENCE_S + 4
            silent = _gateways(cc, cc.operator_headers())["gateways"][0]
            assert silent["silent_at"] is not None and silent["silent_at"] >= silent["last_report_at"]
            assert _audit_actions(cc) == ["gateway_silent"]
            wait_for(lambda: hooks.events() == [plumbing.SILENT_EVENT], 10, "the silence sent to the webhook")
            body = hooks.bodies[0]
            assert body["gateway"]["gateway_id"] == gateway.gateway_id
            assert body["gateway"]["report"]["buttons"] == {"online": report["buttons"]["online"], "registered": 1}
            # Silence stays one fault: no second entry while it lasts.
            time.sleep(1.5)
            assert _audit_actions(cc) == ["gateway_silent"]

            # Back: cleared, recorded and sent once.
            gateway.start()
            wait_for(lambda: _status(cc) == "reporting", 10, "the gateway reporting again")
            wait_for(lambda: _audit_actions(cc) == ["gateway_back", "gateway_silent"], 5, "the return in the audit log")
            wait_for(lambda: hooks.events() == [plumbing.SILENT_EVENT, plumbing.BACK_EVENT], 10,
                     "the return sent to the webhook")
            assert "silent" in cc.log() and "reports again" in cc.log()


def test_the_console_asks_for_the_gateways_and_has_a_banner() -> None:
    js = (STATIC / "console.js").read_text(encoding="utf-8")
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    assert '"/api/v1/gateways"' in js
    assert 't("plumbing.silent"' in js  # the banner's words come from the console's catalog
    silent = i18n.catalog("console")["plumbing.silent"]
    assert "tidak melapor sejak" in silent["id"] and "silent since" in silent["en"]
    assert 'id="plumbing-banner"' in html


# ---- the decision and one round on a store -----------------------------------------------------------

T0 = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)


def _state(received_s: float, silent_s: float | None = None) -> GatewayState:
    return GatewayState("gw-1", "a", T0 + timedelta(seconds=received_s),
                        None if silent_s is None else T0 + timedelta(seconds=silent_s),
                        T0, T0, {})


@pytest.mark.parametrize(("state", "now_s", "expected"), [
    (_state(0), 89.9, []),                          # within the silence
    (_state(0), 90, ["silent"]),                    # the silence is reached
    (_state(0, silent_s=90), 200, []),              # silent already: raised once
    (_state(95, silent_s=90), 96, ["back"]),        # a report after the fault was raised
    (_state(90, silent_s=90), 96, []),              # the report the fault was raised over
])
def test_the_supervisor_decides_on_the_latest_report(state: GatewayState, now_s: float, expected: list[str]) -> None:
    changes = decide([state], now=T0 + timedelta(seconds=now_s), silence_s=90)
    assert [c for _, c in changes] == expected


def _report(at: datetime, instance: str = "gw-1a") -> GatewayReportIn:
    return GatewayReportIn.model_validate({
        "gateway_id": "gw-1", "instance": instance, "version": "1.0", "uptime_s": 5.0,
        "outbox": {"total": 3, "by_destination": {"command-center": 3}}, "broker_connected": False,
        "buttons": {"online": 1, "registered": 2}, "at": at.isoformat()})



async def test_a_round_marks_records_and_queues_each_change_once(store_target: str | Path) -> None:
    store = await Store.open(store_target)
    try:
        await record_report(store, _report(T0), now=T0)
        await record_report(store, _report(T0, instance="gw-1b"), now=T0 + timedelta(seconds=60))
        assert await apply_transitions(store, now=T0 + timedelta(seconds=89), silence_s=90, webhook=True) == []
        first = await apply_transitions(store, now=T0 + timedelta(seconds=90), silence_s=90, webhook=True)
        assert [(s.instance, c) for s, c in first] == [("gw-1a", "silent")]
        assert await apply_transitions(store, now=T0 + timedelta(seconds=100), silence_s=90, webhook=True) == []
        await record_report(store, _report(T0 + timedelta(seconds=101)), now=T0 + timedelta(seconds=101))
        back = await apply_transitions(store, now=T0 + timedelta(seconds=102), silence_s=90, webhook=True)
        assert [(s.instance, c) for s, c in back] == [("gw-1a", "back")]
        states = {s.instance: s for s in await plumbing.gateway_states(store)}
        assert states["gw-1a"].silent_at is None and states["gw-1b"].silent_at is None
        out = plumbing.gateway_out(states["gw-1a"])
        assert out.outbox.by_destination == {"command-center": 3} and out.broker_connected is False
        assert out.sms is None   # a gateway without an SMS path
        audit = [(a.action, a.target) for a in await store.audit_entries()]
        assert audit == [("gateway_back", "gw-1/gw-1a"), ("gateway_silent", "gw-1/gw-1a")]
        async with store._tx(write=False) as db:
            rows = await db.fetchall("SELECT incident_id, kind, body FROM webhook_outbox ORDER BY id")
        assert [(r["incident_id"], r["kind"]) for r in rows] == [
            ("gateway:gw-1:gw-1a", "gateway.silent"), ("gateway:gw-1:gw-1a", "gateway.back")]
        ids = [json.loads(r["body"])["event_id"] for r in rows]
        assert len(set(ids)) == 2
    finally:
        await store.close()


def test_the_intake_token_is_needed_and_the_body_is_checked(command_center: CommandCenterProcess) -> None:
    cc = command_center
    body = json.loads(_report(T0).model_dump_json())
    url = f"{cc.url}/api/v1/gateways/report"
    assert httpx.post(url, json=body, timeout=5).status_code == 401
    assert httpx.post(url, json=body, headers=cc.operator_headers(), timeout=5).status_code == 401
    ok = httpx.post(url, json=body, headers={"Authorization": f"Bearer {cc.intake_token}"}, timeout=5)
    assert ok.status_code == 204, ok.text
    # The gateway's SMS modem down, then off the network: kept with the report and shown to everyone
    # signed in until a report says it is back; a report without it (no SMS path) shows null.
    for sms in ({"up": False, "registered": None, "signal": None}, {"up": True, "registered": False, "signal": None},
                {"up": True, "registered": True, "signal": 17}, None):
        ok = httpx.post(url, json=body if sms is None else {**body, "sms": sms},
                        headers={"Authorization": f"Bearer {cc.intake_token}"}, timeout=5)
        assert ok.status_code == 204, ok.text
        assert [g["sms"] for g in _gateways(cc, cc.agency_headers())["gateways"]] == [sms]
    for wrong in ({**body, "broker_connected": "yes"}, {**body, "gateway_id": "gw 1"},
                  {**body, "outbox": {"total": -1}}, {**body, "at": "yesterday"},
                  {**body, "sms": {"up": "no"}}, {**body, "sms": {"up": True, "signal": 99}}):
        r = httpx.post(url, json=wrong, headers={"Authorization": f"Bearer {cc.intake_token}"}, timeout=5)
        assert r.status_code == 422, (wrong, r.text)
    # A report is bounded: 512 KiB at most (the most its schema allows), refused while it arrives.
    large = httpx.post(url, json={**body, "padding": "x" * (REPORT_BODY_MAX + 1)},
                       headers={"Authorization": f"Bearer {cc.intake_token}"}, timeout=5)
    assert large.status_code == 413


# ---- the gateway's setting ---------------------------------------------------------------------------

def test_the_gateway_setting_is_checked(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, mqtt_port=1, mqtt_password="p" * 20, cc_url="http://127.0.0.1:1",
                        cc_token="t" * 24, cc_settings="report_every_s = 0")
    assert GatewayConfig.load(gw.config_path).report_every_s == 0
    text = gw.config_path.read_text().replace("report_every_s = 0", "report_every_s = -1")
    gw.config_path.write_text(text)
    with pytest.raises(ConfigError, match="report_every_s"):
        GatewayConfig.load(gw.config_path)


def test_a_signed_webhook_names_the_gateway_event_as_its_type() -> None:
    state = GatewayState("gw-1", "gw-1a", T0, None, T0, T0, {"version": "1"})
    body = plumbing.webhook_body(state, "silent", now=T0 + timedelta(seconds=90), silence_s=75)
    msg_id, signed = signed_body(body)
    message = json.loads(signed)
    assert msg_id == "gateway:gw-1:gw-1a:silent:2026-11-24T03:01:30.000Z"
    assert message["type"] == "gateway.silent" and "event" not in message["data"]
    assert message["data"]["gateway"]["last_report_at"] == "2026-11-24T03:00:00.000Z"


async def test_a_version_4_database_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "cc.sqlite3"
    with sqlite3.connect(path) as db:
        for statement in [s for version in MIGRATIONS[:4] for s in version]:
            db.execute(statement)
        db.execute("INSERT INTO audit_log (at, actor, action) VALUES ('2026-11-24T03:00:00.000Z', 'op1', 'login')")
        db.execute("PRAGMA user_version = 4")
    store = await Store.open(path)
    try:
        assert [(a.actor, a.action) for a in await store.audit_entries()] == [("op1", "login")]
        assert await plumbing.gateway_states(store) == []
        await record_report(store, _report(T0), now=T0)
        [state] = await plumbing.gateway_states(store)
        assert (state.gateway_id, state.instance, state.silent_at) == ("gw-1", "gw-1a", None)
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)


def test_a_supervisor_forgets_a_gateway_taken_out_of_service(command_center: CommandCenterProcess) -> None:
    cc = command_center
    body = json.loads(_report(T0).model_dump_json())
    intake = {"Authorization": f"Bearer {cc.intake_token}"}
    assert httpx.post(f"{cc.url}/api/v1/gateways/report", json=body, headers=intake, timeout=5).status_code == 204
    url, which = f"{cc.url}/api/v1/gateways", {"gateway_id": "gw-1", "instance": "gw-1a"}
    assert httpx.delete(url, params=which, headers=cc.operator_headers(), timeout=5).status_code == 403
    assert httpx.delete(url, params=which, headers=cc.supervisor_headers(), timeout=5).status_code == 204
    assert httpx.delete(url, params=which, headers=cc.supervisor_headers(), timeout=5).status_code == 404
    assert _gateways(cc, cc.operator_headers())["gateways"] == []
    r = httpx.get(f"{cc.url}/api/v1/audit", headers=cc.supervisor_headers(), timeout=5)
    assert [(a["actor"], a["target"]) for a in r.json() if a["action"] == "gateway_forgotten"] == [
        (cc.supervisor_name, "gw-1/gw-1a")]


async def test_a_report_refused_at_start_is_quiet_once_then_warned(caplog: pytest.LogCaptureFixture) -> None:
    """The gateway and the command center often start together: the very first report may find
    nobody listening. That one failure is logged at DEBUG; a second in a row is the WARNING (once
    per run of failures); after reports got through, the first failure is warned at once."""
    from types import SimpleNamespace

    from siaga.gateway.config import Destination
    from siaga.gateway.liveness import _Target
    from tests.support.net import free_port

    settings = SimpleNamespace(url=f"http://127.0.0.1:{free_port()}", timeout_s=2.0, token="t" * 20)
    target = _Target(Destination("command-center", "siaga", (), settings))
    caplog.set_level("DEBUG", logger="siaga.gateway.liveness")

    def warnings() -> int:
        return sum(r.levelname == "WARNING" for r in caplog.records)

    try:
        await target.send({})
        assert warnings() == 0
        await target.send({})
        assert warnings() == 1
        await target.send({})
        assert warnings() == 1
        target.failing, target.delivered = False, True  # as after a report that got through
        await target.send({})
        assert warnings() == 2
    finally:
        await target.client.aclose()

"""Standard Webhooks: the gateway's own signer and verifier against the specification's reference
package (`standardwebhooks`) in both directions, every payload against its JSON Schema, the
adapter against a real HTTP receiver that verifies with the reference package, and the route by
which a city's system reports states."""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import jsonschema_rs
import pytest
from fastapi import FastAPI, Request
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError

from siaga.commandcenter.callbacks import signed_body
from siaga.commandcenter.domain import IncidentState
from siaga.commandcenter.escalation import second_webhook_body, webhook_body
from siaga.commandcenter.plumbing import GatewayState
from siaga.commandcenter.plumbing import webhook_body as webhook_body_of_plumbing
from siaga.commandcenter.store import Incident
from siaga.gateway import webhooks as wh
from siaga.gateway.adapters import Accepted, Failed
from siaga.gateway.codec import Alarm, Location, RejectReason
from siaga.gateway.events import alarm_event, fault_event, state_event
from siaga.gateway.inbound import INBOUND_BODY_MAX, inbound_router, state_report_schema
from siaga.gateway.store import DeviceRecord, OutboundEvent
from siaga.gateway.supervision import Fault, FaultChange
from siaga.web import ThrottleRules, guard_entrance
from tests.support.net import StalledServer
from tests.support.receiver import Answer, HttpReceiver
from tests.support.receiver import Request as HttpRequest

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
GW = "gw-1"
OLD_KEY, NEW_KEY, CITY_KEY = bytes(range(32)), bytes(range(100, 132)), b"city system key, 24 bytes or more"
OLD, NEW, CITY = wh.format_secret(OLD_KEY), wh.format_secret(NEW_KEY), wh.format_secret(CITY_KEY)
T0_MS = 1_795_000_329_412  # 2026-11-18T11:12:09.412Z
DEV = "jkt-menteng-0042"
LOC = Location(-6_195_733, 106_832_085, "Jl. Menteng Raya 12", "31.71.06.1001")


def schema_validator(name: str) -> jsonschema_rs.Validator:
    return jsonschema_rs.Draft202012Validator(json.loads((SCHEMAS / f"webhook-{name}.json").read_text()),
                                              validate_formats=True)


VALIDATORS = {t: schema_validator(t) for t in wh.EVENT_TYPES}


def outbound(kind: str, made: tuple[str, str], n: int) -> OutboundEvent:
    event_id, body = made
    return OutboundEvent(id=n, kind=kind, event_id=event_id, device_id=json.loads(body)["device_id"], body=body,
                         attempts=0, alarm_id=None, created_ms=T0_MS)


def sample_events() -> list[OutboundEvent]:
    """One of each kind the gateway makes, in the variants that change a body's shape."""
    alarm = Alarm(DEV, 4711, "medical", False, LOC, 1000, T0_MS // 1000, b"")
    test_press = Alarm("jkt-menteng-0043", 12, "fire", True, Location(0, 0, "", ""), 5, None, b"")
    device = DeviceRecord(DEV, b"k" * 32, False, "menteng", LOC.lat_e6, LOC.lon_e6, LOC.address, LOC.area)
    row = {"device_id": DEV, "seq": 4711, "kind": "medical", "test": 0, "lat_e6": LOC.lat_e6, "lon_e6": LOC.lon_e6,
           "address": LOC.address, "area": LOC.area, "received_ms": T0_MS, "group_id": 118}
    offline = FaultChange(DEV, Fault.OFFLINE, True, T0_MS + 600_000,
                          {"last_seen_ms": T0_MS + 420_000, "battery_mv": 3650, "reason": "3 heartbeats missed"})
    back = FaultChange(DEV, Fault.OFFLINE, False, T0_MS + 700_000, {"reason": "message received"})
    undelivered = FaultChange(DEV, Fault.UNDELIVERED, True, T0_MS + 1000, {
        "reason": "destination city refused an alarm", "destination": "city", "event_id": f"{GW}:{DEV}:4711",
        "seq": 4711, "kind": "medical", "error": "HTTP 400: no"})
    return [
        outbound("alarm", alarm_event(GW, alarm, T0_MS, 118, 3, [DEV, "jkt-menteng-0043"], 3710), 1),
        outbound("alarm", alarm_event(GW, test_press, T0_MS + 5, 119, 1, ["jkt-menteng-0043"], None), 2),
        outbound("state", state_event(GW, row, "acknowledged", "INC-2291", "operator 7", T0_MS + 20_000, 9), 3),
        outbound("state", state_event(GW, row, "undelivered", None, None, T0_MS + 30_000, 10), 4),
        outbound("fault", fault_event(GW, offline, 17, device), 5),
        outbound("fault", fault_event(GW, back, 18, None), 6),
        outbound("fault", fault_event(GW, undelivered, 19, device), 7),
    ]


def headers_for(secrets: list[bytes], msg_id: str, stamp: int, body: bytes) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(stamp),
            "webhook-signature": wh.sign(secrets, msg_id, stamp, body)}


def reference_headers(secret: str, msg_id: str, stamp: int, body: bytes) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(stamp, UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(stamp), "webhook-signature": signature}


def check_payload(body: bytes) -> str:
    """The payload's type, after checking it against that type's schema; every field of `data` is
    documented there."""
    payload = json.loads(body)
    schema = json.loads((SCHEMAS / f"webhook-{payload['type']}.json").read_text())
    VALIDATORS[payload["type"]].validate(payload)
    undocumented = set(payload["data"]) - set(schema["properties"]["data"]["properties"])
    assert not undocumented, f"{payload['type']}: data fields missing from the schema: {undocumented}"
    return str(payload["type"])


# ---- secrets and settings --------------------------------------------------------------------------

def test_secrets_are_read_as_the_specification_writes_them() -> None:
    assert wh.parse_secret(OLD) == OLD_KEY
    assert wh.parse_secret(OLD.rstrip("=") + "\n") == OLD_KEY  # padding left out, a file's newline
    # The reference package reads our way of writing a secret to the same key.
    stamp = datetime.fromtimestamp(1_700_000_000, UTC)
    assert Webhook(OLD).sign("msg_1", stamp, "{}") == wh.sign([OLD_KEY], "msg_1", 1_700_000_000, b"{}")
    for text, why in [(base64.b64encode(OLD_KEY).decode(), "whsec_"), ("whsec_not*base64", "not base64"),
                      (wh.format_secret(b"k" * 24)[:-8], "bytes"), ("whsec_" + base64.b64encode(b"k" * 65).decode(),
                                                                     "24 to 64")]:
        with pytest.raises(ValueError, match=why):
            wh.parse_secret(text)


@pytest.mark.parametrize(("change", "key"), [
    ({"url": "ftp://city.example/hook"}, "url"),
    ({"url": "city.example/hook"}, "url"),
    ({"secrets": ()}, "secrets"),
    ({"secrets": (b"short",)}, "secrets"),
    ({"inbound_secrets": (b"short",)}, "inbound_secrets"),
    ({"inbound_secrets": (OLD_KEY,)}, "inbound_secrets"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"tolerance_s": 0}, "tolerance_s"),
])
def test_settings_name_the_key_that_is_wrong(change: dict[str, Any], key: str) -> None:
    args: dict[str, Any] = {"url": "https://city.example/hook", "secrets": (OLD_KEY,), **change}
    with pytest.raises(ValueError, match=f"^{key}:"):
        wh.WebhookSettings(**args)


def test_settings_keep_secrets_out_of_their_repr() -> None:
    settings = wh.WebhookSettings("https://city.example/hook", [OLD_KEY], inbound_secrets=[CITY_KEY])
    assert settings.secrets == (OLD_KEY,) and settings.inbound_secrets == (CITY_KEY,)
    assert "secrets" not in repr(settings)


# ---- signing and verifying, against the reference package --------------------------------------------

IDS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=80)
BODIES = st.text(max_size=400).map(str.encode)


@given(IDS, BODIES, st.integers(-250, 250))
def test_our_signatures_pass_the_reference_verifier(msg_id: str, body: bytes, skew: int) -> None:
    now = int(time.time())
    headers = headers_for([OLD_KEY, NEW_KEY], msg_id, now + skew, body)
    # A receiver holding either secret (before, during and after a rotation) accepts it.
    Webhook(OLD).verify(body, headers, json_parse=False)
    Webhook(NEW).verify(body, headers, json_parse=False)
    wh.verify([NEW_KEY], headers, body, now)


@given(IDS, BODIES, st.integers(-250, 250))
def test_reference_signatures_pass_our_verifier(msg_id: str, body: bytes, skew: int) -> None:
    now = int(time.time())
    wh.verify([CITY_KEY], reference_headers(CITY, msg_id, now + skew, body), body, now)
    wh.verify([OLD_KEY, CITY_KEY], reference_headers(CITY, msg_id, now + skew, body), body, now)


@given(IDS, BODIES.filter(bool), st.data())
def test_any_flipped_byte_is_refused(msg_id: str, body: bytes, data: st.DataObject) -> None:
    now = int(time.time())
    headers = headers_for([OLD_KEY], msg_id, now, body)
    i = data.draw(st.integers(0, len(body) - 1))
    tampered = body[:i] + bytes([body[i] ^ data.draw(st.integers(1, 255))]) + body[i + 1:]
    with pytest.raises(wh.WebhookRefused, match="no signature matches"):
        wh.verify([OLD_KEY], headers, tampered, now)
    with pytest.raises((WebhookVerificationError, UnicodeDecodeError)):  # not even UTF-8 any more
        Webhook(OLD).verify(tampered, headers, json_parse=False)


def test_a_tampered_body_or_a_replayed_timestamp_is_refused_by_both() -> None:
    now = int(time.time())
    body = b'{"type":"alarm.raised"}'
    headers = headers_for([OLD_KEY], "gw-1:dev-1:1", now, body)
    for verifier in (lambda b, h: Webhook(OLD).verify(b, h), lambda b, h: wh.verify([OLD_KEY], h, b, now)):
        verifier(body, headers)
        with pytest.raises((WebhookVerificationError, wh.WebhookRefused)):
            verifier(body.replace(b"raised", b"raisex"), headers)
        for stamp in (now - 301, now + 301):  # beyond 5 minutes either way
            with pytest.raises((WebhookVerificationError, wh.WebhookRefused), match=r"(?i)too (old|new)"):
                verifier(body, headers_for([OLD_KEY], "gw-1:dev-1:1", stamp, body))
        # The timestamp is signed: moving it forward breaks the signature.
        with pytest.raises((WebhookVerificationError, wh.WebhookRefused)):
            verifier(body, {**headers_for([OLD_KEY], "gw-1:dev-1:1", now - 400, body), "webhook-timestamp": str(now)})


def test_our_verifier_says_why() -> None:
    now, body = 1_800_000_000, b"{}"
    good = headers_for([OLD_KEY], "msg_1", now, body)
    cases: list[tuple[dict[str, str], str]] = [
        ({k: v for k, v in good.items() if k != "webhook-signature"}, "missing header webhook-signature"),
        ({**good, "webhook-id": ""}, "missing header webhook-id"),
        ({**good, "webhook-id": "with space"}, "bad webhook-id"),
        ({**good, "webhook-timestamp": "1800000000.5"}, "bad webhook-timestamp"),
        ({**good, "webhook-timestamp": "-5"}, "bad webhook-timestamp"),
        ({**good, "webhook-signature": "v1a,AAAA v1,%%% garbage"}, "no signature matches"),
        ({**good, "webhook-signature": " ".join(["v1,AAAA"] * 17)}, "more than 16"),
    ]
    for headers, why in cases:
        with pytest.raises(wh.WebhookRefused, match=why) as refused:
            wh.verify([OLD_KEY], headers, body, now)
        assert not refused.value.stale
    with pytest.raises(wh.WebhookRefused, match="too old") as refused:
        wh.verify([OLD_KEY], good, body, now + 301)
    assert refused.value.stale
    # Header names in any case; unknown schemes and broken entries are passed over, not fatal.
    wh.verify([NEW_KEY, OLD_KEY], {"Webhook-Id": "msg_1", "WEBHOOK-TIMESTAMP": str(now),
                                   "webhook-signature": "v1a,xyz nonsense v1,@@ " + good["webhook-signature"]},
              body, now + 300)


def test_signing_refuses_what_a_header_cannot_carry() -> None:
    for msg_id in ("", "a b", "ü", "x" * 256):
        with pytest.raises(ValueError, match="webhook id"):
            wh.sign([OLD_KEY], msg_id, 0, b"")
    with pytest.raises(ValueError, match="no secret"):
        wh.sign([], "id", 0, b"")


# ---- payloads and their schemas -----------------------------------------------------------------------

def test_every_schema_is_valid_draft_2020_12() -> None:
    files = sorted(SCHEMAS.glob("webhook-*.json"))
    assert {f.name for f in files} == {f"webhook-{t}.json" for t in wh.EVENT_TYPES} | {
        "webhook-state-report.json", "webhook-gateway.silent.json", "webhook-gateway.back.json",
        "webhook-dispatch.unanswered.json"}
    for f in files:
        schema = json.loads(f.read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema_rs.meta.validate(schema)


def test_every_payload_validates_against_its_schema_and_carries_the_body_unchanged() -> None:
    seen = set()
    for event in sample_events():
        event_type, body = wh.payload_of(event.kind, event.body)
        assert check_payload(body) == event_type
        seen.add(event_type)
        payload = json.loads(body)
        assert event.body.encode() in body  # spliced in byte for byte
        assert payload["data"] == json.loads(event.body)
        when = {"alarm": "received_at"}.get(event.kind, "at")
        assert payload["timestamp"] == payload["data"][when]
    assert seen == set(wh.EVENT_TYPES) - {wh.ALARM_ESCALATED}


def test_the_command_centers_escalation_fits_the_escalated_schema() -> None:
    """The command center's escalation body, signed as a webhook ([escalation] webhook_secret_file),
    is the data of an `alarm.escalated` message without the `event` name (the payload's `type`)."""
    t = datetime(2026, 11, 24, 3, 12, 9, 412000, tzinfo=UTC)
    incident = Incident(17, IncidentState.NEW, DEV, "medical", False, -6.195733, 106.832085, "Jl. Menteng Raya 12",
                        "31.71.06.1001", t, t, None, None, None, None, None, None, None, 2, f"{GW}:g:118",
                        (DEV, "jkt-menteng-0043"), escalated_at=t, battery_mv=3710)
    body = json.loads(webhook_body(incident, t, 60.0))
    data = {k: v for k, v in body.items() if k != "event"}
    assert check_payload(wh.payload(wh.ALARM_ESCALATED, body["at"], json.dumps(data))) == wh.ALARM_ESCALATED
    assert set(data["incident"]) == set(json.loads((SCHEMAS / "webhook-alarm.escalated.json").read_text())
                                        ["$defs"]["incident"]["properties"])
    # The second level (to the supervisors on duty) is the same type with its level and who was on duty.
    second = json.loads(second_webhook_body(incident, t, 60.0, 300.0, ["sup-1"]))
    data = {k: v for k, v in second.items() if k != "event"}
    assert check_payload(wh.payload(wh.ALARM_ESCALATED, second["at"], json.dumps(data))) == wh.ALARM_ESCALATED
    del data["supervisors_on_duty"]  # a level without who was on duty is refused
    with pytest.raises(jsonschema_rs.ValidationError):
        check_payload(wh.payload(wh.ALARM_ESCALATED, second["at"], json.dumps(data)))


def test_a_gateways_silence_and_return_fit_their_schemas() -> None:
    """The command center's plumbing events (commandcenter/plumbing.py), signed as webhooks, are
    messages of their own types, each with a schema in docs/schemas."""
    t = datetime(2026, 11, 24, 3, 12, 9, 412000, tzinfo=UTC)
    state = GatewayState("gw-1", "a", t, None, t, t, {"gateway_id": "gw-1", "outbox": {"total": 0}})
    silent = webhook_body_of_plumbing(state, "silent", now=t, silence_s=75.0)
    back = webhook_body_of_plumbing(dataclasses.replace(state, silent_at=t), "back", now=t, silence_s=75.0)
    for stored, kind in ((silent, "gateway.silent"), (back, "gateway.back")):
        msg_id, body = signed_body(stored)
        assert msg_id == json.loads(stored)["event_id"]
        schema_validator(kind).validate(json.loads(body))
        assert json.loads(body)["type"] == kind


def test_events_without_a_webhook_type_are_refused() -> None:
    for kind, body in [("heartbeat", "{}"), ("alarm", "not json"), ("fault", '{"at": "x"}'), ("alarm", "[]")]:
        with pytest.raises(ValueError):  # noqa: PT011 (each says its own reason)
            wh.payload_of(kind, body)


# ---- the adapter, against a real HTTP receiver ------------------------------------------------------------

@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified_by: list[str]  # the secrets (of those the receiver holds) that verified it
    problem: str | None


class Receiver(HttpReceiver):
    """An HTTP server on a free loopback port standing in for a city's system: it verifies every
    request with the reference package and each secret it holds, checks the payload against its
    schema, and answers `status` (401 when nothing verified)."""

    def __init__(self, secrets: list[str], status: int = 204) -> None:
        self.secrets = secrets
        self.status = status
        self.received: list[Received] = []
        super().__init__(self._verify, path="/hooks/siaga")

    def _verify(self, request: HttpRequest) -> Answer:
        body, headers = request.body, request.headers
        verified, problem = [], None
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
                verified.append(secret)
            except WebhookVerificationError as exc:
                problem = str(exc)
        if verified:
            try:
                check_payload(body)
            except (AssertionError, jsonschema_rs.ValidationError) as exc:
                problem = str(exc)
        self.received.append(Received(headers, body, verified, problem))
        status = self.status if verified or not self.secrets else 401
        return Answer(status, b"" if status == 204 else b'{"error": "as configured"}')


async def deliver(url: str, events: list[OutboundEvent], *, secrets: tuple[bytes, ...] = (OLD_KEY, NEW_KEY),
                  timeout_s: float = 5.0, clock: Any = time.time) -> list[Accepted | Failed]:
    adapter = wh.WebhookAdapter(wh.WebhookSettings(url, secrets, timeout_s=timeout_s), GW, clock=clock)
    try:
        await adapter.start()
        return await adapter.deliver(events)
    finally:
        await adapter.aclose()


async def test_every_event_type_is_verified_by_a_reference_receiver_holding_either_secret() -> None:
    events = sample_events()
    with Receiver([OLD, NEW]) as rx:
        outcomes = await deliver(rx.url, events)
    assert outcomes == [Accepted(None)] * len(events)
    assert [r.headers["webhook-id"] for r in rx.received] == [e.event_id for e in events]
    for event, got in zip(events, rx.received, strict=True):
        assert got.problem is None, got.problem
        assert got.verified_by == [OLD, NEW]  # two signatures: the receiver may hold either during a rotation
        assert len(got.headers["webhook-signature"].split()) == 2
        assert got.headers["content-type"] == "application/json"
        assert got.headers["user-agent"] == "siaga-gateway"
        assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
        assert got.body == wh.payload_of(event.kind, event.body)[1]


async def test_a_retry_has_the_same_id_and_body_and_a_new_timestamp() -> None:
    [event] = sample_events()[:1]
    now = time.time()
    with Receiver([NEW]) as rx:
        assert await deliver(rx.url, [event], clock=lambda: now - 120) == [Accepted(None)]
        assert await deliver(rx.url, [event], clock=lambda: now) == [Accepted(None)]
    first, retry = rx.received
    assert first.headers["webhook-id"] == retry.headers["webhook-id"] == event.event_id
    assert first.body == retry.body
    assert int(retry.headers["webhook-timestamp"]) - int(first.headers["webhook-timestamp"]) == 120


async def test_a_receiver_with_a_secret_the_gateway_does_not_sign_with_refuses_for_good() -> None:
    with Receiver([CITY]) as rx:
        outcomes = await deliver(rx.url, sample_events()[:2])
    assert [type(o) for o in outcomes] == [Failed, Failed]
    assert all(isinstance(o, Failed) and not o.retry and o.error.startswith("HTTP 401") for o in outcomes)
    assert len(rx.received) == 2  # a refusal for good does not hold the events after it


@pytest.mark.parametrize(("status", "retry"), [(500, True), (503, True), (408, True), (429, True), (302, True),
                                               (400, False), (410, False)])
async def test_answers_decide_between_retry_and_refusal(status: int, retry: bool) -> None:
    events = sample_events()[:3]
    with Receiver([], status=status) as rx:
        outcomes = await deliver(rx.url, events)
    assert all(isinstance(o, Failed) for o in outcomes)
    first = outcomes[0]
    assert isinstance(first, Failed) and first.retry is retry and first.error.startswith(f"HTTP {status}")
    if retry:
        # The round stops at the first retryable failure: later events wait, their order kept.
        assert len(rx.received) == 1
        assert all(isinstance(o, Failed) and o.retry and o.error.startswith("not sent") for o in outcomes[1:])
    else:
        assert len(rx.received) == 3
        assert all(isinstance(o, Failed) and not o.retry for o in outcomes)


async def test_a_refused_connection_is_retried() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
        outcomes = await deliver(url, sample_events()[:2])
    assert [type(o) for o in outcomes] == [Failed, Failed]
    assert all(isinstance(o, Failed) and o.retry for o in outcomes)
    assert isinstance(outcomes[0], Failed) and "Connect" in outcomes[0].error


async def test_a_receiver_that_never_answers_fails_within_the_timeout() -> None:
    with StalledServer() as stalled:
        started = time.monotonic()
        outcomes = await deliver(f"http://127.0.0.1:{stalled.port}/hook", sample_events()[:2], timeout_s=0.3)
        elapsed = time.monotonic() - started
    assert all(isinstance(o, Failed) and o.retry for o in outcomes)
    assert isinstance(outcomes[0], Failed) and "Connect" not in outcomes[0].error  # connected, then silence
    assert elapsed < 1.5
    assert len(stalled.accepted) <= 1  # the second event was not tried


async def test_an_event_that_cannot_be_a_webhook_is_refused_and_the_round_goes_on() -> None:
    odd = OutboundEvent(id=9, kind="heartbeat", event_id="gw-1:x:1", device_id="x", body="{}", attempts=0,
                        alarm_id=None, created_ms=0)
    with Receiver([NEW]) as rx:
        outcomes = await deliver(rx.url, [odd, *sample_events()[:1]])
    assert isinstance(outcomes[0], Failed) and not outcomes[0].retry
    assert outcomes[1] == Accepted(None)


# ---- state reports from the city's system ---------------------------------------------------------------

STATES = ["received", "acknowledged", "dispatched", "resolved", "false_alarm"]


@dataclass
class Destination:
    name: str
    type: str
    settings: object


class FakeGateway:
    """What the route needs of the gateway: its destinations, its clock, the audit log, and the
    alarms' states (which only move forward, as the store keeps them)."""

    def __init__(self, now_s: float) -> None:
        self.cfg = SimpleNamespace(destinations=[
            Destination("city", "webhook", wh.WebhookSettings("https://city.example/hook", (OLD_KEY,),
                                                              inbound_secrets=(CITY_KEY, NEW_KEY))),
            Destination("quiet", "webhook", wh.WebhookSettings("https://quiet.example/hook", (OLD_KEY,))),
            Destination("cap", "cap", SimpleNamespace(inbound_secrets=(CITY_KEY,))),
        ])
        self.now_ms = int(now_s * 1000)
        self.audits: list[tuple[RejectReason, str | None, str, str]] = []
        self.calls: list[tuple[Any, ...]] = []
        self.alarms = {(DEV, 4711): "received"}

    def clock(self) -> int:
        return self.now_ms

    async def audit(self, reason: RejectReason, device_id: str | None, topic: str, detail: str) -> None:
        self.audits.append((reason, device_id, topic, detail))

    async def command_center_state(self, device_id: str, seq: int, state: str, incident_id: str | None,
                                   by: str | None, at_ms: int, *, source: str) -> Any:
        self.calls.append((device_id, seq, state, incident_id, by, at_ms, source))
        current = self.alarms.get((device_id, seq))
        if current is None:
            return None
        changed = STATES.index(state) > STATES.index(current)
        if changed:
            self.alarms[device_id, seq] = state
        return SimpleNamespace(state=self.alarms[device_id, seq], changed=changed)


async def _anyone(request: Request, schemes: frozenset[str]) -> None:
    return None


def inbound_app(gw: FakeGateway, throttle: str = "20/minute") -> FastAPI:
    """The route in an app with the gateway's entrance (strict JSON, one refusal shape, throttle)."""
    app = FastAPI()
    guard_entrance(app, _anyone, ThrottleRules(per_address=throttle), 64 * 1024)
    app.include_router(inbound_router(gw))
    return app


def report(state: str = "acknowledged", **data: Any) -> bytes:
    fields = {"device_id": DEV, "seq": 4711, "state": state, "incident_id": "CITY-2291", "by": "operator 7",
              "at": "2026-11-24T10:13:00.250+07:00", **data}
    return json.dumps({"type": "alarm.state_changed", "timestamp": "2026-11-24T03:13:00Z", "data": fields}).encode()


@pytest.fixture
def now() -> float:
    return time.time()


@pytest.fixture
async def city(now: float) -> AsyncIterator[tuple[FakeGateway, httpx.AsyncClient]]:
    gw = FakeGateway(now)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=inbound_app(gw)), base_url="http://gw") as client:
        yield gw, client


def signed(body: bytes, now: float, msg_id: str = "msg_city_1", secret: str = CITY) -> dict[str, str]:
    """Headers as the city's system makes them with the reference package."""
    return {**reference_headers(secret, msg_id, int(now), body), "Content-Type": "application/json"}


URL = "/api/v1/destinations/city/state"


async def test_a_signed_report_moves_the_alarm_forward_once(city: tuple[FakeGateway, httpx.AsyncClient],
                                                            now: float) -> None:
    gw, client = city
    body = report()
    resp = await client.post(URL, content=body, headers=signed(body, now))
    assert (resp.status_code, resp.json()) == (200, {"state": "acknowledged", "changed": True})
    at_ms = int(datetime(2026, 11, 24, 3, 13, 0, 250000, tzinfo=UTC).timestamp() * 1000)
    assert gw.calls == [(DEV, 4711, "acknowledged", "CITY-2291", "operator 7", at_ms, "city")]
    # The sender's retry, or a replay within the tolerance: answered, changes nothing.
    resp = await client.post(URL, content=body, headers=signed(body, now))
    assert (resp.status_code, resp.json()) == (200, {"state": "acknowledged", "changed": False})
    # Signed with the second inbound secret (a rotation on the city's side), a later state.
    later = report("resolved", incident_id=None, by=None)
    resp = await client.post(URL, content=later, headers=signed(later, now, "msg_city_2", NEW))
    assert (resp.status_code, resp.json()) == (200, {"state": "resolved", "changed": True})
    older = report("dispatched")
    resp = await client.post(URL, content=older, headers=signed(older, now, "msg_city_3"))
    assert (resp.status_code, resp.json()) == (200, {"state": "resolved", "changed": False})
    assert gw.audits == []


async def test_reports_for_unknown_places_are_404(city: tuple[FakeGateway, httpx.AsyncClient], now: float) -> None:
    gw, client = city
    body = report()
    for name in ("nowhere", "quiet", "cap"):  # unknown, no inbound secrets, not a webhook destination
        resp = await client.post(f"/api/v1/destinations/{name}/state", content=body, headers=signed(body, now))
        assert resp.status_code == 404, name
        assert "takes state reports" in resp.json()["detail"]
    unknown = report(seq=4712)
    resp = await client.post(URL, content=unknown, headers=signed(unknown, now))
    assert (resp.status_code, resp.json()) == (404, {"detail": f"no alarm {DEV}:4712",
                                                     "message": f"tidak ada alarm {DEV}:4712"})
    assert gw.audits == []


async def test_unsigned_wrongly_signed_and_stale_reports_are_401_and_audited(
        city: tuple[FakeGateway, httpx.AsyncClient], now: float) -> None:
    gw, client = city
    body = report()
    cases = [
        ({"Content-Type": "application/json"}, "missing header webhook-id", RejectReason.BAD_SIGNATURE),
        (signed(body, now, secret=OLD), "no signature matches", RejectReason.BAD_SIGNATURE),  # the gateway's own key
        (signed(body.replace(b"4711", b"4712"), now), "no signature matches", RejectReason.BAD_SIGNATURE),
        (signed(body, now - 301), "too old", RejectReason.REPLAY),
        (signed(body, now + 400), "too new", RejectReason.REPLAY),
    ]
    for headers, why, reason in cases:
        resp = await client.post(URL, content=body, headers=headers)
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"] == "Webhook-Signature"
        assert why in resp.json()["detail"]
        assert gw.audits[-1] == (reason, None, "webhook:city", gw.audits[-1][3])
        assert why in gw.audits[-1][3]
    assert len(gw.audits) == len(cases)
    assert gw.calls == []


async def test_signed_bodies_that_are_not_reports_are_422_and_audited(
        city: tuple[FakeGateway, httpx.AsyncClient], now: float) -> None:
    gw, client = city
    bodies = [b"{not json", b'{"n": NaN}', report("received"), report(seq="4711"), report(at=1795000000),
              report(at="2026-11-24T03:13:00"),  # no time zone
              json.dumps({"type": "alarm.raised", "timestamp": "2026-11-24T03:13:00Z", "data": {}}).encode()]
    for i, body in enumerate(bodies):
        resp = await client.post(URL, content=body, headers=signed(body, now, f"msg_{i}"))
        assert resp.status_code == 422, body
        assert isinstance(resp.json()["detail"], list)
        assert gw.audits[-1][0] is RejectReason.MALFORMED
    assert [a[1] for a in gw.audits] == [None, None, DEV, DEV, DEV, DEV, None]
    assert gw.calls == []


async def test_a_body_over_the_limit_is_413(city: tuple[FakeGateway, httpx.AsyncClient], now: float) -> None:
    _, client = city
    body = report(by="x" * INBOUND_BODY_MAX)
    resp = await client.post(URL, content=body, headers=signed(body, now))
    assert resp.status_code == 413
    assert "at most 65536 bytes" in resp.json()["detail"]


async def test_wrong_signatures_from_one_address_are_throttled(now: float) -> None:
    gw = FakeGateway(now)
    body = report()
    transport = httpx.ASGITransport(app=inbound_app(gw, throttle="3/minute"))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        for _ in range(3):
            resp = await client.post(URL, content=body, headers=signed(body, now, secret=OLD))
            assert resp.status_code == 401
        for headers in (signed(body, now, secret=OLD), signed(body, now)):
            resp = await client.post(URL, content=body, headers=headers)
            assert resp.status_code == 429
            assert int(resp.headers["retry-after"]) >= 1
    assert len(gw.audits) == 3


async def test_the_openapi_document_describes_the_route(now: float) -> None:
    doc = inbound_app(FakeGateway(now)).openapi()
    op = doc["paths"]["/api/v1/destinations/{name}/state"]["post"]
    assert set(op["responses"]) == {"200", "401", "404", "413", "422", "429"}
    assert "security" not in op
    assert {p["name"] for p in op["parameters"]} == {"name", "webhook-id", "webhook-timestamp", "webhook-signature"}
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {k: v for k, v in state_report_schema().items() if k != "$schema"}
    assert "$ref" not in json.dumps(schema)


def test_the_state_report_schema_file_is_the_routes_schema() -> None:
    on_file = json.loads((SCHEMAS / "webhook-state-report.json").read_text())
    assert on_file == state_report_schema(), "write state_report_schema() to docs/schemas/webhook-state-report.json"
    validator = jsonschema_rs.Draft202012Validator(on_file, validate_formats=True)
    assert validator.is_valid(json.loads(report()))
    assert not validator.is_valid(json.loads(report("received")))


def test_the_signed_example_in_the_guide_verifies() -> None:
    """docs/integration-webhooks.md shows a whole request for a city's team to test a verifier on."""
    guide = (SCHEMAS.parent / "integration-webhooks.md").read_text()
    block = guide.split("```http\nPOST /hooks/siaga", 1)[1].split("```", 1)[0]
    head, body = block.strip().split("\n\n", 1)
    headers = dict(line.split(": ", 1) for line in head.splitlines()[1:])
    secret = guide.split("signed with the example secret `", 1)[1].split("`", 1)[0]
    stamp = int(headers["webhook-timestamp"])
    wh.verify([wh.parse_secret(secret)], headers, body.encode(), stamp)
    assert check_payload(body.encode()) == wh.ALARM_RAISED

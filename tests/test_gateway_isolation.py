"""No device, no message can stop the city's alarms (issue 12), against the real gateway process,
Mosquitto and the command center:

- correctly signed frames whose every field takes arbitrary JSON values, mixed with valid alarms of
  other buttons: every valid alarm arrives exactly once and the gateway never exits;
- one frame of each class that used to crash the gateway (a huge integer, a clock thousands of
  years off, a lone surrogate, an over-long address) between valid alarms; a restart afterwards;
- an alarm the command center refuses for good: on the fault list within seconds, the button told,
  and the same button's next alarm delivered without waiting behind it.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from siaga.broker.process import MosquittoProcess
from siagafw import proto
from tests.support.devices import LOC, SimButton
from tests.support.system import System, start_system
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

FIELDS = ("v", "type", "dev", "seq", "kind", "test", "loc", "up", "ts", "bat", "rssi", "fw", "tamper", "outbox",
          "every")
_numbers = itertools.count(10_000)


@pytest.fixture
def system(tmp_path: Path, mosquitto: MosquittoProcess) -> Iterator[System]:
    # The flood limiter would drop the test's own bursts before they reach the decoder.
    yield from start_system(tmp_path, mosquitto, gateway_settings="flood_rate_per_s = 1000.0\nflood_burst = 1000")


def cc_events(system: System) -> list[tuple[str, int]]:
    """(device, seq) of every alarm event at the command center, repeats included."""
    out = []
    incidents = httpx.get(f"{system.cc.url}/api/v1/incidents?limit=1000", headers=system.cc.operator_headers(),
                          timeout=10).json()
    for incident in incidents:
        detail = httpx.get(f"{system.cc.url}/api/v1/incidents/{incident['id']}",
                           headers=system.cc.operator_headers(), timeout=10).json()
        out += [(e["device_id"], e["seq"]) for e in detail["events"]]
    return out


def cc_faults(system: System) -> list[dict[str, Any]]:
    return httpx.get(f"{system.cc.url}/api/v1/devices/faults", headers=system.cc.operator_headers(),
                     timeout=10).json()


def gateway_get(system: System, path: str) -> Any:
    resp = httpx.get(f"{system.gateway.url}{path}", headers=system.gateway.admin_headers, timeout=10)
    resp.raise_for_status()
    return resp.json()


def raw_frame(button: SimButton, body: Any) -> bytes:
    """Signed with the button's key around JSON as given: NaN, surrogates, anything json can write."""
    return button.signer.seal(json.dumps(body, separators=(",", ":")).encode())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats()
    | st.text(st.characters(exclude_categories=[]), max_size=60),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


@st.composite
def hostile_frames(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """(topic suffix, body): the header mostly right, so that the frame reaches the parsing of its
    fields, and every field possibly anything."""
    suffix = draw(st.sampled_from(["alarm", "status", "will"]))
    body: dict[str, Any] = {"v": 1, "type": suffix, "seq": next(_numbers), "kind": "general", "test": False,
                            "loc": dict(LOC), "up": 5, "ts": None, "bat": 4000, "rssi": -60, "fw": "0.2.0",
                            "tamper": False, "outbox": 0, "every": 60}
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4, unique=True)):
        body[name] = draw(json_values)
    if draw(st.booleans()):
        body["loc"] = {**LOC, draw(st.sampled_from(["lat_e6", "lon_e6", "addr", "area"])): draw(json_values)}
    return suffix, body


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(frames=st.lists(hostile_frames(), min_size=3, max_size=8))
def test_signed_frames_with_any_content_never_stop_the_valid_alarms(system: System, frames: list[Any]) -> None:
    buttons = getattr(system, "_isolation_buttons", None)
    if buttons is None:  # made once per test, kept over the examples (hypothesis runs the body many times)
        buttons = ([SimButton(system.new_device(f"bad-{i:03d}"), system.broker.port).connect() for i in range(3)],
                   [SimButton(system.new_device(f"good-{i:03d}"), system.broker.port).connect() for i in range(3)])
        system._isolation_buttons = buttons  # type: ignore[attr-defined]
        system._isolation_sent = []  # type: ignore[attr-defined]
    bad, good = buttons
    sent: list[tuple[str, int]] = system._isolation_sent  # type: ignore[attr-defined]
    for i, (suffix, body) in enumerate(frames):
        hostile = bad[i % len(bad)]
        hostile.publish(suffix, raw_frame(hostile, {**body, "dev": hostile.device_id}
                                          if body.get("dev") is None else body))
        button = good[i % len(good)]
        seq, frame = button.alarm_frame("medical")
        button.publish("alarm", frame)
        sent.append((button.device_id, seq))
    for button in good:
        for device_id, seq in sent:
            if device_id == button.device_id:
                button.wait_ack(seq, timeout_s=20)
    assert system.gateway.running(), system.gateway.log()[-3000:]
    wanted = set(sent)
    got = wait_for(lambda: [e for e in cc_events(system) if e in wanted] if
                   wanted <= set(cc_events(system)) else None, timeout_s=30, what="every valid alarm at the center")
    assert sorted(got) == sorted(wanted)        # each exactly once


def test_frames_that_used_to_crash_the_gateway_are_refused_or_kept_and_a_restart_is_clean(system: System) -> None:
    bad = SimButton(system.new_device("crash-001"), system.broker.port).connect()
    good = [SimButton(system.new_device(f"calm-{i:03d}"), system.broker.port).connect() for i in range(2)]
    sent: list[tuple[str, int]] = []

    def valid() -> None:
        button = good[len(sent) % 2]
        seq, frame = button.alarm_frame()
        button.publish("alarm", frame)
        sent.append((button.device_id, seq))

    loc = dict(LOC)
    classes = {
        "huge integer": {"up": 2**64},
        "lone surrogate": {"loc": {**loc, "addr": "Jl. Merdeka \ud800"}},
        "over-long address": {"loc": {**loc, "addr": "Jl. " + "x" * 300}},
    }
    valid()
    for change in classes.values():
        bad.publish("alarm", raw_frame(bad, {**proto.alarm_body(bad.device_id, bad.next_seq(), "fire", LOC), **change}))
        valid()
    # A clock thousands of years off costs the time, not the alarm: it arrives with raised_at null.
    far_seq = bad.next_seq()
    bad.publish("alarm", raw_frame(bad, {**proto.alarm_body(bad.device_id, far_seq, "fire", LOC), "ts": 10**12}))
    bad.wait_ack(far_seq)
    valid()
    for device_id, seq in sent:
        next(b for b in good if b.device_id == device_id).wait_ack(seq)

    audit = gateway_get(system, "/api/v1/audit?reason=malformed")
    assert len([a for a in audit if a["device_id"] == bad.device_id]) == len(classes), audit
    details = " | ".join(a["detail"] for a in audit)
    assert "'up' outside" in details and "surrogate" in details and "more than 200" in details, details
    # The room is told: a device fault, with the device's registered place.
    fault = wait_for(lambda: [f for f in cc_faults(system) if f["device_id"] == bad.device_id
                              and f["fault"] == "bad_message"], timeout_s=10, what="bad_message fault")[0]
    assert fault["location"] is not None
    assert system.gateway.running()

    system.gateway.stop()
    system.gateway.start()                      # nothing left to redeliver that could crash it
    valid()
    good[(len(sent) - 1) % 2].wait_ack(sent[-1][1])
    assert system.gateway.running()
    events = wait_for(lambda: cc_events(system) if set(sent) | {(bad.device_id, far_seq)} <= set(cc_events(system))
                      else None, timeout_s=20, what="all valid alarms")
    mine = [e for e in events if e in set(sent) | {(bad.device_id, far_seq)}]
    assert sorted(mine) == sorted([*sent, (bad.device_id, far_seq)])
    far = [e for i in httpx.get(f"{system.cc.url}/api/v1/incidents?limit=100",
                                headers=system.cc.operator_headers(), timeout=10).json()
           if i["device_id"] == bad.device_id
           for e in httpx.get(f"{system.cc.url}/api/v1/incidents/{i['id']}", headers=system.cc.operator_headers(),
                              timeout=10).json()["events"] if e["seq"] == far_seq]
    assert far and far[0]["raised_at"] is None


def test_an_alarm_the_center_refuses_is_shown_and_does_not_hold_up_the_next(system: System) -> None:
    button = SimButton(system.new_device("refused-001"), system.broker.port).connect()
    # The command center already holds this event id with another body (a gateway database restored
    # from an old backup would do this): it refuses the gateway's alarm for good.
    seq = button.seq + 1
    event_id = f"{system.gateway.gateway_id}:{button.device_id}:{seq}"
    other = {"event_id": event_id, "gateway_id": system.gateway.gateway_id, "device_id": button.device_id,
             "seq": seq, "kind": "crime", "test": True,
             "location": {"lat": 0.0, "lon": 0.0, "address": "elsewhere", "area": "x"},
             "raised_at": None, "received_at": "2026-01-01T00:00:00Z"}
    httpx.post(f"{system.cc.url}/api/v1/alarms", json=other, headers=system.cc.intake_headers(event_id),
               timeout=10).raise_for_status()

    seq_refused, frame = button.alarm_frame("medical")
    assert seq_refused == seq
    pressed = time.monotonic()
    button.publish("alarm", frame)
    button.wait_ack(seq)                         # the gateway holds it...
    fault = wait_for(lambda: [f for f in cc_faults(system) if f["device_id"] == button.device_id
                              and f["fault"] == "undelivered"], timeout_s=10, what="the refusal on the fault list")[0]
    assert time.monotonic() - pressed < 5, "the refusal must reach the fault list within 5 s"
    assert fault["detail"]["seq"] == seq and fault["location"] is not None
    button.wait_ack(seq, "undelivered")          # ...and the button is told it was not handed on
    refused = gateway_get(system, "/api/v1/outbox/refused")
    assert [r["event_id"] for r in refused] == [event_id]

    seq_next, frame = button.alarm_frame("medical")
    button.publish("alarm", frame)
    wait_for(lambda: (button.device_id, seq_next) in cc_events(system), timeout_s=10,
             what="the next alarm at the command center")
    assert gateway_get(system, "/health")["outbox"] == 0   # the refused one no longer counts as waiting

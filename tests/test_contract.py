"""One contract, checked at the door (siaga/contract.py, docs/protocol.md §3.1): whatever the
gateway's codec accepts becomes an event the command center's intake accepts. Hypothesis makes
signed frames with values on and beyond every bound (huge and negative integers, far clocks, long
and strange text, lone surrogates, control characters, new kinds); each frame the codec accepts is
turned into the exact body the gateway forwards (gateway/events.py) and posted to the real command
center process. Every one must be taken; a refusal fails the test with the body and the reason.
The same for fault events and the registry's location, which fault reports carry.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from siaga import contract
from siaga.gateway import codec, events
from siaga.gateway.api import DeviceIn
from siaga.gateway.codec import Alarm, DeviceKey
from siaga.gateway.store import DeviceRecord
from siaga.gateway.supervision import Fault, FaultChange
from siagafw import proto
from tests.support.ccproc import CommandCenterProcess

pytestmark = [pytest.mark.e2e]

SECRET = bytes(range(32))
DEV = "jkt-contract-01"
KEYS = {DEV: DeviceKey(SECRET)}
GATEWAY_ID = "gw-contract"
RECEIVED_MS = 1_795_000_000_000
_seqs = itertools.count(1)

# Text from every corner of Unicode, surrogates and control characters included, with lengths
# around the byte limits (an Indonesian address in multi-byte script reaches them early).
any_text = st.text(st.characters(exclude_categories=[]), max_size=80) | st.text(
    st.sampled_from("aé漢🚨 \u0000\u007f\ud800"), min_size=40, max_size=110)
edge_ints = st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 2**53 - 1, 2**53, 2**63, -(2**63), 2**64, 10**30,
                             contract.TS_MIN - 1, contract.TS_MIN, contract.TS_MAX, contract.TS_MAX + 1,
                             contract.LAT_E6_MAX, contract.LAT_E6_MAX + 1, -contract.LON_E6_MAX - 1])
ints = edge_ints | st.integers(-(2**70), 2**70)
values = st.none() | st.booleans() | ints | any_text | st.floats(allow_nan=False, allow_infinity=False)


def mostly(inside: st.SearchStrategy[Any], anything: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Values inside the contract most of the time (so that many frames get through the door and
    reach the intake), anything at all the rest."""
    return st.one_of(*[inside] * 9, anything)


valid_text = st.text(st.characters(exclude_categories=["Cc", "Cs"]), max_size=70)


def signed(body: dict[str, Any]) -> bytes:
    """A correctly signed frame around body as JSON: UTF-8 as a button writes it, or with \\u
    escapes where it holds a lone surrogate, which only an escape can carry."""
    try:
        raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raw = json.dumps(body, separators=(",", ":")).encode()
    return proto.Signer(SECRET).seal(raw)


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with CommandCenterProcess(tmp_path_factory.mktemp("cc")) as cc, httpx.Client(base_url=cc.url, timeout=10) as http:
        yield cc, http


def post(intake: Any, path: str, body: str, event_id: str) -> httpx.Response:
    cc, http = intake
    return http.post(path, content=body.encode(), headers={**cc.intake_headers(event_id),
                                                           "Content-Type": "application/json"})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
@given(kind=mostly(st.sampled_from(proto.KINDS) | st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True),
                  st.from_regex(r"[a-z][a-z0-9_]{0,40}", fullmatch=True) | any_text),
       test=mostly(st.booleans(), values),
       lat=mostly(st.integers(-contract.LAT_E6_MAX, contract.LAT_E6_MAX), ints),
       lon=mostly(st.integers(-contract.LON_E6_MAX, contract.LON_E6_MAX), ints),
       addr=mostly(valid_text, any_text), area=mostly(st.text(st.characters(exclude_categories=["Cc", "Cs"]),
                                                            max_size=20), any_text),
       up=mostly(st.integers(0, contract.UPTIME_MS_MAX), ints), ts=mostly(st.none() | ints, values),
       battery=st.none() | st.integers(0, contract.BATTERY_MV_MAX))
@example(kind="general", test=False, lat=contract.LAT_E6_MAX, lon=-contract.LON_E6_MAX, addr="é" * 100,
         area="a" * 64, up=contract.UPTIME_MS_MAX, ts=contract.TS_MAX, battery=contract.BATTERY_MV_MAX)
@example(kind="flood", test=True, lat=0, lon=0, addr="漢" * 66, area="", up=0, ts=2**80, battery=None)
def test_every_alarm_the_gateway_accepts_the_intake_accepts(intake: Any, kind: Any, test: Any, lat: Any, lon: Any,
                                                            addr: Any, area: Any, up: Any, ts: Any,
                                                            battery: int | None) -> None:
    seq = next(_seqs)
    body = {"v": 1, "type": "alarm", "dev": DEV, "seq": seq, "kind": kind, "test": test,
            "loc": {"lat_e6": lat, "lon_e6": lon, "addr": addr, "area": area}, "up": up, "ts": ts}
    frame = signed(body)
    if len(frame) > proto.MAX_FRAME:
        event("frame over 1 KiB")
        return
    msg = codec.decode(proto.topic(DEV, "alarm"), frame, KEYS.get)
    event("codec: " + ("accepted" if isinstance(msg, Alarm) else msg.reason.value))
    if not isinstance(msg, Alarm):
        return  # refused at the door: nothing goes on
    event_id, forwarded = events.alarm_event(GATEWAY_ID, msg, RECEIVED_MS, seq, 1, [DEV], battery)
    resp = post(intake, "/api/v1/alarms", forwarded, event_id)
    assert resp.status_code == 201, (forwarded, resp.text)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(address=any_text, area=any_text, lat=st.floats(-90, 90), lon=st.floats(-180, 180),
       fault=st.sampled_from(list(Fault)), active=st.booleans(),
       detail=st.dictionaries(st.sampled_from(["reason", "error", "last_ms", "battery_mv", "seq"]),
                              st.none() | st.integers(0, 2**40) | st.text(max_size=200), max_size=4))
def test_every_fault_the_gateway_makes_from_its_registry_the_intake_accepts(
        intake: Any, address: str, area: str, lat: float, lon: float, fault: Fault, active: bool,
        detail: dict[str, Any]) -> None:
    try:
        dev = DeviceIn(id=DEV, secret_hex="ab" * 32, lat=lat, lon=lon, address=address, area=area)
    except ValueError:
        return  # the gateway's admin API would have refused this registration
    record = DeviceRecord(DEV, SECRET, False, None, round(dev.lat * 1e6), round(dev.lon * 1e6), dev.address, dev.area)
    number = next(_seqs)
    event_id, body = events.fault_event(GATEWAY_ID, FaultChange(DEV, fault, active, RECEIVED_MS, detail), number,
                                        record)
    resp = post(intake, "/api/v1/faults", body, event_id)
    assert resp.status_code == 201, (body, resp.text)


def test_what_the_codec_refuses_the_intake_refuses_too(intake: Any) -> None:
    """The bounds are the same on both sides, not merely compatible: an address one byte over the
    limit is refused by both (an intake looser than the codec would hide a drifting contract)."""
    too_long = "x" * (contract.ADDRESS_MAX_BYTES + 1)
    body = proto.alarm_body(DEV, next(_seqs), "general", proto.location(0, 0, too_long, "a1"))
    assert isinstance(codec.decode(proto.topic(DEV, "alarm"), proto.Signer(SECRET).seal(proto.encode(body)),
                                   KEYS.get), codec.Reject)
    ok = codec.decode(proto.topic(DEV, "alarm"), proto.Signer(SECRET).seal(proto.encode(
        proto.alarm_body(DEV, next(_seqs), "general", proto.location(0, 0, "x", "a1")))), KEYS.get)
    assert isinstance(ok, Alarm)
    event_id, forwarded = events.alarm_event(GATEWAY_ID, ok, RECEIVED_MS, 1, 1, [DEV], None)
    tampered = forwarded.replace('"address":"x"', json.dumps({"address": too_long})[1:-1])
    resp = post(intake, "/api/v1/alarms", tampered, event_id)
    assert resp.status_code == 422, resp.text

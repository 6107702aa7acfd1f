"""The gateway's decoder against the shared protocol vectors, and every reject reason."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from siaga import contract
from siaga.gateway import codec
from siaga.gateway.codec import Alarm, DeviceKey, Reject, RejectReason, Status, Will
from siagafw import proto

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "protocol_v1.json").read_text())
SECRET = bytes.fromhex("7d1f3c2b9a8e4f60c3b5a1d2e9f0871623456789abcdef0123456789abcdef01")
DEV = "jkt-gambir-0001"
LOC = proto.location(-6175392, 106827153, "Jl. Medan Merdeka Barat 12", "31.71.01.1001")


def lookup(registry: dict[str, DeviceKey]):
    return registry.get


KEYS = {DEV: DeviceKey(SECRET), "btn-revoked": DeviceKey(SECRET, revoked=True)}


def frame(body: dict, secret: bytes = SECRET) -> bytes:
    return proto.Signer(secret).seal(proto.encode(body))


@pytest.mark.parametrize("case", VECTORS["verify"], ids=lambda c: c["name"])
def test_verify_frame_matches_vectors(case: dict) -> None:
    got = codec.verify_frame(bytes.fromhex(case["secret"]), bytes.fromhex(case["frame_hex"]))
    assert got == (None if case["body"] is None else case["body"].encode())


@pytest.mark.parametrize("case", VECTORS["frames"], ids=lambda c: c["name"])
def test_ack_encoder_and_decoder_agree_with_vectors(case: dict) -> None:
    secret = bytes.fromhex(case["secret"])
    payload = bytes.fromhex(case["frame_hex"])
    body = case["obj"]
    if body["type"] == "ack":
        assert codec.encode_ack(secret, body["dev"], body["seq"], body["state"], body["inc"], body["gts"]) == payload
        return
    msg = codec.decode(proto.topic(body["dev"], body["type"]), payload, {body["dev"]: DeviceKey(secret)}.get)
    assert not isinstance(msg, Reject), msg
    assert msg.device_id == body["dev"]
    assert msg.seq == body["seq"]


def test_decode_alarm_fields() -> None:
    body = proto.alarm_body(DEV, 7, "fire", LOC, test=True, up_ms=55, ts=1795481766)
    msg = codec.decode(proto.topic(DEV, "alarm"), frame(body), KEYS.get)
    assert isinstance(msg, Alarm)
    assert (msg.kind, msg.test, msg.raised_ts, msg.uptime_ms) == ("fire", True, 1795481766, 55)
    assert msg.location.lat == pytest.approx(-6.175392)
    assert msg.body == proto.encode(body)


def test_decode_status_and_will() -> None:
    st_msg = codec.decode(proto.topic(DEV, "status"),
                          frame(proto.status_body(DEV, 8, "0.1.0", 60, 3700, -60, True, 2, 9)), KEYS.get)
    assert isinstance(st_msg, Status)
    assert (st_msg.battery_mv, st_msg.tamper, st_msg.outbox) == (3700, True, 2)
    will = codec.decode(proto.topic(DEV, "will"), frame(proto.will_body(DEV, 9)), KEYS.get)
    assert will == Will(DEV, 9)


def _reason(topic: str, payload: bytes) -> RejectReason:
    msg = codec.decode(topic, payload, KEYS.get)
    assert isinstance(msg, Reject), msg
    return msg.reason


def test_every_reject_reason() -> None:
    good = proto.alarm_body(DEV, 1, "general", LOC)
    topic = proto.topic(DEV, "alarm")
    assert _reason(topic, frame(good, b"\x01" * 32)) is RejectReason.BAD_SIGNATURE
    assert _reason(proto.topic("btn-nobody", "alarm"), frame(good)) is RejectReason.UNKNOWN_DEVICE
    assert _reason(proto.topic("btn-revoked", "alarm"),
                   frame({**good, "dev": "btn-revoked"})) is RejectReason.REVOKED
    assert _reason(topic, b"hello") is RejectReason.MALFORMED
    assert _reason(topic, frame({**good, "kind": "Alien kind!"})) is RejectReason.MALFORMED
    assert _reason(topic, frame({**good, "v": 2})) is RejectReason.MALFORMED
    assert _reason(topic, frame({**good, "seq": -1})) is RejectReason.MALFORMED
    assert _reason(topic, frame({**good, "test": 1})) is RejectReason.MALFORMED
    assert _reason(topic, frame({**good, "v": True})) is RejectReason.MALFORMED
    assert _reason(topic, _raw_frame(json.dumps({**good, "v": 1.0}).encode())) is RejectReason.MALFORMED
    assert _reason(topic, b"SG1." + b"0" * 64 + b"." + b"x" * 2000) is RejectReason.OVERSIZE
    assert _reason(proto.topic(DEV, "status"), frame(good)) is RejectReason.WRONG_TOPIC
    assert _reason(topic, frame({**good, "dev": "btn-other"})) is RejectReason.WRONG_TOPIC
    assert _reason("siaga/v1/dev/" + DEV + "/alarm/extra", frame(good)) is RejectReason.WRONG_TOPIC


def test_unknown_device_audit_keeps_only_a_prefix() -> None:
    msg = codec.decode(proto.topic("btn-nobody", "alarm"), b"A" * 1000, KEYS.get)
    assert isinstance(msg, Reject)
    assert len(msg.detail) < 100


@given(st.binary(max_size=1200))
def test_decode_never_raises_on_arbitrary_bytes(payload: bytes) -> None:
    msg = codec.decode(proto.topic(DEV, "alarm"), payload, KEYS.get)
    assert isinstance(msg, Reject)


SCALAR = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.sampled_from(
    ["", "alarm", DEV, "general", "x" * 40]) | st.just([1]) | st.just({})
GOOD = {"v": 1, "type": "alarm", "dev": DEV, "seq": 3, "kind": "general", "test": False,
        "loc": {"lat_e6": 1, "lon_e6": 2, "addr": "", "area": ""}, "up": 0, "ts": None}
LOCS = st.fixed_dictionaries({}, optional={k: SCALAR for k in ("lat_e6", "lon_e6", "addr", "area")})


@given(st.fixed_dictionaries({}, optional={k: st.just(v) | SCALAR | LOCS for k, v in GOOD.items()}))
def test_signed_garbage_bodies_are_rejected_or_well_typed(body: dict) -> None:
    """Even correctly signed bodies with any field of any type never crash the decoder."""
    msg = codec.decode(proto.topic(DEV, "alarm"), frame(body), KEYS.get)
    if isinstance(msg, Reject):
        assert msg.reason in (RejectReason.MALFORMED, RejectReason.WRONG_TOPIC, RejectReason.OVERSIZE)
    else:
        assert isinstance(msg, Alarm)
        assert isinstance(msg.seq, int) and not isinstance(msg.seq, bool)
        assert contract.KIND_RE.fullmatch(msg.kind)


@given(st.integers(0, 2**31 - 1), st.sampled_from(proto.KINDS), st.booleans(),
       st.text(st.characters(exclude_categories=["Cc", "Cs"]), max_size=60),
       st.integers(-90_000_000, 90_000_000), st.integers(-180_000_000, 180_000_000))
def test_round_trip_of_valid_alarms(seq: int, kind: str, test: bool, addr: str, lat: int, lon: int) -> None:
    body = proto.alarm_body(DEV, seq, kind, proto.location(lat, lon, addr, "a1"), test)
    payload = frame(body)
    msg = codec.decode(proto.topic(DEV, "alarm"), payload, KEYS.get)
    if len(payload) > proto.MAX_FRAME:
        assert isinstance(msg, Reject) and msg.reason is RejectReason.OVERSIZE
        return
    assert isinstance(msg, Alarm)
    assert (msg.seq, msg.kind, msg.test, msg.location.address) == (seq, kind, test, addr)
    assert json.loads(msg.body) == body


def _raw_frame(body: bytes, secret: bytes = SECRET) -> bytes:
    """A correctly signed frame around body bytes exactly as given (not re-encoded)."""
    return proto.TAG + hmac.new(secret, body, hashlib.sha256).hexdigest().encode() + b"." + body


def test_strict_json_refuses_what_pythons_json_would_let_through() -> None:
    topic = proto.topic(DEV, "alarm")
    good = proto.encode(proto.alarm_body(DEV, 1, "general", LOC))
    assert not isinstance(codec.decode(topic, _raw_frame(good), KEYS.get), Reject)
    for body, words in (
            (good.replace(b'"up":0', b'"up":NaN'), "NaN"),
            (good.replace(b'"up":0', b'"up":Infinity'), "Infinity"),
            (good.replace(b'"seq":1', b'"seq":1,"seq":2'), "twice"),
            (good.replace(b'"addr":', b'"addr":"x","addr":'), "twice"),
            (b"[" * 470 + b"]" * 470, "")):
        msg = codec.decode(topic, _raw_frame(body), KEYS.get)
        assert isinstance(msg, Reject) and msg.reason is RejectReason.MALFORMED, (body[:60], msg)
        assert words in msg.detail, msg.detail


def test_out_of_range_content_is_malformed_not_a_crash_later() -> None:
    """The frames that used to crash the store or the forwarder's formatting (issue 12)."""
    topic = proto.topic(DEV, "alarm")
    good = proto.alarm_body(DEV, 1, "general", LOC)
    loc = dict(LOC)
    for body, words in (({**good, "up": 2**64}, "'up' outside"),
                        ({**good, "up": -1}, "'up' outside"),
                        ({**good, "loc": {**loc, "addr": "Jl. \ud800"}}, "surrogate"),
                        ({**good, "loc": {**loc, "addr": "x" * 201}}, "more than 200"),
                        ({**good, "loc": {**loc, "area": "a" * 65}}, "more than 64"),
                        ({**good, "loc": {**loc, "addr": "Jl.\x00Merdeka"}}, "control character")):
        msg = codec.decode(topic, _raw_frame(json.dumps(body).encode()), KEYS.get)
        assert isinstance(msg, Reject) and msg.reason is RejectReason.MALFORMED, (body, msg)
        assert words in msg.detail, msg.detail
    status = {"v": 1, "type": "status", "dev": DEV, "seq": 2, "fw": "0.2.0", "every": 60, "bat": 2**70,
              "rssi": -50, "tamper": False, "outbox": 0, "up": 5}
    msg = codec.decode(proto.topic(DEV, "status"), frame(status), KEYS.get)
    assert isinstance(msg, Reject) and "'bat' outside" in msg.detail


def test_a_clock_thousands_of_years_off_costs_the_time_not_the_alarm() -> None:
    topic = proto.topic(DEV, "alarm")
    for ts in (10**12, -5, 2**80, 1_000):
        msg = codec.decode(topic, frame({**proto.alarm_body(DEV, 1, "general", LOC), "ts": ts}), KEYS.get)
        assert isinstance(msg, Alarm) and msg.raised_ts is None, (ts, msg)
    msg = codec.decode(topic, frame({**proto.alarm_body(DEV, 1, "general", LOC), "ts": 1_795_000_000}), KEYS.get)
    assert isinstance(msg, Alarm) and msg.raised_ts == 1_795_000_000


def test_a_kind_newer_firmware_may_send_is_heard() -> None:
    body = {**proto.alarm_body(DEV, 1, "general", LOC), "kind": "flood"}
    msg = codec.decode(proto.topic(DEV, "alarm"), frame(body), KEYS.get)
    assert isinstance(msg, Alarm) and msg.kind == "flood"

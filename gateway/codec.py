"""Decode MQTT messages from buttons into typed values, or into a Reject with its reason.

Pure: bytes, a topic and a registry lookup in, a value out. The MAC is checked on the exact bytes
received before anything is parsed (protocol.md §3). The body is strict JSON (no NaN or Infinity,
no repeated key) and every field must lie inside the bounds of siaga/contract.py, the same ones
the command center's intake checks, so that whatever this codec accepts can be stored, formatted
and forwarded. Replay checks need per-device state and live in `replay.py`.
"""

from __future__ import annotations

import enum
import functools
import hmac
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from siaga import contract
from siagafw import proto, remote, sms

MAX_FRAME = proto.MAX_FRAME
TOPIC_PREFIX = proto.TOPIC_ROOT
UPLINK_SUFFIXES = ("alarm", "status", "will", "ota/get", "ota/status")
# The body `type` of each uplink topic where it is not the topic's last level itself.
BODY_TYPE = {"ota/get": "ota_get", "ota/status": "ota_status"}
AUDIT_PREFIX_BYTES = 64  # how much of an unauthenticated payload the audit log may keep


class RejectReason(enum.StrEnum):
    MALFORMED = "malformed"
    OVERSIZE = "oversize"
    UNKNOWN_DEVICE = "unknown_device"
    REVOKED = "revoked"
    BAD_SIGNATURE = "bad_signature"
    WRONG_TOPIC = "wrong_topic"
    REPLAY = "replay"
    FLOOD = "flood"
    UNKNOWN_SENDER = "unknown_sender"   # an SMS from a number that is not the claimed device's phone


@dataclass(frozen=True, slots=True)
class Reject:
    reason: RejectReason
    device_id: str | None
    topic: str
    detail: str
    authenticated: bool = False  # its MAC matched the device's key: the device itself sent it


@dataclass(frozen=True, slots=True)
class Location:
    lat_e6: int
    lon_e6: int
    address: str
    area: str

    @property
    def lat(self) -> float:
        return self.lat_e6 / 1_000_000

    @property
    def lon(self) -> float:
        return self.lon_e6 / 1_000_000


@dataclass(frozen=True, slots=True)
class Alarm:
    device_id: str
    seq: int
    kind: str
    test: bool
    location: Location
    uptime_ms: int
    raised_ts: int | None
    body: bytes


@dataclass(frozen=True, slots=True)
class Status:
    device_id: str
    seq: int
    battery_mv: int | None
    rssi: int | None
    firmware: str
    tamper: bool
    outbox: int
    uptime_ms: int
    every_s: int
    # Remote configuration (protocol.md §10): the version the button applied (0: none) and the last
    # it refused (None: none). None for both from firmware older than §10, which sends neither.
    config_applied: int | None = None
    config_rejected: int | None = None
    # The board the firmware runs on (esp32, picow, unix): firmware from OTA on sends it; None before.
    board: str | None = None


@dataclass(frozen=True, slots=True)
class Will:
    device_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class SmsTest:
    """A button's periodic backup-path test SMS (protocol.md §9): proves its SMS path works."""

    device_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class OtaGet:
    """A button asks for `n` chunks of bundle `id` from byte `off` (docs/protocol.md §11)."""

    device_id: str
    id: str
    off: int
    n: int


@dataclass(frozen=True, slots=True)
class OtaStatus:
    """A button reports what it did with an offer (docs/protocol.md §11)."""

    device_id: str
    seq: int
    id: str
    version: str
    state: str
    detail: str
    firmware: str


Message = Alarm | Status | Will | OtaGet | OtaStatus


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """What the codec needs to know about a registered device."""

    secret: bytes
    revoked: bool = False
    pending: bytes | None = None  # a new secret being rotated in: accepted too, until first used


KeyLookup = Callable[[str], DeviceKey | None]


class _Invalid(Exception):
    pass


def _get(body: dict[str, Any], key: str, kind: type | tuple[type, ...], *, nullable: bool = False) -> Any:
    if key not in body:
        raise _Invalid(f"missing field '{key}'")
    value = body[key]
    if value is None and nullable:
        return None
    # bool is an int subclass in Python; a JSON true where a number belongs is still an error.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise _Invalid(f"field '{key}' has the wrong type")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _int(body: dict[str, Any], key: str, low: int, high: int, *, nullable: bool = False) -> Any:
    value = _get(body, key, int, nullable=nullable)
    if value is not None and not low <= value <= high:
        raise _Invalid(f"field '{key}' outside {low}..{high}")
    return value


def _text(body: dict[str, Any], key: str, max_bytes: int) -> str:
    value: str = _get(body, key, str)
    problem = contract.text_problem(value, max_bytes)
    if problem is not None:
        raise _Invalid(f"field '{key}' {problem}")
    return value


def _seq(body: dict[str, Any]) -> int:
    return int(_int(body, "seq", 0, contract.SEQ_MAX))


def _location(body: dict[str, Any]) -> Location:
    loc = _get(body, "loc", dict)
    return Location(_int(loc, "lat_e6", -contract.LAT_E6_MAX, contract.LAT_E6_MAX),
                    _int(loc, "lon_e6", -contract.LON_E6_MAX, contract.LON_E6_MAX),
                    _text(loc, "addr", contract.ADDRESS_MAX_BYTES), _text(loc, "area", contract.AREA_MAX_BYTES))


def _parse(kind: str, device_id: str, raw: bytes, body: dict[str, Any]) -> Message:
    if kind == "alarm":
        emergency = _get(body, "kind", str)
        if not contract.KIND_RE.fullmatch(emergency):
            raise _Invalid(f"emergency kind {emergency[:20]!r} is not of the form {contract.KIND_RE.pattern}")
        # A clock that is not set or not sane does not cost the alarm: it travels without a time.
        ts = _get(body, "ts", int, nullable=True)
        return Alarm(device_id, _seq(body), emergency, _get(body, "test", bool), _location(body),
                     _int(body, "up", 0, contract.UPTIME_MS_MAX), contract.known_clock(ts), raw)
    if kind == "status":
        fw = _firmware(body)
        # cfg and cfg_bad came with remote configuration (§10): absent in older firmware's heartbeats.
        applied = _int(body, "cfg", 0, CONFIG_VER_MAX) if "cfg" in body else None
        rejected = _int(body, "cfg_bad", 0, CONFIG_VER_MAX, nullable=True) if "cfg_bad" in body else None
        # board came with OTA (§11): absent in older firmware's heartbeats.
        board = _board(body) if "board" in body else None
        return Status(device_id, _seq(body), _int(body, "bat", 0, contract.BATTERY_MV_MAX, nullable=True),
                      _int(body, "rssi", contract.RSSI_MIN, contract.RSSI_MAX, nullable=True), fw,
                      _get(body, "tamper", bool), _int(body, "outbox", 0, contract.OUTBOX_MAX),
                      _int(body, "up", 0, contract.UPTIME_MS_MAX),
                      _int(body, "every", contract.EVERY_S_MIN, contract.EVERY_S_MAX), applied, rejected, board)
    if kind == "ota/get":
        return OtaGet(device_id, _bundle_id(body, allow_empty=False), _int(body, "off", 0, OTA_OFFSET_MAX),
                      _int(body, "n", 1, OTA_GET_MAX))
    if kind == "ota/status":
        state = _get(body, "state", str)
        if state not in OTA_STATES:
            raise _Invalid(f"unknown ota state {state[:20]!r}")
        version = _get(body, "version", str)
        if version and not OTA_VERSION_RE.fullmatch(version):
            raise _Invalid("field 'version' is not MAJOR.MINOR.PATCH")
        return OtaStatus(device_id, _seq(body), _bundle_id(body, allow_empty=True), version, state,
                         _text(body, "detail", OTA_DETAIL_MAX), _firmware(body))
    return Will(device_id, _seq(body))


def _firmware(body: dict[str, Any]) -> str:
    fw: str = _get(body, "fw", str)
    if len(fw) > contract.FIRMWARE_MAX_CHARS or contract.text_problem(fw, 4 * contract.FIRMWARE_MAX_CHARS):
        raise _Invalid(f"field 'fw' is not text of at most {contract.FIRMWARE_MAX_CHARS} characters")
    return fw


def _board(body: dict[str, Any]) -> str:
    board: str = _get(body, "board", str)
    if not BOARD_RE.fullmatch(board):
        raise _Invalid("field 'board' is not a board name (1-16 of a-z 0-9 _ -)")
    return board


def _bundle_id(body: dict[str, Any], *, allow_empty: bool) -> str:
    value: str = _get(body, "id", str)
    if not (BUNDLE_ID_RE.fullmatch(value) or (allow_empty and value == "")):
        raise _Invalid("field 'id' is not a bundle id (16 lowercase hex digits)")
    return value


def _no_constants(name: str) -> Any:
    raise _Invalid(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body = dict(pairs)
    if len(body) != len(pairs):
        raise _Invalid("a key appears twice in one object")
    return body


def strict_json(raw: bytes) -> Any:
    """RFC 8259 JSON as the protocol wants it: NaN, Infinity and repeated keys are errors, which
    Python's json module otherwise lets through (the last repeated key would silently win)."""
    return json.loads(raw, parse_constant=_no_constants, object_pairs_hook=_unique_keys)


@functools.lru_cache(maxsize=65536)
def split_topic(topic: str) -> tuple[str, str] | None:
    """'siaga/v1/dev/<id>/<suffix>' -> (id, suffix) for an uplink topic, else None.

    Cached: a fleet publishes on a few topics per device, over and over."""
    if not topic.startswith(TOPIC_PREFIX):
        return None
    parts = topic[len(TOPIC_PREFIX):].split("/")
    if len(parts) not in (2, 3) or not proto.valid_device_id(parts[0]):
        return None
    suffix = "/".join(parts[1:])
    if suffix not in UPLINK_SUFFIXES:
        return None
    return parts[0], suffix


def verify_frame(secret: bytes, frame: bytes) -> bytes | None:
    """The body of `frame` if its MAC matches `secret`, else None (constant-time comparison)."""
    body = proto.split_frame(frame)
    if body is None:
        return None
    mac = hmac.digest(secret, body, "sha256").hex().encode()  # one-shot, in C
    return body if hmac.compare_digest(mac, frame[4:68]) else None


def decode(topic: str, payload: bytes, lookup: KeyLookup) -> Message | Reject:
    def reject(reason: RejectReason, device_id: str | None, detail: str, authenticated: bool = False) -> Reject:
        return Reject(reason, device_id, topic[:128], detail, authenticated)

    where = split_topic(topic)
    if where is None:
        return reject(RejectReason.WRONG_TOPIC, None, "not a Siaga uplink topic")
    device_id, suffix = where
    if len(payload) > MAX_FRAME:
        return reject(RejectReason.OVERSIZE, device_id, f"{len(payload)} bytes > {MAX_FRAME}")
    key = lookup(device_id)
    if key is None:
        return reject(RejectReason.UNKNOWN_DEVICE, device_id, f"prefix={payload[:AUDIT_PREFIX_BYTES]!r}")
    if key.revoked:
        return reject(RejectReason.REVOKED, device_id, "device is revoked")
    if proto.split_frame(payload) is None:
        return reject(RejectReason.MALFORMED, device_id, "not an SG1 frame")
    raw = verify_frame(key.secret, payload)
    if raw is None and key.pending is not None:
        raw = verify_frame(key.pending, payload)
    if raw is None:
        return reject(RejectReason.BAD_SIGNATURE, device_id, "MAC does not match the device secret")
    try:
        body = strict_json(raw)
        if not isinstance(body, dict):
            raise _Invalid("body is not an object")
        version = body.get("v")
        if type(version) is not int or version != proto.VERSION:  # not true, not 1.0
            raise _Invalid(f"unsupported body version {str(version)[:10]}")
        if body.get("dev") != device_id or body.get("type") != BODY_TYPE.get(suffix, suffix):
            return reject(RejectReason.WRONG_TOPIC, device_id,
                          f"body dev/type {str(body.get('dev'))[:32]}/{str(body.get('type'))[:10]} "
                          f"on topic {suffix}", True)
        return _parse(suffix, device_id, raw, body)
    except (ValueError, _Invalid, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        return reject(RejectReason.MALFORMED, device_id, str(exc)[:200], True)


def encode_ack(secret: bytes, device_id: str, seq: int, state: Literal[
        "received", "undelivered", "acknowledged", "dispatched", "resolved", "false_alarm"], incident: str | None,
        gts_ms: int) -> bytes:
    # CPython's C encoder with these options writes exactly the canonical form of protocol.md §3
    # (checked against the vectors), several times faster than the firmware's pure encoder.
    body = json.dumps(proto.ack_body(device_id, seq, state, incident, gts_ms), sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode()
    return proto.TAG + hmac.digest(secret, body, "sha256").hex().encode() + b"." + body


# ---- remote configuration (protocol.md §10) ----------------------------------------------------------

CONFIG_VER_MAX = 2**31 - 1
# The keys a remote configuration may set (v1). "wifi" ({"networks": [{"ssid", "password"}, ...]}
# as the gateway keeps it) goes out encrypted (§10.2): a retained message is kept on the broker in clear.
CONFIG_KEYS = ("loc", "heartbeat_s", "retry", "reconnect", "sms", "wifi")
WIFI_NONCE_BYTES = 16


def seal_wifi(secret: bytes, networks: list[dict[str, str]], nonce: bytes | None = None) -> dict[str, str]:
    """The encrypted form of a network list as the button receives it in `set.wifi` (protocol.md
    §10.2): {"nonce", "ct"}, with a fresh random nonce unless one is given (the test vectors)."""
    if nonce is None:
        nonce = os.urandom(WIFI_NONCE_BYTES)
    plain = proto.encode({"networks": [{"ssid": n["ssid"], "password": n["password"]} for n in networks]})
    return {"nonce": nonce.hex(), "ct": remote.wifi_cipher(secret, nonce, plain).hex()}


def open_wifi(secret: bytes, sealed: dict[str, Any]) -> list[dict[str, str]]:
    """The network list of an encrypted `set.wifi` (the button's own code, siagafw/remote.py)."""
    networks: list[dict[str, str]] = remote.open_wifi(secret, sealed)
    return networks


def redact_config(settings: dict[str, Any]) -> dict[str, Any]:
    """A configuration as people may see it (the admin API, the change log): Wi-Fi networks by
    their names only, with whether each has a password."""
    wifi = settings.get("wifi")
    if not isinstance(wifi, dict) or "networks" not in wifi:
        return settings
    return {**settings, "wifi": {"networks": [{"ssid": n["ssid"], "password_set": n["password"] != ""}
                                              for n in wifi["networks"]]}}


def config_body(device_id: str, ver: int, settings: dict[str, Any]) -> dict[str, Any]:
    if not 1 <= ver <= CONFIG_VER_MAX:
        raise ValueError(f"config version {ver} outside 1..{CONFIG_VER_MAX}")
    if set(settings) - set(CONFIG_KEYS):
        raise ValueError(f"a remote configuration sets only {', '.join(CONFIG_KEYS)}")
    return {"v": proto.VERSION, "type": "config", "dev": device_id, "ver": ver, "set": settings}


def encode_config(secret: bytes, device_id: str, ver: int, settings: dict[str, Any], *, check: bool = True) -> bytes:
    """The signed frame of a device's whole desired remote configuration, version `ver`: published
    retained on its config topic. Built with the firmware's own canonical encoder (a push is rare).
    Wi-Fi networks are encrypted afresh, with a new nonce, each time a frame is made."""
    if isinstance(settings.get("wifi"), dict) and "networks" in settings["wifi"]:
        settings = {**settings, "wifi": seal_wifi(secret, settings["wifi"]["networks"])}
    frame: bytes = proto.Signer(secret).seal(proto.encode(config_body(device_id, ver, settings)))
    if check and len(frame) > MAX_FRAME:
        raise ValueError(f"config frame of {len(frame)} bytes > {MAX_FRAME}")
    return frame


# ---- firmware over the air (protocol.md §11) ------------------------------------------------------------

OTA_GET_MAX = 8                     # chunks one ota_get may ask for
OTA_OFFSET_MAX = 2**31 - 1
OTA_DETAIL_MAX = 64                 # bytes of an ota_status detail
OTA_STATES = ("downloading", "refused", "installed", "confirmed", "rolled_back", "current")
OTA_VERSION_RE = re.compile(r"[0-9]{1,9}\.[0-9]{1,9}\.[0-9]{1,9}")
BUNDLE_ID_RE = re.compile(r"[0-9a-f]{16}")
BOARD_RE = re.compile(r"[a-z0-9_-]{1,16}")


def ota_offer_body(device_id: str, ver: int, rollout: int, bundle_id: str = "", sha256: str = "", size: int = 0,
                   chunk: int = 0, version: str = "") -> dict[str, Any]:
    """An offer of a bundle, or with bundle_id "" the withdrawal of any offer before (ver: the
    device's next offer version)."""
    if not 1 <= ver <= CONFIG_VER_MAX:
        raise ValueError(f"offer version {ver} outside 1..{CONFIG_VER_MAX}")
    body: dict[str, Any] = {"v": proto.VERSION, "type": "ota", "dev": device_id, "ver": ver, "id": bundle_id,
                            "rollout": rollout}
    if bundle_id:
        body.update(sha256=sha256, size=size, chunk=chunk, version=version)
    return body


def encode_ota(secret: bytes, body: dict[str, Any]) -> bytes:
    """The signed frame of an offer or a withdrawal: published retained on the device's ota topic."""
    return _seal(secret, json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())


def encode_ota_data(secret: bytes, device_id: str, bundle_id: str, off: int, data: bytes) -> bytes:
    """One chunk of a bundle: the canonical JSON header, a newline, then the raw bytes, all signed."""
    header = json.dumps({"dev": device_id, "id": bundle_id, "off": off, "type": "ota_data", "v": proto.VERSION},
                        sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return _seal(secret, header + b"\n" + data)


def _seal(secret: bytes, body: bytes) -> bytes:
    frame = proto.TAG + hmac.digest(secret, body, "sha256").hex().encode() + b"." + body
    if len(frame) > MAX_FRAME:
        raise ValueError(f"frame of {len(frame)} bytes > {MAX_FRAME}")
    return frame


# ---- SMS (the second path, issue 17) -------------------------------------------------------------------

SMS_TOPIC_PREFIX = "sms/"   # Inbound.topic of an SMS: "sms/<the sender's number>"
PhoneOf = Callable[[str], str | None]                  # device id -> its registered phone (E.164), if any
PlaceOf = Callable[[str], tuple[str, str]]             # device id -> (address, area) of its registry entry


def sms_topic(sender: str) -> str:
    return SMS_TOPIC_PREFIX + sender


def _printable(text: str, n: int) -> str:
    """The first n characters of an unauthenticated text, safe for an audit line."""
    return "".join(c if c.isprintable() else "?" for c in text[:n])


def _open_sms(secret: bytes, text: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the verified fields, None) or (None, why) for one key."""
    signer = proto.Signer(secret)
    opened = sms.open(signer, text)
    if opened is not None:
        return opened, None
    return None, sms.why(signer, text) or sms.MALFORMED


def decode_sms(sender: str, text: str, lookup: KeyLookup, phone_of: PhoneOf,
               place_of: PlaceOf | None = None) -> Alarm | SmsTest | Reject:
    """An SMS from `sender` as an Alarm or a backup-path test, or a Reject with its reason.

    The order of the checks is that of `decode`: nothing is trusted before the MAC, and the MAC is
    only computed for a text that claims a known, live device and comes from that device's own SIM
    (the number the technician registered). The number alone proves nothing (a sender number can
    be forged through some SMS routes), the MAC alone would let anyone who overheard a button's SMS
    replay it from another phone beyond the window: both are required. A text a device signed that
    the gateway cannot take (an ack, a bad field) is MALFORMED with authenticated=True, like a bad
    MQTT body, so the room sees a bad_message fault."""
    topic = sms_topic(sender)[:128]

    def reject(reason: RejectReason, device_id: str | None, detail: str, authenticated: bool = False) -> Reject:
        return Reject(reason, device_id, topic, detail, authenticated)

    device_id = sms.device_of(text)
    if device_id is None:
        return reject(RejectReason.MALFORMED, None, f"{sms.NOT_SIAGA}: {_printable(text, 40)}")
    key = lookup(device_id)
    if key is None:
        return reject(RejectReason.UNKNOWN_DEVICE, device_id, f"prefix={_printable(text, AUDIT_PREFIX_BYTES)}")
    if key.revoked:
        return reject(RejectReason.REVOKED, device_id, "device is revoked")
    phone = phone_of(device_id)
    if phone is None or phone != sender:
        return reject(RejectReason.UNKNOWN_SENDER, device_id,
                      "the device has no phone registered" if phone is None
                      else f"sender {_printable(sender, 24)} is not the device's registered phone")
    fields, why = _open_sms(key.secret, text)
    if fields is None and why == sms.BAD_SIGNATURE and key.pending is not None:
        fields, why = _open_sms(key.pending, text)
    if fields is None:
        if why == sms.BAD_SIGNATURE:
            return reject(RejectReason.BAD_SIGNATURE, device_id, "MAC does not match the device secret")
        # "malformed: device id or MAC" comes before the MAC is checked; any other after it matched.
        authenticated = why is not None and why.startswith(sms.MALFORMED + ":") and "device id or MAC" not in why
        return reject(RejectReason.MALFORMED, device_id, str(why)[:200], authenticated)
    if fields["type"] == "test":
        return SmsTest(device_id, fields["seq"])
    if fields["type"] != "alarm":
        # An ack: signed with the device's key, but by the gateway, so the device did not send it:
        # a copy of the gateway's own SMS sent back (a replay), not a fault of the button.
        return reject(RejectReason.MALFORMED, device_id, f"an {fields['type']} SMS is not sent to the gateway")
    address, area = place_of(device_id) if place_of is not None else ("", "")
    return Alarm(device_id, fields["seq"], fields["kind"], fields["test"],
                 Location(fields["lat_e6"], fields["lon_e6"], address, area), 0,
                 contract.known_clock(fields["ts"]), text.encode())

"""MQTT 3.1.1 packets for the gateway's link: pure encode and decode, no I/O.

Only what the gateway speaks: CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH and PUBACK at QoS 0 and 1,
PINGREQ/PINGRESP, DISCONNECT. Section numbers refer to the OASIS MQTT 3.1.1 standard.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
SUBACK = 0x90
UNSUBACK = 0xB0
PINGRESP = 0xD0
PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"

# §3.2.2.3 connect return codes
CONNACK_REASONS = {1: "unacceptable protocol version", 2: "client id rejected", 3: "server unavailable",
                   4: "bad user name or password", 5: "not authorised"}
AUTH_FAILURES = frozenset({4, 5})

_PUBACK_HEAD = b"\x40\x02"


class ProtocolError(Exception):
    pass


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def connect(client_id: str, username: str, password: str, keepalive_s: int, clean: bool) -> bytes:
    flags = 0xC0 | (0x02 if clean else 0)  # user name and password present (§3.1.2.8-9)
    body = (b"\x00\x04MQTT\x04" + bytes([flags]) + struct.pack("!H", keepalive_s)
            + _utf8(client_id) + _utf8(username) + _utf8(password))
    return b"\x10" + _remaining_length(len(body)) + body


def subscribe(pid: int, topics: list[tuple[str, int]]) -> bytes:
    body = struct.pack("!H", pid) + b"".join(_utf8(t) + bytes([q]) for t, q in topics)
    return b"\x82" + _remaining_length(len(body)) + body


def unsubscribe(pid: int, topics: list[str]) -> bytes:
    """§3.10: the topic filters exactly as subscribed."""
    body = struct.pack("!H", pid) + b"".join(_utf8(t) for t in topics)
    return b"\xa2" + _remaining_length(len(body)) + body


def publish(topic: str, payload: bytes, qos: int, retain: bool, pid: int = 0, dup: bool = False) -> bytes:
    head = PUBLISH | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    body = _utf8(topic) + (struct.pack("!H", pid) if qos else b"") + payload
    return bytes([head]) + _remaining_length(len(body)) + body


def puback(pid: int) -> bytes:
    return _PUBACK_HEAD + pid.to_bytes(2, "big")


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    pid: int
    dup: bool
    retain: bool


@dataclass(frozen=True, slots=True)
class Control:
    """Any other packet: its type nibble and body (CONNACK, PUBACK, SUBACK, PINGRESP)."""

    kind: int
    body: bytes


Packet = Publish | Control

MAX_PACKET = 1 << 20  # larger than anything the broker may send us (its max_packet_size is 16 KiB)
_RESERVED = frozenset({0x00, 0xF0})  # packet types 0 and 15 are reserved (§2.2.1)


def parse(buf: bytearray) -> tuple[list[Packet], int]:
    """Parse every complete packet at the start of buf; return them and the bytes consumed.

    An incomplete packet at the end is left for the next call. Whatever the bytes, the only
    exception is ProtocolError: the stream cannot be trusted past it, and the link drops the
    connection (tests/gateway/test_mqttwire_properties.py feeds it arbitrary bytes).
    """
    out: list[Packet] = []
    pos, end = 0, len(buf)
    while pos + 2 <= end:
        first = buf[pos]
        n = shift = 0
        i = pos + 1
        while True:
            if i >= end:
                return out, pos
            b = buf[i]
            n |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                break
            shift += 7
            if shift > 21:
                raise ProtocolError("remaining length longer than 4 bytes")
        if n > MAX_PACKET:
            raise ProtocolError(f"packet of {n} bytes")
        kind = first & 0xF0
        if kind in _RESERVED:
            raise ProtocolError(f"reserved packet type {kind >> 4}")
        if i + n > end:
            return out, pos
        if kind == PUBLISH:
            out.append(_publish(first, buf, i, i + n))
        else:
            out.append(Control(kind, bytes(buf[i:i + n])))
        pos = i + n
    return out, pos


def _publish(first: int, buf: bytearray, i: int, end: int) -> Publish:
    """The PUBLISH whose variable header starts at buf[i] and whose payload ends at buf[end] (§3.3)."""
    qos = (first >> 1) & 3
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")  # §3.3.1.2
    if end - i < 2:
        raise ProtocolError("PUBLISH without a topic length")
    j = i + 2 + ((buf[i] << 8) | buf[i + 1])
    if j + (2 if qos else 0) > end:
        raise ProtocolError("PUBLISH topic longer than the packet")
    # An invalid UTF-8 topic is the broker's fault (§1.5.3); decoded with U+FFFD it matches no
    # device topic, so the codec rejects the message (audited) instead of the link failing.
    topic = bytes(buf[i + 2:j]).decode("utf-8", "replace")
    pid = 0
    if qos:
        pid = (buf[j] << 8) | buf[j + 1]
        j += 2
    return Publish(topic, bytes(buf[j:end]), qos, pid, bool(first & 0x08), bool(first & 1))

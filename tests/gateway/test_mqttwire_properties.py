"""The MQTT packet parser against arbitrary input: whatever the broker (or a man in the middle)
sends, `parse` returns packets or raises its own ProtocolError, never anything else, and how TCP
splits the bytes changes nothing."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from siaga.gateway import mqttwire as wire

# Arbitrary bytes, and bytes that start like real packets (a valid first byte and length, then
# noise), so that the deeper branches (PUBLISH bodies, lengths near the bound) are reached too.
first_bytes = st.sampled_from([0x20, 0x30, 0x32, 0x34, 0x36, 0x3B, 0x40, 0x90, 0xD0, 0x00, 0xF0])
length_bytes = st.sampled_from([b"\x00", b"\x01", b"\x02", b"\x05", b"\x7f", b"\xff\x7f", b"\x80\x80\x40",
                                b"\xff\xff\xff\x7f", b"\xff\xff\xff\xff\x01"])
packet_like = st.lists(st.tuples(first_bytes, length_bytes, st.binary(max_size=40)), max_size=8).map(
    lambda parts: b"".join(bytes([f]) + n + body for f, n, body in parts))
streams = st.one_of(st.binary(max_size=600), packet_like)
cut_lists = st.lists(st.integers(1, 64), min_size=1, max_size=40)


def feed(stream: bytes, cuts: list[int]) -> tuple[list[wire.Packet], bytes, bool]:
    """Feed the stream in pieces of the given sizes (repeated) as the link does; return the
    packets, what is left unparsed, and whether a ProtocolError ended it."""
    buf = bytearray()
    got: list[wire.Packet] = []
    pos = 0
    while pos < len(stream):
        for cut in cuts:
            buf += stream[pos:pos + cut]
            pos += cut
            try:
                packets, used = wire.parse(buf)
            except wire.ProtocolError:
                return got, bytes(buf), True
            assert 0 <= used <= len(buf)
            del buf[:used]
            got += packets
    return got, bytes(buf), False


@settings(max_examples=1500)
@given(streams, cut_lists)
@example(b"\x30\x00", [1])                  # PUBLISH with no topic length
@example(b"\x30\x01\x00", [2])              # half a topic length
@example(b"\x32\x03\x00\x01t", [5])         # QoS 1 without room for the packet id
@example(b"\x36\x02\x00\x00", [4])          # QoS 3
@example(b"\x30\x02\xff\xff", [4])          # a topic longer than the packet
@example(b"\x30\x04\x00\x02\xff\xfe", [6])  # a topic that is not UTF-8
def test_parse_raises_only_protocol_error_on_any_bytes_and_any_split(stream: bytes, cuts: list[int]) -> None:
    feed(stream, cuts)  # any other exception fails the test


@settings(max_examples=500)
@given(streams, cut_lists)
def test_how_the_bytes_are_split_does_not_change_the_packets(stream: bytes, cuts: list[int]) -> None:
    whole, whole_left, whole_failed = feed(stream, [len(stream) or 1])
    split, split_left, split_failed = feed(stream, cuts)
    assert split_failed == whole_failed
    if not whole_failed:
        assert split == whole
        assert split_left == whole_left


@pytest.mark.parametrize("packet", [b"\x00\x00", b"\xf0\x00", b"\x36\x02\x00\x00", b"\x30\x02\x00\x05",
                                    b"\x32\x03\x00\x01t", b"\x30\x00"])
def test_a_malformed_packet_is_a_protocol_error(packet: bytes) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.parse(bytearray(packet))


def test_an_incomplete_packet_is_left_for_the_next_read() -> None:
    packet = wire.publish("siaga/v1/dev/a/alarm", b"x" * 300, 1, False, 9)
    for size in range(len(packet)):
        assert wire.parse(bytearray(packet[:size])) == ([], 0)

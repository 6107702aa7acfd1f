"""The gateway's MQTT 3.1.1 packet codec: whatever way TCP splits the stream, the same packets
come out, in order, and nothing is consumed until it is complete."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from siaga.gateway import mqttwire as wire

publishes = st.lists(st.tuples(st.text(min_size=1, max_size=40), st.binary(max_size=3000), st.sampled_from([0, 1]),
                               st.integers(1, 65535), st.booleans(), st.booleans()), min_size=1, max_size=12)


@given(publishes, st.lists(st.integers(1, 400), min_size=1, max_size=50))
def test_any_split_of_the_stream_parses_to_the_same_packets(items: list, cuts: list[int]) -> None:
    stream = b"".join(wire.publish(t, p, q, r, pid if q else 0, dup=d) for t, p, q, pid, d, r in items)
    stream += wire.puback(7) + wire.PINGREQ_PACKET
    buf = bytearray()
    got: list[wire.Packet] = []
    pos = 0
    for cut in cuts * (len(stream) // max(1, sum(cuts)) + 2):
        if pos >= len(stream):
            break
        buf += stream[pos:pos + cut]
        pos += cut
        packets, used = wire.parse(buf)
        del buf[:used]
        got += packets
    assert buf == b""
    pubs = [p for p in got if isinstance(p, wire.Publish)]
    assert [(p.topic, p.payload, p.qos, p.pid if p.qos else 0, p.dup, p.retain) for p in pubs] == [
        (t, p, q, pid if q else 0, d, r) for t, p, q, pid, d, r in items]
    assert [(c.kind, c.body) for c in got if isinstance(c, wire.Control)] == [(wire.PUBACK, b"\x00\x07"), (0xC0, b"")]


def test_remaining_length_boundaries() -> None:
    for size in (0, 127, 128, 16383, 16384, 1_000_000):  # 1-, 2-, 3-byte lengths
        packet = wire.publish("t", b"x" * size, 0, False)
        (p,), used = wire.parse(bytearray(packet))
        assert isinstance(p, wire.Publish)
        assert len(p.payload) == size
        assert used == len(packet)


def test_a_packet_larger_than_the_bound_is_refused_before_buffering_it() -> None:
    with pytest.raises(wire.ProtocolError):
        wire.parse(bytearray(wire.publish("t", b"x" * (wire.MAX_PACKET + 1), 0, False)[:8]))


def test_a_five_byte_length_is_a_protocol_error() -> None:
    with pytest.raises(wire.ProtocolError):
        wire.parse(bytearray(b"\x30\xff\xff\xff\xff\x01"))

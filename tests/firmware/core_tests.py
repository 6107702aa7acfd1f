# Unit tests of the firmware core that run unchanged under CPython (collected by pytest through
# test_core.py) and under the MicroPython unix port (run by run_core.py). Plain functions and
# asserts only: MicroPython has no pytest. Each test gets a fresh scratch directory.
import os

from siagafw import proto
from siagafw.button import CANCEL, HELD, TRIGGER, SosButton
from siagafw.storage import Outbox, SeqStore


def _drive(button, script):
    """script: list of (time ms, pressed). Returns the actions with their times."""
    out = []
    for t, level in script:
        action = button.update(level, t)
        if action is not None:
            out.append((t, action))
    return out


def _hold(start, duration, step=10):
    return [(t, True) for t in range(start, start + duration, step)] + [(start + duration, False)]


def test_seq_numbers_increase_and_survive_a_restart(tmp):
    seqs = SeqStore(tmp, block=8)
    first = [seqs.next() for _ in range(5)]
    assert first == [0, 1, 2, 3, 4]
    again = SeqStore(tmp, block=8)  # reboot: resumes at the reserved limit, never reuses
    assert again.next() == 8
    assert again.next() == 9


def test_seq_block_writes_are_rare(tmp):
    seqs = SeqStore(tmp, block=32)
    for _ in range(100):
        seqs.next()
    assert SeqStore(tmp, block=32).next() == 128  # 4 reservations for 100 numbers


def test_seq_survives_a_write_torn_by_power_loss(tmp):
    seqs = SeqStore(tmp, block=8)
    used = [seqs.next() for _ in range(16)]  # limits written: 8 (slot a), then 16 (slot b)
    # The 17th number needs a new reservation (24), written to the older slot, a. Power fails in
    # the middle of that write, so slot a is garbage and number 16 was never handed out.
    with open(tmp + "/seq.a", "wb") as f:
        f.write(b"2")
    again = SeqStore(tmp, block=8)
    nxt = again.next()
    assert nxt == 16
    assert nxt not in used
    # That boot's reservation rewrote the torn slot, so both slots are valid again.
    assert SeqStore(tmp, block=8).next() == 24


def test_outbox_keeps_frames_across_restart_in_order(tmp):
    box = Outbox(tmp, capacity=4)
    box.put(7, b"seven")
    box.put(3, b"three")
    again = Outbox(tmp, capacity=4)
    assert again.seqs() == [3, 7]
    assert again.get(3) == b"three"
    again.remove(3)
    assert Outbox(tmp).seqs() == [7]


def test_outbox_drops_oldest_when_full_and_counts_it(tmp):
    box = Outbox(tmp, capacity=2)
    for seq in (1, 2, 3):
        box.put(seq, b"x")
    assert box.seqs() == [2, 3]
    assert box.dropped == 1


def test_outbox_discards_a_write_cut_short(tmp):
    box = Outbox(tmp)
    with open(tmp + "/outbox/0000000009.msg.tmp", "wb") as f:
        f.write(b"SG1.half")
    assert Outbox(tmp).seqs() == []
    assert "0000000009.msg.tmp" not in os.listdir(tmp + "/outbox")
    assert len(box) == 0


def test_short_tap_sends_nothing(tmp):
    b = SosButton(long_ms=1500, cancel_ms=0, debounce_ms=30)
    assert _drive(b, _hold(0, 400) + [(t, False) for t in range(400, 3000, 50)]) == []


def test_long_press_triggers_once(tmp):
    b = SosButton(long_ms=1500, cancel_ms=0, debounce_ms=30)
    actions = _drive(b, _hold(0, 4000))
    assert [a for _, a in actions] == [TRIGGER]
    assert 1500 <= actions[0][0] <= 1600


def test_contact_bounce_is_ignored(tmp):
    b = SosButton(long_ms=1500, cancel_ms=0, debounce_ms=30)
    bouncy = [(t, t % 20 < 10) for t in range(0, 2000, 5)]  # toggling every 10 ms
    assert _drive(b, bouncy) == []


def test_cancel_window_takes_the_alarm_back(tmp):
    b = SosButton(long_ms=1000, cancel_ms=3000, debounce_ms=20)
    script = _hold(0, 1200) + [(t, False) for t in range(1210, 1500, 10)] + _hold(1500, 200)
    script += [(t, False) for t in range(1710, 6000, 50)]
    assert [a for _, a in _drive(b, script)] == [HELD, CANCEL]


def test_cancel_window_expires_into_an_alarm(tmp):
    b = SosButton(long_ms=1000, cancel_ms=3000, debounce_ms=20)
    script = _hold(0, 1200) + [(t, False) for t in range(1210, 5000, 10)]
    actions = _drive(b, script)
    assert [a for _, a in actions] == [HELD, TRIGGER]
    assert 4000 <= actions[1][0] <= 4100


def test_alarm_frame_verifies_and_carries_location(tmp):
    signer = proto.Signer(bytes(range(32)))
    loc = proto.location(proto.parse_degrees_e6("-6.175392"), proto.parse_degrees_e6("106.827153"), "Jl. A", "31.71")
    frame = signer.seal(proto.encode(proto.alarm_body("btn-1", 5, "fire", loc, False, 10, None)))
    assert len(frame) <= proto.MAX_FRAME
    body = signer.open(frame)
    assert body is not None
    assert b'"lat_e6":-6175392' in body
    assert b'"kind":"fire"' in body
    assert proto.Signer(bytes(32)).open(frame) is None


TESTS = [
    test_seq_numbers_increase_and_survive_a_restart,
    test_seq_block_writes_are_rare,
    test_seq_survives_a_write_torn_by_power_loss,
    test_outbox_keeps_frames_across_restart_in_order,
    test_outbox_drops_oldest_when_full_and_counts_it,
    test_outbox_discards_a_write_cut_short,
    test_short_tap_sends_nothing,
    test_long_press_triggers_once,
    test_contact_bounce_is_ignored,
    test_cancel_window_takes_the_alarm_back,
    test_cancel_window_expires_into_an_alarm,
    test_alarm_frame_verifies_and_carries_location,
]

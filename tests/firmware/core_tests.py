# Unit tests of the firmware core that run unchanged under CPython (collected by pytest through
# test_core.py) and under the MicroPython unix port (run by run_core.py). Plain functions and
# asserts only: MicroPython has no pytest. Each test gets a fresh scratch directory.
import binascii
import hashlib
import json
import os
import struct

from siagafw import bundle, ed25519, indicator, mqtt, nmea, proto, remote, udp
from siagafw.app import Device
from siagafw.button import CANCEL, HELD, TRIGGER, ButtonPanel, SosButton
from siagafw.config import load_config
from siagafw.storage import Outbox, SeqStore
from siagafw.timing import Backoff, plausible_unix_time


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



def _refusal(exc_type, fn, *args):
    """The message of the exc_type that fn(*args) raises; an AssertionError if it raises none.
    (pytest.raises exists under CPython only, and this file runs under MicroPython too.)"""
    try:
        fn(*args)
    except exc_type as exc:
        return str(exc)
    raise AssertionError("%r accepted %r: expected %s" % (fn, args, exc_type.__name__))

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


# ---------------------------------------------------------------- type buttons


def _panel_drive(panel, script):
    """script: list of (time ms, tuple of levels per input). Returns (time, action, kind) triples."""
    out = []
    for t, levels in script:
        action = None
        for i in range(len(levels)):
            a = panel.update(i, levels[i], t)
            if a is not None:
                action = a
        a = panel.tick(t)
        if a is not None:
            action = a
        if action is not None:
            out.append((t, action, panel.kind if action == TRIGGER else None))
    return out


def _levels(start, end, levels, step=10):
    return [(t, levels) for t in range(start, end, step)]


def test_type_button_long_press_raises_its_kind(tmp):
    panel = ButtonPanel(("general", "medical", "fire"), long_ms=1000, cancel_ms=0, debounce_ms=20)
    script = _levels(0, 1500, (False, True, False)) + _levels(1500, 2000, (False, False, False))
    assert _panel_drive(panel, script) == [(1020, TRIGGER, "medical")]


def test_type_button_short_tap_sends_nothing(tmp):
    panel = ButtonPanel(("general", "fire"), long_ms=1000, cancel_ms=0, debounce_ms=20)
    script = _levels(0, 300, (False, True)) + _levels(300, 3000, (False, False))
    assert _panel_drive(panel, script) == []


def test_any_button_cancels_inside_the_window(tmp):
    panel = ButtonPanel(("general", "crime"), long_ms=1000, cancel_ms=3000, debounce_ms=20)
    script = _levels(0, 1200, (True, False)) + _levels(1200, 1500, (False, False))
    script += _levels(1500, 1600, (False, True)) + _levels(1600, 6000, (False, False))
    assert [a for _, a, _ in _panel_drive(panel, script)] == [HELD, CANCEL]


def test_second_button_while_holding_does_not_change_the_kind(tmp):
    panel = ButtonPanel(("general", "fire"), long_ms=1000, cancel_ms=0, debounce_ms=20)
    script = _levels(0, 400, (True, False)) + _levels(400, 1500, (True, True)) + _levels(1500, 2000, (False, False))
    assert _panel_drive(panel, script) == [(1020, TRIGGER, "general")]


def test_held_button_triggers_once_until_all_are_released(tmp):
    panel = ButtonPanel(("general", "fire"), long_ms=500, cancel_ms=0, debounce_ms=20)
    # A jammed SOS button: one alarm, not one every half second.
    script = _levels(0, 5000, (True, False))
    assert [a for _, a, _ in _panel_drive(panel, script)] == [TRIGGER]


# ---------------------------------------------------------------- indicator


def test_every_state_has_a_pattern_and_the_ack_states_too(tmp):
    for state in proto.STATES:
        assert state in indicator.STATES, state
    for state in indicator.STATES:
        assert state in indicator.LED or state == indicator.CANCELLED, state   # cancelled: dark
    # The table in docs/firmware.md gives these in ms.
    assert indicator.ms(indicator.LED[indicator.IDLE]) == (60, 4940)
    assert indicator.ms(indicator.LED[indicator.FAULT]) == (100, 160, 100, 160, 100, 2380)
    assert indicator.ms(indicator.BUZZER[indicator.ACKNOWLEDGED]) == (400, 160, 400, 160, 400)


def test_pattern_levels_repeat_or_play_once(tmp):
    blink = bytes([5, 20])                  # 100 ms on, 400 ms off
    assert indicator.level(blink, 0) and indicator.level(blink, 99)
    assert not indicator.level(blink, 100) and not indicator.level(blink, 499)
    assert indicator.level(blink, 500) and indicator.level(blink, 10050)   # repeats
    beep = bytes([10])                      # 200 ms, once
    assert indicator.level(beep, 0) and indicator.level(beep, 199)
    assert not indicator.level(beep, 200) and not indicator.level(beep, 100000)
    assert indicator.level(indicator.STEADY, 0) and indicator.level(indicator.STEADY, 123456)
    assert not indicator.level(None, 0)


def _timeline(pattern, period_ms=6000, step_ms=20):
    """The levels of a pattern every step_ms from its start: what an eye (or a sound meter) sees."""
    return [indicator.level(pattern, t) for t in range(0, period_ms, step_ms)]


def test_patterns_of_distinct_states_look_different(tmp):
    # A technician must tell the states apart by the LED alone (docs/firmware.md table); compared as
    # what they show over 6 s, so that two byte strings spelling the same light (b"\x32\x00" and
    # b"\x19\x00", say) count as one.
    seen = {}
    for state in indicator.STATES:
        if state in (indicator.FALSE_ALARM, indicator.CANCELLED):
            continue  # deliberately as resolved: either way the incident is closed; cancelled is dark
        shown = tuple(_timeline(indicator.LED[state]))
        assert shown not in seen, (state, seen.get(shown))
        seen[shown] = state


def test_dispatched_looks_and_sounds_unlike_every_other_state(tmp):
    # "Help is on the way" must not read as "an operator has seen it" (issue 16), nor as anything else.
    led = _timeline(indicator.LED[indicator.DISPATCHED])
    buzzer = _timeline(indicator.BUZZER[indicator.DISPATCHED])
    for state in indicator.STATES:
        if state == indicator.DISPATCHED:
            continue
        assert led != _timeline(indicator.LED.get(state)), state
        assert buzzer != _timeline(indicator.BUZZER.get(state)), state
    # It pulses: mostly lit, yet dark twice in each 1.4 s, for no less than 200 ms each time.
    assert indicator.ms(indicator.LED[indicator.DISPATCHED]) == (800, 200, 200, 200)
    cycle = _timeline(indicator.LED[indicator.DISPATCHED], 1400)
    dips = [i for i in range(1, len(cycle)) if cycle[i - 1] and not cycle[i]]
    assert len(dips) == 2 and sum(cycle) * 100 // len(cycle) >= 70, cycle
    # The buzzer cue plays once, when the state begins: short, short, long.
    assert indicator.ms(indicator.BUZZER[indicator.DISPATCHED]) == (100, 100, 100, 100, 600)
    assert len(indicator.BUZZER[indicator.DISPATCHED]) % 2 == 1


def test_indicator_plays_the_buzzer_once_and_silent_mode_keeps_it_off(tmp):
    for silent in (False, True):
        ind = indicator.Indicator(silent)
        assert ind.show(indicator.ACKNOWLEDGED, 1000)
        assert not ind.show(indicator.ACKNOWLEDGED, 1001)
        buzz = []
        for t in range(1000, 5000, 10):
            ind.update(t)
            buzz.append(ind.buzzer)
            assert ind.led  # steady
        on = len([b for b in buzz if b])
        assert on == (0 if silent else 120), on   # three 400 ms beeps at 10 ms steps


# ---------------------------------------------------------------- NMEA

# The first two are the textbook examples of NMEA 0183 (a fix near Munich); the others are what a
# u-blox receiver prints in Jakarta. Checksums are the sentences' own.
GGA_MUNICH = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
RMC_MUNICH = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"
RMC_JAKARTA = "$GNRMC,031209.00,A,0610.52352,S,10649.62918,E,0.012,,241126,,,A*71"
GGA_JAKARTA = "$GNGGA,031209.00,0610.52352,S,10649.62918,E,1,09,0.98,12.3,M,-1.2,M,,*7A"
RMC_VOID = "$GPRMC,031210.00,V,,,,,,,241126,,,N*7E"
GGA_NO_FIX = "$GPGGA,031210.00,,,,,0,00,99.99,,,,,,*67"
GSV = "$GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00*74"
RMC_MODE_NOT_VALID = "$GNRMC,031211.00,A,0610.52352,S,10649.62918,E,0.012,,241126,,,N*77"


def test_nmea_parses_real_sentences_to_millionths_of_a_degree(tmp):
    assert nmea.parse(GGA_MUNICH) == (48117300, 11516667)
    assert nmea.parse(RMC_MUNICH) == (48117300, 11516667)
    # South and east: the same point as the provisioned test location, to the digit.
    assert nmea.parse(RMC_JAKARTA) == (-6175392, 106827153)
    assert nmea.parse(GGA_JAKARTA) == (-6175392, 106827153)


def test_nmea_rejects_checksum_errors_and_reports_no_fix(tmp):
    assert nmea.parse(GGA_JAKARTA.replace("0610.52352", "0610.52353")) == nmea.CHECKSUM  # one digit flipped
    assert nmea.parse(RMC_JAKARTA[:-2] + "00") == nmea.CHECKSUM
    assert nmea.parse(RMC_JAKARTA[:-3]) == nmea.CHECKSUM          # no checksum at all
    assert nmea.parse(RMC_JAKARTA[:-2] + "ZZ") == nmea.CHECKSUM
    assert nmea.parse(RMC_VOID) == nmea.NO_FIX
    assert nmea.parse(GGA_NO_FIX) == nmea.NO_FIX
    assert nmea.parse(RMC_MODE_NOT_VALID) == nmea.NO_FIX
    assert nmea.parse(GSV) == nmea.IGNORED
    assert nmea.parse("GPGGA,no dollar*00") == nmea.MALFORMED


def test_gps_reader_assembles_split_and_noisy_input(tmp):
    gps = nmea.GpsReader(max_age_ms=5000)
    stream = ("\xff\x00garbage" + RMC_VOID + "\r\n" + GSV + "\r\n" + RMC_JAKARTA + "\r\n").encode()
    for i in range(0, len(stream), 7):  # UART reads arrive in arbitrary pieces
        gps.feed(stream[i:i + 7], 1000)
    assert gps.fix(1000) == (-6175392, 106827153)
    assert gps.fix(6001) is None          # stale: fall back to the provisioned place
    gps.feed(("$" + "1" * 200 + "\r\n" + GGA_JAKARTA.replace("*7A", "*7B") + "\r\n").encode(), 7000)
    assert gps.errors == 2                # one overlong line, one bad checksum
    assert gps.fix(7000) is None
    gps.feed(b"$GPRMC,1$" + GGA_MUNICH.encode()[1:] + b"\n", 8000)   # resynchronises on "$"
    assert gps.fix(8000) == (48117300, 11516667)


# ---------------------------------------------------------------- timing, MQTT framing


def test_backoff_doubles_with_jitter_up_to_the_cap(tmp):
    b = Backoff(1000, 5000)
    for expected in (1000, 2000, 4000, 5000, 5000):
        d = b.next_ms()
        assert expected // 2 <= d <= expected, (expected, d)
    b.reset()
    assert 500 <= b.next_ms() <= 1000
    spread = [Backoff(4000, 4000).next_ms() for _ in range(50)]
    assert max(spread) > min(spread)  # jittered: buttons after a power cut do not retry in step


def test_clock_before_2024_counts_as_unset(tmp):
    assert plausible_unix_time(None) is None
    assert plausible_unix_time(3600) is None                # a board counting from its epoch
    assert plausible_unix_time(1795000000) == 1795000000


def test_mqtt_remaining_length_encoding(tmp):
    # The examples of MQTT 3.1.1 section 2.2.3.
    assert mqtt._header(0x30, 0) == b"\x30\x00"
    assert mqtt._header(0x30, 127) == b"\x30\x7f"
    assert mqtt._header(0x30, 128) == b"\x30\x80\x01"
    assert mqtt._header(0x30, 16383) == b"\x30\xff\x7f"
    assert mqtt._header(0x30, 16384) == b"\x30\x80\x80\x01"
    assert mqtt._header(0x30, 268435455) == b"\x30\xff\xff\xff\x7f"


def test_mqtt_packets_are_split_only_when_whole(tmp):
    connack = b"\x20\x02\x00\x00"
    assert mqtt.split_packet(b"") is None
    assert mqtt.split_packet(connack[:3]) is None                   # body not all there yet
    assert mqtt.split_packet(connack + b"\xd0") == (0x20, b"\x00\x00", 4)
    assert mqtt.split_packet(b"\x30\x80") is None                   # the length goes on
    for bad, why in ((b"\x30\x80\x80\x80\x80\x01", "bad remaining length"),
                     (b"\x30\x81\x40", "packet too large")):           # 8193 > MAX_PACKET
        assert _refusal(OSError, mqtt.split_packet, bad) == why


def test_mqtt_connect_packet_carries_will_and_login(tmp):
    pkt = mqtt.connect_packet("jkt-1", 30, True, ("siaga/v1/dev/jkt-1/will", b"W", False), "jkt-1", "pw")
    ptype, body, used = mqtt.split_packet(pkt)
    assert ptype == 0x10 and used == len(pkt)
    assert body[:7] == b"\x00\x04MQTT\x04"
    assert body[7] == 0x02 | 0x04 | 0x08 | 0x80 | 0x40   # clean, will, will QoS 1, user, password
    assert body[8:10] == b"\x00\x1e"                       # keepalive 30 s
    assert body.endswith(b"\x00\x05jkt-1\x00\x02pw")


def test_outbox_keeps_an_alarm_in_ram_when_the_flash_fails(tmp):
    box = Outbox(tmp)
    os.rmdir(tmp + "/outbox")   # the file system is gone from under it
    box.put(4, b"frame")
    assert box.fault
    assert box.seqs() == [4] and box.get(4) == b"frame"
    box.remove(4)
    assert len(box) == 0


# ---------------------------------------------------------------- DNS and SNTP messages


def _dns_reply(qid, name, rcode=0, records=()):
    """A reply as a resolver sends it: the question, then each record's name as a pointer to it."""
    query = udp.dns_query(qid, name)
    flags = 0x8180 | rcode
    out = bytearray(struct.pack("!HHHHHH", qid, flags, 1, len(records), 0, 0)) + query[12:]
    for rtype, rdata in records:
        out += b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, 300, len(rdata)) + rdata
    return bytes(out)


def test_dns_query_is_a_standard_a_query(tmp):
    q = udp.dns_query(0x1234, "mqtt.siaga.go.id")
    assert q[:12] == b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"   # RD, one question
    assert q[12:] == b"\x04mqtt\x05siaga\x02go\x02id\x00\x00\x01\x00\x01"
    for bad in ("", "a..b", "x" * 64 + ".id", ".".join(["abcdefghi"] * 30)):
        _refusal(ValueError, udp.dns_query, 1, bad)


def test_dns_answer_takes_the_first_address_after_a_cname(tmp):
    cname = b"\x03cdn\xc0\x0c"
    reply = _dns_reply(7, "Mqtt.Siaga.go.id", 0, ((5, cname), (1, bytes([10, 20, 30, 40])), (1, b"\x01\x02\x03\x04")))
    assert udp.dns_answer(reply, 7, "mqtt.siaga.go.id") == "10.20.30.40"   # names compare without case


def test_dns_answer_ignores_other_messages_and_reports_failures(tmp):
    good = _dns_reply(7, "mqtt.siaga.go.id", 0, ((1, b"\x0a\x00\x00\x01"),))
    assert udp.dns_answer(good, 8, "mqtt.siaga.go.id") is None             # another query's id
    assert udp.dns_answer(good, 7, "other.siaga.go.id") is None            # another question
    assert udp.dns_answer(udp.dns_query(7, "mqtt.siaga.go.id"), 7, "mqtt.siaga.go.id") is None  # a query
    assert udp.dns_answer(good[:11], 7, "mqtt.siaga.go.id") is None
    looped = bytearray(good)
    looped[12:14] = b"\xc0\x0c"                                             # a pointer to itself
    for data, words in ((_dns_reply(7, "mqtt.siaga.go.id", 3), "no such name"),
                        (_dns_reply(7, "mqtt.siaga.go.id", 2), "server failure"),
                        (_dns_reply(7, "mqtt.siaga.go.id", 0), "no address"),
                        (good[:-2], "truncated"), (bytes(looped), "pointer")):
        why = _refusal(ValueError, udp.dns_answer, data, 7, "mqtt.siaga.go.id")
        assert words in why, (words, why)


def test_server_addresses_and_ipv4_literals(tmp):
    assert udp.is_ipv4("192.168.1.1") and not udp.is_ipv4("192.168.1") and not udp.is_ipv4("256.1.1.1")
    assert not udp.is_ipv4("mqtt.example.go.id") and not udp.is_ipv4("1.2.3.x")
    assert udp.server_address("10.0.0.53", 53) == ("10.0.0.53", 53)
    assert udp.server_address("127.0.0.1:5353", 53) == ("127.0.0.1", 5353)
    for bad in ("dns.google", "10.0.0.53:0", "10.0.0.53:http", ""):
        _refusal(ValueError, udp.server_address, bad, 53)


def test_sntp_reply_gives_unix_time_and_refuses_bad_servers(tmp):
    origin = b"\x12\x34\x56\x78\x9a\xbc\xde\xf1"
    unix = 1795000000

    def reply(first=0x24, stratum=2, seconds=unix + udp.NTP_TO_UNIX_S, echo=origin):
        return bytes([first, stratum]) + bytes(22) + echo + bytes(8) + struct.pack("!II", seconds, 0)

    assert udp.ntp_answer(reply(), origin) == unix
    assert udp.ntp_answer(reply(echo=bytes(8)), origin) is None           # not the answer to our request
    assert udp.ntp_answer(reply(first=0x23), origin) is None              # a client's packet (mode 3)
    assert udp.ntp_answer(reply()[:47], origin) is None
    # Era 1 (after 2036-02-07): the 32-bit count has wrapped.
    assert udp.ntp_answer(reply(seconds=1000), origin) == 0x100000000 + 1000 - udp.NTP_TO_UNIX_S
    for data, words in ((reply(stratum=0), "kiss"), (reply(first=0xE4), "synchronised"), (reply(seconds=0), "no time")):
        why = _refusal(ValueError, udp.ntp_answer, data, origin)
        assert words in why, why


# ---------------------------------------------------------------- edges latched by the board


def test_a_press_latched_during_a_pause_counts_from_its_edge(tmp):
    b = ButtonPanel(("general",), long_ms=1000, cancel_ms=0, debounce_ms=30)
    assert b.update(0, False, 0) is None and b.tick(0) is None
    # The loop was held up from 10 ms to 1500 ms; the press began at 400 ms (latched edge).
    assert b.update(0, True, 1500, 400) is None
    assert b.tick(1500) == TRIGGER            # held 1100 ms since it settled at 430 ms
    # Without the latch the same sample is a press that starts now.
    c = ButtonPanel(("general",), long_ms=1000, cancel_ms=0, debounce_ms=30)
    c.update(0, True, 1500)
    c.tick(1500)
    assert c.update(0, True, 1540) is None and c.tick(1540) is None


def test_a_long_press_released_during_a_pause_still_counts(tmp):
    b = ButtonPanel(("general",), long_ms=1000, cancel_ms=2000, debounce_ms=30)
    b.update(0, True, 0)
    b.update(0, True, 40)
    assert b.tick(40) is None and b.state == "holding"
    # The loop stalls from 50 ms to 2000 ms; the person let go at 1600 ms, after the long press.
    assert b.update(0, False, 2000, 1600) == HELD
    assert b.state == "armed"
    assert b.tick(3700) == TRIGGER            # the cancel window ran from the release it saw
    # A press shorter than the long press, released during a pause, stays a tap.
    c = ButtonPanel(("general",), long_ms=1000, cancel_ms=0, debounce_ms=30)
    c.update(0, True, 0)
    c.update(0, True, 40)
    assert c.update(0, False, 2000, 500) is None and c.tick(2000) is None


def test_device_uses_the_latched_edge_only_if_it_is_newer_than_the_last_sample(tmp):
    hal = ClockHal()
    hal.edges = {}
    hal.edge_at = hal.edges.get
    dev = Device(hal, _config(button={"long_ms": 500, "cancel_ms": 0, "debounce_ms": 20}), tmp)
    _run(dev, hal, 100)
    hal.edges["sos"] = 5                      # an edge long before the last sample: stale
    hal.held["sos"] = True
    _run(dev, hal, 300)
    assert hal.named("alarm") == []           # counted from when the loop saw it, not from 5
    hal.held["sos"] = False
    _run(dev, hal, 100)
    hal.edges["sos"] = hal.now + 5            # an edge during the next pause
    hal.held["sos"] = True
    hal.now += 600                            # the loop was held up for 600 ms
    dev.step()
    assert len(hal.named("alarm")) == 1


# ---------------------------------------------------------------- the application, offline

SECRET_HEX = "00" * 31 + "2a"
DEV = "jkt-test-0001"


class ClockHal:
    """A HAL for the core tests: a clock the test advances, inputs it sets, and no network, so the
    Device never opens a socket. Records what it is told."""

    ssl_wrap = None

    def __init__(self):
        self.now = 1000
        self.held = {}
        self.lid_open = False
        self.battery = 4000
        self.nmea = b""
        self.shown = []
        self.events = []
        self.buzzer_on = 0

    def ticks_ms(self):
        return self.now

    def sleep_ms(self, ms):
        self.now += ms

    def time(self):
        return None

    def pressed(self, name):
        return self.held.get(name, False)

    def tamper(self):
        return self.lid_open

    def battery_mv(self):
        return self.battery

    def rssi(self):
        return None

    def network_up(self):
        return False

    def gps_read(self):
        data = self.nmea
        self.nmea = b""
        return data or None

    def indicate(self, state):
        self.shown.append(state)

    def output(self, led, buzzer, status):
        if buzzer:
            self.buzzer_on += 1

    def event(self, name, detail):
        self.events.append((name, detail))

    def feed_watchdog(self):
        pass

    def named(self, name):
        return [d for n, d in self.events if n == name]


def _config(**extra):
    cfg = {"dev": DEV, "secret": SECRET_HEX, "mqtt": {"host": "127.0.0.1", "port": 1},
           "loc": proto.location(-6175392, 106827153, "Jl. Medan Merdeka Barat 12", "31.71.01.1001"),
           "button": {"long_ms": 500, "cancel_ms": 0, "debounce_ms": 20}, "types": ["medical"]}
    cfg.update(extra)
    return load_config(json.dumps(cfg))


def _run(dev, hal, ms):
    end = hal.now + ms
    while hal.now < end:
        dev.step()   # offline: each step sleeps LOOP_MS on the fake clock


def _hold_input(dev, hal, name, ms):
    hal.held[name] = True
    _run(dev, hal, ms)
    hal.held[name] = False
    _run(dev, hal, 100)


def _ack(seq, state, secret_hex=SECRET_HEX, dev=DEV):
    body = proto.encode(proto.ack_body(dev, seq, state, "inc-1", 0))
    return proto.Signer(proto.secret_from_hex(secret_hex)).seal(body)


def _alarm_body(dev, seq):
    return json.loads(dev.signer.open(dev.outbox.get(seq)))


def test_device_long_press_stores_a_signed_alarm_and_shows_sending(tmp):
    hal = ClockHal()
    dev = Device(hal, _config(), tmp)
    assert hal.shown == [indicator.NO_NETWORK]
    _hold_input(dev, hal, "sos", 300)
    assert hal.named("alarm") == []           # a tap
    _hold_input(dev, hal, "medical", 800)
    assert hal.named("alarm") == ["seq=0 kind=medical test=0"]
    body = _alarm_body(dev, 0)
    assert body["kind"] == "medical" and body["test"] is False and body["ts"] is None
    assert body["loc"]["lat_e6"] == -6175392
    assert hal.shown[-1] == indicator.SENDING
    again = Device(ClockHal(), _config(), tmp)  # a reboot before delivery keeps it and shows it
    assert again.outbox.seqs() == [0] and again.hal.shown == [indicator.SENDING]


def test_device_signed_ack_clears_the_outbox_and_states_only_move_forward(tmp):
    hal = ClockHal()
    dev = Device(hal, _config(), tmp)
    seq = dev.raise_alarm()
    topic = proto.topic(DEV, "ack")
    dev.mqtt.on_message(topic, _ack(seq, "received"), False)
    assert hal.named("delivered") == ["seq=%d" % seq] and dev.outbox.seqs() == []
    assert hal.shown[-1] == indicator.RECEIVED
    dev.mqtt.on_message(topic, _ack(seq, "acknowledged"), False)
    assert hal.shown[-1] == indicator.ACKNOWLEDGED
    dev.mqtt.on_message(topic, _ack(seq, "received"), True)   # late or replayed: ignored
    assert hal.shown[-1] == indicator.ACKNOWLEDGED
    dev.mqtt.on_message(topic, _ack(seq, "dispatched"), False)
    assert hal.shown[-1] == indicator.DISPATCHED
    dev.mqtt.on_message(topic, _ack(seq, "acknowledged"), True)   # behind: ignored
    assert hal.shown[-1] == indicator.DISPATCHED
    dev.mqtt.on_message(topic, _ack(seq, "resolved"), False)
    assert hal.shown[-1] == indicator.RESOLVED
    _run(dev, hal, 31000)                     # shown for a while, then ready again
    assert hal.shown[-1] == indicator.NO_NETWORK


def test_device_does_not_show_again_a_state_it_already_showed(tmp):
    hal = ClockHal()
    dev = Device(hal, _config(), tmp)
    seq = dev.raise_alarm()
    topic = proto.topic(DEV, "ack")
    dev.mqtt.on_message(topic, _ack(seq, "received"), False)
    dev.mqtt.on_message(topic, _ack(seq, "resolved"), False)
    _run(dev, hal, 31000)
    assert hal.shown[-1] == indicator.NO_NETWORK
    shown = len(hal.shown)
    # The gateway reconnects and publishes the latest acks again, live and retained.
    dev.mqtt.on_message(topic, _ack(seq, "resolved"), False)
    dev.mqtt.on_message(topic, _ack(seq, "acknowledged"), True)
    _run(dev, hal, 100)
    assert len(hal.shown) == shown and hal.named("ack") == ["seq=%d state=received" % seq,
                                                            "seq=%d state=resolved" % seq]
    # A state further along is news: shown.
    dev.mqtt.on_message(topic, _ack(seq, "false_alarm"), False)
    assert hal.shown[-1] == indicator.FALSE_ALARM


def test_device_shows_an_undelivered_alarm_until_an_operator_acts(tmp):
    hal = ClockHal()
    dev = Device(hal, _config(), tmp)
    seq = dev.raise_alarm()
    topic = proto.topic(DEV, "ack")
    dev.mqtt.on_message(topic, _ack(seq, "received"), False)
    dev.mqtt.on_message(topic, _ack(seq, "undelivered"), False)
    assert hal.shown[-1] == indicator.UNDELIVERED
    dev.mqtt.on_message(topic, _ack(seq, "received"), False)   # cannot go back
    assert hal.shown[-1] == indicator.UNDELIVERED
    dev.mqtt.on_message(topic, _ack(seq, "acknowledged"), False)
    assert hal.shown[-1] == indicator.ACKNOWLEDGED


def test_device_forged_or_foreign_acks_change_nothing(tmp):
    hal = ClockHal()
    dev = Device(hal, _config(), tmp)
    seq = dev.raise_alarm()
    topic = proto.topic(DEV, "ack")
    dev.mqtt.on_message(topic, _ack(seq, "acknowledged", secret_hex="11" * 32), False)
    dev.mqtt.on_message(topic, _ack(seq, "acknowledged", dev="jkt-other-0002"), False)
    dev.mqtt.on_message(topic, _ack(seq, "acknowledged")[:-5] + b"xxxxx", False)   # tampered body
    assert hal.named("ack_rejected") == ["bad signature", "malformed", "bad signature"]
    assert dev.outbox.seqs() == [seq]
    assert indicator.ACKNOWLEDGED not in hal.shown and hal.shown[-1] == indicator.SENDING


def test_device_lid_open_long_press_sends_a_test_alarm_for_a_limited_time(tmp):
    hal = ClockHal()
    dev = Device(hal, _config(test_mode_max_s=60), tmp)
    hal.lid_open = True
    _run(dev, hal, 100)
    assert hal.shown[-1] == indicator.TEST_MODE and hal.named("tamper") == ["1"]
    _hold_input(dev, hal, "sos", 800)
    assert hal.named("alarm")[-1].endswith("test=1")
    dev.mqtt.on_message(proto.topic(DEV, "ack"), _ack(0, "resolved"), False)
    _run(dev, hal, 61000)                      # lid still open, but for too long
    assert hal.shown[-1] == indicator.NO_NETWORK
    _hold_input(dev, hal, "sos", 800)
    assert hal.named("alarm")[-1].endswith("test=0")


def test_device_uses_a_fresh_gps_fix_and_falls_back_to_the_fixed_place(tmp):
    hal = ClockHal()
    dev = Device(hal, _config(gps={"max_age_s": 10}), tmp)
    hal.nmea = (GGA_MUNICH + "\r\n").encode()
    _run(dev, hal, 50)
    seq = dev.raise_alarm()
    loc = _alarm_body(dev, seq)["loc"]
    assert (loc["lat_e6"], loc["lon_e6"]) == (48117300, 11516667)
    assert loc["addr"] == "Jl. Medan Merdeka Barat 12"   # the unit's label stays
    _run(dev, hal, 11000)
    loc = _alarm_body(dev, dev.raise_alarm())["loc"]
    assert (loc["lat_e6"], loc["lon_e6"]) == (-6175392, 106827153)


def test_device_low_battery_is_a_fault_until_it_recovers(tmp):
    hal = ClockHal()
    hal.battery = 3300
    dev = Device(hal, _config(), tmp)
    _run(dev, hal, 50)
    assert hal.named("fault") == ["battery"] and hal.shown[-1] == indicator.FAULT
    hal.battery = 4000
    _run(dev, hal, 10100)
    assert hal.named("fault_cleared") == ["battery"] and hal.shown[-1] == indicator.NO_NETWORK


def test_device_silent_mode_never_sounds_the_buzzer(tmp):
    for silent, expect_sound in ((False, True), (True, False)):
        hal = ClockHal()
        state = tmp + ("/s%d" % silent)
        os.mkdir(state)
        dev = Device(hal, _config(silent=silent, button={"long_ms": 500, "cancel_ms": 2000}), state)
        _hold_input(dev, hal, "sos", 800)     # armed (beeping), then sending (a chirp)
        _run(dev, hal, 2500)
        assert hal.named("alarm"), hal.events
        assert (hal.buzzer_on > 0) == expect_sound, (silent, hal.buzzer_on)


def test_device_full_outbox_drops_the_oldest_press_and_says_so(tmp):
    hal = ClockHal()
    dev = Device(hal, _config(outbox_capacity=2), tmp)
    seqs = [dev.raise_alarm() for _ in range(3)]
    assert dev.outbox.seqs() == seqs[1:]
    assert hal.named("outbox_full") == ["dropped seq=%d" % seqs[0]]
    assert dev.outbox.dropped == 1


def test_config_refuses_timings_the_board_cannot_honour(tmp):
    good = json.loads(json.dumps(_config()))
    load_config(json.dumps(dict(good, watchdog_ms=8000)), "picow")
    load_config(json.dumps(dict(good, watchdog_ms=20000)), "esp32")
    for board, key, value, words in (("picow", "watchdog_ms", 9000, "8388"),
                                     ("esp32", "watchdog_ms", 500, "4000"),
                                     (None, "loop_ms", 100, "0-50"),
                                     (None, "mqtt", dict(good["mqtt"], keepalive_s=5), "10-65535"),
                                     (None, "mqtt", dict(good["mqtt"], keepalive_s=10, timeout_ms=10000),
                                      "less than keepalive"),
                                     (None, "reconnect", {"first_ms": 5000, "max_ms": 1000}, "first_ms-"),
                                     (None, "dns", "dns.google", "IPv4"),
                                     (None, "outbox_capacity", 0, "1-64")):
        cfg = dict(good)
        cfg[key] = value
        why = _refusal(ValueError, load_config, json.dumps(cfg), board)
        assert key in why and words in why, why
    assert "board" in _refusal(ValueError, load_config, json.dumps(good), "esp8266")


def test_config_errors_say_what_to_write(tmp):
    good = json.loads(json.dumps(_config()))
    for key, value, words in (("dev", "Bad_Id", "a-z"), ("secret", "abc", "64 hex"),
                              ("kind", "flood", "medical"), ("types", ["sos"], "medical"),
                              ("loc", {"lat_e6": "-6.1", "lon_e6": 1, "addr": "", "area": ""}, "integers"),
                              ("button", {"long_ms": 10}, "at least 100")):
        cfg = json.loads(json.dumps(good))
        cfg[key] = value
        why = _refusal(ValueError, load_config, json.dumps(cfg))
        assert key in why and words in why, why



# ---------------------------------------------------------------- the SMS path (modem.py, app.py)

GATEWAY_NUMBER = "+6281100000001"


class FakeModem:
    """A scripted text-mode modem (TS 27.005 §3) on the driver's read/write: answers each command
    line at once. `answer = False` makes it mute; `cms` fails that many AT+CMGS with +CMS ERROR."""

    def __init__(self):
        self.rx = b""
        self.lines = []          # command lines received
        self.answer = True
        self.registered = True
        self.cms = 0
        self.stored = {}         # index -> (sender, text)
        self.sent = []           # (number, text)
        self._to = None          # the number of an AT+CMGS whose text is being entered

    def read(self):
        data = self.rx
        self.rx = b""
        return data or None

    def _say(self, *lines):
        for line in lines:
            self.rx += b"\r\n" + line.encode() + b"\r\n"

    def deliver(self, index, sender, text):
        self.stored[index] = (sender, text)
        self._say('+CMTI: "SM",%d' % index)

    def write(self, data):
        if data == b"\x1b" or not self.answer:
            return
        if self._to is not None:
            to, self._to = self._to, None
            if self.cms:
                self.cms -= 1
                self._say("+CMS ERROR: 500")
            else:
                self.sent.append((to, data[:-1].decode()))
                self._say("+CMGS: %d" % len(self.sent), "OK")
            return
        cmd = data.decode().strip()
        self.lines.append(cmd)
        if cmd == "AT+CREG?":
            self._say("+CREG: 0,%d" % (1 if self.registered else 2), "OK")
        elif cmd == "AT+CSQ":
            self._say("+CSQ: 17,0", "OK")
        elif cmd == 'AT+CMGL="ALL"':
            for i in sorted(self.stored):
                self._say('+CMGL: %d,"REC UNREAD","%s",,"24/01/01,00:00:00+28"' % (i, self.stored[i][0]),
                          self.stored[i][1])
            self._say("OK")
        elif cmd.startswith("AT+CMGR="):
            got = self.stored.get(int(cmd[8:]))
            if got:
                self._say('+CMGR: "REC UNREAD","%s",,"24/01/01,00:00:00+28"' % got[0], got[1])
            self._say("OK")
        elif cmd.startswith("AT+CMGD="):
            self.stored.pop(int(cmd[8:]), None)
            self._say("OK")
        elif cmd.startswith("AT+CMGS="):
            self._to = cmd[9:-1]
            self.rx += b"\r\n> "
        else:
            self._say("OK")


def _modem(fake, events, clock):
    from siagafw.modem import Modem

    m = Modem(fake.read, fake.write, lambda n, d: events.append((n, d)), lambda: clock[0])
    got = []
    m.on_sms = lambda sender, text: got.append((sender, text))
    m.on_sent = lambda tag, ok, detail: got.append((tag, ok, detail))
    return m, got


def _modem_run(m, clock, ms, step=10):
    end = clock[0] + ms
    while clock[0] < end:
        m.step(clock[0])
        clock[0] += step


def test_modem_initialises_reads_deletes_and_sends_with_retries(tmp):
    fake = FakeModem()
    fake.stored[1] = ("+62999", "arrived while off")
    events, clock = [], [0]
    m, got = _modem(fake, events, clock)
    _modem_run(m, clock, 500)
    assert fake.lines[:7] == ["AT", "ATE0", "AT+CMEE=1", "AT+CMGF=1", 'AT+CSCS="GSM"', "AT+CNMI=2,1,0,0,0",
                              'AT+CMGL="ALL"'], fake.lines
    assert events == [("modem_ready", "csq=17")] and m.csq == 17 and m.registered
    assert got == [("+62999", "arrived while off")] and fake.stored == {}  # read, then deleted
    # A new message is announced (+CMTI), read and deleted; line noise around it changes nothing.
    fake.rx += b"\xff\x00garbage\r\n" + b"x" * 500 + b"\r\nOK\r\n"
    fake.deliver(4, GATEWAY_NUMBER, "SG1K hello")
    _modem_run(m, clock, 200)
    assert got[-1] == (GATEWAY_NUMBER, "SG1K hello") and fake.stored == {}
    assert "AT+CMGR=4" in fake.lines and "AT+CMGD=4" in fake.lines
    # +CMS ERROR once: tried again after SEND_RETRY_MS, then sent.
    fake.cms = 1
    assert m.send(GATEWAY_NUMBER, "SG1T a 1 b", "t1")
    _modem_run(m, clock, 1000)
    assert fake.sent == [] and m.pending() == 1
    _modem_run(m, clock, 5000)
    assert fake.sent == [(GATEWAY_NUMBER, "SG1T a 1 b")] and got[-1] == ("t1", True, "1")
    # Refused every time: reported failed after SEND_TRIES attempts.
    fake.cms = 10
    m.send(GATEWAY_NUMBER, "SG1T a 2 b", "t2")
    _modem_run(m, clock, 40000)
    assert got[-1] == ("t2", False, "+CMS ERROR: 500") and m.pending() == 0
    # Without network, sends wait (and the fault is said once); they go when it returns.
    fake.cms = 0
    fake.registered = False
    _modem_run(m, clock, 61000)
    m.send(GATEWAY_NUMBER, "SG1T a 3 b", "t3")
    _modem_run(m, clock, 30000)
    assert [e for e in events if e[0] == "modem_fault"] == [("modem_fault", "not registered (stat 2)")]
    assert len(fake.sent) == 1
    fake.registered = True
    _modem_run(m, clock, 11000)
    assert len(fake.sent) == 2 and events[-1] == ("modem_ready", "csq=17")


def test_modem_without_answers_is_a_fault_and_recovers(tmp):
    fake = FakeModem()
    fake.answer = False
    events, clock = [], [0]
    m, _ = _modem(fake, events, clock)
    _modem_run(m, clock, 120000)
    assert events == [("modem_fault", "no answer")], events     # once, however many retries
    assert fake.lines == [] and not m.ready()
    fake.answer = True
    _modem_run(m, clock, 70000)                                  # the backoff is at most 60 s
    assert m.ready() and events[-1] == ("modem_ready", "csq=17")
    # The modem restarts by itself ("RDY"): initialised again at once.
    n = len(fake.lines)
    fake.rx += b"\r\nRDY\r\n"
    _modem_run(m, clock, 500)
    assert events[-2:] == [("modem_fault", "modem restarted"), ("modem_ready", "csq=17")], events
    assert fake.lines[n] == "AT"


class SmsHal(ClockHal):
    def __init__(self, fake):
        ClockHal.__init__(self)
        self.fake = fake
        self.modem_read = fake.read
        self.modem_write = fake.write


def test_device_sends_an_unacked_alarm_by_sms_once_and_takes_a_signed_sms_ack(tmp):
    from siagafw import sms

    fake = FakeModem()
    hal = SmsHal(fake)
    dev = Device(hal, _config(sms={"gateway": GATEWAY_NUMBER, "fallback_s": 30}), tmp)
    _run(dev, hal, 1000)
    assert hal.named("modem_ready") == ["csq=17"]
    _hold_input(dev, hal, "sos", 600)
    seq = dev.outbox.seqs()[0]
    _run(dev, hal, 8000)   # no network: after NET_DOWN_FAILURES attempts the SMS goes at once
    assert len(fake.sent) == 1 and fake.sent[0][0] == GATEWAY_NUMBER
    signer = dev.signer
    msg = sms.open(signer, fake.sent[0][1])
    assert msg["type"] == "alarm" and msg["seq"] == seq and msg["kind"] == "general"
    assert (msg["lat_e6"], msg["lon_e6"], msg["ts"]) == (-6175392, 106827153, None)
    assert hal.named("sms_sent") == ["seq=%d kind=alarm" % seq]
    _run(dev, hal, 60000)
    assert len(fake.sent) == 1                                  # once
    other = proto.Signer(proto.secret_from_hex("11" * 32))
    fake.deliver(1, "+62999", sms.ack_text(other, DEV, seq, "received", 5))
    fake.deliver(2, "+62999", sms.ack_text(signer, "jkt-other-0002", seq, "received", 5))
    fake.deliver(3, "+62999", sms.ack_text(signer, DEV, seq + 7, "received", 5))
    fake.deliver(4, "+62999", "hello")
    _run(dev, hal, 500)
    assert hal.named("sms_rejected") == ["bad signature", "other device", "replayed ack seq=%d" % (seq + 7),
                                         sms.NOT_SIAGA]
    assert dev.outbox.seqs() == [seq] and hal.named("delivered") == []
    fake.deliver(5, GATEWAY_NUMBER, sms.ack_text(signer, DEV, seq, "received", 5))
    _run(dev, hal, 500)
    assert hal.named("delivered") == ["seq=%d" % seq] and dev.outbox.seqs() == []
    assert hal.named("ack") == ["seq=%d state=received via=sms" % seq] and hal.shown[-1] == "received"
    fake.deliver(6, GATEWAY_NUMBER, sms.ack_text(signer, DEV, seq, "received", 5))   # a replay
    fake.deliver(7, GATEWAY_NUMBER, sms.ack_text(signer, DEV, seq, "dispatched", 9))  # news
    _run(dev, hal, 500)
    assert hal.named("sms_rejected")[-1] == "replayed ack seq=%d" % seq
    assert hal.named("ack")[-1] == "seq=%d state=dispatched via=sms" % seq
    # The backup-path test SMS and its ack.
    test_seq = dev.sms_test()
    _run(dev, hal, 500)
    assert sms.open(signer, fake.sent[-1][1]) == {"type": "test", "dev": DEV, "seq": test_seq}
    fake.deliver(8, GATEWAY_NUMBER, sms.ack_text(signer, DEV, test_seq, "test", 9))
    fake.deliver(9, GATEWAY_NUMBER, sms.ack_text(signer, DEV, test_seq, "test", 9))
    _run(dev, hal, 500)
    assert hal.named("sms_test_ok") == ["seq=%d" % test_seq]
    assert hal.named("sms_rejected")[-1] == "replayed test ack seq=%d" % test_seq


def test_device_falls_back_to_sms_after_fallback_s_while_the_network_looks_fine(tmp):
    from siagafw import modem

    fake = FakeModem()
    hal = SmsHal(fake)
    dev = Device(hal, _config(sms={"gateway": GATEWAY_NUMBER, "fallback_s": 20}), tmp)
    saved = modem.NET_DOWN_FAILURES
    modem.NET_DOWN_FAILURES = 1 << 30   # as if every connect attempt were still under way
    try:
        _run(dev, hal, 1000)
        seq = dev.raise_alarm()
        _run(dev, hal, 19000)
        assert fake.sent == []
        _run(dev, hal, 2000)
        assert [t.split()[2] for _, t in fake.sent] == [str(seq)]
    finally:
        modem.NET_DOWN_FAILURES = saved


def test_config_checks_the_sms_path(tmp):
    good = json.loads(json.dumps(_config()))
    ok = {"gateway": GATEWAY_NUMBER}
    load_config(json.dumps(dict(good, sms=dict(ok, fallback_s=5, test_every_s=0, device="/dev/ttyUSB1"))), "unix")
    load_config(json.dumps(dict(good, sms=dict(ok, test_every_s=2592000))), "esp32")
    for board, sms, key, words in ((None, {"gateway": "081100000001"}, "sms.gateway", "+"),
                                   (None, {"gateway": "+62 811"}, "sms.gateway", "8-15 digits"),
                                   (None, dict(ok, fallback_s=4), "sms.fallback_s", "5-3600"),
                                   (None, dict(ok, test_every_s=600), "sms.test_every_s", "or 0"),
                                   ("esp32", dict(ok, device="/dev/ttyUSB1"), "sms.device", "unix"),
                                   (None, [], "sms", "gateway")):
        why = _refusal(ValueError, load_config, json.dumps(dict(good, sms=sms)), board)
        assert key in why and words in why, why


# ---------------------------------------------------------------- remote configuration (remote.py)

NEW_LOC = {"lat_e6": -6200000, "lon_e6": 106816666, "addr": "Jl. M.H. Thamrin 1", "area": "31.71.02.1001"}


def _config_msg(ver, changes, secret_hex=SECRET_HEX, dev=DEV):
    body = proto.encode({"v": 1, "type": "config", "dev": dev, "ver": ver, "set": changes})
    return proto.Signer(proto.secret_from_hex(secret_hex)).seal(body)


def _button_with_file(tmp, **extra):
    """A Device whose config lives in tmp/config.json and whose flash is tmp/flash."""
    path = tmp + "/config.json"
    with open(path, "w") as f:
        f.write(json.dumps(_config(**extra)))
    flash = tmp + "/flash"
    try:
        os.mkdir(flash)
    except OSError:
        pass
    with open(path) as f:
        cfg = load_config(f.read(), "unix")
    hal = ClockHal()
    return Device(hal, cfg, flash, path, "unix"), hal


def _read(path):
    with open(path) as f:
        return f.read()


def test_device_applies_a_signed_remote_config_keeps_it_and_never_applies_a_version_twice(tmp):
    dev, hal = _button_with_file(tmp)
    topic = proto.topic(DEV, "config")
    assert dev.cfg_ver == 0 and dev.cfg_bad is None
    changes = {"loc": NEW_LOC, "heartbeat_s": 30, "retry": {"first_ms": 1000, "max_ms": 8000},
               "reconnect": {"max_ms": 20000}}
    dev.mqtt.on_message(topic, _config_msg(1, changes), True)
    assert hal.named("config_applied") == ["ver=1 keys=heartbeat_s,loc,reconnect,retry"], hal.events
    assert (dev.cfg_ver, dev.heartbeat_s, dev.resend_first_ms, dev.resend_max_ms) == (1, 30, 1000, 8000)
    assert (dev._reconnect.first_ms, dev._reconnect.max_ms) == (500, 20000)   # merged key by key
    assert _alarm_body(dev, dev.raise_alarm())["loc"] == NEW_LOC               # the next alarm
    saved = load_config(_read(tmp + "/config.json"), "unix")
    assert saved["loc"] == NEW_LOC and saved["secret"] == SECRET_HEX and saved["types"] == ["medical"]
    assert saved["reconnect"] == {"max_ms": 20000}
    assert _read(tmp + "/flash/cfgver").strip() == "1"
    assert "config.json.new" not in os.listdir(tmp) and "cfgver.new" not in os.listdir(tmp + "/flash")
    dev.mqtt.on_message(topic, _config_msg(1, changes), True)            # the retained copy again
    assert hal.named("config_seen") == ["ver=1"] and len(hal.named("config_applied")) == 1
    # A reboot: the new settings come from the file, the version from the flash.
    hal2 = ClockHal()
    again = Device(hal2, saved, tmp + "/flash", tmp + "/config.json", "unix")
    assert again.cfg_ver == 1 and again.loc == NEW_LOC and again.heartbeat_s == 30
    again.mqtt.on_message(topic, _config_msg(1, changes), True)
    assert hal2.named("config_seen") == ["ver=1"] and hal2.named("config_applied") == []
    before = _read(tmp + "/config.json")
    again.mqtt.on_message(topic, _config_msg(2, changes), False)         # the same settings, again
    assert hal2.named("config_applied") == ["ver=2 keys=heartbeat_s,loc,reconnect,retry"]
    assert json.loads(_read(tmp + "/config.json")) == json.loads(before) and again.cfg_ver == 2


def test_device_refuses_forged_malformed_and_invalid_remote_configs(tmp):
    dev, hal = _button_with_file(tmp)
    topic = proto.topic(DEV, "config")
    before = _read(tmp + "/config.json")
    good = {"loc": NEW_LOC}
    for msg in (_config_msg(1, good, secret_hex="11" * 32), _config_msg(1, good)[:-3] + b"xx}"):
        dev.mqtt.on_message(topic, msg, True)
    for ver in (0, True, -1, proto.CONFIG_VER_MAX + 1, "1"):
        dev.mqtt.on_message(topic, _config_msg(ver, good), True)
    dev.mqtt.on_message(topic, _config_msg(1, good, dev="jkt-other-0002"), True)
    assert hal.named("config_rejected") == ["bad signature"] * 2 + ["malformed"] * 6
    for ver, changes, words in ((3, {"wifi": {"ssid": "x"}}, "unknown key wifi"),
                                (4, {"heartbeat_s": 1}, "heartbeat_s"),
                                (5, {"loc": dict(NEW_LOC, lat_e6=91000000)}, "latitude"),
                                (6, {"loc": {"lat_e6": 1, "lon_e6": 2, "addr": ""}}, "missing key loc.area"),
                                (7, {"sms": {"gateway": GATEWAY_NUMBER, "device": "/dev/ttyS0"}},
                                 "unknown key sms.device"),
                                (8, {"retry": {"first_ms": 9000, "max_ms": 1000}}, "retry.max_ms"),
                                (9, [1], "not an object")):
        dev.mqtt.on_message(topic, _config_msg(ver, changes), True)
        why = hal.named("config_rejected")[-1]
        assert why.startswith("ver=%d " % ver) and words in why, why
        assert dev.cfg_bad == ver
    dev.mqtt.on_message(topic, _config_msg(9, [1]), True)               # a refused version comes back
    assert hal.named("config_seen") == ["ver=9"]
    assert hal.named("config_applied") == [] and dev.cfg_ver == 0 and dev.loc != NEW_LOC
    assert _read(tmp + "/config.json") == before and "cfgver" not in os.listdir(tmp + "/flash")
    dev.mqtt.on_message(topic, _config_msg(10, good), True)              # a good one after them
    assert hal.named("config_applied") == ["ver=10 keys=loc"] and dev.cfg_bad == 9


def test_remote_config_writes_the_file_before_its_version(tmp):
    """A power cut between the two writes: the new settings are on flash with the old version, and
    the same message applied again after the reboot gives the same file."""
    dev, _ = _button_with_file(tmp)
    topic = proto.topic(DEV, "config")
    written = []
    real = remote._write

    def cut_after_first(path, text):
        if written:
            raise OSError(5, "power cut")
        real(path, text)
        written.append(path)

    remote._write = cut_after_first
    try:
        dev.mqtt.on_message(topic, _config_msg(1, {"heartbeat_s": 30}), True)
    finally:
        remote._write = real
    assert written == [tmp + "/config.json"]
    text = _read(tmp + "/config.json")
    assert load_config(text, "unix")["heartbeat_s"] == 30 and "cfgver" not in os.listdir(tmp + "/flash")
    hal2 = ClockHal()
    again = Device(hal2, load_config(text, "unix"), tmp + "/flash", tmp + "/config.json", "unix")
    assert again.cfg_ver == 0
    again.mqtt.on_message(topic, _config_msg(1, {"heartbeat_s": 30}), True)
    assert hal2.named("config_applied") == ["ver=1 keys=heartbeat_s"]
    assert _read(tmp + "/config.json") == text and _read(tmp + "/flash/cfgver").strip() == "1"


def test_a_remote_config_that_fails_to_apply_is_refused_not_a_crash(tmp):
    """Out of memory while the checker loads, say: the retained copy would otherwise crash the
    button again at every connect."""
    dev, hal = _button_with_file(tmp)
    real = remote.apply

    def no_memory(*args):
        raise MemoryError("memory allocation failed")

    remote.apply = no_memory
    try:
        dev.mqtt.on_message(proto.topic(DEV, "config"), _config_msg(1, {"heartbeat_s": 30}), True)
    finally:
        remote.apply = real
    assert hal.named("config_rejected") == ["ver=1 MemoryError: memory allocation failed"]
    assert dev.cfg_bad == 1 and dev.cfg_ver == 0 and dev.heartbeat_s == 60


def test_device_without_a_config_file_applies_a_remote_config_in_ram(tmp):
    hal = ClockHal()
    dev = Device(hal, _config(), tmp)
    dev.mqtt.on_message(proto.topic(DEV, "config"), _config_msg(1, {"loc": NEW_LOC}), True)
    assert hal.named("config_applied") == ["ver=1 keys=loc"] and dev.loc == NEW_LOC
    assert "cfgver" not in os.listdir(tmp)


# ---------------------------------------------------------------- signed firmware bundles (bundle.py)
# The tests sign their own bundles: a small Ed25519 signer (RFC 8032 §5.1.6) on the verifier's
# curve arithmetic, itself checked against RFC 8032 §7.1 TEST 1. (No `cryptography` here: this file
# runs under MicroPython too. tests/vectors/ed25519_v1.json checks the verifier against it.)
RFC_TEST1 = ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
             "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
             "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
FLEET_SEED = bytes(range(32))
OTHER_SEED = bytes(range(1, 33))


def _scalar_mult(k):
    acc = ed25519.ZERO
    for i in range(255, -1, -1):
        acc = ed25519.point_double(acc)
        if (k >> i) & 1:
            acc = ed25519.point_add(acc, ed25519.BASE)
    return acc


def _ed_keys(seed):
    h = ed25519.sha512(seed)
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a, h[32:], ed25519.encode_point(_scalar_mult(a))


def _ed_sign(seed, msg):
    a, prefix, public = _ed_keys(seed)
    r = int.from_bytes(ed25519.sha512(prefix + msg), "little") % ed25519.L
    big_r = ed25519.encode_point(_scalar_mult(r))
    k = int.from_bytes(ed25519.sha512(big_r + public + msg), "little") % ed25519.L
    return big_r + ((r + k * a) % ed25519.L).to_bytes(32, "little")


BUNDLE_FILES = [("lib/siagafw/app.mpy", b"M\x06app" * 400), ("main.mpy", b"M\x06main" * 50), ("empty.txt", b"")]


def _bundle(tmp, name="b.bin", seed=FLEET_SEED, files=BUNDLE_FILES, sign_seed=None, listed=None, **fields):
    """A bundle file as `siaga firmware build` writes it; fields override the manifest's."""
    public = _ed_keys(seed)[2]
    man = {"v": 1, "type": "firmware", "version": "0.3.0", "board": "unix", "min_boot": 1,
           "key": bundle.key_id(public),
           "files": [{"name": n, "size": len(d), "sha256": binascii.hexlify(hashlib.sha256(d).digest()).decode()}
                     for n, d in files]}
    man.update(fields)
    if listed is not None:
        man["files"] = listed
    raw = proto.encode(man)
    sig = _ed_sign(sign_seed or seed, hashlib.sha256(raw).digest())
    path = tmp + "/" + name
    with open(path, "wb") as f:
        f.write(bundle.MAGIC + len(raw).to_bytes(4, "big") + raw + sig + b"".join(d for _, d in files))
    return path


def _fleet_keys():
    public = _ed_keys(FLEET_SEED)[2]
    return {bundle.key_id(public): public}


def _reason(fn, *args):
    try:
        fn(*args)
    except bundle.Refused as exc:
        return exc.reason
    raise AssertionError("accepted: %r" % (args,))


def _rewrite(path, new_path, fn):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data = fn(data)
    with open(new_path, "wb") as f:
        f.write(data)
    return new_path


def test_the_test_signer_makes_rfc8032_signatures(tmp):
    seed = binascii.unhexlify(RFC_TEST1[0])
    assert binascii.hexlify(_ed_sign(seed, b"")).decode() == RFC_TEST1[1]
    assert ed25519.verify(_ed_keys(seed)[2], b"", _ed_sign(seed, b""))


def test_bundle_that_is_right_passes_and_returns_its_manifest(tmp):
    m = bundle.check_file(_bundle(tmp), _fleet_keys(), "unix", 1)
    assert m["version"] == "0.3.0" and [f["name"] for f in m["files"]] == [n for n, _ in BUNDLE_FILES]
    assert bundle.check_file(_bundle(tmp, min_boot=3), _fleet_keys(), "unix", 7)["min_boot"] == 3


def test_bundle_header_that_is_broken_is_malformed(tmp):
    good = _bundle(tmp)
    keys = _fleet_keys()
    with open(good, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[6:10], "big")
    cases = {
        "magic": lambda d: b"SGFW2\n" + d[6:],
        "empty": lambda d: b"",
        "cut-in-length": lambda d: d[:8],
        "cut-in-manifest": lambda d: d[:10 + n // 2],
        "cut-in-signature": lambda d: d[:10 + n + 30],
        "cut-in-files": lambda d: d[:-10],
        "trailing-bytes": lambda d: d + b"x",
        "huge-length": lambda d: d[:6] + (1 << 30).to_bytes(4, "big") + d[10:],
        "garbage": lambda d: bytes(range(256)) * 4,
        "manifest-not-json": lambda d: d[:10] + b"{" * n + d[10 + n:],
    }
    for name, fn in cases.items():
        path = _rewrite(good, tmp + "/" + name, fn)
        assert _reason(bundle.check_file, path, keys, "unix", 1) == "malformed", name


def test_bundle_manifest_shape_is_checked_before_anything_is_trusted(tmp):
    keys = _fleet_keys()
    bad = [{"v": 2}, {"type": "config"}, {"version": "0.3"}, {"version": "0.3.x"}, {"min_boot": 0},
           {"min_boot": True}, {"min_boot": 65536}, {"key": "zz" * 8}, {"listed": []},
           {"listed": [{"name": "../main.py", "size": 1, "sha256": "00" * 32}]},
           {"listed": [{"name": "/main.py", "size": 1, "sha256": "00" * 32}]},
           {"listed": [{"name": "Main.py", "size": 1, "sha256": "00" * 32}]},
           {"listed": [{"name": "a.py", "size": -1, "sha256": "00" * 32}]},
           {"listed": [{"name": "a.py", "size": 1, "sha256": "AB" * 32}]},
           {"listed": [{"name": "a.py", "size": 1, "sha256": "00" * 32}] * 2}]
    for fields in bad:
        path = _bundle(tmp, **fields)
        assert _reason(bundle.check_file, path, keys, "unix", 1) == "malformed", fields


def test_bundle_refusals_name_their_reason(tmp):
    keys = _fleet_keys()
    assert _reason(bundle.check_file, _bundle(tmp, "other.bin", seed=OTHER_SEED), keys, "unix", 1) == "unknown_key"
    # The fleet key's id, signed by another key; and a signature with one bit flipped.
    forged = _bundle(tmp, "forged.bin", sign_seed=OTHER_SEED)
    assert _reason(bundle.check_file, forged, keys, "unix", 1) == "bad_signature"
    good = _bundle(tmp)

    def flip_sig(d):
        n = int.from_bytes(d[6:10], "big")
        d[10 + n + 40] ^= 1
        return d

    assert _reason(bundle.check_file, _rewrite(good, tmp + "/s", flip_sig), keys, "unix", 1) == "bad_signature"

    def edit_manifest(d):  # same length, other version: the signature no longer matches
        return bytes(d).replace(b'"version":"0.3.0"', b'"version":"0.9.0"')

    assert _reason(bundle.check_file, _rewrite(good, tmp + "/m", edit_manifest), keys, "unix", 1) == "bad_signature"
    assert _reason(bundle.check_file, good, keys, "esp32", 1) == "wrong_board"
    assert _reason(bundle.check_file, _bundle(tmp, "old.bin", min_boot=2), keys, "unix", 1) == "boot_too_old"

    def flip_file(d):
        d[-5] ^= 1
        return d

    assert _reason(bundle.check_file, _rewrite(good, tmp + "/f", flip_file), keys, "unix", 1) == "wrong_hash"
    many = [("f%d" % i, b"") for i in range(bundle.MAX_FILES + 1)]
    assert _reason(bundle.check_file, _bundle(tmp, "many.bin", files=many), keys, "unix", 1) == "too_large"
    path = _bundle(tmp, "big.bin", listed=[{"name": "big.bin", "size": bundle.MAX_TOTAL + 1, "sha256": "00" * 32}])
    assert _reason(bundle.check_file, path, keys, "unix", 1) == "too_large"


def test_bundle_check_steps_without_waiting(tmp):
    keys = _fleet_keys()
    with open(_bundle(tmp), "rb") as f:
        manifest, signature = bundle.parse_header(f.read)
        rest = f.read()
    check = bundle.ManifestCheck(manifest, signature, keys, "unix", 1)
    steps = 0
    m = None
    while m is None:
        m = check.step(4)
        steps += 1
    assert 60 < steps < 80  # 3 set-up steps, 253 iterations 4 at a time, the final check
    # The files, fed in odd-sized pieces as a download would; current() says where each belongs.
    hasher = bundle.FileHasher(m["files"])
    got = {}
    for i in range(0, len(rest), 7):
        piece = rest[i:i + 7]
        while piece:
            name, left = hasher.current()
            take = piece[:left]
            got[name] = got.get(name, b"") + take
            hasher.update(take)
            piece = piece[len(take):]
    hasher.finish()
    assert hasher.current() is None
    assert got == {n: d for n, d in BUNDLE_FILES if d}
    short = bundle.FileHasher(m["files"])
    short.update(rest[:100])
    assert _reason(short.finish) == "malformed"


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
    test_type_button_long_press_raises_its_kind,
    test_type_button_short_tap_sends_nothing,
    test_any_button_cancels_inside_the_window,
    test_second_button_while_holding_does_not_change_the_kind,
    test_held_button_triggers_once_until_all_are_released,
    test_every_state_has_a_pattern_and_the_ack_states_too,
    test_pattern_levels_repeat_or_play_once,
    test_patterns_of_distinct_states_look_different,
    test_dispatched_looks_and_sounds_unlike_every_other_state,
    test_indicator_plays_the_buzzer_once_and_silent_mode_keeps_it_off,
    test_nmea_parses_real_sentences_to_millionths_of_a_degree,
    test_nmea_rejects_checksum_errors_and_reports_no_fix,
    test_gps_reader_assembles_split_and_noisy_input,
    test_backoff_doubles_with_jitter_up_to_the_cap,
    test_clock_before_2024_counts_as_unset,
    test_mqtt_remaining_length_encoding,
    test_mqtt_packets_are_split_only_when_whole,
    test_mqtt_connect_packet_carries_will_and_login,
    test_dns_query_is_a_standard_a_query,
    test_dns_answer_takes_the_first_address_after_a_cname,
    test_dns_answer_ignores_other_messages_and_reports_failures,
    test_server_addresses_and_ipv4_literals,
    test_sntp_reply_gives_unix_time_and_refuses_bad_servers,
    test_a_press_latched_during_a_pause_counts_from_its_edge,
    test_a_long_press_released_during_a_pause_still_counts,
    test_device_uses_the_latched_edge_only_if_it_is_newer_than_the_last_sample,
    test_outbox_keeps_an_alarm_in_ram_when_the_flash_fails,
    test_device_long_press_stores_a_signed_alarm_and_shows_sending,
    test_device_signed_ack_clears_the_outbox_and_states_only_move_forward,
    test_device_does_not_show_again_a_state_it_already_showed,
    test_device_shows_an_undelivered_alarm_until_an_operator_acts,
    test_device_forged_or_foreign_acks_change_nothing,
    test_device_lid_open_long_press_sends_a_test_alarm_for_a_limited_time,
    test_device_uses_a_fresh_gps_fix_and_falls_back_to_the_fixed_place,
    test_device_low_battery_is_a_fault_until_it_recovers,
    test_device_silent_mode_never_sounds_the_buzzer,
    test_device_full_outbox_drops_the_oldest_press_and_says_so,
    test_config_refuses_timings_the_board_cannot_honour,
    test_config_errors_say_what_to_write,
    test_modem_initialises_reads_deletes_and_sends_with_retries,
    test_modem_without_answers_is_a_fault_and_recovers,
    test_device_sends_an_unacked_alarm_by_sms_once_and_takes_a_signed_sms_ack,
    test_device_falls_back_to_sms_after_fallback_s_while_the_network_looks_fine,
    test_config_checks_the_sms_path,
    test_device_applies_a_signed_remote_config_keeps_it_and_never_applies_a_version_twice,
    test_device_refuses_forged_malformed_and_invalid_remote_configs,
    test_remote_config_writes_the_file_before_its_version,
    test_a_remote_config_that_fails_to_apply_is_refused_not_a_crash,
    test_device_without_a_config_file_applies_a_remote_config_in_ram,
    test_the_test_signer_makes_rfc8032_signatures,
    test_bundle_that_is_right_passes_and_returns_its_manifest,
    test_bundle_header_that_is_broken_is_malformed,
    test_bundle_manifest_shape_is_checked_before_anything_is_trusted,
    test_bundle_refusals_name_their_reason,
    test_bundle_check_steps_without_waiting,
]

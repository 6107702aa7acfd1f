"""The button firmware under the real MicroPython unix port while the network misbehaves: a broker
that accepts TCP and never answers (a stalled uplink), a closed port, a DNS server that fails or
stays silent, Wi-Fi that flaps, and a loop held up by a blocking call. Real sockets throughout: a
stalled TCP server and a fake DNS server in this process, the real Mosquitto, gateway and command
center where an alarm has to arrive. The loop's own ticks say how long its steps took.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.firmware import FirmwareProcess, button, device_config, events_at_cc, indicator_states, seq_of
from tests.support.net import FakeDns, StalledServer, free_port
from tests.support.system import System, running_again, shared_system
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.micropython]


@pytest.fixture(scope="module")
def module_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    yield from shared_system(tmp_path_factory.mktemp("system"))


@pytest.fixture
def system(module_system: System) -> System:
    """One broker, command center and gateway for the module: each test has a device of its own
    and asserts only about that device, and what a test kills (the broker) is running again, with
    the gateway connected, before the next one begins."""
    return running_again(module_system)

TIMEOUT_MS = 3000          # mqtt.timeout_ms of tests.support.firmware.device_config
LOOP_BOUND_MS = 50         # the longest gap between two loop steps the firmware may show
BROKER_NAME = "broker.siaga.test"


def stats(fw: FirmwareProcess) -> tuple[int, int]:
    """(steps, longest gap in ms) since the last call, from the firmware's own ticks."""
    fw.send("stats")
    line = fw.expect("EVT stats")
    m = re.fullmatch(r"EVT stats steps=(\d+) loop_max_ms=(\d+)", line)
    assert m, line
    return int(m[1]), int(m[2])


def failures(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("EVT connect_failed ")]


@pytest.mark.e2e
@pytest.mark.mosquitto
def test_presses_during_stalled_connects_are_kept_and_delivered_once(system: System, tmp_path: Path) -> None:
    creds, fw = button(system, tmp_path, "jkt-net-stall-01",
                       button={"long_ms": 1500, "cancel_ms": 0, "debounce_ms": 30})
    cfg = json.loads(fw.config_path.read_text())
    cfg["mqtt"]["timeout_ms"] = 1500             # keeps the test short: each attempt 1.5 s of silence
    fw.config_path.write_text(json.dumps(cfg))
    port = system.broker.port
    offsets_s = (0.1, 0.4, 0.7, 1.0, 1.3)       # into a connect attempt that lasts 1.5 s
    seqs: list[int] = []
    with fw:
        fw.expect("EVT connected")
        system.broker.kill()                    # the uplink stalls: TCP still gets through...
        fw.expect("EVT link_lost")
        with StalledServer(port) as stalled:    # ...to something that never answers
            for offset in offsets_s:
                seen = len(stalled.accepted)
                wait_for(lambda n=seen: len(stalled.accepted) > n, timeout_s=15, what="a new connect attempt")
                time.sleep(max(0.0, stalled.accepted[-1] + offset - time.monotonic()))
                mark = len(fw.history)
                fw.hold(2000)
                line = fw.expect("EVT alarm")
                seqs.append(seq_of(line))
                # The resident sees "taken, kept until sent" at once, as when online.
                fw.expect("IND sending")
                assert not [x for x in fw.history[mark:] if x.startswith("EVT connected")]
            fw.drain(0.2)
            assert fw.outbox() == seqs          # all five kept in flash, none lost
            assert len(seqs) == len(set(seqs)) == len(offsets_s)
            assert any("no CONNACK" in x for x in failures(fw.history)), failures(fw.history)
        system.broker.start()                   # a real broker appears on the same address
        for seq in seqs:
            fw.expect(f"EVT delivered seq={seq}", timeout_s=30)
        assert fw.outbox() == []
        fw.drain(1.0)
    delivered = wait_for(lambda: sorted(e["seq"] for e in events_at_cc(system, creds.device_id))
                         if len(events_at_cc(system, creds.device_id)) >= len(seqs) else None,
                         timeout_s=20, what="every alarm at the command center")
    assert delivered == sorted(seqs)            # each exactly once


def test_loop_keeps_its_pace_through_stalled_refused_and_unresolvable_connects(tmp_path: Path) -> None:
    # Short attempts and a low backoff cap, so that each phase sees several attempts in a few seconds.
    timeout_ms, backoff_max_ms = 1500, 2000
    with FakeDns() as dns, StalledServer() as stalled:
        cfg = device_config("jkt-net-loop-01", "ab" * 32, stalled.port, "pw-loop", dns=dns.server,
                            reconnect={"first_ms": 500, "max_ms": backoff_max_ms})
        cfg["mqtt"]["host"] = BROKER_NAME
        cfg["mqtt"]["timeout_ms"] = timeout_ms
        with FirmwareProcess(tmp_path / "fw", cfg) as fw:
            assert fw.expect("EVT resolved") == f"EVT resolved {BROKER_NAME}=127.0.0.1"
            stats(fw)                                           # start counting now
            phases = {}

            fw.drain(9.0)                                       # 1: the broker accepts TCP, then silence
            phases["stalled"] = stats(fw)
            assert len(stalled.accepted) >= 3, stalled.accepted
            assert all("no CONNACK" in x for x in failures(fw.history)), failures(fw.history)
            # Backoff from when an attempt ended: the next begins the announced delay after the
            # previous attempt's TIMEOUT_MS, never back to back.
            delays = [int(x.rsplit("retry in ", 1)[1].split()[0]) for x in failures(fw.history)]
            gaps = [b - a for a, b in zip(stalled.accepted, stalled.accepted[1:], strict=False)]
            for gap, delay in zip(gaps, delays, strict=False):
                assert gap >= (timeout_ms + delay) / 1000 - 0.1, (gaps, delays)

            stalled.close()                                     # 2: nothing listens: refused at once
            lines = fw.drain(8.0)
            phases["refused"] = stats(fw)
            # The attempt under way when the server went may end any of three ways: its connection
            # closed cleanly or reset (depending on whether the listener's close found it still
            # queued), or its CONNACK wait expiring just before the close, with the line read only
            # now. No attempt after it waits for a CONNACK.
            ends = ("refused", "closed by broker", "ECONNRESET")
            first, *rest = failures(lines)
            assert any(x in first for x in (*ends, "no CONNACK")), first
            assert rest and all(any(x in line for x in ends) for line in rest), failures(lines)
            assert any("refused" in x for x in rest), failures(lines)
            assert len(dns.queries) >= 2                        # looked up again after repeated failures

            dns.mode = "servfail"                               # 3: the DNS server fails...
            lines = fw.drain(8.0)
            dns.mode = "silent"                                 # ...then stops answering
            lines += fw.drain(9.0)
            phases["dns"] = stats(fw)
            reasons = " ".join(failures(lines))
            assert "DNS: server failure" in reasons and "DNS: no answer" in reasons, reasons

    for name, (steps, longest_ms) in phases.items():
        assert longest_ms < LOOP_BOUND_MS, (name, phases)
        assert steps > 10_000 // LOOP_BOUND_MS, (name, phases)  # the loop ran all along


def test_a_press_that_began_while_the_loop_was_held_up_counts_from_its_start(tmp_path: Path) -> None:
    cfg = device_config("jkt-net-latch-01", "ab" * 32, free_port(), "pw-latch",
                        button={"long_ms": 1000, "cancel_ms": 0, "debounce_ms": 30})
    with FirmwareProcess(tmp_path / "fw", cfg) as fw:
        fw.expect("EVT boot")

        def press_across_a_stall() -> list[str]:
            """Held 1.9 s in all, of which the loop sees only the last 0.4 s."""
            fw.send("stall 3000")
            fw.expect("EVT stall")
            began = time.monotonic()
            time.sleep(1.5)
            fw.send("press sos")
            time.sleep(max(0.0, began + 3.4 - time.monotonic()))
            fw.send("release sos")
            return fw.drain(1.5)

        fw.send("latch 0")                      # a board without the Pin.irq latch
        without = press_across_a_stall()
        fw.send("latch 1")
        with_latch = press_across_a_stall()
    assert not [x for x in without if x.startswith("EVT alarm")], without
    assert [x for x in with_latch if x.startswith("EVT alarm")], with_latch


@pytest.mark.e2e
@pytest.mark.mosquitto
def test_the_broker_name_is_looked_up_once_and_again_after_repeated_failures(system: System, tmp_path: Path) -> None:
    with FakeDns() as dns:
        creds, fw = button(system, tmp_path, "jkt-net-dns-01", dns=dns.server)
        cfg = json.loads(fw.config_path.read_text())
        cfg["mqtt"]["host"] = BROKER_NAME       # a name, which only the fake DNS server knows
        fw.config_path.write_text(json.dumps(cfg))
        with fw:
            fw.expect("EVT resolved")
            fw.expect("EVT connected")
            for _ in range(2):                  # Wi-Fi drops and returns: the address is kept
                fw.send("net 0")
                fw.expect("EVT link_lost")
                fw.send("net 1")
                fw.expect("EVT connected")
            assert dns.queries == [BROKER_NAME]

            system.broker.kill()
            for _ in range(3):
                fw.expect("EVT connect_failed", timeout_s=15)
            wait_for(lambda: len(dns.queries) == 2, timeout_s=15, what="a second lookup")
            system.broker.start()
            fw.expect("EVT connected", timeout_s=20)
            fw.hold(600)
            seq = seq_of(fw.expect("EVT alarm"))
            fw.expect(f"EVT delivered seq={seq}", timeout_s=20)
    assert len(dns.queries) >= 2 and set(dns.queries) == {BROKER_NAME}
    assert [e["seq"] for e in wait_for(lambda: events_at_cc(system, creds.device_id))] == [seq]


@pytest.mark.e2e
@pytest.mark.mosquitto
def test_flapping_wifi_is_not_up_until_it_has_stayed_up(system: System, tmp_path: Path) -> None:
    _, fw = button(system, tmp_path, "jkt-net-flap-01")
    with fw:
        fw.expect("EVT connected")
        fw.send("net 0")
        fw.expect("EVT link_lost")
        mark = len(fw.history)
        for _ in range(4):                      # an access point at the edge of range
            fw.send("net 1")
            fw.drain(0.8)
            fw.send("net 0")
            fw.drain(0.3)
        assert not fw.seen("EVT connected")[1:], fw.history[mark:]
        fw.send("net 1")
        up = time.monotonic()
        fw.expect("EVT connected")
        assert time.monotonic() - up >= 1.9     # NET_SETTLE_MS of steady Wi-Fi first


@pytest.mark.e2e
@pytest.mark.mosquitto
def test_a_press_while_offline_shows_and_sounds_the_same_as_online(system: System, tmp_path: Path) -> None:
    _, fw = button(system, tmp_path, "jkt-net-offline-01", button={"long_ms": 300, "cancel_ms": 400,
                                                                   "debounce_ms": 20})

    def press() -> list[str]:
        mark = len(fw.history)
        fw.hold(500)
        fw.expect("EVT alarm")
        fw.expect("IND sending")
        fw.drain(0.5)
        return fw.history[mark:]

    with fw:
        fw.expect("EVT connected")
        online = press()
        if "IND received" not in online:
            fw.expect("IND received", timeout_s=5)
        fw.drain(3.5)                           # the "received" beeps are over
        fw.send("net 0")
        fw.expect("EVT link_lost")
        offline = press()

    def shown(lines: list[str]) -> list[str]:
        states = [x.split()[1] for x in lines if x.startswith("IND")]
        return states[states.index("armed"):][:2]

    def chirped(lines: list[str]) -> bool:
        after = lines[lines.index("IND sending"):]
        return any(x.startswith("OUT ") and x.split()[2] == "1" for x in after)

    assert shown(online) == shown(offline) == ["armed", "sending"], (online, offline)
    assert chirped(online) and chirped(offline)
    assert indicator_states(fw)[-1] == "sending"   # kept until sent


def test_wifi_lost_during_a_lookup_ends_it_and_backs_off(tmp_path: Path) -> None:
    with FakeDns() as dns:
        dns.mode = "silent"
        cfg = device_config("jkt-net-dnsdown-01", "ab" * 32, free_port(), "pw", dns=dns.server, net_settle_ms=0)
        cfg["mqtt"]["host"] = BROKER_NAME
        with FirmwareProcess(tmp_path / "fw", cfg) as fw:
            wait_for(lambda: dns.queries, timeout_s=10, what="a lookup under way")
            fw.send("net 0")
            lines = fw.drain(3.0)
            down = [x for x in lines if x.startswith("EVT connect_failed no network")]
            assert 1 <= len(down) <= 6, down             # backoff 0.5, 1, 2 s..., not every step
            dns.mode = "answer"
            fw.send("net 1")
            assert fw.expect("EVT resolved") == f"EVT resolved {BROKER_NAME}=127.0.0.1"

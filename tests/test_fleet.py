"""The fleet simulator against real Mosquitto, the gateway and the command center: in the disaster
scenario 500 buttons (each running the firmware core) are pressed within seconds, many of them
repeatedly, and every press is accounted for at the command center exactly once."""

from __future__ import annotations

import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from siaga.broker.process import MosquittoProcess
from siaga.devices.fleet import Fleet, disaster, power_cut
from siaga.devices.sites import fleet_sites
from siagafw import proto
from tests.support.firmware import device_config
from tests.support.mosquitto import MqttClient
from tests.support.system import System
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]


def make_fleet(system: System, n: int, tmp_path: Path, prefix: str = "") -> Fleet:
    sites = list(fleet_sites(n))
    # One rewrite of the password file and one HTTP connection for all of them: registering 500
    # devices one request each took most of a minute.
    made = system.new_devices_named(prefix + site.device_id for site in sites)
    configs = [device_config(creds.device_id, creds.secret_hex, system.broker.port, creds.mqtt_password,
                             loc=site.location(), heartbeat_s=60,
                             button={"long_ms": 1500, "cancel_ms": 0, "debounce_ms": 30})
               for site, creds in zip(sites, made, strict=True)]
    return Fleet(configs, tmp_path / "fleet")


def wait_connected(fleet: Fleet, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while fleet.shown()["idle"] < len(fleet.devices):
        assert time.monotonic() < deadline, fleet.shown()
        time.sleep(0.2)


def cc_events(system: System) -> list[tuple[str, int]]:
    db = sqlite3.connect(system.cc.db_path)
    try:
        return [(r[0], r[1]) for r in db.execute("SELECT device_id, seq FROM alarms ORDER BY id")]
    finally:
        db.close()


def test_disaster_with_500_buttons_every_press_arrives_exactly_once(system: System, tmp_path: Path) -> None:
    fleet = make_fleet(system, 500, tmp_path).start()
    try:
        wait_connected(fleet)
        plan = disaster(fleet, random.Random(11))
        fleet.wait_settled(plan.duration_s + 30)
        deadline = time.monotonic() + 60
        while fleet.undelivered() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert fleet.undelivered() == {}
        raised = fleet.raised()
        presses = sum(entry.presses for entry in fleet.log.values())
        assert sum(len(v) for v in raised.values()) == presses   # one alarm per long press, none lost
        assert len(raised) == 400                                # 80 % of the buttons
        assert presses > 500                                     # many pressed more than once

        want = sorted((d, s) for d, seqs in raised.items() for s in seqs)
        deadline = time.monotonic() + 60
        while len(got := cc_events(system)) < len(want) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(got) == len(set(got)), "an alarm reached the command center twice"
        assert sorted(got) == want
        # Repeated presses of one button are updates of one incident, not new incidents.
        incidents = httpx.get(f"{system.cc.url}/api/v1/incidents?limit=1000", headers=system.cc.operator_headers(),
                              timeout=10).json()
        assert len(incidents) == len(raised)
        assert sum(i["press_count"] for i in incidents) == presses
    finally:
        fleet.stop()


def test_power_cut_takes_buttons_offline_together_and_back(system: System, tmp_path: Path) -> None:
    fleet = make_fleet(system, 20, tmp_path, prefix="pc-").start()
    try:
        wait_connected(fleet)
        out_s = 8.0
        started = time.monotonic()
        power_cut(fleet, random.Random(3), share=0.5, out_s=out_s)   # cut 2 s from now, back out_s later
        restored = started + 2.0 + out_s
        cut = [d for d, hal in fleet.hals.items()]

        def offline() -> set[str]:
            devices = httpx.get(f"{system.gateway.url}/api/v1/devices", headers=system.gateway.admin_headers,
                                timeout=5).json()
            return {d["id"] for d in devices if "offline" in d["faults"]}

        deadline = time.monotonic() + 8
        while len(offline()) < 10:
            assert time.monotonic() < deadline, offline()
            time.sleep(0.2)
        assert len(offline()) == 10                    # the last wills arrived: half the fleet is down
        assert offline() <= set(cut)
        # Back once the power is: as soon as every button has reported again, not after a fixed
        # wait (the plan's full 40 s), and not before the power returned.
        deadline = restored + 20
        while offline():
            assert time.monotonic() < deadline, offline()
            time.sleep(0.2)
        assert time.monotonic() > restored
    finally:
        fleet.stop()


def dark_spells(read: Callable[[], bool], seconds: float, every_s: float = 0.01) -> list[int]:
    """How many samples each stretch of darkness lasted while `read` was watched for `seconds`
    (a light that was dark at the start or at the end counts too)."""
    spells: list[int] = []
    lit_before = True
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lit = read()
        if not lit:
            if lit_before:
                spells.append(0)
            spells[-1] += 1
        lit_before = lit
        time.sleep(every_s)
    return spells


def test_fleet_button_pulses_for_dispatched_unlike_acknowledged(
        mosquitto: MosquittoProcess, mqtt_client: Callable[..., MqttClient], tmp_path: Path) -> None:
    """A simulated button given the gateway's signed "dispatched" ack (published on the real broker,
    signed here with the button's key) shows its own state and light: the steady light of
    "acknowledged" starts to dip, twice in every 1.4 s (firmware/lib/siagafw/indicator.py)."""
    device_id, secret_hex, password = "fleet-disp-01", "6b" * 32, "fleet-disp-password"
    mosquitto.add_device(device_id, password)
    cfg = device_config(device_id, secret_hex, mosquitto.port, password)
    fleet = Fleet([cfg], tmp_path / "fleet", round_ms=20).start()
    gateway = mqtt_client(mosquitto, mosquitto.gateway_user, mosquitto.gateway_password)
    signer = proto.Signer(proto.secret_from_hex(secret_hex))
    hal, log = fleet.hals[device_id], fleet.log[device_id]

    def ack(seq: int, state: str) -> None:
        body = proto.encode(proto.ack_body(device_id, seq, state, "inc-1", 0))
        gateway.publish(proto.topic(device_id, "ack"), signer.seal(body))
        wait_for(lambda: log.shown == state, what=f"{state} shown")

    try:
        wait_for(lambda: log.shown == "idle", what="button connected")
        fleet.press(device_id, hold_s=0.6)                # past the 300 ms long press
        seq = wait_for(lambda: log.alarms, what="an alarm raised")[0]
        ack(seq, "received")
        ack(seq, "acknowledged")
        acknowledged = dark_spells(lambda: hal.led, 1.5)
        ack(seq, "dispatched")
        dispatched = dark_spells(lambda: hal.led, 3.0)
    finally:
        fleet.stop()
    assert fleet.shown() == Counter({"dispatched": 1}) and log.states[seq] == "dispatched"
    assert acknowledged == [], acknowledged                # steady: never dark
    # Four dips of 200 ms in 3 s (the first may come before the watching starts), each seen in
    # roughly 10 to 40 samples of 10 ms (the fleet steps its buttons every 20 ms, the machine is shared).
    assert 3 <= len(dispatched) <= 5 and all(5 <= n <= 40 for n in dispatched[1:-1]), dispatched

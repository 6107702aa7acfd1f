"""Supervision against real Mosquitto and the real gateway: a button that stops heartbeating is
reported offline within the configured time and online again when it returns; a dropped connection
(last will), low battery and an opened enclosure are faults too, each forwarded to the command
center when it starts and when it clears."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from siaga.broker.process import MosquittoProcess
from tests.support.devices import SimButton
from tests.support.system import System, start_system
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

EVERY_S = 1
MISSED = 3


@pytest.fixture
def system(tmp_path: Path, mosquitto: MosquittoProcess) -> Iterator[System]:
    yield from start_system(tmp_path, mosquitto, extra_toml=f"[supervision]\nmissed_heartbeats = {MISSED}\n"
                                                            "low_battery_mv = 3400\nbattery_hysteresis_mv = 150\n")


def device(system: System, device_id: str) -> dict:
    resp = httpx.get(f"{system.gateway.url}/api/v1/devices/{device_id}", headers=system.gateway.admin_headers,
                     timeout=5)
    resp.raise_for_status()
    return resp.json()


def wait_faults(system: System, device_id: str, want: set[str], timeout_s: float) -> float:
    """Wait until the gateway lists exactly `want` as the device's active faults; return the time taken."""
    start = time.monotonic()
    while True:
        faults = set(device(system, device_id)["faults"])
        if faults == want:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{device_id}: faults {faults}, wanted {want} within {timeout_s} s")
        time.sleep(0.1)


def cc_faults(system: System) -> list[dict]:
    resp = httpx.get(f"{system.cc.url}/api/v1/devices/faults", headers=system.cc.operator_headers(), timeout=5)
    resp.raise_for_status()
    return resp.json()


class Heartbeats:
    """Publish a heartbeat every EVERY_S seconds until stopped."""

    def __init__(self, button: SimButton, **status: object) -> None:
        self.button = button
        self.status = status
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.button.publish("status", self.button.status_frame(every_s=EVERY_S, **self.status))  # type: ignore[arg-type]
            self._stop.wait(EVERY_S)

    def __enter__(self) -> Heartbeats:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_silent_button_goes_offline_in_time_and_comes_back(system: System) -> None:
    button = SimButton(system.new_device("hb-001"), system.broker.port).connect()
    try:
        with Heartbeats(button):
            time.sleep(2.5)
            assert device(system, "hb-001")["faults"] == []
            assert device(system, "hb-001")["heartbeat_s"] == EVERY_S
        # Silence: offline after MISSED intervals (plus the supervisor's 0.5 s tick and slack).
        took = wait_faults(system, "hb-001", {"offline"}, timeout_s=MISSED * EVERY_S + 3)
        assert took >= MISSED * EVERY_S - 1.5  # not declared offline while heartbeats were still due
        with Heartbeats(button):
            wait_faults(system, "hb-001", set(), timeout_s=3)
    finally:
        button.close()
    # The clear travels on to the command center after the gateway recorded it: wait for it there.
    wait_for(lambda: not [f for f in cc_faults(system) if f["device_id"] == "hb-001"], timeout_s=5,
             what="the command center showing hb-001 healthy again")


def test_last_will_marks_offline_at_once(system: System) -> None:
    button = SimButton(system.new_device("will-001"), system.broker.port).connect(with_will=True)
    button.publish("status", button.status_frame(every_s=60))
    wait_faults(system, "will-001", set(), timeout_s=3)
    button.drop()   # no DISCONNECT: the broker publishes the will
    took = wait_faults(system, "will-001", {"offline"}, timeout_s=10)
    assert took < 5  # long before three 60 s heartbeats would have been missed
    # The fault travels on to the command center after the gateway recorded it: wait for it there.
    offline = wait_for(lambda: [f for f in cc_faults(system) if f["device_id"] == "will-001"], timeout_s=5,
                       what="the command center showing will-001's fault")
    assert [f["fault"] for f in offline] == ["offline"]


def test_low_battery_and_tamper_start_and_clear(system: System) -> None:
    button = SimButton(system.new_device("bat-001"), system.broker.port).connect()
    try:
        button.publish("status", button.status_frame(every_s=60, battery_mv=3300, tamper=True))
        wait_faults(system, "bat-001", {"low_battery", "tamper"}, timeout_s=5)
        deadline = time.monotonic() + 10
        while {f["fault"] for f in cc_faults(system) if f["device_id"] == "bat-001"} != {"low_battery", "tamper"}:
            assert time.monotonic() < deadline, cc_faults(system)
            time.sleep(0.2)
        # 3500 mV is above the threshold but inside the hysteresis band: still low.
        button.publish("status", button.status_frame(every_s=60, battery_mv=3500, tamper=False))
        wait_faults(system, "bat-001", {"low_battery"}, timeout_s=5)
        button.publish("status", button.status_frame(every_s=60, battery_mv=3600, tamper=False))
        wait_faults(system, "bat-001", set(), timeout_s=5)
        deadline = time.monotonic() + 10
        while [f for f in cc_faults(system) if f["device_id"] == "bat-001"]:
            assert time.monotonic() < deadline, cc_faults(system)
            time.sleep(0.2)
    finally:
        button.close()
    metrics = system.gateway.metrics()
    assert metrics['faults_total{change="start",fault="low_battery"}'] == 1
    assert metrics['faults_total{change="clear",fault="low_battery"}'] == 1
    assert metrics['faults_total{change="start",fault="tamper"}'] == 1


def test_alarm_reaches_the_operator_with_the_buttons_last_battery_reading(system: System) -> None:
    button = SimButton(system.new_device("batt-002"), system.broker.port).connect()
    try:
        button.publish("status", button.status_frame(every_s=60, battery_mv=3710))
        seq, frame = button.alarm_frame()
        button.publish("alarm", frame)
        button.wait_ack(seq)
    finally:
        button.close()
    deadline = time.monotonic() + 10
    while True:
        found = [i for i in httpx.get(f"{system.cc.url}/api/v1/incidents", headers=system.cc.operator_headers(),
                                      timeout=5).json() if i["device_id"] == "batt-002"]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [i["battery_mv"] for i in found] == [3710]

"""Supervision against real Mosquitto and the real gateway: a button that stops heartbeating is
reported offline within the configured time and online again when it returns; a dropped connection
(last will), low battery and an opened enclosure are faults too, each forwarded to the command
center when it starts and when it clears.

The two paths of a button with a GSM modem (issue 17) are supervised by the same pure supervisor,
driven here by a fake clock: days of daily backup-path tests pass in milliseconds. The store keeps
each path's last success, so a restart or another instance sees what this one saw."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from siaga.broker.process import MosquittoProcess
from siaga.gateway.codec import Alarm, Location
from siaga.gateway.events import fault_event
from siaga.gateway.store import Batch, NewAlarm, open_store
from siaga.gateway.supervision import Fault, FaultChange, SupervisionSettings, Supervisor, backup_down_after_ms
from tests.support.devices import SimButton
from tests.support.system import System, start_system
from tests.support.waiting import wait_for

# The tests against processes; the supervisor's own logic runs in-process with a fake clock.
live = [pytest.mark.e2e, pytest.mark.mosquitto]


def marked(fn):  # type: ignore[no-untyped-def]
    for mark in live:
        fn = mark(fn)
    return fn

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


@marked
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


@marked
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


@marked
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


@marked
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


# ---------------------------------------------------------------- both paths, compressed time

DAY_S = 86_400
T0 = 1_790_000_000_000  # a fixed start (ms): the supervisor only ever compares times


def names(changes: list[FaultChange]) -> list[tuple[str, str, bool]]:
    return [(c.device_id, c.fault.value, c.active) for c in changes]


class Clock:
    """The supervisor's time, moved by hand."""

    def __init__(self) -> None:
        self.ms = T0

    def __call__(self, s: float = 0) -> int:
        self.ms += int(s * 1000)
        return self.ms


def test_both_paths_are_supervised_daily_test_backup_path_and_its_failure() -> None:
    clock = Clock()
    sup = Supervisor(SupervisionSettings(missed_heartbeats=3), clock(), sms_test_every_s=DAY_S)
    for dev in ("gsm-1", "wifi-1"):           # gsm-1 has a modem and a phone registered; wifi-1 has neither
        sup.load(dev, T0, 60, set())
    sup.expect_sms("gsm-1", True)
    assert sup.sms_seen("gsm-1", clock(3600)) == []      # the day's backup-path test: nothing to report
    for dev in ("gsm-1", "wifi-1"):
        assert sup.heartbeat(dev, clock.ms, 60, 3900, False) == []
    # The uplink drops for both: both are offline; gsm-1, heard by SMS within the day, is on its backup path.
    changes = sup.tick(clock(181))
    assert names(changes) == [("gsm-1", "offline", True), ("gsm-1", "on_backup_path", True),
                              ("wifi-1", "offline", True)]
    on_backup = changes[1]
    assert on_backup.detail["last_sms_ms"] == T0 + 3600_000 and on_backup.detail["last_mqtt_ms"] == T0 + 3600_000
    # Its fault event as the command center receives it: the times of both paths as RFC 3339.
    body = json.loads(fault_event("gw-1", on_backup, 7, None)[1])
    assert body["fault"] == "on_backup_path" and body["detail"]["last_sms_at"].endswith("Z")
    assert {"last_mqtt_at", "last_sms_at"} <= body["detail"].keys()
    assert sup.sms_seen("gsm-1", clock(600)) == []       # an SMS alarm meanwhile: still offline, still on backup
    # MQTT returns: offline and on_backup_path clear together.
    assert names(sup.heartbeat("gsm-1", clock(60), 60, 3900, False)) == [("gsm-1", "offline", False),
                                                                        ("gsm-1", "on_backup_path", False)]
    assert names(sup.seen("wifi-1", clock.ms)) == [("wifi-1", "offline", False)]
    # The test SMS stop coming (the SIM's credit ran out). 1.5 days plus ten minutes after the last
    # one, and not a moment before, the backup path is down; wifi-1 has no phone and never is.
    last_sms = T0 + 3600_000 + 181_000 + 600_000
    limit = backup_down_after_ms(DAY_S)
    assert limit == 36 * 3600_000 + 600_000

    def day_goes_by(at: int) -> list[FaultChange]:  # heartbeats keep both online on MQTT
        clock.ms = at
        return [c for dev in ("gsm-1", "wifi-1") for c in sup.heartbeat(dev, at, 60, 3900, False)] + sup.tick(at)

    assert day_goes_by(T0 + DAY_S * 1000) == [] and day_goes_by(last_sms + limit) == []
    down = day_goes_by(last_sms + limit + 1)
    assert names(down) == [("gsm-1", "backup_path_down", True)]
    assert down[0].detail["last_sms_ms"] == last_sms and down[0].detail["test_every_s"] == DAY_S
    assert day_goes_by(clock.ms + 3600_000) == []         # reported once
    # A gateway restart does not end it: the count starting again at the start must not clear it.
    again = Supervisor(SupervisionSettings(missed_heartbeats=3), clock.ms, sms_test_every_s=DAY_S)
    again.load("gsm-1", clock.ms, 60, {Fault.BACKUP_PATH_DOWN: down[0].at_ms}, 3900, sms_seen_ms=last_sms)
    again.expect_sms("gsm-1", True)
    assert again.tick(clock(1)) == []
    # The next test SMS clears it; then the MQTT path fails while SMS works: on backup path again.
    assert names(again.sms_seen("gsm-1", clock(1))) == [("gsm-1", "backup_path_down", False)]
    assert names(again.will("gsm-1", clock(1))) == [("gsm-1", "offline", True), ("gsm-1", "on_backup_path", True)]
    # A test SMS a little late is no change (the same slack as backup_path_down: no daily flapping)...
    assert again.tick(clock(DAY_S + 1)) == []
    # ...silence as long as backup_path_down takes ends the backup path too.
    assert names(again.tick(clock(DAY_S // 2 + 600))) == [("gsm-1", "on_backup_path", False),
                                                           ("gsm-1", "backup_path_down", True)]
    # The phone is removed from the registry: its SMS silence is no fault any more.
    again.expect_sms("gsm-1", False)
    assert names(again.tick(clock(1))) == [("gsm-1", "backup_path_down", False)]


def test_backup_path_without_a_periodic_test_and_across_instances() -> None:
    clock = Clock()
    sup = Supervisor(SupervisionSettings(missed_heartbeats=3), clock(), sms_test_every_s=0)
    sup.load("gsm-2", T0, 60, set())
    sup.expect_sms("gsm-2", True)
    assert sup.sms_seen("gsm-2", clock(10)) == []
    # Without a periodic test only an SMS after MQTT was lost shows the backup path, and silence is no fault.
    assert names(sup.will("gsm-2", clock(10))) == [("gsm-2", "offline", True)]
    assert sup.tick(clock(30 * DAY_S)) == []
    assert names(sup.sms_seen("gsm-2", clock(1))) == [("gsm-2", "on_backup_path", True)]
    # Another instance took the SMS (several gateways share one database): sync brings its time.
    other = Supervisor(SupervisionSettings(missed_heartbeats=3), T0, sms_test_every_s=DAY_S)
    other.load("gsm-3", T0, 60, {Fault.OFFLINE: T0 + 5}, sms_seen_ms=None)
    assert other.tick(T0 + 10) == []
    other.sync("gsm-3", T0, 60, {Fault.OFFLINE: T0 + 5}, None, sms_seen_ms=T0 + 8)
    assert names(other.tick(T0 + 11)) == [("gsm-3", "on_backup_path", True)]


async def test_the_store_keeps_the_phone_and_each_paths_last_success(store_target: str | Path) -> None:
    store = open_store(str(store_target), group_window_ms=300_000)  # SQLite and PostgreSQL
    await store.open()
    try:
        await store.add_device("gsm-1", bytes(32), now_ms=1, phone="+6281200000001")
        await store.add_device("gsm-2", bytes(32), now_ms=1)
        with pytest.raises(Exception, match="registered to device gsm-1"):
            await store.add_device("gsm-3", bytes(32), now_ms=2, phone="+6281200000001")
        with pytest.raises(Exception, match="registered to device gsm-1"):
            await store.update_device("gsm-2", {"phone": "+6281200000001"}, now_ms=3)
        assert await store.update_device("gsm-2", {"phone": "+6281200000002"}, now_ms=4)
        assert {r.id: r.phone for r in await store.registry()} == {"gsm-1": "+6281200000001",
                                                                   "gsm-2": "+6281200000002"}
        changes = await store.fleet_changes(device_id=None, limit=10)
        assert changes[0]["detail"] == {"phone": [None, "+6281200000002"]}
        assert changes[-1]["detail"]["phone"] == "+6281200000001"
        # An alarm by SMS and a test SMS are the SMS path's news; an MQTT alarm the MQTT path's.
        loc = Location(-950_000, 100_350_000, "Jl. Sudirman 1", "13.71")
        alarm = Alarm("gsm-1", 5, "general", False, loc, 0, None, b"SG1A ...")
        batch = Batch(alarms=[NewAlarm(alarm, 5_000, "gsm-1", None, via="sms")], sms_seen={"gsm-2": 6_000})
        await store.commit(batch, lambda ch, n: (f"f{n}", "{}"), lambda n, g: (f"a{n.alarm.seq}", "{}"))
        assert await store.sms_seen() == {"gsm-1": 5_000, "gsm-2": 6_000}
        devices = {d.id: d for d in await store.devices()}
        assert devices["gsm-1"].last_seen_ms is None and devices["gsm-1"].sms_seen_ms == 5_000
        # Decommissioning lets the SIM go: another button may take the number.
        assert await store.decommission("gsm-1", 7)
        await store.add_device("gsm-4", bytes(32), now_ms=8, phone="+6281200000001")
        assert (await store.fleet_changes(device_id="gsm-1", limit=1))[0]["detail"] == {
            "phone": ["+6281200000001", None]}
    finally:
        await store.close()

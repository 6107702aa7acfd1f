"""Alarms first (issue 12): when a district loses power, thousands of buttons report at once (low
battery, the lid, then their last wills), and an alarm from a button that still works must not
queue behind those reports. Real Mosquitto, gateway and command center: the reports and then one
alarm wait in the gateway's broker session while it is stopped, so that they reach it as one backlog;
the order in which the command center stored them is read back from its own database.
"""

from __future__ import annotations

import secrets
import sqlite3

import pytest

from tests.support.devices import SimButton, go_dark, register_fleet
from tests.support.system import DeviceCredentials, System
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

FLEET = 1000        # buttons losing power; three fault reports each


def test_an_alarm_overtakes_a_backlog_of_thousands_of_fault_reports(system: System) -> None:
    fleet = [DeviceCredentials(f"wave-{i:04d}", secrets.token_hex(32), secrets.token_urlsafe(12)) for i in range(FLEET)]
    register_fleet(system.gateway, system.broker, fleet)
    caller = SimButton(system.new_device("wave-caller"), system.broker.port).connect()

    system.gateway.stop()                       # the backlog gathers in the gateway's broker session
    for c in fleet:
        go_dark(system.broker.port, c)
    seq, frame = caller.alarm_frame("medical")
    caller.publish("alarm", frame)              # behind all of them
    system.gateway.start()

    caller.wait_ack(seq, timeout_s=30)
    expected_faults = 3 * FLEET
    db = sqlite3.connect(f"file:{system.cc.db_path}?mode=ro", uri=True)
    try:
        def stored() -> tuple[str | None, int]:
            (alarm_at,) = db.execute("SELECT min(intake_at) FROM alarms WHERE device_id = ?",
                                     ("wave-caller",)).fetchone()
            (faults,) = db.execute("SELECT count(*) FROM device_faults WHERE device_id LIKE 'wave-%'").fetchone()
            return alarm_at, faults
        wait_for(lambda: stored()[1] == expected_faults and stored()[0], timeout_s=120,
                 what="the alarm and the whole fault backlog at the command center")
        alarm_at, _ = stored()
        (before,) = db.execute("SELECT count(*) FROM device_faults WHERE device_id LIKE 'wave-%' AND intake_at < ?",
                               (alarm_at,)).fetchone()
    finally:
        db.close()
    print(f"{before} of {expected_faults} fault reports reached the command center before the alarm")
    # The alarm went ahead of the backlog instead of after all of it.
    assert before < expected_faults * 0.9, f"{before} of {expected_faults} fault reports were stored before the alarm"

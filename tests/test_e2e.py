"""End to end: the firmware running under the real MicroPython interpreter presses its button; the
alarm crosses a real Mosquitto started from broker/ config, the gateway stores it and forwards it to
the reference command center over HTTP; the operator's acknowledgement returns to the button."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.firmware import FirmwareProcess, device_config
from tests.support.system import System
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.micropython, pytest.mark.mosquitto]



def incidents(system: System) -> list[dict[str, Any]]:
    resp = httpx.get(f"{system.cc.url}/api/v1/incidents", headers=system.cc.operator_headers(), timeout=5)
    resp.raise_for_status()
    return resp.json()


def test_press_on_micropython_reaches_command_center_and_operator_ack_returns(system: System, tmp_path: Path) -> None:
    creds = system.new_device("jkt-gambir-0001")
    cfg = device_config(creds.device_id, creds.secret_hex, system.broker.port, creds.mqtt_password)
    with FirmwareProcess(tmp_path / "button", cfg) as fw:
        fw.expect("EVT connected")
        assert incidents(system) == []

        fw.hold(600)  # longer than the configured 300 ms long press
        seq = int(fw.expect("EVT alarm").split("seq=")[1].split()[0])
        fw.expect(f"EVT delivered seq={seq}")   # the gateway's signed "received" ack cleared the outbox
        fw.expect("IND received")
        assert list((fw.flash / "outbox").iterdir()) == []

        found = wait_for(lambda: [i for i in incidents(system) if i["device_id"] == creds.device_id])
        assert len(found) == 1
        incident = found[0]
        assert incident["kind"] == "general"
        assert incident["test"] is False
        assert incident["state"] == "new"
        assert incident["location"]["lat"] == pytest.approx(-6.175392)
        assert incident["location"]["lon"] == pytest.approx(106.827153)

        resp = httpx.post(f"{system.cc.url}/api/v1/incidents/{incident['id']}/acknowledge",
                          headers=system.cc.operator_headers(), timeout=5)
        assert resp.status_code == 200, resp.text
        fw.expect(f"EVT ack seq={seq} state=acknowledged")
        fw.expect("IND acknowledged")

    detail = httpx.get(f"{system.cc.url}/api/v1/incidents/{incident['id']}",
                       headers=system.cc.operator_headers(), timeout=5).json()
    assert [e["seq"] for e in detail["events"]] == [seq]   # forwarded exactly once
    assert system.gateway.metrics()["alarms_stored_total"] == 1


def test_short_tap_sends_nothing(system: System, tmp_path: Path) -> None:
    creds = system.new_device("jkt-gambir-0002")
    cfg = device_config(creds.device_id, creds.secret_hex, system.broker.port, creds.mqtt_password)
    with FirmwareProcess(tmp_path / "button", cfg) as fw:
        fw.expect("EVT connected")
        fw.hold(100)  # a brush against the button
        lines = fw.drain(1.5)
        assert not [line for line in lines if line.startswith(("EVT alarm", "EVT published"))], lines
    assert incidents(system) == []

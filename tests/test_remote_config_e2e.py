"""Remote configuration from end to end (issue 18, acceptance 5): a location corrected at the
gateway reaches the button, which applies and keeps it, and the alarms it signs from then on carry
it. The button's firmware runs under the real MicroPython interpreter against a real Mosquitto,
the real gateway and the reference command center."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.support.firmware import FirmwareProcess, button, seq_of
from tests.support.system import System
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto, pytest.mark.micropython]

# Where the technician first put the button, and where it really is: a pole moved across the street.
NEW_PLACE = {"lat": -6.2, "lon": 106.816666, "address": "Jl. M.H. Thamrin 1, seberang Bundaran HI",
             "area": "31.71.01.1002"}


def device_state(system: System, device_id: str) -> dict:
    resp = httpx.get(f"{system.gateway.url}/api/v1/devices/{device_id}", headers=system.gateway.admin_headers,
                     timeout=5)
    resp.raise_for_status()
    return dict(resp.json())


def test_a_location_corrected_at_the_gateway_reaches_the_button_and_its_next_alarm(system: System,
                                                                                  tmp_path: Path) -> None:
    creds, fw = button(system, tmp_path, "jkt-cfg-move-01")
    with fw:
        fw.expect("EVT connected")
        fw.hold(500)
        first = seq_of(fw.expect("EVT alarm"))
        fw.expect(f"EVT delivered seq={first}")

        resp = httpx.patch(f"{system.gateway.url}/api/v1/devices/{creds.device_id}",
                           headers=system.gateway.admin_headers, json=NEW_PLACE, timeout=5)
        assert resp.status_code == 200, resp.text
        applied = fw.expect("EVT config_applied", timeout_s=15)
        assert "ver=1" in applied and "loc" in applied, applied
        # The button confirms with its next heartbeat, sent at once: the gateway shows it applied.
        wait_for(lambda: device_state(system, creds.device_id)["config"]["applied"] == 1, 15,
                 "the gateway sees the config applied")

        fw.drain(0.2)   # a person lets go and presses again: not a bounce the debounce filters out
        fw.hold(500)
        second = seq_of(fw.expect("EVT alarm"))
        fw.expect(f"EVT delivered seq={second}")

    # Kept in the button's own config file, so a restart keeps it and does not apply it again.
    kept = json.loads((tmp_path / creds.device_id / "config.json").read_text())
    assert kept["loc"] == {"lat_e6": -6200000, "lon_e6": 106816666, "addr": NEW_PLACE["address"],
                           "area": NEW_PLACE["area"]}
    again = FirmwareProcess(tmp_path / creds.device_id, kept, outputs=True)
    with again:
        again.expect("EVT connected")
        again.drain(2.0)
    assert not again.seen("EVT config_applied")

    # What the command center stored for each alarm: the place the button signed into it.
    db = sqlite3.connect(system.cc.db_path)
    try:
        stored = {seq: (lat, lon, address) for seq, lat, lon, address in db.execute(
            "SELECT seq, lat, lon, address FROM alarms WHERE device_id = ?", (creds.device_id,))}
    finally:
        db.close()
    assert stored[first][:2] == (pytest.approx(-6.175392), pytest.approx(106.827153))
    assert stored[second] == (pytest.approx(-6.2), pytest.approx(106.816666), NEW_PLACE["address"])


def test_wifi_networks_set_at_the_gateway_reach_the_button_encrypted(system: System, tmp_path: Path) -> None:
    creds, fw = button(system, tmp_path, "jkt-cfg-wifi-01")
    networks = [{"ssid": "kelurahan-menteng", "password": "kunci-rahasia-lantai-2"},
                {"ssid": "Pos Ronda RW 03", "password": ""}]
    with fw:
        fw.expect("EVT connected")
        resp = httpx.put(f"{system.gateway.url}/api/v1/devices/{creds.device_id}/config",
                         headers=system.gateway.admin_headers, json={"wifi": {"networks": networks}}, timeout=5)
        assert resp.status_code == 200, resp.text
        assert fw.expect("EVT config_applied", timeout_s=15) == "EVT config_applied ver=1 keys=wifi"
        wait_for(lambda: device_state(system, creds.device_id)["config"]["applied"] == 1, 15,
                 "the gateway sees the config applied")
        assert not [line for line in fw.history if "kunci-rahasia" in line]
    # The button's own config file holds the networks (the unix port has no radio to try them on).
    kept = json.loads((tmp_path / creds.device_id / "config.json").read_text())
    assert kept["wifi"]["networks"] == networks
    state = device_state(system, creds.device_id)
    assert state["config"]["desired"] == {"wifi": {"networks": [{"ssid": "kelurahan-menteng", "password_set": True},
                                                                {"ssid": "Pos Ronda RW 03", "password_set": False}]}}

"""Acceptance 4 of issue 17 at the command center: the faults of a button's two paths (on its backup
path, its backup path down) reach the real command center process as the gateway sends them, are
listed with each path's last success, clear, and the console shows "on backup path" as a badge on
the device, in Bahasa Indonesia.

The fault events are made by the gateway's own code: the pure supervisor (gateway/supervision.py),
driven by a fake clock through a day and a half of missing test SMS, and the gateway's event builder
(gateway/events.py). They are posted with the intake token, as the gateway's forwarder does.
Each test has its own button: the command center orders a device's reports by the gateway's time."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from siaga import i18n
from siaga.gateway.events import fault_event
from siaga.gateway.store import DeviceRecord
from siaga.gateway.supervision import FaultChange, SupervisionSettings, Supervisor
from tests.support.ccproc import CommandCenterProcess

pytestmark = [pytest.mark.e2e]

DAY_S = 86_400
T0 = 1_795_000_000_000  # 2026-11-18 (ms); the supervisor only compares times
CHROMIUM = "/usr/bin/chromium"


def gsm_button(device_id: str) -> DeviceRecord:
    return DeviceRecord(device_id, b"k" * 32, False, None, -947_100, 100_417_200, "Jl. Sudirman 1", "13.71.01",
                        phone="+6281200000017")


def timeline(device_id: str) -> list[list[FaultChange]]:
    """The changes the gateway's supervisor reports for a button with a phone, phase by phase:
    its MQTT path fails while the day's test SMS came (offline, on backup path); no test SMS for a
    day and a half (no longer on the backup path, which is down); MQTT returns; an SMS returns."""
    sup = Supervisor(SupervisionSettings(missed_heartbeats=3), T0, sms_test_every_s=DAY_S)
    sup.load(device_id, T0, 60, set())
    sup.expect_sms(device_id, True)
    at = T0 + 3_600_000
    assert sup.sms_seen(device_id, at) == []                    # the day's test SMS
    later = at + DAY_S * 1500 + 600_001
    return [sup.tick(at + 200_000), sup.tick(later), sup.heartbeat(device_id, later + 1000, 60, 3900, False),
            sup.sms_seen(device_id, later + 2000)]


def post(cc: CommandCenterProcess, changes: list[FaultChange], first: int) -> list[dict[str, Any]]:
    bodies = []
    for number, change in enumerate(changes, first):
        event_id, body = fault_event("gw-1", change, number, gsm_button(change.device_id))
        r = httpx.post(f"{cc.url}/api/v1/faults", content=body.encode(),
                       headers={**cc.intake_headers(event_id), "Content-Type": "application/json"}, timeout=5)
        assert r.status_code in (200, 201), r.text
        bodies.append(json.loads(body))
    return bodies


def active(cc: CommandCenterProcess, device_id: str) -> dict[str, dict[str, Any]]:
    r = httpx.get(f"{cc.url}/api/v1/devices/faults", headers=cc.operator_headers(), timeout=5)
    r.raise_for_status()
    return {f["fault"]: f for f in r.json() if f["device_id"] == device_id}


@pytest.fixture(scope="module")
def cc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CommandCenterProcess]:
    with CommandCenterProcess(tmp_path_factory.mktemp("sms-paths")) as process:
        yield process


def test_both_path_faults_reach_the_command_center_with_each_paths_last_success(cc: CommandCenterProcess) -> None:
    dev = "pdg-padang-0017"
    phases = timeline(dev)
    assert [[(c.fault.value, c.active) for c in phase] for phase in phases] == [
        [("offline", True), ("on_backup_path", True)],
        [("on_backup_path", False), ("backup_path_down", True)],
        [("offline", False)],
        [("backup_path_down", False)]]
    sent = post(cc, phases[0], 1)
    shown = active(cc, dev)
    assert set(shown) == {"offline", "on_backup_path"}
    on_backup = shown["on_backup_path"]["detail"]
    assert on_backup["last_sms_at"] == sent[1]["detail"]["last_sms_at"] == "2026-11-18T12:06:40.000Z"
    assert on_backup["last_mqtt_at"] == "2026-11-18T11:06:40.000Z"  # its last heartbeat
    assert shown["on_backup_path"]["location"]["address"] == "Jl. Sudirman 1"
    # The forwarder's retry of an event changes nothing.
    event_id, body = fault_event("gw-1", phases[0][1], 2, gsm_button(dev))
    again = httpx.post(f"{cc.url}/api/v1/faults", content=body.encode(),
                       headers={**cc.intake_headers(event_id), "Content-Type": "application/json"}, timeout=5)
    assert again.status_code == 200
    # The test SMS stop: the backup path is down, with when each path last worked.
    post(cc, phases[1], 3)
    shown = active(cc, dev)
    assert set(shown) == {"offline", "backup_path_down"}
    assert shown["backup_path_down"]["detail"]["test_every_s"] == DAY_S
    assert shown["backup_path_down"]["detail"]["last_sms_at"] == "2026-11-18T12:06:40.000Z"
    post(cc, phases[2], 5)
    assert set(active(cc, dev)) == {"backup_path_down"}
    post(cc, phases[3], 6)
    assert active(cc, dev) == {}
    # A fault name the command center does not know is still refused.
    bogus = {**sent[0], "event_id": f"gw-1:{dev}:fault:99", "fault": "on_holiday"}
    r = httpx.post(f"{cc.url}/api/v1/faults", json=bogus, headers=cc.intake_headers(bogus["event_id"]), timeout=5)
    assert r.status_code == 422


@pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason="chromium is not installed")
def test_the_console_shows_the_backup_path_badge_in_indonesian(cc: CommandCenterProcess) -> None:
    from playwright.sync_api import expect, sync_playwright

    dev = "pdg-padang-0018"
    post(cc, timeline(dev)[0], 1)  # offline and on backup path
    badge_text = i18n.text("console", "path.backup_badge", "id")
    assert badge_text == "Jalur cadangan (SMS)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(f"{cc.url}/console")
            page.fill("#login-name", cc.supervisor_name)
            page.fill("#login-token", cc.supervisor_token)
            page.click("#login-submit")
            page.click("[data-testid=tab-devices]")
            rows = page.locator("[data-testid=faults] tbody tr")
            # The badge marks the device on each of its rows; the fault itself has its own name.
            expect(page.locator("[data-testid=backup-badge]").first).to_have_text(badge_text)
            expect(page.locator("tr.fault-offline [data-testid=backup-badge]")).to_have_count(1)
            expect(page.locator("tr.fault-on_backup_path")).to_contain_text(
                i18n.text("console", "fault.on_backup_path", "id"))
            expect(rows.filter(has_text=dev)).to_have_count(2)
            # Each path's last success, as a sentence, not as raw detail keys.
            line = page.locator("tr.fault-on_backup_path .path-times")
            expect(line).to_contain_text("MQTT")
            expect(line).to_contain_text("SMS")
            assert "last_sms_at" not in page.locator("tr.fault-on_backup_path").inner_text()
        finally:
            browser.close()

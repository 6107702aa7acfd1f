"""Firmware updates over the air from end to end (issue 18, acceptance 1, 2 and 4): signed bundles
uploaded to the real gateway, staged rollouts, and buttons running the real firmware under the
MicroPython unix port that fetch, check and install them over a real Mosquitto, boot the new version
on trial and confirm it or return to the old one by themselves. Alarms pressed meanwhile must reach
the command center exactly once.

Version A is the firmware of this checkout (the buttons run it from firmware/, as provisioned: the
"factory" slot); each B is a bundle built from a copy of it with another version number, and for
the failure cases with one defect put in on purpose."""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from provisioning import bundle as bundles
from tests.support.firmware import FirmwareProcess, device_config, seq_of
from tests.support.system import DeviceCredentials, System, shared_system
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto, pytest.mark.micropython]

REPO = Path(__file__).resolve().parents[1]
APP = Path("lib/siagafw/app.py")
VERSION_A = re.search(r'FIRMWARE_VERSION = "([0-9.]+)"', (REPO / "firmware" / APP).read_text()).group(1)  # type: ignore[union-attr]
TRIAL_S = 10


def firmware_copy(dest: Path, version: str, patch: Callable[[str], str] | None = None) -> Path:
    """A copy of firmware/ that says it is `version`, with `patch` applied to its app.py."""
    shutil.copytree(REPO / "firmware", dest)
    app = dest / APP
    text = app.read_text().replace(f'FIRMWARE_VERSION = "{VERSION_A}"', f'FIRMWARE_VERSION = "{version}"')
    app.write_text(patch(text) if patch else text)
    return dest


def never_connects(text: str) -> str:
    """A B whose broker port is off by one: it boots, but never reaches the broker."""
    patched = text.replace('self.port = m.get("port", 1883)', 'self.port = m.get("port", 1883) + 1')
    assert patched != text, "the line to break moved: update this test"
    return patched


class Fleet:
    """The fleet key and the bundles the tests ship."""

    def __init__(self, folder: Path) -> None:
        self.key = folder / "fleet-key.pem"
        self.public_hex = bundles.generate_key(self.key).hex()
        self.folder = folder
        self.built: dict[str, bytes] = {}

    def bundle(self, version: str, patch: Callable[[str], str] | None = None) -> bytes:
        if version not in self.built:
            src = firmware_copy(self.folder / f"src-{version}", version, patch)
            self.built[version] = bundles.build(board="unix", version=version, key_path=self.key, fw_dir=src).data
        return self.built[version]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return Fleet(tmp_path_factory.mktemp("fleet"))


@pytest.fixture(scope="module")
def ota_system(tmp_path_factory: pytest.TempPathFactory, fleet: Fleet) -> Iterator[System]:
    yield from shared_system(tmp_path_factory.mktemp("ota-system"),
                             ota_settings=f'keys = ["{fleet.public_hex}"]\nmax_failed_percent = 20')


def api(system: System, method: str, path: str, *, headers: dict[str, str] | None = None,
        **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{system.gateway.url}{path}", headers={**system.gateway.admin_headers,
                                                                         **(headers or {})}, timeout=30, **kwargs)


def upload(system: System, data: bytes) -> dict[str, Any]:
    resp = api(system, "POST", "/api/v1/firmware", content=data, headers={"Content-Type": "application/octet-stream"})
    assert resp.status_code in (200, 201), resp.text
    return dict(resp.json())


def roll(system: System, version: str, percent: int, expect: int = 201) -> dict[str, Any]:
    resp = api(system, "POST", "/api/v1/rollouts", json={"version": version, "percent": percent})
    assert resp.status_code == expect, resp.text
    return dict(resp.json())


def rollout(system: System, rollout_id: int) -> dict[str, Any]:
    resp = api(system, "GET", f"/api/v1/rollouts/{rollout_id}")
    resp.raise_for_status()
    return dict(resp.json())


def audited(system: System, reason: str, device_id: str) -> list[dict[str, Any]]:
    resp = api(system, "GET", "/api/v1/audit", params={"reason": reason})
    resp.raise_for_status()
    return [a for a in resp.json() if a["device_id"] == device_id]


def device(system: System, device_id: str) -> dict[str, Any]:
    resp = api(system, "GET", f"/api/v1/devices/{device_id}")
    resp.raise_for_status()
    return dict(resp.json())


class Buttons:
    """Virtual buttons of one test: registered, configured with the fleet key, and rebooting by
    themselves (a reset the firmware asks for, or a crash, starts the process again on its flash)."""

    def __init__(self, system: System, fleet: Fleet, folder: Path) -> None:
        self.system = system
        self.fleet = fleet
        self.folder = folder
        self.procs: dict[str, FirmwareProcess] = {}
        self.creds: dict[str, DeviceCredentials] = {}

    def add(self, ids: list[str], **extra: Any) -> list[FirmwareProcess]:
        made = self.system.new_devices_named(ids)
        out = []
        for creds in made:
            cfg = device_config(creds.device_id, creds.secret_hex, self.system.broker.port, creds.mqtt_password,
                                ota={"keys": [self.fleet.public_hex], "trial_s": TRIAL_S}, **extra)
            proc = FirmwareProcess(self.folder / creds.device_id, cfg, reboot=True)
            self.procs[creds.device_id] = proc
            self.creds[creds.device_id] = creds
            out.append(proc)
        return out

    def start_all(self) -> None:
        for proc in self.procs.values():
            proc.start()
        for proc in self.procs.values():
            proc.expect("EVT connected", timeout_s=30)
        # The gateway learns each button's board from its first heartbeat: only then can a rollout
        # pick the bundle for it.
        for device_id in self.procs:
            wait_for(lambda d=device_id: device(self.system, d).get("board") == "unix", 20,
                     f"{device_id}'s board known")

    def close(self) -> None:
        """Off, and taken out of service: the tests share one gateway, and a later test's rollout
        must reach only its own buttons (a decommissioned button is never offered anything)."""
        for proc in self.procs.values():
            proc.stop()
        for device_id in self.procs:
            api(self.system, "POST", f"/api/v1/devices/{device_id}/decommission").raise_for_status()


@pytest.fixture
def buttons(ota_system: System, fleet: Fleet, tmp_path: Path) -> Iterator[Buttons]:
    made = Buttons(ota_system, fleet, tmp_path)
    try:
        yield made
    finally:
        made.close()


def stored_alarms(system: System, device_ids: set[str]) -> Counter[tuple[str, int]]:
    """How many times the command center stored each (device, seq) of these devices."""
    db = sqlite3.connect(system.cc.db_path)
    try:
        rows = db.execute("SELECT device_id, seq FROM alarms").fetchall()
    finally:
        db.close()
    return Counter((d, s) for d, s in rows if d in device_ids)


def press(proc: FirmwareProcess) -> int:
    """A resident's press, and the alarm's seq. A button restarting into a new version (the reset
    after an install, about a second here and a few on a board) sees no press; nothing lights up, so
    the resident presses again, and so does this, up to three times. A press that a running button
    missed fails the test."""
    for _ in range(3):
        mark = len(proc.history)
        proc.hold(400)
        try:
            return seq_of(proc.expect("EVT alarm", timeout_s=8))
        except AssertionError:
            since = proc.history[mark:]
            exits = [i for i, line in enumerate(since) if line.startswith("EXIT")]
            if not exits:
                raise
            if not any(proc.matches(line, "EVT boot") for line in since[exits[-1]:]):
                proc.expect("EVT boot", timeout_s=20)
    raise AssertionError(f"no alarm after three presses: {proc.history[-20:]}")


def running_version(proc: FirmwareProcess) -> str:
    """The version the button said it runs in its latest boot line."""
    boots = proc.seen("EVT boot")
    assert boots, proc.history[-20:]
    return boots[-1].split("fw=", 1)[1].split()[0]


# ---------------------------------------------------------------------------- acceptance 1


def test_twenty_buttons_go_from_a_to_b_and_every_alarm_pressed_meanwhile_arrives_once(
        ota_system: System, fleet: Fleet, buttons: Buttons) -> None:
    version_b = "0.9.0"
    info = upload(ota_system, fleet.bundle(version_b))
    assert info["version"] == version_b and info["board"] == "unix"
    procs = buttons.add([f"jkt-ota-{i:02d}" for i in range(20)])
    buttons.start_all()

    # A canary stage, then the whole fleet: two presses on each button while it updates.
    started = roll(ota_system, version_b, 25)
    wait_for(lambda: rollout(ota_system, started["id"])["counts"]["updated"] >= 5, 120, "the canaries updated")
    widened = roll(ota_system, version_b, 100, expect=200)
    assert widened["id"] == started["id"] and widened["percent"] == 100

    # Residents press all over the district while the buttons fetch, check, install and restart:
    # each button twice, in a random order, a moment apart.
    rng = random.Random(18)
    pressed: dict[str, list[int]] = {d: [] for d in buttons.procs}
    order = list(buttons.procs.items())
    for _ in range(2):
        rng.shuffle(order)
        for device_id, proc in order:
            pressed[device_id].append(press(proc))
            time.sleep(rng.uniform(0.0, 0.3))

    wait_for(lambda: rollout(ota_system, started["id"])["counts"]["updated"] == 20, 240, "all 20 buttons updated")
    for device_id, proc in buttons.procs.items():
        wait_for(lambda p=proc: running_version(p) == version_b, 30, f"{device_id} running B")
        assert device(ota_system, device_id)["firmware"] == version_b
    assert rollout(ota_system, started["id"])["state"] == "done"

    ids = set(buttons.procs)
    want = {(d, s) for d, seqs in pressed.items() for s in seqs}
    wait_for(lambda: set(stored_alarms(ota_system, ids)) >= want, 60, "every alarm at the command center")
    counted = stored_alarms(ota_system, ids)
    assert {k: n for k, n in counted.items() if n != 1} == {}, "an alarm stored more than once"
    assert set(counted) == want, f"missing {want - set(counted)}, unexpected {set(counted) - want}"
    for proc in procs:
        assert not proc.seen("EVT ota_refused"), proc.seen("EVT ota_refused")


# ---------------------------------------------------------------------------- acceptance 4


def test_a_b_that_fails_its_self_test_goes_back_to_a_by_itself(ota_system: System, fleet: Fleet,
                                                               buttons: Buttons) -> None:
    version_b = "0.9.1"
    upload(ota_system, fleet.bundle(version_b, never_connects))
    (proc,) = buttons.add(["jkt-ota-rb-01"])
    buttons.start_all()
    started = roll(ota_system, version_b, 100)

    proc.expect("EVT ota_installed", timeout_s=60)
    trial = proc.expect("EVT boot", timeout_s=20)
    assert f"fw={version_b}" in trial, trial
    proc.expect("EVT ota_rolled_back", timeout_s=TRIAL_S + 30)
    back = proc.expect("EVT boot", timeout_s=30)
    assert f"fw={VERSION_A}" in back, back
    proc.expect("EVT connected", timeout_s=20)

    entry = wait_for(lambda: (d := device(ota_system, "jkt-ota-rb-01"))["ota"] and d["ota"]["state"] == "failed"
                     and d, 30, "the gateway told of the rollback")
    assert entry["ota"]["detail"] == "selftest" and entry["firmware"] == VERSION_A
    assert wait_for(lambda: audited(ota_system, "firmware_rolled_back", "jkt-ota-rb-01"), 10, "the rollback audited")
    # The only button of the rollout failed: 100 % > 20 %, so the rollout stopped.
    assert rollout(ota_system, started["id"])["state"] == "halted"

    # Still a working button on A: an alarm goes through.
    proc.hold(400)
    seq = seq_of(proc.expect("EVT alarm"))
    proc.expect(f"EVT delivered seq={seq}", timeout_s=20)


def test_a_rollout_whose_canaries_fail_halts_before_widening(ota_system: System, fleet: Fleet, buttons: Buttons,
                                                            tmp_path: Path) -> None:
    version_b = "0.9.2"
    upload(ota_system, fleet.bundle(version_b))
    ids = [f"jkt-ota-can-{i:02d}" for i in range(10)]
    buttons.add(ids)
    buttons.start_all()
    for proc in buttons.procs.values():
        proc.stop()   # off for a while: the offers wait for them on the broker (retained)

    started = roll(ota_system, version_b, 50)
    canaries = [d["device_id"] for d in rollout(ota_system, started["id"])["devices"]]
    assert len(canaries) == 5 and set(canaries) <= set(ids)
    # Two of the canaries were provisioned with another fleet key (an old one, say): they refuse B.
    other = bundles.generate_key(tmp_path / "other-key.pem").hex()
    for device_id in canaries[:2]:
        cfg = json.loads(buttons.procs[device_id].config_path.read_text())
        cfg["ota"]["keys"] = [other]
        buttons.procs[device_id].config_path.write_text(json.dumps(cfg))
    for proc in buttons.procs.values():
        proc.start()

    for device_id in canaries[:2]:
        assert "unknown_key" in buttons.procs[device_id].expect("EVT ota_refused", timeout_s=90)
    halted = wait_for(lambda: (r := rollout(ota_system, started["id"]))["state"] == "halted" and r, 90,
                      "the rollout halted")
    assert halted["counts"]["failed"] == 2
    for device_id in canaries[:2]:   # each button's refusal is in the gateway's audit log
        assert wait_for(lambda d=device_id: audited(ota_system, "firmware_unknown_key", d), 10, f"{device_id} audited")

    resp = api(ota_system, "POST", "/api/v1/rollouts", json={"version": version_b, "percent": 100})
    assert resp.status_code == 409, resp.text
    time.sleep(3)
    for device_id in set(ids) - set(canaries):
        proc = buttons.procs[device_id]
        proc.drain(0.1)
        assert not proc.seen("EVT ota_offer"), f"{device_id} was offered B after the halt"
        assert running_version(proc) == VERSION_A
        assert device(ota_system, device_id)["ota"] is None


# ---------------------------------------------------------------------------- acceptance 2


def test_power_cuts_while_fetching_and_in_the_first_boot_never_brick_a_button(ota_system: System, fleet: Fleet,
                                                                             buttons: Buttons) -> None:
    version_b = "0.9.3"
    upload(ota_system, fleet.bundle(version_b))
    (proc,) = buttons.add(["jkt-ota-cut-01"])
    buttons.start_all()
    rng = random.Random(int(hashlib.sha256(b"issue 18").hexdigest(), 16) % 2**32)
    started = roll(ota_system, version_b, 100)

    # Power cuts at random moments of the download: each time the button starts again on A and
    # goes on from the last whole piece it kept.
    for _ in range(4):
        proc.expect("EVT ota_progress", timeout_s=60)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.seen("EVT ota_installed"):
            break
        proc.kill()
        proc.start()
        boot = proc.expect("EVT boot", timeout_s=20)
        assert f"fw={VERSION_A}" in boot, boot

    # Power cuts during the first boots of B: each counts as a failed trial boot.
    proc.expect("EVT ota_installed", timeout_s=120)
    cuts = 0
    for _ in range(2):
        boot = proc.expect("EVT boot", timeout_s=20)
        if f"fw={version_b}" not in boot:
            break
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.seen("EVT ota_confirmed"):
            break
        proc.kill()
        cuts += 1
        proc.start()

    final = wait_for(lambda: (d := device(ota_system, "jkt-ota-cut-01"))["ota"]
                     and d["ota"]["state"] in ("updated", "failed") and d, 120, "the button said where it ended")
    on = running_version(proc)
    assert on in (VERSION_A, version_b)
    if final["ota"]["state"] == "updated":
        assert on == version_b and final["firmware"] == version_b
    else:
        assert on == VERSION_A and final["ota"]["detail"] == "crashes" and cuts >= 2
    proc.hold(400)
    seq = seq_of(proc.expect("EVT alarm"))
    proc.expect(f"EVT delivered seq={seq}", timeout_s=20)
    del started

"""Fleet commands end to end: batch pre-staging from CSV, export, revoke, rotate-key (board attached
or pending) and decommission, each checked at the gateway, at the real Mosquitto and on the
MicroPython board on its pseudo-terminal."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import serial

from siaga.broker.passwd import read_entries
from siagafw import proto
from tests.support.board import FakeBoard, siaga
from tests.support.mosquitto import MqttClient
from tests.support.system import System
from tests.support.waiting import wait_for
from tests.test_provisioning import config_for, device_logins, devices_at_gateway, provision


@pytest.fixture(autouse=True)
def _english(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read the tool's English messages (its default is Bahasa Indonesia)."""
    monkeypatch.setenv("SIAGA_LANG", "en")


pytestmark = [pytest.mark.e2e, pytest.mark.micropython, pytest.mark.mosquitto]

DEV = "jkt-gambir-0001"



def audit(system: System, reason: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{system.gateway.url}/api/v1/audit", params={"reason": reason, "limit": 50},
                     headers=system.gateway.admin_headers, timeout=5)
    resp.raise_for_status()
    return resp.json()


def device(system: System, device_id: str = DEV) -> dict[str, Any]:
    resp = httpx.get(f"{system.gateway.url}/api/v1/devices/{device_id}", headers=system.gateway.admin_headers,
                     timeout=5)
    resp.raise_for_status()
    return resp.json()


def signed_alarm(device_id: str, secret_hex: str, seq: int) -> bytes:
    body = proto.alarm_body(device_id, seq, "general", proto.location(-6175392, 106827153, "x", "31.71.01.1001"),
                            True, 1000, None)
    return proto.Signer(proto.secret_from_hex(secret_hex)).seal(proto.encode(body))


def login(system: System, username: str, password: str, client_id: str) -> MqttClient:
    return MqttClient(system.broker.port, username, password, client_id=client_id)


def console_test_alarm(port: str, timeout_s: float = 15.0) -> str:
    """Start a test alarm through the board's console, as the tool's self-test does; return the
    board's lines up to the gateway's ack."""
    lines = []
    with serial.serial_for_url(port, timeout=0.1) as link:
        link.write(b"test\n")
        deadline = time.monotonic() + timeout_s
        seq = None
        while time.monotonic() < deadline:
            line = link.readline().decode(errors="replace").strip()
            if not line:
                continue
            lines.append(line)
            if line.startswith("EVT alarm ") and "test=1" in line:
                seq = line.split("seq=")[1].split()[0]
            if seq is not None and line == f"EVT delivered seq={seq}":
                return "\n".join(lines)
    raise AssertionError(f"no delivered test alarm within {timeout_s} s: {lines}")


# ------------------------------------------------------------------------------------------ batch


def batch_csv(n: int) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["id", "latlon", "address", "area", "site", "notes", "types"])
    for i in range(n):
        dev_id = f"jkt-menteng-{500 + i:04d}" if i % 2 == 0 else ""
        w.writerow([dev_id, f"-6.19{i:02d}00, 106.83{i:02d}00", f"Jl. Menteng Raya {i + 1}", "31.71.06.1001",
                    "pasar-menteng" if i < 3 else "", f"pole {i + 1}", "medical" if i % 3 == 0 else ""])
    return out.getvalue()


def test_batch_csv_of_20_devices_prestages_them_without_boards(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path, wifi_password=None)
    sheet = tmp_path / "menteng.csv"
    sheet.write_text(batch_csv(20))
    done = siaga("provision", "--config", str(cfg), "--batch", str(sheet), "--id-prefix", "jkt-menteng")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "staged 20 devices" in done.stdout

    registered = {d["id"]: d for d in devices_at_gateway(system)}
    assert len(registered) == 20
    assert registered["jkt-menteng-0500"]["lat"] == -6.19 and registered["jkt-menteng-0500"]["site"] == "pasar-menteng"
    assert registered["jkt-menteng-0501"]["lon"] == 106.8301  # numbered after the highest id in the file
    assert all(not d["revoked"] and d["last_seen_ms"] is None for d in registered.values())
    assert sorted(device_logins(system)) == sorted(registered)
    state = cfg.parent / "state"
    assert sorted(p.stem for p in (state / "keys").glob("*.json")) == sorted(registered)
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in (state / "keys").glob("*.json"))
    assert sorted(p.stem for p in (state / "labels").glob("*.png")) == sorted(registered)

    geo = siaga("devices", "export", "--config", str(cfg), "--format", "geojson")
    assert geo.returncode == 0, geo.stderr
    features = json.loads(geo.stdout)["features"]
    assert len(features) == 20
    first = next(f for f in features if f["id"] == "jkt-menteng-0500")
    assert first["geometry"] == {"type": "Point", "coordinates": [106.83, -6.19]}  # GeoJSON: lon, lat
    assert first["properties"]["status"] == "never seen"
    out_csv = tmp_path / "fleet.csv"
    exported = siaga("devices", "export", "--config", str(cfg), "--out", str(out_csv))
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert len(rows) == 20 and {r["area"] for r in rows} == {"31.71.06.1001"}

    # Installation day: one staged identity goes onto a board; nothing is registered twice.
    root = tmp_path / "board"
    with FakeBoard(root) as board:
        installed = siaga("provision", "--config", str(cfg), "--port", board.port, "--id", "jkt-menteng-0502")
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert "(pre-staged)" in installed.stdout and "PASSED: jkt-menteng-0502" in installed.stdout
    assert json.loads((root / "config.json").read_text())["loc"]["addr"] == "Jl. Menteng Raya 3"
    assert not (state / "keys" / "jkt-menteng-0502.json").exists()  # the board holds it now
    assert len(devices_at_gateway(system)) == 20


def test_batch_csv_problems_are_all_reported_and_nothing_is_registered(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path, wifi_password=None)
    sheet = tmp_path / "bad.csv"
    sheet.write_text("id,latlon,address,area\n"
                     "jkt-a-0001,\"-6.1, 106.8\",Jl. Satu,31.71.01.1001\n"
                     "jkt-a-0002,\"106.8, -6.1\",Jl. Dua,31.71.01.1001\n"
                     "jkt-a-0003,\"-6.1, 106.8\",,31.71.01.1001\n"
                     "jkt-a-0001,\"-6.2, 106.9\",Jl. Empat,31.71.01.1001\n")
    done = siaga("provision", "--config", str(cfg), "--batch", str(sheet))
    assert done.returncode == 2
    assert "3 problem(s) in the CSV file; nothing was registered" in done.stderr
    assert "row 3: latitude" in done.stderr and "row 4: address" in done.stderr
    assert "device id jkt-a-0001 appears more than once" in done.stderr
    assert devices_at_gateway(system) == [] and device_logins(system) == []


# ------------------------------------------------------------------------------------------ revoke


def test_revoke_is_effective_at_once_at_the_gateway_and_the_broker(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path, wifi_password=None)
    root = tmp_path / "board"
    with FakeBoard(root) as board:
        assert provision(cfg, board.port).returncode == 0
        config = json.loads((root / "config.json").read_text())
        done = siaga("devices", "revoke", DEV, "--config", str(cfg), "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        # Broker: the button's live connection is dropped and its login refused from now on.
        wait_for(lambda: "EVT fault login" in board.text(), what="the button's login refused")
    assert "EVT link_lost" in board.text()
    refused = login(system, DEV, config["mqtt"]["password"], "check-old-login")
    assert refused.connect().is_failure
    assert DEV not in read_entries(system.broker.password_file)
    # Gateway, independently of the broker: let the device's messages through the broker again
    # (by hand, for this test only) and the gateway still refuses them.
    assert device(system)["revoked"]
    system.broker.add_device(DEV, "bypass-for-test")
    client = login(system, DEV, "bypass-for-test", "bypass")
    try:
        assert not client.connect().is_failure
        client.publish(proto.topic(DEV, "alarm"), signed_alarm(DEV, config["secret"], 5000))
        wait_for(lambda: any(a["device_id"] == DEV for a in audit(system, "revoked")), what="a 'revoked' reject")
    finally:
        client.close()


# ------------------------------------------------------------------------------------------ rotate-key


def test_rotate_key_with_the_board_attached_refuses_the_old_secret(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path, wifi_password=None)
    root = tmp_path / "board"
    with FakeBoard(root) as board:
        assert provision(cfg, board.port).returncode == 0
        old = json.loads((root / "config.json").read_text())
        done = siaga("devices", "rotate-key", DEV, "--config", str(cfg), "--port", board.port)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "self-test passed with the new key" in done.stdout
        new = json.loads((root / "config.json").read_text())
        assert new["secret"] != old["secret"] and new["mqtt"]["password"] != old["mqtt"]["password"]
        assert {k: v for k, v in new.items() if k not in ("secret", "mqtt")} == \
               {k: v for k, v in old.items() if k not in ("secret", "mqtt")}
        assert not device(system)["key_pending"]
        assert old["secret"] not in done.stdout + done.stderr and new["secret"] not in done.stdout + done.stderr

        # Broker: the old password is refused.
        assert login(system, DEV, old["mqtt"]["password"], "old-login").connect().is_failure
        # Gateway: a frame signed with the old secret is refused, even from a good login.
        client = login(system, DEV, new["mqtt"]["password"], "old-secret")
        try:
            assert not client.connect().is_failure
            client.publish(proto.topic(DEV, "alarm"), signed_alarm(DEV, old["secret"], 6000))
            wait_for(lambda: any(a["device_id"] == DEV for a in audit(system, "bad_signature")),
                     what="a 'bad_signature' reject")
        finally:
            client.close()
        # The button itself carries on with the new key.
        console_test_alarm(board.port)


def test_rotate_key_without_the_board_is_pending_until_written(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path, wifi_password=None)
    root = tmp_path / "board"
    keys = cfg.parent / "state" / "keys"
    with FakeBoard(root) as board:
        assert provision(cfg, board.port).returncode == 0
        old = json.loads((root / "config.json").read_text())
        pending = siaga("devices", "rotate-key", DEV, "--config", str(cfg))
        assert pending.returncode == 0, pending.stdout + pending.stderr
        assert "pending" in pending.stdout
        assert device(system)["key_pending"]
        waiting = json.loads((keys / f"{DEV}.json").read_text())["pending_secret_hex"]
        # Until the board is rewritten, the old key keeps working end to end.
        console_test_alarm(board.port)

        written = siaga("devices", "rotate-key", DEV, "--config", str(cfg), "--port", board.port)
        assert written.returncode == 0, written.stdout + written.stderr
    new = json.loads((root / "config.json").read_text())
    assert new["secret"] == waiting != old["secret"]
    assert not (keys / f"{DEV}.json").exists()
    assert not device(system)["key_pending"]


def test_rotate_key_of_the_wrong_board_changes_nothing(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path, wifi_password=None)
    with FakeBoard(tmp_path / "board-a") as a, FakeBoard(tmp_path / "board-b") as b:
        assert provision(cfg, a.port).returncode == 0
        assert provision(cfg, b.port).returncode == 0
        config_b = (tmp_path / "board-b" / "config.json").read_text()
        done = siaga("devices", "rotate-key", DEV, "--config", str(cfg), "--port", b.port)
        assert done.returncode == 3
        assert f"is jkt-gambir-0002, not {DEV}" in done.stderr
    assert (tmp_path / "board-b" / "config.json").read_text() == config_b
    assert not device(system)["key_pending"]


# ------------------------------------------------------------------------------------------ decommission


def test_decommission_with_the_board_takes_its_identity_off(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path, wifi_password=None)
    root = tmp_path / "board"
    with FakeBoard(root) as board:
        assert provision(cfg, board.port).returncode == 0
        done = siaga("devices", "decommission", DEV, "--config", str(cfg), "--port", board.port, "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
    assert not (root / "config.json").exists()
    assert not list((root / "state").rglob("*"))
    assert device(system)["decommissioned"] and device(system)["revoked"]
    assert device_logins(system) == []
    shown = siaga("devices", "show", DEV, "--config", str(cfg))
    assert shown.returncode == 0 and f"{DEV}: decommissioned" in shown.stdout
    assert "alarm seq=" in shown.stdout and "(test)" in shown.stdout  # its history is kept

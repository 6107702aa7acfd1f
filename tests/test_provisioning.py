"""`siaga provision` end to end: the real MicroPython unix port on a pseudo-terminal as the board
(tests/support/board.py), a real Mosquitto, the gateway and the command center as processes, and
the tool run as a technician runs it. Each failure test breaks one thing and checks the message
and that nothing half-registered is left: no live device at the gateway, no broker login, no key
in the laptop's keystore, no config on the board."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from siaga.broker.passwd import read_entries, verify_password
from siagafw.config import load_config
from tests.support.board import WIFI_PASSWORD, WIFI_SSID, FakeBoard, provisioning_config, siaga
from tests.support.firmware import UNIX_BOARD
from tests.support.net import free_port
from tests.support.system import System


@pytest.fixture(autouse=True)
def _english(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read the tool's English messages (its default is Bahasa Indonesia)."""
    monkeypatch.setenv("SIAGA_LANG", "en")


pytestmark = [pytest.mark.e2e, pytest.mark.micropython, pytest.mark.mosquitto]

LOCATION = ["--latlon", "-6.175392, 106.827153", "--address", "Jl. Medan Merdeka Barat 12", "--area",
            "31.71.01.1001"]
CORE_MODULES = sorted(p.stem for p in (UNIX_BOARD.parents[1] / "lib" / "siagafw").glob("*.py"))


def config_for(system: System, tmp_path: Path, **overrides: Any) -> Path:
    kwargs: dict[str, Any] = {"gateway_url": system.gateway.url, "admin_token": system.gateway.admin_token,
                              "broker_port": system.broker.port, "password_file": system.broker.password_file,
                              "broker_pid": system.broker.pid}
    kwargs.update(overrides)
    return provisioning_config(tmp_path / "prov", **kwargs)


def devices_at_gateway(system: System) -> list[dict[str, Any]]:
    resp = httpx.get(f"{system.gateway.url}/api/v1/devices", headers=system.gateway.admin_headers, timeout=5)
    resp.raise_for_status()
    return resp.json()


def device_logins(system: System) -> list[str]:
    return [u for u in read_entries(system.broker.password_file) if u != system.broker.gateway_user]


def assert_nothing_registered(system: System, cfg: Path, board_root: Path | None = None) -> None:
    live = [d["id"] for d in devices_at_gateway(system) if not d["decommissioned"]]
    assert live == [], f"live registrations left behind: {live}"
    assert all(d["revoked"] for d in devices_at_gateway(system))
    assert device_logins(system) == [], "broker logins left behind"
    assert not list((cfg.parent / "state" / "keys").glob("*.json")), "keys left in the keystore"
    if board_root is not None:
        assert not (board_root / "config.json").is_file(), "a config was left on the board"


def provision(cfg: Path, port: str, *extra: str) -> Any:
    return siaga("provision", "--config", str(cfg), "--port", port, *LOCATION, *extra)


def test_provision_blank_board_writes_firmware_and_config_and_passes_selftest(system: System,
                                                                              tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path)
    root = tmp_path / "board"
    with FakeBoard(root, access_points={WIFI_SSID: WIFI_PASSWORD}) as board:
        # A button with a GSM modem: its SIM's number is registered and its config gets the SMS path.
        done = provision(cfg, board.port, "--notes", "pole by the bus stop", "--types", "medical",
                         "--phone", "+62 812-0000-0001", "--sms-gateway", "+6281100000001")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "PASSED: jkt-gambir-0001 works end to end" in done.stdout
        assert "Wi-Fi 'Kelurahan-Gambir': joined" in done.stdout
        assert board.boots == 1  # rebooted once into the firmware it was given
        listed = siaga("devices", "list", "--config", str(cfg))
        assert listed.returncode == 0, listed.stderr
        assert "jkt-gambir-0001  online" in listed.stdout and "4.10 V" in listed.stdout

    # The board's filesystem is laid out as on an ESP32 or a Pico W, compiled where possible.
    assert (root / "main.py").read_bytes() == (UNIX_BOARD / "main.py").read_bytes()
    assert (root / "hal.mpy").read_bytes()[:2] == b"M\x06"
    assert sorted(p.stem for p in (root / "lib" / "siagafw").glob("*.mpy")) == CORE_MODULES
    assert not list((root / "lib" / "siagafw").glob("*.py"))
    assert not list(root.rglob("*.part"))
    # The config is valid for the firmware and holds the identity the gateway and broker know.
    config = load_config((root / "config.json").read_text())
    assert config["dev"] == "jkt-gambir-0001"
    assert config["loc"] == {"lat_e6": -6175392, "lon_e6": 106827153, "addr": "Jl. Medan Merdeka Barat 12",
                             "area": "31.71.01.1001"}
    assert config["types"] == ["medical"]
    assert config["wifi"]["ssid"] == WIFI_SSID
    assert config["sms"] == {"gateway": "+6281100000001", "fallback_s": 30, "test_every_s": 86400}
    assert "SMS path: SIM +6281200000001 sends to the gateway at +6281100000001" in done.stdout
    assert len(bytes.fromhex(config["secret"])) == 32
    assert verify_password(read_entries(system.broker.password_file)["jkt-gambir-0001"], config["mqtt"]["password"])
    assert config["secret"] not in done.stdout + done.stderr

    (device,) = devices_at_gateway(system)
    assert (device["id"], device["lat"], device["lon"], device["area"]) == ("jkt-gambir-0001", -6.175392,
                                                                           106.827153, "31.71.01.1001")
    assert device["firmware"] == "0.2.0" and device["battery_mv"] == 4100  # its first heartbeat arrived
    assert device["phone"] == "+6281200000001"
    alarms = httpx.get(f"{system.gateway.url}/api/v1/alarms", params={"device_id": "jkt-gambir-0001"},
                       headers=system.gateway.admin_headers, timeout=5).json()
    assert [(a["test"], a["kind"]) for a in alarms] == [(True, "general")]

    label = cfg.parent / "state" / "labels" / "jkt-gambir-0001.png"
    assert label.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = [json.loads(line) for line in (cfg.parent / "state" / "installs.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "install" and log[-1]["notes"] == "pole by the bus stop"
    assert log[-1]["phone"] == "+6281200000001"
    assert config["secret"] not in (cfg.parent / "state" / "installs.jsonl").read_text()
    assert not list((cfg.parent / "state" / "keys").glob("*.json"))


def test_reprovision_sends_only_the_files_that_changed(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path, wifi_password=None)
    root = tmp_path / "board"
    with FakeBoard(root) as board:
        first = provision(cfg, board.port)
        assert first.returncode == 0, first.stdout + first.stderr
        (root / "lib" / "siagafw" / "proto.mpy").unlink()
        (root / "lib" / "siagafw" / "proto.py").write_text("# a stale source would shadow the .mpy\n")
        (root / "lib" / "siagafw" / "retired.mpy").write_bytes(b"M\x06old module")
        # An update over the air had installed a version in slot a and put it on trial.
        (root / "slot" / "a" / "lib" / "siagafw").mkdir(parents=True)
        (root / "slot" / "a" / "start.mpy").write_bytes(b"M\x06newer")
        (root / "slot" / "a" / "lib" / "siagafw" / "app.mpy").write_bytes(b"M\x06newer")
        (root / "ota").mkdir()
        (root / "ota" / "boot.json").write_text('{"run": "a", "prev": "factory", "trial": true, "tries": 1}')

        refused = provision(cfg, board.port)
        assert refused.returncode == 2
        assert "already provisioned as jkt-gambir-0001" in refused.stderr

        second = provision(cfg, board.port, "--force")
        assert second.returncode == 0, second.stdout + second.stderr
    total = len(CORE_MODULES) + 4  # the core, the unix board's main.py (the loader), hal and start, and lib/siagaboot
    assert f"sent 1 of {total} files" in second.stdout and "2 removed" in second.stdout
    assert not (root / "lib" / "siagafw" / "proto.py").exists()
    assert not (root / "lib" / "siagafw" / "retired.mpy").exists()
    # Provisioning's firmware is what runs next: the boot state and the slots are gone.
    assert not (root / "ota" / "boot.json").exists()
    assert [p for p in (root / "slot").rglob("*") if p.is_file()] == []
    assert json.loads((root / "config.json").read_text())["dev"] == "jkt-gambir-0002"
    # A new identity starts a new sequence: the old one's counter and outbox are gone.
    assert "EVT boot dev=jkt-gambir-0002 next_seq=0" in board.text()


# ------------------------------------------------------------------------------------------ failures


def test_no_board_answering_on_the_port(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path)
    with FakeBoard(tmp_path / "board", kind="silent") as board:
        done = provision(cfg, board.port)
    assert done.returncode == 3
    assert "nothing answers on" in done.stderr and "charge-only USB cable" in done.stderr
    assert "Traceback" not in done.stderr
    assert_nothing_registered(system, cfg)


def test_no_board_found_on_usb(system: System, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner
    from serial.tools import list_ports

    from siaga.cli import main

    monkeypatch.setattr(list_ports, "comports", lambda: [])
    cfg = config_for(system, tmp_path)
    result = CliRunner().invoke(main, ["provision", "--config", str(cfg), *LOCATION])
    assert result.exit_code == 3
    assert "no board found on USB" in result.stderr
    assert_nothing_registered(system, cfg)


def test_wrong_port(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path)
    done = provision(cfg, "/dev/ttyUSB-siaga-none")
    assert done.returncode == 3
    assert "cannot open serial port /dev/ttyUSB-siaga-none" in done.stderr
    assert "serial ports on this machine" in done.stderr
    assert_nothing_registered(system, cfg)


def test_board_without_micropython(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path)
    with FakeBoard(tmp_path / "board", kind="other") as board:
        done = provision(cfg, board.port)
    assert done.returncode == 3
    assert "answers, but not as MicroPython" in done.stderr and "flash MicroPython first" in done.stderr
    assert_nothing_registered(system, cfg)


def test_firmware_write_failure_registers_nothing(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path)
    root = tmp_path / "board"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "siagafw").write_text("a file where the firmware folder belongs")  # a damaged filesystem
    with FakeBoard(root, access_points={WIFI_SSID: WIFI_PASSWORD}) as board:
        done = provision(cfg, board.port)
    assert done.returncode == 3
    assert "writing lib/siagafw/" in done.stderr and "to the board failed" in done.stderr
    assert "ENOTDIR" in done.stderr and "filesystem may be full or damaged" in done.stderr
    assert_nothing_registered(system, cfg, root)
    assert devices_at_gateway(system) == []


def test_config_write_failure_after_registration_is_rolled_back(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path)
    root = tmp_path / "board"
    (root / "config.json" / "blocker").mkdir(parents=True)  # a folder where the config file goes
    with FakeBoard(root, access_points={WIFI_SSID: WIFI_PASSWORD}) as board:
        done = provision(cfg, board.port)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "writing config.json to the board failed" in done.stderr
    assert "rolling back" in done.stderr and "undone: gateway registration" in done.stderr
    assert "COULD NOT" not in done.stderr
    assert_nothing_registered(system, cfg)
    (device,) = devices_at_gateway(system)
    assert device["decommissioned"]  # registered, then taken back


def test_gateway_unreachable(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path, gateway_url=f"http://127.0.0.1:{free_port()}")
    root = tmp_path / "board"
    with FakeBoard(root, access_points={WIFI_SSID: WIFI_PASSWORD}) as board:
        done = provision(cfg, board.port)
    assert done.returncode == 4
    assert "cannot reach the gateway at http://127.0.0.1:" in done.stderr
    assert_nothing_registered(system, cfg, root)
    assert not (root / "main.py").exists()  # stopped before anything was written


def test_gateway_refuses_the_admin_token(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path, admin_token="not-the-token")
    with FakeBoard(tmp_path / "board") as board:
        done = provision(cfg, board.port)
    assert done.returncode == 4
    assert "refused the admin token" in done.stderr
    assert_nothing_registered(system, cfg)


@pytest.mark.parametrize(("access_points", "message"), [
    ({WIFI_SSID: "another-password"}, "Wi-Fi 'Kelurahan-Gambir' refused the password"),
    ({"Warung-Kopi": WIFI_PASSWORD}, "Wi-Fi network 'Kelurahan-Gambir' is not in range"),
], ids=["wrong-password", "unknown-network"])
def test_wrong_wifi_credentials(system: System, tmp_path: Path, access_points: dict[str, str], message: str) -> None:
    cfg = config_for(system, tmp_path)
    root = tmp_path / "board"
    with FakeBoard(root, access_points=access_points) as board:
        done = provision(cfg, board.port)
    assert done.returncode == 3
    assert message in done.stderr
    assert WIFI_PASSWORD not in done.stdout + done.stderr
    assert_nothing_registered(system, cfg, root)


def test_failed_selftest_is_rolled_back_everywhere(system: System, tmp_path: Path) -> None:
    # The buttons are told a broker port where nothing listens: registered, written, rebooted, and
    # then the button never logs in.
    cfg = config_for(system, tmp_path, broker_port=free_port(), selftest_timeout_s=6)
    root = tmp_path / "board"
    with FakeBoard(root) as board:
        done = provision(cfg, board.port)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "the button did not log in at the broker 127.0.0.1:" in done.stderr
        assert "last error on the board" in done.stderr
        assert "undone: config on the board" in done.stderr
        board.wait_state("repl")  # the tool stopped the firmware to take its config back
    assert_nothing_registered(system, cfg, root)
    assert not list((root / "state").rglob("*.msg"))


def test_invalid_location_says_what_to_type(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path)
    done = siaga("provision", "--config", str(cfg), "--port", "/dev/null", "--latlon", "106.827153, -6.175392",
                 "--address", "x", "--area", "31.71.01.1001")
    assert done.returncode == 2
    assert "latitude: '106.827153' is not valid" in done.stderr
    assert "this looks like a longitude" in done.stderr
    assert_nothing_registered(system, cfg)

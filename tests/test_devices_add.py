"""`siaga devices add` end to end: a button made elsewhere is registered with no board, against a
real Mosquitto, the gateway and the command center as processes. The button is played by a plain
MQTT client (paho) that signs its frames with siagafw.proto and the credentials the tool printed."""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from siaga.broker.passwd import read_entries, verify_password
from siaga.provisioning import validate
from siaga.provisioning.add import Added, Request, credentials_json, credentials_text
from siaga.provisioning.devconfig import Identity
from siaga.provisioning.errors import Invalid
from siaga.provisioning.settings import DeviceDefaults
from siaga.provisioning.validate import Location
from siagafw import proto
from tests.support.board import siaga
from tests.support.mosquitto import MqttClient
from tests.support.net import free_port
from tests.support.system import System
from tests.support.waiting import wait_for
from tests.test_provisioning import LOCATION, config_for, device_logins, devices_at_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

DEV = "jkt-vendor-0001"
LOC = proto.location(-6175392, 106827153, "Jl. Medan Merdeka Barat 12", "31.71.01.1001")


@pytest.fixture(autouse=True)
def _english(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read the tool's English messages (its default is Bahasa Indonesia)."""
    monkeypatch.setenv("SIAGA_LANG", "en")


def add(cfg: Path, device_id: str = DEV, *extra: str) -> Any:
    return siaga("devices", "add", device_id, "--config", str(cfg), *LOCATION, *extra)


def printed_credentials(stdout: str) -> dict[str, str]:
    """The fields of the block between the BEGIN and END lines, by name."""
    block = stdout.partition("----- BEGIN SIAGA DEVICE CREDENTIALS")[2].partition("----- END SIAGA DEVICE")[0]
    fields = {}
    for line in block.splitlines()[1:]:
        name, _, value = line.partition("  ")
        fields[name.strip()] = value.strip()
    return fields


def secret_file(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def gateway_device(system: System, device_id: str = DEV) -> dict[str, Any]:
    resp = httpx.get(f"{system.gateway.url}/api/v1/devices/{device_id}", headers=system.gateway.admin_headers,
                     timeout=5)
    resp.raise_for_status()
    return resp.json()


def incidents_of(system: System, device_id: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{system.cc.url}/api/v1/incidents", headers=system.cc.operator_headers(), timeout=5)
    resp.raise_for_status()
    return [i for i in resp.json() if i["device_id"] == device_id]


def raise_alarm(system: System, device_id: str, secret_hex: str, mqtt_password: str, seq: int) -> dict[str, Any]:
    """Log in as the button, publish a signed alarm, and return the gateway's "received" ack,
    checked against the same secret (so the gateway holds exactly that key)."""
    button = MqttClient(system.broker.port, device_id, mqtt_password)
    try:
        assert not button.connect().is_failure, "the broker refused the printed login"
        button.subscribe(proto.topic(device_id, "ack"))
        body = proto.alarm_body(device_id, seq, "general", LOC, False, 1000, None)
        button.publish(proto.topic(device_id, "alarm"), proto.Signer(proto.secret_from_hex(secret_hex)).seal(
            proto.encode(body)))
        ack = button.expect()
    finally:
        button.close()
    opened = proto.Signer(proto.secret_from_hex(secret_hex)).open(ack.payload)
    assert opened is not None, "the ack is not signed with the device's secret"
    return json.loads(opened)


def assert_nothing_added(system: System, cfg: Path) -> None:
    assert devices_at_gateway(system) == []
    assert device_logins(system) == []
    state = cfg.parent / "state"
    assert not (state / "installs.jsonl").exists()
    assert not list(state.rglob("*.png"))


# ------------------------------------------------------------------------------------------ pure parts


def test_secret_validator_normalises_and_never_echoes_the_secret() -> None:
    good = secrets.token_hex(32)
    assert validate.secret_hex(good.upper() + "\n") == good
    for bad in (good[:63], good + "0", "0x" + good[:62], "g" + good[1:], "0" * 64):
        with pytest.raises(Invalid) as refused:
            validate.secret_hex(bad)
        assert bad not in str(refused.value) and refused.value.field == "device secret"


def test_broker_password_validator_wants_16_to_128_printable_characters() -> None:
    assert validate.mqtt_password(" a-password-of-24-chars!\n") == "a-password-of-24-chars!"
    for bad in ("short-password", "x" * 129, "a password with spaces", "pässwört-pässwört"):
        with pytest.raises(Invalid) as refused:
            validate.mqtt_password(bad)
        assert bad not in str(refused.value)


def test_credentials_block_shows_only_generated_values_and_the_tls_broker(tmp_path: Path) -> None:
    identity = Identity("jkt-vendor-0002", secrets.token_hex(32), "generated-password-0123456789")
    defaults = DeviceDefaults("mqtt.siaga.example", 8883, tmp_path / "ca.crt", None, None, "general", (), 60, {}, {})
    added = Added(identity, secret_generated=False, password_generated=True, broker_login=True, label=None)
    text = credentials_text(added, defaults)
    assert identity.secret_hex not in text and "(from the file given; not shown)" in text
    assert "broker password  generated-password-0123456789" in text
    assert f"mqtt.siaga.example:8883, TLS with the CA in {tmp_path / 'ca.crt'}" in text
    assert "NOT SHOWN AGAIN" in text
    as_json = credentials_json(added, defaults)
    assert as_json["secret_hex"] is None and as_json["mqtt_password"] == identity.mqtt_password
    assert as_json["broker"]["tls"] is True
    req = Request("jkt-vendor-0002", Location(-6175392, 106827153, "Jl. Satu", "31.71.01.1001"),
                  secret_hex=identity.secret_hex, mqtt_password=identity.mqtt_password)
    assert identity.secret_hex not in repr(added) + repr(req)
    assert identity.mqtt_password not in repr(added) + repr(req)


# ------------------------------------------------------------------------------------------ end to end


def test_add_with_a_generated_secret_lets_the_button_raise_an_alarm(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path, wifi_password=None)
    done = add(cfg, DEV, "--site", "pasar-baru", "--notes", "vendor X, batch 3")
    assert done.returncode == 0, done.stdout + done.stderr
    creds = printed_credentials(done.stdout)
    secret, password = creds["device secret"], creds["broker password"]
    assert len(bytes.fromhex(secret)) == 32 and len(password) >= 16
    assert creds["device id"].startswith(f"{DEV} (also its MQTT username and client id)")
    assert creds["broker"] == f"127.0.0.1:{system.broker.port}, plain MQTT (no TLS)"
    assert "NOT SHOWN AGAIN" in done.stdout
    assert secret not in done.stderr and password not in done.stderr

    registered = gateway_device(system)
    assert (registered["lat"], registered["lon"], registered["area"], registered["site"]) == \
           (-6.175392, 106.827153, "31.71.01.1001", "pasar-baru")
    assert verify_password(read_entries(system.broker.password_file)[DEV], password)
    # The laptop keeps a log line and a label, never the secret or the password.
    state = cfg.parent / "state"
    assert not list((state / "keys").glob("*.json"))
    log = (state / "installs.jsonl").read_text()
    entry = json.loads(log.splitlines()[-1])
    assert (entry["event"], entry["device_id"], entry["secret_source"]) == ("add", DEV, "generated")
    assert secret not in log and password not in log
    assert (state / "labels" / f"{DEV}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ack = raise_alarm(system, DEV, secret, password, seq=1)
    assert (ack["dev"], ack["seq"], ack["state"]) == (DEV, 1, "received")
    (incident,) = wait_for(lambda: incidents_of(system, DEV), what="the alarm at the command center")
    assert incident["kind"] == "general" and incident["test"] is False
    assert incident["location"]["lat"] == pytest.approx(-6.175392)

    shown = siaga("devices", "show", DEV, "--config", str(cfg))
    assert shown.returncode == 0, shown.stderr
    assert "add — vendor X, batch 3" in shown.stdout


def test_add_with_a_secret_file_registers_that_secret(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path, wifi_password=None)
    secret = secrets.token_hex(32)
    done = add(cfg, DEV, "--secret-file", str(secret_file(tmp_path, "secret", secret.upper())), "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    printed = json.loads(done.stdout)  # standard output is the JSON document alone
    assert printed["secret_hex"] is None and secret not in done.stdout.lower() + done.stderr.lower()
    assert printed["mqtt_username"] == printed["mqtt_client_id"] == DEV
    assert printed["broker"] == {"host": "127.0.0.1", "port": system.broker.port, "tls": False, "ca_file": None,
                                 "server_hostname": None}
    assert "shown once" in done.stderr

    ack = raise_alarm(system, DEV, secret, printed["mqtt_password"], seq=7)
    assert (ack["seq"], ack["state"]) == (7, "received")

    # The neighbouring commands treat it as any other device.
    rotated = siaga("devices", "rotate-key", DEV, "--config", str(cfg))
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert gateway_device(system)["key_pending"]
    gone = siaga("devices", "decommission", DEV, "--config", str(cfg), "--yes")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert gateway_device(system)["decommissioned"] and device_logins(system) == []
    assert not list((cfg.parent / "state" / "keys").glob("*.json"))


def test_add_of_an_id_already_registered_changes_nothing(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path, wifi_password=None)
    assert add(cfg).returncode == 0
    before = (gateway_device(system), read_entries(system.broker.password_file),
              (cfg.parent / "state" / "installs.jsonl").read_text())

    again = siaga("devices", "add", DEV, "--config", str(cfg), "--latlon", "-6.2, 106.8", "--address", "Jl. Lain 1",
                  "--area", "31.71.01.1002", "--secret-file", str(secret_file(tmp_path, "s", secrets.token_hex(32))))
    assert again.returncode == 2
    assert f"device {DEV} is already registered at the gateway (never seen); nothing was changed" in again.stderr
    assert f"siaga devices show {DEV}" in again.stderr
    assert "BEGIN SIAGA" not in again.stdout
    assert (gateway_device(system), read_entries(system.broker.password_file),
            (cfg.parent / "state" / "installs.jsonl").read_text()) == before

    # A login left at the broker without a registration is not taken over either.
    system.broker.add_device("jkt-vendor-0099", "a-login-left-over-from-before")
    entry = read_entries(system.broker.password_file)["jkt-vendor-0099"]
    left = add(cfg, "jkt-vendor-0099")
    assert left.returncode == 2
    assert "the broker already has a login jkt-vendor-0099, but the gateway has no such device" in left.stderr
    assert read_entries(system.broker.password_file)["jkt-vendor-0099"] == entry
    assert [d["id"] for d in devices_at_gateway(system)] == [DEV]


@pytest.mark.parametrize(("args", "message", "hint"), [
    (["--latlon", "106.827153, -6.175392", "--address", "Jl. Medan Merdeka Barat 12", "--area", "31.71.01.1001"],
     "latitude: '106.827153' is not valid", "this looks like a longitude"),
    ([*LOCATION, "--secret-file", "SECRET"], "the device secret in", "64 hex digits (32 random bytes)"),
    ([*LOCATION, "--mqtt-password-file", "/nonexistent/siaga-password"],
     "cannot read /nonexistent/siaga-password, the file with the device's broker password", ""),
], ids=["swapped-latlon", "short-secret", "missing-password-file"])
def test_add_with_bad_input_registers_nothing(system: System, tmp_path: Path, args: list[str], message: str,
                                              hint: str) -> None:
    cfg = config_for(system, tmp_path, wifi_password=None)
    short = secrets.token_hex(32)[:63]
    args = [str(secret_file(tmp_path, "secret", short)) if a == "SECRET" else a for a in args]
    done = siaga("devices", "add", DEV, "--config", str(cfg), *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and hint in done.stderr
    assert short not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert_nothing_added(system, cfg)


def test_add_with_the_gateway_down_makes_no_broker_login(system: System, tmp_path: Path) -> None:
    cfg = config_for(system, tmp_path, wifi_password=None, gateway_url=f"http://127.0.0.1:{free_port()}")
    done = add(cfg)
    assert done.returncode == 4
    assert "cannot reach the gateway at http://127.0.0.1:" in done.stderr
    assert "check the laptop's network" in done.stderr
    assert_nothing_added(system, cfg)


RELOAD_AND_KILL_THE_GATEWAY = """\
import contextlib, os, signal, socket, sys, time

broker_pid, gateway_pid, gateway_port = map(int, sys.argv[1:])
os.kill(broker_pid, signal.SIGHUP)
with contextlib.suppress(ProcessLookupError):
    os.kill(gateway_pid, signal.SIGKILL)
# Return once the gateway's port refuses connections: the tool's next request then meets a gateway
# that is down, not one still dying (after which it could not tell whether its request arrived).
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", gateway_port), timeout=0.5).close()
    except ConnectionRefusedError:
        break
    time.sleep(0.02)
"""


def test_add_rolls_back_the_broker_login_when_the_gateway_dies_midway(system: System, tmp_path: Path) -> None:
    # The broker's reload command, run right after the login is written and before the gateway
    # registration, also kills the gateway: the one fault, at the one moment under test.
    assert system.gateway.proc is not None
    reload = tmp_path / "reload-and-kill-the-gateway.py"
    reload.write_text(RELOAD_AND_KILL_THE_GATEWAY, encoding="utf-8")
    command = [sys.executable, str(reload), str(system.broker.pid), str(system.gateway.proc.pid),
               str(system.gateway.port)]
    broker = (f"\n[broker]\npassword_file = {json.dumps(str(system.broker.password_file))}\n"
              f"reload_command = {json.dumps(command)}\n")
    cfg = config_for(system, tmp_path, wifi_password=None, password_file=None, extra=broker)
    password = "a-password-the-test-knows-0123"
    done = add(cfg, DEV, "--mqtt-password-file", str(secret_file(tmp_path, "pw", password)))

    assert done.returncode == 4, done.stdout + done.stderr
    assert "broker: login jkt-vendor-0001 made" in done.stdout
    assert "cannot reach the gateway" in done.stderr
    assert "rolling back: broker login" in done.stderr and "undone: broker login" in done.stderr
    assert "gateway registration" not in done.stderr  # the request never reached it: nothing to take back
    assert "COULD NOT" not in done.stderr and "BEGIN SIAGA" not in done.stdout
    assert f"nothing of {DEV} is left at the broker or the gateway: once that is fixed, run the same command " \
           "again" in done.stderr
    assert device_logins(system) == []
    # The rollback reloaded the broker too: the login is refused there, not only gone from the file.
    refused = MqttClient(system.broker.port, DEV, password)
    try:
        assert refused.connect().is_failure
    finally:
        refused.close()
    state = cfg.parent / "state"
    assert not (state / "installs.jsonl").exists() and not list(state.rglob("*.png"))

"""Remote configuration (docs/protocol.md §10) on the real firmware: the MicroPython unix port and
a Mosquitto with the production ACL. The test plays the gateway: with the gateway's login it
publishes a signed, retained config frame and reads the button's heartbeats and alarms. The button
applies the new location, keeps it through a power cut (kill -9 right after it applied it) without
applying the same version again, signs its next alarm with it, and refuses a forged config.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from siaga.broker.process import MosquittoProcess
from siagafw import proto
from siagafw.config import load_config
from tests.support.firmware import FIRMWARE_LIB, FirmwareProcess, device_config, micropython_binary, micropython_env
from tests.support.mosquitto import MqttClient

pytestmark = [pytest.mark.micropython, pytest.mark.mosquitto, pytest.mark.e2e]

DEV = "jkt-rcfg-0001"
NEW_LOC = {"lat_e6": -6200000, "lon_e6": 106816666, "addr": "Jl. M.H. Thamrin 1", "area": "31.71.02.1001"}


def config_frame(secret_hex: str, ver: int, changes: dict[str, Any]) -> bytes:
    body = {"v": 1, "type": "config", "dev": DEV, "ver": ver, "set": changes}
    return proto.Signer(bytes.fromhex(secret_hex)).seal(proto.encode(body))


def next_body(gateway: MqttClient, secret_hex: str, suffix: str) -> dict[str, Any]:
    """The next verified body the button published on its `suffix` topic (others are skipped)."""
    signer = proto.Signer(bytes.fromhex(secret_hex))
    while True:
        msg = gateway.expect(timeout=10)
        if msg.topic == proto.topic(DEV, suffix):
            body = signer.open(msg.payload)
            assert body is not None, msg.payload
            return json.loads(body)


def test_a_pushed_location_is_applied_kept_through_a_power_cut_and_signed_into_the_next_alarm(
        mosquitto: MosquittoProcess, mqtt_client: Callable[..., MqttClient], tmp_path: Path) -> None:
    secret, password = secrets.token_hex(32), secrets.token_urlsafe(18)
    mosquitto.add_device(DEV, password)
    gateway = mqtt_client(mosquitto, mosquitto.gateway_user, mosquitto.gateway_password, client_id="test-gateway")
    gateway.subscribe(proto.topic(DEV, "status"))
    gateway.subscribe(proto.topic(DEV, "alarm"))
    fw = FirmwareProcess(tmp_path / "button", device_config(DEV, secret, mosquitto.port, password, heartbeat_s=300))
    config_topic = proto.topic(DEV, "config")
    with fw:
        fw.expect("EVT connected")
        first = next_body(gateway, secret, "status")
        assert (first["cfg"], first["cfg_bad"]) == (0, None)
        gateway.publish(config_topic, config_frame(secret, 1, {"loc": NEW_LOC, "heartbeat_s": 120}), retain=True)
        assert fw.expect("EVT config_applied") == "EVT config_applied ver=1 keys=heartbeat_s,loc"
        fw.kill()  # a power cut right after: both files are written before the event
        saved = load_config(fw.config_path.read_text(), "unix")
        assert saved["loc"] == NEW_LOC and saved["heartbeat_s"] == 120 and saved["secret"] == secret
        assert (fw.flash / "cfgver").read_text().strip() == "1"

        fw.start()  # the retained copy comes back at the connect: seen, not applied again
        assert fw.expect("EVT config_seen") == "EVT config_seen ver=1"
        status = next_body(gateway, secret, "status")
        while status["cfg"] != 1:  # a heartbeat the killed process had queued may come first
            status = next_body(gateway, secret, "status")
        assert (status["cfg"], status["cfg_bad"], status["every"]) == (1, None, 120)
        fw.hold(600)
        fw.expect("EVT alarm")
        assert next_body(gateway, secret, "alarm")["loc"] == NEW_LOC
        assert len(fw.seen("EVT config_applied")) == 1

        # Signed with another key (a gateway impostor, or a config meant for another button).
        forged = config_frame(secrets.token_hex(32), 2, {"loc": dict(NEW_LOC, addr="Jl. Palsu 9")})
        gateway.publish(config_topic, forged, retain=True)
        assert fw.expect("EVT config_rejected") == "EVT config_rejected bad signature"
        assert load_config(fw.config_path.read_text(), "unix")["loc"] == NEW_LOC
        assert len(fw.seen("EVT config_applied")) == 1


# ---- Wi-Fi networks, encrypted (docs/protocol.md §10.2) ------------------------------------------------

VECTORS = Path(__file__).parent / "vectors" / "wifi_v1.json"
REPO = Path(__file__).resolve().parents[1]


def reference_cipher(secret: bytes, nonce: bytes, data: bytes) -> bytes:
    """The construction of §10.2 written from its description with CPython's hmac module."""
    key = hmac.digest(secret, b"siaga wifi v1", "sha256")
    stream = b"".join(hmac.digest(key, nonce + i.to_bytes(4, "big"), "sha256") for i in range(len(data) // 32 + 1))
    return bytes(a ^ b for a, b in zip(data, stream, strict=False))


def reference_vectors() -> dict[str, Any]:
    """What wifi_v1.json holds: deterministic inputs (derived from labels), answers by reference_cipher."""
    def det(label: str, n: int) -> bytes:
        return hashlib.sha256(b"siaga wifi vectors " + label.encode()).digest()[:n]

    cipher = []
    for n in (0, 1, 31, 32, 33, 64, 65, 200):
        secret, nonce = det(f"secret {n}", 32), det(f"nonce {n}", 16)
        data = (b"".join(det(f"data {n} {i}", 32) for i in range(n // 32 + 1)))[:n]
        cipher.append({"name": f"len{n}", "secret": secret.hex(), "nonce": nonce.hex(), "plain": data.hex(),
                       "ct": reference_cipher(secret, nonce, data).hex()})
    networks = []
    for name, nets in (("one", [{"ssid": "kelurahan-menteng", "password": "kunci-rahasia-lantai-2"}]),
                       ("three", [{"ssid": "Pos \"Ronda\" RW 03", "password": ""},
                                  {"ssid": "warung-é-ü", "password": "a1" * 32},
                                  {"ssid": "x" * 32, "password": "~" * 63}])):
        secret, nonce = det("secret " + name, 32), det("nonce " + name, 16)
        plain = proto.encode({"networks": nets})
        networks.append({"name": name, "secret": secret.hex(), "networks": nets, "plain": plain.decode(),
                         "set": {"nonce": nonce.hex(), "ct": reference_cipher(secret, nonce, plain).hex()}})
    return {"about": "Known answers for the Wi-Fi cipher of docs/protocol.md §10.2 (HMAC-SHA256 as a PRF in "
                     "counter mode), made with CPython's hmac by tests/test_firmware_config_push.py",
            "info": "siaga wifi v1", "cipher": cipher, "networks": networks}


CHECK_VECTORS = """
import binascii, json, sys
from siagafw import remote
with open(sys.argv[1]) as f:
    v = json.load(f)
bad = 0
for c in v["cipher"]:
    u = binascii.unhexlify
    got = remote.wifi_cipher(u(c["secret"]), u(c["nonce"]), u(c["plain"]))
    back = remote.wifi_cipher(u(c["secret"]), u(c["nonce"]), got)
    if binascii.hexlify(got).decode() != c["ct"] or back != u(c["plain"]):
        bad += 1
        print("FAIL cipher/" + c["name"])
for c in v["networks"]:
    if remote.open_wifi(binascii.unhexlify(c["secret"]), c["set"]) != c["networks"]:
        bad += 1
        print("FAIL networks/" + c["name"])
print("%d checked, %d failed" % (len(v["cipher"]) + len(v["networks"]), bad))
"""


def test_wifi_cipher_vectors_are_cpython_hmacs_and_both_interpreters_agree(tmp_path: Path) -> None:
    assert json.loads(VECTORS.read_text(encoding="utf-8")) == reference_vectors(), \
        "regenerate: python -c 'from tests.test_firmware_config_push import write_vectors; write_vectors()'"
    script = tmp_path / "check_wifi.py"
    script.write_text(CHECK_VECTORS)
    for cmd, env in (([micropython_binary(), str(script), str(VECTORS)], micropython_env()),
                     ([sys.executable, str(script), str(VECTORS)], {**os.environ, "PYTHONPATH": str(FIRMWARE_LIB)})):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
        assert done.returncode == 0 and done.stdout.strip() == "10 checked, 0 failed", (cmd[0], done.stdout,
                                                                                         done.stderr)


def write_vectors() -> None:
    VECTORS.write_text(json.dumps(reference_vectors(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


WIFI_PASSWORDS = ("kunci-rahasia-lantai-2", "Sandi Kelurahan #7")


def sealed_wifi(secret_hex: str, networks: list[dict[str, str]]) -> dict[str, str]:
    nonce = secrets.token_bytes(16)
    return {"nonce": nonce.hex(),
            "ct": reference_cipher(bytes.fromhex(secret_hex), nonce, proto.encode({"networks": networks})).hex()}


def test_the_button_decrypts_wifi_networks_keeps_them_and_refuses_tampered_ones(
        mosquitto: MosquittoProcess, mqtt_client: Callable[..., MqttClient], tmp_path: Path) -> None:
    secret, password = secrets.token_hex(32), secrets.token_urlsafe(18)
    mosquitto.add_device(DEV, password)
    gateway = mqtt_client(mosquitto, mosquitto.gateway_user, mosquitto.gateway_password, client_id="test-gateway")
    gateway.subscribe(proto.topic(DEV, "status"))
    provisioned = {"ssid": "pabrik-provisioning", "password": "sandi-pabrik-01", "country": "ID"}
    fw = FirmwareProcess(tmp_path / "button", device_config(DEV, secret, mosquitto.port, password, heartbeat_s=300,
                                                            wifi=provisioned))
    networks = [{"ssid": "kelurahan-menteng", "password": WIFI_PASSWORDS[0]},
                {"ssid": "Pos Ronda RW 03", "password": WIFI_PASSWORDS[1]}]
    config_topic = proto.topic(DEV, "config")
    with fw:
        fw.expect("EVT connected")
        gateway.publish(config_topic, config_frame(secret, 1, {"wifi": sealed_wifi(secret, networks)}), retain=True)
        assert fw.expect("EVT config_applied") == "EVT config_applied ver=1 keys=wifi"
        saved = load_config(fw.config_path.read_text(), "unix")
        assert saved["wifi"] == {**provisioned, "networks": networks}
        status = next_body(gateway, secret, "status")
        while status["cfg"] != 1:
            status = next_body(gateway, secret, "status")
        assert status["cfg_bad"] is None

        # The ciphertext changed on the way (one hex digit), the MAC left as it was: refused whole.
        body = proto.encode({"v": 1, "type": "config", "dev": DEV, "ver": 2,
                             "set": {"wifi": sealed_wifi(secret, [networks[1]])}})
        frame = bytearray(proto.Signer(bytes.fromhex(secret)).seal(body))
        at = frame.index(b'"ct":"') + 6
        frame[at] = ord("0") if frame[at] != ord("0") else ord("1")
        gateway.publish(config_topic, bytes(frame), retain=True)
        assert fw.expect("EVT config_rejected") == "EVT config_rejected bad signature"

        # Signed properly but the list is not one the button takes (a 5-byte password): refused, and
        # the console line names neither password.
        bad = [networks[0], {"ssid": "pendek", "password": "12345"}]
        gateway.publish(config_topic, config_frame(secret, 3, {"wifi": sealed_wifi(secret, bad)}), retain=True)
        refused = fw.expect("EVT config_rejected")
        assert refused.startswith("EVT config_rejected ver=3 config wifi.networks"), refused
        status = next_body(gateway, secret, "status")
        while status["cfg_bad"] != 3:
            status = next_body(gateway, secret, "status")
        assert status["cfg"] == 1
        assert load_config(fw.config_path.read_text(), "unix")["wifi"] == {**provisioned, "networks": networks}
        fw.drain(0.3)
        console = "\n".join(fw.history)
        for p in (*WIFI_PASSWORDS, "12345", provisioned["password"]):
            assert p not in console


# The board's radio without a board: shell.WifiLink under the MicroPython unix port, with stand-ins
# for the machine and network modules and a clock the script moves.
FAKE_MACHINE = """
class _Any:
    def __init__(self, *a, **k):
        pass
Pin = PWM = UART = WDT = Timer = RTC = _Any
def reset():
    raise SystemExit(3)
"""
FAKE_NETWORK = """
STA_IF = 0
AIR = {}            # ssid -> the password that joins it
LOG = []            # every connect() as ssid
class WLAN:
    def __init__(self, i):
        self.joined = None
    def active(self, on):
        pass
    def config(self, **k):
        pass
    def connect(self, ssid, password):
        LOG.append(ssid)
        self.joined = ssid if AIR.get(ssid) == password else None
    def disconnect(self):
        self.joined = None
    def isconnected(self):
        return self.joined is not None and self.joined in AIR
"""
WIFI_SCRIPT = """
import network, shell
class Clock:
    now = 0
    def ticks_ms(self):
        return self.now
clock = Clock()
shell.time = clock
def run(seconds):
    # up() once a second for that long; True if the link was up at the end
    up = False
    for _ in range(seconds):
        clock.now += 1000
        up = link.up()
    return up
network.AIR.update({"b": "pw-b", "c": "pw-c"})
link = shell.WifiLink(shell._networks({"ssid": "a", "password": "pw-a"}), False)
assert link.networks == [("a", "pw-a")]
# A remote list comes first; the provisioned network stays as the last resort (once).
assert shell._networks({"ssid": "a", "password": "pw-a", "networks": [{"ssid": "b", "password": "pw-b"}]}) == [
    ("b", "pw-b"), ("a", "pw-a")]
# The provisioned network's name with another password in the remote list (a typo, an attack)
# does not replace the provisioned pair: it stays the last resort. The very same pair is not repeated.
assert shell._networks({"ssid": "a", "password": "pw-a", "networks": [{"ssid": "a", "password": "wrong-pw"}]}) == [
    ("a", "wrong-pw"), ("a", "pw-a")]
assert shell._networks({"ssid": "a", "password": "pw-a", "networks": [{"ssid": "a", "password": "pw-a"}]}) == [
    ("a", "pw-a")]
assert shell._networks({"ssid": "a", "networks": [{"ssid": "a", "password": "pw-x"}]}) == [("a", "pw-x"), ("a", "")]
link = shell.WifiLink(shell._networks({"ssid": "a", "password": "pw-a", "networks": [
    {"ssid": "a", "password": "pw-a"}, {"ssid": "b", "password": "pw-b"}, {"ssid": "c", "password": "pw-c"}]}), False)
print("1", run(40), network.LOG)          # a fails, b joins and is kept
print("2", run(300), network.LOG)         # nothing more while b works
del network.AIR["b"]                      # b's access point goes away
print("3", run(200), network.LOG)         # b once more (it worked), then c
link.use([("c", "pw-c"), ("a", "pw-a")])  # c is in the new list: kept
print("4", run(100), network.LOG)
network.AIR["b"] = "pw-b"
link.use([("b", "pw-b")])                 # c is not: left at once
print("5", run(2), network.LOG)
"""


def test_a_board_tries_its_networks_in_order_keeps_one_that_works_and_takes_a_new_list(tmp_path: Path) -> None:
    (tmp_path / "machine.py").write_text(FAKE_MACHINE)
    (tmp_path / "network.py").write_text(FAKE_NETWORK)
    (tmp_path / "run.py").write_text(WIFI_SCRIPT)
    board = REPO / "firmware" / "boards" / "common"
    env = {**os.environ, "MICROPYPATH": f"{tmp_path}:.frozen:{FIRMWARE_LIB}:{board}"}
    done = subprocess.run([micropython_binary(), str(tmp_path / "run.py")], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "1 True ['a', 'b']",
        "2 True ['a', 'b']",
        "3 True ['a', 'b', 'b', 'c']",
        "4 True ['a', 'b', 'b', 'c']",
        "5 True ['a', 'b', 'b', 'c', 'b']",
    ]

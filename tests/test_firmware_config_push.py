"""Remote configuration (docs/protocol.md §10) on the real firmware: the MicroPython unix port and
a Mosquitto with the production ACL. The test plays the gateway: with the gateway's login it
publishes a signed, retained config frame and reads the button's heartbeats and alarms. The button
applies the new location, keeps it through a power cut (kill -9 right after it applied it) without
applying the same version again, signs its next alarm with it, and refuses a forged config.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from siaga.broker.process import MosquittoProcess
from siagafw import proto
from siagafw.config import load_config
from tests.support.firmware import FirmwareProcess, device_config
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

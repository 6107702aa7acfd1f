"""Remote configuration at the gateway (docs/protocol.md §10), against a real Mosquitto and gateway
process: what a button receives on its config topic, what its heartbeats report back, what a
restart publishes again, what the admin API refuses, and what the broker lets a button do there."""

from __future__ import annotations

import json
import queue
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from siaga.broker.process import MosquittoProcess
from siaga.gateway import codec
from siagafw import proto
from tests.support.board import provisioning_config, siaga
from tests.support.devices import publish_once
from tests.support.gateway import GatewayProcess
from tests.support.mosquitto import new_broker
from tests.support.net import free_port
from tests.support.system import PLACE, DeviceCredentials
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]


@dataclass
class Rig:
    broker: MosquittoProcess
    gateway: GatewayProcess

    def device(self, device_id: str) -> DeviceCredentials:
        creds = DeviceCredentials(device_id, secrets.token_hex(32), secrets.token_urlsafe(18))
        self.broker.add_device(device_id, creds.mqtt_password)
        self.gateway.register(device_id, creds.secret_hex, **PLACE)
        return creds

    def api(self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.gateway.url}{path}", headers={**self.gateway.admin_headers,
                                                                          **(headers or {})}, timeout=5, **kwargs)

    def config_state(self, device_id: str) -> dict[str, Any]:
        resp = self.api("GET", f"/api/v1/devices/{device_id}")
        resp.raise_for_status()
        state: dict[str, Any] = resp.json()["config"]
        return state


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    folder = tmp_path_factory.mktemp("config-push")
    broker = new_broker(folder / "mosquitto")
    broker.start()
    try:
        with GatewayProcess(folder, mqtt_port=broker.port, mqtt_password=broker.gateway_password,
                            cc_url=f"http://127.0.0.1:{free_port()}", cc_token=secrets.token_urlsafe(24)) as gateway:
            yield Rig(broker, gateway)
    finally:
        broker.close()


class ConfigTopic:
    """The button's side: logged in with the device's own credentials, subscribed to its config
    topic; every message kept with its retain flag, the body only if its MAC is the device's."""

    def __init__(self, port: int, creds: DeviceCredentials) -> None:
        self.creds = creds
        self.signer = proto.Signer(bytes.fromhex(creds.secret_hex))
        self.messages: queue.Queue[tuple[bool, dict[str, Any] | None]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=creds.device_id, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(creds.device_id, creds.mqtt_password)
        self.client.on_message = self._on_message
        subscribed = queue.Queue[bool]()
        self.client.on_subscribe = lambda *a: subscribed.put(True)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        self.client.subscribe(proto.topic(creds.device_id, "config"), qos=1)
        subscribed.get(timeout=10)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        body = self.signer.open(msg.payload)
        self.messages.put((msg.retain, None if body is None else json.loads(body)))

    def next(self, timeout_s: float = 10.0) -> tuple[bool, dict[str, Any] | None]:
        return self.messages.get(timeout=timeout_s)

    def publish(self, payload: bytes, *, retain: bool) -> None:
        self.client.publish(proto.topic(self.creds.device_id, "config"), payload, qos=1,
                            retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def heartbeat(rig: Rig, creds: DeviceCredentials, seq: int, cfg: int, cfg_bad: int | None) -> None:
    body = {**proto.status_body(creds.device_id, seq, "0.1.0", 60, 4000, -60), "cfg": cfg, "cfg_bad": cfg_bad}
    publish_once(rig.broker.port, creds, "status", proto.Signer(bytes.fromhex(creds.secret_hex)).seal(
        proto.encode(body)))


def loc_of(lat: float, lon: float, addr: str, area: str) -> dict[str, Any]:
    return {"lat_e6": round(lat * 1_000_000), "lon_e6": round(lon * 1_000_000), "addr": addr, "area": area}


def test_a_location_change_reaches_the_button_signed_retained_and_versioned(rig: Rig) -> None:
    creds = rig.device("cfg-001")
    patch = {"lat": -6.2001234, "lon": 106.8166667, "address": "Jl. Sudirman 1"}
    rig.api("PATCH", "/api/v1/devices/cfg-001", json=patch).raise_for_status()
    # Subscribing after the push: the broker's retained copy.
    button = ConfigTopic(rig.broker.port, creds)
    try:
        retained, body = button.next()
        loc = loc_of(patch["lat"], patch["lon"], patch["address"], str(PLACE["area"]))
        assert retained and body == {"v": 1, "type": "config", "dev": "cfg-001", "ver": 1, "set": {"loc": loc}}
        resp = rig.api("PUT", "/api/v1/devices/cfg-001/config", json={"heartbeat_s": 120})
        assert resp.status_code == 200
        assert resp.json()["config"] == {"version": 2, "applied": 0, "rejected": None,
                                         "desired": {"loc": loc, "heartbeat_s": 120}}
        _, body = button.next()
        assert body is not None and body["ver"] == 2 and body["set"] == {"loc": loc, "heartbeat_s": 120}
        # The same change again makes no new version.
        rig.api("PUT", "/api/v1/devices/cfg-001/config", json={"heartbeat_s": 120}).raise_for_status()
        heartbeat(rig, creds, 1, 2, None)
        wait_for(lambda: rig.config_state("cfg-001")["applied"] == 2, 10, "applied 2 shown")
        assert rig.config_state("cfg-001")["version"] == 2
        changes = rig.api("GET", "/api/v1/fleet/changes", params={"device_id": "cfg-001"}).json()
        assert [c["action"] for c in changes][:3] == ["configure", "configure", "update"]
        assert changes[0]["detail"] == {"version": 2, "heartbeat_s": [None, 120]}
    finally:
        button.close()


def test_a_restart_publishes_again_only_what_is_not_confirmed(rig: Rig) -> None:
    confirmed, waiting, refused = rig.device("cfg-011"), rig.device("cfg-012"), rig.device("cfg-013")
    for creds in (confirmed, waiting, refused):
        rig.api("PUT", f"/api/v1/devices/{creds.device_id}/config", json={"heartbeat_s": 30}).raise_for_status()
    heartbeat(rig, confirmed, 1, 1, None)
    heartbeat(rig, refused, 1, 0, 1)
    wait_for(lambda: rig.config_state("cfg-011")["applied"] == 1 and rig.config_state("cfg-013")["rejected"] == 1,
             10, "the heartbeats' reports")
    buttons = [ConfigTopic(rig.broker.port, c) for c in (confirmed, waiting, refused)]
    try:
        for b in buttons:
            assert b.next()[0] is True  # the retained copy, at subscribing
        rig.gateway.stop()
        rig.gateway.start()
        retained, body = buttons[1].next()   # published live: no retain flag for a subscriber already there
        assert not retained and body is not None and body["ver"] == 1
        time.sleep(0.5)
        assert buttons[0].messages.empty() and buttons[2].messages.empty()
    finally:
        for b in buttons:
            b.close()


def test_invalid_changes_are_refused_and_a_button_cannot_write_its_config(rig: Rig) -> None:
    creds = rig.device("cfg-021")
    for bad in ({"wifi": {"ssid": "x"}}, {"heartbeat_s": 4}, {"heartbeat_s": "60"}, {"loc": {"lat_e6": 1}},
                {"retry": {"first_ms": 100, "max_ms": 1000}}, {"sms": {"test_every_s": 60}}, {"sms": {}}, {},
                {"heartbeat_s": None}, {"loc": {**loc_of(-6.2, 106.8, "", ""), "lat_e6": 90_000_001}}):
        resp = rig.api("PUT", "/api/v1/devices/cfg-021/config", json=bad)
        assert resp.status_code == 422, (bad, resp.text)
    assert rig.config_state("cfg-021") == {"version": 0, "applied": 0, "rejected": None, "desired": {}}
    button = ConfigTopic(rig.broker.port, creds)
    try:
        # The button's own key, on its own topic, retained: the broker drops it (ACL).
        button.publish(codec.encode_config(bytes.fromhex(creds.secret_hex), "cfg-021", 99, {"heartbeat_s": 5}),
                       retain=True)
        rig.api("PUT", "/api/v1/devices/cfg-021/config",
                json={"sms": {"fallback_s": 20}, "retry": {"first_ms": 1000, "max_ms": 8000}}).raise_for_status()
        retained, body = button.next()
        assert body is not None and body["ver"] == 1 and body["set"] == {
            "sms": {"fallback_s": 20}, "retry": {"first_ms": 1000, "max_ms": 8000}}
    finally:
        button.close()
    late = ConfigTopic(rig.broker.port, creds)   # the retained copy is the gateway's, not the forgery
    try:
        retained, body = late.next()
        assert retained and body is not None and body["ver"] == 1
    finally:
        late.close()


def test_siaga_devices_configure_sends_settings_and_show_tells_the_version(rig: Rig, tmp_path: Path) -> None:
    rig.device("cfg-041")
    prov = provisioning_config(tmp_path, gateway_url=rig.gateway.url, admin_token=rig.gateway.admin_token,
                               broker_port=1883, password_file=None, broker_pid=None, wifi_password=None)
    cfg = ["--config", str(prov)]
    done = siaga("--lang", "en", "devices", "configure", "cfg-041", *cfg, "--heartbeat-s", "300", "--retry",
                 "2000,60000", timeout_s=60)
    assert done.returncode == 0, done.stderr
    assert "configuration version 1 sent" in done.stdout
    assert rig.config_state("cfg-041")["desired"] == {"heartbeat_s": 300, "retry": {"first_ms": 2000, "max_ms": 60000}}
    shown = siaga("--lang", "en", "devices", "show", "cfg-041", *cfg, timeout_s=60)
    assert "version 1, applied 0" in shown.stdout, shown.stdout
    refused = siaga("--lang", "en", "devices", "configure", "cfg-041", *cfg, "--heartbeat-s", "2", timeout_s=60)
    assert refused.returncode != 0 and "422" in refused.stderr
    assert rig.config_state("cfg-041")["version"] == 1


def test_the_codec_takes_heartbeats_with_and_without_the_config_fields() -> None:
    secret = secrets.token_bytes(32)
    signer = proto.Signer(secret)

    def decode(extra: dict[str, Any]) -> codec.Status | codec.Reject:
        body = {k: v for k, v in proto.status_body("cfg-031", 1, "0.1.0", 60).items() if k not in ("cfg", "cfg_bad")}
        body.update(extra)   # older firmware sends neither field
        out = codec.decode(proto.topic("cfg-031", "status"), signer.seal(proto.encode(body)),
                           lambda _: codec.DeviceKey(secret))
        assert isinstance(out, codec.Status | codec.Reject)
        return out

    old = decode({})
    assert isinstance(old, codec.Status) and (old.config_applied, old.config_rejected) == (None, None)
    new = decode({"cfg": 3, "cfg_bad": 4})
    assert isinstance(new, codec.Status) and (new.config_applied, new.config_rejected) == (3, 4)
    for bad in ({"cfg": -1}, {"cfg": True}, {"cfg": 2**31}, {"cfg": 1, "cfg_bad": "4"}):
        refused = decode(bad)
        assert isinstance(refused, codec.Reject) and refused.reason is codec.RejectReason.MALFORMED, bad


# ---- Wi-Fi networks, encrypted (docs/protocol.md §10.2) ------------------------------------------------

PASSWORDS = ("kunci-rahasia-lantai-2", "Sandi Kelurahan #7 (cadangan)")
NETWORKS = [{"ssid": "kelurahan-menteng", "password": PASSWORDS[0]},
            {"ssid": "Pos Ronda RW 03", "password": PASSWORDS[1]},
            {"ssid": "warung-terbuka", "password": ""}]
SHOWN = [{"ssid": "kelurahan-menteng", "password_set": True}, {"ssid": "Pos Ronda RW 03", "password_set": True},
         {"ssid": "warung-terbuka", "password_set": False}]


def raw_config(port: int, creds: DeviceCredentials) -> tuple[bool, bytes]:
    """The retained payload on the device's config topic, bytes as the broker keeps them."""
    got: queue.Queue[tuple[bool, bytes]] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=creds.device_id + "-raw", protocol=mqtt.MQTTv311)
    client.username_pw_set(creds.device_id, creds.mqtt_password)
    client.on_message = lambda _c, _u, msg: got.put((msg.retain, bytes(msg.payload)))
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    try:
        client.subscribe(proto.topic(creds.device_id, "config"), qos=1)
        return got.get(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def assert_no_password(text: str | bytes) -> None:
    data = text if isinstance(text, bytes) else text.encode()
    for p in PASSWORDS:
        assert p.encode() not in data and p.encode().hex().encode() not in data


def test_wifi_networks_go_to_the_button_encrypted_and_are_never_shown(rig: Rig) -> None:
    creds = rig.device("cfg-051")
    resp = rig.api("PUT", "/api/v1/devices/cfg-051/config", json={"wifi": {"networks": NETWORKS}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["config"]["desired"] == {"wifi": {"networks": SHOWN}}
    assert_no_password(resp.text)

    retained, payload = raw_config(rig.broker.port, creds)
    assert retained
    assert_no_password(payload)            # what the broker keeps on its disk
    body = json.loads(proto.Signer(bytes.fromhex(creds.secret_hex)).open(payload) or b"null")
    sealed = body["set"]["wifi"]
    assert set(sealed) == {"nonce", "ct"} and len(sealed["nonce"]) == 32
    # Decrypted with the device's secret (the button's own code), and with another: nothing readable.
    assert codec.open_wifi(bytes.fromhex(creds.secret_hex), sealed) == NETWORKS
    with pytest.raises(ValueError, match="wifi: ") as refused:
        codec.open_wifi(secrets.token_bytes(32), sealed)
    assert_no_password(str(refused.value))

    # The same list again is no new version; a restart publishes it again under a fresh nonce.
    rig.api("PUT", "/api/v1/devices/cfg-051/config", json={"wifi": {"networks": NETWORKS}}).raise_for_status()
    assert rig.config_state("cfg-051")["version"] == 1
    rig.gateway.stop()
    rig.gateway.start()
    wait_for(lambda: raw_config(rig.broker.port, creds)[1] != payload, 10, "published again")
    again = json.loads(proto.Signer(bytes.fromhex(creds.secret_hex)).open(raw_config(rig.broker.port, creds)[1])
                       or b"null")
    assert again["ver"] == 1 and again["set"]["wifi"]["nonce"] != sealed["nonce"]
    assert codec.open_wifi(bytes.fromhex(creds.secret_hex), again["set"]["wifi"]) == NETWORKS

    # A changed password makes a version; neither the API, the change log nor the gateway's log has it.
    changed = [dict(NETWORKS[0], password="kunci-baru-lantai-3"), NETWORKS[1]]
    rig.api("PUT", "/api/v1/devices/cfg-051/config", json={"wifi": {"networks": changed}}).raise_for_status()
    assert rig.config_state("cfg-051")["desired"] == {"wifi": {"networks": SHOWN[:2]}}
    changes = rig.api("GET", "/api/v1/fleet/changes", params={"device_id": "cfg-051"})
    assert [c["detail"]["version"] for c in changes.json() if c["action"] == "configure"] == [2, 1]
    assert changes.json()[1]["detail"]["wifi"] == [None, {"networks": SHOWN}]
    for text in (changes.text, rig.api("GET", "/api/v1/devices").text, rig.api("GET", "/api/v1/audit").text,
                 rig.gateway.log()):
        assert_no_password(text)
        assert "kunci-baru-lantai-3" not in text


def test_wifi_networks_out_of_bounds_or_too_large_for_a_frame_are_refused(rig: Rig) -> None:
    rig.device("cfg-061")
    net = {"ssid": "kelurahan", "password": "12345678"}
    for bad in ({"wifi": {"networks": []}}, {"wifi": {"networks": [net] * 4}}, {"wifi": {}},
                {"wifi": {"networks": [{"ssid": "", "password": "12345678"}]}},
                {"wifi": {"networks": [{"ssid": "x" * 33, "password": "12345678"}]}},
                {"wifi": {"networks": [{"ssid": "é" * 17, "password": "12345678"}]}},   # 34 bytes
                {"wifi": {"networks": [{"ssid": "kelurahan", "password": "1234567"}]}},
                {"wifi": {"networks": [{"ssid": "kelurahan", "password": "x" * 64}]}},
                {"wifi": {"networks": [{"ssid": "kelurahan"}]}},
                {"wifi": {"networks": [{**net, "hidden": True}]}},
                {"wifi": {"networks": [net], "ssid": "kelurahan"}}):
        resp = rig.api("PUT", "/api/v1/devices/cfg-061/config", json=bad)
        assert resp.status_code == 422, (bad, resp.text)
    # Three networks at their longest, with a long address: more than one frame holds.
    rig.api("PUT", "/api/v1/devices/cfg-061/config", json={"loc": {**loc_of(-6.2, 106.8, "J" * 200, "31.71")}}
            ).raise_for_status()
    longest = [{"ssid": f"{i}" * 32, "password": "a1" * 32} for i in range(3)]
    resp = rig.api("PUT", "/api/v1/devices/cfg-061/config", json={"wifi": {"networks": longest}},
                   headers={"Accept-Language": "id"})
    assert resp.status_code == 409, resp.text
    assert "bytes" in resp.json()["detail"] and "bingkai" in resp.json()["message"]
    assert rig.config_state("cfg-061")["version"] == 1
    # Long ones fit with a short address; a long one given later is refused in its turn, before the registry
    # changes.
    rig.api("PATCH", "/api/v1/devices/cfg-061", json={"address": "Jl. Kebon Sirih 1"}).raise_for_status()
    long = [{"ssid": f"{i}" * 32, "password": "b" * 40} for i in range(3)]
    rig.api("PUT", "/api/v1/devices/cfg-061/config", json={"wifi": {"networks": long}}).raise_for_status()
    resp = rig.api("PATCH", "/api/v1/devices/cfg-061", json={"address": "J" * 200})
    assert resp.status_code == 409 and "bytes" in resp.json()["detail"], resp.text
    assert rig.config_state("cfg-061")["version"] == 3
    assert rig.api("GET", "/api/v1/devices/cfg-061").json()["address"] == "Jl. Kebon Sirih 1"
    # Without a location the longest fit, at the longest device id and version.
    assert len(codec.encode_config(bytes(32), "x" * 32, codec.CONFIG_VER_MAX, {"wifi": {"networks": longest}})) \
        <= codec.MAX_FRAME


def test_siaga_devices_configure_wifi_takes_passwords_from_files_or_the_environment(rig: Rig, tmp_path: Path) -> None:
    creds = rig.device("cfg-071")
    prov = provisioning_config(tmp_path, gateway_url=rig.gateway.url, admin_token=rig.gateway.admin_token,
                               broker_port=1883, password_file=None, broker_pid=None, wifi_password=None)
    cfg = ["--config", str(prov)]
    no_password = siaga("--lang", "en", "devices", "configure", "cfg-071", *cfg, "--wifi", "kelurahan-menteng",
                        timeout_s=60)
    assert no_password.returncode != 0 and "--wifi-password-file" in no_password.stderr
    first = tmp_path / "first.txt"
    first.write_text(PASSWORDS[0] + "\n")
    done = siaga("--lang", "en", "devices", "configure", "cfg-071", *cfg, "--wifi", "kelurahan-menteng",
                 "--wifi", "Pos Ronda RW 03", "--wifi-password-env", "FIRST", "--wifi-password-env", "SECOND",
                 env={"FIRST": PASSWORDS[0], "SECOND": PASSWORDS[1]}, timeout_s=60)
    assert done.returncode == 0, done.stderr
    assert "configuration version 1 sent" in done.stdout
    assert_no_password(done.stdout + done.stderr)
    assert rig.config_state("cfg-071")["desired"] == {"wifi": {"networks": SHOWN[:2]}}
    body = json.loads(proto.Signer(bytes.fromhex(creds.secret_hex)).open(raw_config(rig.broker.port, creds)[1])
                      or b"null")
    assert codec.open_wifi(bytes.fromhex(creds.secret_hex), body["set"]["wifi"]) == NETWORKS[:2]
    by_file = siaga("--lang", "en", "devices", "configure", "cfg-071", *cfg, "--wifi", "kelurahan-menteng",
                    "--wifi-password-file", str(first), timeout_s=60)
    assert by_file.returncode == 0, by_file.stderr
    assert rig.config_state("cfg-071")["desired"] == {"wifi": {"networks": SHOWN[:1]}}
    mismatch = siaga("--lang", "en", "devices", "configure", "cfg-071", *cfg, "--wifi", "a-net", "--wifi", "b-net",
                     "--wifi-password-file", str(first), timeout_s=60)
    assert mismatch.returncode != 0 and "2 --wifi networks but 1 passwords" in mismatch.stderr
    shown = siaga("--lang", "en", "devices", "show", "cfg-071", *cfg, timeout_s=60)
    assert_no_password(shown.stdout + shown.stderr)
    assert rig.config_state("cfg-071")["version"] == 2

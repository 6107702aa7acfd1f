"""Firmware over the air at the gateway (docs/protocol.md §11), against a real Mosquitto, a real
gateway process and its real admin API over HTTP. The buttons are CPython stand-ins: paho-mqtt
clients logged in with each device's own credentials, signing with the firmware core's Signer, so
every frame crosses the broker's ACL as a button's would.

What is proved: a bundle is checked at upload and a refused one audited; a rollout offers the
version to the share of devices asked for, in a fixed order, and widens; an offer is retained; a
button downloads a whole bundle through chunk requests, byte for byte, its chunks at QoS 0; garbage on
the OTA topics is refused and counted (chunk requests audited once a minute) while an alarm beside it
gets through; failing canaries halt a rollout, which then refuses to widen, withdraws the offers not
acted on and offers them again on resume; a trial that fails after the new firmware's first heartbeat
or after `confirmed` still counts as failed; a late report never revives a withdrawn offer; a rollout
is done when nothing is left to do however that came about; the halt limit survives a widening; only
admins change firmware and rollouts, each written to the change log; a downgrade needs saying so; an
offer keeps its chunk size across a restart with another chunk_bytes; a replayed report is refused;
the gateway report's summary lists each rollout's buttons with their state, failed and busy first,
bounded in one query that both SQLite and PostgreSQL run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from siaga.broker.process import MosquittoProcess
from siaga.gateway.codec import OtaStatus, Status
from siaga.gateway.config import ota_key_id
from siaga.gateway.ota import OtaService, check_bundle
from siaga.gateway.store import IN_PROCESS, Batch, NewBundle, open_store
from siaga.provisioning import bundle
from siagafw import proto
from tests.support.devices import LOC
from tests.support.gateway import GatewayProcess
from tests.support.mosquitto import new_broker
from tests.support.net import free_port
from tests.support.system import PLACE, DeviceCredentials
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

CHUNK = 512


@dataclass(frozen=True)
class Bundles:
    key_hex: str          # the fleet's public key, as [ota] keys takes it
    good: bytes           # version 0.3.0 for the unix board, signed by the fleet key
    other_key: bytes      # the same firmware signed by a key the gateway does not hold

    @property
    def good_id(self) -> str:
        return hashlib.sha256(self.good).hexdigest()[:16]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    folder = tmp_path_factory.mktemp("ota-keys")
    public = bundle.generate_key(folder / "fleet.pem")
    bundle.generate_key(folder / "stranger.pem")
    good = bundle.build(board="unix", version="0.3.0", key_path=folder / "fleet.pem").data
    other = bundle.build(board="unix", version="0.3.0", key_path=folder / "stranger.pem").data
    return Bundles(public.hex(), good, other)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoProcess]:
    b = new_broker(tmp_path_factory.mktemp("ota-broker") / "mosquitto")
    b.start()
    try:
        yield b
    finally:
        b.close()


@dataclass
class Rig:
    broker: MosquittoProcess
    gateway: GatewayProcess
    bundles: Bundles
    buttons: list[Button] = field(default_factory=list)

    def api(self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.gateway.url}{path}", headers={**self.gateway.admin_headers,
                                                                          **(headers or {})}, timeout=10, **kwargs)

    def upload(self, data: bytes) -> httpx.Response:
        return self.api("POST", "/api/v1/firmware", content=data, headers={"Content-Type": "application/octet-stream"})

    def button(self, device_id: str, *, fw: str = "0.2.0") -> Button:
        creds = DeviceCredentials(device_id, secrets.token_hex(32), secrets.token_urlsafe(18))
        self.broker.add_device(device_id, creds.mqtt_password)
        self.gateway.register(device_id, creds.secret_hex, **PLACE)
        b = Button(self.broker.port, creds, fw)
        self.buttons.append(b)
        return b

    def device(self, device_id: str) -> dict[str, Any]:
        resp = self.api("GET", f"/api/v1/devices/{device_id}")
        resp.raise_for_status()
        out: dict[str, Any] = resp.json()
        return out

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        resp = self.api("GET", f"/api/v1/rollouts/{rollout_id}")
        resp.raise_for_status()
        out: dict[str, Any] = resp.json()
        return out

    def rejected(self) -> float:
        return sum(v for k, v in self.gateway.metrics().items() if k.startswith("rejected_total"))


class Button:
    """A CPython stand-in for a button: its own login, subscribed to its ack, ota and ota/data
    topics; what arrives there is kept if its MAC is the device's."""

    def __init__(self, port: int, creds: DeviceCredentials, fw: str) -> None:
        self.creds = creds
        self.fw = fw
        self.seq = 0
        self.signer = proto.Signer(bytes.fromhex(creds.secret_hex))
        self.offers: queue.Queue[tuple[bool, dict[str, Any]]] = queue.Queue()
        self.chunks: queue.Queue[tuple[dict[str, Any], bytes]] = queue.Queue()
        self.chunk_qos: set[int] = set()   # the QoS chunks arrived at (subscribed at 1: the gateway's own)
        self.acks: queue.Queue[dict[str, Any]] = queue.Queue()
        self.forged = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=creds.device_id, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(creds.device_id, creds.mqtt_password)
        self.client.max_inflight_messages_set(100)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        self.client.subscribe([(self.topic("ack"), 1), (self.topic("ota"), 1), (self.topic("ota/data"), 1)])
        assert subscribed.wait(10)

    @property
    def id(self) -> str:
        return self.creds.device_id

    def topic(self, suffix: str) -> str:
        return proto.topic(self.id, suffix)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        body = self.signer.open(msg.payload)
        if body is None:
            self.forged += 1
            return
        if msg.topic.endswith("/ota/data"):
            header, _, data = bytes(body).partition(b"\n")
            self.chunk_qos.add(msg.qos)
            self.chunks.put((json.loads(header), data))
        elif msg.topic.endswith("/ota"):
            self.offers.put((bool(msg.retain), json.loads(body)))
        else:
            self.acks.put(json.loads(body))

    def send(self, suffix: str, body: dict[str, Any] | bytes, qos: int = 1) -> None:
        payload = body if isinstance(body, bytes) else self.signer.seal(proto.encode(body))
        self.client.publish(self.topic(suffix), payload, qos=qos).wait_for_publish(10)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def heartbeat(self) -> None:
        self.send("status", {**proto.status_body(self.id, self.next_seq(), self.fw, 60, 4000, -60), "board": "unix"})

    def alarm(self) -> int:
        seq = self.next_seq()
        self.send("alarm", proto.alarm_body(self.id, seq, "medical", LOC, False, 1000, int(time.time())))
        return seq

    def get(self, bundle_id: str, off: int, n: int) -> None:
        self.send("ota/get", {"v": 1, "type": "ota_get", "dev": self.id, "id": bundle_id, "off": off, "n": n}, qos=0)

    def report(self, state: str, bundle_id: str, *, detail: str = "", fw: str | None = None,
               seq: int | None = None, version: str = "0.3.0") -> bytes:
        frame = self.signer.seal(proto.encode({
            "v": 1, "type": "ota_status", "dev": self.id, "seq": self.next_seq() if seq is None else seq,
            "id": bundle_id, "version": version, "state": state, "detail": detail, "fw": fw or self.fw}))
        self.send("ota/status", frame)
        return frame

    def offer(self, timeout_s: float = 10.0) -> tuple[bool, dict[str, Any]]:
        return self.offers.get(timeout=timeout_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_rig(tmp_path: Path, broker: MosquittoProcess, bundles: Bundles, ota: str | None,
             people: dict[str, str] | None = None) -> Iterator[Rig]:
    """A gateway of its own (its own database and MQTT session) on the module's broker."""
    extra = "" if ota is None else f'\n[ota]\nkeys = ["{bundles.key_hex}"]\nchunk_bytes = {CHUNK}\n{ota}\n'
    gateway = GatewayProcess(tmp_path, mqtt_port=broker.port, mqtt_password=broker.gateway_password,
                             cc_url=f"http://127.0.0.1:{free_port()}", cc_token=secrets.token_urlsafe(24),
                             gateway_id=f"gw-ota-{secrets.token_hex(3)}", extra_toml=extra, people=people)
    rig = Rig(broker, gateway.start(), bundles)
    try:
        yield rig
    finally:
        for b in rig.buttons:
            b.close()
        assert gateway.running(), gateway.log()[-3000:]
        gateway.stop()
        assert "Traceback" not in gateway.log(), gateway.log()[-3000:]


@pytest.fixture
def rig(tmp_path: Path, broker: MosquittoProcess, bundles: Bundles) -> Iterator[Rig]:
    yield from make_rig(tmp_path, broker, bundles, "max_failed_percent = 20\nget_rate_per_s = 1000",
                        people={"tari": "technician"})


def fleet(rig: Rig, prefix: str, n: int) -> list[Button]:
    """n buttons that have told the gateway their board and firmware (0.2.0) in a heartbeat."""
    buttons = [rig.button(f"{prefix}-{i:02d}") for i in range(n)]
    for b in buttons:
        b.heartbeat()
    wait_for(lambda: all(rig.device(b.id)["board"] == "unix" for b in buttons), 10, "the boards reported")
    return buttons


def offered(buttons: list[Button], timeout_s: float = 3.0) -> dict[str, dict[str, Any]]:
    """The offers the buttons received within `timeout_s` (the newest of each)."""
    out: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for b in buttons:
            while not b.offers.empty():
                out[b.id] = b.offers.get()[1]
        time.sleep(0.05)
    return out


# ---- upload ---------------------------------------------------------------------------------------


def test_an_upload_is_checked_and_a_refused_bundle_audited_never_kept(rig: Rig) -> None:
    good = rig.bundles.good
    first = rig.upload(good)
    assert first.status_code == 201, first.text
    entry = first.json()
    assert entry["id"] == rig.bundles.good_id and entry["sha256"] == hashlib.sha256(good).hexdigest()
    assert (entry["version"], entry["board"], entry["size"], entry["min_boot"]) == ("0.3.0", "unix", len(good), 1)
    assert entry["files"] > 5
    again = rig.upload(good)
    assert again.status_code == 200 and again.json() == entry

    manifest_len = int.from_bytes(good[6:10], "big")
    signature_at = 10 + manifest_len
    bad_signature = bytearray(good)
    bad_signature[signature_at + 5] ^= 0x01
    wrong_hash = bytearray(good)
    wrong_hash[-1] ^= 0x01
    for data, reason in ((bytes(bad_signature), "bad_signature"), (bytes(wrong_hash), "wrong_hash"),
                         (rig.bundles.other_key, "unknown_key"), (b"SGFW1\n\x00", "malformed"),
                         (good[:-100], "malformed")):
        resp = rig.upload(data)
        assert resp.status_code == 422, (reason, resp.text)
        assert resp.json()["reason"] == reason and resp.json()["message"]
    not_binary = rig.api("POST", "/api/v1/firmware", json={"bundle": "x"})
    assert not_binary.status_code == 415
    listed = rig.api("GET", "/api/v1/firmware").json()
    assert [b["id"] for b in listed] == [rig.bundles.good_id]
    for reason, n in (("bad_signature", 1), ("wrong_hash", 1), ("unknown_key", 1), ("malformed", 2)):
        audit = rig.api("GET", "/api/v1/audit", params={"reason": f"firmware_{reason}"}).json()
        assert len(audit) == n, (reason, audit)
        assert audit[0]["topic"] == "api/v1/firmware" and "admin" in audit[0]["detail"]
    metrics = rig.gateway.metrics()
    assert metrics['ota_refused_total{reason="bad_signature"}'] == 1
    assert metrics['ota_refused_total{reason="malformed"}'] == 2


def test_without_an_ota_table_uploads_are_refused(tmp_path: Path, broker: MosquittoProcess, bundles: Bundles) -> None:
    with contextlib.contextmanager(make_rig)(tmp_path, broker, bundles, None) as rig:
        resp = rig.upload(bundles.good)
        assert resp.status_code == 409, resp.text
        assert rig.api("GET", "/api/v1/firmware").json() == []


# ---- rollouts -------------------------------------------------------------------------------------


def test_a_rollout_offers_its_share_in_a_fixed_order_retained_and_widens(rig: Rig) -> None:
    buttons = fleet(rig, "ota-wide", 5)
    assert rig.upload(rig.bundles.good).status_code == 201
    assert rig.api("POST", "/api/v1/rollouts", json={"version": "0.4.0", "percent": 40}).status_code == 404
    resp = rig.api("POST", "/api/v1/rollouts", json={"version": "0.3.0", "percent": 40})
    assert resp.status_code == 201, resp.text
    rollout = resp.json()
    assert (rollout["state"], rollout["percent"], rollout["targeted"], rollout["eligible"]) == ("active", 40, 2, 5)
    first = offered(buttons)
    # ceil(40 % of 5) = 2, the first two in the order of SHA-256("<rollout>:<device>")
    order = sorted((b.id for b in buttons), key=lambda d: hashlib.sha256(f"{rollout['id']}:{d}".encode()).digest())
    assert sorted(first) == sorted(order[:2])
    for device_id, body in first.items():
        assert body == {"v": 1, "type": "ota", "dev": device_id, "ver": 1, "id": rig.bundles.good_id,
                        "sha256": hashlib.sha256(rig.bundles.good).hexdigest(), "size": len(rig.bundles.good),
                        "chunk": CHUNK, "version": "0.3.0", "rollout": rollout["id"]}
        assert rig.device(device_id)["ota"] == {"rollout": rollout["id"], "version": "0.3.0", "state": "offered",
                                                "detail": ""}
    assert rig.device(order[4])["ota"] is None

    # Retained: a button that connects later is handed its offer by the broker.
    late = next(b for b in buttons if b.id == order[0])
    late.close()
    again = Button(rig.broker.port, late.creds, late.fw)
    rig.buttons.append(again)
    retained, body = again.offer()
    assert retained and body["id"] == rig.bundles.good_id
    buttons = [again if b is late else b for b in buttons]

    # The same version again widens the same rollout (200) and never shrinks it (409).
    resp = rig.api("POST", "/api/v1/rollouts", json={"version": "0.3.0", "percent": 80})
    assert resp.status_code == 200, resp.text
    assert (resp.json()["id"], resp.json()["targeted"]) == (rollout["id"], 4)
    more = offered(buttons)
    assert sorted(more) == sorted(order[2:4])
    assert rig.api("POST", "/api/v1/rollouts", json={"version": "0.3.0", "percent": 60}).status_code == 409

    # A restart of the gateway publishes the offers again.
    rig.gateway.stop()
    rig.gateway.start()
    after = offered(buttons, 5.0)
    assert sorted(after) == sorted(order[:4]) and {b["ver"] for b in after.values()} == {1}


def test_a_button_downloads_a_whole_bundle_byte_for_byte_and_its_update_finishes_the_rollout(rig: Rig) -> None:
    [button] = fleet(rig, "ota-dl", 1)
    assert rig.upload(rig.bundles.good).status_code == 201
    rollout = rig.api("POST", "/api/v1/rollouts", json={"version": "0.3.0", "percent": 100}).json()
    _, offer = button.offer()
    size, chunk, bundle_id = offer["size"], offer["chunk"], offer["id"]
    got = bytearray()
    button.report("downloading", bundle_id)
    while len(got) < size:
        off = len(got)
        button.get(bundle_id, off, 4)
        for k in range(min(4, -(-(size - off) // chunk))):
            header, data = button.chunks.get(timeout=5)
            assert header == {"dev": button.id, "id": bundle_id, "off": off + k * chunk, "type": "ota_data", "v": 1}
            assert len(data) == min(chunk, size - off - k * chunk)
            got += data
    assert bytes(got) == rig.bundles.good
    assert hashlib.sha256(got).hexdigest() == offer["sha256"]
    assert button.chunks.empty() and button.forged == 0
    # Chunks go out at QoS 0 (the button subscribed at 1): no packet ids, nothing kept while away.
    assert button.chunk_qos == {0}
    wait_for(lambda: rig.device(button.id)["ota"]["state"] == "downloading", 10, "downloading shown")

    button.report("installed", bundle_id)
    wait_for(lambda: rig.device(button.id)["ota"]["state"] == "installed", 10, "installed shown")
    button.fw = "0.3.0"
    button.report("confirmed", bundle_id)
    wait_for(lambda: rig.rollout(rollout["id"])["state"] == "done", 10, "the rollout done")
    shown = rig.device(button.id)
    assert shown["firmware"] == "0.3.0" and shown["ota"]["state"] == "updated"
    assert rig.rollout(rollout["id"])["devices"][0]["state"] == "updated"
    # Done with: its requests are refused now (no offer left to serve).
    before = rig.rejected()
    button.get(bundle_id, 0, 1)
    wait_for(lambda: rig.rejected() == before + 1, 10, "a request for a finished offer refused")


def test_failing_canaries_halt_the_rollout_which_withdraws_and_refuses_to_widen(rig: Rig) -> None:
    buttons = fleet(rig, "ota-halt", 10)
    assert rig.upload(rig.bundles.good).status_code == 201
    rollout = rig.api("POST", "/api/v1/rollouts", json={"version": "0.3.0", "percent": 50}).json()
    canaries = offered(buttons)
    assert len(canaries) == 5
    ids = sorted(canaries)
    by_id = {b.id: b for b in buttons}
    by_id[ids[0]].report("refused", rig.bundles.good_id, detail="wrong_sha256")
    wait_for(lambda: rig.rollout(rollout["id"])["counts"]["failed"] == 1, 10, "the first failure counted")
    assert rig.rollout(rollout["id"])["state"] == "active"   # 1 of 5 is 20 %: not more than 20 %
    by_id[ids[1]].report("downloading", rig.bundles.good_id)
    by_id[ids[1]].report("rolled_back", rig.bundles.good_id, detail="selftest")
    wait_for(lambda: rig.rollout(rollout["id"])["state"] == "halted", 10, "the rollout halted")
    shown = rig.rollout(rollout["id"])
    assert shown["counts"] == {"offered": 0, "downloading": 0, "installed": 0, "updated": 0, "failed": 2,
                               "withdrawn": 3}
    assert shown["halted_reason"] == "failures"   # a code: each client says it in its reader's language
    # The three that had not acted get a withdrawal: a new version, no bundle.
    withdrawn = offered([by_id[d] for d in ids[2:]])
    assert sorted(withdrawn) == ids[2:]
    for device_id, body in withdrawn.items():
        assert body == {"v": 1, "type": "ota", "dev": device_id, "ver": canaries[device_id]["ver"] + 1, "id": "",
                        "rollout": rollout["id"]}
    assert rig.device(ids[1])["ota"] == {"rollout": rollout["id"], "version": "0.3.0", "state": "failed",
                                         "detail": "selftest"}
    refused = rig.api("POST", "/api/v1/rollouts", json={"version": "0.3.0", "percent": 80})
    assert refused.status_code == 409 and "halted" in refused.json()["detail"]
    assert rig.api("GET", "/api/v1/audit", params={"reason": "rollout_halted"}).json()[0]["topic"] == \
        f"rollout/{rollout['id']}"
    assert rig.gateway.metrics()["ota_rollouts_halted_total"] == 1
    # A withdrawn offer is no longer served.
    before = rig.rejected()
    by_id[ids[2]].get(rig.bundles.good_id, 0, 1)
    wait_for(lambda: rig.rejected() == before + 1, 10, "a request for a withdrawn offer refused")
    assert by_id[ids[2]].chunks.empty()
    # Resumed explicitly, it widens again, and the devices whose offers the halt withdrew are offered
    # it again (a new offer version); the halt limit it was started with stays.
    resumed = rig.api("POST", "/api/v1/rollouts", json={"version": "0.3.0", "percent": 80, "resume": True})
    assert resumed.status_code == 200 and resumed.json()["state"] == "active", resumed.text
    assert resumed.json()["halted_reason"] is None and resumed.json()["max_failed_percent"] == 20
    again = offered(buttons)
    for device_id in ids[2:]:
        assert again[device_id]["id"] == rig.bundles.good_id
        assert again[device_id]["ver"] == withdrawn[device_id]["ver"] + 1
    assert len(again) == 6   # the three again, and three more for 80 % of 10
    shown = rig.rollout(rollout["id"])
    assert shown["counts"]["withdrawn"] == 0 and shown["counts"]["offered"] == 6 and shown["counts"]["failed"] == 2


def test_a_replayed_update_report_is_refused(rig: Rig) -> None:
    [button] = fleet(rig, "ota-replay", 1)
    assert rig.upload(rig.bundles.good).status_code == 201
    rig.api("POST", "/api/v1/rollouts", json={"version": "0.3.0", "percent": 100}).raise_for_status()
    button.offer()
    frame = button.report("downloading", rig.bundles.good_id)
    wait_for(lambda: rig.device(button.id)["ota"]["state"] == "downloading", 10, "the report taken")
    button.send("ota/status", frame)   # the same frame again
    older = button.report("refused", rig.bundles.good_id, detail="no_space", seq=button.seq - 1)
    assert older != frame
    wait_for(lambda: len(rig.api("GET", "/api/v1/audit", params={"reason": "replay"}).json()) == 2, 10,
             "both replays audited")
    audit = rig.api("GET", "/api/v1/audit", params={"reason": "replay"}).json()
    assert {a["topic"] for a in audit} == {button.topic("ota/status")}
    assert rig.device(button.id)["ota"]["state"] == "downloading"   # neither moved it


# ---- garbage beside an alarm ----------------------------------------------------------------------

ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=40),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                     max_size=3), max_leaves=5)


INT_FIELDS = ("v", "seq", "off", "n")


def _wrong_type(field_name: str, value: Any) -> bool:
    """Whether `value` is of another JSON type than `field_name` of an ota_get or ota_status takes
    (an integer, or else a string): refused whatever the rest of the body says."""
    if field_name in INT_FIELDS:
        return type(value) is not int
    return not isinstance(value, str)


def test_garbage_on_the_ota_topics_is_refused_and_counted_while_an_alarm_gets_through(rig: Rig) -> None:
    [button] = fleet(rig, "ota-junk", 1)
    sent = {"n": 0, "status": 0}
    base_get = {"v": 1, "type": "ota_get", "dev": button.id, "id": "0123456789abcdef", "off": 0, "n": 1}
    base_status = {"v": 1, "type": "ota_status", "dev": button.id, "seq": 10**6, "id": "", "version": "0.3.0",
                   "state": "current", "detail": "", "fw": "0.3.0"}

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(which=st.sampled_from(["get", "status", "raw"]), name=st.sampled_from(sorted(base_status)),
           value=ANY_JSON, raw=st.binary(max_size=300))
    def junk(which: str, name: str, value: Any, raw: bytes) -> None:
        if which == "raw":   # not a frame at all, or a frame of nonsense
            button.send("ota/get", raw or b"x", qos=0)
        else:
            # A get is refused whatever its fields (nothing is on offer to this button); a report
            # only with a field of the wrong type (a well-formed one would be taken).
            body = dict(base_get if which == "get" else base_status)
            key = name if name in body else "id"
            if which == "status" and not _wrong_type(key, value):
                value = [value]
            body[key] = value
            frame = button.signer.seal(json.dumps(body).encode())
            button.send("ota/get" if which == "get" else "ota/status", frame, qos=0 if which == "get" else 1)
        sent["n"] += 1
        sent["status"] += which == "status"

    before = rig.rejected()
    junk()
    seq = button.alarm()
    ack = button.acks.get(timeout=10)
    assert (ack["seq"], ack["state"]) == (seq, "received")
    wait_for(lambda: rig.rejected() - before == sent["n"], 15, f"all {sent['n']} refused and counted")
    assert rig.api("GET", "/api/v1/alarms", params={"device_id": button.id}).json()[0]["seq"] == seq
    audit = rig.api("GET", "/api/v1/audit", params={"limit": 1000}).json()
    mine = [a for a in audit if a["device_id"] == button.id]
    assert sum(a["topic"] == button.topic("ota/status") for a in mine) == sent["status"]
    # Refused chunk requests cost one audit entry per reason a minute, however many there were.
    gets = [a for a in mine if a["topic"] == button.topic("ota/get")]
    reasons = [a["reason"] for a in gets]
    assert 1 <= len(gets) <= 4 and len(set(reasons)) == len(reasons), gets
    assert sent["n"] - sent["status"] > len(gets)
    assert rig.gateway.health()["mqtt"]


def test_chunk_requests_over_their_rate_are_dropped_without_touching_the_alarms_budget(
        tmp_path: Path, broker: MosquittoProcess, bundles: Bundles) -> None:
    with contextlib.contextmanager(make_rig)(tmp_path, broker, bundles, "get_rate_per_s = 1") as rig:
        [button] = fleet(rig, "ota-rate", 1)
        assert rig.upload(rig.bundles.good).status_code == 201
        rig.api("POST", "/api/v1/rollouts", json={"version": "0.3.0", "percent": 100}).raise_for_status()
        _, offer = button.offer()
        for _ in range(40):   # far over 1/s: the burst (8) is served, the rest dropped
            button.get(offer["id"], 0, 1)
        seq = button.alarm()   # the alarms' own budget (5/s, burst 30) is untouched
        assert button.acks.get(timeout=10)["seq"] == seq
        wait_for(lambda: rig.gateway.metrics().get('rejected_total{reason="flood"}', 0) >= 30, 10, "drops counted")
        served = 0
        while not button.chunks.empty():
            button.chunks.get()
            served += 1
        assert 8 <= served <= 10
        flood = rig.api("GET", "/api/v1/audit", params={"reason": "flood"}).json()
        assert len(flood) == 1 and flood[0]["topic"] == button.topic("ota/get")   # one entry a minute


# ---- the review's cases (issue 18) ----------------------------------------------------------------


def start(rig: Rig, percent: int, **more: Any) -> dict[str, Any]:
    resp = rig.api("POST", "/api/v1/rollouts", json={"version": "0.3.0", "percent": percent, **more})
    assert resp.status_code in (200, 201), resp.text
    out: dict[str, Any] = resp.json()
    return out


def test_a_trial_that_fails_after_its_first_heartbeat_or_after_confirmed_counts_as_failed(rig: Rig) -> None:
    buttons = fleet(rig, "ota-trial", 4)
    assert rig.upload(rig.bundles.good).status_code == 201
    rollout = start(rig, 100, max_failed_percent=100)
    offered(buttons, 1.0)
    first, second = buttons[0], buttons[1]
    # The first: installed, its trial's self-test heartbeat names the new version, then it rolls back.
    first.report("installed", rig.bundles.good_id)
    wait_for(lambda: rig.device(first.id)["ota"]["state"] == "installed", 10, "installed")
    first.fw = "0.3.0"
    first.heartbeat()
    wait_for(lambda: rig.device(first.id)["firmware"] == "0.3.0", 10, "the heartbeat taken")
    time.sleep(0.3)
    assert rig.device(first.id)["ota"]["state"] == "installed"   # a heartbeat proves nothing yet
    first.fw = "0.2.0"
    first.report("rolled_back", rig.bundles.good_id, detail="selftest")
    wait_for(lambda: rig.device(first.id)["ota"]["state"] == "failed", 10, "the rollback counted")
    # The second said confirmed, then its trial failed after all (a crash loop): failed, counted.
    second.report("installed", rig.bundles.good_id)
    second.report("confirmed", rig.bundles.good_id, fw="0.3.0")
    wait_for(lambda: rig.device(second.id)["ota"]["state"] == "updated", 10, "updated")
    second.report("rolled_back", rig.bundles.good_id, detail="crashes", fw="0.2.0")
    wait_for(lambda: rig.device(second.id)["ota"]["state"] == "failed", 10, "the late rollback counted")
    shown = rig.rollout(rollout["id"])
    assert shown["counts"]["failed"] == 2 and shown["counts"]["updated"] == 0
    assert rig.device(second.id)["firmware"] == "0.2.0" and rig.device(second.id)["ota"]["detail"] == "crashes"


def test_a_late_report_never_revives_a_withdrawn_offer_nor_a_restart_its_old_offer(rig: Rig) -> None:
    [button] = fleet(rig, "ota-late", 1)
    assert rig.upload(rig.bundles.good).status_code == 201
    rollout = start(rig, 100)
    _, offer = button.offer()
    cancelled = rig.api("POST", f"/api/v1/rollouts/{rollout['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled", cancelled.text
    assert cancelled.json()["halted_reason"] == "cancelled"
    _, withdrawal = button.offer()
    assert withdrawal["id"] == "" and withdrawal["ver"] == offer["ver"] + 1
    button.report("downloading", rig.bundles.good_id)   # in flight when the offer was withdrawn
    wait_for(lambda: rig.gateway.metrics().get('ota_reports_total{state="downloading"}') == 1, 10, "report taken")
    time.sleep(0.3)
    assert rig.device(button.id)["ota"]["state"] == "withdrawn"
    rig.gateway.stop()
    rig.gateway.start()
    assert offered([button], 2.0) == {}   # the retained withdrawal stands
    assert rig.rollout(rollout["id"])["devices"][0]["state"] == "withdrawn"


def test_a_rollout_is_done_however_its_last_work_went_away(rig: Rig) -> None:
    assert rig.upload(rig.bundles.good).status_code == 201
    # Widened to 100 % with no device left to add: done once the one it had is updated.
    [solo] = fleet(rig, "ota-done-a", 1)
    first = start(rig, 50)
    solo.offer()
    solo.report("confirmed", rig.bundles.good_id, fw="0.3.0")
    wait_for(lambda: rig.device(solo.id)["ota"]["state"] == "updated", 10, "updated")
    assert rig.rollout(first["id"])["state"] == "active"   # 50 %: more may come
    assert start(rig, 100)["state"] == "done"
    # A device revoked (or decommissioned) mid-rollout: its entry is withdrawn, the rollout done.
    pair = fleet(rig, "ota-done-b", 2)
    second = start(rig, 100)
    assert second["id"] != first["id"] and second["targeted"] == 2
    offered(pair, 1.0)
    pair[0].report("confirmed", rig.bundles.good_id, fw="0.3.0")
    wait_for(lambda: rig.rollout(second["id"])["counts"]["updated"] == 1, 10, "one updated")
    assert rig.rollout(second["id"])["state"] == "active"
    assert rig.api("POST", f"/api/v1/devices/{pair[1].id}/revoke").status_code == 200
    wait_for(lambda: rig.rollout(second["id"])["state"] == "done", 10, "done without the revoked device")
    assert {d["device_id"]: (d["state"], d["detail"]) for d in rig.rollout(second["id"])["devices"]}[pair[1].id] == \
        ("withdrawn", "revoked")
    # A device that refused the bundle is not offered it again by a later rollout (it would stay silent).
    [refuser] = fleet(rig, "ota-done-c", 1)
    third = start(rig, 100)
    refuser.offer()
    refuser.report("refused", rig.bundles.good_id, detail="no_space")
    wait_for(lambda: rig.rollout(third["id"])["state"] in ("halted", "done"), 10, "the third settled")
    if rig.rollout(third["id"])["state"] == "halted":
        assert rig.api("POST", f"/api/v1/rollouts/{third['id']}/cancel").status_code == 200
    fourth = start(rig, 100)
    assert fourth["targeted"] == 0 and fourth["eligible"] == 0 and fourth["state"] == "done"


def test_the_halt_limit_survives_widening_and_only_admins_change_rollouts(rig: Rig) -> None:
    buttons = fleet(rig, "ota-adm", 4)
    tech = rig.gateway.headers_of("tari")
    octet = {"Content-Type": "application/octet-stream"}
    assert rig.api("POST", "/api/v1/firmware", content=rig.bundles.good, headers={**tech, **octet}).status_code == 403
    assert rig.upload(rig.bundles.good).status_code == 201
    assert rig.api("GET", "/api/v1/firmware", headers=tech).status_code == 200   # reading is for technicians too
    body = {"version": "0.3.0", "percent": 25}
    assert rig.api("POST", "/api/v1/rollouts", json=body, headers=tech).status_code == 403
    rollout = start(rig, 25, max_failed_percent=60)
    assert rollout["max_failed_percent"] == 60
    assert start(rig, 50)["max_failed_percent"] == 60   # omitted: kept, not the [ota] default (20)
    assert start(rig, 75, max_failed_percent=40)["max_failed_percent"] == 40
    assert rig.api("POST", f"/api/v1/rollouts/{rollout['id']}/cancel", headers=tech).status_code == 403
    assert rig.api("GET", "/api/v1/rollouts", headers=tech).status_code == 200
    assert rig.api("POST", f"/api/v1/rollouts/{rollout['id']}/cancel").status_code == 200
    changes = rig.api("GET", "/api/v1/fleet/changes", params={"limit": 100}).json()
    actions = [(c["action"], c["person"]) for c in changes if c["action"].startswith(("rollout", "firmware"))]
    assert sorted(actions) == sorted([("firmware-upload", "admin"), ("rollout-start", "admin"),
                                      ("rollout-widen", "admin"), ("rollout-widen", "admin"),
                                      ("rollout-cancel", "admin")]), actions
    # Listed: those under way or halted, and a bounded number of the others.
    assert [r["id"] for r in rig.api("GET", "/api/v1/rollouts", params={"limit": 0}).json()] == []
    assert [r["id"] for r in rig.api("GET", "/api/v1/rollouts", params={"limit": 5}).json()] == [rollout["id"]]
    del buttons


def test_a_downgrade_must_be_asked_for(rig: Rig) -> None:
    newer = [rig.button(f"ota-down-{i}", fw="0.4.1") for i in range(2)]
    for b in newer:
        b.heartbeat()
    wait_for(lambda: all(rig.device(b.id)["firmware"] == "0.4.1" for b in newer), 10, "the versions reported")
    assert rig.upload(rig.bundles.good).status_code == 201
    refused = rig.api("POST", "/api/v1/rollouts", json={"version": "0.3.0", "percent": 100},
                      headers={"Accept-Language": "id"})
    assert refused.status_code == 409, refused.text
    assert refused.json()["reason"] == "downgrade" and "0.4.1" in refused.json()["detail"]
    assert "lebih baru" in refused.json()["message"]
    assert rig.api("GET", "/api/v1/rollouts").json() == []   # nothing was started
    allowed = start(rig, 100, allow_downgrade=True)
    assert allowed["targeted"] == 2
    assert {body["id"] for body in offered(newer).values()} == {rig.bundles.good_id}


def test_an_offer_keeps_its_chunk_size_across_a_restart_with_another(rig: Rig) -> None:
    [button] = fleet(rig, "ota-chunk", 1)
    assert rig.upload(rig.bundles.good).status_code == 201
    start(rig, 100)
    _, offer = button.offer()
    assert offer["chunk"] == CHUNK
    rig.gateway.stop()
    cfg = rig.gateway.config_path.read_text(encoding="utf-8")
    rig.gateway.config_path.write_text(cfg.replace(f"chunk_bytes = {CHUNK}", "chunk_bytes = 256"), encoding="utf-8")
    rig.gateway.start()
    _, again = button.offer()
    assert again == offer   # the same offer, the same chunk size: the button's download goes on
    button.get(offer["id"], CHUNK, 2)
    header, data = button.chunks.get(timeout=5)
    assert header["off"] == CHUNK and data == rig.bundles.good[CHUNK:2 * CHUNK]
    assert button.chunks.get(timeout=5)[0]["off"] == 2 * CHUNK


# ---- the gateway report's summary: each rollout's buttons (the store, on both engines) ------------------


async def test_the_summary_lists_each_buttons_state_failed_and_busy_first(store_target: str | Path,
                                                                         bundles: Bundles) -> None:
    """`ota_summary()` (the gateway report's `firmware`) names the buttons of its rollouts with their
    state, reason, firmware and board: failed first, then those under way, offered, updated; the
    latest change first within each; bounded in SQL, with the count before the bound."""
    store = open_store(str(store_target))
    await store.open()
    try:
        ids = [f"ota-sum-{i}" for i in range(6)]
        for device_id in ids:
            await store.add_device(device_id, bytes(32), now_ms=1)
        heartbeats = [(Status(d, 1, 3900, -60, "0.2.0", False, 0, 1000, 60, board="unix"), 10) for d in ids]
        await store.commit(Batch(statuses=heartbeats), _never, _never)
        doc = check_bundle(bundles.good, {ota_key_id(bytes.fromhex(bundles.key_hex)): bytes.fromhex(bundles.key_hex)})
        sha256 = hashlib.sha256(bundles.good).hexdigest()
        await store.add_bundle(NewBundle(sha256[:16], sha256, doc["version"], doc["board"], len(bundles.good),
                                         doc["min_boot"], json.dumps(doc, sort_keys=True), bundles.good),
                               now_ms=15, by=IN_PROCESS)
        _, rollout_id, offers, _ = await store.start_rollout("0.3.0", 100, 100, resume=False, now_ms=20, by=IN_PROCESS)
        assert len(offers) == 6
        bid = bundles.good_id
        reports = [OtaStatus(ids[0], 1, bid, "0.3.0", "refused", "wrong_sha256", "0.2.0"),
                   OtaStatus(ids[1], 1, bid, "0.3.0", "downloading", "", "0.2.0"),
                   OtaStatus(ids[2], 1, bid, "0.3.0", "confirmed", "", "0.3.0"),
                   OtaStatus(ids[3], 1, bid, "0.3.0", "rolled_back", "selftest", "0.2.0")]
        await store.commit(Batch(ota_reports=[(r, 30 + 10 * i) for i, r in enumerate(reports)]), _never, _never)

        summary = await OtaService(cast(Any, SimpleNamespace(store=store)), None).summary()
        assert [r["id"] for r in summary["rollouts"]] == [rollout_id]
        assert summary["devices_total"] == 6
        assert [(d["device_id"], d["state"], d["detail"], d["firmware"]) for d in summary["devices"]] == [
            (ids[3], "failed", "selftest", "0.2.0"), (ids[0], "failed", "wrong_sha256", "0.2.0"),
            (ids[1], "downloading", "", "0.2.0"), (ids[4], "offered", "", "0.2.0"),
            (ids[5], "offered", "", "0.2.0"), (ids[2], "updated", "", "0.3.0")]
        assert summary["devices"][0] == {"device_id": ids[3], "rollout": rollout_id, "state": "failed",
                                         "detail": "selftest", "firmware": "0.2.0", "board": "unix",
                                         "updated_ms": 60}
        # The bound is the query's: the first rows, and how many there were.
        cut, total = await store.rollout_buttons([rollout_id], limit=2)
        assert [d["device_id"] for d in cut] == [ids[3], ids[0]] and total == 6
        assert await store.rollout_buttons([rollout_id + 1]) == ([], 0)
        assert await store.rollout_buttons([]) == ([], 0)
    finally:
        await store.close()


def _never(*_: Any) -> Any:
    raise AssertionError("no alarm or fault event in these batches")

"""Updates over the air (docs/protocol.md §11) on the real firmware: the MicroPython unix port, a
Mosquitto with the production ACL, and this test in the gateway's part (with the gateway's login):
it publishes a signed, retained offer of a bundle that `siaga firmware build` made from a copy of
the firmware with another version, answers the button's chunk requests with signed data frames,
acknowledges its alarms and reads its heartbeats and update reports.

The button downloads the bundle, checks it, writes it to a slot and restarts into it on trial (the
harness restarts the process when it ends on its own, as a board resets); the new version confirms
itself or is rolled back, after a failed self-test or after crashing at every boot. Power cuts
(kill -9) at points of the download and of the first boot leave it on one version or the other.
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from provisioning import bundle
from siaga.broker.process import MosquittoProcess
from siagafw import proto
from tests.support.firmware import FirmwareProcess, device_config
from tests.support.mosquitto import MqttClient

pytestmark = [pytest.mark.micropython, pytest.mark.mosquitto, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
DEV = "jkt-ota-0001"
OLD = "0.2.0"   # the firmware of this checkout (app.FIRMWARE_VERSION)
NEW = "0.3.0"
CHUNK = 512
WAIT = 30.0     # generous: a whole download, check and extraction under a loaded test machine


@dataclass(frozen=True)
class Bundle:
    data: bytes
    version: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def id(self) -> str:
        return self.sha256[:16]


@dataclass(frozen=True)
class Release:
    public: bytes
    good: Bundle          # NEW, works
    selftest: Bundle      # NEW, but never reaches the broker (its port is patched wrong)
    crash: Bundle         # NEW, but its start.py raises at import
    esp32: Bundle         # NEW, for another board


def firmware_copy(tmp: Path, name: str, version: str, patch: Callable[[Path], None] | None = None) -> Path:
    fw = tmp / name
    shutil.copytree(REPO / "firmware", fw, ignore=shutil.ignore_patterns("__pycache__"))
    app = fw / "lib" / "siagafw" / "app.py"
    text = app.read_text()
    assert f'FIRMWARE_VERSION = "{OLD}"' in text
    app.write_text(text.replace(f'FIRMWARE_VERSION = "{OLD}"', f'FIRMWARE_VERSION = "{version}"'))
    if patch is not None:
        patch(fw)
    return fw


def _wrong_port(fw: Path) -> None:
    app = fw / "lib" / "siagafw" / "app.py"
    text = app.read_text()
    line = 'self.port = m.get("port", 1883)'
    assert line in text
    app.write_text(text.replace(line, "self.port = 9  # discard: nothing listens"))


def _crash_at_import(fw: Path) -> None:
    start = fw / "boards" / "unix" / "start.py"
    start.write_text('raise RuntimeError("a broken build")\n' + start.read_text())


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    tmp = tmp_path_factory.mktemp("ota-release")
    key = tmp / "fleet.pem"
    public = bundle.generate_key(key)

    def build(name: str, board: str = "unix", patch: Callable[[Path], None] | None = None) -> Bundle:
        fw = firmware_copy(tmp, name, NEW, patch)
        return Bundle(bundle.build(board=board, version=NEW, key_path=key, fw_dir=fw).data, NEW)

    return Release(public, build("good"), build("selftest", patch=_wrong_port), build("crash", patch=_crash_at_import),
                   build("esp32", board="esp32"))


class Gateway:
    """The gateway's side of one device: offers, chunks, acks; collects heartbeats and reports."""

    def __init__(self, client: MqttClient, secret_hex: str) -> None:
        self.client = client
        self.signer = proto.Signer(bytes.fromhex(secret_hex))
        self.bundles: dict[str, bytes] = {}
        self.gets: list[dict[str, Any]] = []
        self.alarms: list[dict[str, Any]] = []
        self.reports: queue.Queue[dict[str, Any]] = queue.Queue()
        self.all_reports: list[dict[str, Any]] = []
        self.heartbeats: queue.Queue[dict[str, Any]] = queue.Queue()
        self.hold_acks = threading.Event()   # set: alarms are not acknowledged...
        self.held: list[int] = []            # ...but kept here
        self.gets_while_held = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        for suffix in ("status", "alarm", "ota/get", "ota/status"):
            client.subscribe(proto.topic(DEV, suffix))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        assert not self.errors, self.errors

    def seal(self, body: bytes) -> bytes:
        return self.signer.seal(body)

    def offer(self, b: Bundle, ver: int, *, sha256: str | None = None) -> None:
        self.bundles[b.id] = b.data
        body = {"v": 1, "type": "ota", "dev": DEV, "ver": ver, "id": b.id, "sha256": sha256 or b.sha256,
                "size": len(b.data), "chunk": CHUNK, "version": b.version, "rollout": 1}
        self.client.publish(proto.topic(DEV, "ota"), self.seal(proto.encode(body)), retain=True)

    def withdraw(self, ver: int) -> None:
        body = {"v": 1, "type": "ota", "dev": DEV, "ver": ver, "id": "", "rollout": 1}
        self.client.publish(proto.topic(DEV, "ota"), self.seal(proto.encode(body)), retain=True)

    def release_acks(self) -> None:
        self.hold_acks.clear()
        for seq in self.held:
            self._ack(seq)
        self.held = []

    def _ack(self, seq: int) -> None:
        body = proto.ack_body(DEV, seq, "received", "inc-1", 1)
        self.client.publish(proto.topic(DEV, "ack"), self.seal(proto.encode(body)), retain=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.client.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                self._handle(msg.topic, msg.payload)
            except Exception as exc:  # reported by close()
                self.errors.append(f"{msg.topic}: {exc!r}")

    def _handle(self, topic: str, payload: bytes) -> None:
        raw = self.signer.open(payload)
        if raw is None:
            self.errors.append(f"bad MAC on {topic}")
            return
        body = json.loads(raw)
        if topic.endswith("/ota/get"):
            self.gets.append(body)
            if self.held:  # asked for while an alarm it sent has not been acknowledged
                self.gets_while_held += 1
            data = self.bundles[body["id"]]
            assert body["off"] % CHUNK == 0 and 1 <= body["n"] <= 8 and body["off"] < len(data), body
            for off in range(body["off"], min(len(data), body["off"] + body["n"] * CHUNK), CHUNK):
                frame = self.seal(proto.ota_data(DEV, body["id"], off, data[off:off + CHUNK]))
                assert len(frame) <= proto.MAX_FRAME
                # Not waiting for each PUBACK, as the gateway does not: the broker keeps the order.
                info = self.client.client.publish(proto.topic(DEV, "ota/data"), frame, qos=1)
                assert info.rc == 0, info.rc
        elif topic.endswith("/ota/status"):
            assert body["type"] == "ota_status" and body["dev"] == DEV, body
            self.all_reports.append(body)
            self.reports.put(body)
        elif topic.endswith("/alarm"):
            self.alarms.append(body)
            if self.hold_acks.is_set():
                self.held.append(body["seq"])
            else:
                self._ack(body["seq"])
        elif topic.endswith("/status"):
            self.heartbeats.put(body)

    def report(self, state: str, timeout: float = WAIT) -> dict[str, Any]:
        """The next update report in `state` (others on the way are skipped)."""
        while True:
            try:
                body = self.reports.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no ota_status {state!r} within {timeout} s; reports: {self.all_reports}")
            if body["state"] == state:
                return body

    def heartbeat(self, fw: str, timeout: float = WAIT) -> dict[str, Any]:
        while True:
            try:
                body = self.heartbeats.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no heartbeat with fw {fw} within {timeout} s")
            if body["fw"] == fw:
                return body


@pytest.fixture
def gateway(mosquitto: MosquittoProcess, mqtt_client: Callable[..., MqttClient]) -> Iterator[tuple[Gateway, str, str]]:
    secret, password = secrets.token_hex(32), secrets.token_urlsafe(18)
    mosquitto.add_device(DEV, password)
    client = mqtt_client(mosquitto, mosquitto.gateway_user, mosquitto.gateway_password, client_id="test-gateway")
    gw = Gateway(client, secret)
    yield gw, secret, password
    gw.close()


def button(mosquitto: MosquittoProcess, gateway: tuple[Gateway, str, str], tmp_path: Path, release: Release,
           **ota: Any) -> FirmwareProcess:
    _, secret, password = gateway
    cfg = device_config(DEV, secret, mosquitto.port, password, heartbeat_s=300,
                        ota={"keys": [release.public.hex()], "trial_s": 10, **ota})
    return FirmwareProcess(tmp_path / "button", cfg, reboot=True)


def boot_state(fw: FirmwareProcess) -> dict[str, Any]:
    return json.loads((fw.flash / "ota" / "boot.json").read_text())


def test_an_update_installs_confirms_and_lets_an_alarm_through_first(
        mosquitto: MosquittoProcess, gateway: tuple[Gateway, str, str], tmp_path: Path, release: Release) -> None:
    gw = gateway[0]
    fw = button(mosquitto, gateway, tmp_path, release)
    with fw:
        fw.expect("EVT connected")
        first = gw.heartbeat(OLD)
        assert first["board"] == "unix"
        new = release.good
        gw.offer(new, 1)
        assert fw.expect("EVT ota_offer") == f"EVT ota_offer id={new.id} version={NEW} size={len(new.data)}"
        assert gw.report("downloading")["fw"] == OLD
        fw.expect("EVT ota_progress", WAIT)

        # An alarm mid-download: it goes out and, until the gateway has acknowledged it, no chunk
        # request does; then the download goes on.
        gw.hold_acks.set()
        fw.hold(600)
        seq = int(fw.expect("EVT alarm").split("seq=")[1].split()[0])
        fw.expect(f"EVT published seq={seq}")
        fw.drain(1.0)
        asked = len(gw.gets)
        gw.release_acks()
        fw.expect(f"EVT delivered seq={seq}")
        assert gw.gets_while_held == 0
        assert [a["seq"] for a in gw.alarms] == [seq]

        fw.expect("EVT ota_installed", WAIT)
        assert len(gw.gets) > asked
        installed = gw.report("installed")
        assert (installed["id"], installed["version"], installed["fw"]) == (new.id, NEW, OLD)
        assert fw.expect("EXIT") == "EXIT 3"  # hal.reset(): the harness restarts it, as a board resets
        assert fw.expect("EVT boot").endswith(f"fw={NEW}")
        fw.expect("EVT ota_confirmed", WAIT)
        confirmed = gw.report("confirmed")
        assert (confirmed["id"], confirmed["version"], confirmed["fw"]) == (new.id, NEW, NEW)
        assert confirmed["seq"] > installed["seq"]
        beat = gw.heartbeat(NEW)
        assert beat["board"] == "unix"
        state = boot_state(fw)
        assert (state["run"], state["prev"], state["trial"], state["id"]) == ("a", "factory", False, new.id)
        assert (fw.flash / "slot" / "a" / "start.mpy").exists()
        assert not (fw.flash / "ota" / "stage.bin").exists() and not (fw.flash / "ota" / "stage.json").exists()
        assert len(fw.seen("EVT delivered")) == 1

        # The retained offer at every connect is only looked at; a new offer of the running
        # version is answered "current".
        fw.kill()
        fw.start()
        assert fw.expect("EVT ota_seen") == "EVT ota_seen ver=1"
        gw.offer(new, 2)
        fw.expect("EVT ota_current")
        assert gw.report("current")["fw"] == NEW
    assert fw.exits == [3]


def test_bundles_the_button_must_not_install_are_refused_and_reported(
        mosquitto: MosquittoProcess, gateway: tuple[Gateway, str, str], tmp_path: Path, release: Release) -> None:
    gw = gateway[0]
    good = release.good.data
    manifest_len = int.from_bytes(good[6:10], "big")
    bad_signature = bytearray(good)
    bad_signature[10 + manifest_len + 5] ^= 0x01  # a bit of the signature
    wrong_hash = bytearray(good)
    wrong_hash[-10] ^= 0x01  # a bit of the last file
    cases = [("bad_signature", Bundle(bytes(bad_signature), NEW), None),
             ("wrong_hash", Bundle(bytes(wrong_hash), NEW), None),
             ("wrong_board", release.esp32, None),
             ("wrong_sha256", release.good, hashlib.sha256(b"another bundle").hexdigest())]
    fw = button(mosquitto, gateway, tmp_path, release)
    with fw:
        fw.expect("EVT connected")
        ver = 0
        for case, b, sha256 in cases:
            ver += 1
            gw.offer(b, ver, sha256=sha256)
            assert fw.expect("EVT ota_refused", WAIT) == f"EVT ota_refused {case}"
            refused = gw.report("refused")
            assert (refused["id"], refused["detail"], refused["version"], refused["fw"]) == (b.id, case, NEW, OLD)
            assert not (fw.flash / "ota" / "stage.bin").exists() and not (fw.flash / "ota" / "boot.json").exists()
            assert (fw.flash / "ota" / "refused").read_text().strip() == b.id
            # Offered again under a new offer version: not downloaded again.
            asked = len(gw.gets)
            ver += 1
            gw.offer(b, ver, sha256=sha256)
            assert fw.expect("EVT ota_seen") == f"EVT ota_seen refused id={b.id}"
            assert len(gw.gets) == asked
        # A good bundle (one not refused) withdrawn mid-download: the staging goes, nothing is installed.
        ver += 1
        gw.offer(release.selftest, ver)
        fw.expect("EVT ota_progress", WAIT)
        ver += 1
        gw.withdraw(ver)
        assert fw.expect("EVT ota_withdrawn") == f"EVT ota_withdrawn id={release.selftest.id}"
        assert not (fw.flash / "ota" / "stage.bin").exists() and not (fw.flash / "ota" / "stage.json").exists()
        fw.kill()  # and after a restart it runs what it ran, and takes up nothing
        fw.start()
        assert fw.expect("EVT boot").endswith(f"fw={OLD}")
        assert fw.expect("EVT ota_seen") == f"EVT ota_seen ver={ver}"
        gw.heartbeat(OLD)
        assert not fw.seen("EVT ota_installed") and not fw.seen("EVT ota_resume")
    assert fw.exits == []
    assert not (fw.flash / "ota" / "boot.json").exists()


def test_the_update_settings_are_checked_and_never_set_remotely() -> None:
    """The config checker and the remote configuration (under CPython; the same code runs on the
    button)."""
    from siagafw import remote
    from siagafw.config import load_config

    base = device_config(DEV, "11" * 32, 1883, "pw")
    key = "ab" * 32
    assert load_config(json.dumps({**base, "ota": {"keys": [key], "trial_s": 10, "max_tries": 10}}))["ota"]
    for bad in ({"keys": ["AB" * 32]}, {"keys": [key[:-2]]}, {"keys": [key] * 5}, {"keys": key},
                {"keys": [key], "trial_s": 9}, {"keys": [key], "trial_s": 3601}, {"keys": [key], "max_tries": 0},
                {"keys": [key], "max_tries": 11}, []):
        with pytest.raises(ValueError, match="config ota"):
            load_config(json.dumps({**base, "ota": bad}))
    with pytest.raises(ValueError, match="ota is not remotely configurable"):
        remote.merge(base, {"ota": {"keys": [key]}})


def test_a_version_that_fails_its_self_test_is_rolled_back(
        mosquitto: MosquittoProcess, gateway: tuple[Gateway, str, str], tmp_path: Path, release: Release) -> None:
    gw = gateway[0]
    fw = button(mosquitto, gateway, tmp_path, release)
    with fw:
        fw.expect("EVT connected")
        gw.offer(release.selftest, 1)
        fw.expect("EVT ota_installed", WAIT)
        assert fw.expect("EXIT") == "EXIT 3"
        assert fw.expect("EVT ota_trial").startswith(f"EVT ota_trial version={NEW} try=1")
        assert fw.expect("EVT boot").endswith(f"fw={NEW}")
        # It never reaches the broker: after ota.trial_s it goes back by itself.
        assert fw.expect("EVT ota_trial_failed", WAIT) == "EVT ota_trial_failed selftest"
        assert fw.expect("EXIT") == "EXIT 3"
        assert fw.expect("EVT ota_rolled_back") == "EVT ota_rolled_back selftest"  # at start-up, then:
        assert fw.expect("EVT boot").endswith(f"fw={OLD}")
        back = gw.report("rolled_back")
        assert (back["id"], back["version"], back["detail"], back["fw"]) == (release.selftest.id, NEW, "selftest", OLD)
        gw.heartbeat(OLD)
        # Offered again: a bundle that failed here is not fetched again.
        gw.offer(release.selftest, 2)
        assert fw.expect("EVT ota_seen refused") == f"EVT ota_seen refused id={release.selftest.id}"
    state = boot_state(fw)
    assert (state["run"], state["trial"], state["rolled_back"]) == ("factory", False, None)  # reported, cleared
    assert fw.exits == [3, 3]


def test_a_version_that_crashes_at_every_boot_is_rolled_back_after_max_tries(
        mosquitto: MosquittoProcess, gateway: tuple[Gateway, str, str], tmp_path: Path, release: Release) -> None:
    gw = gateway[0]
    fw = button(mosquitto, gateway, tmp_path, release, max_tries=2)
    with fw:
        fw.expect("EVT connected")
        gw.offer(release.crash, 1)
        fw.expect("EVT ota_installed", WAIT)
        assert fw.expect("EXIT") == "EXIT 3"
        assert fw.expect("EXIT") == "EXIT 1"   # boot 1 of the trial: the import raises
        assert fw.expect("EXIT") == "EXIT 1"   # boot 2
        assert fw.expect("EVT ota_rolled_back") == "EVT ota_rolled_back crashes"  # boot 3: the count is over
        assert fw.expect("EVT boot").endswith(f"fw={OLD}")
        back = gw.report("rolled_back")
        assert (back["id"], back["version"], back["detail"], back["fw"]) == (release.crash.id, NEW, "crashes", OLD)
        assert "a broken build" in "\n".join(fw.history)
    assert fw.exits == [3, 1, 1]


def test_power_cuts_during_the_download_and_the_first_boot_end_on_one_version(
        mosquitto: MosquittoProcess, gateway: tuple[Gateway, str, str], tmp_path: Path, release: Release) -> None:
    gw = gateway[0]
    new = release.good
    fw = button(mosquitto, gateway, tmp_path, release)
    with fw:
        fw.expect("EVT connected")
        gw.offer(new, 1)
        progress = fw.expect("EVT ota_progress", WAIT)
        fw.kill()  # mid-download
        staged = (fw.flash / "ota" / "stage.bin").stat().st_size
        fw.start()
        resumed = fw.expect("EVT ota_resume")
        off = int(re.search(r"off=(\d+)", resumed).group(1))  # type: ignore[union-attr]
        assert off % CHUNK == 0 and off == staged // CHUNK * CHUNK and off >= int(progress.split("off=")[1])
        while (report := gw.report("downloading"))["detail"] == "":
            pass  # the first run's report
        assert report["detail"] == f"resumed at {off}"

        fw.expect(f"EVT ota_progress off={len(new.data)}", WAIT)
        fw.kill()  # downloaded, not yet checked: checked from the start again
        fw.start()
        assert fw.expect("EVT ota_resume") == f"EVT ota_resume id={new.id} off={len(new.data)}"

        fw.expect("EVT ota_installed", WAIT)
        fw.kill()  # the boot state is written before the event: the next boot is the trial's
        fw.start()
        assert fw.expect("EVT boot").endswith(f"fw={NEW}")
        fw.kill()  # the first boot of the trial, cut: it counts as one
        assert boot_state(fw)["tries"] == 1
        fw.start()
        assert fw.expect("EVT ota_trial").startswith(f"EVT ota_trial version={NEW} try=2")
        assert fw.expect("EVT boot").endswith(f"fw={NEW}")
        fw.expect("EVT ota_confirmed", WAIT)
        assert gw.report("confirmed")["fw"] == NEW
        gw.heartbeat(NEW)
    state = boot_state(fw)
    assert (state["run"], state["trial"], state["version"]) == ("a", False, NEW)
    assert fw.exits == []
    # Every chunk came from the offered bundle, and nothing was asked for past its end.
    assert all(g["id"] == new.id and g["off"] < len(new.data) for g in gw.gets)

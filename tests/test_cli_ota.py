"""The technician's side of firmware updates over the air (docs/technician.md, "Firmware updates"):
`siaga firmware publish`, `siaga fleet update / rollouts / rollout / cancel` and the fleet view's
update columns, each run as a separate process against a real gateway with [ota] over real HTTP, a
real Mosquitto, and buttons that speak the protocol over MQTT with their own signed frames
(heartbeats with their board, reports of what they did with an offer). What reaches the command
center in the gateway's report is checked too. The firmware itself installing a bundle is
tests/test_ota_e2e.py's."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from provisioning import bundle as bundles
from siagafw import proto
from tests.support.board import provisioning_config, siaga
from tests.support.gateway import lone_gateway
from tests.support.mosquitto import MqttClient
from tests.support.system import DeviceCredentials, System, shared_system
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

OLD, NEW = "0.2.0", "0.9.0"
PLAIN: dict[str, str] = {"SIAGA_LANG": "", "LC_ALL": "", "LC_MESSAGES": "", "LANG": ""}  # Bahasa Indonesia
ENGLISH = {"SIAGA_LANG": "en"}


class Fleet:
    """The fleet key, a unix bundle of NEW signed with it, and broken copies."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        key = folder / "fleet-key.pem"
        self.public_hex = bundles.generate_key(key).hex()
        self.data = bundles.build(board="unix", version=NEW, key_path=key).data
        self.path = self.write("fw-unix.sgfw", self.data)
        self.id = hashlib.sha256(self.data).hexdigest()[:16]
        other = folder / "other-key.pem"
        bundles.generate_key(other)
        self.foreign = self.write("foreign.sgfw", bundles.build(board="unix", version=NEW, key_path=other).data)
        broken = bytearray(self.data)
        broken[-1] ^= 0x01  # the last file's last byte: its SHA-256 no longer matches the signed manifest
        self.broken = self.write("broken.sgfw", bytes(broken))

    def write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return Fleet(tmp_path_factory.mktemp("fleet"))


@pytest.fixture(scope="module")
def ota_system(tmp_path_factory: pytest.TempPathFactory, fleet: Fleet) -> Iterator[System]:
    yield from shared_system(tmp_path_factory.mktemp("ota-cli"), ota_settings=f'keys = ["{fleet.public_hex}"]',
                             cc_settings="report_every_s = 1")


def config_for(system: System, folder: Path) -> Path:
    return provisioning_config(folder / "prov", gateway_url=system.gateway.url, admin_token=system.gateway.admin_token,
                               broker_port=system.broker.port, password_file=None, broker_pid=None, wifi_password=None)


def run(cfg: Path, *args: str, lang: dict[str, str] = ENGLISH) -> Any:
    """`siaga <args...> --config cfg` as a technician runs it (the options after the command's name)."""
    return siaga(*args, "--config", str(cfg), env=lang)


class Button:
    """A registered button on MQTT with its own login and secret: heartbeats that name its board, the
    offers it receives (retained, signed with its secret), and its reports of what it did."""

    def __init__(self, system: System, creds: DeviceCredentials) -> None:
        self.id = creds.device_id
        self.signer = proto.Signer(proto.secret_from_hex(creds.secret_hex))
        self.seq = 0
        self.mqtt = MqttClient(system.broker.port, creds.device_id, creds.mqtt_password)
        assert not self.mqtt.connect().is_failure
        self.mqtt.subscribe(proto.topic(self.id, "ota"))

    def send(self, suffix: str, body: dict[str, Any]) -> None:
        self.mqtt.publish(proto.topic(self.id, suffix), self.signer.seal(proto.encode(body)))

    def heartbeat(self, fw: str = OLD) -> None:
        self.seq += 1
        self.send("status", proto.status_body(self.id, self.seq, fw, 60, bat_mv=4100, board="unix"))

    def report(self, bundle_id: str, state: str, detail: str = "", fw: str = OLD) -> None:
        self.seq += 1
        self.send("ota/status", proto.ota_status_body(self.id, self.seq, bundle_id, NEW, state, detail, fw))

    def offer(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """The next offer (or withdrawal) the gateway published to this button, checked as the
        button checks it: the MAC under its own secret."""
        msg = self.mqtt.expect(timeout_s)
        body = self.signer.open(msg.payload)
        assert body is not None, "an offer the button's secret does not verify"
        return dict(json.loads(body))

    def close(self) -> None:
        self.mqtt.close()


@contextmanager
def buttons(system: System, prefix: str, n: int) -> Iterator[list[Button]]:
    made = [Button(system, c) for c in system.new_devices_named([f"{prefix}-{i:04d}" for i in range(n)])]
    try:
        for b in made:
            b.heartbeat()
        wait_for(lambda: all(d.get("board") == "unix" for d in devices(system) if d["id"].startswith(prefix)), 10,
                 "the gateway knows each button's board")
        yield made
    finally:
        for b in made:
            b.close()


def devices(system: System) -> list[dict[str, Any]]:
    resp = httpx.get(f"{system.gateway.url}/api/v1/devices", headers=system.gateway.admin_headers, timeout=5)
    resp.raise_for_status()
    return list(resp.json())


def gateway_rollout(system: System, rollout_id: int) -> dict[str, Any]:
    resp = httpx.get(f"{system.gateway.url}/api/v1/rollouts/{rollout_id}", headers=system.gateway.admin_headers,
                     timeout=5)
    resp.raise_for_status()
    return dict(resp.json())


# ---- publish ------------------------------------------------------------------------------------------


def test_publish_prints_the_bundle_and_a_refusal_prints_the_reason(ota_system: System, fleet: Fleet,
                                                                  tmp_path: Path) -> None:
    cfg = config_for(ota_system, tmp_path)
    done = run(cfg, "firmware", "publish", str(fleet.path), lang=PLAIN)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"diterbitkan: bundel {fleet.id}, firmware {NEW} untuk unix" in done.stdout
    assert f"siaga fleet update --version {NEW} --percent 5" in done.stdout
    again = run(cfg, "firmware", "publish", str(fleet.path))
    assert again.returncode == 0, again.stderr
    assert f"the gateway already had it: bundle {fleet.id}, firmware {NEW} for unix" in again.stdout
    listed = httpx.get(f"{ota_system.gateway.url}/api/v1/firmware", headers=ota_system.gateway.admin_headers,
                       timeout=5).json()
    assert [b["id"] for b in listed] == [fleet.id]

    # Refused: the reason word, what it means (from the catalog, in the run's language), exit 2, nothing kept.
    foreign = run(cfg, "firmware", "publish", str(fleet.foreign))
    assert foreign.returncode == 2, foreign.stdout + foreign.stderr
    assert "the gateway refused the bundle: unknown_key (signed with a key that is not one of the fleet's keys" \
        in foreign.stderr
    assert "siaga firmware verify --pub" in foreign.stderr
    broken = run(cfg, "firmware", "publish", str(fleet.broken), lang=PLAIN)
    assert broken.returncode == 2, broken.stdout + broken.stderr
    assert "gateway menolak bundel: wrong_hash (isi sebuah berkas tidak cocok dengan SHA-256-nya di manifes)" \
        in broken.stderr
    huge = fleet.write("huge.sgfw", fleet.data + bytes(1024 * 1024))
    too_large = run(cfg, "firmware", "publish", str(huge))
    assert too_large.returncode == 2 and "too_large" in too_large.stderr, too_large.stderr
    missing = run(cfg, "firmware", "publish", str(tmp_path / "nothing.sgfw"))
    assert missing.returncode == 2 and "cannot read the bundle" in missing.stderr, missing.stderr
    listed = httpx.get(f"{ota_system.gateway.url}/api/v1/firmware", headers=ota_system.gateway.admin_headers,
                       timeout=5).json()
    assert [b["id"] for b in listed] == [fleet.id]


def test_a_gateway_without_ota_says_so(fleet: Fleet, tmp_path: Path) -> None:
    with lone_gateway(tmp_path / "plain") as gateway:
        cfg = provisioning_config(tmp_path / "prov", gateway_url=gateway.url, admin_token=gateway.admin_token,
                                  broker_port=1, password_file=None, broker_pid=None, wifi_password=None)
        done = siaga("firmware", "publish", str(fleet.path), "--config", str(cfg), env=ENGLISH)
    assert done.returncode == 4, done.stdout + done.stderr
    assert "takes no firmware: it has no [ota] section" in done.stderr
    assert "adds [ota] with the fleet's public keys to gateway.toml" in done.stderr


# ---- rollouts -----------------------------------------------------------------------------------------


def test_a_rollout_is_started_followed_halted_resumed_and_cancelled(ota_system: System, fleet: Fleet,
                                                                   tmp_path: Path) -> None:
    cfg = config_for(ota_system, tmp_path)
    assert run(cfg, "firmware", "publish", str(fleet.path)).returncode == 0
    with buttons(ota_system, "jkt-ota", 5) as fleet_buttons:
        # Nothing of an unknown version to roll out; a version typed wrong is refused before asking.
        unknown = run(cfg, "fleet", "update", "--version", "7.7.7", "--percent", "5")
        assert unknown.returncode == 4 and "no published bundle of firmware 7.7.7" in unknown.stderr, unknown.stderr
        assert "siaga firmware publish" in unknown.stderr
        typo = run(cfg, "fleet", "update", "--version", "v0.9", "--percent", "5")
        assert typo.returncode == 2 and "MAJOR.MINOR.PATCH" in typo.stderr, typo.stderr

        started = run(cfg, "fleet", "update", "--version", NEW, "--percent", "40", lang=PLAIN)
        assert started.returncode == 0, started.stdout + started.stderr
        found = re.search(r"peluncuran (\d+) dimulai: firmware 0\.9\.0 ke 40% — 2 dari 5 tombol ditawari",
                          started.stdout)
        assert found, started.stdout
        rollout_id = int(found.group(1))
        offered = {e["device_id"] for e in gateway_rollout(ota_system, rollout_id)["devices"]}
        assert len(offered) == 2
        # The offer reached exactly those buttons, signed with each one's secret.
        by_id = {b.id: b for b in fleet_buttons}
        for device_id in offered:
            offer = by_id[device_id].offer()
            assert (offer["type"], offer["id"], offer["version"], offer["rollout"]) == ("ota", fleet.id, NEW,
                                                                                          rollout_id)

        listed = run(cfg, "fleet", "rollouts")
        assert listed.returncode == 0, listed.stderr
        line = next(x for x in listed.stdout.splitlines() if x.startswith(f"{rollout_id} "))
        assert re.search(rf"^{rollout_id}\s+{re.escape(NEW)}\s+40\s+active\s+2/5\s+offered=2 downloading=0 "
                         r"installed=0 updated=0 failed=0 withdrawn=0$", line), line
        as_json = json.loads(run(cfg, "fleet", "rollouts", "--format", "json").stdout)
        assert as_json[0]["id"] == rollout_id and as_json[0]["counts"]["offered"] == 2

        # The fleet view: each button's board and update, in the table and the CSV.
        table = run(cfg, "devices", "list").stdout
        head = table.splitlines()[0]
        assert "BOARD" in head and "UPDATE" in head
        for b in fleet_buttons:
            row = next(x for x in table.splitlines() if x.startswith(b.id))
            assert " unix " in row
            assert (f"{NEW} offered" in row) == (b.id in offered), row
        rows = {r["id"]: r for r in csv.DictReader(io.StringIO(run(cfg, "devices", "export").stdout))}
        assert {rows[b.id]["board"] for b in fleet_buttons} == {"unix"}
        assert {d for d, r in rows.items() if r["update_state"] == "offered" and r["update_version"] == NEW} == offered
        assert all(rows[b.id]["firmware"] == OLD for b in fleet_buttons)

        # Both offered buttons fail (100% > the default 20%): the gateway halts the rollout.
        first, second = sorted(offered)
        by_id[first].report(fleet.id, "downloading")
        by_id[first].report(fleet.id, "refused", "wrong_sha256")
        by_id[second].report(fleet.id, "rolled_back", "selftest")
        wait_for(lambda: gateway_rollout(ota_system, rollout_id)["state"] == "halted", 10, "the rollout halted")

        shown = run(cfg, "fleet", "rollout", str(rollout_id))
        assert shown.returncode == 0, shown.stderr
        assert f"rollout {rollout_id}: firmware {NEW} to 40% — halted; 2 of 5 buttons offered" in shown.stdout
        # The gateway says why as a code; the CLI says it in the technician's words, with the numbers.
        assert "halted: 2 of 2 buttons failed, more than 20%" in shown.stdout, shown.stdout
        halted_list = run(cfg, "fleet", "rollouts", lang=PLAIN).stdout
        assert f"peluncuran {rollout_id} dihentikan: 2 dari 2 tombol gagal, lebih dari 20%" in halted_list, halted_list
        assert re.search(rf"{first}\s+failed\s+.+wrong_sha256 \(the downloaded file is not the bundle offered",
                         shown.stdout), shown.stdout
        assert re.search(rf"{second}\s+failed\s+.+selftest \(the new firmware did not pass its self-test",
                         shown.stdout), shown.stdout
        device_view = run(cfg, "devices", "show", second, lang=PLAIN)
        assert f"pembaruan   peluncuran {rollout_id}, firmware {NEW}: failed: selftest (firmware baru tidak lulus" \
            in device_view.stdout, device_view.stdout
        assert "papan       unix" in device_view.stdout

        # Widening a halted rollout: refused with its own exit code, the reason and how to resume.
        halted = run(cfg, "fleet", "update", "--version", NEW, "--percent", "60")
        assert halted.returncode == 6, halted.stdout + halted.stderr
        assert f"rollout {rollout_id} of firmware {NEW} is halted" in halted.stderr
        assert "2 of 2 buttons offered it failed, the limit is 20%" in halted.stderr
        assert f"--version {NEW} --percent 60 --resume" in halted.stderr
        halted_id = run(cfg, "fleet", "update", "--version", NEW, "--percent", "60", lang=PLAIN)
        assert halted_id.returncode == 6 and f"peluncuran {rollout_id} firmware {NEW} dihentikan" in halted_id.stderr
        assert gateway_rollout(ota_system, rollout_id)["percent"] == 40

        resumed = run(cfg, "fleet", "update", "--version", NEW, "--percent", "60", "--resume")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert f"rollout {rollout_id} resumed: firmware {NEW} to 60%" in resumed.stdout
        # The percent of a rollout only goes up.
        shrink = run(cfg, "fleet", "update", "--version", NEW, "--percent", "10")
        assert shrink.returncode == 4, shrink.stdout + shrink.stderr
        assert "a rollout's percent can only go up" in shrink.stderr

        cancelled = run(cfg, "fleet", "cancel", str(rollout_id), "--yes")
        assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
        assert f"rollout {rollout_id} of firmware {NEW}: cancelled" in cancelled.stdout
        after = run(cfg, "fleet", "rollouts").stdout
        assert re.search(rf"^{rollout_id}\s+{re.escape(NEW)}\s+60\s+cancelled\s", after, re.M), after
        assert "halted:" not in run(cfg, "fleet", "rollout", str(rollout_id)).stdout
        again = run(cfg, "fleet", "cancel", str(rollout_id), "--yes")
        assert again.returncode == 4 and f"rollout {rollout_id} cannot be cancelled" in again.stderr, again.stderr
        nothing = run(cfg, "fleet", "rollout", "999999")
        assert nothing.returncode == 4 and "the gateway has no rollout 999999" in nothing.stderr, nothing.stderr


def test_a_button_that_updates_is_counted_and_the_command_center_hears_of_it(ota_system: System, fleet: Fleet,
                                                                             tmp_path: Path) -> None:
    cfg = config_for(ota_system, tmp_path)
    assert run(cfg, "firmware", "publish", str(fleet.path)).returncode == 0
    with buttons(ota_system, "bdg-ota", 2) as pair:
        started = run(cfg, "fleet", "update", "--version", NEW, "--percent", "100", "--max-failed-percent", "50")
        assert started.returncode == 0, started.stdout + started.stderr
        rollout_id = int(re.search(r"rollout (\d+) (?:started|widened)", started.stdout).group(1))  # type: ignore[union-attr]
        for b in pair:
            assert b.offer()["id"] == fleet.id
            b.report(fleet.id, "installed")
            b.report(fleet.id, "confirmed", fw=NEW)
            b.heartbeat(fw=NEW)
        wait_for(lambda: gateway_rollout(ota_system, rollout_id)["counts"]["updated"] == 2, 10, "both updated")
        listed = run(cfg, "fleet", "rollouts").stdout
        line = next(x for x in listed.splitlines() if x.startswith(f"{rollout_id} "))
        assert "updated=2 failed=0" in line, line
        rows = {r["id"]: r for r in csv.DictReader(io.StringIO(run(cfg, "devices", "export").stdout))}
        assert [(rows[b.id]["firmware"], rows[b.id]["update_state"]) for b in pair] == [(NEW, "updated")] * 2

        # The gateway's report carries the versions in service and the rollouts under way or halted,
        # and the command center keeps and shows them.
        def firmware() -> dict[str, Any] | None:
            r = httpx.get(f"{ota_system.cc.url}/api/v1/gateways", headers=ota_system.cc.operator_headers(), timeout=5)
            r.raise_for_status()
            found = r.json()["gateways"]
            return found[0]["firmware"] if found and (found[0]["firmware"] or {}).get("versions", {}).get(NEW) else None

        summary = wait_for(firmware, 15, "the firmware summary at the command center")
        assert summary is not None
        assert summary["versions"][NEW] >= 2
        for r in summary["rollouts"]:
            assert r["state"] in ("active", "halted") and r["version"] == NEW
            assert set(r["counts"]) == {"offered", "downloading", "installed", "updated", "failed", "withdrawn"}

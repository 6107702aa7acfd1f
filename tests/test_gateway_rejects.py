"""Bad input gets a clear reason and loses nothing: forged, replayed, unknown-device, revoked,
malformed, oversize, cross-topic and flooding messages are rejected, each with its reason in the
audit log and the metrics, while the valid alarms sent between them all arrive."""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from siaga.broker.process import MosquittoProcess
from siagafw import proto
from tests.support.devices import LOC, SimButton
from tests.support.system import DeviceCredentials, System, start_system

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]


@pytest.fixture
def system(tmp_path: Path, mosquitto: MosquittoProcess) -> Iterator[System]:
    # A small flood budget so the flood case is quick to provoke.
    yield from start_system(tmp_path, mosquitto, gateway_settings="flood_rate_per_s = 2.0\nflood_burst = 10")


def audit(system: System) -> list[dict]:
    resp = httpx.get(f"{system.gateway.url}/api/v1/audit?limit=1000", headers=system.gateway.admin_headers, timeout=5)
    resp.raise_for_status()
    return resp.json()


def test_every_kind_of_bad_message_is_rejected_and_audited_while_valid_alarms_arrive(
        system: System, tmp_path: Path) -> None:
    good = SimButton(system.new_device("good-001"), system.broker.port).connect()
    bad = SimButton(system.new_device("bad-001"), system.broker.port).connect()
    # Known to the broker (it can log in) but never registered with the gateway.
    stranger_creds = DeviceCredentials("stranger-001", secrets.token_hex(32), "pw-of-stranger")
    system.broker.add_device(stranger_creds.device_id, stranger_creds.mqtt_password)
    stranger = SimButton(stranger_creds, system.broker.port).connect()
    revoked = SimButton(system.new_device("revoked-001"), system.broker.port).connect()
    flooder = SimButton(system.new_device("flood-001"), system.broker.port).connect()
    valid: list[int] = []
    try:
        def send_valid() -> None:
            seq, frame = good.alarm_frame("medical")
            good.publish("alarm", frame)
            valid.append(seq)

        send_valid()
        # forged: the right shape, signed with a key that is not the device's
        forged = proto.Signer(secrets.token_bytes(32)).seal(
            proto.encode(proto.alarm_body("bad-001", 900, "fire", LOC)))
        bad.publish("alarm", forged)
        send_valid()
        # replay: an old heartbeat again, after the window has moved past it
        old = bad.status_frame(seq=5)
        bad.publish("status", old)
        bad.publish("status", bad.status_frame(seq=500))
        bad.publish("status", old)
        send_valid()
        # unknown device
        stranger.publish("alarm", stranger.alarm_frame()[1])
        send_valid()
        # revoked device: accepted before, refused after
        seq_before, frame = revoked.alarm_frame()
        revoked.publish("alarm", frame)
        revoked.wait_ack(seq_before)
        httpx.post(f"{system.gateway.url}/api/v1/devices/revoked-001/revoke", headers=system.gateway.admin_headers,
                   timeout=5).raise_for_status()
        revoked.publish("alarm", revoked.alarm_frame()[1])
        send_valid()
        # malformed: not a frame; and a correctly signed body that is not JSON
        bad.publish("alarm", b"PANIC PANIC PANIC")
        bad.publish("alarm", bad.signer.seal(b"{not json"))
        send_valid()
        # oversize: over the protocol's 1 KiB, under the broker's packet limit
        bad.publish("alarm", bad.frame({**proto.alarm_body("bad-001", 901, "fire", LOC), "pad": "x" * 2000}))
        send_valid()
        # cross-topic: an alarm body on the status topic; a body naming another device
        bad.publish("status", bad.alarm_frame()[1])
        bad.publish("alarm", bad.frame(proto.alarm_body("good-001", 902, "fire", LOC)))
        send_valid()
        # flood: far over 2 messages/s after a burst of 10
        for _ in range(40):
            flooder.publish("status", flooder.status_frame())
        send_valid()

        for seq in valid:
            good.wait_ack(seq)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            db = sqlite3.connect(system.cc.db_path)
            at_cc = [r[0] for r in db.execute("SELECT seq FROM alarms WHERE device_id = 'good-001' ORDER BY id")]
            db.close()
            if len(at_cc) == len(valid):
                break
            time.sleep(0.2)
        assert at_cc == valid

        reasons = Counter(entry["reason"] for entry in audit(system))
        assert reasons == {"bad_signature": 1, "replay": 1, "unknown_device": 1, "revoked": 1, "malformed": 2,
                           "oversize": 1, "wrong_topic": 2, "flood": 1}, reasons
        metrics = system.gateway.metrics()
        for reason in ("bad_signature", "replay", "unknown_device", "revoked", "oversize"):
            assert metrics[f'rejected_total{{reason="{reason}"}}'] == 1, reason
        assert metrics['rejected_total{reason="malformed"}'] == 2
        assert metrics["acks_dropped"] == 0   # exported, and nothing dropped with the broker up
        assert metrics['rejected_total{reason="wrong_topic"}'] == 2
        # Every dropped flood message is counted, though only the first is written to the audit log.
        assert metrics['rejected_total{reason="flood"}'] >= 40 - 10 - 2

        entries = audit(system)
        stranger_entry = next(e for e in entries if e["reason"] == "unknown_device")
        assert stranger_entry["device_id"] == "stranger-001"
        assert stranger_entry["topic"] == "siaga/v1/dev/stranger-001/alarm"
        assert len(stranger_entry["detail"]) < 120   # a bounded prefix of the unauthenticated payload
        assert "flood-001" in next(e for e in entries if e["reason"] == "flood")["device_id"]
        # Nothing rejected reached the command center.
        db = sqlite3.connect(system.cc.db_path)
        devices = {r[0] for r in db.execute("SELECT DISTINCT device_id FROM alarms")}
        db.close()
        assert devices == {"good-001", "revoked-001"}
    finally:
        for b in (good, bad, stranger, revoked, flooder):
            b.close()


def test_secrets_never_appear_in_the_admin_api_or_logs(system: System) -> None:
    creds = system.new_device("secret-001")
    button = SimButton(creds, system.broker.port).connect()
    try:
        seq, frame = button.alarm_frame()
        button.publish("alarm", frame)
        button.wait_ack(seq)
    finally:
        button.close()
    headers = system.gateway.admin_headers
    for path in ("/api/v1/devices", "/api/v1/devices/secret-001", "/api/v1/alarms", "/api/v1/audit", "/metrics"):
        body = httpx.get(f"{system.gateway.url}{path}", headers=headers, timeout=5).text
        assert creds.secret_hex not in body, path
    assert creds.secret_hex not in system.gateway.log()
    assert system.gateway.admin_token not in system.gateway.log()

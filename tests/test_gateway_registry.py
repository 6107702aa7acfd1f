"""Registry operations the technician's tools rely on, against the real gateway and broker:
key rotation (at once, or pending until the board has the new key), decommissioning, location."""

from __future__ import annotations

import secrets
import time

import httpx
import pytest

from siagafw import proto
from tests.support.devices import SimButton
from tests.support.system import System

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]


def admin(system: System, method: str, path: str, **kwargs: object) -> httpx.Response:
    resp = httpx.request(method, f"{system.gateway.url}{path}", headers=system.gateway.admin_headers, timeout=5,
                         **kwargs)  # type: ignore[arg-type]
    resp.raise_for_status()
    return resp


def reasons(system: System) -> list[str]:
    return [e["reason"] for e in admin(system, "GET", "/api/v1/audit").json()]


def wait_reasons(system: System, n: int) -> list[str]:
    deadline = time.monotonic() + 10
    while len(found := reasons(system)) < n:
        assert time.monotonic() < deadline, found
        time.sleep(0.1)
    return found


def test_immediate_rotation_refuses_the_old_key_at_once(system: System) -> None:
    button = SimButton(system.new_device("rot-001"), system.broker.port).connect()
    try:
        new = secrets.token_hex(32)
        out = admin(system, "POST", "/api/v1/devices/rot-001/rotate-key", json={"secret_hex": new}).json()
        assert out["key_pending"] is False
        button.publish("alarm", button.alarm_frame()[1])            # still signed with the old key
        assert wait_reasons(system, 1) == ["bad_signature"]
        button.signer = proto.Signer(bytes.fromhex(new))
        seq, frame = button.alarm_frame()
        button.publish("alarm", frame)
        assert button.wait_ack(seq)["state"] == "received"         # and the ack is signed with the new key
    finally:
        button.close()


def test_pending_rotation_accepts_both_until_the_new_key_is_used(system: System) -> None:
    button = SimButton(system.new_device("rot-002"), system.broker.port).connect()
    old = button.signer
    try:
        new = secrets.token_hex(32)
        out = admin(system, "POST", "/api/v1/devices/rot-002/rotate-key",
                    json={"secret_hex": new, "mode": "pending"}).json()
        assert out["key_pending"] is True
        seq, frame = button.alarm_frame()
        button.publish("alarm", frame)                               # old key: still accepted
        button.wait_ack(seq)
        button.signer = proto.Signer(bytes.fromhex(new))             # the board was rewritten
        seq, frame = button.alarm_frame()
        button.publish("alarm", frame)
        button.wait_ack(seq)
        assert admin(system, "GET", "/api/v1/devices/rot-002").json()["key_pending"] is False
        button.signer = old                                          # the old key is retired now
        button.publish("alarm", button.alarm_frame()[1])
        assert wait_reasons(system, 1) == ["bad_signature"]
    finally:
        button.close()


def test_decommissioned_device_is_refused_and_keeps_its_history(system: System) -> None:
    button = SimButton(system.new_device("old-001"), system.broker.port).connect()
    try:
        seq, frame = button.alarm_frame()
        button.publish("alarm", frame)
        button.wait_ack(seq)
        out = admin(system, "POST", "/api/v1/devices/old-001/decommission").json()
        assert out["changed"] is True
        button.publish("alarm", button.alarm_frame()[1])
        assert wait_reasons(system, 1) == ["revoked"]
        device = admin(system, "GET", "/api/v1/devices/old-001").json()
        assert (device["decommissioned"], device["revoked"]) == (True, True)
        assert [a["seq"] for a in admin(system, "GET", "/api/v1/alarms?device_id=old-001").json()] == [seq]
    finally:
        button.close()


def test_location_and_site_can_be_corrected(system: System) -> None:
    system.new_device("loc-001")
    out = admin(system, "PATCH", "/api/v1/devices/loc-001",
                json={"lat": -6.2, "lon": 106.8, "address": "Pasar Baru, Blok A", "site": "pasar-baru"}).json()
    assert (out["lat"], out["lon"], out["address"], out["site"]) == (-6.2, 106.8, "Pasar Baru, Blok A", "pasar-baru")
    with pytest.raises(httpx.HTTPStatusError):
        admin(system, "PATCH", "/api/v1/devices/loc-001", json={})


def test_a_buttons_sim_number_is_registered_corrected_and_unique(system: System) -> None:
    """The phone of a button with a GSM modem (issue 17): given at registration or later, shown in the
    listing, one device's only, in the change log; a malformed number is refused."""
    creds = {"secret_hex": secrets.token_hex(32), "lat": -0.95, "lon": 100.35, "address": "Jl. Sudirman 1"}
    out = admin(system, "POST", "/api/v1/devices", json={"id": "sms-001", "phone": "+6281200000001", **creds}).json()
    assert out["phone"] == "+6281200000001" and out["last_sms_ms"] is None
    for bad in ("081200000001", "+62812", "+62 812 0000 0001", "+6281200000000000"):
        resp = httpx.post(f"{system.gateway.url}/api/v1/devices", headers=system.gateway.admin_headers, timeout=5,
                          json={"id": "sms-002", "phone": bad, **creds})
        assert resp.status_code == 422, bad
    taken = httpx.post(f"{system.gateway.url}/api/v1/devices", headers=system.gateway.admin_headers, timeout=5,
                       json={"id": "sms-002", "phone": "+6281200000001", **creds})
    assert taken.status_code == 409 and "sms-001" in taken.json()["detail"]
    system.new_device("sms-002")
    assert admin(system, "PATCH", "/api/v1/devices/sms-002", json={"phone": "+6281200000002"}).json()["phone"] \
        == "+6281200000002"
    moved = httpx.patch(f"{system.gateway.url}/api/v1/devices/sms-002", headers=system.gateway.admin_headers,
                        timeout=5, json={"phone": "+6281200000001"})
    assert moved.status_code == 409
    listed = {d["id"]: d["phone"] for d in admin(system, "GET", "/api/v1/devices").json()}
    assert (listed["sms-001"], listed["sms-002"]) == ("+6281200000001", "+6281200000002")
    assert admin(system, "PATCH", "/api/v1/devices/sms-001", json={"phone": None}).json()["phone"] is None
    log = admin(system, "GET", "/api/v1/fleet/changes?device_id=sms-001").json()
    assert [c["action"] for c in log] == ["update", "register"]
    assert log[0]["detail"] == {"phone": ["+6281200000001", None]} and log[1]["detail"]["phone"] == "+6281200000001"

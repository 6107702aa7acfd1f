"""Who changed the fleet: people with tokens of their own at the gateway's admin API, their roles,
and the fleet change log that names them; with the values that used to give server errors.

One real gateway process (against a real Mosquitto) serves the whole module: an administrator
"budi", a technician "siti" and the shared admin token (the person "admin"). Every device id is
used by one test only, so the tests do not depend on each other's order. The `siaga devices`
commands run as separate processes, as a technician runs them.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from siaga.gateway.config import GatewayConfig
from siaga.settings import ConfigError
from tests.support.board import provisioning_config, siaga
from tests.support.gateway import GatewayProcess, lone_gateway


@pytest.fixture(autouse=True)
def _english(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read the tool's English messages (its default is Bahasa Indonesia)."""
    monkeypatch.setenv("SIAGA_LANG", "en")


pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

ADMIN, TECH = "budi", "siti"
PLACE = {"lat": -6.175392, "lon": 106.827153, "address": "Jl. Medan Merdeka Barat 12", "area": "31.71.01.1001"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with lone_gateway(tmp_path_factory.mktemp("people"), people={ADMIN: "admin", TECH: "technician"}) as gateway:
        yield gateway


def call(gw: GatewayProcess, who: str | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """A request as `who` (a person, "admin" for the shared admin token, None for no credential)."""
    headers = {} if who is None else gw.admin_headers if who == "admin" else gw.headers_of(who)
    return httpx.request(method, f"{gw.url}{path}", headers={**headers, **kwargs.pop("headers", {})}, timeout=5,
                         **kwargs)


def register(gw: GatewayProcess, who: str, device_id: str, **place: Any) -> str:
    secret_hex = secrets.token_hex(32)
    resp = call(gw, who, "POST", "/api/v1/devices", json={"id": device_id, "secret_hex": secret_hex,
                                                           **(place or PLACE)})
    assert resp.status_code == 201, resp.text
    return secret_hex


def changes(gw: GatewayProcess, device_id: str) -> list[dict[str, Any]]:
    resp = call(gw, ADMIN, "GET", "/api/v1/fleet/changes", params={"device_id": device_id})
    assert resp.status_code == 200, resp.text
    return resp.json()


def who_did_what(gw: GatewayProcess, device_id: str) -> list[tuple[str, str, str]]:
    """(person, role, action) of a device's changes, oldest first."""
    return [(c["person"], c["role"], c["action"]) for c in reversed(changes(gw, device_id))]


def device(gw: GatewayProcess, device_id: str) -> dict[str, Any]:
    resp = call(gw, ADMIN, "GET", f"/api/v1/devices/{device_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()


# ---- the admin API ----------------------------------------------------------------------------------------


def test_every_registry_change_through_the_api_names_the_person(gw: GatewayProcess) -> None:
    secret_hex = register(gw, TECH, "ppl-api-01")
    patched = call(gw, TECH, "PATCH", "/api/v1/devices/ppl-api-01",
                   json={"lat": -6.2, "address": "Pasar Baru, Blok A", "site": "pasar-baru", "area": PLACE["area"]})
    assert patched.status_code == 200, patched.text
    new_key = secrets.token_hex(32)
    assert call(gw, ADMIN, "POST", "/api/v1/devices/ppl-api-01/rotate-key",
                json={"secret_hex": new_key, "mode": "pending"}).status_code == 200
    assert call(gw, ADMIN, "POST", "/api/v1/devices/ppl-api-01/revoke").json()["changed"] is True
    assert call(gw, "admin", "POST", "/api/v1/devices/ppl-api-01/decommission").json()["changed"] is True

    log = changes(gw, "ppl-api-01")
    assert [(c["person"], c["role"], c["action"]) for c in log] == [   # newest first
        ("admin", "admin", "decommission"), (ADMIN, "admin", "revoke"), (ADMIN, "admin", "rotate-key"),
        (TECH, "technician", "configure"), (TECH, "technician", "update"), (TECH, "technician", "register")]
    by_action = {c["action"]: c for c in log}
    assert by_action["register"]["detail"] == {"site": None, **PLACE}
    # Only what changed, before and after (the area was given unchanged).
    assert by_action["update"]["detail"] == {"lat": [PLACE["lat"], -6.2], "site": [None, "pasar-baru"],
                                             "address": [PLACE["address"], "Pasar Baru, Blok A"]}
    assert by_action["rotate-key"]["detail"] == {"mode": "pending"}
    assert all(c["device_id"] == "ppl-api-01" and c["at_ms"] > 0 for c in log)
    assert sorted(c["id"] for c in log) == [c["id"] for c in reversed(log)]
    # Never a key: neither the first one nor the rotated one.
    text = json.dumps(log)
    assert secret_hex not in text and new_key not in text


def test_the_change_log_is_newest_first_across_devices_and_limited(gw: GatewayProcess) -> None:
    register(gw, ADMIN, "ppl-all-01")
    register(gw, TECH, "ppl-all-02")
    latest = call(gw, ADMIN, "GET", "/api/v1/fleet/changes", params={"limit": 2}).json()
    assert [(c["device_id"], c["person"]) for c in latest] == [("ppl-all-02", TECH), ("ppl-all-01", ADMIN)]


def test_changes_that_change_nothing_and_refusals_are_not_logged(gw: GatewayProcess) -> None:
    register(gw, ADMIN, "ppl-nop-01")
    assert call(gw, ADMIN, "POST", "/api/v1/devices/ppl-nop-01/revoke").json()["changed"] is True
    assert call(gw, ADMIN, "POST", "/api/v1/devices/ppl-nop-01/revoke").json()["changed"] is False
    assert call(gw, TECH, "PATCH", "/api/v1/devices/ppl-nop-01", json={"area": PLACE["area"]}).status_code == 200
    assert call(gw, TECH, "POST", "/api/v1/devices/ppl-nop-01/decommission").status_code == 403
    assert call(gw, TECH, "POST", "/api/v1/devices", json={"id": "ppl-nop-01", "secret_hex": "0" * 64}
                ).status_code == 409
    assert who_did_what(gw, "ppl-nop-01") == [(ADMIN, "admin", "register"), (ADMIN, "admin", "revoke")]


def test_a_technician_may_undo_their_own_registration_of_a_button_never_heard_from(gw: GatewayProcess) -> None:
    # A provisioning run that fails after registering undoes it with the technician's own token.
    register(gw, TECH, "ppl-undo-01")
    assert call(gw, TECH, "POST", "/api/v1/devices/ppl-undo-01/decommission").status_code == 200
    assert device(gw, "ppl-undo-01")["decommissioned"] is True
    assert who_did_what(gw, "ppl-undo-01") == [(TECH, "technician", "register"), (TECH, "technician", "decommission")]
    # Not someone else's registration.
    register(gw, ADMIN, "ppl-undo-02")
    assert call(gw, TECH, "POST", "/api/v1/devices/ppl-undo-02/decommission").status_code == 403


def test_a_technician_may_look_register_and_correct_but_nothing_else(gw: GatewayProcess) -> None:
    register(gw, ADMIN, "ppl-role-01")
    for method, path in [("GET", "/api/v1/devices"), ("GET", "/api/v1/devices/ppl-role-01"),
                         ("GET", "/api/v1/alarms?device_id=ppl-role-01")]:
        assert call(gw, TECH, method, path).status_code == 200, path
    refused = [("POST", "/api/v1/devices/ppl-role-01/revoke", None),
               ("POST", "/api/v1/devices/ppl-role-01/rotate-key", {"secret_hex": "1" * 64}),
               ("POST", "/api/v1/devices/ppl-role-01/decommission", None),
               ("POST", "/api/v1/outbox/1/requeue", None),
               ("GET", "/api/v1/audit", None), ("GET", "/api/v1/quarantine", None), ("GET", "/metrics", None),
               ("GET", "/api/v1/fleet/changes", None), ("GET", "/api/v1/incidents", None),
               ("GET", "/api/v1/outbox/refused", None)]
    for method, path, body in refused:
        resp = call(gw, TECH, method, path, json=body)
        assert resp.status_code == 403, (path, resp.status_code, resp.text)
        assert "needs an administrator" in resp.json()["detail"]
    # A device id that does not exist is still 403 for a technician, not 404: the role comes first.
    assert call(gw, TECH, "POST", "/api/v1/devices/ppl-none-99/revoke").status_code == 403
    assert device(gw, "ppl-role-01")["revoked"] is False
    assert who_did_what(gw, "ppl-role-01") == [(ADMIN, "admin", "register")]
    # An administrator may do all of it.
    assert call(gw, ADMIN, "GET", "/metrics").status_code == 200
    assert call(gw, ADMIN, "POST", "/api/v1/outbox/1/requeue").status_code == 404  # none refused


@pytest.mark.parametrize("authorization", [
    "{token}",                  # the bare token, without the scheme
    "Token {token}", "Basic {token}", "Bearer", "Bearer:{token}", "Bearer {token}x", "Bearer not-a-token-of-anyone",
    "Bearer {cc}",              # the command center's token is not a person's
])
def test_only_a_bearer_token_of_a_person_is_accepted(gw: GatewayProcess, authorization: str) -> None:
    header = authorization.format(token=gw.people_tokens[ADMIN], cc=gw.callback_token)
    for method, path in [("GET", "/api/v1/devices"), ("POST", "/api/v1/devices")]:
        resp = call(gw, None, method, path, headers={"Authorization": header}, json={})
        assert resp.status_code == 401, (authorization, path, resp.status_code)
        assert resp.headers["www-authenticate"] == "Bearer"


def test_the_scheme_is_case_insensitive_and_no_header_is_401(gw: GatewayProcess) -> None:
    token = gw.people_tokens[TECH]
    for scheme in ("bearer", "BEARER", "Bearer"):
        assert call(gw, None, "GET", "/api/v1/devices", headers={"Authorization": f"{scheme} {token}"}
                    ).status_code == 200
    resp = call(gw, None, "GET", "/api/v1/devices")
    assert (resp.status_code, resp.headers["www-authenticate"]) == (401, "Bearer")


def test_the_state_callback_takes_the_command_centers_bearer_token_only(gw: GatewayProcess) -> None:
    body = {"event_id": "e", "device_id": "ppl-cc-01", "seq": 1, "state": "acknowledged",
            "at": "2026-01-01T00:00:00Z"}
    for header in (gw.callback_token, f"Bearer {gw.people_tokens[ADMIN]}", f"Bearer {gw.admin_token}"):
        resp = call(gw, None, "POST", "/api/v1/cc/state", headers={"Authorization": header}, json=body)
        assert resp.status_code == 401, header
    resp = call(gw, None, "POST", "/api/v1/cc/state", headers={"Authorization": f"Bearer {gw.callback_token}"},
                json=body)
    assert resp.status_code == 404  # accepted, and there is no such alarm


def test_the_openapi_document_has_the_security_schemes_and_the_error_answers(gw: GatewayProcess) -> None:
    doc = httpx.get(f"{gw.url}/openapi.json", timeout=5).json()
    assert {name: s["scheme"] for name, s in doc["components"]["securitySchemes"].items()} == {
        "personToken": "bearer", "commandCenterToken": "bearer"}
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            if path in ("/health", "/ready"):
                assert "security" not in op
                continue
            if path == "/api/v1/destinations/{name}/state":
                # The city systems' state reports: a Standard Webhooks signature, no bearer token.
                assert "security" not in op
                assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
                assert {"404", "413", "422"} <= set(op["responses"])
                continue
            expected = "commandCenterToken" if path == "/api/v1/cc/state" else "personToken"
            assert op["security"] == [{expected: []}], (method, path)
            assert "401" in op["responses"], (method, path)
            assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
            if op.get("parameters") or op.get("requestBody"):
                assert "422" in op["responses"], (method, path)
    ops = doc["paths"]
    assert {"403", "404"} <= set(ops["/api/v1/devices/{device_id}/revoke"]["post"]["responses"])
    assert {"403", "404", "409"} <= set(ops["/api/v1/devices/{device_id}/rotate-key"]["post"]["responses"])
    assert "409" in ops["/api/v1/devices"]["post"]["responses"]
    assert "403" not in ops["/api/v1/devices"]["post"]["responses"]   # technicians register too
    assert list(ops["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    error = doc["components"]["schemas"]["ErrorOut"]
    assert error["required"] == ["detail"]
    # The bounds a client can read: no value beyond them reaches the database.
    requeue = ops["/api/v1/outbox/{outbox_id}/requeue"]["post"]["parameters"][0]["schema"]
    assert (requeue["minimum"], requeue["maximum"]) == (1, 2**63 - 1)
    limit = next(p for p in ops["/api/v1/audit"]["get"]["parameters"] if p["name"] == "limit")["schema"]
    assert (limit["minimum"], limit["maximum"]) == (1, 1000)


# ---- values that gave server errors ---------------------------------------------------------------------


@pytest.mark.parametrize(("body", "problem"), [
    ({"lon": False}, "valid number"), ({"lat": True}, "valid number"), ({"lat": "-6.2"}, "valid number"),
    ({"lat": 91}, "less than or equal to 90"), ({"address": None}, 'send "" to clear it'),
    ({"area": None}, 'send "" to clear it'), ({}, "nothing to change"),
])
def test_a_bad_correction_is_422_and_changes_nothing(gw: GatewayProcess, body: dict[str, Any], problem: str) -> None:
    if "ppl-val-01" not in {d["id"] for d in call(gw, ADMIN, "GET", "/api/v1/devices").json()}:
        register(gw, ADMIN, "ppl-val-01")
    before = device(gw, "ppl-val-01")
    resp = call(gw, TECH, "PATCH", "/api/v1/devices/ppl-val-01", json=body)
    assert resp.status_code == 422, resp.text
    assert problem in " ".join(e["msg"] for e in resp.json()["detail"])
    assert device(gw, "ppl-val-01") == before


def test_integer_coordinates_are_accepted(gw: GatewayProcess) -> None:
    register(gw, TECH, "ppl-int-01", lat=-6, lon=107, address="Jl. Bulat 1", area="31.71")
    assert (device(gw, "ppl-int-01")["lat"], device(gw, "ppl-int-01")["lon"]) == (-6.0, 107.0)
    resp = call(gw, None, "POST", "/api/v1/devices", headers=gw.headers_of(TECH),
                json={"id": "ppl-int-02", "secret_hex": secrets.token_hex(32), "lat": -6.1, "lon": False})
    assert resp.status_code == 422


@pytest.mark.parametrize("raw", ['{"lat": NaN}', '{"lon": Infinity}', '{"lat": 1e400}'])  # 1e400: infinity
def test_non_finite_coordinates_are_refused(gw: GatewayProcess, raw: str) -> None:
    if "ppl-nan-01" not in {d["id"] for d in call(gw, ADMIN, "GET", "/api/v1/devices").json()}:
        register(gw, ADMIN, "ppl-nan-01")
    before = device(gw, "ppl-nan-01")
    resp = call(gw, TECH, "PATCH", "/api/v1/devices/ppl-nan-01", content=raw,
                headers={"Content-Type": "application/json"})
    assert device(gw, "ppl-nan-01") == before
    assert 400 <= resp.status_code < 500, resp.text


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00", "0001-01-01T00:30:00+01:00", "9999-12-31T23:59:59Z",
                                "1969-12-31T23:59:59Z", "3000-01-01T00:00:00Z", 10**30, True])
def test_a_state_time_out_of_range_is_422(gw: GatewayProcess, at: object) -> None:
    resp = call(gw, None, "POST", "/api/v1/cc/state", headers={"Authorization": f"Bearer {gw.callback_token}"},
                json={"event_id": "e", "device_id": "ppl-cc-01", "seq": 1, "state": "acknowledged", "at": at})
    assert resp.status_code == 422, resp.text


def test_a_state_time_without_a_zone_is_utc(gw: GatewayProcess) -> None:
    resp = call(gw, None, "POST", "/api/v1/cc/state", headers={"Authorization": f"Bearer {gw.callback_token}"},
                json={"event_id": "e", "device_id": "ppl-cc-01", "seq": 1, "state": "acknowledged",
                      "at": "2026-01-01T00:00:00"})
    assert resp.status_code == 404  # valid; there is no such alarm


@pytest.mark.parametrize("path", ["/api/v1/outbox/18446744073709551616/requeue", "/api/v1/outbox/0/requeue",
                                  "/api/v1/outbox/-1/requeue"])
def test_an_outbox_id_out_of_range_is_422(gw: GatewayProcess, path: str) -> None:
    assert call(gw, ADMIN, "POST", path).status_code == 422


@pytest.mark.parametrize("path", ["/api/v1/audit", "/api/v1/alarms", "/api/v1/incidents", "/api/v1/quarantine",
                                  "/api/v1/outbox/refused", "/api/v1/fleet/changes"])
def test_a_limit_out_of_range_is_422(gw: GatewayProcess, path: str) -> None:
    for limit in (2**64, 0, 1001, -1):
        assert call(gw, ADMIN, "GET", path, params={"limit": limit}).status_code == 422, (path, limit)
    assert call(gw, ADMIN, "GET", path, params={"limit": 1000}).status_code == 200


# ---- siaga devices ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prov(gw: GatewayProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A provisioning config that names the shared admin token (as before people had their own), with
    no [broker]: these commands then act on the gateway only."""
    return provisioning_config(tmp_path_factory.mktemp("prov"), gateway_url=gw.url, admin_token=gw.admin_token,
                               broker_port=1883, password_file=None, broker_pid=None, wifi_password=None)


def token_file(gw: GatewayProcess, person: str, folder: Path) -> Path:
    path = folder / f"{person}.token"
    path.write_text(gw.people_tokens[person] + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def test_every_registry_change_through_siaga_devices_names_the_person(gw: GatewayProcess, prov: Path,
                                                                      tmp_path: Path) -> None:
    siti, budi = token_file(gw, TECH, tmp_path), token_file(gw, ADMIN, tmp_path)
    cfg = ["--config", str(prov)]
    steps = [
        (["add", "ppl-cli-01", *cfg, "--token-file", str(siti), "--latlon", "-6.175392, 106.827153",
          "--address", "Jl. Medan Merdeka Barat 12", "--area", "31.71.01.1001"], {}),
        # The token from the environment instead of a file.
        (["set-location", "ppl-cli-01", *cfg, "--latlon", "-6.2, 106.8", "--site", "pasar-baru"],
         {"SIAGA_TOKEN": gw.people_tokens[TECH]}),
        (["rotate-key", "ppl-cli-01", *cfg, "--token-file", str(budi)], {}),
        (["revoke", "ppl-cli-01", *cfg, "--token-file", str(budi), "--yes"], {}),
        (["decommission", "ppl-cli-01", *cfg, "--token-file", str(budi), "--yes"], {}),
    ]
    for args, env in steps:
        done = siaga("devices", *args, timeout_s=60, env=env)
        assert done.returncode == 0, (args[0], done.stdout, done.stderr)
    assert who_did_what(gw, "ppl-cli-01") == [
        (TECH, "technician", "register"), (TECH, "technician", "update"), (TECH, "technician", "configure"),
        (ADMIN, "admin", "rotate-key"),
        (ADMIN, "admin", "revoke"), (ADMIN, "admin", "decommission")]
    update = next(c for c in changes(gw, "ppl-cli-01") if c["action"] == "update")
    assert update["detail"] == {"lat": [-6.175392, -6.2], "lon": [106.827153, 106.8], "site": [None, "pasar-baru"]}


def test_siaga_devices_without_a_personal_token_is_the_shared_admin(gw: GatewayProcess, prov: Path) -> None:
    done = siaga("devices", "add", "ppl-cli-02", "--config", str(prov), "--latlon", "-6.1, 106.8", "--address",
                 "Jl. Lama 1", "--area", "31.71", timeout_s=60, env={"SIAGA_TOKEN": ""})
    assert done.returncode == 0, done.stderr
    assert who_did_what(gw, "ppl-cli-02") == [("admin", "admin", "register")]


def test_a_technicians_config_needs_no_shared_token(gw: GatewayProcess, prov: Path, tmp_path: Path) -> None:
    own = tmp_path / "siaga-provision.toml"
    text = prov.read_text(encoding="utf-8")
    assert 'admin_token_file = "admin-token"' in text
    own.write_text(text.replace('admin_token_file = "admin-token"', 'admin_token_env = "SIAGA_TOKEN"'),
                   encoding="utf-8")
    register(gw, ADMIN, "ppl-cli-04")
    done = siaga("devices", "set-location", "ppl-cli-04", "--config", str(own), "--address", "Jl. Baru 2",
                 "--token-file", str(token_file(gw, TECH, tmp_path)), timeout_s=60, env={"SIAGA_TOKEN": ""})
    assert done.returncode == 0, done.stderr
    # The corrected address also goes to the button (its remote configuration, protocol.md §10).
    assert who_did_what(gw, "ppl-cli-04") == [(ADMIN, "admin", "register"), (TECH, "technician", "update"),
                                              (TECH, "technician", "configure")]


def test_a_technician_cannot_revoke_with_siaga_devices(gw: GatewayProcess, prov: Path, tmp_path: Path) -> None:
    register(gw, ADMIN, "ppl-cli-03")
    done = siaga("devices", "revoke", "ppl-cli-03", "--config", str(prov), "--yes", "--token-file",
                 str(token_file(gw, TECH, tmp_path)), timeout_s=60)
    assert done.returncode != 0
    assert "403" in done.stderr and "needs an administrator" in done.stderr
    assert gw.people_tokens[TECH] not in done.stdout + done.stderr
    assert device(gw, "ppl-cli-03")["revoked"] is False


def test_a_token_file_without_a_token_is_a_usage_error_that_does_not_echo_it(prov: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.token"
    bad.write_text("short secret\n", encoding="utf-8")
    done = siaga("devices", "list", "--config", str(prov), "--token-file", str(bad), timeout_s=60)
    assert done.returncode == 2, done.stderr
    assert "does not hold a token" in done.stderr and "short secret" not in done.stderr
    missing = siaga("devices", "list", "--config", str(prov), "--token-file", str(tmp_path / "nope"), timeout_s=60)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


# ---- the configuration ------------------------------------------------------------------------------------


def write_config(folder: Path, api: str, people: dict[str, str] | None = None) -> Path:
    """A gateway.toml with the [api] lines `api` and [[api.people]] entries name -> role, each with a
    fresh token file (or the token given as "role:token")."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cc.token").write_text("cc-callback-token-0123456789\n", encoding="utf-8")
    (folder / "mqtt.password").write_text("pw\n", encoding="utf-8")
    entries = ""
    for name, spec in (people or {}).items():
        role, _, token = spec.partition(":")
        (folder / f"{name}.token").write_text((token or secrets.token_urlsafe(24)) + "\n", encoding="utf-8")
        entries += f'[[api.people]]\nname = "{name}"\nrole = "{role}"\ntoken_file = "{name}.token"\n\n'
    path = folder / "gateway.toml"
    path.write_text(f'[gateway]\n[mqtt]\npassword_file = "mqtt.password"\n[api]\ncc_token_file = "cc.token"\n{api}\n\n'
                    f'{entries}[commandcenter]\nurl = "http://127.0.0.1:8300"\ntoken_file = "cc.token"\n',
                    encoding="utf-8")
    return path


def test_people_alone_need_no_shared_admin_token(tmp_path: Path) -> None:
    cfg = GatewayConfig.load(write_config(tmp_path, "", {"budi": "admin", "siti": "technician", "eko": "admin"}))
    assert cfg.admin_token is None
    assert sorted((p.name, p.role.value) for p in cfg.credentials.values()) == [
        ("budi", "admin"), ("eko", "admin"), ("siti", "technician")]
    (tmp_path / "admin.token").write_text(secrets.token_urlsafe(24), encoding="utf-8")
    both = GatewayConfig.load(write_config(tmp_path, 'admin_token_file = "admin.token"', {"siti": "technician"}))
    assert sorted(p.name for p in both.credentials.values()) == ["admin", "siti"]
    assert not any(token in repr(both) for token in both.credentials)  # no secret in a repr


SHARED = "the-same-token-for-two-people"


@pytest.mark.parametrize(("api", "people", "expected"), [
    ("", {}, "nobody can use the admin API"),
    ("", {"siti": "technician"}, 'nobody has role "admin"'),
    ("", {"budi": f"admin:{SHARED}", "siti": f"technician:{SHARED}"}, "api.people[1] (siti): the same token as 'budi'"),
    ("", {"budi": "admin:short"}, "at least 16 visible ASCII characters"),
    ("", {"budi": "admin:cc-callback-token-0123456789"}, "the same token as api.cc_token_file"),
    ("", {"budi": "boss"}, 'api.people[0].role (budi): use "admin" or "technician"'),
    ('admin_token_file = "admin.token"', {"admin": "technician"}, "api.people[0].name 'admin' is configured twice"),
])
def test_a_mistake_in_the_people_is_one_line_without_the_token(tmp_path: Path, api: str, people: dict[str, str],
                                                               expected: str) -> None:
    (tmp_path / "admin.token").write_text(secrets.token_urlsafe(24), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        GatewayConfig.load(write_config(tmp_path, api, people))
    message = str(err.value)
    assert expected in message, message
    assert SHARED not in message and "short" not in message.replace("shorten", "")


@pytest.mark.parametrize(("entry", "expected"), [
    ('name = "budi"\nrole = "admin"\ntoken = "inline-token-0123456789"', "must not be written inline"),
    ('name = "budi"\nrole = "admin"\ntokn_file = "x"', "unknown setting api.people[0].tokn_file: did you mean"),
    ('name = "budi san"\nrole = "admin"\ntoken_file = "x"', "api.people[0].name is not a name"),
    ('role = "admin"\ntoken_file = "x"', "missing setting api.people[0].name"),
    ('name = "budi"\nrole = "admin"\ntoken_file = "missing.token"', "api.people[0].token_file: cannot read"),
])
def test_a_mistake_in_a_people_entry_names_the_entry(tmp_path: Path, entry: str, expected: str) -> None:
    path = write_config(tmp_path, "")
    path.write_text(path.read_text().replace("[commandcenter]", f"[[api.people]]\n{entry}\n\n[commandcenter]"))
    with pytest.raises(ConfigError) as err:
        GatewayConfig.load(path)
    assert expected in str(err.value), str(err.value)
    assert "inline-token-0123456789" not in str(err.value)

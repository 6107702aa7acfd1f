"""Schemathesis against both HTTP services, each a real process answering over real HTTP.

The command center and the gateway's admin API are started once for the module (with a real
Mosquitto for the gateway, the gateway's callback URL configured in the command center as in
production), and the schemathesis CLI runs against each OpenAPI document once per role: anonymously
and with each credential the service accepts. Every check runs (`--checks all`); examples are bounded
and generation is derandomized with a fixed seed (tests/schemathesis.toml). A failure lists the
failed checks by operation, the exceptions the service logged, and a curl command per failure.

Roles are (label, headers, which operations): a new credential is one more line.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from siaga.gateway.webhooks import format_secret
from tests.support.ccproc import AGENCY_VIEWER_AGENCY, CommandCenterProcess
from tests.support.gateway import GatewayProcess
from tests.support.mosquitto import new_broker
from tests.support.net import free_port
from tests.support.schemathesis_run import SchemathesisRun, run_schemathesis
from tests.support.system import System

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

# (label, the credential's headers, which operations): a role runs against the operations it may
# call; the anonymous run covers every operation (each must refuse it, or answer it as documented).
Role = tuple[str, Callable[[System], dict[str, str]], tuple[str, ...]]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


INTAKE_ONLY = ("--include-tag", "intake")
PEOPLE_ONLY = ("--exclude-tag", "intake")
STATE_ONLY = ("--include-path", "/api/v1/cc/state")
# The callbacks (the command center's and the city systems' signed webhooks) take no bearer token:
# the anonymous run covers them.
ADMIN_API_ONLY = ("--exclude-path", "/api/v1/cc/state", "--exclude-path", "/api/v1/destinations/{name}/state")

COMMAND_CENTER_ROLES: list[Role] = [
    ("anonymous", lambda s: {}, ()),
    # What gateways present on POST /api/v1/alarms, /faults and their batches.
    ("intake", lambda s: _bearer(s.cc.intake_token), INTAKE_ONLY),
    ("operator", lambda s: s.cc.operator_headers(), PEOPLE_ONLY),
    ("supervisor", lambda s: s.cc.supervisor_headers(), PEOPLE_ONLY),
    ("agency-viewer", lambda s: s.cc.agency_headers(), PEOPLE_ONLY),
]

GATEWAY_ROLES: list[Role] = [
    ("anonymous", lambda s: {}, ()),
    ("admin", lambda s: s.gateway.admin_headers, ADMIN_API_ONLY),
    ("technician", lambda s: s.gateway.headers_of("tech-1"), ADMIN_API_ONLY),
    # What the command center presents on POST /api/v1/cc/state.
    ("cc-callback", lambda s: _bearer(s.gateway.callback_token), STATE_ONLY),
]


def city_webhook(cc_url: str) -> str:
    """A webhook destination whose receiver refuses every delivery for good (the command center
    answers its unknown path 404), so the gateway does not keep opening connections to retry."""
    return f"""
[[destinations]]
name = "city-cad"
type = "webhook"
url = "{cc_url}/nobody-takes-webhooks-here"
secret_files = ["secrets/city.whsec"]
inbound_secret_files = ["secrets/city-in.whsec"]
"""


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """Mosquitto, the command center and the gateway (as `start_system` wires them: the command
    center reports states to the gateway's callback), shared by every run of this module."""
    tmp = tmp_path_factory.mktemp("schemathesis")
    broker = new_broker(tmp / "mosquitto")
    gw_port, callback_token = free_port(), secrets.token_urlsafe(24)
    cc = CommandCenterProcess(tmp, gateway_url=f"http://127.0.0.1:{gw_port}", gateway_token=callback_token)
    gateway = GatewayProcess(tmp, mqtt_port=broker.port, mqtt_password=broker.gateway_password, cc_url=cc.url,
                             cc_token=cc.intake_token, port=gw_port, callback_token=callback_token,
                             people={"tech-1": "technician"}, extra_toml=city_webhook(cc.url))
    # A city's system that reports states through a signed inbound webhook (docs/integration.md):
    # its route answers for a real destination, so a run reaches the signature check and beyond.
    for name, key in (("city.whsec", secrets.token_bytes(32)), ("city-in.whsec", secrets.token_bytes(32))):
        (gateway.dir / "secrets" / name).write_text(format_secret(key) + "\n", encoding="utf-8")
    with contextlib.ExitStack() as stack:
        stack.callback(broker.close)
        broker.start()
        stack.enter_context(cc)
        stack.enter_context(gateway)
        system = System(broker, cc, gateway)
        _seed(system)
        yield system


def _seed(system: System) -> None:
    """A little data, so that each role gets past "404 not found" somewhere: a registered button in
    the gateway; in the command center an incident dispatched to the agency viewer's agency, with a
    note, one left unacknowledged, and an active fault."""
    system.new_device("st-btn-001")
    location = {"lat": -6.195733, "lon": 106.832085, "address": "Jl. Menteng Raya 12", "area": "31.71.06.1001"}
    cc = system.cc
    with httpx.Client(base_url=cc.url, timeout=10) as http:
        incidents = []
        for seq, device in ((1, "st-btn-001"), (2, "st-btn-002")):
            event_id = f"gw-test:{device}:{seq}"
            resp = http.post("/api/v1/alarms", headers=cc.intake_headers(event_id), json={
                "event_id": event_id, "gateway_id": "gw-test", "device_id": device, "seq": seq, "kind": "medical",
                "test": False, "location": location, "raised_at": "2026-11-24T03:12:09Z",
                "received_at": "2026-11-24T03:12:09.412Z"})
            assert resp.status_code == 201, resp.text
            incidents.append(resp.json()["incident_id"])
        for action, body in (("acknowledge", {}), ("dispatch", {"agency": AGENCY_VIEWER_AGENCY}),
                             ("notes", {"note": "unit on its way"})):
            resp = http.post(f"/api/v1/incidents/{incidents[0]}/{action}", json=body, headers=cc.operator_headers())
            assert resp.is_success, f"{action}: {resp.status_code} {resp.text}"
        event_id = "gw-test:st-btn-002:fault:1"
        resp = http.post("/api/v1/faults", headers=cc.intake_headers(event_id), json={
            "event_id": event_id, "gateway_id": "gw-test", "device_id": "st-btn-002", "fault": "low_battery",
            "active": True, "at": "2026-11-24T03:20:00Z", "detail": {"battery_mv": 3300}})
        assert resp.status_code == 201, resp.text


Runs = dict[str, Future[SchemathesisRun]]


def _run(services: System, role: Role, url: str, log_path: Path, workdir: Path) -> SchemathesisRun:
    label, headers, operations = role
    return run_schemathesis(f"{url}/openapi.json", role=label, headers=headers(services),
                            workdir=workdir, server_logs=[log_path], extra_args=operations)


@pytest.fixture(scope="module")
def gateway_runs(services: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """The gateway's runs, one after another in a thread of their own, beside the command center's
    (in the test thread): the two services share nothing, and the suite is the shorter for it."""
    work = tmp_path_factory.mktemp("gateway-schemathesis")
    gw = services.gateway
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield {role[0]: pool.submit(_run, services, role, gw.url, gw.log_path, work / role[0])
               for role in GATEWAY_ROLES}


@pytest.mark.parametrize("role", COMMAND_CENTER_ROLES, ids=[label for label, _, _ in COMMAND_CENTER_ROLES])
def test_command_center_api_conforms_to_its_openapi_document(
        services: System, gateway_runs: Runs, role: Role, tmp_path: Path) -> None:
    assert services.cc.running, services.cc.log()[-3000:]
    result = _run(services, role, services.cc.url, services.cc.log_path, tmp_path / "schemathesis")
    if not result.passed:
        pytest.fail(result.explain(), pytrace=False)


@pytest.mark.parametrize("role", GATEWAY_ROLES, ids=[label for label, _, _ in GATEWAY_ROLES])
def test_gateway_admin_api_conforms_to_its_openapi_document(
        services: System, gateway_runs: Runs, role: Role) -> None:
    result = gateway_runs[role[0]].result()
    assert services.gateway.running(), services.gateway.log()[-3000:]
    if not result.passed:
        pytest.fail(result.explain(), pytrace=False)

"""The gateway's admin API against hostile clients (issue 13; docs/security.md): the same entrance as
the command center's (siaga/web.py), with the gateway's own table of who may call what. A real
gateway process with a real Mosquitto, at its default throttling and with short deadlines."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.gateway import GatewayProcess, lone_gateway
from tests.support.hostile import MB, peak_rss_mb, raw_post, repeat

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

DEADLINE_S = 2.0


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    limits = f"header_timeout_s = {DEADLINE_S}\nbody_timeout_s = {DEADLINE_S}"  # and the default throttle
    with lone_gateway(tmp_path_factory.mktemp("entrance"), people={"tech-1": "technician"},
                      api_settings=limits) as gateway:
        yield gateway


CC_STATE_PATH = "/api/v1/cc/state"
# The city systems' state reports: signed webhooks (gateway/inbound.py), no bearer token; this
# gateway has no destination that takes them, so every name is unknown here.
INBOUND_PATH = "/api/v1/destinations/{name}/state"


def test_every_operation_that_needs_a_credential_refuses_anonymous_before_the_body(gw: GatewayProcess) -> None:
    spec = httpx.get(f"{gw.url}/openapi.json").json()
    assert {"personToken", "commandCenterToken"} <= set(spec["components"]["securitySchemes"])
    secured = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            schemes = {name for requirement in op.get("security", []) for name in requirement}
            if path in ("/health", "/ready"):
                assert not schemes
                continue
            if path == INBOUND_PATH:
                assert not schemes and {"401", "404", "429"} <= set(op["responses"])
                r = httpx.post(gw.url + path.replace("{name}", "city-cad"), content=b"{not json",
                               headers={"Content-Type": "application/json"})
                assert r.status_code == 404, r.text
                continue
            assert schemes == ({"commandCenterToken"} if path == CC_STATE_PATH else {"personToken"}), (method, path)
            assert {"401", "429"} <= set(op["responses"]), (method, path)
            r = httpx.request(method, gw.url + path.replace("{device_id}", "ent-any-01").replace("{outbox_id}", "1"),
                              content=b"{not json", headers={"Content-Type": "application/json"})
            assert r.status_code == 401, (method, path, r.status_code)
            secured += 1
    assert secured >= 15
    r = httpx.request("OPTIONS", f"{gw.url}/api/v1/devices/ent-any-01", headers=gw.admin_headers)
    assert (r.status_code, r.headers["allow"]) == (405, "GET, PATCH")


def test_huge_bodies_are_refused_without_growing_the_process(gw: GatewayProcess) -> None:
    assert gw.proc is not None
    spec = httpx.get(f"{gw.url}/openapi.json").json()
    routes = [(m.upper(), p.replace("{device_id}", "ent-none-01").replace("{outbox_id}", "1"))
              for p, ops in spec["paths"].items() for m in ops if m in ("post", "patch")]
    assert len(routes) >= 5, routes
    httpx.post(f"{gw.url}/api/v1/devices", json={"id": "x"}, headers=gw.admin_headers)  # warm up
    before = peak_rss_mb(gw.proc.pid)
    answers = {}
    for method, path in routes:
        creds = {"Authorization": f"Bearer {gw.callback_token}"} if path == CC_STATE_PATH else gw.admin_headers
        for who, headers in (("anonymous", {}), ("admin", creds)):
            h = {**headers, "Content-Type": "application/json"}
            answers[(path, who, "10 MB")] = raw_post(gw.port, path, {**h, "Content-Length": str(10 * MB)},
                                                     repeat(b"{" * 65536, 10 * MB), method=method)
            answers[(path, who, "100 MB")] = raw_post(gw.port, path, h, repeat(b" " * 65536, 100 * MB),
                                                      chunked=True, method=method)
            answers[(path, who, "deep")] = httpx.request(method, f"{gw.url}{path}", headers=h,
                                                         content=b"[" * 30_000 + b"]" * 30_000).status_code
    bad = {k: v for k, v in answers.items() if not 400 <= v < 500}
    assert not bad, bad
    for (path, who, kind), status in answers.items():
        if who == "anonymous":
            assert status in ((401, 404, 413) if path == INBOUND_PATH else (401, 413)), (path, kind, status)
    assert answers[("/api/v1/devices", "admin", "100 MB")] == 413
    assert answers[("/api/v1/devices", "admin", "deep")] == 422
    grown = peak_rss_mb(gw.proc.pid) - before
    print(f"gateway peak RSS grew by {grown:.1f} MiB over {len(answers)} hostile requests")
    assert grown < 50


def test_wrong_tokens_are_throttled_per_address(gw: GatewayProcess) -> None:
    url = f"{gw.url}/api/v1/devices"
    attacker = {"X-Forwarded-For": "203.0.113.9"}
    codes = [httpx.get(url, headers={**attacker, "Authorization": f"Bearer guess-{i:03d}-{'x' * 20}"}).status_code
             for i in range(30)]
    assert codes[:10] == [401] * 10 and set(codes[10:]) == {429}, codes
    r = httpx.get(url, headers={**attacker, **gw.admin_headers})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    # The administrator elsewhere is not affected; no server header on any answer.
    r = httpx.get(url, headers={"X-Forwarded-For": "198.51.100.3", **gw.admin_headers})
    assert r.status_code == 200
    assert "server" not in r.headers
    metrics = httpx.get(f"{gw.url}/metrics", headers=gw.admin_headers).text
    assert 'siaga_gateway_http_auth_failures_total{kind="person_token"} 10' in metrics
    assert "siaga_gateway_http_throttled_total 21\n" in metrics, [m for m in metrics.splitlines() if "http_" in m]


def test_slow_requests_are_closed_within_the_deadline(gw: GatewayProcess) -> None:
    socks = []
    opened = time.monotonic()
    for i in range(50):
        s = socket.create_connection(("127.0.0.1", gw.port))
        s.sendall(b"G" if i % 2 else b"POST /api/v1/devices HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
        socks.append(s)
    closed: list[float] = []
    for s in socks:
        s.settimeout(DEADLINE_S + 3 - (time.monotonic() - opened))
        try:
            data = s.recv(4096)
        except (TimeoutError, OSError):
            data = b"still open"
        # The body deadline answers nothing (or a 4xx); either way the connection ends.
        if data == b"" or data.startswith(b"HTTP/1.1 4"):
            closed.append(time.monotonic() - opened)
        s.close()
    assert len(closed) == 50, f"{50 - len(closed)} of 50 slow connections still open"
    assert max(closed) < DEADLINE_S + 2

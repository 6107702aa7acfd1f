"""Several destinations (issue 15): what forwarding to more than one costs, and whether a dead one
slows the others.

    .venv/bin/python bench/destinations.py [--alarms 10000] [--devices 50] [--rate 200] [--seconds 10]
                                           [--timeout 2]

The setting is bench/gateway_throughput.py's, and so are its helpers: one real Mosquitto started
from broker/ config, signed alarms from paho publishers, a real `siaga gateway run` process
(SQLite with synchronous=FULL) and bench/sink.py as Siaga's reference command center
(`[commandcenter]`, the destination named command-center). The three more destinations are
`type = "webhook"` ones (cad-a, cad-b, cad-c), each with its own Standard Webhooks secret and
`timeout_s = --timeout`, posting to webhook receivers run by this file in a process of their own
(asyncio, one port each, like bench/sink.py): each answers 204 and records when each webhook-id
arrived. Every gateway below has a database and an MQTT session of its own; a new sink and new
receivers are started for each.

1. drain: a burst of --alarms from --devices buttons is queued in the broker while the gateway is
   away, then drained, once with the reference command center only and once with it and the three
   webhooks. For each destination: the time from the drain's first arrival (at any destination)
   until it had every alarm, and the rate that makes; how long the gateway took to take the burst
   from the broker (the alarms' received_at); the gateway's peak RSS and CPU time.
2. a dead destination: alarms paced at --rate for --seconds to the reference command center alone,
   to the four destinations alive, then with cad-c pointing to a port where nothing listens
   (connection refused), then to a server that accepts the connection and never answers (a stalled
   uplink: each attempt ends after --timeout).
   For each live destination, the time from handing an alarm to the broker to its arrival (both
   processes read the same CLOCK_MONOTONIC); and, from GET /health at the end, how many events
   cad-c's own queue holds.

It prints the machine, the command and the figures. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from paho.mqtt import __version__ as mqtt_version

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gateway_throughput import (  # noqa: E402
    GatewayProc,
    Publishers,
    drop_session,
    pct,
    sink_dump,
    vm_hwm_mb,
)

from siaga.broker.process import MosquittoProcess  # noqa: E402
from siaga.net import free_port  # noqa: E402
from tests.support.net import StalledServer, wait_port  # noqa: E402

REFERENCE = "command-center"          # the destination [commandcenter] makes
WEBHOOKS = ("cad-a", "cad-b", "cad-c")
DEAD = "cad-c"                        # the one that dies in part 2
POLL_S = 0.5                          # how often arrivals are counted (arrival times are recorded, not polled)


# ------------------------------------------------------------------ webhook receivers (a child process)

async def _receivers(ports: list[int]) -> None:
    """Serve a Standard Webhooks receiver on each port: 204 to every POST, its webhook-id's first
    arrival recorded (time.monotonic()); GET /count?prefix=P and GET /dump?prefix=P read them."""
    got: dict[int, dict[str, float]] = {port: {} for port in ports}

    def reply(status: str, body: bytes = b"") -> bytes:
        if not body:
            return f"HTTP/1.1 {status}\r\n\r\n".encode()
        return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                .encode() + body)

    def serve_on(port: int) -> Any:
        seen = got[port]

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    method, target, _ = lines[0].split(" ", 2)
                    length, hook_id = 0, ""
                    for line in lines[1:]:
                        name, _, value = line.partition(":")
                        name = name.strip().lower()
                        if name == "content-length":
                            length = int(value)
                        elif name == "webhook-id":
                            hook_id = value.strip()
                    if length:
                        await reader.readexactly(length)
                    now = time.monotonic()
                    url = urlsplit(target)
                    if method == "POST" and hook_id:
                        seen.setdefault(hook_id, now)
                        writer.write(reply("204 No Content"))
                    elif method == "GET" and url.path in ("/count", "/dump"):
                        prefix = parse_qs(url.query).get("prefix", [""])[0]
                        mine = {k: t for k, t in seen.items() if k.startswith(prefix)}
                        answer = len(mine) if url.path == "/count" else mine
                        writer.write(reply("200 OK", json.dumps(answer).encode()))
                    else:
                        writer.write(reply("404 Not Found", b"{}"))
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()
        return serve

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    servers = [await asyncio.start_server(serve_on(port), "127.0.0.1", port) for port in ports]
    await stop.wait()
    for server in servers:
        server.close()


# ------------------------------------------------------------------ the destinations of one gateway

@dataclass
class Live:
    """A destination that answers: where its arrivals are read."""

    name: str
    port: int

    def arrivals(self, prefix: str) -> dict[str, float]:
        if self.name == REFERENCE:
            return {e: t for e, t in sink_dump(self.port).items() if e.startswith(prefix)}
        return httpx.get(f"http://127.0.0.1:{self.port}/dump", params={"prefix": prefix}, timeout=30).json()

    def count(self, prefix: str) -> int:
        if self.name == REFERENCE:
            return len(self.arrivals(prefix))
        return int(httpx.get(f"http://127.0.0.1:{self.port}/count", params={"prefix": prefix}, timeout=30).json())


@contextlib.contextmanager
def destinations(webhooks: int, dead: str | None) -> Iterator[tuple[list[Live], dict[str, str]]]:
    """A new sink and `webhooks` webhook receivers; `dead` ("refused", "stalled" or None) makes the
    last webhook destination a port nothing listens on, or a server that never answers. Yields the
    live destinations and every webhook destination's URL by name."""
    sink_port = free_port()
    children = [subprocess.Popen([sys.executable, str(REPO / "bench" / "sink.py"), str(sink_port)])]
    live = [Live(REFERENCE, sink_port)]
    urls: dict[str, str] = {}
    stalled: StalledServer | None = None
    names = list(WEBHOOKS[:webhooks])
    if dead is not None:
        dead_name = names.pop()
        if dead == "stalled":
            stalled = StalledServer().__enter__()
            urls[dead_name] = f"http://127.0.0.1:{stalled.port}/hooks/siaga"
        else:
            urls[dead_name] = f"http://127.0.0.1:{free_port()}/hooks/siaga"   # nothing listens there
    ports = [free_port() for _ in names]
    if ports:
        children.append(subprocess.Popen([sys.executable, __file__, "--receivers", *map(str, ports)]))
    for name, port in zip(names, ports, strict=True):
        live.append(Live(name, port))
        urls[name] = f"http://127.0.0.1:{port}/hooks/siaga"
    try:
        for d in live:
            wait_port(d.port)
        yield live, dict(sorted(urls.items()))
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
            child.wait(10)
        if stalled is not None:
            stalled.close()


class Gateway(GatewayProc):
    """bench/gateway_throughput.py's gateway process with [[destinations]] added: one webhook
    destination per URL, each with a secret of its own."""

    def __init__(self, workdir: Path, broker: MosquittoProcess, sink_port: int, gateway_id: str,
                 webhooks: dict[str, str], timeout_s: float) -> None:
        super().__init__(workdir, broker, sink_port, "own", gateway_id)
        tables = []
        for name, url in webhooks.items():
            secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
            (workdir / "secrets" / f"{name}.whsec").write_text(secret)
            tables.append(f'\n[[destinations]]\nname = "{name}"\ntype = "webhook"\nurl = "{url}"\n'
                          f'secret_files = ["secrets/{name}.whsec"]\ntimeout_s = {timeout_s}\n')
        with self.config.open("a") as f:
            f.write("".join(tables))
        self.prefix = f"{gateway_id}:"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def health(self) -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=10).json()


def cpu_s(pid: int) -> float:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def intake_span_s(sink_port: int, prefix: str) -> float:
    """From the first to the last of this gateway's alarms taken from the broker: their
    `received_at` (the gateway's wall clock, 1 ms), as bench/sink.py recorded them."""
    share = httpx.get(f"http://127.0.0.1:{sink_port}/dump-gateway-share", timeout=30).json()
    stamps = [datetime.fromisoformat(received_at).timestamp()
              for e, (_, received_at) in share.items() if e.startswith(prefix)]
    return max(stamps) - min(stamps)


def wait_arrivals(live: list[Live], prefix: str, n: int, timeout_s: float) -> dict[str, dict[str, float]]:
    """Wait until every live destination has `n` events of this gateway; then what each received."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(d.count(prefix) < n for d in live):
        time.sleep(POLL_S)
    return {d.name: d.arrivals(prefix) for d in live}


# ------------------------------------------------------------------ the parts

@dataclass
class DrainResult:
    label: str
    rows: list[tuple[str, int, float, float]]   # destination, alarms, seconds until all, alarms/s
    start_to_first_s: float
    intake_s: float                               # first to last alarm taken from the broker
    hwm_mb: float
    cpu_s: float


def drain(workdir: Path, broker: MosquittoProcess, pubs: Publishers, creds: list[tuple[str, str, str]],
          webhooks: int, args: argparse.Namespace) -> DrainResult:
    n = args.alarms
    label = f"{1 + webhooks} destination{'s' if webhooks else ''}"
    with destinations(webhooks, None) as (live, urls):
        gw = Gateway(workdir / f"drain-{1 + webhooks}", broker, live[0].port, f"bench-drain-{1 + webhooks}",
                     urls, args.timeout)
        gw.start()                       # its persistent session and its buttons
        gw.register(creds)
        gw.stop()                        # the session now queues for it
        pubs.burst(n)
        launched = time.monotonic()
        gw.start()
        got = wait_arrivals(live, gw.prefix, n, 300)
        hwm, cpu = vm_hwm_mb(gw.pid), cpu_s(gw.pid)
        intake_s = intake_span_s(live[0].port, gw.prefix)
        gw.stop()
        drop_session(broker.port, broker.gateway_user, broker.gateway_password, gw.client_id)
    first = min(min(times.values()) for times in got.values() if times)
    rows = []
    for name, times in got.items():
        until = max(times.values()) - first
        rows.append((name, len(times), until, len(times) / until))
    return DrainResult(label, rows, first - launched, intake_s, hwm, cpu)


@dataclass
class PacedResult:
    label: str
    sent: int
    rows: list[tuple[str, list[float]]]          # live destination, latencies in ms
    dead: dict[str, Any] | None                  # /health's entry of the dead destination


def paced(workdir: Path, broker: MosquittoProcess, pubs: Publishers, creds: list[tuple[str, str, str]],
          webhooks: int, dead: str | None, args: argparse.Namespace) -> PacedResult:
    label = f"{DEAD} {dead}" if dead else "all four alive" if webhooks else "command center only"
    with destinations(webhooks, dead) as (live, urls):
        gw_id = f"bench-paced-{webhooks}-{dead or 'alive'}"
        gw = Gateway(workdir / gw_id, broker, live[0].port, gw_id, urls, args.timeout)
        gw.start()
        gw.register(creds)
        time.sleep(1.0)                  # settled before the first alarm
        sent = {f"{gw_id}:{e}": t for e, t in pubs.paced(args.rate, args.seconds).items()}
        got = wait_arrivals(live, gw.prefix, len(sent), 60)
        health = gw.health()
        gw.stop()
        drop_session(broker.port, broker.gateway_user, broker.gateway_password, gw.client_id)
    rows = [(name, [(times[e] - t) * 1000 for e, t in sent.items() if e in times]) for name, times in got.items()]
    return PacedResult(label, len(sent), rows, health["destinations"][DEAD] if dead else None)


# ------------------------------------------------------------------ main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alarms", type=int, default=10000, help="alarms in the queued burst")
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--rate", type=float, default=200.0, help="paced alarms per second")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long the paced alarms go on")
    ap.add_argument("--timeout", type=float, default=2.0, help="timeout_s of the webhook destinations")
    ap.add_argument("--receivers", nargs="+", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.receivers:
        asyncio.run(_receivers(args.receivers))
        return

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="siaga-bench-"))
    creds = [(f"bench-{i:03d}", secrets.token_hex(32), secrets.token_urlsafe(12)) for i in range(args.devices)]
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
          f"{platform.python_version()}, {platform.platform()}, paho-mqtt {mqtt_version}", flush=True)
    broker = MosquittoProcess(workdir / "broker", devices={c[0]: c[2] for c in creds}).start()
    try:
        pubs = Publishers(broker.port, creds)
        drains = [drain(workdir, broker, pubs, creds, webhooks, args) for webhooks in (0, len(WEBHOOKS))]
        runs = [paced(workdir, broker, pubs, creds, webhooks, dead, args)
                for webhooks, dead in ((0, None), (len(WEBHOOKS), None), (len(WEBHOOKS), "refused"),
                                       (len(WEBHOOKS), "stalled"))]
        pubs.close()
    finally:
        broker.close()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n1. drain of {args.alarms:,} alarms from {args.devices} buttons queued while the gateway was away "
          "(time from the drain's first arrival anywhere):")
    print(f"   {'gateway with':<16}{'destination':<17}{'alarms':>7}{'all in':>10}{'alarms/s':>10}")
    for d in drains:
        for name, count, until, rate in d.rows:
            print(f"   {d.label:<16}{name:<17}{count:>7}{until:>9.2f}s{rate:>10,.0f}")
    for d in drains:
        print(f"   {d.label}: the gateway took the burst from the broker in {d.intake_s:.2f} s; peak RSS "
              f"{d.hwm_mb:.0f} MB, CPU {d.cpu_s:.1f} s (start-up included); first arrival "
              f"{d.start_to_first_s:.2f} s after launch")

    print(f"\n2. alarms paced at {args.rate:,.0f}/s for {args.seconds:g} s, publish -> arrival at each live "
          f"destination; webhook timeout_s = {args.timeout:g}:")
    print(f"   {'scenario':<21}{'destination':<17}{'arrived':>8}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'mean':>9}")
    for r in runs:
        for name, lat in r.rows:
            if not lat:
                print(f"   {r.label:<21}{name:<17}{0:>8}")
                continue
            print(f"   {r.label:<21}{name:<17}{len(lat):>8}" + "".join(
                f"{v:>7.1f}ms" for v in (pct(lat, 50), pct(lat, 95), pct(lat, 99), max(lat), statistics.fmean(lat))))
    for r in runs:
        if r.dead is not None:
            held = "every alarm" if r.dead["outbox"] == r.sent else f"{r.dead['outbox']} events for {r.sent} alarms"
            print(f"   {r.label}: at the end GET /health shows {DEAD}'s queue holding {held} "
                  f"(outbox {r.dead['outbox']}), circuit {r.dead['circuit']}, last error: {r.dead['last_error']}")
    print(f"\nwhole run: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()

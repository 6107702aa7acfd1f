"""Alarm latency while a district goes dark: the time from a healthy button publishing an alarm to
the command center receiving it, quiet and during an offline wave of N buttons (each sends a
heartbeat with low battery and an open lid, then its last will: three fault reports).

    .venv/bin/python bench/offline_wave.py [--waves 1000 10000] [--rate 20] [--seconds 10]

Real Mosquitto (broker/ config), the real gateway process with SQLite, and bench/sink.py as the
command center (it records when each event arrived, so the gateway is measured rather than the
reference command center's storage). The wave is published as fast as 8 threads can log in as
the buttons and publish (a power cut drops them within seconds; the broker publishes their wills).
Alarms are paced at --rate per second from 10 healthy buttons, starting with the wave, for
--seconds. Prints the figures and the command; sets no target (docs/performance.md compares them
with issue 12's: p99 during a wave within 2x the quiet p99).
"""

from __future__ import annotations

import argparse
import platform
import secrets
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from siaga.broker.process import MosquittoProcess  # noqa: E402
from tests.support.devices import SimButton, go_dark, register_fleet  # noqa: E402
from tests.support.gateway import GatewayProcess  # noqa: E402
from tests.support.net import free_port, wait_port  # noqa: E402
from tests.support.system import DeviceCredentials  # noqa: E402

HEALTHY = 10


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def go_dark_all(port: int, fleet: list[DeviceCredentials]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda c: go_dark(port, c), fleet))


def paced_alarms(buttons: list[SimButton], rate: float, seconds: float) -> dict[str, float]:
    sent: dict[str, float] = {}
    start = time.monotonic()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        button = buttons[i % len(buttons)]
        seq, frame = button.alarm_frame("medical")
        sent[f"bench-wave:{button.device_id}:{seq}"] = time.monotonic()
        button.publish("alarm", frame)
    return sent


def latencies(sink: int, sent: dict[str, float], timeout_s: float) -> list[float]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = httpx.get(f"http://127.0.0.1:{sink}/dump", timeout=30).json()
        if all(e in got for e in sent) or time.monotonic() > deadline:
            return [(got[e] - t) * 1000 for e, t in sent.items() if e in got]
        time.sleep(0.5)


def gateway_shares(sink: int, sent: dict[str, float]) -> list[float]:
    """For each alarm, ms from the gateway taking it from the broker (its body's received_at) to
    the command center receiving it: the gateway's own part of the latency."""
    got = httpx.get(f"http://127.0.0.1:{sink}/dump-gateway-share", timeout=30).json()
    out = []
    for event_id in sent:
        if event_id in got:
            arrived, received_at = got[event_id]
            gateway_ms = datetime.fromisoformat(received_at.replace("Z", "+00:00")).timestamp()
            out.append((arrived - gateway_ms) * 1000)
    return out


def faults_at(sink: int, wave: str) -> int:
    got = httpx.get(f"http://127.0.0.1:{sink}/dump", timeout=30).json()
    return sum(1 for e in got if f":{wave}-" in e and ":fault:" in e)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waves", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rate", type=float, default=20.0, help="alarms per second from healthy buttons")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--gateway-python", default=sys.executable,
                        help="the interpreter of another Siaga install, to measure another version's gateway")
    args = parser.parse_args()
    print(f"$ {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"host: {platform.machine()}, {subprocess.getoutput('nproc')} cores, Python {platform.python_version()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="siaga-bench-wave-") as tmp_name:
        tmp = Path(tmp_name)
        sink_port = free_port()
        sink = subprocess.Popen([sys.executable, str(REPO / "bench" / "sink.py"), str(sink_port)])
        try:
            wait_port(sink_port)
            with MosquittoProcess(tmp / "broker") as broker:
                gateway = GatewayProcess(tmp, mqtt_port=broker.port, mqtt_password=broker.gateway_password,
                                         cc_url=f"http://127.0.0.1:{sink_port}", cc_token="bench-token",
                                         gateway_id="bench-wave", python=args.gateway_python,
                                         gateway_settings="flood_rate_per_s = 1000.0\nflood_burst = 1000")
                gateway.start()
                try:
                    healthy = [DeviceCredentials(f"healthy-{i:02d}", secrets.token_hex(32), secrets.token_urlsafe(12))
                               for i in range(HEALTHY)]
                    register_fleet(gateway, broker, healthy)
                    buttons = [SimButton(c, broker.port).connect() for c in healthy]
                    sent = paced_alarms(buttons, args.rate, args.seconds)
                    quiet = latencies(sink_port, sent, 60)
                    rows.append(("quiet", 0, quiet, gateway_shares(sink_port, sent), 0))
                    for n in args.waves:
                        wave = f"w{n}"
                        fleet = [DeviceCredentials(f"{wave}-{i:05d}", secrets.token_hex(32),
                                                   secrets.token_urlsafe(12)) for i in range(n)]
                        t0 = time.monotonic()
                        register_fleet(gateway, broker, fleet)
                        print(f"  ({n} buttons registered in {time.monotonic() - t0:.1f} s)", flush=True)
                        dark = threading.Thread(target=go_dark_all, args=(broker.port, fleet))
                        started = time.monotonic()
                        dark.start()
                        sent = paced_alarms(buttons, args.rate, args.seconds)
                        dark.join()
                        published_s = time.monotonic() - started
                        during = latencies(sink_port, sent, 120)
                        deadline = time.monotonic() + 300
                        while faults_at(sink_port, wave) < 3 * n and time.monotonic() < deadline:
                            time.sleep(0.5)
                        drained_s = time.monotonic() - started
                        rows.append((f"wave of {n:,}", n, during, gateway_shares(sink_port, sent),
                                     faults_at(sink_port, wave)))
                        print(f"  (wave of {n}: published in {published_s:.1f} s, {faults_at(sink_port, wave)} "
                              f"fault reports delivered {drained_s:.1f} s after its start)", flush=True)
                    for button in buttons:
                        button.close()
                finally:
                    gateway.stop()
        finally:
            sink.terminate()
            sink.wait(10)
    print(f"\nalarm latency, publish -> command center, {args.rate:g} alarms/s from {HEALTHY} healthy buttons "
          f"for {args.seconds:g} s:")
    print(f"  {'':16}{'alarms':>8}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}   fault reports delivered")
    quiet_p99 = pct(rows[0][2], 99)
    for name, n, lat, _share, faults in rows:
        print(f"  {name:16}{len(lat):>8}{pct(lat, 50):>8.1f}ms{pct(lat, 95):>8.1f}ms{pct(lat, 99):>8.1f}ms"
              f"{max(lat):>8.1f}ms   {f'{faults} of {3 * n}' if n else '-'}")
    print("of which the gateway's own part (taken from the broker -> at the command center; wall clocks, 1 ms):")
    for name, _n, _lat, share, _faults in rows:
        print(f"  {name:16}{len(share):>8}{pct(share, 50):>8.1f}ms{pct(share, 95):>8.1f}ms{pct(share, 99):>8.1f}ms"
              f"{max(share):>8.1f}ms")
    for name, _n, lat, _, _ in rows[1:]:
        print(f"  {name}: p99 = {pct(lat, 99) / quiet_p99:.1f} x the quiet p99")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Gateway throughput, latency and memory, against a bare paho subscriber on the same broker.

    .venv/bin/python bench/gateway_throughput.py [--alarms 20000] [--devices 50] [--rate 1000] [--seconds 10]
                                                 [--links own,paho,paho,own]

Phases, all on one real Mosquitto started from broker/ config. The ceiling is a bare paho
subscriber (QoS 1, persistent session, counts only, in its own process); the gateway is
`siaga gateway run` (its own process, SQLite with synchronous=FULL, manual acks after group
commit) forwarding to bench/sink.py over HTTP. Each burst is --alarms signed alarms from --devices
buttons, measured from the first to the last arrival:
1. drain: the burst is queued in the broker while the consumer is away, then drained — the
   consumer's own speed, with no publisher competing for the CPU;
2. live: the consumer is connected and the burst is published while it runs (publishers, broker
   and consumer share the two cores);
3. latency: alarms published live at a paced --rate for --seconds; the time from handing each one
   to the broker to its arrival at the sink (both processes read the same CLOCK_MONOTONIC).
--links runs the gateway phases once per name, one gateway after another on the same broker and
publishers: `own` is the gateway as shipped (gateway/mqtt.py), `paho` the same gateway with
paho-mqtt driven on its event loop instead (bench/paho_loop_link.py). Each gateway has its own
database and MQTT session, and a consumer's session is ended when it is done, so that no later
burst is queued for it. It prints the figures and the command that produced them. Nothing here is
asserted.
"""

from __future__ import annotations

import argparse
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
import threading
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt import __version__ as mqtt_version
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from siaga.broker.process import MosquittoProcess  # noqa: E402
from siaga.net import free_port  # noqa: E402
from siagafw import proto  # noqa: E402

LOC = proto.location(-6175392, 106827153, "Jl. Medan Merdeka Barat 12", "31.71.01.1001")


# ------------------------------------------------------------------ the bare subscriber (a child process)

def bare_subscriber(port: int, password: str, count: int) -> None:
    """Connect with a persistent session, subscribe, count `count` alarms; print first/last times."""
    times: list[float] = []
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        times.append(time.monotonic())
        if len(times) >= count:
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", clean_session=False,
                         protocol=mqtt.MQTTv311)
    client.username_pw_set("siaga-gateway", password)
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.subscribe("siaga/v1/dev/+/alarm", qos=1)
    client.loop_start()
    subscribed.wait(10)
    if count:
        done.wait(600)
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"n": len(times), "first": times[0] if times else None, "last": times[-1] if times else None}))


# ------------------------------------------------------------------ publishing

class Publishers:
    def __init__(self, port: int, creds: list[tuple[str, str, str]]) -> None:
        self.clients: dict[str, tuple[mqtt.Client, proto.Signer]] = {}
        self.seq = dict.fromkeys((c[0] for c in creds), 0)
        for device_id, secret_hex, password in creds:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv311)
            c.username_pw_set(device_id, password)
            c.max_inflight_messages_set(1000)
            c.max_queued_messages_set(0)
            c.connect("127.0.0.1", port)
            c.loop_start()
            self.clients[device_id] = (c, proto.Signer(bytes.fromhex(secret_hex)))

    def frame(self, device_id: str) -> tuple[str, bytes]:
        self.seq[device_id] += 1
        seq = self.seq[device_id]
        _, signer = self.clients[device_id]
        body = proto.alarm_body(device_id, seq, "general", LOC, False, seq, int(time.time()))
        return f"{device_id}:{seq}", signer.seal(proto.encode(body))

    def publish(self, device_id: str, frame: bytes) -> mqtt.MQTTMessageInfo:
        client, _ = self.clients[device_id]
        return client.publish(proto.topic(device_id, "alarm"), frame, qos=1)

    def burst(self, n: int) -> None:
        devices = list(self.clients)
        infos = [self.publish(devices[i % len(devices)], self.frame(devices[i % len(devices)])[1]) for i in range(n)]
        for info in infos:
            info.wait_for_publish(60)

    def paced(self, rate: float, seconds: float) -> dict[str, float]:
        devices = list(self.clients)
        sent: dict[str, float] = {}
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            device = devices[i % len(devices)]
            event_id, frame = self.frame(device)
            sent[event_id] = time.monotonic()
            self.publish(device, frame)
        return sent

    def close(self) -> None:
        for client, _ in self.clients.values():
            client.disconnect()
            client.loop_stop()


# ------------------------------------------------------------------ helpers

def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def sink_dump(port: int) -> dict[str, float]:
    return httpx.get(f"http://127.0.0.1:{port}/dump", timeout=30).json()


def wait_sink(port: int, n: int, timeout_s: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = sink_dump(port)
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.25)


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


GATEWAY_COMMANDS = {
    "own": ["-m", "siaga.cli", "gateway", "run"],
    "paho": [str(REPO / "bench" / "paho_loop_link.py")],
}


class GatewayProc:
    def __init__(self, workdir: Path, broker: MosquittoProcess, sink_port: int, link: str, gateway_id: str) -> None:
        self.workdir = workdir
        self.link = link
        self.gateway_id = gateway_id
        self.client_id = f"siaga-gateway-{gateway_id}"
        self.port = free_port()
        self.admin = secrets.token_urlsafe(16)
        secrets_dir = workdir / "secrets"
        secrets_dir.mkdir(parents=True)
        for name, value in {"mqtt": broker.gateway_password, "admin": self.admin, "cc-callback": "unused-token",
                            "cc": "bench-token"}.items():
            (secrets_dir / name).write_text(value)
        self.config = workdir / "gateway.toml"
        # The benchmark's fifty buttons each publish far faster than a real button, so the per-device
        # flood limit is lifted; everything else is the production default.
        self.config.write_text(f"""
[gateway]
id = "{gateway_id}"
db = "gateway.sqlite3"
flood_rate_per_s = 1000000.0
flood_burst = 1000000
[mqtt]
port = {broker.port}
password_file = "secrets/mqtt"
[api]
port = {self.port}
admin_token_file = "secrets/admin"
cc_token_file = "secrets/cc-callback"
[commandcenter]
url = "http://127.0.0.1:{sink_port}"
token_file = "secrets/cc"
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.workdir / "gateway.log").open("ab")
        cmd = [sys.executable, *GATEWAY_COMMANDS[self.link], "--config", str(self.config)]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).json().get("mqtt"):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("gateway did not become healthy: " + (self.workdir / "gateway.log").read_text()[-2000:])

    def register(self, creds: list[tuple[str, str, str]]) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}",
                          headers={"Authorization": f"Bearer {self.admin}"}) as client:
            for device_id, secret_hex, _ in creds:
                client.post("/api/v1/devices", json={"id": device_id, "secret_hex": secret_hex}).raise_for_status()

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


# ------------------------------------------------------------------ main

def drop_session(port: int, username: str, password: str, client_id: str) -> None:
    """End a persistent session, so that the broker stops queueing later bursts for a consumer gone."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311)
    client.username_pw_set(username, password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.disconnect()
    client.loop_stop()


def gateway_phases(gateway: GatewayProc, pubs: Publishers, creds: list[tuple[str, str, str]], sink_port: int,
                   bare_live: float, bare_drain: float, args: argparse.Namespace) -> None:
    """Live burst, drain of a queued burst, then latency at a paced rate, for one gateway."""
    n, name = args.alarms, f"gateway ({gateway.link} link)"
    before = set(sink_dump(sink_port))

    # live: connected while the burst is published
    gateway.start()
    gateway.register(creds)
    pubs.burst(n)
    got = wait_sink(sink_port, len(before) + n, 600)
    times = sorted(t for e, t in got.items() if e not in before)
    gw_live = (len(times) - 1) / (times[-1] - times[0])
    print(f"{name} live: {len(times)} alarms stored and forwarded, {gw_live:,.0f} alarms/s "
          f"= {gw_live / bare_live:.2f} x the bare subscriber live")
    before = set(got)

    # drain: a burst queued while it was away, stored durably and forwarded to the sink
    gateway.stop()                       # its persistent session now queues for it
    pubs.burst(n)
    gateway.start()
    assert gateway.proc is not None
    profiler = None
    if os.environ.get("SIAGA_BENCH_PROFILE"):  # a file for py-spy's collapsed stacks of the drain
        profiler = subprocess.Popen(["py-spy", "record", "--format", "raw", "--rate", "250", "--duration", "6",
                                     "--threads", "--pid", str(gateway.proc.pid), "-o",
                                     f"{os.environ['SIAGA_BENCH_PROFILE']}.{gateway.link}"],
                                    stdout=subprocess.DEVNULL)
    got = wait_sink(sink_port, len(before) + n, 600)
    if profiler is not None:
        profiler.wait(60)
    hwm = vm_hwm_mb(gateway.proc.pid)
    times = sorted(t for e, t in got.items() if e not in before)
    gw_drain = (len(times) - 1) / (times[-1] - times[0])
    print(f"{name} drain: {len(times)} alarms stored and forwarded, {gw_drain:,.0f} alarms/s "
          f"= {gw_drain / bare_drain:.2f} x the bare subscriber draining; peak RSS {hwm:.0f} MB")
    before = set(got)

    # latency at a paced rate
    sent = {f"{gateway.gateway_id}:{e}": t for e, t in pubs.paced(args.rate, args.seconds).items()}
    got = wait_sink(sink_port, len(before) + len(sent), 120)
    lat_ms = [(got[e] - t) * 1000 for e, t in sent.items() if e in got]
    missing = len(sent) - len(lat_ms)
    print(f"{name} latency at {args.rate:,.0f} alarms/s for {args.seconds:g} s ({len(lat_ms)} alarms, "
          f"{missing} missing): p50 {pct(lat_ms, 50):.1f} ms, p95 {pct(lat_ms, 95):.1f} ms, "
          f"p99 {pct(lat_ms, 99):.1f} ms, max {max(lat_ms):.1f} ms, mean {statistics.fmean(lat_ms):.1f} ms")
    print(f"{name} peak RSS over the whole run: {vm_hwm_mb(gateway.proc.pid):.0f} MB")
    gateway.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alarms", type=int, default=20000)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--links", default="own",
                    help="gateways to measure in turn, comma-separated: own (gateway/mqtt.py), "
                         "paho (bench/paho_loop_link.py); a name may repeat")
    ap.add_argument("--bare-subscriber", nargs=3, metavar=("PORT", "PASSWORD", "COUNT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_subscriber:
        port, password, count = args.bare_subscriber
        bare_subscriber(int(port), password, int(count))
        return
    links = args.links.split(",")
    if not set(links) <= set(GATEWAY_COMMANDS):
        ap.error(f"--links: choose from {', '.join(GATEWAY_COMMANDS)}")

    workdir = Path(tempfile.mkdtemp(prefix="siaga-bench-"))
    creds = [(f"bench-{i:03d}", secrets.token_hex(32), secrets.token_urlsafe(12)) for i in range(args.devices)]
    n = args.alarms
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
          f"{platform.python_version()}, {platform.platform()}, paho-mqtt {mqtt_version}")
    broker = MosquittoProcess(workdir / "broker", devices={c[0]: c[2] for c in creds}).start()
    sink_port = free_port()
    sink = subprocess.Popen([sys.executable, str(REPO / "bench" / "sink.py"), str(sink_port)])
    gateways: list[GatewayProc] = []
    try:
        pubs = Publishers(broker.port, creds)

        # the ceiling: a bare subscriber, draining and live
        bare_cmd = [sys.executable, __file__, "--bare-subscriber", str(broker.port), broker.gateway_password]
        subprocess.run([*bare_cmd, "0"], check=True, capture_output=True)  # creates its session
        pubs.burst(n)
        bare = json.loads(subprocess.run([*bare_cmd, str(n)], check=True, capture_output=True, text=True).stdout)
        bare_drain = (bare["n"] - 1) / (bare["last"] - bare["first"])
        live = subprocess.Popen([*bare_cmd, str(n)], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)                      # connected and subscribed
        pubs.burst(n)
        out, _ = live.communicate(timeout=600)
        bare = json.loads(out)
        bare_live = (bare["n"] - 1) / (bare["last"] - bare["first"])
        print(f"bare paho subscriber: drain {bare_drain:,.0f} alarms/s, live {bare_live:,.0f} alarms/s")
        drop_session(broker.port, broker.gateway_user, broker.gateway_password, "bench-bare")

        for i, link in enumerate(links):
            gateway = GatewayProc(workdir / f"gateway-{i}", broker, sink_port, link, f"bench-{link}-{i}")
            gateways.append(gateway)
            gateway_phases(gateway, pubs, creds, sink_port, bare_live, bare_drain, args)
            drop_session(broker.port, broker.gateway_user, broker.gateway_password, gateway.client_id)
        pubs.close()
    finally:
        for gateway in gateways:
            if gateway.proc is not None and gateway.proc.poll() is None:
                gateway.stop()
        sink.send_signal(signal.SIGTERM)
        sink.wait(10)
        broker.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

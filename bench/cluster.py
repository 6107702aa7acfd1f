"""Gateway cluster benchmark: throughput, steady rate and failover of 1-3 gateway instances on
PostgreSQL (MQTT shared subscription, one elected forwarder), against one gateway on SQLite and a
bare paho subscriber on the same broker, all in one run.

    .venv/bin/python bench/cluster.py [--quick] [--parts throughput,steady,failover]
                                      [--devices 4000] [--each 5] [--instances 1,2,3] [--no-profile]
                                      [--gateway-python <another install's python>]

About 5 minutes on a 2-core machine with the defaults (longer when the machine is shared), 2 with
--quick (1,000 buttons, 5,000-alarm bursts, 8 s of steady rate, one kill of each kind, no profile).

Everything is real and runs in its own process: Mosquitto from broker/ config, PostgreSQL from the
Debian binaries (siaga/pgserver.py, durable: fsync on, synchronous_commit on), the gateway
instances (`siaga gateway run`, tests/support/gateway.py), bench/sink.py as the command center
(the same stand-in as bench/gateway_throughput.py, so that the gateway is measured and the figures
compare with docs/performance.md), and the buttons: --devices MQTT connections, each logged in as
its device and publishing frames signed with its own secret, spread over --publishers worker
processes that speak MQTT on raw asyncio sockets with pre-built packets (gateway/mqttwire.py).

1. throughput. A burst of --devices x --each alarms (default 4,000 x 5 = 20,000), interleaved
   (every button's first alarm, then every button's second...), published as fast as the workers
   can, in the two modes of bench/gateway_throughput.py:
     live:  the consumers are connected while the burst is published (publishers, broker and
            consumers share the cores);
     drain: the burst is queued in the broker while the consumers are away (for a shared
            subscription the broker queues each message for one member of the group), then they
            start and drain it: the consumers' own speed, no publisher competing for the CPU.
   Consumers: the bare paho subscriber of bench/gateway_throughput.py (QoS 1, persistent session,
   counts only); 1 gateway on SQLite; 1, 2, 3 instances on one PostgreSQL database (each
   instance's CPU counted from when it is healthy, so no interpreter start-up). "stored" is from
   the first to the last alarm committed (the store polled every 25 ms with index-only reads:
   max(id) of alarms, then one exact count), "forwarded" from the first stored to the last
   arrival at the sink. Each is given as a ratio to
   the bare subscriber in the same mode. CPU is read from /proc/<pid>/stat. With profiling on,
   the 1-instance SQLite and PostgreSQL drains run once more (1 alarm per button) under
   `py-spy record --gil` (not counted), and the samples are summarised by where they fall; for
   the 1-instance PostgreSQL live burst, PostgreSQL's own counters (transactions, index scans and
   rows written per table) are printed per alarm.
2. steady. --steady-rate alarms/s for --steady-seconds from --steady-devices buttons (paced,
   evenly over the workers) against 1 SQLite and 1 PostgreSQL gateway: the gateway's CPU per
   alarm against its burst figure, the latency from publishing to the gateway's signed "received"
   ack arriving at the button (same process, same clock), and to the sink, and the alarms per
   forwarding request (/metrics forwarded_total / forward_rounds_total). Then the PostgreSQL
   gateway again at --steady-pg-rate (default 300/s), a rate it keeps up with on this machine.
3. failover. 3 PostgreSQL instances and a stream of --failover-rate alarms/s. kill -9 of the
   instance that forwards (/health "forwarding": true), --kills times: time from the kill to the
   next alarm at the command center, to the next "received" ack at a button, to the leader's log
   line "took over the MQTT session of dead instance", and the longest ack wait of the alarms
   published around the kill; then the same for a non-forwarding instance. The killed instance
   is started again after each kill.
Not run by default, --parts late-start: 3 instances stopped with a burst queued for their
sessions, 2 started, the third a few seconds after one of them forwards (one machine booting
slower after a power cut): how long it waits while the forwarder takes over its session.

The fleet is registered once per engine through the store's own add_device into a template
(a SQLite file, a PostgreSQL template database); each case starts on a fresh copy, with its own
gateway id, and ends its MQTT sessions, so that no later burst is queued for it. Every button is
its own site (as bench/gateway_throughput.py's are, but 4,000 of them instead of 50): a burst
opens an incident per button and touches a different device row with every alarm.

Figures are printed with the command and the machine; each phase also prints the CPU seconds of
every process of ours and how much of the machine's busy time was not ours (the machine may be
shared). Nothing is asserted. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gateway import mqttwire as wire  # noqa: E402
from siagafw import proto  # noqa: E402

LOC = proto.location(-6175392, 106827153, "Jl. Medan Merdeka Barat 12", "31.71.01.1001")
POLL_S = 0.025              # how often the store's alarm count is read
KEEPALIVE_S = 120           # the buttons' MQTT keepalive; the workers ping every PING_EVERY_S
PING_EVERY_S = 50
TAKEOVER_LINE = "took over the MQTT session of dead instance"
STREAM_SIGNED_S = 240       # a stream's alarms are signed in advance for this long
IDLE_S = 5.0                # the steady part first measures the gateway idle for this long
START_TIMEOUT_S = 240       # an instance may wait this long for its name (another drains its session)

# The reference command center's counters in /metrics (each destination has its own).
ROUNDS_OK = 'forward_rounds_total{destination="command-center",result="ok"}'
FORWARDED = 'forwarded_total{destination="command-center",kind="alarm"}'


# ====================================================================== the buttons (worker process)

class Button(asyncio.Protocol):
    """One device's MQTT connection in a worker: CONNECT, QoS 1 publishes of signed alarms,
    optionally a subscription to its ack topic (each "received" ack is timed)."""

    def __init__(self, worker: Worker, device_id: str, secret_hex: str, password: str) -> None:
        self.w = worker
        self.dev = device_id
        self.password = password
        self.signer = proto.Signer(bytes.fromhex(secret_hex))
        self.topic = proto.topic(device_id, "alarm")
        self.ack_topic = proto.topic(device_id, "ack")
        self.seq = 0
        self.pid = 0
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[None] = loop.create_future()
        self.subacks: dict[int, asyncio.Future[None]] = {}

    def next_pid(self) -> int:
        self.pid = self.pid % 65535 + 1
        return self.pid

    def alarm_packet(self) -> tuple[int, bytes]:
        self.seq += 1
        body = proto.alarm_body(self.dev, self.seq, "general", LOC, False, self.seq, int(time.time()))
        return self.seq, wire.publish(self.topic, self.signer.seal(proto.encode(body)), 1, False, self.next_pid())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # uvloop's transports are not subclasses
        self.transport.write(wire.connect(self.dev, self.dev, self.password, KEEPALIVE_S, clean=True))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buf += data
        packets, used = wire.parse(self.buf)
        del self.buf[:used]
        for p in packets:
            if isinstance(p, wire.Publish):
                if p.qos and self.transport is not None:
                    self.transport.write(wire.puback(p.pid))
                self.w.on_ack(self, p.payload, now)
            elif p.kind == wire.PUBACK:
                self.w.on_puback()
            elif p.kind == wire.CONNACK:
                if not self.connack.done():
                    if p.body[1:2] == b"\x00":
                        self.connack.set_result(None)
                    else:
                        self.connack.set_exception(ConnectionRefusedError(f"{self.dev}: CONNACK {p.body!r}"))
            elif p.kind in (wire.SUBACK, wire.UNSUBACK):
                fut = self.subacks.pop(int.from_bytes(p.body[:2], "big"), None)
                if fut is not None and not fut.done():
                    fut.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.w.lost += 1
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(f"{self.dev}: connection lost"))

    def send(self, packet: bytes) -> None:
        if self.transport is not None:
            self.transport.write(packet)


class Worker:
    """A publisher process: its share of the buttons, driven by JSON commands on stdin."""

    def __init__(self, port: int, creds: list[list[str]]) -> None:
        self.port = port
        self.creds = creds
        self.buttons: list[Button] = []
        self.pubacked = 0
        self.target = 0
        self.all_acked = asyncio.Event()
        self.lost = 0
        self.prepared: list[list[tuple[Button, bytes]]] = []
        self.records: dict[tuple[str, int], list[float | None]] = {}
        self.pending_acks = 0
        self.acks_in = asyncio.Event()
        self.paced_task: asyncio.Task[None] | None = None
        self.paced_buttons: list[Button] = []
        self.paced_packets: list[tuple[Button, int, bytes]] = []
        self.paced_total: int | None = None
        self.stop_paced = False
        self.pinger: asyncio.Task[None] | None = None

    # -- callbacks from the buttons
    def on_puback(self) -> None:
        self.pubacked += 1
        if self.pubacked >= self.target:
            self.all_acked.set()

    def on_ack(self, button: Button, payload: bytes, now: float) -> None:
        body = proto.split_frame(payload)   # our own gateway's ack: its MAC is not what is measured
        if body is None:
            return
        ack = json.loads(body)
        if ack.get("state") != "received":
            return
        rec = self.records.get((button.dev, ack.get("seq")))
        if rec is not None and rec[1] is None:
            rec[1] = now
            self.pending_acks -= 1
            if self.pending_acks <= 0:
                self.acks_in.set()

    # -- commands
    async def connect(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        gate = asyncio.Semaphore(100)

        async def one(c: list[str]) -> None:
            async with gate:
                _, button = await loop.create_connection(lambda: Button(self, c[0], c[1], c[2]), "127.0.0.1",
                                                         self.port)
                await asyncio.wait_for(button.connack, 30)
                self.buttons.append(button)

        await asyncio.gather(*(one(c) for c in self.creds))
        self.buttons.sort(key=lambda b: b.dev)
        self.pinger = loop.create_task(self._ping())
        return {"connected": len(self.buttons), "s": time.monotonic() - started}

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(PING_EVERY_S)
            for b in self.buttons:
                b.send(wire.PINGREQ_PACKET)

    async def subscribe(self, devices: int, on: bool) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        futs = []
        for b in self.buttons[:devices]:
            pid = b.next_pid()
            fut = b.subacks[pid] = loop.create_future()
            futs.append(fut)
            b.send(wire.subscribe(pid, [(b.ack_topic, 1)]) if on else wire.unsubscribe(pid, [b.ack_topic]))
        await asyncio.wait_for(asyncio.gather(*futs), 60)
        return {"ok": True}

    def prepare(self, each: int) -> dict[str, Any]:
        """Sign the burst now, so that firing it is only writes."""
        self.prepared = [[(b, b.alarm_packet()[1]) for b in self.buttons] for _ in range(each)]
        return {"n": sum(len(r) for r in self.prepared)}

    async def fire(self) -> dict[str, Any]:
        n = sum(len(r) for r in self.prepared)
        self.target = self.pubacked + n
        self.all_acked.clear()
        t0 = time.monotonic()
        for round_ in self.prepared:
            for b, packet in round_:
                b.send(packet)
            await asyncio.sleep(0)
        t1 = time.monotonic()
        await asyncio.wait_for(self.all_acked.wait(), 300)
        self.prepared = []
        return {"n": n, "t0": t0, "written": t1, "pubacked": time.monotonic()}

    def prepare_paced(self, rate: float, seconds: float, devices: int) -> dict[str, Any]:
        """Sign a paced run's alarms now (seconds 0: a stream until stopped, signed for
        STREAM_SIGNED_S and on the fly beyond), so that publishing is only writes."""
        self.records = {}
        self.pending_acks = 0
        self.acks_in.clear()
        self.stop_paced = False
        self.paced_buttons = self.buttons[:devices]
        self.paced_total = int(rate * seconds) if seconds > 0 else None
        count = self.paced_total if self.paced_total is not None else int(rate * STREAM_SIGNED_S)
        self.paced_packets = []
        for i in range(count):
            b = self.paced_buttons[i % len(self.paced_buttons)]
            seq, packet = b.alarm_packet()
            self.paced_packets.append((b, seq, packet))
        return {"n": count}

    async def _paced(self, rate: float, at: float, phase: float) -> None:
        buttons, packets, total = self.paced_buttons, self.paced_packets, self.paced_total
        i = 0
        while not self.stop_paced and (total is None or i < total):
            due = at + (i + phase) / rate
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
                continue
            if i < len(packets):
                b, seq, packet = packets[i]
            else:
                b = buttons[i % len(buttons)]
                seq, packet = b.alarm_packet()
            self.records[(b.dev, seq)] = [time.monotonic(), None]
            self.pending_acks += 1
            self.acks_in.clear()
            b.send(packet)
            i += 1

    def paced(self, rate: float, at: float, phase: float) -> dict[str, Any]:
        self.paced_task = asyncio.get_running_loop().create_task(self._paced(rate, at, phase))
        return {"ok": True}

    async def collect(self, timeout_s: float) -> dict[str, Any]:
        assert self.paced_task is not None
        await self.paced_task
        if self.pending_acks > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.acks_in.wait(), timeout_s)
        return {"records": [[d, s, r[0], r[1]] for (d, s), r in self.records.items()], "lost": self.lost}


async def _worker_main(port: int, creds: list[list[str]]) -> None:
    loop = asyncio.get_running_loop()
    w = Worker(port, creds)
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line)
        loop.call_soon_threadsafe(commands.put_nowait, '{"op": "exit"}')

    threading.Thread(target=read_stdin, daemon=True).start()
    while True:
        cmd = json.loads(await commands.get())
        op = cmd["op"]
        if op == "exit":
            return
        if op == "connect":
            out = await w.connect()
        elif op == "subscribe":
            out = await w.subscribe(cmd["devices"], cmd["on"])
        elif op == "prepare":
            out = w.prepare(cmd["each"])
        elif op == "fire":
            out = await w.fire()
        elif op == "prepare_paced":
            out = w.prepare_paced(cmd["rate"], cmd["seconds"], cmd["devices"])
        elif op == "paced":
            out = w.paced(cmd["rate"], cmd["at"], cmd["phase"])
        elif op == "stop":
            w.stop_paced = True
            continue  # no answer: the answer is collect's
        elif op == "collect":
            out = await w.collect(cmd["timeout"])
        else:
            out = {"error": f"unknown op {op}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


def worker(port: int, creds_file: str) -> None:
    creds = json.loads(Path(creds_file).read_text())
    try:
        import uvloop
    except ImportError:
        asyncio.run(_worker_main(port, creds))
    else:
        uvloop.run(_worker_main(port, creds))


class Publishers:
    """The parent's handle on the worker processes."""

    def __init__(self, port: int, creds: list[tuple[str, str, str]], workers: int, workdir: Path) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.sizes: list[int] = []
        for k in range(workers):
            share = creds[k::workers]
            path = workdir / f"creds-{k}.json"
            path.write_text(json.dumps([list(c) for c in share]))
            self.sizes.append(len(share))
            self.procs.append(subprocess.Popen([sys.executable, __file__, "--worker", str(port), str(path)],
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _send(self, cmds: Iterable[dict[str, Any]]) -> None:
        for proc, cmd in zip(self.procs, cmds, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(cmd) + "\n")
            proc.stdin.flush()

    def _answers(self) -> list[dict[str, Any]]:
        out = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"publisher worker {proc.pid} ended (exit {proc.poll()})")
            out.append(json.loads(line))
        return out

    def all(self, cmd: dict[str, Any]) -> list[dict[str, Any]]:
        self._send([cmd] * len(self.procs))
        return self._answers()

    def connect(self) -> float:
        return max(a["s"] for a in self.all({"op": "connect"}))

    def subscribe_acks(self, devices: int, on: bool = True) -> None:
        self.all({"op": "subscribe", "devices": self._per_worker(devices), "on": on})

    def _per_worker(self, devices: int) -> int:
        return max(1, -(-devices // len(self.procs)))

    def burst(self, each: int) -> dict[str, float]:
        """Publish `each` alarms from every button as fast as possible; returns when every one has
        its PUBACK (it is then in the broker)."""
        self.all({"op": "prepare", "each": each})
        answers = self.all({"op": "fire"})
        return {"t0": min(a["t0"] for a in answers), "written": max(a["written"] for a in answers),
                "pubacked": max(a["pubacked"] for a in answers), "n": sum(a["n"] for a in answers)}

    def prepare_paced(self, rate: float, seconds: float, devices: int) -> None:
        """Sign the alarms of a paced run (seconds 0: a stream until stop_paced())."""
        self.paced_rate = rate / len(self.procs)
        self.all({"op": "prepare_paced", "rate": self.paced_rate, "seconds": seconds,
                  "devices": self._per_worker(devices)})

    def start_paced(self) -> None:
        """Publish what prepare_paced signed, evenly interleaved over the workers."""
        n = len(self.procs)
        at = time.monotonic() + 0.2
        self._send({"op": "paced", "rate": self.paced_rate, "at": at, "phase": k / n} for k in range(n))
        self._answers()

    def stop_paced(self) -> None:
        self._send([{"op": "stop"}] * len(self.procs))

    def collect(self, timeout_s: float) -> list[tuple[str, int, float, float | None]]:
        out: list[tuple[str, int, float, float | None]] = []
        for a in self.all({"op": "collect", "timeout": timeout_s}):
            out += [(r[0], r[1], r[2], r[3]) for r in a["records"]]
        return out

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ====================================================================== measuring

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int, with_children: bool = False) -> float:
    """utime + stime of a process in seconds (and of its children it has reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return out


def vm_hwm_mb(pid: int) -> float:
    """A process's peak resident set (VmHWM), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK


@dataclass
class CpuMeter:
    """CPU seconds of each of our processes and of the machine, between two snapshots."""

    groups: dict[str, Callable[[], float]]
    before: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0

    def start(self) -> CpuMeter:
        self.before = self._read()
        self.wall = time.monotonic()
        return self

    def _read(self) -> dict[str, float]:
        out = {name: fn() for name, fn in self.groups.items()}
        t = os.times()
        out["bench"] = t.user + t.system
        out["machine"] = machine_busy()
        return out

    def stop(self) -> dict[str, float]:
        after = self._read()
        out = {k: after[k] - self.before.get(k, 0.0) for k in after}
        out["wall"] = time.monotonic() - self.wall
        ours = sum(v for k, v in out.items() if k not in ("machine", "wall"))
        out["others"] = max(0.0, out["machine"] - ours)
        return out


def describe_cpu(cpu: dict[str, float]) -> str:
    parts = [f"{k} {cpu[k]:.1f}" for k in cpu if k not in ("machine", "wall", "others", "gateway from healthy")]
    return (f"CPU s over {cpu['wall']:.1f} s wall: {', '.join(parts)}; not ours (other work on the machine) "
            f"{cpu['others']:.1f} of {cpu['machine']:.1f} busy "
            f"({cpu['machine'] / cpu['wall'] / (os.cpu_count() or 1) * 100:.0f}% "
            f"of {os.cpu_count()} cores)")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _db(db: str) -> tuple[Callable[..., Any], Callable[[], None]]:
    """(query(sql, *args) -> first column of the first row, close) on a SQLite file or PostgreSQL."""
    if db.startswith("postgresql://"):
        import psycopg
        conn = psycopg.connect(db, autocommit=True)
        return (lambda sql, *a: conn.execute(sql.replace("?", "%s"), a).fetchone()[0]), conn.close  # type: ignore[index]
    lite = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    lite.execute("PRAGMA busy_timeout=5000")
    return (lambda sql, *a: lite.execute(sql, a).fetchone()[0]), lite.close


def last_alarm_id(db: str) -> int:
    query, close = _db(db)
    try:
        return int(query("SELECT coalesce(max(id), 0) FROM alarms"))
    finally:
        close()


def exact_counts(db: str, after_id: int = 0) -> tuple[int, int]:
    """Alarms stored after `after_id`, and of those forwarded (full counts: not while measuring)."""
    query, close = _db(db)
    try:
        return (int(query("SELECT count(*) FROM alarms WHERE id > ?", after_id)),
                int(query("SELECT count(forwarded_ms) FROM alarms WHERE id > ?", after_id)))
    finally:
        close()


class StoreWatch(threading.Thread):
    """Follows the alarms stored after `after_id` every POLL_S until n are stored and none waits
    in the outbox, with reads that cost next to nothing (the highest alarm id; whether the outbox
    holds an alarm), so that watching does not take CPU from the gateway or PostgreSQL. Ids may
    have gaps (a rolled-back insert), so n is confirmed by an exact count once the ids reach it."""

    def __init__(self, db: str, after_id: int, n: int, timeout_s: float = 600) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.after_id = after_id
        self.n = n
        self.timeout_s = timeout_s
        self.samples: list[tuple[float, int, bool]] = []   # (time, stored, none left to forward)
        self.stopped = threading.Event()

    def run(self) -> None:
        query, close = _db(self.db)
        deadline = time.monotonic() + self.timeout_s
        confirmed = 0
        try:
            while not self.stopped.is_set() and time.monotonic() < deadline:
                t = time.monotonic()
                try:
                    if confirmed < self.n:
                        stored = int(query("SELECT coalesce(max(id), 0) FROM alarms")) - self.after_id
                        if stored >= self.n:
                            stored = confirmed = int(query("SELECT count(*) FROM alarms WHERE id > ?",
                                                           self.after_id))
                    else:
                        stored = confirmed
                    done = stored >= self.n and query(
                        "SELECT count(*) FROM (SELECT 1 FROM outbox WHERE kind = 'alarm' LIMIT 1) AS w") == 0
                except Exception as exc:  # the database went away (the run is ending): stop watching
                    print(f"    (store watch stopped: {exc})", flush=True)
                    return
                self.samples.append((t, stored, done))
                if done:
                    return
                time.sleep(POLL_S)
        finally:
            close()

    def result(self) -> dict[str, float | None]:
        """First and last stored (poll times), the count at the first, all forwarded."""
        first = next(((t, s) for t, s, _ in self.samples if s > 0), None)
        last = next((t for t, s, _ in self.samples if s >= self.n), None)
        fwd = next((t for t, _, f in self.samples if f), None)
        return {"first": first[0] if first else None, "first_count": first[1] if first else None,
                "last": last, "forwarded_all": fwd}


# ====================================================================== the system under test

class System:
    """Broker, PostgreSQL, sink, fleet, publishers: started once for the whole run."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        from siaga.broker.process import MosquittoProcess
        from siaga.net import free_port
        from siaga.pgserver import PostgresProcess
        from tests.support.net import wait_port

        self.args = args
        self.workdir = workdir
        self.pg: Any = None
        self.sink: subprocess.Popen[bytes] | None = None
        self.pubs: Publishers = None  # type: ignore[assignment]  # set by _start
        try:
            self._start(args, workdir, MosquittoProcess, PostgresProcess, free_port, wait_port)
        except BaseException:
            self.close()
            raise

    def _start(self, args: argparse.Namespace, workdir: Path, MosquittoProcess: Any, PostgresProcess: Any,
               free_port: Callable[[], int], wait_port: Callable[[int], None]) -> None:
        self.creds = [(f"cl-{i:05d}", secrets.token_hex(32), secrets.token_urlsafe(12)) for i in range(args.devices)]
        self.broker = MosquittoProcess(workdir / "broker").start()
        self.broker.add_devices({c[0]: c[2] for c in self.creds})
        self.sink_port = free_port()
        self.sink = subprocess.Popen([sys.executable, str(REPO / "bench" / "sink.py"), str(self.sink_port)])
        wait_port(self.sink_port)
        if args.needs_pg:
            self.pg = PostgresProcess(durable=True).start()
        self.sqlite_template = workdir / "template.sqlite3"
        self.pg_template = "fleet"
        t0 = time.monotonic()
        asyncio.run(self._register())
        self.registered_s = time.monotonic() - t0
        self.pubs = Publishers(self.broker.port, self.creds, args.publishers, workdir)
        self.connect_s = self.pubs.connect()
        self.cases = 0

    async def _register(self) -> None:
        """The fleet into a template database of each engine, through the store's own add_device
        (so the rows are the production ones), once; each case starts from a copy. Only here is
        durability relaxed (PGOPTIONS synchronous_commit=off, SQLite synchronous=OFF, for this
        process's connections): 4,000 registrations would otherwise cost 4,000 fsyncs."""
        from gateway.store import SQLiteStore, open_store

        async def fill(store: Any) -> None:
            await store.open()
            try:
                if isinstance(store, SQLiteStore):
                    await store._call(lambda: store._conn.execute("PRAGMA synchronous=OFF"))
                now = int(time.time() * 1000)
                for k in range(0, len(self.creds), 64):
                    await asyncio.gather(*(store.add_device(d, bytes.fromhex(s), now_ms=now, lat_e6=-6200000,
                                                            lon_e6=106800000, address="Jl. Kota", area="31.71")
                                           for d, s, _ in self.creds[k:k + 64]))
            finally:
                await store.close()

        await fill(open_store(self.sqlite_template))
        if self.pg is not None:
            dsn = self.pg.create_database(self.pg_template)
            os.environ["PGOPTIONS"] = "-c synchronous_commit=off"
            try:
                await fill(open_store(dsn))
            finally:
                del os.environ["PGOPTIONS"]   # the gateways inherit our environment: durable there

    def versions(self) -> str:
        import paho.mqtt
        import psycopg
        mosq = subprocess.run([self.broker._binary, "-h"], check=False, capture_output=True,
                              text=True).stdout.splitlines()[0]
        out = f"{mosq}, paho-mqtt {paho.mqtt.__version__}, psycopg {psycopg.__version__}"
        if self.pg is not None:
            pgv = subprocess.run([str(self.pg.bindir / "postgres"), "--version"], check=False,
                                 capture_output=True, text=True)
            out += f", {pgv.stdout.strip()} (durable: fsync on, synchronous_commit on)"
        return out

    def postgres_cpu(self) -> float:
        if self.pg is None:
            return 0.0
        try:
            master = int((self.pg.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return 0.0
        return proc_cpu(master, with_children=True) + sum(proc_cpu(c) for c in children_of(master))

    def new_db(self, backend: str, name: str, folder: Path) -> str:
        if backend == "sqlite":
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "gateway.sqlite3"
            shutil.copyfile(self.sqlite_template, path)
            return str(path)
        import psycopg
        with psycopg.connect(self.pg.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.pg_template}"')
        return self.pg.dsn(name)

    def sink_events(self, prefix: str) -> dict[str, float]:
        import httpx
        got = httpx.get(f"http://127.0.0.1:{self.sink_port}/dump", timeout=60).json()
        return {e: t for e, t in got.items() if e.startswith(prefix) and ":fault:" not in e}

    def close(self) -> None:
        if self.pubs is not None:
            with contextlib.suppress(Exception):
                self.pubs.close()
        if self.sink is not None:
            self.sink.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.sink.wait(10)
        if getattr(self, "broker", None) is not None:
            self.broker.close()
        if self.pg is not None:
            self.pg.stop()


class Cluster:
    """N gateway instances of one gateway id on one database (or one on SQLite)."""

    def __init__(self, system: System, backend: str, n: int, label: str) -> None:
        from tests.support.gateway import GatewayProcess

        system.cases += 1
        self.system = system
        self.backend = backend
        self.label = label
        self.gateway_id = f"bench{system.cases}-{backend}{n}"
        folder = system.workdir / self.gateway_id
        self.db = system.new_db(backend, self.gateway_id.replace("-", "_"), folder / "a" / "gateway")
        self.instances: list[GatewayProcess] = []
        self.profile_wall = 0.0
        self.healthy_cpu: dict[int, float] = {}   # pid -> its CPU seconds when it became healthy
        self.healthy_at: dict[int, float] = {}
        self.names = "abc"[:n] if backend == "pg" else [""]
        for name in self.names:
            pg = backend == "pg"
            self.instances.append(GatewayProcess(
                folder / (name or "a"), mqtt_port=system.broker.port, mqtt_password=system.broker.gateway_password,
                cc_url=f"http://127.0.0.1:{system.sink_port}", cc_token="bench-token", gateway_id=self.gateway_id,
                db=self.db if pg else "gateway.sqlite3",
                gateway_settings=f'instance = "{name}"' if pg else "",
                python=system.args.gateway_python or sys.executable,
                mqtt_settings='share_group = "siaga"' if pg else ""))

    @property
    def prefix(self) -> str:
        return f"{self.gateway_id}:"

    def client_id(self, name: str) -> str:
        return f"siaga-gateway-{self.gateway_id}" + (f"-{name}" if name else "")

    def start(self, which: list[Any] | None = None) -> None:
        """Start the instances at once (threads), each returns when healthy."""
        errors: list[BaseException] = []

        def one(gw: Any) -> None:
            try:
                gw.start(timeout_s=START_TIMEOUT_S)
                self.healthy_cpu[gw.proc.pid] = proc_cpu(gw.proc.pid)
                self.healthy_at[gw.proc.pid] = time.monotonic()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(g,)) for g in (which or self.instances)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def stop(self) -> None:
        """SIGTERM to every instance at once (so that none takes over another's session), then wait."""
        running = [g for g in self.instances if g.running()]
        for g in running:
            assert g.proc is not None
            g.proc.send_signal(signal.SIGTERM)
        for g in running:
            assert g.proc is not None
            try:
                g.proc.wait(30)
            except subprocess.TimeoutExpired:
                g.kill()

    def end(self) -> None:
        """Stop, and end the instances' MQTT sessions, so that later bursts are not queued for them."""
        from gateway_throughput import drop_session

        self.stop()
        b = self.system.broker
        for name in self.names:
            drop_session(b.port, b.gateway_user, b.gateway_password, self.client_id(name))

    def log_sizes(self) -> dict[str, int]:
        return {str(g.log_path): g.log_path.stat().st_size if g.log_path.exists() else 0 for g in self.instances}

    def takeovers_since(self, sizes: dict[str, int]) -> list[str]:
        """The 'took over the MQTT session' lines the instances logged since `sizes`."""
        out = []
        for g in self.instances:
            if g.log_path.exists():
                with g.log_path.open("rb") as fh:
                    fh.seek(sizes.get(str(g.log_path), 0))
                    for line in fh.read().decode(errors="replace").splitlines():
                        if TAKEOVER_LINE in line:
                            out.append(f"{g.log_path.parent.parent.name}: {line.split(': ', 1)[-1]}")
        return out

    def cpu_groups(self) -> dict[str, Callable[[], float]]:
        s = self.system
        groups: dict[str, Callable[[], float]] = {
            "gateway": lambda: sum(proc_cpu(g.proc.pid) for g in self.instances if g.proc is not None),
            "broker": lambda: proc_cpu(s.broker.pid) if s.broker.pid else 0.0,
            "publishers": lambda: sum(proc_cpu(p) for p in s.pubs.pids),
            "sink": lambda: proc_cpu(s.sink.pid) if s.sink is not None else 0.0,
        }
        if self.backend == "pg":
            groups["postgres"] = s.postgres_cpu
        return groups

    def metrics(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for g in self.instances:
            if g.running():
                with contextlib.suppress(Exception):
                    total.update(g.metrics())
        return total

    def stored_per_instance(self) -> list[int]:
        out = []
        for g in self.instances:
            try:
                out.append(int(g.metrics().get("alarms_stored_total", 0)))
            except Exception:
                out.append(-1)
        return out

    def watch(self, after_id: int, n: int) -> StoreWatch:
        return StoreWatch(self.db, after_id, n)


# ====================================================================== part 1: throughput

@dataclass
class Figure:
    name: str
    mode: str
    n: int
    stored_rate: float | None = None
    forwarded_rate: float | None = None
    cpu_ms: float | None = None          # gateway CPU ms per alarm
    pg_cpu_ms: float | None = None
    note: str = ""


def bare_run(system: System, n: int, mode: str) -> Figure:
    """The bare paho subscriber of bench/gateway_throughput.py (a child process)."""
    from gateway_throughput import drop_session

    b = system.broker
    cmd = [sys.executable, str(REPO / "bench" / "gateway_throughput.py"), "--bare-subscriber", str(b.port),
           b.gateway_password]
    if mode == "drain":
        subprocess.run([*cmd, "0"], check=True, capture_output=True)   # its persistent session
        system.pubs.burst(system.args.each)
        out = subprocess.run([*cmd, str(n)], check=True, capture_output=True, text=True).stdout
    else:
        proc = subprocess.Popen([*cmd, str(n)], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)   # connected and subscribed
        system.pubs.burst(system.args.each)
        out, _ = proc.communicate(timeout=600)
    got = json.loads(out)
    drop_session(b.port, b.gateway_user, b.gateway_password, "bench-bare")
    rate = (got["n"] - 1) / (got["last"] - got["first"])
    print(f"  bare paho subscriber, {mode}: {got['n']:,} received, {rate:,.0f} alarms/s", flush=True)
    return Figure("bare paho subscriber", mode, got["n"], rate)


def gateway_burst(cluster: Cluster, mode: str, profile: str | None = None, each: int | None = None) -> Figure:
    system = cluster.system
    each = each or system.args.each
    n = len(system.creds) * each
    base = last_alarm_id(cluster.db)
    spy: subprocess.Popen[bytes] | None = None
    pg_before = None
    if mode == "live" and cluster.backend == "pg" and len(cluster.instances) == 1:
        time.sleep(2.5)   # the backends report their statistics at most once a second
        pg_before = pg_work(cluster.db)
    if mode == "live":
        meter = CpuMeter(cluster.cpu_groups()).start()
        watch = cluster.watch(base, n)
        watch.start()
        pub = system.pubs.burst(each)
    else:
        cluster.stop()                       # their persistent sessions now queue for them
        pub = system.pubs.burst(each)
        watch = cluster.watch(base, n)
        watch.start()
        sizes = cluster.log_sizes()
        meter = CpuMeter(cluster.cpu_groups()).start()
        t_start = time.monotonic()
        try:
            cluster.start()
        except BaseException:
            watch.stopped.set()
            raise
        if len(cluster.instances) > 1:
            ready = sorted(cluster.healthy_at.get(g.proc.pid, t_start) - t_start for g in cluster.instances
                           if g.proc is not None)
            took = cluster.takeovers_since(sizes)
            print(f"    (instances healthy {', '.join(f'{x:.1f}' for x in ready)} s after they were started"
                  + (f"; a late one was taken for dead: {'; '.join(took)}" if took else "") + ")", flush=True)
        if profile:
            gw = cluster.instances[0]
            assert gw.proc is not None
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw",
                                    "--rate", str(PROFILE_RATE), "--gil", "--threads", "--pid", str(gw.proc.pid),
                                    "-o", profile], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            spy_started = time.monotonic()
    watch.join()
    cpu = meter.stop()
    if mode == "drain":   # per alarm: each instance's CPU from when it was healthy (no interpreter start-up)
        cpu["gateway from healthy"] = sum(proc_cpu(g.proc.pid) - cluster.healthy_cpu.get(g.proc.pid, 0.0)
                                          for g in cluster.instances if g.proc is not None)
    if spy is not None:
        fig_wall = time.monotonic() - spy_started
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
        cluster.profile_wall = fig_wall
    r = watch.result()
    pg_after = None
    if pg_before is not None:
        time.sleep(2.5)
        pg_after = pg_work(cluster.db)
    arrivals = system.sink_events(cluster.prefix)
    fig = Figure(f"{cluster.label}", mode, n)
    if r["first"] is None or r["last"] is None:
        print(f"  {cluster.label}, {mode}: only {watch.samples[-1][1] if watch.samples else 0} of {n} "
              "stored before the timeout", flush=True)
        return fig
    # The alarms of this phase at the sink: the latest n (event ids of this gateway, by arrival).
    times = sorted(arrivals.values())[-n:]
    span = r["last"] - r["first"]
    counted = n - (r["first_count"] or 0)
    fig.stored_rate = counted / span if span > 0 else None
    fig.forwarded_rate = counted / (times[-1] - r["first"]) if len(times) == n else None
    fig.cpu_ms = cpu.get("gateway from healthy", cpu["gateway"]) / n * 1000
    if "postgres" in cpu:
        fig.pg_cpu_ms = cpu["postgres"] / n * 1000
    per = cluster.stored_per_instance() if len(cluster.instances) > 1 else []
    spread = f"; stored per instance {per}" if per else ""
    published = f"published in {pub['pubacked'] - pub['t0']:.2f} s"
    rss = [vm_hwm_mb(g.proc.pid) for g in cluster.instances if g.proc is not None and g.running()]
    spread += f"; gateway peak RSS {max(rss):.0f} MB" if rss else ""
    fwd = "n/a" if fig.forwarded_rate is None else f"{fig.forwarded_rate:,.0f}"
    print(f"  {cluster.label}, {mode}: {n:,} stored in {span:.2f} s = {fig.stored_rate:,.0f} alarms/s; "
          f"forwarded {len(times):,}: {fwd} alarms/s (first stored -> last at the sink); {published}; "
          f"gateway CPU {fig.cpu_ms:.3f} ms/alarm"
          + (f", PostgreSQL CPU {fig.pg_cpu_ms:.3f} ms/alarm" if fig.pg_cpu_ms is not None else "") + spread,
          flush=True)
    print(f"    {describe_cpu(cpu)}", flush=True)
    if pg_before is not None and pg_after is not None:
        print_pg_work(pg_before, pg_after, n)
    return fig


PROFILE_RATE = 200
PROFILE_PARTS: list[tuple[str, re.Pattern[str]]] = [
    # Each sample goes to the innermost frame that matches one of these, in this order of priority
    # among the frames of one stack (py-spy writes paths relative to site-packages or the repo).
    ("decode + HMAC verify of the incoming alarm (codec, siagafw)", re.compile(r"gateway/codec\.py|siagafw/")),
    ("signed ack to the button (encode_ack, publish)", re.compile(r"_publish_ack|encode_ack")),
    ("forwarded event body (events.py JSON)", re.compile(r"gateway/events\.py")),
    ("forwarding over HTTP (adapters, httpx, httpcore, h11)",
     re.compile(r"gateway/adapters\.py|[(/]httpx/|[(/]httpcore/|[(/]h11/|[(/]anyio/")),
    ("psycopg: per statement adapt, send, wait, parse", re.compile(r"[(/]psycopg(_pool)?/")),
    ("sqlite3 module", re.compile(r"sqlite3")),
    ("store logic in Python (store.py, store_pg.py)", re.compile(r"gateway/store(_pg)?\.py")),
    ("MQTT link (parse, PUBACKs, writes)", re.compile(r"gateway/mqtt(wire)?\.py")),
    ("intake bookkeeping (service.py, replay, limits, supervision)",
     re.compile(r"gateway/(service|replay|limits|supervision|grouping|metrics)\.py")),
    ("HTTP API (uvicorn, /health, /metrics)", re.compile(r"[(/]uvicorn/|[(/]starlette/|[(/]fastapi/|gateway/api\.py")),
    ("thread pool hand-off (concurrent.futures, queues)", re.compile(r"concurrent/futures|threading\.py|queue\.py")),
    ("asyncio (Python part)", re.compile(r"asyncio/")),
]


def statement_at(frame: str) -> str:
    """The SQL a store frame ("fn (gateway/store.py:710)") was executing: read from the source."""
    m = re.search(r"\((gateway/store(?:_pg)?\.py):(\d+)\)", frame)
    if m is None:
        return ""
    lines = (REPO / m.group(1)).read_text().splitlines()
    text = " ".join(lines[int(m.group(2)) - 1:int(m.group(2)) + 2])
    sql = re.search(r"(SELECT (?:1 FROM \w+|pg_advisory_xact_lock|id, site)|\{self\._EVENT\}[^\"]{0,30}|"
                    r"INSERT INTO \w+|UPDATE \w+|DELETE FROM \w+|pg_notify)", text)
    if sql is None:
        return ""
    return ": " + sql.group(1).replace("{self._EVENT}", "SELECT ... FROM outbox").replace(
        "SELECT id, site", "SELECT ... FROM incident_groups").strip()


def pg_work(dsn: str) -> dict[str, float]:
    """PostgreSQL's own counters of the database: transactions, and per table the index and
    sequential scans and the rows written."""
    import psycopg
    out: dict[str, float] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit, xact_rollback, blks_hit + blks_read FROM pg_stat_database "
                           "WHERE datname = current_database()").fetchone()
        out["transactions"], out["rollbacks"], out["blocks"] = (float(v) for v in row)  # type: ignore[union-attr]
        for rel, seq, idx, ins, upd, dele in conn.execute(
                "SELECT relname, seq_scan, coalesce(idx_scan, 0), n_tup_ins, n_tup_upd, n_tup_del "
                "FROM pg_stat_user_tables"):
            out[f"{rel}.seq_scan"], out[f"{rel}.idx_scan"] = seq, idx
            out[f"{rel}.written"] = ins + upd + dele
    return out


def print_pg_work(before: dict[str, float], after: dict[str, float], n: int) -> None:
    d = {k: (after.get(k, 0) - before.get(k, 0)) / n for k in after}
    tables = sorted({k.split(".")[0] for k in d if "." in k}, key=lambda t: -(d[f"{t}.idx_scan"] + d[f"{t}.written"]))
    parts = [f"{t} {d[f'{t}.idx_scan']:.2f}/{d[f'{t}.written']:.2f}" + (
        f" (+{d[f'{t}.seq_scan']:.3f} seq scans)" if d[f"{t}.seq_scan"] >= 0.001 else "")
        for t in tables if d[f"{t}.idx_scan"] + d[f"{t}.written"] + d[f"{t}.seq_scan"] >= 0.01]
    print(f"    PostgreSQL's own counters over this burst (pg_stat_database, pg_stat_user_tables), per alarm: "
          f"{d['transactions']:.3f} transactions ({d['rollbacks']:.3f} rolled back); index scans / rows written, "
          f"by table: {', '.join(parts)}")


def summarise_profile(path: Path, label: str, wall_s: float) -> None:
    """py-spy's raw stacks, recorded with --gil (only the thread holding the GIL is sampled, so a
    sample is Python doing work): each thread's share of the wall time, and where it goes."""
    if not path.exists():
        print(f"  (no profile written to {path})")
        return
    per_thread: Counter[str] = Counter()
    by_part: dict[str, Counter[str]] = defaultdict(Counter)
    store_lines: Counter[str] = Counter()
    leaves: dict[str, Counter[str]] = defaultdict(Counter)
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        name = frames[0].split(": ", 1)[-1]
        kind = ("event loop (MainThread)" if name == "MainThread" else
                "PostgreSQL pool threads (siaga-pg_*)" if name.startswith("siaga-pg") else
                "SQLite thread" if name.startswith("siaga-store") else "other threads")
        per_thread[kind] += count
        total += count
        part = "event loop: uvloop's C code (I/O, callbacks, scheduling)"
        for frame in reversed(frames[1:] if not frames[-1].startswith("Runner.run ") else []):
            hit = next((p for p, rx in PROFILE_PARTS if rx.search(frame)), None)
            if hit is not None:
                part = hit
                break
        by_part[kind][part] += count
        leaves[kind][frames[-1]] += count
        store = next((f for f in reversed(frames) if ("gateway/store.py" in f or "gateway/store_pg.py" in f)
                      and not f.startswith(("PgConnection.", "rows ", "PostgresStore._transaction"))), None)
        if store is not None and kind.startswith("PostgreSQL"):
            store_lines[store] += count
    if not total:
        print("  (empty profile)")
        return
    held = total / (PROFILE_RATE * wall_s) * 100
    print(f"  py-spy --gil over the {label} ({PROFILE_RATE} samples/s, {wall_s:.1f} s: the GIL was held "
          f"{held:.0f}% of the wall time; {total:,} samples):")
    for kind, count in per_thread.most_common():
        print(f"    {kind}: {count / total * 100:.0f}% of the GIL time")
        for part, c in by_part[kind].most_common(8):
            if c / count >= 0.005:
                print(f"      {c / count * 100:5.1f}%  {part}")
        top = "; ".join(f"{leaf.strip()} {c / count * 100:.0f}%" for leaf, c in leaves[kind].most_common(4))
        print(f"      busiest innermost frames: {top}")
    if store_lines:
        pool = per_thread["PostgreSQL pool threads (siaga-pg_*)"]
        print("    the pool threads' GIL time by the store's line it was under (the innermost store frame):")
        for frame, c in store_lines.most_common(8):
            print(f"      {c / pool * 100:5.1f}%  {frame.strip()}{statement_at(frame)}")


def part_throughput(system: System, args: argparse.Namespace) -> dict[str, dict[str, Figure]]:
    n = len(system.creds) * args.each
    print(f"\n== 1. throughput: bursts of {n:,} alarms ({args.each} each from {len(system.creds):,} buttons, "
          f"interleaved), {args.publishers} publisher processes", flush=True)
    figures: dict[str, dict[str, Figure]] = {}
    figures["bare"] = {"drain": bare_run(system, n, "drain"), "live": bare_run(system, n, "live")}
    cases = [("sqlite", 1, "1 gateway, SQLite")] + [("pg", k, f"{k} instance{'s' if k > 1 else ''}, PostgreSQL")
                                                    for k in args.instance_counts]
    for backend, k, label in cases:
        cluster = Cluster(system, backend, k, label)
        try:
            cluster.start()
            figures[label] = {"live": gateway_burst(cluster, "live"), "drain": gateway_burst(cluster, "drain")}
            if args.profile and k == 1:
                path = system.workdir / f"{backend}1-drain.pyspy"
                gateway_burst(cluster, "drain", profile=str(path), each=1)   # 1 alarm per button is enough
                print("    (that drain ran under py-spy, which pauses the process to sample it: not counted)")
                summarise_profile(path, f"{label} drain", cluster.profile_wall)
                if args.keep_profile:
                    kept = f"{args.keep_profile}.{backend}"
                    shutil.copyfile(path, kept)
                    print(f"  raw stacks kept in {kept}")
        finally:
            cluster.end()
    bare = figures["bare"]
    print("\n  summary (ratio = the rate / the bare subscriber's in the same mode; target >= 0.75):")
    print(f"  {'consumer':30}{'mode':>7}{'stored/s':>10}{'ratio':>7}{'forwarded/s':>13}{'ratio':>7}"
          f"{'gw CPU ms/alarm':>17}{'pg CPU ms/alarm':>17}")
    for label, modes in figures.items():
        for mode in ("live", "drain"):
            f = modes[mode]
            ref = bare[mode].stored_rate or float("nan")
            def fmt(v: float | None, spec: str) -> str:
                return format(v, spec) if v is not None else "-"
            ratio_s = (f.stored_rate / ref) if f.stored_rate else None
            ratio_f = (f.forwarded_rate / ref) if f.forwarded_rate else None
            print(f"  {f.name:30}{mode:>7}{fmt(f.stored_rate, ',.0f'):>10}{fmt(ratio_s, '.2f'):>7}"
                  f"{fmt(f.forwarded_rate if label != 'bare' else None, ',.0f'):>13}"
                  f"{fmt(ratio_f if label != 'bare' else None, '.2f'):>7}"
                  f"{fmt(f.cpu_ms, '.3f'):>17}{fmt(f.pg_cpu_ms, '.3f'):>17}"
                  + ("" if label == "bare" or ratio_f is None else
                     f"   target {'met' if min(ratio_s or 0, ratio_f) >= 0.75 else 'NOT met'}"))
    return figures


# ====================================================================== part 2: steady rate

def part_steady(system: System, args: argparse.Namespace, burst: dict[str, dict[str, Figure]] | None) -> None:
    print(f"\n== 2. steady rate: {args.steady_rate:,.0f} alarms/s for {args.steady_seconds:g} s from "
          f"{args.steady_devices:,} buttons (each subscribed to its ack topic)", flush=True)
    system.pubs.subscribe_acks(args.steady_devices, True)
    try:
        for backend, label in (("sqlite", "1 gateway, SQLite"), ("pg", "1 instance, PostgreSQL")):
            if backend == "pg" and system.pg is None:
                continue
            cluster = Cluster(system, backend, 1, label)
            try:
                cluster.start()
                time.sleep(1.0)
                idle = CpuMeter(cluster.cpu_groups()).start()
                time.sleep(IDLE_S)
                cpu = idle.stop()
                print(f"  {label}, idle with {len(system.creds):,} buttons registered: gateway CPU "
                      f"{cpu['gateway'] / cpu['wall'] * 1000:.0f} ms/s" +
                      (f", PostgreSQL {cpu['postgres'] / cpu['wall'] * 1000:.0f} ms/s" if "postgres" in cpu else ""))
                figs = burst.get(label) if burst else None
                steady_case(cluster, args, figs, args.steady_rate, args.steady_seconds)
                if backend == "pg" and args.steady_pg_rate:
                    print(f"  the same PostgreSQL gateway at {args.steady_pg_rate:,.0f} alarms/s (a rate it keeps up "
                          f"with here), {min(10.0, args.steady_seconds):g} s:")
                    steady_case(cluster, args, figs, args.steady_pg_rate, min(10.0, args.steady_seconds))
            finally:
                cluster.end()
    finally:
        system.pubs.subscribe_acks(args.steady_devices, False)


def steady_case(cluster: Cluster, args: argparse.Namespace, burst: dict[str, Figure] | None, rate: float,
                seconds: float) -> None:
    system = cluster.system
    base = last_alarm_id(cluster.db)
    system.pubs.prepare_paced(rate, seconds, args.steady_devices)
    m0 = cluster.metrics()
    meter = CpuMeter(cluster.cpu_groups()).start()
    system.pubs.start_paced()
    records = system.pubs.collect(timeout_s=30)
    n = len(records)
    watch = cluster.watch(base, n)
    watch.run()   # here: until all are forwarded
    cpu = meter.stop()
    m1 = cluster.metrics()
    arrivals = system.sink_events(cluster.prefix)
    acks = [(a - s) * 1000 for _, _, s, a in records if a is not None]
    fwd = [(arrivals[f"{cluster.gateway_id}:{d}:{q}"] - s) * 1000 for d, q, s, _ in records
           if f"{cluster.gateway_id}:{d}:{q}" in arrivals]
    cpu_ms = cpu["gateway"] / n * 1000
    rounds = m1[ROUNDS_OK] - m0[ROUNDS_OK]
    forwarded = m1[FORWARDED] - m0[FORWARDED]
    last_sent = max(r[2] for r in records)
    all_stored = watch.result()["last"]
    lag = (f"the last stored {all_stored - last_sent:.2f} s after the last was published" if all_stored
           else "not all stored")
    print(f"  {cluster.label}: {n:,} alarms published, {len(acks):,} 'received' acks, {len(fwd):,} at the sink; {lag}")
    if acks:
        print(f"    publish -> 'received' ack at the button: p50 {pct(acks, 50):.1f} ms, p95 {pct(acks, 95):.1f} ms, "
              f"p99 {pct(acks, 99):.1f} ms, max {max(acks):.1f} ms  (target p99 <= 10 ms: "
              f"{'met' if pct(acks, 99) <= 10 else 'NOT met'})")
    if fwd:
        print(f"    publish -> command center (sink): p50 {pct(fwd, 50):.1f} ms, p95 {pct(fwd, 95):.1f} ms, "
              f"p99 {pct(fwd, 99):.1f} ms, max {max(fwd):.1f} ms")
    ref = burst["live"].cpu_ms if burst and burst.get("live") and burst["live"].cpu_ms else None
    ratio = f" = {cpu_ms / ref:.2f} x its live-burst figure ({ref:.3f}; target <= 2x: " \
            f"{'met' if cpu_ms / ref <= 2 else 'NOT met'})" if ref else \
        " (no burst figure in this run: --parts throughput)"
    drain = burst["drain"].cpu_ms if burst and burst.get("drain") and burst["drain"].cpu_ms else None
    if drain:
        ratio += f"; {cpu_ms / drain:.2f} x its drain figure ({drain:.3f})"
    print(f"    gateway CPU {cpu_ms:.3f} ms/alarm{ratio}" +
          (f"; PostgreSQL CPU {cpu['postgres'] / n * 1000:.3f} ms/alarm" if "postgres" in cpu else ""))
    print(f"    forwarding: {forwarded:,.0f} alarms in {rounds:,.0f} requests = {forwarded / max(rounds, 1):.2f} "
          f"alarms per request")
    print(f"    {describe_cpu(cpu)}", flush=True)


# ====================================================================== part 3: failover

@dataclass
class Kill:
    victim: str
    forwarder: bool
    t_kill: float
    t_dead: float
    t_takeover: float | None = None
    t_leader: float | None = None
    new_leader: str | None = None


def forwarder_of(cluster: Cluster, timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for g in cluster.instances:
            if g.running():
                with contextlib.suppress(Exception):
                    if g.health().get("forwarding"):
                        return g
        time.sleep(0.05)
    raise RuntimeError("no instance forwards")


def kill_and_watch(cluster: Cluster, victim: Any, forwarder: bool, name: str) -> Kill:
    survivors = [g for g in cluster.instances if g is not victim and g.running()]
    offsets = {id(g): g.log_path.stat().st_size if g.log_path.exists() else 0 for g in survivors}
    t_kill = time.monotonic()
    victim.kill()                     # SIGKILL, then wait for it to be gone
    k = Kill(name, forwarder, t_kill, time.monotonic())
    deadline = t_kill + 20
    while time.monotonic() < deadline and (k.t_takeover is None or (forwarder and k.t_leader is None)):
        now = time.monotonic()
        if k.t_takeover is None:
            for g in survivors:
                with g.log_path.open("rb") as fh:
                    fh.seek(offsets[id(g)])
                    if f"{TAKEOVER_LINE} {name}".encode() in fh.read():
                        k.t_takeover = now
        if forwarder and k.t_leader is None:
            for g in survivors:
                with contextlib.suppress(Exception):
                    if g.health().get("forwarding"):
                        k.t_leader = time.monotonic()
                        k.new_leader = g.log_path.parent.parent.name
        time.sleep(0.02)
    return k


def part_failover(system: System, args: argparse.Namespace) -> None:
    print(f"\n== 3. failover: 3 PostgreSQL instances, {args.failover_rate:,.0f} alarms/s from "
          f"{args.failover_devices:,} buttons; kill -9 of the forwarder x {args.kills}, then of a "
          f"non-forwarding instance x {args.kills}", flush=True)
    cluster = Cluster(system, "pg", 3, "3 instances, PostgreSQL")
    system.pubs.subscribe_acks(args.failover_devices, True)
    kills: list[Kill] = []
    events: list[tuple[str, float, float]] = []
    try:
        cluster.start()
        time.sleep(1.0)
        system.pubs.prepare_paced(args.failover_rate, 0, args.failover_devices)
        system.pubs.start_paced()
        time.sleep(3.0)
        for forwarder in [True] * args.kills + [False] * args.kills:
            leader = forwarder_of(cluster)
            victim = leader if forwarder else next(g for g in cluster.instances if g is not leader and g.running())
            name = victim.log_path.parent.parent.name
            k = kill_and_watch(cluster, victim, forwarder, name)
            kills.append(k)
            events.append((f"kill of {name}", k.t_kill, k.t_dead))
            took = f"{k.t_takeover - k.t_kill:.2f} s" if k.t_takeover else "not within 20 s"
            lead = f", new forwarder {k.new_leader} after {k.t_leader - k.t_kill:.2f} s" if k.t_leader else ""
            print(f"  killed {'the forwarder' if forwarder else 'non-forwarding instance'} {name}{lead}; "
                  f"its session taken over after {took}", flush=True)
            time.sleep(1.0)
            t_restart = time.monotonic()
            cluster.start([victim])   # the same instance again (waits for its name, then connects)
            events.append((f"restart of {name}", t_restart, time.monotonic()))
            print(f"    ({name} started again in {time.monotonic() - t_restart:.2f} s)", flush=True)
            time.sleep(2.0)
        system.pubs.stop_paced()
        records = system.pubs.collect(timeout_s=30)
        n = len(records)
        watch = StoreWatch(cluster.db, 0, n, timeout_s=60)
        watch.run()
        stored, forwarded = exact_counts(cluster.db)
        m1 = cluster.metrics()
    finally:
        cluster.end()
        system.pubs.subscribe_acks(args.failover_devices, False)
    arrivals = system.sink_events(cluster.prefix)
    times = sorted(arrivals.values())
    acks = sorted(a for *_, a in records if a is not None)
    print(f"  stream: {n:,} alarms published, {len(acks):,} acked 'received', {stored:,} stored, "
          f"{len(arrivals):,} distinct at the command center ({forwarded:,} marked forwarded); "
          f"sessions taken over: {m1['sessions_taken_over_total']:.0f} (counters of the instances running at the end)")
    unacked = sorted(s for *_, s, a in records if a is None)
    if unacked:
        def where(t: float) -> str:
            name, t0, t1 = min(events, key=lambda e: abs(t - e[1]))
            return f"{t - t0:+.2f} s from the {name} (took {t1 - t0:.2f} s)"
        print(f"  never acked 'received' ({len(unacked)}), published at: " + "; ".join(where(t) for t in unacked[:10]))
    rows: dict[bool, list[dict[str, float | None]]] = {True: [], False: []}
    for k in kills:
        nxt_cc = next((t for t in times if t > k.t_dead), None)
        nxt_ack = next((t for t in acks if t > k.t_kill), None)
        around = [(a - s) if a is not None else None for _, _, s, a in records if k.t_kill - 1.0 <= s <= k.t_kill + 3.0]
        waits = [w for w in around if w is not None]
        rows[k.forwarder].append({
            "cc": (nxt_cc - k.t_kill) if nxt_cc else None, "ack": (nxt_ack - k.t_kill) if nxt_ack else None,
            "takeover": (k.t_takeover - k.t_kill) if k.t_takeover else None,
            "leader": (k.t_leader - k.t_kill) if k.t_leader else None,
            "worst": max(waits) if waits else None, "unacked": float(sum(1 for w in around if w is None))})

    def stats(values: list[float | None]) -> str:
        v = sorted(x for x in values if x is not None)
        missing = len(values) - len(v)
        if not v:
            return "n/a"
        return (f"min {v[0] * 1000:,.0f} / median {statistics.median(v) * 1000:,.0f} / max {v[-1] * 1000:,.0f} ms"
                + (f" ({missing} not seen)" if missing else ""))

    for forwarder, title in ((True, "kill -9 of the forwarding instance"),
                             (False, "kill -9 of a non-forwarding instance")):
        r = rows[forwarder]
        if not r:
            continue
        print(f"  {title} ({len(r)} times):")
        if forwarder:
            print(f"    kill -> another instance's /health says forwarding:   {stats([x['leader'] for x in r])}")
            print(f"    kill -> next alarm delivered to the command center:   {stats([x['cc'] for x in r])}")
        print(f"    kill -> next 'received' ack at a button:               {stats([x['ack'] for x in r])}")
        print(f"    kill -> 'took over the MQTT session' in a survivor's log: {stats([x['takeover'] for x in r])}")
        print(f"    longest ack wait of the alarms published from 1 s before to 3 s after the kill: "
              f"{stats([x['worst'] for x in r])}; never acked: {sum(x['unacked'] or 0 for x in r):.0f}")


# ====================================================================== optional: an instance that starts late

def part_late_start(system: System, args: argparse.Namespace) -> None:
    """Not one of the default parts (--parts late-start): 3 instances stop, a burst is queued for
    their sessions, 2 start, and the third only once one of them forwards, as when one machine of
    a site boots slower after a power cut. The forwarder finds the late one's name free and takes
    its session over (gateway/service.py _take_over) while the late one waits for its name."""
    n = len(system.creds) * args.each
    print(f"\n== late start: 3 PostgreSQL instances stopped, {n:,} alarms queued for their sessions, then 2 "
          f"started and the third {args.late_s:g} s after one of them forwards", flush=True)
    cluster = Cluster(system, "pg", 3, "3 instances, PostgreSQL")
    try:
        cluster.start()
        cluster.stop()
        system.pubs.burst(args.each)
        watch = StoreWatch(cluster.db, last_alarm_id(cluster.db), n)
        sizes = cluster.log_sizes()
        watch.start()
        t0 = time.monotonic()
        cluster.start(cluster.instances[1:])
        forwarder_of(cluster)
        time.sleep(args.late_s)
        late = cluster.instances[0]
        t_late = time.monotonic()
        cluster.start([late])
        waited = time.monotonic() - t_late
        watch.join()
        r = watch.result()
        print(f"  the late instance a became healthy {waited:.1f} s after it was started")
        for line in cluster.takeovers_since(sizes):
            print(f"  {line}")
        if r["last"] is not None and r["first"] is not None:
            print(f"  all {n:,} stored {r['last'] - t0:.1f} s after the first two were started "
                  f"({n / (r['last'] - r['first']):,.0f} alarms/s); stored per instance "
                  f"{cluster.stored_per_instance()}; stored in all {exact_counts(cluster.db)[0]:,} of {n:,}")
        else:
            print(f"  not all stored: {exact_counts(cluster.db)[0]:,} of {n:,}")
    finally:
        cluster.end()


# ====================================================================== main

def code_version(python: str | None) -> str:
    """Which gateway code runs: another install's, or this checkout's commit and what is modified in
    it (others may be changing it while this runs: the figures belong to the state named here)."""
    if python:
        return f"the gateway of another install: {python} (--gateway-python)"
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *a], check=False, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "gateway", "siaga", "broker").splitlines()
             if line[:2].strip() in ("M", "A", "MM", "AM")]
    if not dirty:
        return f"commit {head}, gateway/ siaga/ broker/ as committed"
    import hashlib
    digest = hashlib.sha256(git("diff", "HEAD", "--", *dirty).encode()).hexdigest()[:12]
    return (f"commit {head} with uncommitted changes to {', '.join(dirty)} (diff sha256 {digest}; "
            f"the gateways load them when they start)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="throughput,steady,failover")
    ap.add_argument("--quick", action="store_true",
                    help="1,000 buttons (5,000-alarm bursts), 8 s of steady rate, 1 kill of each kind, no profile")
    ap.add_argument("--devices", type=int, default=4000)
    ap.add_argument("--each", type=int, default=5, help="alarms per button in a burst")
    ap.add_argument("--publishers", type=int, default=4, help="publisher worker processes")
    ap.add_argument("--instances", default="1,2,3", help="PostgreSQL instance counts for the throughput part")
    ap.add_argument("--steady-rate", type=float, default=1000.0)
    ap.add_argument("--steady-seconds", type=float, default=20.0)
    ap.add_argument("--steady-devices", type=int, default=1000)
    ap.add_argument("--steady-pg-rate", type=float, default=300.0,
                    help="then the PostgreSQL gateway at this lower rate for up to 10 s (0: not)")
    ap.add_argument("--failover-rate", type=float, default=200.0)
    ap.add_argument("--failover-devices", type=int, default=1000)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--late-s", type=float, default=3.0, help="late-start: how long after a forwarder exists")
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                    help="run the 1-instance PostgreSQL drain once more under py-spy (default: on, off with --quick)")
    ap.add_argument("--keep-profile", metavar="FILE", help="copy py-spy's raw stacks here")
    ap.add_argument("--keep-workdir", action="store_true", help="keep the logs and databases (under /tmp)")
    ap.add_argument("--gateway-python", metavar="PYTHON",
                    help="the interpreter of another Siaga install, to measure another version's gateway "
                         "(as bench/offline_wave.py)")
    ap.add_argument("--worker", nargs=2, metavar=("PORT", "CREDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(int(args.worker[0]), args.worker[1])
        return 0
    if args.quick:
        args.devices, args.steady_seconds, args.kills = min(args.devices, 1000), 8.0, 1
        args.profile = bool(args.profile)
    elif args.profile is None:
        args.profile = True
    args.steady_devices = min(args.steady_devices, args.devices)
    args.failover_devices = min(args.failover_devices, args.devices)
    parts = set(args.parts.split(","))
    if not parts <= {"throughput", "steady", "failover", "late-start"}:
        ap.error("--parts: throughput, steady, failover (and late-start, not run by default)")
    args.instance_counts = [int(x) for x in args.instances.split(",") if x]
    args.needs_pg = True
    if args.profile and not (Path(sys.executable).parent / "py-spy").exists():
        print("(py-spy is not installed in this environment: no profile; `.venv/bin/pip install py-spy`)")
        args.profile = False

    exe = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
    print(f"command: {shlex.join([exe, *sys.argv])}")
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), "?")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores ({model}), {platform.python_implementation()} "
          f"{platform.python_version()}, {platform.platform()}")
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (the machine is shared with other "
          f"work: each phase's CPU line says how much of the machine's busy time was not ours)", flush=True)
    print(f"code under test: {code_version(args.gateway_python)}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="siaga-bench-cluster-"))
    started = time.monotonic()
    system: System | None = None
    try:
        system = System(args, workdir)
        print(f"versions: {system.versions()}")
        print(f"fleet: {len(system.creds):,} buttons registered in {system.registered_s:.1f} s (templates), "
              f"connected in {system.connect_s:.1f} s from {args.publishers} worker processes; command center: "
              f"bench/sink.py", flush=True)
        burst = part_throughput(system, args) if "throughput" in parts else None
        if "steady" in parts:
            part_steady(system, args, burst)
        if "failover" in parts:
            part_failover(system, args)
        if "late-start" in parts:
            part_late_start(system, args)
    finally:
        if system is not None:
            system.close()
        if args.keep_workdir:
            print(f"(files kept in {workdir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n(whole run: {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The gateway's MQTT link: a persistent session with manual acknowledgements, on asyncio.

A message is acknowledged to the broker (PUBACK) only when the service calls `ack()` after its
database commit, so a crash before the commit makes the broker deliver it again (protocol.md §6).
The number of unacknowledged messages, and so the intake queue, is bounded by the broker's
`max_inflight_messages` (broker/templates/mosquitto.conf).

The link speaks MQTT 3.1.1 itself (packets in mqttwire.py) rather than through paho-mqtt: measured
on the 2-core machine of docs/performance.md, paho's network thread, which reads each packet in
several small socket reads and wakes its thread once per acknowledgement, used more of the
interpreter than the whole gateway pipeline, so the gateway ran at a fifth of the rate of a bare
paho subscriber. Here a read of many packets is parsed at once and a batch's acknowledgements leave
in one write, on the event loop's own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from . import mqttwire as wire

log = logging.getLogger(__name__)

UPLINK_TOPICS = ("siaga/v1/dev/+/alarm", "siaga/v1/dev/+/status", "siaga/v1/dev/+/will")
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 30.0
CONNECT_TIMEOUT_S = 10.0
PENDING_MAX = 100_000  # acks to buttons kept while the broker is away; beyond, the oldest go (counted)


class MqttAuthError(Exception):
    """The broker refused the gateway's credentials: retrying would only hammer it."""


@dataclass(frozen=True, slots=True)
class Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool
    received_ms: int
    connection: int = 0  # which connection it arrived on; its ack is only valid on that one


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str
    port: int
    username: str
    password: str
    client_id: str
    keepalive_s: int = 30


class MqttLink:
    def __init__(self, settings: MqttSettings, queue: asyncio.Queue[Inbound],
                 on_connected: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self._queue = queue
        self._on_connected = on_connected  # called in the event loop after each (re)connect
        self.connected = asyncio.Event()
        self.auth_failed: MqttAuthError | None = None
        self._auth_event = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._connection = 0
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._next_pid = 0
        self._inflight: dict[int, tuple[str, bytes, bool]] = {}  # our QoS 1 publishes awaiting PUBACK
        self._pending: deque[tuple[str, bytes, bool]] = deque()   # publishes made while disconnected
        self.dropped_publishes = 0
        self._last_tx = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mqtt-link")

    async def stop(self) -> None:
        """Leave cleanly. Unacknowledged messages stay in the broker's session for the next start."""
        if self._stopping:
            return
        self._stopping = True
        if self._writer is not None:
            self._flush()
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._writer.write(wire.DISCONNECT_PACKET)
                await self._writer.drain()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._close()

    async def wait_auth_failure(self) -> None:
        await self._auth_event.wait()
        assert self.auth_failed is not None
        raise self.auth_failed

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.connected.clear()

    async def _run(self) -> None:
        backoff = RECONNECT_FIRST_S
        while not self._stopping:
            try:
                reader, buf = await self._connect()
            except MqttAuthError as exc:
                self.auth_failed = exc
                self._auth_event.set()
                return
            except (OSError, TimeoutError, wire.ProtocolError, asyncio.IncompleteReadError) as exc:
                # Full jitter, so several gateways (or one flapping) do not reconnect in lockstep.
                delay = random.uniform(RECONNECT_FIRST_S, backoff)
                log.warning("MQTT connect to %s:%d failed (%s); retrying in %.1f s", self.settings.host,
                            self.settings.port, exc, delay)
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, RECONNECT_MAX_S)
                continue
            backoff = RECONNECT_FIRST_S
            try:
                await self._read(reader, buf)
            except (OSError, TimeoutError, wire.ProtocolError) as exc:
                if not self._stopping:
                    log.warning("MQTT link lost: %s", exc)
            finally:
                self._close()

    async def _connect(self) -> tuple[asyncio.StreamReader, bytearray]:
        s = self.settings
        reader, writer = await asyncio.wait_for(asyncio.open_connection(s.host, s.port), CONNECT_TIMEOUT_S)
        writer.write(wire.connect(s.client_id, s.username, s.password, s.keepalive_s, clean=False))
        buf = bytearray()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                packets: list[wire.Packet] = []
                while not packets:
                    chunk = await reader.read(4096)
                    if not chunk:
                        raise ConnectionResetError("broker closed the connection during CONNECT")
                    buf += chunk
                    packets, used = wire.parse(buf)
                    del buf[:used]
        except BaseException:
            writer.close()
            raise
        ack, early = packets[0], packets[1:]
        if not isinstance(ack, wire.Control) or ack.kind != wire.CONNACK or len(ack.body) != 2:
            writer.close()
            raise wire.ProtocolError("expected CONNACK")
        if ack.body[1]:
            writer.close()
            reason = wire.CONNACK_REASONS.get(ack.body[1], str(ack.body[1]))
            if ack.body[1] in wire.AUTH_FAILURES:
                raise MqttAuthError(f"broker {s.host}:{s.port} refused user {s.username!r}: {reason}")
            raise ConnectionRefusedError(reason)
        session_present = bool(ack.body[0] & 1)
        self._writer = writer
        self._connection += 1
        # Subscribe on every connect: cheap, and right even if the broker lost the session.
        writer.write(wire.subscribe(self._pid(), [(t, 1) for t in UPLINK_TOPICS]))
        # Unacknowledged publishes go again (§4.4), then those made while away.
        resend = [wire.publish(t, p, 1, r, pid, dup=True) for pid, (t, p, r) in self._inflight.items()]
        writer.write(b"".join(resend))
        while self._pending:
            self._send_publish(*self._pending.popleft())
        self._last_tx = time.monotonic()
        log.info("MQTT connected to %s:%d (session present: %s)", s.host, s.port, session_present)
        self.connected.set()
        # A resumed session's queued alarms may arrive in the same read as the CONNACK.
        self._handle(early)
        if self._on_connected is not None:
            self._on_connected()
        return reader, buf

    async def _read(self, reader: asyncio.StreamReader, buf: bytearray) -> None:
        self._dispatch(buf)
        keepalive = self.settings.keepalive_s
        while True:
            if time.monotonic() - self._last_tx > keepalive / 2:
                self._write(wire.PINGREQ_PACKET)
            try:
                # Anything from the broker, including PINGRESP, proves the link is alive.
                chunk = await asyncio.wait_for(reader.read(262_144), keepalive * 1.5)
            except TimeoutError:
                raise TimeoutError(f"nothing from the broker for {keepalive * 1.5:.0f} s") from None
            if not chunk:
                raise ConnectionResetError("broker closed the connection")
            buf += chunk
            self._dispatch(buf)

    def _dispatch(self, buf: bytearray) -> None:
        packets, used = wire.parse(buf)
        del buf[:used]
        self._handle(packets)

    def _handle(self, packets: list[wire.Packet]) -> None:
        now_ms = int(time.time() * 1000)
        for p in packets:
            if isinstance(p, wire.Publish):
                self._queue.put_nowait(Inbound(p.topic, p.payload, p.pid, p.qos, p.dup, now_ms, self._connection))
            elif p.kind == wire.PUBACK:
                self._inflight.pop(int.from_bytes(p.body[:2], "big"), None)
            elif p.kind == wire.SUBACK and b"\x80" in p.body[2:]:
                log.error("broker refused a subscription of the gateway: check the ACL for %s",
                          self.settings.username)

    # ------------------------------------------------------------ output

    def _pid(self) -> int:
        for _ in range(65535):
            self._next_pid = self._next_pid % 65535 + 1  # 1..65535 (§2.3.1)
            if self._next_pid not in self._inflight:
                return self._next_pid
        raise wire.ProtocolError("no free packet identifier")

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._writer is not None and not self._writer.is_closing():
            self._writer.write(b"".join(self._out))
            self._last_tx = time.monotonic()
        self._out.clear()

    def ack(self, item: Inbound) -> None:
        """PUBACK a message once it is durable. An ack for a message of an earlier connection is
        dropped: the broker redelivers that message on the current one, and it is acked then."""
        if item.qos and item.connection == self._connection and self._writer is not None:
            self._write(wire.puback(item.mid))

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        """QoS 1 publish; kept and sent after reconnecting if the broker is away."""
        if self._writer is None:
            if len(self._pending) >= PENDING_MAX:
                self._pending.popleft()
                self.dropped_publishes += 1
            self._pending.append((topic, payload, retain))
            return
        self._send_publish(topic, payload, retain)

    def _send_publish(self, topic: str, payload: bytes, retain: bool) -> None:
        pid = self._pid()
        self._inflight[pid] = (topic, payload, retain)
        self._write(wire.publish(topic, payload, 1, retain, pid))

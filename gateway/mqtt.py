"""The gateway's MQTT link: a persistent session with manual acknowledgements, on asyncio.

A message is acknowledged to the broker (PUBACK) only when the service calls `ack()` after its
database commit, so a crash before the commit makes the broker deliver it again (protocol.md §6).
The number of unacknowledged messages, and so the intake queue, is bounded by the broker's
`max_inflight_messages` (broker/templates/mosquitto.conf).

`run()` is the link's one loop, a task of the gateway's TaskGroup: it connects, reconnects with
backoff and returns after `stop()`; it raises MqttAuthError when the broker refuses the login,
which ends the gateway instead of hammering the broker. On each connection a keepalive timer
beside the reader, not the reads, decides when to ping: a PINGREQ goes out when nothing has been
sent for half the keepalive (or nothing received for a whole one), and the link is dead only if
nothing at all comes back within a keepalive of a PINGREQ.

Why the link speaks MQTT 3.1.1 itself (packets in mqttwire.py) rather than through paho-mqtt:
measured, not assumed. paho 2.2 driven on this event loop without its network thread, the way
Home Assistant drives it (socket readiness calls `loop_read`/`loop_write`, a 1 s timer calls
`loop_misc`; bench/paho_loop_link.py), drained a queued burst at 0.65x the rate of this link in
the same run of bench/gateway_throughput.py (6,002 against 9,302 alarms/s, means of two each;
0.56x in a run on a busier machine; docs/performance.md). paho's `_packet_read` makes at least
three `recv` calls per packet (type byte, each length byte, body), its `loop_read` hands the loop
one packet per readiness event while none of its own publishes is in flight, and its
`_packet_write` sends every PUBACK with its own `send`. Here one read of many packets is parsed at
once and a batch's acknowledgements leave in one write. paho's network thread was slower still
(docs/gateway.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from . import mqttwire as wire

log = logging.getLogger(__name__)

UPLINK_TOPICS = ("siaga/v1/dev/+/alarm", "siaga/v1/dev/+/status", "siaga/v1/dev/+/will",
                 "siaga/v1/dev/+/ota/get", "siaga/v1/dev/+/ota/status")
QOS0_SUFFIX = "/ota/get"   # uplink topics taken at QoS 0: a lost chunk request is simply asked again
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 30.0
CONNECT_TIMEOUT_S = 10.0   # for TCP and the TLS handshake, then again for the CONNACK
READ_SIZE = 262_144        # one read takes everything a drain has queued in the socket
PENDING_MAX = 100_000      # acks to buttons kept while the broker is away; beyond, the oldest go (counted)

# Errors that end one connection (and lead to a reconnect), never the link.
LINK_ERRORS = (OSError, TimeoutError, wire.ProtocolError, asyncio.IncompleteReadError)


class MqttAuthError(Exception):
    """The broker refused the gateway's credentials: retrying would only hammer it."""


class Acknowledger(Protocol):
    """Where a message is acknowledged once it is committed: the MQTT link it came on (a PUBACK),
    or the SMS intake (deleting it from the modem's storage, gateway/sms.py)."""

    def ack(self, item: Inbound) -> None: ...


@dataclass(frozen=True, slots=True)
class Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool
    received_ms: int
    connection: int = 0  # which connection it arrived on; its ack is only valid on that one
    link: Acknowledger | None = field(default=None, compare=False)  # where to acknowledge it


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str
    port: int
    username: str
    password: str
    client_id: str
    keepalive_s: int = 30
    tls: bool = False
    ca_file: Path | None = None          # CA that signed the broker's certificate; None: the system's CAs
    cert_file: Path | None = None        # client certificate, for a broker that asks for one
    key_file: Path | None = None         # its key, unless cert_file holds it too
    server_hostname: str | None = None   # the name the broker's certificate must carry; None: host
    # Several gateway instances: each subscribes as a member of this shared-subscription group
    # ($share/<group>/...), and the broker hands each message to one of them.
    share_group: str | None = None

    @property
    def uplink_topics(self) -> tuple[str, ...]:
        if self.share_group is None:
            return UPLINK_TOPICS
        return tuple(f"$share/{self.share_group}/{t}" for t in UPLINK_TOPICS)

    def __post_init__(self) -> None:
        if not self.tls and any(v is not None for v in (self.ca_file, self.cert_file, self.key_file,
                                                        self.server_hostname)):
            # Refused rather than ignored: the gateway would otherwise talk in clear text.
            raise ValueError("MQTT TLS settings are given but tls is off")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("an MQTT client key needs its certificate (cert_file)")
        if self.keepalive_s < 1:
            raise ValueError("MQTT keepalive must be at least 1 s")

    def tls_context(self) -> ssl.SSLContext | None:
        """Verify the broker's certificate chain and name; present a client certificate if given."""
        if not self.tls:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=str(self.ca_file) if self.ca_file is not None else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2   # what the broker's listener requires anyway
        if self.cert_file is not None:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


class MqttLink:
    def __init__(self, settings: MqttSettings, queue: asyncio.Queue[Inbound],
                 on_connected: Callable[[], None] | None = None, *, subscribe: bool = True,
                 clean: bool = False, reconnect: bool = True) -> None:
        """subscribe, clean, reconnect: False, False, False to take over a dead instance's
        session and receive what the broker kept for it (Gateway._take_over); `subscribed` is
        then set when the broker confirms the unsubscription."""
        self.settings = settings
        self._queue = queue
        self._subscribe = subscribe
        self._clean = clean
        self._reconnect = reconnect
        self.received = 0                  # messages put on the queue
        self.acked = 0                     # of which acknowledged
        self.last_received = 0.0           # time.monotonic() of the latest
        self._on_connected = on_connected  # called in the event loop after each (re)connect
        # Built now so that a missing or bad CA or key file stops the gateway at start-up.
        self._tls = settings.tls_context()
        self.connected = asyncio.Event()   # CONNACK received: acks and publishes can go out
        self.subscribed = asyncio.Event()  # SUBACK received too: new alarms reach the gateway
        self._sub_pid = 0
        self.auth_failed: MqttAuthError | None = None
        self.connections = 0               # connections the broker accepted, for tests and metrics
        self.session_present = False       # the broker kept the gateway's session at the last connect
        self.dropped_publishes = 0
        self.dropped_now = 0   # QoS 0 publishes (publish_now) dropped while not connected
        self._writer: asyncio.StreamWriter | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._next_pid = 0
        self._inflight: dict[int, tuple[str, bytes, bool]] = {}  # our QoS 1 publishes awaiting PUBACK
        self._pending: deque[tuple[str, bytes, bool]] = deque()   # publishes made while disconnected
        self._last_tx = 0.0
        self._last_rx = 0.0
        self._stopping = False
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Stay connected until `stop()`; raises MqttAuthError if the broker refuses the login."""
        backoff = RECONNECT_FIRST_S
        try:
            while not self._stopping:
                try:
                    reader, buf = await self._connect()
                except MqttAuthError as exc:
                    self.auth_failed = exc
                    raise
                except LINK_ERRORS as exc:
                    if self._stopping:
                        return
                    if not self._reconnect:
                        raise
                    # Full jitter, so several gateways (or one flapping) do not reconnect in lockstep.
                    delay = random.uniform(RECONNECT_FIRST_S, backoff)
                    # A broker certificate that does not verify will not fix itself: say so louder.
                    level = logging.ERROR if isinstance(exc, ssl.SSLCertVerificationError) else logging.WARNING
                    log.log(level, "MQTT connect to %s:%d failed (%s); retrying in %.1f s", self.settings.host,
                            self.settings.port, _describe(exc), delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopped.wait(), delay)
                    backoff = min(backoff * 2, RECONNECT_MAX_S)
                    continue
                backoff = RECONNECT_FIRST_S
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._keepalive(), name="mqtt-keepalive")
                        await self._receive(reader, buf)
                except* LINK_ERRORS as group:
                    if not self._stopping:
                        log.warning("MQTT link lost: %s", _describe(group.exceptions[0]))
                finally:
                    self._close()
                if not self._reconnect:
                    return
        finally:
            self._close()

    async def stop(self) -> None:
        """Leave cleanly; `run()` then returns. Unacknowledged messages stay in the broker's
        session for the next start."""
        if self._stopping:
            return
        self._stopping = True
        self._stopped.set()
        if self._writer is not None:
            self._flush()
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._writer.write(wire.DISCONNECT_PACKET)
                await self._writer.drain()
        self._close()   # the reader sees the end of the stream

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.connected.clear()
        self.subscribed.clear()

    async def _connect(self) -> tuple[asyncio.StreamReader, bytearray]:
        s = self.settings
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(
                s.host, s.port, ssl=self._tls,
                server_hostname=(s.server_hostname or s.host) if self._tls is not None else None)
        writer.write(wire.connect(s.client_id, s.username, s.password, s.keepalive_s, clean=self._clean))
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
            ack, early = packets[0], packets[1:]
            if not isinstance(ack, wire.Control) or ack.kind != wire.CONNACK or len(ack.body) != 2:
                raise wire.ProtocolError("expected CONNACK")
            if ack.body[1]:
                reason = wire.CONNACK_REASONS.get(ack.body[1], str(ack.body[1]))
                if ack.body[1] in wire.AUTH_FAILURES:
                    raise MqttAuthError(f"broker {s.host}:{s.port} refused user {s.username!r}: {reason}")
                raise ConnectionRefusedError(reason)
            if self._stopping:
                raise ConnectionAbortedError("stopping")
        except BaseException:
            writer.close()
            raise
        session_present = bool(ack.body[0] & 1)
        self.session_present = session_present
        self._writer = writer
        self.connections += 1
        # Subscribe on every connect: cheap, and right even if the broker lost the session. A
        # takeover of a dead instance's session unsubscribes instead: the broker stops handing
        # it new messages, and sends what it kept, which arrives first (§4.6: in order).
        self._sub_pid = self._pid()
        if self._subscribe:
            # Chunk requests at QoS 0: no PUBACK, nothing for the broker to keep (docs/protocol.md §11).
            writer.write(wire.subscribe(self._sub_pid, [(t, 0 if t.endswith(QOS0_SUFFIX) else 1)
                                                        for t in s.uplink_topics]))
        else:
            writer.write(wire.unsubscribe(self._sub_pid, list(s.uplink_topics)))
        # Unacknowledged publishes go again (§4.4), then those made while away.
        resend = [wire.publish(t, p, 1, r, pid, dup=True) for pid, (t, p, r) in self._inflight.items()]
        writer.write(b"".join(resend))
        while self._pending:
            self._send_publish(*self._pending.popleft())
        self._last_tx = self._last_rx = time.monotonic()
        log.info("MQTT connected to %s:%d (session present: %s)", s.host, s.port, session_present)
        self.connected.set()
        # A resumed session's queued alarms may arrive in the same read as the CONNACK.
        self._handle(early)
        if self._on_connected is not None:
            self._on_connected()
        return reader, buf

    async def _receive(self, reader: asyncio.StreamReader, buf: bytearray) -> None:
        self._dispatch(buf)
        while True:
            chunk = await reader.read(READ_SIZE)
            if not chunk:
                raise ConnectionResetError("broker closed the connection")
            self._last_rx = time.monotonic()   # anything from the broker proves the link alive
            buf += chunk
            self._dispatch(buf)

    async def _keepalive(self) -> None:
        """PINGREQ when nothing has been sent for keepalive/2 or nothing received for a keepalive
        (§3.1.2.10: the broker drops a client silent for 1.5 x keepalive); the link is dead when
        nothing at all arrives within a keepalive of a PINGREQ."""
        keepalive = float(self.settings.keepalive_s)
        ping_sent: float | None = None
        while True:
            now = time.monotonic()
            if ping_sent is not None and self._last_rx >= ping_sent:
                ping_sent = None                     # answered, or other traffic arrived
            if ping_sent is not None and now - ping_sent >= keepalive:
                raise TimeoutError(f"no answer from the broker within {keepalive:g} s of a PINGREQ")
            due = min(self._last_tx + keepalive / 2, self._last_rx + keepalive)
            if ping_sent is None and now >= due:
                self._write(wire.PINGREQ_PACKET)
                self._flush()   # now, so that the next ping is due keepalive/2 from this one
                ping_sent = now
                continue
            wake = due if ping_sent is None else ping_sent + keepalive
            if ping_sent is not None and due > now:
                wake = min(wake, due)   # look again then: the PINGRESP will likely be in
            await asyncio.sleep(wake - now)

    def _dispatch(self, buf: bytearray) -> None:
        packets, used = wire.parse(buf)
        del buf[:used]
        self._handle(packets)

    def _handle(self, packets: list[wire.Packet]) -> None:
        now_ms = int(time.time() * 1000)
        for p in packets:
            if isinstance(p, wire.Publish):
                self.received += 1
                self.last_received = time.monotonic()
                self._queue.put_nowait(Inbound(p.topic, p.payload, p.pid, p.qos, p.dup, now_ms, self.connections,
                                               self))
            elif p.kind == wire.PUBACK:
                self._inflight.pop(int.from_bytes(p.body[:2], "big"), None)
            elif p.kind == wire.UNSUBACK and p.body[:2] == self._sub_pid.to_bytes(2, "big"):
                self.subscribed.set()
            elif p.kind == wire.SUBACK and p.body[:2] == self._sub_pid.to_bytes(2, "big"):
                if b"\x80" in p.body[2:]:
                    log.error("broker refused a subscription of the gateway: check the ACL for %s",
                              self.settings.username)
                else:
                    self.subscribed.set()

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
        self.acked += 1
        if item.qos and item.connection == self.connections and self._writer is not None:
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

    def publish_now(self, topic: str, payload: bytes) -> bool:
        """QoS 0, not retained, and only while connected: whether it went out. Nothing is kept for
        later and no packet identifier is taken, so such publishes never compete with the acks and
        offers for identifiers or the pending queue (a button's firmware chunks: a lost one is asked
        for again)."""
        if self._writer is None or not self.connected.is_set():
            self.dropped_now += 1
            return False
        self._write(wire.publish(topic, payload, 0, False))
        return True

    def _send_publish(self, topic: str, payload: bytes, retain: bool) -> None:
        pid = self._pid()
        self._inflight[pid] = (topic, payload, retain)
        self._write(wire.publish(topic, payload, 1, retain, pid))


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__   # a bare TimeoutError has no message

# A small MQTT 3.1.1 client for the button (OASIS MQTT 3.1.1, sections cited as [MQTT-x.y]).
#
# Two layers, as in Peter Hinch's mqtt_as: this protocol layer assumes a working link and raises
# OSError on any fault (socket error, timeout, missing PUBACK or PINGRESP, protocol violation,
# refused connection); the application layer (app.py) catches it, drops the connection and
# reconnects with backoff. It never blocks for longer than its timeout, so the button keeps being
# sampled while the network is bad, and it calls `idle` (the board feeds its watchdog there) between
# the steps of a connect.
#
# QoS 1 on the way out. Retransmission: every PUBLISH waits for its PUBACK; one missing after
# timeout_ms means the link is dead even if TCP has not noticed, so poll() raises and the
# application reconnects and re-sends. MQTT 3.1.1 requires a re-delivery only on reconnect with a
# persistent session [MQTT-4.4.0-1]; the button uses a clean session, and its flash outbox re-sends
# alarms until the gateway's signed "received" ack (protocol.md §6), because a PUBACK only means the
# broker holds the message in memory. So this layer keeps packet ids and send times in flight, not
# payloads.
import select
import socket
import struct

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from siagafw.timing import ticks_diff, ticks_ms

MAX_PACKET = const(4096)   # an ack is ~250 bytes; anything far larger is a fault, not something to buffer
MAX_INFLIGHT = const(8)    # QoS 1 publishes awaiting PUBACK; the outbox holds the rest

# CONNACK return codes [MQTT-3.2.2.3]
REFUSED_BAD_LOGIN = const(4)
REFUSED_NOT_AUTHORISED = const(5)
CONNACK_CODES = ("", "unacceptable protocol version", "client id rejected", "broker unavailable",
                 "bad user name or password", "not authorised")


def _str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _header(first_byte, length):
    """Fixed header: type/flags byte and the remaining length in 1-4 bytes [MQTT-2.2.3]."""
    out = bytearray(5)
    out[0] = first_byte
    i = 1
    while True:
        byte = length & 0x7F
        length >>= 7
        if length:
            out[i] = byte | 0x80
            i += 1
        else:
            out[i] = byte
            return bytes(out[:i + 1])


class MQTTClient:
    def __init__(self, client_id, host, port=1883, user=None, password=None, keepalive_s=30,
                 timeout_ms=5000, ssl_wrap=None, idle=None):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.keepalive_s = keepalive_s
        self.timeout_ms = timeout_ms
        self.ssl_wrap = ssl_wrap  # a function sock -> wrapped sock, supplied by the board's HAL
        self.idle = idle          # called between blocking steps (the board feeds its watchdog)
        self.on_message = None    # f(topic: str, payload: bytes, retained: bool)
        self.on_puback = None     # f(pid: int)
        self.refused = 0          # CONNACK code of the last refused connect, 0 if none
        self._sock = None
        self._poller = None
        self._ipoll = None
        self._pid = 0
        self._last_tx = 0
        self._ping_sent = None
        self._inflight = {}       # pid -> ticks when sent

    def _idle(self):
        if self.idle is not None:
            self.idle()

    # -------------------------------------------------------------- link

    def connect(self, clean=True, will=None):
        """Open the link; will = (topic, payload, retain) or None. Returns session-present."""
        self.close()
        self.refused = 0
        self._idle()
        addr = socket.getaddrinfo(self.host, self.port)[0][-1]
        self._idle()
        sock = socket.socket()
        sock.settimeout(self.timeout_ms / 1000)
        try:
            sock.connect(addr)
            self._idle()
            if self.ssl_wrap is not None:
                sock = self.ssl_wrap(sock)
                self._idle()
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        # MicroPython's ipoll() reuses one result tuple, poll() builds a list each call (64 bytes
        # per call measured on the unix port): at 100 polls a second that is GC churn for nothing.
        self._ipoll = getattr(self._poller, "ipoll", None)
        self._inflight = {}
        flags = 0x02 if clean else 0
        payload = _str(self.client_id)
        if will is not None:
            topic, msg, retain = will
            flags |= 0x04 | (1 << 3) | (0x20 if retain else 0)  # will flag, will QoS 1 [MQTT-3.1.2.5-6]
            payload += _str(topic) + _str(msg)
        if self.user is not None:
            flags |= 0x80
            payload += _str(self.user)
            if self.password is not None:
                flags |= 0x40
                payload += _str(self.password)
        var = b"\x00\x04MQTT\x04" + bytes([flags]) + struct.pack("!H", self.keepalive_s)
        self._send(0x10, var + payload)
        ptype, body = self._read_packet(self.timeout_ms)
        if ptype != 0x20 or len(body) != 2:
            self.close()
            raise OSError("expected CONNACK")
        if body[1] != 0:
            self.close()
            self.refused = body[1]
            code = body[1]
            raise OSError("connection refused: " + (CONNACK_CODES[code] if code < len(CONNACK_CODES) else str(code)))
        self._ping_sent = None
        return bool(body[0] & 1)

    def connected(self):
        return self._sock is not None

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._poller = None
        self._ipoll = None
        self._inflight = {}

    def _ready(self, timeout_ms):
        """Whether data is waiting on the socket, waiting at most timeout_ms."""
        if self._ipoll is None:
            return bool(self._poller.poll(timeout_ms))  # CPython (the virtual buttons)
        for _ in self._ipoll(timeout_ms):
            return True
        return False

    def disconnect(self):
        """Clean DISCONNECT: the broker discards the will [MQTT-3.14.4-3]."""
        if self._sock is not None:
            try:
                self._send(0xE0, b"")
            except OSError:
                pass
        self.close()

    # -------------------------------------------------------------- packets out

    def _write(self, data):
        write = getattr(self._sock, "write", None) or self._sock.sendall
        try:
            write(data)
        except OSError:
            self.close()
            raise

    def _send(self, first_byte, body):
        if self._sock is None:
            raise OSError("not connected")
        self._write(_header(first_byte, len(body)) + body)
        self._last_tx = ticks_ms()

    def _next_pid(self):
        self._pid = self._pid % 65535 + 1  # packet ids are 1..65535 [MQTT-2.3.1-1]
        return self._pid

    def can_publish(self):
        """Whether a QoS 1 publish may go out now (the in-flight window is bounded)."""
        return self._sock is not None and len(self._inflight) < MAX_INFLIGHT

    def publish(self, topic, payload, qos=1, retain=False):
        """Send a PUBLISH; returns its packet id (0 for QoS 0). PUBACKs arrive through poll()."""
        if self._sock is None:
            raise OSError("not connected")
        if qos and len(self._inflight) >= MAX_INFLIGHT:
            raise OSError("too many publishes in flight")
        pid = self._next_pid() if qos else 0
        var = _str(topic) + (struct.pack("!H", pid) if qos else b"")
        # Header and variable part in one write, the payload (up to 1 KiB, read from flash) in a
        # second one: no copy of the payload is made to glue them together.
        self._write(_header(0x30 | (qos << 1) | (1 if retain else 0), len(var) + len(payload)) + var)
        self._write(payload)
        self._last_tx = ticks_ms()
        if qos:
            self._inflight[pid] = self._last_tx
        return pid

    def subscribe(self, topic, qos=1):
        """Subscribe and wait for the SUBACK; raises OSError if the broker refuses it."""
        pid = self._next_pid()
        self._send(0x82, struct.pack("!H", pid) + _str(topic) + bytes([qos]))
        start = ticks_ms()
        while ticks_diff(ticks_ms(), start) < self.timeout_ms:
            ptype, body = self._read_packet(self.timeout_ms)
            if ptype == 0x90 and body[:2] == struct.pack("!H", pid):
                if body[2] == 0x80:
                    raise OSError("subscription refused: " + topic)
                return
            self._dispatch(ptype, body)
        raise OSError("no SUBACK")

    # -------------------------------------------------------------- packets in

    def _recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            try:
                chunk = self._sock.recv(n - len(buf))
            except OSError:
                self.close()
                raise
            if not chunk:
                self.close()
                raise OSError("connection closed by broker")
            buf += chunk
        return buf

    def _read_packet(self, timeout_ms):
        """Read one packet within timeout_ms; returns (type byte, body)."""
        if self._sock is None:
            raise OSError("not connected")
        if not self._ready(timeout_ms):
            self.close()
            raise OSError("timeout waiting for broker")
        return self._read_available()

    def _read_available(self):
        first = self._recv_exact(1)[0]
        n = 0
        shift = 0
        while True:
            b = self._recv_exact(1)[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 21:
                self.close()
                raise OSError("bad remaining length")
        if n > MAX_PACKET:
            self.close()
            raise OSError("packet too large")
        return first, (self._recv_exact(n) if n else b"")

    def _dispatch(self, ptype, body):
        kind = ptype & 0xF0
        if kind == 0x30:
            qos = (ptype >> 1) & 3
            tlen = struct.unpack("!H", body[:2])[0]
            topic = body[2:2 + tlen].decode()
            pos = 2 + tlen
            if qos:
                pid = body[pos:pos + 2]
                pos += 2
                # Ack before handing over: the handler acts on a verified, idempotent state, so a
                # crash in between only loses what the retained ack will repeat on reconnect.
                self._send(0x40, pid)
            if self.on_message is not None:
                self.on_message(topic, body[pos:], bool(ptype & 1))
        elif kind == 0x40:
            pid = struct.unpack("!H", body[:2])[0]
            self._inflight.pop(pid, None)
            if self.on_puback is not None:
                self.on_puback(pid)
        elif kind == 0xD0:
            self._ping_sent = None

    def poll(self, timeout_ms=0):
        """Handle whatever arrives within timeout_ms and keep the link alive.

        A PINGREQ goes out when nothing has been sent for half the keepalive, so the broker never
        reaches its 1.5 x keepalive limit [MQTT-3.1.2-24]. A PINGRESP or PUBACK that has not come
        within timeout_ms means the link is dead even if TCP has not noticed (a Wi-Fi access point
        that lost power leaves the socket open for minutes).
        """
        if self._sock is None:
            raise OSError("not connected")
        now = ticks_ms()
        if self._ping_sent is not None and ticks_diff(now, self._ping_sent) > self.timeout_ms:
            self.close()
            raise OSError("no PINGRESP")
        if self._inflight:  # iterating even an empty dict allocates; this runs 100 times a second
            for pid in self._inflight:
                if ticks_diff(now, self._inflight[pid]) > self.timeout_ms:
                    self.close()
                    raise OSError("no PUBACK")
        if self._ping_sent is None and ticks_diff(now, self._last_tx) > self.keepalive_s * 500:
            self._send(0xC0, b"")
            self._ping_sent = ticks_ms()
        wait = timeout_ms
        while self._poller is not None and self._ready(wait):
            ptype, body = self._read_available()
            self._dispatch(ptype, body)
            wait = 0

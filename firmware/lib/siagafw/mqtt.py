# A small MQTT 3.1.1 client for the button (OASIS MQTT 3.1.1, sections cited as [MQTT-x.y]).
#
# Two layers, as in Peter Hinch's mqtt_as: this protocol layer assumes a working link and raises
# OSError on any fault (socket error, timeout, protocol violation, refused connection); the
# application layer (app.py) catches it, drops the connection and reconnects with backoff. It never
# blocks for longer than its timeout, so the button keeps being sampled while the network is bad.
#
# QoS 1 only on the way out. A PUBACK only means the broker has the message in memory; the alarm
# stays in the flash outbox until the gateway's signed "received" ack (protocol.md §6), so this
# layer keeps no retransmission queue of its own: re-sending is the outbox's job.
import select
import socket
import struct

try:
    from time import ticks_diff, ticks_ms
except ImportError:  # CPython
    import time

    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b


MAX_PACKET = 4096  # an ack is ~250 bytes; anything far larger is a fault, not something to buffer

CONNACK_CODES = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "broker unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


def _str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _remaining_length(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class MQTTClient:
    def __init__(self, client_id, host, port=1883, user=None, password=None, keepalive_s=30,
                 timeout_ms=5000, ssl_wrap=None):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.keepalive_s = keepalive_s
        self.timeout_ms = timeout_ms
        self.ssl_wrap = ssl_wrap  # a function sock -> wrapped sock, supplied by the board's HAL
        self.on_message = None    # f(topic: str, payload: bytes, retained: bool)
        self.on_puback = None     # f(pid: int)
        self._sock = None
        self._poller = None
        self._pid = 0
        self._last_tx = 0
        self._ping_sent = None

    # -------------------------------------------------------------- link

    def connect(self, clean=True, will=None):
        """Open the link; will = (topic, payload, retain) or None. Returns session-present."""
        self.close()
        addr = socket.getaddrinfo(self.host, self.port)[0][-1]
        sock = socket.socket()
        sock.settimeout(self.timeout_ms / 1000)
        try:
            sock.connect(addr)
            if self.ssl_wrap is not None:
                sock = self.ssl_wrap(sock)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        flags = 0x02 if clean else 0
        payload = _str(self.client_id)
        if will is not None:
            topic, msg, retain = will
            flags |= 0x04 | (1 << 3) | (0x20 if retain else 0)  # will flag, will QoS 1
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
            raise OSError("connection refused: " + CONNACK_CODES.get(body[1], str(body[1])))
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

    def disconnect(self):
        """Clean DISCONNECT: the broker discards the will [MQTT-3.14.4-3]."""
        if self._sock is not None:
            try:
                self._send(0xE0, b"")
            except OSError:
                pass
        self.close()

    # -------------------------------------------------------------- packets out

    def _send(self, first_byte, body):
        if self._sock is None:
            raise OSError("not connected")
        data = bytes([first_byte]) + _remaining_length(len(body)) + body
        write = getattr(self._sock, "write", None) or self._sock.sendall
        try:
            write(data)
        except OSError:
            self.close()
            raise
        self._last_tx = ticks_ms()

    def _next_pid(self):
        self._pid = self._pid % 65535 + 1  # packet ids are 1..65535 [MQTT-2.3.1-1]
        return self._pid

    def publish(self, topic, payload, qos=1, retain=False):
        """Send a PUBLISH; returns its packet id (0 for QoS 0). PUBACKs arrive through poll()."""
        pid = self._next_pid() if qos else 0
        var = _str(topic) + (struct.pack("!H", pid) if qos else b"")
        self._send(0x30 | (qos << 1) | (1 if retain else 0), var + payload)
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
        if not self._poller.poll(timeout_ms):
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
            if self.on_puback is not None:
                self.on_puback(struct.unpack("!H", body[:2])[0])
        elif kind == 0xD0:
            self._ping_sent = None

    def poll(self, timeout_ms=0):
        """Handle whatever arrives within timeout_ms and keep the link alive.

        A PINGREQ goes out when nothing has been sent for half the keepalive; no PINGRESP within
        the keepalive means the link is dead even if TCP has not noticed [MQTT-3.1.2-24].
        """
        if self._sock is None:
            raise OSError("not connected")
        now = ticks_ms()
        if self._ping_sent is not None and ticks_diff(now, self._ping_sent) > self.keepalive_s * 1000:
            self.close()
            raise OSError("no PINGRESP")
        if self._ping_sent is None and ticks_diff(now, self._last_tx) > self.keepalive_s * 500:
            self._send(0xC0, b"")
            self._ping_sent = ticks_ms()
        wait = timeout_ms
        while self._poller is not None and self._poller.poll(wait):
            ptype, body = self._read_available()
            self._dispatch(ptype, body)
            wait = 0

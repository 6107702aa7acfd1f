# A small MQTT 3.1.1 client for the button (OASIS MQTT 3.1.1, sections cited as [MQTT-x.y]) that
# never blocks: the socket is non-blocking from the first byte, and every stage of a connection
# (TCP connect, TLS handshake, CONNECT/CONNACK, SUBSCRIBE/SUBACK) is a state that poll() advances by
# what the socket has ready, waiting at most the caller's timeout. The device loop calls poll()
# every LOOP_MS, so buttons, indicator and watchdog keep running whatever the link is doing: a
# broker that accepts TCP and never answers costs the loop nothing but a deadline.
#
# Two layers, as in Peter Hinch's mqtt_as: this protocol layer raises OSError on any fault (socket
# error, deadline passed, missing PUBACK or PINGRESP, protocol violation, refused connection) after
# closing the socket; the application layer (app.py) catches it and reconnects with backoff.
#
# QoS 1 on the way out. Retransmission: every PUBLISH waits for its PUBACK; one missing after
# timeout_ms means the link is dead even if TCP has not noticed, so poll() raises and the
# application reconnects and re-sends. MQTT 3.1.1 requires a re-delivery only on reconnect with a
# persistent session [MQTT-4.4.0-1]; the button uses a clean session, and its flash outbox re-sends
# alarms until the gateway's signed "received" ack (protocol.md §6), because a PUBACK only means the
# broker holds the message in memory. So this layer keeps packet ids and send times in flight, not
# payloads.
import errno
import select
import socket
import struct
import sys

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from siagafw.timing import ticks_add, ticks_diff, ticks_ms

MAX_PACKET = const(4096)   # an ack is ~250 bytes; anything far larger is a fault, not something to buffer
MAX_INFLIGHT = const(8)    # QoS 1 publishes awaiting PUBACK; the outbox holds the rest
MAX_UNSENT = const(1024)   # bytes waiting for room in the socket before publish() says "not now"
READ_CHUNK = const(256)

# Link states, in the order a connection goes through them.
DOWN = const(0)            # no socket
TCP = const(1)             # TCP connect under way
OPENING = const(2)         # TLS handshake (if any) and CONNECT sent: waiting for the CONNACK
SUBSCRIBING = const(3)     # SUBSCRIBE sent: waiting for the SUBACK
UP = const(4)

# CONNACK return codes [MQTT-3.2.2.3]
REFUSED_BAD_LOGIN = const(4)
REFUSED_NOT_AUTHORISED = const(5)
CONNACK_CODES = ("", "unacceptable protocol version", "client id rejected", "broker unavailable",
                 "bad user name or password", "not authorised")

_POLLOUT_ERR = select.POLLOUT | select.POLLERR | select.POLLHUP
# A non-blocking socket that has nothing to give or no room says so with EAGAIN (plain sockets)
# or, under CPython, with ssl.SSLWantReadError/SSLWantWriteError; MicroPython's stream read() and
# write() return None instead, and its TLS layer maps mbedtls' WANT_READ/WANT_WRITE to the same.
_BUSY = (errno.EAGAIN, errno.EINPROGRESS)
_WANT = ()
if sys.implementation.name != "micropython":  # the virtual buttons and the Raspberry Pi agent
    import ssl as _ssl

    _WANT = (BlockingIOError, _ssl.SSLWantReadError, _ssl.SSLWantWriteError)


def _busy(exc):
    return isinstance(exc, _WANT) or (len(exc.args) > 0 and exc.args[0] in _BUSY)


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


def connect_packet(client_id, keepalive_s, clean=True, will=None, user=None, password=None):
    """CONNECT [MQTT-3.1]; will = (topic, payload, retain) or None, sent with QoS 1."""
    flags = 0x02 if clean else 0
    payload = _str(client_id)
    if will is not None:
        topic, msg, retain = will
        flags |= 0x04 | (1 << 3) | (0x20 if retain else 0)  # will flag, will QoS 1 [MQTT-3.1.2.5-6]
        payload += _str(topic) + _str(msg)
    if user is not None:
        flags |= 0x80
        payload += _str(user)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + struct.pack("!H", keepalive_s) + payload
    return _header(0x10, len(body)) + body


def split_packet(buf):
    """(packet type byte, body, bytes used) of the first whole packet in buf, or None if it is not
    all there yet. Raises OSError for a length the protocol forbids or this client will not hold."""
    n = 0
    shift = 0
    i = 1
    while True:
        if i >= len(buf):
            return None
        b = buf[i]
        n |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            break
        shift += 7
        if shift > 21:
            raise OSError("bad remaining length")
    if n > MAX_PACKET:
        raise OSError("packet too large")
    if len(buf) < i + n:
        return None
    return buf[0], bytes(buf[i:i + n]), i + n


class MQTTClient:
    def __init__(self, client_id, user=None, password=None, keepalive_s=30, timeout_ms=5000, ssl_wrap=None):
        self.client_id = client_id
        self.user = user
        self.password = password
        self.keepalive_s = keepalive_s
        self.timeout_ms = timeout_ms
        # A function sock -> TLS socket supplied by the board's HAL. It must leave the handshake to
        # the first reads and writes (do_handshake_on_connect=False), so that the handshake
        # advances a step at a time on the non-blocking socket instead of holding the loop.
        self.ssl_wrap = ssl_wrap
        self.on_message = None    # f(topic: str, payload: bytes, retained: bool)
        self.on_puback = None     # f(pid: int)
        self.refused = 0          # CONNACK code of the last refused connect, 0 if none
        self.sent_connect = False  # the last connect got as far as sending its CONNECT
        self.state = DOWN
        self._sock = None
        self._poller = None
        self._ipoll = None
        self._mask = 0
        self._deadline = 0        # when the current connect stage gives up
        self._sub = None          # ((topic, qos), ...) to subscribe to once the CONNACK is in
        self._sub_pid = 0
        self._connect = b""       # the CONNECT packet, queued once TCP is up
        self._out = b""           # bytes the socket had no room for yet
        self._in = b""            # bytes of a packet not complete yet
        self._write_waits_for_input = False
        self._pid = 0
        self._last_tx = 0
        self._ping_sent = None
        self._inflight = {}       # pid -> ticks when sent

    # -------------------------------------------------------------- link

    def start(self, addr, clean=True, will=None, subscribe=None):
        """Begin connecting to addr (a socket address: no name lookup happens here).

        will = (topic, payload, retain) or None; subscribe = ((topic, qos), ...) or None, requested
        in one SUBSCRIBE right after the CONNACK (a SUBSCRIBE carries a list of topic filters and
        its SUBACK one return code each [MQTT-3.8.3, 3.9.3]). Returns at once; poll() drives the
        connection until connected() or until it raises OSError.
        """
        self.close()
        self.refused = 0
        self.sent_connect = False
        self._connect = connect_packet(self.client_id, self.keepalive_s, clean, will, self.user, self.password)
        self._sub = subscribe
        sock = socket.socket()
        try:
            sock.setblocking(False)
            sock.connect(addr)
        except OSError as exc:
            if not _busy(exc):
                sock.close()
                raise
        self._sock = sock
        self._poller = select.poll()
        self._poller.register(sock, select.POLLOUT)
        self._mask = select.POLLOUT
        # MicroPython's ipoll() reuses one result tuple, poll() builds a list each call (64 bytes
        # per call measured on the unix port): at 100 polls a second that is GC churn for nothing.
        self._ipoll = getattr(self._poller, "ipoll", None)
        self.state = TCP
        self._deadline = ticks_add(ticks_ms(), self.timeout_ms)

    def connected(self):
        """The link is up: CONNACK and SUBACK are in, publishes may go out."""
        return self.state == UP

    def active(self):
        """A socket is open: connected, or a connect is under way."""
        return self.state != DOWN

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
        self._out = b""
        self._in = b""
        self.state = DOWN

    def _fail(self, why):
        self.close()
        raise OSError(why)

    def disconnect(self):
        """Clean DISCONNECT: the broker discards the will [MQTT-3.14.4-3]. Best effort, no waiting."""
        if self.state == UP:
            try:
                self._queue(b"\xe0\x00")
            except OSError:
                pass
        self.close()

    # -------------------------------------------------------------- socket I/O that never waits

    def _write_some(self, data):
        """Write what the socket takes now; returns the count (0 when it has no room)."""
        sock = self._sock
        try:
            n = sock.write(data) if hasattr(sock, "write") else sock.send(data)
        except OSError as exc:
            if _busy(exc):
                # CPython's TLS says when a write waits for the peer's handshake message: then only
                # incoming data can unblock it (MicroPython's TLS socket maps poll flags itself).
                self._write_waits_for_input = type(exc).__name__ == "SSLWantReadError"
                return 0
            self._fail("send: %s" % exc)
        except ValueError as exc:
            # MicroPython reports a failed certificate check as ValueError ("The certificate is
            # not correctly signed by the trusted CA"), from whichever call ran the handshake.
            self._fail("TLS: " + " ".join(str(a) for a in exc.args).strip())
        return n or 0

    def _read_some(self):
        """Bytes the socket has now; None when it has none. The broker closing is an error."""
        sock = self._sock
        try:
            data = sock.read(READ_CHUNK) if hasattr(sock, "read") else sock.recv(READ_CHUNK)
        except OSError as exc:
            if _busy(exc):
                return None
            self._fail("receive: %s" % exc)
        except ValueError as exc:
            self._fail("TLS: " + " ".join(str(a) for a in exc.args).strip())
        if data is not None and len(data) == 0:
            self._fail("connection closed by broker")
        return data

    def _queue(self, data):
        """Send data in order after anything still unsent, keeping what the socket cannot take."""
        if not self._out:
            n = self._write_some(data)
            if n == len(data):
                return
            data = data[n:]
        self._out += data

    def _flush(self):
        if self._out:
            n = self._write_some(self._out)
            if n:
                self._out = self._out[n:]

    def _wait(self, mask, timeout_ms):
        """Poll events on the socket within timeout_ms (0 when nothing happened)."""
        if mask != self._mask:
            self._poller.modify(self._sock, mask)
            self._mask = mask
        if self._ipoll is None:  # CPython (the virtual buttons)
            for _, ev in self._poller.poll(timeout_ms):
                return ev
            return 0
        for _, ev in self._ipoll(timeout_ms):
            return ev
        return 0

    # -------------------------------------------------------------- packets out

    def _send(self, first_byte, body):
        if self._sock is None:
            raise OSError("not connected")
        self._queue(_header(first_byte, len(body)) + body)
        self._last_tx = ticks_ms()

    def _next_pid(self):
        self._pid = self._pid % 65535 + 1  # packet ids are 1..65535 [MQTT-2.3.1-1]
        return self._pid

    def can_publish(self):
        """Whether a QoS 1 publish may go out now (the in-flight window and the unsent bytes are
        bounded: on a stalled link they stop growing and the PUBACK deadline drops the link)."""
        return self.state == UP and len(self._inflight) < MAX_INFLIGHT and len(self._out) < MAX_UNSENT

    def publish(self, topic, payload, qos=1, retain=False):
        """Send a PUBLISH; returns its packet id (0 for QoS 0). PUBACKs arrive through poll()."""
        if self.state != UP:
            raise OSError("not connected")
        if qos and len(self._inflight) >= MAX_INFLIGHT:
            raise OSError("too many publishes in flight")
        pid = self._next_pid() if qos else 0
        var = _str(topic) + (struct.pack("!H", pid) if qos else b"")
        # Header and variable part in one write, the payload (up to 1 KiB, read from flash) in a
        # second one: no copy of the payload is made to glue them together unless the socket
        # has no room for it.
        self._queue(_header(0x30 | (qos << 1) | (1 if retain else 0), len(var) + len(payload)) + var)
        self._queue(payload)
        self._last_tx = ticks_ms()
        if qos:
            self._inflight[pid] = self._last_tx
        return pid

    # -------------------------------------------------------------- packets in

    def _dispatch(self, ptype, body):
        kind = ptype & 0xF0
        if kind == 0x30:
            qos = (ptype >> 1) & 3
            if len(body) < 2:
                self._fail("bad PUBLISH")
            tlen = struct.unpack("!H", body[:2])[0]
            if 2 + tlen + (2 if qos else 0) > len(body):
                self._fail("bad PUBLISH")
            try:
                topic = body[2:2 + tlen].decode()
            except UnicodeError:
                self._fail("bad PUBLISH topic")
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
            if len(body) == 2:
                pid = struct.unpack("!H", body)[0]
                self._inflight.pop(pid, None)
                if self.on_puback is not None:
                    self.on_puback(pid)
        elif kind == 0xD0:
            self._ping_sent = None

    def _opening(self, ptype, body):
        """The first packet of a connection must be the CONNACK [MQTT-3.2.0-1]."""
        if ptype != 0x20 or len(body) != 2:
            self._fail("expected CONNACK")
        code = body[1]
        if code != 0:
            self.close()
            self.refused = code
            raise OSError("connection refused: " + (CONNACK_CODES[code] if code < len(CONNACK_CODES) else str(code)))
        self._ping_sent = None
        self._last_tx = ticks_ms()
        if self._sub is None:
            self.state = UP
            return
        self._sub_pid = self._next_pid()
        body = struct.pack("!H", self._sub_pid)
        for topic, qos in self._sub:
            body += _str(topic) + bytes([qos])
        self._send(0x82, body)
        self.state = SUBSCRIBING
        self._deadline = ticks_add(ticks_ms(), self.timeout_ms)

    def _subscribing(self, ptype, body):
        n = len(self._sub)
        if ptype == 0x90 and len(body) == 2 + n and struct.unpack("!H", body[:2])[0] == self._sub_pid:
            for i in range(n):
                if body[2 + i] == 0x80:  # failure [MQTT-3.9.3]: the ACL or the broker refused it
                    self._fail("subscription refused: " + self._sub[i][0])
            self.state = UP
        else:
            self._dispatch(ptype, body)

    def _receive(self):
        """Read whatever has arrived and handle each whole packet."""
        while self._sock is not None:
            data = self._read_some()
            if data is None:
                return
            self._in += data
            while self._sock is not None:
                try:
                    packet = split_packet(self._in)
                except OSError as exc:
                    self._fail(str(exc))
                if packet is None:
                    break
                ptype, body, used = packet
                self._in = self._in[used:]
                if self.state == OPENING:
                    self._opening(ptype, body)
                elif self.state == SUBSCRIBING:
                    self._subscribing(ptype, body)
                else:
                    self._dispatch(ptype, body)

    # -------------------------------------------------------------- the one entry point

    def poll(self, timeout_ms=0):
        """Advance the link by what the socket has ready, waiting for it at most timeout_ms.

        While connecting: each stage (TCP, TLS and CONNACK, SUBACK) has timeout_ms to finish.
        Once up: a PINGREQ goes out when nothing has been sent for half the keepalive, so the
        broker never reaches its 1.5 x keepalive limit [MQTT-3.1.2-24]; a PINGRESP or PUBACK that
        has not come within timeout_ms means the link is dead even if TCP has not noticed (a Wi-Fi
        access point that lost power leaves the socket open for minutes).
        """
        st = self.state
        if st == DOWN:
            raise OSError("not connected")
        now = ticks_ms()
        if st == TCP:
            ev = self._wait(select.POLLOUT, timeout_ms)
            if ev & (select.POLLERR | select.POLLHUP):
                self._fail("TCP connect refused or unreachable")
            if ev & _POLLOUT_ERR:
                if self.ssl_wrap is not None:
                    try:
                        self._sock = self.ssl_wrap(self._sock)
                    except (OSError, ValueError) as exc:
                        self._fail("TLS: %s" % exc)
                    self._poller = select.poll()
                    self._poller.register(self._sock, select.POLLIN)
                    self._mask = select.POLLIN
                    self._ipoll = getattr(self._poller, "ipoll", None)
                self.state = OPENING
                self._deadline = ticks_add(ticks_ms(), self.timeout_ms)
                # Over TLS this write is the first step of the handshake; it goes on at each flush.
                self._queue(self._connect)
                self._connect = b""
                self.sent_connect = True
            elif ticks_diff(ticks_ms(), self._deadline) >= 0:
                self._fail("TCP connect timed out")
            return
        if st != UP:
            if ticks_diff(now, self._deadline) >= 0:
                self._fail("no CONNACK" if st == OPENING else "no SUBACK")
        else:
            if self._ping_sent is not None and ticks_diff(now, self._ping_sent) > self.timeout_ms:
                self._fail("no PINGRESP")
            if self._inflight:  # iterating even an empty dict allocates; this runs 100 times a second
                for pid in self._inflight:
                    if ticks_diff(now, self._inflight[pid]) > self.timeout_ms:
                        self._fail("no PUBACK")
            if self._ping_sent is None and ticks_diff(now, self._last_tx) > self.keepalive_s * 500:
                self._send(0xC0, b"")
                self._ping_sent = ticks_ms()
        self._write_waits_for_input = False
        self._flush()
        mask = select.POLLIN | select.POLLOUT if self._out and not self._write_waits_for_input else select.POLLIN
        ev = self._wait(mask, timeout_ms)
        if ev & select.POLLOUT and self._out:
            self._flush()
        if ev & (select.POLLIN | select.POLLERR | select.POLLHUP):
            self._receive()

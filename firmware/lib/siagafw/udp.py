# Question-and-answer exchanges over UDP that never block the device loop: a DNS lookup of the
# broker's name (RFC 1035, one A record) and an SNTP time query (RFC 4330). Each is an object whose
# poll() is called once per loop step: it sends, re-sends after a timeout, reads an answer if one
# has arrived, and returns at once either way.
#
# Why not socket.getaddrinfo() and ntptime: on the boards both wait inside lwIP until the server
# answers or lwIP gives up (several seconds per DNS server when the uplink drops packets), and
# ntptime looks its server's name up the same way. While they wait the button is not sampled. No
# non-blocking resolver exists in MicroPython or micropython-lib, so this module is the small one
# the button needs; it accepts only answers that match its own question (id, name, type, class)
# and that come from the server it asked (the socket is connected to it).
import errno
import random
import socket
import struct

from siagafw.timing import ticks_add, ticks_diff, ticks_ms

DNS_PORT = 53
NTP_PORT = 123
MAX_DATAGRAM = 512             # RFC 1035 §2.3.4: UDP messages are 512 bytes or less
NTP_TO_UNIX_S = 2208988800     # seconds from 1900-01-01 (NTP era 0) to 1970-01-01 (RFC 868)
RCODES = ("ok", "format error", "server failure", "no such name", "not implemented", "refused")


def is_ipv4(text):
    """Whether text is a dotted-quad IPv4 address (then no lookup is needed)."""
    parts = text.split(".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p or len(p) > 3 or not p.isdigit() or int(p) > 255:
            return False
    return True


def server_address(text, default_port):
    """(ip, port) from "a.b.c.d" or "a.b.c.d:port"; ValueError otherwise."""
    ip, _, port = text.partition(":")
    if not is_ipv4(ip):
        raise ValueError("not an IPv4 address")
    if not port:
        return ip, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("bad port")
    return ip, int(port)


class Exchange:
    """Send a request to (ip, port), re-send it after timeout_ms, give up after `tries` sends.

    poll() returns None while waiting, or what answer() made of a matching reply; it raises
    OSError when the tries are used up or the answer says the question has none. Datagrams that
    do not match (answer() returns None) are ignored, so a stray or forged packet cannot end it.
    """

    def __init__(self, ip, port, timeout_ms=1000, tries=3):
        self.timeout_ms = timeout_ms
        self.tries = tries
        self._sent = 0
        self._due = ticks_ms()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(socket.getaddrinfo(ip, port)[0][-1])
        except OSError:
            sock.close()
            raise
        self._sock = sock

    def request(self):
        raise NotImplementedError

    def answer(self, data):
        raise NotImplementedError

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def poll(self):
        if self._sock is None:
            raise OSError("closed")
        while True:
            try:
                data = self._sock.recv(MAX_DATAGRAM)
            except OSError as exc:
                if exc.args and exc.args[0] == errno.EAGAIN:  # nothing has arrived
                    break
                self.close()  # e.g. ECONNREFUSED: the server's port is closed (ICMP)
                raise OSError("%s: %s" % (self.what, exc))
            try:
                result = self.answer(data)
            except ValueError as exc:
                self.close()
                raise OSError("%s: %s" % (self.what, exc))
            if result is not None:
                self.close()
                return result
        now = ticks_ms()
        if ticks_diff(now, self._due) >= 0:
            if self._sent >= self.tries:
                self.close()
                raise OSError(self.what + ": no answer")
            self._sent += 1
            self._due = ticks_add(now, self.timeout_ms)
            try:
                self._sock.send(self.request())
            except OSError as exc:
                if not (exc.args and exc.args[0] == errno.EAGAIN):
                    self.close()
                    raise OSError("%s: %s" % (self.what, exc))
        return None


# ------------------------------------------------------------------ DNS


def dns_query(qid, name):
    """A standard query for the A record of name, recursion desired (RFC 1035 §4.1)."""
    out = bytearray(struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0))
    for label in name.split("."):
        b = label.encode()
        if not 0 < len(b) < 64:
            raise ValueError("bad host name")
        out.append(len(b))
        out += b
    out += b"\x00\x00\x01\x00\x01"  # root, QTYPE A, QCLASS IN
    if len(out) > 12 + 255 + 4:
        raise ValueError("host name too long")
    return bytes(out)


def _name_end(data, pos):
    """Where the name starting at pos ends (compression pointers, RFC 1035 §4.1.4, end a name)."""
    while True:
        if pos >= len(data):
            raise ValueError("truncated name")
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            return pos + 2
        if n & 0xC0:
            raise ValueError("bad label")
        pos += 1 + n


def _read_name(data, pos):
    """The name at pos in lower case, following compression pointers (at most 16 of them)."""
    labels = []
    jumps = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated name")
        n = data[pos]
        if n == 0:
            return ".".join(labels).lower()
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(data) or jumps >= 16:
                raise ValueError("bad pointer")
            pos = ((n & 0x3F) << 8) | data[pos + 1]
            jumps += 1
            continue
        if n & 0xC0 or pos + 1 + n > len(data):
            raise ValueError("bad label")
        labels.append(bytes(data[pos + 1:pos + 1 + n]).decode())
        pos += 1 + n


def dns_answer(data, qid, name):
    """The first IPv4 address answering the A query (qid, name), as text.

    None when data is not the answer to that query (another id, or not a response); ValueError
    when it is the answer but holds no address (no such name, server failure, malformed).
    """
    if len(data) < 12:
        return None
    rid, flags, qd, an = struct.unpack("!HHHH", data[:8])
    if rid != qid or not flags & 0x8000:
        return None
    rcode = flags & 0x0F
    if rcode:
        raise ValueError(RCODES[rcode] if rcode < len(RCODES) else "error %d" % rcode)
    try:
        pos = 12
        if qd != 1 or _read_name(data, pos) != name.lower():
            return None  # an answer to some other question
        pos = _name_end(data, pos) + 4
        for _ in range(an):
            pos = _name_end(data, pos)
            if pos + 10 > len(data):
                raise ValueError("truncated record")
            rtype, rclass, _, rdlen = struct.unpack("!HHIH", data[pos:pos + 10])
            pos += 10
            if pos + rdlen > len(data):
                raise ValueError("truncated record")
            if rtype == 1 and rclass == 1 and rdlen == 4:  # A, IN (a CNAME before it is skipped)
                return "%d.%d.%d.%d" % (data[pos], data[pos + 1], data[pos + 2], data[pos + 3])
            pos += rdlen
    except UnicodeError:
        raise ValueError("bad label")
    raise ValueError("no address in the answer")


class Lookup(Exchange):
    """The IPv4 address of `name`, asked of the DNS server at (ip, port)."""

    what = "DNS"

    def __init__(self, name, ip, port=DNS_PORT, timeout_ms=1000, tries=3):
        self.name = name
        self._qid = random.getrandbits(16)
        self._query = dns_query(self._qid, name)  # a bad name fails here, before any socket
        Exchange.__init__(self, ip, port, timeout_ms, tries)

    def request(self):
        return self._query

    def answer(self, data):
        return dns_answer(data, self._qid, self.name)


# ------------------------------------------------------------------ SNTP


def ntp_answer(data, origin):
    """Unix seconds from an SNTP server's reply to our request stamped `origin` (RFC 4330 §5).

    None when data is not that reply; ValueError for a reply that must not set the clock (kiss
    of death, unsynchronised server, zero time).
    """
    if len(data) < 48 or data[0] & 0x07 != 4 or data[24:32] != origin:  # mode 4: server
        return None
    if data[1] == 0:
        raise ValueError("kiss of death")
    if data[0] >> 6 == 3:
        raise ValueError("server not synchronised")
    seconds = struct.unpack("!I", data[40:44])[0]
    if seconds == 0:
        raise ValueError("no time in the reply")
    # Era 0 ends in 2036; after that the 32-bit count wraps (RFC 4330 §3): values below 2^31
    # then belong to era 1.
    if seconds < 0x80000000:
        seconds += 0x100000000
    return seconds - NTP_TO_UNIX_S


class TimeQuery(Exchange):
    """Unix time in seconds from the SNTP server at (ip, port)."""

    what = "NTP"

    def __init__(self, ip, port=NTP_PORT, timeout_ms=1000, tries=3):
        # A random transmit timestamp: the server echoes it as the originate timestamp, which
        # is how the reply is matched to this request (RFC 4330 §5).
        self._origin = struct.pack("!II", random.getrandbits(31) | 1, random.getrandbits(32))
        Exchange.__init__(self, ip, port, timeout_ms, tries)

    def request(self):
        return b"\x23" + bytes(39) + self._origin  # LI 0, version 4, mode 3 (client)

    def answer(self, data):
        return ntp_answer(data, self._origin)

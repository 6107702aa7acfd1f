# Siaga wire protocol v1 (docs/protocol.md): canonical JSON bodies in HMAC-SHA256 frames.
#
# This module runs unchanged on the board (MicroPython), in the Raspberry Pi agent, the fleet
# simulator and the gateway (CPython), so it uses only what both have: no hmac module (MicroPython
# lacks it), no floats in bodies (the ESP32 and RP2040 ports use single precision), no f-strings
# with format specs the device cannot parse.
import binascii
import hashlib

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


TAG = b"SG1."
MAC_HEX_LEN = const(64)
BODY_OFFSET = const(69)  # len(TAG) + MAC_HEX_LEN + len(b".")
MAX_FRAME = const(1024)
VERSION = const(1)
TOPIC_ROOT = "siaga/v1/dev/"

KINDS = ("general", "medical", "fire", "crime", "disaster")
# Ack states in rank order: a device never moves down this list for one alarm. "undelivered": the
# gateway holds the alarm but the command center refused it for good (protocol.md §4.4); an
# operator acting on it later still moves it on.
STATES = ("received", "undelivered", "acknowledged", "dispatched", "resolved", "false_alarm")

_BLOCK = const(64)  # SHA-256 block size in bytes


class Signer:
    """HMAC-SHA256 (RFC 2104) with one key, built on hashlib because MicroPython has no hmac.

    The padded keys are computed once; MicroPython's sha256 objects cannot be copied, so each MAC
    hashes the 64-byte pads again (two extra compression rounds, cheap next to the radio).
    """

    def __init__(self, key):
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key + bytes(_BLOCK - len(key))
        self._ipad = bytes([b ^ 0x36 for b in key])
        self._opad = bytes([b ^ 0x5C for b in key])

    def mac(self, data):
        inner = hashlib.sha256(self._ipad)
        inner.update(data)
        outer = hashlib.sha256(self._opad)
        outer.update(inner.digest())
        return outer.digest()

    def hexmac(self, data):
        return binascii.hexlify(self.mac(data))

    def seal(self, body):
        """Frame `body` (bytes): TAG, hex MAC over the body, '.', body."""
        # One join instead of three concatenations: each + copies the growing frame.
        return b"".join((TAG, self.hexmac(body), b".", body))

    def open(self, frame):
        """Return the body of a frame whose MAC matches, else None. Never parses before checking."""
        body = split_frame(frame)
        if body is None:
            return None
        if not equal(self.hexmac(body), bytes(frame[4:BODY_OFFSET - 1])):
            return None
        return body


def split_frame(frame):
    """Return the body bytes of a well-formed frame, or None. Does not check the MAC."""
    if len(frame) < BODY_OFFSET + 2 or len(frame) > MAX_FRAME:
        return None
    if bytes(frame[0:4]) != TAG or frame[BODY_OFFSET - 1] != 0x2E:  # '.'
        return None
    return bytes(frame[BODY_OFFSET:])


def equal(a, b):
    """Constant-time comparison of two byte strings of known, public length."""
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0


def secret_from_hex(text):
    key = binascii.unhexlify(text)
    if len(key) != 32:
        raise ValueError("device secret must be 32 bytes (64 hex characters)")
    return key


# ---------------------------------------------------------------- canonical JSON

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

# The encoder appends to one bytearray. MicroPython's str has the buffer protocol, so a string is
# copied straight in; CPython needs it encoded first. On the board this halves the garbage of
# encoding an alarm (1.9 -> 1.1 KiB measured on the unix port), which is made at the moment the
# heap is fullest (bench/firmware_memory.py).
try:
    bytearray().extend("x")

    def _utf8(s):
        return s

except TypeError:  # CPython

    def _utf8(s):
        return s.encode()


def _str(s, out):
    out.extend(b'"')
    start = 0
    for i in range(len(s)):
        c = s[i]
        if c in _ESCAPES or ord(c) < 0x20:
            if i > start:
                out.extend(_utf8(s[start:i]))
            esc = _ESCAPES.get(c)
            out.extend(_utf8(esc if esc is not None else "\\u%04x" % ord(c)))
            start = i + 1
    if start == 0:
        out.extend(_utf8(s))  # nothing escaped: the string itself (MicroPython copies even a full slice)
    elif start < len(s):
        out.extend(_utf8(s[start:]))
    out.extend(b'"')


def _value(v, out):
    if v is None:
        out.extend(b"null")
    elif v is True:
        out.extend(b"true")
    elif v is False:
        out.extend(b"false")
    elif isinstance(v, int):
        out.extend(_utf8(str(v)))
    elif isinstance(v, str):
        _str(v, out)
    elif isinstance(v, dict):
        out.extend(b"{")
        first = True
        for k in sorted(v):
            if not isinstance(k, str):
                raise ValueError("object keys must be strings")
            if not first:
                out.extend(b",")
            first = False
            _str(k, out)
            out.extend(b":")
            _value(v[k], out)
        out.extend(b"}")
    elif isinstance(v, (list, tuple)):
        out.extend(b"[")
        for i in range(len(v)):
            if i:
                out.extend(b",")
            _value(v[i], out)
        out.extend(b"]")
    else:
        # Floats included: see the module comment.
        raise ValueError("cannot encode %s in a Siaga body" % type(v).__name__)


def encode(obj):
    """Canonical JSON bytes of `obj` (sorted keys, no spaces, raw UTF-8); protocol.md §3."""
    out = bytearray()
    _value(obj, out)
    return bytes(out)


# ---------------------------------------------------------------- topics and bodies


def valid_device_id(dev):
    if not isinstance(dev, str) or not 3 <= len(dev) <= 32:
        return False
    for i in range(len(dev)):
        c = dev[i]
        if not ("a" <= c <= "z" or "0" <= c <= "9" or (c == "-" and i > 0)):
            return False
    return True


def topic(dev, suffix):
    return TOPIC_ROOT + dev + "/" + suffix


def alarm_body(dev, seq, kind, loc, test=False, up_ms=0, ts=None):
    if kind not in KINDS:
        raise ValueError("unknown emergency kind")
    return {
        "v": VERSION,
        "type": "alarm",
        "dev": dev,
        "seq": seq,
        "kind": kind,
        "test": bool(test),
        "loc": loc,
        "up": up_ms,
        "ts": ts,
    }


def status_body(dev, seq, fw, every_s, bat_mv=None, rssi=None, tamper=False, outbox=0, up_ms=0, cfg=0,
                cfg_bad=None, board=None):
    """cfg: the version of the remote configuration applied (0: none); cfg_bad: the last version
    refused, or None (protocol.md §10); board: "esp32", "picow" or "unix", so that the gateway
    knows which bundle the button takes (§11; a host without a board, the fleet simulator, leaves
    it out)."""
    body = {
        "v": VERSION,
        "type": "status",
        "dev": dev,
        "seq": seq,
        "bat": bat_mv,
        "rssi": rssi,
        "fw": fw,
        "tamper": bool(tamper),
        "outbox": outbox,
        "up": up_ms,
        "every": every_s,
        "cfg": cfg,
        "cfg_bad": cfg_bad,
    }
    if board is not None:
        body["board"] = board
    return body


# The highest remote configuration version (protocol.md §10): it fits a signed 32-bit field.
CONFIG_VER_MAX = 2147483647


# Updates over the air (protocol.md §11).
OTA_STATES = ("downloading", "refused", "installed", "confirmed", "rolled_back", "current")
OTA_DETAIL_MAX = 64


def ota_get_body(dev, bundle_id, off, n):
    return {"v": VERSION, "type": "ota_get", "dev": dev, "id": bundle_id, "off": off, "n": n}


def ota_status_body(dev, seq, bundle_id, version, state, detail, fw):
    return {"v": VERSION, "type": "ota_status", "dev": dev, "seq": seq, "id": bundle_id, "version": version,
            "state": state, "detail": detail[:OTA_DETAIL_MAX], "fw": fw}


def ota_data(dev, bundle_id, off, data):
    """The body of an ota/data frame: the canonical JSON header, a newline, the chunk's bytes."""
    return b"".join((encode({"dev": dev, "id": bundle_id, "off": off, "type": "ota_data", "v": VERSION}), b"\n",
                     bytes(data)))


def split_ota_data(body):
    """(header bytes, chunk as a memoryview) of an ota/data body, or None without the newline."""
    i = body.find(b"\n")
    if i < 0:
        return None
    return body[:i], memoryview(body)[i + 1:]


def will_body(dev, seq):
    return {"v": VERSION, "type": "will", "dev": dev, "seq": seq}


def ack_body(dev, seq, state, inc=None, gts=0):
    if state not in STATES:
        raise ValueError("unknown ack state")
    return {"v": VERSION, "type": "ack", "dev": dev, "seq": seq, "state": state, "inc": inc, "gts": gts}


def state_rank(state):
    """Rank of an ack state (higher is further along), -1 for anything unknown."""
    for i in range(len(STATES)):
        if STATES[i] == state:
            return i
    return -1


def location(lat_e6, lon_e6, addr="", area=""):
    return {"lat_e6": int(lat_e6), "lon_e6": int(lon_e6), "addr": addr, "area": area}


def parse_degrees_e6(text):
    """'-6.175392' -> -6175392 without floats, so the board and the gateway agree to the digit."""
    text = text.strip()
    neg = text.startswith("-")
    if neg or text.startswith("+"):
        text = text[1:]
    parts = text.split(".", 1)  # str.partition is missing from some board builds
    whole = parts[0]
    frac = parts[1] if len(parts) > 1 else ""
    if not whole.isdigit() or (frac and not frac.isdigit()) or len(frac) > 6:
        raise ValueError("coordinate must be decimal degrees with at most 6 decimals")
    value = int(whole) * 1000000 + int((frac + "000000")[:6])
    return -value if neg else value

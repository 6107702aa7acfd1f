# Siaga SMS format v1 (docs/protocol.md §9): an alarm, a backup-path test and an acknowledgement,
# each one line of text that fits a single SMS and is signed with the device secret.
#
# Pure and shared, like proto.py: the button (MicroPython), the Raspberry Pi agent and the gateway
# (CPython) run this same module. Every character is in the GSM 03.38 default alphabet (3GPP TS
# 23.038 §6.2.1) and in ASCII, so a modem in text mode carries it unchanged and one message holds
# 160 of them; the longest line here is 124.
#
#   SG1A <dev> <seq> <kind> <test> <lat_e6> <lon_e6> <ts> <mac>     alarm, button -> gateway
#   SG1T <dev> <seq> <mac>                                          test, button -> gateway
#   SG1K <dev> <seq> <state> <gts> <mac>                            ack, gateway -> button
#
# <mac> is the first 16 bytes of HMAC-SHA256(secret, everything before the space that precedes it),
# in lowercase hex. 128 bits is the truncation RFC 2104 §5 allows (at least half the hash, and at
# least 80 bits) and leaves room in the message for a 32-character device id.
from siagafw import proto

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


MAC_CHARS = const(32)
MAX_TEXT = const(160)        # one SMS of the GSM 7-bit default alphabet (TS 23.038 §6.1.2.1)
SEQ_MAX = const(2147483647)  # as the JSON bodies (siaga/contract.py)
TIME_MAX = const(4294967295)
TEST_STATE = "test"          # the state of the ack that answers a test SMS

ALARM = "SG1A"
TEST = "SG1T"
ACK = "SG1K"
_FIELDS = {ALARM: 9, TEST: 4, ACK: 6}   # including the tag and the MAC

# Why a text was refused (open() gives None, why() one of these, with detail after ": ").
NOT_SIAGA = "not a Siaga SMS"
MALFORMED = "malformed"
BAD_SIGNATURE = "bad signature"


def _sign(signer, fields):
    text = " ".join(fields)
    return text + " " + signer.hexmac(text.encode())[:MAC_CHARS].decode()


def alarm_text(signer, dev, seq, kind, test, lat_e6, lon_e6, ts):
    if kind not in proto.KINDS:
        raise ValueError("unknown emergency kind")
    return _sign(signer, (ALARM, dev, str(seq), kind, "1" if test else "0", str(lat_e6), str(lon_e6),
                          "-" if ts is None else str(ts)))


def test_text(signer, dev, seq):
    return _sign(signer, (TEST, dev, str(seq)))


def ack_text(signer, dev, seq, state, gts_s):
    if state != TEST_STATE and proto.state_rank(state) < 0:
        raise ValueError("unknown ack state")
    return _sign(signer, (ACK, dev, str(seq), state, str(gts_s)))


def _split(text):
    """The fields of a text shaped like a Siaga SMS, or None. Checks shape only."""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        return None
    fields = text.split(" ")
    n = _FIELDS.get(fields[0])
    if n is None or len(fields) != n:
        return None
    return fields


def device_of(text):
    """The device id a text claims to come from (to look its secret up), or None. Not verified."""
    fields = _split(text)
    if fields is None or not proto.valid_device_id(fields[1]):
        return None
    return fields[1]


def _digits(text):
    """Only 0-9 (str.isdigit would take other scripts' digits too, and int() would read them)."""
    for c in text:
        if not "0" <= c <= "9":
            return False
    return len(text) > 0


def _int(text, low, high):
    """A decimal integer in low..high written the one canonical way (no +, no leading zeros)."""
    digits = text[1:] if text.startswith("-") else text
    if not _digits(digits) or (len(digits) > 1 and digits[0] == "0") or len(digits) > 10 or text == "-0":
        raise ValueError(text[:12])
    value = int(text)
    if not low <= value <= high:
        raise ValueError(text)
    return value


def _hex_mac(text):
    if len(text) != MAC_CHARS:
        return False
    for c in text:
        if not ("0" <= c <= "9" or "a" <= c <= "f"):
            return False
    return True


def _check(signer, text):
    """(fields, None) for a text whose MAC matches, else (None, reason)."""
    fields = _split(text)
    if fields is None:
        return None, NOT_SIAGA
    mac = fields[-1]
    if not _hex_mac(mac) or not proto.valid_device_id(fields[1]):
        return None, MALFORMED + ": device id or MAC"
    signed = text[:len(text) - MAC_CHARS - 1]
    try:
        data = signed.encode()
    except UnicodeError:
        return None, MALFORMED + ": not text"
    if not proto.equal(signer.hexmac(data)[:MAC_CHARS], mac.encode()):
        return None, BAD_SIGNATURE
    return fields, None


def _parse(fields):
    tag = fields[0]
    seq = _int(fields[2], 0, SEQ_MAX)
    out = {"dev": fields[1], "seq": seq}
    if tag == ALARM:
        kind = fields[3]
        if kind not in proto.KINDS or fields[4] not in ("0", "1"):
            raise ValueError("kind or test flag")
        out["type"] = "alarm"
        out["kind"] = kind
        out["test"] = fields[4] == "1"
        out["lat_e6"] = _int(fields[5], -90000000, 90000000)
        out["lon_e6"] = _int(fields[6], -180000000, 180000000)
        out["ts"] = None if fields[7] == "-" else _int(fields[7], 0, TIME_MAX)
    elif tag == TEST:
        out["type"] = "test"
    else:
        state = fields[3]
        if state != TEST_STATE and proto.state_rank(state) < 0:
            raise ValueError("state")
        out["type"] = "ack"
        out["state"] = state
        out["gts"] = _int(fields[4], 0, TIME_MAX)
    return out


def open(signer, text):  # noqa: A001 - the name proto.Signer.open uses for the same idea
    """The verified content of a Siaga SMS as a dict (the module comment lists the fields), or None."""
    fields, _ = _check(signer, text)
    if fields is None:
        return None
    try:
        return _parse(fields)
    except ValueError:
        return None


def why(signer, text):
    """Why open() refuses `text` (for an audit entry), or None if it does not."""
    fields, reason = _check(signer, text)
    if fields is None:
        return reason
    try:
        _parse(fields)
    except ValueError as exc:
        return MALFORMED + ": " + str(exc)[:40]
    return None

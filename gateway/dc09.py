"""SIA DC-09 to an alarm receiving centre (ARC): the gateway reports like an alarm panel.

ANSI/SIA DC-09 ("Internet Protocol Event Reporting", 2013 and 2021) is how alarm panels report to
the receivers of monitoring centres over TCP. Each event is one message; the receiver answers ACK
(taken), NAK (refused: bad CRC, timestamp out of its window, unknown account) or DUH (understood
but not supported). A message carries Contact ID (SIA DC-05, token "ADM-CID") or SIA DC-03/DC-04
codes (token "SIA-DCS"). docs/integration-dc09.md is the guide for an ARC's technicians.

Message (DC-09 §5.5), in ASCII:

    <LF><crc><0LLL>"<id>"<seq>[R<rcvr>]L<pref>#<acct>[<data>]<extended data><_HH:MM:SS,MM-DD-YYYY><CR>

- crc: CRC-16/ARC (polynomial 0x8005 reflected, initial value 0), 4 uppercase hex digits, over
  everything from the opening quote of <id> to the end of the timestamp (the <CR> excluded).
- 0LLL: the length of that same part, "0" and 3 hex digits.
- id: "ADM-CID", "SIA-DCS" or "NULL" (link test); "*ADM-CID" and so on when encrypted.
- seq: 0001-9999, the next number for each new message, wrapping to 0001; a message sent again
  (no answer, NAK) keeps its number, so a receiver that already has it can recognise it.
- R<rcvr> (optional) and L<pref>: receiver and line prefix numbers, 1-6 hex digits each, as the ARC
  assigns them. #<acct>: the account, 3-16 hex digits.
- data: "#<acct>|<event>"; the timestamp is the time of sending, in UTC.

Encrypted (a key is set): the header up to "[" stays in clear, so the receiver can pick the
account's key; everything after "[" is replaced by the hex of its AES-CBC encryption (128, 192
or 256-bit key, all-zero IV) after random padding: <pad>|<data>]<extended data>_<timestamp>, the
pad being 1-16 random characters other than "|", "[" and "]" that make the length a multiple of
16. The ACK to an encrypted message must be encrypted with the same key; a clear ACK to one is not
accepted (anyone on the path could send it).

Contact ID event: "<q><eee> <gg> <ccc>": q = 1 new event, 3 restore (6, "still present", is not
used); eee the event code; gg the partition (area); ccc the zone, which is the button. SIA event:
"Nri<area>/<code><zone>".

Mapping (alarms are momentary presses: they have no restore):

| Siaga event                 | Contact ID (q eee)                | SIA code        |
|-----------------------------|-----------------------------------|-----------------|
| alarm general               | 1 120 Panic                       | PA              |
| alarm medical               | 1 100 Medical                     | MA              |
| alarm fire                  | 1 110 Fire                        | FA              |
| alarm crime                 | 1 122 Silent panic                | HA (holdup)     |
| alarm disaster              | 1 101 Personal emergency          | QA (emergency)  |
| alarm with test: true       | 1 601 Manual trigger test report  | RX              |
| fault offline / cleared     | 1 381 / 3 381 Loss of supervision | UY / UJ         |
| fault low_battery / cleared | 1 384 / 3 384 RF low battery      | XT / XR         |
| fault tamper / cleared      | 1 383 / 3 383 Sensor tamper       | TA / TR         |
| fault bad_message / cleared | 1 380 / 3 380 Sensor trouble      | YX / YZ         |
| fault undelivered / cleared | 1 354 / 3 354 Fail to communicate | YC / YK         |
| fault on_backup_path        | 1 351 / 3 351 Telco 1 fault       | LT / LR         |
| fault backup_path_down      | 1 352 / 3 352 Telco 2 fault       | YS / YK         |
| state (any)                 | not sent                          | not sent        |

Why: a person pressing "crime" reports a crime in progress, the case ARCs handle as a holdup or
duress alarm (police at once, no call to the place that could put the caller at risk); burglary
codes mean an intrusion sensor of an armed building, which ARCs often verify by calling first.
"Disaster" asks for help that is neither medical, fire nor police: the emergency-assistance pair
(101 / QA), which ARCs treat as life safety, rather than 140/150, which are sensor catch-alls
often handled at low priority. A button is a wireless sensor of the gateway, so its faults use the
wireless-sensor troubles (381, 383, 384). A test press is a manual test report whatever its kind.
State changes (acknowledged, dispatched, false alarm...) come from another centre's operators; an
ARC runs its own operator workflow and has no message for them, and a cancel (406) would let
another organisation stop the ARC's response, so they are taken without sending anything.

Accounts: each button reports under an account (`accounts`, device id -> account); a button
without one gets a stable account made from its id (the first `account_length` hex digits of its
SHA-256) or, with account_default "refuse", is refused. Several buttons may share an account with
different zones (one account per site). The link tests (NULL messages, every `link_test_s` when
nothing else was sent) go under `gateway_account`, derived from the gateway id when empty.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import hashlib
import json
import logging
import math
import re
import secrets
import string
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .adapters import Accepted, Failed, Outcome
from .store import OutboundEvent

log = logging.getLogger(__name__)

FORMATS = ("ADM-CID", "SIA-DCS")
ACCOUNT_DEFAULTS = ("derive", "refuse")
SEQ_MAX = 9999
FRAME_MAX = 0xFFF  # the length field has three hex digits
ANSWER_MAX = 4096  # bytes read before an answer without <CR> counts as garbage
_SEQS_KEPT = 4096  # event ids whose sequence number a retry reuses

_HEX = re.compile(r"[0-9A-Fa-f]+")
_TIMESTAMP = "%H:%M:%S,%m-%d-%Y"
_PAD_CHARS = string.ascii_letters + string.digits  # never "|", "[" or "]"


# ---- codes ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Report:
    """What one event says: the Contact ID code and qualifier, and the SIA code."""
    cid: int
    restore: bool  # Contact ID qualifier 3 instead of 1
    sia: str


@dataclass(frozen=True, slots=True)
class _Pair:
    cid: int
    sia: str
    sia_restore: str


_ALARMS: Mapping[str, _Pair] = MappingProxyType({
    "general": _Pair(120, "PA", ""),
    "medical": _Pair(100, "MA", ""),
    "fire": _Pair(110, "FA", ""),
    "crime": _Pair(122, "HA", ""),
    "disaster": _Pair(101, "QA", ""),
})
_TEST = _Pair(601, "RX", "")
_FAULTS: Mapping[str, _Pair] = MappingProxyType({
    "offline": _Pair(381, "UY", "UJ"),
    "low_battery": _Pair(384, "XT", "XR"),
    "tamper": _Pair(383, "TA", "TR"),
    "bad_message": _Pair(380, "YX", "YZ"),
    "undelivered": _Pair(354, "YC", "YK"),
    # The button's two paths (docs/protocol.md §9): the first (IP) path lost while the SMS path
    # still carries it is a fault of communication path 1; the SMS path itself failing, of path 2.
    "on_backup_path": _Pair(351, "LT", "LR"),
    "backup_path_down": _Pair(352, "YS", "YK"),
})


def report_for(kind: str, body: Mapping[str, Any]) -> Report | None:
    """The report of one outbox event; None for an event that is not sent (a state change).
    ValueError for an alarm kind or fault this module has no code for."""
    if kind == "state":
        return None
    if kind == "alarm":
        if body.get("test"):
            return Report(_TEST.cid, False, _TEST.sia)
        pair = _ALARMS.get(str(body.get("kind")))
        if pair is None:
            raise ValueError(f"no DC-09 code for alarm kind {body.get('kind')!r}")
        return Report(pair.cid, False, pair.sia)
    if kind == "fault":
        pair = _FAULTS.get(str(body.get("fault")))
        if pair is None:
            raise ValueError(f"no DC-09 code for fault {body.get('fault')!r}")
        active = bool(body.get("active", True))
        return Report(pair.cid, not active, pair.sia if active else pair.sia_restore)
    raise ValueError(f"no DC-09 message for outbox events of kind {kind!r}")


def event_data(fmt: str, account: str, report: Report, partition: int, zone: int) -> str:
    """The data block's content (without its brackets) in Contact ID or SIA form."""
    if fmt == "ADM-CID":
        return f"#{account}|{3 if report.restore else 1}{report.cid:03d} {partition:02d} {zone:03d}"
    return f"#{account}|Nri{partition}/{report.sia}{zone:03d}"


def location_xdata(body: Mapping[str, Any]) -> str:
    """DC-09 extended data with the button's place: [X<longitude>][Y<latitude>] in decimal degrees;
    empty when the event has no place."""
    loc = body.get("location")
    if not isinstance(loc, Mapping):
        return ""
    lat, lon = loc.get("lat"), loc.get("lon")
    if not isinstance(lat, int | float) or not isinstance(lon, int | float):
        return ""
    return f"[X{lon:.6f}][Y{lat:.6f}]"


# ---- frames --------------------------------------------------------------------------------------

def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/ARC, the CRC of DC-09 (and DC-07): polynomial 0x8005 bit-reversed (0xA001), initial
    value 0, no final XOR. crc16(b"123456789") == 0xBB3D."""
    crc = 0
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def timestamp(at_s: float) -> str:
    """DC-09 timestamp of a Unix time, in UTC: 03:12:09,11-24-2026."""
    return time.strftime(_TIMESTAMP, time.gmtime(at_s))


def _aes(key: bytes) -> Cipher[modes.CBC]:
    return Cipher(algorithms.AES(key), modes.CBC(bytes(16)))


def encrypt(key: bytes, text: str, pad: str | None = None) -> str:
    """Hex of the AES-CBC encryption of <pad>|<text>; `pad` only for known-answer tests."""
    body = "|" + text
    if pad is None:
        pad = "".join(secrets.choice(_PAD_CHARS) for _ in range(16 - len(body) % 16))
    plain = (pad + body).encode("ascii")
    if len(plain) % 16:
        raise ValueError("padding leaves the text short of a whole number of AES blocks")
    encryptor = _aes(key).encryptor()
    return (encryptor.update(plain) + encryptor.finalize()).hex().upper()


def decrypt(key: bytes, hex_text: str) -> str:
    """The text of an encrypted block (padding included); ValueError if it is not one."""
    raw = bytes.fromhex(hex_text)
    if not raw or len(raw) % 16:
        raise ValueError("encrypted block is not a whole number of AES blocks")
    decryptor = _aes(key).decryptor()
    return (decryptor.update(raw) + decryptor.finalize()).decode("ascii")


def build_frame(token: str, seq: int, account: str, data: str, *, at_s: float, receiver: str = "",
                line_prefix: str = "0", key: bytes | None = None, extended: str = "",
                pad: str | None = None) -> bytes:
    """One DC-09 message: `data` is the data block's content ("" for a NULL message), `extended`
    the extended data blocks, `at_s` the time it is sent (Unix seconds)."""
    if not 1 <= seq <= SEQ_MAX:
        raise ValueError(f"sequence number {seq} is outside 1-{SEQ_MAX}")
    rest = f"{data}]{extended}_{timestamp(at_s)}"
    head = f'{seq:04d}{"R" + receiver if receiver else ""}L{line_prefix}#{account}['
    body = f'"{token}"{head}{rest}' if key is None else f'"*{token}"{head}{encrypt(key, rest, pad)}'
    raw = body.encode("ascii")
    if len(raw) > FRAME_MAX:
        raise ValueError(f"message of {len(raw)} characters is longer than DC-09 allows ({FRAME_MAX})")
    return b"\n%04X%04X%s\r" % (crc16(raw), len(raw), raw)


# ---- answers -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Answer:
    token: str              # ACK, NAK, DUH or RSP
    encrypted: bool
    seq: int | None         # None in a bare answer ("NAK" alone, as some receivers send)
    account: str | None
    data: str               # everything after "[": hex when encrypted
    at_s: float | None      # the receiver's clock, when the answer carries a clear timestamp


_BARE = re.compile(r'"(\*?)(ACK|NAK|DUH|RSP)"')
_FRAMED = re.compile(r"([0-9A-Fa-f]{4})([0-9A-Fa-f]{4})(\".*)", re.S)
# Between the sequence number and "[" come the receiver and line fields (or "R0L0A0" in a NAK);
# they are not checked: some receivers write them oddly, and the account and number suffice.
_BODY = re.compile(r'"(\*?)(ACK|NAK|DUH|RSP)"(\d{4})?[^\[#]*(?:#([0-9A-Fa-f]{3,16}))?\[(.*)', re.S)
_AT_END = re.compile(r"_(\d\d:\d\d:\d\d,\d\d-\d\d-\d{4})$")


def _parse_timestamp(text: str) -> float | None:
    """Unix time of the DC-09 timestamp ending `text` (UTC), or None."""
    match = _AT_END.search(text)
    if match is None:
        return None
    try:
        return float(calendar.timegm(time.strptime(match.group(1), _TIMESTAMP)))
    except ValueError:
        return None


def parse_answer(raw: bytes) -> Answer:
    """A receiver's answer without its <CR>; ValueError when it is not a DC-09 answer or its CRC or
    length is wrong."""
    text = raw.decode("ascii").strip("\n\r\0 ")
    bare = _BARE.fullmatch(text)
    if bare:
        return Answer(bare.group(2), bool(bare.group(1)), None, None, "", None)
    framed = _FRAMED.fullmatch(text)
    if framed is None:
        raise ValueError(f"not a DC-09 answer: {text[:60]!r}")
    body = framed.group(3)
    if int(framed.group(1), 16) != crc16(body.encode("ascii")):
        raise ValueError("answer with a wrong CRC")
    if int(framed.group(2), 16) != len(body):
        raise ValueError("answer with a wrong length")
    match = _BODY.fullmatch(body)
    if match is None:
        raise ValueError(f"not a DC-09 answer: {body[:60]!r}")
    encrypted, token, seq, account, data = match.groups()
    return Answer(token, bool(encrypted), int(seq) if seq else None, account.upper() if account else None, data,
                  None if encrypted else _parse_timestamp(data))


def encrypted_answer_ok(key: bytes, data: str) -> bool:
    """An encrypted ACK's block must decrypt under our key to text ending "]<x-data>_<timestamp>"."""
    hex_part = _HEX.match(data)
    if hex_part is None:
        return False
    try:
        text = decrypt(key, hex_part.group(0))
    except ValueError:
        return False
    return "]" in text and _AT_END.search(text) is not None


# ---- settings ------------------------------------------------------------------------------------

def _hex_field(value: str, low: int, high: int) -> bool:
    return low <= len(value) <= high and _HEX.fullmatch(value) is not None


def derive_account(name: str, length: int) -> str:
    """A stable account made from a device or gateway id: the first `length` hex digits of its
    SHA-256, uppercase."""
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:length].upper()


def key_from_hex(text: str) -> bytes:
    """An AES key written as 32, 48 or 64 hex digits (128, 192, 256 bits)."""
    cleaned = text.strip()
    if len(cleaned) not in (32, 48, 64) or _HEX.fullmatch(cleaned) is None:
        raise ValueError("key: must be 32, 48 or 64 hex digits (an AES key of 128, 192 or 256 bits)")
    return bytes.fromhex(cleaned)


@dataclass(frozen=True, slots=True)
class Dc09Settings:
    """One DC-09 receiver. `format` is "ADM-CID" (Contact ID) or "SIA-DCS"; `receiver` and
    `line_prefix` are the R and L numbers the ARC gives (hex; receiver "" leaves R out). `key`
    (already loaded, 16, 24 or 32 bytes) turns on encryption. `accounts` maps device ids to
    accounts; a device without one gets a derived account of `account_length` hex digits
    (account_default "derive") or is refused ("refuse"). `zones` maps device ids to zone numbers
    (1 when absent), `partition` is the area of every button. `gateway_account` is the account of
    the link tests (derived from the gateway id when empty). `location` adds the button's place as
    extended data. `timeout_s` bounds the connection and the wait for each answer; `link_test_s` is
    the idle time after which a NULL message tests the link (0: never)."""

    host: str
    port: int
    format: str = "ADM-CID"
    receiver: str = ""
    line_prefix: str = "0"
    key: bytes | None = None
    accounts: Mapping[str, str] = field(default_factory=dict)
    account_default: str = "derive"
    account_length: int = 10
    gateway_account: str = ""
    zones: Mapping[str, int] = field(default_factory=dict)
    partition: int = 1
    location: bool = False
    timeout_s: float = 10.0
    link_test_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.host.strip():
            raise ValueError("host: must not be empty")
        if isinstance(self.port, bool) or not 1 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} is not a TCP port (1-65535)")
        if self.format not in FORMATS:
            raise ValueError(f"format: {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.receiver and not _hex_field(self.receiver, 1, 6):
            raise ValueError(f"receiver: {self.receiver!r} must be 1-6 hex digits, or empty for none")
        if not _hex_field(self.line_prefix, 1, 6):
            raise ValueError(f"line_prefix: {self.line_prefix!r} must be 1-6 hex digits")
        if self.key is not None and len(self.key) not in (16, 24, 32):
            raise ValueError(f"key: {len(self.key)} bytes; an AES key has 16, 24 or 32")
        for device, account in self.accounts.items():
            if not device or not _hex_field(account, 3, 16):
                raise ValueError(f"accounts: {device!r} = {account!r}: an account is 3-16 hex digits")
        if self.account_default not in ACCOUNT_DEFAULTS:
            raise ValueError(f"account_default: {self.account_default!r} is not one of {', '.join(ACCOUNT_DEFAULTS)}")
        if isinstance(self.account_length, bool) or not 3 <= self.account_length <= 16:
            raise ValueError(f"account_length: {self.account_length} is outside 3-16")
        if self.gateway_account and not _hex_field(self.gateway_account, 3, 16):
            raise ValueError(f"gateway_account: {self.gateway_account!r} must be 3-16 hex digits")
        if self.account_default == "refuse" and self.link_test_s > 0 and not self.gateway_account:
            raise ValueError("gateway_account: needed for the link tests when account_default is \"refuse\"")
        for device, zone in self.zones.items():
            if isinstance(zone, bool) or not isinstance(zone, int) or not 1 <= zone <= 999:
                raise ValueError(f"zones: {device!r} = {zone!r}: a zone is 1-999")
        if isinstance(self.partition, bool) or not 0 <= self.partition <= 99:
            raise ValueError(f"partition: {self.partition} is outside 0-99")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"timeout_s: {self.timeout_s} must be a positive number of seconds")
        if not (math.isfinite(self.link_test_s) and self.link_test_s >= 0):
            raise ValueError(f"link_test_s: {self.link_test_s} must be 0 (off) or a positive number of seconds")
        accounts = {device: account.upper() for device, account in self.accounts.items()}
        owners: dict[tuple[str, int], str] = {}
        for device, account in sorted(accounts.items()):
            place = (account, self.zones.get(device, 1))
            if place in owners:
                raise ValueError(f"accounts: {owners[place]!r} and {device!r} both report as account {place[0]} "
                                 f"zone {place[1]}; give them different zones")
            owners[place] = device
        object.__setattr__(self, "accounts", MappingProxyType(accounts))
        object.__setattr__(self, "zones", MappingProxyType(dict(self.zones)))
        object.__setattr__(self, "gateway_account", self.gateway_account.upper())
        object.__setattr__(self, "receiver", self.receiver.upper())
        object.__setattr__(self, "line_prefix", self.line_prefix.upper())


# ---- the adapter ---------------------------------------------------------------------------------

class _LinkError(Exception):
    """The exchange failed on the connection (nothing, or nothing usable, came back)."""


class _Closed(_LinkError):
    """The receiver closed the connection before any byte of an answer."""


class Dc09Adapter:
    """Delivers outbox events to one DC-09 receiver over one persistent TCP connection, one message
    at a time: each event is taken when the receiver ACKs it. Link health, for metrics: `link_ok`
    (the last exchange got an answer and the last link test an ACK), `last_ack_s` (Unix time of the
    last ACK), `link_tests` and `link_failures` (NULL messages sent and not ACKed), `last_error`."""

    def __init__(self, settings: Dc09Settings, gateway_id: str) -> None:
        self.settings = settings
        self.gateway_account = settings.gateway_account or derive_account(gateway_id, settings.account_length)
        self.link_ok = False
        self.last_ack_s: float | None = None
        self.link_tests = 0
        self.link_failures = 0
        self.last_error: str | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._seq = 0
        self._seq_of: OrderedDict[str, int] = OrderedDict()
        self._offset_s = 0.0  # receiver clock minus ours, learnt from a NAK
        self._last_sent = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._owners: dict[tuple[str, int], str] = {
            (account, settings.zones.get(device, 1)): device for device, account in settings.accounts.items()}

    async def start(self) -> None:
        """Start the link tests: one at once, then one whenever nothing was sent for link_test_s."""
        if self._task is None and self.settings.link_test_s > 0:
            self._last_sent = time.monotonic() - self.settings.link_test_s
            self._task = asyncio.create_task(self._supervise(), name="dc09-link-test")

    async def aclose(self) -> None:
        self._closing = True
        task, self._task = self._task, None
        # Cancelled until it ends: Python 3.11's wait_for can swallow a cancellation that arrives
        # just as the connection it waits for is made or refused.
        while task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task}, timeout=0.1)
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("DC-09 link test loop ended: %r", task.exception())
        self._drop()

    async def deliver(self, events: list[OutboundEvent]) -> list[Outcome]:
        """One message per event, in order. At the first failure that may pass (no answer, NAK) the
        round stops and the rest wait for the next one, so the ARC gets them in order."""
        outcomes: list[Outcome] = []
        for i, event in enumerate(events):
            outcome = await self._deliver_one(event)
            outcomes.append(outcome)
            if isinstance(outcome, Failed) and outcome.retry and i + 1 < len(events):
                held = Failed(f"not sent: an earlier event of this round failed ({outcome.error})")
                outcomes += [held] * (len(events) - i - 1)
                break
        return outcomes

    async def link_test(self) -> bool:
        """Send one NULL message; True when the receiver ACKs it."""
        self.link_tests += 1
        seq = self._next_seq()
        try:
            answer = await self._exchange("NULL", seq, self.gateway_account, "", "")
            outcome = self._judge(answer, seq, self.gateway_account, "link test")
        except _LinkError as exc:
            outcome = Failed(str(exc))
        if isinstance(outcome, Accepted):
            return True
        self.link_failures += 1
        if self.link_ok or self.last_error != outcome.error:
            log.warning("DC-09 link test to %s:%d failed: %s", self.settings.host, self.settings.port, outcome.error)
        self.link_ok = False
        self.last_error = outcome.error
        return False

    # -- one event

    async def _deliver_one(self, event: OutboundEvent) -> Outcome:
        try:
            body = json.loads(event.body)
            report = report_for(event.kind, body)
        except ValueError as exc:
            return Failed(f"event {event.event_id}: {exc}", retry=False)
        if report is None:
            return Accepted(None)  # state changes are not sent (module docstring)
        place = self._place(event.device_id)
        if isinstance(place, Failed):
            return place
        account, zone = place
        s = self.settings
        data = event_data(s.format, account, report, s.partition, zone)
        extended = location_xdata(body) if s.location else ""
        seq = self._seq_for(event.event_id)
        what = f"event {event.event_id} (account {account}, {_describe(s.format, report)})"
        try:
            answer = await self._exchange(s.format, seq, account, data, extended)
            return self._judge(answer, seq, account, what)
        except _LinkError as exc:
            self.link_ok = False
            self.last_error = str(exc)
            return Failed(f"{what}: {exc}")
        except ValueError as exc:  # a message DC-09 cannot carry (too long): sending it again will not help
            return Failed(f"{what}: {exc}", retry=False)

    def _place(self, device_id: str) -> tuple[str, int] | Failed:
        """The device's account and zone."""
        s = self.settings
        zone = s.zones.get(device_id, 1)
        account = s.accounts.get(device_id)
        if account is not None:
            return account, zone
        if s.account_default == "refuse":
            return Failed(f"no DC-09 account for device {device_id}", retry=False)
        account = derive_account(device_id, s.account_length)
        owner = self._owners.setdefault((account, zone), device_id)
        if owner != device_id:
            return Failed(f"the DC-09 account {account} made for device {device_id} is already device {owner}'s "
                          f"(zone {zone}); give one of them an account in the settings", retry=False)
        return account, zone

    def _judge(self, answer: Answer, seq: int, account: str, what: str) -> Outcome:
        """The outcome of an answer; _LinkError when it is not an answer to this message."""
        key = self.settings.key
        if answer.token in ("ACK", "RSP"):
            if answer.seq != seq or (answer.account is not None and answer.account != account):
                raise self._broken(f"{answer.token} for another message (seq {answer.seq}, account "
                                   f"{answer.account}) to seq {seq:04d}")
            if key is not None and not (answer.encrypted and encrypted_answer_ok(key, answer.data)):
                raise self._broken(f"{answer.token} to an encrypted message that is not encrypted with our key")
            if key is None and answer.encrypted:
                raise self._broken(f"encrypted {answer.token} to a message in clear")
            self.link_ok = True
            self.last_ack_s = time.time()
            self.last_error = None
            return Accepted(None)
        self.link_ok = True  # the receiver answered: the link itself works
        if answer.token == "DUH":
            return Failed(f"{what}: the receiver answered DUH (it does not support this message or account)",
                          retry=False)
        return Failed(f"{what}: the receiver answered NAK (refused: unknown account, key, CRC or clock)")

    def _broken(self, error: str) -> _LinkError:
        self._drop()
        return _LinkError(error)

    # -- sequence numbers

    def _next_seq(self) -> int:
        self._seq = self._seq % SEQ_MAX + 1
        return self._seq

    def _seq_for(self, event_id: str) -> int:
        """The event's number: a new one the first time, the same one when it is sent again."""
        seq = self._seq_of.get(event_id)
        if seq is None:
            seq = self._seq_of[event_id] = self._next_seq()
            while len(self._seq_of) > _SEQS_KEPT:
                self._seq_of.popitem(last=False)
        else:
            self._seq_of.move_to_end(event_id)
        return seq

    # -- the connection

    async def _exchange(self, token: str, seq: int, account: str, data: str, extended: str) -> Answer:
        """Send one message and return the receiver's answer. Sent again once on a fresh connection
        when a kept connection turns out to be closed, and once with the receiver's time when a NAK
        shows our clock is off."""
        async with self._lock:
            try:
                return await self._exchange_locked(token, seq, account, data, extended)
            except BaseException:
                self._drop()
                raise

    async def _exchange_locked(self, token: str, seq: int, account: str, data: str, extended: str) -> Answer:
        s = self.settings
        fresh_tried = resynced = False
        kept_offset = self._offset_s
        while True:
            reused = self._writer is not None and not self._reader_done()
            self._last_sent = time.monotonic()  # before connecting: a refused connection is an attempt too
            reader, writer = await self._connect()
            frame = build_frame(token, seq, account, data, at_s=time.time() + self._offset_s, receiver=s.receiver,
                                line_prefix=s.line_prefix, key=s.key, extended=extended)
            try:
                writer.write(frame)
                await asyncio.wait_for(writer.drain(), s.timeout_s)
                raw = await self._read_answer(reader)
            except (_Closed, ConnectionError) as exc:
                self._drop()
                if reused and not fresh_tried:
                    fresh_tried = True
                    continue
                raise _LinkError(str(exc) or type(exc).__name__) from exc
            except TimeoutError as exc:
                raise self._broken(f"no answer within {s.timeout_s:g} s") from exc
            except OSError as exc:
                raise self._broken(f"{type(exc).__name__}: {exc}") from exc
            try:
                answer = parse_answer(raw)
            except ValueError as exc:
                raise self._broken(f"unreadable answer ({exc})") from exc
            if answer.token == "NAK" and answer.at_s is not None and not resynced:
                offset = answer.at_s - time.time()
                if abs(offset - self._offset_s) >= 2:
                    log.warning("DC-09 receiver %s:%d refused our time; its clock is %+.0f s from ours",
                                s.host, s.port, offset)
                    self._offset_s = offset
                    resynced = True
                    continue
            if resynced and answer.token not in ("ACK", "RSP"):
                self._offset_s = kept_offset  # a NAK is not authenticated: its time counts only if it works
            return answer

    def _reader_done(self) -> bool:
        return self._reader is None or self._reader.at_eof()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._writer is not None:
            if not self._reader_done() and not self._writer.is_closing():
                return self._reader, self._writer
            self._drop()
        s = self.settings
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(s.host, s.port), s.timeout_s)
        except TimeoutError as exc:
            raise _LinkError(f"no connection to {s.host}:{s.port} within {s.timeout_s:g} s") from exc
        except OSError as exc:
            raise _LinkError(f"no connection to {s.host}:{s.port}: {exc.strerror or exc}") from exc
        self._reader, self._writer = reader, writer
        return reader, writer

    async def _read_answer(self, reader: asyncio.StreamReader) -> bytes:
        """Bytes up to the answer's <CR> (or a bare "ACK"/"NAK"/"DUH" without framing)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.timeout_s
        buf = b""
        while True:
            chunk = await asyncio.wait_for(reader.read(512), max(0.0, deadline - loop.time()))
            if not chunk:
                if buf:
                    raise _LinkError("the receiver closed the connection in the middle of its answer")
                raise _Closed("the receiver closed the connection without answering")
            buf += chunk
            end = buf.find(b"\r")
            if end >= 0:
                if buf[end + 1:].strip():
                    self._drop()  # more than one answer: the next message starts on a clean connection
                return buf[:end]
            if _BARE.fullmatch(buf.decode("ascii", "replace")):
                return buf
            if len(buf) > ANSWER_MAX:
                raise _LinkError(f"no answer end within {ANSWER_MAX} bytes")

    def _drop(self) -> None:
        """Forget the connection at once (an abort: DC-09 has no goodbye)."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.transport.abort()

    async def _supervise(self) -> None:
        interval = self.settings.link_test_s
        while not self._closing:
            wait = self._last_sent + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            try:
                await self.link_test()
            except Exception:
                log.exception("DC-09 link test failed unexpectedly")
                self._last_sent = time.monotonic()


def _describe(fmt: str, report: Report) -> str:
    if fmt == "ADM-CID":
        return f"Contact ID {3 if report.restore else 1}{report.cid:03d}"
    return f"SIA {report.sia}"

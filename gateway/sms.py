"""The gateway's SMS path (issue 17): a GSM modem on a serial port, driven with AT commands in PDU mode.

What arrives is read from the modem's SIM storage and put on the gateway's intake queue as an
`Inbound` with topic "sms/<sender>" and the text as payload; the service verifies it like an MQTT
message (gateway/codec.py, decode_sms) and calls `ack(item)` once the batch it was in is
committed. Only then is the message deleted from the SIM (AT+CMGD): custody passes from the SIM to
the database, never through a gap, exactly as the MQTT link's PUBACK waits for the commit. A
gateway that stops or crashes finds the rest on the SIM at its next start (AT+CMGL=4, all stored
messages) and takes them again; an alarm taken twice is one alarm (dedup by device and seq).

The AT subset is that of 3GPP TS 27.005 (SMS) and TS 27.007 (general): one command at a time, each
answered by a final result code (OK, ERROR, +CME ERROR, +CMS ERROR; TS 27.007 §5.7 and §9.2, TS
27.005 §3.2.5) within a timeout. A modem that does not answer in time, or a port that goes away, ends
the session; the intake reconnects with backoff (logged, gauge `sms_modem_up`) and lists the SIM
again. Every `poll_s` seconds it also asks whether the modem is registered on the network (AT+CREG?)
and how strong the signal is (AT+CSQ): a modem that answers but has no network sends and receives
nothing. `status()` is that state, which the gateway's report carries to the command center
(gateway/liveness.py), where it is a room-wide fault: without the gateway's modem, every button
behind it has lost its backup path.

PDU mode (AT+CMGF=0, TS 27.005 §3.2.3) rather than text mode because only the PDU carries the user
data header (TS 23.040 §9.2.3.24) that says which parts make one concatenated message; text mode
hands the parts over as separate messages with no way to put them together.

Acks go back to the buttons through `send`, rate-limited (AckLimiter): SMS cost money and an SMS
centre throttles a sender that floods it, so at most one ack per device every ack_min_interval_s and
ack_per_hour per device, send_per_minute in all. Acks wait and coalesce rather than queue: when a
newer state for the same alarm comes while one waits, the older is dropped (the button only needs
the newest), counted in sms_acks_dropped_rate.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import re
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import serial
import serial_asyncio_fast

from .codec import RejectReason, sms_topic
from .config import SmsSettings
from .metrics import Metrics
from .mqtt import Inbound

with warnings.catch_warnings():
    # Importing gsmmodem.pdu runs the package's __init__, which imports gsmmodem.modem: its regular
    # expressions have invalid escape sequences, a DeprecationWarning (SyntaxWarning from Python
    # 3.12) when the file is compiled. Nothing of that module is used here.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", SyntaxWarning)
    from gsmmodem.pdu import Concatenation, decodeSmsPdu, encodeSmsSubmitPdu

log = logging.getLogger(__name__)

RECONNECT_FIRST_S = 1.0
RECONNECT_MAX_S = 60.0
# AT+CMGS waits for the network's answer, far longer than a local command: this many command timeouts
# (60 s by default; SIM800 and SIM7600 manuals give up to 60 s for it).
SEND_TIMEOUTS = 6
SEND_ATTEMPTS = 3         # an SMS the modem could not send (+CMS ERROR) is tried this often
SEND_RETRY_S = 30.0
WAITING_PER_DEVICE = 8    # acks of different alarms of one device waiting at once; beyond, the oldest go
READ_SIZE = 4096
LINE_MAX = 2048           # a longer "line" is noise on the port, not an answer
PARTS_MAX = 8             # incomplete multipart messages kept at once (buttons never send one)

AuditFn = Callable[[RejectReason, str | None, str, str], Awaitable[None]]

# TS 27.005 §3.4.1 +CMTI: <mem>,<index>; §3.4.2 +CMGL: <index>,<stat>,[<alpha>],<length> (PDU mode);
# §3.4.3 +CMGR: <stat>,[<alpha>],<length>; §3.2.2 +CPMS: <used1>,<total1>,...
_CMTI = re.compile(r'\+CMTI:\s*"?(\w*)"?\s*,\s*(\d+)')
_CMGL = re.compile(r"\+CMGL:\s*(\d+)\s*,\s*(\d+)")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_CMGR = re.compile(r"\+CMGR:\s*(\d+)")
_CPMS = re.compile(r"\+CPMS:\s*(?:\"\w*\"\s*,\s*)?(\d+)\s*,\s*(\d+)")
# TS 27.007 §7.2 +CREG: <n>,<stat>[,...] (the read command's answer); §8.5 +CSQ: <rssi>,<ber>.
_CREG = re.compile(r"\+CREG:\s*\d+\s*,\s*(\d+)")
_CSQ = re.compile(r"\+CSQ:\s*(\d+)\s*,")
# <stat> values that mean SMS can go: 1 home, 5 roaming, 6/7 "SMS only" (home/roaming), 9/10 "CSFB
# not preferred" (home/roaming). 0 (not searching), 2 (searching), 3 (denied), 4 (unknown) and
# 8 (emergency calls only) do not.
_REGISTERED = frozenset({1, 5, 6, 7, 9, 10})
RSSI_MAX = 31       # §8.5: 0 (-113 dBm or less) to 31 (-51 dBm or more); 99 is "not known"
_FINAL_ERRORS = ("ERROR", "+CME ERROR", "+CMS ERROR", "NO CARRIER")


def _pdu_after(lines: list[str], header: int) -> str | None:
    """The PDU that belongs to the +CMGL/+CMGR header at `header`: the next line of hex digits.
    An unsolicited line the modem puts in between (RING, an under-voltage warning, "SMS Ready"
    after a restart) is skipped; another header first means this one has no PDU."""
    for line in lines[header + 1:]:
        if _HEX.fullmatch(line):
            return line
        if line.startswith(("+CMGL:", "+CMGR:")):
            return None
    return None


def international(number: str, country_code: str) -> str:
    """A sender's number in E.164 form, as the registry keeps phones: "+6281..." stays, "006281..."
    (international prefix) and "081..." (national, TS 23.040 §9.1.2.5 type of number "national")
    gain the country code, and digits that start with it (type "unknown") gain the "+". An
    alphanumeric sender (an operator's name) stays as it is, and matches no phone."""
    if number.startswith("+") or not number.isdigit() or not number.isascii():
        return number
    if number.startswith("00"):
        return "+" + number[2:]
    if number.startswith("0"):
        return "+" + country_code + number[1:]
    if number.startswith(country_code) and len(number) >= 10:
        return "+" + number
    return number


class ModemError(Exception):
    """The modem answered a command with an error result code."""


class ModemGone(Exception):
    """The modem stopped answering (timeout) or the port closed: the session ends, a new one starts."""


@dataclass(slots=True)
class _Parts:
    """The parts of one concatenated message seen so far (TS 23.040 §9.2.3.24.1)."""

    total: int
    first_ms: int
    texts: dict[int, str] = field(default_factory=dict)      # part number (1..total) -> text
    indices: list[int] = field(default_factory=list)         # their places in SIM storage


@dataclass(slots=True)
class _Ack:
    number: str
    text: str
    attempts: int = 0


class AckLimiter:
    """Which waiting SMS may go now. Pure: the caller supplies the time in milliseconds.

    Per device: at most one every `min_interval_ms` and `per_hour` in any hour; in all:
    `per_minute` in any minute. What may not go yet waits, one per alarm (the newest text replaces
    an older one for the same alarm: coalescing)."""

    def __init__(self, min_interval_ms: int, per_hour: int, per_minute: int) -> None:
        self.min_interval_ms = min_interval_ms
        self.per_hour = per_hour
        self.per_minute = per_minute
        self.waiting: dict[str, collections.OrderedDict[int, _Ack]] = {}
        self._sent: dict[str, collections.deque[int]] = {}   # device -> send times within the hour
        self._all: collections.deque[int] = collections.deque()

    def offer(self, device: str, seq: int, ack: _Ack) -> int:
        """Queue `ack`; how many waiting ones it dropped (replaced, or pushed out)."""
        queue = self.waiting.setdefault(device, collections.OrderedDict())
        dropped = int(queue.pop(seq, None) is not None)
        queue[seq] = ack
        while len(queue) > WAITING_PER_DEVICE:
            queue.popitem(last=False)
            dropped += 1
        return dropped

    def _allowed_at(self, device: str, now_ms: int) -> int:
        sent = self._sent.get(device)
        if not sent:
            return now_ms
        while sent and now_ms - sent[0] >= 3_600_000:
            sent.popleft()
        at = sent[-1] + self.min_interval_ms if sent else now_ms
        if len(sent) >= self.per_hour:
            at = max(at, sent[-self.per_hour] + 3_600_000)
        return max(at, now_ms)

    def take(self, now_ms: int) -> tuple[str, int, _Ack] | None:
        """The next SMS to send now (and count it as sent), or None."""
        while self._all and now_ms - self._all[0] >= 60_000:
            self._all.popleft()
        if len(self._all) >= self.per_minute:
            return None
        for device, queue in self.waiting.items():
            if queue and self._allowed_at(device, now_ms) <= now_ms:
                seq, ack = queue.popitem(last=False)
                if not queue:
                    del self.waiting[device]
                self._sent.setdefault(device, collections.deque()).append(now_ms)
                self._all.append(now_ms)
                return device, seq, ack
        return None

    def next_at(self, now_ms: int) -> int | None:
        """When `take` may next give something (ms), or None if nothing waits."""
        times = [self._allowed_at(d, now_ms) for d, q in self.waiting.items() if q]
        if not times:
            return None
        at = min(times)
        if len(self._all) >= self.per_minute:
            at = max(at, self._all[-self.per_minute] + 60_000)
        return at

    def put_back(self, device: str, seq: int, ack: _Ack) -> None:
        """An SMS that failed to go: it waits again unless a newer one for that alarm came meanwhile."""
        queue = self.waiting.setdefault(device, collections.OrderedDict())
        if seq not in queue:
            queue[seq] = ack
            queue.move_to_end(seq, last=False)

    def forget_idle(self, now_ms: int) -> None:
        """Drop the send history of devices quiet for an hour (bounded memory)."""
        for device in [d for d, s in self._sent.items() if not s or now_ms - s[-1] >= 3_600_000]:
            if device not in self.waiting:
                del self._sent[device]


class SenderFlood:
    """SMS per sender number per minute (fixed one-minute windows). Pure: the caller supplies the time.

    Checked before any HMAC work, so a number that floods the modem costs one dictionary lookup per
    message; `allow` says whether to take a message, `audit_due` whether the drop should be written
    to the audit log (once per sender per minute, with the count dropped since the last entry)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._windows: dict[str, list[int]] = {}   # sender -> [window start ms, taken, dropped, last audit ms]

    def allow(self, sender: str, now_ms: int) -> bool:
        w = self._windows.get(sender)
        if w is None:
            if len(self._windows) > 10_000:   # many senders: forget the quiet ones
                self._windows = {s: v for s, v in self._windows.items() if now_ms - v[0] < 120_000}
            w = self._windows[sender] = [now_ms, 0, 0, -60_000]
        if now_ms - w[0] >= 60_000:
            w[0], w[1] = now_ms, 0
        if w[1] < self.per_minute:
            w[1] += 1
            return True
        w[2] += 1
        return False

    def audit_due(self, sender: str, now_ms: int) -> int | None:
        """After a refused `allow`: the number dropped since the last audit entry, if one is due now."""
        w = self._windows[sender]
        if now_ms - w[3] < 60_000:
            return None
        dropped, w[2], w[3] = w[2], 0, now_ms
        return dropped


class SmsIntake:
    """The modem driver: reads SMS into the gateway's queue, deletes them once committed, sends acks."""

    def __init__(self, settings: SmsSettings, queue: asyncio.Queue[Inbound], *, metrics: Metrics,
                 audit: AuditFn, clock: Callable[[], int] | None = None) -> None:
        self.settings = settings
        self._queue = queue
        self.metrics = metrics
        self._audit = audit
        self.clock = clock or (lambda: int(time.time() * 1000))
        self.up = False                      # a session with the modem is set up (sms_modem_up)
        self.registered: bool | None = None  # on the network (AT+CREG?); None: not known (no session)
        self.signal: int | None = None       # AT+CSQ <rssi>, 0-31; None: not known
        self.since = self.clock()            # when `up` or `registered` last changed (ms)
        self.tried = False                   # the first session has been set up, or failed
        self.sessions = 0
        self.limiter = AckLimiter(int(settings.ack_min_interval_s * 1000), settings.ack_per_hour,
                                  settings.send_per_minute)
        self._lock = asyncio.Lock()          # one command at a time
        self._lines: list[str] = []          # the answer to the command in flight
        self._final: asyncio.Future[str] | None = None
        self._prompt: asyncio.Future[str] | None = None
        self._wake = asyncio.Event()         # new work: an indication, a deletion, an SMS to send
        self._indicated: collections.deque[int] = collections.deque()  # +CMTI indices to read
        self._known: set[int] = set()        # indices taken (in the pipeline or in _parts): not read again
        self._delete: set[int] = set()       # indices committed: delete from the SIM
        self._items: dict[int, tuple[int, ...]] = {}   # id() of an Inbound in the pipeline -> its indices
        self._parts: dict[tuple[str, int], _Parts] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._stopping = False

    # ------------------------------------------------------------ what the service calls

    def ack(self, item: Inbound) -> None:
        """The message is committed: delete it (all its parts) from the SIM."""
        indices = self._items.pop(id(item), ())
        if indices:
            self._delete.update(indices)
            self._wake.set()

    def send(self, number: str, text: str, *, device_id: str | None = None, seq: int = 0) -> None:
        """Queue an SMS (an ack) to `number`, rate-limited and coalesced per device and alarm."""
        dropped = self.limiter.offer(device_id or number, seq, _Ack(number, text))
        if dropped:
            self.metrics.inc("sms_acks_dropped_rate", dropped)
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def status(self) -> dict[str, bool | int | None]:
        """The modem's state for the gateway's report: `up` (a session is set up and the modem
        answers), `registered` (on the network, from the last AT+CREG?; None without a session or
        when the modem does not say), `signal` (AT+CSQ <rssi> 0-31, None when not known) and
        `since` (ms, when `up` or `registered` last changed)."""
        return {"up": self.up, "registered": self.registered, "signal": self.signal, "since": self.since}

    # ------------------------------------------------------------ sessions

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff; returns after stop()."""
        delay = RECONNECT_FIRST_S
        while not self._stopping:
            started = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(serial_asyncio_fast.open_serial_connection(
                    url=self.settings.port, baudrate=self.settings.baud), self.settings.command_timeout_s)
            except (OSError, serial.SerialException, TimeoutError, ValueError) as exc:
                self.tried = True
                log.warning("SMS modem on %s: cannot open the port (%s); trying again in %.0f s",
                            self.settings.port, exc, delay)
            else:
                try:
                    await self._session(reader, writer)
                except (ModemGone, ModemError, OSError, serial.SerialException, TimeoutError) as exc:
                    log.warning("SMS modem on %s: %s; reconnecting in %.0f s", self.settings.port,
                                exc or type(exc).__name__, delay)
                finally:
                    self._set_up(False)
                    self._fail_pending(ModemGone("session ended"))
                    self._writer = None
                    with contextlib.suppress(Exception):
                        writer.close()
                if time.monotonic() - started > 2 * RECONNECT_MAX_S:
                    delay = RECONNECT_FIRST_S   # it had been working: the next try comes soon
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped(), delay * random.uniform(0.8, 1.2))
            delay = min(RECONNECT_MAX_S, delay * 2)

    async def _stopped(self) -> None:
        while not self._stopping:
            self._wake.clear()
            await self._wake.wait()

    def _set_up(self, up: bool) -> None:
        self.tried = True
        if not up:
            self.signal = None
            self._set_registered(None)
        if up != self.up:
            self.up = up
            self.since = self.clock()
            if up:
                log.info("SMS modem on %s ready", self.settings.port)
            else:
                log.warning("SMS modem on %s down", self.settings.port)

    def _set_registered(self, registered: bool | None) -> None:
        if registered == self.registered:
            return
        if registered is False:
            log.warning("SMS modem on %s is not registered on the network: no SMS can come or go",
                        self.settings.port)
        elif registered and self.registered is False:
            log.info("SMS modem on %s registered on the network again", self.settings.port)
        self.registered = registered
        self.since = self.clock()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        # What was taken in an earlier session but not committed is read again from the SIM; what
        # is in the pipeline now stays known (its ack deletes it), parts are gathered afresh.
        # Committed ones waiting for deletion are deleted before the SIM is listed, never taken twice.
        self._known = {i for indices in self._items.values() for i in indices} | self._delete
        self._parts.clear()
        self._indicated.clear()
        listener = asyncio.create_task(self._listen(reader), name="sms-listen")
        try:
            await self._initialise()
            await self._check_network()
            self.sessions += 1
            self._set_up(True)
            await self._delete_committed()
            await self._list_stored()
            await self._serve(listener)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    async def _initialise(self) -> None:
        # A modem left in the middle of a PDU prompt by a previous session takes ESC as "cancel"
        # (TS 27.005 §3.5.1); then plain AT until it answers (SIM800 autobauds on the first "AT").
        assert self._writer is not None
        self._writer.write(b"\x1b\r")
        for _ in range(3):
            try:
                await self.command("AT", timeout_s=min(2.0, self.settings.command_timeout_s))
                break
            except (ModemGone, ModemError):
                continue
        else:
            raise ModemGone("no answer to AT")
        await self.command("ATE0")          # no echo: answers are only answers (ITU-T V.250 §6.2.4)
        with contextlib.suppress(ModemError):
            await self.command("AT+CMEE=1")  # numeric +CME ERROR codes (TS 27.007 §9.1)
        with contextlib.suppress(ModemError):
            # No unsolicited +CREG (TS 27.007 §7.2, n=0): registration is polled, and an unsolicited
            # line could fall between a +CMGL header and its PDU.
            await self.command("AT+CREG=0")
        await self.command("AT+CMGF=0")      # PDU mode (TS 27.005 §3.2.3)
        try:
            await self.command('AT+CPMS="SM","SM","SM"')   # read, write and receive on the SIM (§3.2.2)
        except ModemError:
            with contextlib.suppress(ModemError):
                await self.command('AT+CPMS="SM"')          # modems with one storage setting
        # +CMTI: "SM",<index> for each SMS stored on arrival (§3.4.1: mode 2, mt 1, no broadcasts,
        # no status reports, buffer flushed).
        await self.command("AT+CNMI=2,1,0,0,0")

    async def _serve(self, listener: asyncio.Task[None]) -> None:
        loop = asyncio.get_running_loop()
        polled = loop.time()
        while not self._stopping:
            if listener.done():
                raise ModemGone("the port closed")
            now = self.clock()
            while self._indicated:
                index = self._indicated.popleft()
                if index not in self._known:
                    await self._read_one(index)
            if self._delete:
                await self._delete_committed()
            await self._send_due(now)
            await self._expire_parts(now)
            if loop.time() - polled >= self.settings.poll_s:
                polled = loop.time()
                await self._poll()
            wait = self.settings.poll_s - (loop.time() - polled)
            next_send = self.limiter.next_at(self.clock())
            if next_send is not None:
                wait = min(wait, max(0.05, (next_send - self.clock()) / 1000))
            if self._parts:
                oldest = min(p.first_ms for p in self._parts.values())
                wait = min(wait, max(0.05, (oldest + self.settings.multipart_timeout_s * 1000 - now) / 1000))
            self._wake.clear()
            if self._indicated or self._delete:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.05, wait))
        if self._delete:
            await self._delete_committed()   # stopping: what the last commits took leaves the SIM

    # ------------------------------------------------------------ commands

    async def command(self, cmd: str, *, timeout_s: float | None = None, data: str | None = None) -> list[str]:
        """Send one command; its information lines, once the final result code OK came.

        Raises ModemError for an error result, ModemGone when nothing final comes in time. `data`:
        the PDU of AT+CMGS, written after the "> " prompt and ended with Ctrl-Z (TS 27.005 §3.5.1)."""
        async with self._lock:
            if self._writer is None:
                raise ModemGone("not connected")
            loop = asyncio.get_running_loop()
            self._lines = []
            final_f: asyncio.Future[str] = loop.create_future()
            prompt_f: asyncio.Future[str] | None = loop.create_future() if data is not None else None
            self._final, self._prompt = final_f, prompt_f
            timeout = timeout_s or self.settings.command_timeout_s
            try:
                self._writer.write(cmd.encode("ascii") + b"\r")
                async with asyncio.timeout(timeout):
                    if prompt_f is not None and data is not None:
                        done, _ = await asyncio.wait([prompt_f, final_f], return_when=asyncio.FIRST_COMPLETED)
                        if prompt_f in done and prompt_f.exception() is None:
                            self._writer.write(data.encode("ascii") + b"\x1a")
                    final = await final_f
            except TimeoutError:
                raise ModemGone(f"no answer to {cmd.split('=', maxsplit=1)[0]} within {timeout:g} s") from None
            finally:
                self._final = None
                self._prompt = None
            if final != "OK":
                raise ModemError(f"{cmd.split('=', maxsplit=1)[0]}: {final}")
            return self._lines

    def _fail_pending(self, exc: Exception) -> None:
        for fut in (self._final, self._prompt):
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    async def _listen(self, reader: asyncio.StreamReader) -> None:
        """Split what the modem sends into lines: answers for the command in flight, indications
        (+CMTI) for the serve loop. The "> " prompt has no line end (TS 27.005 §3.5.1)."""
        buffer = b""
        while True:
            try:
                chunk = await reader.read(READ_SIZE)
            except (OSError, serial.SerialException) as exc:   # the USB adapter was pulled, say
                chunk, gone = b"", exc
            else:
                gone = None
            if not chunk:
                self._fail_pending(ModemGone(f"the port closed ({gone})" if gone else "the port closed"))
                self._wake.set()
                return
            buffer += chunk
            while True:
                if self._prompt is not None and not self._prompt.done() and buffer.lstrip(b"\r\n").startswith(b">"):
                    buffer = buffer.lstrip(b"\r\n")[1:].lstrip(b" ")
                    self._prompt.set_result(">")
                    continue
                cut = min((i for i in (buffer.find(b"\r"), buffer.find(b"\n")) if i >= 0), default=-1)
                if cut < 0:
                    if len(buffer) > LINE_MAX:
                        buffer = b""
                    break
                line, buffer = buffer[:cut], buffer[cut + 1:]
                text = line.decode("ascii", "replace").strip()
                if text:
                    self._line(text)

    def _line(self, text: str) -> None:
        m = _CMTI.match(text)
        if m is not None:
            self._indicated.append(int(m.group(2)))
            self._wake.set()
            return
        final = self._final
        if final is None or final.done():
            log.debug("SMS modem said %r outside a command", text[:80])
            return
        if text == "OK" or text.startswith(_FINAL_ERRORS):
            final.set_result(text)
        elif text.startswith("AT") and not self._lines:
            return   # the echo of the command, before ATE0 took effect
        else:
            self._lines.append(text)

    # ------------------------------------------------------------ reading

    async def _list_stored(self) -> None:
        """Everything on the SIM (AT+CMGL=4, TS 27.005 §3.4.2): custody of what came while the
        gateway was down, or a +CMTI that was lost."""
        lines = await self.command("AT+CMGL=4")
        stored: list[tuple[int, int, str]] = []
        for i, line in enumerate(lines):
            m = _CMGL.match(line)
            if m is not None and (pdu := _pdu_after(lines, i)) is not None:
                stored.append((int(m.group(1)), int(m.group(2)), pdu))
        for index, stat, pdu in stored:
            if index not in self._known:
                await self._take(index, stat, pdu)

    async def _read_one(self, index: int) -> None:
        try:
            lines = await self.command(f"AT+CMGR={index}")
        except ModemError as exc:   # already gone (deleted, or an indication for an empty place)
            log.info("SMS modem: reading stored message %d failed: %s", index, exc)
            return
        for i, line in enumerate(lines):
            m = _CMGR.match(line)
            if m is not None and (pdu := _pdu_after(lines, i)) is not None:
                await self._take(index, int(m.group(1)), pdu)
                return

    async def _take(self, index: int, stat: int, pdu: str) -> None:
        """One stored message: a whole SMS to the queue, a part to the others of its message."""
        if stat in (2, 3):   # stored unsent / sent: a message to send, not one received (§3.1 <stat>)
            return
        self._known.add(index)
        now = self.clock()
        try:
            sms = decodeSmsPdu(pdu)
            if sms.get("type") != "SMS-DELIVER":
                raise ValueError(f"a stored {sms.get('type')}, not a received SMS")
            sender = str(sms["number"])
            text = str(sms.get("text", ""))
        except Exception as exc:  # gsmmodem raises several kinds for a PDU it cannot read
            self._known.discard(index)
            self._delete.add(index)
            detail = f"SMS {index} could not be decoded: {type(exc).__name__}: {exc}"[:200]
            log.warning("SMS modem: %s", detail)
            self.metrics.inc("sms_rejected", reason=RejectReason.MALFORMED.value)
            await self._audit(RejectReason.MALFORMED, None, "sms/", detail)
            return
        concat = next((ie for ie in sms.get("udh") or () if isinstance(ie, Concatenation) and ie.parts), None)
        if concat is None or concat.parts <= 1:
            self._deliver(sender, text, (index,), now)
            return
        key = (sender, int(concat.reference))
        parts = self._parts.get(key)
        if parts is not None and parts.total != concat.parts:
            self._delete.update(parts.indices)   # the same reference with another count: not one message
            parts = None
        if parts is None:
            if len(self._parts) >= PARTS_MAX:
                # Buttons never send a message in parts: a SIM filling with fragments from elsewhere
                # would stop announcing new SMS. The oldest set goes.
                oldest = min(self._parts, key=lambda k: self._parts[k].first_ms)
                self._delete.update(self._parts.pop(oldest).indices)
            parts = self._parts[key] = _Parts(int(concat.parts), now)
        parts.texts[int(concat.number)] = text
        parts.indices.append(index)
        if len(parts.texts) == parts.total and set(parts.texts) == set(range(1, parts.total + 1)):
            del self._parts[key]
            self._deliver(sender, "".join(parts.texts[n] for n in range(1, parts.total + 1)),
                          tuple(parts.indices), now)

    def _deliver(self, sender: str, text: str, indices: tuple[int, ...], now: int) -> None:
        sender = international(sender, self.settings.country_code)
        item = Inbound(sms_topic(sender), text.encode("utf-8", "replace"), 0, 1, False, now,
                       link=self)
        self._items[id(item)] = indices
        self._queue.put_nowait(item)

    async def _expire_parts(self, now: int) -> None:
        """A concatenated message whose parts do not all come (one was lost, or it was never whole)
        is refused as malformed after multipart_timeout_s, and its parts are deleted: storage on a
        SIM holds a few dozen messages, and it must never fill with fragments."""
        limit = int(self.settings.multipart_timeout_s * 1000)
        for key, parts in [(k, p) for k, p in self._parts.items() if now - p.first_ms >= limit]:
            del self._parts[key]
            detail = (f"multipart SMS {key[1]}: {len(parts.texts)} of {parts.total} parts within "
                      f"{self.settings.multipart_timeout_s:g} s")
            log.warning("SMS from %s refused: %s", key[0], detail)
            self.metrics.inc("sms_rejected", reason=RejectReason.MALFORMED.value)
            await self._audit(RejectReason.MALFORMED, None, sms_topic(key[0])[:128], detail)
            self._delete.update(parts.indices)

    async def _delete_committed(self) -> None:
        for index in sorted(self._delete):
            with contextlib.suppress(ModemError):   # already gone: nothing to keep
                await self.command(f"AT+CMGD={index}")   # TS 27.005 §3.5.4
            self._delete.discard(index)
            self._known.discard(index)

    async def _check_network(self) -> None:
        """Registered on the network (AT+CREG?, TS 27.007 §7.2) and the signal (AT+CSQ, §8.5). A modem
        that refuses either command leaves that value unknown (None); no answer ends the session."""
        registered: bool | None = None
        with contextlib.suppress(ModemError):
            for line in await self.command("AT+CREG?"):
                if (m := _CREG.match(line)) is not None:
                    registered = int(m.group(1)) in _REGISTERED
        signal: int | None = None
        with contextlib.suppress(ModemError):
            for line in await self.command("AT+CSQ"):
                if (m := _CSQ.match(line)) is not None and int(m.group(1)) <= RSSI_MAX:
                    signal = int(m.group(1))
        self.signal = signal
        self._set_registered(registered)

    async def _poll(self) -> None:
        """Does the modem still answer, and is it on the network? Is the SIM's storage full (no
        +CMTI comes then)? Messages found on the SIM that were never indicated are read too."""
        await self._check_network()
        lines = await self.command("AT+CPMS?")
        full = any((m := _CPMS.match(line)) is not None and int(m.group(1)) >= int(m.group(2)) > 0
                   for line in lines)
        if full:
            log.warning("SMS modem: the SIM's message storage is full; reading and deleting what is committed")
        await self._list_stored()

    # ------------------------------------------------------------ sending

    async def _send_due(self, now: int) -> None:
        """At most one SMS per pass of the serve loop: a send takes seconds, and indications and
        deletions of arriving alarms must not wait behind a queue of acks."""
        taken = self.limiter.take(now)
        if taken is None:
            self.limiter.forget_idle(now)
            return
        device, seq, ack = taken
        try:
            await self._submit(ack.number, ack.text)
        except ModemGone:
            self.limiter.put_back(device, seq, ack)   # the modem went mid-send: the ack waits for it
            raise
        except ModemError as exc:
            ack.attempts += 1
            if ack.attempts >= SEND_ATTEMPTS:
                log.error("SMS to %s (device %s) failed %d times, given up: %s", ack.number, device,
                          ack.attempts, exc)
                self.metrics.inc("sms_send_failures")
            else:
                log.warning("SMS to %s (device %s) failed, trying again: %s", ack.number, device, exc)
                self.limiter.put_back(device, seq, ack)
            return
        self.metrics.inc("sms_acks_sent")
        log.info("SMS ack sent to device %s at %s", device, ack.number)
        self._wake.set()   # the next one, if due, on the next pass

    async def _submit(self, number: str, text: str) -> None:
        # One SMS-SUBMIT per part; acks fit one (sms.MAX_TEXT). No status report requested: the
        # button's next alarm or test shows whether acks arrive.
        for pdu in encodeSmsSubmitPdu(number, text, requestStatusReport=False):
            await self.command(f"AT+CMGS={pdu.tpduLength}", data=str(pdu),
                               timeout_s=SEND_TIMEOUTS * self.settings.command_timeout_s)


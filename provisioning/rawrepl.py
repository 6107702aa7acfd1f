"""MicroPython's raw REPL over a serial port, as small protocol values plus one conversation class.

The protocol (MicroPython docs, "reference/repl", raw mode and raw-paste mode):

- Ctrl-C Ctrl-C stops whatever runs (main.py included) and leaves the friendly REPL (`>>> `);
  Ctrl-A enters the raw REPL, which answers `raw REPL; CTRL-B to exit\\r\\n>`.
- Standard raw mode: the host sends code and Ctrl-D; the board answers `OK`, then the code's
  output, `\\x04`, its error output (a traceback), `\\x04>`.
- Raw-paste mode (MicroPython 1.14 and later): the host sends `\\x05A\\x01`; a board that supports it
  answers `R\\x01` and a 16-bit little-endian window size, then sends `\\x01` whenever the host may
  send another window of code. The host ends with `\\x04`, the board acknowledges with `\\x04` and
  then answers as in standard mode, without the `OK`. The flow control keeps a board's small UART
  buffer from overflowing, so code can be sent at full speed.
- Ctrl-B leaves the raw REPL; Ctrl-D at the friendly REPL soft-resets the board, which then runs
  boot.py and main.py.

Parsing is pure (`ExecReply.from_bytes`, `RawPasteReply.from_bytes`, `find_banner`); `RawRepl`
drives a pyserial-like port and raises `errors.BoardError` subclasses with a technician's message.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .errors import BoardCodeError, BoardError, NoBoardError, NoMicroPythonError
from .text import t

INTERRUPT = b"\r\x03\x03"
ENTER_RAW = b"\x01"
EXIT_RAW = b"\x02"
END = b"\x04"                 # end of code in raw mode; soft reset at the friendly REPL
RAW_PASTE_REQUEST = b"\x05A\x01"
RAW_PASTE_MORE = b"\x01"       # the board has room for another window
FRIENDLY_PROMPT = b">>> "
# The board's terminal may turn "\n" into "\r\n" once more (a tty's ONLCR): accept any number of \r.
_BANNER_RE = re.compile(rb"raw REPL; CTRL-B to exit\r*\n>")
# Standard raw mode without raw-paste: the UART receive buffer of small boards overflows if code
# arrives faster than the REPL reads it, so send it in slices with a pause (as mpremote does).
STANDARD_SLICE = 256
STANDARD_PAUSE_S = 0.01


class Port(Protocol):
    """What RawRepl needs of a pyserial `Serial` (and of the test's fakes)."""

    timeout: float | None

    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes) -> int | None: ...
    @property
    def in_waiting(self) -> int: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RawPasteReply:
    """The board's answer to RAW_PASTE_REQUEST."""

    supported: bool
    window: int

    LENGTH_SUPPORTED = 4
    LENGTH_REFUSED = 2

    @classmethod
    def from_bytes(cls, data: bytes) -> RawPasteReply:
        if data[:2] == b"R\x01" and len(data) >= 4:
            (window,) = struct.unpack("<H", data[2:4])
            if window == 0:
                raise ValueError("raw-paste window of 0 bytes")
            return cls(True, window)
        if data[:2] == b"R\x00":
            return cls(False, 0)
        raise ValueError(f"not a raw-paste reply: {data!r}")

    def to_bytes(self) -> bytes:
        return b"R\x01" + struct.pack("<H", self.window) if self.supported else b"R\x00"


@dataclass(frozen=True, slots=True)
class ExecReply:
    """What code run in the raw REPL printed: `<stdout>\\x04<stderr>\\x04>`."""

    stdout: str
    stderr: str

    @staticmethod
    def complete_length(data: bytes) -> int | None:
        """The length of a whole reply at the start of `data`, or None while it is incomplete."""
        first = data.find(END)
        if first < 0:
            return None
        second = data.find(END, first + 1)
        if second < 0 or len(data) < second + 2:
            return None
        return second + 2

    @classmethod
    def from_bytes(cls, data: bytes) -> ExecReply:
        size = cls.complete_length(data)
        if size is None or data[size - 1:size] != b">":
            raise ValueError(f"incomplete raw REPL reply: {data[-80:]!r}")
        out, err, _ = data[:size - 1].split(END, 2)
        return cls(_text(out), _text(err))

    def to_bytes(self) -> bytes:
        return self.stdout.encode() + END + self.stderr.encode() + END + b">"

    @property
    def ok(self) -> bool:
        return not self.stderr.strip()

    @property
    def exception(self) -> str:
        """The last line of the traceback, e.g. "OSError: [Errno 28] ENOSPC"."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").replace("\r", "")


def find_banner(data: bytes) -> int | None:
    """The index just past the raw REPL banner and its prompt in `data`, or None."""
    match = _BANNER_RE.search(data)
    return match.end() if match else None


def printable(data: bytes, limit: int = 60) -> str:
    """A short, safe rendering of what a device sent, for error messages."""
    text = data[-limit:].decode("ascii", errors="replace")
    return "".join(c if c.isprintable() else "." for c in text).strip(".") or repr(data[-limit:])


class RawRepl:
    """The raw REPL conversation with one board on an open port.

    Bytes read but not yet used stay in a buffer, so that a reply that arrives in the same read as
    the acknowledgement before it is not lost.
    """

    def __init__(self, port: Port, *, name: str | None = None) -> None:
        self.port = port
        self.name = t("board.the_board") if name is None else name
        self.in_raw = False
        self._raw_paste: bool | None = None  # unknown until the first exec
        self._buf = bytearray()
        self.seen = b""  # everything read while entering, for the error message

    # ---------------------------------------------------------------- reading

    def _fill(self, deadline: float) -> bool:
        """Read what the port has (waiting at most until `deadline`); False if nothing came."""
        if time.monotonic() >= deadline:
            return False
        try:
            waiting = self.port.in_waiting
            data = self.port.read(waiting or 1)
        except OSError as exc:  # serial.SerialException is an OSError
            raise BoardError(t("repl.stopped", board=self.name, error=exc), t("repl.stopped.hint")) from None
        self._buf += data
        return bool(data)

    def _take(self, size: int) -> bytes:
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def read_until(self, done: Callable[[bytes], bool], timeout_s: float) -> bytes:
        """Read until done(everything buffered) holds or the time is up; returns (and uses up) it all."""
        deadline = time.monotonic() + timeout_s
        while not done(bytes(self._buf)) and time.monotonic() < deadline:
            self._fill(deadline)
        return self._take(len(self._buf))

    def read_for(self, seconds: float) -> bytes:
        return self.read_until(lambda _: False, seconds)

    def _read_exactly(self, size: int, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        while len(self._buf) < size and time.monotonic() < deadline:
            self._fill(deadline)
        return self._take(size)

    def _write(self, data: bytes) -> None:
        try:
            self.port.write(data)
        except OSError as exc:
            raise BoardError(t("repl.write_failed", board=self.name, error=exc), t("repl.write_failed.hint")) from None

    # ---------------------------------------------------------------- modes

    def enter(self, *, attempts: int = 3, timeout_s: float = 1.5) -> None:
        """Stop what runs and enter the raw REPL; NoBoardError if nothing answers at all,
        NoMicroPythonError if something answers but not MicroPython."""
        self.seen = b""
        for _ in range(attempts):
            self._write(INTERRUPT)
            self.seen += self.read_for(0.15)
            self._write(ENTER_RAW)
            got = self.read_until(lambda d: find_banner(d) is not None, timeout_s)
            self.seen += got
            if find_banner(got) is not None:
                # Anything after the prompt is stale (a board that printed while we interrupted).
                self.read_for(0.05)
                self.in_raw = True
                return
        if not self.seen.strip(b"\r\n\x00"):
            raise NoBoardError(t("repl.silent", board=self.name), t("repl.silent.hint"))
        raise NoMicroPythonError(t("repl.not_micropython", board=self.name, sent=repr(printable(self.seen))),
                                 t("repl.not_micropython.hint"))

    def exit(self) -> None:
        """Leave the raw REPL for the friendly one."""
        self._write(EXIT_RAW)
        self.read_until(lambda d: FRIENDLY_PROMPT in d, 1.0)
        self.in_raw = False

    def soft_reset(self) -> None:
        """Reboot the board's interpreter: it runs boot.py and main.py, as after power-on."""
        if self.in_raw:
            self.exit()
        self._write(END)

    # ---------------------------------------------------------------- running code

    def exec(self, code: str, *, timeout_s: float = 10.0) -> ExecReply:
        """Run `code` on the board and return what it printed (a failed run is a reply too)."""
        if not self.in_raw:
            raise BoardError(t("repl.not_raw", board=self.name))
        data = code.encode("utf-8")
        if self._raw_paste is not False:
            self._write(RAW_PASTE_REQUEST)
            head = self._read_exactly(RawPasteReply.LENGTH_REFUSED, timeout_s)
            if head == b"R\x01":
                head += self._read_exactly(2, timeout_s)
            try:
                reply = RawPasteReply.from_bytes(head)
            except ValueError:
                # Firmware older than raw-paste mode takes the request as text and re-enters the raw
                # REPL at the \x01: wait for that prompt and use standard mode from now on.
                self.read_until(lambda d: find_banner(head + d) is not None, timeout_s)
                reply = RawPasteReply(False, 0)
            self._raw_paste = reply.supported
            if reply.supported:
                self._paste(data, reply.window, timeout_s)
                return self._reply(timeout_s)
        for i in range(0, len(data), STANDARD_SLICE):
            self._write(data[i:i + STANDARD_SLICE])
            time.sleep(STANDARD_PAUSE_S)
        self._write(END)
        ok = self._read_exactly(2, timeout_s)
        if ok != b"OK":
            raise BoardError(t("repl.refused", board=self.name, answer=repr(printable(ok))), t("repl.replug.hint"))
        return self._reply(timeout_s)

    def _paste(self, data: bytes, window: int, timeout_s: float) -> None:
        room = window
        sent = 0
        deadline = time.monotonic() + timeout_s
        while True:
            # Flow control from the board: \x01 = room for another window, \x04 = it gave up.
            while self._buf[:1] in (RAW_PASTE_MORE, END):
                if self._take(1) == END:
                    self._write(END)  # acknowledge; its traceback follows as a normal reply
                    return
                room += window
            if self._buf:
                raise BoardError(t("repl.unexpected", data=repr(bytes(self._buf[:20])), board=self.name))
            if sent == len(data):
                break
            if room == 0:
                if not self._fill(deadline) and time.monotonic() >= deadline:
                    raise BoardError(t("repl.stalled", board=self.name), t("repl.replug.hint"))
                continue
            piece = data[sent:sent + room]
            self._write(piece)
            sent += len(piece)
            room -= len(piece)
            if self.port.in_waiting:
                self._fill(deadline)
        self._write(END)
        # The board acknowledges the end with \x04 (after any \x01 still in flight).
        end_deadline = time.monotonic() + timeout_s
        while END not in self._buf and time.monotonic() < end_deadline:
            self._fill(end_deadline)
        ack = self._take(self._buf.find(END) + 1) if END in self._buf else b""
        if not ack.endswith(END) or ack.strip(RAW_PASTE_MORE + END):
            raise BoardError(t("repl.no_end", board=self.name, answer=repr(printable(ack))))

    def _reply(self, timeout_s: float) -> ExecReply:
        deadline = time.monotonic() + timeout_s
        while ExecReply.complete_length(bytes(self._buf)) is None and time.monotonic() < deadline:
            self._fill(deadline)
        size = ExecReply.complete_length(bytes(self._buf))
        if size is None:
            raise BoardError(t("repl.too_slow", board=self.name, seconds=f"{timeout_s:.0f}"), t("repl.replug.hint"))
        return ExecReply.from_bytes(self._take(size))

    def run(self, code: str, *, timeout_s: float = 10.0, what: str | None = None) -> str:
        """Run `code`; its output, or BoardCodeError with the board's exception."""
        reply = self.exec(code, timeout_s=timeout_s)
        if not reply.ok:
            # board._reason takes the exception from after the first ": " of this message.
            raise BoardCodeError(t("repl.code_failed", what=what or t("repl.code"), board=self.name,
                                   exception=reply.exception), detail=reply.stderr)
        return reply.stdout

    def read_line(self, timeout_s: float) -> str | None:
        """One line of what the board prints (after a reboot: its console), without the line
        ending; None if no whole line arrives within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            if time.monotonic() >= deadline:
                return None
            self._fill(deadline)
        line = self._take(self._buf.index(b"\n") + 1)
        return line.decode("utf-8", errors="replace").strip("\r\n")

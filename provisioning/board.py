"""A MicroPython board on a USB serial port: detect it, read and write its filesystem, check its
Wi-Fi, reboot it and read its console. Everything runs as small scripts in the raw REPL
(rawrepl.py); the scripts use only modules every port has (os, json, hashlib, binascii).

Paths on the board are relative to its working directory, which is the filesystem root on the
ESP32 and the Pico W (after `os.chdir('/')`) and the board folder of the unix-port stand-in.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import BoardCodeError, BoardError, BoardWriteError, NoBoardError, UsageError, WifiError, WrongPortError
from .rawrepl import Port, RawRepl
from .text import t

# USB vendor ids of the serial bridges and native USB of the boards Siaga supports.
USB_VENDORS = {
    0x10C4: "Silicon Labs CP210x (ESP32 DevKit)",
    0x1A86: "WCH CH340 (ESP32 DevKit)",
    0x0403: "FTDI",
    0x303A: "Espressif native USB",
    0x2E8A: "Raspberry Pi (Pico W)",
}
# Raw bytes per line of a file transfer (base64 makes 1024 characters of it) and lines per exec:
# about 3 KiB per round trip keeps the code the board compiles small even on an ESP32's heap.
CHUNK_BYTES = 768
CHUNKS_PER_EXEC = 4
PART_SUFFIX = ".part"

_HELPERS = """\
import os, json, hashlib, binascii
def _sgh(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    h = hashlib.sha256()
    b = bytearray(512)
    while True:
        n = f.readinto(b)
        if not n:
            break
        h.update(b if n == 512 else b[:n])
    f.close()
    return binascii.hexlify(h.digest()).decode()
def _sgmk(d):
    p = ''
    for part in d.split('/'):
        p = p + '/' + part if p else part
        try:
            os.mkdir(p)
        except OSError as e:
            if e.errno != 17:
                raise
def _sgrm(p):
    try:
        os.remove(p)
        return 1
    except OSError:
        return 0
def _sgls(d):
    try:
        return os.listdir(d)
    except OSError:
        return None
"""

_DETECT = """\
import sys
def _sgd():
    d = {'impl': sys.implementation.name, 'ver': list(sys.implementation.version[:3]),
         'platform': sys.platform, 'mpy': getattr(sys.implementation, '_mpy', None)}
    try:
        d['machine'] = os.uname().machine
    except AttributeError:
        d['machine'] = getattr(sys.implementation, '_machine', '')
    try:
        s = os.statvfs('.')
        d['free'] = s[0] * s[3]
    except (AttributeError, OSError):
        d['free'] = None
    try:
        import machine
        d['uid'] = binascii.hexlify(machine.unique_id()).decode()
    except (ImportError, AttributeError):
        d['uid'] = None
    try:
        with open('config.json') as f:
            d['dev'] = json.loads(f.read()).get('dev')
    except (OSError, ValueError, AttributeError):
        d['dev'] = None
    try:
        import network
        d['wifi'] = hasattr(network, 'WLAN')
    except ImportError:
        d['wifi'] = False
    print(json.dumps(d))
_sgd()
"""

# Join the network as the firmware will, and report how it went. Status codes differ between ports
# (ESP32: 200-205, 1000-1010; Pico W: -3..3), so the board names them from its own constants.
_WIFI_CHECK = """\
def _sgw(ssid, pw, limit_ms):
    import network, time
    names = {}
    for n in ('STAT_IDLE', 'STAT_CONNECTING', 'STAT_WRONG_PASSWORD', 'STAT_NO_AP_FOUND', 'STAT_CONNECT_FAIL',
              'STAT_GOT_IP', 'STAT_BEACON_TIMEOUT', 'STAT_ASSOC_FAIL', 'STAT_HANDSHAKE_TIMEOUT'):
        if hasattr(network, n):
            names[getattr(network, n)] = n
    w = network.WLAN(network.STA_IF)
    w.active(True)
    try:
        w.disconnect()
    except OSError:
        pass
    w.connect(ssid, pw)
    t = time.ticks_ms()
    st = w.status()
    while not w.isconnected() and time.ticks_diff(time.ticks_ms(), t) < limit_ms:
        st = w.status()
        if names.get(st) in ('STAT_WRONG_PASSWORD', 'STAT_NO_AP_FOUND', 'STAT_CONNECT_FAIL', 'STAT_ASSOC_FAIL'):
            break
        time.sleep_ms(100)
    ok = w.isconnected()
    r = {'ok': ok, 'status': names.get(st, str(st)), 'ms': time.ticks_diff(time.ticks_ms(), t)}
    if ok:
        try:
            r['ip'] = w.ifconfig()[0]
            r['rssi'] = w.status('rssi')
        except (OSError, ValueError, TypeError):
            pass
    print(json.dumps(r))
"""


@dataclass(frozen=True, slots=True)
class BoardInfo:
    """What the board says about itself."""

    implementation: str
    version: tuple[int, int, int]
    platform: str          # sys.platform: esp32, rp2, linux (the unix port)
    machine: str
    mpy: int | None        # sys.implementation._mpy: .mpy version, sub-version and native arch
    free_bytes: int | None
    unique_id: str | None
    device_id: str | None  # the `dev` of a config.json already on the board
    has_wifi: bool

    @classmethod
    def from_json(cls, text: str) -> BoardInfo:
        d = json.loads(text)
        ver = tuple(int(v) for v in d["ver"])
        return cls(d["impl"], (*ver, 0, 0, 0)[:3], d["platform"], d.get("machine") or "", d.get("mpy"),
                   d.get("free"), d.get("uid"), d.get("dev"), bool(d.get("wifi")))

    @property
    def version_text(self) -> str:
        return ".".join(str(v) for v in self.version)

    @property
    def mpy_version(self) -> str | None:
        """The .mpy format the board loads, as mpy-cross names it ("6.3"), or None if unknown."""
        if self.mpy is None:
            return None
        major, sub = self.mpy & 0xFF, (self.mpy >> 8) & 3
        return f"{major}.{sub}" if sub else str(major)


@dataclass(frozen=True, slots=True)
class WifiResult:
    ok: bool
    status: str
    elapsed_ms: int
    ip: str | None = None
    rssi: int | None = None


def list_ports() -> list[tuple[str, str, bool]]:
    """(device, description, looks like a supported board) for every serial port of this machine."""
    from serial.tools import list_ports as lp

    out = []
    for p in sorted(lp.comports(), key=lambda p: p.device):
        known = p.vid in USB_VENDORS
        desc = USB_VENDORS.get(p.vid or -1) or p.description or ""
        out.append((p.device, desc, known))
    return out


def find_port() -> str:
    """The one USB serial port that looks like a Siaga board, or a NoBoardError/UsageError."""
    candidates = [p for p in list_ports() if p[2]]
    if not candidates:
        raise NoBoardError(t("board.none_found"), t("board.none_found.hint"))
    if len(candidates) > 1:
        raise UsageError(t("board.several", boards=", ".join(f"{d} ({desc})" for d, desc, _ in candidates)),
                         t("board.several.hint"))
    return candidates[0][0]


def open_port(name: str, baud: int) -> Port:
    """Open a serial port for the raw REPL, with a technician's message when that fails."""
    import serial

    try:
        return serial.serial_for_url(name, baudrate=baud, timeout=0.05, write_timeout=10)
    except (serial.SerialException, OSError, ValueError) as exc:
        code = getattr(exc, "errno", None)
        others = ", ".join(d for d, _, _ in list_ports()) or t("board.no_ports")
        if code == errno.EACCES:
            raise WrongPortError(t("board.port_denied", port=name), t("board.port_denied.hint")) from None
        if code == errno.EBUSY:
            raise WrongPortError(t("board.port_busy", port=name), t("board.port_busy.hint")) from None
        raise WrongPortError(t("board.port_unopenable", port=name, error=exc),
                             t("board.port_unopenable.hint", ports=others)) from None


class Board:
    """One board in the raw REPL. Use `Board.connect()`; close() releases the port."""

    def __init__(self, repl: RawRepl) -> None:
        self.repl = repl
        self.info: BoardInfo | None = None

    @classmethod
    def connect(cls, port_name: str, baud: int = 115200) -> Board:
        port = open_port(port_name, baud)
        board = cls(RawRepl(port, name=port_name))
        try:
            board.enter()
        except BaseException:
            board.close()
            raise
        return board

    @property
    def name(self) -> str:
        return self.repl.name

    def enter(self) -> None:
        """Interrupt whatever runs, enter the raw REPL and load the helper functions."""
        self.repl.enter()
        self.repl.run(_HELPERS, what=t("board.do.helpers"))

    def close(self) -> None:
        try:
            self.repl.port.close()
        except OSError:
            pass

    # ---------------------------------------------------------------- facts

    def detect(self) -> BoardInfo:
        self.info = BoardInfo.from_json(self._last_line(self.repl.run(_DETECT, what=t("board.do.detect"))))
        if self.info.platform in ("esp32", "rp2"):
            # Boards start in "/" but code run earlier may have changed directory.
            self.repl.run("os.chdir('/')")
        return self.info

    @staticmethod
    def _last_line(output: str) -> str:
        lines = [line for line in output.splitlines() if line.strip()]
        if not lines:
            raise BoardError(t("board.no_answer"))
        return lines[-1]

    # ---------------------------------------------------------------- files

    def hashes(self, paths: Iterable[str]) -> dict[str, str | None]:
        """sha256 (hex) of each file on the board, None where there is no such file."""
        wanted = list(paths)
        out = self.repl.run(f"print(json.dumps({{p: _sgh(p) for p in {wanted!r}}}))", timeout_s=60,
                            what=t("board.do.read_files"))
        return json.loads(self._last_line(out))

    def makedirs(self, folders: Iterable[str]) -> None:
        for folder in sorted(set(folders)):
            try:
                self.repl.run(f"_sgmk({folder!r})", what=t("board.do.mkdir", folder=folder))
            except BoardCodeError as exc:
                raise BoardWriteError(t("board.mkdir_failed", folder=folder, error=_reason(exc)),
                                      t("board.write.hint")) from None

    def listdir(self, folder: str) -> list[str] | None:
        return json.loads(self._last_line(self.repl.run(f"print(json.dumps(_sgls({folder!r})))")))

    def remove(self, paths: Iterable[str]) -> int:
        wanted = list(paths)
        if not wanted:
            return 0
        out = self.repl.run(f"print(sum(_sgrm(p) for p in {wanted!r}))", what=t("board.do.remove"))
        return int(self._last_line(out))

    def read_file(self, path: str) -> bytes | None:
        code = (f"try:\n f = open({path!r}, 'rb')\nexcept OSError:\n print('-')\nelse:\n"
                " print(binascii.b2a_base64(f.read()).decode().strip()); f.close()\n")
        line = self._last_line(self.repl.run(code, what=t("board.do.read", path=path)))
        return None if line == "-" else base64.b64decode(line)

    def write_file(self, path: str, data: bytes, progress: Callable[[int], None] | None = None) -> None:
        """Write `data` to `path` through a temporary file, check its sha256 on the board, then put it
        in place: a cut cable leaves the old file, never a torn one."""
        import hashlib

        part = path + PART_SUFFIX
        try:
            self.repl.run(f"_sgf = open({part!r}, 'wb'); _sgw = _sgf.write; _sga = binascii.a2b_base64",
                          what=f"writing {path}")
            lines: list[str] = []
            pending = 0
            for offset in range(0, len(data), CHUNK_BYTES):
                piece = data[offset:offset + CHUNK_BYTES]
                lines.append(f"_sgw(_sga({base64.b64encode(piece).decode()!r}))")
                pending += len(piece)
                if len(lines) == CHUNKS_PER_EXEC:
                    self.repl.run("\n".join(lines), what=f"writing {path}")
                    if progress:
                        progress(pending)
                    lines, pending = [], 0
            if lines:
                self.repl.run("\n".join(lines), what=f"writing {path}")
                if progress:
                    progress(pending)
            self.repl.run("_sgf.close()", what=f"writing {path}")
        except BoardCodeError as exc:
            self.repl.exec(f"try:\n _sgf.close()\nexcept Exception:\n pass\n_sgrm({part!r})")
            raise BoardWriteError(t("board.write_failed", path=path, error=_reason(exc)),
                                  t("board.write.hint")) from None
        got = self.hashes([part])[part]
        if got != hashlib.sha256(data).hexdigest():
            self.remove([part])
            raise BoardWriteError(t("board.checksum", path=path), t("board.checksum.hint"))
        try:
            self.repl.run(f"_sgrm({path!r}); os.rename({part!r}, {path!r})", what=t("board.do.place", path=path))
        except BoardCodeError as exc:
            self.remove([part])
            raise BoardWriteError(t("board.write_failed", path=path, error=_reason(exc)),
                                  t("board.write.hint")) from None

    def wipe_folder(self, folder: str) -> None:
        """Remove every file in `folder` and its direct subfolders (the firmware's state: sequence
        counter and outbox belong to one identity and must not carry over to another)."""
        code = (f"def _sgwipe(d):\n for n in (_sgls(d) or []):\n  p = d + '/' + n\n  if not _sgrm(p):\n"
                f"   _sgwipe(p)\n   try:\n    os.rmdir(p)\n   except OSError:\n    pass\n_sgwipe({folder!r})")
        self.repl.run(code, what=t("board.do.clear", folder=folder))

    # ---------------------------------------------------------------- Wi-Fi, reboot, console

    def wifi_check(self, ssid: str, password: str, timeout_s: float) -> WifiResult:
        self.repl.run(_WIFI_CHECK, what=t("board.do.wifi_load"))
        out = self.repl.run(f"_sgw({ssid!r}, {password!r}, {int(timeout_s * 1000)})", timeout_s=timeout_s + 10,
                            what=t("board.do.wifi"))
        d = json.loads(self._last_line(out))
        result = WifiResult(bool(d["ok"]), str(d["status"]), int(d["ms"]), d.get("ip"), d.get("rssi"))
        if result.ok:
            return result
        if result.status in ("STAT_WRONG_PASSWORD", "STAT_HANDSHAKE_TIMEOUT", "STAT_ASSOC_FAIL"):
            raise WifiError(t("wifi.wrong_password", ssid=repr(ssid), status=result.status),
                            t("wifi.wrong_password.hint"))
        if result.status == "STAT_NO_AP_FOUND":
            raise WifiError(t("wifi.not_in_range", ssid=repr(ssid), status=result.status), t("wifi.not_in_range.hint"))
        raise WifiError(t("wifi.not_joined", ssid=repr(ssid), seconds=f"{timeout_s:.0f}", status=result.status),
                        t("wifi.not_joined.hint"))

    def reboot(self) -> None:
        """Soft reset: the board runs boot.py and main.py as after power-on."""
        self.repl.soft_reset()

    def send_line(self, text: str) -> None:
        self.repl.port.write(text.encode() + b"\n")

    def read_line(self, timeout_s: float) -> str | None:
        """One line of console output after a reboot, without line-ending characters; None at the timeout."""
        return self.repl.read_line(timeout_s)


def _reason(exc: BoardCodeError) -> str:
    """The board's exception, without the "... failed on <port>: " prefix of the message."""
    return describe(exc.message.split(": ", 1)[-1])


def describe(exception: str) -> str:
    """The board's exception line with the errno spelled out: MicroPython ports print "OSError: 28"
    or "OSError: [Errno 28] ENOSPC"; both become "OSError 28 (ENOSPC: No space left on device)".
    MicroPython uses the Linux/newlib numbers for these codes."""
    match = re.match(r"OSError: (?:\[Errno )?(\d+)\]?", exception)
    if match is None:
        return exception
    code = int(match.group(1))
    name = errno.errorcode.get(code, "?")
    return f"OSError {code} ({name}: {os.strerror(code)})"


def wait_until(check: Callable[[], bool], timeout_s: float, step_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step_s)
    return True

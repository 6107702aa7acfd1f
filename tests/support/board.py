"""A stand-in for a MicroPython board on a USB serial port, for the provisioning tests.

The real MicroPython unix port runs on a pseudo-terminal, in a folder that is the board's
filesystem (its working directory). The provisioning tool opens a second pseudo-terminal by path
with pyserial, as it would open /dev/ttyUSB0; a bridge thread copies bytes between the two, which
lets the harness do what a board does and the unix port cannot:

- boot: with main.py in the folder, the firmware starts (`micropython main.py config.json state`,
  `lib` on MICROPYPATH as on a board); without it, the REPL;
- Ctrl-C while main.py runs stops it and leaves the REPL (the harness restarts the interpreter in
  REPL mode, holding back the tool's input until the REPL's prompt);
- soft reset: Ctrl-D at the friendly REPL ends the unix port's process; the harness boots again;
- main.py ending (or crashing) leaves the REPL, as on a board;
- optionally a serial link of limited speed (`baud`), like a USB-UART bridge.

The unix port has no `network` module; with `access_points` the harness puts a small fake one on
the path (a station interface that knows those networks), so the tool's Wi-Fi check runs as on a
board. `kind="silent"` is a port with nothing answering, `kind="other"` a device that answers but is
not MicroPython (an AT-command firmware).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path
from typing import Literal

from tests.support.firmware import micropython_binary

FAKE_NETWORK = '''\
# Fake MicroPython `network` module for the unix port (test harness only): a station interface
# that joins the access points listed in the JSON file named by $SIAGA_FAKE_APS ({ssid: password}).
import json
import os

STA_IF = 0
AP_IF = 1
STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_CONNECT_FAIL = -1
STAT_NO_AP_FOUND = -2
STAT_WRONG_PASSWORD = -3
STAT_GOT_IP = 3


class WLAN:
    def __init__(self, interface=STA_IF):
        self._status = STAT_IDLE
        self._active = False

    def active(self, value=None):
        if value is not None:
            self._active = bool(value)
        return self._active

    def connect(self, ssid, password):
        with open(os.getenv("SIAGA_FAKE_APS")) as f:
            aps = json.loads(f.read())
        if ssid not in aps:
            self._status = STAT_NO_AP_FOUND
        elif aps[ssid] != password:
            self._status = STAT_WRONG_PASSWORD
        else:
            self._status = STAT_GOT_IP

    def disconnect(self):
        self._status = STAT_IDLE

    def isconnected(self):
        return self._status == STAT_GOT_IP

    def status(self, param=None):
        return -58 if param == "rssi" else self._status

    def ifconfig(self):
        return ("10.20.30.40", "255.255.255.0", "10.20.30.1", "10.20.30.1")
'''

# A device that answers, but not as MicroPython: a boot banner, then "ERROR" to everything.
NOT_MICROPYTHON = r'''
import os
os.write(1, b"\r\nets Jun  8 2016 00:22:57\r\nrst:0x1 (POWERON_RESET),boot:0x13\r\nAT ready\r\n")
while True:
    data = os.read(0, 256)
    if not data:
        break
    os.write(1, b"\r\nERROR\r\n")
'''

CTRL_C = b"\x03"
PROMPT = b">>> "


class FakeBoard:
    def __init__(self, root: Path, *, kind: Literal["micropython", "silent", "other"] = "micropython",
                 access_points: dict[str, str] | None = None, baud: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.kind = kind
        self.bytes_per_s = baud / 10 if baud else None  # 8N1: ten bit times per byte
        self._support = Path(tempfile.mkdtemp(prefix="siaga-fakeboard-"))
        self._aps = self._support / "aps.json"
        if access_points is not None:
            (self._support / "network.py").write_text(FAKE_NETWORK, encoding="utf-8")
            self._aps.write_text(json.dumps(access_points), encoding="utf-8")
        self.boots = 0            # times main.py was started
        self.repl_starts = 0
        self.output = bytearray()  # everything the board sent to the tool
        self.state = "off"         # off, repl-starting, repl, main, other
        self.proc: subprocess.Popen[bytes] | None = None
        self._pending = bytearray()
        self._since_spawn = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._board_master, self._board_slave = os.openpty()
        self._tool_master, self._tool_slave = os.openpty()
        # Raw on both ends: no echo, no line discipline, no signals from Ctrl-C; a real UART has none.
        tty.setraw(self._board_slave)
        tty.setraw(self._tool_slave)
        self.port = os.ttyname(self._tool_slave)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FakeBoard:
        with self._lock:
            if self.kind == "micropython":
                self._boot()
            elif self.kind == "other":
                self._spawn([sys.executable, "-c", NOT_MICROPYTHON], "other")
        self._thread = threading.Thread(target=self._run, name="fake-board", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            self._kill()
        for fd in (self._board_master, self._board_slave, self._tool_master, self._tool_slave):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._support, ignore_errors=True)

    def __enter__(self) -> FakeBoard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- the board's processes

    def _env(self) -> dict[str, str]:
        return {**os.environ, "MICROPYPATH": f".frozen:lib:{self._support}", "SIAGA_FAKE_APS": str(self._aps)}

    def _spawn(self, args: list[str], state: str) -> None:
        tty.setraw(self._board_slave)
        self._since_spawn = bytearray()
        self.proc = subprocess.Popen(args, stdin=self._board_slave, stdout=self._board_slave,
                                     stderr=self._board_slave, cwd=self.root, env=self._env(),
                                     start_new_session=True)
        self.state = state

    def _boot(self) -> None:
        if (self.root / "main.py").exists():
            self.boots += 1
            self._spawn([micropython_binary(), "main.py", "config.json", "state"], "main")
        else:
            self._repl()

    def _repl(self) -> None:
        self.repl_starts += 1
        self._spawn([micropython_binary()], "repl-starting")

    def _kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
            self._drain_board()
        self.proc = None

    # ---------------------------------------------------------------- the bridge

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._board_master, self._tool_master], [], [], 0.02)
            except (OSError, ValueError):
                return
            with self._lock:
                if self._board_master in ready:
                    self._drain_board()
                if self._tool_master in ready:
                    try:
                        data = os.read(self._tool_master, 4096)
                    except OSError:
                        data = b""
                    if data:
                        self._from_tool(data)
                self._watch_process()

    def _throttle(self, size: int) -> None:
        if self.bytes_per_s:
            time.sleep(size / self.bytes_per_s)

    def _drain_board(self) -> None:
        while True:
            ready, _, _ = select.select([self._board_master], [], [], 0)
            if not ready:
                return
            try:
                data = os.read(self._board_master, 4096)
            except OSError:
                return
            if not data:
                return
            self.output += data
            self._since_spawn += data
            self._throttle(len(data))
            _write_all(self._tool_master, data)
            if self.state == "repl-starting" and PROMPT in self._since_spawn:
                self.state = "repl"
                pending, self._pending = bytes(self._pending), bytearray()
                if pending:
                    _write_all(self._board_master, pending)

    def _from_tool(self, data: bytes) -> None:
        self._throttle(len(data))
        if self.state == "main" and CTRL_C in data:
            # A board's Ctrl-C: main.py stops with KeyboardInterrupt and the REPL takes over.
            self._kill()
            self._repl()
            self._pending += data[data.index(CTRL_C):]
        elif self.state == "repl-starting":
            self._pending += data
        elif self.state in ("repl", "main", "other"):
            _write_all(self._board_master, data)
        # "off"/silent: nothing listens

    def _watch_process(self) -> None:
        if self.proc is None or self.proc.poll() is None:
            return
        self._drain_board()
        self.proc.wait()
        was = self.state
        self.proc = None
        if was in ("repl", "repl-starting"):
            self._boot()          # soft reset (Ctrl-D at the REPL): boot.py/main.py run again
        elif was == "main":
            self._repl()          # main.py ended or crashed: the REPL takes over
        else:
            self.state = "off"

    # ---------------------------------------------------------------- for tests

    def wait_state(self, state: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.state != state:
            if time.monotonic() > deadline:
                raise AssertionError(f"fake board not in state {state!r} within {timeout_s} s (it is {self.state!r}); "
                                     f"last output: {bytes(self.output[-300:])!r}")
            time.sleep(0.02)

    def text(self) -> str:
        return bytes(self.output).decode("utf-8", errors="replace")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# ---------------------------------------------------------------- provisioning config for tests

WIFI_SSID = "Kelurahan-Gambir"
WIFI_PASSWORD = "correct-horse-battery"


def provisioning_config(folder: Path, *, gateway_url: str, admin_token: str, broker_port: int,
                        password_file: Path | None, broker_pid: int | None, wifi_password: str | None = WIFI_PASSWORD,
                        selftest_timeout_s: float = 30.0, id_prefix: str = "jkt-gambir", extra: str = "") -> Path:
    """A provisioning TOML for a test system (secrets in files beside it, as in production)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "admin-token").write_text(admin_token + "\n", encoding="utf-8")
    lines = ["[gateway]", f'url = "{gateway_url}"', 'admin_token_file = "admin-token"', "",
             "[devices]", 'broker_host = "127.0.0.1"', f"broker_port = {broker_port}", f'id_prefix = "{id_prefix}"',
             "heartbeat_s = 60", "long_ms = 300", "cancel_ms = 0", "debounce_ms = 20", ""]
    if wifi_password is not None:
        (folder / "wifi-password").write_text(wifi_password + "\n", encoding="utf-8")
        lines += ["[wifi]", f'ssid = "{WIFI_SSID}"', 'password_file = "wifi-password"', "join_timeout_s = 5", ""]
    if password_file is not None:
        lines += ["[broker]", f'password_file = "{password_file}"']
        if broker_pid is not None:
            (folder / "mosquitto.pid").write_text(f"{broker_pid}\n", encoding="utf-8")
            lines.append('pid_file = "mosquitto.pid"')
        lines.append("")
    lines += ["[label]", 'support = "Call 112 or WhatsApp +62 811 0000 112"',
              'organisation = "Command Center 112 (test)"', "",
              "[provisioning]", 'state_dir = "state"', f"selftest_timeout_s = {selftest_timeout_s}", extra]
    path = folder / "siaga-provision.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def siaga(*args: str, timeout_s: float = 180.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the `siaga` command as a technician would (a separate process)."""
    return subprocess.run([sys.executable, "-m", "siaga.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, check=False, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})

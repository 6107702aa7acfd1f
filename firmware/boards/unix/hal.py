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
#   quit                              stop
# Every indicator change and event is printed as "IND <state>" or "EVT <name> <detail>"; with
# outputs=True the pin levels too, as "OUT <led> <buzzer> <status led>" (0/1).
import select
import sys
import time


class FakeHal:
    def __init__(self, ssl_wrap=None, outputs=False):
        self.ssl_wrap = ssl_wrap
        self._outputs = outputs
        self._pressed = {}
        self._tamper = False
        self._battery = 4100
        self._net = True
        self._gps = b""
        self.quit = False
        self.test_requested = False
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)

    def read_commands(self):
        while self._poll.poll(0):
            line = sys.stdin.readline()
            if not line:
                self.quit = True  # stdin closed: the controlling process is gone
                return
            words = line.split()
            if not words:
                continue
            cmd = words[0]
            arg = words[1] if len(words) > 1 else ""
            if cmd == "press" or cmd == "release":
                self._pressed[arg or "sos"] = cmd == "press"
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

    def tamper(self):
        return self._tamper

    def battery_mv(self):
        return self._battery

    def rssi(self):
        return -55

    def network_up(self):
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

# Fake HAL for the MicroPython unix port: the same interface as the ESP32 and Pico W HALs, with the
# pins replaced by a line protocol so that tests (and the demo) can drive a real MicroPython
# process. Commands on stdin, one per line:
#   press | release          SOS button level
#   tamper 0|1               enclosure switch
#   battery <mV>             battery voltage
#   net 0|1                  Wi-Fi association (0: the link layer reports no network)
#   test                     raise a technician's test alarm
#   quit                     stop
# Every indicator change and event is printed as "IND <state>" or "EVT <name> <detail>".
import select
import sys
import time


class FakeHal:
    ssl_wrap = None

    def __init__(self):
        self._pressed = False
        self._tamper = False
        self._battery = 4100
        self._net = True
        self.quit = False
        self.test_requested = False
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)

    def _read_commands(self):
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
            if cmd == "press":
                self._pressed = True
            elif cmd == "release":
                self._pressed = False
            elif cmd == "tamper":
                self._tamper = arg == "1"
            elif cmd == "battery":
                self._battery = int(arg)
            elif cmd == "net":
                self._net = arg == "1"
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

    def sos_pressed(self):
        self._read_commands()
        return self._pressed

    def tamper(self):
        return self._tamper

    def battery_mv(self):
        return self._battery

    def rssi(self):
        return -55

    def network_up(self):
        return self._net

    def indicate(self, state):
        self._out("IND " + state)

    def event(self, name, detail):
        self._out("EVT " + name + " " + detail)

    def feed_watchdog(self):
        pass

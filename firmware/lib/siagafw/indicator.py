# What the ring LED and the buzzer show, as data plus a small player (docs/firmware.md has the table
# a technician reads; keep the two in step).
#
# A pattern is a bytes string of durations in units of UNIT_MS, alternately on and off, starting
# with on. Even length: it repeats. Odd length: it plays once and the output then stays off (a
# confirmation beep). None is always off. Bytes literals, not tuples: a board running the core in
# place from flash (frozen or ROMFS) keeps them in flash at no heap cost, and the player indexes
# them without allocating. The player is pure: give it the time, it gives the levels; the board HAL
# only switches pins when a level changes.
from siagafw.timing import ticks_diff

UNIT_MS = 20

IDLE = "idle"                  # ready; the link to the gateway is up
NO_NETWORK = "no_network"      # ready, but no link: an alarm would wait in flash
ARMED = "armed"                # long press done, cancel window running
CANCELLED = "cancelled"        # the person took the alarm back
SENDING = "sending"            # in the flash outbox, no "received" ack yet
RECEIVED = "received"          # the gateway has it (its signed ack)
UNDELIVERED = "undelivered"    # the gateway has it, the command center refused it: use another way
ACKNOWLEDGED = "acknowledged"  # an operator acknowledged it: someone has seen the alarm
DISPATCHED = "dispatched"      # an agency accepted the dispatch: help is on the way
RESOLVED = "resolved"
FALSE_ALARM = "false_alarm"
FAULT = "fault"                # flash, login or battery problem: call a technician
TEST_MODE = "test_mode"        # lid open: a long press sends a test alarm

STEADY = b"\x32\x00"          # on 1000 ms, off 0 ms, repeat: always on

# Ring LED per state (ms in the comments); a state missing here is dark.
LED = {
    IDLE: b"\x03\xf7",                           # 60 on, 4940 off: a short blink every 5 s
    NO_NETWORK: b"\x03\x16\x03\x48",             # 60, 440, 60, 1440: double blink every 2 s
    ARMED: b"\x05\x05",                          # 100, 100: fast flash
    SENDING: b"\x19\x19",                        # 500, 500: 1 Hz flash
    RECEIVED: b"\x4b\x19",                       # 1500, 500: mostly on
    UNDELIVERED: b"\x32\x0a\x05\x0a\x05\x46",      # 1000, 200, 100, 200, 100, 1400: one long, two short
    ACKNOWLEDGED: STEADY,                        # steady: an operator has seen it
    # 800 on, 200 off, 200 on, 200 off: a "heartbeat", lit with two short dips every 1.4 s. Why:
    # - lit 71 % of the time, so in sunlight it is as easy to spot from 10 m as the steady light it
    #   follows (a dip is the LED fully off: whoever can see it lit sees it go dark);
    # - each dip lasts 200 ms, far longer than the ~10 ms gaps the eye smooths over (flicker
    #   fusion, 50-60 Hz), so it reads as "pulsing" and never as "steady";
    # - a double dip is a rhythm no other state has (RECEIVED: one 500 ms dip every 2 s;
    #   UNDELIVERED: mostly dark);
    # - at most two flashes in any second, under the three of photosensitivity guidance (WCAG 2.3.1).
    DISPATCHED: b"\x28\x0a\x0a\x0a",
    RESOLVED: b"\x32\x32",                       # 1000, 1000: slow flash
    FALSE_ALARM: b"\x32\x32",
    FAULT: b"\x05\x08\x05\x08\x05\x77",           # 100, 160, 100, 160, 100, 2380: triple flash every 3 s
    TEST_MODE: b"\x05\x05\x05\x23",              # 100, 100, 100, 700: double flash every second
}
# Buzzer per state, from the moment the state begins (odd length: once; even: repeating); a state
# missing here is silent.
BUZZER = {
    ARMED: b"\x05\x14",                          # 100 on, 400 off, repeating: press again to cancel
    CANCELLED: b"\x23",                         # 700: one long beep
    SENDING: b"\x04",                           # 80: one chirp
    RECEIVED: b"\x08\x05\x08",                    # 160, 100, 160: two beeps
    UNDELIVERED: b"\x05\x05\x05\x05\x05\x05\x05\x05\x05",  # 100 x 5 beeps with 100 gaps: unlike any other
    ACKNOWLEDGED: b"\x14\x08\x14\x08\x14",          # 400, 160, 400, 160, 400: three long beeps
    DISPATCHED: b"\x05\x05\x05\x05\x1e",            # 100, 100, 100, 100, 600: short, short, long
    RESOLVED: b"\x28",                          # 800: one long beep
    FALSE_ALARM: b"\x28",
}
STATES = (IDLE, NO_NETWORK, ARMED, CANCELLED, SENDING, RECEIVED, UNDELIVERED, ACKNOWLEDGED, DISPATCHED,
          RESOLVED, FALSE_ALARM, FAULT, TEST_MODE)


def ms(pattern):
    """A pattern as a tuple of milliseconds (for tests and documentation)."""
    return None if pattern is None else tuple(d * UNIT_MS for d in pattern)


def level(pattern, elapsed_ms):
    """Whether a pattern is on at elapsed_ms after it started."""
    if pattern is None:
        return False
    n = len(pattern)
    total = 0
    for i in range(n):  # indexed: "for d in pattern" would allocate an iterator on every call
        total += pattern[i]
    total *= UNIT_MS
    if n % 2:
        if elapsed_ms >= total:
            return False
    else:
        elapsed_ms %= total
    for i in range(n):
        d = pattern[i] * UNIT_MS
        if elapsed_ms < d:
            return i % 2 == 0
        elapsed_ms -= d
    return False


class Indicator:
    """Plays the patterns of the state shown; `silent` keeps the buzzer off (duress installations,
    where a sound could put the person in more danger)."""

    def __init__(self, silent=False):
        self.silent = silent
        self.state = None
        self.led = False
        self.buzzer = False
        self._since = 0
        self._led_pattern = None
        self._buzzer_pattern = None

    def show(self, state, now_ms):
        """Switch to `state` (restarting its patterns); True if it is a change."""
        if state == self.state:
            return False
        self.state = state
        self._since = now_ms
        self._led_pattern = LED.get(state)
        self._buzzer_pattern = BUZZER.get(state)
        return True

    def restart(self):
        """Play the next state shown from its start, even if it is the same state (each alarm
        raised gets its own "taken" chirp, also while an earlier one is still being sent)."""
        self.state = None

    def update(self, now_ms):
        """Recompute the levels; True if the LED or the buzzer must be switched."""
        elapsed = ticks_diff(now_ms, self._since)
        led = level(self._led_pattern, elapsed)
        buzzer = False if self.silent else level(self._buzzer_pattern, elapsed)
        if led == self.led and buzzer == self.buzzer:
            return False
        self.led = led
        self.buzzer = buzzer
        return True

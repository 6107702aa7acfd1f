# Time for the core: wrapping millisecond ticks, capped backoff, and a sanity check on wall-clock time.
#
# MicroPython's ticks wrap (time.ticks_ms is modular, compare only through ticks_diff); CPython gets
# plain integers that never wrap, so the same code runs under both.
import random

try:
    from time import ticks_add, ticks_diff, ticks_ms
except ImportError:  # CPython
    import time

    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

    def ticks_add(a, b):
        return a + b


# 2024-01-01T00:00:00Z. A board without NTP or a backed-up RTC counts from its epoch at power-on, so
# anything earlier than the firmware itself is a clock that was never set (protocol.md §4.1: ts null).
UNIX_TIME_PLAUSIBLE_S = 1704067200


def plausible_unix_time(t):
    """t if it looks like a set clock, else None: nothing in the core depends on wall-clock time."""
    if t is None or t < UNIX_TIME_PLAUSIBLE_S:
        return None
    return int(t)


class Backoff:
    """Exponential backoff with a cap and jitter for reconnects and re-sends.

    The delay is drawn from [d/2, d] ("equal jitter" in Brooker, "Exponential Backoff And Jitter",
    AWS Architecture Blog, 2015): the random half spreads a district's buttons out after a power cut
    so they do not all reconnect in the same second, and the fixed half means a retry never comes
    in a tight loop. d doubles after each failure up to max_ms and returns to first_ms on success.
    """

    def __init__(self, first_ms, max_ms):
        self.first_ms = first_ms
        self.max_ms = max_ms
        self._ms = first_ms

    def reset(self):
        self._ms = self.first_ms

    def next_ms(self):
        """The delay before the next try; each call doubles the next one, up to the cap."""
        d = self._ms
        self._ms = min(d * 2, self.max_ms)
        half = d // 2
        # getrandbits is in every MicroPython build; randint needs MICROPY_PY_RANDOM_EXTRA_FUNCS.
        return half + random.getrandbits(24) % (d - half + 1)

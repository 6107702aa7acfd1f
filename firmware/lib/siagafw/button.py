# The SOS button as a pure state machine: feed it the pin level and the time, it says what to do.
#
# Anti-false-alarm design: a brush or a child's tap is shorter than the long press and sends
# nothing; after the long press a cancel window lets the person press again to take it back; the
# debounce filter ignores contact bounce (mechanical switches bounce for roughly 1-10 ms).
try:
    from time import ticks_diff
except ImportError:  # CPython: plain integers that never wrap

    def ticks_diff(a, b):
        return a - b


IDLE = "idle"
HOLDING = "holding"          # pressed, not yet long enough
WAIT_RELEASE = "wait_release"  # triggered (or cancelled); ignore the rest of this press
ARMED = "armed"              # long press done, cancel window running

# Actions returned by update(); None means nothing to do.
TRIGGER = "trigger"
CANCEL = "cancel"
HELD = "held"    # long press reached and the cancel window started (show "release to send")


class SosButton:
    def __init__(self, long_ms=1500, cancel_ms=3000, debounce_ms=30):
        self.long_ms = long_ms
        self.cancel_ms = cancel_ms
        self.debounce_ms = debounce_ms
        self.state = IDLE
        self._level = False      # debounced level
        self._raw = False
        self._raw_since = 0
        self._since = 0          # when the current state began
        self._armed_release = False

    def update(self, pressed, now_ms):
        """Feed the raw pin level (True = pressed) at time now_ms; return an action or None."""
        pressed = bool(pressed)
        if pressed != self._raw:
            self._raw = pressed
            self._raw_since = now_ms
        if self._raw != self._level and ticks_diff(now_ms, self._raw_since) >= self.debounce_ms:
            self._level = self._raw
            return self._edge(self._level, now_ms)
        return self._tick(now_ms)

    def _edge(self, down, now_ms):
        st = self.state
        if st == IDLE and down:
            self._enter(HOLDING, now_ms)
        elif st == HOLDING and not down:
            self._enter(IDLE, now_ms)  # a short tap: nothing is sent
        elif st == WAIT_RELEASE and not down:
            self._enter(IDLE, now_ms)
        elif st == ARMED:
            if not down:
                self._armed_release = True
            elif self._armed_release:
                # Pressed again inside the cancel window: the person takes the alarm back.
                self._enter(WAIT_RELEASE, now_ms)
                return CANCEL
        return self._tick(now_ms)

    def _tick(self, now_ms):
        st = self.state
        elapsed = ticks_diff(now_ms, self._since)
        if st == HOLDING and elapsed >= self.long_ms:
            if self.cancel_ms <= 0:
                self._enter(WAIT_RELEASE, now_ms)
                return TRIGGER
            self._armed_release = False
            self._enter(ARMED, now_ms)
            return HELD
        if st == ARMED and elapsed >= self.cancel_ms:
            self._enter(WAIT_RELEASE if self._level else IDLE, now_ms)
            return TRIGGER
        return None

    def _enter(self, state, now_ms):
        self.state = state
        self._since = now_ms

# The buttons as a pure state machine: feed it pin levels and the time, it says what to do.
#
# Anti-false-alarm design: a brush or a child's tap is shorter than the long press and sends
# nothing; after the long press a cancel window lets the person press again to take it back; the
# debounce filter ignores contact bounce (mechanical switches bounce for roughly 1-10 ms).
#
# One machine serves the SOS button and the optional emergency-type buttons (medical, fire, crime,
# disaster): each is a separate input with the same long press, and they share one cancel window,
# so there is never more than one alarm waiting to be sent or cancelled. During that window any new
# press, of any button, cancels.
from siagafw.timing import ticks_add, ticks_diff

IDLE = "idle"
HOLDING = "holding"            # a button is down, not yet long enough
WAIT_RELEASE = "wait_release"  # triggered or cancelled: ignore everything until all are released
ARMED = "armed"                # long press done, cancel window running

# Actions returned by update()/tick(); None means nothing to do.
TRIGGER = "trigger"
CANCEL = "cancel"
HELD = "held"    # long press reached and the cancel window started (show "release to send")


class Debouncer:
    """A level that has to stay put for `ms` before it counts."""

    def __init__(self, ms):
        self.ms = ms
        self.level = False     # debounced
        self.raw = False       # as last sampled
        self.changed_at = 0    # when the debounced level took its value: raw change + ms
        self._since = 0

    def update(self, raw, now_ms, at=None):
        """Feed the raw level sampled at now_ms; True when the debounced level changed.

        `at` is when the raw level really changed, if the board latched the edge (Pin.irq) while
        the loop was held up; the level is then counted from that moment, not from now_ms.
        """
        raw = bool(raw)
        if raw != self.raw:
            self.raw = raw
            self._since = now_ms if at is None else at
        if raw != self.level and ticks_diff(now_ms, self._since) >= self.ms:
            self.level = raw
            self.changed_at = ticks_add(self._since, self.ms)
            return True
        return False


class ButtonPanel:
    """The SOS button and the type buttons as one machine.

    `kinds` names the emergency kind of each input in order, e.g. ("general", "medical"). Feed every
    input with update(i, level, now) and then call tick(now) once per sample; both return an action
    or None. After TRIGGER, `kind` is the kind of the button that raised it.
    """

    def __init__(self, kinds, long_ms=1500, cancel_ms=3000, debounce_ms=30):
        self.kinds = kinds
        self.long_ms = long_ms
        self.cancel_ms = cancel_ms
        self._inputs = [Debouncer(debounce_ms) for _ in kinds]
        self.state = IDLE
        self.kind = None
        self._which = -1       # the input being held or armed
        self._since = 0        # when the current state began

    def _any_down(self):
        for i in range(len(self._inputs)):
            if self._inputs[i].level:
                return True
        return False

    def raw(self, i):
        """Input i's raw level at its last sample."""
        return self._inputs[i].raw

    def update(self, i, pressed, now_ms, at=None):
        """Feed input i's raw level (True = pressed) sampled at now_ms; `at` is when it changed,
        if the board latched the edge (Debouncer.update). Returns HELD, TRIGGER, CANCEL or None."""
        d = self._inputs[i]
        if not d.update(pressed, now_ms, at):
            return None
        # Run the timers up to the moment of the change first: a press released while the loop
        # was held up may have been long enough before it ended.
        timed = self.tick(d.changed_at)
        down = d.level
        st = self.state
        if st == IDLE and down:
            self._which = i
            # The long press counts from when the press settled, which is before now_ms when the
            # loop was held up and the board latched the edge.
            self._enter(HOLDING, d.changed_at)
        elif st == HOLDING and not down and i == self._which:
            self._enter(IDLE, now_ms)  # a short tap: nothing is sent
        elif st == WAIT_RELEASE and not self._any_down():
            self._enter(IDLE, now_ms)
        elif st == ARMED and down:
            # A new press inside the cancel window: the person takes the alarm back. The button that
            # armed it can only go down again after it was released, so holding on does not cancel.
            self._enter(WAIT_RELEASE, now_ms)
            return CANCEL
        return timed

    def tick(self, now_ms):
        """Advance the timers; returns HELD, TRIGGER or None."""
        st = self.state
        elapsed = ticks_diff(now_ms, self._since)
        if st == HOLDING and elapsed >= self.long_ms:
            self.kind = self.kinds[self._which]
            if self.cancel_ms <= 0:
                self._enter(WAIT_RELEASE, now_ms)
                return TRIGGER
            self._enter(ARMED, now_ms)
            return HELD
        if st == ARMED and elapsed >= self.cancel_ms:
            self._enter(WAIT_RELEASE if self._any_down() else IDLE, now_ms)
            return TRIGGER
        return None

    def _enter(self, state, now_ms):
        self.state = state
        self._since = now_ms


class SosButton(ButtonPanel):
    """A panel with the SOS button alone, fed one level at a time."""

    def __init__(self, long_ms=1500, cancel_ms=3000, debounce_ms=30, kind="general"):
        ButtonPanel.__init__(self, (kind,), long_ms, cancel_ms, debounce_ms)

    def update(self, pressed, now_ms):
        """Feed the raw pin level (True = pressed) at time now_ms; return an action or None."""
        action = ButtonPanel.update(self, 0, pressed, now_ms)
        return action if action is not None else self.tick(now_ms)

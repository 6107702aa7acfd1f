# A GSM modem (SIM800L, SIM7600 and the like) on a UART, driven by AT commands in SMS text mode,
# a step at a time: step() takes what the UART has, writes at most one command, and returns. Like
# the MQTT client (mqtt.py) it never waits; every answer has a deadline instead.
#
# The subset used, from 3GPP TS 27.007 (general and network commands), TS 27.005 (SMS, text mode)
# and ITU-T V.250 (the command line itself):
#   AT, ATE0                  V.250 §6.2.4: no command echo (echo lines are ignored anyway)
#   AT+CMEE=1                 TS 27.007 §9.1: errors as "+CME ERROR: <n>" rather than a bare ERROR
#   AT+CMGF=1                 TS 27.005 §3.2.3: text mode
#   AT+CSCS="GSM"             TS 27.007 §5.5: the GSM 7-bit default alphabet, which the Siaga SMS
#                             format (sms.py) keeps to, so texts pass unchanged both ways
#   AT+CNMI=2,1,0,0,0         TS 27.005 §3.4.1: a new SMS is stored and announced by
#                             "+CMTI: <mem>,<index>"
#   AT+CMGL="ALL"             TS 27.005 §3.4.2: at start-up, what arrived while the button was off
#   AT+CMGR=<i>, AT+CMGD=<i>  TS 27.005 §3.4.3, §3.5.4: read a stored SMS, then delete it
#   AT+CMGS="<da>"            TS 27.005 §3.5.1: the modem prompts "> ", the text follows, ended
#                             by Ctrl-Z (0x1A; ESC 0x1B cancels); "+CMGS: <mr>" and OK, or
#                             "+CMS ERROR: <n>" (§3.2.5)
#   AT+CREG?                  TS 27.007 §7.2: <stat> 1 (home) or 5 (roaming) is registered
#   AT+CSQ                    TS 27.007 §8.5: <rssi> 0-31, 99 unknown
# The final result codes (V.250 §5.7.1) end each command: OK, ERROR, +CME ERROR, +CMS ERROR.
#
# SmsPath, at the end, is what the button does with it; app.Device loads this module only for a
# button that has a modem.
#
# RAM: one line buffer of MAX_LINE bytes and a few small lists with fixed caps; a step with nothing
# from the UART and nothing due allocates nothing. A line longer than MAX_LINE is dropped whole
# (nothing this driver needs is that long; a Siaga SMS is at most 160 characters).
from siagafw import proto
from siagafw.timing import Backoff, ticks_add, ticks_diff

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


MAX_LINE = const(200)
CMD_TIMEOUT_MS = const(5000)        # a plain command; a modem that has not answered by then is lost
LIST_TIMEOUT_MS = const(20000)      # +CMGL / +CMGR read from the SIM, which is slow
PROMPT_TIMEOUT_MS = const(10000)    # "> " after AT+CMGS
# The network has to carry the message before "+CMGS:" comes back; SIMCom's SIM800 AT manual gives
# 60 s as the longest answer time of AT+CMGS.
SEND_TIMEOUT_MS = const(60000)
STATUS_EVERY_MS = const(60000)      # AT+CREG? / AT+CSQ while registered...
STATUS_UNREG_MS = const(10000)      # ...and while not, to notice the network coming back soon
SEND_TRIES = const(3)               # attempts per SMS before it is reported failed
SEND_RETRY_MS = const(5000)         # between attempts, doubling
REINIT_FIRST_MS = const(2000)       # a modem that stopped answering is initialised again after
REINIT_MAX_MS = const(60000)        # this long, doubling up to this
QUEUE_MAX = const(4)                # SMS waiting to be sent
READ_MAX = const(8)                 # stored SMS indexes waiting to be read or deleted

INIT = (b"AT", b"ATE0", b"AT+CMEE=1", b"AT+CMGF=1", b'AT+CSCS="GSM"', b"AT+CNMI=2,1,0,0,0")

# What the outstanding command is (its answer is parsed accordingly).
_NONE = const(0)
_INIT = const(1)
_LIST = const(2)
_READ = const(3)
_DELETE = const(4)
_CREG = const(5)
_CSQ = const(6)
_PROMPT = const(7)
_BODY = const(8)

_DOWN = const(0)     # waiting to (re-)initialise
_STARTING = const(1)  # running INIT
_READY = const(2)


def _after(text, prefix):
    """The fields after "<prefix>" in a line, split on commas (quotes kept)."""
    return text[len(prefix):].strip().split(",")


def _unquote(field):
    field = field.strip()
    if len(field) >= 2 and field[0] == '"' and field[-1] == '"':
        return field[1:-1]
    return field


class Modem:
    """Drive a modem through read() -> bytes or None and write(bytes). Callbacks (set by the user):
        on_sms(sender, text)       an SMS read from the modem (before it is deleted there)
        on_sent(tag, ok, detail)   a send() finished: ok with the message reference, or failed
    and event(name, detail) for the console: modem_ready, modem_fault <why>."""

    def __init__(self, read, write, event, ticks_ms):
        self._read = read
        self._write = write
        self._event = event
        self.on_sms = None
        self.on_sent = None
        self._line = bytearray(MAX_LINE)
        self._len = 0
        self._skip = False             # inside a line that overflowed: drop up to its end
        self._state = _DOWN
        self._kind = _NONE
        self._deadline = 0
        self._init_i = 0
        self._backoff = Backoff(REINIT_FIRST_MS, REINIT_MAX_MS)
        now = ticks_ms()
        self._retry_at = now           # next (re-)initialisation while _DOWN
        self._status_at = now
        self._faulty = True            # not ready yet: modem_ready is reported when it is
        self._reported = False         # a modem_fault was printed for the current outage
        self.registered = None         # None until the first AT+CREG? answer
        self.csq = None
        self._queue = []               # [number, text, tag, tries, not_before]
        self._to_read = []             # indexes announced by +CMTI
        self._to_delete = []
        self._relist = True            # run AT+CMGL="ALL" (at start-up, or a list overflowed)
        self._index = -1               # the stored message being read
        self._sender = None            # its sender, from the +CMGR/+CMGL header
        self._want_text = False        # the next line is a message's text
        self._mr = None                # "+CMGS: <mr>"

    # ------------------------------------------------------------------ public

    def ready(self):
        """Initialised and answering (registration aside)."""
        return self._state == _READY

    def can_send(self):
        return len(self._queue) < QUEUE_MAX

    def pending(self):
        return len(self._queue)

    def send(self, number, text, tag):
        """Queue an SMS; on_sent(tag, ...) reports the outcome. False if the queue is full."""
        if len(self._queue) >= QUEUE_MAX:
            return False
        self._queue.append([number, text, tag, 0, None])
        return True

    def cancel(self, tag):
        """Drop queued SMS with this tag that have not reached the modem (the alarm was acked
        meanwhile). The one under way (its AT+CMGS sent) goes on: the modem may have it already."""
        busy = self._kind == _PROMPT or self._kind == _BODY
        for i in range(len(self._queue) - 1, 0 if busy else -1, -1):
            if self._queue[i][2] == tag:
                self._queue.pop(i)

    def step(self, now):
        data = self._read()
        if data:
            self._feed(data, now)
        if self._kind != _NONE:
            if ticks_diff(now, self._deadline) >= 0:
                self._timeout(now)
            return
        if self._state == _DOWN:
            if ticks_diff(now, self._retry_at) >= 0:
                # ESC first: an MCU reset in the middle of AT+CMGS leaves the modem at its "> "
                # prompt, where "AT" would only become message text (TS 27.005 §3.5.1).
                self._write(b"\x1b")
                self._state = _STARTING
                self._init_i = 0
                self._command(INIT[0], _INIT, CMD_TIMEOUT_MS, now)
            return
        if self._state == _READY:
            self._next_work(now)

    # ------------------------------------------------------------------ commands

    def _command(self, cmd, kind, timeout_ms, now):
        self._write(cmd + b"\r")
        self._kind = kind
        self._deadline = ticks_add(now, timeout_ms)

    def _next_work(self, now):
        if self._to_delete:
            self._command(b"AT+CMGD=%d" % self._to_delete[0], _DELETE, CMD_TIMEOUT_MS, now)
        elif self._relist:
            self._relist = False
            self._command(b'AT+CMGL="ALL"', _LIST, LIST_TIMEOUT_MS, now)
        elif self._to_read:
            self._index = self._to_read.pop(0)
            self._sender = None
            self._command(b"AT+CMGR=%d" % self._index, _READ, LIST_TIMEOUT_MS, now)
        elif ticks_diff(now, self._status_at) >= 0:
            self._command(b"AT+CREG?", _CREG, CMD_TIMEOUT_MS, now)
        elif self._queue and self.registered:
            item = self._queue[0]
            if item[4] is None or ticks_diff(now, item[4]) >= 0:
                self._mr = None
                self._command(b'AT+CMGS="%s"' % item[0].encode(), _PROMPT, PROMPT_TIMEOUT_MS, now)

    def _timeout(self, now):
        kind = self._kind
        self._kind = _NONE
        self._want_text = False
        if kind == _PROMPT:
            self._write(b"\x1b")  # leave the prompt, if it came late (TS 27.005 §3.5.1)
            self._send_failed(now, "no prompt")
            return
        if kind == _BODY:
            self._send_failed(now, "no answer")
        self._down(now, "no answer")

    def _down(self, now, why):
        # Reported once per outage (and at start-up): the retries while it lasts are not news.
        report = self._state == _READY or not self._reported
        self._state = _DOWN
        self._kind = _NONE
        self._to_read = []            # the listing after re-initialisation finds them again
        self._relist = True
        self._retry_at = ticks_add(now, self._backoff.next_ms())
        self._faulty = True
        if report:
            self._reported = True
            self._event("modem_fault", why)

    def _send_failed(self, now, why):
        item = self._queue[0]
        item[3] += 1
        if item[3] >= SEND_TRIES:
            self._queue.pop(0)
            if self.on_sent is not None:
                self.on_sent(item[2], False, why)
        else:
            item[4] = ticks_add(now, SEND_RETRY_MS << (item[3] - 1))

    # ------------------------------------------------------------------ input

    def _feed(self, data, now):
        line = self._line
        for c in data:
            if c == 10:                                    # LF ends a line (CR is dropped below)
                if self._skip:
                    self._skip = False
                else:
                    self._on_line(bytes(line[:self._len]).decode(), now)
                self._len = 0
            elif c == 62 and self._len == 0 and self._kind == _PROMPT:  # ">" starts the prompt
                self._prompt(now)
            elif self._skip or c < 32 or c > 126:
                # CR, NUL, Ctrl-Z, bytes of a garbled baud rate: nothing the driver reads is
                # outside printable ASCII, so they are dropped (and a decode cannot fail).
                continue
            elif self._len < MAX_LINE:
                line[self._len] = c
                self._len += 1
            else:
                self._skip = True
                self._len = 0

    def _prompt(self, now):
        item = self._queue[0]
        self._write(item[1].encode() + b"\x1a")
        self._kind = _BODY
        self._deadline = ticks_add(now, SEND_TIMEOUT_MS)

    def _on_line(self, text, now):
        if self._want_text:
            # The text follows its header line (TS 27.005 §3.4.2/§3.4.3); a blank line between
            # them, which some firmware sends, is skipped. An "OK" here ends the command: an
            # empty message, or one that reads "OK" (its text is not ours either way).
            if not text.strip():
                return
            if text != "OK" and text != "ERROR":
                self._want_text = False
                self._message(text)
                return
        text = text.strip()
        if not text:
            return
        if text == "OK":
            self._final(None, now)
        elif text == "ERROR" or text.startswith("+CME ERROR:") or text.startswith("+CMS ERROR:"):
            self._final(text, now)
        elif text.startswith("+CMTI:"):
            self._announced(text)
        elif text == "RDY" and self._state == _READY:
            # The modem restarted on its own (power dip, its watchdog): settings are gone.
            self._down(now, "modem restarted")
            self._retry_at = now
        elif self._kind == _READ and text.startswith("+CMGR:"):
            f = _after(text, "+CMGR:")
            self._sender = _unquote(f[1]) if len(f) > 1 else ""
            self._want_text = True
        elif self._kind == _LIST and text.startswith("+CMGL:"):
            f = _after(text, "+CMGL:")
            try:
                self._index = int(f[0])
            except ValueError:
                return
            self._sender = _unquote(f[2]) if len(f) > 2 else ""
            self._want_text = True
        elif self._kind == _CREG and text.startswith("+CREG:"):
            f = _after(text, "+CREG:")
            try:
                stat = int(f[1] if len(f) > 1 else f[0])
            except ValueError:
                return
            # 1 home, 5 roaming; 6/7 and 9/10 are the same "for SMS only" (an LTE modem without
            # voice, TS 27.007 §7.2): SMS can go in all of them.
            self._registration(stat in (1, 5, 6, 7, 9, 10), stat)
        elif self._kind == _CSQ and text.startswith("+CSQ:"):
            try:
                rssi = int(_after(text, "+CSQ:")[0])
            except ValueError:
                return
            self.csq = None if rssi == 99 else rssi
        elif self._kind == _BODY and text.startswith("+CMGS:"):
            self._mr = text[6:].strip()
        # Anything else (an echo, a URC this driver does not use, line noise) is ignored: the
        # final result code is what keeps commands and answers in step.

    def _announced(self, text):
        f = _after(text, "+CMTI:")
        try:
            index = int(f[-1])
        except ValueError:
            return
        if index in self._to_read:
            return
        if len(self._to_read) < READ_MAX:
            self._to_read.append(index)
        else:
            self._relist = True  # more than fit: list them all once the queue has drained

    def _message(self, text):
        if self._kind == _LIST:
            if len(self._to_delete) < READ_MAX:
                self._to_delete.append(self._index)
            else:
                self._relist = True
                return  # left on the SIM for the next listing
        elif self._kind == _READ:
            self._to_delete.append(self._index)
        else:
            return
        if self.on_sms is not None:
            self.on_sms(self._sender or "", text)

    def _registration(self, registered, stat):
        was = self.registered
        self.registered = registered
        if not registered and was is not False:
            self._faulty = True
            self._event("modem_fault", "not registered (stat %d)" % stat)

    def _ready(self):
        self._faulty = False
        self._reported = False
        self._backoff.reset()
        self._event("modem_ready", "csq=%s" % ("-" if self.csq is None else self.csq))

    def _final(self, error, now):
        kind = self._kind
        self._kind = _NONE
        self._want_text = False
        if kind == _NONE:
            return  # an answer nobody waits for (a late one, or noise that read "OK")
        if kind == _INIT:
            if error is not None and self._init_i < 2:
                self._down(now, "init: " + error)  # not even AT or ATE0: not a modem we can use
                return
            # A later setting refused (an old firmware without +CSCS, say) is not fatal: what
            # matters is checked by what follows (sends answer with +CMS ERROR, reads find nothing).
            self._init_i += 1
            if self._init_i < len(INIT):
                self._command(INIT[self._init_i], _INIT, CMD_TIMEOUT_MS, now)
            else:
                self._state = _READY
                self._relist = True
                self._status_at = now
                self.registered = None
            return
        if kind == _CREG:
            self._command(b"AT+CSQ", _CSQ, CMD_TIMEOUT_MS, now)
            return
        if kind == _CSQ:
            self._status_at = ticks_add(now, STATUS_EVERY_MS if self.registered else STATUS_UNREG_MS)
            if self.registered and self._faulty:
                self._ready()  # after start-up, an outage or a spell without network
            return
        if kind == _DELETE:
            if self._to_delete:
                self._to_delete.pop(0)  # deleted, or gone already: either way, done
            return
        if kind == _PROMPT:
            # An answer instead of the prompt: the command itself was refused.
            self._send_failed(now, error or "no prompt")
            return
        if kind == _BODY:
            if error is None:
                item = self._queue.pop(0)
                if self.on_sent is not None:
                    self.on_sent(item[2], True, self._mr or "")
            else:
                self._send_failed(now, error)


# ---------------------------------------------------------------------- the button's SMS path
#
# What the button (app.Device) does with the modem: alarms the gateway has not acknowledged go out
# by SMS, signed SMS acks are taken like MQTT ones, and a periodic test SMS proves the path
# (docs/firmware.md, "SMS path"). It lives here, not in app.py, so that a button without a modem
# loads none of it.

# The network counts as known to be down after this many connect attempts in a row have failed; an
# attempt while Wi-Fi is down counts as failed, so with the reconnect backoff (0.5 s doubling) this
# is a few seconds either way.
NET_DOWN_FAILURES = 3
SMS_RETRY_MS = 300000          # an alarm SMS the modem gave up on is tried again after this
TEST_FIRST_MS = 60000          # the first test SMS: this long after the modem is first ready...
TEST_JITTER = 10               # ...plus a random 0..1/10 of the interval, to spread a fleet
TESTS_KEPT = 4                 # test SMS whose ack may still come back
# What the SMS path has done with a pending alarm.
_WAIT = const(0)               # waiting for the fallback time (or for the network to be down)
_QUEUED = const(1)             # handed to the modem
_SENT = const(2)               # the network took it; it is not sent again
_FAILED = const(3)             # the modem gave up; tried again after SMS_RETRY_MS


class SmsPath:
    def __init__(self, dev, cfg, now):
        from siagafw import sms

        self.dev = dev
        self.hal = dev.hal
        self.fmt = sms
        hal = dev.hal
        self.modem = Modem(hal.modem_read, hal.modem_write, hal.event, hal.ticks_ms)
        self.modem.on_sms = self._on_sms
        self.modem.on_sent = self._on_sent
        self.gateway = cfg["gateway"]
        self.fallback_ms = cfg.get("fallback_s", 30) * 1000
        self.test_every_ms = cfg.get("test_every_s", 86400) * 1000
        # seq -> [what was done (_WAIT...), since when]. Not kept across a reboot: a pending alarm
        # counts its fallback time from the boot, so it may go by SMS once more after one.
        self.alarms = {}
        for seq in dev.outbox.pending:
            self.alarms[seq] = [_WAIT, now]
        self._test_at = None           # uptime_ms of the next test SMS; set when the modem is ready
        self._tests = []               # seqs of test SMS whose ack has not come back

    def raised(self, seq, now):
        self.alarms[seq] = [_WAIT, now]

    def done(self, seq):
        """The alarm left the outbox (acked by either path, or dropped): nothing more to send."""
        if self.alarms.pop(seq, None) is not None:
            self.modem.cancel(("alarm", seq))

    def test(self):
        """Send the backup-path test SMS now; its seq, or None if the modem's queue is full."""
        if not self.modem.can_send():
            return None
        d = self.dev
        seq = d.seqs.next()
        self.modem.send(self.gateway, self.fmt.test_text(d.signer, d.dev, seq), ("test", seq))
        self._tests.append(seq)
        if len(self._tests) > TESTS_KEPT:
            self._tests.pop(0)
        return seq

    def step(self, now):
        m = self.modem
        m.step(now)
        d = self.dev
        # An alarm goes by SMS once the gateway has not acked it over MQTT within fallback_s, or at
        # once while the network is known to be down. Runs every loop: allocates nothing unless a
        # send is due.
        down = d._failures >= NET_DOWN_FAILURES
        for seq in d.outbox.pending:
            st = self.alarms.get(seq)
            if st is None or not m.can_send():
                continue
            if st[0] == _WAIT:
                due = down or ticks_diff(now, st[1]) >= self.fallback_ms
            elif st[0] == _FAILED:
                due = ticks_diff(now, st[1]) >= SMS_RETRY_MS
            else:
                continue
            if due:
                self._send_alarm(seq, st)
        if not self.test_every_ms or not m.ready():
            return
        # Counted on uptime_ms, which does not wrap: the interval may be longer than ticks can
        # span (up to 30 days; ticks_add refuses half a ticks period, about 6 days, on the boards).
        if self._test_at is None:
            from random import getrandbits  # built in; only the first time

            jitter = getrandbits(30) % (self.test_every_ms // TEST_JITTER + 1)
            self._test_at = d.uptime_ms + TEST_FIRST_MS + jitter
        elif d.uptime_ms >= self._test_at and m.registered and m.can_send():
            self._test_at = d.uptime_ms + self.test_every_ms
            self.test()

    def _send_alarm(self, seq, st):
        d = self.dev
        frame = d.outbox.get(seq)
        body = d.signer.open(frame) if frame is not None else None
        if body is None:
            st[0] = _SENT  # unreadable on flash: nothing to send, and no point retrying
            return
        from json import loads

        a = loads(body)
        loc = a["loc"]
        # The same alarm as the MQTT frame: its seq, kind, place and time.
        text = self.fmt.alarm_text(d.signer, d.dev, seq, a["kind"], a["test"], loc["lat_e6"], loc["lon_e6"],
                                   a["ts"])
        self.modem.send(self.gateway, text, ("alarm", seq))
        st[0] = _QUEUED

    def _on_sent(self, tag, ok, detail):
        kind, seq = tag
        st = self.alarms.get(seq) if kind == "alarm" else None
        if ok:
            self.hal.event("sms_sent", "seq=%d kind=%s" % (seq, kind))
            if st is not None:
                st[0] = _SENT
        else:
            self.hal.event("sms_failed", "seq=%d %s" % (seq, detail))
            if st is not None:
                st[0] = _FAILED
                st[1] = self.hal.ticks_ms()

    def _on_sms(self, sender, text):
        """An SMS the modem read, from anyone: the signature decides, not the number."""
        fmt = self.fmt
        d = self.dev
        msg = fmt.open(d.signer, text)
        if msg is None:
            self.hal.event("sms_rejected", fmt.why(d.signer, text) or fmt.MALFORMED)
            return
        seq = msg["seq"]
        if msg["type"] != "ack":
            self.hal.event("sms_rejected", "not an ack")
        elif msg["dev"] != d.dev:
            self.hal.event("sms_rejected", "other device")
        elif msg["state"] == fmt.TEST_STATE:
            if seq in self._tests:
                self._tests.remove(seq)
                self.hal.event("sms_test_ok", "seq=%d" % seq)
            else:
                self.hal.event("sms_rejected", "replayed test ack seq=%d" % seq)
        elif seq in d.outbox or (seq == d.current and proto.state_rank(msg["state"]) > d.current_rank):
            # Only an ack that changes something is taken: one for a pending alarm, or a newer
            # state of the alarm on show. Anything else is a replay (or the SMS copy of an ack that
            # came over MQTT first) and must not light the ring up again.
            d._ack(seq, msg["state"], False, "sms")
        else:
            self.hal.event("sms_rejected", "replayed ack seq=%d" % seq)

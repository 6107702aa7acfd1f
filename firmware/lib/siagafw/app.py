# The button application: wires the SOS state machine, the flash outbox, the sequence counter and
# the MQTT client to a board through its HAL. The board shells (boards/*/main.py) build a HAL and
# call Device(hal, config, state_dir).run().
#
# The HAL is a small object with: ticks_ms(), sleep_ms(ms), time() (Unix s or None), sos_pressed(),
# tamper(), battery_mv(), rssi(), network_up(), ssl_wrap (None or sock -> sock), indicate(state),
# event(name, detail), feed_watchdog(). See boards/unix/hal.py for the reference (fake) HAL.
import json
import random

from siagafw import proto
from siagafw.button import CANCEL, HELD, TRIGGER, SosButton
from siagafw.mqtt import MQTTClient
from siagafw.storage import Outbox, SeqStore

try:
    from time import ticks_diff
except ImportError:  # CPython

    def ticks_diff(a, b):
        return a - b


FIRMWARE_VERSION = "0.1.0"

# What the LED and buzzer show (docs/firmware.md has the pattern for each).
IND_IDLE = "idle"
IND_NO_NETWORK = "no_network"
IND_ARMED = "armed"            # long press done, cancel window running
IND_CANCELLED = "cancelled"
IND_SENDING = "sending"        # in the outbox, no "received" ack yet
# ...then the ack states of proto.STATES: received, acknowledged, dispatched, resolved, false_alarm

RESEND_FIRST_MS = 3000         # re-send an unacknowledged alarm after this...
RESEND_MAX_MS = 60000          # ...doubling up to this
RECONNECT_FIRST_MS = 1000
RECONNECT_MAX_MS = 60000
FINAL_SHOW_MS = 30000          # how long "resolved" / "false alarm" stay on before idle
LOOP_MS = 10                   # button sampling period while idle on the network


def load_config(text):
    cfg = json.loads(text)
    if not proto.valid_device_id(cfg.get("dev")):
        raise ValueError("config: bad device id")
    proto.secret_from_hex(cfg["secret"])
    return cfg


class Device:
    def __init__(self, hal, cfg, state_dir):
        self.hal = hal
        self.cfg = cfg
        self.dev = cfg["dev"]
        self.signer = proto.Signer(proto.secret_from_hex(cfg["secret"]))
        self.seqs = SeqStore(state_dir, cfg.get("seq_block", 32))
        self.outbox = Outbox(state_dir, cfg.get("outbox_capacity", 16))
        b = cfg.get("button", {})
        self.button = SosButton(b.get("long_ms", 1500), b.get("cancel_ms", 3000), b.get("debounce_ms", 30))
        self.kind = cfg.get("kind", "general")
        self.loc = cfg["loc"]
        self.heartbeat_ms = cfg.get("heartbeat_s", 60) * 1000
        m = cfg["mqtt"]
        self.mqtt = MQTTClient(self.dev, m["host"], m.get("port", 1883), self.dev, m.get("password"),
                               m.get("keepalive_s", 30), m.get("timeout_ms", 5000), hal.ssl_wrap)
        self.mqtt.on_message = self._on_message
        self.ack_topic = proto.topic(self.dev, "ack")
        self._retry = {}            # seq -> (next send at ticks, current backoff ms)
        self._reconnect_at = hal.ticks_ms()
        self._reconnect_ms = RECONNECT_FIRST_MS
        self._next_heartbeat = hal.ticks_ms()
        self.current = None         # seq of the alarm whose state the LED shows
        self.current_rank = -1
        self._final_at = None
        self._shown = None
        pending = self.outbox.seqs()
        if pending:
            self.current = pending[-1]  # a reboot with alarms still pending shows "sending"
        self._show()

    # -------------------------------------------------------------- presses

    def raise_alarm(self, kind=None, test=False):
        now = self.hal.ticks_ms()
        seq = self.seqs.next()
        body = proto.alarm_body(self.dev, seq, kind or self.kind, self.loc, test, now, self.hal.time())
        frame = self.signer.seal(proto.encode(body))
        self.outbox.put(seq, frame)  # durable before the first send (protocol.md §6 step 1)
        self._retry[seq] = (now, RESEND_FIRST_MS)
        self.current = seq
        self.current_rank = -1
        self._final_at = None
        self.hal.event("alarm", "seq=%d kind=%s test=%d" % (seq, body["kind"], 1 if test else 0))
        self._show()
        return seq

    def _on_button(self, now):
        action = self.button.update(self.hal.sos_pressed(), now)
        if action == HELD:
            self._shown = IND_ARMED
            self.hal.indicate(IND_ARMED)
        elif action == CANCEL:
            self.hal.event("cancelled", "")
            self._shown = IND_CANCELLED
            self.hal.indicate(IND_CANCELLED)
        elif action == TRIGGER:
            self.raise_alarm()

    # -------------------------------------------------------------- acks

    def _on_message(self, topic, payload, retained):
        if topic != self.ack_topic:
            return
        body = self.signer.open(payload)
        if body is None:
            # A forged or corrupted ack must never make the button say "help is coming".
            self.hal.event("ack_rejected", "bad signature")
            return
        try:
            ack = json.loads(body)
            seq = ack["seq"]
            state = ack["state"]
            ok = ack.get("type") == "ack" and ack.get("dev") == self.dev and isinstance(seq, int)
        except (ValueError, KeyError, TypeError):
            ok = False
        rank = proto.state_rank(state) if ok else -1
        if rank < 0:
            self.hal.event("ack_rejected", "malformed")
            return
        if self.outbox.get(seq) is not None:
            self.outbox.remove(seq)  # the gateway has it durably (protocol.md §6 step 3)
            self._retry.pop(seq, None)
            self.hal.event("delivered", "seq=%d" % seq)
        if self.current is None and not retained:
            self.current = seq
        if seq == self.current and rank > self.current_rank:
            self.current_rank = rank
            self.hal.event("ack", "seq=%d state=%s" % (seq, state))
            if state in ("resolved", "false_alarm"):
                self._final_at = self.hal.ticks_ms()
            self._show()

    # -------------------------------------------------------------- display

    def _show(self):
        if self.current is not None and self.current_rank >= 0:
            ind = proto.STATES[self.current_rank]
        elif self.current is not None and self.outbox.get(self.current) is not None:
            ind = IND_SENDING
        elif not self.mqtt.connected():
            ind = IND_NO_NETWORK
        else:
            ind = IND_IDLE
        if ind != self._shown:
            self._shown = ind
            self.hal.indicate(ind)

    # -------------------------------------------------------------- network

    def _connect(self, now):
        if ticks_diff(now, self._reconnect_at) < 0:
            return
        try:
            if not self.hal.network_up():
                raise OSError("no network")
            will = self.signer.seal(proto.encode(proto.will_body(self.dev, self.seqs.next())))
            self.mqtt.connect(clean=True, will=(proto.topic(self.dev, "will"), will, False))
            self.mqtt.subscribe(self.ack_topic, 1)
        except OSError as exc:
            self.mqtt.close()
            # Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): a district's
            # buttons coming back after a power cut do not all reconnect in the same second.
            self._reconnect_at = now + random.randint(self._reconnect_ms // 2, self._reconnect_ms)
            self._reconnect_ms = min(self._reconnect_ms * 2, RECONNECT_MAX_MS)
            self.hal.event("connect_failed", str(exc))
            self._show()
            return
        self._reconnect_ms = RECONNECT_FIRST_MS
        self.hal.event("connected", "")
        # Oldest first and before anything new (protocol.md §5).
        for seq in self.outbox.seqs():
            self._retry[seq] = (now, RESEND_FIRST_MS)
        self._next_heartbeat = now
        self._show()

    def _send_due(self, now):
        for seq in self.outbox.seqs():
            due, backoff = self._retry.get(seq, (now, RESEND_FIRST_MS))
            if ticks_diff(now, due) < 0:
                continue
            frame = self.outbox.get(seq)
            if frame is None:
                continue
            self.mqtt.publish(proto.topic(self.dev, "alarm"), frame, 1)
            self._retry[seq] = (now + backoff, min(backoff * 2, RESEND_MAX_MS))
            self.hal.event("published", "seq=%d" % seq)
        if ticks_diff(now, self._next_heartbeat) >= 0:
            self._next_heartbeat = now + self.heartbeat_ms
            body = proto.status_body(self.dev, self.seqs.next(), FIRMWARE_VERSION, self.heartbeat_ms // 1000,
                                     self.hal.battery_mv(), self.hal.rssi(), self.hal.tamper(),
                                     len(self.outbox), now)
            self.mqtt.publish(proto.topic(self.dev, "status"), self.signer.seal(proto.encode(body)), 1)

    def step(self):
        now = self.hal.ticks_ms()
        self.hal.feed_watchdog()
        self._on_button(now)
        if self._final_at is not None and ticks_diff(now, self._final_at) > FINAL_SHOW_MS:
            self.current = None
            self.current_rank = -1
            self._final_at = None
            self._show()
        if not self.mqtt.connected():
            self._connect(now)
            if not self.mqtt.connected():
                self.hal.sleep_ms(LOOP_MS)
                return
        try:
            self._send_due(now)
            self.mqtt.poll(LOOP_MS)
        except OSError as exc:
            self.mqtt.close()
            self._reconnect_at = now
            self.hal.event("link_lost", str(exc))
            self._show()

    def run(self):
        while True:
            self.step()

# The button application: wires the button state machine, the flash outbox, the sequence counter,
# the indicator and the MQTT client to a board through its HAL. The board shells
# (boards/*/main.py) build a HAL and call Device(hal, config, state_dir).step() in a loop.
#
# The HAL is a small object; boards/unix/hal.py is the reference (fake) one, boards/esp32/hal.py and
# boards/picow/hal.py drive real pins, and devices/virtual.py drives it from CPython:
#   ticks_ms(), sleep_ms(ms)          monotonic wrapping milliseconds; a pause
#   time()                            Unix seconds, or None when the clock was never set
#   pressed(name)                     raw level of a button input ("sos", "medical", "fire", "crime",
#                                     "disaster": the key names of boards/*/pins.py), True = pressed
#   tamper()                          True while the enclosure is open
#   battery_mv(), rssi()              battery voltage in mV and Wi-Fi signal in dBm, or None
#   network_up()                      the link layer is up (Wi-Fi associated, address assigned); the
#                                     board keeps reconnecting by itself while it is not. Called
#                                     every step: it must return at once
#   ssl_wrap                          None, or a function socket -> TLS socket that leaves the
#                                     handshake to the first reads and writes (non-blocking)
# and, where the board has them:
#   edge_at(name)                     ticks of the input's last level change, latched by Pin.irq,
#                                     or None: a press that began while the loop was held up is
#                                     then measured from its true start
#   dns_server()                      "a.b.c.d" of the network's DNS server (DHCP), or None; without
#                                     it a broker name is looked up with socket.getaddrinfo
#   gps_read()                        bytes from the GPS UART, or None (no module, nothing waiting)
#   modem_read()                      bytes from the GSM modem's UART since the last call, or None;
#   modem_write(data)                 and bytes to it (a few dozen at a time; must not block long).
#                                     With these and "sms" in the config the button has an SMS path
#   indicate(state)                   what the indicator shows now (indicator.py names; for logs)
#   output(led, buzzer, status)       switch the ring LED, the buzzer and the status LED
#   event(name, detail)               something worth a log line ("alarm", "delivered", ...)
#   feed_watchdog()
#
# and, for updates over the air:
#   reset(why)                        restart the board (boards: machine.reset(); the fake HAL ends
#                                     the process with status 3 and the test harness restarts it)
#
# The config file is checked by siagafw/config.py, which the boards import only at start-up and
# again, with siagafw/remote.py, only while a new remote configuration is applied (protocol.md §10).
# Likewise siagafw/ota.py (updates, protocol.md §11) is imported only while it has work.
import json
import socket
import sys

from siagafw import indicator as ind
from siagafw import proto
from siagafw.button import CANCEL, HELD, TRIGGER, ButtonPanel
from siagafw.button import IDLE as PANEL_IDLE
from siagafw.mqtt import REFUSED_BAD_LOGIN, REFUSED_NOT_AUTHORISED, MQTTClient
from siagafw.storage import Outbox, SeqStore, _exists
from siagafw.timing import Backoff, plausible_unix_time, ticks_add, ticks_diff

FIRMWARE_VERSION = "0.2.0"

# Defaults; each can be changed in the device's config file (docs/firmware.md lists the keys).
RESEND_FIRST_MS = 3000         # re-send an alarm the gateway has not acknowledged after this...
RESEND_MAX_MS = 60000          # ...doubling up to this
RECONNECT_FIRST_MS = 500
# The next attempt is scheduled from when the last one ended (failed), not from when it began:
# an attempt against a broker that accepts TCP and never answers lasts mqtt.timeout_ms.
# The cap decides how soon a button notices that the broker is back after an outage: 5 s keeps it
# within a few seconds, and a connect attempt is one small TCP handshake, so even thousands of
# buttons retrying at that pace are a light load for Mosquitto.
RECONNECT_MAX_MS = 5000
# A refused login needs a technician (revoked device, wrong password); retrying every few seconds
# would only hammer the broker, so it waits this long and shows a fault meanwhile.
LOGIN_RETRY_MS = 300000
HELP_SHOW_MS = 3600000         # "received" / "help is coming" stay on at most this long...
FINAL_SHOW_MS = 30000          # ..."resolved" / "false alarm" this long, then back to idle
CANCEL_SHOW_MS = 3000
# While the lid is open a long press sends a test alarm, for this long at most: a lid left open
# (or forced by a vandal) must not turn real alarms into tests for good.
TEST_MODE_MAX_MS = 900000
BATTERY_CHECK_MS = 10000
BATTERY_LOW_MV = 3500          # one Li-ion cell under load is nearly empty here
LOOP_MS = 10                   # button sampling period (debounce and long press resolution)
# Wi-Fi counts as up only after it has stayed up this long (as mqtt_as's wifi_connect does): an
# access point at the edge of range associates and drops again within seconds.
NET_SETTLE_MS = 2000
# The broker's name is looked up once and kept; after this many failed attempts in a row it is
# looked up again (the broker may have moved).
DNS_REFRESH_AFTER = 3
DNS_TIMEOUT_MS = 1000          # per DNS query, 3 queries per lookup

_FINAL_RANK = proto.state_rank("resolved")  # this and later ack states close the incident

# Reasons for the fault indication (also in the "fault" event).
FAULT_FLASH = "flash"
FAULT_LOGIN = "login"
FAULT_BATTERY = "battery"


def _ota_work(root):
    """Whether the updater has work at boot: a version on trial, an outcome not reported yet, or a
    download staged before the reset. The boot code is loaded already (the loader ran it)."""
    import siagaboot

    s = siagaboot.state(root)
    return (s["trial"] or s["rolled_back"] is not None or s["confirmed"] is not None
            or _exists(root + "/ota/stage.json"))


def _read_int(path):
    """The number a small state file holds, or 0 when it is missing or unreadable."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


class Device:
    def __init__(self, hal, cfg, state_dir, config_path=None, board=None, root=None):
        """config_path: the config file a remote configuration is written to (None: applied in RAM
        only, as for the fleet simulator's buttons); board: its name, for the config checker and
        the heartbeat; root: where the boot code keeps its state and the update slots ("" on a
        board, the flash directory on the unix port; None: no updates, as for the simulator)."""
        self.hal = hal
        self.cfg = cfg
        self.dev = cfg["dev"]
        self.state_dir = state_dir
        self.config_path = config_path
        self.board = board
        # The remote configuration applied (persisted with the config file) and the last one
        # refused (in RAM: the retained copy is checked again after a reboot).
        self.cfg_ver = _read_int(state_dir + "/cfgver") if config_path else 0
        self.cfg_bad = None
        self.signer = proto.Signer(proto.secret_from_hex(cfg["secret"]))
        self.seqs = SeqStore(state_dir, cfg.get("seq_block", 32))
        self.outbox = Outbox(state_dir, cfg.get("outbox_capacity", 16))
        self.kind = cfg.get("kind", "general")
        types = tuple(cfg.get("types", ()))
        self.inputs = ("sos",) + types
        b = cfg.get("button", {})
        self.buttons = ButtonPanel((self.kind,) + types, b.get("long_ms", 1500), b.get("cancel_ms", 3000),
                                   b.get("debounce_ms", 30))
        gps = cfg.get("gps")
        self.gps = None
        if gps:
            from siagafw.nmea import GpsReader  # only mobile units pay for the NMEA parser's RAM

            self.gps = GpsReader(gps.get("max_age_s", 120) * 1000)
        # How long one step waits for the network. A board's loop paces itself with it; a host
        # running many devices from one scheduler (the fleet simulator) sets 0 and paces the rounds.
        self.loop_ms = cfg.get("loop_ms", LOOP_MS)
        self.battery_low_mv = cfg.get("battery_low_mv", BATTERY_LOW_MV)
        self.test_mode_max_ms = cfg.get("test_mode_max_s", TEST_MODE_MAX_MS // 1000) * 1000
        self._reconnect = Backoff(RECONNECT_FIRST_MS, RECONNECT_MAX_MS)
        self.settings(cfg)
        self.indicator = ind.Indicator(cfg.get("silent", False))
        m = cfg["mqtt"]
        self.host = m["host"]
        self.port = m.get("port", 1883)
        self.dns = cfg.get("dns")          # "a.b.c.d[:port]" instead of the board's DHCP DNS server
        # A name needs a lookup; an IPv4 address is digits and dots, an IPv6 one has colons. The
        # resolver (siagafw.udp) is imported only when a lookup is due: a button provisioned
        # with the broker's address never pays its RAM.
        self._named = ":" not in self.host and not self.host.replace(".", "").isdigit()
        self.net_settle_ms = cfg.get("net_settle_ms", NET_SETTLE_MS)
        self.mqtt = MQTTClient(self.dev, self.dev, m.get("password"), m.get("keepalive_s", 30),
                               m.get("timeout_ms", 5000), hal.ssl_wrap)
        self.mqtt.on_message = self._on_message
        self.mqtt.on_puback = self._on_puback
        self.ack_topic = proto.topic(self.dev, "ack")
        self.config_topic = proto.topic(self.dev, "config")
        self.alarm_topic = proto.topic(self.dev, "alarm")
        self.status_topic = proto.topic(self.dev, "status")
        # Updates over the air (protocol.md §11): offers are taken only with the fleet's keys.
        self.root = root
        self.ota = None                # the updater (siagafw/ota.py) while it has work
        self.ota_ver = 0               # the last offer version acted on
        self.connects = 0              # connections made since boot (the updater re-asks on each)
        self.hb_acked = False          # a heartbeat reached the broker (the trial's self-test)
        self.gw_seen = False           # a frame signed by the gateway verified (the trial's self-test)
        self.reset_why = None          # a reset the updater asked for, done once the button is quiet
        self._hb_pid = 0
        subs = [(self.ack_topic, 1), (self.config_topic, 1)]
        self.ota_topic = self.ota_data_topic = None
        if root is not None and (cfg.get("ota") or {}).get("keys"):
            self.ota_topic = proto.topic(self.dev, "ota")
            self.ota_data_topic = proto.topic(self.dev, "ota/data")
            subs.append((self.ota_topic, 1))
            subs.append((self.ota_data_topic, 0))
            self.ota_ver = _read_int(root + "/ota/offer")
        self._subs = tuple(subs)

        self._edge_at = getattr(hal, "edge_at", None)
        now = hal.ticks_ms()
        self._last_ticks = now
        self.uptime_ms = 0             # ticks wrap (about 12 days on the boards); this does not
        self.steps = 0                 # loop steps and the longest gap between two, since stats()
        self.loop_max_ms = 0
        self._online = False           # the MQTT link is up and the outbox was scheduled on it
        self._net_since = None         # when network_up() last turned true; None while it is false
        self._addr = None              # the broker's socket address, kept between attempts
        self._lookup = None            # a DNS lookup under way
        self._failures = 0             # connect attempts failed in a row
        self._will = None              # the signed will, kept until a connection carries it
        self._retry = {}               # seq -> (next send at ticks, current backoff ms)
        self._pids = {}                # MQTT packet id -> seq of an alarm awaiting its PUBACK
        self._reconnect_at = now
        self._next_heartbeat = now
        self._next_battery_check = now
        self.battery_mv = None
        self.faults = []
        self.tamper = bool(hal.tamper())
        self._tamper_since = now
        self.current = None            # seq of the alarm whose state the indicator shows
        self.current_rank = -1
        self._acked_seq = -1           # the newest ack state shown, kept after the display moves on
        self._acked_rank = -1
        self._state_at = now           # when that alarm reached its current state
        self._transient = None         # ind.ARMED or ind.CANCELLED, shown above everything else
        self._transient_at = now
        self._status_led = None
        pending = self.outbox.seqs()
        if pending:
            self.current = pending[-1]  # a reboot with alarms still pending shows "sending"
        # The SMS path (siagafw/modem.py), only for a button with a modem: the driver, its glue and
        # the SMS codec are not even imported otherwise (their RAM: docs/performance.md).
        self.sms = None
        if cfg.get("sms") and hasattr(hal, "modem_read"):
            from siagafw.modem import SmsPath

            self.sms = SmsPath(self, cfg["sms"], now)
        if root is not None and _ota_work(root):
            self._ota_begin()
        self._display(now)

    def settings(self, cfg):
        """Take the settings a remote configuration may change (protocol.md §10) from cfg: at boot,
        and again from siagafw/remote.py when one is applied (the next alarm, heartbeat, re-send and
        reconnect use them; an attempt or re-send already scheduled keeps its time)."""
        self.cfg = cfg
        self.loc = cfg["loc"]
        self.heartbeat_s = cfg.get("heartbeat_s", 60)
        r = cfg.get("retry", {})
        self.resend_first_ms = r.get("first_ms", RESEND_FIRST_MS)
        self.resend_max_ms = r.get("max_ms", RESEND_MAX_MS)
        r = cfg.get("reconnect", {})
        self._reconnect.first_ms = r.get("first_ms", RECONNECT_FIRST_MS)
        self._reconnect.max_ms = r.get("max_ms", RECONNECT_MAX_MS)
        self._reconnect.reset()
        self.login_retry_ms = r.get("login_retry_ms", LOGIN_RETRY_MS)

    # -------------------------------------------------------------- presses

    def test_mode(self, now=None):
        if not self.tamper:
            return False
        if now is None:
            now = self.hal.ticks_ms()
        return ticks_diff(now, self._tamper_since) < self.test_mode_max_ms

    def location(self, now):
        """The alarm's location: a fresh GPS fix if there is one, else the provisioned place."""
        fix = self.gps.fix(now) if self.gps is not None else None
        if fix is None:
            return self.loc
        return {"lat_e6": fix[0], "lon_e6": fix[1], "addr": self.loc["addr"], "area": self.loc["area"]}

    def raise_alarm(self, kind=None, test=False):
        now = self.hal.ticks_ms()
        seq = self.seqs.next()
        body = proto.alarm_body(self.dev, seq, kind or self.kind, self.location(now), test, self.uptime_ms,
                                plausible_unix_time(self.hal.time()))
        frame = self.signer.seal(proto.encode(body))
        if len(self.outbox) >= self.outbox.capacity:
            # Bounded outbox (storage.py): the oldest pending press gives way to this one. Logged,
            # never silent; the gateway groups a button's presses into one incident anyway.
            self.hal.event("outbox_full", "dropped seq=%d" % self.outbox.pending[0])
            if self.sms is not None:
                self.sms.done(self.outbox.pending[0])
        self.outbox.put(seq, frame)  # durable before the first send (protocol.md §6 step 1)
        if self.outbox.fault or self.seqs.fault:
            self._fault(FAULT_FLASH, True)
        self._retry[seq] = (now, self.resend_first_ms)
        if self.sms is not None:
            self.sms.raised(seq, now)
        self.current = seq
        self.current_rank = -1
        self._state_at = now
        self._transient = None
        self.hal.event("alarm", "seq=%d kind=%s test=%d" % (seq, body["kind"], 1 if test else 0))
        self.indicator.restart()
        self._display(now)
        return seq

    def _read_buttons(self, now, prev):
        action = None
        for i in range(len(self.inputs)):
            name = self.inputs[i]
            level = self.hal.pressed(name)
            at = None
            if self._edge_at is not None and bool(level) != self.buttons.raw(i):
                # The level changed since the last sample, which was at prev: if the board latched
                # the edge in that interval, the change counts from then.
                t = self._edge_at(name)
                if t is not None and ticks_diff(t, prev) >= 0 and ticks_diff(now, t) >= 0:
                    at = t
            a = self.buttons.update(i, level, now, at)
            if a is not None:
                action = a
        a = self.buttons.tick(now)
        if a is not None:
            action = a
        if action == HELD:
            self._transient = ind.ARMED
            self._transient_at = now
        elif action == CANCEL:
            self.hal.event("cancelled", "")
            self._transient = ind.CANCELLED
            self._transient_at = now
        elif action == TRIGGER:
            self.raise_alarm(self.buttons.kind, self.test_mode(now))

    # -------------------------------------------------------------- supervision

    def _fault(self, name, active):
        if active and name not in self.faults:
            self.faults.append(name)
            self.hal.event("fault", name)
        elif not active and name in self.faults:
            self.faults.remove(name)
            self.hal.event("fault_cleared", name)

    def _supervise(self, now):
        tamper = bool(self.hal.tamper())
        if tamper != self.tamper:
            self.tamper = tamper
            self._tamper_since = now
            self.hal.event("tamper", "1" if tamper else "0")
            self._next_heartbeat = now  # tell the gateway at once, not at the next interval
        if ticks_diff(now, self._next_battery_check) >= 0:
            self._next_battery_check = ticks_add(now, BATTERY_CHECK_MS)
            self.battery_mv = self.hal.battery_mv()
            low = self.battery_mv is not None and self.battery_mv < self.battery_low_mv
            if low != (FAULT_BATTERY in self.faults):
                self._fault(FAULT_BATTERY, low)
                self._next_heartbeat = now
        if self.current_rank >= 0:
            final = self.current_rank >= _FINAL_RANK  # resolved or false alarm (no tuple per step)
            if ticks_diff(now, self._state_at) > (FINAL_SHOW_MS if final else HELP_SHOW_MS):
                self.current = None
                self.current_rank = -1
        if self._transient == ind.CANCELLED and ticks_diff(now, self._transient_at) > CANCEL_SHOW_MS:
            self._transient = None

    # -------------------------------------------------------------- acks

    def _on_puback(self, pid):
        if pid == self._hb_pid:
            self._hb_pid = 0
            self.hb_acked = True
        if self.ota is not None:
            self.ota.puback(pid)
        seq = self._pids.pop(pid, None)
        if seq is not None:
            # The broker has it in memory only; the alarm stays in the outbox (protocol.md §6).
            self.hal.event("puback", "seq=%d" % seq)

    def _on_message(self, topic, payload, retained):
        if topic == self.config_topic:
            self._on_config(payload)
            return
        if topic == self.ota_data_topic:
            if self.ota is not None:  # chunks nobody asked for cost nothing more than this test
                self._ota_call(self.ota.data, payload)
            return
        if topic == self.ota_topic:
            self._on_ota(payload)
            return
        if topic != self.ack_topic:
            return
        body = self.signer.open(payload)
        if body is None:
            # A forged or corrupted ack must never make the button say "help is coming".
            self.hal.event("ack_rejected", "bad signature")
            return
        self.gw_seen = True
        try:
            ack = json.loads(body)
            seq = ack["seq"]
            state = ack["state"]
            ok = (ack.get("v") == proto.VERSION and ack.get("type") == "ack" and ack.get("dev") == self.dev
                  and isinstance(seq, int) and not isinstance(seq, bool))
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok or proto.state_rank(state) < 0:
            self.hal.event("ack_rejected", "malformed")
            return
        self._ack(seq, state, retained)

    def _ack(self, seq, state, retained=False, via=None):
        """A verified ack of this button's alarm `seq` (state in proto.STATES), from MQTT or, with
        via="sms", from an SMS: the same rules for both paths."""
        rank = proto.state_rank(state)
        now = self.hal.ticks_ms()
        if seq in self.outbox:
            self.outbox.remove(seq)  # the gateway has it durably (protocol.md §6 step 3)
            self._retry.pop(seq, None)
            if self.sms is not None:
                self.sms.done(seq)
            self.hal.event("delivered", "seq=%d" % seq)
        if seq == self._acked_seq and rank <= self._acked_rank:
            # A state this button already showed for this alarm, published again (after the
            # gateway reconnected): an incident resolved hours ago must not light up again.
            return
        if self.current is None and not retained:
            self.current = seq
        # States only move forward (protocol.md §4.4): a late or replayed ack cannot undo one.
        if seq == self.current and rank > self.current_rank:
            self.current_rank = rank
            self._state_at = now
            self._acked_seq = seq
            self._acked_rank = rank
            if via is None:
                self.hal.event("ack", "seq=%d state=%s" % (seq, state))
            else:
                self.hal.event("ack", "seq=%d state=%s via=%s" % (seq, state, via))
        self._display(now)

    def _on_config(self, payload):
        """A remote configuration (protocol.md §10): verified and screened here; only a version not
        seen before loads siagafw/remote.py (and the config checker) to apply it, so the retained
        copy the broker sends at every connect costs a MAC and a JSON parse, not an import."""
        body = self.signer.open(payload)
        if body is None:
            self.hal.event("config_rejected", "bad signature")
            return
        self.gw_seen = True
        try:
            msg = json.loads(body)
            ver = msg["ver"]
            ok = (msg.get("v") == proto.VERSION and msg.get("type") == "config" and msg.get("dev") == self.dev
                  and isinstance(ver, int) and not isinstance(ver, bool) and 0 < ver <= proto.CONFIG_VER_MAX)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            self.hal.event("config_rejected", "malformed")
            return
        if ver <= self.cfg_ver or ver == self.cfg_bad:
            self.hal.event("config_seen", "ver=%d" % ver)
            return
        # What this import loads is dropped again after (a board dropped the checker after boot).
        fresh = [n for n in ("remote", "config") if "siagafw." + n not in sys.modules]
        try:
            from siagafw import remote

            remote.apply(self, ver, msg.get("set"), fresh)
        except Exception as exc:  # noqa: BLE001 - MemoryError above all: refused, never a crash
            # A crash would reset the board, and the retained copy would crash it again at every
            # connect. Refused instead, until the next boot (a fresh heap) tries it once more.
            self.cfg_bad = ver
            self.hal.event("config_rejected", "ver=%d %s: %s" % (ver, type(exc).__name__, exc))

    # -------------------------------------------------------------- updates

    def _on_ota(self, payload):
        """An offer or a withdrawal (protocol.md §11), screened as a config is: the retained copy
        at each connect costs a MAC and a JSON parse, and only a new version loads siagafw/ota.py."""
        body = self.signer.open(payload)
        if body is None:
            self.hal.event("ota_rejected", "bad signature")
            return
        self.gw_seen = True
        try:
            msg = json.loads(body)
            ver = msg["ver"]
            ok = (msg.get("v") == proto.VERSION and msg.get("type") == "ota" and msg.get("dev") == self.dev
                  and isinstance(ver, int) and not isinstance(ver, bool) and 0 < ver <= proto.CONFIG_VER_MAX)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            self.hal.event("ota_rejected", "malformed")
            return
        if ver <= self.ota_ver:
            self.hal.event("ota_seen", "ver=%d" % ver)
            return
        if self.reset_why is not None:
            return  # a reset is due: the retained copy comes back after it
        if self._ota_begin() is not None:
            self._ota_call(self.ota.offer, msg)

    def _ota_begin(self):
        if self.ota is None:
            try:
                from siagafw import ota

                self.ota = ota.Updater(self, self.root)
            except Exception as exc:  # noqa: BLE001 - MemoryError above all: the button goes on
                self.hal.event("ota_fault", "%s: %s" % (type(exc).__name__, exc))
                self._ota_failed()
        return self.ota

    def _ota_call(self, fn, arg):
        try:
            if fn(arg):
                self._ota_end()
        except Exception as exc:  # noqa: BLE001 - an update must never stop the alarms
            self.hal.event("ota_fault", "%s: %s" % (type(exc).__name__, exc))
            self._ota_failed()

    def _ota_failed(self):
        """The updater failed (out of memory, say). A version on trial that cannot even run its
        updater goes back to the previous one; otherwise the download is dropped for this boot."""
        self.ota = None
        import siagaboot

        if siagaboot.on_trial(siagaboot.state(self.root)):
            siagaboot.rollback(self.root, "selftest")
            self.reset_when_quiet("ota fault in trial")

    def reset_when_quiet(self, why):
        """Reset (hal.reset) at the first loop step when the button is quiet (_quiet): the updater
        asks for it after "installed" and when a trial fails."""
        if self.reset_why is None:
            self.reset_why = why
            self.hal.event("reset_due", why)

    def _quiet(self):
        """Nothing a reset would cut short: no input down, no long press or cancel window under way,
        no "armed" or "cancelled" shown, and no alarm waiting for its ack while there is a link to
        send it on (offline, a reset loses nothing: the outbox is on flash)."""
        if self.buttons.state != PANEL_IDLE or self._transient is not None:
            return False
        for i in range(len(self.inputs)):
            if self.buttons.raw(i):
                return False
        return not (self._online and len(self.outbox))

    def _ota_end(self):
        from siagafw import ota

        self.ota = None
        ota.forget()

    def sms_test(self):
        """Send the backup-path test SMS now (a technician's command); its seq, or None."""
        return self.sms.test() if self.sms is not None else None

    # -------------------------------------------------------------- display

    def _shown_state(self, now):
        if self._transient is not None:
            return self._transient
        if self.current is not None:
            if self.current_rank >= 0:
                return proto.STATES[self.current_rank]
            if self.current in self.outbox:
                return ind.SENDING
        if self.faults:
            return ind.FAULT
        if self.test_mode(now):
            return ind.TEST_MODE
        if not self.mqtt.connected():
            return ind.NO_NETWORK
        return ind.IDLE

    def _display(self, now):
        state = self._shown_state(now)
        if self.indicator.show(state, now):
            self.hal.indicate(state)
        status = self.mqtt.connected()
        if self.indicator.update(now) or status != self._status_led:
            self._status_led = status
            self.hal.output(self.indicator.led, self.indicator.buzzer, status)

    # -------------------------------------------------------------- network

    def _net_ready(self, now):
        """Whether the link layer is up and has stayed up net_settle_ms."""
        if not self.hal.network_up():
            self._net_since = None
            return False
        if self._net_since is None:
            self._net_since = now
        return ticks_diff(now, self._net_since) >= self.net_settle_ms

    def _broker_address(self):
        """The broker's socket address; None while a DNS lookup is under way. OSError if none."""
        if self._addr is not None:
            return self._addr
        host = self.host
        server = self.dns
        if server is None and self._named and hasattr(self.hal, "dns_server"):
            server = self.hal.dns_server()
        if not self._named or server is None:
            # An address needs no lookup; without a DNS server to ask (a Linux host) the system's
            # resolver answers.
            self._addr = socket.getaddrinfo(host, self.port)[0][-1]
            return self._addr
        if self._lookup is None:
            from siagafw import udp

            ip, port = udp.server_address(server, udp.DNS_PORT)
            self._lookup = udp.Lookup(host, ip, port, DNS_TIMEOUT_MS)
        ip = self._lookup.poll()
        if ip is None:
            return None
        self._lookup = None
        self.hal.event("resolved", "%s=%s" % (host, ip))
        self._addr = socket.getaddrinfo(ip, self.port)[0][-1]
        return self._addr

    def _connect(self, now, net):
        if not net and self._lookup is not None:
            self._lookup.close()  # asked over a link that has gone: ask again when it is back
            self._lookup = None
        if self._lookup is None and ticks_diff(now, self._reconnect_at) < 0:
            return
        if not net:
            if self._net_since is None:  # down, not merely settling
                self._attempt_failed(now, "no network")
            return
        try:
            addr = self._broker_address()
            if addr is None:
                return
            if self._will is None:
                # Attempts that fail before their CONNECT goes out (no network, DNS, TCP refused)
                # reuse the will, so an outage does not spend sequence numbers (and flash writes)
                # on wills no broker saw. Once a CONNECT went out, a broker may hold its will, and
                # the gateway would refuse the same sequence number again: the next gets a new one.
                self._will = self.signer.seal(proto.encode(proto.will_body(self.dev, self.seqs.next())))
            self.mqtt.start(addr, True, (proto.topic(self.dev, "will"), self._will, False), self._subs)
        except (OSError, ValueError) as exc:
            if self._lookup is not None:
                self._lookup.close()
                self._lookup = None
            self._attempt_failed(self.hal.ticks_ms(), str(exc))

    def _attempt_failed(self, end, why):
        """A connect attempt ended without a link at ticks `end`: schedule the next from then."""
        self.mqtt.close()
        self._failures += 1
        if self.mqtt.sent_connect:
            self._will = None
        refused = self.mqtt.refused
        self.mqtt.refused = 0
        if refused in (REFUSED_BAD_LOGIN, REFUSED_NOT_AUTHORISED):
            delay = self.login_retry_ms
            self._fault(FAULT_LOGIN, True)
        else:
            delay = self._reconnect.next_ms()
        if self._failures % DNS_REFRESH_AFTER == 0 and self._named:
            self._addr = None  # look the name up again before the next attempt
        self._reconnect_at = ticks_add(end, delay)
        self.hal.event("connect_failed", "%s; retry in %d ms" % (why, delay))

    def _on_connected(self, now):
        self._online = True
        self.connects += 1
        self._failures = 0
        self._will = None
        self._fault(FAULT_LOGIN, False)
        self._reconnect.reset()
        self.hal.event("connected", "")
        # Oldest first and before anything new (protocol.md §5).
        for seq in self.outbox.seqs():
            self._retry[seq] = (now, self.resend_first_ms)
        self._next_heartbeat = now

    def _link_down(self, why):
        now = self.hal.ticks_ms()
        self.mqtt.close()
        self._pids = {}
        if not self._online:
            self._attempt_failed(now, why)
            return
        self._online = False
        self._reconnect_at = now  # try again at once; the backoff starts if that fails
        self.hal.event("link_lost", why)

    def _send_due(self, now):
        # Runs every loop: iterate the outbox's own list and allocate nothing unless a send is due.
        for seq in self.outbox.pending:
            retry = self._retry.get(seq)
            due, backoff = (now, self.resend_first_ms) if retry is None else retry
            if ticks_diff(now, due) < 0:
                continue
            if not self.mqtt.can_publish():
                return
            frame = self.outbox.get(seq)
            if frame is None:
                continue
            self._pids[self.mqtt.publish(self.alarm_topic, frame, 1)] = seq
            self._retry[seq] = (ticks_add(now, backoff), min(backoff * 2, self.resend_max_ms))
            self.hal.event("published", "seq=%d" % seq)
        if ticks_diff(now, self._next_heartbeat) >= 0 and self.mqtt.can_publish():
            self._next_heartbeat = ticks_add(now, self.heartbeat_s * 1000)
            seq = self.seqs.next()
            body = proto.status_body(self.dev, seq, FIRMWARE_VERSION, self.heartbeat_s, self.battery_mv,
                                     self.hal.rssi(), self.tamper, len(self.outbox), self.uptime_ms,
                                     self.cfg_ver, self.cfg_bad, self.board)
            self._hb_pid = self.mqtt.publish(self.status_topic, self.signer.seal(proto.encode(body)), 1)
            self.hal.event("heartbeat", "seq=%d" % seq)

    # -------------------------------------------------------------- main loop

    def stats(self):
        """Loop steps and the longest gap between two since the last call (then reset)."""
        out = "steps=%d loop_max_ms=%d" % (self.steps, self.loop_max_ms)
        self.steps = 0
        self.loop_max_ms = 0
        return out

    def step(self):
        now = self.hal.ticks_ms()
        prev = self._last_ticks
        gap = ticks_diff(now, prev)
        self.uptime_ms += gap
        self._last_ticks = now
        self.steps += 1
        if gap > self.loop_max_ms:
            self.loop_max_ms = gap
        self.hal.feed_watchdog()
        self._read_buttons(now, prev)
        if self.gps is not None:
            data = self.hal.gps_read()
            if data:
                self.gps.feed(data, now)
        self._supervise(now)
        if self.sms is not None:
            self.sms.step(now)
        net = self._net_ready(now)
        if self._online and not self.mqtt.connected():
            self._link_down("closed")  # by the host (the fleet simulator's power cut)
        elif self.mqtt.active() and self._net_since is None:
            self._link_down("no network")
        if not self.mqtt.active():
            self._connect(now, net)
        if self.mqtt.active():
            try:
                if self._online:
                    self._send_due(now)
                self.mqtt.poll(self.loop_ms)
                if not self._online and self.mqtt.connected():
                    self._on_connected(self.hal.ticks_ms())
            except OSError as exc:
                self._link_down(str(exc))
        elif self.loop_ms:
            self.hal.sleep_ms(self.loop_ms)
        if self.ota is not None:
            self._ota_call(self.ota.step, self.hal.ticks_ms())
        if self.reset_why is not None and self._quiet():
            self.mqtt.disconnect()
            self.hal.reset(self.reset_why)
        self._display(self.hal.ticks_ms())

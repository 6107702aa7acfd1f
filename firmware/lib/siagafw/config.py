# The device's config file (written by provisioning): parsed and checked once at start-up. It lives
# apart from app.py so that a board can drop this module after boot and get its RAM back
# (boards/common/shell.py); docs/firmware.md lists every key.
import json

from siagafw import proto

# Optional emergency-type buttons: their input names (pins.py keys) are also their alarm kinds.
TYPE_INPUTS = ("medical", "fire", "crime", "disaster")
MAX_ADDR_BYTES = 200           # keeps every alarm frame well under protocol.md's 1024 bytes
MAX_AREA_BYTES = 64            # the command center's intake takes area codes up to 64 characters
# What each board can honour. The shells pass their board name to load_config, and so does
# provisioning for the board it writes to, so a config a board cannot keep is refused before it
# reaches the pole.
BOARDS = {
    # The ESP32 port takes any watchdog timeout; a minute is already far past any pause.
    "esp32": {"watchdog_max_ms": 60000},
    # The RP2040 watchdog counts at most 8388 ms (MicroPython machine.WDT docs, "On rp2040 devices
    # the maximum timeout is 8388 ms").
    "picow": {"watchdog_max_ms": 8388},
    "unix": {"watchdog_max_ms": 60000},
}
# The loop's longest unavoidable pause is far shorter than this (docs/firmware.md, "The loop
# never waits"); a watchdog below it would reset a healthy button.
WATCHDOG_MIN_MS = 4000
MAX_LOOP_MS = 50               # the buttons are sampled at least this often


def _need(ok, field, hint):
    if not ok:
        raise ValueError("config %s: %s" % (field, hint))


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _text(v, low, high):
    """v is text of low..high bytes in UTF-8 (JSON can carry a lone surrogate, which has none)."""
    if not isinstance(v, str):
        return False
    try:
        n = len(v.encode())
    except UnicodeError:
        return False
    return low <= n <= high


def _int_in(obj, key, default, low, high):
    v = obj.get(key, default)
    return _is_int(v) and low <= v <= high


def load_config(text, board=None):
    """Parse and check the device's config file; a ValueError says which key and what to write.

    board ("esp32", "picow", "unix" or None) adds the limits of that board (BOARDS)."""
    try:
        cfg = json.loads(text)
    except ValueError:
        cfg = None
    _need(isinstance(cfg, dict), "file", "must be one JSON object")
    _need(proto.valid_device_id(cfg.get("dev")), "dev", "3-32 characters of a-z, 0-9 and -, e.g. jkt-menteng-0042")
    try:
        proto.secret_from_hex(cfg.get("secret"))
    except (ValueError, TypeError):
        _need(False, "secret", "the device secret as 64 hex characters")
    m = cfg.get("mqtt")
    _need(isinstance(m, dict) and _text(m.get("host"), 1, 253), "mqtt.host", "the broker's host name or address")
    _need(_is_int(m.get("port", 1883)) and 0 < m.get("port", 1883) < 65536, "mqtt.port", "a TCP port, e.g. 8883")
    _need(_text(m.get("password", ""), 0, 256), "mqtt.password", "the broker password as text")
    tls = m.get("tls")
    _need(tls is None or (isinstance(tls, dict) and _text(tls.get("ca"), 1, 255)
                          and _text(tls.get("server_hostname", "x"), 1, 253)), "mqtt.tls",
          "{\"ca\": \"/ca.crt\"} and optionally \"server_hostname\"")
    # keepalive is a 16-bit field [MQTT-3.1.2.10]; below 10 s the pings alone keep the radio busy.
    _need(_int_in(m, "keepalive_s", 30, 10, 65535), "mqtt.keepalive_s", "seconds, 10-65535 (default 30)")
    # A PUBACK or PINGRESP missing after timeout_ms drops the link: it must come well before the
    # broker's own keepalive limit, and each connect stage gets this long.
    _need(_int_in(m, "timeout_ms", 5000, 1000, 60000) and m.get("timeout_ms", 5000) < m.get("keepalive_s", 30) * 1000,
          "mqtt.timeout_ms", "1000-60000 ms and less than keepalive_s (default 5000)")
    loc = cfg.get("loc")
    _need(isinstance(loc, dict) and _is_int(loc.get("lat_e6")) and _is_int(loc.get("lon_e6")), "loc",
          "lat_e6 and lon_e6 as integers in millionths of a degree, e.g. -6175392")
    _need(-90000000 <= loc["lat_e6"] <= 90000000 and -180000000 <= loc["lon_e6"] <= 180000000, "loc",
          "latitude within +-90 and longitude within +-180 degrees")
    _need(_text(loc.get("addr"), 0, MAX_ADDR_BYTES), "loc.addr",
          "the address as text of at most %d bytes" % MAX_ADDR_BYTES)
    _need(_text(loc.get("area"), 0, MAX_AREA_BYTES), "loc.area",
          "the administrative-area code as text of at most %d bytes" % MAX_AREA_BYTES)
    _need(cfg.get("kind", "general") in proto.KINDS, "kind", "one of " + ", ".join(proto.KINDS))
    types = cfg.get("types", [])
    _need(isinstance(types, list), "types", "a list of fitted type buttons, e.g. [\"medical\", \"fire\"]")
    for t in types:
        _need(t in TYPE_INPUTS and types.count(t) == 1, "types", "each at most once, of " + ", ".join(TYPE_INPUTS))
    b = cfg.get("button", {})
    _need(isinstance(b, dict), "button", "an object with long_ms, cancel_ms, debounce_ms")
    _need(_is_int(b.get("long_ms", 1500)) and b.get("long_ms", 1500) >= 100, "button.long_ms",
          "the long press in ms, at least 100 (default 1500)")
    _need(_is_int(b.get("cancel_ms", 3000)) and b.get("cancel_ms", 3000) >= 0, "button.cancel_ms",
          "the cancel window in ms, 0 for none (default 3000)")
    _need(_is_int(b.get("debounce_ms", 30)) and 0 <= b.get("debounce_ms", 30) <= 200, "button.debounce_ms",
          "0-200 ms (default 30)")
    _need(_is_int(cfg.get("heartbeat_s", 60)) and cfg.get("heartbeat_s", 60) >= 5, "heartbeat_s",
          "the heartbeat interval in seconds, at least 5 (default 60)")
    _timings(cfg, board)
    _extras(cfg, board)
    return cfg


def _pair(cfg, key, first, first_low, most, high):
    """A {"first_ms", "max_ms"} backoff: first within [first_low, high], first <= max <= high."""
    r = cfg.get(key, {})
    _need(isinstance(r, dict), key, "an object with first_ms and max_ms")
    f = r.get("first_ms", first)
    _need(_is_int(f) and first_low <= f <= high, key + ".first_ms", "%d-%d ms (default %d)" % (first_low, high, first))
    _need(_int_in(r, "max_ms", most, f, high), key + ".max_ms", "first_ms-%d ms (default %d)" % (high, most))
    return r


def _timings(cfg, board):
    limits = BOARDS.get(board) if board is not None else None
    _need(board is None or limits is not None, "board", "one of " + ", ".join(BOARDS))
    wd_max = limits["watchdog_max_ms"] if limits else 60000
    _need("watchdog_ms" not in cfg or _int_in(cfg, "watchdog_ms", 0, WATCHDOG_MIN_MS, wd_max), "watchdog_ms",
          "%d-%d ms on this board, or leave it out for the board's default" % (WATCHDOG_MIN_MS, wd_max))
    _need(_int_in(cfg, "loop_ms", 10, 0, MAX_LOOP_MS), "loop_ms", "0-%d ms (default 10)" % MAX_LOOP_MS)
    _need(_int_in(cfg, "net_settle_ms", 2000, 0, 30000), "net_settle_ms", "0-30000 ms (default 2000)")
    _pair(cfg, "retry", 3000, 500, 60000, 3600000)
    r = _pair(cfg, "reconnect", 500, 100, 5000, 600000)
    _need(_int_in(r, "login_retry_ms", 300000, 10000, 86400000), "reconnect.login_retry_ms",
          "10000-86400000 ms (default 300000)")
    _need(_int_in(cfg, "test_mode_max_s", 900, 10, 86400), "test_mode_max_s", "10-86400 s (default 900)")


def _extras(cfg, board):
    dns = cfg.get("dns")
    if dns is not None:
        from siagafw import udp  # only for a config that names a DNS server: it costs RAM

        try:
            udp.server_address(dns if isinstance(dns, str) else "", udp.DNS_PORT)
        except ValueError:
            _need(False, "dns", "the DNS server as an IPv4 address, e.g. \"192.168.1.1\" (default: from DHCP)")
    ntp = cfg.get("ntp", "pool.ntp.org")
    _need(ntp is False or _text(ntp, 1, 253), "ntp", "the NTP server's name, or false")
    _need(_int_in(cfg, "battery_low_mv", 3500, 2500, 5000), "battery_low_mv", "2500-5000 mV (default 3500)")
    _need(_int_in(cfg, "seq_block", 32, 1, 1000), "seq_block", "1-1000 (default 32)")
    _need(_int_in(cfg, "outbox_capacity", 16, 1, 64), "outbox_capacity", "1-64 alarms (default 16)")
    _need(isinstance(cfg.get("silent", False), bool), "silent", "true or false")
    _need(cfg.get("buzzer", "active") in ("active", "passive"), "buzzer", "active or passive")
    wifi = cfg.get("wifi", {})
    _need(isinstance(wifi, dict) and _text(wifi.get("ssid", ""), 0, 32) and _text(wifi.get("password", ""), 0, 64)
          and isinstance(wifi.get("power_save", False), bool) and _text(wifi.get("country", "ID"), 2, 2),
          "wifi", "ssid (at most 32 bytes) and password (at most 64) as text, power_save true/false, "
          "country as two letters")
    _networks(wifi.get("networks"))
    gps = cfg.get("gps")
    _need(gps is None or gps is False or (isinstance(gps, dict) and _int_in(gps, "baud", 9600, 1200, 921600)
                                          and _int_in(gps, "max_age_s", 120, 1, 86400)),
          "gps", "{\"baud\": 9600, \"max_age_s\": 120}")
    _sms(cfg.get("sms"), board)
    _ota(cfg.get("ota"))


MAX_NETWORKS = 3


def _wifi_password(v):
    """WPA2-Personal: none (an open network), a passphrase of 8-63 bytes, or the key as 64 hex digits."""
    if not isinstance(v, str):
        return False
    if len(v) == 64:
        for c in v:
            if c not in "0123456789abcdefABCDEF":
                return False
        return True
    return v == "" or _text(v, 8, 63)


def _networks(nets):
    """The networks a remote configuration set (protocol.md §10.2), tried in order by the board;
    without them the board tries wifi.ssid. The hint never repeats a value (a password)."""
    if nets is None:
        return
    _need(isinstance(nets, list) and 1 <= len(nets) <= MAX_NETWORKS, "wifi.networks",
          "a list of 1-%d networks {\"ssid\", \"password\"}" % MAX_NETWORKS)
    for n in nets:
        _need(isinstance(n, dict) and sorted(n) == ["password", "ssid"] and _text(n["ssid"], 1, 32),
              "wifi.networks", "each {\"ssid\": 1-32 bytes, \"password\": ...}, nothing else")
        _need(_wifi_password(n["password"]), "wifi.networks",
              "each password empty (open), 8-63 bytes, or 64 hex digits")


def _hex64(v):
    if not isinstance(v, str) or len(v) != 64:
        return False
    for c in v:
        if c not in "0123456789abcdef":
            return False
    return True


def _ota(o):
    """Updates over the air (siagafw/ota.py): the fleet's public keys, the trial's limits. Without
    keys the button ignores offers. Written by provisioning only: never remotely configurable."""
    if o is None:
        return
    _need(isinstance(o, dict), "ota", "{\"keys\": [\"<64 hex>\"], \"trial_s\": 300, \"max_tries\": 3}")
    keys = o.get("keys", [])
    _need(isinstance(keys, list) and len(keys) <= 4, "ota.keys", "a list of 1-4 fleet public keys")
    for k in keys:
        _need(_hex64(k), "ota.keys", "each key as 64 lowercase hex characters (siaga firmware keygen)")
    _need(_int_in(o, "trial_s", 300, 10, 3600), "ota.trial_s",
          "10-3600 s for a new version to pass its self-test (default 300)")
    _need(_int_in(o, "max_tries", 3, 1, 10), "ota.max_tries",
          "1-10 boots of a new version before it is rolled back (default 3)")
    _need(_int_in(o, "stall_s", 600, 60, 3600), "ota.stall_s",
          "60-3600 s a download may go without a new byte before it is given up (default 600)")


def _e164(v):
    """An international number written "+" and 8-15 digits: ITU-T E.164 caps a number at 15 digits,
    and a country code with a subscriber number is not shorter than 8 in practice."""
    if not isinstance(v, str) or len(v) < 9 or len(v) > 16 or v[0] != "+":
        return False
    for c in v[1:]:
        if not "0" <= c <= "9":
            return False
    return True


def _sms(s, board):
    if s is None:
        return
    _need(isinstance(s, dict), "sms",
          "{\"gateway\": \"+62...\", \"fallback_s\": 30, \"test_every_s\": 86400}")
    _need(_e164(s.get("gateway")), "sms.gateway",
          "the gateway modem's number as + and 8-15 digits, e.g. \"+6281100000001\"")
    _need(_int_in(s, "fallback_s", 30, 5, 3600), "sms.fallback_s",
          "5-3600 s: an alarm not acknowledged over the network this long is also sent by SMS (default 30)")
    t = s.get("test_every_s", 86400)
    _need(_is_int(t) and (t == 0 or 3600 <= t <= 2592000), "sms.test_every_s",
          "3600-2592000 s between backup-path test SMS, or 0 for none (default 86400, daily)")
    if "device" in s:
        # The unix port's stand-in for the UART: a serial device or pseudo-terminal path. The
        # boards have the modem on fixed pins (pins.py) instead.
        _need(board in (None, "unix"), "sms.device", "only for the unix port; leave it out on a board")
        _need(_text(s["device"], 1, 255), "sms.device", "the modem's serial device path, e.g. \"/dev/ttyUSB0\"")

# The device's config file (written by provisioning): parsed and checked once at start-up. It lives
# apart from app.py so that a board can drop this module after boot and get its RAM back
# (boards/common/shell.py); docs/firmware.md lists every key.
import json

from siagafw import proto

# Optional emergency-type buttons: their input names (pins.py keys) are also their alarm kinds.
TYPE_INPUTS = ("medical", "fire", "crime", "disaster")
MAX_ADDR_BYTES = 200           # keeps every alarm frame well under protocol.md's 1024 bytes


def _need(ok, field, hint):
    if not ok:
        raise ValueError("config %s: %s" % (field, hint))


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def load_config(text):
    """Parse and check the device's config file; a ValueError says which key and what to write."""
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
    _need(isinstance(m, dict) and isinstance(m.get("host"), str) and m.get("host"), "mqtt.host",
          "the broker's host name or address")
    _need(_is_int(m.get("port", 1883)) and 0 < m.get("port", 1883) < 65536, "mqtt.port", "a TCP port, e.g. 8883")
    loc = cfg.get("loc")
    _need(isinstance(loc, dict) and _is_int(loc.get("lat_e6")) and _is_int(loc.get("lon_e6")), "loc",
          "lat_e6 and lon_e6 as integers in millionths of a degree, e.g. -6175392")
    _need(-90000000 <= loc["lat_e6"] <= 90000000 and -180000000 <= loc["lon_e6"] <= 180000000, "loc",
          "latitude within +-90 and longitude within +-180 degrees")
    _need(isinstance(loc.get("addr"), str) and len(loc["addr"].encode()) <= MAX_ADDR_BYTES, "loc.addr",
          "the address as text of at most %d bytes" % MAX_ADDR_BYTES)
    _need(isinstance(loc.get("area"), str), "loc.area", "the administrative-area code as text")
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
    return cfg

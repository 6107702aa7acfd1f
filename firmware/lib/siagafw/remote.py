# Remote configuration (protocol.md §10): settings the gateway pushes on the device's config topic,
# applied, written to flash and put to use without a restart. app.Device verifies the frame and
# imports this module only for a version it has not applied or refused yet, then drops it again
# on MicroPython: a button pays its RAM (and the config checker's) only while it applies one.
#
# A message carries the whole desired remote configuration, not a change: merged into the config
# file's settings it gives the same result however often it is applied, so a copy delivered twice
# (retained, after a reconnect) or a version applied again after a power cut changes nothing.
import binascii
import json
import os
import sys

from siagafw import proto
from siagafw.config import load_config

# The keys a remote configuration may set and, for an object, the keys it may hold. "wifi" comes
# encrypted (open_wifi, protocol.md §10.2): the broker keeps a retained message in clear.
ALLOWED = {
    "loc": ("lat_e6", "lon_e6", "addr", "area"),
    "heartbeat_s": None,
    "retry": ("first_ms", "max_ms"),
    "reconnect": ("first_ms", "max_ms"),
    "sms": ("gateway", "fallback_s", "test_every_s"),
    "wifi": ("ct", "nonce"),
}
WHOLE = ("loc",)        # replaced whole (every key given); the other objects are merged key by key
# Never remotely: the fleet keys decide what firmware the button installs (docs/ota.md), and the
# gateway that sends configurations must not be able to change them.
NEVER = ("ota",)


# Wi-Fi networks travel encrypted (protocol.md §10.2): a keystream from HMAC-SHA256 used as a PRF
# in counter mode, under a key derived from the device secret; the frame's MAC covers the result.
WIFI_INFO = b"siaga wifi v1"
WIFI_NONCE_HEX = 32
WIFI_CT_MAX = 512             # bytes of plaintext: three networks at their longest fit in far fewer


def wifi_cipher(secret, nonce, data):
    """data XOR the keystream of (secret, nonce): encrypts and decrypts alike. Block i of the
    keystream is HMAC-SHA256(K, nonce || i as 4 bytes big-endian), K = HMAC-SHA256(secret, WIFI_INFO)."""
    prf = proto.Signer(proto.Signer(secret).mac(WIFI_INFO))
    out = bytearray(len(data))
    i = 0
    while i * 32 < len(data):
        block = prf.mac(nonce + bytes(((i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255)))
        base = i * 32
        for j in range(min(32, len(data) - base)):
            out[base + j] = data[base + j] ^ block[j]
        i += 1
    return bytes(out)


def _hex(v, low, high):
    """v as bytes if it is lowercase hex of low..high characters (an even number), else None."""
    if not isinstance(v, str) or not low <= len(v) <= high or len(v) % 2:
        return None
    for c in v:
        if c not in "0123456789abcdef":
            return None
    return binascii.unhexlify(v)


def open_wifi(secret, w):
    """The network list of an encrypted "wifi" value {"nonce", "ct"}; a ValueError never names a
    password (the message goes to the console)."""
    nonce = _hex(w.get("nonce"), WIFI_NONCE_HEX, WIFI_NONCE_HEX)
    ct = _hex(w.get("ct"), 2, 2 * WIFI_CT_MAX)
    if nonce is None or ct is None:
        raise ValueError("wifi: nonce or ct not hex")
    try:
        plain = json.loads(wifi_cipher(secret, nonce, ct).decode())
    except (ValueError, UnicodeError):
        raise ValueError("wifi: does not decrypt") from None
    if not isinstance(plain, dict) or list(plain) != ["networks"] or not isinstance(plain["networks"], list):
        raise ValueError("wifi: not a network list")
    return plain["networks"]


def merge(cfg, changes):
    """A new config: cfg (left unchanged) with the remote settings `changes` merged in. A
    ValueError names the first key that may not be set remotely, or one that is missing."""
    if not isinstance(changes, dict):
        raise ValueError("set: not an object")
    out = dict(cfg)
    for key in sorted(changes):
        if key in NEVER:
            raise ValueError("%s is not remotely configurable" % key)
        if key not in ALLOWED:
            raise ValueError("unknown key " + key)
        value = changes[key]
        inner = ALLOWED[key]
        if inner is None:
            out[key] = value
            continue
        if not isinstance(value, dict):
            raise ValueError(key + ": not an object")
        for k in value:
            if k not in inner:
                raise ValueError("unknown key %s.%s" % (key, k))
        if key == "wifi":
            for k in inner:
                if k not in value:
                    raise ValueError("missing key wifi." + k)
            new = dict(cfg.get("wifi") or {})
            # The provisioned ssid/password stay; the remote list is the one the board tries.
            new["networks"] = open_wifi(proto.secret_from_hex(cfg["secret"]), value)
            out[key] = new
        elif key in WHOLE:
            for k in inner:
                if k not in value:
                    raise ValueError("missing key %s.%s" % (key, k))
            out[key] = value
        else:
            old = cfg.get(key)
            new = dict(old) if isinstance(old, dict) else {}
            new.update(value)
            out[key] = new
    return out


def _write(path, text):
    """Replace the file at path: write path.new, then rename it over the old one. A power cut
    leaves the old file or the new one whole, never a mix (LittleFS renames atomically; the FAT
    driver removes the old file first, and the boards then boot from path.new: shell.py)."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def persist(config_path, state_dir, text, ver):
    """The config file first, the applied version second. A power cut between the two leaves the
    new settings with the old version: the retained copy comes back at the next connect and is
    applied again, to the same result. The other order could record a version whose settings
    never reached the flash, and the button would never take them."""
    _write(config_path, text)
    _write(state_dir + "/cfgver", "%d\n" % ver)


def _sms(dev, s):
    """The SMS path's settings, live. A button that has none starts it if its HAL has a modem;
    a board's HAL opens the modem UART at boot only for a config with "sms", so there the new
    path starts at the next restart."""
    p = dev.sms
    if p is None:
        if hasattr(dev.hal, "modem_read"):
            from siagafw.modem import SmsPath

            dev.sms = SmsPath(dev, s, dev.hal.ticks_ms())
        return
    p.gateway = s["gateway"]
    p.fallback_ms = s.get("fallback_s", 30) * 1000
    every = s.get("test_every_s", 86400) * 1000
    if every != p.test_every_ms:
        p.test_every_ms = every
        p._test_at = None  # scheduled afresh from the new interval


def _forget(names):
    """Drop modules of the siagafw package, so that the GC can take their RAM back."""
    parent = sys.modules.get("siagafw")
    for name in names:
        sys.modules.pop("siagafw." + name, None)
        if parent is not None and name in dir(parent):
            delattr(parent, name)


def apply(dev, ver, changes, fresh=()):
    """Apply version `ver` of the remote configuration `changes` (the message's "set") to the
    Device: checked, written, taken into use, confirmed by a heartbeat at once. True if applied.
    fresh: the siagafw modules the caller's import loaded, dropped again after on MicroPython."""
    try:
        return _apply(dev, ver, changes)
    finally:
        if fresh and sys.implementation.name == "micropython":
            _forget(fresh)


def _apply(dev, ver, changes):
    hal = dev.hal
    try:
        merged = merge(dev.cfg, changes)
        text = json.dumps(merged)
        cfg = load_config(text, dev.board)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        dev.cfg_bad = ver
        hal.event("config_rejected", "ver=%d %s" % (ver, exc))
        dev._next_heartbeat = hal.ticks_ms()
        return False
    if dev.config_path:
        try:
            persist(dev.config_path, dev.state_dir, text, ver)
        except OSError as exc:
            # Flash full or worn: the settings still apply until the next reboot, after which the
            # retained copy brings them again.
            hal.event("config_unsaved", "ver=%d %s" % (ver, exc))
            dev._fault("flash", True)
    dev.settings(cfg)
    if "wifi" in changes and hasattr(hal, "wifi_networks"):
        hal.wifi_networks(cfg["wifi"]["networks"])  # a board's radio: tried from its next attempt
    if cfg.get("sms"):
        _sms(dev, cfg["sms"])
    dev.cfg_ver = ver
    hal.event("config_applied", "ver=%d keys=%s" % (ver, ",".join(sorted(changes))))
    dev._next_heartbeat = hal.ticks_ms()
    return True

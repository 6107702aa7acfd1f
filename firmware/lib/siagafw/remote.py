# Remote configuration (protocol.md §10): settings the gateway pushes on the device's config topic,
# applied, written to flash and put to use without a restart. app.Device verifies the frame and
# imports this module only for a version it has not applied or refused yet, then drops it again
# on MicroPython: a button pays its RAM (and the config checker's) only while it applies one.
#
# A message carries the whole desired remote configuration, not a change: merged into the config
# file's settings it gives the same result however often it is applied, so a copy delivered twice
# (retained, after a reconnect) or a version applied again after a power cut changes nothing.
import json
import os
import sys

from siagafw.config import load_config

# The keys a remote configuration may set and, for an object, the keys it may hold. Wi-Fi
# credentials are not among them: the broker keeps a retained message in clear.
ALLOWED = {
    "loc": ("lat_e6", "lon_e6", "addr", "area"),
    "heartbeat_s": None,
    "retry": ("first_ms", "max_ms"),
    "reconnect": ("first_ms", "max_ms"),
    "sms": ("gateway", "fallback_s", "test_every_s"),
}
WHOLE = ("loc",)        # replaced whole (every key given); the other objects are merged key by key


def merge(cfg, changes):
    """A new config: cfg (left unchanged) with the remote settings `changes` merged in. A
    ValueError names the first key that may not be set remotely, or one that is missing."""
    if not isinstance(changes, dict):
        raise ValueError("set: not an object")
    out = dict(cfg)
    for key in sorted(changes):
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
        if key in WHOLE:
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
    if cfg.get("sms"):
        _sms(dev, cfg["sms"])
    dev.cfg_ver = ver
    hal.event("config_applied", "ver=%d keys=%s" % (ver, ",".join(sorted(changes))))
    dev._next_heartbeat = hal.ticks_ms()
    return True

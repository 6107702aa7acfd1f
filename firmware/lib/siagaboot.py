# Boot code of the A/B firmware layout (docs/firmware.md, "Updates over the air"). Written by
# provisioning only and never part of a bundle: an update cannot break the code that chooses what
# runs. Pure MicroPython (no machine): the boards' main.py and the unix port's loader call boot()
# before anything else is imported.
#
# Layout under <root> (the board's "/", or the unix port's flash directory):
#   ota/boot.json   the boot state (below); missing or unreadable means "factory"
#   slot/a, slot/b  a bundle's files at their manifest paths (start.mpy, hal.mpy, lib/siagafw/...)
# "factory" is what provisioning wrote (the board's root, or the unix port's MICROPYPATH).
#
# The state: run (the slot in service), prev (the slot to return to), trial (run is on trial),
# tries (boots of the trial so far), max_tries, version / prev_version, id / prev_id (bundle id),
# rolled_back (null, or {"version", "id", "reason"} until the firmware has reported it).
import json
import os

BOOT_LEVEL = 1        # the generation of this code; a bundle names the lowest it needs (min_boot)
MAX_TRIES = 3
FACTORY = "factory"
_RUNS = (FACTORY, "a", "b")
# What the loader started at this boot, set by boot(): the slot's name, or FACTORY when boot()
# failed (the loader then runs the factory firmware whatever the state says). None: boot() never
# ran in this interpreter (a host test driving the firmware directly).
started = None


def _file(root):
    return root + "/ota/boot.json"


def slot_dir(root, run):
    """The directory of a slot, or None for the factory firmware."""
    return None if run == FACTORY else root + "/slot/" + run


def _load(path):
    try:
        with open(path) as f:
            s = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return s if isinstance(s, dict) else None


def _int(s, key, default, low, high):
    v = s.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < low or v > high:
        return default
    return v


def state(root):
    """The boot state, always well formed. A file cut short by a power cut, or not there at all,
    reads as the factory firmware in service; the write leaves boot.json.new whole before it
    replaces boot.json, so if boot.json is gone that one is read."""
    path = _file(root)
    s = _load(path)
    if s is None:
        s = _load(path + ".new")
    if s is None or s.get("run") not in _RUNS:
        s = {}
    run = s.get("run", FACTORY)
    prev = s.get("prev")
    rb = s.get("rolled_back")
    ok = s.get("confirmed")
    return {
        "run": run,
        "prev": prev if prev in _RUNS and prev != run else None,
        "trial": s.get("trial") is True and run != FACTORY,
        "tries": _int(s, "tries", 0, 0, 1000),
        "max_tries": _int(s, "max_tries", MAX_TRIES, 1, 10),
        "version": s.get("version"),
        "prev_version": s.get("prev_version"),
        "id": s.get("id"),
        "prev_id": s.get("prev_id"),
        "rolled_back": rb if isinstance(rb, dict) else None,
        "confirmed": ok if isinstance(ok, dict) else None,
    }


def _mkdir(path):
    try:
        os.mkdir(path)
    except OSError:
        pass  # exists


def save(root, s):
    """Write the state atomically: boot.json.new whole, then renamed over boot.json. LittleFS and
    POSIX rename over an existing file in one step; the FAT driver refuses, so there the old file
    is removed first (a power cut in between leaves the .new file, which state() reads). If that
    .new file is the only good copy (boot.json missing or damaged), it is renamed into place
    before a new .new is written: a cut while writing must not leave no good copy at all."""
    _mkdir(root + "/ota")
    path = _file(root)
    if _load(path) is None and _load(path + ".new") is not None:
        try:
            os.remove(path)
        except OSError:
            pass  # missing
        os.rename(path + ".new", path)
    with open(path + ".new", "w") as f:
        f.write(json.dumps(s))
    try:
        os.rename(path + ".new", path)
    except OSError:
        try:
            os.remove(path)
        except OSError:
            pass
        os.rename(path + ".new", path)


def has_start(root, run):
    """Whether a slot holds an entry point (start.mpy or start.py); the factory always does."""
    d = slot_dir(root, run)
    if d is None:
        return True
    for name in ("/start.mpy", "/start.py"):
        try:
            os.stat(d + name)
            return True
        except OSError:
            pass
    return False


def _roll_back(s, reason):
    s["rolled_back"] = {"version": s["version"], "id": s["id"], "reason": reason}
    s["run"] = s["prev"] or FACTORY
    s["version"] = s["prev_version"]
    s["id"] = s["prev_id"]
    s["prev"] = None
    s["prev_version"] = None
    s["prev_id"] = None
    s["trial"] = False
    s["tries"] = 0


def boot(root):
    """Choose what runs at this boot; the slot directory to put first on sys.path, or None for the
    factory firmware. A trial boot is counted (and written) before it runs, so a crash or a power
    cut in the trial counts too; after max_tries boots the trial is over and the previous firmware
    runs again. A slot without an entry point is never started. Sets `started` to the slot it
    returns (FACTORY until the state is written: if this raises, the loader runs the factory)."""
    global started
    started = FACTORY
    s = state(root)
    changed = False
    if s["trial"]:
        if s["tries"] >= s["max_tries"]:
            _roll_back(s, "crashes")
        else:
            s["tries"] += 1
        changed = True
    while not has_start(root, s["run"]):
        # A slot cleared or damaged: treated as a failed trial, and the slot it returns to must
        # have an entry point too (the factory always has).
        if s["trial"] or s["rolled_back"] is None:
            _roll_back(s, "crashes")
        else:
            s["run"] = s["prev"] or FACTORY
            s["prev"] = None
        changed = True
    if changed:
        save(root, s)
    started = s["run"]
    return slot_dir(root, s["run"])


def on_trial(s):
    """Whether the firmware running now is the version on trial in state s: not when boot() failed
    and the loader fell back to the factory firmware (that must neither confirm nor fail the
    trial of a slot it is not)."""
    return s["trial"] and started in (None, s["run"])


def trial(root, run, version, bundle_id, prev_version, max_tries=MAX_TRIES):
    """Put slot `run` (freshly written) on trial from the next boot; the slot now in service
    becomes the one to return to."""
    s = state(root)
    if run == s["run"] or run not in ("a", "b"):
        raise ValueError("slot")
    s["prev"] = s["run"]
    s["prev_version"] = prev_version
    s["prev_id"] = s["id"]
    s["run"] = run
    s["version"] = version
    s["id"] = bundle_id
    s["trial"] = True
    s["tries"] = 0
    s["max_tries"] = max_tries
    save(root, s)


def rollback(root, reason):
    """The trial failed (the firmware's own self-test, say): the previous firmware runs from the
    next boot. False if nothing was on trial."""
    s = state(root)
    if not s["trial"]:
        return False
    _roll_back(s, reason)
    save(root, s)
    return True


def confirm(root):
    """The version on trial passed its self-test: it stays in service. prev is kept (history)."""
    s = state(root)
    if not s["trial"]:
        return False
    s["trial"] = False
    s["tries"] = 0
    # Kept until reported: a reset before the gateway has the report must not lose it.
    s["confirmed"] = {"version": s["version"], "id": s["id"]}
    save(root, s)
    return True


def clear_report(root, key):
    """The outcome under `key` ("rolled_back" or "confirmed") has been reported."""
    s = state(root)
    if s.get(key) is not None:
        s[key] = None
        save(root, s)


def clear_rolled_back(root):
    clear_report(root, "rolled_back")

# Updates over the air, the button's side (protocol.md §11; docs/firmware.md, "Updates over the
# air"). app.Device screens the frames (MAC, device, offer version) and imports this module only
# when there is work: a new offer, a trial boot, a rollback not reported yet, a download to resume.
#
# One Updater, stepped once per loop step, never waiting:
#   FETCH    ask the gateway for chunks (ota/get, a window of WINDOW at a time) and append each to
#            <root>/ota/stage.bin as it comes (ota/data); only while online and the outbox is empty,
#            so an alarm always goes first. No data for GAP_FIRST_MS: ask again, backing off. No
#            new byte in ota.stall_s of that (STALL_S): given up, reported "refused stalled".
#   HASH     the staged file's SHA-256 against the offer's, HASH_READ bytes a step
#   CHECK    the bundle's signature (siagafw/bundle.py ManifestCheck), a few Ed25519 steps a step
#   WIPE     empty the slot that is not in service (nor the one a trial would return to)
#   EXTRACT  write each file to that slot, checking its SHA-256 as it goes (FileHasher) and that
#            this interpreter loads each .mpy (its header)
#   INSTALL  boot state: the new slot on trial (siagaboot.trial); report "installed"; reset
# Until INSTALL a withdrawal or a new offer stops the work (the slot written is not in service).
# At the first boots of a new version, the trial's self-test: connected, subscribed, one
# heartbeat acknowledged by the broker, a frame signed by the gateway received, flash writable;
# then siagaboot.confirm, or after ota.trial_s siagaboot.rollback and a reset. Every reset waits
# until the button is quiet (app.Device.reset_when_quiet: no press under way, no alarm pending).
#
# Reports (ota/status frames) wait in RAM until the broker has acknowledged them, re-sent on each
# new connection; like the gets, they go out only while the outbox is empty. A network error on
# a publish is the link's (the app drops it and reconnects), never the flash's: only a file
# operation that fails refuses a bundle with no_space.
import binascii
import hashlib
import json
import os
import sys

import siagaboot

from siagafw import bundle, proto
from siagafw.app import FIRMWARE_VERSION
from siagafw.bundle import FileHasher, ManifestCheck, Refused
from siagafw.storage import _exists
from siagafw.timing import ticks_add, ticks_diff

WINDOW = 4                 # chunks asked for at a time
GAP_FIRST_MS = 5000        # no data this long: ask again from the first missing offset...
GAP_MAX_MS = 60000         # ...doubling up to this
PUBACK_WAIT_MS = 3000      # after "installed": the broker's PUBACK, at most this long, then reset
UNSENT_WAIT_MS = 30000     # "installed" could not go out (offline) this long: reset all the same
HASH_READ = 2048           # bytes hashed per loop step (SHA-256 in C: well under a millisecond)
COPY_READ = 1024           # bytes extracted per loop step (read, hashed and written)
CHECK_BUDGET = 8           # Ed25519 ladder steps per loop step (siagafw/ed25519.py)
WIPE_PER_STEP = 4          # files removed per loop step
CHUNK_MIN = 128
CHUNK_MAX = 640
MAX_BUNDLE = len(bundle.MAGIC) + 4 + bundle.MAX_MANIFEST + bundle.SIG_LEN + bundle.MAX_TOTAL
SPARE_BYTES = 8192         # free flash left over after the staged bundle and its extracted copy
STALL_S = 600              # a download without a new byte this long (online, outbox empty): given up
MAX_REPORTS = 8            # reports waiting in RAM; the oldest that is not kept in the boot state goes
REFUSED_KEEP = 4           # bundle ids kept in <root>/ota/refused
# Refusals that say the bundle itself is bad: its id is remembered and it is not fetched again.
# wrong_sha256 (a transfer gone wrong), no_space and stalled may not happen on another try.
BLACKLIST = ("malformed", "too_large", "unknown_key", "bad_signature", "wrong_board", "boot_too_old",
             "wrong_hash", "wrong_mpy")

IDLE = 0
FETCH = 1
HASH = 2
CHECK = 3
WIPE = 4
EXTRACT = 5
INSTALL = 6

_HEX = "0123456789abcdef"


def _hex(v, n):
    if not isinstance(v, str) or len(v) != n:
        return False
    for c in v:
        if c not in _HEX:
            return False
    return True


def _int(v, low, high):
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _mkdir(path):
    try:
        os.mkdir(path)
    except OSError:
        pass


def _read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _write_text(path, text):
    """Replace a small state file whole (as siagaboot.save does)."""
    with open(path + ".new", "w") as f:
        f.write(text)
    try:
        os.rename(path + ".new", path)
    except OSError:
        _remove(path)
        os.rename(path + ".new", path)


def _files_under(d, out):
    """Every file below directory d (paths), appended to out; the directories after their files."""
    try:
        entries = list(os.ilistdir(d))
    except OSError:
        return out
    for e in entries:
        p = d + "/" + e[0]
        if e[1] == 0x4000:
            _files_under(p, out)
            out.append(p + "/")
        else:
            out.append(p)
    return out


def _bytes_under(d):
    """The total size of the files below directory d (0 when there is none)."""
    n = 0
    for p in _files_under(d, []):
        if p[-1] != "/":
            try:
                n += os.stat(p)[6]
            except OSError:
                pass
    return n


def mpy_loadable(head):
    """Whether this interpreter loads a .mpy file that begins with the bytes `head`, as MicroPython's
    loader (py/persistentcode.c) decides: b"M", the .mpy version, then a feature byte (sub-version
    in bits 0-1, native architecture in bits 2-7) that matter only for native code.
    sys.implementation._mpy holds this interpreter's own: version | feature byte << 8 (0xb06 on the
    unix port 1.29 for x64: version 6, sub-version 3, architecture 2). mpy-cross writes feature
    byte 0 for bytecode (no @native or @viper code, which no Siaga bundle holds); byte 3, the
    small-int bits (31 from mpy-cross), is not compared: no build this firmware runs on has fewer."""
    mine = getattr(sys.implementation, "_mpy", None)
    if mine is None:
        return True  # CPython (the core tests): no .mpy to load
    if len(head) < 4 or head[0] != 0x4D or head[1] != mine & 0xFF:
        return False
    arch = head[2] >> 2
    return arch == 0 or (arch == mine >> 10 and head[2] & 3 == (mine >> 8) & 3)


def _free_bytes(path):
    try:
        st = os.statvfs(path or "/")
    except (OSError, AttributeError):
        return None
    return st[0] * st[4]  # f_bsize * f_bavail


def forget():
    """Drop this module and the checker from RAM (MicroPython): the app calls it when idle."""
    if sys.implementation.name != "micropython":
        return
    parent = sys.modules.get("siagafw")
    for name in ("ota", "bundle", "ed25519"):
        sys.modules.pop("siagafw." + name, None)
        if parent is not None and name in dir(parent):
            delattr(parent, name)


class Updater:
    def __init__(self, dev, root):
        self.dev = dev
        self.hal = dev.hal
        self.root = root
        self.dir = root + "/ota"
        _mkdir(self.dir)
        o = dev.cfg.get("ota") or {}
        self.keys = o.get("keys") or ()
        self.trial_ms = o.get("trial_s", 300) * 1000
        self.max_tries = o.get("max_tries", siagaboot.MAX_TRIES)
        self.stall_ms = o.get("stall_s", STALL_S) * 1000
        self.status_topic = proto.topic(dev.dev, "ota/status")
        self.get_topic = proto.topic(dev.dev, "ota/get")
        self.phase = IDLE
        self.job = None            # the offer being worked on (the fields of stage.json)
        self.pending = None        # an offer that came during a trial: acted on once it is over
        self.reports = []          # [body, boot state key or None] waiting for the broker's PUBACK
        self._installed_report = None
        self._report_pid = 0
        self._report_conn = -1
        self._f = None             # the staged file, open while HASH, CHECK, EXTRACT read it
        self._out = None           # the slot file being written
        self._buf = None
        now = self.hal.ticks_ms()
        self.boot = siagaboot.state(root)
        self.trial_until = None
        self._probed = None
        # The state says "trial" but the loader ran the factory firmware (boot() failed): this
        # firmware neither confirms nor fails that trial, and installs nothing until a good boot.
        self.fallback = self.boot["trial"] and not siagaboot.on_trial(self.boot)
        if self.fallback:
            self.hal.event("ota_trial_skipped", "started=%s" % siagaboot.started)
        elif self.boot["trial"]:
            self.trial_until = ticks_add(now, self.trial_ms)
            self.hal.event("ota_trial", "version=%s try=%d of %d" % (
                self.boot["version"], self.boot["tries"], self.boot["max_tries"]))
        rb = self.boot["rolled_back"]
        if rb is not None:
            reason = str(rb.get("reason"))
            self.hal.event("ota_rolled_back", reason)
            if _hex(rb.get("id"), 16):  # a bundle that failed here is not fetched again, whoever offers it
                self._blacklist(rb["id"], reason)
            self._report(rb.get("id") or "", rb.get("version") or "", "rolled_back", reason, "rolled_back")
        ok = self.boot["confirmed"]
        if ok is not None and not self.boot["trial"]:  # confirmed, and reset before the report went out
            self._report(ok.get("id") or "", ok.get("version") or FIRMWARE_VERSION, "confirmed", "", "confirmed")
        self._resume()

    # -------------------------------------------------------------- state files

    def _path(self, name):
        return self.dir + "/" + name

    def _record(self, ver):
        """The offer version acted on: the retained copy at each connect is then only a MAC check."""
        _write_text(self._path("offer"), "%d\n" % ver)
        self.dev.ota_ver = ver

    def _refused(self, bid):
        """The reason a bundle id was refused before ("refused before" if none was kept), or None."""
        for line in _read_text(self._path("refused")).split("\n"):
            parts = line.split()
            if parts and parts[0] == bid:
                return parts[1] if len(parts) > 1 else "refused before"
        return None

    def _blacklist(self, bid, reason):
        """Remember a bundle refused for good, with its reason: the last REFUSED_KEEP of them."""
        keep = []
        for line in _read_text(self._path("refused")).split("\n"):
            parts = line.split()
            if parts and parts[0] != bid:
                keep.append(line)
        keep.append("%s %s" % (bid, reason))
        try:
            _write_text(self._path("refused"), "\n".join(keep[-REFUSED_KEEP:]) + "\n")
        except OSError:
            pass

    def _target(self):
        """The slot an update goes to: neither the one in service nor the one a trial returns to."""
        return "a" if self.boot["run"] in (siagaboot.FACTORY, "b") else "b"

    def _drop_staging(self):
        self._close()
        _remove(self._path("stage.json"))
        _remove(self._path("stage.bin"))

    def _close(self):
        for f in (self._f, self._out):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self._f = None
        self._out = None

    def _resume(self):
        """A download staged before this boot: continue it from its last whole chunk."""
        try:
            with open(self._path("stage.json")) as f:
                st = json.loads(f.read())
            ok = isinstance(st, dict) and self._valid(st)
        except (OSError, ValueError):
            ok = False
        if not ok:
            if _exists(self._path("stage.bin")) or _exists(self._path("stage.json")):
                self._drop_staging()
            return
        if st["id"] == self.boot["id"] or self.boot["trial"]:
            self._drop_staging()  # installed already (the reset came before the files were removed)
            return
        try:
            have = os.stat(self._path("stage.bin"))[6]
        except OSError:
            have = 0
        # From the last whole chunk: a power cut may have cut the one after it short.
        self._start(st, st["size"] if have >= st["size"] else have // st["chunk"] * st["chunk"], True)

    # -------------------------------------------------------------- offers

    def _valid(self, m):
        return (_hex(m.get("id"), 16) and _hex(m.get("sha256"), 64) and m["sha256"][:16] == m["id"]
                and _int(m.get("size"), 1, MAX_BUNDLE)
                and _int(m.get("chunk"), CHUNK_MIN, CHUNK_MAX) and isinstance(m.get("version"), str)
                and 0 < len(m["version"]) <= 32 and _int(m.get("ver"), 1, proto.CONFIG_VER_MAX))

    def offer(self, msg):
        """A signed offer of this device with a version (ver) not acted on yet (app.py screened it)."""
        ver = msg["ver"]
        bid = msg.get("id")
        if self.dev.reset_why is not None:
            return  # a reset is due (not recorded: the retained copy comes back after it)
        if bid == "":
            self._record(ver)
            if self.phase in (FETCH, HASH, CHECK, WIPE, EXTRACT):  # only INSTALL is past the point of no return
                bid = self.job["id"]
                self._stop()
                self.hal.event("ota_withdrawn", "id=%s" % bid)
            elif self.pending is not None:
                self.pending = None
            return
        if not self._valid(msg):
            self._record(ver)
            self.hal.event("ota_refused", "malformed offer")
            self._report(bid if _hex(bid, 16) else "", "", "refused", "malformed")
            return
        if self.fallback:
            self.hal.event("ota_deferred", "id=%s" % bid)
            return  # not recorded: the retained copy comes back after the next (good) boot
        if self.trial_until is not None:
            self.pending = msg  # the trial comes first; acted on when it is over
            return
        version = msg["version"]
        if bid == self.boot["id"] or version == FIRMWARE_VERSION:
            self._record(ver)
            self.hal.event("ota_current", "version=%s" % version)
            self._report(bid, version, "current", "")
            return
        why = self._refused(bid)
        if why is not None:
            # Said again, so that the gateway's entry does not wait for a download that never comes.
            self._record(ver)
            self.hal.event("ota_seen", "refused id=%s" % bid)
            self._report(bid, version, "refused", why)
            return
        if self.phase != IDLE and self.job is not None and self.job["id"] == bid:
            self._record(ver)
            return
        if self.phase == INSTALL:
            return  # too late to change course; the retained offer comes back after the reset
        self._stop()
        self.hal.event("ota_offer", "id=%s version=%s size=%d" % (bid, version, msg["size"]))
        st = {"id": bid, "sha256": msg["sha256"], "size": msg["size"], "chunk": msg["chunk"], "version": version,
              "ver": ver}
        if msg["size"] > MAX_BUNDLE:
            self._refuse(st, "too_large")
            return
        free = _free_bytes(self.root)
        if free is not None:
            free += _bytes_under(siagaboot.slot_dir(self.root, self._target()))  # WIPE frees them
        if free is not None and free < 2 * msg["size"] + SPARE_BYTES:
            self._refuse(st, "no_space")
            return
        _write_text(self._path("stage.json"), json.dumps(st))  # before the version is recorded
        _remove(self._path("stage.bin"))
        self._record(ver)
        self._start(st, 0, False)

    def _start(self, st, have, resumed):
        self.job = st
        self.have = have
        self._window_end = have
        self._asked_at = None
        self._asked_conn = -1
        self._gap_ms = GAP_FIRST_MS
        self._told = False
        self._stalled_ms = 0       # time able to ask (online, outbox empty) since the last new byte
        self._stall_at = None
        self.phase = FETCH
        if resumed:
            self.hal.event("ota_resume", "id=%s off=%d" % (st["id"], have))
            self._told = True
            self._report(st["id"], st["version"], "downloading", "resumed at %d" % have)

    def _stop(self):
        self._drop_staging()
        self.phase = IDLE
        self.job = None

    def _refuse(self, st, reason):
        self._close()
        if reason in BLACKLIST:
            self._blacklist(st["id"], reason)
        if "ver" in st:
            try:
                self._record(st["ver"])
            except OSError:
                pass
        self._report(st["id"], st["version"], "refused", reason)
        self._stop()
        self.hal.event("ota_refused", reason)

    # -------------------------------------------------------------- download

    def data(self, payload):
        """An ota/data frame (not yet verified)."""
        if self.phase != FETCH:
            return
        body = self.dev.signer.open(payload)
        if body is None:
            self.hal.event("ota_data_rejected", "bad signature")
            return
        self.dev.gw_seen = True
        parts = proto.split_ota_data(body)
        try:
            h = json.loads(parts[0])
            off = h["off"]
            ok = (h.get("v") == proto.VERSION and h.get("type") == "ota_data" and h.get("dev") == self.dev.dev
                  and _int(off, 0, MAX_BUNDLE))
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            self.hal.event("ota_data_rejected", "malformed")
            return
        st = self.job
        if h.get("id") != st["id"] or off != self.have:
            return  # another bundle's, or a chunk already stored (asked for twice)
        chunk = parts[1]
        if len(chunk) != min(st["chunk"], st["size"] - off):
            self.hal.event("ota_data_rejected", "length")
            return
        path = self._path("stage.bin")
        try:
            # At its offset, not appended: after a power cut the file may hold part of a chunk past
            # the last whole one, which this overwrites.
            with open(path, "r+b" if off else "wb") as f:
                if off:
                    f.seek(off)
                f.write(chunk)
        except OSError as exc:
            self._refuse(st, "no_space")
            self.hal.event("ota_fault", "stage: %s" % exc)
            return
        self.have += len(chunk)
        self._stalled_ms = 0
        self._asked_at = self.hal.ticks_ms()
        self._gap_ms = GAP_FIRST_MS
        if not self._told:
            self._told = True
            self._report(st["id"], st["version"], "downloading", "")
        if self.have >= st["size"] or self.have % (WINDOW * st["chunk"]) == 0:
            self.hal.event("ota_progress", "off=%d" % self.have)

    def _fetch(self, now):
        st = self.job
        if self.have >= st["size"]:
            self.phase = HASH
            return
        dev = self.dev
        if not dev._online or len(dev.outbox) or not dev.mqtt.can_publish():
            self._stall_at = None  # alarms first; offline nothing can be asked (nor counts as a stall)
            return
        if self._stall_at is not None:
            self._stalled_ms += ticks_diff(now, self._stall_at)
        self._stall_at = now
        if self._stalled_ms >= self.stall_ms:
            self.hal.event("ota_stalled", "off=%d" % self.have)
            self._refuse(st, "stalled")
            return
        if self._window_end > self.have and self._asked_conn == dev.connects:
            if ticks_diff(now, self._asked_at) < self._gap_ms:
                return
            self._gap_ms = min(self._gap_ms * 2, GAP_MAX_MS)  # nothing came: ask again, later next time
        c = st["chunk"]
        n = min(WINDOW, (st["size"] - self.have + c - 1) // c)
        body = proto.ota_get_body(dev.dev, st["id"], self.have, n)
        try:
            dev.mqtt.publish(self.get_topic, dev.signer.seal(proto.encode(body)), 0)
        except OSError as exc:  # the link, not the flash: the app reconnects, the download goes on
            dev._link_down(str(exc))
            return
        self._window_end = min(st["size"], self.have + n * c)
        self._asked_at = now
        self._asked_conn = dev.connects

    # -------------------------------------------------------------- checks and extraction

    def _hash(self):
        if self._f is None:
            self._f = open(self._path("stage.bin"), "rb")
            self._sha = hashlib.sha256()
            self._buf = bytearray(max(HASH_READ, COPY_READ))
            self._mv = memoryview(self._buf)
        n = self._f.readinto(self._mv[:HASH_READ])
        if n:
            self._sha.update(self._mv[:n])
            return
        self._close()
        if binascii.hexlify(self._sha.digest()).decode() != self.job["sha256"]:
            self._refuse(self.job, "wrong_sha256")
            return
        self._sha = None
        self.phase = CHECK
        self._check = None

    def _keys(self):
        out = {}
        for k in self.keys:
            pub = binascii.unhexlify(k)
            out[bundle.key_id(pub)] = pub
        return out

    def _check_step(self):
        if self._check is None:
            self._f = open(self._path("stage.bin"), "rb")
            manifest, signature = bundle.parse_header(self._f.read)
            self._check = ManifestCheck(manifest, signature, self._keys(), self.dev.board, siagaboot.BOOT_LEVEL)
            return
        m = self._check.step(CHECK_BUDGET)
        if m is None:
            return
        self._check = None
        self._manifest = m
        self._slot = self._target()
        self._slot_dir = siagaboot.slot_dir(self.root, self._slot)
        _mkdir(self.root + "/slot")
        self._wipe = _files_under(self._slot_dir, [])
        self.phase = WIPE

    def _wipe_step(self):
        for _ in range(WIPE_PER_STEP):
            if not self._wipe:
                _mkdir(self._slot_dir)
                self._files = self._manifest["files"]
                self._hasher = FileHasher(self._files)
                self._fi = -1
                self._left = 0
                self.phase = EXTRACT
                return
            p = self._wipe.pop(0)
            try:
                if p[-1] == "/":
                    os.rmdir(p[:-1])
                else:
                    os.remove(p)
            except OSError:
                pass

    def _open_next(self):
        self._fi += 1
        if self._fi >= len(self._files):
            return False
        name = self._files[self._fi]["name"]
        self._head = name.endswith(".mpy")  # its first bytes: can this interpreter load it?
        if self._head and self._files[self._fi]["size"] < 4:
            raise Refused("wrong_mpy")
        d = self._slot_dir
        parts = name.split("/")
        for i in range(len(parts) - 1):
            d = d + "/" + parts[i]
            _mkdir(d)
        self._out = open(self._slot_dir + "/" + name, "wb")
        self._left = self._files[self._fi]["size"]
        return True

    def _extract_step(self):
        if self._out is None:
            if not self._open_next():
                self._hasher.finish()
                if self._f.read(1):
                    raise Refused("malformed")  # something after the last file
                self._close()
                self.phase = INSTALL
                self._install()
                return
        n = min(self._left, COPY_READ)
        if n:
            got = self._f.readinto(self._mv[:n])
            if not got:
                raise Refused("malformed")  # cut short
            if self._head:
                self._head = False
                if not mpy_loadable(self._mv[:got]):
                    raise Refused("wrong_mpy")
            self._hasher.update(self._mv[:got])
            self._out.write(self._mv[:got])
            self._left -= got
        if self._left == 0:
            self._out.close()
            self._out = None

    def _install(self):
        st = self.job
        siagaboot.trial(self.root, self._slot, st["version"], st["id"], FIRMWARE_VERSION, self.max_tries)
        self._drop_staging()
        self._buf = None
        self._mv = None
        self.hal.event("ota_installed", "id=%s version=%s slot=%s" % (st["id"], st["version"], self._slot))
        self._report(st["id"], st["version"], "installed", "slot " + self._slot)
        self._installed_at = self.hal.ticks_ms()
        self._installed_report = self.reports[-1]

    def _install_wait(self, now):
        """Reset once the "installed" report is acknowledged, or PUBACK_WAIT_MS after it went out,
        or UNSENT_WAIT_MS after the install if it never could; and then only once the button is
        quiet (Device.reset_when_quiet: no press under way, no alarm pending while online)."""
        r = self._installed_report
        for x in self.reports:
            if x is r:  # not acknowledged yet
                if self._report_pid and self.reports[0] is r and self._report_conn == self.dev.connects:
                    if ticks_diff(now, self._report_at) < PUBACK_WAIT_MS:
                        return
                elif ticks_diff(now, self._installed_at) < UNSENT_WAIT_MS:
                    return
                break
        self.dev.reset_when_quiet("ota installed")

    # -------------------------------------------------------------- trial

    def _trial(self, now):
        dev = self.dev
        # gw_seen: a frame signed by the gateway verified (the retained offer comes at every
        # connect): a version that cannot check the gateway's MACs could take no ack either.
        ok = (dev.mqtt.connected() and dev.hb_acked and dev.gw_seen and not dev.outbox.fault
              and not dev.seqs.fault)
        if ok and self._probed is None:
            # The outbox and the counter wrote nothing yet, perhaps: one small write shows the
            # flash takes them (once; a failure stands until the deadline).
            try:
                _write_text(self._path("probe"), "ok\n")
                self._probed = _read_text(self._path("probe")) == "ok"
                _remove(self._path("probe"))
            except OSError:
                self._probed = False
            if not self._probed:
                self.hal.event("fault", "flash")
        if ok and self._probed:
            siagaboot.confirm(self.root)
            self.trial_until = None
            self.boot = siagaboot.state(self.root)
            self.hal.event("ota_confirmed", "version=%s" % self.boot["version"])
            self._report(self.boot["id"] or "", self.boot["version"] or FIRMWARE_VERSION, "confirmed", "",
                         "confirmed")
            if self.pending is not None:
                msg = self.pending
                self.pending = None
                self.offer_after_trial(msg)
            return
        if ticks_diff(now, self.trial_until) >= 0:
            siagaboot.rollback(self.root, "selftest")
            self.trial_until = None
            self.pending = None
            self.hal.event("ota_trial_failed", "selftest")
            dev.reset_when_quiet("ota selftest failed")

    def offer_after_trial(self, msg):
        if msg["ver"] > self.dev.ota_ver:
            self.offer(msg)

    # -------------------------------------------------------------- reports

    def _report(self, bid, version, state, detail, kept=None):
        """Queue a report; `kept`: the boot state's key that holds it until the broker has it."""
        dev = self.dev
        body = proto.ota_status_body(dev.dev, dev.seqs.next(), bid, version, state, detail, FIRMWARE_VERSION)
        r = self.reports
        if len(r) >= MAX_REPORTS:
            # The oldest that the boot state does not keep, is not on its way, and is not the
            # "installed" the reset waits for.
            for i in range(len(r)):
                if r[i][1] is None and not (i == 0 and self._report_pid) and r[i] is not self._installed_report:
                    self.hal.event("ota_report_dropped", "%s seq=%d" % (r[i][0]["state"], r[i][0]["seq"]))
                    r.pop(i)
                    break
        r.append([body, kept])

    def _send_report(self, now):
        dev = self.dev
        if self._report_pid and self._report_conn == dev.connects:
            return  # waiting for its PUBACK (the MQTT layer drops the link if it never comes)
        if not dev._online or len(dev.outbox) or not dev.mqtt.can_publish():
            return
        body = self.reports[0][0]
        try:
            self._report_pid = dev.mqtt.publish(self.status_topic, dev.signer.seal(proto.encode(body)), 1)
        except OSError as exc:  # the link's: sent again on the next connection
            self._report_pid = 0
            dev._link_down(str(exc))
            return
        self._report_conn = dev.connects
        self._report_at = now
        self.hal.event("ota_status", "%s seq=%d" % (body["state"], body["seq"]))

    def puback(self, pid):
        if pid and pid == self._report_pid:
            self._report_pid = 0
            body, kept = self.reports.pop(0)
            if kept:
                siagaboot.clear_report(self.root, kept)

    # -------------------------------------------------------------- the loop

    def step(self, now):
        """One loop step's share of the work; True when nothing is left (the app drops the updater)."""
        if self.trial_until is not None:
            self._trial(now)
        if self.reports:
            self._send_report(now)
        ph = self.phase
        if ph == FETCH:
            self._fetch(now)  # its network errors are the link's: handled there, never a refusal
        elif ph != IDLE:
            self._work(ph, now)
        return self.phase == IDLE and not self.reports and self.trial_until is None and self.pending is None

    def _work(self, ph, now):
        try:
            if ph == HASH:
                self._hash()
            elif ph == CHECK:
                self._check_step()
            elif ph == WIPE:
                self._wipe_step()
            elif ph == EXTRACT:
                self._extract_step()
            elif ph == INSTALL:
                self._install_wait(now)
        except Refused as exc:
            self._refuse(self.job, exc.reason)
        except OSError as exc:  # a file operation (the network's are handled where they happen): the flash
            self.hal.event("ota_fault", "%s" % exc)
            self._refuse(self.job, "no_space")

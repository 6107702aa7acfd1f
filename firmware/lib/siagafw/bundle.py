# Checking a signed firmware bundle, format v1 (docs/ota.md "Bundle format"). Pure: no hardware, no
# clock; runs unchanged under CPython and MicroPython.
#
#   b"SGFW1\n" | manifest length (4 bytes, big-endian) | manifest | signature (64 bytes) | the files'
#   contents, concatenated in the manifest's order
#
# The manifest is canonical JSON ({"v": 1, "type": "firmware", "version", "board", "min_boot",
# "key", "files": [{"name", "size", "sha256"}, ...]}); the signature is Ed25519 by the fleet key over
# the manifest's SHA-256. A refusal raises Refused(reason), reason one of REASONS.
#
# The pieces, so that an updater can keep the loop's pace: parse_header() reads the fixed part,
# ManifestCheck steps the signature check (siagafw.ed25519.Verify), FileHasher checks each file's
# size and SHA-256 in chunks while the caller writes them to a staging area. check_file() does it all
# on a bundle file, blocking.
import binascii
import hashlib
import json

from siagafw import ed25519

MAGIC = b"SGFW1\n"
SIG_LEN = 64
MAX_MANIFEST = 16384  # 64 files at ~130 bytes each fit with room to spare
MAX_FILES = 64
MAX_TOTAL = 512 * 1024
REASONS = ("malformed", "unknown_key", "bad_signature", "wrong_board", "boot_too_old", "wrong_hash", "too_large")
BOARDS = ("esp32", "picow", "unix")
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_/.-"
_HEX = "0123456789abcdef"


class Refused(Exception):
    """A bundle the button must not install; .reason is one of REASONS."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def key_id(public):
    """The manifest's "key": the first 16 hex characters of the SHA-256 of the raw public key."""
    return binascii.hexlify(hashlib.sha256(bytes(public)).digest()).decode()[:16]


def _exactly(read, n):
    data = read(n)
    if data is None or len(data) != n:
        raise Refused("malformed")
    return data


def parse_header(read):
    """read(n) -> bytes, as a file's read. Returns (manifest bytes, signature); the file's contents
    follow. Refused("malformed") on a wrong magic, a short read or an implausible length."""
    if _exactly(read, len(MAGIC)) != MAGIC:
        raise Refused("malformed")
    n = int.from_bytes(_exactly(read, 4), "big")
    if n < 2 or n > MAX_MANIFEST:
        raise Refused("malformed")
    manifest = _exactly(read, n)
    return manifest, _exactly(read, SIG_LEN)


def _is_int(x, lo, hi):
    return type(x) is int and lo <= x <= hi


def _valid_name(name):
    if type(name) is not str or not name or len(name) > 100 or name[0] == "/" or name[-1] == "/":
        return False
    for c in name:
        if c not in _NAME_CHARS:
            return False
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return False
    return True


def _valid_version(v):
    if type(v) is not str or len(v) > 32:
        return False
    parts = v.split(".")
    if len(parts) != 3:
        return False
    for p in parts:
        if not p or len(p) > 9:
            return False
        for c in p:
            if c not in "0123456789":
                return False
    return True


def _valid_hex64(h):
    if type(h) is not str or len(h) != 64:
        return False
    for c in h:
        if c not in _HEX:
            return False
    return True


def parse_manifest(manifest_bytes):
    """The manifest as a dict, its shape checked; Refused("malformed") or ("too_large")."""
    try:
        m = json.loads(manifest_bytes)
    except Exception:  # ValueError under both; MicroPython may raise others on broken UTF-8
        raise Refused("malformed")
    if type(m) is not dict or m.get("v") != 1 or m.get("type") != "firmware":
        raise Refused("malformed")
    if not _valid_version(m.get("version")) or type(m.get("board")) is not str:
        raise Refused("malformed")
    if not _is_int(m.get("min_boot"), 1, 65535):
        raise Refused("malformed")
    key = m.get("key")
    if type(key) is not str or len(key) != 16 or not _valid_hex64(key * 4):
        raise Refused("malformed")
    files = m.get("files")
    if type(files) is not list or not files:
        raise Refused("malformed")
    seen = set()
    total = 0
    for f in files:
        if type(f) is not dict or not _valid_name(f.get("name")) or f["name"] in seen:
            raise Refused("malformed")
        if not _is_int(f.get("size"), 0, 1 << 30) or not _valid_hex64(f.get("sha256")):
            raise Refused("malformed")
        seen.add(f["name"])
        total += f["size"]
    if len(files) > MAX_FILES or total > MAX_TOTAL:
        raise Refused("too_large")
    return m


class ManifestCheck:
    """check_manifest() a step at a time: step(budget) returns None until done, then the manifest
    dict; it raises Refused. The shape and the key are checked at construction (cheap)."""

    def __init__(self, manifest_bytes, signature, keys, board, boot):
        self.manifest = parse_manifest(manifest_bytes)
        public = keys.get(self.manifest["key"])
        if public is None:
            raise Refused("unknown_key")
        self._board = board
        self._boot = boot
        self._verify = ed25519.Verify(public, hashlib.sha256(bytes(manifest_bytes)).digest(), signature)

    def step(self, budget=8):
        ok = self._verify.step(budget)
        if ok is None:
            return None
        if not ok:
            raise Refused("bad_signature")
        m = self.manifest
        if m["board"] != self._board:
            raise Refused("wrong_board")
        if m["min_boot"] > self._boot:
            raise Refused("boot_too_old")
        return m


def check_manifest(manifest_bytes, signature, keys, board, boot):
    """The manifest as a dict if it is well formed, signed by one of `keys` (key id -> 32-byte
    public key), for `board` and for a boot version <= `boot`; else raises Refused."""
    check = ManifestCheck(manifest_bytes, signature, keys, board, boot)
    while True:
        m = check.step(64)
        if m is not None:
            return m


class FileHasher:
    """Checks the files' contents as they stream past, in any chunking. current() says which file
    the next bytes belong to and how many it still needs (or None when all are complete), so that a
    caller can write each to its own staging file; update() hashes and checks sizes and digests.
    Raises Refused("wrong_hash") for a file whose SHA-256 differs, ("malformed") for bytes past the
    last file or, at finish(), a file left short."""

    def __init__(self, files):
        self._files = files
        self._i = -1
        self._next()

    def _next(self):
        self._i += 1
        if self._i < len(self._files):
            self._left = self._files[self._i]["size"]
            self._h = hashlib.sha256()
            if self._left == 0:
                self._close()
        else:
            self._left = 0
            self._h = None

    def _close(self):
        want = self._files[self._i]["sha256"]
        if binascii.hexlify(self._h.digest()).decode() != want:
            raise Refused("wrong_hash")
        self._next()

    def current(self):
        """(name, bytes still needed) of the file being received, or None when all are done."""
        if self._h is None:
            return None
        return self._files[self._i]["name"], self._left

    def update(self, data):
        view = memoryview(data)
        while len(view):
            if self._h is None:
                raise Refused("malformed")
            n = min(len(view), self._left)
            self._h.update(view[:n])
            self._left -= n
            view = view[n:]
            if self._left == 0:
                self._close()

    def finish(self):
        if self._h is not None:
            raise Refused("malformed")


def check_file(path, keys, board, boot, chunk=1024):
    """Checks a whole bundle file; the manifest dict, or raises Refused (blocking: for tests, the
    CLI and an updater that may take its time)."""
    with open(path, "rb") as f:
        manifest, signature = parse_header(f.read)
        m = check_manifest(manifest, signature, keys, board, boot)
        hasher = FileHasher(m["files"])
        buf = bytearray(chunk)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            hasher.update(view[:n])
        hasher.finish()
    return m

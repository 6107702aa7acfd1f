"""Signed firmware bundles (issue 18; docs/ota.md, "Bundle format"): build one from the firmware
folder, sign it with the fleet's Ed25519 key, and check one as a button does.

A bundle is a single file:

    b"SGFW1\\n" | manifest length (4 bytes, big-endian) | manifest | signature (64 bytes)
    | the files' contents, concatenated in the manifest's order

The manifest is canonical JSON (siagafw.proto.encode: sorted keys, no spaces) giving the format
(`v`), `type`, the firmware `version`, the `board`, the lowest boot level (`min_boot`) a button must
have to install it, the signing `key`'s id and each file's name, size and SHA-256. The signature is
pure Ed25519 (RFC 8032) by the fleet's private key over the manifest's SHA-256: the button computes
that hash in C and its pure-Python verifier has one SHA-512 block left to do (docs/ota.md, "Who
signs a bundle, and why").

The button's own checker is firmware/lib/siagafw/bundle.py; `check` here refuses the same bundles
for the same reasons (tests/test_firmware_bundle.py runs both on the same files), so a release
manager can see before shipping what a button would say.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from siagafw.proto import encode

from .errors import UsageError
from .firmware import PROFILES, Compiler, firmware_dir, firmware_version, mpy_cross_version
from .text import t

MAGIC = b"SGFW1\n"
FORMAT = 1
TYPE = "firmware"
HEADER_LEN = len(MAGIC) + 4
SIG_LEN = 64
MIN_MANIFEST = 2
MAX_MANIFEST = 16 * 1024     # bytes: 64 files of long names fit with room to spare
MAX_FILES = 64
MAX_TOTAL = 512 * 1024       # bytes of file contents
MAX_FILE_SIZE = 1 << 30      # a larger size is no number a button reads, not merely too large
MAX_NAME = 100
MIN_BOOT_RANGE = (1, 65535)
KEY_ID_LEN = 16              # hex digits of the SHA-256 of the raw public key

# Why a bundle is refused: these exact strings go into events and audits (button and gateway).
MALFORMED = "malformed"
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
WRONG_BOARD = "wrong_board"
BOOT_TOO_OLD = "boot_too_old"
WRONG_HASH = "wrong_hash"
TOO_LARGE = "too_large"
REASONS = (MALFORMED, UNKNOWN_KEY, BAD_SIGNATURE, WRONG_BOARD, BOOT_TOO_OLD, WRONG_HASH, TOO_LARGE)

_VERSION = re.compile(r"[0-9]{1,9}\.[0-9]{1,9}\.[0-9]{1,9}")
_NAME = re.compile(r"[a-z0-9_/.-]+")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(rf"[0-9a-f]{{{KEY_ID_LEN}}}")


class Refused(Exception):
    """A bundle a button would not install; `reason` is one of REASONS."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- keys -------------------------------------------------------------------------------------------


def key_id(public: bytes) -> str:
    """The id a manifest names its key by: the first 16 hex digits of the raw key's SHA-256."""
    return hashlib.sha256(public).hexdigest()[:KEY_ID_LEN]


def _raw_public(private: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return bytes(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def generate_key(out: Path) -> bytes:
    """Write a new fleet private key to `out` (PKCS#8 PEM, mode 0600, never over an existing file)
    and return its raw 32-byte public key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(t("bundle.key_exists", path=out), t("bundle.key_exists.hint")) from None
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # whatever the umask
        f.write(pem)
    return _raw_public(private)


def load_private_key(path: Path) -> Any:
    """The fleet's Ed25519 private key from a PEM file `keygen` wrote."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(t("bundle.key_unreadable", path=path, error=exc.strerror or exc)) from None
    try:
        private = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        private = None
    if not isinstance(private, Ed25519PrivateKey):
        raise UsageError(t("bundle.key_invalid", path=path), t("bundle.key_invalid.hint"))
    return private


def public_key(private: Any) -> bytes:
    return _raw_public(private)


def parse_public(text: str) -> bytes:
    """A public key as `keygen` prints it: 64 hex digits."""
    text = text.strip().lower()
    if not _HEX64.fullmatch(text):
        raise UsageError(t("bundle.pub_invalid", value=repr(text)), t("bundle.pub_invalid.hint"))
    return bytes.fromhex(text)


def sign(private: Any, manifest: bytes) -> bytes:
    """The bundle's signature: Ed25519 over the manifest's SHA-256."""
    return bytes(private.sign(hashlib.sha256(manifest).digest()))


def _signature_ok(public: bytes, manifest: bytes, signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, hashlib.sha256(manifest).digest())
    except (InvalidSignature, ValueError):
        return False
    return True


# -- the manifest ---------------------------------------------------------------------------------
# The rules below are firmware/lib/siagafw/bundle.py's, in the same order, so that both refuse a
# bundle for the same reason.


def valid_name(name: object) -> bool:
    """A file's place on the board, relative to its root: [a-z0-9_/.-], at most 100 characters,
    no empty, "." or ".." part (so no leading or trailing "/")."""
    return (isinstance(name, str) and 0 < len(name) <= MAX_NAME and _NAME.fullmatch(name) is not None
            and all(part not in ("", ".", "..") for part in name.split("/")))


def valid_version(version: object) -> bool:
    """MAJOR.MINOR.PATCH, digits only, each part at most 9 digits."""
    return isinstance(version, str) and len(version) <= 32 and _VERSION.fullmatch(version) is not None


def _int(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def parse_manifest(manifest: bytes) -> dict[str, Any]:
    """The manifest as a dict, its shape checked (nothing trusted yet): Refused("malformed") or,
    over the limits, Refused("too_large")."""
    try:
        doc = json.loads(manifest.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Refused(MALFORMED) from None
    if (not isinstance(doc, dict) or doc.get("v") != FORMAT or doc.get("type") != TYPE
            or not valid_version(doc.get("version")) or not isinstance(doc.get("board"), str)
            or not _int(doc.get("min_boot"), *MIN_BOOT_RANGE)
            or not isinstance(doc.get("key"), str) or not _KEY_ID.fullmatch(doc["key"])):
        raise Refused(MALFORMED)
    files = doc.get("files")
    if not isinstance(files, list) or not files:
        raise Refused(MALFORMED)
    seen = set()
    for entry in files:
        if (not isinstance(entry, dict) or not valid_name(entry.get("name")) or entry["name"] in seen
                or not _int(entry.get("size"), 0, MAX_FILE_SIZE)
                or not isinstance(entry.get("sha256"), str) or not _HEX64.fullmatch(entry["sha256"])):
            raise Refused(MALFORMED)
        seen.add(entry["name"])
    if len(files) > MAX_FILES or sum(entry["size"] for entry in files) > MAX_TOTAL:
        raise Refused(TOO_LARGE)
    return doc


def check_manifest(manifest: bytes, signature: bytes, keys: dict[str, bytes], board: str | None = None,
                   boot: int | None = None) -> dict[str, Any]:
    """The manifest as a dict when it is well formed, `signature` is by one of `keys` (key id -> raw
    32-byte public key) over its SHA-256, it is for `board` and a button at boot level `boot` may
    install it (board, boot None: not checked); else Refused(reason)."""
    doc = parse_manifest(manifest)
    public = keys.get(doc["key"])
    if public is None:
        raise Refused(UNKNOWN_KEY)
    if len(signature) != SIG_LEN or not _signature_ok(public, manifest, signature):
        raise Refused(BAD_SIGNATURE)
    if board is not None and doc["board"] != board:
        raise Refused(WRONG_BOARD)
    if boot is not None and doc["min_boot"] > boot:
        raise Refused(BOOT_TOO_OLD)
    return doc


def make_manifest(*, board: str, version: str, min_boot: int, key: str, files: list[tuple[str, bytes]]) -> bytes:
    doc = {"v": FORMAT, "type": TYPE, "version": version, "board": board, "min_boot": min_boot, "key": key,
           "files": [{"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                     for name, data in files]}
    return encode(doc)


def pack(manifest: bytes, signature: bytes, files: list[tuple[str, bytes]]) -> bytes:
    return b"".join([MAGIC, len(manifest).to_bytes(4, "big"), manifest, signature, *(data for _, data in files)])


# -- checking a bundle --------------------------------------------------------------------------------


def _exactly(read: Callable[[int], bytes], n: int) -> bytes:
    data = read(n)
    if len(data) != n:
        raise Refused(MALFORMED)
    return data


def check_stream(read: Callable[[int], bytes], keys: dict[str, bytes], board: str | None = None,
                 boot: int | None = None) -> dict[str, Any]:
    """A whole bundle read through `read(n)`, checked in the order a button checks it: the header,
    the manifest's shape, its key and signature, the board and boot level, then each file's SHA-256
    as it comes, and nothing after the last. Returns the manifest; Refused(reason) otherwise."""
    if _exactly(read, len(MAGIC)) != MAGIC:
        raise Refused(MALFORMED)
    length = int.from_bytes(_exactly(read, 4), "big")
    if not MIN_MANIFEST <= length <= MAX_MANIFEST:
        raise Refused(MALFORMED)
    manifest = _exactly(read, length)
    doc = check_manifest(manifest, _exactly(read, SIG_LEN), keys, board, boot)
    for entry in doc["files"]:
        digest = hashlib.sha256()
        left = entry["size"]
        while left:
            chunk = read(min(left, 64 * 1024))
            if not chunk:
                raise Refused(MALFORMED)  # cut short
            digest.update(chunk)
            left -= len(chunk)
        if digest.hexdigest() != entry["sha256"]:
            raise Refused(WRONG_HASH)
    if read(1):
        raise Refused(MALFORMED)  # something after the last file
    return doc


def check(data: bytes, keys: dict[str, bytes], board: str | None = None, boot: int | None = None) -> dict[str, Any]:
    """`check_stream` on a bundle in memory."""
    return check_stream(io.BytesIO(data).read, keys, board, boot)


def check_file(path: Path, keys: dict[str, bytes], board: str | None = None, boot: int | None = None) -> dict[str, Any]:
    """`check_stream` on a bundle file."""
    with open(path, "rb") as f:
        return check_stream(f.read, keys, board, boot)


# -- building a bundle ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Built:
    data: bytes
    manifest: dict[str, Any]
    public: bytes
    firmware_version: str  # what the firmware's app.py reports in its heartbeats

    @property
    def size(self) -> int:
        return sum(entry["size"] for entry in self.manifest["files"])


def collect(board: str, fw_dir: Path) -> list[tuple[str, bytes]]:
    """(place on the board, content) of every file of `board`'s firmware: lib/siagafw/*.mpy, and the
    board folder's files at the root (boards/common then boards/<board>; not manifest.py), compiled
    by mpy-cross. Not the boot code (boot.py, the loader main.py, lib/siagaboot): provisioning
    writes it, and an update never replaces it (docs/firmware.md, "Updates over the air")."""
    try:
        profile = PROFILES[board]
    except KeyError:
        raise UsageError(t("firmware.unknown_board", board=repr(board)),
                         t("valid.one_of", choices=", ".join(PROFILES))) from None
    compiler = Compiler(mpy_cross_version() or "")
    if compiler.args() is None:
        raise UsageError(t("bundle.no_mpy_cross"), t("bundle.no_mpy_cross.hint"))
    files = []
    with tempfile.TemporaryDirectory(prefix="siaga-bundle-") as tmp:
        for board_path, src in profile.bundle_sources(fw_dir):
            data = compiler.compile(src, board_path, Path(tmp))
            if data is None:
                raise UsageError(t("firmware.compile_failed", path=src), t("bundle.compile_failed.hint"))
            files.append((board_path[:-3] + ".mpy", data))
    return files


def build(*, board: str, version: str, key_path: Path, min_boot: int = 1, fw_dir: Path | None = None) -> Built:
    """A signed bundle of `board`'s firmware from `fw_dir` (default: this installation's)."""
    if not valid_version(version):
        raise UsageError(t("bundle.version_invalid", version=repr(version)), t("bundle.version_invalid.hint"))
    if not MIN_BOOT_RANGE[0] <= min_boot <= MIN_BOOT_RANGE[1]:
        raise UsageError(t("bundle.min_boot_invalid", value=min_boot),
                         t("bundle.min_boot_invalid.hint", low=MIN_BOOT_RANGE[0], high=MIN_BOOT_RANGE[1]))
    private = load_private_key(key_path)
    public = public_key(private)
    fw_dir = fw_dir or firmware_dir()
    files = collect(board, fw_dir)
    total = sum(len(data) for _, data in files)
    if len(files) > MAX_FILES or total > MAX_TOTAL:
        raise UsageError(t("bundle.too_large", files=len(files), kib=f"{total / 1024:.1f}"),
                         t("bundle.too_large.hint", max_files=MAX_FILES, max_kib=MAX_TOTAL // 1024))
    for name, _ in files:
        if not valid_name(name):
            raise UsageError(t("bundle.name_invalid", name=repr(name)), t("bundle.name_invalid.hint"))
    manifest = make_manifest(board=board, version=version, min_boot=min_boot, key=key_id(public), files=files)
    if len(manifest) > MAX_MANIFEST:
        raise UsageError(t("bundle.too_large", files=len(files), kib=f"{total / 1024:.1f}"),
                         t("bundle.too_large.hint", max_files=MAX_FILES, max_kib=MAX_TOTAL // 1024))
    data = pack(manifest, sign(private, manifest), files)
    doc = check(data, {key_id(public): public}, board)  # what a button would say, before anyone ships it
    return Built(data, doc, public, firmware_version(fw_dir))


def write(out: Path, data: bytes) -> None:
    """Write the bundle whole or not at all (a half-written bundle is never left under its name)."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, out)

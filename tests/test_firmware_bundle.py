"""Signed firmware bundles (issue 18; docs/ota.md, "Bundle format"): `siaga firmware keygen`, `build`
and `verify`, and the button's own checker (firmware/lib/siagafw/bundle.py) on the same files under
CPython and under the real MicroPython unix port. A bundle built by the command line passes all
three; a tampered copy, one for another board, one signed by another key and a truncated or garbage
file are refused by all three, for the same reason."""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from siaga.provisioning import bundle
from siagafw import bundle as fw_bundle
from siagafw.proto import encode
from tests.support.firmware import FIRMWARE_LIB, micropython_binary

FIRMWARE = FIRMWARE_LIB.parent
HEADER = len(bundle.MAGIC) + 4


def siaga(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "siaga.cli", *args], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "SIAGA_LANG": "en"})


@dataclass
class Release:
    folder: Path
    key: Path
    public: bytes
    esp32: Path
    picow: Path

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.public).hexdigest()[:16]

    @property
    def keys(self) -> dict[str, bytes]:
        return {self.key_id: self.public}


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """A fleet key and two bundles, all made by the command line as a release manager makes them."""
    folder = tmp_path_factory.mktemp("release")
    made = siaga("firmware", "keygen", "--out", str(folder / "fleet.pem"))
    assert made.returncode == 0, made.stderr
    public = bytes.fromhex(made.stdout.strip())
    for board in ("esp32", "picow"):
        built = siaga("firmware", "build", "--board", board, "--version", "0.3.0", "--key", str(folder / "fleet.pem"),
                      "--out", str(folder / f"{board}.sgfw"))
        assert built.returncode == 0, built.stderr
        assert f"firmware 0.3.0 for {board}" in built.stdout
    return Release(folder, folder / "fleet.pem", public, folder / "esp32.sgfw", folder / "picow.sgfw")


def split(data: bytes) -> tuple[bytes, bytes, bytes]:
    """manifest, signature, the files' contents."""
    n = int.from_bytes(data[len(bundle.MAGIC):HEADER], "big")
    return data[HEADER:HEADER + n], data[HEADER + n:HEADER + n + 64], data[HEADER + n + 64:]


def resigned(data: bytes, key: Ed25519PrivateKey, change: dict[str, Any] | None = None,
             key_id: str | None = None) -> bytes:
    """The bundle with its manifest changed and signed again by `key` (naming `key_id`, default
    key's own)."""
    manifest, _, contents = split(data)
    doc = json.loads(manifest) | (change or {})
    doc["key"] = key_id or bundle.key_id(bundle.public_key(key))
    manifest = encode(doc)
    return bundle.pack(manifest, bundle.sign(key, manifest), [("", contents)])


def flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


# -- the command line --------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_only_its_owner_reads_and_prints_the_public_key(release: Release) -> None:
    assert stat.S_IMODE(release.key.stat().st_mode) == 0o600
    private = bundle.load_private_key(release.key)
    assert bundle.public_key(private) == release.public
    again = siaga("firmware", "keygen", "--out", str(release.key))
    assert again.returncode == 2 and "already exists" in again.stderr and again.stdout == ""
    assert bundle.public_key(bundle.load_private_key(release.key)) == release.public  # not overwritten


def test_a_bundle_is_the_boards_compiled_firmware_under_a_signed_canonical_manifest(release: Release) -> None:
    data = release.esp32.read_bytes()
    assert data.startswith(b"SGFW1\n")
    manifest, signature, contents = split(data)
    doc = json.loads(manifest)
    assert encode(doc) == manifest  # canonical: sorted keys, no spaces
    assert {k: doc[k] for k in ("v", "type", "version", "board", "min_boot", "key")} == {
        "v": 1, "type": "firmware", "version": "0.3.0", "board": "esp32", "min_boot": 1, "key": release.key_id}
    # Pure Ed25519 over the manifest's SHA-256, checked by the `cryptography` package.
    Ed25519PublicKey.from_public_bytes(release.public).verify(signature, hashlib.sha256(manifest).digest())

    core = {f"lib/siagafw/{p.stem}.mpy" for p in (FIRMWARE / "lib" / "siagafw").glob("*.py")}
    # boards/esp32 and boards/common; the boot code (boot.py, the loader main.py, lib/siagaboot) is
    # written by provisioning only and never travels in a bundle.
    board = {"hal.mpy", "pins.mpy", "shell.mpy", "start.mpy"}
    names = [f["name"] for f in doc["files"]]
    assert set(names) == core | board and len(names) == len(core | board)
    offset = 0
    for entry in doc["files"]:
        body = contents[offset:offset + entry["size"]]
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]
        assert entry["name"].endswith(".mpy") and body[:2] == b"M\x06"  # all compiled by mpy-cross
        offset += entry["size"]
    assert offset == len(contents)

    picow = json.loads(split(release.picow.read_bytes())[0])
    assert picow["board"] == "picow" and "manifest.mpy" not in {f["name"] for f in picow["files"]}


def test_the_same_tree_and_key_make_the_same_bundle(release: Release) -> None:
    again = bundle.build(board="esp32", version="0.3.0", key_path=release.key)
    assert again.data == release.esp32.read_bytes()


def test_verify_prints_the_manifest_or_the_refusal_reason(release: Release, tmp_path: Path) -> None:
    pub = release.public.hex()
    ok = siaga("firmware", "verify", str(release.esp32), "--pub", pub, "--board", "esp32", "--boot", "1")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == json.loads(split(release.esp32.read_bytes())[0])
    assert "a valid bundle, firmware 0.3.0 for esp32" in ok.stderr

    refused = siaga("firmware", "verify", str(release.picow), "--pub", pub, "--board", "esp32")
    assert (refused.returncode, refused.stdout) == (2, "wrong_board\n")
    assert "refused: wrong_board (made for another board)" in refused.stderr

    tampered = tmp_path / "tampered.sgfw"
    data = release.esp32.read_bytes()
    tampered.write_bytes(flipped(data, len(data) - 1))
    refused = siaga("firmware", "verify", str(tampered), "--pub", pub)
    assert (refused.returncode, refused.stdout) == (2, "wrong_hash\n")

    other = Ed25519PrivateKey.generate()
    refused = siaga("firmware", "verify", str(release.esp32), "--pub", bundle.public_key(other).hex())
    assert (refused.returncode, refused.stdout) == (2, "unknown_key\n")
    # Several keys (a key change): the one that signed it is among them.
    both = siaga("firmware", "verify", str(release.esp32), "--pub", bundle.public_key(other).hex(), "--pub", pub)
    assert both.returncode == 0, both.stderr

    garbage = tmp_path / "garbage.sgfw"
    garbage.write_bytes(b"not a bundle at all")
    refused = siaga("firmware", "verify", str(garbage), "--pub", pub)
    assert (refused.returncode, refused.stdout) == (2, "malformed\n")

    wrong = siaga("firmware", "verify", str(release.esp32), "--pub", "abc")
    assert wrong.returncode == 2 and "64 hex digits" in wrong.stderr


def test_build_refuses_what_would_make_a_bad_bundle(release: Release, tmp_path: Path) -> None:
    out = tmp_path / "b.sgfw"
    common = ("firmware", "build", "--board", "esp32", "--out", str(out))
    bad_version = siaga(*common, "--version", "0.3", "--key", str(release.key))
    assert bad_version.returncode == 2 and "MAJOR.MINOR.PATCH" in bad_version.stderr
    bad_boot = siaga(*common, "--version", "0.3.0", "--key", str(release.key), "--min-boot", "0")
    assert bad_boot.returncode == 2 and "--min-boot 0 is not valid" in bad_boot.stderr
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("hello\n")
    bad_key = siaga(*common, "--version", "0.3.0", "--key", str(not_a_key))
    assert bad_key.returncode == 2 and "not an Ed25519 private key" in bad_key.stderr
    assert not out.exists()


# -- the same refusals from every checker ----------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expected: str              # "ok" or a refusal reason
    board: str = "esp32"
    boot: int = 1


def cases(release: Release) -> list[Case]:
    data = release.esp32.read_bytes()
    manifest, _, contents = split(data)
    fleet = bundle.load_private_key(release.key)
    other = Ed25519PrivateKey.generate()
    body = HEADER + len(manifest) + 64  # where the files' contents start
    garbage = random.Random(18).randbytes(3000)
    doc = json.loads(manifest)
    too_many = [{"name": f"lib/x{i}.mpy", "size": 1, "sha256": "0" * 64} for i in range(65)]
    return [
        Case("as built", data, "ok"),
        Case("as built, a newer boot", data, "ok", boot=7),
        Case("picow bundle, as built", release.picow.read_bytes(), "ok", board="picow"),
        # the files' contents
        Case("a byte of the first file changed", flipped(data, body), "wrong_hash"),
        Case("a byte of the last file changed", flipped(data, len(data) - 1), "wrong_hash"),
        Case("two files swapped", resigned(data, fleet, {"files": [doc["files"][1], doc["files"][0],
                                                                     *doc["files"][2:]]}), "wrong_hash"),
        # another board, another boot
        Case("an esp32 bundle on a picow", data, "wrong_board", board="picow"),
        Case("a picow bundle on an esp32", release.picow.read_bytes(), "wrong_board"),
        Case("needs boot 5, the button has 1", resigned(data, fleet, {"min_boot": 5}), "boot_too_old"),
        # other keys, broken signatures
        Case("signed by another key", resigned(data, other), "unknown_key"),
        Case("another key, naming the fleet key", resigned(data, other, key_id=release.key_id), "bad_signature"),
        Case("a byte of the signature changed", flipped(data, HEADER + len(manifest)), "bad_signature"),
        Case("the manifest changed after signing",
             data.replace(b'"version":"0.3.0"', b'"version":"0.9.0"'), "bad_signature"),
        # limits
        Case("a file over 512 KiB", resigned(data, fleet, {"files": [doc["files"][0] | {"size": 600 * 1024}]}),
             "too_large"),
        Case("65 files", resigned(data, fleet, {"files": too_many}), "too_large"),
        # not a bundle, or not all of one
        Case("empty", b"", "malformed"),
        Case("garbage", garbage, "malformed"),
        Case("garbage after the magic", b"SGFW1\n" + garbage, "malformed"),
        Case("cut in the header", data[:8], "malformed"),
        Case("cut in the manifest", data[:HEADER + 20], "malformed"),
        Case("cut in the signature", data[:HEADER + len(manifest) + 10], "malformed"),
        Case("cut in the last file", data[:-1], "malformed"),
        Case("a byte after the last file", data + b"\x00", "malformed"),
        Case("another magic", b"SGFW2\n" + data[6:], "malformed"),
        Case("a manifest length past the end", data[:6] + (1 << 20).to_bytes(4, "big") + data[10:], "malformed"),
        Case("a manifest that is not JSON",
             bundle.pack(b"{not json", bundle.sign(fleet, b"{not json"), [("", contents)]), "malformed"),
        Case("a file named ../boot.py", resigned(data, fleet, {"files": [doc["files"][0] | {"name": "../boot.py"}]}),
             "malformed"),
        Case("a version that is not MAJOR.MINOR.PATCH", resigned(data, fleet, {"version": "0.3"}), "malformed"),
        Case("format 2", resigned(data, fleet, {"v": 2}), "malformed"),
    ]


def _outcome(check: Any, path: Path, keys: dict[str, bytes], case: Case) -> str:
    try:
        doc = check(path, keys, case.board, case.boot)
    except (bundle.Refused, fw_bundle.Refused) as refused:
        return refused.reason
    assert doc["version"] == "0.3.0"
    return "ok"


@pytest.fixture(scope="module")
def written(release: Release) -> list[tuple[Case, Path]]:
    folder = release.folder / "cases"
    folder.mkdir()
    out = []
    for i, case in enumerate(cases(release)):
        path = folder / f"case{i:02}.sgfw"
        path.write_bytes(case.data)
        out.append((case, path))
    return out


def test_the_cli_checker_refuses_each_case_for_its_reason(release: Release,
                                                          written: list[tuple[Case, Path]]) -> None:
    got = {case.name: _outcome(bundle.check_file, path, release.keys, case) for case, path in written}
    assert got == {case.name: case.expected for case, _ in written}


def test_the_button_checker_under_cpython_agrees(release: Release, written: list[tuple[Case, Path]]) -> None:
    got = {case.name: _outcome(fw_bundle.check_file, path, release.keys, case) for case, path in written}
    assert got == {case.name: case.expected for case, _ in written}


# Runs under MicroPython: every case through siagafw.bundle.check_file, one line each.
DEVICE_SCRIPT = """
import sys, json, binascii
from siagafw import bundle
spec = json.load(open(sys.argv[1]))
keys = {}
for k in spec["keys"]:
    keys[k] = binascii.unhexlify(spec["keys"][k])
for c in spec["cases"]:
    try:
        m = bundle.check_file(c["path"], keys, c["board"], c["boot"])
        out = "ok" if m["version"] == "0.3.0" else "bad-version"
    except bundle.Refused as e:
        out = e.reason
    print("CASE %d %s" % (c["i"], out))
print("DONE " + sys.implementation.name)
"""


@pytest.mark.micropython
def test_the_button_checker_under_micropython_agrees(release: Release, written: list[tuple[Case, Path]],
                                                    tmp_path: Path) -> None:
    spec = {"keys": {release.key_id: release.public.hex()},
            "cases": [{"i": i, "path": str(path), "board": case.board, "boot": case.boot}
                      for i, (case, path) in enumerate(written)]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "run.py").write_text(DEVICE_SCRIPT)
    proc = subprocess.run([micropython_binary(), str(tmp_path / "run.py"), str(tmp_path / "spec.json")],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={"MICROPYPATH": str(FIRMWARE_LIB)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "DONE micropython", proc.stdout + proc.stderr
    got = {written[int(line.split()[1])][0].name: line.split()[2] for line in lines if line.startswith("CASE ")}
    assert got == {case.name: case.expected for case, _ in written}

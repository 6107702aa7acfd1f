# The MicroPython half of bench/ota_signature.py (run that one): what it costs a button to check a
# signed firmware bundle, measured with time.ticks_us() and gc.mem_alloc():
#   micropython ota_signature_device.py <bundle dir> <op> [runs]
# The bundle directory holds the firmware's .mpy files, manifest.json (version, board, and each
# file's name, size and SHA-256), vectors.json (the device secret, the manifest's expected HMAC and
# SHA-512, a fleet public key and its Ed25519 signatures over the manifest and over its SHA-256)
# and checks.json (the RFC 8032 §7.1 test vectors and more signed cases, read only by "check", so
# that the heap searches below do not carry them). op is one of:
#   check    run every known-answer check; prints "CHECK <name> ok|FAIL" lines
#   bench <runs> alloc|time
#            time each operation (median of `runs`) and, with "alloc", the heap it allocates with
#            the collector off; prints "FIG <name> <median us> <allocated bytes or -1> <min us>
#            <max us>" lines
#   sha256-1k, sha256-4k, hmac, sha512, ed25519, ed25519-digest, pow, yardstick
#            one operation once, then "OK": the driver runs these under -X heapsize= to find the
#            smallest heap each fits in
# Ends with "DONE". It uses only what the ESP32 and RP2040 builds have (hashlib.sha256, big ints,
# pow() with three arguments, os, time, gc), so it can be copied to a board with the bundle and run
# there to measure the board itself.
#
# The verifier is the firmware's own (siagafw/ed25519.py: SHA-512 and Ed25519 in pure MicroPython,
# written from FIPS 180-4 and RFC 8032 §5.1), run to the end in one call as `verify()` does.
import gc
import hashlib
import json
import os
import sys
import time

from siagafw.ed25519 import P, sha512, verify
from siagafw.proto import Signer


# --- the operations measured ---------------------------------------------------------------------
def bundle_files(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(".mpy"))


def hash_bundle(folder, names, chunk):
    """SHA-256 of every file, read in `chunk`-byte pieces into one buffer as from flash."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    out = []
    for name in names:
        h = hashlib.sha256()
        with open(folder + "/" + name, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
        out.append(h.digest())
    return out


def yardstick_loop(n):
    """A fixed mix of what interpreted firmware does (small-int arithmetic, calls, attribute and
    list access, branches): a speed yardstick to compare this machine with a board, not pystone."""

    class Rec:
        def __init__(self):
            self.a = 0
            self.b = [0] * 8

    def f(r, i):
        r.a = (r.a + i * 3) & 0xFFFF
        r.b[i & 7] += 1
        return r.a

    r = Rec()
    total = 0
    for i in range(n):
        if f(r, i) & 1:
            total += 1
        else:
            total -= 1
    return total


def load(folder):
    with open(folder + "/vectors.json") as f:
        vec = json.loads(f.read())
    with open(folder + "/manifest.json", "rb") as f:
        manifest = f.read()
    return vec, manifest


def unhex(s):
    return bytes.fromhex(s)


def operations(folder, vec, manifest):
    names = bundle_files(folder)
    signer = Signer(unhex(vec["secret"]))
    public = unhex(vec["public"])
    signature = unhex(vec["signature"])
    # Without `cryptography` on the host the fleet-key signatures are RFC 8032 TEST 1's (over the
    # empty message): the same curve work, a shorter SHA-512.
    signed = manifest if vec["manifest_signed"] else b""
    digest = unhex(vec["manifest_sha256"]) if vec["manifest_signed"] else b""
    return {
        "sha256-1k": lambda: hash_bundle(folder, names, 1024),
        "sha256-4k": lambda: hash_bundle(folder, names, 4096),
        "hmac": lambda: signer.mac(manifest),
        "sha512": lambda: sha512(signature[:32] + public + signed),
        "ed25519": lambda: verify(public, signed, signature),
        "ed25519-digest": lambda: verify(public, digest, unhex(vec["digest_signature"])),
        # The longest single call of a verify (C code, cannot be split across loop steps): the
        # modular power in each point decoding.
        "pow": lambda: pow(int.from_bytes(public, "little") % P, (P - 5) // 8, P),
        "yardstick": lambda: yardstick_loop(vec["yardstick_n"]),
    }


def check(folder, vec, manifest):
    def say(name, ok):
        print("CHECK", name, "ok" if ok else "FAIL")

    with open(folder + "/checks.json") as f:
        cases = json.loads(f.read())
    for t in cases["rfc8032"]:
        say("rfc8032-" + t["name"], verify(unhex(t["public"]), unhex(t["message"]), unhex(t["signature"])))
        bad = bytearray(unhex(t["signature"]))
        bad[5] ^= 1
        say("rfc8032-" + t["name"] + "-tampered-rejected",
            not verify(unhex(t["public"]), unhex(t["message"]), bytes(bad)))
    ops = operations(folder, vec, manifest)
    say("sha512-manifest", ops["sha512"]().hex() == vec["sha512"])
    say("hmac-manifest", ops["hmac"]().hex() == vec["hmac"])
    digests = ops["sha256-4k"]()
    listed = json.loads(manifest)["files"]
    say("sha256-files", [d.hex() for d in digests] == [e["sha256"] for e in listed]
        and ops["sha256-1k"]() == digests)
    say("ed25519-manifest", ops["ed25519"]())
    say("ed25519-digest", ops["ed25519-digest"]())
    say("ed25519-other-message-rejected",
        not verify(unhex(vec["public"]), manifest + b" ", unhex(vec["signature"])))
    for i, case in enumerate(cases["extra"]):
        valid = verify(unhex(case["public"]), unhex(case["message"]), unhex(case["signature"]))
        say("ed25519-extra-" + str(i), valid == case["valid"])


def bench(folder, vec, manifest, runs, measure_alloc):
    ops = operations(folder, vec, manifest)
    for name in ("sha256-1k", "sha256-4k", "hmac", "sha512", "ed25519", "ed25519-digest", "pow", "yardstick"):
        op = ops[name]
        op()  # warm: file cache, first-use allocations
        times = []
        for _ in range(runs):
            gc.collect()
            t0 = time.ticks_us()
            op()
            times.append(time.ticks_diff(time.ticks_us(), t0))
        # Allocation: the collector off for one run, so every byte allocated counts. For the hashes
        # this is the high-water mark; for SHA-512 and Ed25519 (every big-int result is a new
        # object) it is the garbage one run makes, which needs a heap of megabytes to hold (the
        # driver gives it one): their live need is found with -X heapsize= instead.
        allocated = -1
        if measure_alloc:
            gc.collect()
            gc.disable()
            before = gc.mem_alloc()
            op()
            allocated = gc.mem_alloc() - before
            gc.enable()
        times.sort()
        print("FIG", name, times[len(times) // 2], allocated, times[0], times[-1])


def main():
    folder = sys.argv[1]
    op = sys.argv[2]
    vec, manifest = load(folder)
    if op == "check":
        check(folder, vec, manifest)
    elif op == "bench":
        bench(folder, vec, manifest, int(sys.argv[3]), sys.argv[4] == "alloc")
    else:
        fn = operations(folder, vec, manifest)[op]
        gc.collect()
        result = fn()
        print("OK" if result is not False else "FAIL")  # only a verify returns a bool
    print("DONE")


main()

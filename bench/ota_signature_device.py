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
# The Ed25519 verifier below is a bench prototype written from RFC 8032 §5.1 (point decoding
# §5.1.3, addition and doubling §5.1.4 in extended coordinates, verification §5.1.7 with the
# cofactor check [8][S]B = [8]R + [8][k]A). SHA-512 is in pure Python too: MicroPython's hashlib has
# only md5, sha1 and sha256. It is not constant-time, which a verifier with only public inputs does
# not need.
import gc
import hashlib
import json
import os
import sys
import time

from siagafw.proto import Signer

# --- SHA-512 (FIPS 180-4 §6.4) -------------------------------------------------------------------
# §5.3.5: the first 64 bits of the fractional parts of the square roots of the first 8 primes.
_SHA512_H = (
    0x6a09e667f3bcc908, 0xbb67ae8584caa73b, 0x3c6ef372fe94f82b, 0xa54ff53a5f1d36f1,
    0x510e527fade682d1, 0x9b05688c2b3e6c1f, 0x1f83d9abfb41bd6b, 0x5be0cd19137e2179,
)
# §4.2.3: the first 64 bits of the fractional parts of the cube roots of the first 80 primes.
_SHA512_K = (
    0x428a2f98d728ae22, 0x7137449123ef65cd, 0xb5c0fbcfec4d3b2f,
    0xe9b5dba58189dbbc, 0x3956c25bf348b538, 0x59f111f1b605d019,
    0x923f82a4af194f9b, 0xab1c5ed5da6d8118, 0xd807aa98a3030242,
    0x12835b0145706fbe, 0x243185be4ee4b28c, 0x550c7dc3d5ffb4e2,
    0x72be5d74f27b896f, 0x80deb1fe3b1696b1, 0x9bdc06a725c71235,
    0xc19bf174cf692694, 0xe49b69c19ef14ad2, 0xefbe4786384f25e3,
    0x0fc19dc68b8cd5b5, 0x240ca1cc77ac9c65, 0x2de92c6f592b0275,
    0x4a7484aa6ea6e483, 0x5cb0a9dcbd41fbd4, 0x76f988da831153b5,
    0x983e5152ee66dfab, 0xa831c66d2db43210, 0xb00327c898fb213f,
    0xbf597fc7beef0ee4, 0xc6e00bf33da88fc2, 0xd5a79147930aa725,
    0x06ca6351e003826f, 0x142929670a0e6e70, 0x27b70a8546d22ffc,
    0x2e1b21385c26c926, 0x4d2c6dfc5ac42aed, 0x53380d139d95b3df,
    0x650a73548baf63de, 0x766a0abb3c77b2a8, 0x81c2c92e47edaee6,
    0x92722c851482353b, 0xa2bfe8a14cf10364, 0xa81a664bbc423001,
    0xc24b8b70d0f89791, 0xc76c51a30654be30, 0xd192e819d6ef5218,
    0xd69906245565a910, 0xf40e35855771202a, 0x106aa07032bbd1b8,
    0x19a4c116b8d2d0c8, 0x1e376c085141ab53, 0x2748774cdf8eeb99,
    0x34b0bcb5e19b48a8, 0x391c0cb3c5c95a63, 0x4ed8aa4ae3418acb,
    0x5b9cca4f7763e373, 0x682e6ff3d6b2b8a3, 0x748f82ee5defb2fc,
    0x78a5636f43172f60, 0x84c87814a1f0ab72, 0x8cc702081a6439ec,
    0x90befffa23631e28, 0xa4506cebde82bde9, 0xbef9a3f7b2c67915,
    0xc67178f2e372532b, 0xca273eceea26619c, 0xd186b8c721c0c207,
    0xeada7dd6cde0eb1e, 0xf57d4f7fee6ed178, 0x06f067aa72176fba,
    0x0a637dc5a2c898a6, 0x113f9804bef90dae, 0x1b710b35131c471b,
    0x28db77f523047d84, 0x32caab7b40c72493, 0x3c9ebe0a15c9bebc,
    0x431d67c49c100d4c, 0x4cc5d4becb3e42b6, 0x597f299cfc657e2a,
    0x5fcb6fab3ad6faec, 0x6c44198c4a475817,
)
_M64 = 0xFFFFFFFFFFFFFFFF


def _sha512_blocks(h, data, w):
    K = _SHA512_K
    M = _M64
    for off in range(0, len(data), 128):
        for i in range(16):
            w[i] = int.from_bytes(data[off + 8 * i:off + 8 * i + 8], "big")
        for i in range(16, 80):
            x = w[i - 15]
            y = w[i - 2]
            s0 = ((x >> 1) | (x << 63)) ^ ((x >> 8) | (x << 56)) ^ (x >> 7)
            s1 = ((y >> 19) | (y << 45)) ^ ((y >> 61) | (y << 3)) ^ (y >> 6)
            w[i] = (w[i - 16] + s0 + w[i - 7] + s1) & M
        a, b, c, d, e, f, g, hh = h
        for i in range(80):
            S1 = ((e >> 14) | (e << 50)) ^ ((e >> 18) | (e << 46)) ^ ((e >> 41) | (e << 23))
            t1 = (hh + (S1 & M) + ((e & f) ^ (~e & g)) + K[i] + w[i]) & M
            S0 = ((a >> 28) | (a << 36)) ^ ((a >> 34) | (a << 30)) ^ ((a >> 39) | (a << 25))
            t2 = ((S0 & M) + ((a & b) ^ (a & c) ^ (b & c))) & M
            hh = g
            g = f
            f = e
            e = (d + t1) & M
            d = c
            c = b
            b = a
            a = (t1 + t2) & M
        h = [(x + y) & M for x, y in zip(h, (a, b, c, d, e, f, g, hh))]  # noqa: B905 (no strict= here)
    return h


def sha512(*parts):
    """SHA-512 of the concatenated parts (bytes); the tail is padded per §5.1.2."""
    data = b"".join(parts)
    n = len(data)
    pad = b"\x80" + bytes((111 - n) % 128) + (8 * n).to_bytes(16, "big")
    h = _sha512_blocks(list(_SHA512_H), data + pad, [0] * 80)
    return b"".join(x.to_bytes(8, "big") for x in h)


# --- Ed25519 verification (RFC 8032 §5.1) --------------------------------------------------------
P = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
D2 = 2 * D % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
_BY = 4 * pow(5, P - 2, P) % P
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
BASE = (_BX, _BY, 1, _BX * _BY % P)


def point_add(p1, p2):
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * D2 * t2 % P
    d = 2 * z1 * z2 % P
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def point_double(p1):
    x1, y1, z1, _ = p1
    a = x1 * x1 % P
    b = y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = a + b
    s = x1 + y1
    e = h - s * s % P
    g = a - b
    f = c + g
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def decode_point(s):
    """§5.1.3: a 32-byte encoding to a point in extended coordinates, or None."""
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    v3 = v * v * v % P
    x = u * v3 * pow(u * v3 * v3 * v % P, (P - 5) // 8, P) % P
    vx2 = v * x * x % P
    if vx2 != u:
        if vx2 != P - u:
            return None
        x = x * SQRT_M1 % P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def double_scalar(s, q, k):
    """[s]B + [k]q by one left-to-right double-and-add over both scalars (Shamir's trick)."""
    bq = point_add(BASE, q)
    acc = (0, 1, 1, 0)
    for i in range(252, -1, -1):  # both scalars are below L < 2**253 (no int.bit_length here)
        acc = point_double(acc)
        bit_s = (s >> i) & 1
        bit_k = (k >> i) & 1
        if bit_s and bit_k:
            acc = point_add(acc, bq)
        elif bit_s:
            acc = point_add(acc, BASE)
        elif bit_k:
            acc = point_add(acc, q)
    return acc


def ed25519_verify(public, message, signature):
    """§5.1.7: True if `signature` (64 bytes) is `public`'s (32 bytes) over `message`."""
    if len(public) != 32 or len(signature) != 64:
        return False
    a = decode_point(public)
    r = decode_point(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    k = int.from_bytes(sha512(signature[:32], public, message), "little") % L
    x, y, z, t = a
    # [S]B - [k]A - R, then [8] of it must be the neutral element (0, 1).
    q = double_scalar(s, (P - x, y, z, P - t), k)
    x, y, z, t = r
    q = point_add(q, (P - x, y, z, P - t))
    q = point_double(point_double(point_double(q)))
    return q[0] % P == 0 and (q[1] - q[2]) % P == 0


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
        "sha512": lambda: sha512(signature[:32], public, signed),
        "ed25519": lambda: ed25519_verify(public, signed, signature),
        "ed25519-digest": lambda: ed25519_verify(public, digest, unhex(vec["digest_signature"])),
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
        say("rfc8032-" + t["name"], ed25519_verify(unhex(t["public"]), unhex(t["message"]), unhex(t["signature"])))
        bad = bytearray(unhex(t["signature"]))
        bad[5] ^= 1
        say("rfc8032-" + t["name"] + "-tampered-rejected",
            not ed25519_verify(unhex(t["public"]), unhex(t["message"]), bytes(bad)))
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
        not ed25519_verify(unhex(vec["public"]), manifest + b" ", unhex(vec["signature"])))
    for i, case in enumerate(cases["extra"]):
        valid = ed25519_verify(unhex(case["public"]), unhex(case["message"]), unhex(case["signature"]))
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

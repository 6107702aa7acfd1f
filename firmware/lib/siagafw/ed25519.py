# Ed25519 signature verification (RFC 8032 §5.1) in pure MicroPython, for signed firmware bundles
# (docs/ota.md). Runs unchanged under CPython and MicroPython; uses only big ints, three-argument
# pow() and hashlib-free SHA-512 (MicroPython's hashlib has no SHA-512).
#
# The loop never waits (docs/firmware.md): Verify(pub, msg, sig).step(budget) does a bounded piece
# of work per call and returns None until it has an answer, then True or False. The pieces are: the
# public key's decoding, R's decoding, the SHA-512 of R || A || msg (one step each), then at most
# `budget` iterations of the double-and-add loop per call, then the final check. verify() runs it to
# the end, for tests and for callers that may block.
#
# Point decoding §5.1.3, addition and doubling §5.1.4 (extended coordinates), the cofactored check
# [8][S]B = [8]R + [8][k]A of §5.1.7. Not constant-time: a verifier handles only public data.
# SHA-512 follows FIPS 180-4 §6.4.

# FIPS 180-4 §5.3.5: the first 64 bits of the fractional parts of the square roots of the first
# 8 primes; §4.2.3: of the cube roots of the first 80 primes.
_H0 = (
    0x6a09e667f3bcc908, 0xbb67ae8584caa73b, 0x3c6ef372fe94f82b, 0xa54ff53a5f1d36f1,
    0x510e527fade682d1, 0x9b05688c2b3e6c1f, 0x1f83d9abfb41bd6b, 0x5be0cd19137e2179,
)
_K = (
    0x428a2f98d728ae22, 0x7137449123ef65cd, 0xb5c0fbcfec4d3b2f, 0xe9b5dba58189dbbc,
    0x3956c25bf348b538, 0x59f111f1b605d019, 0x923f82a4af194f9b, 0xab1c5ed5da6d8118,
    0xd807aa98a3030242, 0x12835b0145706fbe, 0x243185be4ee4b28c, 0x550c7dc3d5ffb4e2,
    0x72be5d74f27b896f, 0x80deb1fe3b1696b1, 0x9bdc06a725c71235, 0xc19bf174cf692694,
    0xe49b69c19ef14ad2, 0xefbe4786384f25e3, 0x0fc19dc68b8cd5b5, 0x240ca1cc77ac9c65,
    0x2de92c6f592b0275, 0x4a7484aa6ea6e483, 0x5cb0a9dcbd41fbd4, 0x76f988da831153b5,
    0x983e5152ee66dfab, 0xa831c66d2db43210, 0xb00327c898fb213f, 0xbf597fc7beef0ee4,
    0xc6e00bf33da88fc2, 0xd5a79147930aa725, 0x06ca6351e003826f, 0x142929670a0e6e70,
    0x27b70a8546d22ffc, 0x2e1b21385c26c926, 0x4d2c6dfc5ac42aed, 0x53380d139d95b3df,
    0x650a73548baf63de, 0x766a0abb3c77b2a8, 0x81c2c92e47edaee6, 0x92722c851482353b,
    0xa2bfe8a14cf10364, 0xa81a664bbc423001, 0xc24b8b70d0f89791, 0xc76c51a30654be30,
    0xd192e819d6ef5218, 0xd69906245565a910, 0xf40e35855771202a, 0x106aa07032bbd1b8,
    0x19a4c116b8d2d0c8, 0x1e376c085141ab53, 0x2748774cdf8eeb99, 0x34b0bcb5e19b48a8,
    0x391c0cb3c5c95a63, 0x4ed8aa4ae3418acb, 0x5b9cca4f7763e373, 0x682e6ff3d6b2b8a3,
    0x748f82ee5defb2fc, 0x78a5636f43172f60, 0x84c87814a1f0ab72, 0x8cc702081a6439ec,
    0x90befffa23631e28, 0xa4506cebde82bde9, 0xbef9a3f7b2c67915, 0xc67178f2e372532b,
    0xca273eceea26619c, 0xd186b8c721c0c207, 0xeada7dd6cde0eb1e, 0xf57d4f7fee6ed178,
    0x06f067aa72176fba, 0x0a637dc5a2c898a6, 0x113f9804bef90dae, 0x1b710b35131c471b,
    0x28db77f523047d84, 0x32caab7b40c72493, 0x3c9ebe0a15c9bebc, 0x431d67c49c100d4c,
    0x4cc5d4becb3e42b6, 0x597f299cfc657e2a, 0x5fcb6fab3ad6faec, 0x6c44198c4a475817,
)
_M64 = 0xFFFFFFFFFFFFFFFF


def sha512(data):
    """SHA-512 of `data` (bytes), padded per FIPS 180-4 §5.1.2."""
    n = len(data)
    data = bytes(data) + b"\x80" + bytes((111 - n) % 128) + (8 * n).to_bytes(16, "big")
    K = _K
    M = _M64
    h = list(_H0)
    w = [0] * 80
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
            s1 = ((e >> 14) | (e << 50)) ^ ((e >> 18) | (e << 46)) ^ ((e >> 41) | (e << 23))
            t1 = (hh + (s1 & M) + ((e & f) ^ (~e & g)) + K[i] + w[i]) & M
            s0 = ((a >> 28) | (a << 36)) ^ ((a >> 34) | (a << 30)) ^ ((a >> 39) | (a << 25))
            t2 = ((s0 & M) + ((a & b) ^ (a & c) ^ (b & c))) & M
            hh = g
            g = f
            f = e
            e = (d + t1) & M
            d = c
            c = b
            b = a
            a = (t1 + t2) & M
        for i, v in enumerate((a, b, c, d, e, f, g, hh)):
            h[i] = (h[i] + v) & M
    return b"".join(x.to_bytes(8, "big") for x in h)


P = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
_D2 = 2 * D % P
_SQRT_M1 = pow(2, (P - 1) // 4, P)
_BY = 4 * pow(5, P - 2, P) % P
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
BASE = (_BX, _BY, 1, _BX * _BY % P)
ZERO = (0, 1, 1, 0)
_BITS = 253  # both scalars are below L < 2**253 (MicroPython has no int.bit_length())


def point_add(p1, p2):
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * _D2 * t2 % P
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
    """§5.1.3: a 32-byte encoding to a point in extended coordinates, or None if it is not one."""
    if len(s) != 32:
        return None
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
        if vx2 != (P - u) % P:
            return None
        x = x * _SQRT_M1 % P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def encode_point(p):
    """§5.1.2: the 32-byte encoding of a point."""
    x, y, z, _ = p
    zi = pow(z, P - 2, P)
    x = x * zi % P
    y = y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _neg(p):
    x, y, z, t = p
    return ((P - x) % P, y, z, (P - t) % P)


class Verify:
    """One signature check, done a bounded piece per step() (see the top of this file)."""

    def __init__(self, public, message, signature):
        self._pub = bytes(public)
        self._msg = bytes(message)
        self._sig = bytes(signature)
        self._stage = 0
        self.result = None
        if len(self._pub) != 32 or len(self._sig) != 64:
            self.result = False
            return
        self._s = int.from_bytes(self._sig[32:], "little")
        if self._s >= L:
            self.result = False

    def step(self, budget=8):
        """Do at most `budget` loop iterations (or one decoding or hash); None until done."""
        if self.result is not None:
            return self.result
        stage = self._stage
        if stage == 0:  # the public key
            a = decode_point(self._pub)
            if a is None:
                self.result = False
                return False
            self._negA = _neg(a)
            self._stage = 1
        elif stage == 1:  # R
            r = decode_point(self._sig[:32])
            if r is None:
                self.result = False
                return False
            self._negR = _neg(r)
            self._stage = 2
        elif stage == 2:  # k = SHA-512(R || A || M) mod L; then [S]B + [k](-A), bits high to low
            self._k = int.from_bytes(sha512(self._sig[:32] + self._pub + self._msg), "little") % L
            self._msg = None
            self._both = point_add(BASE, self._negA)
            self._acc = ZERO
            self._i = _BITS - 1
            self._stage = 3
        elif stage == 3:
            acc = self._acc
            i = self._i
            s = self._s
            k = self._k
            end = i - budget if budget > 0 else i - 1
            if end < -1:
                end = -1
            while i > end:
                acc = point_double(acc)
                bs = (s >> i) & 1
                bk = (k >> i) & 1
                if bs and bk:
                    acc = point_add(acc, self._both)
                elif bs:
                    acc = point_add(acc, BASE)
                elif bk:
                    acc = point_add(acc, self._negA)
                i -= 1
            self._acc = acc
            self._i = i
            if i < 0:
                self._stage = 4
        else:  # [8]([S]B - [k]A - R) must be the neutral element
            q = point_add(self._acc, self._negR)
            q = point_double(point_double(point_double(q)))
            self.result = q[0] % P == 0 and (q[1] - q[2]) % P == 0
            self._acc = self._both = self._negA = self._negR = None
            return self.result
        return None

    def done(self):
        return self.result is not None


def verify(public, message, signature):
    """True if `signature` (64 bytes) is `public`'s (32 bytes) over `message`; runs to the end."""
    v = Verify(public, message, signature)
    while True:
        r = v.step(64)
        if r is not None:
            return r

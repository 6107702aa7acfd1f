# NMEA 0183 position from an optional GPS module on a UART, for mobile units (pure: bytes in, a fix out).
#
# Only the two sentences every receiver sends are used: GGA (fix quality) and RMC (status A/V), with
# any talker (GP, GN, GL, GA, BD). Coordinates become integer millionths of a degree without floats
# (protocol.md §3), so the board and the gateway agree to the digit. A sentence whose checksum is
# missing or wrong is dropped and counted: a UART with noise on it must not move the button across
# the city.
try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from siagafw.timing import ticks_diff

# NMEA 0183 limits a sentence to 82 characters including "$" and the closing CR LF.
MAX_SENTENCE = const(82)

# Reasons parse() gives for sentences that yield no position.
CHECKSUM = "checksum"
MALFORMED = "malformed"
NO_FIX = "no_fix"
IGNORED = "ignored"


def _checksum_ok(text):
    star = text.find("*")
    if star < 1 or len(text) != star + 3:
        return False
    x = 0
    for i in range(1, star):
        x ^= ord(text[i])
    try:
        return x == int(text[star + 1:], 16)
    except ValueError:
        return False


def _coord(value, hemi, deg_digits):
    """'0610.52352', 'S', 2 -> -6175392 (ddmm.mmmm or dddmm.mmmm), or None if malformed."""
    if hemi not in ("N", "S", "E", "W"):
        return None
    parts = value.split(".")
    whole = parts[0]
    frac = parts[1] if len(parts) > 1 else ""
    if len(parts) > 2 or len(whole) != deg_digits + 2 or not whole.isdigit() or (frac and not frac.isdigit()):
        return None
    minutes = int(whole[deg_digits:])
    if minutes >= 60:
        return None
    # Minutes to millionths of a degree, rounded: 1e-6 minute steps, then / 60.
    micro_minutes = minutes * 1000000 + int((frac + "000000")[:6])
    e6 = int(whole[:deg_digits]) * 1000000 + (micro_minutes + 30) // 60
    if e6 > (90000000 if deg_digits == 2 else 180000000):
        return None
    return -e6 if hemi in ("S", "W") else e6


def parse(text):
    """One sentence (str, without CR LF) -> (lat_e6, lon_e6), or one of the reasons above."""
    if not text.startswith("$"):
        return MALFORMED
    if not _checksum_ok(text):
        return CHECKSUM
    f = text[1:-3].split(",")
    kind = f[0][2:] if len(f[0]) == 5 else ""
    if kind == "GGA" and len(f) >= 7:
        if f[6] in ("", "0"):
            return NO_FIX  # fix quality 0: invalid
        lat, ns, lon, ew = f[2], f[3], f[4], f[5]
    elif kind == "RMC" and len(f) >= 7:
        # Status V is a void fix; NMEA 2.3 added a mode field where N means "not valid" as well.
        if f[2] != "A" or (len(f) >= 13 and f[12][:1] == "N"):
            return NO_FIX
        lat, ns, lon, ew = f[3], f[4], f[5], f[6]
    elif kind or f[0][:1] == "P":
        return IGNORED  # other sentences, and proprietary ones ("$P...")
    else:
        return MALFORMED
    lat_e6 = _coord(lat, ns, 2)
    lon_e6 = _coord(lon, ew, 3)
    if lat_e6 is None or lon_e6 is None:
        return MALFORMED
    return (lat_e6, lon_e6)


class GpsReader:
    """Assembles sentences from UART bytes in a fixed buffer and keeps the newest valid fix."""

    def __init__(self, max_age_ms=120000):
        self.max_age_ms = max_age_ms
        self._buf = bytearray(MAX_SENTENCE)
        self._n = -1           # bytes in the buffer; -1 while waiting for a "$"
        self.lat_e6 = None
        self.lon_e6 = None
        self.fix_at = None     # ticks of the newest fix
        self.sentences = 0
        self.errors = 0        # checksum or format errors, overlong lines

    def feed(self, data, now_ms):
        for b in data:
            if b == 0x24:  # "$" always starts a sentence: resynchronise on it
                self._buf[0] = b
                self._n = 1
            elif b == 0x0D or b == 0x0A:
                if self._n > 0:
                    self._sentence(bytes(self._buf[:self._n]), now_ms)
                self._n = -1
            elif self._n >= 0:
                if self._n < MAX_SENTENCE - 2:
                    self._buf[self._n] = b
                    self._n += 1
                else:
                    self.errors += 1  # too long for NMEA 0183: noise, drop the line
                    self._n = -1

    def _sentence(self, raw, now_ms):
        try:
            text = raw.decode()
        except UnicodeError:
            self.errors += 1
            return
        result = parse(text)
        if isinstance(result, tuple):
            self.sentences += 1
            self.lat_e6, self.lon_e6 = result
            self.fix_at = now_ms
        elif result == CHECKSUM or result == MALFORMED:
            self.errors += 1

    def fix(self, now_ms):
        """(lat_e6, lon_e6) of a fix younger than max_age_ms, else None."""
        if self.fix_at is None or ticks_diff(now_ms, self.fix_at) > self.max_age_ms:
            return None
        return (self.lat_e6, self.lon_e6)

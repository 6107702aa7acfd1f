"""The bounds of every field a button sends and a gateway forwards: one definition, checked at the
door by the gateway's codec (gateway/codec.py) and by the command center's intake
(commandcenter/models.py), so that any frame the gateway accepts is one the intake accepts.
docs/protocol.md §3.1 is the same table in prose; tests/test_contract.py proves the implication by
posting what the gateway makes of generated frames to the real intake.

Text is UTF-8 without lone surrogates (which UTF-8 cannot carry, though JSON's \\uD800 escape can
name one) and without control characters. Integers stay inside what JSON parsers everywhere read
exactly (±2**53) and what SQLite stores (64-bit).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from datetime import date, datetime

from pydantic import WithJsonSchema

# Sequence numbers: 31 bits (protocol.md §4).
SEQ_MAX = 2**31 - 1
# Milliseconds since the button started: 2**53 - 1 is 285,000 years, and exact in every JSON parser.
UPTIME_MS_MAX = 2**53 - 1
# Location in millionths of a degree.
LAT_E6_MAX = 90_000_000
LON_E6_MAX = 180_000_000
# What a button's flash config may hold (firmware/lib/siagafw/config.py keeps the same numbers).
ADDRESS_MAX_BYTES = 200
AREA_MAX_BYTES = 64
FIRMWARE_MAX_CHARS = 32
SITE_MAX_CHARS = 64
# An alarm's kind: the five known ones, and any other of this form from newer firmware, which the
# command center shows as sent (a new kind of emergency must be heard, not refused).
KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
# A device's own clock (alarm `ts`, Unix seconds). Outside this range the clock is not set or not
# sane; the alarm is kept and forwarded with `raised_at: null` instead of being refused.
TS_MIN = 1_704_067_200     # 2024-01-01T00:00:00Z, as the firmware's plausible_unix_time
TS_MAX = 4_102_444_799     # 2099-12-31T23:59:59Z
# Heartbeat fields.
BATTERY_MV_MAX = 99_999
RSSI_MIN, RSSI_MAX = -200, 50
OUTBOX_MAX = 1_000_000
EVERY_S_MIN, EVERY_S_MAX = 1, 86_400
# The largest integer SQLite stores (64-bit, signed): a number a client sends that is compared with a
# column (an incident number, an audit entry id) must not exceed it, or the driver raises OverflowError.
SQLITE_INT_MAX = 2**63 - 1
# Times one service takes from another (an alarm's `raised_at` and `received_at`, a fault's `at`, a
# state report's `at`) and days a client asks about: RFC 3339 with a time zone, dated (as written) in
# the years YEAR_MIN to YEAR_MAX. From the Unix epoch, the earliest a gateway's clock can show (one
# that was never set must not cost an alarm), to the end of 2999. Python's dates end at years 1 and
# 9999, so inside these years converting to UTC, or adding a day or a time zone offset, never
# overflows. YEAR_RE is the same rule for a text's first four characters (for OpenAPI patterns).
YEAR_MIN, YEAR_MAX = 1970, 2999
YEAR_RE = "(19[7-9][0-9]|2[0-9]{3})"


def utf8_length(text: str) -> int | None:
    """Bytes of text in UTF-8, or None when it cannot be encoded (a lone surrogate)."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def text_problem(text: str, max_bytes: int) -> str | None:
    """Why text may not travel in a frame (too long, a lone surrogate, a control character), or None."""
    n = utf8_length(text)
    if n is None:
        return "holds a lone UTF-16 surrogate"
    if n > max_bytes:
        return f"is {n} bytes, more than {max_bytes}"
    if any(unicodedata.category(c) == "Cc" for c in text):
        return "holds a control character"
    return None


def text_checker(max_bytes: int) -> Callable[[str], str]:
    """A validator for pydantic's AfterValidator: the text, or ValueError saying what is wrong."""

    def check(text: str) -> str:
        problem = text_problem(text, max_bytes)
        if problem is not None:
            raise ValueError(f"text {problem}")
        return text

    return check


def json_integer(value: object) -> object:
    """A pydantic BeforeValidator for a strict int field: 4711.0 is the integer 4711, as JSON Schema
    counts it (an OpenAPI `integer` includes numbers written with a zero fraction); a string, a
    boolean or 4711.5 is left for the strict check to refuse."""
    if type(value) is float and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return value


# The text rule as JSON Schema says it in an OpenAPI document: no control character (Unicode's Cc),
# and no more characters than bytes (a character is at least one byte). The byte limit itself has no
# JSON Schema keyword; the field's description states it.
NO_CONTROL_CHARACTERS = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"


def text_schema(max_bytes: int, max_chars: int | None = None) -> WithJsonSchema:
    """How a field checked by text_checker(max_bytes) (and at most max_chars characters) is documented:
    `Annotated[str, AfterValidator(text_checker(n)), text_schema(n)]`."""
    limit = f"at most {max_chars} characters and " if max_chars is not None else "at most "
    return WithJsonSchema({"type": "string", "maxLength": min(max_bytes, max_chars or max_bytes),
                           "pattern": NO_CONTROL_CHARACTERS,
                           "description": f"{limit}{max_bytes} bytes of UTF-8, no control characters"})


def time_problem(t: datetime) -> str | None:
    """Why t may not be taken as an event time (no time zone, a year outside YEAR_MIN…YEAR_MAX), or None."""
    if t.utcoffset() is None:
        return "has no time zone"
    return day_problem(t.date())


def day_problem(day: date) -> str | None:
    """Why a day may not be asked about or recorded (a year outside YEAR_MIN…YEAR_MAX), or None."""
    if not YEAR_MIN <= day.year <= YEAR_MAX:
        return f"is outside the years {YEAR_MIN}–{YEAR_MAX}"
    return None


def time_checker(t: datetime) -> datetime:
    """A validator for pydantic's AfterValidator: t unchanged, or ValueError saying what is wrong."""
    problem = time_problem(t)
    if problem is not None:
        raise ValueError(f"time {problem}")
    return t


def known_clock(ts: int | None) -> int | None:
    """A device's Unix time if it is inside [TS_MIN, TS_MAX], else None (clock not usable)."""
    return ts if ts is not None and TS_MIN <= ts <= TS_MAX else None

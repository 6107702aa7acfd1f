"""Validators for everything a technician types: each returns the normalised value or raises
`Invalid` with what to type instead (ESPHome's habit). They are pure: no I/O.

Coordinates become integers in millionths of a degree (docs/protocol.md §3: no floats in frames);
they are read with `Decimal`, so "-6.175392" is exactly -6175392 and never -6175391.999.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from urllib.parse import urlsplit

from .errors import Invalid
from .text import t

DEVICE_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{2,31}")
RESERVED_IDS = frozenset({"siaga-gateway"})  # the broker ACL's gateway user (docs/broker.md §4)
ID_PREFIX_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,26}")
KINDS = ("general", "medical", "fire", "crime", "disaster")
TYPE_BUTTONS = ("medical", "fire", "crime", "disaster")
MAX_ADDRESS_BYTES = 200  # firmware/lib/siagafw/config.py MAX_ADDR_BYTES: keeps a frame under 1 KiB
MAX_NOTES = 500
AREA_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}")
SITE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_E6 = Decimal("0.000001")
# Degrees, minutes, seconds as map apps and GPS units print them: 6°10'31.4"S
_DMS = re.compile(r"""^\s*(\d{1,3})\s*[°º:d ]\s*(\d{1,2})\s*['′:m ]?\s*(?:(\d{1,2}(?:\.\d+)?)\s*(?:["″]|'')?)?\s*$""")


def device_id(value: object) -> str:
    text = str(value).strip().lower() if value is not None else ""
    if not DEVICE_ID_RE.fullmatch(text):
        raise Invalid("device id", value, t("valid.device_id"))
    if text in RESERVED_IDS:
        raise Invalid("device id", value, t("valid.device_id_reserved", id=text))
    return text


def id_prefix(value: object) -> str:
    text = str(value).strip().lower().rstrip("-")
    if not ID_PREFIX_RE.fullmatch(text):
        raise Invalid("id prefix", value, t("valid.id_prefix"))
    return text


def _hemisphere(text: str, positive: str, negative: str) -> tuple[str, int]:
    """Strip a leading or trailing hemisphere letter; return the rest and the sign it gives."""
    upper = text.strip().upper()
    for letter, sign in ((positive, 1), (negative, -1)):
        if upper.endswith(letter) or upper.startswith(letter):
            rest = upper[1:] if upper.startswith(letter) else upper[:-1]
            return rest.strip(), sign
    return text.strip(), 0


def _degrees(text: str) -> Decimal:
    # Indonesian and other locales write a decimal comma: -6,175392.
    plain = text.replace("−", "-").replace(" ", "")
    if plain.count(",") == 1 and "." not in plain:
        plain = plain.replace(",", ".")
    try:
        return Decimal(plain)
    except InvalidOperation:
        pass
    match = _DMS.match(text.replace("−", "-"))
    if match is None:
        raise ValueError(text)
    deg, minutes, seconds = (Decimal(g) if g else Decimal(0) for g in match.groups())
    if minutes >= 60 or seconds >= 60:
        raise ValueError(text)
    return deg + minutes / 60 + seconds / 3600


def _coordinate(value: object, field: str, limit: int, positive: str, negative: str, example: str) -> int:
    expected = t("valid.degrees", example=example)
    if isinstance(value, bool) or value is None:
        raise Invalid(field, value, expected)
    if isinstance(value, int | float | Decimal):
        number = Decimal(str(value))
        sign = 0
    else:
        text, sign = _hemisphere(str(value), positive, negative)
        try:
            number = _degrees(text)
        except ValueError:
            raise Invalid(field, value, expected) from None
        if sign and number < 0:
            raise Invalid(field, value, t("valid.sign_twice", letter=negative))
    if not number.is_finite():
        raise Invalid(field, value, expected)
    if sign:
        number = abs(number) * sign
    if not -limit <= number <= limit:
        hint = t("valid.latitude_range" if field == "latitude" else "valid.longitude_range", limit=limit)
        if field == "latitude" and abs(number) <= 180:
            hint += t("valid.looks_like_longitude")
        raise Invalid(field, value, hint)
    return int((number / _E6).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def latitude(value: object) -> int:
    """Latitude in millionths of a degree."""
    return _coordinate(value, "latitude", 90, "N", "S", "-6.175392")


def longitude(value: object) -> int:
    """Longitude in millionths of a degree."""
    return _coordinate(value, "longitude", 180, "E", "W", "106.827153")


def latlon(value: object) -> tuple[int, int]:
    """A "lat, lon" pair as copied from a map app: "-6.175392, 106.827153"."""
    text = str(value).strip() if value is not None else ""
    if ";" in text:
        parts = text.split(";")
    elif ", " in text:
        parts = text.split(", ")
    elif text.count(",") == 1:
        parts = text.split(",")
    else:
        parts = text.split()
    if len(parts) != 2:
        raise Invalid("location", value, t("valid.latlon"))
    lat, lon = latitude(parts[0]), longitude(parts[1])
    return lat, lon


def text_field(value: object, field: str, *, max_bytes: int, required: bool, example: str) -> str:
    text = " ".join(str(value).split()) if value is not None else ""  # one line, single spaces
    if not text and required:
        raise Invalid(field, value, t("valid.not_empty", example=example))
    if _CONTROL.search(text):
        raise Invalid(field, value, t("valid.no_control"))
    if len(text.encode()) > max_bytes:
        raise Invalid(field, value, t("valid.too_long", max_bytes=max_bytes, example=example))
    return text


def address(value: object) -> str:
    return text_field(value, "address", max_bytes=MAX_ADDRESS_BYTES, required=True,
                      example="Jl. Medan Merdeka Barat 12, Gambir")


def notes(value: object) -> str:
    return text_field(value, "notes", max_bytes=MAX_NOTES, required=False,
                      example=t("valid.notes_example"))


def area_code(value: object) -> str:
    """An administrative-area code: a Kemendagri kelurahan/kecamatan code (31.71.01.1001) or any
    other scheme's. Ten or six bare digits are dotted the Kemendagri way."""
    text = str(value).strip() if value is not None else ""
    if re.fullmatch(r"\d{10}", text):
        text = f"{text[:2]}.{text[2:4]}.{text[4:6]}.{text[6:]}"
    elif re.fullmatch(r"\d{6}", text):
        text = f"{text[:2]}.{text[2:4]}.{text[4:6]}"
    if not AREA_RE.fullmatch(text):
        raise Invalid("area", value, t("valid.area"))
    return text


def site(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    if not text:
        return None
    if not SITE_RE.fullmatch(text):
        raise Invalid("site", value, t("valid.site"))
    return text


# A SIM's number in E.164 (ITU-T E.164 §6): "+", the country code and the number, 8-15 digits in all,
# as the gateway's modem sees a sender in international format (3GPP TS 23.040 §9.1.2.5). Spaces,
# dashes, dots and brackets that people write between the digits are dropped.
PHONE_RE = re.compile(r"\+[1-9][0-9]{7,14}")
_PHONE_SEPARATORS = re.compile(r"[\s().-]")


def phone(value: object, field: str = "phone") -> str:
    """A phone number as the gateway stores it: "+62 812-0000-0001" -> "+6281200000001". A national
    number ("0812...") is refused rather than guessed: the country code must be written."""
    text = _PHONE_SEPARATORS.sub("", str(value)) if value is not None else ""
    if text.startswith("00"):  # the international prefix dialled from Indonesia and most of the world
        text = "+" + text[2:]
    if not PHONE_RE.fullmatch(text):
        raise Invalid(field, value, t("valid.phone"))
    return text


def kind(value: object) -> str:
    text = str(value).strip().lower() if value is not None else ""
    if text not in KINDS:
        raise Invalid("kind", value, t("valid.one_of", choices=", ".join(KINDS)))
    return text


def type_buttons(value: object) -> tuple[str, ...]:
    """The fitted emergency-type buttons, e.g. "medical,fire" (empty: the SOS button only)."""
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else re.split(r"[,\s;]+", str(value))
    out: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        if not name:
            continue
        if name not in TYPE_BUTTONS:
            raise Invalid("types", value, t("valid.types", choices=", ".join(TYPE_BUTTONS)))
        if name in out:
            raise Invalid("types", value, t("valid.type_twice", name=name))
        out.append(name)
    return tuple(out)


def wifi_ssid(value: object) -> str:
    text = str(value) if value is not None else ""
    if not 1 <= len(text.encode()) <= 32:
        raise Invalid("Wi-Fi SSID", value, t("valid.ssid"))
    return text


def wifi_password(value: str) -> str:
    """WPA2-Personal: 8-63 printable ASCII characters, or 64 hex digits; empty for an open network."""
    if value == "" or re.fullmatch(r"[0-9A-Fa-f]{64}", value):
        return value
    if not 8 <= len(value) <= 63 or not all(32 <= ord(c) < 127 for c in value):
        # The password itself is never echoed back.
        raise Invalid("Wi-Fi password", t("valid.hidden"), t("valid.wifi_password"))
    return value


def secret_hex(value: str) -> str:
    """A device secret as docs/protocol.md §1 writes it: 32 bytes as 64 hex digits, stored lowercase.
    The secret itself is never echoed back."""
    text = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise Invalid("device secret", t("valid.hidden"), t("valid.secret"))
    if len(set(text)) == 1:
        raise Invalid("device secret", t("valid.hidden"), t("valid.secret_placeholder"))
    return text


def mqtt_password(value: str) -> str:
    """A device's broker password: 16-128 printable ASCII characters without spaces (a generated one
    has 32), so that every MQTT client library and config format carries it unchanged."""
    text = value.strip()
    if not 16 <= len(text) <= 128 or not all(33 <= ord(c) < 127 for c in text):
        raise Invalid("broker password", t("valid.hidden"), t("valid.broker_password"))
    return text


def host(value: object, field: str = "broker host") -> str:
    text = str(value).strip() if value is not None else ""
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[?[0-9A-Fa-f:.]+\]?", text):
        raise Invalid(field, value, t("valid.host"))
    return text


def port(value: object, field: str = "port") -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise Invalid(field, value, t("valid.port")) from None
    if not 0 < number < 65536:
        raise Invalid(field, value, t("valid.port"))
    return number


def url(value: object, field: str = "gateway url") -> str:
    text = str(value).strip().rstrip("/") if value is not None else ""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise Invalid(field, value, t("valid.url"))
    return text


@dataclass(frozen=True, slots=True)
class Location:
    """Where a button is installed. Coordinates in millionths of a degree."""

    lat_e6: int
    lon_e6: int
    address: str
    area: str

    def __post_init__(self) -> None:
        if (self.lat_e6, self.lon_e6) == (0, 0):
            # "0, 0" (in the Gulf of Guinea) is what an unset GPS or an empty form gives.
            raise Invalid("location", "0, 0", t("valid.zero_location"))

    @property
    def lat(self) -> float:
        return self.lat_e6 / 1e6

    @property
    def lon(self) -> float:
        return self.lon_e6 / 1e6

    def device_loc(self) -> dict[str, object]:
        """The `loc` object of the device config and of every alarm (docs/protocol.md §4.1)."""
        return {"lat_e6": self.lat_e6, "lon_e6": self.lon_e6, "addr": self.address, "area": self.area}

    def degrees(self) -> str:
        return f"{self.lat_e6 / 1e6:.6f}, {self.lon_e6 / 1e6:.6f}"


def location(*, lat: object = None, lon: object = None, latlon_text: object = None, address_text: object,
             area: object) -> Location:
    """Build a Location from separate coordinates or one "lat, lon" text (exactly one of the two)."""
    if latlon_text not in (None, ""):
        if lat not in (None, "") or lon not in (None, ""):
            raise Invalid("location", latlon_text, t("valid.latlon_twice"))
        lat_e6, lon_e6 = latlon(latlon_text)
    else:
        if lat in (None, "") or lon in (None, ""):
            raise Invalid("location", t("valid.missing"), t("valid.no_coordinates"))
        lat_e6, lon_e6 = latitude(lat), longitude(lon)
    return Location(lat_e6, lon_e6, address(address_text), area_code(area))

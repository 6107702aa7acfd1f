"""OASIS CAP 1.2 destination: each alarm and each later state of it as one CAP alert, POSTed.

A city's 112 room (or any system that reads the Common Alerting Protocol) gets one CAP 1.2
`<alert>` per alarm event and one per state event, rendered from the event bodies of
gateway/events.py alone: nothing needs to be stored to link an update to its alarm. Device faults
are not alerts and CAP has no place for them: this destination carries the event kinds in
`CAP_EVENT_KINDS` and refuses any other for good (the configuration should not send it any).

Message envelope (CAP 1.2 §3.2.1):

    identifier   the event id, percent-encoded where CAP forbids a character (below)
    sender       setting `sender`, by default "siaga@<gateway id>"
    sent         alarm: its received_at; state: its at. Whole seconds, UTC written as "-00:00"
                 (CAP 1.2 §3.3.2 forbids "Z" and fractions of a second do not match the schema)
    status       Actual; Test for a press of a button in test mode (a technician's check: CAP's
                 "technical testing only, all recipients disregard"). Exercise is for drills that
                 recipients act on, which a test press is not
    msgType      Alert, Update or Cancel (table below)
    scope        Restricted, with setting `restriction` as the rule: an alert names the place of a
                 person asking for help, for emergency services only. Public would invite
                 rebroadcast; Private would need a fixed list of addresses
    note         only for a test press, saying that it is one
    references   for Update and Cancel: "<sender>,<identifier>,<sent>" of the alarm's own alert,
                 rebuilt from the state body's alarm_event_id and received_at
    incidents    the gateway's incident key (presses of one site grouped), encoded like identifier

Identifiers: CAP forbids spaces, commas, "<" and "&" in identifier, sender and the parts of
references, and whitespace separates incidents. Such a value is the UTF-8 percent-encoding of the
gateway's text, keeping only A-Z a-z 0-9 "-" "." "_" "~" ":" as they are; "%" itself is encoded,
so different ids never meet. Ids the gateway makes (gateway id, device id and numbers) use only
kept characters, so identifier == event id in practice: "gw-1:jkt-menteng-0042:4711".

State -> message (an alarm event is an Alert):

    state         msgType  urgency    severity  certainty  responseType
    (alarm)       Alert    Immediate  by kind   Likely     Assess
    received      Update   Immediate  by kind   Likely     Assess
    undelivered   Update   Immediate  by kind   Likely     Assess
    acknowledged  Update   Immediate  by kind   Likely     Assess
    dispatched    Update   Immediate  by kind   Likely     Monitor
    resolved      Update   Past       by kind   Observed   AllClear
    false_alarm   Cancel   Past       Minor     Unlikely   None

Why: an Update supersedes the alert it references with newer facts, which is what an operator's
acknowledgement or a dispatch is. A resolved emergency really happened, so it stays on the
recipients' record as an Update whose urgency is Past with AllClear ("no longer a threat"); only a
false alarm withdraws the alert, which is what Cancel means. Certainty is Likely, not Observed: a
press is a resident's unverified report (the signed message proves the button, not the
emergency); after responders resolved it, the event is Observed; a false alarm is Unlikely.
Assess is the response CAP gives for a message to be evaluated by professionals rather than acted
on by the public; Monitor once responders are on their way. A test press has responseType None in
every message, whatever its state.

Kind -> info (one <info> in Bahasa Indonesia, "id-ID", then the same in English, "en-US"):

    kind      category  event (id-ID / en-US)                                severity
    general   Safety    Tombol darurat: umum / Panic button: general         Severe
    medical   Health    Tombol darurat: medis / Panic button: medical        Severe
    fire      Fire      Tombol darurat: kebakaran / Panic button: fire       Severe
    crime     Security  Tombol darurat: kejahatan / Panic button: crime      Severe
    disaster  Rescue    Tombol darurat: bencana / Panic button: disaster     Severe
    other     Other     Tombol darurat: <kind> / Panic button: <kind>        Unknown

The category routes the alert to the right service (ambulance, fire brigade, police, search and
rescue). Severity is Severe for every kind: a person asked for help and, until someone has spoken
to them, that is a significant threat to life; a press cannot tell Extreme from Severe. A test
press says "Uji tombol darurat" / "Panic button test".

Every <info> also has an eventCode "siaga_kind" = kind, senderName, headline (at most 160
characters), description, an instruction where there is something to do, the contact setting if
set, parameters (the body's device_id, seq, gateway_id, alarm_event_id, state, incident_id, by,
incident_key, press_count, sources, raised_at, battery_mv and test, each when present), and one
<area>: areaDesc (the address, else the area code, else the button's name), a <circle>
"<lat>,<lon> <radius km>" (WGS 84, six decimals; setting `radius_km`, 0.05 by default: the
registry's coordinates are surveyed at installation, so 50 m covers the building, not a
neighbourhood; none for the position 0,0, which stands for "not known") and a <geocode> named by
setting `geocode_name` ("KODE_WILAYAH" by default) with the Kemendagri administrative-area code,
when the button has one. The alarm's raised_at (the button's clock) is the <onset>.

Text from the registry or an operator may hold anything: characters XML 1.0 cannot carry are
replaced by U+FFFD, "&", "<" and ">" are escaped by the serialiser, line ends become "\\n".
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

import httpx

from .adapters import Accepted, Failed, Outcome
from .store import OutboundEvent

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
ATOM_NS = "http://www.w3.org/2005/Atom"
ATOM_CONTENT_TYPE = "application/atom+xml; charset=utf-8"
CONTENT_TYPE = "application/cap+xml; charset=utf-8"
CAP_EVENT_KINDS = frozenset({"alarm", "state"})
LANGUAGES = ("id-ID", "en-US")
HEADLINE_MAX = 160  # CAP 1.2 §3.2.2: "160 characters MAY be a useful target limit"
DEFAULT_RESTRICTION = ("Hanya untuk layanan darurat 112: memuat lokasi orang yang meminta bantuan. / "
                       "For 112 emergency services only: gives the location of a person asking for help.")

# Characters XML 1.0 cannot carry (§2.2 Char), lone surrogates included.
_NOT_XML = re.compile("[^\t\n\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# What CAP forbids in identifier and sender (§3.2.1).
_NOT_IN_ID = re.compile("[\\s,<&]")


def xml_text(value: object) -> str:
    """Text XML 1.0 can carry: line ends as "\\n" (a parser would turn a bare CR into one anyway),
    any other character outside XML's Char production replaced by U+FFFD."""
    text = str(value).replace("\r\n", "\n").replace("\r", "\n")
    return _NOT_XML.sub("\ufffd", text)


def cap_token(value: str) -> str:
    """A value for identifier, sender or incidents: the UTF-8 percent-encoding of `value`, keeping
    letters, digits and "-._~:". Injective ("%" is encoded too), and the identity on every id the
    gateway makes."""
    return quote(value.encode("utf-8", "surrogatepass"), safe=":")


def cap_time(rfc3339: str) -> str:
    """CAP's dateTime (§3.3.2) of an RFC 3339 time: whole seconds in UTC, written "-00:00".
    2026-11-24T03:12:09.412Z -> 2026-11-24T03:12:09-00:00."""
    t = datetime.fromisoformat(rfc3339)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    t = t.astimezone(UTC)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}-00:00"


@dataclass(frozen=True, slots=True)
class CapSettings:
    """One CAP destination. `url` takes the POSTs; `token`, when set, goes as a bearer token.
    `sender` and `sender_name` default to values made from the gateway id (see `sender_of`).
    Keep `sender` fixed once alerts have gone out: updates reference the alarm's alert by it."""

    url: str
    token: str | None = None
    sender: str = ""
    sender_name: str = ""
    geocode_name: str = "KODE_WILAYAH"
    restriction: str = DEFAULT_RESTRICTION
    contact: str = ""
    radius_km: float = 0.05
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url: {self.url!r} is not an http:// or https:// address")
        if self.token is not None and (not self.token or not self.token.isprintable() or not self.token.isascii()):
            raise ValueError("token: must be non-empty printable ASCII")
        if self.sender and (_NOT_IN_ID.search(self.sender) or xml_text(self.sender) != self.sender):
            raise ValueError(f"sender: {self.sender!r} may not hold spaces, commas, '<', '&' or control characters")
        if not self.geocode_name.strip():
            raise ValueError("geocode_name: must not be empty")
        if not self.restriction.strip():
            raise ValueError("restriction: must not be empty (CAP requires it for scope Restricted)")
        if not (math.isfinite(self.radius_km) and 0.001 <= self.radius_km <= 1000):
            raise ValueError(f"radius_km: {self.radius_km} is outside 0.001 to 1000")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"timeout_s: {self.timeout_s} must be a positive number of seconds")


def sender_of(settings: CapSettings, gateway_id: str) -> str:
    return settings.sender or f"siaga@{cap_token(gateway_id)}"


def _sender_name(settings: CapSettings, gateway_id: str) -> str:
    return settings.sender_name or f"Siaga gateway {gateway_id}"


class _Kind(NamedTuple):
    category: str
    word_id: str
    word_en: str
    severity: str


_KINDS: Mapping[str, _Kind] = MappingProxyType({
    "general": _Kind("Safety", "umum", "general", "Severe"),
    "medical": _Kind("Health", "medis", "medical", "Severe"),
    "fire": _Kind("Fire", "kebakaran", "fire", "Severe"),
    "crime": _Kind("Security", "kejahatan", "crime", "Severe"),
    "disaster": _Kind("Rescue", "bencana", "disaster", "Severe"),
})


def _kind(kind: str) -> _Kind:
    return _KINDS.get(kind) or _Kind("Other", kind, kind, "Unknown")


class _Step(NamedTuple):
    """What one message says about where the alarm stands. `severity` None: the kind's."""
    msg_type: str
    urgency: str
    severity: str | None
    certainty: str
    response: str
    phrase: Mapping[str, str]          # language -> what happened ("" for the alarm itself)
    instruction: Mapping[str, str]     # language -> what to do (empty: nothing to add)


_ACT = MappingProxyType({"id-ID": "Kirim petugas ke lokasi tombol dan pastikan keadaan daruratnya.",
                         "en-US": "Send responders to the button's location and confirm the emergency."})
_DONE = MappingProxyType({"id-ID": "Tidak perlu tindakan lagi.", "en-US": "No further action is needed."})
_NONE: Mapping[str, str] = MappingProxyType({})


def _phrase(id_id: str, en_us: str) -> Mapping[str, str]:
    return MappingProxyType({"id-ID": id_id, "en-US": en_us})


ALARM_STEP = _Step("Alert", "Immediate", None, "Likely", "Assess", _phrase("", ""), _ACT)
_STEPS: Mapping[str, _Step] = MappingProxyType({
    "received": _Step("Update", "Immediate", None, "Likely", "Assess",
                      _phrase("diterima pusat komando", "received by the command center"), _NONE),
    "undelivered": _Step("Update", "Immediate", None, "Likely", "Assess",
                         _phrase("tidak diterima pusat komando", "not taken by the command center"),
                         _phrase("Pusat komando tidak menerima alarm ini: pastikan ada yang menanggapinya.",
                                 "The command center did not take this alarm: make sure someone responds.")),
    "acknowledged": _Step("Update", "Immediate", None, "Likely", "Assess",
                          _phrase("ditangani operator", "acknowledged by an operator"), _NONE),
    "dispatched": _Step("Update", "Immediate", None, "Likely", "Monitor",
                        _phrase("petugas diberangkatkan", "responders dispatched"), _NONE),
    "resolved": _Step("Update", "Past", None, "Observed", "AllClear", _phrase("selesai", "resolved"), _DONE),
    "false_alarm": _Step("Cancel", "Past", "Minor", "Unlikely", "None",
                         _phrase("alarm palsu", "false alarm"), _DONE),
})
_TEST_INSTRUCTION = _phrase("Uji teknis oleh teknisi: jangan kirim petugas.",
                            "A technician's test: do not send responders.")


def step_of(state: str) -> _Step:
    """The message for a state; a state this module does not know yet is an Update that names it."""
    return _STEPS.get(state) or _Step("Update", "Immediate", None, "Likely", "Assess", _phrase(state, state), _NONE)


# ------------------------------------------------------------------ rendering


def _add(parent: ET.Element, tag: str, text: object | None = None) -> ET.Element:
    element = ET.SubElement(parent, f"{{{CAP_NS}}}{tag}")
    if text is not None:
        element.text = xml_text(text)
    return element


def _pair(parent: ET.Element, tag: str, name: str, value: object) -> None:
    element = _add(parent, tag)
    _add(element, "valueName", name)
    _add(element, "value", value)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def _coordinates(location: Mapping[str, Any]) -> tuple[float, float] | None:
    lat, lon = location.get("lat"), location.get("lon")
    if isinstance(lat, bool) or isinstance(lon, bool) or not isinstance(lat, int | float) \
            or not isinstance(lon, int | float):
        return None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    if lat == 0 and lon == 0:
        return None  # the registry's "no position" (the gateway's own connection test uses it)
    return float(lat), float(lon)


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


class _Place(NamedTuple):
    address: str
    area: str
    point: tuple[float, float] | None
    device_id: str

    def describe(self, lang: str) -> str:
        if self.address:
            return self.address
        if self.area:
            return f"Kode wilayah {self.area}" if lang == "id-ID" else f"Area code {self.area}"
        return f"Lokasi tombol {self.device_id}" if lang == "id-ID" else f"Location of button {self.device_id}"

    def facts(self, lang: str) -> list[str]:
        words = ("Alamat", "Kode wilayah", "Koordinat") if lang == "id-ID" else ("Address", "Area code", "Coordinates")
        out = []
        if self.address:
            out.append(f"{words[0]}: {self.address}.")
        if self.area:
            out.append(f"{words[1]}: {self.area}.")
        if self.point is not None:
            out.append(f"{words[2]}: {self.point[0]:.6f}, {self.point[1]:.6f}.")
        return out


def _place(body: Mapping[str, Any]) -> _Place:
    location = body.get("location") or {}
    return _Place(_text(location.get("address")), _text(location.get("area")), _coordinates(location),
                  _text(body.get("device_id")))


def _parameters(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    names = ("device_id", "seq", "gateway_id", "alarm_event_id", "state", "incident_id", "by", "incident_key",
             "press_count", "sources", "raised_at", "battery_mv", "test")
    out = []
    for name in names:
        value = body.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list):
            value = " ".join(str(v) for v in value)
        out.append((name, str(value)))
    return out


def _event_name(kind: _Kind, test: bool, lang: str) -> str:
    if lang == "id-ID":
        return f"{'Uji tombol darurat' if test else 'Tombol darurat'}: {kind.word_id}"
    return f"{'Panic button test' if test else 'Panic button'}: {kind.word_en}"


def _headline(kind: _Kind, test: bool, step: _Step, place: _Place, lang: str) -> str:
    """"Tombol darurat (medis) ditekan — <place>", "Panic button (medical): resolved — <place>"."""
    if lang == "id-ID":
        name = f"{'Uji tombol darurat' if test else 'Tombol darurat'} ({kind.word_id})"
        what = f": {step.phrase[lang]}" if step.phrase[lang] else " ditekan"
    else:
        name = f"{'Panic button test' if test else 'Panic button'} ({kind.word_en})"
        what = f": {step.phrase[lang]}" if step.phrase[lang] else " pressed"
    return _clip(f"{name}{what} — {place.describe(lang)}", HEADLINE_MAX)


def _radius(km: float) -> str:
    # Plain decimals: the circle's pattern in stricter CAP schemas has no exponent.
    return f"{km:.3f}".rstrip("0").rstrip(".")


def _alarm_description(body: Mapping[str, Any], place: _Place, lang: str) -> str:
    device, count = _text(body.get("device_id")), body.get("press_count")
    others = [str(s) for s in body.get("sources") or [] if str(s) != device]
    when = cap_time(body["received_at"])
    if lang == "id-ID":
        lines = [f"Tombol {device} ditekan." + (f" Tekanan ke-{count} dalam insiden ini." if count else "")]
        lines += place.facts(lang)
        if others:
            lines.append(f"Tombol lain dalam insiden ini: {', '.join(others)}.")
        lines.append(f"Diterima gateway {_text(body.get('gateway_id'))} pada {when}.")
    else:
        lines = [f"Button {device} was pressed." + (f" Press {count} of this incident." if count else "")]
        lines += place.facts(lang)
        if others:
            lines.append(f"Other buttons in this incident: {', '.join(others)}.")
        lines.append(f"Received by gateway {_text(body.get('gateway_id'))} at {when}.")
    return "\n".join(lines)


def _state_description(body: Mapping[str, Any], step: _Step, place: _Place, lang: str) -> str:
    by, incident = _text(body.get("by")), _text(body.get("incident_id"))
    at, received = cap_time(body["at"]), cap_time(body["received_at"])
    alarm = _text(body.get("alarm_event_id"))
    if lang == "id-ID":
        lines = [f"Alarm {alarm}: {step.phrase[lang]} pada {at}." + (f" Dicatat oleh: {by}." if by else "")]
        if incident:
            lines.append(f"Nomor insiden: {incident}.")
        lines += place.facts(lang)
        lines.append(f"Alarm diterima pada {received}.")
    else:
        lines = [f"Alarm {alarm}: {step.phrase[lang]} at {at}." + (f" Recorded by: {by}." if by else "")]
        if incident:
            lines.append(f"Incident number: {incident}.")
        lines += place.facts(lang)
        lines.append(f"The alarm was received at {received}.")
    return "\n".join(lines)


def _info(alert: ET.Element, lang: str, body: Mapping[str, Any], step: _Step, description: str,
          place: _Place, settings: CapSettings, gateway_id: str, onset: str | None) -> None:
    kind_text = _text(body.get("kind"))
    kind, test = _kind(kind_text), bool(body.get("test"))
    info = _add(alert, "info")
    _add(info, "language", lang)
    _add(info, "category", kind.category)
    _add(info, "event", _event_name(kind, test, lang))
    _add(info, "responseType", "None" if test else step.response)
    _add(info, "urgency", step.urgency)
    _add(info, "severity", step.severity or kind.severity)
    _add(info, "certainty", step.certainty)
    _pair(info, "eventCode", "siaga_kind", kind_text)
    if onset is not None:
        _add(info, "onset", onset)
    _add(info, "senderName", _sender_name(settings, gateway_id))
    _add(info, "headline", _headline(kind, test, step, place, lang))
    _add(info, "description", description)
    instruction = _TEST_INSTRUCTION[lang] if test else step.instruction.get(lang)
    if instruction:
        _add(info, "instruction", instruction)
    if settings.contact.strip():
        _add(info, "contact", settings.contact.strip())
    for name, value in _parameters(body):
        _pair(info, "parameter", name, value)
    area = _add(info, "area")
    _add(area, "areaDesc", place.describe(lang))
    if place.point is not None:
        _add(area, "circle", f"{place.point[0]:.6f},{place.point[1]:.6f} {_radius(settings.radius_km)}")
    if place.area:
        _pair(area, "geocode", settings.geocode_name.strip(), place.area)


def _envelope(identifier: str, sender: str, sent: str, test: bool, msg_type: str, settings: CapSettings,
              references: str | None, incident_key: str) -> ET.Element:
    alert = ET.Element(f"{{{CAP_NS}}}alert")
    _add(alert, "identifier", identifier)
    _add(alert, "sender", sender)
    _add(alert, "sent", sent)
    _add(alert, "status", "Test" if test else "Actual")
    _add(alert, "msgType", msg_type)
    _add(alert, "scope", "Restricted")
    _add(alert, "restriction", settings.restriction.strip())
    if test:
        _add(alert, "note", "Tekan uji tombol dalam mode uji, bukan keadaan darurat. / "
                            "Test press of a button in test mode, not an emergency.")
    if references is not None:
        _add(alert, "references", references)
    if incident_key:
        _add(alert, "incidents", cap_token(incident_key))
    return alert


def _serialise(alert: ET.Element) -> bytes:
    return ET.tostring(alert, encoding="utf-8", xml_declaration=True, default_namespace=CAP_NS)


def _onset(raised_at: object) -> str | None:
    # The button's own clock: informative, so a time that cannot be read is left out rather than
    # holding the alarm back.
    try:
        return cap_time(raised_at) if isinstance(raised_at, str) and raised_at else None
    except ValueError:
        return None


def alarm_reference(settings: CapSettings, gateway_id: str, alarm_event_id: str, received_at: str) -> str:
    """CAP's "sender,identifier,sent" of an alarm's own alert (§3.2.1 references)."""
    return f"{sender_of(settings, gateway_id)},{cap_token(alarm_event_id)},{cap_time(received_at)}"


def alert_for_alarm(body: Mapping[str, Any], settings: CapSettings, gateway_id: str) -> bytes:
    """The CAP Alert of an alarm event body. A pure function of its arguments: every retry of the
    event sends the same bytes. Raises KeyError, TypeError or ValueError for a body it cannot read."""
    place = _place(body)
    alert = _envelope(cap_token(body["event_id"]), sender_of(settings, gateway_id), cap_time(body["received_at"]),
                      bool(body.get("test")), ALARM_STEP.msg_type, settings, None, _text(body.get("incident_key")))
    onset = _onset(body.get("raised_at"))
    for lang in LANGUAGES:
        _info(alert, lang, body, ALARM_STEP, _alarm_description(body, place, lang), place, settings, gateway_id,
              onset)
    return _serialise(alert)


def alert_for_state(body: Mapping[str, Any], settings: CapSettings, gateway_id: str) -> bytes:
    """The CAP Update or Cancel of a state event body, referencing the alarm's Alert."""
    place = _place(body)
    step = step_of(_text(body["state"]))
    references = alarm_reference(settings, gateway_id, body["alarm_event_id"], body["received_at"])
    alert = _envelope(cap_token(body["event_id"]), sender_of(settings, gateway_id), cap_time(body["at"]),
                      bool(body.get("test")), step.msg_type, settings, references, _text(body.get("incident_key")))
    for lang in LANGUAGES:
        _info(alert, lang, body, step, _state_description(body, step, place, lang), place, settings, gateway_id,
              None)
    return _serialise(alert)


# The prefix alerts get inside an Atom feed (ElementTree's table of prefixes is process-wide; this
# only names the CAP namespace, which nothing else in the gateway writes).
ET.register_namespace("cap", CAP_NS)


def _atom_time(cap: str) -> str:
    # RFC 3339 reads "-00:00" as "offset unknown"; CAP's UTC is plain UTC, which Atom writes "Z".
    return cap.removesuffix("-00:00") + "Z" if cap.endswith("-00:00") else cap


def atom_feed(entries: Sequence[tuple[str, bytes]], *, feed_id: str, title: str, updated: str,
              author: str, self_url: str | None = None) -> bytes:
    """An Atom 1.0 feed (RFC 4287) of CAP documents, in the order given (newest first, by custom),
    for recipients that poll rather than take POSTs. Each entry is (its id, an IRI such as the URL
    the single alert is served at; the document from this module). The entry carries the whole
    alert inline as content of type application/cap+xml, its English headline as title and its
    sent time as updated, so one request reads every alert. `updated` is the feed's own time
    (RFC 3339). Raises ET.ParseError for a document that is not XML."""
    # Atom's elements are written unqualified under a literal default namespace declaration:
    # ElementTree's default_namespace option refuses the unqualified attributes Atom uses.
    feed = ET.Element("feed", {"xmlns": ATOM_NS})

    def add(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
        element = ET.SubElement(parent, tag, attributes)
        if text is not None:
            element.text = xml_text(text)
        return element

    add(feed, "id", feed_id)
    add(feed, "title", title)
    add(feed, "updated", updated)
    add(add(feed, "author"), "name", author)
    if self_url is not None:
        add(feed, "link", rel="self", href=xml_text(self_url), type="application/atom+xml")
    for entry_id, document in entries:
        alert = ET.fromstring(document)
        infos = alert.findall(f"{{{CAP_NS}}}info")
        english = [i for i in infos if i.findtext(f"{{{CAP_NS}}}language") == "en-US"] or infos
        headline = (english[0].findtext(f"{{{CAP_NS}}}headline") if english else None) \
            or alert.findtext(f"{{{CAP_NS}}}identifier") or entry_id
        entry = add(feed, "entry")
        add(entry, "id", entry_id)
        add(entry, "title", headline)
        add(entry, "updated", _atom_time(alert.findtext(f"{{{CAP_NS}}}sent") or updated))
        add(entry, "content", type="application/cap+xml").append(alert)
    return ET.tostring(feed, encoding="utf-8", xml_declaration=True)


class NotCarried(ValueError):
    """An event of a kind CAP does not carry (a device fault)."""


def render(event: OutboundEvent, settings: CapSettings, gateway_id: str) -> bytes:
    """The CAP document of an outbox event. Raises NotCarried for a fault, and KeyError, TypeError
    or ValueError for a body that cannot be read."""
    if event.kind not in CAP_EVENT_KINDS:
        raise NotCarried(f"CAP carries alarms and their state changes, not {event.kind} events")
    body = json.loads(event.body)
    if not isinstance(body, dict):
        raise TypeError("the body is not a JSON object")
    if event.kind == "alarm":
        return alert_for_alarm(body, settings, gateway_id)
    return alert_for_state(body, settings, gateway_id)


# ------------------------------------------------------------------ delivery


def _permanent(status: int) -> bool:
    # Any 4xx but 408 and 429 is the same answer next time too.
    return 400 <= status < 500 and status not in (408, 429)


class CapAdapter:
    """POSTs one CAP document per event (no batch form exists in CAP), in the order given. A 2xx
    is delivery; after the first failure worth retrying the rest of the round is not sent, so a
    recipient never gets an Update before its Alert."""

    def __init__(self, settings: CapSettings, gateway_id: str) -> None:
        self.settings = settings
        self.gateway_id = gateway_id
        headers = {"Content-Type": CONTENT_TYPE}
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        self._client = httpx.AsyncClient(timeout=settings.timeout_s, headers=headers,
                                         limits=httpx.Limits(max_connections=2, max_keepalive_connections=2))

    async def start(self) -> None:
        return None

    async def deliver(self, events: list[OutboundEvent]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for event in events:
            try:
                document = render(event, self.settings, self.gateway_id)
            except NotCarried as exc:
                outcomes.append(Failed(str(exc), retry=False))
                continue
            except (KeyError, TypeError, ValueError) as exc:
                outcomes.append(Failed(f"unreadable {event.kind} body: {type(exc).__name__}: {exc}", retry=False))
                continue
            outcome = await self._post(event, document)
            outcomes.append(outcome)
            if isinstance(outcome, Failed) and outcome.retry:
                held = Failed(f"not sent, as {event.event_id} before it failed: {outcome.error}"[:300])
                outcomes += [held] * (len(events) - len(outcomes))
                break
        return outcomes

    async def _post(self, event: OutboundEvent, document: bytes) -> Outcome:
        try:
            resp = await self._client.post(self.settings.url, content=document,
                                           headers={"Idempotency-Key": cap_token(event.event_id)})
        except httpx.HTTPError as exc:
            return Failed(f"{type(exc).__name__}: {exc}")
        if 200 <= resp.status_code < 300:
            return Accepted(None)
        return Failed(f"HTTP {resp.status_code}: {resp.text[:200]}", retry=not _permanent(resp.status_code))

    async def aclose(self) -> None:
        await self._client.aclose()

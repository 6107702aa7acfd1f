"""Request and response bodies of the HTTP API (pydantic); they are also the OpenAPI schema."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)

from siaga import contract

from .config import DEFAULT_AGENCIES, Agency, Role
from .domain import (
    DEFAULT_REFERRAL_CHANNEL,
    KNOWN_KINDS,
    DispatchStatus,
    FaultKind,
    HistoryKind,
    IncidentState,
    event_id_for,
    incident_ref,
    rfc3339,
)
from .store import (
    AlarmEvent,
    AuditEntry,
    DeviceFault,
    Dispatch,
    DispatchHistoryEntry,
    HistoryEntry,
    Incident,
)

# Times go out as RFC 3339 UTC with milliseconds and a 'Z', like every other time in the protocol.
UtcTime = Annotated[
    datetime,
    PlainSerializer(rfc3339, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}, mode="serialization"),
]


# ---- intake (protocol §7, gateway -> command center) --------------------------------------------

GATEWAY_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DEVICE_ID = r"^[a-z0-9][a-z0-9-]{2,31}$"  # protocol §1
DeviceId = Annotated[str, Field(pattern=DEVICE_ID)]

# The largest batch protocol §7 allows.
MAX_BATCH = 500


# Text as siaga/contract.py allows it in a frame: the gateway's codec checks the same at its door.
_JSON_INTEGER = BeforeValidator(contract.json_integer)
JsonInt = Annotated[int, _JSON_INTEGER]
# An event's id is also its Idempotency-Key header: 5-160 visible ASCII characters (what a header
# carries as it is); the gateway makes them from its id, the device id and a number.
EVENT_ID = r"^[!-~]{5,160}$"
Address = Annotated[str, AfterValidator(contract.text_checker(contract.ADDRESS_MAX_BYTES)),
                    contract.text_schema(contract.ADDRESS_MAX_BYTES)]
Area = Annotated[str, AfterValidator(contract.text_checker(contract.AREA_MAX_BYTES)),
                 contract.text_schema(contract.AREA_MAX_BYTES)]


# ---- accepted values: what a client may send (docs/commandcenter.md, "Accepted values") ---------------

# Times and days a client sends. The rule is siaga/contract.py's (time_problem, day_problem): the years
# 1970–2999 as written, where converting to UTC or adding a day or an offset cannot overflow; a time
# is RFC 3339 text with a time zone (pydantic alone would also take a Unix time, "0" included, a
# space for the T, or no zone). The patterns say the same in the OpenAPI document, so that a
# schema-valid value is one the command center takes.
_TIME_OF_DAY = r"[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-5][0-9](\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
TIME_PATTERN = f"^{contract.YEAR_RE}-{_TIME_OF_DAY}$"
DAY_PATTERN = f"^{contract.YEAR_RE}-[0-9]{{2}}-[0-9]{{2}}$"
_RFC3339 = re.compile(f"[0-9]{{4}}-{_TIME_OF_DAY}")


def _rfc3339_text(value: Any) -> Any:
    # Before pydantic parses it; its year is checked after (contract.time_checker), with its own message.
    if not isinstance(value, datetime) and not (isinstance(value, str) and _RFC3339.fullmatch(value)):
        raise ValueError("a time is RFC 3339 text with a time zone, e.g. 2026-11-24T03:12:09.412Z")
    return value


# A time a gateway sends. Validated only: the value keeps its offset, because the idempotency
# fingerprint covers the time as sent; it is stored in UTC.
EventTime = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339_text),
    AfterValidator(contract.time_checker),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": TIME_PATTERN}),
]


def day_checker(day: Any) -> Any:
    """For a `YYYY-MM-DD` query parameter (before pydantic parses it): the text, or ValueError."""
    if day is None:
        return day
    if not isinstance(day, str) or not re.fullmatch(DAY_PATTERN, day):
        raise ValueError(f"a day is YYYY-MM-DD, in the years {contract.YEAR_MIN}–{contract.YEAR_MAX}")
    return day


class AlarmLocation(BaseModel):
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False, description="latitude, decimal degrees")
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False, description="longitude, decimal degrees")
    address: Address = Field(
        description=f"street address as configured on the button, at most {contract.ADDRESS_MAX_BYTES} bytes of UTF-8")
    area: Area = Field(
        description=f"administrative-area code, at most {contract.AREA_MAX_BYTES} bytes of UTF-8")


class AlarmIn(BaseModel):
    """An alarm forwarded by a gateway. Unknown fields are ignored (protocol §4), so gateways can add
    fields without breaking older command centers."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "event_id": "gw-1:jkt-menteng-0042:4711",
                    "gateway_id": "gw-1",
                    "device_id": "jkt-menteng-0042",
                    "seq": 4711,
                    "kind": "medical",
                    "test": False,
                    "location": {
                        "lat": -6.195733,
                        "lon": 106.832085,
                        "address": "Jl. Menteng Raya 12",
                        "area": "31.71.06.1001",
                    },
                    "raised_at": "2026-11-24T03:12:09Z",
                    "received_at": "2026-11-24T03:12:09.412Z",
                    "incident_key": "gw-1:g:118",
                    "press_count": 3,
                    "sources": ["jkt-menteng-0042", "jkt-menteng-0043"],
                }
            ]
        },
    )

    event_id: str = Field(
        pattern=EVENT_ID, description="`<gateway_id>:<device_id>:<seq>`; the idempotency key"
    )
    gateway_id: str = Field(pattern=GATEWAY_ID)
    device_id: str = Field(pattern=DEVICE_ID, description="protocol §1")
    # strict: "4711" or true from a gateway is a bug worth seeing, not something to coerce (4711.0 is
    # the integer 4711 in JSON Schema, and taken as such: contract.json_integer).
    seq: JsonInt = Field(ge=0, le=contract.SEQ_MAX, strict=True)
    # Any well-formed kind is accepted: a button with newer firmware must still be heard. Unknown
    # kinds are shown as they are.
    kind: str = Field(
        pattern=f"^{contract.KIND_RE.pattern}$",
        description=f"known kinds: {', '.join(KNOWN_KINDS)}; others are accepted and shown as sent",
    )
    test: bool = Field(strict=True, description="a technician's test press")
    location: AlarmLocation
    raised_at: EventTime | None = Field(description="device clock; null if the device has none")
    received_at: EventTime = Field(description="when the gateway committed the alarm")
    # The gateway's incident layer (protocol §7). Optional: without a key every alarm opens an
    # incident. The bounds are generous on purpose: an alarm must not be refused over grouping data.
    incident_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="the gateway's group; an alarm whose key names an open incident is attached to it",
    )
    # Bounds of an optional integer go inside the Annotated, before the validator: given to Field
    # beside `| None` they reach the OpenAPI document as "ge"/"lt", which JSON Schema does not know.
    press_count: Annotated[int, Field(ge=1, lt=2**31, strict=True), _JSON_INTEGER] | None = Field(
        default=None, description="alarms in the gateway's group so far, 1 for the first"
    )
    sources: list[DeviceId] | None = Field(
        default=None, max_length=1000, description="the group's devices in order of their first alarm"
    )
    battery_mv: Annotated[int, Field(ge=0, le=contract.BATTERY_MV_MAX, strict=True), _JSON_INTEGER] | None = Field(
        default=None,
        description="the button's battery voltage in mV from its latest heartbeat, if the gateway knows it",
    )

    @model_validator(mode="after")
    def _event_id_matches(self) -> Self:
        expected = event_id_for(self.gateway_id, self.device_id, self.seq)
        if self.event_id != expected:
            raise ValueError(f"event_id must be '<gateway_id>:<device_id>:<seq>' = {expected!r}")
        return self


# The incident-layer fields are left out of the idempotency fingerprint: they describe the gateway's
# grouping when it sent the event, which a retry may legitimately state differently (e.g. a press_count
# recounted after a gateway restart); the alarm itself is the same. Leaving them out also keeps the
# fingerprints stored by schema version 1 valid.
GROUPING_FIELDS = frozenset({"incident_key", "press_count", "sources"})
# Left out of the fingerprint as well: a fact about the device, not the alarm, and a field that
# versions 1 and 2 did not have (including it would change every fingerprint they stored).
UNFINGERPRINTED_FIELDS = GROUPING_FIELDS | {"battery_mv"}


class AlarmAccepted(BaseModel):
    event_id: str
    incident_id: str = Field(examples=["inc-000017"])
    state: Literal["received"] = Field(description="the command center has the alarm durably")


class AlarmBatchIn(BaseModel):
    """Entries are validated one by one in the handler, so that one malformed alarm is `rejected`
    alone instead of failing the whole batch; the schema documents them as AlarmIn, or anything else
    (which is then rejected alone)."""

    alarms: Annotated[
        list[Any],
        Field(min_length=1, max_length=MAX_BATCH),
        WithJsonSchema(
            {
                "type": "array",
                # Each entry should be an AlarmIn; one that is not is answered `rejected` in its
                # place while the others are stored, so the document does not refuse it either.
                "items": {"anyOf": [{"$ref": "#/components/schemas/AlarmIn"}, {}], "description": (
                    "an AlarmIn as for the single intake; an entry that is not valid is rejected alone")},
                "minItems": 1,
                "maxItems": MAX_BATCH,
            }
        ),
    ]


class FaultBatchIn(BaseModel):
    """Up to 500 fault reports; entries are validated one by one, like an alarm batch's."""

    faults: Annotated[
        list[Any],
        Field(min_length=1, max_length=MAX_BATCH),
        WithJsonSchema(
            {
                "type": "array",
                # Each entry should be an FaultIn; one that is not is answered `rejected` in its
                # place while the others are stored, so the document does not refuse it either.
                "items": {"anyOf": [{"$ref": "#/components/schemas/FaultIn"}, {}], "description": (
                    "an FaultIn as for the single intake; an entry that is not valid is rejected alone")},
                "minItems": 1,
                "maxItems": MAX_BATCH,
            }
        ),
    ]


class FaultBatchResult(BaseModel):
    event_id: str | None = Field(
        description="null only for an entry without a string event_id, or with one holding a lone surrogate")
    status: Literal["created", "duplicate", "rejected"]
    error: str | None = Field(description="why it was rejected; null otherwise")


class FaultBatchOut(BaseModel):
    results: list[FaultBatchResult] = Field(description="one per fault report, in the order sent")


class BatchResult(BaseModel):
    event_id: str | None = Field(
        description="null only for an entry without a string event_id, or with one holding a lone surrogate")
    status: Literal["created", "duplicate", "rejected"]
    incident_id: str | None = Field(examples=["inc-000017"], description="null when rejected")
    state: Literal["received"] | None = Field(description="null when rejected")
    error: str | None = Field(description="why it was rejected; null otherwise")


class BatchOut(BaseModel):
    results: list[BatchResult] = Field(description="one per alarm, in the order sent")


class FaultIn(BaseModel):
    """A device fault reported by a gateway (protocol §7): supervision, never an incident."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "event_id": "gw-1:jkt-menteng-0042:fault:17",
                    "gateway_id": "gw-1",
                    "device_id": "jkt-menteng-0042",
                    "fault": "offline",
                    "active": True,
                    "at": "2026-11-24T03:20:00Z",
                    "detail": {"last_seen_at": "2026-11-24T03:16:58Z", "reason": "3 heartbeats missed"},
                    "location": {
                        "lat": -6.195733,
                        "lon": 106.832085,
                        "address": "Jl. Menteng Raya 12",
                        "area": "31.71.06.1001",
                    },
                }
            ]
        },
    )

    event_id: str = Field(pattern=EVENT_ID, description="the idempotency key")
    gateway_id: str = Field(pattern=GATEWAY_ID)
    device_id: str = Field(pattern=DEVICE_ID)
    fault: FaultKind
    active: bool = Field(strict=True, description="false: the fault has cleared")
    at: EventTime = Field(description="when the gateway saw the fault start or clear")
    detail: dict[str, Any] = Field(default_factory=dict, description="free-form facts, shown as sent")
    location: AlarmLocation | None = None

    @model_validator(mode="after")
    def _detail_is_small(self) -> Self:
        # Nested deeper, it could be stored but not serialised again (pydantic stops at 255 levels).
        if _depth(self.detail) > DETAIL_MAX_DEPTH:
            raise ValueError(f"detail must be nested at most {DETAIL_MAX_DEPTH} levels deep")
        # Stored and shown for every report; a runaway gateway must not fill the database with it.
        text = json.dumps(self.detail, ensure_ascii=False)
        if len(text) > 4096:
            raise ValueError("detail must be at most 4096 characters as JSON")
        # Its strings are not checked as str fields are: JSON's \uD800 escape can name a lone
        # surrogate, which UTF-8 (and so SQLite's text) cannot hold.
        if contract.utf8_length(text) is None:
            raise ValueError("detail holds a lone UTF-16 surrogate")
        return self


# A fault's free-form detail: the gateway sends a flat object; this leaves room for structure.
DETAIL_MAX_DEPTH = 32


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (a scalar is 0), without recursion."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, dict | list):
            d += 1
            deepest = max(deepest, d)
            todo.extend((x, d) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


class FaultAccepted(BaseModel):
    event_id: str
    incident_id: None = Field(default=None, description="always null: a fault never opens an incident")
    state: Literal["received"]


# ---- operator actions -------------------------------------------------------------------------


class ActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an operator's mistake: say so
    note: str | None = Field(default=None, max_length=2000)


# One request dispatches to at most this many agencies (more than the default list holds).
MAX_AGENCIES_PER_DISPATCH = 20
AgencyId = Annotated[str, Field(min_length=1, max_length=100, examples=["fire"])]


class DispatchRequest(ActionRequest):
    # At least one of the two forms, said in the schema too (a validator alone would refuse bodies
    # the document allows).
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
        {"required": ["agencies"], "properties": {"agencies": {"type": "array"}}},
        {"required": ["agency"], "properties": {"agency": {"type": "string"}}},
    ]})

    agencies: list[AgencyId] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_AGENCIES_PER_DISPATCH,
        examples=[["fire", "ambulance"]],
        description="agency ids, each once; the console offers the configured agencies (GET /api/v1/console/settings)",
        json_schema_extra={"uniqueItems": True},
    )
    agency: AgencyId | None = Field(
        default=None,
        description="one agency id: the form of versions before several agencies; with `agencies`, it is added to them",
    )
    accepted: bool | None = Field(
        default=None,
        description="true: the room asked the agencies by phone or radio and they accepted; otherwise an agency "
        "that answers on screen starts `requested`",
    )

    @model_validator(mode="after")
    def _agencies_given(self) -> Self:
        if self.agencies is None and self.agency is None:
            raise ValueError("give `agencies`: a list of agency ids")
        if self.agencies is not None and len(set(self.agencies)) != len(self.agencies):
            raise ValueError("an agency is named twice in `agencies`")
        return self

    @property
    def agency_ids(self) -> list[str]:
        """The agencies asked, in the order given, each once."""
        ids = [self.agency] if self.agency is not None else []
        return list(dict.fromkeys(ids + (self.agencies or [])))


class DispatchStatusRequest(BaseModel):
    # A decline needs its reason: in the schema too, so that the document and the service agree.
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "if": {"required": ["status"], "properties": {"status": {"const": "declined"}}},
        "then": {"required": ["reason"], "properties": {"reason": {"type": "string"}}},
    })

    status: Literal["accepted", "en_route", "on_scene", "done", "declined"] = Field(
        description="forward only along accepted -> en_route -> on_scene -> done (steps may be skipped); "
        "`declined` only from requested or accepted, with a `reason`"
    )
    reason: str | None = Field(
        default=None, min_length=1, max_length=500, pattern=r"\S",
        description="why: required to decline; kept in the dispatch's history with any other status",
    )
    note: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def _reason_for_decline(self) -> Self:
        if self.status == "declined" and self.reason is None:
            raise ValueError("a declined dispatch needs a `reason`")
        return self


class ReferRequest(ActionRequest):
    channel: str = Field(
        default=DEFAULT_REFERRAL_CHANNEL,
        min_length=1,
        max_length=100,
        examples=["LAPOR!"],
        description="the complaint channel the caller was referred to: LAPOR! or the city's own",
    )
    reference: str | None = Field(
        default=None, min_length=1, max_length=100, examples=["LAPOR-2026-0412"],
        description="the channel's reference or ticket number, if one was made",
    )


class NoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field(min_length=1, max_length=2000)


# ---- incidents --------------------------------------------------------------------------------


class LocationOut(BaseModel):
    lat: float
    lon: float
    address: str
    area: str


# The configured agencies' names, for DispatchOut.agency_name: configuration, set by create_app
# (one configuration per process), so that every place that turns an incident into JSON (the API,
# the live stream, the webhooks) names agencies alike. An id not configured is shown as it is.
_agency_names: dict[str, str] = {a.id: a.name for a in DEFAULT_AGENCIES}


def use_agency_names(agencies: Iterable[Agency]) -> None:
    _agency_names.clear()
    _agency_names.update((a.id, a.name) for a in agencies)


class DispatchOut(BaseModel):
    agency: str = Field(examples=["fire"])
    agency_name: str = Field(description="the configured name (Bahasa Indonesia); the id if it is not configured")
    status: DispatchStatus
    reason: str | None = Field(description="why it was declined")
    requested_at: UtcTime
    requested_by: str
    accepted_at: UtcTime | None
    en_route_at: UtcTime | None
    on_scene_at: UtcTime | None
    done_at: UtcTime | None
    declined_at: UtcTime | None
    updated_at: UtcTime
    updated_by: str
    escalated_at: UtcTime | None = Field(description="when it escalated for being unanswered; null if it did not")

    @classmethod
    def of(cls, d: Dispatch) -> DispatchOut:
        return cls(
            agency=d.agency, agency_name=_agency_names.get(d.agency, d.agency), status=d.status, reason=d.reason,
            requested_at=d.requested_at, requested_by=d.requested_by, accepted_at=d.accepted_at,
            en_route_at=d.en_route_at, on_scene_at=d.on_scene_at, done_at=d.done_at, declined_at=d.declined_at,
            updated_at=d.updated_at, updated_by=d.updated_by, escalated_at=d.escalated_at,
        )


class IncidentOut(BaseModel):
    id: str = Field(examples=["inc-000017"])
    state: IncidentState
    device_id: str
    kind: str
    test: bool
    location: LocationOut
    event_count: int = Field(description="alarm events (button presses) in this incident")
    press_count: int = Field(description="the same count, under the name protocol §7 uses")
    sources: list[str] = Field(description="devices of the incident, in order of first appearance")
    incident_key: str | None = Field(description="the gateway's group key; null for an ungrouped alarm")
    created_at: UtcTime
    updated_at: UtcTime
    acknowledged_at: UtcTime | None
    acknowledged_by: str | None
    dispatched_at: UtcTime | None
    dispatched_by: str | None
    agency: str | None = Field(description="the first agency dispatched (see `dispatches` for all)")
    closed_at: UtcTime | None = Field(description="when it was resolved or declared a false alarm")
    closed_by: str | None
    escalated_at: UtcTime | None = Field(
        default=None, description="when it escalated for being unacknowledged too long; null if it did not"
    )
    battery_mv: int | None = Field(default=None, description="latest known battery voltage of `device_id`, mV")
    referred_to: str | None = Field(
        default=None,
        description="closed as not an emergency (state `resolved`): the complaint channel it was referred to",
    )
    referral_ref: str | None = Field(default=None, description="that channel's reference or ticket number")
    dispatches: list[DispatchOut] = Field(default_factory=list, description="every agency asked, in request order")
    needs_dispatch: bool = Field(
        default=False, description="every agency asked declined: back with the room until another is dispatched"
    )
    escalated2_at: UtcTime | None = Field(
        default=None, description="when it escalated a second time, to the supervisor on duty; null if it did not"
    )
    purged_at: UtcTime | None = Field(
        default=None, description="when the retention policy removed its notes, address and exact location"
    )

    @classmethod
    def of(cls, i: Incident) -> IncidentOut:
        return cls(**_incident_fields(i))


class EventOut(BaseModel):
    event_id: str
    gateway_id: str
    device_id: str
    seq: int
    kind: str
    test: bool
    raised_at: UtcTime | None
    received_at: UtcTime
    intake_at: UtcTime = Field(description="when the command center stored it")
    incident_key: str | None = Field(description="as the gateway sent it")
    press_count: int | None = Field(description="as the gateway sent it")
    sources: list[str] | None = Field(description="as the gateway sent it")

    @classmethod
    def of(cls, e: AlarmEvent) -> EventOut:
        return cls(
            event_id=e.event_id,
            gateway_id=e.gateway_id,
            device_id=e.device_id,
            seq=e.seq,
            kind=e.kind,
            test=e.test,
            raised_at=e.raised_at,
            received_at=e.received_at,
            intake_at=e.intake_at,
            incident_key=e.incident_key,
            press_count=e.press_count,
            sources=None if e.sources is None else list(e.sources),
        )


class HistoryOut(BaseModel):
    at: UtcTime
    actor: str = Field(
        description="operator name, `gateway:<id>` for the creation, `system:escalation` for the escalation"
    )
    from_state: IncidentState | None
    to_state: IncidentState
    detail: dict[str, Any] | None
    kind: HistoryKind = Field(
        default=HistoryKind.STATE,
        description="`state`: a state change; `note`: an operator's note; `escalation`: escalated (state unchanged)",
    )

    @classmethod
    def of(cls, h: HistoryEntry) -> HistoryOut:
        return cls(
            at=h.at, actor=h.actor, from_state=h.from_state, to_state=h.to_state, detail=h.detail, kind=h.kind
        )


class DispatchHistoryOut(BaseModel):
    agency: str
    at: UtcTime
    actor: str = Field(description="who set it: the agency's account, or an operator on its behalf")
    from_status: DispatchStatus | None = Field(description="null for the request itself")
    to_status: DispatchStatus
    reason: str | None = Field(description="why it was declined")

    @classmethod
    def of(cls, h: DispatchHistoryEntry) -> DispatchHistoryOut:
        return cls(agency=h.agency, at=h.at, actor=h.actor, from_status=h.from_status, to_status=h.to_status,
                   reason=h.reason)


class IncidentDetail(IncidentOut):
    events: list[EventOut]
    history: list[HistoryOut]
    dispatch_history: list[DispatchHistoryOut] = Field(
        default_factory=list, description="every status change of the incident's dispatches, oldest first"
    )

    @classmethod
    def build(
        cls,
        i: Incident,
        events: list[AlarmEvent],
        history: list[HistoryEntry],
        dispatch_history: list[DispatchHistoryEntry] | None = None,
    ) -> IncidentDetail:
        return cls(
            **_incident_fields(i),
            events=[EventOut.of(e) for e in events],
            history=[HistoryOut.of(h) for h in history],
            dispatch_history=[DispatchHistoryOut.of(h) for h in dispatch_history or ()],
        )


class DeviceFaultOut(BaseModel):
    device_id: str
    fault: str
    active: bool
    since: UtcTime = Field(description="when it became active")
    at: UtcTime = Field(description="time of the latest report")
    event_id: str = Field(description="the latest report")
    gateway_id: str
    detail: dict[str, Any]
    location: LocationOut | None

    @classmethod
    def of(cls, f: DeviceFault) -> DeviceFaultOut:
        location = None
        if f.location is not None:
            lat, lon, address, area = f.location
            location = LocationOut(lat=lat, lon=lon, address=address, area=area)
        return cls(
            device_id=f.device_id,
            fault=f.fault,
            active=f.active,
            since=f.since,
            at=f.at,
            event_id=f.event_id,
            gateway_id=f.gateway_id,
            detail=f.detail,
            location=location,
        )


class Health(BaseModel):
    status: Literal["ok"]


# ---- sessions, console, supervision -----------------------------------------------------------


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, description="operator name as configured")
    token: str = Field(min_length=1, max_length=512, description="that operator's personal token")


class SessionOut(BaseModel):
    name: str
    role: Role
    agency: str | None = Field(description="the agency of an agency viewer; null for other roles")
    via: Literal["session", "token"] = Field(description="how this request was authenticated")
    csrf_token: str | None = Field(
        description="send it as `X-CSRF-Token` with every POST and DELETE made with the session cookie; "
        "null for bearer tokens, which need none"
    )
    language: Literal["id", "en"] = Field(
        default="id", description="the language this person reads the console in (PUT /api/v1/session/language)"
    )


class LanguageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    language: Literal["id", "en"] = Field(description="`id` (Bahasa Indonesia) or `en` (English)")


class AgencyOut(BaseModel):
    id: str
    name: str = Field(description="in Bahasa Indonesia")
    name_en: str | None = Field(default=None, description="in English; null: `name` serves both")
    answers_on_screen: bool = Field(
        default=False, description="it has an account of its own: a dispatch to it starts `requested`"
    )


class ConsoleSettingsOut(BaseModel):
    """What the console page needs to draw itself; visible to every signed-in role."""

    agencies: list[AgencyOut]
    kinds: list[str]
    tile_url: str
    tile_attribution: str
    map_center: tuple[float, float]
    map_zoom: int
    server_time: UtcTime
    timezone: str | None = Field(
        default=None, description="the room's IANA time zone for the times shown; null: the browser's own"
    )


class SettingsOut(BaseModel):
    """Supervision settings (supervisors only). Tokens are never shown."""

    escalation_after_s: float
    escalation_webhook_url: str | None
    escalation_webhook_pending: int = Field(description="webhook events not yet accepted by the receiver")
    state_reports_pending: int = Field(description="state reports not yet accepted by the gateway")
    timezone: str = Field(description="the zone in which per-day figures are counted")
    session_hours: float


class AuditOut(BaseModel):
    id: int
    at: UtcTime
    actor: str
    action: str = Field(description="login, login_failed, logout, acknowledged, dispatched, resolved, "
                        "false_alarm, referred, note, export, gateway_silent, gateway_back, gateway_forgotten, "
                        "dispatch_requested, dispatch_<status> (accepted, en_route, on_scene, done, declined), "
                        "dispatch_escalated")
    target: str | None
    detail: dict[str, Any] | None

    @classmethod
    def of(cls, a: AuditEntry) -> AuditOut:
        return cls(id=a.id, at=a.at, actor=a.actor, action=a.action, target=a.target, detail=a.detail)


class ErrorOut(BaseModel):
    detail: Any = Field(description="what is wrong, in English: a sentence, or a list of validation errors "
                        "(loc, msg, type)")
    message: str | None = Field(None, description="the same in the caller's language (the person's choice, "
                                "else Accept-Language, else Bahasa Indonesia), for people to read")


def _incident_fields(i: Incident) -> dict[str, Any]:
    return {
        "id": incident_ref(i.number),
        "state": i.state,
        "device_id": i.device_id,
        "kind": i.kind,
        "test": i.test,
        "location": LocationOut(lat=i.lat, lon=i.lon, address=i.address, area=i.area),
        "event_count": i.event_count,
        "press_count": i.event_count,
        "sources": list(i.sources),
        "incident_key": i.incident_key,
        "created_at": i.created_at,
        "updated_at": i.updated_at,
        "acknowledged_at": i.acknowledged_at,
        "acknowledged_by": i.acknowledged_by,
        "dispatched_at": i.dispatched_at,
        "dispatched_by": i.dispatched_by,
        "agency": i.agency,
        "closed_at": i.closed_at,
        "closed_by": i.closed_by,
        "escalated_at": i.escalated_at,
        "battery_mv": i.battery_mv,
        "referred_to": i.referred_to,
        "referral_ref": i.referral_ref,
        "dispatches": [DispatchOut.of(d) for d in i.dispatches],
        "needs_dispatch": i.needs_dispatch,
        "escalated2_at": i.escalated2_at,
        "purged_at": i.purged_at,
    }


class FigureOut(BaseModel):
    count: int = Field(description="incidents the interval could be measured for")
    median_s: float | None = Field(description="median in seconds; null when count is 0")
    p90_s: float | None = Field(description="90th percentile (nearest rank) in seconds; null when count is 0")


class GroupFiguresOut(BaseModel):
    key: str = Field(description="the day (YYYY-MM-DD, in the configured time zone), agency id or area code")
    incidents: int
    unacknowledged: int = Field(description="still new now")
    false_alarms: int
    referrals: int = Field(description="closed as not an emergency, referred to a complaint channel")
    acknowledge: FigureOut = Field(description="first press -> acknowledged")
    dispatch: FigureOut = Field(description="first press -> dispatched")
    resolve: FigureOut = Field(description="first press -> resolved (not counting false alarms and referrals)")


class DeviceFalseAlarmsOut(BaseModel):
    device_id: str
    address: str
    area: str
    incidents: int = Field(description="incidents this device opened in the period")
    false_alarms: int
    rate: float = Field(description="false_alarms / incidents")
    referrals: int = Field(description="incidents of this device closed as not an emergency, referred")


class StatsOut(BaseModel):
    timezone: str
    start: UtcTime = Field(description="first instant counted (00:00 of `from` in the time zone)")
    end: UtcTime = Field(description="first instant no longer counted (00:00 after `to`)")
    test_incidents_excluded: int = Field(description="technicians' test presses, left out of every figure")
    truncated: bool = Field(description="true if the period held more incidents than one answer covers")
    overall: GroupFiguresOut
    by_day: list[GroupFiguresOut]
    by_agency: list[GroupFiguresOut] = Field(
        description="dispatched incidents, per agency; one sent to two agencies (neither declined) counts in both"
    )
    by_area: list[GroupFiguresOut]
    false_alarms_by_device: list[DeviceFalseAlarmsOut]
    devices_offline: list[DeviceFaultOut] = Field(description="devices whose offline fault is active now")


# ---- shifts and per-operator figures (commandcenter/shifts.py) -------------------------------------

OPERATOR_NAME = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"  # config._OPERATOR_NAME


class ShiftOut(BaseModel):
    id: int
    operator: str
    role: Role
    started_at: UtcTime = Field(description="when the person signed on")
    ended_at: UtcTime | None = Field(description="when they handed over; null while on duty")
    handover_note: str | None = Field(description="what they handed over; empty once purged by retention")
    handed_to: str | None = Field(description="the person they handed over to, if they named one")
    open_at_handover: list[str] = Field(
        description="incidents still open at the handover: they carry over to the next shift", examples=[["inc-000017"]]
    )


class HandoverRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field(min_length=1, max_length=4000, description="what the next shift must know")
    to: str | None = Field(default=None, pattern=OPERATOR_NAME,
                           description="the name of the person taking over, as they sign in; null: whoever comes")


class OperatorFiguresOut(BaseModel):
    operator: str
    answered: int = Field(description="incidents this person acknowledged in the period")
    ack_s_mean: float | None = Field(description="first press -> acknowledged, mean in seconds; null if none")
    ack_s_median: float | None
    ack_s_max: float | None
    dispatched: int = Field(description="incidents whose first dispatch this person requested in the period")
    dispatch_s_mean: float | None = Field(description="first press -> first dispatch requested, mean in seconds")
    dispatch_s_median: float | None


class ShiftFiguresOut(OperatorFiguresOut):
    """The figures of the shift's operator over the shift's time window (until now while it is open)."""

    shift: ShiftOut

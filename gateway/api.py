"""The gateway's HTTP API: device registry and audit for the people of [[api.people]], state
callbacks for the command center, health for monitoring.

Who is asking is decided from the `Authorization` header alone (`require_person`, `require_admin`,
`require_cc`), never from the body, and every token is compared in constant time. Each registry
change is stored with an entry in the fleet change log that names the person. No response carries a
secret."""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from siaga import contract, errortext
from siaga.web import (
    KIB,
    Guard,
    bearer_token,
    client_address,
    find_holder,
    guard_entrance,
    token_matches,
)
from siagafw import proto

from . import codec
from .config import Person, Role
from .inbound import inbound_router
from .ota import BUNDLE_MAX_BYTES, BundleRefused, rollout_out
from .store import Device, NotFound, RolloutConflict, StoreError

if TYPE_CHECKING:
    from .service import Gateway

log = logging.getLogger(__name__)

DEVICE_ID = r"^[a-z0-9][a-z0-9-]{2,31}$"
# The registry's address and area travel in fault reports to the command center: the same text
# rule as in a button's frame (siaga/contract.py).
Address = Annotated[str, AfterValidator(contract.text_checker(contract.ADDRESS_MAX_BYTES)),
                    contract.text_schema(contract.ADDRESS_MAX_BYTES)]
Area = Annotated[str, AfterValidator(contract.text_checker(contract.AREA_MAX_BYTES)),
                 contract.text_schema(contract.AREA_MAX_BYTES)]
Site = Annotated[str, AfterValidator(contract.text_checker(4 * contract.SITE_MAX_CHARS)),
               Field(max_length=contract.SITE_MAX_CHARS),
               contract.text_schema(4 * contract.SITE_MAX_CHARS, contract.SITE_MAX_CHARS)]
# Numbers in degrees: an integer or a decimal number, never a boolean, a string, NaN or infinity.
Latitude = Annotated[float, Field(strict=True, ge=-90, le=90, allow_inf_nan=False)]
Longitude = Annotated[float, Field(strict=True, ge=-180, le=180, allow_inf_nan=False)]
Limit = Annotated[int, Query(ge=1, le=1000, description="at most this many, 1-1000")]
# A button SIM's number in E.164 (ITU-T E.164 §6: at most 15 digits with the country code), as the
# SMS intake sees it in the sender address of an SMS-DELIVER (3GPP TS 23.040 §9.1.2.5, international
# type): "+" and 8-15 digits, e.g. "+6281234567890". The pattern is in the OpenAPI schema.
PHONE = r"^\+[1-9][0-9]{7,14}$"
Phone = Annotated[str, Field(pattern=PHONE, description="the button's SIM number in E.164, e.g. +6281234567890: "
                                                        "its SMS are taken from this number alone")]
# States the command center reports carry the time of the change, in the years every service takes
# (siaga/contract.py: YEAR_MIN-YEAR_MAX); outside them it is a bug or an attack, and it must not reach
# a conversion that overflows.
STATE_YEARS = (contract.YEAR_MIN, contract.YEAR_MAX)


def _utc(at: datetime) -> datetime:
    if not STATE_YEARS[0] <= at.year <= STATE_YEARS[1]:
        raise ValueError(f"must be a time in the years {STATE_YEARS[0]}-{STATE_YEARS[1]}")
    # A time without a zone is taken as UTC (protocol.md §7 sends "…Z").
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


class DeviceIn(BaseModel):
    id: str = Field(pattern=DEVICE_ID)
    secret_hex: str = Field(pattern=r"^[0-9a-f]{64}$", description="32-byte HMAC key, lowercase hex")
    site: Site | None = Field(default=None, description="buttons of one site form one incident")
    lat: Latitude | None = None
    lon: Longitude | None = None
    address: Address = ""
    area: Area = ""
    phone: Phone | None = None


# ---- remote configuration (docs/protocol.md §10) ---------------------------------------------------
# Each key's bounds are those of the button's own config check (firmware/lib/siagafw/config.py), so
# that what the gateway accepts the button can apply. Integers are strict: "60" or true is refused,
# 60.0 is the integer 60 (JSON Schema).


def _int(low: int, high: int, description: str) -> Any:
    # Field before the validator: after it, pydantic writes the bounds as "ge"/"le", not as JSON Schema.
    return Annotated[int, Field(strict=True, ge=low, le=high, description=description),
                     BeforeValidator(contract.json_integer)]


def _every_or_never(value: int) -> int:
    if value != 0 and not 3600 <= value <= 2592000:
        raise ValueError("must be 0 (no test SMS) or 3600-2592000 s")
    return value


class _Strict(BaseModel):
    """Unknown keys are refused. An optional key is left out, never null: its default None only
    marks it as not given (hence the type: ignore[assignment] below)."""

    model_config = ConfigDict(extra="forbid")


class LocationConfig(_Strict):
    lat_e6: _int(-contract.LAT_E6_MAX, contract.LAT_E6_MAX, "latitude in millionths of a degree")  # type: ignore[valid-type]
    lon_e6: _int(-contract.LON_E6_MAX, contract.LON_E6_MAX, "longitude in millionths of a degree")  # type: ignore[valid-type]
    addr: Address
    area: Area


class RetryConfig(_Strict):
    """An alarm's resend backoff (a max_ms below first_ms is refused by the button)."""

    first_ms: _int(500, 3_600_000, "the first resend after this long")  # type: ignore[valid-type]
    max_ms: _int(500, 3_600_000, "the longest wait between resends")  # type: ignore[valid-type]


class ReconnectConfig(_Strict):
    """The network reconnect backoff (a max_ms below first_ms is refused by the button)."""

    first_ms: _int(100, 600_000, "the first attempt after this long")  # type: ignore[valid-type]
    max_ms: _int(100, 600_000, "the longest wait between attempts")  # type: ignore[valid-type]


class SmsConfig(_Strict):
    """Merged key by key into the button's own `sms` settings."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    gateway: str = Field(None, pattern=PHONE, description="the gateway modem's number (E.164)")  # type: ignore[assignment]
    fallback_s: _int(5, 3600, "an alarm unacknowledged this long also goes by SMS") = None  # type: ignore[valid-type]
    test_every_s: Annotated[int, BeforeValidator(contract.json_integer), Field(strict=True),
                            AfterValidator(_every_or_never), WithJsonSchema({
                                "anyOf": [{"type": "integer", "const": 0},
                                          {"type": "integer", "minimum": 3600, "maximum": 2592000}],
                                "description": "seconds between backup-path test SMS, 0 for none"})] = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _something(self) -> SmsConfig:
        if not self.model_fields_set:
            raise ValueError("give at least one of gateway, fallback_s, test_every_s")
        return self


# WPA2-Personal (IEEE 802.11 Annex J): none (an open network), a passphrase of 8-63 printable ASCII
# characters, or the key itself as 64 hex digits; the button's config check takes the same.
WIFI_PASSWORD = r"^(|[\x20-\x7e]{8,63}|[0-9A-Fa-f]{64})$"
# An SSID is at most 32 bytes (IEEE 802.11), which JSON Schema cannot say of UTF-8 text: the pattern
# takes 1-32 printable ASCII characters, or 1-8 characters of any kind but control ones (at most 4
# bytes each), so that every name it admits fits; the button's own check counts the bytes.
SSID = r"^(?:[\x20-\x7e]{1,32}|[^\x00-\x1f\x7f-\x9f]{1,8})$"
Ssid = Annotated[str, Field(pattern=SSID), AfterValidator(contract.text_checker(32)),
                 WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 32, "pattern": SSID,
                                 "description": "the network's name: 1-32 printable ASCII characters, or 1-8 "
                                                "characters of any kind but control ones"})]


class WifiNetworkIn(_Strict):
    ssid: Ssid
    password: str = Field(pattern=WIFI_PASSWORD, description="empty for an open network; never shown again")


class WifiConfig(_Strict):
    """The networks the button tries, in order; they replace the list it had (its provisioned network
    included). Sent encrypted (docs/protocol.md §10.2); the API shows the names only."""

    networks: list[WifiNetworkIn] = Field(min_length=1, max_length=3)


class ConfigIn(_Strict):
    """A change of a button's remote configuration: the keys given are merged into what was set
    before and the whole is pushed to the button as its next version. Unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    loc: LocationConfig = Field(None, description="the location the button signs into its alarms")  # type: ignore[assignment]
    heartbeat_s: _int(5, contract.EVERY_S_MAX, "the heartbeat interval") = None  # type: ignore[valid-type]
    retry: RetryConfig = None  # type: ignore[assignment]
    reconnect: ReconnectConfig = None  # type: ignore[assignment]
    sms: SmsConfig = None  # type: ignore[assignment]
    wifi: WifiConfig = Field(None, description="Wi-Fi networks, sent encrypted")  # type: ignore[assignment]

    @model_validator(mode="after")
    def _something(self) -> ConfigIn:
        if not self.model_fields_set:
            raise ValueError("nothing to change: give at least one of loc, heartbeat_s, retry, reconnect, sms, wifi")
        return self


class ConfigStateOut(BaseModel):
    version: int = Field(description="the version last pushed to the button; 0: none yet")
    applied: int = Field(description="the version the button's heartbeats report applied; 0: none")
    rejected: int | None = Field(description="the last version the button refused (its heartbeat says so)")
    desired: dict[str, Any] = Field(description="the whole configuration set remotely so far (the `set` "
                                                "pushed); Wi-Fi networks by name ({\"ssid\", \"password_set\"}), "
                                                "never a password")


class DeviceOtaOut(BaseModel):
    rollout: int
    version: str
    state: Literal["offered", "downloading", "installed", "updated", "failed", "withdrawn"]
    detail: str = Field(description="what the button reported last (a refusal's or a rollback's reason word)")


class DeviceOut(BaseModel):
    id: str
    created_ms: int
    revoked: bool
    site: str | None
    lat: float | None
    lon: float | None
    address: str
    area: str
    last_seen_ms: int | None
    battery_mv: int | None
    rssi: int | None
    firmware: str | None
    tamper: bool | None
    heartbeat_s: int | None
    faults: list[str] = Field(description="active faults: offline, low_battery, tamper, bad_message, undelivered, "
                                          "on_backup_path, backup_path_down")
    key_pending: bool = Field(description="a rotated key waits for the device to start using it")
    decommissioned: bool
    phone: str | None = Field(None, description="the button's SIM number (E.164), if it has a GSM modem")
    last_sms_ms: int | None = Field(None, description="its latest valid SMS (the backup path's last success)")
    config: ConfigStateOut | None = Field(None, description="its remote configuration (docs/protocol.md §10)")
    board: str | None = Field(None, description="the board its heartbeats report (esp32, picow, unix); null before "
                                                "firmware that reports it")
    ota: DeviceOtaOut | None = Field(None, description="its latest firmware rollout entry (docs/protocol.md §11); "
                                                       "null: never in a rollout")


class RotateIn(BaseModel):
    secret_hex: str = Field(pattern=r"^[0-9a-f]{64}$", description="the new 32-byte HMAC key, lowercase hex")
    mode: Literal["immediate", "pending"] = Field(
        default="immediate",
        description="immediate: the old key stops working now; pending: both work until the device first "
                    "signs with the new one (when the board is rewritten later)")


class DevicePatch(BaseModel):
    """Only the fields given change. `site: null` removes the site (the device is its own site);
    address and area are cleared with "" (null is refused: they are never absent); `phone: null`
    removes the SIM's number (the button takes no SMS path any more)."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    site: Site | None = None
    lat: Latitude | None = None
    lon: Longitude | None = None
    address: Address = Field(default="", description='street address; "" clears it')
    area: Area = Field(default="", description='administrative-area code; "" clears it')
    phone: Phone | None = None

    @field_validator("address", "area", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError('must be text, not null; send "" to clear it')
        return value

    @model_validator(mode="after")
    def _something(self) -> DevicePatch:
        if not self.model_fields_set:
            raise ValueError("nothing to change: give at least one of site, lat, lon, address, area, phone")
        return self


class StateIn(BaseModel):
    event_id: str = Field(max_length=128)
    device_id: str = Field(pattern=DEVICE_ID)
    seq: int = Field(ge=0, lt=2**31)
    state: Literal["received", "acknowledged", "dispatched", "resolved", "false_alarm"]
    incident_id: str | None = Field(default=None, max_length=64)
    at: Annotated[datetime, AfterValidator(_utc), WithJsonSchema(
        {"type": "string", "format": "date-time", "pattern": f"^{contract.YEAR_RE}-"})] = Field(
        description=f"when the state changed; years {STATE_YEARS[0]}-{STATE_YEARS[1]}, a time without a zone is UTC")
    by: str | None = Field(default=None, max_length=64)


# ---- answers ---------------------------------------------------------------------------------------


class ErrorOut(BaseModel):
    """Every error answer, as FastAPI's HTTPException and its validation errors have it."""

    detail: str | list[dict[str, Any]] = Field(
        description="what is wrong: a sentence, or a list of validation errors (loc, msg, type)")
    message: str | None = Field(None, description="the same in the caller's language (Accept-Language, else "
                                "Bahasa Indonesia), for people to read")


class DestinationHealthOut(BaseModel):
    type: str = Field(description="siaga, cap, webhook or dc09")
    primary: bool = Field(description="its answer is what the buttons' acks report")
    outbox: int = Field(description="events waiting for this destination")
    circuit: str = Field(description="its circuit breaker: closed, open or half_open")
    last_delivered_ms: int | None = Field(description="when it last confirmed an event (this instance's view)")
    last_error: str | None = Field(description="the last failure, if the last round failed")
    link_ok: bool | None = Field(None, description="a DC-09 receiver's link test (NULL message) last answered; "
                                                   "null for types without one")


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    mqtt: bool = Field(description="logged in to the broker")
    outbox: int = Field(description="events waiting, all destinations together")
    circuit: str = Field(description="the primary destination's circuit breaker: closed, open or half_open")
    instance: str | None = Field(None, description="this instance's name, when several share one database")
    forwarding: bool = Field(description="this instance forwards the outbox (with several: it holds the leader lock)")
    destinations: dict[str, DestinationHealthOut] = Field(description="each destination by name")


class ReadyOut(BaseModel):
    ready: bool
    mqtt: bool
    store: bool


class RevokedOut(BaseModel):
    device_id: str
    revoked: Literal[True]
    changed: bool = Field(description="false: it was revoked already")


class DecommissionedOut(BaseModel):
    device_id: str
    decommissioned: Literal[True]
    changed: bool = Field(description="false: it was decommissioned already")


class RequeuedOut(BaseModel):
    id: int
    requeued: Literal[True]


class StateOut(BaseModel):
    event_id: str
    state: str
    changed: bool
    rank: int


class AlarmOut(BaseModel):
    id: int
    device_id: str
    seq: int
    kind: str
    test: bool
    lat_e6: int
    lon_e6: int
    address: str
    area: str
    raised_ts: int | None
    received_ms: int
    group_id: int
    press_count: int
    state: str
    state_ms: int | None
    incident_id: str | None
    forwarded_ms: int | None


class IncidentGroupOut(BaseModel):
    id: int
    site: str
    opened_ms: int
    last_ms: int
    presses: int
    sources: list[str]


class AuditOut(BaseModel):
    at_ms: int
    device_id: str | None
    topic: str = Field(description='where it came from: the MQTT topic, "sms/<sender number>" for an SMS, or a '
                                   'destination\'s inbound webhook')
    reason: str = Field(description="malformed, oversize, unknown_device, revoked, bad_signature, wrong_topic, "
                                    "replay, flood, unknown_sender (an SMS from a number that is no device's "
                                    "phone), firmware_<reason> (a firmware bundle refused at upload, or by a "
                                    "button, which names its reason word), firmware_rolled_back (a button went "
                                    "back from a new version) or rollout_halted")
    detail: str


class QuarantinedOut(BaseModel):
    id: int
    device_id: str | None
    topic: str
    error: str
    count: int
    first_ms: int
    last_ms: int
    payload_base64: str
    payload_preview: str


class RefusedOut(BaseModel):
    id: int
    destination: str
    kind: str
    event_id: str
    device_id: str
    created_ms: int
    refused_ms: int
    attempts: int
    last_error: str | None


class DeliveryOut(BaseModel):
    destination: str
    kind: str
    status: Literal["delivered", "waiting", "refused"]
    attempts: int
    delivered_ms: int | None = Field(None, description="when the destination confirmed it (delivered)")
    reference: str | None = Field(None, description="what the destination called it, if it said (an incident id)")
    next_attempt_ms: int | None = Field(None, description="when it is tried again (waiting)")
    refused_ms: int | None = Field(None, description="when the destination refused it for good (refused)")
    last_error: str | None = None


class FleetChangeOut(BaseModel):
    id: int
    at_ms: int
    person: str = Field(description='a name of [[api.people]]; "admin" for the shared admin token')
    role: str
    action: Literal["register", "revoke", "rotate-key", "update", "decommission", "requeue", "configure",
                    "firmware-upload", "rollout-start", "rollout-widen", "rollout-resume", "rollout-cancel"]
    device_id: str | None
    detail: dict[str, Any] = Field(
        description="register: the place given (and the phone, if one); update: each changed field as "
                    "[before, after]; decommission: the phone let go; rotate-key: the mode; requeue: the event; "
                    "configure: the version and each changed key as [before, after] (Wi-Fi networks by name); "
                    "firmware-upload: the "
                    "bundle's id, version, board and sha256; rollout-*: the rollout, version, percent, halt "
                    "limit and offers made (allow_downgrade when given), or the offers withdrawn. "
                    "Never a key.")


class FirmwareOut(BaseModel):
    id: str = Field(description="the first 16 hex digits of sha256")
    sha256: str = Field(description="of the whole bundle file")
    version: str
    board: str
    size: int = Field(description="bytes of the bundle file")
    files: int = Field(description="how many files it installs")
    min_boot: int = Field(description="the lowest boot level a button must have to install it")
    uploaded_ms: int
    uploaded_by: str


class RolloutRefusedOut(ErrorOut):
    reason: Literal["downgrade"] | None = Field(None, description="downgrade: a device it would reach runs a newer "
                                                "version (send allow_downgrade to roll it out all the same)")


class BundleRefusedOut(BaseModel):
    detail: str
    reason: Literal["malformed", "too_large", "unknown_key", "bad_signature", "wrong_board", "boot_too_old",
                    "wrong_hash"] = Field(description="why, in the words of docs/ota.md")
    message: str | None = None


Version = Annotated[str, Field(pattern=r"^[0-9]{1,9}\.[0-9]{1,9}\.[0-9]{1,9}$", max_length=32,
                               description="MAJOR.MINOR.PATCH")]


RolloutId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class RolloutIn(_Strict):
    """Start the rollout of a version, or widen the one under way (the percent never decreases); a
    halted one is widened only with `resume`."""

    version: Version
    percent: Annotated[int, Field(strict=True, ge=1, le=100, description="of the devices that can take it"),
                       BeforeValidator(contract.json_integer)]
    max_failed_percent: Annotated[int, Field(strict=True, ge=0, le=100, description="halt when more than this "
                                             "share of the devices offered failed; default [ota] max_failed_percent"),
                                  BeforeValidator(contract.json_integer)] = None  # type: ignore[assignment]
    # omitted when widening or resuming: the rollout keeps the limit it has
    resume: bool = Field(False, description="resume a halted rollout")
    allow_downgrade: bool = Field(False, description="roll it out even to devices that run a newer version")


class RolloutCountsOut(BaseModel):
    offered: int
    downloading: int
    installed: int
    updated: int
    failed: int
    withdrawn: int


class RolloutDeviceOut(BaseModel):
    device_id: str
    state: Literal["offered", "downloading", "installed", "updated", "failed", "withdrawn"]
    detail: str
    updated_ms: int


class RolloutOut(BaseModel):
    id: int
    version: str
    percent: int
    state: Literal["active", "halted", "done", "cancelled"]
    max_failed_percent: int
    halted_reason: Literal["failures", "cancelled"] | None = Field(
        description="why it stopped: `failures` (more than max_failed_percent of its devices not withdrawn "
                    "failed: see counts) or `cancelled` (a person cancelled it: the fleet change log says who); "
                    "a code, for clients to say in their reader's language")
    created_ms: int
    counts: RolloutCountsOut
    targeted: int = Field(description="devices offered the version so far")
    eligible: int = Field(description="devices the rollout can reach: those it targets and those it could")
    devices: list[RolloutDeviceOut] | None = Field(None, description="each device's entry (one rollout only)")


# ---- who is asking ---------------------------------------------------------------------------------

_person_bearer = HTTPBearer(
    auto_error=False, scheme_name="personToken",
    description="the personal token of someone in [[api.people]] (or the shared admin token)")
_cc_bearer = HTTPBearer(
    auto_error=False, scheme_name="commandCenterToken",
    description="the command center's token ([api] cc_token_file)")


def _unauthorized() -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                         headers={"WWW-Authenticate": "Bearer"})


def find_person(presented: str, credentials: Mapping[str, Person]) -> Person | None:
    """The person whose token this is (constant time over every token)."""
    return find_holder(presented, credentials)


BODY_MAX = 64 * KIB  # a registration is under 1 KiB (docs/security.md)


async def authenticate(request: Request, schemes: frozenset[str]) -> None:
    """The gateway's AuthGate: who is asking, from the Authorization header alone, for an operation
    whose OpenAPI entry requires `schemes`. Only `Bearer <token>` counts (the scheme in any case); a
    bare token is refused. Wrong tokens are throttled per client address (siaga.web.Throttle)."""
    if not schemes:
        return
    if "authorization" not in request.headers:
        raise _unauthorized()
    gw: Gateway = request.app.state.gateway
    guard: Guard = request.app.state.guard
    address = client_address(request)
    try:
        guard.check_address(address)
    except HTTPException:
        gw.metrics.inc("http_throttled")
        raise
    token = bearer_token(request)
    if "commandCenterToken" in schemes:
        if token is None or not token_matches(token, gw.cfg.cc_callback_token):
            guard.failed("cc_token_failed", "(command center token)", address)
            gw.metrics.inc("http_auth_failures", kind="cc_token")
            raise _unauthorized()
        request.state.cc = True
        return
    person = None if token is None else find_person(token, gw.cfg.credentials)
    if person is None:
        guard.failed("token_failed", "(bearer token)", address)
        gw.metrics.inc("http_auth_failures", kind="person_token")
        raise _unauthorized()
    request.state.person = person


async def record_failures(app: FastAPI) -> None:
    """Wrong credentials since the last call: one log line per kind and address, with the count
    (each is also counted in `siaga_gateway_http_auth_failures_total`)."""
    guard: Guard = app.state.guard
    for what, _who, address, count, _first, _last in guard.failures.take():
        log.warning("%d wrong %s from %s", count, what.removesuffix("_failed").replace("_", " "), address)


def require_person(request: Request,
                   cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_person_bearer)]) -> Person:
    """Anyone in [[api.people]], as found by `authenticate` before the body was read (the parameter
    documents the scheme)."""
    del cred
    person: Person | None = getattr(request.state, "person", None)
    if person is None:
        raise _unauthorized()
    return person


def require_admin(person: Annotated[Person, Depends(require_person)]) -> Person:
    """Someone with role admin."""
    if person.role is not Role.ADMIN:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"{person.name} has the role {person.role.value}; this needs an administrator")
    return person


def require_cc(request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_cc_bearer)]) -> None:
    """The command center, with its own token, as found by `authenticate`."""
    del cred
    if not getattr(request.state, "cc", False):
        raise _unauthorized()


PersonDep = Annotated[Person, Depends(require_person)]
AdminDep = Annotated[Person, Depends(require_admin)]


def _answers(more: Mapping[int, str] | None = None, *, technician: bool = False,
             cc: bool = False) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route for its OpenAPI entry: 401 always, 403 where a technician is
    refused, and `more` ({404: "why", ...})."""
    out: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorOut, "headers": {"WWW-Authenticate": {"schema": {"type": "string"},
                                                                   "description": "Bearer"}},
              "description": "no `Authorization: Bearer <token>` header, or a token the gateway does not know"
                             + (" (the command center's token)" if cc else "")}}
    if not technician and not cc:
        out[403] = {"model": ErrorOut, "description": "the person is a technician; this needs an administrator"}
    for code, why in (more or {}).items():
        out[code] = {"model": ErrorOut, "description": why}
    return out


_INVALID = "a parameter or the body is not valid (the list says which and why)"


def _json_errors(answers: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route whose success is not JSON (/metrics): they are JSON all the same."""
    schema = {"$ref": "#/components/schemas/ErrorOut"}
    return {code: {k: v for k, v in a.items() if k != "model"} | {"content": {"application/json": {"schema": schema}}}
            for code, a in answers.items()}


def _e6(value: float | None) -> int | None:
    return None if value is None else round(value * 1_000_000)


def create_app(gw: Gateway) -> FastAPI:
    app = FastAPI(title="Siaga gateway", version="1", summary="Device registry, audit and state relay")
    app.state.gateway = gw
    guard_entrance(app, authenticate, gw.cfg.api_throttle, BODY_MAX)

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> HealthOut:
        mqtt_up = gw.link is not None and gw.link.connected.is_set()
        depths = await gw.store.outbox_depths()
        kinds = {d.name: d.type for d in gw.cfg.destinations}
        destinations = {fw.name: DestinationHealthOut(
            type=kinds.get(fw.name, "siaga"), primary=fw.primary, outbox=depths.get(fw.name, 0),
            circuit=fw.breaker.state.value, last_delivered_ms=fw.last_delivered_ms,
            last_error=None if fw.breaker.failures == 0 else fw.last_error,
            link_ok=getattr(fw.adapter, "link_ok", None)) for fw in gw.forwarders.values()}
        return HealthOut(status="ok" if mqtt_up else "degraded", mqtt=mqtt_up,
                         outbox=sum(depths.values()), circuit=gw.breaker.state.value,
                         instance=gw.cfg.instance, forwarding=gw.leader.is_set(), destinations=destinations)

    @app.get("/ready", summary="Readiness: connected to the broker and the store answers",
             responses={503: {"model": ReadyOut, "description": "not ready"}})
    async def ready(response: Response) -> ReadyOut:
        mqtt_up = gw.link is not None and gw.link.connected.is_set()
        try:
            depth: int | None = await gw.store.outbox_depth()
        except Exception:  # any store failure means not ready; the reason is in the log
            depth = None
        ok = mqtt_up and depth is not None
        if not ok:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return ReadyOut(ready=ok, mqtt=mqtt_up, store=depth is not None)

    def device_out(d: Device) -> DeviceOut:
        return DeviceOut(id=d.id, created_ms=d.created_ms, revoked=d.revoked_ms is not None, site=d.site,
                         lat=None if d.lat_e6 is None else d.lat_e6 / 1e6,
                         lon=None if d.lon_e6 is None else d.lon_e6 / 1e6, address=d.address, area=d.area,
                         last_seen_ms=d.last_seen_ms, battery_mv=d.battery_mv, rssi=d.rssi, firmware=d.firmware,
                         tamper=d.tamper, heartbeat_s=d.every_s, faults=list(d.faults), key_pending=d.key_pending,
                         decommissioned=d.decommissioned_ms is not None, phone=d.phone, last_sms_ms=d.sms_seen_ms,
                         config=ConfigStateOut(version=d.config_ver, applied=d.config_applied,
                                               rejected=d.config_rejected,
                                               desired=codec.redact_config(d.config_desired)),
                         board=d.board, ota=None if d.ota is None else DeviceOtaOut(**d.ota))

    async def one_device(device_id: str) -> DeviceOut:
        found = await gw.store.devices(device_id)
        if not found:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id}")
        return device_out(found[0])

    def known(device_id: str) -> None:
        if device_id not in gw.registry:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id}")

    @app.post("/api/v1/devices", status_code=201, summary="Register a device (admins and technicians)",
              responses=_answers({409: "the id is registered already (also a decommissioned one), or the phone "
                                       "number is another device's", 422: _INVALID},
                                 technician=True))
    async def add_device(dev: DeviceIn, person: PersonDep) -> DeviceOut:
        try:
            await gw.register_device(dev.id, bytes.fromhex(dev.secret_hex), site=dev.site, lat_e6=_e6(dev.lat),
                                     lon_e6=_e6(dev.lon), address=dev.address, area=dev.area, phone=dev.phone,
                                     by=person)
        except StoreError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        return await one_device(dev.id)

    @app.get("/api/v1/devices", dependencies=[Depends(require_person)],
             summary="List devices, never their secrets (admins and technicians)",
             responses=_answers(technician=True))
    async def list_devices() -> list[DeviceOut]:
        return [device_out(d) for d in await gw.store.devices()]

    @app.get("/api/v1/devices/{device_id}", dependencies=[Depends(require_person)],
             summary="One device and its faults (admins and technicians)",
             responses=_answers({404: "no such device", 422: _INVALID}, technician=True))
    async def get_device(device_id: str) -> DeviceOut:
        return await one_device(device_id)

    @app.post("/api/v1/devices/{device_id}/revoke", summary="Revoke a device now",
              responses=_answers({404: "no such device", 422: _INVALID}))
    async def revoke(device_id: str, person: AdminDep) -> RevokedOut:
        known(device_id)
        return RevokedOut(device_id=device_id, revoked=True, changed=await gw.revoke_device(device_id, by=person))

    @app.post("/api/v1/devices/{device_id}/rotate-key", summary="Give a device a new key",
              responses=_answers({404: "no such device", 409: "the device is revoked", 422: _INVALID}))
    async def rotate_key(device_id: str, body: RotateIn, person: AdminDep) -> DeviceOut:
        rec = gw.registry.get(device_id)
        if rec is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id}")
        if rec.revoked:
            raise HTTPException(status.HTTP_409_CONFLICT, f"device {device_id} is revoked")
        await gw.rotate_key(device_id, bytes.fromhex(body.secret_hex), pending=body.mode == "pending", by=person)
        return await one_device(device_id)

    async def fits_one_frame(device_id: str, changes: dict[str, Any]) -> None:
        """Refuse (409) a change whose configuration, merged as the store merges it, would not fit in one
        frame at the longest version number: refused now, not when it is published. Encryption keeps
        the length, so this is the size the button would receive."""
        rec = gw.registry.get(device_id)
        found = await gw.store.devices(device_id)
        if rec is None or not found:
            return
        desired = found[0].config_desired
        merged = {**desired, **changes}
        if "sms" in changes:
            merged["sms"] = {**desired.get("sms", {}), **changes["sms"]}
        size = len(codec.encode_config(rec.secret, device_id, codec.CONFIG_VER_MAX, merged, check=False))
        if size > codec.MAX_FRAME:
            # 409: the change is valid; what it makes with the settings already set is not.
            raise HTTPException(status.HTTP_409_CONFLICT,
                                f"the configuration of {device_id} would make a frame of {size} bytes, more than "
                                f"the {codec.MAX_FRAME} a button takes: give fewer or shorter Wi-Fi networks")

    @app.patch("/api/v1/devices/{device_id}",
               summary="Correct a device's site, location or phone number (admins and technicians)",
               responses=_answers({404: "no such device", 409: "the phone number is another device's, or the "
                                   "new place with the button's Wi-Fi networks would not fit in one frame",
                                   422: _INVALID}, technician=True))
    async def patch_device(device_id: str, body: DevicePatch, person: PersonDep) -> DeviceOut:
        known(device_id)
        given = body.model_dump(exclude_unset=True)
        fields = {{"lat": "lat_e6", "lon": "lon_e6"}.get(k, k): (_e6(v) if k in ("lat", "lon") else v)
                  for k, v in given.items()}
        if fields.keys() & {"address", "area"}:
            # The place goes to the button too: with its Wi-Fi networks it must still fit one frame
            # (the longest coordinates stand in for the ones given).
            found = await gw.store.devices(device_id)
            if found:
                await fits_one_frame(device_id, {"loc": {
                    "lat_e6": -contract.LAT_E6_MAX, "lon_e6": -contract.LON_E6_MAX,
                    "addr": fields.get("address", found[0].address), "area": fields.get("area", found[0].area)}})
        try:
            await gw.update_device(device_id, fields, by=person)
        except StoreError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        return await one_device(device_id)

    @app.put("/api/v1/devices/{device_id}/config",
             summary="Change a button's remote configuration and push it (admins and technicians)",
             description="The keys given are merged into the configuration set before (an `sms` object key by "
                         "key); the whole goes to the button, signed with its key, as the next version "
                         "(docs/protocol.md §10). A change that changes nothing makes no new version.",
             responses=_answers({404: "no such device", 409: "the device is revoked, or the configuration with "
                                 "this change would not fit in one frame (1024 bytes)", 422: _INVALID},
                                technician=True))
    async def configure(device_id: str, body: ConfigIn, person: PersonDep) -> DeviceOut:
        rec = gw.registry.get(device_id)
        if rec is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id}")
        if rec.revoked:
            raise HTTPException(status.HTTP_409_CONFLICT, f"device {device_id} is revoked")
        changes = body.model_dump(exclude_unset=True)
        await fits_one_frame(device_id, changes)
        await gw.configure(device_id, changes, by=person)
        return await one_device(device_id)

    @app.post("/api/v1/devices/{device_id}/decommission",
              summary="Decommission a device: revoked for good, its history kept",
              description="Administrators; a technician only a button they registered themselves that has never "
                          "been heard from (undoing a registration that failed half-way, e.g. in provisioning).",
              responses=_answers({404: "no such device", 422: _INVALID}))
    async def decommission(device_id: str, person: PersonDep) -> DecommissionedOut:
        known(device_id)
        if person.role is not Role.ADMIN and not await _own_unheard(device_id, person):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"{person.name} has the role {person.role.value}: a technician may decommission only "
                                "a button they registered that has never been heard from; this needs an administrator")
        return DecommissionedOut(device_id=device_id, decommissioned=True,
                                 changed=await gw.decommission_device(device_id, by=person))

    async def _own_unheard(device_id: str, person: Person) -> bool:
        [dev] = await gw.store.devices(device_id)
        if dev.last_seen_ms is not None:
            return False
        changes = await gw.store.fleet_changes(device_id=device_id, limit=1000)
        return any(c["action"] == "register" and c["person"] == person.name for c in changes)

    @app.get("/api/v1/fleet/changes", dependencies=[Depends(require_admin)],
             summary="Who changed the fleet: registry changes with person, time and what changed, newest first",
             responses=_answers({422: _INVALID}))
    async def fleet_changes(device_id: str | None = None, limit: Limit = 100) -> list[FleetChangeOut]:
        return [FleetChangeOut(**c) for c in await gw.store.fleet_changes(device_id=device_id, limit=limit)]

    @app.get("/api/v1/alarms", dependencies=[Depends(require_person)],
             summary="Stored alarms, newest first (admins and technicians: the self-test reads them)",
             responses=_answers({422: _INVALID}, technician=True))
    async def alarms(device_id: str | None = None, limit: Limit = 100) -> list[AlarmOut]:
        return [AlarmOut(**a) for a in await gw.store.alarms(device_id=device_id, limit=limit)]

    @app.get("/api/v1/incidents", dependencies=[Depends(require_admin)],
             summary="Incident groups (the incident layer), newest first", responses=_answers({422: _INVALID}))
    async def incidents(limit: Limit = 100) -> list[IncidentGroupOut]:
        return [IncidentGroupOut(**g) for g in await gw.store.groups(limit)]

    @app.get("/api/v1/audit", dependencies=[Depends(require_admin)], summary="Rejected messages, newest first",
             responses=_answers({422: _INVALID}))
    async def audit(limit: Limit = 100, reason: str | None = None) -> list[AuditOut]:
        return [AuditOut(**a) for a in await gw.store.audit(limit, reason)]

    @app.get("/api/v1/quarantine", dependencies=[Depends(require_admin)],
             summary="Messages the gateway could not process, newest first (raw bytes in base64)",
             responses=_answers({422: _INVALID}))
    async def quarantine(limit: Limit = 100) -> list[QuarantinedOut]:
        rows = await gw.store.quarantined(limit)
        return [QuarantinedOut(**{k: v for k, v in r.items() if k != "payload"},
                               payload_base64=base64.b64encode(r["payload"]).decode(),
                               payload_preview=r["payload"][:200].decode("utf-8", "replace")) for r in rows]

    @app.get("/api/v1/events/{event_id}/deliveries", dependencies=[Depends(require_admin)],
             summary="Where an event is: each destination that confirmed it, and each still waiting or refused",
             responses=_answers({404: "no destination has or had this event", 422: _INVALID}))
    async def deliveries(event_id: Annotated[str, Path(min_length=1, max_length=200)]) -> list[DeliveryOut]:
        rows = await gw.store.deliveries(event_id)
        if not rows:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no destination has or had event {event_id}")
        return [DeliveryOut(**r) for r in rows]

    @app.get("/api/v1/outbox/refused", dependencies=[Depends(require_admin)],
             summary="Events a destination refused for good, newest first",
             responses=_answers({422: _INVALID}))
    async def refused(limit: Limit = 100) -> list[RefusedOut]:
        return [RefusedOut(**r) for r in await gw.store.refused(limit)]

    @app.post("/api/v1/outbox/{outbox_id}/requeue", summary="Send a refused event again, once its cause is fixed",
              responses=_answers({404: "no refused event with this id", 422: _INVALID}))
    async def requeue(outbox_id: Annotated[int, Path(ge=1, le=2**63 - 1)], person: AdminDep) -> RequeuedOut:
        if not await gw.requeue(outbox_id, by=person):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no refused event {outbox_id}")
        return RequeuedOut(id=outbox_id, requeued=True)

    @app.get("/metrics", dependencies=[Depends(require_admin)], summary="Prometheus metrics (text format 0.0.4)",
             response_class=PlainTextResponse, responses=_json_errors(_answers()))
    async def metrics() -> Response:
        depths = await gw.store.outbox_depths()
        gauges = {**gw.gauges(), "outbox_depth": sum(depths.values()),
                  **{f'outbox_depth{{destination="{fw}"}}': depths.get(fw, 0) for fw in gw.forwarders}}
        return Response(gw.metrics.render(gauges), media_type="text/plain; version=0.0.4")

    @app.post("/api/v1/cc/state", dependencies=[Depends(require_cc)],
              summary="A command center reports an alarm's state",
              responses=_answers({404: "no such alarm", 422: _INVALID}, cc=True))
    async def cc_state(body: StateIn) -> StateOut:
        stored = await gw.command_center_state(body.device_id, body.seq, body.state, body.incident_id, body.by,
                                               int(body.at.timestamp() * 1000))
        if stored is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alarm {body.device_id}:{body.seq}")
        return StateOut(event_id=body.event_id, state=stored.state, changed=stored.changed,
                        rank=proto.state_rank(stored.state))

    # ---- firmware over the air (docs/protocol.md §11) ----------------------------------------------

    def firmware_out(entry: dict[str, Any]) -> FirmwareOut:
        return FirmwareOut(**{k: v for k, v in entry.items() if k != "manifest"},
                           files=len(entry["manifest"].get("files", ())))

    async def refusal(request: Request, exc: Exception, reason: str, code: int) -> JSONResponse:
        """A refusal that names its reason word beside the usual detail and message."""
        detail = str(exc)
        lang = await errortext.language_of(request)
        return JSONResponse({"detail": detail, "reason": reason, "message": errortext.message(detail, lang, code)},
                            status_code=code)

    @app.post("/api/v1/firmware", status_code=201,
              summary="Upload a signed firmware bundle",
              description="The body is the bundle file as `siaga firmware build` writes it (docs/ota.md), at most "
                          "1 MiB. It is checked as a button checks it, against the fleet keys of [ota] and the "
                          "bundle's own board; a refusal is audited (reason `firmware_<reason>`) and nothing is kept. "
                          "The same bundle again answers 200 with the entry kept before.",
              openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
                  "schema": {"type": "string", "format": "binary", "maxLength": BUNDLE_MAX_BYTES}}}}},
              responses={200: {"model": FirmwareOut, "description": "the same bundle was uploaded before"},
                         **_answers({409: "this gateway has no [ota] settings: it takes no bundles",
                                     413: "the body is over 1 MiB",
                                     415: "the body is not application/octet-stream"}),
                         422: {"model": BundleRefusedOut, "description": "the bundle is refused (reason)"}},
              max_body_size=BUNDLE_MAX_BYTES)
    async def upload_firmware(request: Request, response: Response, person: AdminDep) -> FirmwareOut:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/octet-stream":
            raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                                "send the bundle file as the body, Content-Type: application/octet-stream")
        if gw.cfg.ota is None:
            raise HTTPException(status.HTTP_409_CONFLICT, "this gateway has no [ota] settings: it takes no bundles")
        data = await request.body()
        try:
            new, entry = await gw.ota.upload(data, person)
        except BundleRefused as exc:
            return await refusal(request, exc, exc.reason, 422)  # type: ignore[return-value]
        if not new:
            response.status_code = status.HTTP_200_OK
        return firmware_out(entry)

    @app.get("/api/v1/firmware", dependencies=[Depends(require_person)],
             summary="The firmware bundles uploaded, newest first (admins and technicians)",
             responses=_answers(technician=True))
    async def list_firmware() -> list[FirmwareOut]:
        return [firmware_out(e) for e in await gw.store.bundles()]

    @app.post("/api/v1/rollouts", status_code=201,
              summary="Start, widen or resume the rollout of a firmware version",
              description="Devices that report a board with a bundle of the version, do not run it yet and never "
                          "failed to install that bundle are offered it in a fixed order (SHA-256 of rollout id and "
                          "device id) until `percent` of them have been. Widening an active rollout answers 200; a "
                          "halted one only with `resume`, which also offers it again to the devices whose offers "
                          "the halt withdrew. Without `max_failed_percent` a widened or resumed rollout keeps its "
                          "limit. A device it would reach that runs a newer version refuses the request (409, "
                          "reason `downgrade`) unless `allow_downgrade`. Written to the fleet change log.",
              responses={200: {"model": RolloutOut, "description": "the rollout under way, widened or resumed"},
                         **_answers({404: "no bundle of the version was uploaded", 422: _INVALID}),
                         409: {"model": RolloutRefusedOut,
                               "description": "the rollout is halted (resume it), the percent would shrink, or a "
                                              "device it would reach runs a newer version (reason `downgrade`)"}})
    async def start_rollout(request: Request, body: RolloutIn, response: Response, person: AdminDep) -> RolloutOut:
        try:
            new, rollout_id = await gw.ota.start_rollout(body.version, body.percent, body.max_failed_percent,
                                                         resume=body.resume, allow_downgrade=body.allow_downgrade,
                                                         by=person)
        except NotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        except RolloutConflict as exc:
            if exc.reason != "downgrade":
                raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
            return await refusal(request, exc, exc.reason, 409)  # type: ignore[return-value]
        if not new:
            response.status_code = status.HTTP_200_OK
        return await one_rollout(rollout_id, devices=False)

    async def one_rollout(rollout_id: int, *, devices: bool) -> RolloutOut:
        found = await gw.store.rollouts(rollout_id)
        if not found:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no rollout {rollout_id}")
        out = rollout_out(found[0])
        if not devices:
            out.pop("devices", None)
        return RolloutOut(**out)

    @app.get("/api/v1/rollouts", dependencies=[Depends(require_person)],
             summary="Firmware rollouts, newest first (admins and technicians)",
             description="Every rollout under way or halted, and the newest `limit` others (done or cancelled).",
             responses=_answers({422: _INVALID}, technician=True))
    async def list_rollouts(limit: Annotated[int, Query(ge=0, le=1000, description="finished rollouts to list "
                                                         "besides those under way or halted, 0-1000")] = 20
                            ) -> list[RolloutOut]:
        return [RolloutOut(**rollout_out(r)) for r in await gw.store.rollouts(limit=limit)]

    @app.get("/api/v1/rollouts/{rollout_id}", dependencies=[Depends(require_person)],
             summary="One rollout with each device's entry (admins and technicians)",
             responses=_answers({404: "no such rollout", 422: _INVALID}, technician=True))
    async def get_rollout(rollout_id: RolloutId) -> RolloutOut:
        return await one_rollout(rollout_id, devices=True)

    @app.post("/api/v1/rollouts/{rollout_id}/cancel",
              summary="Cancel a rollout: offers not acted on yet are withdrawn",
              description="Written to the fleet change log with the person.",
              responses=_answers({404: "no such rollout", 409: "the rollout is done or cancelled already",
                                  422: _INVALID}))
    async def cancel_rollout(rollout_id: RolloutId, person: AdminDep) -> RolloutOut:
        try:
            await gw.ota.cancel(rollout_id, person)
        except NotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        except RolloutConflict as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        return await one_rollout(rollout_id, devices=False)

    # The city's system reports states through a destination's signed inbound webhook.
    app.include_router(inbound_router(gw))
    return app

"""Gateway configuration (TOML). Every setting is documented in gateway/gateway.example.toml.

The file is checked against a strict schema (`GatewayFile`): an unknown or misspelt key, a value of
the wrong type or out of range, a missing table or an unreadable secret is refused with one line
that names the setting and says what to write. The rest of the gateway sees only the frozen
`GatewayConfig` built from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from siaga.settings import (
    ConfigError,
    SettingError,
    check_keys,
    load_config,
    load_secret,
    parse,
    readable_file,
    wrong_type,
)
from siaga.web import ServerLimits, ThrottleRules

from .mqtt import MqttSettings
from .supervision import SupervisionSettings

GATEWAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # protocol.md §7: no colon
EXAMPLE = "gateway/gateway.example.toml"
# A person's name and token follow the command center's rules for its [[operators]]
# (commandcenter/config.py): tokens travel in an HTTP header, so they are visible ASCII, and the
# length floor keeps hand-typed passwords out (generate them with `secrets.token_urlsafe(32)`).
PERSON_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_TOKEN = re.compile(r"[\x21-\x7e]{16,}")
LEGACY_ADMIN = "admin"  # the person that [api] admin_token_file / admin_token_env stands for
NOBODY = ("api: nobody can use the admin API: add [[api.people]] entries (name, role, token_file), or "
          "admin_token_file")


class Role(StrEnum):
    """What a person may do with the admin API (docs/gateway.md, "People and roles")."""

    ADMIN = "admin"            # everything
    TECHNICIAN = "technician"  # see devices and their alarms, register a device, correct its location


@dataclass(frozen=True, slots=True)
class Person:
    """Someone who uses the admin API with a token of their own; recorded with every change."""

    name: str
    role: Role


# A destination's name: in metrics labels, URLs (/api/v1/destinations/<name>/state) and the outbox.
DESTINATION_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
PRIMARY_NAME = "command-center"   # the destination [commandcenter] stands for
REPORT_EVERY_S = 30.0             # the gateway's self-report to the command center (gateway/liveness.py)
EventKind = Literal["alarm", "fault", "state"]
# What each type of destination takes unless its `events` says otherwise (docs/integration.md):
# CAP carries alerts and their updates, not device faults; an alarm receiving centre's DC-09
# takes alarms and troubles; a webhook receiver everything.
DEFAULT_EVENTS: Mapping[str, tuple[EventKind, ...]] = MappingProxyType({
    "siaga": ("alarm", "fault"), "cap": ("alarm", "state"), "webhook": ("alarm", "fault", "state"),
    "dc09": ("alarm", "fault")})


@dataclass(frozen=True, slots=True)
class ReferenceSettings:
    """Siaga's reference command center (protocol.md §7)."""

    url: str
    token: str = field(repr=False)
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Destination:
    """One place the gateway forwards to, with its own queue (gateway/forwarding.py)."""

    name: str
    type: str                       # siaga | cap | webhook | dc09
    events: tuple[EventKind, ...]
    settings: Any = field(repr=False)  # ReferenceSettings, cap.CapSettings, webhooks.WebhookSettings, dc09.Dc09Settings
    primary: bool = False           # its answer is what the button's ack and the admin API report


E164 = re.compile(r"\+[1-9][0-9]{7,14}")   # ITU-T E.164: at most 15 digits after the + (8 at least, as the registry)


@dataclass(frozen=True, slots=True)
class SmsSettings:
    """The GSM modem of the SMS path ([sms], docs/gateway.md "SMS intake")."""

    port: str                       # the modem's serial device, e.g. /dev/ttyUSB0
    baud: int = 115200
    number: str = ""                # the modem's own number (E.164), what the buttons' config names
    ack_min_interval_s: float = 20.0   # per device, at most one SMS ack this often (the newest waits)
    ack_per_hour: int = 12          # per device
    send_per_minute: int = 30       # all devices together
    flood_per_minute: int = 10      # SMS taken per sender number per minute; more are dropped, audited
    test_every_s: int = 86400       # the buttons' backup-path test interval (supervision)
    command_timeout_s: float = 10.0     # one AT command's answer (AT+CMGS: six times this)
    multipart_timeout_s: float = 600.0  # an incomplete multipart message is dropped after this
    poll_s: float = 30.0            # how often the modem is checked: answering, registered, signal, SIM storage
    # The country code for sender numbers a network delivers in national form ("0812...") or
    # without the "+": they are written "+62812..." before being compared with the registry.
    country_code: str = "62"


@dataclass(frozen=True, slots=True)
class OtaSettings:
    """Firmware over the air ([ota], docs/gateway.md "Firmware updates")."""

    # The fleet's Ed25519 public keys, raw 32 bytes each, by key id (the first 16 hex digits of the
    # key's SHA-256, what a bundle's manifest names).
    keys: Mapping[str, bytes] = field(default_factory=dict)
    chunk_bytes: int = 512          # bytes of a bundle per data frame
    max_failed_percent: int = 20    # a rollout halts when more than this share of its devices failed
    get_rate_per_s: float = 20.0    # chunk requests taken per device and second; more are dropped, audited

    def __post_init__(self) -> None:
        if not 128 <= self.chunk_bytes <= 640:
            raise ConfigError("ota.chunk_bytes must be 128-640: a data frame must fit 1024 bytes")
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))


def ota_key_id(public: bytes) -> str:
    """The id a bundle's manifest names its key by (docs/ota.md): 16 hex digits of its SHA-256."""
    return hashlib.sha256(public).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    gateway_id: str
    db_path: Path | None             # the SQLite file; None with db_url
    mqtt: MqttSettings
    api_host: str
    api_port: int
    cc_callback_token: str = field(repr=False)  # what the command center presents when it reports a state
    # The shared admin token of older setups: the person "admin", role admin. Prefer `people`.
    admin_token: str | None = field(default=None, repr=False)
    # token -> person: everyone with a credential of their own for the admin API
    people: Mapping[str, Person] = field(default_factory=dict, repr=False)
    cc_url: str = ""
    cc_token: str = field(default="", repr=False)  # what the gateway presents to the command center
    batch_max: int = 500            # messages per group commit
    batch_wait_ms: int = 2          # how long to gather a batch once a first message is in
    forward_batch: int = 500        # events per delivery round
    forward_linger_ms: int = 10     # during a stream, a delivery round at most this often
    retry_first_s: float = 1.0
    retry_max_s: float = 60.0
    breaker_threshold: int = 5
    incident_window_s: int = 300
    flood_rate_per_s: float = 5.0
    flood_burst: int = 30
    supervision: SupervisionSettings = field(default_factory=SupervisionSettings)
    log_format: str = "text"
    drain_s: float = 10.0           # how long a shutdown waits for in-flight work
    api_limits: ServerLimits = field(default_factory=lambda: ServerLimits(max_connections=200))
    api_throttle: ThrottleRules = field(default_factory=ThrottleRules)
    forwarded_allow_ips: str = "127.0.0.1"
    db_url: str | None = None        # postgresql://...: a database several instances share
    instance: str | None = None      # this instance's name among several of one gateway id
    # Where events go. Empty: the reference command center of cc_url alone (built in __post_init__).
    destinations: tuple[Destination, ...] = ()
    # The self-report to each `siaga` destination (gateway/liveness.py); 0: none.
    report_every_s: float = REPORT_EVERY_S
    sms: SmsSettings | None = None   # the GSM modem of the SMS path; None: no SMS path
    ota: OtaSettings | None = None   # firmware over the air; None: bundles are refused
    # token -> person, the admin token's person included: what the admin API checks a token against
    credentials: Mapping[str, Person] = field(init=False, repr=False)

    @property
    def db(self) -> str | Path:
        """What the store opens: the PostgreSQL URL, or the SQLite file."""
        if self.db_url is not None:
            return self.db_url
        assert self.db_path is not None
        return self.db_path

    def __post_init__(self) -> None:
        if not GATEWAY_ID.fullmatch(self.gateway_id):
            raise ConfigError(f"gateway id {self.gateway_id!r}: use 1-64 of A-Z a-z 0-9 . _ - (no colon)")
        if self.log_format not in ("text", "json"):
            raise ConfigError("logging.format must be 'text' or 'json'")
        everyone = dict(self.people)
        if self.admin_token is not None:
            if self.admin_token in everyone:
                raise ConfigError(f"api.admin_token_file: person {everyone[self.admin_token].name!r} has the same "
                                  "token; every token must differ")
            everyone[self.admin_token] = Person(LEGACY_ADMIN, Role.ADMIN)
        if not everyone:
            raise ConfigError(NOBODY)
        names: set[str] = set()
        for token, person in everyone.items():
            # Never echo a token: the messages name the person only.
            legacy = token == self.admin_token
            what = "api.admin_token_file" if legacy else f"api.people ({person.name})"
            if not legacy and not PERSON_NAME.fullmatch(person.name):
                raise ConfigError("api.people: a name is not a name: use 1-64 of A-Z a-z 0-9 . _ @ -, starting with "
                                  "a letter or digit")
            if person.name in names:
                raise ConfigError(f"api.people: name {person.name!r} is configured twice"
                                  + (" (admin_token_file stands for a person of that name)"
                                     if person.name == LEGACY_ADMIN and self.admin_token is not None else ""))
            names.add(person.name)
            if not isinstance(person.role, Role):
                raise ConfigError(f"{what}: role must be one of {', '.join(Role)}")
            if not _TOKEN.fullmatch(token):
                raise ConfigError(f"{what}: the token must be at least 16 visible ASCII characters without spaces")
            if token in (self.cc_callback_token, self.cc_token):
                which = "api.cc_token_file" if token == self.cc_callback_token else "commandcenter.token_file"
                raise ConfigError(f"{what}: the same token as {which}; every token must differ")
        if not any(p.role is Role.ADMIN for p in everyone.values()):
            raise ConfigError("api.people: nobody has role \"admin\": without an administrator no one can revoke "
                              "a stolen button; give someone role = \"admin\"")
        if not self.destinations and self.cc_url:
            object.__setattr__(self, "destinations", (Destination(
                PRIMARY_NAME, "siaga", DEFAULT_EVENTS["siaga"], ReferenceSettings(self.cc_url, self.cc_token),
                primary=True),))
        names_seen: set[str] = set()
        for d in self.destinations:
            if d.name in names_seen:
                raise ConfigError(f"destinations: name {d.name!r} is configured twice")
            names_seen.add(d.name)
        if sum(d.primary for d in self.destinations) > 1:
            raise ConfigError("destinations: more than one has primary = true; the button's ack follows one")
        # Freeze the mappings, so that the whole config really is immutable.
        object.__setattr__(self, "people", MappingProxyType(dict(self.people)))
        object.__setattr__(self, "credentials", MappingProxyType(everyone))

    @property
    def primary_destination(self) -> str:
        """The destination whose answer the button's ack reports: the one marked primary, else the
        reference command center, else the first."""
        for d in self.destinations:
            if d.primary:
                return d.name
        names = [d.name for d in self.destinations]
        return PRIMARY_NAME if PRIMARY_NAME in names or not names else names[0]

    def destination(self, name: str) -> Destination | None:
        return next((d for d in self.destinations if d.name == name), None)

    @classmethod
    def load(cls, path: str | Path) -> GatewayConfig:
        """Read and check a TOML file; relative paths in it are relative to the file's folder."""
        return load_config(path, _build)


# ---- the schema of the file -------------------------------------------------------------------------

def _gateway_id(value: str) -> str:
    if not GATEWAY_ID.fullmatch(value):
        raise ValueError("use 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit (no colon), e.g. gw-jakpus-1")
    return value


def _instance(value: str) -> str:
    if not GATEWAY_ID.fullmatch(value):
        raise ValueError("use 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit, e.g. \"a\" or the host name")
    return value


def _share_group(value: str) -> str:
    # One topic level of $share/<group>/... (MQTT 5 §4.8.2): no wildcards, no slash.
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
        raise ValueError('use 1-64 of A-Z a-z 0-9 . _ - (one topic level), e.g. "siaga"')
    return value


def is_postgres(db: str | Path) -> bool:
    """Whether a `db` setting names a PostgreSQL database rather than a SQLite file."""
    return str(db).startswith(("postgresql://", "postgres://"))


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError('write the command center\'s base URL, e.g. "http://127.0.0.1:8300"')
    return value


Text = Annotated[str, Field(min_length=1)]
Port = Annotated[int, Field(ge=1, le=65535)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
AtLeastOne = Annotated[int, Field(ge=1)]


class _Table(BaseModel):
    # strict: TOML has types, so `port = "1883"` or `tls = 1` is a mistake to report, not to coerce.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class GatewayTable(_Table):
    id: Annotated[str, AfterValidator(_gateway_id)] = "gw-1"
    # A SQLite file (one instance), or postgresql://user@host/database (several instances; the
    # password from ~/.pgpass or a passfile= parameter, never written here)
    db: Text = "gateway.sqlite3"
    instance: Annotated[str, AfterValidator(_instance)] | None = None
    incident_window_s: AtLeastOne = 300
    flood_rate_per_s: Positive = 5.0
    flood_burst: AtLeastOne = 30
    drain_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 10.0


class MqttTable(_Table):
    host: Text = "127.0.0.1"
    port: Port = 1883
    username: Text = "siaga-gateway"
    password_file: Text | None = None
    password_env: Text | None = None
    client_id: Text | None = None           # default: siaga-gateway-<gateway id>[-<instance>]
    share_group: Annotated[str, AfterValidator(_share_group)] | None = None
    keepalive_s: Annotated[int, Field(ge=1, le=65535)] = 30   # MQTT 3.1.1 §3.1.2.10: 16 bits
    tls: bool = False
    ca_file: Text | None = None
    cert_file: Text | None = None
    key_file: Text | None = None
    server_hostname: Text | None = None

    @model_validator(mode="after")
    def _tls_settings(self) -> MqttTable:
        for key in ("ca_file", "cert_file", "key_file", "server_hostname"):
            if getattr(self, key) is not None and not self.tls:
                raise SettingError(key, f"is set while tls is false: add tls = true, or remove {key}")
        if self.key_file is not None and self.cert_file is None:
            raise SettingError("cert_file", "is missing: key_file is the key of a client certificate; name it too")
        return self


class ApiTable(_Table):
    host: Text = "127.0.0.1"
    port: Port = 8081
    admin_token_file: Text | None = None
    admin_token_env: Text | None = None
    cc_token_file: Text | None = None
    cc_token_env: Text | None = None
    # [[api.people]]: checked by hand in _people, for messages that name the entry (api.people[0].name)
    people: list[dict[str, Any]] = Field(default_factory=list)
    # The entrance (docs/security.md): deadlines, a connection cap, throttling of wrong tokens.
    header_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    body_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 200
    forwarded_allow_ips: Text = "127.0.0.1"
    throttle_per_address: Text = "10/minute"


class CommandCenterTable(_Table):
    url: Annotated[str, AfterValidator(_http_url), Field(examples=["http://127.0.0.1:8300"])]
    token_file: Text | None = None
    token_env: Text | None = None
    # Path supervision: the gateway's self-report to the command center every so many seconds; 0: none.
    report_every_s: Annotated[float, Field(ge=0, le=3600)] = REPORT_EVERY_S


def _destination_name(value: str) -> str:
    if not DESTINATION_NAME.fullmatch(value):
        raise ValueError('use 1-32 of a-z 0-9 _ - starting with a letter or digit, e.g. "cad-kota"')
    return value


# Which keys each type of destination takes besides name, type, events, primary and timeout_s.
_DESTINATION_KEYS: Mapping[str, frozenset[str]] = MappingProxyType({
    "siaga": frozenset({"url", "token_file", "token_env"}),
    "cap": frozenset({"url", "token_file", "token_env", "sender", "sender_name", "geocode_name", "restriction",
                      "contact", "radius_km"}),
    "webhook": frozenset({"url", "secret_files", "inbound_secret_files", "tolerance_s"}),
    "dc09": frozenset({"host", "port", "format", "receiver", "line_prefix", "key_file", "accounts",
                       "account_default", "account_length", "gateway_account", "zones", "partition", "location",
                       "link_test_s"}),
})
_REQUIRED_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "siaga": ("url",), "cap": ("url",), "webhook": ("url", "secret_files"), "dc09": ("host", "port")})


class DestinationTable(_Table):
    """One [[destinations]] entry (docs/integration.md): the keys of every type, checked per type."""

    name: Annotated[str, AfterValidator(_destination_name)]
    type: Literal["siaga", "cap", "webhook", "dc09"]
    events: list[Literal["alarm", "fault", "state"]] | None = None
    primary: bool = False
    timeout_s: Annotated[float, Field(gt=0, le=300, allow_inf_nan=False)] = 10.0
    url: Annotated[str, AfterValidator(_http_url)] | None = None
    token_file: Text | None = None
    token_env: Text | None = None
    sender: Text | None = None
    sender_name: Text | None = None
    geocode_name: Text | None = None
    restriction: Text | None = None
    contact: Text | None = None
    radius_km: Annotated[float, Field(ge=0.001, le=1000, allow_inf_nan=False)] | None = None
    secret_files: list[Text] | None = None
    inbound_secret_files: list[Text] | None = None
    tolerance_s: Annotated[int, Field(ge=1, le=3600)] | None = None
    host: Text | None = None
    port: Port | None = None
    format: Literal["ADM-CID", "SIA-DCS"] | None = None
    receiver: str | None = None
    line_prefix: str | None = None
    key_file: Text | None = None
    accounts: dict[str, str] | None = None
    account_default: Literal["derive", "refuse"] | None = None
    account_length: Annotated[int, Field(ge=3, le=16)] | None = None
    gateway_account: str | None = None
    zones: dict[str, Annotated[int, Field(ge=1, le=999)]] | None = None
    partition: Annotated[int, Field(ge=0, le=99)] | None = None
    location: bool | None = None
    link_test_s: Annotated[float, Field(ge=0, le=86400, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _keys_of_its_type(self) -> DestinationTable:
        allowed = _DESTINATION_KEYS[self.type]
        common = {"name", "type", "events", "primary", "timeout_s"}
        for key in sorted(self.model_fields_set - common - allowed):
            raise SettingError(key, f"is not a setting of a {self.type} destination ({', '.join(sorted(allowed))})")
        for key in _REQUIRED_KEYS[self.type]:
            if getattr(self, key) is None:
                raise SettingError(key, f"is missing: a {self.type} destination needs it")
        if self.events is not None and (not self.events or len(set(self.events)) != len(self.events)):
            raise SettingError("events", 'list each kind once, at least one: "alarm", "fault", "state"')
        if self.type == "cap" and self.events is not None and "fault" in self.events:
            raise SettingError("events", 'a CAP destination carries alerts and their updates, not device faults: '
                               'use ["alarm", "state"], and a webhook for faults')
        if self.type == "siaga" and self.events is not None and "state" in self.events:
            raise SettingError("events", "a Siaga command center is where states come from: "
                               'use ["alarm", "fault"]')
        return self


class ForwardingTable(_Table):
    batch_max: AtLeastOne = 500
    # Every alarm may wait this long for company; a second or more is surely a unit mistake.
    batch_wait_ms: Annotated[int, Field(ge=0, le=1000)] = 2
    forward_batch: AtLeastOne = 500
    # A round at most this often while events keep coming: fewer, fuller requests; an alarm after
    # a quiet spell goes at once. A second or more is surely a unit mistake.
    linger_ms: Annotated[int, Field(ge=0, le=1000)] = 10
    retry_first_s: Positive = 1.0
    retry_max_s: Positive = 60.0
    breaker_threshold: AtLeastOne = 5

    @model_validator(mode="after")
    def _retry_cap(self) -> ForwardingTable:
        if self.retry_max_s < self.retry_first_s:
            raise SettingError("retry_max_s", f"must be at least retry_first_s ({self.retry_first_s:g})")
        return self


class SupervisionTable(_Table):
    missed_heartbeats: AtLeastOne = 3
    default_every_s: AtLeastOne = 60
    low_battery_mv: Annotated[int, Field(ge=0)] = 3400
    battery_hysteresis_mv: Annotated[int, Field(ge=0)] = 150


def _e164(value: str) -> str:
    if not E164.fullmatch(value):
        raise ValueError('write the number in international form, e.g. "+6281100000001"')
    return value


class SmsTable(_Table):
    port: Text
    baud: Annotated[int, Field(ge=1200, le=4_000_000)] = 115200
    number: Annotated[str, AfterValidator(_e164)] | None = None
    ack_min_interval_s: Annotated[float, Field(ge=0, le=86400, allow_inf_nan=False)] = 20.0
    ack_per_hour: Annotated[int, Field(ge=1, le=3600)] = 12
    send_per_minute: Annotated[int, Field(ge=1, le=600)] = 30
    flood_per_minute: Annotated[int, Field(ge=1, le=600)] = 10
    test_every_s: Annotated[int, Field(ge=0, le=30 * 86400)] = 86400
    command_timeout_s: Annotated[float, Field(gt=0, le=300, allow_inf_nan=False)] = 10.0
    multipart_timeout_s: Annotated[float, Field(gt=0, le=86400, allow_inf_nan=False)] = 600.0
    poll_s: Annotated[float, Field(ge=1, le=3600, allow_inf_nan=False)] = 30.0
    country_code: Annotated[str, Field(pattern=r"^[1-9][0-9]{0,2}$")] = "62"


def _public_key(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError('write the public key as `siaga firmware keygen` prints it: 64 lowercase hex digits')
    return value


class OtaTable(_Table):
    keys: Annotated[list[Annotated[str, AfterValidator(_public_key)]], Field(min_length=1, max_length=4)]
    chunk_bytes: Annotated[int, Field(ge=128, le=640)] = 512
    max_failed_percent: Annotated[int, Field(ge=0, le=100)] = 20
    get_rate_per_s: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = 20.0


class LoggingTable(_Table):
    format: Literal["text", "json"] = "text"


class GatewayFile(_Table):
    """The whole file: [gateway], [mqtt] and [api] are required, and somewhere to forward to:
    [commandcenter] (Siaga's reference command center) or [[destinations]], or both."""

    gateway: GatewayTable
    mqtt: MqttTable
    api: ApiTable
    commandcenter: CommandCenterTable | None = None
    # [[destinations]]: each checked by hand in _destinations, for messages that name the entry
    destinations: list[dict[str, Any]] = Field(default_factory=list)
    forwarding: ForwardingTable = Field(default_factory=ForwardingTable)
    supervision: SupervisionTable = Field(default_factory=SupervisionTable)
    logging: LoggingTable = Field(default_factory=LoggingTable)
    sms: SmsTable | None = None
    ota: OtaTable | None = None


# ---- from the checked file to GatewayConfig ---------------------------------------------------------

def _build(doc: dict[str, Any], base: Path) -> GatewayConfig:
    f = parse(GatewayFile, doc, example=EXAMPLE)
    gw, mq, api, cc, fwd, sup = f.gateway, f.mqtt, f.api, f.commandcenter, f.forwarding, f.supervision

    def secret(table: BaseModel, where: str, name: str) -> str:
        return load_secret(table.model_dump(exclude_none=True), name, base=base, where=where)

    try:
        mqtt = MqttSettings(
            host=mq.host, port=mq.port, username=mq.username, password=secret(mq, "mqtt", "password"),
            client_id=mq.client_id or f"siaga-gateway-{gw.id}" + (f"-{gw.instance}" if gw.instance else ""),
            keepalive_s=mq.keepalive_s, share_group=mq.share_group, **_tls(mq, base))
    except ValueError as exc:  # its own checks, should the schema above ever let a case through
        raise ConfigError(f"mqtt: {exc}") from None
    legacy = api.admin_token_file is not None or api.admin_token_env is not None
    if not legacy and not api.people:
        raise ConfigError(NOBODY)
    destinations = _destinations(f.destinations, base)
    if cc is None and not destinations:
        raise ConfigError("nowhere to forward alarms to: add [commandcenter] (Siaga's command center) or "
                          "[[destinations]] (docs/integration.md)")
    if cc is not None:
        if any(d.name == PRIMARY_NAME for d in destinations):
            raise ConfigError(f"destinations: the name {PRIMARY_NAME!r} is [commandcenter]'s; choose another")
        reference = Destination(PRIMARY_NAME, "siaga", DEFAULT_EVENTS["siaga"],
                                ReferenceSettings(cc.url, secret(cc, "commandcenter", "token")),
                                primary=not any(d.primary for d in destinations))
        destinations = [reference, *destinations]
    has_cc_token = api.cc_token_file is not None or api.cc_token_env is not None
    # Without a reference command center and without its token, nobody may report states at
    # /api/v1/cc/state: an unguessable token stands in (states come through inbound webhooks then).
    cc_callback = (secret(api, "api", "cc_token") if cc is not None or has_cc_token
                   else secrets.token_urlsafe(32))
    return GatewayConfig(
        gateway_id=gw.id,
        db_path=None if is_postgres(gw.db) else _path(base, gw.db),
        db_url=gw.db if is_postgres(gw.db) else None,
        instance=gw.instance,
        mqtt=mqtt,
        api_host=api.host, api_port=api.port,
        admin_token=secret(api, "api", "admin_token") if legacy else None,
        people=_people(api.people, base, reserved=LEGACY_ADMIN if legacy else None),
        cc_callback_token=cc_callback,
        cc_url=cc.url if cc is not None else "",
        cc_token=destinations[0].settings.token if cc is not None else "",
        destinations=tuple(destinations),
        batch_max=fwd.batch_max, batch_wait_ms=fwd.batch_wait_ms, forward_batch=fwd.forward_batch,
        forward_linger_ms=fwd.linger_ms,
        retry_first_s=fwd.retry_first_s, retry_max_s=fwd.retry_max_s, breaker_threshold=fwd.breaker_threshold,
        incident_window_s=gw.incident_window_s, flood_rate_per_s=gw.flood_rate_per_s, flood_burst=gw.flood_burst,
        supervision=SupervisionSettings(
            missed_heartbeats=sup.missed_heartbeats, default_every_s=sup.default_every_s,
            low_battery_mv=sup.low_battery_mv, battery_hysteresis_mv=sup.battery_hysteresis_mv),
        log_format=f.logging.format,
        drain_s=gw.drain_s,
        api_limits=ServerLimits(header_timeout_s=api.header_timeout_s, body_timeout_s=api.body_timeout_s,
                                max_connections=api.max_connections),
        api_throttle=ThrottleRules(per_address=api.throttle_per_address),
        forwarded_allow_ips=api.forwarded_allow_ips,
        report_every_s=cc.report_every_s if cc is not None else REPORT_EVERY_S,
        sms=None if f.sms is None else SmsSettings(
            port=f.sms.port, baud=f.sms.baud, number=f.sms.number or "", ack_min_interval_s=f.sms.ack_min_interval_s,
            ack_per_hour=f.sms.ack_per_hour, send_per_minute=f.sms.send_per_minute,
            flood_per_minute=f.sms.flood_per_minute, test_every_s=f.sms.test_every_s,
            command_timeout_s=f.sms.command_timeout_s, multipart_timeout_s=f.sms.multipart_timeout_s,
            poll_s=f.sms.poll_s, country_code=f.sms.country_code),
        ota=None if f.ota is None else OtaSettings(
            keys={ota_key_id(bytes.fromhex(k)): bytes.fromhex(k) for k in f.ota.keys},
            chunk_bytes=f.ota.chunk_bytes, max_failed_percent=f.ota.max_failed_percent,
            get_rate_per_s=f.ota.get_rate_per_s),
    )


def _destinations(entries: list[dict[str, Any]], base: Path) -> list[Destination]:
    """The [[destinations]] entries, each checked against its type; messages name the entry."""
    out: list[Destination] = []
    for i, entry in enumerate(entries):
        where = f"destinations[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table: write [[destinations]] on a line of its own, with name, "
                              "type and the type's settings below it")
        if any(k in entry for k in ("token", "secret", "key", "secrets", "inbound_secrets")):
            raise ConfigError(f"{where}: secrets are never written in the file; put each in a file of its own "
                              "and name it with token_file, secret_files, inbound_secret_files or key_file")
        try:
            t = parse(DestinationTable, entry, example=EXAMPLE)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        where = f"{where} ({t.name})"
        events = tuple(t.events) if t.events is not None else DEFAULT_EVENTS[t.type]
        try:
            settings = _destination_settings(t, entry, base, where)
        except ValueError as exc:  # the settings' own checks
            raise ConfigError(f"{where}: {exc}") from None
        out.append(Destination(t.name, t.type, events, settings, primary=t.primary))
    return out


def _read_files(names: list[str], base: Path, where: str) -> tuple[str, ...]:
    out = []
    for name in names:
        path = readable_file(_path(base, name), where)
        text = path.read_text(encoding="utf-8").strip()
        if not text:
            raise ConfigError(f"{where}: {path} is empty; write the secret into it")
        out.append(text)
    return tuple(out)


def _destination_settings(t: DestinationTable, entry: dict[str, Any], base: Path, where: str) -> Any:
    """The adapter's settings of one destination, secrets read from their files."""
    token = load_secret(entry, "token", base=base, where=where) if ("token_file" in entry or "token_env" in entry) \
        else None
    if t.type == "siaga":
        if token is None:
            raise ConfigError(f"{where}: token_file is missing: the reference command center needs its intake token")
        assert t.url is not None
        return ReferenceSettings(t.url, token, t.timeout_s)
    from . import destinations  # the adapters' modules import this one
    return destinations.settings_of(t, token, lambda names, key: _read_files(names, base, f"{where}.{key}"))


_PERSON_KEYS = ("name", "role", "token_file", "token_env")  # "token" inline is explained by check_keys


def _people(entries: list[dict[str, Any]], base: Path, reserved: str | None) -> dict[str, Person]:
    """token -> Person from the [[api.people]] entries; every message names the entry, never a token."""
    people: dict[str, Person] = {}
    names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"api.people[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table: write [[api.people]] on a line of its own, with name, "
                              "role and token_file below it")
        check_keys(entry, _PERSON_KEYS, where)
        name = entry.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"missing setting {where}.name: add it, e.g. name = \"budi.santoso\""
                              if name is None else wrong_type(f"{where}.name", "a string in double quotes", name))
        if not PERSON_NAME.fullmatch(name):
            # Not echoed: a token pasted into the wrong line must not end up in a log.
            raise ConfigError(f"{where}.name is not a name: use 1-64 of A-Z a-z 0-9 . _ @ -, starting with a "
                              "letter or digit, e.g. name = \"budi.santoso\"")
        if name in names or name == reserved:
            why = " (admin_token_file stands for a person of that name: remove one of them)" if name == reserved else ""
            raise ConfigError(f"{where}.name {name!r} is configured twice{why}")
        names.add(name)
        role = entry.get("role", Role.TECHNICIAN.value)
        if not isinstance(role, str) or role not in tuple(Role):
            raise ConfigError(f"{where}.role ({name}): use \"admin\" or \"technician\"")
        token = load_secret(entry, "token", base=base, where=where)
        if not _TOKEN.fullmatch(token):
            raise ConfigError(f"{where} ({name}): the token must be at least 16 visible ASCII characters without "
                              "spaces; make one with `python -c \"import secrets; print(secrets.token_urlsafe(32))\"`")
        if token in people:
            raise ConfigError(f"{where} ({name}): the same token as {people[token].name!r}; every person "
                              "needs a token of their own")
        people[token] = Person(name, Role(role))
    return people


_TLS_FIELDS = ("tls", "ca_file", "cert_file", "key_file", "server_hostname")


def _tls(mq: MqttTable, base: Path) -> dict[str, Any]:
    """The TLS keyword arguments of MqttSettings, with each file checked for reading."""
    files = {key: readable_file(_path(base, name), f"mqtt.{key}")
             for key in ("ca_file", "cert_file", "key_file") if (name := getattr(mq, key)) is not None}
    if not {f.name for f in dataclasses.fields(MqttSettings)}.issuperset(_TLS_FIELDS):
        # An MqttSettings from before the link learnt TLS: the loader keeps working with it, but a
        # link without TLS must not quietly connect in clear text to a broker meant for TLS.
        if mq.tls:
            raise ConfigError("mqtt.tls: this gateway's MQTT link cannot use TLS yet; remove tls = true "
                              "and connect to the broker's loopback listener")
        return {}
    return {"tls": mq.tls, "server_hostname": mq.server_hostname,
            **{key: files.get(key) for key in ("ca_file", "cert_file", "key_file")}}


def _path(base: Path, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else base / p

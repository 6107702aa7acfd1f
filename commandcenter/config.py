"""Configuration of the reference command center (format: docs/commandcenter.md)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from siaga.gateway.webhooks import SECRET_MAX_BYTES, SECRET_MIN_BYTES, parse_secret
from siaga.settings import ConfigError, check_keys, load_config, load_secret, readable_file, wrong_type
from siaga.web import ServerLimits, ThrottleRules, credential_id

from .engine import is_postgresql_url

# Tokens travel in an HTTP header, so they must be visible ASCII; the length floor keeps
# hand-typed passwords out (generate them with `secrets.token_urlsafe(32)`).
_TOKEN = re.compile(r"[\x21-\x7e]{16,}")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_OPERATOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_AGENCY_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class Role(StrEnum):
    """What a person at the command center may see and do (docs/commandcenter.md, "Roles")."""

    OPERATOR = "operator"  # sees every incident, acts on them
    SUPERVISOR = "supervisor"  # an operator who also sees figures, escalation settings, exports, audit
    AGENCY = "agency"  # an agency's viewer: only incidents dispatched to that agency, read-only


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    role: Role = Role.OPERATOR
    agency: str | None = None  # the agency id of an agency viewer; None for the other roles
    language: str | None = None  # the console's language until the person picks one: `id` or `en`


@dataclass(frozen=True, slots=True)
class Agency:
    """An agency incidents are dispatched to. `id` is what the API records; `name` is for people, in
    Bahasa Indonesia, and `name_en` the same in English (None: `name` serves both)."""

    id: str
    name: str
    name_en: str | None = None


# The agencies (OPD) an Indonesian 112 center dispatches to; a city lists its own with [[agencies]].
DEFAULT_AGENCIES: tuple[Agency, ...] = (
    Agency("fire", "Pemadam Kebakaran dan Penyelamatan (Damkar)", "Fire and rescue (Damkar)"),
    Agency("ambulance", "Dinas Kesehatan / ambulans", "Health / ambulance"),
    Agency("police", "Kepolisian (Polri)", "Police (Polri)"),
    Agency("disaster", "Badan Penanggulangan Bencana Daerah (BPBD)", "Disaster agency (BPBD)"),
    Agency("public-order", "Satuan Polisi Pamong Praja (Satpol PP)", "Public order (Satpol PP)"),
    Agency("sar", "Pencarian dan Pertolongan (Basarnas)", "Search and rescue (Basarnas)"),
    Agency("transport", "Dinas Perhubungan (Dishub)", "Transport agency (Dishub)"),
    Agency("electricity", "Listrik (PLN)", "Electricity (PLN)"),
    Agency("water", "Air minum (PDAM)", "Water utility (PDAM)"),
)


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """`[dispatch]`: a dispatch still `requested` `accept_within_s` after it was made escalates (once):
    the agency has not answered on screen, and the room should phone it. Two minutes by default: about
    what a call-taker waits before calling the agency's own control room."""

    accept_within_s: float = 120.0

    def __post_init__(self) -> None:
        if not 1 <= self.accept_within_s <= 86_400:
            raise ConfigError("dispatch.accept_within_s must be at least 1 and at most 86400 (one day)")


@dataclass(frozen=True, slots=True)
class EscalationSettings:
    """Unacknowledged incidents escalate once after `after_s` (docs/commandcenter.md, "Escalation")."""

    after_s: float = 60.0
    webhook_url: str | None = None
    webhook_token: str | None = field(default=None, repr=False)
    # Standard Webhooks signing keys (the bytes of `whsec_...` secrets). Empty: the escalation body is
    # POSTed as it is. Otherwise each delivery is an `alarm.escalated` message signed with every one of
    # them (the first is the current one; an old one stays listed while the receiver changes over).
    webhook_secrets: tuple[bytes, ...] = field(default=(), repr=False)
    # Second level (docs/commandcenter.md, "Second escalation"): an escalated incident still `new`
    # `second_after_s` after its first escalation escalates again, once, to the supervisors on duty
    # and to `second_webhook_url` (the first webhook when none is set). 0: no second level.
    second_after_s: float = 300.0
    second_webhook_url: str | None = None
    second_webhook_secrets: tuple[bytes, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.after_s <= 86_400:
            raise ConfigError("escalation.after_s must be more than 0 and at most 86400 (one day)")
        self._check_second_level()
        if self.webhook_url is not None and not self.webhook_url.startswith(("http://", "https://")):
            raise ConfigError(f"escalation.webhook_url {self.webhook_url!r} must start with http:// or https://")
        if self.webhook_token is not None:
            if self.webhook_url is None:
                raise ConfigError("escalation: a webhook token without webhook_url")
            _check_token("escalation webhook token", self.webhook_token)
        object.__setattr__(self, "webhook_secrets", tuple(self.webhook_secrets))
        if self.webhook_secrets:
            if self.webhook_url is None:
                raise ConfigError("escalation: a webhook secret without webhook_url (there is nothing to sign "
                                  "without a webhook); set webhook_url or leave the secret out")
            for key in self.webhook_secrets:
                # Never echo a key: only say what is wrong with it.
                if not isinstance(key, bytes) or not SECRET_MIN_BYTES <= len(key) <= SECRET_MAX_BYTES:
                    raise ConfigError(f"escalation: a webhook secret's key must be {SECRET_MIN_BYTES} to "
                                      f"{SECRET_MAX_BYTES} bytes")
            if len(set(self.webhook_secrets)) != len(self.webhook_secrets):
                raise ConfigError("escalation: the same webhook secret is configured twice")
            if self.webhook_token is not None and _key_of(self.webhook_token) in self.webhook_secrets:
                # The token travels in a header that proxies may log; the key must not travel at all.
                raise ConfigError("escalation: the webhook token must differ from the webhook secret")

    def _check_second_level(self) -> None:
        if not 0 <= self.second_after_s <= 86_400:
            raise ConfigError("escalation.second_after_s must be from 0 (no second level) to 86400 (one day)")
        url = self.second_webhook_url
        if url is not None and not url.startswith(("http://", "https://")):
            raise ConfigError(f"escalation.second_webhook_url {url!r} must start with http:// or https://")
        object.__setattr__(self, "second_webhook_secrets", tuple(self.second_webhook_secrets))
        if self.second_webhook_secrets and url is None:
            raise ConfigError("escalation: a second_webhook_secret without second_webhook_url; set the URL or "
                              "leave the secret out")
        for key in self.second_webhook_secrets:
            if not isinstance(key, bytes) or not SECRET_MIN_BYTES <= len(key) <= SECRET_MAX_BYTES:
                raise ConfigError(f"escalation: a second webhook secret's key must be {SECRET_MIN_BYTES} to "
                                  f"{SECRET_MAX_BYTES} bytes")

    @property
    def second_webhook(self) -> bool:
        """The second level sends a webhook event: to its own URL, or else to the first one."""
        return self.second_after_s > 0 and (self.second_webhook_url is not None or self.webhook_url is not None)


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """Personal details of incidents closed more than `days` ago are purged every `every_s` seconds by
    the process that runs the background loops (docs/retention.md). 0 days: kept forever."""

    days: int = 365
    every_s: float = 3600.0

    def __post_init__(self) -> None:
        if not 0 <= self.days <= 36_500:
            raise ConfigError("retention.days must be from 0 (keep forever) to 36500 (a hundred years)")
        if not 1 <= self.every_s <= 7 * 86_400:
            raise ConfigError("retention.every_s must be at least 1 and at most 604800 (a week)")


@dataclass(frozen=True, slots=True)
class PlumbingSettings:
    """Path supervision of the gateways (docs/commandcenter.md, "Plumbing"): a gateway whose last
    self-report is older than `silence_s` is a room-wide fault until it reports again. The default
    leaves room for two lost reports of a gateway reporting every 30 s, and with the supervisor's check
    (at most 5 s later) and the console's poll (every 5 s) the banner is up within 90 s of the last
    report, so within 90 s of the gateway stopping."""

    silence_s: float = 75.0

    def __post_init__(self) -> None:
        if not 1 <= self.silence_s <= 86_400:
            raise ConfigError("plumbing.silence_s must be at least 1 and at most 86400 (one day)")


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """The browser console: sessions, the map, and the time zone of per-day figures."""

    session_hours: float = 12.0  # one shift
    secure_cookie: bool = False  # set true behind an HTTPS reverse proxy
    timezone: str = "UTC"
    tile_url: str = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    tile_attribution: str = "&copy; OpenStreetMap contributors"
    map_center: tuple[float, float] = (-6.1754, 106.8272)  # Monas, Central Jakarta
    map_zoom: int = 12

    def __post_init__(self) -> None:
        if not 0 < self.session_hours <= 24 * 14:
            raise ConfigError("console.session_hours must be more than 0 and at most 336 (two weeks)")
        try:
            self.zone()
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"console.timezone {self.timezone!r} is not a known IANA zone (e.g. Asia/Jakarta)"
            ) from None
        tiles = urlsplit(self.tile_url)
        if (
            tiles.scheme not in ("http", "https")
            or not tiles.netloc
            or not all(p in self.tile_url for p in ("{z}", "{x}", "{y}"))
        ):
            raise ConfigError("console.tile_url must be an http(s) URL with {z}, {x} and {y}")
        lat, lon = self.map_center
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ConfigError("console.map_center must be [lat, lon] in degrees")
        if not 1 <= self.map_zoom <= 19:
            raise ConfigError("console.map_zoom must be 1-19")

    def zone(self) -> tzinfo:
        # UTC needs no time zone database (a minimal container may have none).
        return UTC if self.timezone == "UTC" else ZoneInfo(self.timezone)

    @property
    def tile_origin(self) -> str:
        """scheme://host[:port] of the tiles, for the page's Content-Security-Policy."""
        # "{s}" is Leaflet's subdomain placeholder (a., b., c.): allow any subdomain then.
        parts = urlsplit(self.tile_url.replace("{s}", "*"))
        return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True, slots=True)
class CallbackSettings:
    """How the command center retries state reports to the gateway (protocol §7)."""

    initial_backoff_s: float = 1.0
    max_backoff_s: float = 300.0
    request_timeout_s: float = 10.0
    batch_size: int = 20
    concurrency: int = 4
    # Safety net: look at the outbox at least this often even when nothing announced new rows.
    idle_poll_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ConfigError("callbacks: need 0 < initial_backoff_s <= max_backoff_s")
        if self.request_timeout_s <= 0 or self.idle_poll_s <= 0:
            raise ConfigError("callbacks: request_timeout_s and idle_poll_s must be positive")
        if self.batch_size < 1 or self.concurrency < 1:
            raise ConfigError("callbacks: batch_size and concurrency must be at least 1")


_CALLBACK_TYPES: dict[str, type | tuple[type, ...]] = {
    "initial_backoff_s": (int, float),
    "max_backoff_s": (int, float),
    "request_timeout_s": (int, float),
    "batch_size": int,
    "concurrency": int,
    "idle_poll_s": (int, float),
}


@dataclass(frozen=True, slots=True)
class CCConfig:
    host: str
    port: int
    db_path: Path  # the SQLite file; not used when db_url is set
    # repr=False: a config object that ends up in a log line or traceback must not carry secrets.
    intake_token: str = field(repr=False)
    operator_tokens: Mapping[str, str] = field(repr=False)  # token -> operator name
    gateway_url: str | None = None
    gateway_token: str | None = field(default=None, repr=False)
    callbacks: CallbackSettings = field(default_factory=CallbackSettings)
    log_level: str = "info"
    # name -> Operator; an operator not listed here has the role "operator" (so that code which
    # only knows names and tokens, like the demo, keeps working).
    operators: Mapping[str, Operator] = field(default_factory=dict)
    agencies: tuple[Agency, ...] = DEFAULT_AGENCIES
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    escalation: EscalationSettings = field(default_factory=EscalationSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    plumbing: PlumbingSettings = field(default_factory=PlumbingSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    limits: ServerLimits = field(default_factory=ServerLimits)
    throttle: ThrottleRules = field(default_factory=ThrottleRules)
    # Addresses of reverse proxies whose X-Forwarded-For names the client (uvicorn's setting).
    forwarded_allow_ips: str = "127.0.0.1"
    # A PostgreSQL database (postgresql://user@host:port/name) instead of the SQLite file: several
    # command center processes can then share it (docs/commandcenter.md, "Several processes").
    db_url: str | None = None
    db_password: str | None = field(default=None, repr=False)
    db_pool_size: int = 10
    # The gateway group: state reports go to the first of these that answers. `gateway_url` is the
    # first; give either (the other is filled in).
    gateway_urls: tuple[str, ...] = ()
    # Listen on `port` with SO_REUSEPORT, so that several processes on one machine share it; and on
    # `direct_port` too, a port of this process alone (health checks, reaching one process).
    reuse_port: bool = False
    direct_port: int | None = None
    # name -> credential_id of that person's token (set from operator_tokens)
    credentials: Mapping[str, str] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.log_level.lower() not in _LOG_LEVELS:
            raise ConfigError(f"server.log_level must be one of {', '.join(_LOG_LEVELS)}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"server.port is {self.port}: it must be from 1 to 65535")
        if self.direct_port is not None and not (1 <= self.direct_port <= 65535 and self.direct_port != self.port):
            raise ConfigError(f"server.direct_port is {self.direct_port}: it must be from 1 to 65535, not server.port")
        self._check_store()
        self._normalise_gateways()
        _check_token("intake token", self.intake_token)
        if not self.operator_tokens:
            raise ConfigError("configure at least one [[operators]] entry")
        names: set[str] = set()
        for token, name in self.operator_tokens.items():
            _check_token(f"token of operator {name!r}", token)
            if not _OPERATOR_NAME.fullmatch(name):
                raise ConfigError(f"operator name {name!r}: use 1-64 of A-Z a-z 0-9 . _ @ -")
            if name in names:
                raise ConfigError(f"operator name {name!r} is configured twice")
            names.add(name)
            if token == self.intake_token:
                raise ConfigError(f"operator {name!r} has the intake token; every token must differ")
        if (self.gateway_url is None) != (self.gateway_token is None):
            raise ConfigError("gateway: set both url (or urls) and token_file/token_env, or neither")
        for url in self.gateway_urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"gateway url {url!r} must start with http:// or https://")
        if self.gateway_token is not None:
            _check_token("gateway token", self.gateway_token)
        if self.escalation.webhook_token is not None and self.escalation.webhook_token in (
            self.intake_token,
            *self.operator_tokens,
        ):
            raise ConfigError("the escalation webhook token must differ from every other token")
        agency_ids = [a.id for a in self.agencies]
        if not agency_ids:
            raise ConfigError("configure at least one [[agencies]] entry (or leave them all out for the defaults)")
        for a in self.agencies:
            if not _AGENCY_ID.fullmatch(a.id):
                raise ConfigError(f"agency id {a.id!r}: use 1-64 of a-z 0-9 . _ - (it is recorded with dispatches)")
            if not 1 <= len(a.name) <= 100 or (a.name_en is not None and not 1 <= len(a.name_en) <= 100):
                raise ConfigError(f"agency {a.id!r}: name and name_en must be 1-100 characters")
        if len(set(agency_ids)) != len(agency_ids):
            raise ConfigError("an agency id is configured twice")
        unknown = sorted(set(self.operators) - names)
        if unknown:
            raise ConfigError(f"roles given for operators without a token: {', '.join(unknown)}")
        operators = {name: self.operators.get(name, Operator(name)) for name in sorted(names)}
        for op in operators.values():
            if op.role is Role.AGENCY and op.agency not in agency_ids:
                raise ConfigError(
                    f"operator {op.name!r} has role 'agency' and needs agency = one of {', '.join(agency_ids)}"
                )
            if op.role is not Role.AGENCY and op.agency is not None:
                raise ConfigError(f"operator {op.name!r}: 'agency' is only for role 'agency'")
        # Freeze the mappings too, so that the whole config really is immutable.
        object.__setattr__(self, "operator_tokens", MappingProxyType(dict(self.operator_tokens)))
        object.__setattr__(self, "operators", MappingProxyType(operators))
        object.__setattr__(
            self, "credentials", MappingProxyType({n: credential_id(t) for t, n in self.operator_tokens.items()})
        )

    def _check_store(self) -> None:
        if self.db_url is not None:
            if not is_postgresql_url(self.db_url):
                raise ConfigError(f"store.url {self.db_url!r} must be a postgresql:// URL")
            if urlsplit(self.db_url).password is not None:
                # Never echo the URL: it holds the password.
                raise ConfigError("store.url holds a password: put it in store.password_file or store.password_env")
        elif self.db_password is not None:
            raise ConfigError("store: a password without a PostgreSQL url")
        if not 1 <= self.db_pool_size <= 1000:
            raise ConfigError("store.pool_size must be from 1 to 1000")

    def _normalise_gateways(self) -> None:
        urls = tuple(u.rstrip("/") for u in self.gateway_urls)
        if not urls and self.gateway_url is not None:
            urls = (self.gateway_url.rstrip("/"),)
        if self.gateway_url is not None and urls and urls[0] != self.gateway_url.rstrip("/"):
            raise ConfigError("gateway: url and urls disagree; give one of them")
        if len(set(urls)) != len(urls):
            raise ConfigError("gateway.urls names an instance twice")
        object.__setattr__(self, "gateway_urls", urls)
        object.__setattr__(self, "gateway_url", urls[0] if urls else None)

    @property
    def database(self) -> str | Path:
        """What Store.open takes: the PostgreSQL URL, or the SQLite file."""
        return self.db_url if self.db_url is not None else self.db_path

    def operator(self, name: str) -> Operator:
        return self.operators[name]

    def credential(self, name: str) -> str | None:
        """What identifies a person's current token without revealing it: a session made with a token
        that has since been replaced (or a person who was removed) has another, or None."""
        return self.credentials.get(name)

    def agency_name(self, agency_id: str) -> str:
        return next((a.name for a in self.agencies if a.id == agency_id), agency_id)

    def answers_on_screen(self, agency_id: str) -> bool:
        """The agency has an account of its own: its dispatches wait for it to accept them."""
        return any(op.role is Role.AGENCY and op.agency == agency_id for op in self.operators.values())

    @classmethod
    def load(cls, path: str | Path) -> CCConfig:
        """Read a TOML config; relative paths in it are relative to the config file's folder."""
        return load_config(path, cls._from_document)

    @classmethod
    def _from_document(cls, doc: dict[str, Any], base: Path) -> CCConfig:
        check_keys(doc, _KEYS[""])
        server = _table(doc, "server")
        store = _table(doc, "store")
        intake = _table(doc, "intake")
        gateway = _table(doc, "gateway")
        callbacks = _table(doc, "callbacks")
        escalation = _table(doc, "escalation")
        console = _table(doc, "console")
        throttle = _table(doc, "throttle")
        plumbing = _table(doc, "plumbing")
        retention = _table(doc, "retention")

        operators = doc.get("operators", [])
        if not isinstance(operators, list):
            raise ConfigError("'operators' must be an array of tables: [[operators]]")
        operator_tokens: dict[str, str] = {}
        accounts: dict[str, Operator] = {}
        for i, op in enumerate(operators):
            if not isinstance(op, dict) or not isinstance(op.get("name"), str):
                raise ConfigError(f"operators[{i}]: needs a string 'name'")
            check_keys(op, _KEYS["operators"], f"operators[{i}]")
            where = f"operators[{i}] ({op['name']})"
            token = load_secret(op, "token", base=base, where=f"operators[{i}]")
            if token in operator_tokens:
                raise ConfigError(f"{where}: token is already used by another operator")
            operator_tokens[token] = op["name"]
            role = _get(op, "role", str, where, "operator")
            if role not in tuple(Role):
                raise ConfigError(f"{where}: role must be one of {', '.join(Role)}")
            language = _get(op, "language", str, where, None)
            if language not in (None, "id", "en"):
                raise ConfigError(f"{where}: language must be \"id\" (Bahasa Indonesia) or \"en\" (English)")
            accounts[op["name"]] = Operator(op["name"], Role(role), _get(op, "agency", str, where, None), language)

        agencies_raw = doc.get("agencies")
        agencies = DEFAULT_AGENCIES
        if agencies_raw is not None:
            if not isinstance(agencies_raw, list):
                raise ConfigError("'agencies' must be an array of tables: [[agencies]]")
            found: list[Agency] = []
            for i, a in enumerate(agencies_raw):
                if not isinstance(a, dict):
                    raise ConfigError(f"agencies[{i}] must be a table")
                check_keys(a, _KEYS["agencies"], f"agencies[{i}]")
                if not isinstance(a.get("id"), str) or not isinstance(a.get("name"), str):
                    raise ConfigError(f"agencies[{i}]: needs string 'id' and 'name'")
                found.append(Agency(a["id"], a["name"], _get(a, "name_en", str, f"agencies[{i}]", None)))
            agencies = tuple(found)

        webhook_url = _get(escalation, "webhook_url", str, "escalation", None)
        esc = EscalationSettings(
            after_s=float(_get(escalation, "after_s", (int, float), "escalation", 60.0)),
            webhook_url=webhook_url,
            webhook_token=(
                load_secret(escalation, "webhook_token", base=base, where="escalation")
                if any(k.startswith("webhook_token") for k in escalation)
                else None
            ),
            webhook_secrets=_webhook_secrets(escalation, base),
            second_after_s=float(_get(escalation, "second_after_s", (int, float), "escalation", 300.0)),
            second_webhook_url=_get(escalation, "second_webhook_url", str, "escalation", None),
            second_webhook_secrets=(
                (_webhook_key(load_secret(escalation, "second_webhook_secret", base=base, where="escalation"),
                              "escalation.second_webhook_secret"),)
                if any(k.startswith("second_webhook_secret") for k in escalation)
                else ()
            ),
        )
        center = _get(console, "map_center", list, "console", None)
        if center is not None and (len(center) != 2 or not all(
            isinstance(c, int | float) and not isinstance(c, bool) for c in center
        )):
            raise ConfigError("console.map_center must be [lat, lon]")
        defaults = ConsoleSettings()
        con = ConsoleSettings(
            session_hours=float(_get(console, "session_hours", (int, float), "console", defaults.session_hours)),
            secure_cookie=_get_bool(console, "secure_cookie", "console", defaults.secure_cookie),
            timezone=_get(console, "timezone", str, "console", defaults.timezone),
            tile_url=_get(console, "tile_url", str, "console", defaults.tile_url),
            tile_attribution=_get(console, "tile_attribution", str, "console", defaults.tile_attribution),
            map_center=(float(center[0]), float(center[1])) if center is not None else defaults.map_center,
            map_zoom=_get(console, "map_zoom", int, "console", defaults.map_zoom),
        )

        gateway_url = gateway.get("url")
        if gateway_url is not None and not isinstance(gateway_url, str):
            raise ConfigError("gateway.url must be a string")
        gateway_urls = _get(gateway, "urls", list, "gateway", [])
        if "urls" in gateway:
            if gateway_url is not None:
                raise ConfigError("gateway: set url (one instance) or urls (a group), not both")
            if not gateway_urls or not all(isinstance(u, str) for u in gateway_urls):
                raise ConfigError('gateway.urls must be a non-empty array of strings: ["http://a:8081", ...]')
        gateway_token = load_secret(gateway, "token", base=base, where="gateway") if gateway else None

        lim = ServerLimits()
        limits = ServerLimits(
            header_timeout_s=float(_get(server, "header_timeout_s", (int, float), "server", lim.header_timeout_s)),
            body_timeout_s=float(_get(server, "body_timeout_s", (int, float), "server", lim.body_timeout_s)),
            max_connections=_get(server, "max_connections", int, "server", lim.max_connections),
        )
        rules = ThrottleRules()
        rules = ThrottleRules(
            per_address=_get(throttle, "per_address", str, "throttle", rules.per_address),
            per_name=_get(throttle, "per_name", str, "throttle", rules.per_name),
            record_every_s=float(_get(throttle, "record_every_s", (int, float), "throttle", rules.record_every_s)),
        )
        db_url = _get(store, "url", str, "store", None)
        db_file = _get(store, "path", str, "store", None)
        if db_file is not None and db_url is not None:
            _both_databases()
        if db_file is not None and is_postgresql_url(db_file):  # a URL where the file goes: that database
            db_file, db_url = None, db_file
        db = Path(db_file or "siaga-cc.sqlite3")
        db_password = (
            load_secret(store, "password", base=base, where="store")
            if any(k.startswith("password") for k in store)
            else None
        )
        cb = CallbackSettings(**{k: _get(callbacks, k, _CALLBACK_TYPES[k], "callbacks", None) for k in callbacks})
        return cls(
            host=_get(server, "host", str, "server", "127.0.0.1"),
            port=_get(server, "port", int, "server", 8300),
            log_level=_get(server, "log_level", str, "server", "info"),
            db_path=db if db.is_absolute() else base / db,
            intake_token=load_secret(intake, "token", base=base, where="intake"),
            operator_tokens=operator_tokens,
            gateway_url=gateway_url.rstrip("/") if gateway_url else None,
            gateway_urls=tuple(gateway_urls),
            gateway_token=gateway_token,
            db_url=db_url,
            db_password=db_password,
            db_pool_size=_get(store, "pool_size", int, "store", 10),
            reuse_port=_get_bool(server, "reuse_port", "server", False),
            direct_port=_get(server, "direct_port", int, "server", None),
            callbacks=cb,
            operators=accounts,
            agencies=agencies,
            dispatch=DispatchSettings(accept_within_s=float(
                _get(_table(doc, "dispatch"), "accept_within_s", (int, float), "dispatch", 120.0))),
            escalation=esc,
            console=con,
            plumbing=PlumbingSettings(
                silence_s=float(_get(plumbing, "silence_s", (int, float), "plumbing", PlumbingSettings().silence_s))),
            retention=RetentionSettings(
                days=_get(retention, "days", int, "retention", RetentionSettings().days),
                every_s=float(_get(retention, "every_s", (int, float), "retention", RetentionSettings().every_s))),
            limits=limits,
            throttle=rules,
            forwarded_allow_ips=_get(server, "forwarded_allow_ips", str, "server", "127.0.0.1"),
        )


def _both_databases() -> NoReturn:
    raise ConfigError("store: path (a SQLite file) and url (PostgreSQL) both name a database; keep one")


def _webhook_secrets(escalation: dict[str, Any], base: Path) -> tuple[bytes, ...]:
    """The escalation webhook's signing keys: one secret from `webhook_secret_file` or
    `webhook_secret_env` (as every other secret), or several from `webhook_secret_files` (while a
    secret is replaced). Each is `whsec_` and the key in base64; a message names the key, never the
    secret."""
    if "webhook_secret_files" in escalation:
        if "webhook_secret_file" in escalation or "webhook_secret_env" in escalation:
            raise ConfigError("escalation: webhook_secret_files lists every secret; leave out webhook_secret_file "
                              "and webhook_secret_env")
        names = escalation["webhook_secret_files"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(wrong_type("escalation.webhook_secret_files",
                                         'a non-empty array of file names: ["secrets/a.whsec", ...]', names))
        keys = []
        for i, name in enumerate(names):
            where = f"escalation.webhook_secret_files[{i}]"
            path = Path(name) if Path(name).is_absolute() else base / name
            try:
                text = readable_file(path, where).read_text(encoding="utf-8").strip()
            except UnicodeDecodeError:
                raise ConfigError(f"{where}: {path} is not UTF-8 text") from None
            if not text:
                raise ConfigError(f"{where}: {path} is empty; write the secret into it")
            keys.append(_webhook_key(text, where))
        return tuple(keys)
    if not any(k.startswith("webhook_secret") for k in escalation):
        return ()
    text = load_secret(escalation, "webhook_secret", base=base, where="escalation")
    key = "webhook_secret_file" if "webhook_secret_file" in escalation else "webhook_secret_env"
    return (_webhook_key(text, f"escalation.{key}"),)


def _webhook_key(text: str, where: str) -> bytes:
    try:
        return parse_secret(text)
    except ValueError as exc:  # its messages describe the problem, not the secret
        raise ConfigError(f"{where}: {exc}") from None


def _key_of(text: str) -> bytes | None:
    try:
        return parse_secret(text)
    except ValueError:
        return None


def _check_token(what: str, token: str) -> None:
    if not _TOKEN.fullmatch(token):
        # Never echo the token itself.
        raise ConfigError(f"{what}: must be at least 16 visible ASCII characters without spaces")


# Every key the file may contain; anything else is a typo that would otherwise be silently ignored.
_SECRET_KEYS = ("token", "token_file", "token_env")  # "token" so that load_secret can explain
_KEYS: dict[str, tuple[str, ...]] = {
    "": ("server", "store", "intake", "operators", "gateway", "callbacks", "agencies", "escalation", "console",
         "throttle", "plumbing", "retention", "dispatch"),
    "plumbing": ("silence_s",),
    "retention": ("days", "every_s"),
    "server": ("host", "port", "log_level", "header_timeout_s", "body_timeout_s", "max_connections",
               "forwarded_allow_ips", "reuse_port", "direct_port"),
    "throttle": ("per_address", "per_name", "record_every_s"),
    "store": ("path", "url", "password", "password_file", "password_env", "pool_size"),
    "intake": _SECRET_KEYS,
    "operators": ("name", "role", "agency", "language", *_SECRET_KEYS),
    "gateway": ("url", "urls", *_SECRET_KEYS),
    "callbacks": tuple(_CALLBACK_TYPES),
    "agencies": ("id", "name", "name_en"),
    "dispatch": ("accept_within_s",),
    "escalation": ("after_s", "webhook_url", "webhook_token", "webhook_token_file", "webhook_token_env",
                   "webhook_secret", "webhook_secret_file", "webhook_secret_env", "webhook_secret_files",
                   "second_after_s", "second_webhook_url", "second_webhook_secret", "second_webhook_secret_file",
                   "second_webhook_secret_env"),
    "console": (
        "session_hours",
        "secure_cookie",
        "timezone",
        "tile_url",
        "tile_attribution",
        "map_center",
        "map_zoom",
    ),
}


# The plain tables, to point a key written under the wrong header to its own table.
_TABLES = {name: keys for name, keys in _KEYS.items() if name not in ("", "operators", "agencies")}


def _table(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a table: write [{name}] on a line of its own, with its settings below it")
    check_keys(value, _KEYS[name], name, _TABLES)
    return value


def _get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any) -> Any:
    if key not in table:
        return default
    value = table[key]
    # bool is an int in Python, but `port = true` is a mistake, not port 1.
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(wrong_type(f"{where}.{key}", _TYPE_NAMES.get(kind, "something else"), value))
    return value


_TYPE_NAMES: dict[type | tuple[type, ...], str] = {
    int: "an integer",
    (int, float): "a number",
    str: "a string in double quotes",
    list: "an array",
}


def _get_bool(table: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(wrong_type(f"{where}.{key}", "true or false", value))
    return value

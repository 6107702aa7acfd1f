"""Gateway configuration (TOML). Every setting is documented in gateway/gateway.example.toml.

The file is checked against a strict schema (`GatewayFile`): an unknown or misspelt key, a value of
the wrong type or out of range, a missing table or an unreadable secret is refused with one line
that names the setting and says what to write. The rest of the gateway sees only the frozen
`GatewayConfig` built from it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from siaga.settings import ConfigError, SettingError, load_config, load_secret, parse, readable_file

from .mqtt import MqttSettings
from .supervision import SupervisionSettings

GATEWAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # protocol.md §7: no colon
EXAMPLE = "gateway/gateway.example.toml"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    gateway_id: str
    db_path: Path
    mqtt: MqttSettings
    api_host: str
    api_port: int
    admin_token: str = field(repr=False)
    cc_callback_token: str = field(repr=False)  # what the command center presents when it reports a state
    cc_url: str = ""
    cc_token: str = field(default="", repr=False)  # what the gateway presents to the command center
    batch_max: int = 500            # messages per group commit
    batch_wait_ms: int = 2          # how long to gather a batch once a first message is in
    forward_batch: int = 500        # events per delivery round
    retry_first_s: float = 1.0
    retry_max_s: float = 60.0
    breaker_threshold: int = 5
    incident_window_s: int = 300
    flood_rate_per_s: float = 5.0
    flood_burst: int = 30
    supervision: SupervisionSettings = field(default_factory=SupervisionSettings)
    log_format: str = "text"
    drain_s: float = 10.0           # how long a shutdown waits for in-flight work

    def __post_init__(self) -> None:
        if not GATEWAY_ID.fullmatch(self.gateway_id):
            raise ConfigError(f"gateway id {self.gateway_id!r}: use 1-64 of A-Z a-z 0-9 . _ - (no colon)")
        if self.log_format not in ("text", "json"):
            raise ConfigError("logging.format must be 'text' or 'json'")

    @classmethod
    def load(cls, path: str | Path) -> GatewayConfig:
        """Read and check a TOML file; relative paths in it are relative to the file's folder."""
        return load_config(path, _build)


# ---- the schema of the file -------------------------------------------------------------------------

def _gateway_id(value: str) -> str:
    if not GATEWAY_ID.fullmatch(value):
        raise ValueError("use 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit (no colon), e.g. gw-jakpus-1")
    return value


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
    db: Text = "gateway.sqlite3"
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
    client_id: Text | None = None           # default: siaga-gateway-<gateway id>
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


class CommandCenterTable(_Table):
    url: Annotated[str, AfterValidator(_http_url), Field(examples=["http://127.0.0.1:8300"])]
    token_file: Text | None = None
    token_env: Text | None = None


class ForwardingTable(_Table):
    batch_max: AtLeastOne = 500
    # Every alarm may wait this long for company; a second or more is surely a unit mistake.
    batch_wait_ms: Annotated[int, Field(ge=0, le=1000)] = 2
    forward_batch: AtLeastOne = 500
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


class LoggingTable(_Table):
    format: Literal["text", "json"] = "text"


class GatewayFile(_Table):
    """The whole file: [gateway], [mqtt], [api] and [commandcenter] are required, the rest optional."""

    gateway: GatewayTable
    mqtt: MqttTable
    api: ApiTable
    commandcenter: CommandCenterTable
    forwarding: ForwardingTable = Field(default_factory=ForwardingTable)
    supervision: SupervisionTable = Field(default_factory=SupervisionTable)
    logging: LoggingTable = Field(default_factory=LoggingTable)


# ---- from the checked file to GatewayConfig ---------------------------------------------------------

def _build(doc: dict[str, Any], base: Path) -> GatewayConfig:
    f = parse(GatewayFile, doc, example=EXAMPLE)
    gw, mq, api, cc, fwd, sup = f.gateway, f.mqtt, f.api, f.commandcenter, f.forwarding, f.supervision

    def secret(table: BaseModel, where: str, name: str) -> str:
        return load_secret(table.model_dump(exclude_none=True), name, base=base, where=where)

    try:
        mqtt = MqttSettings(
            host=mq.host, port=mq.port, username=mq.username, password=secret(mq, "mqtt", "password"),
            client_id=mq.client_id or f"siaga-gateway-{gw.id}", keepalive_s=mq.keepalive_s, **_tls(mq, base))
    except ValueError as exc:  # its own checks, should the schema above ever let a case through
        raise ConfigError(f"mqtt: {exc}") from None
    return GatewayConfig(
        gateway_id=gw.id,
        db_path=_path(base, gw.db),
        mqtt=mqtt,
        api_host=api.host, api_port=api.port,
        admin_token=secret(api, "api", "admin_token"),
        cc_callback_token=secret(api, "api", "cc_token"),
        cc_url=cc.url, cc_token=secret(cc, "commandcenter", "token"),
        batch_max=fwd.batch_max, batch_wait_ms=fwd.batch_wait_ms, forward_batch=fwd.forward_batch,
        retry_first_s=fwd.retry_first_s, retry_max_s=fwd.retry_max_s, breaker_threshold=fwd.breaker_threshold,
        incident_window_s=gw.incident_window_s, flood_rate_per_s=gw.flood_rate_per_s, flood_burst=gw.flood_burst,
        supervision=SupervisionSettings(
            missed_heartbeats=sup.missed_heartbeats, default_every_s=sup.default_every_s,
            low_battery_mv=sup.low_battery_mv, battery_hysteresis_mv=sup.battery_hysteresis_mv),
        log_format=f.logging.format,
        drain_s=gw.drain_s,
    )


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

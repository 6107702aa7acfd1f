"""Gateway configuration (TOML). Every setting is documented in gateway/gateway.example.toml."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from siaga.settings import ConfigError, load_secret, load_toml

from .mqtt import MqttSettings
from .supervision import SupervisionSettings

GATEWAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # protocol.md §7: no colon


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
        path = Path(path)
        raw = load_toml(path)
        base = path.parent
        try:
            gw, mq, api, cc = raw["gateway"], raw["mqtt"], raw["api"], raw["commandcenter"]
        except KeyError as exc:
            raise ConfigError(f"{path}: missing section [{exc.args[0]}]") from None
        fwd: dict[str, Any] = raw.get("forwarding", {})
        sup: dict[str, Any] = raw.get("supervision", {})
        gid = str(gw.get("id", "gw-1"))
        db = Path(gw.get("db", "gateway.sqlite3"))
        return cls(
            gateway_id=gid,
            db_path=db if db.is_absolute() else base / db,
            mqtt=MqttSettings(
                host=mq.get("host", "127.0.0.1"), port=int(mq.get("port", 1883)),
                username=mq.get("username", "siaga-gateway"), password=load_secret(mq, "password", base=base),
                client_id=mq.get("client_id", f"siaga-gateway-{gid}"), keepalive_s=int(mq.get("keepalive_s", 30))),
            api_host=api.get("host", "127.0.0.1"), api_port=int(api.get("port", 8081)),
            admin_token=load_secret(api, "admin_token", base=base),
            cc_callback_token=load_secret(api, "cc_token", base=base),
            cc_url=cc["url"], cc_token=load_secret(cc, "token", base=base),
            batch_max=int(fwd.get("batch_max", 500)), batch_wait_ms=int(fwd.get("batch_wait_ms", 2)),
            forward_batch=int(fwd.get("forward_batch", 500)),
            retry_first_s=float(fwd.get("retry_first_s", 1.0)), retry_max_s=float(fwd.get("retry_max_s", 60.0)),
            breaker_threshold=int(fwd.get("breaker_threshold", 5)),
            incident_window_s=int(gw.get("incident_window_s", 300)),
            flood_rate_per_s=float(gw.get("flood_rate_per_s", 5.0)), flood_burst=int(gw.get("flood_burst", 30)),
            supervision=SupervisionSettings(
                missed_heartbeats=int(sup.get("missed_heartbeats", 3)),
                default_every_s=int(sup.get("default_every_s", 60)),
                low_battery_mv=int(sup.get("low_battery_mv", 3400)),
                battery_hysteresis_mv=int(sup.get("battery_hysteresis_mv", 150))),
            log_format=str(raw.get("logging", {}).get("format", "text")),
            drain_s=float(gw.get("drain_s", 10.0)),
        )

"""Gateway configuration (TOML). Documented with an example in gateway/gateway.example.toml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from siaga.settings import ConfigError, load_secret, load_toml

from .mqtt import MqttSettings


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    gateway_id: str
    db_path: Path
    mqtt: MqttSettings
    api_host: str
    api_port: int
    admin_token: str
    cc_callback_token: str       # what the command center presents when it reports a state
    cc_url: str
    cc_token: str                # what the gateway presents to the command center
    batch_max: int = 500         # messages per group commit
    batch_wait_ms: int = 2       # how long to gather a batch once a first message is in
    forward_concurrency: int = 16
    retry_first_s: float = 1.0
    retry_max_s: float = 60.0

    def __repr__(self) -> str:  # never print a token or password, e.g. in a traceback
        return f"GatewayConfig(id={self.gateway_id!r}, db={str(self.db_path)!r})"

    @classmethod
    def load(cls, path: str | Path) -> GatewayConfig:
        path = Path(path)
        raw = load_toml(path)
        base = path.parent
        try:
            gw, mq, api, cc = raw["gateway"], raw["mqtt"], raw["api"], raw["commandcenter"]
        except KeyError as exc:
            raise ConfigError(f"{path}: missing section [{exc.args[0]}]") from None
        gid = str(gw.get("id", "gw-1"))
        db = Path(gw.get("db", "gateway.sqlite3"))
        fwd = raw.get("forwarding", {})
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
            forward_concurrency=int(fwd.get("concurrency", 16)),
            retry_first_s=float(fwd.get("retry_first_s", 1.0)), retry_max_s=float(fwd.get("retry_max_s", 60.0)),
        )

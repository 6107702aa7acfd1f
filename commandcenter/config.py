"""Configuration of the reference command center (format: docs/commandcenter.md)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from siaga.settings import ConfigError, load_secret, load_toml

# Tokens travel in an HTTP header, so they must be visible ASCII; the length floor keeps
# hand-typed passwords out (generate them with `secrets.token_urlsafe(32)`).
_TOKEN = re.compile(r"[\x21-\x7e]{16,}")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_OPERATOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


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
    db_path: Path
    # repr=False: a config object that ends up in a log line or traceback must not carry secrets.
    intake_token: str = field(repr=False)
    operator_tokens: Mapping[str, str] = field(repr=False)  # token -> operator name
    gateway_url: str | None = None
    gateway_token: str | None = field(default=None, repr=False)
    callbacks: CallbackSettings = field(default_factory=CallbackSettings)
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.log_level.lower() not in _LOG_LEVELS:
            raise ConfigError(f"server.log_level must be one of {', '.join(_LOG_LEVELS)}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"server.port {self.port} is not a TCP port")
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
            raise ConfigError("gateway: set both url and token_file/token_env, or neither")
        if self.gateway_url is not None and not self.gateway_url.startswith(("http://", "https://")):
            raise ConfigError(f"gateway.url {self.gateway_url!r} must start with http:// or https://")
        if self.gateway_token is not None:
            _check_token("gateway token", self.gateway_token)
        # Freeze the mapping too, so that the whole config really is immutable.
        object.__setattr__(self, "operator_tokens", MappingProxyType(dict(self.operator_tokens)))

    @classmethod
    def load(cls, path: str | Path) -> CCConfig:
        """Read a TOML config; relative paths in it are relative to the config file's folder."""
        path = Path(path)
        base = path.resolve().parent
        doc = load_toml(path)
        _known(doc, _KEYS[""], "the config file")
        server = _table(doc, "server")
        store = _table(doc, "store")
        intake = _table(doc, "intake")
        gateway = _table(doc, "gateway")
        callbacks = _table(doc, "callbacks")

        operators = doc.get("operators", [])
        if not isinstance(operators, list):
            raise ConfigError("'operators' must be an array of tables: [[operators]]")
        operator_tokens: dict[str, str] = {}
        for i, op in enumerate(operators):
            if not isinstance(op, dict) or not isinstance(op.get("name"), str):
                raise ConfigError(f"operators[{i}]: needs a string 'name'")
            _known(op, _KEYS["operators"], f"operators[{i}]")
            token = _secret(op, "token", base, f"operators[{i}] ({op['name']})")
            if token in operator_tokens:
                raise ConfigError(f"operators[{i}] ({op['name']}): token is already used by another operator")
            operator_tokens[token] = op["name"]

        gateway_url = gateway.get("url")
        if gateway_url is not None and not isinstance(gateway_url, str):
            raise ConfigError("gateway.url must be a string")
        gateway_token = _secret(gateway, "token", base, "gateway") if gateway else None

        db = Path(_get(store, "path", str, "store", "siaga-cc.sqlite3"))
        cb = CallbackSettings(**{k: _get(callbacks, k, _CALLBACK_TYPES[k], "callbacks", None) for k in callbacks})
        return cls(
            host=_get(server, "host", str, "server", "127.0.0.1"),
            port=_get(server, "port", int, "server", 8300),
            log_level=_get(server, "log_level", str, "server", "info"),
            db_path=db if db.is_absolute() else base / db,
            intake_token=_secret(intake, "token", base, "intake"),
            operator_tokens=operator_tokens,
            gateway_url=gateway_url.rstrip("/") if gateway_url else None,
            gateway_token=gateway_token,
            callbacks=cb,
        )


def _check_token(what: str, token: str) -> None:
    if not _TOKEN.fullmatch(token):
        # Never echo the token itself.
        raise ConfigError(f"{what}: must be at least 16 visible ASCII characters without spaces")


# Every key the file may contain; anything else is a typo that would otherwise be silently ignored.
_SECRET_KEYS = ("token", "token_file", "token_env")  # "token" so that load_secret can explain
_KEYS: dict[str, tuple[str, ...]] = {
    "": ("server", "store", "intake", "operators", "gateway", "callbacks"),
    "server": ("host", "port", "log_level"),
    "store": ("path",),
    "intake": _SECRET_KEYS,
    "operators": ("name", *_SECRET_KEYS),
    "gateway": ("url", *_SECRET_KEYS),
    "callbacks": tuple(_CALLBACK_TYPES),
}


def _known(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")


def _table(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    _known(value, _KEYS[name], f"[{name}]")
    return value


def _get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any) -> Any:
    if key not in table:
        return default
    value = table[key]
    # bool is an int in Python, but `port = true` is a mistake, not port 1.
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{where}.{key} has the wrong type ({type(value).__name__})")
    return value


def _secret(section: dict[str, Any], name: str, base: Path, where: str) -> str:
    try:
        return load_secret(section, name, base=base)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None

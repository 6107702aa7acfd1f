"""The provisioning config file (TOML): which gateway, which broker the buttons use, where the
broker's logins live, the support contact on the labels, Wi-Fi defaults. Secrets (the admin token,
the Wi-Fi password) come from a file or an environment variable, never inline
(siaga.settings.load_secret). Relative paths are relative to the config file.

The token for the gateway's admin API is the person's own when one is given (`--token-file`, else
$SIAGA_TOKEN), so that the gateway's fleet change log names them; else the config's shared
`[gateway] admin_token_file` / `admin_token_env`, which is then optional (`load_token`).

See docs/technician.md for an annotated example.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from siaga.settings import ConfigError, load_secret, load_toml

from . import validate
from .errors import UsageError
from .text import t

DEFAULT_SELFTEST_TIMEOUT_S = 60.0
DEFAULT_WIFI_TIMEOUT_S = 20.0

# The environment variable with the person's own token ([[api.people]] in the gateway's config).
TOKEN_ENV = "SIAGA_TOKEN"
# What the gateway accepts as a person's token (gateway/config.py): at least 16 visible ASCII characters.
_TOKEN = re.compile(r"[\x21-\x7e]{16,}")


@dataclass(frozen=True, slots=True)
class Wifi:
    ssid: str
    password: str = field(repr=False)
    power_save: bool = False


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """The local Mosquitto's password file and how to make it re-read it."""

    password_file: Path
    pid_file: Path | None
    reload_command: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class DeviceDefaults:
    broker_host: str
    broker_port: int
    ca_file: Path | None
    server_hostname: str | None
    id_prefix: str | None
    kind: str
    types: tuple[str, ...]
    heartbeat_s: int
    button: dict[str, int]
    extra: dict[str, Any]  # buzzer, silent, gps ... passed to the device config as they are
    # The SMS path of buttons with a GSM modem (docs/technician.md, "A button with a GSM modem"): the
    # gateway modem's number, how long an alarm waits for its MQTT ack before it is also sent by
    # SMS, and how often the button sends its backup-path test SMS (0: never).
    sms_gateway: str | None = None
    sms_fallback_s: int = 30
    sms_test_every_s: int = 86400


@dataclass(frozen=True, slots=True)
class TokenSource:
    """Where the token for the gateway's admin API came from, for the messages; never the token."""

    personal: bool        # the person's own ([[api.people]]), not the config's shared admin token
    where: str            # "--token-file <path>", "$SIAGA_TOKEN", "[gateway] admin_token_file of <config>"
    file: Path | None = None  # the file it was read from, if any


@dataclass(frozen=True, slots=True)
class Token:
    value: str = field(repr=False)
    source: TokenSource


@dataclass(frozen=True, slots=True)
class Settings:
    path: Path
    gateway_url: str
    admin_token: str = field(repr=False)  # the token for the admin API: the person's own or the shared one
    token_from: TokenSource
    devices: DeviceDefaults
    broker: BrokerFiles | None
    wifi: Wifi | None
    wifi_timeout_s: float
    support: str
    organisation: str
    state_dir: Path
    baud: int
    selftest_timeout_s: float
    use_mpy: bool
    firmware_dir: Path | None


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise UsageError(t("config.not_table", name=name))
    return value


def _path(base: Path, value: Any) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else base / p


def default_state_dir() -> Path:
    root = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(root) / "siaga" / "provisioning"


def _wrap(exc: ConfigError, path: Path) -> UsageError:
    return UsageError(t("config.problem", path=path, problem=exc))


def personal_token(token_file: str | Path | None = None) -> Token | None:
    """The person's own token: from `token_file` if given, else from $SIAGA_TOKEN if it is set and
    not empty, else None. Something that is not a token is a UsageError that does not repeat it."""
    if token_file:
        p = Path(token_file).expanduser()
        try:
            value = p.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(t("token.unreadable", path=p, error=exc.strerror), t("token.hint")) from None
        except UnicodeDecodeError:
            raise UsageError(t("token.not_text", path=p), t("token.hint")) from None
        source = TokenSource(personal=True, where=f"--token-file {p}", file=p)
        what = str(p)
    else:
        value = os.environ.get(TOKEN_ENV, "").strip()
        if not value:
            return None
        what = f"${TOKEN_ENV}"
        source = TokenSource(personal=True, where=what)
    if not _TOKEN.fullmatch(value):
        raise UsageError(t("token.not_a_token", what=what), t("token.hint"))
    return Token(value, source)


def load_token(gw: Mapping[str, Any], path: Path, base: Path, token_file: str | Path | None = None) -> Token:
    """The token for the gateway's admin API: the one in `token_file`, else in $SIAGA_TOKEN, else the
    one [gateway] admin_token_file / admin_token_env names (`gw`: that table of config `path`)."""
    if "admin_token" in gw:  # a secret written into the file is a mistake even when another is used
        raise UsageError(t("config.problem", path=path, problem=t("token.inline")), t("token.inline.hint"))
    own = personal_token(token_file)
    if own is not None:
        return own
    if "admin_token_file" not in gw and "admin_token_env" not in gw:
        raise UsageError(t("token.none", env=TOKEN_ENV, path=path), t("token.none.hint", env=TOKEN_ENV))
    try:
        value = load_secret(gw, "admin_token", base=base)
    except ConfigError as exc:
        raise UsageError(t("config.problem", path=path, problem=f"[gateway] {exc}"),
                         t("token.none.hint", env=TOKEN_ENV)) from None
    key = "admin_token_file" if "admin_token_file" in gw else "admin_token_env"
    return Token(value, TokenSource(personal=False, where=f"[gateway] {key} of {path}"))


def load(path: str | Path, *, token_file: str | Path | None = None) -> Settings:
    """The provisioning config `path`, with the person's own token (`token_file`, else $SIAGA_TOKEN)
    for the gateway's admin API when one is given, else the config's shared admin token."""
    p = Path(path)
    try:
        data = load_toml(p)
    except ConfigError as exc:
        raise UsageError(str(exc), t("config.unreadable.hint")) from None
    base = p.resolve().parent
    gw = _table(data, "gateway")
    dev = _table(data, "devices")
    wifi_t = _table(data, "wifi")
    broker_t = _table(data, "broker")
    label = _table(data, "label")
    prov = _table(data, "provisioning")
    token = load_token(gw, p, base, token_file)
    if "url" not in gw:
        raise UsageError(t("config.missing", path=p, key="[gateway] url"), t("config.url.hint"))
    if "broker_host" not in dev:
        raise UsageError(t("config.missing", path=p, key="[devices] broker_host"), t("config.broker_host.hint"))
    ca = dev.get("ca_file")
    button = {k: int(dev[k]) for k in ("long_ms", "cancel_ms", "debounce_ms") if k in dev}
    extra = {k: dev[k] for k in ("buzzer", "silent", "gps", "ntp", "battery_low_mv") if k in dev}
    devices = DeviceDefaults(
        broker_host=validate.host(dev["broker_host"]),
        broker_port=validate.port(dev.get("broker_port", 8883 if ca else 1883), "broker port"),
        ca_file=_path(base, ca) if ca else None,
        server_hostname=dev.get("server_hostname"),
        id_prefix=validate.id_prefix(dev["id_prefix"]) if dev.get("id_prefix") else None,
        kind=validate.kind(dev.get("kind", "general")),
        types=validate.type_buttons(dev.get("types", [])),
        heartbeat_s=int(dev.get("heartbeat_s", 60)),
        button=button,
        extra=extra,
        sms_gateway=validate.phone(dev["sms_gateway"], "SMS gateway") if dev.get("sms_gateway") else None,
        sms_fallback_s=int(dev.get("sms_fallback_s", 30)),
        sms_test_every_s=int(dev.get("sms_test_every_s", 86400)),
    )
    broker = None
    if broker_t:
        if "password_file" not in broker_t:
            raise UsageError(t("config.missing", path=p, key="[broker] password_file"))
        command = broker_t.get("reload_command")
        if command is not None and (not isinstance(command, list) or not all(isinstance(c, str) for c in command)):
            raise UsageError(t("config.problem", path=p, problem=t("config.reload_command")),
                             t("config.reload_command.hint"))
        pid_file = broker_t.get("pid_file")
        if pid_file is None and command is None:
            raise UsageError(t("config.problem", path=p, problem=t("config.reload_missing")),
                             t("config.reload_missing.hint"))
        broker = BrokerFiles(_path(base, broker_t["password_file"]), _path(base, pid_file) if pid_file else None,
                             tuple(command) if command else None)
    wifi = None
    if wifi_t.get("ssid"):
        try:
            password = load_secret(wifi_t, "password", base=base) if (
                "password_file" in wifi_t or "password_env" in wifi_t or "password" in wifi_t) else ""
        except ConfigError as exc:
            raise UsageError(t("config.problem", path=p, problem=f"[wifi] {exc}")) from None
        wifi = Wifi(validate.wifi_ssid(wifi_t["ssid"]), validate.wifi_password(password),
                    bool(wifi_t.get("power_save", False)))
    return Settings(
        path=p,
        gateway_url=validate.url(gw["url"]),
        admin_token=token.value,
        token_from=token.source,
        devices=devices,
        broker=broker,
        wifi=wifi,
        wifi_timeout_s=float(wifi_t.get("join_timeout_s", DEFAULT_WIFI_TIMEOUT_S)),
        support=validate.text_field(label.get("support", ""), "support contact", max_bytes=120, required=True,
                                    example=t("config.support_example")),
        organisation=validate.text_field(label.get("organisation", ""), "organisation", max_bytes=80,
                                         required=False, example=t("config.organisation_example")),
        state_dir=_path(base, prov["state_dir"]) if "state_dir" in prov else default_state_dir(),
        baud=int(prov.get("baud", 115200)),
        selftest_timeout_s=float(prov.get("selftest_timeout_s", DEFAULT_SELFTEST_TIMEOUT_S)),
        use_mpy=bool(prov.get("mpy", True)),
        firmware_dir=_path(base, prov["firmware_dir"]) if "firmware_dir" in prov else None,
    )

"""The provisioning config file (TOML): which gateway, which broker the buttons use, where the
broker's logins live, the support contact on the labels, Wi-Fi defaults. Secrets (the admin token,
the Wi-Fi password) come from a file or an environment variable, never inline
(siaga.settings.load_secret). Relative paths are relative to the config file.

See docs/technician.md for an annotated example.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from siaga.settings import ConfigError, load_secret, load_toml

from . import validate
from .errors import UsageError

DEFAULT_SELFTEST_TIMEOUT_S = 60.0
DEFAULT_WIFI_TIMEOUT_S = 20.0


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


@dataclass(frozen=True, slots=True)
class Settings:
    path: Path
    gateway_url: str
    admin_token: str = field(repr=False)
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
        raise UsageError(f"[{name}] in the provisioning config must be a table")
    return value


def _path(base: Path, value: Any) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else base / p


def default_state_dir() -> Path:
    root = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(root) / "siaga" / "provisioning"


def _wrap(exc: ConfigError, path: Path) -> UsageError:
    return UsageError(f"provisioning config {path}: {exc}")


def load(path: str | Path) -> Settings:
    p = Path(path)
    try:
        data = load_toml(p)
    except ConfigError as exc:
        raise UsageError(str(exc), "give the provisioning config with --config (docs/technician.md has an "
                                   "example)") from None
    base = p.resolve().parent
    gw = _table(data, "gateway")
    dev = _table(data, "devices")
    wifi_t = _table(data, "wifi")
    broker_t = _table(data, "broker")
    label = _table(data, "label")
    prov = _table(data, "provisioning")
    try:
        token = load_secret(gw, "admin_token", base=base)
    except ConfigError as exc:
        raise UsageError(f"provisioning config {p}: [gateway] {exc}") from None
    if "url" not in gw:
        raise UsageError(f"provisioning config {p}: [gateway] url is missing", "e.g. url = \"https://gw.example\"")
    if "broker_host" not in dev:
        raise UsageError(f"provisioning config {p}: [devices] broker_host is missing",
                         "the broker's host name as the buttons reach it, e.g. broker_host = \"mqtt.example\"")
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
    )
    broker = None
    if broker_t:
        if "password_file" not in broker_t:
            raise UsageError(f"provisioning config {p}: [broker] password_file is missing")
        command = broker_t.get("reload_command")
        if command is not None and (not isinstance(command, list) or not all(isinstance(c, str) for c in command)):
            raise UsageError(f"provisioning config {p}: [broker] reload_command must be a list of strings",
                             'e.g. reload_command = ["systemctl", "reload", "mosquitto"]')
        pid_file = broker_t.get("pid_file")
        if pid_file is None and command is None:
            raise UsageError(f"provisioning config {p}: [broker] needs pid_file or reload_command",
                             "Mosquitto reads its password file only at start and on SIGHUP")
        broker = BrokerFiles(_path(base, broker_t["password_file"]), _path(base, pid_file) if pid_file else None,
                             tuple(command) if command else None)
    wifi = None
    if wifi_t.get("ssid"):
        try:
            password = load_secret(wifi_t, "password", base=base) if (
                "password_file" in wifi_t or "password_env" in wifi_t or "password" in wifi_t) else ""
        except ConfigError as exc:
            raise UsageError(f"provisioning config {p}: [wifi] {exc}") from None
        wifi = Wifi(validate.wifi_ssid(wifi_t["ssid"]), validate.wifi_password(password),
                    bool(wifi_t.get("power_save", False)))
    return Settings(
        path=p,
        gateway_url=validate.url(gw["url"]),
        admin_token=token,
        devices=devices,
        broker=broker,
        wifi=wifi,
        wifi_timeout_s=float(wifi_t.get("join_timeout_s", DEFAULT_WIFI_TIMEOUT_S)),
        support=validate.text_field(label.get("support", ""), "support contact", max_bytes=120, required=True,
                                    example="Call 112 or WhatsApp +62 811 0000 112"),
        organisation=validate.text_field(label.get("organisation", ""), "organisation", max_bytes=80,
                                         required=False, example="Command Center 112 Jakarta"),
        state_dir=_path(base, prov["state_dir"]) if "state_dir" in prov else default_state_dir(),
        baud=int(prov.get("baud", 115200)),
        selftest_timeout_s=float(prov.get("selftest_timeout_s", DEFAULT_SELFTEST_TIMEOUT_S)),
        use_mpy=bool(prov.get("mpy", True)),
        firmware_dir=_path(base, prov["firmware_dir"]) if "firmware_dir" in prov else None,
    )

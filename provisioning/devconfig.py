"""The device config file (config.json on the board), built from the identity, the location and
the provisioning defaults, and checked with the firmware's own parser before it is written."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError
from .firmware import CA_PATH
from .settings import DeviceDefaults, Wifi
from .text import t
from .validate import Location

SECRET_BYTES = 32  # docs/protocol.md §1: a 256-bit HMAC key


@dataclass(frozen=True, slots=True)
class Identity:
    device_id: str
    secret_hex: str = field(repr=False)
    mqtt_password: str = field(repr=False)

    @classmethod
    def new(cls, device_id: str) -> Identity:
        return cls(device_id, secrets.token_hex(SECRET_BYTES), secrets.token_urlsafe(24))


@dataclass(frozen=True, slots=True)
class DeviceOptions:
    kind: str
    types: tuple[str, ...]
    site: str | None = None
    notes: str = ""
    phone: str | None = None        # the button's SIM number (E.164), registered at the gateway
    sms_gateway: str | None = None  # the gateway modem's number: given, the button has the SMS path


def build(identity: Identity, location: Location, defaults: DeviceDefaults, options: DeviceOptions,
          wifi: Wifi | None, *, ca_path: str = CA_PATH, board: str | None = None) -> dict[str, Any]:
    """`ca_path` is where the board's firmware opens the CA: absolute on a board ("/ca.crt"), since
    the working directory of code on a board is not guaranteed; relative on the unix stand-in.
    `board` (a firmware profile name) adds that board's limits to the check."""
    mqtt: dict[str, Any] = {"host": defaults.broker_host, "port": defaults.broker_port,
                            "password": identity.mqtt_password}
    if defaults.ca_file is not None:
        mqtt["tls"] = {"ca": ca_path, "server_hostname": defaults.server_hostname or defaults.broker_host}
    cfg: dict[str, Any] = {
        "dev": identity.device_id,
        "secret": identity.secret_hex,
        "mqtt": mqtt,
        "loc": location.device_loc(),
        "kind": options.kind,
        "types": list(options.types),
        "heartbeat_s": defaults.heartbeat_s,
    }
    if defaults.button:
        cfg["button"] = dict(defaults.button)
    if wifi is not None:
        cfg["wifi"] = {"ssid": wifi.ssid, "password": wifi.password, "power_save": wifi.power_save}
    if options.sms_gateway is not None:
        cfg["sms"] = {"gateway": options.sms_gateway, "fallback_s": defaults.sms_fallback_s,
                      "test_every_s": defaults.sms_test_every_s}
    cfg.update(defaults.extra)
    check(cfg, board)
    return cfg


def check(cfg: dict[str, Any], board: str | None = None) -> None:
    """Run the firmware's own config parser (the same code the board runs) over the config, with
    the limits of `board` when it is known."""
    from siagafw.config import load_config

    try:
        load_config(render(cfg).decode("utf-8"), board)
    except ValueError as exc:
        raise UsageError(t("config.device_refused", error=exc), t("config.device_refused.hint")) from None


def render(cfg: dict[str, Any]) -> bytes:
    # Compact and ASCII-only: the board's JSON parser and its flash both prefer it.
    return json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode("ascii")


def with_new_keys(cfg: dict[str, Any], secret_hex: str, mqtt_password: str) -> dict[str, Any]:
    """The same config with a new HMAC secret and broker password (rotate-key)."""
    out = json.loads(json.dumps(cfg))
    out["secret"] = secret_hex
    out["mqtt"]["password"] = mqtt_password
    check(out)
    return out

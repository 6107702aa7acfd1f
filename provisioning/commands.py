"""The technician's commands as a dispatch table: each entry takes the parsed options and returns
an exit code. `dispatch` turns every ProvisionError into its message, hint and exit code (see
errors.py); a traceback is shown only with --verbose. siaga/cli.py maps the click options here."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from siaga.settings import ConfigError

from . import add, batch, fleet, validate
from .board import list_ports
from .devconfig import DeviceOptions
from .errors import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, Invalid, ProvisionError, UsageError
from .provision import Request, provision
from .settings import Settings, Wifi, load
from .text import t
from .ui import Ui

CONFIG_ENV = "SIAGA_PROVISION_CONFIG"
DEFAULT_CONFIG = "siaga-provision.toml"


def _settings(opts: dict[str, Any], ui: Ui) -> Settings:
    """The provisioning config, with the person's own token for the gateway when one is given:
    `--token-file`, else $SIAGA_TOKEN, else the config's [gateway] admin_token_file / _env."""
    settings = load(opts.get("config") or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG,
                    token_file=opts.get("token_file"))
    token_file = settings.token_from.file
    if token_file is not None:
        try:
            readable_by_others = bool(token_file.stat().st_mode & 0o077)
        except OSError:
            readable_by_others = False
        if readable_by_others:
            ui.warn(t("token.file_readable", path=token_file))
    return settings


def _wifi(opts: dict[str, Any], settings: Settings) -> Wifi | None:
    ssid = opts.get("wifi_ssid")
    if not ssid:
        return None
    if opts.get("wifi_password_file"):
        try:
            password = Path(opts["wifi_password_file"]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(t("wifi.password_file_unreadable", error=exc.strerror)) from None
    elif opts.get("wifi_password_env"):
        password = os.environ.get(opts["wifi_password_env"], "")
    elif settings.wifi is not None and settings.wifi.ssid == ssid:
        password = settings.wifi.password
    elif sys.stdin.isatty():
        password = click.prompt(t("wifi.password_prompt", ssid=repr(ssid)), hide_input=True,
                                default="", show_default=False)
    else:
        raise UsageError(t("wifi.no_password", ssid=repr(ssid)), t("wifi.no_password.hint"))
    power_save = settings.wifi.power_save if settings.wifi is not None else False
    return Wifi(validate.wifi_ssid(ssid), validate.wifi_password(password), power_save)


def cmd_provision(opts: dict[str, Any], ui: Ui) -> int:
    if opts.get("list_ports"):
        ports = list_ports()
        for device, desc, known in ports:
            ui.say(f"{device:20} {desc}" + ("  " + t("ports.looks_like_board") if known else ""))
        if not ports:
            ui.say(t("ports.none"))
        return EXIT_OK
    settings = _settings(opts, ui)
    if opts.get("batch"):
        staged = batch.stage(settings, Path(opts["batch"]), validate.id_prefix(opts["id_prefix"]) if
                             opts.get("id_prefix") else None, ui)
        for dev in staged:
            ui.say(f"{dev.device_id}  {dev.location.degrees()}  {dev.location.address}  {dev.location.area}")
        return EXIT_OK
    device_id = validate.device_id(opts["device_id"]) if opts.get("device_id") else None
    given_location = any(opts.get(k) for k in ("latlon", "lat", "lon", "address", "area"))
    location = None
    if given_location or device_id is None:
        location = validate.location(lat=opts.get("lat"), lon=opts.get("lon"), latlon_text=opts.get("latlon"),
                                     address_text=opts.get("address"), area=opts.get("area"))
    phone, sms_gateway = _sms_path(opts, settings)
    options = None
    if (any(opts.get(k) for k in ("kind", "types", "site", "notes", "phone")) or device_id is None
            or location is not None):
        options = DeviceOptions(validate.kind(opts.get("kind") or settings.devices.kind),
                                validate.type_buttons(opts["types"]) if opts.get("types") else settings.devices.types,
                                validate.site(opts.get("site")), validate.notes(opts.get("notes")), phone,
                                sms_gateway)
    req = Request(port=opts.get("port"), device_id=device_id,
                  id_prefix=validate.id_prefix(opts["id_prefix"]) if opts.get("id_prefix") else None,
                  location=location, options=options, wifi=_wifi(opts, settings),
                  self_test=not opts.get("no_self_test"), force=bool(opts.get("force")),
                  board_type=opts.get("board"), label_path=Path(opts["label"]) if opts.get("label") else None,
                  use_mpy=False if opts.get("no_mpy") else None)
    provision(settings, req, ui)
    return EXIT_OK


def _sms_path(opts: dict[str, Any], settings: Settings) -> tuple[str | None, str | None]:
    """(the button's SIM number, the gateway modem's number), both or neither: a button with a GSM
    modem sends its SMS to the gateway's number, and the gateway takes them only from the number
    registered for the button."""
    phone = validate.phone(opts["phone"]) if opts.get("phone") else None
    given = validate.phone(opts["sms_gateway"], "SMS gateway") if opts.get("sms_gateway") else None
    if given is not None and phone is None:
        raise UsageError(t("provision.sms_needs_phone"), t("provision.sms_needs_phone.hint"))
    gateway_number = given or settings.devices.sms_gateway
    if phone is not None and gateway_number is None:
        raise UsageError(t("provision.phone_needs_gateway"), t("provision.phone_needs_gateway.hint"))
    return phone, gateway_number if phone is not None else None


def _secret_from_file(path: str, what: str, check: Callable[[str], str], ui: Ui) -> str:
    """A secret read from a file, so that it never lands in the shell history; never echoed."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        mode = p.stat().st_mode
    except OSError as exc:
        raise UsageError(t("secret.unreadable", path=p, what=what, error=exc.strerror)) from None
    except UnicodeDecodeError:
        raise UsageError(t("secret.not_text", path=p, what=what), t("secret.not_text.hint", what=what)) from None
    try:
        value = check(text)
    except Invalid as exc:
        raise UsageError(t("secret.invalid", path=p, what=what), exc.expected) from None
    if mode & 0o077:
        ui.warn(t("secret.file_readable", path=p, what=what))
    return value


def cmd_add(opts: dict[str, Any], ui: Ui) -> int:
    fmt = fleet.check_format(opts.get("format") or "text", ("text", "json"))
    if fmt == "json":
        ui.quiet = True  # standard output carries the JSON document alone
    # Everything typed is checked before the config is read or anything is registered.
    req = add.Request(
        device_id=validate.device_id(opts["device_id"]),
        location=validate.location(lat=opts.get("lat"), lon=opts.get("lon"), latlon_text=opts.get("latlon"),
                                   address_text=opts.get("address"), area=opts.get("area")),
        site=validate.site(opts.get("site")),
        notes=validate.notes(opts.get("notes")),
        phone=validate.phone(opts["phone"]) if opts.get("phone") else None,
        secret_hex=_secret_from_file(opts["secret_file"], t("secret.device_secret"), validate.secret_hex, ui)
        if opts.get("secret_file") else None,
        mqtt_password=_secret_from_file(opts["mqtt_password_file"], t("secret.broker_password"),
                                        validate.mqtt_password, ui)
        if opts.get("mqtt_password_file") else None,
        label_path=Path(opts["label"]) if opts.get("label") else None)
    settings = _settings(opts, ui)
    added = add.add_device(settings, req, ui)
    if fmt == "json":
        ui.say(json.dumps(add.credentials_json(added, settings.devices), indent=1))
        if added.secret_generated or added.password_generated:
            ui.warn(t("add.credentials_shown_once", device=req.device_id))
    else:
        ui.say(add.credentials_text(added, settings.devices))
    return EXIT_OK


def cmd_list(opts: dict[str, Any], ui: Ui) -> int:
    fmt = fleet.check_format(opts.get("format") or "table", ("table", "csv", "geojson", "json"))
    return fleet.list_devices(_settings(opts, ui), fmt, Path(opts["out"]) if opts.get("out") else None, ui)


def cmd_export(opts: dict[str, Any], ui: Ui) -> int:
    fmt = fleet.check_format(opts.get("format") or "csv", ("csv", "geojson"))
    return fleet.list_devices(_settings(opts, ui), fmt, Path(opts["out"]) if opts.get("out") else None, ui)


def cmd_show(opts: dict[str, Any], ui: Ui) -> int:
    return fleet.show(_settings(opts, ui), validate.device_id(opts["device_id"]), ui)


def cmd_set_location(opts: dict[str, Any], ui: Ui) -> int:
    # What was typed is checked before the config is read.
    device_id = validate.device_id(opts["device_id"])
    fields = fleet.location_fields(latlon=opts.get("latlon"), lat=opts.get("lat"), lon=opts.get("lon"),
                                   address=opts.get("address"), area=opts.get("area"), site=opts.get("site"))
    return fleet.set_location(_settings(opts, ui), device_id, fields, ui)


def _wifi_networks(opts: dict[str, Any]) -> list[tuple[str, str]] | None:
    """`devices configure --wifi SSID ...` with each network's password: from the --wifi-password-file
    (or else --wifi-password-env) given in the same position, else asked without echo on a terminal.
    A password is never a command-line argument."""
    ssids = [validate.wifi_ssid(s) for s in opts.get("wifi") or ()]
    if not ssids:
        return None
    if len(ssids) > fleet.WIFI_NETWORKS_MAX:
        raise UsageError(t("configure.wifi_too_many", most=fleet.WIFI_NETWORKS_MAX))
    files, envs = list(opts.get("wifi_password_file") or ()), list(opts.get("wifi_password_env") or ())
    for given in (files, envs):
        if given and len(given) != len(ssids):
            raise UsageError(t("configure.wifi_count", networks=len(ssids), passwords=len(given)))
    out = []
    for i, ssid in enumerate(ssids):
        if files:
            try:
                password = Path(files[i]).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise UsageError(t("wifi.password_file_unreadable", error=exc.strerror)) from None
        elif envs:
            password = os.environ.get(envs[i], "")
        elif sys.stdin.isatty():
            password = click.prompt(t("wifi.password_prompt", ssid=repr(ssid)), hide_input=True,
                                    default="", show_default=False)
        else:
            raise UsageError(t("wifi.no_password", ssid=repr(ssid)), t("wifi.no_password.hint"))
        out.append((ssid, validate.wifi_password(password)))
    return out


def cmd_configure(opts: dict[str, Any], ui: Ui) -> int:
    device_id = validate.device_id(opts["device_id"])
    changes = fleet.config_settings(heartbeat_s=opts.get("heartbeat_s"), retry=opts.get("retry"),
                                    reconnect=opts.get("reconnect"), sms_fallback_s=opts.get("sms_fallback_s"),
                                    sms_test_every_s=opts.get("sms_test_every_s"), wifi=_wifi_networks(opts))
    return fleet.configure(_settings(opts, ui), device_id, changes, ui)


def cmd_set_phone(opts: dict[str, Any], ui: Ui) -> int:
    device_id = validate.device_id(opts["device_id"])
    if bool(opts.get("number")) == bool(opts.get("remove")):
        raise UsageError(t("set_phone.number_or_remove"), t("set_phone.number_or_remove.hint"))
    phone = validate.phone(opts["number"]) if opts.get("number") else None
    return fleet.set_phone(_settings(opts, ui), device_id, phone, ui)


def _confirm(opts: dict[str, Any], question: str) -> None:
    if opts.get("yes") or not sys.stdin.isatty():
        return
    if not click.confirm(question, default=False):
        raise UsageError(t("confirm.cancelled"))


def cmd_revoke(opts: dict[str, Any], ui: Ui) -> int:
    device_id = validate.device_id(opts["device_id"])
    settings = _settings(opts, ui)
    _confirm(opts, t("confirm.revoke", device=device_id))
    return fleet.revoke(settings, device_id, ui)


def cmd_rotate_key(opts: dict[str, Any], ui: Ui) -> int:
    return fleet.rotate_key(_settings(opts, ui), validate.device_id(opts["device_id"]), opts.get("port"),
                            not opts.get("no_self_test"), ui)


def cmd_decommission(opts: dict[str, Any], ui: Ui) -> int:
    device_id = validate.device_id(opts["device_id"])
    settings = _settings(opts, ui)
    _confirm(opts, t("confirm.decommission", device=device_id))
    return fleet.decommission(settings, device_id, opts.get("port"), ui)


def cmd_publish(opts: dict[str, Any], ui: Ui) -> int:
    return fleet.publish(_settings(opts, ui), Path(opts["bundle_file"]), ui)


def cmd_update(opts: dict[str, Any], ui: Ui) -> int:
    version = validate_version(opts["version"])
    return fleet.update(_settings(opts, ui), version, opts["percent"], opts.get("max_failed_percent"),
                        bool(opts.get("resume")), ui, allow_downgrade=bool(opts.get("allow_downgrade")))


def validate_version(value: str) -> str:
    """A firmware version as bundles carry it: MAJOR.MINOR.PATCH in digits (checked before the
    config is read)."""
    from .bundle import valid_version

    if not valid_version(value):
        raise UsageError(t("bundle.version_invalid", version=repr(value)), t("bundle.version_invalid.hint"))
    return value


def cmd_rollouts(opts: dict[str, Any], ui: Ui) -> int:
    fmt = fleet.check_format(opts.get("format") or "table", ("table", "json"))
    return fleet.list_rollouts(_settings(opts, ui), fmt, ui)


def cmd_rollout(opts: dict[str, Any], ui: Ui) -> int:
    fmt = fleet.check_format(opts.get("format") or "table", ("table", "json"))
    return fleet.show_rollout(_settings(opts, ui), opts["rollout_id"], fmt, ui)


def cmd_cancel(opts: dict[str, Any], ui: Ui) -> int:
    settings = _settings(opts, ui)
    _confirm(opts, t("confirm.cancel_rollout", id=opts["rollout_id"]))
    return fleet.cancel_rollout(settings, opts["rollout_id"], ui)


COMMANDS: dict[str, Callable[[dict[str, Any], Ui], int]] = {
    "provision": cmd_provision,
    "devices add": cmd_add,
    "devices list": cmd_list,
    "devices show": cmd_show,
    "devices set-location": cmd_set_location,
    "devices set-phone": cmd_set_phone,
    "devices configure": cmd_configure,
    "devices revoke": cmd_revoke,
    "devices rotate-key": cmd_rotate_key,
    "devices decommission": cmd_decommission,
    "devices export": cmd_export,
    "firmware publish": cmd_publish,
    "fleet update": cmd_update,
    "fleet rollouts": cmd_rollouts,
    "fleet rollout": cmd_rollout,
    "fleet cancel": cmd_cancel,
}


def dispatch(name: str, opts: dict[str, Any], *, verbose: bool = False, quiet: bool = False) -> int:
    ui = Ui(quiet=quiet)
    try:
        return COMMANDS[name](opts, ui)
    except ProvisionError as exc:
        if verbose:
            raise
        click.echo(click.style(t("ui.error") + " ", fg="red", bold=True) + exc.message, err=True)
        if exc.hint:
            click.echo(f"  {exc.hint}", err=True)
        return exc.exit_code
    except ConfigError as exc:
        if verbose:
            raise
        click.echo(click.style(t("ui.error") + " ", fg="red", bold=True) + str(exc), err=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        click.echo(t("ui.interrupted"), err=True)
        return 130
    except Exception as exc:
        if verbose:
            raise
        click.echo(t("ui.internal_error", error=f"{type(exc).__name__}: {exc}"), err=True)
        return EXIT_INTERNAL

"""`siaga devices add`: a button made elsewhere (another vendor's firmware speaking
docs/protocol.md, or a batch flashed elsewhere) registered at the gateway and the broker with no
board on USB.

The tool never meets the device, so its identity leaves the laptop in one way only: shown once to
the operator. Unlike a pre-staged identity (batch.py), which waits in the keystore until
`siaga provision` writes it to a board, it is not kept here; the gateway never gives a secret back.
The install log records the addition without secrets, and a label is made as for any button.

The order is provisioning's: checks first (the id is free at the gateway and at the broker), then
the broker login, then the gateway registration, in one ui.Rollback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import label
from .brokerlogins import BrokerLogins
from .devconfig import Identity
from .errors import BrokerError, GatewayError, GatewayUnreachable, ProvisionError, UsageError
from .fleet import status
from .gateway import GatewayClient
from .keystore import Keystore
from .provision import hold_seconds
from .settings import DeviceDefaults, Settings
from .ui import Rollback, Ui
from .validate import Location


@dataclass(frozen=True, slots=True)
class Request:
    device_id: str
    location: Location
    site: str | None = None
    notes: str = ""
    secret_hex: str | None = field(default=None, repr=False)      # None: generate one
    mqtt_password: str | None = field(default=None, repr=False)   # None: generate one
    label_path: Path | None = None


@dataclass(frozen=True, slots=True)
class Added:
    identity: Identity
    secret_generated: bool
    password_generated: bool
    broker_login: bool          # False: no [broker] section, the login is still to be made
    label: Path | None          # None: the label could not be made (a warning said why)


def add_device(settings: Settings, req: Request, ui: Ui) -> Added:
    device_id = req.device_id
    logins = BrokerLogins(settings.broker)
    if not logins.managed:
        ui.warn("the provisioning config has no [broker] section: no broker login is made; make it on the broker's "
                f"machine with `siaga broker set-password --passwd <password file> {device_id}` and the password "
                "shown below")
    fresh = Identity.new(device_id)
    identity = Identity(device_id, req.secret_hex or fresh.secret_hex, req.mqtt_password or fresh.mqtt_password)
    with GatewayClient.of(settings) as gw:
        _check_free(gw, logins, settings, device_id)
        ui.step(f"gateway {settings.gateway_url}: reachable; {device_id} is free")
        tx = Rollback(ui)
        maybe_registered = False
        try:
            with tx:
                if settings.broker is not None:
                    logins.set(device_id, identity.mqtt_password)
                    tx.add("broker login", lambda: (logins.remove(device_id), logins.reload()),
                           f"siaga broker remove-user --passwd {settings.broker.password_file} {device_id}, then "
                           "reload the broker")
                    logins.reload()
                    ui.step(f"broker: login {device_id} made; the broker reloaded")
                try:
                    gw.register(device_id, identity.secret_hex, req.location, req.site)
                except BaseException as exc:
                    # An answer (a 409 may be someone else's device, which must stay) or no connection at
                    # all means nothing was registered; a lost answer or Ctrl-C may leave a registration.
                    maybe_registered = not isinstance(exc, GatewayError) or (
                        isinstance(exc, GatewayUnreachable) and exc.sent)
                    if maybe_registered:
                        tx.add("gateway registration",
                               lambda: gw.device(device_id) is not None and gw.decommission(device_id),
                               f"`siaga devices show {device_id}`; if it is there, `siaga devices decommission "
                               f"{device_id}`")
                    raise
                ui.step(f"gateway: {device_id} registered at {req.location.address} ({req.location.area})"
                        + (f", site {req.site}" if req.site else ""))
                tx.commit()
        except ProvisionError as exc:
            if not maybe_registered and not tx.failed_undos:
                again = f"nothing of {device_id} is left at the broker or the gateway: once that is fixed, run the " \
                        "same command again"
                exc.hint = f"{exc.hint}\n  {again}" if exc.hint else again
            raise
    return Added(identity, req.secret_hex is None, req.mqtt_password is None, logins.managed,
                 _record(settings, req, ui))


def _check_free(gw: GatewayClient, logins: BrokerLogins, settings: Settings, device_id: str) -> None:
    found = gw.device(device_id)
    if found is not None:
        state = status(found)
        hint = ("a decommissioned id is not given out again (the gateway keeps its history); choose another id"
                if state == "decommissioned" else
                f"choose another id; `siaga devices show {device_id}` shows the registered one")
        raise UsageError(f"device {device_id} is already registered at the gateway ({state}); nothing was changed",
                         hint)
    if settings.broker is None:
        return
    try:
        taken = logins.has(device_id)
    except OSError as exc:
        raise BrokerError(f"cannot read the broker password file {settings.broker.password_file}: {exc.strerror}",
                          "run the tool as a user that may read and write it (or with sudo)") from None
    if taken:
        raise UsageError(f"the broker already has a login {device_id}, but the gateway has no such device; nothing "
                         "was changed",
                         f"if it is left over, remove it (`siaga broker remove-user --passwd "
                         f"{settings.broker.password_file} {device_id}`) and reload the broker; or choose another id")


def _record(settings: Settings, req: Request, ui: Ui) -> Path | None:
    """Install log and label. The device is registered and its credentials are not shown yet: a
    failure here must not cost them, so it is a warning."""
    keystore = Keystore(settings.state_dir)
    try:
        keystore.log("add", req.device_id, location=req.location.device_loc(), site=req.site, notes=req.notes,
                     secret_source="file" if req.secret_hex else "generated",
                     mqtt_password_source="file" if req.mqtt_password else "generated")
    except OSError as exc:
        ui.warn(f"the install log in {keystore.root} was not written ({exc.strerror}); the device is registered")
    try:
        path = label.save(req.label_path or keystore.label_path(req.device_id), req.device_id,
                          support=settings.support, organisation=settings.organisation, location=req.location,
                          hold_s=hold_seconds(settings))
    except Exception as exc:  # a label can be printed later; the credentials below cannot be shown later
        ui.warn(f"the label was not made ({type(exc).__name__}: {exc}); the device is registered")
        return None
    ui.step(f"label: {path}")
    return path


def broker_text(devices: DeviceDefaults) -> str:
    where = f"{devices.broker_host}:{devices.broker_port}"
    if devices.ca_file is None:
        return f"{where}, plain MQTT (no TLS)"
    name = f", server name {devices.server_hostname}" if devices.server_hostname else ""
    return f"{where}, TLS with the CA in {devices.ca_file}{name}"


def credentials_text(added: Added, devices: DeviceDefaults) -> str:
    """The block the operator copies into the button or a password store; shown once."""
    ident = added.identity
    login = "" if added.broker_login else "  (make this login at the broker: see the warning above)"
    lines = [
        f"----- BEGIN SIAGA DEVICE CREDENTIALS {ident.device_id} -----",
        f"device id        {ident.device_id} (also its MQTT username and client id)",
        f"broker           {broker_text(devices)}",
        f"device secret    {ident.secret_hex if added.secret_generated else '(from the file given; not shown)'}",
        f"broker password  {ident.mqtt_password if added.password_generated else '(from the file given; not shown)'}"
        + login,
        f"topics           siaga/v1/dev/{ident.device_id}/alarm, status, will and ack (docs/protocol.md)",
    ]
    if added.secret_generated or added.password_generated:
        lines.append("NOT SHOWN AGAIN: this laptop does not keep them and the gateway never gives them back.")
        lines.append("Put them into the button or a password store now.")
    lines.append(f"----- END SIAGA DEVICE CREDENTIALS {ident.device_id} -----")
    return "\n".join(lines)


def credentials_json(added: Added, devices: DeviceDefaults) -> dict[str, Any]:
    """The same as a JSON object; a secret taken from a file is null (the operator has it)."""
    ident = added.identity
    return {
        "device_id": ident.device_id,
        "mqtt_username": ident.device_id,
        "mqtt_client_id": ident.device_id,
        "broker": {"host": devices.broker_host, "port": devices.broker_port, "tls": devices.ca_file is not None,
                   "ca_file": None if devices.ca_file is None else str(devices.ca_file),
                   "server_hostname": devices.server_hostname},
        "secret_hex": ident.secret_hex if added.secret_generated else None,
        "mqtt_password": ident.mqtt_password if added.password_generated else None,
        "broker_login_made": added.broker_login,
        "label": None if added.label is None else str(added.label),
    }

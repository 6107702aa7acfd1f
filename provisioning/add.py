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
from .text import t
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
    phone: str | None = None       # the button's SIM number, if it has a GSM modem


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
        ui.warn(t("add.no_broker_section", device=device_id))
    fresh = Identity.new(device_id)
    identity = Identity(device_id, req.secret_hex or fresh.secret_hex, req.mqtt_password or fresh.mqtt_password)
    with GatewayClient.of(settings) as gw:
        _check_free(gw, logins, settings, device_id)
        ui.step(t("add.free", url=settings.gateway_url, device=device_id))
        tx = Rollback(ui)
        maybe_registered = False
        try:
            with tx:
                if settings.broker is not None:
                    logins.set(device_id, identity.mqtt_password)
                    tx.add(t("step.broker_login"), lambda: (logins.remove(device_id), logins.reload()),
                           t("add.undo_login", path=settings.broker.password_file, device=device_id))
                    logins.reload()
                    ui.step(t("add.login_made", device=device_id))
                try:
                    gw.register(device_id, identity.secret_hex, req.location, req.site, req.phone)
                except BaseException as exc:
                    # An answer (a 409 may be someone else's device, which must stay) or no connection at
                    # all means nothing was registered; a lost answer or Ctrl-C may leave a registration.
                    maybe_registered = not isinstance(exc, GatewayError) or (
                        isinstance(exc, GatewayUnreachable) and exc.sent)
                    if maybe_registered:
                        tx.add(t("step.gateway_registration"),
                               lambda: gw.device(device_id) is not None and gw.decommission(device_id),
                               t("add.undo_registration", device=device_id))
                    raise
                ui.step(t("add.registered", device=device_id, address=req.location.address, area=req.location.area)
                        + (t("add.site", site=req.site) if req.site else "")
                        + (t("add.phone", phone=req.phone) if req.phone else ""))
                tx.commit()
        except ProvisionError as exc:
            if not maybe_registered and not tx.failed_undos:
                again = t("add.nothing_left", device=device_id)
                exc.hint = f"{exc.hint}\n  {again}" if exc.hint else again
            raise
    return Added(identity, req.secret_hex is None, req.mqtt_password is None, logins.managed,
                 _record(settings, req, ui))


def _check_free(gw: GatewayClient, logins: BrokerLogins, settings: Settings, device_id: str) -> None:
    found = gw.device(device_id)
    if found is not None:
        state = status(found)
        hint = (t("add.id_decommissioned.hint") if state == "decommissioned" else
                t("add.id_taken.hint", device=device_id))
        raise UsageError(t("add.id_taken", device=device_id, state=state), hint)
    if settings.broker is None:
        return
    try:
        taken = logins.has(device_id)
    except OSError as exc:
        raise BrokerError(t("broker.passwd_unreadable", path=settings.broker.password_file, error=exc.strerror),
                          t("broker.passwd_unreadable.hint")) from None
    if taken:
        raise UsageError(t("add.login_taken", device=device_id),
                         t("add.login_taken.hint", path=settings.broker.password_file, device=device_id))


def _record(settings: Settings, req: Request, ui: Ui) -> Path | None:
    """Install log and label. The device is registered and its credentials are not shown yet: a
    failure here must not cost them, so it is a warning."""
    keystore = Keystore(settings.state_dir)
    try:
        keystore.log("add", req.device_id, location=req.location.device_loc(), site=req.site, notes=req.notes,
                     phone=req.phone,
                     secret_source="file" if req.secret_hex else "generated",
                     mqtt_password_source="file" if req.mqtt_password else "generated")
    except OSError as exc:
        ui.warn(t("add.log_not_written", path=keystore.root, error=exc.strerror))
    try:
        path = label.save(req.label_path or keystore.label_path(req.device_id), req.device_id,
                          support=settings.support, organisation=settings.organisation, location=req.location,
                          hold_s=hold_seconds(settings))
    except Exception as exc:  # a label can be printed later; the credentials below cannot be shown later
        ui.warn(t("add.label_not_made", error=f"{type(exc).__name__}: {exc}"))
        return None
    ui.step(t("provision.label", path=path))
    return path


def broker_text(devices: DeviceDefaults) -> str:
    where = f"{devices.broker_host}:{devices.broker_port}"
    if devices.ca_file is None:
        return t("add.broker_plain", where=where)
    name = t("add.server_name", name=devices.server_hostname) if devices.server_hostname else ""
    return t("add.broker_tls", where=where, ca=devices.ca_file, name=name)


def credentials_text(added: Added, devices: DeviceDefaults) -> str:
    """The block the operator copies into the button or a password store; shown once."""
    ident = added.identity
    login = "" if added.broker_login else "  " + t("creds.make_login")
    from_file = t("creds.from_file")
    # The BEGIN and END lines stay the same in every language: scripts look for them.
    lines = [
        f"----- BEGIN SIAGA DEVICE CREDENTIALS {ident.device_id} -----",
        t("creds.device_id", device=ident.device_id),
        t("creds.broker", broker=broker_text(devices)),
        t("creds.secret", secret=ident.secret_hex if added.secret_generated else from_file),
        t("creds.password", password=ident.mqtt_password if added.password_generated else from_file) + login,
        t("creds.topics", device=ident.device_id),
    ]
    if added.secret_generated or added.password_generated:
        lines.append(t("creds.not_again"))
        lines.append(t("creds.store_now"))
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

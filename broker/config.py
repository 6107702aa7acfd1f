"""Render the Mosquitto configuration and ACL file that the Siaga deployment and the tests use.

The configuration lives in `templates/mosquitto.conf`, a `string.Template` whose comments explain
each setting. `render_config` fills in the paths and listeners; `write_acl` writes the pattern ACL
that confines every device to its own topics (docs/protocol.md §2).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from ._files import atomic_write
from .passwd import remove_user, set_password

__all__ = [
    "DEFAULT_GATEWAY_USER",
    "TOPIC_ROOT",
    "TlsListener",
    "acl_text",
    "remove_user",
    "render_config",
    "set_password",
    "validate_device_id",
    "write_acl",
]

log = logging.getLogger(__name__)

DEFAULT_GATEWAY_USER = "siaga-gateway"
TOPIC_ROOT = "siaga/v1/dev"

# docs/protocol.md §1: a device id is also its MQTT username and client id.
_DEVICE_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{2,31}")
# Characters that would break a line of mosquitto.conf or the ACL file (or be a wildcard in an ACL
# topic); a value containing one could inject settings.
_UNSAFE_VALUE_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class TlsListener:
    """The TLS listener for devices: the files come from `siaga.broker.certs` (or a public CA)."""

    port: int
    cafile: Path
    certfile: Path
    keyfile: Path
    bind: str = "0.0.0.0"


def validate_device_id(device_id: str) -> str:
    """Return `device_id` if it is a valid device id (protocol §1), else raise ValueError."""
    if not _DEVICE_ID_RE.fullmatch(device_id):
        raise ValueError(
            f"invalid device id {device_id!r}: 3-32 characters of a-z, 0-9 and '-', starting with a letter or digit"
        )
    return device_id


def _conf_value(value: object, what: str) -> str:
    text = str(value)
    if not text or _UNSAFE_VALUE_RE.search(text) or text != text.strip():
        raise ValueError(f"{what} {text!r} cannot be written into a Mosquitto config file")
    return text


def _conf_path(path: Path, what: str) -> str:
    # Mosquitto resolves relative paths against its working directory, which differs between a
    # systemd unit and a shell: always write absolute paths.
    return _conf_value(Path(path).absolute(), what)


def _port(port: int, what: str) -> str:
    if not 0 < int(port) < 65536:
        raise ValueError(f"{what} {port} is not a TCP port")
    return str(int(port))


def _tls_block(tls: TlsListener) -> str:
    return "\n".join(
        [
            "# ---------------------------------------------------------------------------------------------",
            "# TLS listener for the devices. Devices log in with username (device id) and password",
            "# inside TLS; the server certificate is signed by the Siaga CA that every device trusts.",
            "# TLS 1.2 is the minimum: it is what mbedTLS on the ESP32 and the Pico W speak.",
            f"listener {_port(tls.port, 'TLS port')} {_conf_value(tls.bind, 'TLS bind address')}",
            "protocol mqtt",
            f"cafile {_conf_path(tls.cafile, 'CA file')}",
            f"certfile {_conf_path(tls.certfile, 'certificate file')}",
            f"keyfile {_conf_path(tls.keyfile, 'key file')}",
            "tls_version tlsv1.2",
            "require_certificate false",
            "",
        ]
    )


def render_config(
    *,
    port: int,
    data_dir: Path,
    password_file: Path,
    acl_file: Path,
    bind: str = "127.0.0.1",
    tls: TlsListener | None = None,
    log_file: Path | None = None,
    run_as: str | None = None,
) -> str:
    """Return the text of a mosquitto.conf for Siaga.

    `port`/`bind` is the plain listener (loopback for the gateway in production, the only listener in
    tests); `tls` adds the device listener. Logs go to `log_file`, or to stderr when it is None (for
    systemd's journal, or a test that captures stderr). `run_as` writes Mosquitto's `user` option:
    when started as root Mosquitto switches to that user (by default `mosquitto`) before it reads the
    password file, so a broker started as root on files owned by root must be told `run_as="root"`.
    """
    template = Template(resources.files(__package__).joinpath("templates/mosquitto.conf").read_text("utf-8"))
    # Mosquitto only accepts a persistence location that ends with the path separator.
    persistence_location = _conf_path(data_dir, "data directory").rstrip("/") + "/"
    log_dest = f"log_dest file {_conf_path(log_file, 'log file')}" if log_file is not None else "log_dest stderr"
    run_as_line = ""
    if run_as is not None:
        run_as_line = (
            "# The user Mosquitto runs as after it starts as root; it must be able to read the files above.\n"
            f"user {_conf_value(run_as, 'user name')}\n"
        )
    return template.substitute(
        port=_port(port, "port"),
        bind=_conf_value(bind, "bind address"),
        password_file=_conf_path(password_file, "password file"),
        acl_file=_conf_path(acl_file, "ACL file"),
        persistence_location=persistence_location,
        log_dest=log_dest,
        run_as=run_as_line,
        tls_listener=_tls_block(tls) if tls is not None else "",
    )


def acl_text(*, gateway_user: str = DEFAULT_GATEWAY_USER) -> str:
    """Return the ACL file text (see `write_acl`)."""
    gw = _conf_value(gateway_user, "gateway user")
    if any(c in gw for c in "+#/ "):
        raise ValueError(f"gateway user {gw!r} must not contain '+', '#', '/' or spaces")
    root = TOPIC_ROOT
    return f"""\
# Siaga broker ACL (Mosquitto 2.0 acl_file), written by siaga.broker.config.write_acl.
# Mosquitto grants nothing that is not listed here. Its rules, as checked on Mosquitto 2.0.11:
# - A `pattern` line applies to every authenticated client, the gateway included; %u is replaced by
#   the client's username.
# - `topic` lines after `user NAME` apply to that user only. A `deny` line wins over any grant, the
#   user's own and the patterns.
# - Subscribing is always allowed; what a client may read is checked for each message delivered
#   (retained messages included). So a device may subscribe to another device's ack topic, but it
#   receives nothing there. A publish without write access is acknowledged and then dropped.

# Devices: the username is the device id. A device publishes only its own alarm, status and will
# (a last will set on another device's topic is accepted at CONNECT but never delivered) and reads
# only its own ack and its own remote configuration (docs/protocol.md §10), which it cannot write.
# Firmware over the air (§11): it asks for chunks and reports on ota/get and ota/status, and reads
# its own offers (ota) and chunks (ota/data), which only the gateway writes.
pattern write {root}/%u/alarm
pattern write {root}/%u/status
pattern write {root}/%u/will
pattern write {root}/%u/ota/get
pattern write {root}/%u/ota/status
pattern read {root}/%u/ack
pattern read {root}/%u/config
pattern read {root}/%u/ota
pattern read {root}/%u/ota/data

# The gateway reads every device's alarm, status, will, chunk requests and update reports, and
# writes every device's ack, configuration, offers and chunks.
user {gw}
topic read {root}/+/alarm
topic read {root}/+/status
topic read {root}/+/will
topic read {root}/+/ota/get
topic read {root}/+/ota/status
topic write {root}/+/ack
topic write {root}/+/config
topic write {root}/+/ota
topic write {root}/+/ota/data
# The patterns above also apply to the gateway, as if it were a device named "{gw}": this deny
# takes that device's topics away from it, so the gateway gets exactly the nine rules above.
topic deny {root}/{gw}/#
"""


def write_acl(path: Path, *, gateway_user: str = DEFAULT_GATEWAY_USER) -> None:
    """Write the pattern ACL to `path` atomically (mode 0644: it holds no secret).

    A device (username = device id) may write only `siaga/v1/dev/<id>/alarm|status|will|ota/get|ota/status`
    and read only `siaga/v1/dev/<id>/ack|config|ota|ota/data`; the gateway user reads
    `siaga/v1/dev/+/alarm|status|will|ota/get|ota/status` and writes `siaga/v1/dev/+/ack|config|ota|ota/data`.
    Send the broker SIGHUP after changing it.
    """
    atomic_write(Path(path), acl_text(gateway_user=gateway_user).encode("utf-8"), mode=0o644)
    log.info("wrote broker ACL %s (gateway user %s)", path, gateway_user)

"""The `siaga` command: one entry point for every part of the system.

Errors a person can fix (a missing config file, a refused login) are printed as one line and
exit with status 2; a traceback appears only with --verbose.

Everything it prints is in the run's language (provisioning/text.py: --lang, $SIAGA_LANG, the
locale, else Bahasa Indonesia). The help texts are written here in English, where they document
the code, and shown from the `cli` catalog's `help.*` entry whose English is the same text; a test
(tests/test_i18n_cli.py) keeps the two equal.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

import click

from . import i18n, logs
from .provisioning.text import DOMAIN, t, use
from .settings import ConfigError


class _State:
    verbose = False


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            return None
        except (ConfigError, OSError) as exc:
            if _State.verbose:
                raise
            click.echo(t("cli.failed", error=exc), err=True)
            sys.exit(2)
        except ExceptionGroup as group:  # errors out of a TaskGroup arrive grouped
            if _State.verbose:
                raise
            for failure in group.exceptions:
                click.echo(t("cli.failed", error=f"{type(failure).__name__}: {failure}"), err=True)
            sys.exit(2)
    return wrapper


@functools.cache
def _help_keys() -> dict[str, str]:
    """English help text -> its catalog key."""
    return {entry["en"]: key for key, entry in i18n.catalog(DOMAIN).items() if key.startswith("help.")}


def help_text(english: str) -> str:
    """A help text in the run's language (a text the catalog does not know: as written)."""
    key = _help_keys().get(inspect.cleandoc(english))
    return t(key) if key is not None else english


@contextmanager
def _in_language(items: list[Any]) -> Iterator[None]:
    """Show the help of `items` (commands and options) in the run's language while in the block."""
    saved = [(item, item.help) for item in items if getattr(item, "help", None)]
    for item, english in saved:
        item.help = help_text(english)
    try:
        yield
    finally:
        for item, english in saved:
            item.help = english


class _Command(click.Command):
    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with _in_language([self, *self.get_params(ctx)]):
            super().format_help(ctx, formatter)

    def get_short_help_str(self, limit: int = 45) -> str:
        with _in_language([self]):
            return super().get_short_help_str(limit)


class _Group(_Command, click.Group):
    """A group's help in the reader's language too (the methods of _Command, then click.Group's)."""

    command_class = _Command
    group_class = type  # subgroups are _Group too


def _choose_language(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--lang is eager, so that `siaga --lang en --help` is already in English."""
    use(value)
    return value


@click.group(cls=_Group)
@click.option("--verbose", "-v", is_flag=True, help="Debug logging and full tracebacks.")
@click.option("--lang", type=click.Choice(["id", "en"]), default=None, is_eager=True, callback=_choose_language,
              help="Language of the messages: id (Bahasa Indonesia) or en [default: $SIAGA_LANG, else the locale, "
                   "else id].")
def main(verbose: bool, lang: str | None) -> None:
    """Siaga: panic buttons for emergency command centers."""
    _State.verbose = verbose
    use(lang)
    logs.setup(verbose)


@main.group()
def gateway() -> None:
    """The gateway between the buttons' broker and the command center."""


@gateway.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="gateway TOML file (see gateway/gateway.example.toml)")
@_friendly
def gateway_run(config_path: str) -> None:
    """Run the gateway until SIGINT or SIGTERM."""
    from .gateway import server

    server.run(config_path)


@gateway.command("test-destination")
@click.argument("name")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="gateway TOML file with the destination (see docs/integration.md)")
@click.option("--device", "device_id", default="siaga-test", show_default=True,
              help="the button id the test alarm carries (a DC-09 destination needs one with an account)")
@_friendly
def gateway_test_destination(name: str, config_path: str, device_id: str) -> None:
    """Send a test alarm to destination NAME, signed as the gateway signs, and show its answer."""
    import asyncio

    from .gateway.config import GatewayConfig
    from .gateway.destinations import probe_destination

    cfg = GatewayConfig.load(config_path)
    ok, line = asyncio.run(probe_destination(cfg, name, device_id=device_id))
    click.echo(line, err=not ok)
    if not ok:
        sys.exit(1)


@main.group("cc")
def commandcenter() -> None:
    """The reference command center."""


@commandcenter.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="command-center TOML file (see commandcenter/cc.example.toml)")
@_friendly
def cc_run(config_path: str) -> None:
    """Run the command center's API until SIGINT or SIGTERM."""
    from .commandcenter import server

    server.run(config_path)


@main.group()
def broker() -> None:
    """Mosquitto configuration, ACL and device logins (see docs/broker.md)."""


@broker.command("config")
@click.option("--port", default=1883, show_default=True, help="Plain listener, for the gateway (loopback).")
@click.option("--bind", default="127.0.0.1", show_default=True)
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="Persistence folder.")
@click.option("--password-file", required=True, type=click.Path(dir_okay=False))
@click.option("--acl-file", required=True, type=click.Path(dir_okay=False))
@click.option("--tls-port", type=int, help="Add the devices' TLS listener on this port.")
@click.option("--cafile", type=click.Path(dir_okay=False))
@click.option("--certfile", type=click.Path(dir_okay=False))
@click.option("--keyfile", type=click.Path(dir_okay=False))
@click.option("--log-file", type=click.Path(dir_okay=False), help="Default: stderr.")
@click.option("--run-as", help="User Mosquitto switches to when started as root (it must own the files).")
@_friendly
def broker_config(port: int, bind: str, data_dir: str, password_file: str, acl_file: str, tls_port: int | None,
                  cafile: str | None, certfile: str | None, keyfile: str | None, log_file: str | None,
                  run_as: str | None) -> None:
    """Print a mosquitto.conf for Siaga (production settings) to standard output."""
    from pathlib import Path

    from .broker.config import TlsListener, render_config

    tls = None
    if tls_port is not None:
        if not (cafile and certfile and keyfile):
            raise ConfigError(t("broker.tls_needs_files"))
        tls = TlsListener(tls_port, Path(cafile), Path(certfile), Path(keyfile))
    click.echo(render_config(port=port, bind=bind, data_dir=Path(data_dir), password_file=Path(password_file),
                             acl_file=Path(acl_file), tls=tls, log_file=Path(log_file) if log_file else None,
                             run_as=run_as),
               nl=False)


@broker.command("acl")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the ACL file.")
@_friendly
def broker_acl(out: str) -> None:
    """Write the ACL: each device only its own topics, the gateway all devices' uplinks and acks."""
    from pathlib import Path

    from .broker.config import write_acl

    write_acl(Path(out))
    click.echo(t("broker.acl_written", path=out))


@broker.command("set-password")
@click.option("--passwd", "password_file", required=True, type=click.Path(dir_okay=False),
              help="Mosquitto password file (created if missing).")
@click.argument("user")
@_friendly
def broker_set_password(password_file: str, user: str) -> None:
    """Create or change USER's login; the password is read from standard input, never an argument.

    Mosquitto reads the file on start and on SIGHUP: reload it afterwards.
    """
    from pathlib import Path

    from .broker.passwd import set_password

    if sys.stdin.isatty():
        password = click.prompt(t("broker.password_prompt", user=user), hide_input=True,
                                confirmation_prompt=t("broker.password_again"))
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise ConfigError(t("broker.empty_password"))
    set_password(Path(password_file), user, password)
    click.echo(t("broker.password_set", user=user, path=password_file))


@broker.command("remove-user")
@click.option("--passwd", "password_file", required=True, type=click.Path(dir_okay=False))
@click.argument("user")
@_friendly
def broker_remove_user(password_file: str, user: str) -> None:
    """Remove USER's login. After a reload Mosquitto also closes that user's open connection."""
    from pathlib import Path

    from .broker.passwd import remove_user

    if not remove_user(Path(password_file), user):
        raise ConfigError(t("broker.no_such_user", user=user, path=password_file))
    click.echo(t("broker.user_removed", user=user, path=password_file))


@main.group()
def agent() -> None:
    """The Raspberry Pi agent: a button on a full Raspberry Pi (gpiozero)."""


@agent.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="the device config written by provisioning (siaga.json)")
@click.option("--state", "state_dir", default="/var/lib/siaga-agent", show_default=True,
              type=click.Path(file_okay=False), help="where the outbox and sequence counter live")
@click.option("--modem-port", default=None,
              help="the GSM modem's serial port (e.g. /dev/ttyUSB2); overrides sms.device in the config")
@_friendly
def agent_run(config_path: str, state_dir: str, modem_port: str | None) -> None:
    """Run the agent until SIGINT or SIGTERM."""
    from .devices import agent as pi_agent

    try:
        pi_agent.run(config_path, state_dir, modem_port=modem_port)
    except ValueError as exc:  # the config checker's message says which key and what to write
        raise ConfigError(f"{config_path}: {exc}") from None


@main.command()
@click.option("--buttons", default=3, show_default=True, help="How many virtual buttons.")
@click.option("--presses", default=1, show_default=True, help="Presses before waiting for Ctrl-C.")
@click.option("--exit-after", is_flag=True, help="Exit after the round trips instead of waiting for Ctrl-C.")
@click.option("--broker", type=click.Choice(["auto", "mosquitto", "embedded"]), default="auto", show_default=True,
              help="auto: Mosquitto when installed, else the embedded demo broker.")
@_friendly
def demo(buttons: int, presses: int, exit_after: bool, broker: str) -> None:
    """Run broker, gateway, command center and virtual buttons; show alarms travel and acks return."""
    from .demo import run_demo

    if not _State.verbose:
        logs.quiet()
    sys.exit(run_demo(buttons=buttons, presses=presses, exit_after=exit_after, broker=broker))


@main.command()
@click.option("--buttons", default=50, show_default=True, help="How many virtual buttons.")
@click.option("--scenario", type=click.Choice(["quiet-day", "disaster", "power-cut"]), default="disaster",
              show_default=True)
@click.option("--broker", type=click.Choice(["auto", "mosquitto", "embedded"]), default="auto", show_default=True)
@click.option("--seed", default=1, show_default=True, help="Random seed of the scenario.")
@click.option("--duration", type=click.FloatRange(min=5, max=86_400), default=None,
              help="Seconds the scenario runs [default: its own: quiet-day 60, disaster 22.5, power-cut 40]; "
                   "a disaster needs at least 22.5 s for its repeated presses.")
@_friendly
def simulate(buttons: int, scenario: str, broker: str, seed: int, duration: float | None) -> None:
    """Run a fleet of virtual buttons through a scenario on a whole local system and account for
    every alarm (exit status 0 when each reached the command center exactly once)."""
    from .simulate import run_simulation

    if not _State.verbose:
        logs.quiet()
    sys.exit(run_simulation(buttons=buttons, scenario=scenario, broker=broker, seed=seed, duration_s=duration))


# -- provisioning (docs/technician.md); the work is in siaga.provisioning.commands ---------------------

# The variable with the person's own token: provisioning.settings.TOKEN_ENV (not imported here, so
# that `siaga --help` does not load the provisioning package).
TOKEN_ENV = "SIAGA_TOKEN"


def _provisioning_config(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--config", "config", type=click.Path(dir_okay=False), envvar="SIAGA_PROVISION_CONFIG",
                        help="Provisioning TOML file [env SIAGA_PROVISION_CONFIG; default siaga-provision.toml].")(fn)


def _run(name: str, opts: dict[str, Any], quiet: bool = False) -> None:
    from .provisioning.commands import dispatch

    if not _State.verbose:
        logs.quiet()  # the steps are narrated; library INFO lines would only interleave with them
    sys.exit(dispatch(name, opts, verbose=_State.verbose, quiet=quiet))


def _token_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--token-file: the person's own token for the gateway's admin API ([[api.people]] in
    gateway.toml), so that the gateway's change log names them (docs/gateway.md, "People and roles").
    The precedence is provisioning.settings.load_token's."""
    return click.option(
        "--token-file", type=click.Path(dir_okay=False),
        help=f"File holding your personal token for the gateway (your [[api.people]] entry in gateway.toml), so "
             f"that the gateway records the change under your name [default: the token in ${TOKEN_ENV}, else the "
             "provisioning config's [gateway] admin_token_file / admin_token_env].")(fn)


def _location_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Where a button is: the same options for `provision`, `devices add` and `devices set-location`."""
    for option in reversed([
            click.option("--latlon", help='Location as a map app copies it: "-6.175392, 106.827153".'),
            click.option("--lat", help="Latitude in decimal degrees (south negative)."),
            click.option("--lon", help="Longitude in decimal degrees."),
            click.option("--address", help="Street address, e.g. \"Jl. Medan Merdeka Barat 12\"."),
            click.option("--area", help="Administrative-area code (kelurahan/kecamatan), e.g. 31.71.01.1001."),
            click.option("--site", help="Site name: buttons of one site report one incident.")]):
        fn = option(fn)
    return fn


@main.command()
@_provisioning_config
@_token_option
@click.option("--port", help="Serial port of the board, e.g. /dev/ttyUSB0 (default: the one USB board found).")
@click.option("--list-ports", is_flag=True, help="List the serial ports and exit.")
@click.option("--id", "device_id", help="Device id, e.g. jkt-gambir-0001 (or a pre-staged id).")
@click.option("--id-prefix", help="Number the device after this prefix, e.g. jkt-gambir -> jkt-gambir-0007.")
@_location_options
@click.option("--notes", help="Install notes (kept in the install log).")
@click.option("--phone", help="The number of the button's SIM, for a button with a GSM modem, e.g. +6281234567890: "
                              "registered at the gateway, which takes the button's SMS from it alone.")
@click.option("--sms-gateway", help="The gateway modem's number the button sends its SMS to (with --phone; default: "
                                    "[devices] sms_gateway of the config).")
@click.option("--kind", help="What the SOS button reports: general, medical, fire, crime, disaster.")
@click.option("--types", help="Fitted emergency-type buttons, e.g. medical,fire.")
@click.option("--wifi-ssid", help="Wi-Fi network (default: [wifi] of the config).")
@click.option("--wifi-password-file", type=click.Path(dir_okay=False), help="File holding the Wi-Fi password.")
@click.option("--wifi-password-env", help="Environment variable holding the Wi-Fi password.")
@click.option("--board", type=click.Choice(["esp32", "picow", "unix"]), help="Board type (default: detected).")
@click.option("--no-self-test", is_flag=True, help="Skip the round-trip self-test.")
@click.option("--no-mpy", is_flag=True, help="Send source files instead of compiled .mpy.")
@click.option("--force", is_flag=True, help="Provision a board that already has an identity as a new device.")
@click.option("--label", type=click.Path(dir_okay=False), help="Where to write the label (.png or .pdf).")
@click.option("--batch", type=click.Path(dir_okay=False), help="Pre-stage the devices of a CSV file (no board).")
@click.option("--quiet", "-q", is_flag=True, help="Only the result and errors.")
def provision(quiet: bool, **opts: Any) -> None:
    """Provision a board over USB serial: identity, registration, firmware, config, self-test, label.

    Give your own token for the gateway with --token-file or $SIAGA_TOKEN, so that the gateway's
    change log names you as the one who registered the button.
    """
    _run("provision", opts, quiet)


@main.group()
def devices() -> None:
    """Fleet commands: add, list, show, set-location, set-phone, configure, revoke, rotate-key, decommission,
    export.

    Each one uses the gateway's admin API. Give your own token with --token-file or $SIAGA_TOKEN,
    so that the gateway's change log names you; technicians may add, list, show, export,
    set-location, set-phone and configure, the rest needs an administrator's token.
    """


@devices.command("add")
@_provisioning_config
@_token_option
@click.argument("device_id")
@_location_options
@click.option("--notes", help="Notes for the install log, e.g. the vendor and batch.")
@click.option("--phone", help="The number of the button's SIM, for a button with a GSM modem, e.g. +6281234567890: "
                              "registered at the gateway, which takes the button's SMS from it alone.")
@click.option("--secret-file", type=click.Path(dir_okay=False),
              help="File holding the device secret (64 hex digits); default: a new one is generated and shown.")
@click.option("--mqtt-password-file", type=click.Path(dir_okay=False),
              help="File holding the broker password; default: a new one is generated and shown.")
@click.option("--label", type=click.Path(dir_okay=False), help="Where to write the label (.png or .pdf).")
@click.option("--format", "format", type=click.Choice(["text", "json"]), default="text", show_default=True)
def devices_add(**opts: Any) -> None:
    """Register a button made elsewhere (no board on USB) at the gateway and the broker; a generated
    secret and broker password are shown once."""
    _run("devices add", opts)


@devices.command("list")
@_provisioning_config
@_token_option
@click.option("--format", "format", type=click.Choice(["table", "csv", "geojson", "json"]), default="table",
              show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Write to this file instead of standard output.")
def devices_list(**opts: Any) -> None:
    """Every device: status, last seen, battery, firmware, location."""
    _run("devices list", opts)


@devices.command("show")
@_provisioning_config
@_token_option
@click.argument("device_id")
def devices_show(**opts: Any) -> None:
    """One device, its latest alarms and its install log."""
    _run("devices show", opts)


@devices.command("set-location")
@_provisioning_config
@_token_option
@click.argument("device_id")
@_location_options
def devices_set_location(**opts: Any) -> None:
    """Correct a registered button's coordinates, address, area or site at the gateway; only what is
    given changes (--site "" removes the site)."""
    _run("devices set-location", opts)


@devices.command("configure")
@_provisioning_config
@_token_option
@click.argument("device_id")
@click.option("--heartbeat-s", help="Seconds between heartbeats, 5-86400.")
@click.option("--retry", help="An unacknowledged alarm's resend backoff in ms, first and longest: \"3000,60000\".")
@click.option("--reconnect", help="The network reconnect backoff in ms, first and longest: \"500,5000\".")
@click.option("--sms-fallback-s", help="Seconds without an ack before an alarm also goes by SMS, 5-3600.")
@click.option("--sms-test-every-s", help="Seconds between backup-path test SMS, 3600-2592000, or 0 for none.")
@click.option("--wifi", multiple=True, help="A Wi-Fi network the button tries, in the order given (1-3; they "
                                            "replace its list). Each password is asked without echo.")
@click.option("--wifi-password-file", multiple=True, type=click.Path(dir_okay=False),
              help="File holding a Wi-Fi password: one per --wifi, in the same order.")
@click.option("--wifi-password-env", multiple=True,
              help="Environment variable holding a Wi-Fi password: one per --wifi, in the same order.")
def devices_configure(**opts: Any) -> None:
    """Change a registered button's settings over the network: the gateway sends them to the button,
    signed (Wi-Fi passwords encrypted), and the button applies them and reports the version in its
    heartbeats (see devices show). Its location: devices set-location, which sends it too."""
    _run("devices configure", opts)


@devices.command("set-phone")
@_provisioning_config
@_token_option
@click.argument("device_id")
@click.argument("number", required=False)
@click.option("--remove", is_flag=True, help="Remove the number: the gateway then takes no SMS as this button's.")
def devices_set_phone(**opts: Any) -> None:
    """Register the number of a button's SIM at the gateway (a new or replaced SIM), e.g.
    +6281234567890; the gateway takes the button's SMS from this number alone."""
    _run("devices set-phone", opts)


@devices.command("revoke")
@_provisioning_config
@_token_option
@click.argument("device_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def devices_revoke(**opts: Any) -> None:
    """Revoke a device at the gateway and the broker, effective at once."""
    _run("devices revoke", opts)


@devices.command("rotate-key")
@_provisioning_config
@_token_option
@click.argument("device_id")
@click.option("--port", help="The board's serial port: write the new key now (else it waits as pending).")
@click.option("--no-self-test", is_flag=True, help="Skip the self-test after writing the new key.")
def devices_rotate_key(**opts: Any) -> None:
    """Give a device a new secret: written to the board now, or pending until it is."""
    _run("devices rotate-key", opts)


@devices.command("decommission")
@_provisioning_config
@_token_option
@click.argument("device_id")
@click.option("--port", help="Also remove the config and state from the board on this port.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def devices_decommission(**opts: Any) -> None:
    """Retire a device for good (its history stays at the gateway)."""
    _run("devices decommission", opts)


@devices.command("export")
@_provisioning_config
@_token_option
@click.option("--format", "format", type=click.Choice(["csv", "geojson"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Write to this file instead of standard output.")
def devices_export(**opts: Any) -> None:
    """Export the fleet as CSV or GeoJSON (a map layer)."""
    _run("devices export", opts)


# -- signed firmware bundles (docs/ota.md); the work is in siaga.provisioning.bundle ------------------

_BOARDS = ("esp32", "picow", "unix")


def _bundle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A ProvisionError (a missing key, a bad flag) as its message and hint, with its exit code."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .provisioning.errors import ProvisionError

        try:
            return fn(*args, **kwargs)
        except ProvisionError as exc:
            if _State.verbose:
                raise
            click.echo(t("cli.failed", error=exc), err=True)
            sys.exit(exc.exit_code)
    return _friendly(wrapper)


@main.group("firmware")
def firmware_group() -> None:
    """Signed firmware bundles for updates over the air: the fleet key, building a bundle, checking
    one as a button would, and publishing it to the gateway (see docs/ota.md)."""


@firmware_group.command("keygen")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the new private key (PEM, readable by its owner only); an existing file is "
                   "never overwritten.")
@_bundle_errors
def firmware_keygen(out: str) -> None:
    """Make the fleet's signing key. The private key goes to --out: keep it offline and backed up. The
    public key is printed on standard output: it goes into the buttons' firmware and to whoever checks
    bundles."""
    from pathlib import Path

    from .provisioning.bundle import generate_key, key_id

    public = generate_key(Path(out))
    click.echo(t("bundle.key_written", path=out, key_id=key_id(public)), err=True)
    click.echo(public.hex())


def _refusal_text(reason: str) -> str:
    texts = {
        "malformed": t("bundle.refused.malformed"),
        "unknown_key": t("bundle.refused.unknown_key"),
        "bad_signature": t("bundle.refused.bad_signature"),
        "wrong_board": t("bundle.refused.wrong_board"),
        "boot_too_old": t("bundle.refused.boot_too_old"),
        "wrong_hash": t("bundle.refused.wrong_hash"),
        "too_large": t("bundle.refused.too_large"),
    }
    return texts.get(reason, reason)


@firmware_group.command("build")
@click.option("--board", required=True, type=click.Choice(_BOARDS), help="The board the bundle is for.")
@click.option("--version", "version", required=True,
              help='The version the bundle carries, MAJOR.MINOR.PATCH, e.g. "0.3.0".')
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False),
              help="The fleet's private key (written by siaga firmware keygen).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the bundle.")
@click.option("--min-boot", default=1, show_default=True, type=int,
              help="The lowest boot level a button must have to install the bundle, 1-65535.")
@_bundle_errors
def firmware_build(board: str, version: str, key_path: str, out: str, min_boot: int) -> None:
    """Compile the board's firmware with mpy-cross, sign it with the fleet key and write it as one
    bundle file; it is checked as a button would check it before it is written."""
    from pathlib import Path

    from .provisioning.bundle import build, write

    built = build(board=board, version=version, key_path=Path(key_path), min_boot=min_boot)
    write(Path(out), built.data)
    if built.firmware_version != version:
        click.echo(f"{t('ui.warning')} {t('bundle.version_differs', version=version, reported=built.firmware_version)}",
                   err=True)
    click.echo(t("bundle.built", path=out, version=version, board=board, files=len(built.manifest["files"]),
                 kib=f"{built.size / 1024:.1f}", key_id=built.manifest["key"], bytes=len(built.data)))


@firmware_group.command("verify")
@click.argument("bundle_file", type=click.Path(dir_okay=False))
@click.option("--pub", "pubs", required=True, multiple=True,
              help="A fleet public key, 64 hex digits as siaga firmware keygen printed it; repeat for several.")
@click.option("--board", type=click.Choice(_BOARDS), help="Also refuse a bundle made for another board.")
@click.option("--boot", type=click.IntRange(0, 65535),
              help="Also refuse a bundle that needs a higher boot level than this.")
@_bundle_errors
def firmware_verify(bundle_file: str, pubs: tuple[str, ...], board: str | None, boot: int | None) -> None:
    """Check a bundle as a button does: the key, the signature, the board, the boot level and every
    file's SHA-256. Prints the manifest (JSON) and exits 0, or prints the reason it is refused (one
    word, as buttons report it) and exits 2."""
    import json
    from pathlib import Path

    from .provisioning.bundle import Refused, check_file, key_id, parse_public

    keys = {key_id(public): public for public in map(parse_public, pubs)}
    try:
        manifest = check_file(Path(bundle_file), keys, board, boot)
    except Refused as refused:
        click.echo(t("bundle.refused", path=bundle_file, reason=refused.reason, why=_refusal_text(refused.reason)),
                   err=True)
        click.echo(refused.reason)
        sys.exit(2)
    click.echo(t("bundle.verified", path=bundle_file, version=manifest["version"], board=manifest["board"],
                 files=len(manifest["files"]), key_id=manifest["key"]), err=True)
    click.echo(json.dumps(manifest, indent=1, sort_keys=True))



@firmware_group.command("publish")
@_provisioning_config
@_token_option
@click.argument("bundle_file", type=click.Path(dir_okay=False))
def firmware_publish(**opts: Any) -> None:
    """Upload a signed bundle to the gateway, which checks it against its fleet keys and keeps it for
    rollouts (siaga fleet update). Prints its id, version and board; a refused bundle prints the
    reason and exits 2."""
    _run("firmware publish", opts)


# -- rollouts of published firmware (docs/technician.md); the work is in siaga.provisioning.fleet -------

@main.group("fleet")
def fleet_group() -> None:
    """Firmware updates over the air: start or widen a rollout, follow it, cancel it.

    Each one uses the gateway's admin API, with your own token (--token-file or $SIAGA_TOKEN) as for
    siaga devices.
    """


@fleet_group.command("update")
@_provisioning_config
@_token_option
@click.option("--version", "version", required=True,
              help='The published firmware version to roll out, e.g. "0.3.0" (siaga firmware publish).')
@click.option("--percent", required=True, type=click.IntRange(1, 100),
              help="The share of the buttons of that version's boards to offer it to, 1-100; run again with a "
                   "higher one to widen the rollout.")
@click.option("--max-failed-percent", type=click.IntRange(0, 100),
              help="Halt the rollout when more than this share of the buttons offered it fail [default: the "
                   "gateway's [ota] max_failed_percent].")
@click.option("--resume", is_flag=True, help="Resume a rollout the gateway halted, once the cause is fixed.")
@click.option("--allow-downgrade", is_flag=True,
              help="Roll the version out even to buttons that run a newer one (the gateway refuses otherwise).")
def fleet_update(**opts: Any) -> None:
    """Start the rollout of a published firmware version, or widen the one under way. A halted rollout
    is refused (exit 6) until it is resumed with --resume."""
    _run("fleet update", opts)


@fleet_group.command("rollouts")
@_provisioning_config
@_token_option
@click.option("--format", "format", type=click.Choice(["table", "json"]), default="table", show_default=True)
def fleet_rollouts(**opts: Any) -> None:
    """Every rollout: version, percent, state and how many of its buttons are in each state."""
    _run("fleet rollouts", opts)


@fleet_group.command("rollout")
@_provisioning_config
@_token_option
@click.argument("rollout_id", type=click.IntRange(1))
@click.option("--format", "format", type=click.Choice(["table", "json"]), default="table", show_default=True)
def fleet_rollout(**opts: Any) -> None:
    """One rollout and the state of each of its buttons, with the reason of each failure."""
    _run("fleet rollout", opts)


@fleet_group.command("cancel")
@_provisioning_config
@_token_option
@click.argument("rollout_id", type=click.IntRange(1))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def fleet_cancel(**opts: Any) -> None:
    """Cancel a rollout: the gateway offers it to no more buttons; buttons already updated keep the new
    firmware."""
    _run("fleet cancel", opts)


if __name__ == "__main__":
    main()

"""The `siaga` command: one entry point for every part of the system.

Errors a person can fix (a missing config file, a refused login) are printed as one line and
exit with status 2; a traceback appears only with --verbose.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from . import logs
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
            click.echo(f"siaga: {exc}", err=True)
            sys.exit(2)
        except ExceptionGroup as group:  # errors out of a TaskGroup arrive grouped
            if _State.verbose:
                raise
            for exc in group.exceptions:
                click.echo(f"siaga: {type(exc).__name__}: {exc}", err=True)
            sys.exit(2)
    return wrapper


@click.group()
@click.option("--verbose", "-v", is_flag=True, help="Debug logging and full tracebacks.")
def main(verbose: bool) -> None:
    """Siaga: panic buttons for emergency command centers."""
    _State.verbose = verbose
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


def _not_yet(name: str, issue: int, what: str) -> None:
    @main.command(name, help=f"{what} (not available yet).", context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def _cmd(args: tuple[str, ...]) -> None:
        click.echo(f"siaga {name}: not available in this version yet (tracked in issue {issue}).", err=True)
        sys.exit(2)


_not_yet("provision", 5, "Provision a board over USB serial")
_not_yet("devices", 5, "Fleet commands: list, show, revoke, rotate-key, decommission")
_not_yet("simulate", 7, "Run a fleet of virtual buttons")


if __name__ == "__main__":
    main()

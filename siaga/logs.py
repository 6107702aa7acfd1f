"""Logging set-up shared by the command-line entry points."""

from __future__ import annotations

import logging
import sys


def setup(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Third-party chatter that says nothing an operator can act on.
    for name in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)


def quiet() -> None:
    """For narrated commands (the demo): only warnings and errors besides the narration."""
    logging.getLogger().setLevel(logging.WARNING)
    # amqtt logs every state transition of every session through the transitions library.
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.ERROR)

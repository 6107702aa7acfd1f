"""Logging set-up shared by the command-line entry points."""

from __future__ import annotations

import json
import logging
import sys
import time


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


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors: time, level, logger, message, and exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def use_json() -> None:
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter())

"""Run the command center under uvicorn."""

from __future__ import annotations

import logging
import socket

import uvicorn
from fastapi import FastAPI

from siaga.web import server_options

from .app import close_live_streams, create_app
from .config import CCConfig

log = logging.getLogger(__name__)

# uvicorn exits with 3 when startup fails; we keep its convention.
STARTUP_FAILURE = 3


def run(config_path: str) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully. SIGHUP re-reads the people and
    their tokens from the configuration file (app.reload_people).

    uvicorn handles both signals: it stops accepting connections, lets requests in flight finish
    (up to the timeout below), then runs the lifespan shutdown, which stops the callback sender and
    closes the database. Afterwards uvicorn raises the signal again with its default action, so a
    stopped process reports "terminated by SIGTERM" (as service managers expect), not exit code 0.
    """
    cfg = CCConfig.load(config_path)
    _setup_logging(cfg.log_level)
    app = create_app(cfg, config_path=config_path)
    server = _Server(
        app,
        uvicorn.Config(
            app,
            host=cfg.host,
            port=cfg.port,
            lifespan="on",  # a failing startup (e.g. a too-new database) must stop the process
            log_config=None,  # keep our logging setup; uvicorn's loggers propagate to it
            timeout_graceful_shutdown=10,
            forwarded_allow_ips=cfg.forwarded_allow_ips,
            # no server header, a cap on connections, deadlines for headers and bodies
            **server_options(cfg.limits),
        ),
    )
    server.run()
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)


class _Server(uvicorn.Server):
    """uvicorn waits for open connections to finish before it shuts the app down; the console's event
    streams never finish on their own, so they are ended first."""

    def __init__(self, app: FastAPI, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        close_live_streams(self._app)
        await super().shutdown(sockets)


def _setup_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root.setLevel(level.upper())
    # At debug level these libraries log every SQL statement with its parameters and every
    # connection step; that drowns our own debug output. Our debug level does not include theirs.
    for noisy in ("aiosqlite", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))

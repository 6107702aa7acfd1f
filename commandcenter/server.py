"""Run the command center under uvicorn.

Several processes on one machine can share one port (`[server] reuse_port = true`): each opens the
listening socket with SO_REUSEPORT and the kernel spreads new connections over them, so a console,
a gateway or a load balancer needs one address, and a process that stops only takes its own
connections with it. `[server] direct_port` adds a port of the process's own, to reach that one
process (a health check per process, a test). Both need PostgreSQL (docs/commandcenter.md, "Several
processes"): processes on one SQLite file would each see only their own changes.
"""

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
    sockets = _sockets(cfg)
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
    try:
        server.run(sockets=sockets)
    finally:
        for sock in sockets or ():
            sock.close()
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)


def _sockets(cfg: CCConfig) -> list[socket.socket] | None:
    """The listening sockets when we open them ourselves (reuse_port, direct_port); None lets uvicorn
    open its one socket as usual."""
    if not cfg.reuse_port and cfg.direct_port is None:
        return None
    if cfg.reuse_port and cfg.db_url is None:
        log.warning("server.reuse_port with a SQLite store: processes sharing the port would each see only "
                    "their own changes; use a PostgreSQL store for several processes")
    sockets: list[socket.socket] = []
    try:
        sockets.append(listen(cfg.host, cfg.port, reuse_port=cfg.reuse_port))
        if cfg.direct_port is not None:
            sockets.append(listen(cfg.host, cfg.direct_port, reuse_port=False))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        log.error("cannot listen on %s: %s", cfg.host, exc)
        raise SystemExit(STARTUP_FAILURE) from None
    return sockets


def listen(host: str, port: int, *, reuse_port: bool, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket; with `reuse_port`, one that other processes can open on the same port
    (SO_REUSEPORT, Linux and the BSDs; each must set it, and run as the same user)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            if not hasattr(socket, "SO_REUSEPORT"):
                raise OSError("SO_REUSEPORT is not available on this system")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


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
    for noisy in ("aiosqlite", "httpcore", "psycopg"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
    # The pool logs every connection it hands out at INFO; its warnings (a failed connection) stay.
    logging.getLogger("psycopg.pool").setLevel(max(logging.WARNING, root.level))

"""uvicorn servers embedded in a larger asyncio program (the gateway, the demo)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import uvicorn

from .web import ServerLimits, server_options


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves SIGINT and SIGTERM to the program that runs it.

    uvicorn's own `capture_signals` replaces the process's handlers while it serves; with two
    servers in one process, or a program with its own shutdown order, a Ctrl-C then forces an exit
    that skips the application's lifespan shutdown. The owner sets `should_exit` instead.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def embedded_server(app: Any, host: str, port: int, *, limits: ServerLimits | None = None,
                    **config: Any) -> EmbeddedServer:
    """Served like every Siaga HTTP entrance: no `server` header, a cap on connections, deadlines for
    requests' headers and bodies (siaga.web.server_options)."""
    options = {**server_options(limits or ServerLimits()), **config}
    return EmbeddedServer(uvicorn.Config(app, host=host, port=port, log_level="warning", **options))

"""An HTTP server in the test process, standing in for whatever the code under test calls over HTTP.

Several tests receive what Siaga sends (webhooks, CAP alerts, state reports, the device routes a
tool calls) with a real server on a loopback port. The plumbing is the same each time and lives
here: a thread serving the requests, a port kept after the first bind so that a receiver can be
stopped and started again where the sender expects it (an outage), no request log, no traceback
when a client hangs up. What a test records and answers stays in the test, in its `handle`.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with any query string
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)  # Content-Length is added
    # Run once the answer is written: record there what a test waits for, so that when the wait is
    # over the sender has its answer.
    after: Callable[[], None] | None = None


class HttpReceiver:
    """Serves every GET, POST, PUT, PATCH and DELETE on 127.0.0.1:`port` (0: a free one) with
    `handle`, which returns an Answer or just a status. Bound on construction, so `port` and `url`
    are known before `start()`; `stop()` closes the socket and `start()` binds the same port again."""

    def __init__(self, handle: Callable[[Request], Answer | int], *, port: int = 0, path: str = "") -> None:
        self._handle = handle
        self._path = path
        self._server: _Server | None = _Server(port, handle)
        self._port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Where the sender is pointed: the base address plus the `path` given (any path is served)."""
        return f"http://127.0.0.1:{self._port}{self._path}"

    def start(self) -> None:
        if self._thread is not None:
            return
        if self._server is None:
            self._server = _Server(self._port, self._handle)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True,
                                        name=f"http-receiver-{self._port}")
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        if self._thread is not None:
            self._server.shutdown()  # waits for serve_forever, so only when it runs
            self._thread.join(5)
            self._thread = None
        self._server.server_close()
        self._server = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True  # a request still in `handle` does not hold up stop()

    def __init__(self, port: int, handle: Callable[[Request], Answer | int]) -> None:
        self.respond = handle
        super().__init__(("127.0.0.1", port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client that hung up is not a test failure
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        answer = self.server.respond(request)
        if isinstance(answer, int):
            answer = Answer(answer)
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)
        if answer.after is not None:
            answer.after()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass

"""What both HTTP services (the command center and the gateway's admin API) do the same way at their
entrance, before any handler runs (docs/security.md):

- `StrictRoute`: JSON bodies are parsed strictly (no NaN or Infinity, no number that overflows a
  float, nesting deeper than the parser can take is a 422, not a crash);
- `install_error_handlers`: every validation problem becomes a 4xx with the documented shape
  `{"detail": ..., "message": ...}` (never an echo of the input, which may hold a credential or a
  non-finite number; `message` says it in the caller's language, siaga/errortext.py);
- `AuthGate`: authentication from the headers alone, before a byte of the body is read;
- `Throttle` and `FailureLog`: failed credentials are limited per client address and per name, and
  recorded as one line per address and name and minute rather than one row per attempt;
- `server_options` and `GuardedH11Protocol`: uvicorn without a `server` header, with a cap on
  connections, and with deadlines for a request's headers and body (slow clients are cut off).

Body sizes are limited by FastAPI itself (`max_body_size` per router and per route), which counts
the bytes as they arrive and answers 413 before the body is parsed; `JsonRefusals` gives that 413 the
one refusal shape.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import h11
from fastapi import FastAPI, Request
from fastapi import HTTPException as FastAPIHTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException  # the base of fastapi.HTTPException: handles both
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from . import errortext, i18n
from .settings import ConfigError

log = logging.getLogger(__name__)

KIB = 1024
MIB = 1024 * KIB
T = TypeVar("T")


# ---- strict JSON ---------------------------------------------------------------------------------

def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range for a number")
    return value


def loads_strict(body: bytes | str) -> Any:
    """`json.loads` as the APIs need it. Every problem is a `json.JSONDecodeError` (FastAPI turns it
    into a 422): NaN and Infinity (Python accepts them, JSON does not), numbers beyond a double,
    integers longer than Python's digit limit, invalid UTF-8, nesting deeper than the recursion limit."""
    try:
        return json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None
    except ValueError as exc:  # including UnicodeDecodeError and the int digit limit
        raise json.JSONDecodeError(str(exc)[:200], "", 0) from None


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_strict(await self.body())
        return self._json


class StrictRoute(APIRoute):
    """The route class of both services: bodies parsed by `loads_strict`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler


# ---- one error shape -----------------------------------------------------------------------------

def _text(value: Any) -> str:
    """Text a JSON answer can carry: a lone surrogate (JSON's \\ud800 can name one, in a key or a path)
    cannot be encoded as UTF-8 and would turn the refusal into a 500."""
    return str(value).encode("utf-8", "replace").decode("utf-8")


def _plain(value: Any) -> Any:
    """A location element (a field name, a list index) as JSON can carry it."""
    return value if isinstance(value, int) and not isinstance(value, bool) else _text(value)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = []
    for error in exc.errors()[:50]:
        item: dict[str, Any] = {
            "type": _text(error.get("type", "invalid")),
            "loc": [_plain(p) for p in error.get("loc", ())],
            "msg": _text(error.get("msg", "invalid value"))[:300],
        }
        # For a JSON syntax error, say where and why; never the input itself.
        ctx = error.get("ctx")
        if item["type"] == "json_invalid" and isinstance(ctx, dict) and "error" in ctx:
            item["msg"] = f"invalid JSON: {_text(ctx['error'])[:200]}"
        detail.append(item)
    message = errortext.validation_message((item["loc"] for item in detail), await errortext.language_of(request))
    return JSONResponse({"detail": detail, "message": message}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail: Any = _text(exc.detail) if isinstance(exc.detail, str) else exc.detail
    if exc.status_code == 413:
        detail = _too_large(request.scope)
    body = {"detail": detail}
    if isinstance(detail, str):  # in the caller's language beside the English (siaga/errortext.py)
        body["message"] = errortext.message(detail, await errortext.language_of(request), exc.status_code)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def _too_large(scope: Scope) -> str:
    """What a 413 says: the route's limit, which the body limiter leaves in the scope."""
    limit = scope.get(MAX_BODY_SIZE_SCOPE_KEY)
    return "request body too large" + (f": at most {limit} bytes here" if isinstance(limit, int) else "")


def install_error_handlers(app: FastAPI) -> None:
    """Every 4xx in the shape `{"detail": ..., "message": ...}`: `detail` a string in English, or for
    validation problems a list of `{type, loc, msg}`; `message` one sentence in the caller's language.
    The input is never echoed."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)


def error_json(status: int, detail: str, headers: Mapping[str, str] | None = None,
               lang: str = i18n.DEFAULT_LANGUAGE) -> JSONResponse:
    """A refusal written before any handler runs: the English `detail` and its `message` in `lang`."""
    detail = _text(detail)
    return JSONResponse({"detail": detail, "message": errortext.message(detail, lang, status)},
                        status_code=status, headers=dict(headers) if headers else None)


# ---- authentication before the body --------------------------------------------------------------

class Operations:
    """The operations of an OpenAPI document: for a request's path, the methods documented for it and
    the security schemes each requires (an empty set: none)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._paths: list[tuple[re.Pattern[str], dict[str, frozenset[str]]]] = []
        # Literal paths before templated ones: /devices/faults is not /devices/{device_id}.
        for path, ops in sorted(schema.get("paths", {}).items(), key=lambda item: item[0].count("{")):
            pattern = re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$")
            methods = {m.upper(): frozenset(name for req in op.get("security", []) for name in req)
                       for m, op in ops.items()}
            self._paths.append((pattern, methods))

    def methods(self, path: str) -> dict[str, frozenset[str]] | None:
        for pattern, methods in self._paths:
            if pattern.match(path):
                return methods
        return None


class AuthGate:
    """ASGI middleware: who is asking, decided from the headers before the body is read, for every
    operation of the app's OpenAPI document: the document is the table of what needs which
    credential, so no route can be left out. For a documented operation `authenticate(request,
    schemes)` runs with the security schemes it requires (maybe none); it stores who is asking on
    `request.state` or raises an `HTTPException` (401, 403, 429), which is answered at once: the body
    is then never read. A documented path called with another method is answered 405 with every
    method it has in `Allow`. Paths the document does not name (the console's pages, static files)
    go on to the router."""

    def __init__(self, app: ASGIApp,
                 authenticate: Callable[[Request, frozenset[str]], Awaitable[None]]) -> None:
        self.app = app
        self.authenticate = authenticate
        self._operations: Operations | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self._operations is None:
                self._operations = Operations(scope["app"].openapi())
            methods = self._operations.methods(scope["path"])
            if methods is not None:
                method = scope["method"]
                schemes = methods.get("GET" if method == "HEAD" else method)
                # Nobody is signed in yet: the header says the language.
                lang = errortext.from_headers(Headers(scope=scope))
                if schemes is None:
                    allow = ", ".join(sorted(methods))
                    await error_json(405, "method not allowed", {"Allow": allow}, lang)(scope, receive, send)
                    return
                try:
                    await self.authenticate(Request(scope), schemes)
                except HTTPException as exc:
                    await error_json(exc.status_code, str(exc.detail), exc.headers, lang)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class JsonRefusals:
    """ASGI middleware: a 413 that Starlette's body limit writes itself (as `text/plain`, when the
    announced Content-Length alone is too large) is rewritten in the one refusal shape, so that every
    4xx of the service is `{"detail": ...}` as documented."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rewriting = False

        async def send_json(message: Message) -> None:
            nonlocal rewriting
            if message["type"] == "http.response.start" and message["status"] == 413:
                types = [v for k, v in message.get("headers", []) if k.lower() == b"content-type"]
                rewriting = not types or not types[0].startswith(b"application/json")
            if rewriting:
                if message["type"] == "http.response.start":
                    return  # sent with the body, whose length is known then
                detail = _too_large(scope)
                lang = errortext.from_headers(Headers(scope=scope))
                body = json.dumps({"detail": detail, "message": errortext.message(detail, lang, 413)}).encode()
                await send({"type": "http.response.start", "status": 413,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                rewriting = False
                return
            await send(message)

        await self.app(scope, receive, send_json)


def document_entrance(app: FastAPI) -> None:
    """Add to the app's OpenAPI document what the entrance may answer to any operation: 413 where
    there is a body, 429 where a credential is needed."""
    generate = app.openapi
    shape = {"type": "object", "properties": {"detail": {}, "message": {"type": "string"}}, "required": ["detail"]}
    error = {"application/json": {"schema": shape}}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for ops in schema.get("paths", {}).values():
            for op in ops.values():
                answers = op.setdefault("responses", {})
                if "requestBody" in op:
                    answers.setdefault("413", {"description": "the body is larger than this route takes "
                                                              "(docs/security.md)", "content": error})
                if op.get("security"):
                    answers.setdefault("429", {
                        "description": "too many wrong credentials from this address, or for this name",
                        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
                        "content": error})
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def token_matches(presented: str, expected: str) -> bool:
    """Constant-time. Configured tokens are visible ASCII; a presented non-ASCII one cannot match."""
    try:
        return hmac.compare_digest(presented.encode("ascii"), expected.encode("ascii"))
    except UnicodeEncodeError:
        return False


def find_holder(presented: str, holders: Mapping[str, T]) -> T | None:
    """Whose token this is (holders: token -> whoever). Every token is compared instead of a dict
    lookup, so timing tells nothing about them."""
    found = None
    for token, holder in holders.items():
        if token_matches(presented, token):
            found = holder
    return found


def guard_entrance(app: FastAPI, authenticate: Callable[[Request, frozenset[str]], Awaitable[None]],
                   rules: ThrottleRules, body_max: int) -> Guard:
    """Put a service behind this module's entrance: strict JSON on the app's own routes, `body_max`
    for every route that says nothing else, one refusal shape, `authenticate` before the body, the
    throttle on `app.state.guard`, and the OpenAPI document saying so. The limit sits on the router,
    not the app: an app-wide one runs outside every middleware and answers a too-large Content-Length
    in plain text, past JsonRefusals; routers included later inherit it."""
    app.router.route_class = StrictRoute
    app.router.max_body_size = body_max
    guard = Guard(Throttle(rules), FailureLog())
    app.state.guard = guard
    install_error_handlers(app)
    app.add_middleware(AuthGate, authenticate=authenticate)
    app.add_middleware(JsonRefusals)
    document_entrance(app)
    return guard


def bearer_token(request: Request) -> str | None:
    """The token of `Authorization: Bearer <token>` (the scheme in any case, RFC 9110 §11.1), or
    None. Anything else in the header (a bare token, Basic, two tokens) is not a bearer token."""
    value = request.headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    token = token.strip(" ")
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def client_address(request: Request) -> str:
    """The client's address as uvicorn reports it (behind a trusted reverse proxy, from
    X-Forwarded-For: see `forwarded_allow_ips`)."""
    return request.client.host if request.client is not None else "unknown"


# ---- throttling of failed credentials ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ThrottleRules:
    """How many failed credentials are answered before 429 (docs/security.md, "Throttling").

    `per_address`: failed sign-ins and bearer tokens from one client address. When they are used up,
    every request from that address that carries a credential is answered 429 without checking it,
    until the oldest failure leaves the window.
    `per_name`: failed sign-ins naming one configured person, from any address. When they are used
    up the name is locked: wrong tokens for it are answered 429. The right token still signs in: a
    lock never keeps the real person out, so knowing a name gives an attacker no way to lock an
    operator out of the console during an emergency.
    """

    per_address: str = "10/minute"
    per_name: str = "20/5minutes"
    record_every_s: float = 60.0  # failed attempts are written to the audit log this often

    def __post_init__(self) -> None:
        for key in ("per_address", "per_name"):
            try:
                item: RateLimitItem | None = parse(getattr(self, key))
            except ValueError:
                item = None
            if item is None or item.amount < 1:
                raise ConfigError(f'throttle.{key}: write it like "10/minute" or "20/5minutes"')
        if not 0 < self.record_every_s <= 3600:
            raise ConfigError("throttle.record_every_s must be more than 0 and at most 3600")

    def items(self) -> tuple[RateLimitItem, RateLimitItem]:
        return parse(self.per_address), parse(self.per_name)


class Throttle:
    """Failed-credential limits on a moving window (the `limits` library, in memory: one process)."""

    def __init__(self, rules: ThrottleRules | None = None) -> None:
        self.rules = rules or ThrottleRules()
        self._address, self._name = self.rules.items()
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def address_wait(self, address: str) -> int | None:
        """Seconds until `address` may try again, or None if it may now."""
        return self._wait(self._address, "addr", address)

    def name_wait(self, name: str) -> int | None:
        return self._wait(self._name, "name", name)

    def failed(self, address: str, name: str | None = None) -> None:
        self._limiter.hit(self._address, "addr", address)
        if name is not None:
            self._limiter.hit(self._name, "name", name)

    def _wait(self, item: RateLimitItem, *key: str) -> int | None:
        if self._limiter.test(item, *key):
            return None
        stats = self._limiter.get_window_stats(item, *key)
        return max(1, math.ceil(stats.reset_time - time.time()))

    def too_many(self, wait: int) -> FastAPIHTTPException:
        return FastAPIHTTPException(429, f"too many failed attempts: try again in {wait} s",
                                    headers={"Retry-After": str(wait)})


@dataclass(slots=True)
class _Failures:
    count: int = 0
    first: float = 0.0
    last: float = 0.0


@dataclass
class FailureLog:
    """Failed attempts kept in memory and written out as one record per (what, who, address) and
    flush, so that an attacker's thousand attempts are one audit row, not a thousand fsyncs. At most
    `max_keys` different keys are kept between flushes; beyond that they are counted under one key."""

    max_keys: int = 1000
    _pending: OrderedDict[tuple[str, str, str], _Failures] = field(default_factory=OrderedDict)

    def add(self, what: str, who: str, address: str) -> None:
        key = (what, who, address)
        if key not in self._pending and len(self._pending) >= self.max_keys:
            key = (what, "(many)", "(many addresses)")
        entry = self._pending.setdefault(key, _Failures(first=time.time()))
        entry.count += 1
        entry.last = time.time()

    def take(self) -> list[tuple[str, str, str, int, float, float]]:
        """The records since the last call: (what, who, address, count, first, last)."""
        out = [(w, n, a, f.count, f.first, f.last) for (w, n, a), f in self._pending.items()]
        self._pending.clear()
        return out


@dataclass
class Guard:
    """Throttling and the record of failed credentials, one per app (kept on `app.state.guard`)."""

    throttle: Throttle
    failures: FailureLog

    def check_address(self, address: str) -> None:
        """Refuse (429) an address that has used up its failed attempts."""
        wait = self.throttle.address_wait(address)
        if wait is not None:
            raise self.throttle.too_many(wait)

    def failed(self, what: str, who: str, address: str, name: str | None = None) -> None:
        """A wrong credential: counted against the address (and a configured name), and recorded."""
        self.throttle.failed(address, name)
        self.failures.add(what, who, address)


async def flush_every(interval_s: float, flush: Callable[[], Awaitable[None]]) -> None:
    """Call `flush` every `interval_s` until cancelled, and once more on the way out."""
    try:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await flush()
            except Exception:
                log.exception("could not write failed attempts to the audit log")
    finally:
        try:
            await flush()
        except Exception:
            log.exception("could not write failed attempts to the audit log")


# ---- uvicorn ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Deadlines and caps of an HTTP server (docs/security.md, "Slow and many clients")."""

    header_timeout_s: float = 10.0  # from connecting (or the end of the last answer) to a request's last header line
    body_timeout_s: float = 30.0  # from the last header line to the body's last byte
    max_connections: int = 1000  # beyond this uvicorn answers 503

    def __post_init__(self) -> None:
        if not (0 < self.header_timeout_s <= 3600 and 0 < self.body_timeout_s <= 3600):
            raise ConfigError("server: header_timeout_s and body_timeout_s must be more than 0 and at most 3600")
        if not 1 <= self.max_connections <= 1_000_000:
            raise ConfigError("server.max_connections must be from 1 to 1000000")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines. uvicorn closes idle keep-alive connections, but a client
    that sends one header byte every few seconds, or connects and sends nothing, is held for ever;
    here the headers must be complete within `header_timeout_s` and the body within `body_timeout_s`,
    or the connection is closed. A request being answered (an event stream too) has no deadline."""

    limits = ServerLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._timed_cycle: object = None
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return  # still waiting for a request's headers: the header deadline runs
        if cycle.more_body and self.conn.their_state is h11.SEND_BODY:
            if self._timed_cycle is not cycle:
                self._timed_cycle = cycle
                self._arm(self.limits.body_timeout_s)
        else:
            self._disarm()  # the request is complete; the application answers in its own time

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm(self.limits.header_timeout_s)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.debug("closing a connection from %s: request not complete in time", self.client)
            self.transport.close()


def server_options(limits: ServerLimits) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for a service facing untrusted clients."""
    protocol = type("SiagaH11Protocol", (GuardedH11Protocol,), {"limits": limits})
    return {
        "http": protocol,
        "server_header": False,
        "limit_concurrency": limits.max_connections,
        "h11_max_incomplete_event_size": 16 * KIB,  # the request line and headers together
    }


def credential_id(token: str) -> str:
    """What a service keeps to recognise a credential later without keeping it: a session records
    the id of the token it was made with, and ends when that person's token is no longer the same."""
    return hashlib.sha256(b"siaga-credential\0" + token.encode("utf-8", "replace")).hexdigest()[:32]

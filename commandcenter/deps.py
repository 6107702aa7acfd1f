"""Request dependencies shared by the routers: services, and who is asking (bearer token or session
cookie) with what role."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Path, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from siaga.web import Guard, bearer_token, client_address, find_holder, token_matches

from .config import CCConfig, Role
from .domain import utc_now
from .store import Incident, Store

if TYPE_CHECKING:
    from .live import Broadcaster

log = logging.getLogger(__name__)

SESSION_COOKIE = "siaga_session"
CSRF_HEADER = "X-CSRF-Token"
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Services:
    """What the handlers need; built in the app's lifespan and kept on `app.state.services`."""

    config: CCConfig
    store: Store
    notify_callbacks: Callable[[], None]
    live: Broadcaster
    # Called after intake opened incidents, so the escalation timer looks at them.
    notify_escalation: Callable[[], None]

    async def publish(self, numbers: list[int]) -> None:
        """Tell the open consoles about these incidents (after the change is committed). A failure
        here must not turn a committed alarm into an error answer: the consoles re-sync anyway."""
        if not numbers or not self.live.has_subscribers:
            return
        try:
            self.live.publish_incidents(await self.store.get_incidents(numbers))
        except Exception:
            log.exception("could not publish incidents %s to the consoles", numbers[:10])

    async def publish_one(self, incident: Incident) -> None:
        if self.live.has_subscribers:
            self.live.publish_incidents([incident])


@dataclass(frozen=True, slots=True)
class Principal:
    """A signed-in person: by bearer token (API clients) or session cookie (the console)."""

    name: str
    role: Role
    agency: str | None  # set for agency viewers only
    session_hash: str | None = None  # the stored hash of the session cookie, when signed in by cookie
    csrf_token: str | None = None
    credential: str | None = None  # credential_id of the token this person signed in with

    @property
    def may_act(self) -> bool:
        """Operators and supervisors act on incidents; agency viewers only look."""
        return self.role in (Role.OPERATOR, Role.SUPERVISOR)


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_config(request: Request) -> CCConfig:
    # Set in create_app, before the lifespan, so authentication never depends on startup order.
    return request.app.state.config


ServicesDep = Annotated[Services, Depends(get_services)]

_intake_bearer = HTTPBearer(
    auto_error=False, scheme_name="intakeToken", description="the token gateways forward alarms with"
)
_operator_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="operatorToken",
    description="a personal token of an operator, supervisor or agency viewer",
)
_session_cookie = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    scheme_name="sessionCookie",
    description=f"the browser console's session (POST /api/v1/session); unsafe methods also need {CSRF_HEADER}",
)


def unauthorized() -> HTTPException:
    return HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


def forbidden(what: str) -> HTTPException:
    return HTTPException(403, what)


def find_operator(presented: str, tokens: Mapping[str, str]) -> str | None:
    """The name of the operator whose token this is (constant time over every token)."""
    return find_holder(presented, tokens)


def session_hash(cookie: str) -> str:
    """What the database keeps of a session cookie: a copy of the database must not sign anyone in."""
    return hashlib.sha256(cookie.encode("utf-8", "replace")).hexdigest()


# Signing in needs no credential (name and token are in its body) but is throttled by address before
# its body is read. Which operation needs which credential is the OpenAPI document's security
# requirements, read by siaga.web.AuthGate.
SIGN_IN_PATH = "/api/v1/session"


async def authenticate(request: Request, schemes: frozenset[str]) -> None:
    """The command center's AuthGate: who is asking, from the headers alone (docs/security.md).
    `schemes`: the security schemes the operation's OpenAPI entry requires."""
    guard: Guard = request.app.state.guard
    address = client_address(request)
    if not schemes:
        if request.scope["path"] == SIGN_IN_PATH:
            guard.check_address(address)
        return
    cfg = get_config(request)
    has_header = "authorization" in request.headers
    cookie = request.cookies.get(SESSION_COOKIE) if "sessionCookie" in schemes else None
    if not has_header and not cookie:
        raise unauthorized()
    guard.check_address(address)
    token = bearer_token(request)
    if "intakeToken" in schemes:
        if token is None or not token_matches(token, cfg.intake_token):
            guard.failed("intake_token_failed", "(intake token)", address)
            raise unauthorized()
        request.state.intake = True
        return
    if has_header:  # a bearer token wins over a cookie (API clients never rely on cookies)
        name = None if token is None else find_operator(token, cfg.operator_tokens)
        if name is None:
            guard.failed("token_failed", "(bearer token)", address)
            raise unauthorized()
        op = cfg.operator(name)
        request.state.principal = Principal(name=name, role=op.role, agency=op.agency, credential=cfg.credential(name))
        return
    assert cookie is not None
    svc = get_services(request)
    digest = session_hash(cookie)
    session = await svc.store.get_session(digest, now=utc_now())
    # A person removed from the configuration, or whose token was replaced since the session was
    # made, is signed out at once. An unknown or expired cookie is not throttled: it is 256 random
    # bits, and an open console whose session expired sends it with every request.
    if session is None or session.credential != cfg.credential(session.operator):
        raise unauthorized()
    csrf = request.headers.get(CSRF_HEADER, "")
    if request.method in _UNSAFE_METHODS and not token_matches(csrf, session.csrf_token):
        # SameSite=Strict already keeps other sites' requests from carrying the cookie; the
        # header is the second lock (an HTML form cannot set headers).
        raise forbidden(f"missing or wrong {CSRF_HEADER} header")
    op = cfg.operator(session.operator)
    request.state.principal = Principal(
        name=op.name, role=op.role, agency=op.agency, session_hash=digest, csrf_token=session.csrf_token,
        credential=session.credential,
    )


async def require_intake(
    request: Request,
    _cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_intake_bearer)],
) -> None:
    # Decided by `authenticate` before the body was read; the parameter documents the scheme.
    if not getattr(request.state, "intake", False):
        raise unauthorized()


async def require_principal(
    request: Request,
    _cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_operator_bearer)],
    _cookie: Annotated[str | None, Depends(_session_cookie)],
) -> Principal:
    """Anyone signed in, as found by `authenticate` before the body was read."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        raise unauthorized()
    return principal


async def require_actor(principal: Annotated[Principal, Depends(require_principal)]) -> Principal:
    """Someone who may act on incidents: an operator or a supervisor."""
    if not principal.may_act:
        raise forbidden("agency viewers can see incidents dispatched to their agency but not act on them")
    return principal


async def require_supervisor(principal: Annotated[Principal, Depends(require_principal)]) -> Principal:
    if principal.role is not Role.SUPERVISOR:
        raise forbidden("only supervisors may see this")
    return principal


async def require_dispatch_actor(
    agency: Annotated[str, Path(max_length=100, description="the agency id of the dispatch")],
    principal: Annotated[Principal, Depends(require_principal)],
) -> Principal:
    """Who may set a dispatch's status: operators and supervisors any agency's (the room answers for
    an agency it phoned); an agency account only its own agency's. To an agency account another
    agency's dispatch does not exist (404), as another agency's incident does not."""
    if principal.may_act or (principal.role is Role.AGENCY and principal.agency == agency):
        return principal
    raise HTTPException(404, f"no dispatch to {agency} that you may answer")


PrincipalDep = Annotated[Principal, Depends(require_principal)]
DispatchActorDep = Annotated[Principal, Depends(require_dispatch_actor)]
ActorDep = Annotated[Principal, Depends(require_actor)]
SupervisorDep = Annotated[Principal, Depends(require_supervisor)]
# The name the routers used before roles existed: someone who may act on incidents.
OperatorDep = ActorDep

"""Request dependencies shared by the routers: services, and who is asking (bearer token or session
cookie) with what role."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

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


def token_matches(presented: str, expected: str) -> bool:
    # Constant-time. Configured tokens are visible ASCII; a presented non-ASCII one cannot match.
    try:
        return hmac.compare_digest(presented.encode("ascii"), expected.encode("ascii"))
    except UnicodeEncodeError:
        return False


def find_operator(presented: str, tokens: Mapping[str, str]) -> str | None:
    # Compare with every token instead of a dict lookup, so timing tells nothing about them.
    found = None
    for token, name in tokens.items():
        if token_matches(presented, token):
            found = name
    return found


def session_hash(cookie: str) -> str:
    """What the database keeps of a session cookie: a copy of the database must not sign anyone in."""
    return hashlib.sha256(cookie.encode("utf-8", "replace")).hexdigest()


async def require_intake(
    cfg: Annotated[CCConfig, Depends(get_config)],
    cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_intake_bearer)],
) -> None:
    if cred is None or not token_matches(cred.credentials, cfg.intake_token):
        raise unauthorized()


async def require_principal(
    request: Request,
    cfg: Annotated[CCConfig, Depends(get_config)],
    cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_operator_bearer)],
    cookie: Annotated[str | None, Depends(_session_cookie)],
) -> Principal:
    """Anyone signed in. A bearer token wins over a cookie (API clients never rely on cookies)."""
    if cred is not None or request.headers.get("Authorization"):
        name = None if cred is None else find_operator(cred.credentials, cfg.operator_tokens)
        if name is None:
            raise unauthorized()
        op = cfg.operator(name)
        return Principal(name=name, role=op.role, agency=op.agency)
    if cookie:
        svc = get_services(request)
        digest = session_hash(cookie)
        session = await svc.store.get_session(digest, now=utc_now())
        # An operator removed from the configuration is signed out at once.
        if session is not None and session.operator in cfg.operators:
            if request.method in _UNSAFE_METHODS and not token_matches(
                request.headers.get(CSRF_HEADER, ""), session.csrf_token
            ):
                # SameSite=Strict already keeps other sites' requests from carrying the cookie; the
                # header is the second lock (an HTML form cannot set headers).
                raise forbidden(f"missing or wrong {CSRF_HEADER} header")
            op = cfg.operator(session.operator)
            return Principal(
                name=op.name, role=op.role, agency=op.agency, session_hash=digest, csrf_token=session.csrf_token
            )
    raise unauthorized()


async def require_actor(principal: Annotated[Principal, Depends(require_principal)]) -> Principal:
    """Someone who may act on incidents: an operator or a supervisor."""
    if not principal.may_act:
        raise forbidden("agency viewers can see incidents dispatched to their agency but not act on them")
    return principal


async def require_supervisor(principal: Annotated[Principal, Depends(require_principal)]) -> Principal:
    if principal.role is not Role.SUPERVISOR:
        raise forbidden("only supervisors may see this")
    return principal


PrincipalDep = Annotated[Principal, Depends(require_principal)]
ActorDep = Annotated[Principal, Depends(require_actor)]
SupervisorDep = Annotated[Principal, Depends(require_supervisor)]
# The name the routers used before roles existed: someone who may act on incidents.
OperatorDep = ActorDep

"""Request dependencies shared by the routers: services and bearer-token authentication."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .config import CCConfig
from .store import Store


@dataclass(frozen=True, slots=True)
class Services:
    """What the handlers need; built in the app's lifespan and kept on `app.state.services`."""

    config: CCConfig
    store: Store
    notify_callbacks: Callable[[], None]


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_config(request: Request) -> CCConfig:
    # Set in create_app, before the lifespan, so authentication never depends on startup order.
    return request.app.state.config


ServicesDep = Annotated[Services, Depends(get_services)]

_intake_bearer = HTTPBearer(
    auto_error=False, scheme_name="intakeToken", description="the token gateways forward alarms with"
)
_operator_bearer = HTTPBearer(auto_error=False, scheme_name="operatorToken", description="a personal operator token")


def unauthorized() -> HTTPException:
    return HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


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


async def require_intake(
    cfg: Annotated[CCConfig, Depends(get_config)],
    cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_intake_bearer)],
) -> None:
    if cred is None or not token_matches(cred.credentials, cfg.intake_token):
        raise unauthorized()


async def require_operator(
    cfg: Annotated[CCConfig, Depends(get_config)],
    cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_operator_bearer)],
) -> str:
    """The name of the operator whose token was presented."""
    name = None if cred is None else find_operator(cred.credentials, cfg.operator_tokens)
    if name is None:
        raise unauthorized()
    return name


OperatorDep = Annotated[str, Depends(require_operator)]

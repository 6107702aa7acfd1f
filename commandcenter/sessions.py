"""Browser sign-in: `POST /api/v1/session` turns an operator's name and personal token into a session
cookie (HttpOnly, SameSite=Strict), so the console never keeps a token in the page. API clients keep
using bearer tokens and need none of this."""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from datetime import timedelta
from typing import Literal

from fastapi import APIRouter, HTTPException, Response

from .config import Role
from .deps import SESSION_COOKIE, PrincipalDep, ServicesDep, find_operator, session_hash
from .domain import KNOWN_KINDS, utc_now
from .models import AgencyOut, ConsoleSettingsOut, ErrorOut, LoginRequest, SessionOut

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["session"])

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@router.post(
    "/session",
    summary="Sign in (browser console)",
    description=(
        "Checks the operator's name and personal token and sets the session cookie `siaga_session` "
        "(HttpOnly, SameSite=Strict, Secure when configured). The answer carries `csrf_token`: send it as "
        "`X-CSRF-Token` with every POST and DELETE made with the cookie. Sign-ins and failed attempts are "
        "recorded in the audit log. The body must be JSON, which a cross-site HTML form cannot send."
    ),
    response_model=SessionOut,
    responses={401: {"model": ErrorOut, "description": "unknown name or wrong token"}},
)
async def login(body: LoginRequest, svc: ServicesDep, response: Response) -> SessionOut:
    cfg = svc.config
    now = utc_now()
    name = find_operator(body.token, cfg.operator_tokens)
    if name is None or not hmac.compare_digest(name.encode(), body.name.encode("utf-8", "replace")):
        # Only a well-formed name goes into the audit log; anything else is recorded as such.
        tried = body.name if _NAME.fullmatch(body.name) else "(malformed name)"
        await svc.store.audit(actor=tried, action="login_failed", now=now)
        log.warning("failed sign-in as %r", tried)
        raise HTTPException(401, "unknown name or wrong token")
    cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    ttl = timedelta(hours=cfg.console.session_hours)
    await svc.store.create_session(session_hash(cookie), operator=name, csrf_token=csrf, now=now, ttl=ttl)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(ttl.total_seconds()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=cfg.console.secure_cookie,
    )
    op = cfg.operator(name)
    log.info("%s signed in (%s)", name, op.role.value)
    return SessionOut(name=name, role=op.role, agency=op.agency, via="session", csrf_token=csrf)


@router.get(
    "/session",
    summary="Who is signed in",
    response_model=SessionOut,
    responses={401: {"model": ErrorOut, "description": "not signed in"}},
)
async def whoami(who: PrincipalDep) -> SessionOut:
    via: Literal["session", "token"] = "session" if who.session_hash is not None else "token"
    return SessionOut(name=who.name, role=who.role, agency=who.agency, via=via, csrf_token=who.csrf_token)


@router.delete(
    "/session",
    summary="Sign out",
    description="Ends the session (with the cookie, this needs `X-CSRF-Token`). With a bearer token it does nothing.",
    status_code=204,
    responses={401: {"model": ErrorOut, "description": "not signed in"}},
)
async def logout(who: PrincipalDep, svc: ServicesDep, response: Response) -> Response:
    if who.session_hash is not None:
        await svc.store.delete_session(who.session_hash, actor=who.name, now=utc_now())
        log.info("%s signed out", who.name)
    response.status_code = 204
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=svc.config.console.secure_cookie)
    return response


@router.get(
    "/console/settings",
    summary="What the console needs to draw itself",
    description="Agencies to dispatch to, alarm kinds, the map; for every signed-in role.",
    response_model=ConsoleSettingsOut,
    responses={401: {"model": ErrorOut, "description": "not signed in"}},
)
async def console_settings(who: PrincipalDep, svc: ServicesDep) -> ConsoleSettingsOut:
    c = svc.config.console
    agencies = svc.config.agencies
    if who.role is Role.AGENCY:
        agencies = tuple(a for a in agencies if a.id == who.agency)
    return ConsoleSettingsOut(
        agencies=[AgencyOut(id=a.id, name=a.name) for a in agencies],
        kinds=list(KNOWN_KINDS),
        tile_url=c.tile_url,
        tile_attribution=c.tile_attribution,
        map_center=c.map_center,
        map_zoom=c.map_zoom,
        server_time=utc_now(),
    )

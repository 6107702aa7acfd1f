"""Browser sign-in: `POST /api/v1/session` turns an operator's name and personal token into a session
cookie (HttpOnly, SameSite=Strict), so the console never keeps a token in the page. API clients keep
using bearer tokens and need none of this."""

from __future__ import annotations

import hmac
import logging
import secrets
from datetime import timedelta
from typing import Literal

from fastapi import APIRouter, HTTPException, Request, Response

from siaga.web import KIB, Guard, StrictRoute, client_address

from .config import Role
from .deps import SESSION_COOKIE, PrincipalDep, Services, ServicesDep, find_operator, session_hash
from .domain import KNOWN_KINDS, utc_now
from .models import AgencyOut, ConsoleSettingsOut, ErrorOut, LanguageRequest, LoginRequest, SessionOut

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["session"], route_class=StrictRoute)

# A name (64 characters) and a token (512) in JSON, with room for escapes.
SIGN_IN_BODY_MAX = 4 * KIB


@router.post(
    "/session",
    summary="Sign in (browser console)",
    description=(
        "Checks the operator's name and personal token and sets the session cookie `siaga_session` "
        "(HttpOnly, SameSite=Strict, Secure when configured). The answer carries `csrf_token`: send it as "
        "`X-CSRF-Token` with every POST and DELETE made with the cookie. Sign-ins are recorded in the audit "
        "log; failed attempts are recorded there once a minute per name and address (a name only if it is a "
        "configured one, so a token typed into the name field is never written anywhere). Failed attempts "
        "are limited per client address and per name: beyond the limit the answer is 429 with "
        "`Retry-After` (docs/security.md). The body must be JSON, which a cross-site HTML form cannot send."
    ),
    response_model=SessionOut,
    max_body_size=SIGN_IN_BODY_MAX,
    responses={
        401: {"model": ErrorOut, "description": "unknown name or wrong token"},
        413: {"model": ErrorOut, "description": f"body larger than {SIGN_IN_BODY_MAX} bytes"},
        429: {"model": ErrorOut, "description": "too many failed attempts from this address or for this name",
              "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}},
    },
)
async def login(body: LoginRequest, svc: ServicesDep, request: Request, response: Response) -> SessionOut:
    cfg = svc.config
    guard: Guard = request.app.state.guard
    name = find_operator(body.token, cfg.operator_tokens)
    if name is None or not hmac.compare_digest(name.encode(), body.name.encode("utf-8", "replace")):
        address = client_address(request)
        # Only a configured name is recorded: whatever else is in the field (a token typed into
        # it, someone's guess) is never written to the database or the log.
        known = body.name if body.name in cfg.operators else None
        guard.failed("login_failed", known or "(unknown name)", address, known)
        # One line per attempt at debug level only; the warning comes once a minute (app._record_failures).
        log.debug("failed sign-in as %s from %s", known or "an unknown name", address)
        wait = guard.throttle.address_wait(address) or (known and guard.throttle.name_wait(known))
        if wait:
            raise guard.throttle.too_many(wait)
        raise HTTPException(401, "unknown name or wrong token")
    now = utc_now()
    cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    ttl = timedelta(hours=cfg.console.session_hours)
    await svc.store.create_session(session_hash(cookie), operator=name, csrf_token=csrf,
                                   credential=cfg.credential(name) or "", now=now, ttl=ttl)
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
    language = await language_of(svc, name)
    return SessionOut(name=name, role=op.role, agency=op.agency, via="session", csrf_token=csrf, language=language)


@router.get(
    "/session",
    summary="Who is signed in",
    response_model=SessionOut,
    responses={401: {"model": ErrorOut, "description": "not signed in"}},
)
async def whoami(who: PrincipalDep, svc: ServicesDep) -> SessionOut:
    via: Literal["session", "token"] = "session" if who.session_hash is not None else "token"
    return SessionOut(name=who.name, role=who.role, agency=who.agency, via=via, csrf_token=who.csrf_token,
                      language=await language_of(svc, who.name))


@router.put(
    "/session/language",
    summary="Choose the console's language",
    description=(
        "Stores the signed-in person's language, `id` (Bahasa Indonesia, the default) or `en` (English): "
        "the console shows it from then on, at every desk. Without a choice, the person's `language` in the "
        "command center's configuration applies, else `id`."
    ),
    response_model=SessionOut,
    responses={401: {"model": ErrorOut, "description": "not signed in"}},
)
async def choose_language(body: LanguageRequest, who: PrincipalDep, svc: ServicesDep) -> SessionOut:
    await svc.store.set_language(who.name, body.language, now=utc_now())
    via: Literal["session", "token"] = "session" if who.session_hash is not None else "token"
    return SessionOut(name=who.name, role=who.role, agency=who.agency, via=via, csrf_token=who.csrf_token,
                      language=body.language)


async def language_of(svc: Services, name: str) -> Literal["id", "en"]:
    """The person's own choice, else their configured language, else Bahasa Indonesia."""
    account = svc.config.operators.get(name)
    chosen = await svc.store.get_language(name) or (account.language if account else None)
    return "en" if chosen == "en" else "id"


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
        agencies=[AgencyOut(id=a.id, name=a.name, name_en=a.name_en,
                            answers_on_screen=svc.config.answers_on_screen(a.id)) for a in agencies],
        kinds=list(KNOWN_KINDS),
        tile_url=c.tile_url,
        tile_attribution=c.tile_attribution,
        map_center=c.map_center,
        map_zoom=c.map_zoom,
        server_time=utc_now(),
        # "UTC" is also the setting's default: a room in Indonesia that set nothing sees the browser's zone.
        timezone=None if c.timezone == "UTC" else c.timezone,
    )

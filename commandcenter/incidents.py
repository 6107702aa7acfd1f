"""`/api/v1/incidents`: what operators see and do."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query

from siaga import contract
from siaga.web import StrictRoute

from .config import Role
from .deps import ActorDep, DispatchActorDep, Principal, PrincipalDep, Services, ServicesDep
from .domain import Action, DispatchStatus, IncidentState, parse_incident_ref, utc_now
from .models import (
    ActionRequest,
    DispatchRequest,
    DispatchStatusRequest,
    ErrorOut,
    IncidentDetail,
    IncidentOut,
    NoteRequest,
    ReferRequest,
)
from .store import (
    DispatchExistsError,
    DispatchNotFoundError,
    Incident,
    IncidentNotFoundError,
    InvalidDispatchMoveError,
    InvalidTransitionError,
)

log = logging.getLogger(__name__)

router = APIRouter(
    route_class=StrictRoute,
    prefix="/api/v1/incidents",
    tags=["incidents"],
    responses={401: {"model": ErrorOut, "description": "not signed in: no or wrong token or session"}},
)

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "no such incident"}}
_ACTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    403: {"model": ErrorOut, "description": "agency viewers cannot act; or a session without X-CSRF-Token"},
    409: {"model": ErrorOut, "description": "the incident's state does not allow this action"},
}

OptionalNote = Annotated[ActionRequest | None, Body()]


# The longest id looked at: `inc-` and the 19 digits of the largest number SQLite holds, with room
# for leading zeros. A longer one names no incident (and int() refuses more than 4300 digits).
_ID_MAX_CHARS = 40


def _number(incident_id: str) -> int:
    """The incident number of an id from the path, or 404: also for digits of other scripts, which
    the regular expression's \\d would take, and for numbers beyond SQLite's 64-bit integers."""
    number = None
    if len(incident_id) <= _ID_MAX_CHARS and incident_id.isascii():
        number = parse_incident_ref(incident_id)
    if number is None or number > contract.SQLITE_INT_MAX:
        raise HTTPException(404, f"no incident {incident_id[:_ID_MAX_CHARS]}")
    return number


def _visible(incident: Incident | None, who: Principal) -> bool:
    """Agency accounts see only incidents with a dispatch to their agency (in any status); to them
    others do not exist."""
    if incident is None:
        return False
    return who.role is not Role.AGENCY or any(d.agency == who.agency for d in incident.dispatches)


@router.get(
    "",
    summary="List incidents",
    description=(
        "Open incidents whose every dispatch was declined (`needs_dispatch`) first, then unacknowledged ones, "
        "then the other open ones, then closed ones; newest first in each. Agency accounts get only the "
        "incidents with a dispatch to their agency."
    ),
    response_model=list[IncidentOut],
)
async def list_incidents(
    svc: ServicesDep,
    who: PrincipalDep,
    state: Annotated[list[IncidentState] | None, Query(description="only incidents in these states")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[IncidentOut]:
    agency = who.agency if who.role is Role.AGENCY else None
    incidents = await svc.store.list_incidents(states=state, limit=limit, agency=agency)
    return [IncidentOut.of(i) for i in incidents]


@router.get(
    "/{incident_id}",
    summary="One incident with its alarm events and state history",
    response_model=IncidentDetail,
    responses=_NOT_FOUND,
)
async def get_incident(incident_id: str, svc: ServicesDep, who: PrincipalDep) -> IncidentDetail:
    number = _number(incident_id)
    incident = await svc.store.get_incident(number)
    if incident is None or not _visible(incident, who):
        raise HTTPException(404, f"no incident {incident_id}")
    events = await svc.store.incident_events(number)
    history = await svc.store.incident_history(number)
    dispatch_history = await svc.store.dispatch_history(number)
    return IncidentDetail.build(incident, events, history, dispatch_history)


@router.post(
    "/{incident_id}/acknowledge",
    summary="Acknowledge a new incident",
    description="Allowed from `new`. The button is told that an operator has seen the alarm.",
    response_model=IncidentOut,
    responses=_ACTION_RESPONSES,
)
async def acknowledge(
    incident_id: str, svc: ServicesDep, operator: ActorDep, body: OptionalNote = None
) -> IncidentOut:
    return await _act(svc, incident_id, Action.ACKNOWLEDGE, operator, note=body.note if body else None)


@router.post(
    "/{incident_id}/dispatch",
    summary="Dispatch one or more agencies",
    description=(
        "Allowed from `acknowledged`, and from `dispatched` to add agencies. A dispatch to an agency that "
        "answers on screen (it has an account) starts `requested` and waits for the agency to accept; one to "
        "any other agency, or with `accepted: true` (the room phoned or radioed it), is recorded as `accepted` "
        "on its behalf. The incident becomes `dispatched` (and the buttons are told so) once a dispatch is "
        "accepted. `{\"agency\": id}` is the older form for one agency."
    ),
    response_model=IncidentOut,
    responses={
        **_ACTION_RESPONSES,
        409: {"model": ErrorOut, "description": "the incident's state does not allow a dispatch, or an agency "
              "already has a dispatch on it that it has not declined"},
        422: {"model": ErrorOut, "description": "an agency id that is not configured, or a malformed body"},
    },
)
async def dispatch(incident_id: str, body: DispatchRequest, svc: ServicesDep, operator: ActorDep) -> IncidentOut:
    number = _number(incident_id)
    configured = {a.id for a in svc.config.agencies}
    unknown = [a for a in body.agency_ids if a not in configured]
    if unknown:
        raise HTTPException(422, f"no agency {unknown[0][:100]} is configured; see GET /api/v1/console/settings")
    requests = [(a, _first_status(svc, a, body.accepted)) for a in body.agency_ids]
    try:
        incident = await svc.store.request_dispatches(
            number, requests, actor=operator.name, now=utc_now(), note=body.note
        )
    except IncidentNotFoundError:
        raise HTTPException(404, f"no incident {incident_id}") from None
    except InvalidTransitionError as exc:
        raise HTTPException(409, f"{incident_id} is {exc.current.value}; it cannot be dispatched") from None
    except DispatchExistsError as exc:
        raise HTTPException(
            409, f"{incident_id} is {exc.current.value}: {exc.agency} already has a dispatch on it"
        ) from None
    log.info("%s dispatched to %s by %s", incident_id, ", ".join(body.agency_ids), operator.name)
    await _after_dispatch_change(svc, incident)
    return IncidentOut.of(incident)


@router.post(
    "/{incident_id}/dispatches/{agency}",
    summary="Set the status of an agency's dispatch",
    description=(
        "Forward only along requested -> accepted -> en_route -> on_scene -> done (steps may be skipped); "
        "`declined` only from requested or accepted, with a `reason`. Operators and supervisors may set any "
        "agency's dispatch; an agency account only its own agency's. The incident becomes `dispatched` when "
        "its first dispatch is accepted, and `resolved` when every dispatch not declined is done."
    ),
    response_model=IncidentOut,
    responses={
        **_NOT_FOUND,
        403: {"model": ErrorOut, "description": "a session without X-CSRF-Token"},
        404: {"model": ErrorOut, "description": "no such incident, or no dispatch to that agency that you may set"},
        409: {"model": ErrorOut, "description": "the dispatch's status does not allow this move"},
    },
)
async def set_dispatch_status(
    incident_id: str, agency: str, body: DispatchStatusRequest, svc: ServicesDep, who: DispatchActorDep
) -> IncidentOut:
    number = _number(incident_id)
    if who.role is Role.AGENCY and not _visible(await svc.store.get_incident(number), who):
        raise HTTPException(404, f"no incident {incident_id}")
    status = DispatchStatus(body.status)
    try:
        incident = await svc.store.set_dispatch_status(
            number, agency, status, actor=who.name, now=utc_now(), reason=body.reason, note=body.note
        )
    except IncidentNotFoundError:
        raise HTTPException(404, f"no incident {incident_id}") from None
    except DispatchNotFoundError:
        raise HTTPException(404, f"{incident_id} has no dispatch to {agency}") from None
    except InvalidDispatchMoveError as exc:
        raise HTTPException(
            409, f"the dispatch to {agency} is {exc.current.value}; it cannot become {exc.target.value}"
        ) from None
    log.info("%s: dispatch to %s %s by %s", incident_id, agency, status.value, who.name)
    await _after_dispatch_change(svc, incident)
    return IncidentOut.of(incident)


def _first_status(svc: Services, agency: str, accepted: bool | None) -> DispatchStatus:
    """`requested` for an agency that answers on screen, unless the room says it already accepted."""
    if accepted is not True and svc.config.answers_on_screen(agency):
        return DispatchStatus.REQUESTED
    return DispatchStatus.ACCEPTED


async def _after_dispatch_change(svc: Services, incident: Incident) -> None:
    svc.notify_callbacks()  # when the incident moved, its state reports are queued
    svc.notify_escalation()  # a new request sets the unanswered-dispatch timer
    await svc.publish_one(incident)


@router.post(
    "/{incident_id}/resolve",
    summary="Close an incident as resolved",
    description="Allowed from `acknowledged` and `dispatched`.",
    response_model=IncidentOut,
    responses=_ACTION_RESPONSES,
)
async def resolve(incident_id: str, svc: ServicesDep, operator: ActorDep, body: OptionalNote = None) -> IncidentOut:
    return await _act(svc, incident_id, Action.RESOLVE, operator, note=body.note if body else None)


@router.post(
    "/{incident_id}/false-alarm",
    summary="Close an incident as a false alarm",
    description="Allowed from `new`, `acknowledged` and `dispatched` (the unit on site may find nothing).",
    response_model=IncidentOut,
    responses=_ACTION_RESPONSES,
)
async def false_alarm(
    incident_id: str, svc: ServicesDep, operator: ActorDep, body: OptionalNote = None
) -> IncidentOut:
    return await _act(svc, incident_id, Action.FALSE_ALARM, operator, note=body.note if body else None)


@router.post(
    "/{incident_id}/refer",
    summary="Close an incident as not an emergency, referred to a complaint channel",
    description=(
        "Allowed from `new`, `acknowledged` and `dispatched`, as a false alarm is. The caller is referred to "
        "LAPOR! (the default `channel`) or the city's own complaint channel. The incident becomes `resolved` "
        "with `referred_to` and `referral_ref` set, and the button is told `resolved`: the call was handled."
    ),
    response_model=IncidentOut,
    responses=_ACTION_RESPONSES,
)
async def refer(
    incident_id: str, svc: ServicesDep, operator: ActorDep, body: Annotated[ReferRequest | None, Body()] = None
) -> IncidentOut:
    req = body if body is not None else ReferRequest()
    return await _act(
        svc, incident_id, Action.RESOLVE, operator, note=req.note, referral=(req.channel, req.reference)
    )


@router.post(
    "/{incident_id}/notes",
    summary="Add a note",
    description="Recorded in the incident's history with who and when; the state stays. Allowed in every state.",
    response_model=IncidentOut,
    status_code=201,
    responses=_ACTION_RESPONSES,
)
async def add_note(incident_id: str, body: NoteRequest, svc: ServicesDep, operator: ActorDep) -> IncidentOut:
    number = _number(incident_id)
    try:
        incident = await svc.store.add_note(number, body.note, actor=operator.name, now=utc_now())
    except IncidentNotFoundError:
        raise HTTPException(404, f"no incident {incident_id}") from None
    log.info("%s: note by %s", incident_id, operator.name)
    await svc.publish_one(incident)
    return IncidentOut.of(incident)


async def _act(
    svc: Services,
    incident_id: str,
    action: Action,
    operator: Principal,
    *,
    note: str | None = None,
    referral: tuple[str, str | None] | None = None,
) -> IncidentOut:
    number = _number(incident_id)
    try:
        incident = await svc.store.apply_action(
            number, action, actor=operator.name, now=utc_now(), note=note, referral=referral
        )
    except IncidentNotFoundError:
        raise HTTPException(404, f"no incident {incident_id}") from None
    except InvalidTransitionError as exc:
        target = "referred" if referral is not None else action.value
        raise HTTPException(409, f"{incident_id} is {exc.current.value}; it cannot become {target}") from None
    log.info("%s %s by %s", incident_id, "referred" if referral is not None else action.value, operator.name)
    svc.notify_callbacks()
    await svc.publish_one(incident)
    return IncidentOut.of(incident)

"""`/api/v1/incidents`: what operators see and do."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query

from siaga import contract
from siaga.web import StrictRoute

from .config import Role
from .deps import ActorDep, Principal, PrincipalDep, Services, ServicesDep
from .domain import Action, IncidentState, parse_incident_ref, utc_now
from .models import (
    ActionRequest,
    DispatchRequest,
    ErrorOut,
    IncidentDetail,
    IncidentOut,
    NoteRequest,
    ReferRequest,
)
from .store import Incident, IncidentNotFoundError, InvalidTransitionError

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
    """Agency viewers see only incidents dispatched to their agency; to them others do not exist."""
    if incident is None:
        return False
    return who.role is not Role.AGENCY or incident.agency == who.agency


@router.get(
    "",
    summary="List incidents",
    description=(
        "Unacknowledged first, then the other open ones, then closed ones; newest first in each. Agency "
        "viewers get only the incidents dispatched to their agency."
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
    return IncidentDetail.build(incident, events, history)


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
    summary="Record that an agency was dispatched",
    description="Allowed from `acknowledged`.",
    response_model=IncidentOut,
    responses=_ACTION_RESPONSES,
)
async def dispatch(incident_id: str, body: DispatchRequest, svc: ServicesDep, operator: ActorDep) -> IncidentOut:
    return await _act(svc, incident_id, Action.DISPATCH, operator, agency=body.agency, note=body.note)


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
    agency: str | None = None,
    note: str | None = None,
    referral: tuple[str, str | None] | None = None,
) -> IncidentOut:
    number = _number(incident_id)
    try:
        incident = await svc.store.apply_action(
            number, action, actor=operator.name, now=utc_now(), agency=agency, note=note, referral=referral
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

"""`/api/v1/incidents`: what operators see and do."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query

from .deps import OperatorDep, Services, ServicesDep
from .domain import Action, IncidentState, parse_incident_ref, utc_now
from .models import ActionRequest, DispatchRequest, ErrorOut, IncidentDetail, IncidentOut
from .store import IncidentNotFoundError, InvalidTransitionError

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/api/v1/incidents",
    tags=["incidents"],
    responses={401: {"model": ErrorOut, "description": "missing or wrong operator token"}},
)

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "no such incident"}}
_ACTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    409: {"model": ErrorOut, "description": "the incident's state does not allow this action"},
}

OptionalNote = Annotated[ActionRequest | None, Body()]


def _number(incident_id: str) -> int:
    number = parse_incident_ref(incident_id)
    if number is None:
        raise HTTPException(404, f"no incident {incident_id}")
    return number


@router.get(
    "",
    summary="List incidents",
    description="Unacknowledged first, then the other open ones, then closed ones; newest first in each.",
    response_model=list[IncidentOut],
)
async def list_incidents(
    svc: ServicesDep,
    operator: OperatorDep,
    state: Annotated[list[IncidentState] | None, Query(description="only incidents in these states")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[IncidentOut]:
    incidents = await svc.store.list_incidents(states=state, limit=limit)
    return [IncidentOut.of(i) for i in incidents]


@router.get(
    "/{incident_id}",
    summary="One incident with its alarm events and state history",
    response_model=IncidentDetail,
    responses=_NOT_FOUND,
)
async def get_incident(incident_id: str, svc: ServicesDep, operator: OperatorDep) -> IncidentDetail:
    number = _number(incident_id)
    incident = await svc.store.get_incident(number)
    if incident is None:
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
    incident_id: str, svc: ServicesDep, operator: OperatorDep, body: OptionalNote = None
) -> IncidentOut:
    return await _act(svc, incident_id, Action.ACKNOWLEDGE, operator, note=body.note if body else None)


@router.post(
    "/{incident_id}/dispatch",
    summary="Record that an agency was dispatched",
    description="Allowed from `acknowledged`.",
    response_model=IncidentOut,
    responses=_ACTION_RESPONSES,
)
async def dispatch(incident_id: str, body: DispatchRequest, svc: ServicesDep, operator: OperatorDep) -> IncidentOut:
    return await _act(svc, incident_id, Action.DISPATCH, operator, agency=body.agency, note=body.note)


@router.post(
    "/{incident_id}/resolve",
    summary="Close an incident as resolved",
    description="Allowed from `acknowledged` and `dispatched`.",
    response_model=IncidentOut,
    responses=_ACTION_RESPONSES,
)
async def resolve(incident_id: str, svc: ServicesDep, operator: OperatorDep, body: OptionalNote = None) -> IncidentOut:
    return await _act(svc, incident_id, Action.RESOLVE, operator, note=body.note if body else None)


@router.post(
    "/{incident_id}/false-alarm",
    summary="Close an incident as a false alarm",
    description="Allowed from `new`, `acknowledged` and `dispatched` (the unit on site may find nothing).",
    response_model=IncidentOut,
    responses=_ACTION_RESPONSES,
)
async def false_alarm(
    incident_id: str, svc: ServicesDep, operator: OperatorDep, body: OptionalNote = None
) -> IncidentOut:
    return await _act(svc, incident_id, Action.FALSE_ALARM, operator, note=body.note if body else None)


async def _act(
    svc: Services,
    incident_id: str,
    action: Action,
    operator: str,
    *,
    agency: str | None = None,
    note: str | None = None,
) -> IncidentOut:
    number = _number(incident_id)
    try:
        incident = await svc.store.apply_action(number, action, actor=operator, now=utc_now(), agency=agency, note=note)
    except IncidentNotFoundError:
        raise HTTPException(404, f"no incident {incident_id}") from None
    except InvalidTransitionError as exc:
        raise HTTPException(409, f"{incident_id} is {exc.current.value}; it cannot become {action.value}") from None
    log.info("%s %s by %s", incident_id, action.value, operator)
    svc.notify_callbacks()
    return IncidentOut.of(incident)

"""Shifts: who is on duty, the handover between shifts, and the figures of each person and shift.

A 112 room works in shifts; what one shift leaves open the next must take over knowingly. An operator
or supervisor signs on (`POST /api/v1/shifts`) and hands over at the end
(`POST /api/v1/shifts/current/handover`) with a note, whom to, and the incidents open at that moment,
which are recorded with the shift: they carry over. The open shifts are who is on duty; the second
escalation level names the supervisors among them (escalation.py).

Supervisors see per-person figures from the recorded timestamps alone (stats.operator_figures): the
incidents each person acknowledged, and first dispatched, in a period or within a shift's hours, with
the time from the first press. Agency accounts have no shifts here: they answer for their agency.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from siaga import contract
from siaga.web import StrictRoute

from . import stats
from .config import Role
from .deps import ActorDep, PrincipalDep, ServicesDep, SupervisorDep
from .domain import rfc3339, utc_now
from .models import (
    OPERATOR_NAME,
    ErrorOut,
    EventTime,
    HandoverRequest,
    OperatorFiguresOut,
    ShiftFiguresOut,
    ShiftOut,
)
from .store.shifts import NoOpenShiftError, Shift, ShiftOpenError

log = logging.getLogger(__name__)

router = APIRouter(
    route_class=StrictRoute,
    prefix="/api/v1",
    tags=["shifts"],
    responses={401: {"model": ErrorOut, "description": "not signed in"}},
)

DEFAULT_DAYS = 7
MAX_DAYS = 366  # as supervisor.MAX_DAYS: a year at most in one answer

_SUPERVISORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorOut, "description": "signed in, but not as a supervisor"},
}
_PERIOD: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorOut, "description": f"'since' not before 'until', or more than {MAX_DAYS} days"},
}
Since = Annotated[EventTime | None, Query(description="start of the period, RFC 3339 (default: 7 days before until)")]
Until = Annotated[EventTime | None, Query(description="end of the period, not included (default: now)")]


def shift_out(s: Shift) -> ShiftOut:
    return ShiftOut(
        id=s.id, operator=s.operator, role=Role(s.role), started_at=s.started_at, ended_at=s.ended_at,
        handover_note=s.handover_note, handed_to=s.handed_to, open_at_handover=list(s.open_at_handover),
    )


def window(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    """[since, until): by default the last seven days up to now."""
    end = until or utc_now()
    start = since or end - timedelta(days=DEFAULT_DAYS)
    if start >= end:
        raise HTTPException(422, "'since' must be before 'until'")
    if end - start > timedelta(days=MAX_DAYS):
        raise HTTPException(422, f"at most {MAX_DAYS} days at once")
    return start, end


@router.post(
    "/shifts",
    summary="Sign on: start your shift",
    description="Operators and supervisors. The shift runs until you hand over. 409 when you are already on duty.",
    response_model=ShiftOut,
    status_code=201,
    responses={
        403: {"model": ErrorOut, "description": "agency accounts have no shifts; or a session without X-CSRF-Token"},
        409: {"model": ErrorOut, "description": "you already have an open shift"},
    },
)
async def sign_on(svc: ServicesDep, who: ActorDep) -> ShiftOut:
    try:
        shift = await svc.store.start_shift(who.name, who.role.value, now=utc_now())
    except ShiftOpenError as exc:
        raise HTTPException(409, f"{who.name} is already on duty since {rfc3339(exc.shift.started_at)}") from None
    log.info("%s signed on (%s, shift %d)", who.name, who.role.value, shift.id)
    return shift_out(shift)


@router.get(
    "/shifts/current",
    summary="Your open shift",
    response_model=ShiftOut,
    responses={404: {"model": ErrorOut, "description": "you are not on duty"}},
)
async def current(svc: ServicesDep, who: PrincipalDep) -> ShiftOut:
    shift = await svc.store.current_shift(who.name)
    if shift is None:
        raise HTTPException(404, f"{who.name} is not on duty")
    return shift_out(shift)


@router.get(
    "/shifts/on-duty",
    summary="Who is on duty now",
    description="The open shifts, longest on duty first. For everyone signed in.",
    response_model=list[ShiftOut],
)
async def on_duty(svc: ServicesDep, who: PrincipalDep) -> list[ShiftOut]:
    return [shift_out(s) for s in await svc.store.on_duty()]


@router.post(
    "/shifts/current/handover",
    summary="Hand over: end your shift",
    description=(
        "Ends your shift with the note, the person you hand over to (`to`, as they sign in; null: whoever "
        "comes) and the incidents open at this moment (`open_at_handover`): they carry over to the next shift."
    ),
    response_model=ShiftOut,
    responses={
        403: {"model": ErrorOut, "description": "agency accounts have no shifts; or a session without X-CSRF-Token"},
        404: {"model": ErrorOut, "description": "you are not on duty"},
    },
)
async def hand_over(body: HandoverRequest, svc: ServicesDep, who: ActorDep) -> ShiftOut:
    # `to` is recorded as written, not checked against the configuration: the next shift may be a
    # colleague whose account is being set up, or someone of a neighbouring room.
    try:
        shift = await svc.store.hand_over(who.name, note=body.note, to=body.to, now=utc_now())
    except NoOpenShiftError:
        raise HTTPException(404, f"{who.name} is not on duty") from None
    log.info("%s handed over to %s with %d incidents open", who.name, body.to or "the next shift",
             len(shift.open_at_handover))
    return shift_out(shift)


@router.get(
    "/shifts",
    summary="Shifts in a period (supervisors)",
    description="Shifts that overlap [since, until), newest first; `operator` keeps one person's.",
    response_model=list[ShiftOut],
    responses={**_SUPERVISORS, **_PERIOD},
)
async def list_shifts(
    svc: ServicesDep,
    who: SupervisorDep,
    since: Since = None,
    until: Until = None,
    operator: Annotated[str | None, Query(pattern=OPERATOR_NAME)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[ShiftOut]:
    start, end = window(since, until)
    found = await svc.store.list_shifts(since=start, until=end, operator=operator, limit=limit)
    return [shift_out(s) for s in found]


@router.get(
    "/shifts/{shift_id}/figures",
    summary="The figures of one shift (supervisors)",
    description=(
        "The shift's operator over the shift's hours (until now while it is open): incidents acknowledged "
        "and first dispatched, with the time from the first press (see GET /api/v1/stats/operators)."
    ),
    response_model=ShiftFiguresOut,
    responses={**_SUPERVISORS, 404: {"model": ErrorOut, "description": "no such shift"}},
)
async def shift_figures(
    svc: ServicesDep, who: SupervisorDep, shift_id: Annotated[int, Path(ge=1, le=contract.SQLITE_INT_MAX)]
) -> ShiftFiguresOut:
    shift = await svc.store.get_shift(shift_id)
    if shift is None:
        raise HTTPException(404, f"no shift {shift_id}")
    end = shift.ended_at or utc_now()
    handled = await svc.store.handlings(since=shift.started_at, until=end)
    [mine] = stats.operator_figures(handled, since=shift.started_at, until=end, operator=shift.operator)
    return ShiftFiguresOut(**asdict(mine), shift=shift_out(shift))


@router.get(
    "/stats/operators",
    summary="Figures per operator (supervisors)",
    description=(
        "Per person, from the recorded timestamps: `answered`, the incidents they acknowledged in "
        "[since, until), with the seconds from the first press to the acknowledgement (mean, median, "
        "longest); `dispatched`, the incidents whose first dispatch they requested in the period, with the "
        "seconds from the first press to that request (mean, median). Test presses are left out. People "
        "with neither are not listed."
    ),
    response_model=list[OperatorFiguresOut],
    responses={**_SUPERVISORS, **_PERIOD},
)
async def operator_stats(
    svc: ServicesDep, who: SupervisorDep, since: Since = None, until: Until = None
) -> list[OperatorFiguresOut]:
    start, end = window(since, until)
    handled = await svc.store.handlings(since=start, until=end)
    return [OperatorFiguresOut(**asdict(f)) for f in stats.operator_figures(handled, since=start, until=end)]

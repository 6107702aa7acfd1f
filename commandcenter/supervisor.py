"""Supervisors only: response-time figures, false-alarm rates, devices offline, the CSV export of
incidents, the audit log and the supervision settings."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse
from pydantic import BeforeValidator

from siaga import contract
from siaga.web import StrictRoute

from . import stats
from .deps import ServicesDep, SupervisorDep
from .domain import rfc3339, utc_now
from .models import (
    DAY_PATTERN,
    AuditOut,
    DeviceFalseAlarmsOut,
    DeviceFaultOut,
    ErrorOut,
    FigureOut,
    GroupFiguresOut,
    SettingsOut,
    StatsOut,
    day_checker,
)
from .store import CALLBACK_OUTBOX, WEBHOOK_OUTBOX, Incident

log = logging.getLogger(__name__)

router = APIRouter(
    route_class=StrictRoute,
    prefix="/api/v1",
    tags=["supervision"],
    responses={
        401: {"model": ErrorOut, "description": "not signed in"},
        403: {"model": ErrorOut, "description": "signed in, but not as a supervisor"},
    },
)

MAX_DAYS = 366
# One answer covers at most this many incidents (a year of a busy district is far below it).
MAX_INCIDENTS = 200_000
DEFAULT_DAYS = 7

# Days of the years 1970–2999 only, written YYYY-MM-DD (models.day_checker): a day near year 1 or
# 9999 would overflow when made a UTC instant or when the day after `to` is taken, and "0" would be
# taken as Unix time.
FromDay = Annotated[
    date | None,
    Query(alias="from", description="first day, YYYY-MM-DD (default: 6 days ago)",
          json_schema_extra={"pattern": DAY_PATTERN}),
    BeforeValidator(day_checker),
]
ToDay = Annotated[
    date | None,
    Query(alias="to", description="last day, inclusive (default: today)", json_schema_extra={"pattern": DAY_PATTERN}),
    BeforeValidator(day_checker),
]

# Besides pydantic's list of problems, `period` answers 422 with a sentence ('from' after 'to', more
# than MAX_DAYS): both are {"detail": …}.
_PERIOD_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorOut, "description": f"a day that is not YYYY-MM-DD in 1970–2999, 'from' after 'to', "
                                            f"or more than {MAX_DAYS} days"},
}


def period(zone: tzinfo, first: date | None, last: date | None) -> tuple[datetime, datetime]:
    """[start, end) of whole local days in the configured zone."""
    today = utc_now().astimezone(zone).date()
    last = last or today
    first = first or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise HTTPException(422, "'from' is after 'to'")
    if (last - first).days + 1 > MAX_DAYS:
        raise HTTPException(422, f"at most {MAX_DAYS} days at once")
    start = datetime.combine(first, time(), zone)
    end = datetime.combine(last + timedelta(days=1), time(), zone)
    return start, end


def _group(g: stats.GroupFigures) -> GroupFiguresOut:
    return GroupFiguresOut(
        key=g.key,
        incidents=g.incidents,
        unacknowledged=g.unacknowledged,
        false_alarms=g.false_alarms,
        referrals=g.referrals,
        acknowledge=FigureOut(**asdict(g.acknowledge)),
        dispatch=FigureOut(**asdict(g.dispatch)),
        resolve=FigureOut(**asdict(g.resolve)),
    )


@router.get(
    "/stats",
    summary="Response times, false alarms per device, devices offline",
    description=(
        "For incidents whose first press arrived between `from` and `to` (whole days in the configured "
        "time zone): press -> acknowledge, press -> dispatch and press -> resolve in seconds (count, "
        "median, 90th percentile by nearest rank), overall and per day, agency and area; the false-alarm "
        "rate of each device that opened incidents; and the devices that are offline now. Test presses "
        f"are left out. `from` may not be after `to`, and the period is at most {MAX_DAYS} days (422)."
    ),
    response_model=StatsOut,
    responses=_PERIOD_ERRORS,
)
async def get_stats(svc: ServicesDep, who: SupervisorDep, first: FromDay = None, last: ToDay = None) -> StatsOut:
    cfg = svc.config
    start, end = period(cfg.console.zone(), first, last)
    found = await svc.store.incidents_created_between(start, end, limit=MAX_INCIDENTS + 1)
    truncated = len(found) > MAX_INCIDENTS
    found = found[:MAX_INCIDENTS]
    real = [i for i in found if not i.test]
    zone = cfg.console.zone()
    offline = [f for f in await svc.store.active_faults(limit=10_000) if f.fault == "offline"]
    return StatsOut(
        timezone=cfg.console.timezone,
        start=start,
        end=end,
        test_incidents_excluded=len(found) - len(real),
        truncated=truncated,
        overall=_group(stats.group_figures("all", real)),
        by_day=[_group(g) for g in stats.figures_by(real, stats.local_day(zone))],
        by_agency=[_group(g) for g in stats.figures_by_each(real, stats.agencies_of)],
        by_area=[_group(g) for g in stats.figures_by(real, lambda i: i.area)],
        false_alarms_by_device=[DeviceFalseAlarmsOut(**asdict(d)) for d in stats.false_alarm_rates(real)],
        devices_offline=[DeviceFaultOut.of(f) for f in offline],
    )


CSV_COLUMNS = (
    "id",
    "state",
    "kind",
    "test",
    "device_id",
    "address",
    "area",
    "lat",
    "lon",
    "press_count",
    "sources",
    "created_at",
    "acknowledged_at",
    "acknowledged_by",
    "dispatched_at",
    "dispatched_by",
    "agency",
    "closed_at",
    "closed_by",
    "escalated_at",
    "seconds_to_acknowledge",
    "seconds_to_dispatch",
    "seconds_to_close",
    "referred_to",
    "referral_ref",
    "agencies",
)


def _text(value: str | None) -> str:
    """A text cell that a spreadsheet will not run as a formula (OWASP "CSV injection")."""
    if value is None:
        return ""
    if value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _time(t: datetime | None) -> str:
    return "" if t is None else rfc3339(t)


def _seconds(i: Incident, t: datetime | None) -> str:
    return "" if t is None else f"{(t - i.created_at).total_seconds():.3f}"


def csv_row(i: Incident) -> list[Any]:
    return [
        i.ref,
        i.state.value,
        _text(i.kind),
        "1" if i.test else "0",
        _text(i.device_id),
        _text(i.address),
        _text(i.area),
        f"{i.lat:.6f}",
        f"{i.lon:.6f}",
        i.event_count,
        _text(" ".join(i.sources)),
        _time(i.created_at),
        _time(i.acknowledged_at),
        _text(i.acknowledged_by),
        _time(i.dispatched_at),
        _text(i.dispatched_by),
        _text(i.agency),
        _time(i.closed_at),
        _text(i.closed_by),
        _time(i.escalated_at),
        _seconds(i, i.acknowledged_at),
        _seconds(i, i.dispatched_at),
        _seconds(i, i.closed_at),
        _text(i.referred_to),
        _text(i.referral_ref),
        _text(" ".join(f"{d.agency}:{d.status.value}" for d in i.dispatches)),
    ]


@router.get(
    "/export/incidents.csv",
    summary="Incidents as CSV",
    description=(
        "Every incident (test presses included, marked in `test`) whose first press arrived between `from` "
        "and `to`, oldest first, one row each, UTF-8 with a header row. Times are RFC 3339 UTC; the "
        "`seconds_to_*` columns count from the first press; `referred_to` and `referral_ref` are set for an "
        "incident closed as not an emergency. Text cells that a spreadsheet would run as a "
        "formula start with an apostrophe. The export is recorded in the audit log. `from` may not be "
        f"after `to`, and the period is at most {MAX_DAYS} days (422)."
    ),
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "the CSV file"}, **_PERIOD_ERRORS},
)
async def export_incidents(
    svc: ServicesDep, who: SupervisorDep, first: FromDay = None, last: ToDay = None
) -> StreamingResponse:
    start, end = period(svc.config.console.zone(), first, last)
    found = await svc.store.incidents_created_between(start, end, limit=MAX_INCIDENTS)
    await svc.store.audit(
        actor=who.name,
        action="export",
        now=utc_now(),
        target="incidents.csv",
        detail={"from": start.date().isoformat(), "to": (end - timedelta(days=1)).date().isoformat(),
                "rows": len(found)},
    )
    log.info("%s exported %d incidents", who.name, len(found))

    async def rows() -> AsyncIterator[str]:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        for n, incident in enumerate(found, 1):
            writer.writerow(csv_row(incident))
            if n % 500 == 0:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue()

    name = f"siaga-incidents-{start.date().isoformat()}-{(end - timedelta(days=1)).date().isoformat()}.csv"
    return StreamingResponse(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/audit",
    summary="The audit log, newest first",
    description="Logins (also failed ones), logouts, every incident action and note, exports: who and when.",
    response_model=list[AuditOut],
)
async def audit_log(
    svc: ServicesDep,
    who: SupervisorDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    before_id: Annotated[
        int | None, Query(ge=1, le=contract.SQLITE_INT_MAX, description="page back: entries older than this id")
    ] = None,
) -> list[AuditOut]:
    return [AuditOut.of(a) for a in await svc.store.audit_entries(limit=limit, before_id=before_id)]


def _redacted(url: str | None) -> str | None:
    """The URL without user info and query, where a receiver's credentials may sit."""
    if url is None:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@router.get("/settings", summary="Supervision settings and outbox backlog", response_model=SettingsOut)
async def settings(svc: ServicesDep, who: SupervisorDep) -> SettingsOut:
    cfg = svc.config
    return SettingsOut(
        escalation_after_s=cfg.escalation.after_s,
        escalation_webhook_url=_redacted(cfg.escalation.webhook_url),
        escalation_webhook_pending=await svc.store.pending(WEBHOOK_OUTBOX),
        state_reports_pending=await svc.store.pending(CALLBACK_OUTBOX),
        timezone=cfg.console.timezone,
        session_hours=cfg.console.session_hours,
    )

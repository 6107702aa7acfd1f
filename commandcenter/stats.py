"""Response-time figures, false alarms and referrals from recorded timestamps. Pure: values in, out.

Every interval is measured from the first press the command center received (the incident's
`created_at`): press -> acknowledge, press -> dispatch, press -> resolve. For each group the figures
are the count, the median and the 90th percentile (nearest-rank) in seconds.

Per operator and per shift (`operator_figures`): how many incidents each person acknowledged and
first dispatched in a window, with the mean, median and longest time from the first press.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from .domain import DispatchStatus, IncidentState
from .store import Incident
from .store.shifts import Handling


@dataclass(frozen=True, slots=True)
class Figure:
    count: int
    median_s: float | None
    p90_s: float | None


@dataclass(frozen=True, slots=True)
class GroupFigures:
    key: str
    incidents: int
    unacknowledged: int  # still `new` now
    false_alarms: int
    referrals: int  # not an emergency: resolved with a referral to a complaint channel
    acknowledge: Figure  # press -> acknowledge
    dispatch: Figure  # press -> dispatch
    resolve: Figure  # press -> resolve (resolved incidents only, not false alarms nor referrals)


@dataclass(frozen=True, slots=True)
class DeviceFalseAlarms:
    device_id: str
    address: str
    area: str
    incidents: int
    false_alarms: int
    rate: float  # false_alarms / incidents
    referrals: int  # not an emergency, referred to a complaint channel


def median(values: Sequence[float]) -> float | None:
    """The middle value; the mean of the two middle values for an even count."""
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least p % of the values at or below it.
    Always one of the values, so "90 % of alarms were acknowledged within X s" holds exactly."""
    if not values:
        return None
    if not 0 < p <= 100:
        raise ValueError("p must be in (0, 100]")
    ordered = sorted(values)
    rank = math.ceil(p / 100 * len(ordered))
    return ordered[rank - 1]


def figure(values: Sequence[float]) -> Figure:
    return Figure(count=len(values), median_s=_ms(median(values)), p90_s=_ms(percentile(values, 90)))


def _ms(value: float | None) -> float | None:
    # Stored times have millisecond precision; the figures do not pretend to more.
    return None if value is None else round(value, 3)


def _since_press(i: Incident, t: datetime | None) -> float | None:
    return None if t is None else (t - i.created_at).total_seconds()


def group_figures(key: str, incidents: Sequence[Incident]) -> GroupFigures:
    acks = [s for i in incidents if (s := _since_press(i, i.acknowledged_at)) is not None]
    dispatches = [s for i in incidents if (s := _since_press(i, i.dispatched_at)) is not None]
    resolves = [
        s
        for i in incidents
        if i.state is IncidentState.RESOLVED and not i.referred and (s := _since_press(i, i.closed_at)) is not None
    ]
    return GroupFigures(
        key=key,
        incidents=len(incidents),
        unacknowledged=sum(i.state is IncidentState.NEW for i in incidents),
        false_alarms=sum(i.state is IncidentState.FALSE_ALARM for i in incidents),
        referrals=sum(i.referred for i in incidents),
        acknowledge=figure(acks),
        dispatch=figure(dispatches),
        resolve=figure(resolves),
    )


def figures_by(incidents: Iterable[Incident], key: Callable[[Incident], str | None]) -> list[GroupFigures]:
    """Figures per key, keys in ascending order; incidents whose key is None are left out."""
    return figures_by_each(incidents, lambda i: () if (k := key(i)) is None else (k,))


def figures_by_each(incidents: Iterable[Incident], keys: Callable[[Incident], Iterable[str]]) -> list[GroupFigures]:
    """Figures per key where an incident may have several keys (it counts in each of their groups)."""
    groups: dict[str, list[Incident]] = {}
    for i in incidents:
        for k in dict.fromkeys(keys(i)):
            groups.setdefault(k, []).append(i)
    return [group_figures(k, groups[k]) for k in sorted(groups)]


def agencies_of(incident: Incident) -> list[str]:
    """The agencies an incident was dispatched to and that did not decline, in order of dispatch; the
    single `agency` of an incident recorded before dispatches had rows of their own."""
    found = [d.agency for d in incident.dispatches if d.status is not DispatchStatus.DECLINED]
    return found or ([incident.agency] if incident.agency else [])


def local_day(zone: tzinfo) -> Callable[[Incident], str]:
    """The calendar day of the first press in `zone` (a 112 center counts its days in local time)."""
    return lambda i: i.created_at.astimezone(zone).date().isoformat()


def false_alarm_rates(incidents: Iterable[Incident]) -> list[DeviceFalseAlarms]:
    """Per device that opened incidents: how many were false alarms, and how many were not an
    emergency (referred to a complaint channel). Most false alarms first, so an abused button (to be
    moved or explained to the neighbourhood) is at the top; then most referrals, so a button used as
    a complaint line is next."""
    per: dict[str, list[Incident]] = {}
    for i in incidents:
        per.setdefault(i.device_id, []).append(i)
    rows = []
    for device, found in per.items():
        false = sum(i.state is IncidentState.FALSE_ALARM for i in found)
        latest = found[-1]
        rows.append(
            DeviceFalseAlarms(
                device_id=device,
                address=latest.address,
                area=latest.area,
                incidents=len(found),
                false_alarms=false,
                rate=round(false / len(found), 4),
                referrals=sum(i.referred for i in found),
            )
        )
    rows.sort(key=lambda r: (-r.false_alarms, -r.rate, -r.referrals, r.device_id))
    return rows


# ---- per operator and per shift ---------------------------------------------------------------------
# Who answered: the operator who acknowledged an incident (acknowledged_at - created_at), and the one
# who asked for its first dispatch (that dispatch's requested_at - created_at). An incident counts in
# a window when that act falls in it, whenever the incident opened: a shift is judged by what it did.


@dataclass(frozen=True, slots=True)
class OperatorFigures:
    operator: str
    answered: int  # incidents this operator acknowledged in the window
    ack_s_mean: float | None
    ack_s_median: float | None
    ack_s_max: float | None
    dispatched: int  # incidents whose first dispatch this operator requested in the window
    dispatch_s_mean: float | None
    dispatch_s_median: float | None


def mean(values: Sequence[float]) -> float | None:
    return None if not values else math.fsum(values) / len(values)


def _within(t: datetime | None, since: datetime, until: datetime) -> bool:
    return t is not None and since <= t < until


def operator_figures(
    handlings: Iterable[Handling], *, since: datetime, until: datetime, operator: str | None = None
) -> list[OperatorFigures]:
    """Per operator (by name; only `operator` when given), the acts that fall in [since, until).
    Operators with neither an acknowledge nor a dispatch in the window are left out."""
    acks: dict[str, list[float]] = {}
    dispatches: dict[str, list[float]] = {}
    for h in handlings:
        if h.acknowledged_by is not None and _within(h.acknowledged_at, since, until):
            acks.setdefault(h.acknowledged_by, []).append(_seconds(h.created_at, h.acknowledged_at))
        if h.dispatched_by is not None and _within(h.dispatched_at, since, until):
            dispatches.setdefault(h.dispatched_by, []).append(_seconds(h.created_at, h.dispatched_at))
    names = sorted(set(acks) | set(dispatches))
    if operator is not None:
        names = [n for n in names if n == operator] or [operator]
    return [_operator(n, acks.get(n, []), dispatches.get(n, [])) for n in names]


def _seconds(start: datetime, end: datetime | None) -> float:
    assert end is not None
    return (end - start).total_seconds()


def _operator(name: str, acks: Sequence[float], dispatches: Sequence[float]) -> OperatorFigures:
    return OperatorFigures(
        operator=name,
        answered=len(acks),
        ack_s_mean=_ms(mean(acks)),
        ack_s_median=_ms(median(acks)),
        ack_s_max=_ms(max(acks, default=None)),
        dispatched=len(dispatches),
        dispatch_s_mean=_ms(mean(dispatches)),
        dispatch_s_median=_ms(median(dispatches)),
    )

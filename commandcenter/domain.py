"""Incident states, the operator actions between them, and the wire formats they produce.

Nothing here does I/O, so the rules can be tested (and later reused by the console) on their own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal


class IncidentState(StrEnum):
    NEW = "new"
    ACKNOWLEDGED = "acknowledged"
    DISPATCHED = "dispatched"
    RESOLVED = "resolved"
    FALSE_ALARM = "false_alarm"


class Action(StrEnum):
    """An operator action; its value is the state it leads to (and the §7 callback `state`)."""

    ACKNOWLEDGE = "acknowledged"
    DISPATCH = "dispatched"
    RESOLVE = "resolved"
    FALSE_ALARM = "false_alarm"

    @property
    def target(self) -> IncidentState:
        return IncidentState(self.value)


# The states each action may start from. Every allowed move goes up the order of protocol §4.4
# (received < acknowledged < dispatched < resolved < false_alarm), so a button never sees its state
# go backwards. A false alarm can still be declared after dispatch: the unit on site is often the
# one who finds there is no emergency.
ALLOWED_FROM: dict[Action, frozenset[IncidentState]] = {
    Action.ACKNOWLEDGE: frozenset({IncidentState.NEW}),
    Action.DISPATCH: frozenset({IncidentState.ACKNOWLEDGED}),
    Action.RESOLVE: frozenset({IncidentState.ACKNOWLEDGED, IncidentState.DISPATCHED}),
    Action.FALSE_ALARM: frozenset({IncidentState.NEW, IncidentState.ACKNOWLEDGED, IncidentState.DISPATCHED}),
}

# "Not an emergency, referred to a complaint channel" (LAPOR! or the city's own) closes an incident
# from the same states as a false alarm. It is not a state of its own: the incident becomes
# `resolved` with the referral recorded beside it (incidents.referred_to), and the button is told
# `resolved` (protocol §7): the call was handled, and the firmware needs no new indicator.
REFER_FROM: frozenset[IncidentState] = ALLOWED_FROM[Action.FALSE_ALARM]

# The channel a referral names when the request gives none.
DEFAULT_REFERRAL_CHANNEL = "LAPOR!"

CLOSED_STATES = frozenset({IncidentState.RESOLVED, IncidentState.FALSE_ALARM})
OPEN_STATES = frozenset({IncidentState.NEW, IncidentState.ACKNOWLEDGED, IncidentState.DISPATCHED})


class HistoryKind(StrEnum):
    """What an incident history entry records."""

    STATE = "state"  # a state change (or the creation), by an operator or a gateway
    NOTE = "note"  # an operator's note; the state stays
    ESCALATION = "escalation"  # still unacknowledged after the configured time; the state stays


def can_apply(action: Action, current: IncidentState) -> bool:
    return current in ALLOWED_FROM[action]


# ---- dispatches: one per agency asked to help with an incident ----------------------------------


class DispatchStatus(StrEnum):
    """Where one agency's part in an incident stands; set by the agency's staff on screen, or by the
    room on its behalf (it phoned or radioed them)."""

    REQUESTED = "requested"
    ACCEPTED = "accepted"
    EN_ROUTE = "en_route"
    ON_SCENE = "on_scene"
    DONE = "done"
    DECLINED = "declined"


# The forward order of a dispatch. A move may skip steps (a unit that reports only "on scene"), never
# go back: the times recorded for each step are what the figures and an inquiry rely on.
DISPATCH_ORDER: tuple[DispatchStatus, ...] = (
    DispatchStatus.REQUESTED,
    DispatchStatus.ACCEPTED,
    DispatchStatus.EN_ROUTE,
    DispatchStatus.ON_SCENE,
    DispatchStatus.DONE,
)
# An agency may decline before it has committed a unit; after that it finishes or the room closes.
DECLINE_FROM = frozenset({DispatchStatus.REQUESTED, DispatchStatus.ACCEPTED})
# A dispatch that counts as "help is on the way" for the incident and its buttons.
ANSWERED = frozenset(DISPATCH_ORDER[1:])
# The incident states a dispatch may be requested in: after an operator has seen the alarm, and while
# it is being handled (to add agencies).
DISPATCH_FROM = frozenset({IncidentState.ACKNOWLEDGED, IncidentState.DISPATCHED})


def can_move_dispatch(current: DispatchStatus, target: DispatchStatus) -> bool:
    if target is DispatchStatus.DECLINED:
        return current in DECLINE_FROM
    if current is DispatchStatus.DECLINED:
        return False
    return DISPATCH_ORDER.index(target) > DISPATCH_ORDER.index(current)


def incident_moves(state: IncidentState, statuses: Iterable[DispatchStatus]) -> tuple[Action, ...]:
    """The moves an incident in `state` makes because its dispatches stand at `statuses`: dispatched
    once one of them has answered; resolved once every one not declined is done (at least one). Both,
    in that order, when the first answer is already "done", so the incident's times stay complete."""
    statuses = list(statuses)
    live = [s for s in statuses if s is not DispatchStatus.DECLINED]
    moves: list[Action] = []
    current = state
    if current is IncidentState.ACKNOWLEDGED and any(s in ANSWERED for s in live):
        moves.append(Action.DISPATCH)
        current = IncidentState.DISPATCHED
    if current is IncidentState.DISPATCHED and live and all(s is DispatchStatus.DONE for s in live):
        moves.append(Action.RESOLVE)
    return tuple(moves)


def needs_dispatch(state: IncidentState, statuses: Iterable[DispatchStatus]) -> bool:
    """Every agency asked has declined: the incident is back with the room until another is asked."""
    statuses = list(statuses)
    return state in OPEN_STATES and bool(statuses) and all(s is DispatchStatus.DECLINED for s in statuses)


# Alarm kinds of protocol §4.1. Intake accepts other well-formed kinds too (see models.AlarmIn).
KNOWN_KINDS = ("general", "medical", "fire", "crime", "disaster")

# Device faults of protocol §7: reported by gateways, shown to supervisors, never an incident.
# offline, low_battery, tamper: the button itself; bad_message: it sent something the gateway could
# not take (refused as malformed, or quarantined); undelivered: an alarm of it that this command
# center refused (the detail says which and why). The two paths of a button with a GSM modem
# (issue 17): on_backup_path: offline on MQTT but heard by SMS, its alarms still arrive;
# backup_path_down: its periodic test SMS is missing. Their detail carries each path's last
# success (last_mqtt_at, last_sms_at).
FaultKind = Literal["offline", "low_battery", "tamper", "bad_message", "undelivered", "on_backup_path",
                    "backup_path_down"]

_INCIDENT_REF = re.compile(r"inc-(\d{6,})")


def incident_ref(number: int) -> str:
    """The public id of incident `number`, e.g. 17 -> 'inc-000017'."""
    return f"inc-{number:06d}"


def parse_incident_ref(ref: str) -> int | None:
    m = _INCIDENT_REF.fullmatch(ref)
    return int(m.group(1)) if m else None


def event_id_for(gateway_id: str, device_id: str, seq: int) -> str:
    """The idempotency key of protocol §6 step 4."""
    return f"{gateway_id}:{device_id}:{seq}"


def escalation_due_at(created_at: datetime, after_s: float) -> datetime:
    """When an incident created at `created_at` escalates if nobody has acknowledged it."""
    return created_at + timedelta(seconds=after_s)


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(t: datetime) -> str:
    """UTC, millisecond precision, 'Z' suffix: fixed width, so stored strings sort by time."""
    if t.tzinfo is None:
        raise ValueError("naive datetime: all times in the command center are aware")
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text)


def callback_body(
    *, event_id: str, device_id: str, seq: int, state: Action, incident: str, at: datetime, by: str
) -> str:
    """The JSON body of a command center -> gateway state report (protocol §7)."""
    return json.dumps(
        {
            "event_id": event_id,
            "device_id": device_id,
            "seq": seq,
            "state": state.value,
            "incident_id": incident,
            "at": rfc3339(at),
            "by": by,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )

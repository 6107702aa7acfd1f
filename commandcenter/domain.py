"""Incident states, the operator actions between them, and the wire formats they produce.

Nothing here does I/O, so the rules can be tested (and later reused by the console) on their own.
"""

from __future__ import annotations

import json
import re
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


# Alarm kinds of protocol §4.1. Intake accepts other well-formed kinds too (see models.AlarmIn).
KNOWN_KINDS = ("general", "medical", "fire", "crime", "disaster")

# Device faults of protocol §7: reported by gateways, shown to supervisors, never an incident.
# offline, low_battery, tamper: the button itself; bad_message: it sent something the gateway could
# not take (refused as malformed, or quarantined); undelivered: an alarm of it that this command
# center refused (the detail says which and why).
FaultKind = Literal["offline", "low_battery", "tamper", "bad_message", "undelivered"]

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

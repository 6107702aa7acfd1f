"""The store's vocabulary: its errors, and the records it takes and returns. Frozen values, no
database access."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..domain import Action, DispatchStatus, HistoryKind, IncidentState, incident_ref, needs_dispatch
from ..engine import StoreError


class SchemaTooNewError(StoreError):
    """The database was written by a newer version of the command center; refuse to touch it."""


class IncidentNotFoundError(StoreError):
    pass


class InvalidTransitionError(StoreError):
    def __init__(self, current: IncidentState, action: Action) -> None:
        super().__init__(f"cannot move an incident from {current.value} to {action.value}")
        self.current = current
        self.action = action


class DispatchNotFoundError(StoreError):
    """The incident has never had a dispatch to that agency."""


class DispatchExistsError(StoreError):
    """The agency already has a dispatch on the incident that it has not declined."""

    def __init__(self, agency: str, current: IncidentState) -> None:
        super().__init__(f"{agency} already has a dispatch on this incident")
        self.agency = agency
        self.current = current


class InvalidDispatchMoveError(StoreError):
    def __init__(self, agency: str, current: DispatchStatus, target: DispatchStatus) -> None:
        super().__init__(f"the dispatch to {agency} is {current.value}; it cannot become {target.value}")
        self.agency = agency
        self.current = current
        self.target = target


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One agency asked to help with an incident, and how far it has got."""

    agency: str
    status: DispatchStatus
    reason: str | None  # why it declined
    requested_at: datetime
    requested_by: str
    accepted_at: datetime | None
    en_route_at: datetime | None
    on_scene_at: datetime | None
    done_at: datetime | None
    declined_at: datetime | None
    updated_at: datetime
    updated_by: str
    escalated_at: datetime | None  # nobody answered it in time


@dataclass(frozen=True, slots=True)
class DispatchHistoryEntry:
    agency: str
    at: datetime
    actor: str
    from_status: DispatchStatus | None  # None: the request itself
    to_status: DispatchStatus
    reason: str | None


@dataclass(frozen=True, slots=True)
class NewAlarm:
    event_id: str
    gateway_id: str
    device_id: str
    seq: int
    kind: str
    test: bool
    lat: float
    lon: float
    address: str
    area: str
    raised_at: datetime | None
    received_at: datetime
    fingerprint: str  # hash of the validated request body, to spot a reused key with other content
    # The gateway's incident layer (protocol §7); all None from senders that do not group.
    incident_key: str | None = None
    press_count: int | None = None
    sources: tuple[str, ...] | None = None
    battery_mv: int | None = None  # optional (protocol §7); kept per device for the console


@dataclass(frozen=True, slots=True)
class IntakeOutcome:
    created: bool
    event_id: str
    incident: int
    same_body: bool  # False: the key was seen before with a different body
    opened: bool = False  # this event opened its incident (created and not attached)
    reported: bool = False  # a state report was queued for it (it joined an incident already acted on)


@dataclass(frozen=True, slots=True)
class NewFault:
    event_id: str
    gateway_id: str
    device_id: str
    fault: str
    active: bool
    at: datetime
    detail: dict[str, Any]
    location: tuple[float, float, str, str] | None  # lat, lon, address, area
    fingerprint: str


@dataclass(frozen=True, slots=True)
class FaultOutcome:
    created: bool
    event_id: str
    same_body: bool


@dataclass(frozen=True, slots=True)
class DeviceFault:
    """The latest report of one fault of one device."""

    device_id: str
    fault: str
    active: bool
    since: datetime  # when it became active (or cleared, if not active)
    at: datetime  # the latest report's time
    event_id: str
    gateway_id: str
    detail: dict[str, Any]
    location: tuple[float, float, str, str] | None


@dataclass(frozen=True, slots=True)
class Incident:
    number: int
    state: IncidentState
    device_id: str
    kind: str
    test: bool
    lat: float
    lon: float
    address: str
    area: str
    created_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    dispatched_at: datetime | None
    dispatched_by: str | None
    agency: str | None
    closed_at: datetime | None
    closed_by: str | None
    event_count: int
    incident_key: str | None
    sources: tuple[str, ...]  # devices, in order of first appearance
    escalated_at: datetime | None = None
    battery_mv: int | None = None  # the latest known battery voltage of `device_id`
    referred_to: str | None = None  # resolved as not an emergency: the channel it was referred to
    referral_ref: str | None = None  # that channel's reference or ticket number, if given
    escalated2_at: datetime | None = None  # second escalation level (to the supervisor on duty)
    purged_at: datetime | None = None  # personal details removed by the retention policy
    dispatches: tuple[Dispatch, ...] = ()  # in the order they were requested

    @property
    def needs_dispatch(self) -> bool:
        """Every agency asked declined: the room must ask another."""
        return needs_dispatch(self.state, (d.status for d in self.dispatches))

    @property
    def referred(self) -> bool:
        return self.referred_to is not None

    @property
    def ref(self) -> str:
        return incident_ref(self.number)


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    event_id: str
    gateway_id: str
    device_id: str
    seq: int
    kind: str
    test: bool
    raised_at: datetime | None
    received_at: datetime
    intake_at: datetime
    incident_key: str | None
    press_count: int | None
    sources: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    at: datetime
    actor: str
    from_state: IncidentState | None
    to_state: IncidentState
    detail: dict[str, Any] | None
    kind: HistoryKind = HistoryKind.STATE


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    key: str  # what its order is kept within: the alarm event (reports) or the incident (webhooks)
    body: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Outbox:
    """One outbox table. Rows with the same `key` go out in the order they were queued."""

    table: str
    key: str
    # Two receivers that share one table: the rows whose `kind` is `lane` are the second receiver's
    # (`lane_of_kind` True), the others the first one's. None: every row.
    lane: str | None = None
    lane_of_kind: bool = False

    def rows(self, alias: str) -> str:
        """The SQL condition that selects this outbox's rows of its table (constants only, never input)."""
        if self.lane is None:
            return "1 = 1"
        return f"{alias}.kind {'=' if self.lane_of_kind else '<>'} '{self.lane}'"


# Webhook rows of this kind go to [escalation] second_webhook_url (the second escalation level).
SECOND_LEVEL_KIND = "incident.escalated.2"
CALLBACK_OUTBOX = Outbox("callback_outbox", "event_id")
WEBHOOK_OUTBOX = Outbox("webhook_outbox", "incident_id", lane=SECOND_LEVEL_KIND)
SECOND_WEBHOOK_OUTBOX = Outbox("webhook_outbox", "incident_id", lane=SECOND_LEVEL_KIND, lane_of_kind=True)


@dataclass(frozen=True, slots=True)
class Session:
    operator: str
    csrf_token: str
    expires_at: datetime
    credential: str  # credential_id of the token the session was made with


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    detail: dict[str, Any] | None

"""Escalation of unacknowledged incidents: an incident still `new` `after_s` after its first press is
escalated once. The escalation is recorded in the incident's history, shown on every console (an
`escalation` event: highlight and an urgent sound) and sent to the configured webhook through the
webhook outbox (store-and-forward, retried until 2xx, like the state reports to the gateway).

With several processes on one PostgreSQL database the escalator runs in one of them (cluster.Leadership);
the others' consoles hear of an escalation through live.Relay, and the leader hears of the incidents
other processes open the same way (`notify()`), so its timer is set for them at once.

Second level (`[escalation] second_after_s`): an escalated incident still `new` that long after its
first escalation escalates again, once, naming the supervisors on duty then (the open shifts of
shifts.py), with an audit entry `escalated_2`, an `escalation` event to every console (the
supervisors' consoles raise a banner for `escalated2_at`) and an `incident.escalated` webhook event
with `"level": 2`, to `second_webhook_url` (its own outbox lane and sender) or else to the first
webhook. The same task and timer run both levels: an incident's second due time follows from its
first escalation, which this task made."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime

from .background import DueLoop
from .config import EscalationSettings
from .domain import rfc3339
from .models import IncidentOut
from .store import Incident, Store

log = logging.getLogger(__name__)

WEBHOOK_EVENT = "incident.escalated"


def second_webhook_body(incident: Incident, at: datetime, after_s: float, second_after_s: float,
                        supervisors: list[str]) -> str:
    """The JSON of a second-level escalation (docs/commandcenter.md, "Second escalation"): the first
    level's fields, a distinct `event_id`, the level and the supervisors on duty."""
    return json.dumps(
        {
            "event": WEBHOOK_EVENT,
            "event_id": f"{incident.ref}:escalated:2",
            "at": rfc3339(at),
            "level": 2,
            "after_s": after_s,
            "second_after_s": second_after_s,
            "supervisors_on_duty": supervisors,
            "incident": IncidentOut.of(incident).model_dump(mode="json"),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def webhook_body(incident: Incident, at: datetime, after_s: float) -> str:
    """The JSON the webhook receives (docs/commandcenter.md, "Escalation")."""
    return json.dumps(
        {
            "event": WEBHOOK_EVENT,
            "event_id": f"{incident.ref}:escalated",
            "at": rfc3339(at),
            "after_s": after_s,
            "incident": IncidentOut.of(incident).model_dump(mode="json"),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


class Escalator(DueLoop):
    """Background task; `start()` in the app's lifespan, `notify()` after intake opened incidents,
    `stop()` at the end (background.Loop)."""

    name = "escalation"

    def __init__(
        self,
        store: Store,
        settings: EscalationSettings,
        *,
        on_escalated: Callable[[list[Incident]], None],
    ) -> None:
        super().__init__()
        self._store = store
        self._settings = settings
        self._on_escalated = on_escalated

    def describe(self) -> str:
        text = f"unacknowledged incidents escalate after {self._settings.after_s:.1f} s"
        if self._settings.second_after_s > 0:
            text += f", and a second time, to the supervisors on duty, {self._settings.second_after_s:.1f} s later"
        return text

    async def run_once(self, now: datetime) -> list[Incident]:
        after_s = self._settings.after_s

        def body(incident: Incident, at: datetime) -> str:
            return webhook_body(incident, at, after_s)

        escalated = await self._store.escalate_due(
            now=now, after_s=after_s, webhook_body=body if self._settings.webhook_url is not None else None
        )
        for incident in escalated:
            # WARNING: an alarm nobody has answered is exactly what this project exists to prevent.
            log.warning("%s escalated: unacknowledged for %.0f s (%s at %s)", incident.ref,
                        (now - incident.created_at).total_seconds(), incident.kind, incident.address[:80])
        if escalated:
            self._on_escalated(escalated)
        return escalated + await self._run_second_level(now)

    async def _run_second_level(self, now: datetime) -> list[Incident]:
        settings = self._settings
        if settings.second_after_s <= 0:
            return []

        def body(incident: Incident, at: datetime, supervisors: list[str]) -> str:
            return second_webhook_body(incident, at, settings.after_s, settings.second_after_s, supervisors)

        escalated = await self._store.escalate_second_due(
            now=now,
            after_s=settings.second_after_s,
            webhook_body=body if settings.second_webhook else None,
            second_receiver=settings.second_webhook_url is not None,
        )
        for incident in escalated:
            # ERROR: escalated once already, and still nobody has answered.
            log.error("%s escalated a second time: unacknowledged for %.0f s (%s at %s)", incident.ref,
                      (now - incident.created_at).total_seconds(), incident.kind, incident.address[:80])
        if escalated:
            self._on_escalated(escalated)
        return escalated

    async def next_due(self) -> datetime | None:
        due = await self._store.next_escalation_due(after_s=self._settings.after_s)
        if self._settings.second_after_s > 0:
            second = await self._store.next_second_escalation_due(after_s=self._settings.second_after_s)
            if second is not None and (due is None or second < due):
                due = second
        return due

    async def prepare(self) -> None:
        if self._settings.second_webhook_url is None:
            moved = await self._store.reroute_second_level_webhooks()
            if moved:
                log.warning("%d second-level escalation events waited for a second_webhook_url that is no "
                            "longer configured; they go to the first webhook", moved)

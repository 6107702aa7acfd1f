"""Unanswered dispatches: a dispatch to an agency that answers on screen, still `requested`
`[dispatch] accept_within_s` after it was made, escalates once. Nobody at the agency has seen it, and
the room must phone the agency's own control room: the escalation is recorded in the incident's
history and the audit log, shown on every console (an `escalation` event: highlight and the urgent
sound) and sent to the escalation webhook (event `dispatch.unanswered`), like an unacknowledged alarm.

It runs beside escalation.Escalator in the leader process (cluster.Leadership), with the same timer
discipline: sleep until the next request falls due, wake early when a dispatch is requested
(`notify()`), and look anyway every IDLE_POLL_S."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime

from .background import DueLoop
from .config import DispatchSettings
from .domain import rfc3339
from .models import DispatchOut, IncidentOut
from .store import Dispatch, Incident, Store

log = logging.getLogger(__name__)

WEBHOOK_EVENT = "dispatch.unanswered"


def webhook_body(incident: Incident, dispatch: Dispatch, at: datetime, within_s: float) -> str:
    """The JSON the escalation webhook receives (docs/commandcenter.md, "Dispatches";
    docs/schemas/webhook-dispatch.unanswered.json)."""
    out = DispatchOut.of(dispatch)
    return json.dumps(
        {
            "event": WEBHOOK_EVENT,
            # One per request: an agency declined and asked again is a new request.
            "event_id": f"{incident.ref}:dispatch:{dispatch.agency}:{rfc3339(dispatch.requested_at)}:unanswered",
            "at": rfc3339(at),
            "after_s": within_s,
            "agency": dispatch.agency,
            "agency_name": out.agency_name,
            "dispatch": out.model_dump(mode="json"),
            "incident": IncidentOut.of(incident).model_dump(mode="json"),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


class UnansweredDispatches(DueLoop):
    """Background task; `start()` in the leader, `notify()` after a dispatch was requested, `stop()`
    (background.Loop)."""

    name = "unanswered-dispatches"

    def __init__(
        self,
        store: Store,
        settings: DispatchSettings,
        *,
        webhook: bool,
        on_escalated: Callable[[list[Incident]], None],
    ) -> None:
        super().__init__()
        self._store = store
        self._settings = settings
        self._webhook = webhook
        self._on_escalated = on_escalated

    def describe(self) -> str:
        return f"dispatches nobody accepts escalate after {self._settings.accept_within_s:.1f} s"

    async def run_once(self, now: datetime) -> list[tuple[Incident, Dispatch]]:
        within_s = self._settings.accept_within_s

        def body(incident: Incident, dispatch: Dispatch, at: datetime) -> str:
            return webhook_body(incident, dispatch, at, within_s)

        found = await self._store.escalate_unanswered(
            now=now, within_s=within_s, webhook_body=body if self._webhook else None
        )
        for incident, dispatch in found:
            # WARNING: help was asked for and nobody has taken it up.
            log.warning("%s: the dispatch to %s is unanswered after %.0f s", incident.ref, dispatch.agency,
                        (now - dispatch.requested_at).total_seconds())
        if found:
            self._on_escalated(list({i.number: i for i, _ in found}.values()))
        return found

    async def next_due(self) -> datetime | None:
        return await self._store.next_unanswered_due(within_s=self._settings.accept_within_s)

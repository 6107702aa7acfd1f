"""Unanswered dispatches: a dispatch to an agency that answers on screen, still `requested`
`[dispatch] accept_within_s` after it was made, escalates once. Nobody at the agency has seen it, and
the room must phone the agency's own control room: the escalation is recorded in the incident's
history and the audit log, shown on every console (an `escalation` event: highlight and the urgent
sound) and sent to the escalation webhook (event `dispatch.unanswered`), like an unacknowledged alarm.

It runs beside escalation.Escalator in the leader process (cluster.Leadership), with the same timer
discipline: sleep until the next request falls due, wake early when a dispatch is requested
(`notify()`), and look anyway every IDLE_POLL_S."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import datetime

from .config import DispatchSettings
from .domain import rfc3339, utc_now
from .escalation import IDLE_POLL_S, MIN_WAIT_S
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


class UnansweredDispatches:
    """Background task; `start()` in the leader, `notify()` after a dispatch was requested, `stop()`."""

    def __init__(
        self,
        store: Store,
        settings: DispatchSettings,
        *,
        webhook: bool,
        on_escalated: Callable[[list[Incident]], None],
    ) -> None:
        self._store = store
        self._settings = settings
        self._webhook = webhook
        self._on_escalated = on_escalated
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("unanswered-dispatch escalation already started")
        self._task = asyncio.create_task(self._run(), name="siaga-cc-unanswered-dispatches")
        log.info("dispatches nobody accepts escalate after %.1f s", self._settings.accept_within_s)

    def notify(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=5)
            except TimeoutError:
                log.warning("unanswered-dispatch escalation did not stop in time")
            except Exception:
                log.exception("unanswered-dispatch escalation failed")
            self._task = None

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

    async def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before looking, so a notify() while we look is not lost
            try:
                if await self.run_once(utc_now()):
                    continue  # there may be more than one round's worth
                due = await self._store.next_unanswered_due(within_s=self._settings.accept_within_s)
            except Exception:
                log.exception("unanswered dispatches: database access failed; trying again in 1 s")
                await self._sleep(1.0)
                continue
            wait = IDLE_POLL_S
            if due is not None:
                wait = min(wait, max(MIN_WAIT_S, (due - utc_now()).total_seconds()))
            await self._sleep(wait)

    async def _sleep(self, seconds: float) -> None:
        if self._stopping.is_set():
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass

"""Escalation of unacknowledged incidents: an incident still `new` `after_s` after its first press is
escalated once. The escalation is recorded in the incident's history, shown on every console (an
`escalation` event: highlight and an urgent sound) and sent to the configured webhook through the
webhook outbox (store-and-forward, retried until 2xx, like the state reports to the gateway).

With several processes on one PostgreSQL database the escalator runs in one of them (cluster.Leadership);
the others' consoles hear of an escalation through live.Relay, and the leader hears of the incidents
other processes open the same way (`notify()`), so its timer is set for them at once."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import datetime

from .config import EscalationSettings
from .domain import rfc3339, utc_now
from .models import IncidentOut
from .store import Incident, Store

log = logging.getLogger(__name__)

# Look at the incidents at least this often even when no new one was announced: a safety net, as
# the timer is otherwise set to the next incident's due time.
IDLE_POLL_S = 30.0
# Never spin: after a round that escalated nothing, wait at least this long.
MIN_WAIT_S = 0.05
WEBHOOK_EVENT = "incident.escalated"


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


class Escalator:
    """Background task; `start()` in the app's lifespan, `notify()` after intake opened incidents,
    `stop()` at the end."""

    def __init__(
        self,
        store: Store,
        settings: EscalationSettings,
        *,
        on_escalated: Callable[[list[Incident]], None],
    ) -> None:
        self._store = store
        self._settings = settings
        self._on_escalated = on_escalated
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("escalation already started")
        self._task = asyncio.create_task(self._run(), name="siaga-cc-escalation")
        log.info("unacknowledged incidents escalate after %.1f s", self._settings.after_s)

    def notify(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=5)
            except TimeoutError:
                log.warning("escalation did not stop in time")
            except Exception:
                log.exception("escalation failed")
            self._task = None

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
        return escalated

    async def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before looking, so a notify() while we look is not lost
            try:
                if await self.run_once(utc_now()):
                    continue  # there may be more than one round's worth
                due = await self._store.next_escalation_due(after_s=self._settings.after_s)
            except Exception:
                log.exception("escalation: database access failed; trying again in 1 s")
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

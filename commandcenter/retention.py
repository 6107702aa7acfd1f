"""Data retention: the personal details of incidents closed more than `[retention] days` ago are purged,
every `every_s` seconds, by the process that runs the background loops (cluster.Leadership), so that
one process purges at a time. What is removed and what is kept, and why: docs/retention.md; the
removal itself: store/retention.py.

A round purges in batches of BATCH_SIZE incidents, one transaction each with its own audit entry
`retention_purge`, until nothing is left: a first run on a years-old database does not hold one long
transaction that would block the alarm path."""

from __future__ import annotations

import logging
from datetime import datetime

from .background import Loop
from .config import RetentionSettings
from .domain import utc_now
from .store import Store
from .store.retention import PurgeOutcome

log = logging.getLogger(__name__)

BATCH_SIZE = 500
# A round stops after this many batches and goes on at the next one: bounded work per round.
MAX_BATCHES = 200


class RetentionTask(Loop):
    """Background task (background.Loop): `start()`, `stop()`; `run_once(now)` is one round (a test
    may call it)."""

    name = "retention"

    def __init__(self, store: Store, settings: RetentionSettings) -> None:
        super().__init__()
        self._store = store
        self._settings = settings
        # Nothing is lost by waiting after a failure, only kept longer: the next round tries again.
        self.retry_s = settings.every_s

    def enabled(self) -> bool:
        return self._settings.days != 0

    def describe(self) -> str:
        if not self.enabled():
            return "retention: days = 0, incidents are kept in full for ever"
        return (f"retention: personal details of incidents closed more than {self._settings.days} days ago "
                f"are purged every {self._settings.every_s:.0f} s")

    async def run_once(self, now: datetime) -> PurgeOutcome:
        """Purge everything due at `now`; returns the totals."""
        totals: dict[str, int] = {}
        for _ in range(MAX_BATCHES):
            done = await self._store.purge_closed(now=now, days=self._settings.days, limit=BATCH_SIZE)
            for name in PurgeOutcome.__slots__:
                totals[name] = totals.get(name, 0) + getattr(done, name)
            if done.incidents < BATCH_SIZE or self._stopping.is_set():
                break
        outcome = PurgeOutcome(**totals)
        if outcome:
            log.info("retention: purged the personal details of %d incidents closed more than %d days ago "
                     "(%d notes, %d decline reasons, %d alarm events, %d webhook copies, %d handover notes)",
                     outcome.incidents, self._settings.days, outcome.notes, outcome.decline_reasons,
                     outcome.alarms, outcome.webhook_events, outcome.handover_notes)
        else:
            log.info("retention: nothing closed more than %d days ago is left to purge", self._settings.days)
        return outcome

    async def round(self) -> float:
        await self.run_once(utc_now())
        return self._settings.every_s

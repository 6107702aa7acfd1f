"""The shape of the leader's background loops (escalation, unanswered dispatches, gateway supervision,
retention): each runs rounds, sleeps until the next round is due or until it is woken, survives a
round that failed (the database was away: logged, tried again after a pause, never the end of the
loop) and stops within a bounded time. One implementation, so that a fix to the timer discipline
reaches every loop.

Two kinds:
- `Loop`: `round()` does the work and says how long to sleep (a fixed period for supervision and
  retention);
- `DueLoop`: something falls due at known times (an incident to escalate, a dispatch nobody
  accepted): `run_once(now)` handles what is due, `next_due()` says when the next thing is, and
  `notify()` wakes it early when a new thing was created, so its timer is set at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sized
from datetime import datetime

from .domain import utc_now

log = logging.getLogger(__name__)

# A DueLoop looks at least this often even when nothing was announced: a safety net, as its timer is
# otherwise set to the next due time.
IDLE_POLL_S = 30.0
# Never spin: after a round that found nothing due, wait at least this long.
MIN_WAIT_S = 0.05
# How long stop() waits for a round in progress.
STOP_TIMEOUT_S = 5.0


class Loop:
    """A background task: `start()` in the leader, `notify()` to wake it, `stop()` at the end.
    Subclasses set `name` and implement `round()`."""

    name = "loop"
    retry_s = 1.0  # the pause after a failed round

    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def enabled(self) -> bool:
        """False: `start()` only logs why, and no task runs."""
        return True

    def describe(self) -> str:
        """What the loop does with its settings, logged when it starts (or why it does not)."""
        return self.name

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"{self.name} already started")
        log.info("%s", self.describe())
        if self.enabled():
            self._task = asyncio.create_task(self._run(), name=f"siaga-cc-{self.name}")

    def notify(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("%s did not stop in time", self.name)
            except Exception:
                log.exception("%s failed", self.name)
            self._task = None

    async def prepare(self) -> None:
        """Once, before the first round (a failure is logged and the rounds start anyway)."""

    async def round(self) -> float:
        """One round of work; returns the seconds until the next (0: at once)."""
        raise NotImplementedError

    async def _run(self) -> None:
        try:
            await self.prepare()
        except Exception:
            log.exception("%s: preparing failed; the rounds start anyway", self.name)
        while not self._stopping.is_set():
            self._wake.clear()  # before looking, so a notify() while we look is not lost
            try:
                wait = await self.round()
            except Exception:
                log.exception("%s: a round failed; trying again in %.0f s", self.name, self.retry_s)
                wait = self.retry_s
            if wait > 0:
                await self._sleep(wait)

    async def _sleep(self, seconds: float) -> None:
        if self._stopping.is_set():
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass


class DueLoop(Loop):
    """A loop over things that fall due: implement `run_once(now)` (what it handled) and `next_due()`."""

    async def run_once(self, now: datetime) -> Sized:
        raise NotImplementedError

    async def next_due(self) -> datetime | None:
        raise NotImplementedError

    async def round(self) -> float:
        if await self.run_once(utc_now()):
            return 0.0  # there may be more than one round's worth
        due = await self.next_due()
        if due is None:
            return IDLE_POLL_S
        return min(IDLE_POLL_S, max(MIN_WAIT_S, (due - utc_now()).total_seconds()))

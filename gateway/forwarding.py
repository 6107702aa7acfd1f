"""Forwarding to destinations: one `Forwarder` per destination, each with its own queue in the
outbox, lanes, backoff, circuit breaker and metrics, so that a slow or dead destination never
delays another (issue 15; docs/integration.md).

A destination has its own rows in the outbox (one per event it takes; gateway/store.py), and an
event leaves a destination's queue only when that destination confirmed it: its custody passes to
the destination then, and the store records it in `deliveries`. The primary destination (the
reference command center, or the one marked `primary`) is the one whose answer the button's ack
and the admin API report; the others are followed on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .adapters import Accepted, Adapter, Failed
from .limits import BreakerState, CircuitBreaker
from .store import DATABASE_DOWN, Delivery, Lane, OutboundEvent, Retry

if TYPE_CHECKING:
    from .service import Gateway

log = logging.getLogger(__name__)

# Fault reports per forwarding round. A round's request and answer are built and read on the event
# loop, which the alarms share: a round of 500 held an alarm for tens of milliseconds during an
# offline wave (bench/offline_wave.py); 100 keep it to a few.
FAULT_ROUND = 100

# (destination, [(event, why)], now ms): what the gateway does with events refused for good
RefusedHandler = Callable[["Forwarder", list[tuple[OutboundEvent, str]], int], Awaitable[None]]


class Forwarder:
    """One destination: its lanes (alarms never wait behind faults or state changes), its
    breaker and its retries. Only the leader instance forwards (gateway/store_pg.py)."""

    def __init__(self, gw: Gateway, name: str, adapter: Adapter, *, primary: bool,
                 on_refused: RefusedHandler) -> None:
        self.gw = gw
        self.name = name
        self.adapter = adapter
        self.primary = primary
        self._on_refused = on_refused
        cfg = gw.cfg
        self.breaker = CircuitBreaker(cfg.breaker_threshold, cooldown_s=cfg.retry_first_s,
                                      max_cooldown_s=cfg.retry_max_s)
        self.wake: dict[Lane, asyncio.Event] = {"alarm": asyncio.Event(), "fault": asyncio.Event()}
        self.last_error: str | None = None
        self.last_delivered_ms: int | None = None

    def retry_delay_ms(self, attempts: int) -> int:
        # Full jitter (Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015): when
        # the destination comes back, retries are spread out instead of arriving all at once.
        cfg = self.gw.cfg
        cap = min(cfg.retry_max_s, cfg.retry_first_s * 2 ** min(attempts, 20))
        return int(random.uniform(cfg.retry_first_s / 10, cap) * 1000)

    async def run_lane(self, lane: Lane) -> None:
        gw = self.gw
        wake = self.wake[lane]
        loop = asyncio.get_running_loop()
        linger = gw.cfg.forward_linger_ms / 1000
        last_sent = -linger
        while not gw.stopping:
            if not gw.leader.is_set():
                await sleep_until_woken(wake, 1.0)
                wake.clear()
                continue
            # During a stream of alarms a round starts at most every `linger`, so that each request
            # carries what came meanwhile (a steady 1,000 alarms/s went out ~4 to a request
            # before); after a quiet spell the first alarm goes at once.
            gap = linger - (loop.time() - last_sent)
            if gap > 0:
                await asyncio.sleep(gap)
            wake.clear()
            started = loop.time()
            try:
                if await self._round(lane):
                    last_sent = started
            except DATABASE_DOWN:
                raise
            except Exception:  # a bug in a round must not stop forwarding: log, back off, go on
                log.exception("forwarding round (%s, %s) failed", self.name, lane)
                gw.metrics.inc("loop_errors", loop=f"forward-{self.name}-{lane}")
                await sleep_until_woken(wake, gw.cfg.retry_first_s)

    async def _round(self, lane: Lane) -> bool:
        """One delivery round; whether it sent anything."""
        gw = self.gw
        wake = self.wake[lane]
        now = gw.clock()
        if not self.breaker.allow(now):
            await sleep_until_woken(wake, (self.breaker.retry_at_ms - now) / 1000)
            return False
        # Half-open: a single event probes whether the destination is back.
        probing = self.breaker.state is BreakerState.HALF_OPEN
        limit = gw.cfg.forward_batch if lane == "alarm" else min(gw.cfg.forward_batch, FAULT_ROUND)
        events = await gw.store.due_events(now, 1 if probing else limit, lane, self.name)
        if not events:
            await sleep_until_woken(wake, 1.0)
            return False
        await self.deliver(events)
        return True

    async def deliver(self, events: list[OutboundEvent]) -> None:
        gw = self.gw
        try:
            outcomes = await self.adapter.deliver(events)
        except Exception as exc:  # an adapter's bug: its events wait and retry, the others go on
            log.exception("destination %s: the adapter failed", self.name)
            gw.metrics.inc("loop_errors", loop=f"adapter-{self.name}")
            outcomes = [Failed(f"adapter error: {type(exc).__name__}: {exc}")] * len(events)
        now = gw.clock()
        delivered: list[Delivery] = []
        retries: list[Retry] = []
        refused: list[tuple[OutboundEvent, str]] = []
        for event, outcome in zip(events, outcomes, strict=True):
            if isinstance(outcome, Accepted):
                delivered.append(Delivery(event.id, event.alarm_id, outcome.incident_id))
                gw.metrics.inc("forwarded", kind=event.kind, destination=self.name)
                if event.kind == "alarm":
                    gw.metrics.latency.observe(max(0, now - event.created_ms) / 1000)
            elif outcome.retry:
                retries.append(Retry(event.id, now + self.retry_delay_ms(event.attempts), outcome.error))
                gw.metrics.inc("forward_failures", kind=event.kind, destination=self.name)
            else:
                refused.append((event, outcome.error))
        gw.metrics.inc("forward_rounds", result="ok" if delivered else "failed", destination=self.name)
        if delivered:
            self.last_delivered_ms = now
        if delivered or refused:
            self.breaker.success()  # the destination answered
        elif retries and len(retries) == len(events):
            self.last_error = retries[0].error
            was_open = self.breaker.state is not BreakerState.CLOSED
            self.breaker.failure(now)
            if self.breaker.state is BreakerState.OPEN and not was_open:
                log.error("destination %s unreachable: circuit breaker open (%s)", self.name, retries[0].error)
            if self.breaker.state is BreakerState.OPEN:
                # While the breaker is open the events wait for it, not for their own backoff.
                retries = [Retry(r.outbox_id, now, r.error, spend_attempt=False) for r in retries]
        await gw.store.settle(delivered, retries, now, self.name, self.primary)
        if refused:
            await self._on_refused(self, refused, now)


async def sleep_until_woken(wake: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), max(0.01, seconds))

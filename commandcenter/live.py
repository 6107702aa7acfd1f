"""Live updates for the console: an in-process broadcaster fed on every change, and the
server-sent-events stream `GET /api/v1/events` that carries them to the browser.

Each change is published after its transaction has committed. A console that connects (or
reconnects) first opens the stream and then fetches the incident list, so nothing falls between the
two; an event it already has from the list is simply applied again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from siaga.web import StrictRoute

from .config import Role
from .deps import Principal, PrincipalDep, ServicesDep
from .domain import rfc3339, utc_now
from .models import ErrorOut, IncidentOut
from .store import Incident

log = logging.getLogger(__name__)

# A console that falls this many events behind (a frozen tab, a very slow link) is cut off rather
# than buffered without bound; its EventSource reconnects and re-syncs from the list.
QUEUE_MAX = 1000
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
# A stream ends after this long and the browser reconnects at once: a session that has expired or an
# operator removed from the configuration loses the live feed within this time, and no stream holds
# a connection for ever.
STREAM_MAX_S = 300.0
RETRY_MS = 2000  # EventSource's reconnection delay

EventType = Literal["incident", "escalation", "fault"]


@dataclass(frozen=True, slots=True)
class LiveEvent:
    type: EventType
    data: str  # JSON, one line
    agency: str | None = None  # for incident events: the incident's agency


def visible_to(event: LiveEvent, who: Principal) -> bool:
    """The same rule as the API: agency viewers only see incidents dispatched to their agency."""
    if who.role is Role.AGENCY:
        return event.type in ("incident", "escalation") and event.agency is not None and event.agency == who.agency
    return True


class _Subscriber:
    __slots__ = ("principal", "queue")

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.queue: asyncio.Queue[LiveEvent | None] = asyncio.Queue(QUEUE_MAX + 1)  # +1: room for the end mark


class Broadcaster:
    """Fan-out to the open streams. Not thread-safe: use it from the event loop only."""

    def __init__(self) -> None:
        self._subscribers: set[_Subscriber] = set()
        self._closed = False
        self.cut_off = 0  # streams ended because their console fell QUEUE_MAX events behind

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscribers)

    def subscribe(self, principal: Principal) -> _Subscriber:
        sub = _Subscriber(principal)
        if self._closed:
            sub.queue.put_nowait(None)
        else:
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        self._subscribers.discard(sub)

    def publish(self, event: LiveEvent) -> None:
        for sub in list(self._subscribers):
            if not visible_to(event, sub.principal):
                continue
            if sub.queue.qsize() >= QUEUE_MAX:
                self.cut_off += 1
                log.warning("live stream of %s is %d events behind; ending it (the console re-syncs)",
                            sub.principal.name, QUEUE_MAX)
                self._end(sub)
            else:
                sub.queue.put_nowait(event)

    def publish_incidents(self, incidents: Iterable[Incident], type_: EventType = "incident") -> None:
        for i in incidents:
            self.publish(LiveEvent(type_, IncidentOut.of(i).model_dump_json(), i.agency))

    def publish_fault(self, device_id: str, fault: str, active: bool, at: datetime) -> None:
        data = {"device_id": device_id, "fault": fault, "active": active, "at": rfc3339(at)}
        self.publish(LiveEvent("fault", json.dumps(data)))

    def end_where(self, ended: Callable[[Principal], bool]) -> int:
        """End the streams of the people for whom `ended` is true (a replaced token, a removed person);
        returns how many. Their consoles reconnect and are refused."""
        found = [sub for sub in self._subscribers if ended(sub.principal)]
        for sub in found:
            self._end(sub)
        return len(found)

    def close(self) -> None:
        """End every stream (at shutdown), so that no open console holds the server up."""
        self._closed = True
        for sub in list(self._subscribers):
            self._end(sub)

    def _end(self, sub: _Subscriber) -> None:
        self._subscribers.discard(sub)
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)


def _frame(event: str, data: str) -> str:
    return f"event: {event}\ndata: {data}\n\n"


async def _stream(live: Broadcaster, who: Principal) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STREAM_MAX_S
    # Subscribed before `hello` goes out: a console fetches the list after `hello`, so every change
    # after that fetch's snapshot is on the stream.
    sub = live.subscribe(who)
    try:
        yield f"retry: {RETRY_MS}\n\n"
        hello = {"server_time": rfc3339(utc_now()), "name": who.name, "role": who.role.value}
        yield _frame("hello", json.dumps(hello))
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                event = await asyncio.wait_for(sub.queue.get(), timeout=min(KEEPALIVE_S, remaining))
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            if event is None:
                return
            yield _frame(event.type, event.data)
    finally:
        live.unsubscribe(sub)


router = APIRouter(prefix="/api/v1", tags=["live"], route_class=StrictRoute)


@router.get(
    "/events",
    summary="Live updates (server-sent events)",
    description=(
        "A `text/event-stream` of changes, each published after it is committed: `incident` (an incident "
        "opened, was pressed again, changed state or got a note; `data` is the incident as in the list), "
        "`escalation` (an incident escalated; `data` is the incident) and `fault` (a device fault was "
        "reported: `device_id`, `fault`, `active`, `at`; fetch `/api/v1/devices/faults` for the current "
        "list). The first event, `hello`, carries the server's time. Agency viewers receive only incidents "
        f"dispatched to their agency. A comment line comes every {KEEPALIVE_S:.0f} s; the stream ends after "
        f"{STREAM_MAX_S:.0f} s (and when the server stops), and the client reconnects and fetches the list "
        "again, so it never misses a change."
    ),
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the event stream"},
        401: {"model": ErrorOut, "description": "not signed in"},
    },
)
async def events(svc: ServicesDep, who: PrincipalDep) -> StreamingResponse:
    return StreamingResponse(
        _stream(svc.live, who),
        media_type="text/event-stream",
        # no-transform and X-Accel-Buffering: proxies (nginx) must pass each event on at once.
        headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"},
    )

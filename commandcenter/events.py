"""The server-sent-events stream `GET /api/v1/events`, which carries the changes the broadcaster
(live.py) is fed to each signed-in console.

Each change is published after its transaction has committed. A console that connects (or
reconnects) first opens the stream and then fetches the incident list, so nothing falls between the
two; an event it already has from the list is simply applied again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from siaga.web import StrictRoute

from .deps import Principal, PrincipalDep, ServicesDep
from .domain import rfc3339, utc_now
from .live import Broadcaster
from .models import ErrorOut

KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
# A stream ends after this long and the browser reconnects at once: a session that has expired or an
# operator removed from the configuration loses the live feed within this time, and no stream holds
# a connection for ever.
STREAM_MAX_S = 300.0
RETRY_MS = 2000  # EventSource's reconnection delay


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

"""Live updates for the console: an in-process broadcaster fed on every change, each published
after its transaction has committed; events.py streams them to the browser.

Several processes on one PostgreSQL database (docs/commandcenter.md, "Several processes"): each
process publishes its own changes to its own broadcaster as above, and its store also sends each
change with NOTIFY inside the transaction that makes it (store.Change). `Relay` LISTENs on a
connection of its own and feeds the changes of the *other* processes to this process's broadcaster,
so every console sees every change whichever process made it. LISTEN/NOTIFY rather than a message
broker such as Redis: there is no further server to run, secure and keep alive, and a notification is
transactional: it is delivered only when the transaction commits, so a console never sees a change
that was rolled back, and the processes receive the changes in commit order. A notification carries
incident numbers (payloads are limited to 8000 bytes); the listener reads the incidents itself.
When the listening connection drops, the relay reconnects and then ends every stream, as the cut-off
of a slow console does: the consoles reconnect and fetch the lists again, so what was committed
meanwhile is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg

from .config import Role
from .deps import Principal
from .domain import rfc3339
from .models import IncidentOut
from .store import CHANGES_CHANNEL, Change, Incident, Store, Wake

log = logging.getLogger(__name__)

# A console that falls this many events behind (a frozen tab, a very slow link) is cut off rather
# than buffered without bound; its EventSource reconnects and re-syncs from the list.
QUEUE_MAX = 1000

EventType = Literal["incident", "escalation", "fault"]


@dataclass(frozen=True, slots=True)
class LiveEvent:
    type: EventType
    data: str  # JSON, one line
    agencies: frozenset[str] = frozenset()  # for incident events: the agencies the incident was dispatched to


def visible_to(event: LiveEvent, who: Principal) -> bool:
    """The same rule as the API: agency accounts only see incidents with a dispatch to their agency."""
    if who.role is Role.AGENCY:
        return event.type in ("incident", "escalation") and who.agency in event.agencies
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
            agencies = frozenset(d.agency for d in i.dispatches)
            self.publish(LiveEvent(type_, IncidentOut.of(i).model_dump_json(), agencies))

    def publish_fault(self, device_id: str, fault: str, active: bool, at: datetime) -> None:
        data = {"device_id": device_id, "fault": fault, "active": active, "at": rfc3339(at)}
        self.publish(LiveEvent("fault", json.dumps(data)))

    def resync(self) -> int:
        """End every stream: changes may have been missed. Each console reconnects and fetches the
        lists again, as after a cut-off. Returns how many streams were ended."""
        return self.end_where(lambda _: True)

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


class Relay:
    """Background task (PostgreSQL only): LISTEN for the changes other processes commit and publish
    them to `live`; `wake` gets the background loops a change gives work to (cluster.Leadership's
    loops, when this process leads). `start()` returns once it listens (or after `wait_s`),
    `stop()` at the end."""

    def __init__(
        self,
        store: Store,
        live: Broadcaster,
        *,
        wake: Callable[[Iterable[Wake]], None],
        retry_s: float = 1.0,
        ping_s: float = 5.0,
    ) -> None:
        self._store = store
        self._live = live
        self._wake = wake
        self._retry_s = retry_s
        self._ping_s = ping_s  # a connection that died silently shows up within this (and TCP keepalives)
        self._listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.connections = 0  # successful LISTENs so far: more than one means it reconnected
        self.relayed = 0  # changes of other processes published here

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    async def start(self, wait_s: float = 5.0) -> None:
        if self._task is not None:
            raise RuntimeError("relay already started")
        self._task = asyncio.create_task(self._run(), name="siaga-cc-relay")
        try:
            await asyncio.wait_for(self._listening.wait(), timeout=wait_s)
        except TimeoutError:
            log.warning("not yet listening for the other processes' changes; consoles re-sync when it does")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                conn = await self._store.connect("listen")
                try:
                    await self._listen(conn)
                finally:
                    self._listening.clear()
                    with contextlib.suppress(psycopg.Error, OSError):
                        await conn.close()
            except (psycopg.Error, OSError) as exc:
                log.warning("live updates from the other processes interrupted (%s); reconnecting", exc)
            except Exception:
                log.exception("relaying the other processes' changes failed; starting over")
            await asyncio.sleep(self._retry_s)

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(f"LISTEN {CHANGES_CHANNEL}")
        self.connections += 1
        self._listening.set()
        # Whatever was committed while nobody listened is not on the streams: the consoles re-sync,
        # and the loops look at their tables once.
        ended = self._live.resync()
        self._wake(("callbacks", "webhooks", "escalation"))
        if self.connections > 1:
            log.info("listening again for the other processes' changes; %d live streams re-sync", ended)
        while True:
            async for notification in conn.notifies(timeout=self._ping_s):
                await self._relay(notification.payload)
            await conn.execute("SELECT 1")

    async def _relay(self, payload: str) -> None:
        try:
            change = Change.decode(payload)
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed change notification: %.200r", payload)
            return
        if change.origin == self._store.origin:
            return  # this process's own change: published already, after its commit
        self._wake(change.wake)
        if not self._live.has_subscribers:
            return
        self.relayed += 1
        if change.kind == "fault":
            for f in change.faults:
                self._live.publish_fault(f.device_id, f.fault, f.active, f.at)
            return
        try:
            incidents = await self._store.get_incidents(change.incidents)
        except Exception:
            log.exception("could not read incidents %s changed by another process; consoles re-sync",
                          change.incidents[:10])
            self._live.resync()
            return
        self._live.publish_incidents(incidents, change.kind)

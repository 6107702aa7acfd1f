"""The gateway service: MQTT in, verify, deduplicate, group, commit, acknowledge, forward, relay
acks, supervise. One asyncio TaskGroup holds the loops; `Gateway.run()` returns when they are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Literal, cast

from siaga.asgi import EmbeddedServer, embedded_server
from siagafw import proto

from . import codec
from .adapters import Accepted, Adapter, iso_utc
from .codec import Alarm, DeviceKey, Reject, RejectReason, Status, Will
from .config import GatewayConfig
from .grouping import Grouper
from .limits import BreakerState, CircuitBreaker, FloodLimiter
from .metrics import Metrics
from .mqtt import Inbound, MqttLink
from .replay import ReplayWindow, Verdict
from .store import (
    Batch,
    Delivery,
    DeviceRecord,
    NewAlarm,
    OutboundEvent,
    Retry,
    Store,
    StoredAlarm,
)
from .supervision import FaultChange, Supervisor

log = logging.getLogger(__name__)

AckState = Literal["received", "acknowledged", "dispatched", "resolved", "false_alarm"]
ACK_REPLAY_HORIZON_MS = 24 * 3600 * 1000   # on (re)connect, re-publish acks of alarms this recent
FLOOD_AUDIT_EVERY_MS = 60_000              # one audit row per flooding device per minute, with a count


class Sequenced(enum.Enum):
    """What the sequence check says of an authenticated message (besides a Reject for a replay)."""

    NEW = "new"
    DUPLICATE = "duplicate"            # an alarm already stored or earlier in this batch: re-acknowledge
    SEEN_HEARTBEAT = "seen_heartbeat"  # a redelivered heartbeat: nothing to store


def now_ms() -> int:
    return int(time.time() * 1000)


class Gateway:
    def __init__(self, cfg: GatewayConfig, store: Store, adapter: Adapter,
                 clock: Callable[[], int] = now_ms) -> None:
        self.cfg = cfg
        self.store = store
        self.adapter = adapter
        self.clock = clock
        self.metrics = Metrics()
        self.registry: dict[str, DeviceRecord] = {}
        self._windows: dict[str, ReplayWindow] = {}
        self._latest_alarm: dict[str, int] = {}
        self._queue: asyncio.Queue[Inbound] = asyncio.Queue()
        self._wake_forwarder = asyncio.Event()
        self._flood = FloodLimiter(cfg.flood_rate_per_s, cfg.flood_burst)
        self._flood_audited: dict[str, tuple[int, int]] = {}  # device -> (last audit ms, drops since)
        self.breaker = CircuitBreaker(cfg.breaker_threshold, cooldown_s=cfg.retry_first_s,
                                      max_cooldown_s=cfg.retry_max_s)
        self.supervisor = Supervisor(cfg.supervision, clock())
        self.grouper = Grouper(cfg.incident_window_s * 1000)
        self.link: MqttLink | None = None
        self.ready = asyncio.Event()
        self._stopping = False

    def key(self, device_id: str) -> DeviceKey | None:
        rec = self.registry.get(device_id)
        return None if rec is None else DeviceKey(rec.secret, rec.revoked, rec.pending)

    # ------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; raises if a loop fails (e.g. the broker refuses our login)."""
        from .api import create_app  # the API module imports this one

        await self.store.open()
        try:
            await self._load()
            self.link = MqttLink(self.cfg.mqtt, self._queue, on_connected=self._on_mqtt_connected)
            server = embedded_server(create_app(self), self.cfg.api_host, self.cfg.api_port, lifespan="off")
            await self.link.start()
            async with asyncio.TaskGroup() as tg:
                intake = tg.create_task(self._intake(), name="intake")
                forwarder = tg.create_task(self._forwarder(), name="forwarder")
                others = [tg.create_task(self._supervise(), name="supervision"),
                          tg.create_task(self.link.wait_auth_failure(), name="mqtt-auth")]
                api = tg.create_task(server.serve(), name="api")
                self.ready.set()
                log.info("gateway %s running: API on %s:%d", self.cfg.gateway_id, self.cfg.api_host, self.cfg.api_port)
                waiter = tg.create_task(stop.wait(), name="stop")
                await asyncio.wait([waiter, api], return_when=asyncio.FIRST_COMPLETED)
                await self._shutdown(intake, forwarder, others, server)
                waiter.cancel()
        finally:
            if self.link is not None:
                await self.link.stop()
            await self.adapter.aclose()
            await self.store.close()

    async def _shutdown(self, intake: asyncio.Task[None], forwarder: asyncio.Task[None],
                        others: list[asyncio.Task[None]], server: EmbeddedServer) -> None:
        """Stop taking messages, finish the batch being committed and the delivery in flight."""
        log.info("gateway %s stopping", self.cfg.gateway_id)
        self._stopping = True
        assert self.link is not None
        # Messages received but not yet committed stay unacknowledged and come back from the
        # broker's session on the next start: nothing is lost by stopping mid-stream.
        await self.link.stop()
        self._queue.put_nowait(Inbound("", b"", 0, 0, False, 0))  # wakes an idle intake
        self._wake_forwarder.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.cfg.drain_s):
                await asyncio.gather(intake, forwarder, return_exceptions=True)
        for task in (intake, forwarder, *others):
            task.cancel()
        server.should_exit = True

    async def _load(self) -> None:
        self.registry = {r.id: r for r in await self.store.registry()}
        self._windows = await self.store.windows()
        self._latest_alarm = await self.store.latest_alarms()
        groups, next_id = await self.store.open_groups(self.clock() - self.cfg.incident_window_s * 1000)
        self.grouper = Grouper(self.cfg.incident_window_s * 1000, next_id, groups)
        for device_id, last_seen, every_s, faults, battery in await self.store.device_health():
            self.supervisor.load(device_id, last_seen, every_s, faults, battery)

    # ------------------------------------------------------------ intake

    async def _intake(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            items = [await self._queue.get()]
            deadline = loop.time() + self.cfg.batch_wait_ms / 1000
            while len(items) < self.cfg.batch_max:
                try:
                    items.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            items = [i for i in items if i.topic]  # drop the shutdown wake-up
            if items:
                await self._process(items)

    async def _process(self, items: list[Inbound]) -> None:
        batch = Batch()
        in_batch: set[tuple[str, int]] = set()
        now = self.clock()
        for item in items:
            self.metrics.inc("received")
            msg = self._admit(item, batch)
            if msg is None:
                continue
            duplicate = False
            if not isinstance(msg, Reject):
                await self._promote_pending_key(msg.device_id, item.payload)
                verdict = await self._check_sequence(msg, in_batch)
                if verdict is Sequenced.SEEN_HEARTBEAT:
                    continue  # a redelivered heartbeat: acknowledged below, nothing to store
                if isinstance(verdict, Reject):
                    msg = verdict
                duplicate = verdict is Sequenced.DUPLICATE
            if isinstance(msg, Reject):
                self.metrics.inc("rejected", reason=msg.reason.value)
                log.warning("rejected %s from %s on %s: %s", msg.reason.value, msg.device_id, msg.topic, msg.detail)
                batch.rejects.append((msg, item.received_ms))
            elif isinstance(msg, Alarm):
                if duplicate:
                    batch.duplicates.append((msg.device_id, msg.seq))
                else:
                    in_batch.add((msg.device_id, msg.seq))
                    batch.alarms.append(self._new_alarm(msg, item.received_ms, batch))
                batch.windows[msg.device_id] = self._windows[msg.device_id]
                batch.faults += self.supervisor.seen(msg.device_id, now)
            elif isinstance(msg, Status):
                self.metrics.inc("heartbeats")
                batch.statuses.append((msg, item.received_ms))
                batch.windows[msg.device_id] = self._windows[msg.device_id]
                batch.faults += self.supervisor.heartbeat(msg.device_id, now, msg.every_s, msg.battery_mv, msg.tamper)
            elif isinstance(msg, Will):
                batch.faults += self.supervisor.will(msg.device_id, now)
        stored = await self.store.commit(batch, self._fault_event)
        # Only now is every message of the batch durable: acknowledge to the broker (§6 step 3).
        assert self.link is not None
        for item in items:
            self.link.ack(item)
        for alarm in stored:
            if alarm.changed:
                self.metrics.inc("alarms_stored")
                self._latest_alarm[alarm.device_id] = max(alarm.seq, self._latest_alarm.get(alarm.device_id, -1))
            else:
                self.metrics.inc("duplicates")
            # A duplicate is re-acknowledged too: its sender evidently missed the first ack.
            self._publish_ack(alarm)
        self._count_faults(batch.faults)
        if batch.alarms or batch.faults:
            self._wake_forwarder.set()

    def _admit(self, item: Inbound, batch: Batch) -> codec.Message | Reject | None:
        """Flood check (cheap, before any HMAC work), then decode and verify."""
        where = codec.split_topic(item.topic)
        if where is not None and where[0] in self.registry and not self._flood.allow(where[0], item.received_ms):
            self.metrics.inc("rejected", reason=RejectReason.FLOOD.value)
            last, dropped = self._flood_audited.get(where[0], (0, 0))
            if item.received_ms - last >= FLOOD_AUDIT_EVERY_MS:
                detail = f"over {self.cfg.flood_rate_per_s:g} msg/s; {dropped} more dropped since last entry"
                batch.rejects.append((Reject(RejectReason.FLOOD, where[0], item.topic[:128], detail), item.received_ms))
                log.warning("flood from %s: %s", where[0], detail)
                self._flood_audited[where[0]] = (item.received_ms, 0)
            else:
                self._flood_audited[where[0]] = (last, dropped + 1)
            return None
        return codec.decode(item.topic, item.payload, self.key)

    async def _promote_pending_key(self, device_id: str, payload: bytes) -> None:
        """The first frame a device signs with its rotated-in secret retires the old secret."""
        rec = self.registry[device_id]
        if rec.pending is None or codec.verify_frame(rec.pending, payload) is None:
            return
        await self.store.set_key(device_id, rec.pending, pending=False)
        self.registry[device_id] = dataclasses.replace(rec, secret=rec.pending, pending=None)
        log.info("device %s now uses its new key; the old one is no longer accepted", device_id)

    async def _check_sequence(self, msg: codec.Message, in_batch: set[tuple[str, int]]) -> Sequenced | Reject:
        if isinstance(msg, Will):
            return Sequenced.NEW  # a hint only; it does not move the window (protocol.md §4.3)
        window = self._windows.setdefault(msg.device_id, ReplayWindow())
        verdict = window.check(msg.seq)
        if verdict is Verdict.NEW:
            window.accept(msg.seq)
            return Sequenced.NEW
        if isinstance(msg, Alarm) and ((msg.device_id, msg.seq) in in_batch
                                       or await self.store.alarm_exists(msg.device_id, msg.seq)):
            return Sequenced.DUPLICATE
        if isinstance(msg, Status) and verdict is Verdict.SEEN:
            return Sequenced.SEEN_HEARTBEAT
        topic = proto.topic(msg.device_id, "alarm" if isinstance(msg, Alarm) else "status")
        return Reject(RejectReason.REPLAY, msg.device_id, topic,
                      f"seq {msg.seq} not stored and older than the window (high {window.high})")

    def _new_alarm(self, alarm: Alarm, received_ms: int, batch: Batch) -> NewAlarm:
        rec = self.registry[alarm.device_id]
        group = self.grouper.assign(rec.site or alarm.device_id, alarm.device_id, received_ms)
        batch.groups[group.group_id] = group.group
        event_id = f"{self.cfg.gateway_id}:{alarm.device_id}:{alarm.seq}"
        loc = alarm.location
        body = {
            "event_id": event_id, "gateway_id": self.cfg.gateway_id, "device_id": alarm.device_id,
            "seq": alarm.seq, "kind": alarm.kind, "test": alarm.test,
            "location": {"lat": loc.lat_e6 / 1e6, "lon": loc.lon_e6 / 1e6, "address": loc.address, "area": loc.area},
            "raised_at": iso_utc(alarm.raised_ts * 1000) if alarm.raised_ts is not None else None,
            "received_at": iso_utc(received_ms),
            "incident_key": f"{self.cfg.gateway_id}:g:{group.group_id}",
            "press_count": group.press_count, "sources": list(group.sources),
            "battery_mv": self.supervisor.battery_mv(alarm.device_id),
        }
        return NewAlarm(alarm, received_ms, event_id, group.group_id, group.press_count,
                        json.dumps(body, separators=(",", ":"), ensure_ascii=False))

    # ------------------------------------------------------------ faults

    def _fault_event(self, change: FaultChange, number: int) -> tuple[str, str]:
        event_id = f"{self.cfg.gateway_id}:{change.device_id}:fault:{number}"
        detail = {k: (iso_utc(v) if k.endswith("_ms") and isinstance(v, int) else v) for k, v in change.detail.items()}
        detail = {k.removesuffix("_ms") + ("_at" if k.endswith("_ms") else ""): v for k, v in detail.items()}
        body: dict[str, object] = {"event_id": event_id, "gateway_id": self.cfg.gateway_id,
                                   "device_id": change.device_id, "fault": change.fault.value,
                                   "active": change.active, "at": iso_utc(change.at_ms), "detail": detail}
        rec = self.registry.get(change.device_id)
        if rec is not None and rec.lat_e6 is not None and rec.lon_e6 is not None:
            body["location"] = {"lat": rec.lat_e6 / 1e6, "lon": rec.lon_e6 / 1e6, "address": rec.address,
                                "area": rec.area}
        return event_id, json.dumps(body, separators=(",", ":"), ensure_ascii=False)

    def _count_faults(self, changes: list[FaultChange]) -> None:
        for ch in changes:
            self.metrics.inc("faults", fault=ch.fault.value, change="start" if ch.active else "clear")
            log.log(logging.WARNING if ch.active else logging.INFO, "device %s %s %s", ch.device_id,
                    ch.fault.value, "started" if ch.active else "cleared")

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = self.clock()
            self.grouper.expire(now)
            changes = self.supervisor.tick(now)
            if changes:
                await self.store.record_faults(changes, self._fault_event)
                self._count_faults(changes)
                self._wake_forwarder.set()

    # ------------------------------------------------------------ acks to buttons

    def _publish_ack(self, alarm: StoredAlarm) -> None:
        rec = self.registry.get(alarm.device_id)
        if rec is None or self.link is None:
            return
        payload = codec.encode_ack(rec.secret, alarm.device_id, alarm.seq, cast(AckState, alarm.state),
                                   alarm.incident_id, self.clock())
        # Retained only for the device's newest alarm, so a button coming back online is told the
        # state of its latest alarm rather than of an older one.
        retain = alarm.seq >= self._latest_alarm.get(alarm.device_id, -1)
        self.link.publish(proto.topic(alarm.device_id, "ack"), payload, retain=retain)
        self.metrics.inc("acks_published")

    def _on_mqtt_connected(self) -> None:
        asyncio.get_running_loop().create_task(self._republish_acks())

    async def _republish_acks(self) -> None:
        """After a (re)connect, publish each device's latest ack again: the broker may have lost the
        retained copy (it saves to disk only every autosave interval), or the gateway may have
        stopped between storing a state and publishing it."""
        for alarm in await self.store.current_acks(self.clock() - ACK_REPLAY_HORIZON_MS):
            self._publish_ack(alarm)

    async def command_center_state(self, device_id: str, seq: int, state: str, incident_id: str | None,
                                   by: str | None, at_ms: int) -> StoredAlarm | None:
        rank = proto.state_rank(state)
        if rank < 0:
            raise ValueError(f"unknown state {state!r}")
        stored = await self.store.set_state(device_id, seq, state, rank, incident_id, by, at_ms)
        if stored is not None and stored.changed:
            self._publish_ack(stored)
        return stored

    # ------------------------------------------------------------ forwarding

    def _retry_delay_ms(self, attempts: int) -> int:
        # Full jitter (Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015): when
        # the command center comes back, retries are spread out instead of arriving all at once.
        cap = min(self.cfg.retry_max_s, self.cfg.retry_first_s * 2 ** min(attempts, 20))
        return int(random.uniform(self.cfg.retry_first_s / 10, cap) * 1000)

    async def _forwarder(self) -> None:
        while not self._stopping:
            self._wake_forwarder.clear()
            now = self.clock()
            if not self.breaker.allow(now):
                await self._sleep_until_woken((self.breaker.retry_at_ms - now) / 1000)
                continue
            # Half-open: a single event probes whether the command center is back.
            probing = self.breaker.state is BreakerState.HALF_OPEN
            events = await self.store.due_events(now, 1 if probing else self.cfg.forward_batch)
            if not events:
                await self._sleep_until_woken(1.0)
                continue
            await self._deliver(events)

    async def _sleep_until_woken(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake_forwarder.wait(), max(0.01, seconds))

    async def _deliver(self, events: list[OutboundEvent]) -> None:
        outcomes = await self.adapter.deliver(events)
        now = self.clock()
        delivered: list[Delivery] = []
        retries: list[Retry] = []
        refused: list[tuple[Reject, int]] = []
        for event, outcome in zip(events, outcomes, strict=True):
            if isinstance(outcome, Accepted):
                delivered.append(Delivery(event.id, event.alarm_id, outcome.incident_id))
                self.metrics.inc("forwarded", kind=event.kind)
                if event.kind == "alarm":
                    self.metrics.latency.observe(max(0, now - event.created_ms) / 1000)
            elif outcome.retry:
                retries.append(Retry(event.id, now + self._retry_delay_ms(event.attempts), outcome.error))
                self.metrics.inc("forward_failures", kind=event.kind)
            else:
                # Kept, never dropped: an operator can see it in the audit log and the outbox, fix the
                # cause and let it go out again. Retried rarely so it does not hold up the device.
                retries.append(Retry(event.id, now + int(self.cfg.retry_max_s * 10_000), outcome.error))
                self.metrics.inc("forward_refused")
                refused.append((Reject(RejectReason.MALFORMED, event.device_id, "forward:" + event.event_id,
                                       f"command center refused {event.kind}: {outcome.error}"), now))
                log.error("command center refused %s %s: %s", event.kind, event.event_id, outcome.error)
        self.metrics.inc("forward_rounds", result="ok" if delivered else "failed")
        if delivered:
            self.breaker.success()
        elif retries and len(retries) == len(events):
            was_open = self.breaker.state is not BreakerState.CLOSED
            self.breaker.failure(now)
            if self.breaker.state is BreakerState.OPEN and not was_open:
                log.error("command center unreachable: circuit breaker open (%s)", retries[0].error)
            if self.breaker.state is BreakerState.OPEN:
                # While the breaker is open the events wait for it, not for their own backoff.
                retries = [Retry(r.outbox_id, now, r.error, spend_attempt=False) for r in retries]
        await self.store.settle(delivered, retries, now)
        if refused:
            await self.store.commit(Batch(rejects=refused), self._fault_event)

    # ------------------------------------------------------------ registry

    async def register_device(self, device_id: str, secret: bytes, *, site: str | None = None,
                              lat_e6: int | None = None, lon_e6: int | None = None, address: str = "",
                              area: str = "") -> None:
        await self.store.add_device(device_id, secret, now_ms=self.clock(), site=site, lat_e6=lat_e6, lon_e6=lon_e6,
                                    address=address, area=area)
        self.registry[device_id] = DeviceRecord(device_id, secret, False, site, lat_e6, lon_e6, address, area)

    async def revoke_device(self, device_id: str) -> bool:
        changed = await self.store.revoke_device(device_id, self.clock())
        rec = self.registry.get(device_id)
        if rec is not None:
            # Effective for the very next message, without waiting for any cache to expire.
            self.registry[device_id] = dataclasses.replace(rec, revoked=True)
            self.supervisor.forget(device_id)
        return changed

    async def decommission_device(self, device_id: str) -> bool:
        changed = await self.store.decommission(device_id, self.clock())
        rec = self.registry.get(device_id)
        if rec is not None:
            self.registry[device_id] = dataclasses.replace(rec, revoked=True, pending=None)
            self.supervisor.forget(device_id)
        return changed

    async def rotate_key(self, device_id: str, secret: bytes, *, pending: bool) -> None:
        await self.store.set_key(device_id, secret, pending=pending)
        rec = self.registry[device_id]
        self.registry[device_id] = (dataclasses.replace(rec, pending=secret) if pending
                                    else dataclasses.replace(rec, secret=secret, pending=None))

    async def update_device(self, device_id: str, fields: dict[str, object]) -> None:
        await self.store.update_device(device_id, fields)
        self.registry[device_id] = dataclasses.replace(self.registry[device_id], **fields)  # type: ignore[arg-type]

    def gauges(self) -> dict[str, float]:
        return {"devices_online": self.supervisor.online(), "devices_registered": len(self.registry),
                "circuit_open": float(self.breaker.state is BreakerState.OPEN),
                "mqtt_connected": float(self.link is not None and self.link.connected.is_set()),
                "acks_dropped": self.link.dropped_publishes if self.link is not None else 0}

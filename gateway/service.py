"""The gateway service: MQTT in, verify, deduplicate, commit, acknowledge, forward, relay acks.

One asyncio TaskGroup holds the loops; leaving `Gateway.run()` cancels and awaits them all.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Literal, cast

from siaga.asgi import embedded_server
from siagafw import proto

from . import codec
from .adapters import Adapter, DeliveryError
from .codec import Alarm, DeviceKey, Reject, RejectReason, Status, Will
from .config import GatewayConfig
from .mqtt import Inbound, MqttLink
from .replay import ReplayWindow, Verdict
from .store import Batch, Forward, Store, StoredAlarm

log = logging.getLogger(__name__)

AckState = Literal["received", "acknowledged", "dispatched", "resolved", "false_alarm"]


def now_ms() -> int:
    return int(time.time() * 1000)


class Gateway:
    def __init__(self, cfg: GatewayConfig, store: Store, adapter: Adapter,
                 clock: Callable[[], int] = now_ms) -> None:
        self.cfg = cfg
        self.store = store
        self.adapter = adapter
        self.clock = clock
        self.metrics: Counter[str] = Counter()
        self.keys: dict[str, DeviceKey] = {}
        self._windows: dict[str, ReplayWindow] = {}
        self._latest_alarm: dict[str, int] = {}
        self._queue: asyncio.Queue[Inbound] = asyncio.Queue()
        self._wake_forwarder = asyncio.Event()
        self.link: MqttLink | None = None
        self.ready = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; raises if a loop fails (e.g. the broker refuses our login)."""
        from .api import create_app  # the API module imports this one

        await self.store.open()
        try:
            self.keys = await self.store.device_keys()
            self._windows = await self.store.windows()
            self._latest_alarm = await self.store.latest_alarms()
            self.link = MqttLink(self.cfg.mqtt, self._queue)
            server = embedded_server(create_app(self), self.cfg.api_host, self.cfg.api_port, lifespan="off")
            await self.link.start()
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._intake(), name="intake"),
                    tg.create_task(self._forwarder(), name="forwarder"),
                    tg.create_task(self.link.wait_auth_failure(), name="mqtt-auth"),
                    tg.create_task(server.serve(), name="api"),
                ]
                self.ready.set()
                log.info("gateway %s running: API on %s:%d", self.cfg.gateway_id, self.cfg.api_host,
                         self.cfg.api_port)
                await stop.wait()
                log.info("gateway %s stopping", self.cfg.gateway_id)
                server.should_exit = True
                for task in tasks:
                    if task.get_name() != "api":
                        task.cancel()
        finally:
            if self.link is not None:
                await self.link.stop()
            await self.adapter.aclose()
            await self.store.close()

    # ------------------------------------------------------------ intake

    async def _intake(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
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
            await self._process(items)

    async def _process(self, items: list[Inbound]) -> None:
        batch = Batch()
        in_batch: set[tuple[str, int]] = set()
        for item in items:
            msg = codec.decode(item.topic, item.payload, self.keys.get)
            if not isinstance(msg, Reject):
                msg = await self._check_sequence(msg, in_batch)
            if msg is None:
                continue  # a redelivered heartbeat: acknowledged below, nothing to store
            if isinstance(msg, Reject):
                self.metrics[f"rejected_{msg.reason.value}"] += 1
                log.warning("rejected %s from %s on %s: %s", msg.reason.value, msg.device_id, msg.topic, msg.detail)
                batch.rejects.append((msg, item.received_ms))
            elif isinstance(msg, Alarm):
                in_batch.add((msg.device_id, msg.seq))
                batch.alarms.append((msg, item.received_ms))
                batch.windows[msg.device_id] = self._windows[msg.device_id]
            elif isinstance(msg, Status):
                batch.statuses.append((msg, item.received_ms))
                batch.windows[msg.device_id] = self._windows[msg.device_id]
            elif isinstance(msg, Will):
                batch.offline.append((msg.device_id, item.received_ms))
        stored = await self.store.commit(batch, self.cfg.gateway_id)
        # Only now is every message of the batch durable: acknowledge to the broker (§6 step 3).
        assert self.link is not None
        for item in items:
            self.link.ack(item.mid, item.qos)
        for alarm in stored:
            if alarm.changed:
                self.metrics["alarms_stored"] += 1
                self._latest_alarm[alarm.device_id] = max(alarm.seq, self._latest_alarm.get(alarm.device_id, -1))
            else:
                self.metrics["alarms_duplicate"] += 1
            # A duplicate is re-acknowledged too: its sender evidently missed the first ack.
            self._publish_ack(alarm)
        if any(a.changed for a in stored):
            self._wake_forwarder.set()

    async def _check_sequence(self, msg: codec.Message,
                              in_batch: set[tuple[str, int]]) -> codec.Message | Reject | None:
        """The message if it is new (or an alarm already stored, to re-acknowledge), None for a
        heartbeat seen before, a Reject for a replay."""
        if isinstance(msg, Will):
            return msg  # a hint only; it does not move the window (protocol.md §4.3)
        window = self._windows.setdefault(msg.device_id, ReplayWindow())
        verdict = window.check(msg.seq)
        topic = proto.topic(msg.device_id, "alarm" if isinstance(msg, Alarm) else "status")
        if verdict is Verdict.NEW:
            window.accept(msg.seq)
            return msg
        if isinstance(msg, Alarm) and ((msg.device_id, msg.seq) in in_batch
                                       or await self.store.alarm_exists(msg.device_id, msg.seq)):
            return msg  # a duplicate: the commit finds it stored and we re-acknowledge it
        if isinstance(msg, Status) and verdict is Verdict.SEEN:
            self.metrics["status_duplicate"] += 1
            return None
        return Reject(RejectReason.REPLAY, msg.device_id, topic,
                      f"seq {msg.seq} unseen and older than the window (high {window.high})")

    # ------------------------------------------------------------ acks to buttons

    def _publish_ack(self, alarm: StoredAlarm) -> None:
        key = self.keys.get(alarm.device_id)
        if key is None or self.link is None:
            return
        payload = codec.encode_ack(key.secret, alarm.device_id, alarm.seq, cast(AckState, alarm.state),
                                   alarm.incident_id, self.clock())
        # Retained only for the device's newest alarm, so a button coming back online is told the
        # state of its latest alarm rather than of an older one.
        retain = alarm.seq >= self._latest_alarm.get(alarm.device_id, -1)
        self.link.publish(proto.topic(alarm.device_id, "ack"), payload, retain=retain)
        self.metrics["acks_published"] += 1

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

    def _retry_delay_s(self, attempts: int) -> float:
        # Full jitter (Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015):
        # when the command center comes back, the retries are spread out instead of arriving at once.
        cap = min(self.cfg.retry_max_s, self.cfg.retry_first_s * 2 ** min(attempts, 20))
        return random.uniform(self.cfg.retry_first_s / 10, cap)

    async def _forward_chain(self, chain: list[Forward], limit: asyncio.Semaphore) -> None:
        async with limit:
            for fwd in chain:
                started = time.perf_counter()
                try:
                    delivered = await self.adapter.deliver(fwd)
                except DeliveryError as exc:
                    delay = self._retry_delay_s(fwd.attempts) if exc.retry else self.cfg.retry_max_s * 5
                    self.metrics["forward_failures"] += 1
                    log.warning("forwarding %s failed (attempt %d, retry in %.1f s): %s", fwd.event_id,
                                fwd.attempts + 1, delay, exc)
                    await self.store.forward_failed(fwd.alarm_id, self.clock() + int(delay * 1000), str(exc))
                    return  # the device's later alarms wait: per-device order is kept
                await self.store.forwarded(fwd.alarm_id, delivered.incident_id, self.clock())
                self.metrics["forwarded"] += 1
                self.metrics["forward_seconds_total_ms"] += int((time.perf_counter() - started) * 1000)

    async def _forwarder(self) -> None:
        limit = asyncio.Semaphore(self.cfg.forward_concurrency)
        while True:
            self._wake_forwarder.clear()
            due = await self.store.due_forwards(self.clock(), self.cfg.forward_concurrency * 16)
            if not due:
                try:
                    await asyncio.wait_for(self._wake_forwarder.wait(), 1.0)
                except TimeoutError:
                    pass
                continue
            chains: dict[str, list[Forward]] = {}
            for fwd in due:
                chains.setdefault(fwd.device_id, []).append(fwd)
            async with asyncio.TaskGroup() as tg:
                for chain in chains.values():
                    tg.create_task(self._forward_chain(chain, limit))

    # ------------------------------------------------------------ registry

    async def register_device(self, device_id: str, secret: bytes, **location: object) -> None:
        await self.store.add_device(device_id, secret, now_ms=self.clock(), **location)  # type: ignore[arg-type]
        self.keys[device_id] = DeviceKey(secret)

    async def revoke_device(self, device_id: str) -> bool:
        changed = await self.store.revoke_device(device_id, self.clock())
        key = self.keys.get(device_id)
        if key is not None:
            # Effective for the very next message, without waiting for any cache to expire.
            self.keys[device_id] = DeviceKey(key.secret, revoked=True)
        return changed

"""The gateway service: MQTT in, verify, deduplicate, group, commit, acknowledge, forward, relay
acks, supervise. One asyncio TaskGroup holds the loops; `Gateway.run()` returns when they are done.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

from siaga.asgi import EmbeddedServer, embedded_server
from siaga.web import flush_every
from siagafw import proto, sms

from . import codec
from .adapters import Adapter
from .codec import Alarm, DeviceKey, OtaGet, OtaStatus, Reject, RejectReason, SmsTest, Status, Will
from .config import GatewayConfig, Person
from .events import alarm_event, fault_event, state_event
from .forwarding import Forwarder
from .grouping import Group
from .limits import BreakerState, CircuitBreaker, FloodLimiter
from .liveness import report_forever
from .metrics import Metrics
from .mqtt import Inbound, MqttLink
from .ota import OtaService
from .replay import ReplayWindow, Verdict
from .sms import SenderFlood, SmsIntake
from .store import (
    DATABASE_DOWN,
    IN_PROCESS,
    PRIMARY,
    Batch,
    DeviceRecord,
    Lane,
    NewAlarm,
    OutboundEvent,
    PushedConfig,
    Quarantined,
    Store,
    StoredAlarm,
)
from .supervision import Fault, FaultChange, Supervisor

log = logging.getLogger(__name__)

AckState = Literal["received", "undelivered", "acknowledged", "dispatched", "resolved", "false_alarm"]
ACK_REPLAY_HORIZON_MS = 24 * 3600 * 1000   # after a start or a lost session, re-publish acks this recent
# After a reconnect to a broker that kept the session, only acks that may have missed its last save
# (autosave_interval 10 s in broker/templates/mosquitto.conf) go again.
ACK_UNSAVED_MS = 60 * 1000
FLOOD_AUDIT_EVERY_MS = 60_000              # one audit row per flooding device per minute, with a count
# Messages other than alarms per commit: small, so that an alarm never waits long for the single
# database writer (a chunk of heartbeats with fault changes commits in a few milliseconds).
BULK_CHUNK = 20
FAULTS_LOGGED_EACH = 5         # more fault changes at once are logged as one line
FAILURES_EVERY_S = 60.0       # wrong admin-API credentials are logged once a minute per address
# Several instances on one database (store.shared): how often an instance reads what the others
# changed: the registry (when the fleet change log grew) and the devices' health for supervision.
SHARED_SYNC_S = 1.0
TAKEOVER_EVERY_S = 1.0   # how often the leader looks for dead instances whose MQTT session to take over
TAKEOVER_QUIET_S = 0.5   # a taken-over session is drained when nothing more came for this long
TAKEOVER_MAX_S = 20.0
# Alarms that came by SMS, (device, seq) -> the sender's number: their acks go back by SMS too. In
# memory only: after a restart, a state change of such an alarm goes by SMS to the device's
# registered phone while the device is offline on MQTT (_publish_ack), by MQTT alone otherwise.
SMS_SENDERS_KEPT = 10_000
OTA_GET_SUFFIX = "/ota/get"   # firmware chunk requests: served on arrival (OtaService.serve)
SMS_STOP_S = 5.0         # at shutdown, how long the SMS intake may take to delete what was committed


class Sequenced(enum.Enum):
    """What the sequence check says of an authenticated message (besides a Reject for a replay)."""

    NEW = "new"
    DUPLICATE = "duplicate"            # an alarm already stored or earlier in this batch: re-acknowledge
    SEEN_HEARTBEAT = "seen_heartbeat"  # a redelivered heartbeat (or SMS test): nothing to store


def now_ms() -> int:
    return int(time.time() * 1000)


class Gateway:
    def __init__(self, cfg: GatewayConfig, store: Store, adapter: Adapter | None = None,
                 clock: Callable[[], int] = now_ms, *, adapters: Mapping[str, Adapter] | None = None) -> None:
        """`adapters`: one per destination of cfg.destinations, by name (gateway/destinations.py
        builds them); `adapter` alone stands for the one reference command center of older setups."""
        self.cfg = cfg
        self.store = store
        self.clock = clock
        self.metrics = Metrics()
        self.registry: dict[str, DeviceRecord] = {}
        self._windows: dict[str, ReplayWindow] = {}
        self._latest_alarm: dict[str, int] = {}
        self._queue: asyncio.Queue[Inbound] = asyncio.Queue()
        # The intake's own queues (_intake): alarms, and everything else in arrival order; per
        # device, how many of its messages wait among the others; the PUBACK order.
        self._alarms: collections.deque[Inbound] = collections.deque()
        self._bulk: collections.deque[Inbound] = collections.deque()
        self._bulk_ids: dict[int, str] = {}   # id() of a message among the others -> its device
        self._bulk_of: dict[str, int] = {}
        self._unacked: collections.deque[Inbound] = collections.deque()
        self._done: set[int] = set()
        # One forwarder per destination, each with a lane per kind woken when its kind of event
        # is stored (store.Lane): a slow destination never delays another.
        if adapters is None:
            if adapter is None:
                raise ValueError("Gateway needs its destinations' adapters")
            adapters = {PRIMARY: adapter}
        self.forwarders = {name: Forwarder(self, name, a, primary=name == cfg.primary_destination,
                                           on_refused=self._refused) for name, a in adapters.items()}
        routes: dict[str, list[str]] = {"alarm": [], "fault": [], "state": []}
        for d in cfg.destinations:
            if d.name in self.forwarders:
                for kind in d.events:
                    routes[kind].append(d.name)
        if not cfg.destinations:  # no destinations configured: the adapter given takes alarms and faults
            routes = {"alarm": list(self.forwarders), "fault": list(self.forwarders), "state": []}
        store.route(routes, cfg.primary_destination if cfg.destinations else next(iter(self.forwarders)))
        self._flood = FloodLimiter(cfg.flood_rate_per_s, cfg.flood_burst)
        self._flood_audited: dict[str, tuple[int, int]] = {}  # device -> (last audit ms, drops since)
        self.supervisor = Supervisor(cfg.supervision, clock(),
                                     sms_test_every_s=cfg.sms.test_every_s if cfg.sms is not None else 0)
        # The SMS path (issue 17): the modem's intake, set in run() when [sms] is configured.
        self.sms: SmsIntake | None = None
        self._sms_flood = SenderFlood(cfg.sms.flood_per_minute if cfg.sms is not None else 10)
        self._sms_senders: collections.OrderedDict[tuple[str, int], str] = collections.OrderedDict()
        self._sms_tests: list[tuple[str, int, str]] = []  # test SMS answered once their batch is committed
        # Alarms of the batch being committed that came by SMS: only these are answered by SMS
        # (a copy of an SMS alarm that arrives later by MQTT is answered over MQTT alone).
        self._sms_batch: set[tuple[str, int]] = set()
        # Set while this instance forwards the outbox and runs the time-driven supervision: always
        # with SQLite, with PostgreSQL while it holds the leader lock (gateway/store_pg.py).
        self.leader = asyncio.Event()
        self._registry_version = 0
        # device -> (applied, refused) remote configuration versions its heartbeats last reported
        # to this instance: a change is logged once.
        self._config_reported: dict[str, tuple[int, int | None]] = {}
        # Firmware over the air (protocol.md §11): offers, the chunk service, update reports.
        self.ota = OtaService(self, cfg.ota)
        self.link: MqttLink | None = None
        self.ready = asyncio.Event()
        self.stopping = False

    @property
    def breaker(self) -> CircuitBreaker:
        """The primary destination's circuit breaker (what /health reports as `circuit`)."""
        fw = self.forwarders.get(self.cfg.primary_destination) or next(iter(self.forwarders.values()))
        return fw.breaker

    @property
    def instance(self) -> str:
        """This instance's name among several sharing one database (its MQTT client id by default)."""
        return self.cfg.instance or self.cfg.mqtt.client_id

    def key(self, device_id: str) -> DeviceKey | None:
        rec = self.registry.get(device_id)
        return None if rec is None else DeviceKey(rec.secret, rec.revoked, rec.pending)

    # ------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; raises if a loop fails (e.g. the broker refuses our login)."""
        from .api import create_app, record_failures  # the API module imports this one

        await self.store.open()
        holding: asyncio.Task[None] | None = None
        try:
            await self._load()
            if self.store.shared:
                # Our name before our MQTT session: while another instance drains a session of ours
                # left from a previous run, we wait (gateway/store_pg.py, hold_instance).
                held = asyncio.Event()
                holding = asyncio.create_task(self.store.hold_instance(
                    self.instance, self.cfg.mqtt.client_id, self.clock(), held), name="instance-name")
                await held.wait()
            self.link = MqttLink(self.cfg.mqtt, self._queue, on_connected=self._on_mqtt_connected)
            if self.cfg.sms is not None:
                self.sms = SmsIntake(self.cfg.sms, self._queue, metrics=self.metrics, audit=self.audit,
                                     clock=self.clock)
            app = create_app(self)
            server = embedded_server(app, self.cfg.api_host, self.cfg.api_port, lifespan="off",
                                     limits=self.cfg.api_limits, forwarded_allow_ips=self.cfg.forwarded_allow_ips)
            async with asyncio.TaskGroup() as tg:
                intake = tg.create_task(self._intake(), name="intake")
                for fw in self.forwarders.values():
                    await fw.adapter.start()
                forwarders = [tg.create_task(fw.run_lane(lane), name=f"forward-{fw.name}-{lane}")
                              for fw in self.forwarders.values() for lane in fw.wake]
                others = [tg.create_task(self._supervise(), name="supervision"),
                          tg.create_task(self.store.lead(self.leader, self._wake_lane), name="leadership"),
                          tg.create_task(self._take_over(), name="takeover"),
                          tg.create_task(self.link.run(), name="mqtt-link"),  # raises if the login is refused
                          tg.create_task(flush_every(FAILURES_EVERY_S, lambda: record_failures(app)),
                                         name="failed-credentials"),
                          tg.create_task(report_forever(self, self.cfg.report_every_s), name="self-report")]
                if self.sms is not None:
                    others.append(tg.create_task(self.sms.run(), name="sms-intake"))
                api = tg.create_task(server.serve(), name="api")
                self.ready.set()
                log.info("gateway %s running: API on %s:%d", self.cfg.gateway_id, self.cfg.api_host, self.cfg.api_port)
                waiter = tg.create_task(stop.wait(), name="stop")
                await asyncio.wait([waiter, api], return_when=asyncio.FIRST_COMPLETED)
                await self._shutdown(intake, forwarders, others, server)
                waiter.cancel()
        finally:
            if self.link is not None:
                await self.link.stop()
            if holding is not None:
                holding.cancel()
                await asyncio.gather(holding, return_exceptions=True)
            for fw in self.forwarders.values():
                try:
                    await fw.adapter.aclose()
                except Exception:  # one adapter's failure to close must not keep the others open
                    log.exception("closing destination %s failed", fw.name)
            await self.store.close()

    async def _shutdown(self, intake: asyncio.Task[None], forwarders: list[asyncio.Task[None]],
                        others: list[asyncio.Task[None]], server: EmbeddedServer) -> None:
        """Stop taking messages, finish the batch being committed and the delivery in flight."""
        log.info("gateway %s stopping", self.cfg.gateway_id)
        self.stopping = True
        assert self.link is not None
        # Messages received but not yet committed stay unacknowledged and come back from the
        # broker's session on the next start: nothing is lost by stopping mid-stream.
        await self.link.stop()
        self._queue.put_nowait(Inbound("", b"", 0, 0, False, 0))  # wakes an idle intake
        for lane in ("alarm", "fault"):
            self._wake_lane(lane)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.cfg.drain_s):
                await asyncio.gather(intake, *forwarders, return_exceptions=True)
        if self.sms is not None:
            # Only now: the SMS of the last batch are deleted from the SIM once committed. What the
            # intake took but the database has not committed stays on the SIM for the next start.
            await self.sms.stop()
            sms_tasks = [t for t in others if t.get_name() == "sms-intake"]
            if sms_tasks:
                await asyncio.wait(sms_tasks, timeout=SMS_STOP_S)
        for task in (intake, *forwarders, *others):
            task.cancel()
        server.should_exit = True

    async def _load(self) -> None:
        self._registry_version = await self.store.registry_version()
        self.registry = {r.id: r for r in await self.store.registry()}
        self._windows = await self.store.windows()
        self._latest_alarm = await self.store.latest_alarms()
        sms_seen = await self.store.sms_seen()
        for device_id, last_seen, every_s, faults, battery in await self.store.device_health():
            self.supervisor.load(device_id, last_seen, every_s, faults, battery, sms_seen_ms=sms_seen.get(device_id))
        self._expect_sms(self.registry.values())
        await self.ota.load()

    async def _sync_shared(self) -> None:
        """Another instance may have changed the registry (through its admin API) or seen the
        heartbeats this one did not (the broker shares the stream): take both from the database."""
        version = await self.store.registry_version()
        if version != self._registry_version:
            self._registry_version = version
            fresh = {r.id: r for r in await self.store.registry()}
            for device_id in self.registry.keys() - fresh.keys():
                self.supervisor.forget(device_id)
            for device_id, rec in fresh.items():
                if rec.revoked:
                    self.supervisor.forget(device_id)
            self.registry = fresh
            self._expect_sms(fresh.values())
        await self.ota.sync()   # offers another instance made, halted or withdrew
        sms_seen = await self.store.sms_seen()
        for device_id, last_seen, every_s, faults, battery in await self.store.device_health():
            self.supervisor.sync(device_id, last_seen, every_s, faults, battery, sms_seen_ms=sms_seen.get(device_id))

    def _expect_sms(self, records: collections.abc.Iterable[DeviceRecord]) -> None:
        """Tell supervision which live devices have a phone: only their SMS silence is a fault."""
        for rec in records:
            if not rec.revoked:
                self.supervisor.expect_sms(rec.id, rec.phone is not None)

    # ------------------------------------------------------------ intake

    async def _intake(self) -> None:
        """Take messages from the link in commits: alarms first, everything else in small chunks.

        Every message comes through one MQTT connection in one order, so a power cut's thousands of
        last wills and heartbeats would be ahead of the alarm that follows them. Alarms therefore
        jump that queue: each round commits all waiting alarms before the next chunk of other
        messages, and a chunk is small (BULK_CHUNK) so that the single database writer is never
        busy for long when an alarm comes. Two orders still hold: a device's alarm waits behind
        that device's own earlier messages, and PUBACKs leave in the order the messages came
        [MQTT-4.6.0-2], an alarm's only once everything before it is committed too (its signed
        "received" ack and its forwarding do not wait for that)."""
        loop = asyncio.get_running_loop()
        while not self.stopping:
            if not self._alarms and not self._bulk:
                self._route(await self._queue.get())
                deadline = loop.time() + self.cfg.batch_wait_ms / 1000
                while len(self._alarms) + len(self._bulk) < self.cfg.batch_max:
                    if self._drain_queue():
                        continue
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        self._route(await asyncio.wait_for(self._queue.get(), remaining))
                    except TimeoutError:
                        break
            self._drain_queue()
            if self._alarms:
                take = [self._alarms.popleft() for _ in range(min(len(self._alarms), self.cfg.batch_max))]
            else:
                take = [self._bulk.popleft() for _ in range(min(len(self._bulk), BULK_CHUNK, self.cfg.batch_max))]
            if take:
                await self._process(take)

    def _drain_queue(self) -> bool:
        """Route whatever the link has queued; whether there was anything."""
        n = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return n > 0
            self._route(item)
            n += 1

    def _route(self, item: Inbound) -> None:
        if not item.topic:
            return  # the shutdown wake-up
        if item.topic.endswith(OTA_GET_SUFFIX) and not item.topic.startswith(codec.SMS_TOPIC_PREFIX):
            # A firmware chunk request: served now from memory, outside both queues (no commit, no
            # place before the device's alarm). Taken at QoS 0; one that came at QoS 1 all the same
            # (a taken-over session) is acknowledged in its turn, with nothing to wait for.
            where = codec.split_topic(item.topic)
            self.ota.serve(item.topic, item.payload, where[0] if where is not None else "", item.received_ms)
            if item.qos:
                self._unacked.append(item)
                self._done.add(id(item))
                self._ack_due()
            return
        self._unacked.append(item)
        if item.topic.startswith(codec.SMS_TOPIC_PREFIX):
            # An SMS: its claimed device (not verified yet; it only decides the order of the queues).
            text = item.payload[:sms.MAX_TEXT * 4].decode("utf-8", "replace")
            device = sms.device_of(text) or ""
            alarm = text.startswith(sms.ALARM + " ")
        else:
            where = codec.split_topic(item.topic)
            device = where[0] if where is not None else ""
            alarm = where is not None and where[1] == "alarm"
        if alarm and not self._bulk_of.get(device):
            self._alarms.append(item)
        else:
            self._bulk.append(item)
            self._bulk_ids[id(item)] = device
            self._bulk_of[device] = self._bulk_of.get(device, 0) + 1

    def _committed(self, items: list[Inbound]) -> None:
        """These are durable: send the PUBACKs that are due, in the order the messages came."""
        assert self.link is not None
        for item in items:
            key = id(item)
            self._done.add(key)
            device = self._bulk_ids.pop(key, None)
            if device is not None:
                left = self._bulk_of.get(device, 1) - 1
                if left > 0:
                    self._bulk_of[device] = left
                else:
                    self._bulk_of.pop(device, None)
        self._ack_due()

    def _ack_due(self) -> None:
        """PUBACK the messages at the head of the order that are done with."""
        assert self.link is not None
        while self._unacked and id(self._unacked[0]) in self._done:
            first = self._unacked.popleft()
            self._done.discard(id(first))
            (first.link or self.link).ack(first)

    async def _process(self, items: list[Inbound]) -> None:
        batch = Batch()
        in_batch: set[tuple[str, int]] = set()
        now = self.clock()
        for item in items:
            self.metrics.inc("received")
            try:
                await self._take(item, batch, in_batch, now)
            except DATABASE_DOWN:
                raise  # the database, not the message (see below)
            except Exception as exc:  # one message must never stop the others
                self._quarantine(item, exc, batch, now)
        try:
            stored = await self.store.commit(batch, self._fault_event, self._alarm_event)
        except DATABASE_DOWN:
            raise  # the disk or the database, not a message: stop unacknowledged, restart, redeliver
        except Exception as exc:  # a value the store refused that got past the codec
            log.exception("commit of a batch of %d messages failed; taking them one at a time", len(items))
            await self._one_at_a_time(items, exc)
            return
        # Only now is every message of the batch durable: acknowledge to the broker (§6 step 3).
        self._committed(items)
        self._after_commit(batch, stored)

    async def _take(self, item: Inbound, batch: Batch, in_batch: set[tuple[str, int]], now: int) -> None:
        """Add one message's effects to the batch: stored alarm, heartbeat, fault, reject."""
        msg = self._admit(item, batch)
        if msg is None:
            return
        duplicate = False
        by_sms = item.topic.startswith(codec.SMS_TOPIC_PREFIX)
        if isinstance(msg, OtaGet):
            return  # chunk requests are served as they arrive (_route), never here
        if isinstance(msg, OtaStatus):
            # An update report: checked against the device's last one and added to the batch.
            await self._promote_pending_key(msg.device_id, item.payload)
            refused = self.ota.take(msg, item.topic, batch, now)
            if refused is None:
                return
            msg = refused
        if not isinstance(msg, Reject):
            if not by_sms:  # an SMS under a rotated-in key does not retire the old one (not a frame)
                await self._promote_pending_key(msg.device_id, item.payload)
            verdict = await self._check_sequence(msg, in_batch)
            if verdict is Sequenced.SEEN_HEARTBEAT:
                return  # a redelivered heartbeat or test SMS: acknowledged with the batch, nothing to store
            if isinstance(verdict, Reject):
                msg = dataclasses.replace(verdict, topic=item.topic[:128]) if by_sms else verdict
            duplicate = verdict is Sequenced.DUPLICATE
            if by_sms and not isinstance(msg, Reject):
                self._sms_valid(msg.device_id, item, batch, now)
        if isinstance(msg, Reject):
            self.metrics.inc("rejected", reason=msg.reason.value)
            if by_sms:
                self.metrics.inc("sms_rejected", reason=msg.reason.value)
            log.warning("rejected %s from %s on %s: %s", msg.reason.value, msg.device_id, msg.topic, msg.detail)
            batch.rejects.append((msg, item.received_ms))
            if msg.authenticated and msg.reason is RejectReason.MALFORMED and msg.device_id is not None:
                # Signed with the device's key, so the device itself sent something the contract
                # refuses (a bug, or an alarm with an over-long address): the room must know.
                batch.faults += self.supervisor.occurred(msg.device_id, Fault.BAD_MESSAGE, now, {
                    "reason": "message refused", "topic": msg.topic.rsplit("/", 1)[-1], "error": msg.detail[:200]})
        elif isinstance(msg, Alarm):
            if duplicate:
                batch.duplicates.append((msg.device_id, msg.seq))
            else:
                new = self._new_alarm(msg, item.received_ms, "sms" if by_sms else "mqtt")  # may raise
                in_batch.add((msg.device_id, msg.seq))
                batch.alarms.append(new)
            batch.windows[msg.device_id] = self._windows[msg.device_id]
            if by_sms:
                # Its ack (and every later state) goes back by SMS too, once committed (_publish_ack).
                self._sms_batch.add((msg.device_id, msg.seq))
                self._sms_senders[(msg.device_id, msg.seq)] = item.topic[len(codec.SMS_TOPIC_PREFIX):]
                self._sms_senders.move_to_end((msg.device_id, msg.seq))
                while len(self._sms_senders) > SMS_SENDERS_KEPT:
                    self._sms_senders.popitem(last=False)
            else:  # an SMS alarm is news of the SMS path only (sms_seen above), not of MQTT
                batch.faults += self.supervisor.seen(msg.device_id, now)
        elif isinstance(msg, SmsTest):
            self.metrics.inc("sms_tests")
            batch.windows[msg.device_id] = self._windows[msg.device_id]
            self._sms_tests.append((msg.device_id, msg.seq, item.topic[len(codec.SMS_TOPIC_PREFIX):]))
        elif isinstance(msg, Status):
            self.metrics.inc("heartbeats")
            batch.statuses.append((msg, item.received_ms))
            batch.windows[msg.device_id] = self._windows[msg.device_id]
            batch.faults += self.supervisor.heartbeat(msg.device_id, now, msg.every_s, msg.battery_mv, msg.tamper)
        elif isinstance(msg, Will):
            batch.faults += self.supervisor.will(msg.device_id, now)

    def _sms_valid(self, device_id: str, item: Inbound, batch: Batch, now: int) -> None:
        """A verified SMS, not a replay: the device's SMS path works."""
        batch.sms_seen[device_id] = max(batch.sms_seen.get(device_id, 0), item.received_ms)
        batch.faults += self.supervisor.sms_seen(device_id, now)

    def _quarantine(self, item: Inbound, exc: Exception, batch: Batch, now: int) -> None:
        """Keep a message that could not be processed, with its bytes and the error, and tell the
        room as a device fault; it is acknowledged with the batch, so it never comes back."""
        where = codec.split_topic(item.topic)
        device_id = where[0] if where is not None and where[0] in self.registry else None
        error = f"{type(exc).__name__}: {exc}"[:500]
        log.error("quarantined a message from %s on %s: %s", device_id or "?", item.topic[:128], error,
                  exc_info=exc)
        batch.quarantined.append(Quarantined(device_id, item.topic[:256], item.payload[:codec.MAX_FRAME * 4], error,
                                             item.received_ms))
        if device_id is not None:
            batch.faults += self.supervisor.occurred(device_id, Fault.BAD_MESSAGE, now, {
                "reason": "message quarantined", "error": error[:200]})

    async def _one_at_a_time(self, items: list[Inbound], first: Exception) -> None:
        """A batch whose commit failed: the database rolled it back, so reload the state it would
        have changed, then commit each message alone and quarantine the one that fails."""
        self._sms_tests.clear()   # taken again below
        self._sms_batch.clear()
        await self._load()
        for item in items:
            batch = Batch()
            now = self.clock()
            try:
                await self._take(item, batch, set(), now)
                stored = await self.store.commit(batch, self._fault_event, self._alarm_event)
            except DATABASE_DOWN:
                raise
            except Exception as exc:  # a value the store refused that got past the codec
                await self._load()
                batch = Batch()
                self._quarantine(item, exc, batch, now)
                stored = await self.store.commit(batch, self._fault_event, self._alarm_event)
            self._committed([item])
            self._after_commit(batch, stored)
        log.info("the %d messages of the failed batch are stored or quarantined (first error: %s)", len(items), first)

    def _after_commit(self, batch: Batch, stored: list[StoredAlarm]) -> None:
        if batch.quarantined:  # counted once committed: a batch taken again one at a time counts once
            self.metrics.inc("quarantined", len(batch.quarantined))
        for alarm in stored:
            if alarm.changed:
                self.metrics.inc("alarms_stored")
                self._latest_alarm[alarm.device_id] = max(alarm.seq, self._latest_alarm.get(alarm.device_id, -1))
            else:
                self.metrics.inc("duplicates")
            # A duplicate is re-acknowledged too: its sender evidently missed the first ack. By SMS
            # only if this copy came by SMS: an SMS costs money, and the MQTT copy of an alarm the
            # button also sent by SMS needs only the MQTT answer.
            self._publish_ack(alarm, by_sms=(alarm.device_id, alarm.seq) in self._sms_batch)
        self._sms_batch.clear()
        for device_id, seq, sender in self._sms_tests:
            self._send_sms_ack(device_id, seq, sms.TEST_STATE, sender)
        self._sms_tests.clear()
        self._count_faults(batch.faults)
        for status, _ in batch.statuses:
            self._config_report(status)
        self.ota.after_commit(batch)
        if batch.alarms:
            self._wake_lane("alarm")
        if batch.faults:
            self._wake_lane("fault")

    def _admit(self, item: Inbound, batch: Batch) -> codec.Message | SmsTest | Reject | None:
        """Flood check (cheap, before any HMAC work), then decode and verify."""
        if item.topic.startswith(codec.SMS_TOPIC_PREFIX):
            return self._admit_sms(item, batch)
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

    def _admit_sms(self, item: Inbound, batch: Batch) -> Alarm | SmsTest | Reject | None:
        """An SMS: the sender's flood check first (any number: SMS arrive from anywhere), then
        decode_sms. A flood is audited once per sender per minute, with the count dropped.

        A sender number can be forged, so a flood "from" a button's number must not silence the
        button: over the limit, a text that claims to be an alarm is still verified (one HMAC; a
        modem takes about one SMS a second), and taken if it is the button's own."""
        sender = item.topic[len(codec.SMS_TOPIC_PREFIX):]
        self.metrics.inc("sms_received")
        text = item.payload.decode("utf-8", "replace")
        if not self._sms_flood.allow(sender, item.received_ms):
            if text.startswith(sms.ALARM + " "):
                decoded = codec.decode_sms(sender, text, self.key, self._phone_of, self._place_of)
                if isinstance(decoded, Alarm):
                    return decoded
            self.metrics.inc("rejected", reason=RejectReason.FLOOD.value)
            self.metrics.inc("sms_rejected", reason=RejectReason.FLOOD.value)
            dropped = self._sms_flood.audit_due(sender, item.received_ms)
            if dropped is not None:
                assert self.cfg.sms is not None
                detail = (f"over {self.cfg.sms.flood_per_minute} SMS/min from this number; "
                          f"{dropped} more dropped since last entry")
                batch.rejects.append((Reject(RejectReason.FLOOD, None, item.topic[:128], detail), item.received_ms))
                log.warning("SMS flood from %s: %s", sender, detail)
            return None
        return codec.decode_sms(sender, text, self.key, self._phone_of, self._place_of)

    def _phone_of(self, device_id: str) -> str | None:
        rec = self.registry.get(device_id)
        return None if rec is None else rec.phone

    def _place_of(self, device_id: str) -> tuple[str, str]:
        rec = self.registry.get(device_id)
        return ("", "") if rec is None else (rec.address, rec.area)

    async def _promote_pending_key(self, device_id: str, payload: bytes) -> None:
        """The first frame a device signs with its rotated-in secret retires the old secret."""
        rec = self.registry[device_id]
        if rec.pending is None or codec.verify_frame(rec.pending, payload) is None:
            return
        # Not a person's change (by=None): the end of a pending rotation the change log already holds.
        await self.store.set_key(device_id, rec.pending, pending=False, now_ms=self.clock(), by=None)
        self.registry[device_id] = dataclasses.replace(rec, secret=rec.pending, pending=None)
        log.info("device %s now uses its new key; the old one is no longer accepted", device_id)

    async def _check_sequence(self, msg: Alarm | Status | Will | SmsTest,
                              in_batch: set[tuple[str, int]]) -> Sequenced | Reject:
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
        if isinstance(msg, Status | SmsTest) and verdict is Verdict.SEEN:
            return Sequenced.SEEN_HEARTBEAT
        topic = proto.topic(msg.device_id, "alarm" if isinstance(msg, Alarm) else "status")
        return Reject(RejectReason.REPLAY, msg.device_id, topic,
                      f"seq {msg.seq} not stored and older than the window (high {window.high})")

    def _new_alarm(self, alarm: Alarm, received_ms: int, via: Literal["mqtt", "sms"] = "mqtt") -> NewAlarm:
        rec = self.registry[alarm.device_id]
        return NewAlarm(alarm, received_ms, rec.site or alarm.device_id, self.supervisor.battery_mv(alarm.device_id),
                        via)

    def _alarm_event(self, new: NewAlarm, group: Group) -> tuple[str, str]:
        """The forwarded event of an alarm, made by the store once its incident group is decided."""
        return alarm_event(self.cfg.gateway_id, new.alarm, new.received_ms, group.id, group.presses, group.sources,
                           new.battery_mv)

    # ------------------------------------------------------------ faults

    def _state_event(self, alarm: Any, state: str, incident_id: str | None, by: str | None, at_ms: int,
                     number: int) -> tuple[str, str]:
        return state_event(self.cfg.gateway_id, alarm, state, incident_id, by, at_ms, number)

    def _fault_event(self, change: FaultChange, number: int) -> tuple[str, str]:
        return fault_event(self.cfg.gateway_id, change, number, self.registry.get(change.device_id))

    def _count_faults(self, changes: list[FaultChange]) -> None:
        wave: collections.Counter[tuple[str, str]] = collections.Counter()
        for ch in changes:
            change = "start" if ch.active else "clear"
            self.metrics.inc("faults", fault=ch.fault.value, change=change)
            wave[(ch.fault.value, change)] += 1
        if len(changes) <= FAULTS_LOGGED_EACH:
            for ch in changes:
                log.log(logging.WARNING if ch.active else logging.INFO, "device %s %s %s", ch.device_id,
                        ch.fault.value, "started" if ch.active else "cleared")
        else:
            # A power cut changes thousands at once: one line for the lot (the fault history and
            # the command center have each one), not thousands of lines on the alarms' event loop.
            log.warning("%d fault changes: %s", len(changes),
                        ", ".join(f"{n} {fault} {change}" for (fault, change), n in sorted(wave.items())))

    async def _supervise(self) -> None:
        """Time-driven faults (offline, the end of a sticky fault) come from the forwarding
        instance only; with several instances each first takes the others' news from the database
        (`_sync_shared`), and the database's table of active faults drops a start or clear that
        two of them report (store._write_faults)."""
        synced = 0.0
        while True:
            await asyncio.sleep(0.5)
            try:
                if self.store.shared and time.monotonic() - synced >= SHARED_SYNC_S:
                    await self._sync_shared()
                    synced = time.monotonic()
                if not self.leader.is_set():
                    continue
                changes = self.supervisor.tick(self.clock())
                if changes:
                    await self.store.record_faults(changes, self._fault_event)
                    self._count_faults(changes)
                    self._wake_lane("fault")
            except DATABASE_DOWN:
                raise
            except Exception:  # a bug here must not stop the alarms: log it, try again next tick
                log.exception("supervision tick failed")
                self.metrics.inc("loop_errors", loop="supervision")

    # ------------------------------------------------------------ several instances

    async def _take_over(self) -> None:
        """The leader takes over the MQTT session of each instance that died (its name is free in
        the database): what the broker kept for it is processed here, then its session ends, so
        that the broker stops handing a dead instance a share of the buttons' messages."""
        while not self.stopping:
            await asyncio.sleep(TAKEOVER_EVERY_S)
            if not self.store.shared or not self.leader.is_set():
                continue
            try:
                for name, client_id in await self.store.orphans(self.instance):
                    forget = False
                    try:
                        forget = await self._drain_session(name, client_id)
                    finally:
                        await self.store.release_orphan(name, forget=forget)
            except DATABASE_DOWN:
                raise
            except Exception:  # a bug here must not stop the alarms: log it, try again later
                log.exception("taking over a dead instance's session failed")
                self.metrics.inc("loop_errors", loop="takeover")

    async def _drain_session(self, name: str, client_id: str) -> bool:
        """Log in as the dead instance, take its kept messages into our intake, and once they are
        committed and acknowledged end its session (a clean login). Whether the session ended."""
        settings = dataclasses.replace(self.cfg.mqtt, client_id=client_id)
        started = time.monotonic()
        link = MqttLink(settings, self._queue, subscribe=False, reconnect=False)
        running = asyncio.create_task(link.run(), name=f"takeover-{name}")
        try:
            connected = asyncio.create_task(link.connected.wait())
            await asyncio.wait([connected, running], timeout=10, return_when=asyncio.FIRST_COMPLETED)
            connected.cancel()
            if not link.connected.is_set():
                log.warning("could not log in as dead instance %s to take over its session", name)
                return False
            drained = False
            while not running.done() and time.monotonic() - started < TAKEOVER_MAX_S:
                await asyncio.sleep(0.1)
                quiet = time.monotonic() - max(link.last_received, started) > TAKEOVER_QUIET_S
                if quiet and link.acked >= link.received:
                    drained = True
                    break
            await link.stop()
        finally:
            await asyncio.gather(running, return_exceptions=True)
        if not drained:
            # Left as it is (not ended: a clean login would discard what it still holds): the
            # instance, once it starts again, or the next takeover takes the rest.
            log.warning("taking over dead instance %s's session: %d messages processed in %.0f s, not yet all; "
                        "leaving the rest in its session", name, link.received, time.monotonic() - started)
            return False
        cleaner = MqttLink(settings, self._queue, subscribe=False, clean=True, reconnect=False)
        ending = asyncio.create_task(cleaner.run(), name=f"end-session-{name}")
        try:
            connected = asyncio.create_task(cleaner.connected.wait())
            await asyncio.wait([connected, ending], timeout=10, return_when=asyncio.FIRST_COMPLETED)
            connected.cancel()
            await cleaner.stop()
        finally:
            await asyncio.gather(ending, return_exceptions=True)
        self.metrics.inc("sessions_taken_over")
        log.warning("took over the MQTT session of dead instance %s: %d kept messages processed, session ended",
                    name, link.received)
        return cleaner.connections > 0

    # ------------------------------------------------------------ acks to buttons

    def _publish_ack(self, alarm: StoredAlarm, *, by_sms: bool = True) -> None:
        """The alarm's state to its button over MQTT, and by SMS too when the alarm came by SMS
        or the button is offline on MQTT and has a phone (`by_sms`: False where only the MQTT copy
        is due, as after a reconnect to the broker)."""
        rec = self.registry.get(alarm.device_id)
        if rec is None or self.link is None:
            return
        sender = self._sms_senders.get((alarm.device_id, alarm.seq)) if by_sms else None
        if sender is None and by_sms and rec.phone is not None and self.supervisor.offline(alarm.device_id):
            # The MQTT copy would wait in the broker until the button is back: the SMS may reach it
            # now (and an alarm that came by SMS before a restart of the gateway is answered so too).
            sender = rec.phone
        if sender is not None:
            self._send_sms_ack(alarm.device_id, alarm.seq, alarm.state, sender)
        payload = codec.encode_ack(rec.secret, alarm.device_id, alarm.seq, cast(AckState, alarm.state),
                                   alarm.incident_id, self.clock())
        # Retained only for the device's newest alarm, so a button coming back online is told the
        # state of its latest alarm rather than of an older one.
        retain = alarm.seq >= self._latest_alarm.get(alarm.device_id, -1)
        self.link.publish(proto.topic(alarm.device_id, "ack"), payload, retain=retain)
        self.metrics.inc("acks_published")

    def _send_sms_ack(self, device_id: str, seq: int, state: str, number: str) -> None:
        """A signed SG1K to the number the SMS came from (rate-limited and coalesced by the intake)."""
        rec = self.registry.get(device_id)
        if self.sms is None or rec is None or rec.revoked:
            return
        text = sms.ack_text(proto.Signer(rec.secret), device_id, seq, state, self.clock() // 1000)
        self.sms.send(number, text, device_id=device_id, seq=seq)

    def _on_mqtt_connected(self) -> None:
        asyncio.get_running_loop().create_task(self._republish_acks())
        asyncio.get_running_loop().create_task(self._republish_configs())
        asyncio.get_running_loop().create_task(self.ota.republish())

    # ------------------------------------------------------------ remote configuration (protocol.md §10)

    def _publish_config(self, pushed: PushedConfig) -> None:
        """A device's whole desired configuration, signed with its key, retained on its config topic:
        the broker hands it to the button whenever it connects."""
        rec = self.registry.get(pushed.device_id)
        if rec is None or rec.revoked or self.link is None:
            return
        payload = codec.encode_config(rec.secret, pushed.device_id, pushed.ver, pushed.settings)
        self.link.publish(proto.topic(pushed.device_id, "config"), payload, retain=True)
        self.metrics.inc("configs_published")
        log.info("published configuration version %d to %s (%s)", pushed.ver, pushed.device_id,
                 ",".join(sorted(pushed.settings)))

    async def _push_config(self, device_id: str) -> None:
        pushed = await self.store.pushed_config(device_id)
        if pushed is not None:
            self._publish_config(pushed)

    async def _republish_configs(self) -> None:
        """After every (re)connect: the configurations not confirmed yet go again (the broker may have
        lost its retained copy, or this instance stopped between storing one and publishing it)."""
        try:
            for pushed in await self.store.unconfirmed_configs():
                self._publish_config(pushed)
        except DATABASE_DOWN:
            raise
        except Exception:  # a bug here must not take the gateway down: the retained copy is still there
            log.exception("re-publishing configurations failed")
            self.metrics.inc("loop_errors", loop="configs")

    def _config_report(self, status: Status) -> None:
        """Log what a heartbeat newly reports of the button's remote configuration."""
        if status.config_applied is None:
            return
        now = (status.config_applied, status.config_rejected)
        # First heard of by this instance: only a refusal is news (the applied version was logged
        # when it changed, perhaps by another instance or before a restart).
        before = self._config_reported.get(status.device_id, (now[0], None))
        self._config_reported[status.device_id] = now
        if before == now:
            return
        if now[0] != before[0]:
            log.info("device %s applied configuration version %d", status.device_id, now[0])
        if now[1] is not None and now[1] != before[1]:
            log.warning("device %s refused configuration version %d", status.device_id, now[1])

    async def configure(self, device_id: str, settings: dict[str, Any], *, by: Person = IN_PROCESS) -> bool:
        """Change a device's remote configuration and push it (after the commit): whether anything
        changed."""
        changed = await self.store.configure(device_id, settings, now_ms=self.clock(), by=by)
        if changed:
            await self._push_config(device_id)
        return changed

    async def _republish_acks(self) -> None:
        """Publish acks again only where a button may need them (issue 12: a quiet night's
        reconnects used to re-send every device's last day of acks). After the gateway starts,
        it may have stopped between storing a state and publishing it; after a reconnect to a
        broker that lost the session, the retained copies may be gone: then each device's latest
        ack of the last day. After a reconnect to a broker that kept the session, only those that
        may have missed the broker's last save. Buttons ignore a state they already show."""
        assert self.link is not None
        first = self.link.connections <= 1
        horizon = ACK_REPLAY_HORIZON_MS if first or not self.link.session_present else ACK_UNSAVED_MS
        try:
            for alarm in await self.store.current_acks(self.clock() - horizon):
                self._publish_ack(alarm, by_sms=False)
        except DATABASE_DOWN:
            raise
        except Exception:  # a bug here must not take the gateway down; the acks are a courtesy
            log.exception("re-publishing acks failed")
            self.metrics.inc("loop_errors", loop="acks")

    async def command_center_state(self, device_id: str, seq: int, state: str, incident_id: str | None,
                                   by: str | None, at_ms: int, *, source: str | None = None) -> StoredAlarm | None:
        """An alarm's state as a command center (or the city's system, through a destination's
        inbound webhook: `source`) reports it. A change goes to the button, and to the destinations
        that follow states other than the one it came from."""
        rank = proto.state_rank(state)
        if rank < 0:
            raise ValueError(f"unknown state {state!r}")
        stored = await self.store.set_state(device_id, seq, state, rank, incident_id, by, at_ms,
                                            self._state_event, source)
        if stored is not None and stored.changed:
            self._publish_ack(stored)
        return stored

    # ------------------------------------------------------------ forwarding

    def _wake_lane(self, lane: Lane) -> None:
        for fw in self.forwarders.values():
            fw.wake[lane].set()

    async def _refused(self, fw: Forwarder, refused: list[tuple[OutboundEvent, str]], now: int) -> None:
        """A destination refused these for good. They leave its queue (so the device's later
        events are not held behind them) but are kept, audited, counted and shown: the room sees
        an `undelivered` fault with the alarm and the place. When the primary destination refused
        an alarm, the button is told it was not handed on (ack state `undelivered`), so the person
        can seek help another way; another destination's refusal does not change what the button
        shows."""
        await self.store.refuse([e.id for e, _ in refused], [why for _, why in refused], now)
        batch = Batch()
        undelivered: list[tuple[str, int]] = []
        for event, why in refused:
            self.metrics.inc("forward_refused", kind=event.kind, destination=fw.name)
            log.error("destination %s refused %s %s for good: %s", fw.name, event.kind, event.event_id, why)
            batch.rejects.append((Reject(RejectReason.MALFORMED, event.device_id, "forward:" + event.event_id,
                                         f"destination {fw.name} refused {event.kind}: {why}"), now))
            if event.kind != "alarm":
                continue
            body = json.loads(event.body)  # the gateway's own alarm event (gateway/events.py)
            if fw.primary:
                undelivered.append((event.device_id, body["seq"]))
            if event.device_id in self.registry:
                batch.faults += self.supervisor.occurred(event.device_id, Fault.UNDELIVERED, now, {
                    "reason": f"destination {fw.name} refused an alarm", "destination": fw.name,
                    "event_id": event.event_id, "seq": body["seq"], "kind": body["kind"], "error": why[:200]})
        await self.store.commit(batch, self._fault_event, self._alarm_event)
        self._count_faults(batch.faults)
        if batch.faults:
            self._wake_lane("fault")
        for device_id, seq in undelivered:
            await self.command_center_state(device_id, seq, "undelivered", None, "gateway", now)

    async def audit(self, reason: RejectReason, device_id: str | None, topic: str, detail: str) -> None:
        """Write one refusal that did not come over MQTT (an inbound webhook with a bad signature,
        say) to the audit log, and count it like the broker's rejects."""
        now = self.clock()
        batch = Batch(rejects=[(Reject(reason, device_id, topic, detail[:500]), now)])
        await self.store.commit(batch, self._fault_event, self._alarm_event)
        self.metrics.inc("rejected", reason=reason.value)

    # ------------------------------------------------------------ registry
    # Each change is stored with its entry in the fleet change log (who, when, what; never a key), in
    # one transaction: `by` is the person the admin API authenticated, IN_PROCESS for the gateway's
    # own process (the demo stack, tests).

    async def register_device(self, device_id: str, secret: bytes, *, site: str | None = None,
                              lat_e6: int | None = None, lon_e6: int | None = None, address: str = "",
                              area: str = "", phone: str | None = None, by: Person = IN_PROCESS) -> None:
        await self.store.add_device(device_id, secret, now_ms=self.clock(), site=site, lat_e6=lat_e6, lon_e6=lon_e6,
                                    address=address, area=area, phone=phone, by=by)
        self.registry[device_id] = DeviceRecord(device_id, secret, False, site, lat_e6, lon_e6, address, area,
                                                phone=phone)
        self._expect_sms([self.registry[device_id]])

    async def revoke_device(self, device_id: str, *, by: Person = IN_PROCESS) -> bool:
        changed = await self.store.revoke_device(device_id, self.clock(), by=by)
        rec = self.registry.get(device_id)
        if rec is not None:
            # Effective for the very next message, without waiting for any cache to expire.
            self.registry[device_id] = dataclasses.replace(rec, revoked=True)
            self.supervisor.forget(device_id)
        if changed:
            await self.ota.device_gone(device_id, "revoked")
        return changed

    async def decommission_device(self, device_id: str, *, by: Person = IN_PROCESS) -> bool:
        changed = await self.store.decommission(device_id, self.clock(), by=by)
        rec = self.registry.get(device_id)
        if rec is not None:
            self.registry[device_id] = dataclasses.replace(rec, revoked=True, pending=None)
            self.supervisor.forget(device_id)
        if changed:
            await self.ota.device_gone(device_id, "decommissioned")
        return changed

    async def rotate_key(self, device_id: str, secret: bytes, *, pending: bool, by: Person = IN_PROCESS) -> None:
        await self.store.set_key(device_id, secret, pending=pending, now_ms=self.clock(), by=by)
        rec = self.registry[device_id]
        self.registry[device_id] = (dataclasses.replace(rec, pending=secret) if pending
                                    else dataclasses.replace(rec, secret=secret, pending=None))

    async def requeue(self, outbox_id: int, *, by: Person = IN_PROCESS) -> bool:
        """A refused event goes out again (an operator fixed its cause)."""
        if not await self.store.requeue(outbox_id, self.clock(), by=by):
            return False
        for lane in ("alarm", "fault"):
            self._wake_lane(lane)
        return True

    async def update_device(self, device_id: str, fields: dict[str, object], *, by: Person = IN_PROCESS) -> None:
        await self.store.update_device(device_id, fields, now_ms=self.clock(), by=by)
        self.registry[device_id] = dataclasses.replace(self.registry[device_id], **fields)  # type: ignore[arg-type]
        self._expect_sms([self.registry[device_id]])
        if fields.keys() & {"lat_e6", "lon_e6", "address", "area"}:
            await self._push_config(device_id)  # the corrected location, if it made a new version

    async def ota_summary(self) -> dict[str, Any]:
        """Firmware over the air for the gateway report: {"versions": {version: devices},
        "rollouts": [the newest five rollouts under way or halted, as GET /api/v1/rollouts shows them],
        "devices": [their buttons, failed and busy first, at most 500], "devices_total": n}."""
        return await self.ota.summary()

    def gauges(self) -> dict[str, float]:
        per_destination = {f'circuit_open{{destination="{fw.name}"}}': float(fw.breaker.state is BreakerState.OPEN)
                           for fw in self.forwarders.values()}
        return {"devices_online": self.supervisor.online(), "devices_registered": len(self.registry),
                "circuit_open": float(self.breaker.state is BreakerState.OPEN), **per_destination,
                "forwarding": float(self.leader.is_set()),
                "mqtt_connected": float(self.link is not None and self.link.connected.is_set()),
                "mqtt_connections": self.link.connections if self.link is not None else 0,
                "acks_dropped": self.link.dropped_publishes if self.link is not None else 0,
                **({"sms_modem_up": float(self.sms.up)} if self.sms is not None else {})}

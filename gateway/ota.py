"""Firmware over the air at the gateway (issue 18, docs/protocol.md §11): signed bundles uploaded
through the admin API, staged rollouts, offers retained on each button's `ota` topic, the chunk
service on `ota/get` and the buttons' reports on `ota/status`.

The chunk service does no database work per request: the bytes of the bundles on offer and each
device's current offer are held in memory (`OtaService.offers`, `_bundles`), so a button's download
costs one HMAC per request and one per chunk, never a commit. Requests (QoS 0) are served as they
arrive, outside the intake's queues: they never wait for a commit, never stand between a button and
its alarm's lane, and are never acknowledged. They are rate-limited per device by a limiter of their
own, so a downloading button never uses up the flood budget of its alarms; a refused request is
counted, and audited at most once a minute per device and reason, with the count. Chunks go out at
QoS 0 and only while the broker is connected: a lost one is asked for again.

What changes state (an upload, a rollout, an update report) goes through the store; the offers and
withdrawals a change makes are published once it has committed. An update report is written keyed on
(device, bundle id), so any instance takes it whatever offers it holds in memory; the instances
reload their offers when another changed them (`sync`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import logging
import re
from typing import TYPE_CHECKING, Any

from siagafw import proto

from . import codec
from .codec import OtaGet, OtaStatus, Reject, RejectReason
from .config import OtaSettings, Person
from .limits import FloodLimiter
from .store import DATABASE_DOWN, LIVE_OFFER, Batch, NewBundle, Offer

if TYPE_CHECKING:
    from .service import Gateway

log = logging.getLogger(__name__)

BUNDLE_MAX_BYTES = 1024 * 1024   # what POST /api/v1/firmware takes
BUNDLES_KEPT = 16                # bundles' bytes held in memory for the chunk service (LRU)
AUDIT_WORD = re.compile(r"[a-z_]{1,32}")  # a refusal's reason word, as docs/ota.md lists them
GET_AUDIT_EVERY_MS = 60_000      # one audit row per device and reason per minute for refused requests
GET_AUDITS_KEPT = 10_000         # (device, reason) windows remembered; beyond, they start afresh


class BundleRefused(Exception):
    """An uploaded bundle a button would not install (or not a bundle at all): `reason` is the word
    of docs/ota.md."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def check_bundle(data: bytes, keys: dict[str, bytes]) -> dict[str, Any]:
    """The manifest of `data` if it is a bundle signed by one of `keys` (key id -> raw public key),
    every file's SHA-256 right; else BundleRefused. The board checked is the bundle's own: the
    gateway holds bundles for every board."""
    from siaga.provisioning import bundle as fw

    try:
        doc: dict[str, Any] = fw.check(data, keys)
    except fw.Refused as exc:
        raise BundleRefused(exc.reason, f"the bundle is refused: {exc.reason}") from None
    return doc


class OtaService:
    """The gateway's side of OTA; `Gateway.ota`."""

    def __init__(self, gw: Gateway, settings: OtaSettings | None) -> None:
        self.gw = gw
        self.settings = settings
        rate = settings.get_rate_per_s if settings is not None else OtaSettings().get_rate_per_s
        self.limiter = FloodLimiter(rate, max(8, int(rate * 2)))
        # (device, reason) -> (last audit ms, refusals since): refused chunk requests, audited sparingly
        self._audited: dict[tuple[str, str], tuple[int, int]] = {}
        self.offers: dict[str, Offer] = {}        # device -> its live offer (none: nothing to fetch)
        self._status_seq: dict[str, int] = {}      # device -> the last update report's seq accepted
        self._version = -1                         # the store's ota_version the offers were loaded at
        self._bundles: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._loading: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def chunk(self) -> int:
        """The chunk size of new offers; an offer keeps the one it was made with."""
        return self.settings.chunk_bytes if self.settings is not None else 512

    # ------------------------------------------------------------ start, reconnect, other instances

    async def load(self) -> None:
        """The offers a button may still act on, their bundles' bytes, and the report sequences."""
        version = await self.gw.store.ota_version()
        offers = await self.gw.store.live_offers()
        self.offers = {o.device_id: o for o in offers}
        self._status_seq = await self.gw.store.ota_status_seqs()
        self._version = version
        await self._fetch({o.bundle_id for o in offers} - self._bundles.keys())

    async def sync(self) -> None:
        """Several instances: when another changed the offers (a rollout started, widened, halted or
        cancelled through its API), load them again, so that this one serves the same."""
        if await self.gw.store.ota_version() != self._version:
            await self.load()

    async def _fetch(self, bundle_ids: set[str]) -> None:
        if not bundle_ids:
            return
        for bundle_id, data in (await self.gw.store.bundle_data(sorted(bundle_ids))).items():
            self._bundles[bundle_id] = data
            self._bundles.move_to_end(bundle_id)
        while len(self._bundles) > BUNDLES_KEPT:
            self._bundles.popitem(last=False)

    async def republish(self) -> None:
        """After every (re)connect: the offers a button may still act on go again (retained)."""
        try:
            await self.load()
            for offer in self.offers.values():
                self.publish(offer)
        except DATABASE_DOWN:
            raise
        except Exception:  # a bug here must not take the gateway down: the retained copies are still there
            log.exception("re-publishing firmware offers failed")
            self.gw.metrics.inc("loop_errors", loop="ota")

    # ------------------------------------------------------------ offers

    def publish(self, offer: Offer) -> None:
        """An offer, or a withdrawal (bundle_id ""), signed with the device's key, retained. An offer
        names the chunk size it was made with, so publishing it again never changes it."""
        rec = self.gw.registry.get(offer.device_id)
        link = self.gw.link
        if rec is None or rec.revoked or link is None:
            return
        body = codec.ota_offer_body(offer.device_id, offer.ver, offer.rollout_id, offer.bundle_id, offer.sha256,
                                    offer.size, offer.chunk or self.chunk, offer.version)
        link.publish(proto.topic(offer.device_id, "ota"), codec.encode_ota(rec.secret, body), retain=True)
        self.gw.metrics.inc("ota_offers_published" if offer.bundle_id else "ota_withdrawals_published")

    async def _published(self, offers: list[Offer]) -> None:
        """Offers and withdrawals a committed change made: into memory, then out."""
        await self._fetch({o.bundle_id for o in offers if o.bundle_id} - self._bundles.keys())
        for offer in offers:
            if offer.bundle_id:
                self.offers[offer.device_id] = offer
            elif self.offers.get(offer.device_id, offer).rollout_id == offer.rollout_id:
                self.offers.pop(offer.device_id, None)
            self.publish(offer)
        if offers:
            log.info("firmware: %d offers, %d withdrawals published", sum(1 for o in offers if o.bundle_id),
                     sum(1 for o in offers if not o.bundle_id))

    # ------------------------------------------------------------ the admin API's operations

    async def upload(self, data: bytes, by: Person) -> tuple[bool, dict[str, Any]]:
        """Check and keep a bundle: (new, its entry). A refusal is audited and counted, never kept."""
        if self.settings is None:
            raise LookupError("no [ota] settings: this gateway takes no firmware bundles")
        sha256 = hashlib.sha256(data).hexdigest()
        try:
            doc = check_bundle(data, dict(self.settings.keys))
        except BundleRefused as exc:
            self.gw.metrics.inc("ota_refused", reason=exc.reason)
            log.warning("refused a firmware bundle from %s (%d bytes, sha256 %s): %s", by.name, len(data), sha256,
                        exc.reason)
            await self.gw.store.record_audit(self.gw.clock(), None, "api/v1/firmware", f"firmware_{exc.reason}",
                                             f"uploaded by {by.name}: {len(data)} bytes, sha256 {sha256}")
            raise
        bundle = NewBundle(sha256[:16], sha256, doc["version"], doc["board"], len(data), doc["min_boot"],
                           json.dumps(doc, sort_keys=True, separators=(",", ":")), data)
        new, entry = await self.gw.store.add_bundle(bundle, now_ms=self.gw.clock(), by=by)
        if new:
            self.gw.metrics.inc("ota_bundles_uploaded")
            log.info("firmware bundle %s uploaded by %s: version %s for %s, %d bytes", bundle.id, by.name,
                     bundle.version, bundle.board, bundle.size)
        return new, entry

    async def start_rollout(self, version: str, percent: int, max_failed_percent: int | None, *, resume: bool,
                            by: Person, allow_downgrade: bool = False) -> tuple[bool, int]:
        """Start, widen or resume the rollout of `version`; then see whether it (or an older one
        whose entries gave way to it) is done already."""
        default = self.settings.max_failed_percent if self.settings is not None else 20
        new, rollout_id, offers, superseded = await self.gw.store.start_rollout(
            version, percent, max_failed_percent, resume=resume, allow_downgrade=allow_downgrade,
            default_max_failed_percent=default, chunk=self.chunk, now_ms=self.gw.clock(), by=by)
        log.info("rollout %d of version %s %s at %d %% by %s: %d new offers", rollout_id, version,
                 "started" if new else "resumed" if resume else "widened", percent, by.name, len(offers))
        await self._published(offers)
        await self._check([rollout_id, *superseded], halt=False)
        return new, rollout_id

    async def cancel(self, rollout_id: int, by: Person) -> None:
        withdrawals = await self.gw.store.cancel_rollout(rollout_id, self.gw.clock(), by)
        log.warning("rollout %d cancelled by %s: %d offers withdrawn", rollout_id, by.name, len(withdrawals))
        await self._published(withdrawals)

    async def device_gone(self, device_id: str, why: str) -> None:
        """A device revoked or decommissioned: its entries in the rollouts under way are withdrawn
        (they neither wait nor count), and those rollouts may be done now."""
        withdrawals = await self.gw.store.withdraw_device(device_id, why, self.gw.clock())
        if withdrawals:
            log.info("device %s %s: its entries in %d rollouts withdrawn", device_id, why, len(withdrawals))
            await self._published(withdrawals)
            await self._check(sorted({o.rollout_id for o in withdrawals}), halt=False)

    async def summary(self) -> dict[str, Any]:
        """For the gateway report: devices per firmware version; the newest five rollouts under way
        or halted; their buttons (`devices`, the failed and those under way first, at most 500) with
        how many there are in all (`devices_total`)."""
        rollouts = [r for r in await self.gw.store.rollouts(limit=0) if r["state"] in ("active", "halted")][:5]
        devices, total = await self.gw.store.rollout_buttons([r["id"] for r in rollouts])
        return {"versions": await self.gw.store.firmware_versions(), "rollouts": [rollout_out(r) for r in rollouts],
                "devices": devices, "devices_total": total}

    # ------------------------------------------------------------ chunk requests (no database work here)

    def serve(self, topic: str, payload: bytes, device_id: str, received_ms: int) -> None:
        """A chunk request, as it arrives from the link: its rate (before any HMAC work), its MAC,
        then the chunks from memory. Nothing here waits: no database, no queue."""
        self.gw.metrics.inc("received")
        known = device_id in self.gw.registry
        if known and not self.limiter.allow(device_id, received_ms):
            rate = self.limiter.rate_per_ms * 1000
            self._refused(Reject(RejectReason.FLOOD, device_id, topic[:128], f"chunk requests over {rate:g}/s"),
                          received_ms)
            return
        msg = codec.decode(topic, payload, self.gw.key)
        if isinstance(msg, Reject):
            self._refused(msg, received_ms)
        elif not isinstance(msg, OtaGet):
            self._refused(Reject(RejectReason.WRONG_TOPIC, device_id if known else None, topic[:128],
                                 "not a chunk request"), received_ms)
        else:
            refused = self._serve(msg, topic)
            if refused is not None:
                self._refused(refused, received_ms)

    def _refused(self, reject: Reject, now_ms: int) -> None:
        """Counted each time; audited and logged at most once a minute per device and reason, with
        the number refused since the last entry."""
        self.gw.metrics.inc("rejected", reason=reject.reason.value)
        key = (reject.device_id or reject.topic, reject.reason.value)
        last, since = self._audited.get(key, (None, 0))
        if last is not None and now_ms - last < GET_AUDIT_EVERY_MS:
            self._audited[key] = (last, since + 1)
            return
        if len(self._audited) >= GET_AUDITS_KEPT:
            self._audited.clear()
        self._audited[key] = (now_ms, 0)
        detail = reject.detail if last is None else f"{reject.detail}; {since} more refused since last entry"
        log.warning("refused chunk requests (%s) from %s on %s: %s", reject.reason.value, reject.device_id or "?",
                    reject.topic, detail)
        self._spawn(self.gw.store.record_audit(now_ms, reject.device_id, reject.topic, reject.reason.value, detail))

    def _serve(self, get: OtaGet, topic: str) -> Reject | None:
        def refuse(why: str) -> Reject:
            # Not the device's fault as far as anyone knows (a request in flight when its offer was
            # withdrawn): audited, no bad_message fault.
            return Reject(RejectReason.MALFORMED, get.device_id, topic[:128], why)

        offer = self.offers.get(get.device_id)
        if offer is None or offer.bundle_id != get.id or offer.state not in LIVE_OFFER:
            return refuse(f"bundle {get.id} is not on offer to this device")
        chunk = offer.chunk or self.chunk
        if get.off % chunk or get.off >= offer.size:
            return refuse(f"offset {get.off} is not a chunk of the bundle ({offer.size} bytes, chunks of {chunk})")
        data = self._bundles.get(offer.bundle_id)
        rec = self.gw.registry.get(get.device_id)
        link = self.gw.link
        if data is None or rec is None or link is None:
            self._load_later(offer.bundle_id)
            return None   # the button asks again in a few seconds
        self._bundles.move_to_end(offer.bundle_id)
        out = proto.topic(get.device_id, "ota/data")
        for off in range(get.off, min(offer.size, get.off + get.n * chunk), chunk):
            frame = codec.encode_ota_data(rec.secret, get.device_id, offer.bundle_id, off, data[off:off + chunk])
            if not link.publish_now(out, frame):
                break   # the broker is away: the button asks again
            self.gw.metrics.inc("ota_chunks_sent")
        return None

    def _load_later(self, bundle_id: str) -> None:
        if bundle_id in self._loading:
            return
        self._loading.add(bundle_id)

        async def load() -> None:
            try:
                await self._fetch({bundle_id})
            finally:
                self._loading.discard(bundle_id)
        self._spawn(load())

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("firmware work failed", exc_info=task.exception())
            self.gw.metrics.inc("loop_errors", loop="ota")

    # ------------------------------------------------------------ update reports (in the intake's batch)

    def take(self, st: OtaStatus, topic: str, batch: Batch, now_ms: int) -> Reject | None:
        """A verified update report: into the batch (the store writes it keyed on device and bundle
        id), or a Reject for a replay."""
        last = self._status_seq.get(st.device_id, -1)
        if st.seq <= last:
            return Reject(RejectReason.REPLAY, st.device_id, topic[:128],
                          f"update report seq {st.seq} not after the last accepted ({last})")
        self._status_seq[st.device_id] = st.seq
        batch.ota_reports.append((st, now_ms))
        self.gw.metrics.inc("ota_reports", state=st.state)
        if st.state in ("refused", "rolled_back"):
            # A button that refused a bundle (its signature, a file's hash, another board...) or went
            # back from it is audited like a bundle refused at upload: firmware_<reason word>.
            word = st.detail if st.state == "refused" and AUDIT_WORD.fullmatch(st.detail) else st.state
            self._spawn(self.gw.store.record_audit(
                now_ms, st.device_id, topic[:128], f"firmware_{word}",
                f"bundle {st.id or '-'} version {st.version or '-'}: {st.state} {st.detail}".strip()[:500]))
        log.info("device %s firmware %s: %s %s%s", st.device_id, st.version or "-", st.state, st.id or "-",
                 f" ({st.detail})" if st.detail else "")
        return None

    def after_commit(self, batch: Batch) -> None:
        """The entries the reports moved: the offers served follow; a rollout with a new failure or
        update may halt or be done."""
        for rollout_id, device_id, bundle_id, state in batch.ota_moved:
            offer = self.offers.get(device_id)
            if offer is None or offer.bundle_id != bundle_id or offer.rollout_id != rollout_id:
                continue
            if state in LIVE_OFFER:
                self.offers[device_id] = dataclasses.replace(offer, state=state)
            else:
                del self.offers[device_id]   # done with: no more chunks for it
        rollouts = sorted({r for r, _, _, state in batch.ota_moved if state in ("failed", "updated")})
        if rollouts:
            self._spawn(self._check(rollouts))

    async def _check(self, rollout_ids: list[int], *, halt: bool = True) -> None:
        """Whether these rollouts are done, or (`halt`: after update reports) must halt."""
        for rollout_id in rollout_ids:
            what, withdrawals = await self.gw.store.check_rollout(rollout_id, self.gw.clock(), halt=halt)
            if what == "halted":
                self.gw.metrics.inc("ota_rollouts_halted")
                log.error("rollout %d halted: too many of its devices failed; %d offers withdrawn", rollout_id,
                          len(withdrawals))
            elif what == "done":
                log.info("rollout %d done", rollout_id)
            await self._published(withdrawals)


def rollout_out(r: dict[str, Any]) -> dict[str, Any]:
    """A rollout as the admin API and the gateway report show it."""
    keys = ("id", "version", "percent", "state", "max_failed_percent", "halted_reason", "created_ms", "counts",
            "targeted", "eligible")
    out = {k: r[k] for k in keys}
    if "devices" in r:
        out["devices"] = r["devices"]
    return out


"""Store-and-forward delivery from an outbox table: state reports to the gateway (protocol §7,
command center -> gateway) and escalation events to the configured webhook.

Operator actions put rows into `callback_outbox` in the same transaction as the state change;
escalations put rows into `webhook_outbox` in the same transaction as the escalation. One
`OutboxSender` per table POSTs each row until the receiver answers 2xx. A failed row is rescheduled
with exponential backoff and full jitter, so one row the receiver keeps refusing does not hold up the
others; rows with the same key (alarm event, or incident) go out in order (see Store.due).

The receiver may be a group (`[gateway] urls`): gateway instances that share one store, so any of them
takes a report for any of their devices. A report goes to the instance that answered last; after a
connection error, a timeout or a 5xx it goes on to the next one, round the group once. Any other answer
is the group's: a 4xx (404: the gateway does not know the alarm) would be the same from every instance,
so it is handled as with one receiver (retried with backoff), not asked of the others.

With several command center processes on one PostgreSQL database the senders run in one process only
(cluster.Leadership), so each row is sent by one sender.

With `[escalation] webhook_secret_file` (or `_env`, or `webhook_secret_files`) the escalation webhook is
signed after Standard Webhooks (https://www.standardwebhooks.com), with the signer of the gateway's
webhook destination (gateway/webhooks.py): the body becomes an `alarm.escalated` message (schema:
docs/schemas/webhook-alarm.escalated.json) and each attempt carries webhook-id (the event's id, the same
on every retry), webhook-timestamp (this attempt) and webhook-signature. Without a secret the stored
body goes out as it is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence

import httpx

from siaga.gateway.webhooks import ALARM_ESCALATED, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, payload, sign

from .config import CallbackSettings
from .dispatches import WEBHOOK_EVENT as UNANSWERED_EVENT
from .domain import utc_now
from .plumbing import BACK_EVENT, SILENT_EVENT
from .store import CALLBACK_OUTBOX, WEBHOOK_OUTBOX, Outbox, OutboxRow, Store

log = logging.getLogger(__name__)

STATE_PATH = "/api/v1/cc/state"


def backoff_delay(attempts: int, settings: CallbackSettings, rng: random.Random) -> float:
    """Seconds to wait after the `attempts`-th failed try (1 = the first failure).

    Full jitter (uniform between 0 and the capped exponential) spreads the retries of many rows
    after a gateway outage instead of sending them all again in the same instant.
    """
    exponent = min(max(attempts - 1, 0), 62)  # bound the power: 2**62 s is already "forever"
    ceiling = min(settings.max_backoff_s, settings.initial_backoff_s * 2.0**exponent)
    return rng.uniform(0.0, ceiling)


class OutboxSender:
    """Background task; `start()` in the app's lifespan, `notify()` after queueing, `stop()` at the end."""

    def __init__(
        self,
        store: Store,
        outbox: Outbox,
        *,
        urls: Sequence[str],
        token: str | None,
        settings: CallbackSettings,
        what: str,
        rng: random.Random | None = None,
    ) -> None:
        if not urls:
            raise ValueError("an outbox sender needs at least one URL")
        self._store = store
        self._outbox = outbox
        self._urls = tuple(urls)
        self._current = 0  # the instance that answered last: the next report goes there first
        self._token = token
        self._what = what  # for log lines: "state report", "webhook event"
        self._settings = settings
        self._rng = rng or random.SystemRandom()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("callback sender already started")
        self._client = httpx.AsyncClient(
            timeout=self._settings.request_timeout_s,
            headers={"Authorization": f"Bearer {self._token}"} if self._token else {},
            follow_redirects=False,
        )
        self._task = asyncio.create_task(self._run(), name=f"siaga-cc-{self._outbox.table}")
        log.info("sending %ss to %s", self._what, " or ".join(self._urls))

    @property
    def current_url(self) -> str:
        """The instance that answered last (the first one before any answer)."""
        return self._urls[self._current]

    def notify(self) -> None:
        """New rows are in the outbox: look now instead of at the next poll."""
        self._wake.set()

    async def stop(self, grace_s: float = 2.0) -> None:
        """Finish the requests in flight (up to `grace_s`), then stop. Undelivered rows stay in the
        outbox and go out after the next start; the gateway accepts repeats."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=grace_s)
            except TimeoutError:
                log.info("%s sender stopped while requests were in flight", self._what)
            except Exception:
                log.exception("%s sender failed", self._what)
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            # Clear before looking, so a notify() that arrives while we look is not lost.
            self._wake.clear()
            try:
                rows = await self._store.due(self._outbox, time.time(), self._settings.batch_size)
                if rows:
                    await self._send_batch(rows)
                    failures = 0
                    continue
                next_due = await self._store.next_due(self._outbox)
                failures = 0
            except Exception:
                # A database problem must not end the sender for good; try again a little later.
                failures += 1
                log.exception("%s sender: outbox access failed", self._what)
                await self._sleep(backoff_delay(failures, self._settings, self._rng))
                continue
            wait = self._settings.idle_poll_s
            if next_due is not None:
                wait = min(wait, max(0.0, next_due - time.time()))
            await self._sleep(wait)

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0 or self._stopping.is_set():
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _send_batch(self, rows: list[OutboxRow]) -> None:
        limit = asyncio.Semaphore(self._settings.concurrency)

        async def one(row: OutboxRow) -> None:
            async with limit:
                await self._deliver(row)

        async with asyncio.TaskGroup() as tg:
            for row in rows:
                tg.create_task(one(row))

    def _request(self, row: OutboxRow) -> tuple[bytes, Mapping[str, str]]:
        """The body and the extra headers of one attempt to deliver `row`: the stored body as it is.
        ValueError: the row cannot be sent (it is kept and tried again, as after a refusal)."""
        return row.body.encode(), {}

    async def _post(self, body: bytes, headers: Mapping[str, str]) -> tuple[str | None, str]:
        """POST to the group, from the instance that answered last; on to the next one after a
        connection error, a timeout or a 5xx. Returns (error or None, the instance that answered or
        the last one tried)."""
        assert self._client is not None
        headers = {"Content-Type": "application/json", **headers}
        errors: list[str] = []
        start = self._current
        url = self._urls[start]
        for step in range(len(self._urls)):
            index = (start + step) % len(self._urls)
            url = self._urls[index]
            try:
                resp = await self._client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                # httpx messages name the URL but never the headers, so the token cannot leak here.
                errors.append(self._named(url, f"{type(exc).__name__}: {exc}"))
                continue
            if resp.status_code >= 500:
                errors.append(self._named(url, f"HTTP {resp.status_code}"))
                continue
            self._current = index
            return (None if resp.is_success else self._named(url, f"HTTP {resp.status_code}")), url
        return "; ".join(errors), url

    def _named(self, url: str, error: str) -> str:
        """An error as recorded: with one receiver as it always was, in a group with the instance."""
        return error if len(self._urls) == 1 else f"{url}: {error}"

    async def _deliver(self, row: OutboxRow) -> None:
        try:
            body, headers = self._request(row)
        except ValueError as exc:
            error: str | None = f"not sendable: {exc}"
            url = self.current_url
        else:
            error, url = await self._post(body, headers)
        now = utc_now()
        if error is None:
            await self._store.mark_delivered(self._outbox, row.id, now=now)
            log.info("%s %d for %s delivered (attempt %d)%s", self._what, row.id, row.key, row.attempts + 1,
                     f" to {url}" if len(self._urls) > 1 else "")
            return
        attempts = row.attempts + 1
        delay = backoff_delay(attempts, self._settings, self._rng)
        await self._store.mark_failed(self._outbox, row.id, now=now, next_attempt_at=time.time() + delay, error=error)
        log.warning(
            "%s %d for %s failed (attempt %d: %s); next try in %.2f s",
            self._what,
            row.id,
            row.key,
            attempts,
            error,
            delay,
        )


class CallbackSender(OutboxSender):
    """State reports to `<gateway url>/api/v1/cc/state` (protocol §7), of one gateway or a group."""

    def __init__(
        self,
        store: Store,
        *,
        gateway_urls: Sequence[str],
        gateway_token: str,
        settings: CallbackSettings,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            store,
            CALLBACK_OUTBOX,
            urls=[url.rstrip("/") + STATE_PATH for url in gateway_urls],
            token=gateway_token,
            settings=settings,
            what="state report",
            rng=rng,
        )


class WebhookSender(OutboxSender):
    """Escalation events to the configured webhook URL, as they are queued, until it answers 2xx.

    With `secrets` (Standard Webhooks keys) each event is sent as a signed `alarm.escalated` message;
    without, as the stored body. `clock` gives the Unix time of an attempt (a test may set it)."""

    def __init__(
        self,
        store: Store,
        *,
        url: str,
        token: str | None,
        settings: CallbackSettings,
        secrets: Sequence[bytes] = (),
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        outbox: Outbox = WEBHOOK_OUTBOX,  # SECOND_WEBHOOK_OUTBOX: the second escalation level's receiver
    ) -> None:
        what = "signed webhook event" if secrets else "webhook event"
        super().__init__(store, outbox, urls=[url], token=token, settings=settings, what=what, rng=rng)
        self._secrets = tuple(secrets)
        self._clock = clock

    def _request(self, row: OutboxRow) -> tuple[bytes, Mapping[str, str]]:
        if not self._secrets:
            return super()._request(row)
        msg_id, body = signed_body(row.body)
        stamp = int(self._clock())
        return body, {
            HEADER_ID: msg_id,
            HEADER_TIMESTAMP: str(stamp),
            HEADER_SIGNATURE: sign(self._secrets, msg_id, stamp, body),
        }


def signed_body(stored: str) -> tuple[str, bytes]:
    """(webhook-id, body) of an escalation as a Standard Webhooks message: `{"type": "alarm.escalated",
    "timestamp": <at>, "data": <the stored body without "event">}`, the id being the body's
    `event_id`. The same stored body always gives the same bytes, so every retry sends (and signs)
    the same message; only the timestamp and the signature change."""
    try:
        fields = json.loads(stored)
        if not isinstance(fields, dict):
            raise TypeError("not a JSON object")
        msg_id, at = fields["event_id"], fields["at"]
        if not isinstance(msg_id, str) or not isinstance(at, str):
            raise TypeError("event_id or at is not a string")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"an escalation body without its fields: {exc!r}"[:200]) from None
    event = fields.pop("event", None)  # the message's "type" says it
    data = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    # A gateway's silence and its return (plumbing.py), and an unanswered dispatch (dispatches.py), are
    # messages of their own types.
    own_types = (SILENT_EVENT, BACK_EVENT, UNANSWERED_EVENT)
    return msg_id, payload(event if event in own_types else ALARM_ESCALATED, at, data)

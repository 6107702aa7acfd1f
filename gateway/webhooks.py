"""Signed webhooks to a city's own system, after the Standard Webhooks specification 1.0.0
(https://www.standardwebhooks.com; docs/integration-webhooks.md is the guide for the receiving side).

Every outbox event becomes one `POST <url>` whose body is a Standard Webhooks payload:
`{"type": <event type>, "timestamp": <when it happened>, "data": <the gateway's event body>}`.
`data` is the body of protocol.md §7 byte for byte (gateway/events.py), so a receiver that already
reads the reference command center's JSON reads the same fields here.

    outbox kind   event type             timestamp      data
    alarm         alarm.raised           received_at    the alarm event
    state         alarm.state_changed    at             the state event
    fault         device.fault           at             the fault event, "active": true
    fault         device.fault_cleared   at             the fault event, "active": false
    (none)        alarm.escalated        at             the command center's escalation (it signs it
                                                        the same way; the gateway sends none)

A fault keeps one body shape whether it starts or ends; it has two types because a receiver routes
by type, and "the button went offline" and "the button is back" call for different handling.
docs/schemas/webhook-<type>.json is each type's JSON Schema (draft 2020-12).

Headers of each request (the specification's "Webhook headers"):

    webhook-id          the event id: the same on every retry, so the receiver drops repeats by it
    webhook-timestamp   Unix seconds of this attempt (not of the event): a receiver refuses
                        attempts more than 5 minutes from its own clock, which stops replays
    webhook-signature   "v1,<base64 HMAC-SHA256 of '{id}.{timestamp}.{body}'>", one per
                        configured secret, separated by spaces (secret rotation)

Secrets are written `whsec_` followed by the key in base64 (24 to 64 random bytes).

    answer                                   outcome
    any 2xx                                  delivered
    4xx other than 408 and 429 (410 too)     refused for good: kept for an administrator to
                                             requeue; the round goes on with the next event
    408, 429, 3xx (never followed), 5xx,     retried with backoff; the round stops here, so
    no connection, no answer in timeout_s    that a device's later events do not overtake it

This module has its own signer and verifier, written from the specification; the tests check them
against the specification's reference package (`standardwebhooks`) in both directions.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import httpx

from .adapters import Accepted, Failed, Outcome
from .store import OutboundEvent

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
# The specification's symmetric secrets: "Random. At least 24 bytes (192 bits, 512 maximum)".
SECRET_MIN_BYTES, SECRET_MAX_BYTES = 24, 64
TOLERANCE_S = 300  # the specification's reference receivers allow 5 minutes either way
SIGNATURES_MAX = 16  # a signature header with more entries is refused unread
ID_MAX = 255
USER_AGENT = "siaga-gateway"
HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE = "webhook-id", "webhook-timestamp", "webhook-signature"
# An answer's body is read up to this much (for the error message); a longer one is cut off.
ANSWER_READ_MAX = 64 * 1024

ALARM_RAISED = "alarm.raised"
ALARM_STATE_CHANGED = "alarm.state_changed"
DEVICE_FAULT = "device.fault"
DEVICE_FAULT_CLEARED = "device.fault_cleared"
ALARM_ESCALATED = "alarm.escalated"
EVENT_TYPES = (ALARM_RAISED, ALARM_STATE_CHANGED, DEVICE_FAULT, DEVICE_FAULT_CLEARED, ALARM_ESCALATED)
# outbox kind -> the body field that says when the event happened (the payload's `timestamp`)
_WHEN = MappingProxyType({"alarm": "received_at", "state": "at", "fault": "at"})


class WebhookRefused(Exception):
    """A webhook that must not be believed. `reason` says why in a sentence that may be shown to
    the sender (it never holds a secret or an expected signature). `stale` is true when the
    signature is right but the attempt's time is outside the tolerance: the real sender with a
    wrong clock, or a recorded request played again."""

    def __init__(self, reason: str, *, stale: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stale = stale


# ---- secrets -----------------------------------------------------------------------------------

def _check_key(key: bytes, where: str) -> None:
    if not isinstance(key, bytes):
        raise ValueError(f"{where}: a key must be bytes")
    if not SECRET_MIN_BYTES <= len(key) <= SECRET_MAX_BYTES:
        raise ValueError(f"{where}: a key of {len(key)} bytes; Standard Webhooks keys are "
                         f"{SECRET_MIN_BYTES} to {SECRET_MAX_BYTES} random bytes")


def parse_secret(text: str) -> bytes:
    """The key of a secret written the Standard Webhooks way, `whsec_` and the key in base64 (the
    padding `=` may be left out). Whitespace around it (a file's last newline) is ignored."""
    text = text.strip()
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret is written {SECRET_PREFIX} followed by the key in base64")
    encoded = text.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except ValueError:
        raise ValueError(f"a webhook secret: what follows {SECRET_PREFIX} is not base64") from None
    _check_key(key, "a webhook secret")
    return key


def format_secret(key: bytes) -> str:
    """A key as a Standard Webhooks secret (`whsec_...`), to hand to the receiving side."""
    _check_key(key, "a webhook secret")
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


# ---- signatures ----------------------------------------------------------------------------------

def _valid_id(msg_id: str) -> bool:
    # Visible ASCII only: it travels in a header and is part of the signed text.
    return 0 < len(msg_id) <= ID_MAX and all("!" <= c <= "~" for c in msg_id)


def _signed_content(msg_id: str, timestamp_s: int, body: bytes) -> bytes:
    return f"{msg_id}.{timestamp_s}.".encode("ascii") + body


def _mac(key: bytes, content: bytes) -> bytes:
    return hmac.new(key, content, hashlib.sha256).digest()


def sign(secrets: Sequence[bytes], msg_id: str, timestamp_s: int, body: bytes) -> str:
    """The `webhook-signature` header: a `v1` signature by every secret, in order, separated by
    spaces. A receiver that holds any one of the secrets accepts it, which is how a secret is
    replaced without a moment when the two sides disagree."""
    if not secrets:
        raise ValueError("no secret to sign with")
    if not _valid_id(msg_id):
        raise ValueError(f"a webhook id must be 1 to {ID_MAX} visible ASCII characters")
    if timestamp_s < 0:
        raise ValueError("a webhook timestamp is seconds since 1970, not negative")
    content = _signed_content(msg_id, timestamp_s, body)
    return " ".join("v1," + base64.b64encode(_mac(key, content)).decode("ascii") for key in secrets)


def _presented(entries: str) -> list[bytes]:
    """The `v1` signatures of a signature header, decoded. Other schemes (`v1a`, asymmetric) and
    entries that are not `<version>,<base64>` are passed over: a receiver uses what it can check."""
    found = []
    for entry in entries.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except ValueError:  # binascii.Error, or a character beyond ASCII
            continue
    return found


def verify(secrets: Sequence[bytes], headers: Mapping[str, str], body: bytes, now_s: float,
           tolerance_s: float = TOLERANCE_S) -> None:
    """Return if the request was signed by one of `secrets` within `tolerance_s` of `now_s`;
    otherwise raise `WebhookRefused`. The signature is checked before the time, so that only a
    correctly signed request is called stale. Every presented signature is compared with every
    key in constant time, with no early exit."""
    if not secrets:
        raise ValueError("no secret to verify with")
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in (HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE):
        if not lowered.get(name):
            raise WebhookRefused(f"missing header {name}")
    msg_id, stamp, signatures = lowered[HEADER_ID], lowered[HEADER_TIMESTAMP], lowered[HEADER_SIGNATURE]
    if not _valid_id(msg_id):
        raise WebhookRefused(f"bad {HEADER_ID}: 1 to {ID_MAX} visible ASCII characters")
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        raise WebhookRefused(f"bad {HEADER_TIMESTAMP}: not a whole number of seconds since 1970")
    timestamp = int(stamp)
    if len(signatures.split()) > SIGNATURES_MAX:
        raise WebhookRefused(f"more than {SIGNATURES_MAX} signatures in {HEADER_SIGNATURE}")
    content = _signed_content(msg_id, timestamp, body)
    expected = [_mac(key, content) for key in secrets]
    matched = False
    for given in _presented(signatures):
        for mac in expected:
            matched |= hmac.compare_digest(mac, given)
    if not matched:
        raise WebhookRefused("no signature matches")
    if timestamp < now_s - tolerance_s:
        raise WebhookRefused(f"too old: signed {now_s - timestamp:.0f} s ago, at most {tolerance_s:.0f} s allowed",
                             stale=True)
    if timestamp > now_s + tolerance_s:
        raise WebhookRefused(f"too new: signed {timestamp - now_s:.0f} s ahead of this clock, at most "
                             f"{tolerance_s:.0f} s allowed", stale=True)


# ---- payloads ------------------------------------------------------------------------------------

def payload(event_type: str, timestamp: str, data_json: str) -> bytes:
    """A Standard Webhooks payload around `data_json` (a JSON object), spliced in as it is: the
    receiver gets the very bytes the event was stored with, and every retry sends the same body."""
    return ('{"type":' + json.dumps(event_type) + ',"timestamp":' + json.dumps(timestamp)
            + ',"data":' + data_json + "}").encode("utf-8")


def payload_of(kind: str, body: str) -> tuple[str, bytes]:
    """(event type, payload) of an outbox event; ValueError for a kind this destination has no
    type for, or a body that is not the gateway's JSON."""
    when = _WHEN.get(kind)
    if when is None:
        raise ValueError(f"no webhook type for events of kind {kind!r}")
    try:
        fields = json.loads(body)
        timestamp = fields[when]
        if kind == "alarm":
            event_type = ALARM_RAISED
        elif kind == "state":
            event_type = ALARM_STATE_CHANGED
        else:
            event_type = DEVICE_FAULT if fields["active"] is True else DEVICE_FAULT_CLEARED
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"a {kind} body without its fields: {exc!r}"[:200]) from None
    if not isinstance(timestamp, str):
        raise ValueError(f"a {kind} body whose {when} is not a time")
    return event_type, payload(event_type, timestamp, body)


# ---- settings and adapter ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """One webhook destination. `secrets` sign every request (the first is the current one; during
    a rotation the old one stays listed until the receiver has the new one). `inbound_secrets` are
    those the city's system signs its state reports with (gateway/inbound.py); none: it sends none.
    They must differ from `secrets`: otherwise a captured outgoing state event could be played back
    to the gateway as if the city had sent it."""

    url: str
    secrets: tuple[bytes, ...] = field(repr=False)
    timeout_s: float = 10.0
    inbound_secrets: tuple[bytes, ...] = field(default=(), repr=False)
    tolerance_s: int = TOLERANCE_S

    def __post_init__(self) -> None:
        try:
            url = httpx.URL(self.url)
        except (httpx.InvalidURL, TypeError):
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"url: {self.url!r} is not an http:// or https:// address")
        object.__setattr__(self, "secrets", tuple(self.secrets))
        object.__setattr__(self, "inbound_secrets", tuple(self.inbound_secrets))
        if not self.secrets:
            raise ValueError("secrets: at least one signing secret (whsec_...) is needed")
        for key in self.secrets:
            _check_key(key, "secrets")
        for key in self.inbound_secrets:
            _check_key(key, "inbound_secrets")
        if set(self.secrets) & set(self.inbound_secrets):
            raise ValueError("inbound_secrets: must differ from secrets (the gateway's own signatures must not "
                             "be taken for the city's)")
        if not 0 < self.timeout_s <= 300:
            raise ValueError("timeout_s: must be more than 0 and at most 300 seconds")
        if isinstance(self.tolerance_s, bool) or not 1 <= self.tolerance_s <= 3600:
            raise ValueError("tolerance_s: must be from 1 to 3600 seconds")


def _retryable(status: int) -> bool:
    # A 4xx other than 408/429 will not get better by sending the same request again.
    return not (400 <= status < 500 and status not in (408, 429))


class WebhookAdapter:
    """Sends each event as one signed POST, in order. `clock` gives the attempt's Unix time (a test
    moves it)."""

    def __init__(self, settings: WebhookSettings, gateway_id: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._gateway_id = gateway_id
        self._clock = clock
        self._client = httpx.AsyncClient(
            timeout=settings.timeout_s, follow_redirects=False, headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=4))

    async def start(self) -> None:
        """Nothing runs in the background: each round connects as it needs to."""

    async def deliver(self, events: list[OutboundEvent]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for i, event in enumerate(events):
            outcome = await self._send(event)
            outcomes.append(outcome)
            if isinstance(outcome, Failed) and outcome.retry:
                # Whatever failed will likely fail the next request too; and a later event of the
                # same device must not arrive before this one.
                held = Failed(f"not sent: an earlier event failed ({outcome.error[:100]})")
                outcomes += [held] * (len(events) - i - 1)
                break
        return outcomes

    async def _send(self, event: OutboundEvent) -> Outcome:
        settings = self._settings
        try:
            _, body = payload_of(event.kind, event.body)
            stamp = int(self._clock())
            signature = sign(settings.secrets, event.event_id, stamp, body)
        except ValueError as exc:
            log.error("webhook %s: cannot send event %s: %s", settings.url, event.event_id, exc)
            return Failed(f"not sendable as a webhook: {exc}", retry=False)
        headers = {"Content-Type": "application/json", HEADER_ID: event.event_id,
                   HEADER_TIMESTAMP: str(stamp), HEADER_SIGNATURE: signature}
        try:
            # One deadline for the whole exchange: httpx's own timeout is per read, which a
            # receiver that trickles its answer would never reach.
            async with asyncio.timeout(settings.timeout_s):
                async with self._client.stream("POST", settings.url, content=body, headers=headers) as resp:
                    answer = await _read_some(resp)
        except TimeoutError:
            return Failed(f"no answer within {settings.timeout_s:g} s")
        except (httpx.HTTPError, OSError) as exc:
            return Failed(f"{type(exc).__name__}: {exc}"[:300])
        if 200 <= resp.status_code < 300:
            return Accepted(None)
        text = answer.decode("utf-8", "replace")[:200]
        return Failed(f"HTTP {resp.status_code}: {text}", retry=_retryable(resp.status_code))

    async def aclose(self) -> None:
        await self._client.aclose()


async def _read_some(resp: httpx.Response) -> bytes:
    """The start of an answer's body; the rest is left unread (the connection is then closed)."""
    data = b""
    async for chunk in resp.aiter_bytes():
        data += chunk
        if len(data) >= ANSWER_READ_MAX:
            break
    return data

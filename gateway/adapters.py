"""Adapters from the gateway's outbox to a destination.

An adapter takes a round of outbox events (oldest first) and says, for each, whether the
destination has it. The reference adapter here speaks the JSON contract of docs/protocol.md §7;
the others (OASIS CAP 1.2 in cap.py, Standard Webhooks in webhooks.py, SIA DC-09 in dc09.py) have
the same `deliver`. docs/integration.md describes each.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import httpx

from .store import OutboundEvent

log = logging.getLogger(__name__)

BATCH_MAX = 500  # protocol.md §7
# Half the reference command center's batch body limit (1 MiB, docs/security.md): a batch that is
# still too large for some command center is answered 413 and sent again in halves.
BATCH_BYTES_MAX = 512 * 1024


@dataclass(frozen=True, slots=True)
class Accepted:
    incident_id: str | None


@dataclass(frozen=True, slots=True)
class Failed:
    error: str
    retry: bool = True  # False: the command center refused this event for good (audited, kept)


Outcome = Accepted | Failed


class Adapter(Protocol):
    """One destination's protocol (gateway/destinations.py builds them from the configuration)."""

    async def start(self) -> None: ...   # background work of its own (a DC-09 link test), before deliver
    async def deliver(self, events: list[OutboundEvent]) -> list[Outcome]: ...  # same length and order
    async def aclose(self) -> None: ...


@functools.lru_cache(maxsize=4096)
def _iso_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso_utc(ms: int) -> str:
    """RFC 3339 UTC with milliseconds: 2026-11-24T03:12:09.412Z (the second is cached: a burst
    formats thousands of times within the same few seconds)."""
    seconds, millis = divmod(ms, 1000)
    return f"{_iso_second(seconds)}.{millis:03d}Z"


def _permanent(status: int) -> bool:
    # A 4xx other than 408/429 will not get better by sending the same request again.
    return 400 <= status < 500 and status not in (408, 429)


# kind -> (batch path, the batch body's list key) of the reference command center
_BATCH = MappingProxyType({"alarm": ("/api/v1/alarms/batch", "alarms"), "fault": ("/api/v1/faults/batch", "faults")})


class ReferenceAdapter:
    """The reference command center: single and batch intake of alarms and of faults."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 10.0) -> None:
        self._client = httpx.AsyncClient(
            base_url=url.rstrip("/"), timeout=timeout_s, headers={"Authorization": f"Bearer {token}"},
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=8))
        self._batch_supported = {"alarm": True, "fault": True}

    async def start(self) -> None:
        """Nothing runs in the background: each round is its own requests."""

    async def deliver(self, events: list[OutboundEvent]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        i = 0
        while i < len(events):
            # Runs of one kind go in batches; the order is kept.
            kind = events[i].kind
            j, size = i, 0
            while j < len(events) and events[j].kind == kind and j - i < BATCH_MAX:
                size += len(events[j].body) + 1
                if j > i and size > BATCH_BYTES_MAX:
                    break
                j += 1
            if j - i > 1 and self._batch_supported.get(kind, False):
                outcomes += await self._batch(events[i:j])
                i = j
            else:
                outcomes.append(await self._single(events[i]))
                i += 1
        return outcomes

    async def _single(self, event: OutboundEvent) -> Outcome:
        path = "/api/v1/alarms" if event.kind == "alarm" else "/api/v1/faults"
        try:
            resp = await self._client.post(path, content=event.body, headers={
                "Idempotency-Key": event.event_id, "Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            return Failed(f"{type(exc).__name__}: {exc}")
        if resp.status_code in (200, 201):
            return Accepted(resp.json().get("incident_id"))
        return Failed(f"HTTP {resp.status_code}: {resp.text[:200]}", retry=not _permanent(resp.status_code))

    async def _batch(self, events: list[OutboundEvent]) -> list[Outcome]:
        kind = events[0].kind
        path, key = _BATCH[kind]
        # The bodies are already JSON; splice them rather than parse and re-serialise each one.
        payload = '{"' + key + '":[' + ",".join(e.body for e in events) + "]}"
        try:
            resp = await self._client.post(path, content=payload, headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            failed = Failed(f"{type(exc).__name__}: {exc}")
            return [failed] * len(events)
        if resp.status_code == 413 and len(events) > 1:
            # Larger than that command center takes: the halves go separately (order kept).
            half = len(events) // 2
            log.info("command center refused a batch of %d %ss as too large; sending it in two", len(events), kind)
            return await self._batch_or_single(events[:half]) + await self._batch_or_single(events[half:])
        if resp.status_code in (404, 405):
            log.warning("command center has no %s batch intake (HTTP %d); sending them one by one", kind,
                        resp.status_code)
            self._batch_supported[kind] = False
            return [await self._single(e) for e in events]
        if resp.status_code != 200:
            failed = Failed(f"HTTP {resp.status_code}: {resp.text[:200]}", retry=not _permanent(resp.status_code))
            return [failed] * len(events)
        try:
            results = resp.json()["results"]
            if len(results) != len(events):
                raise ValueError(f"{len(results)} results for {len(events)} {kind}s")
        except (ValueError, KeyError, TypeError) as exc:
            failed = Failed(f"unreadable batch answer: {exc}")
            return [failed] * len(events)
        outcomes: list[Outcome] = []
        for event, result in zip(events, results, strict=True):
            if result.get("event_id") != event.event_id:
                outcomes.append(Failed(f"batch answer out of order at {event.event_id}"))
            elif result.get("status") in ("created", "duplicate"):
                outcomes.append(Accepted(result.get("incident_id") if kind == "alarm" else None))
            else:
                outcomes.append(Failed(f"refused: {json.dumps(result.get('error'))[:200]}", retry=False))
        return outcomes

    async def _batch_or_single(self, events: list[OutboundEvent]) -> list[Outcome]:
        return await self._batch(events) if len(events) > 1 else [await self._single(events[0])]

    async def aclose(self) -> None:
        await self._client.aclose()

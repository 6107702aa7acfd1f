"""Adapters from the gateway's outbox to a command center's API.

The reference adapter speaks the JSON contract of docs/protocol.md §7. Other centers' APIs (OASIS
CAP 1.2, a signed webhook) are further classes with the same `deliver` method.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import httpx

from .store import Forward


class DeliveryError(Exception):
    """The command center did not take the event; `retry` is False only for a permanent refusal."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True, slots=True)
class Delivered:
    incident_id: str | None
    state: str | None


class Adapter(Protocol):
    async def deliver(self, fwd: Forward) -> Delivered: ...
    async def aclose(self) -> None: ...


def iso_utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ReferenceAdapter:
    """POST <url>/api/v1/alarms with an Idempotency-Key (protocol.md §7)."""

    def __init__(self, url: str, token: str, gateway_id: str, *, timeout_s: float = 10.0) -> None:
        self._gateway_id = gateway_id
        self._client = httpx.AsyncClient(
            base_url=url.rstrip("/"), timeout=timeout_s,
            headers={"Authorization": f"Bearer {token}"},
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32))

    def body(self, fwd: Forward) -> dict[str, object]:
        return {
            "event_id": fwd.event_id,
            "gateway_id": self._gateway_id,
            "device_id": fwd.device_id,
            "seq": fwd.seq,
            "kind": fwd.kind,
            "test": fwd.test,
            "location": {"lat": fwd.lat_e6 / 1e6, "lon": fwd.lon_e6 / 1e6,
                         "address": fwd.address, "area": fwd.area},
            "raised_at": iso_utc(fwd.raised_ts * 1000) if fwd.raised_ts is not None else None,
            "received_at": iso_utc(fwd.received_ms),
        }

    async def deliver(self, fwd: Forward) -> Delivered:
        try:
            resp = await self._client.post("/api/v1/alarms", json=self.body(fwd),
                                           headers={"Idempotency-Key": fwd.event_id})
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
        if resp.status_code in (200, 201):
            data = resp.json()
            return Delivered(data.get("incident_id"), data.get("state"))
        # 4xx other than 408/429 will not get better by repeating the same request; the alarm is
        # kept and reported (never dropped), and an operator can replay it after fixing the cause.
        retry = resp.status_code >= 500 or resp.status_code in (408, 429)
        raise DeliveryError(f"HTTP {resp.status_code}: {resp.text[:200]}", retry=retry)

    async def aclose(self) -> None:
        await self._client.aclose()

"""Path supervision (EN 50136 style): the gateway reports itself to the reference command center every
`report_every_s` seconds, so that the room sees a gateway, or the uplink to it, going silent.

The report (docs/protocol.md §7, "Gateway report") says who is reporting (gateway id and instance),
what runs (version, uptime) and how the path looks from here: the outbox depth in total and per
destination, whether the broker link is up, how many buttons are online of how many are registered,
and, with an SMS path ([sms]), the state of the gateway's own modem: down or off the network, the
buttons behind this gateway have no backup path, and the room must know.
It goes to every destination of type `siaga` with that destination's intake token as a bearer token,
exactly as the alarms do (over TLS when the URL is https).

A report that fails is not retried or queued: the next one, `report_every_s` later, says everything it
would have said. Failures are logged once, then quietly until a report gets through again, and never
touch the alarm path: this loop has its own HTTP client and never waits on the forwarders.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any

import httpx

from .config import Destination

if TYPE_CHECKING:
    from .service import Gateway

log = logging.getLogger(__name__)

REPORT_PATH = "/api/v1/gateways/report"


def software_version() -> str:
    try:
        return metadata.version("siaga")
    except metadata.PackageNotFoundError:
        return "unknown"


def reference_destinations(destinations: tuple[Destination, ...]) -> list[Destination]:
    """The destinations that are a Siaga reference command center: they take the report."""
    return [d for d in destinations if d.type == "siaga"]


def sms_state(gw: Gateway) -> dict[str, Any] | None:
    """The report's "sms" object, or None to leave it out: no SMS path, or the modem's first session
    not yet tried (a gateway that just started is not a modem fault)."""
    intake = gw.sms
    if gw.cfg.sms is None or intake is None or not intake.tried:
        return None
    status = intake.status()
    return {"up": status["up"], "registered": status["registered"], "signal": status["signal"]}


async def build_report(gw: Gateway, started: float, version: str) -> dict[str, Any]:
    depths = await gw.store.outbox_depths()
    link = gw.link
    sms = sms_state(gw)
    return {
        "gateway_id": gw.cfg.gateway_id,
        "instance": gw.instance,
        "version": version,
        "uptime_s": round(time.monotonic() - started, 1),
        "outbox": {"total": sum(depths.values()), "by_destination": dict(sorted(depths.items()))},
        "broker_connected": bool(link is not None and link.connected.is_set()),
        "buttons": {"online": gw.supervisor.online(), "registered": len(gw.registry)},
        "at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        **({"sms": sms} if sms is not None else {}),
    }


class _Target:
    """One command center the report goes to, with its own client and its own failure log state."""

    def __init__(self, destination: Destination) -> None:
        s = destination.settings
        self.name = destination.name
        self.client = httpx.AsyncClient(base_url=s.url.rstrip("/"), timeout=min(10.0, s.timeout_s),
                                        headers={"Authorization": f"Bearer {s.token}"})
        self.failing = False
        self.failures = 0
        self.delivered = False  # a report has got through since the gateway started

    async def send(self, report: dict[str, Any]) -> None:
        try:
            resp = await self.client.post(REPORT_PATH, json=report)
            error = None if resp.status_code in (200, 201, 204) else f"HTTP {resp.status_code}: {resp.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            if self.failing:
                log.info("gateway report to %s gets through again (after %d failed)", self.name, self.failures)
            self.failing, self.failures, self.delivered = False, 0, True
            return
        self.failures += 1
        if not self.failing and (self.delivered or self.failures > 1):
            # Once per run of failures; the rest at DEBUG. The very first report of a run may find
            # the command center still starting (both come up together): said only if the next
            # one fails too.
            log.warning("gateway report to %s failed (%s); the next ones are tried quietly", self.name, error)
            self.failing = True
        else:
            log.debug("gateway report to %s failed (%s)", self.name, error)


async def report_forever(gw: Gateway, every_s: float) -> None:
    """Send a report now and then every `every_s` seconds until cancelled."""
    targets = [_Target(d) for d in reference_destinations(gw.cfg.destinations)]
    if not targets or every_s <= 0:
        return
    started = time.monotonic()
    version = software_version()
    log.info("reporting to the command center every %g s", every_s)
    try:
        while True:
            try:
                report = await build_report(gw, started, version)
                await asyncio.gather(*(t.send(report) for t in targets))
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the report end the gateway's TaskGroup
                log.exception("gateway report failed")
            await asyncio.sleep(every_s)
    finally:
        for t in targets:
            await asyncio.shield(t.client.aclose())

"""Path supervision (EN 50136 style): the gateway reports itself to the reference command center every
`report_every_s` seconds, so that the room sees a gateway, or the uplink to it, going silent.

The report (docs/protocol.md §7, "Gateway report") says who is reporting (gateway id and instance),
what runs (version, uptime) and how the path looks from here: the outbox depth in total and per
destination, whether the broker link is up, how many buttons are online of how many are registered,
and, with an SMS path ([sms]), the state of the gateway's own modem: down or off the network, the
buttons behind this gateway have no backup path, and the room must know. With firmware updates over
the air ([ota]), it also says which firmware versions are in service and how the latest rollouts go
(`firmware`, from `Gateway.ota_summary()`), which the console shows in its devices view.
It goes to every destination of type `siaga` with that destination's intake token as a bearer token,
exactly as the alarms do (over TLS when the URL is https).

A report that fails is not retried or queued: the next one, `report_every_s` later, says everything it
would have said. Failures are logged once, then quietly until a report gets through again, and never
touch the alarm path: this loop has its own HTTP client and never waits on the forwarders.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import re
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

# The bounds of the report's "firmware" object at the command center (commandcenter/plumbing.py,
# FirmwareSummary): a summary is cut to them here, so that it never costs the whole report.
_FW_VERSION = re.compile(r"[!-~]{1,64}")
FW_VERSIONS_MAX = 64
FW_ROLLOUTS_MAX = 5
_COUNT_MAX = 10**12
_REASON_MAX_BYTES = 300
_ROLLOUT_STATES = frozenset({"active", "halted", "done", "cancelled"})
_DEVICE_STATES = ("offered", "downloading", "installed", "updated", "failed", "withdrawn")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


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


async def firmware_state(gw: Gateway) -> dict[str, Any] | None:
    """The report's "firmware" object (`Gateway.ota_summary()`: versions in service, the latest
    rollouts), or None to leave it out: no [ota], or the summary could not be made (logged; the rest
    of the report still goes)."""
    summary = getattr(gw, "ota_summary", None)
    if getattr(gw.cfg, "ota", None) is None or summary is None:
        return None
    try:
        found = summary()
        if inspect.isawaitable(found):
            found = await found
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("the firmware summary for the gateway report failed; the report goes without it")
        return None
    return bounded_firmware(found) if isinstance(found, dict) else None


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value <= _COUNT_MAX


def _rollout(r: object) -> dict[str, Any] | None:
    """One rollout of the summary as the command center takes it, or None to leave it out."""
    if not isinstance(r, dict):
        return None
    rid, version, state = r.get("id"), r.get("version"), r.get("state")
    percent: Any = r.get("percent")
    if not (type(rid) is int and 1 <= rid <= 2**53):
        return None
    if not (isinstance(version, str) and _FW_VERSION.fullmatch(version)):
        return None
    if type(percent) not in (int, float) or not math.isfinite(percent) or not 0 <= percent <= 100:
        return None
    if state not in _ROLLOUT_STATES:
        return None
    reason = r.get("halted_reason")
    if isinstance(reason, str):
        reason = _CONTROL.sub(" ", reason).encode()[:_REASON_MAX_BYTES].decode(errors="ignore")
    max_failed, created = r.get("max_failed_percent"), r.get("created_ms")
    counts: dict[str, Any] = r["counts"] if isinstance(r.get("counts"), dict) else {}
    return {
        "id": rid, "version": version, "percent": percent, "state": state,
        "max_failed_percent": max_failed if type(max_failed) is int and 0 <= max_failed <= 100 else None,
        "halted_reason": reason if isinstance(reason, str) else None,
        "created_ms": created if type(created) is int and 0 <= created <= 2**53 else None,
        "counts": {s: counts[s] if _count(counts.get(s)) else 0 for s in _DEVICE_STATES},
        "targeted": r["targeted"] if _count(r.get("targeted")) else 0,
        "eligible": r["eligible"] if _count(r.get("eligible")) else 0,
    }


def bounded_firmware(summary: dict[str, Any]) -> dict[str, Any]:
    """`Gateway.ota_summary()` within the command center's bounds: the 64 versions most in service,
    the first 5 rollouts, a halted reason of at most 300 bytes without control characters; an entry
    that is not as docs/protocol.md §11 says is left out rather than refused with the whole report."""
    raw = summary.get("versions")
    versions = sorted(((k, v) for k, v in raw.items() if isinstance(k, str) and _FW_VERSION.fullmatch(k) and _count(v)),
                      key=lambda kv: (-kv[1], kv[0])) if isinstance(raw, dict) else []
    rollouts = [r for r in map(_rollout, summary.get("rollouts") or ()) if r is not None] \
        if isinstance(summary.get("rollouts"), list) else []
    return {"versions": dict(versions[:FW_VERSIONS_MAX]), "rollouts": rollouts[:FW_ROLLOUTS_MAX]}


async def build_report(gw: Gateway, started: float, version: str) -> dict[str, Any]:
    depths = await gw.store.outbox_depths()
    link = gw.link
    sms = sms_state(gw)
    firmware = await firmware_state(gw)
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
        **({"firmware": firmware} if firmware is not None else {}),
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

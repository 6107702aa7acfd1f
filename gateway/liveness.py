"""Path supervision (EN 50136 style): the gateway reports itself to the reference command center every
`report_every_s` seconds, so that the room sees a gateway, or the uplink to it, going silent.

The report (docs/protocol.md §7, "Gateway report") says who is reporting (gateway id and instance),
what runs (version, uptime) and how the path looks from here: the outbox depth in total and per
destination, whether the broker link is up, how many buttons are online of how many are registered,
and, with an SMS path ([sms]), the state of the gateway's own modem: down or off the network, the
buttons behind this gateway have no backup path, and the room must know. With firmware updates over
the air ([ota]), it also says which firmware versions are in service, how the latest rollouts go and
where each of their buttons stands (`firmware`, from `Gateway.ota_summary()`; at most 500 buttons,
the failed and busy first), which the console shows in its devices view.
It goes to every destination of type `siaga` with that destination's intake token as a bearer token,
exactly as the alarms do (over TLS when the URL is https).

A report that fails is not retried or queued: the next one, `report_every_s` later, says everything it
would have said. Failures are logged once, then quietly until a report gets through again, and never
touch the alarm path: this loop has its own HTTP client and never waits on the forwarders.
"""

from __future__ import annotations

import asyncio
import inspect
import json
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
FW_DEVICES_MAX = 500
_DEVICE_ID = re.compile(r"[a-z0-9][a-z0-9-]{2,31}")
_BOARD = re.compile(r"[a-z0-9_-]{1,16}")
_DETAIL_MAX_BYTES = 64
# A report is kept to at most this many bytes: the buttons listed are cut further to fit it, the rest
# counted in devices_total. 96 KiB holds the 500 rows a report may list; the command center takes up
# to REPORT_BODY_MAX (commandcenter/plumbing.py, 512 KiB: what its schema allows at most). Before
# updates over the air it took 16 KiB, so a command center older than this gateway refuses a long
# list (413) and the gateway looks silent: update the command center first. REPORT_SLACK_BYTES is
# left free as it is measured as httpx sends it.
REPORT_BYTES_MAX = 96 * 1024
REPORT_SLACK_BYTES = 256
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


def _device(d: object, rollout_ids: set[int]) -> dict[str, Any] | None:
    """One button of the summary's rollouts as the command center takes it, or None to leave it out."""
    if not isinstance(d, dict):
        return None
    device_id, state, updated = d.get("device_id"), d.get("state"), d.get("updated_ms")
    if not (isinstance(device_id, str) and _DEVICE_ID.fullmatch(device_id)):
        return None
    if type(d.get("rollout")) is not int or d["rollout"] not in rollout_ids or state not in _DEVICE_STATES:
        return None
    detail, firmware, board = d.get("detail"), d.get("firmware"), d.get("board")
    detail = _CONTROL.sub(" ", detail).encode(errors="ignore")[:_DETAIL_MAX_BYTES].decode(errors="ignore") \
        if isinstance(detail, str) else ""
    return {
        "device_id": device_id, "rollout": d["rollout"], "state": state, "detail": detail,
        "firmware": firmware if isinstance(firmware, str) and _FW_VERSION.fullmatch(firmware) else None,
        "board": board if isinstance(board, str) and _BOARD.fullmatch(board) else None,
        "updated_ms": updated if type(updated) is int and 0 <= updated <= 2**53 else 0,
    }


def bounded_firmware(summary: dict[str, Any]) -> dict[str, Any]:
    """`Gateway.ota_summary()` within the command center's bounds: the 64 versions most in service,
    the first 5 rollouts, a halted reason of at most 300 bytes without control characters, the first
    500 buttons of those rollouts (a reason of at most 64 bytes); an entry that is not as
    docs/protocol.md §11 says is left out rather than refused with the whole report."""
    raw = summary.get("versions")
    versions = sorted(((k, v) for k, v in raw.items() if isinstance(k, str) and _FW_VERSION.fullmatch(k) and _count(v)),
                      key=lambda kv: (-kv[1], kv[0])) if isinstance(raw, dict) else []
    rollouts = [r for r in map(_rollout, summary.get("rollouts") or ()) if r is not None] \
        if isinstance(summary.get("rollouts"), list) else []
    rollouts = rollouts[:FW_ROLLOUTS_MAX]
    ids = {r["id"] for r in rollouts}
    raw_devices = summary.get("devices")
    devices = [d for d in (_device(x, ids) for x in raw_devices) if d is not None] \
        if isinstance(raw_devices, list) else []
    total: object = summary.get("devices_total")
    total = max(total, len(devices)) if type(total) is int and _count(total) else len(devices)
    return {"versions": dict(versions[:FW_VERSIONS_MAX]), "rollouts": rollouts,
            "devices": devices[:FW_DEVICES_MAX], "devices_total": total}


def _json_bytes(value: object) -> int:
    """The size of `value` in a request body, encoded as httpx encodes `json=`."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode())


def fit_report(report: dict[str, Any], max_bytes: int = REPORT_BYTES_MAX) -> dict[str, Any]:
    """The report with its firmware summary's buttons cut, from the end of the list (the failed and
    busy come first), until the whole fits in `max_bytes`; `devices_total` still counts them all."""
    firmware = report.get("firmware")
    if not isinstance(firmware, dict) or not firmware.get("devices"):
        return report
    room = max_bytes - REPORT_SLACK_BYTES - _json_bytes({**report, "firmware": {**firmware, "devices": []}})
    kept = 0
    for device in firmware["devices"]:
        room -= _json_bytes(device) + 1   # and its comma
        if room < 0:
            break
        kept += 1
    if kept < len(firmware["devices"]):
        report = {**report, "firmware": {**firmware, "devices": firmware["devices"][:kept]}}
    return report


async def build_report(gw: Gateway, started: float, version: str) -> dict[str, Any]:
    depths = await gw.store.outbox_depths()
    link = gw.link
    sms = sms_state(gw)
    firmware = await firmware_state(gw)
    return fit_report({
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
    })


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

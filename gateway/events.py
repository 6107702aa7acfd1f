"""The JSON bodies the gateway forwards (protocol.md §7): an alarm event and a fault event. Pure
functions of what was received and decided, so the contract test can build exactly what the
gateway would send and hand it to the command center's real intake."""

from __future__ import annotations

import json
from collections.abc import Sequence

from .adapters import iso_utc
from .codec import Alarm
from .store import DeviceRecord
from .supervision import FaultChange


def alarm_event(gateway_id: str, alarm: Alarm, received_ms: int, group_id: int, press_count: int,
                sources: Sequence[str], battery_mv: int | None) -> tuple[str, str]:
    """(event id, JSON body) of an alarm event; the body is fixed at intake, so every retry of
    the event sends the same bytes."""
    event_id = f"{gateway_id}:{alarm.device_id}:{alarm.seq}"
    loc = alarm.location
    body = {
        "event_id": event_id, "gateway_id": gateway_id, "device_id": alarm.device_id,
        "seq": alarm.seq, "kind": alarm.kind, "test": alarm.test,
        "location": {"lat": loc.lat_e6 / 1e6, "lon": loc.lon_e6 / 1e6, "address": loc.address, "area": loc.area},
        "raised_at": iso_utc(alarm.raised_ts * 1000) if alarm.raised_ts is not None else None,
        "received_at": iso_utc(received_ms),
        "incident_key": f"{gateway_id}:g:{group_id}",
        "press_count": press_count, "sources": list(sources),
        "battery_mv": battery_mv,
    }
    return event_id, json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def fault_event(gateway_id: str, change: FaultChange, number: int, device: DeviceRecord | None) -> tuple[str, str]:
    """(event id, JSON body) of a fault event; `number` is the fault history's row id. Detail keys
    ending in _ms become _at with an RFC 3339 time."""
    event_id = f"{gateway_id}:{change.device_id}:fault:{number}"
    detail = {k: (iso_utc(v) if k.endswith("_ms") and isinstance(v, int) else v) for k, v in change.detail.items()}
    detail = {k.removesuffix("_ms") + ("_at" if k.endswith("_ms") else ""): v for k, v in detail.items()}
    body: dict[str, object] = {"event_id": event_id, "gateway_id": gateway_id,
                               "device_id": change.device_id, "fault": change.fault.value,
                               "active": change.active, "at": iso_utc(change.at_ms), "detail": detail}
    if device is not None and device.lat_e6 is not None and device.lon_e6 is not None:
        body["location"] = {"lat": device.lat_e6 / 1e6, "lon": device.lon_e6 / 1e6, "address": device.address,
                            "area": device.area}
    return event_id, json.dumps(body, separators=(",", ":"), ensure_ascii=False)

"""The JSON bodies the gateway forwards (protocol.md §7): an alarm event, a fault event and a state
event. Pure functions of what was received and decided, so the contract test can build exactly what
the gateway would send and hand it to the command center's real intake. Every destination's adapter
(gateway/adapters.py, cap.py, webhooks.py, dc09.py) starts from these bodies; docs/integration.md
has their JSON schemas."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

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


def state_event(gateway_id: str, alarm: dict[str, Any], state: str, incident_id: str | None, by: str | None,
                at_ms: int, number: int) -> tuple[str, str]:
    """(event id, JSON body) of an alarm's state change (acknowledged, dispatched, resolved, false
    alarm, undelivered), for the destinations that follow an alarm after it arrived (CAP Update and
    Cancel, webhooks). `alarm` is the stored alarm's row; `number` the state log's row id. The body
    carries what a consumer needs to relate it to the alarm event without having kept it: the alarm's
    event id, kind, test flag, place and when it was received."""
    alarm_event_id = f"{gateway_id}:{alarm['device_id']}:{alarm['seq']}"
    body = {
        "event_id": f"{alarm_event_id}:state:{number}", "gateway_id": gateway_id,
        "device_id": alarm["device_id"], "seq": alarm["seq"], "alarm_event_id": alarm_event_id,
        "state": state, "incident_id": incident_id, "by": by, "at": iso_utc(at_ms),
        "kind": alarm["kind"], "test": bool(alarm["test"]),
        "location": {"lat": alarm["lat_e6"] / 1e6, "lon": alarm["lon_e6"] / 1e6, "address": alarm["address"],
                     "area": alarm["area"]},
        "received_at": iso_utc(alarm["received_ms"]),
        "incident_key": f"{gateway_id}:g:{alarm['group_id']}",
    }
    return body["event_id"], json.dumps(body, separators=(",", ":"), ensure_ascii=False)

"""Supervision of buttons: offline, low battery and tamper faults (docs/gateway.md, "Supervision"),
and two faults of what a button sent rather than of the button itself: bad_message (an authenticated
message the gateway could not take: refused as malformed, or quarantined) and undelivered (an alarm
the command center refused for good). Those two stay active until an hour has passed without a
new occurrence, so a button that keeps failing does not make the fault list flicker.

EN 50136-1 treats a transmission path that fails unnoticed as the worst failure of an alarm system;
so a button that stops reporting is itself reported. Pure: heartbeats, wills and clock ticks in,
fault changes out. A fault is reported once when it starts and once when it clears.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Fault(enum.StrEnum):
    OFFLINE = "offline"
    LOW_BATTERY = "low_battery"
    TAMPER = "tamper"
    BAD_MESSAGE = "bad_message"
    UNDELIVERED = "undelivered"


# Faults about messages: active from an occurrence until STICKY_MS pass without another.
STICKY = (Fault.BAD_MESSAGE, Fault.UNDELIVERED)
STICKY_MS = 3600 * 1000


@dataclass(frozen=True, slots=True)
class FaultChange:
    device_id: str
    fault: Fault
    active: bool
    at_ms: int
    detail: dict[str, Any]


@dataclass(slots=True)
class Health:
    last_seen_ms: int
    every_s: int
    active: set[Fault] = field(default_factory=set)
    battery_mv: int | None = None
    last_occurrence_ms: dict[Fault, int] = field(default_factory=dict)  # of the sticky faults
    offline_since_ms: int | None = None  # when the active offline fault started
    heard_ms: int = 0                    # the device's latest message itself (last_seen_ms starts at our start)


@dataclass(frozen=True, slots=True)
class SupervisionSettings:
    missed_heartbeats: int = 3          # offline after this many intervals without a message
    default_every_s: int = 60           # assumed interval until a device announces its own
    low_battery_mv: int = 3400          # one Li-ion cell near empty under load (3.3-3.4 V)
    battery_hysteresis_mv: int = 150    # must recover this far above the threshold to clear


class Supervisor:
    def __init__(self, settings: SupervisionSettings, started_ms: int) -> None:
        self.settings = settings
        # Nobody is declared offline for silence that happened while the gateway itself was down.
        self._started_ms = started_ms
        self._devices: dict[str, Health] = {}

    def load(self, device_id: str, last_seen_ms: int | None, every_s: int | None,
             active: set[Fault] | dict[Fault, int], battery_mv: int | None = None) -> None:
        """A device's state at start; `active` may carry each fault's start time (ms)."""
        health = Health(max(last_seen_ms or 0, self._started_ms), every_s or self.settings.default_every_s,
                        set(active), battery_mv)
        health.heard_ms = last_seen_ms or 0
        if isinstance(active, dict) and Fault.OFFLINE in active:
            health.offline_since_ms = active[Fault.OFFLINE]
        # A sticky fault active at start-up runs its hour from now: when it last happened is not kept.
        health.last_occurrence_ms = {f: self._started_ms for f in STICKY if f in active}
        self._devices[device_id] = health

    def sync(self, device_id: str, last_seen_ms: int | None, every_s: int | None, active: dict[Fault, int],
             battery_mv: int | None) -> None:
        """Take a device's state from a database other gateway instances share: the latest
        message any of them saw, and the faults active there with their start (the database
        decides which fault changes count, store._write_faults). A sticky fault first seen here
        runs its hour from now. An offline fault that started before the device's latest message
        (its will reached one instance, its next heartbeat another that did not know yet) is
        cleared by the next `tick`."""
        health = self._devices.get(device_id)
        if health is None:
            self.load(device_id, last_seen_ms, every_s, active, battery_mv)
            return
        if last_seen_ms is not None and last_seen_ms > health.last_seen_ms:
            health.last_seen_ms = last_seen_ms
            health.battery_mv = battery_mv
        health.heard_ms = max(health.heard_ms, last_seen_ms or 0)
        if every_s:
            health.every_s = every_s
        for fault in STICKY:
            if fault in active and fault not in health.active:
                health.last_occurrence_ms[fault] = max(health.last_seen_ms, self._started_ms)
        health.active = set(active)
        health.offline_since_ms = active.get(Fault.OFFLINE)

    def forget(self, device_id: str) -> None:
        self._devices.pop(device_id, None)

    def _health(self, device_id: str, now_ms: int) -> Health:
        health = self._devices.get(device_id)
        if health is None:
            health = self._devices[device_id] = Health(now_ms, self.settings.default_every_s)
        return health

    def _set(self, device_id: str, health: Health, fault: Fault, active: bool, now_ms: int,
             detail: dict[str, Any]) -> list[FaultChange]:
        if (fault in health.active) == active:
            return []
        if active:
            health.active.add(fault)
        else:
            health.active.discard(fault)
        if fault is Fault.OFFLINE:
            health.offline_since_ms = now_ms if active else None
        return [FaultChange(device_id, fault, active, now_ms, detail)]

    def seen(self, device_id: str, now_ms: int) -> list[FaultChange]:
        """Any authenticated message proves the device is alive."""
        health = self._health(device_id, now_ms)
        health.last_seen_ms = max(health.last_seen_ms, now_ms)
        health.heard_ms = max(health.heard_ms, now_ms)
        return self._set(device_id, health, Fault.OFFLINE, False, now_ms, {"reason": "message received"})

    def heartbeat(self, device_id: str, now_ms: int, every_s: int, battery_mv: int | None,
                  tamper: bool) -> list[FaultChange]:
        health = self._health(device_id, now_ms)
        if every_s > 0:
            health.every_s = every_s
        health.battery_mv = battery_mv
        changes = self.seen(device_id, now_ms)
        changes += self._set(device_id, health, Fault.TAMPER, tamper, now_ms,
                             {"reason": "enclosure opened" if tamper else "enclosure closed"})
        if battery_mv is not None:
            s = self.settings
            low = Fault.LOW_BATTERY in health.active
            if not low and battery_mv < s.low_battery_mv:
                changes += self._set(device_id, health, Fault.LOW_BATTERY, True, now_ms,
                                     {"battery_mv": battery_mv, "threshold_mv": s.low_battery_mv})
            elif low and battery_mv >= s.low_battery_mv + s.battery_hysteresis_mv:
                changes += self._set(device_id, health, Fault.LOW_BATTERY, False, now_ms, {"battery_mv": battery_mv})
        return changes

    def will(self, device_id: str, now_ms: int) -> list[FaultChange]:
        """The broker published the device's last will: its connection dropped without a goodbye."""
        health = self._health(device_id, now_ms)
        return self._set(device_id, health, Fault.OFFLINE, True, now_ms,
                         {"reason": "connection lost (last will)", "last_seen_ms": health.last_seen_ms})

    def occurred(self, device_id: str, fault: Fault, now_ms: int, detail: dict[str, Any]) -> list[FaultChange]:
        """A bad message or an undelivered alarm: active now, cleared after STICKY_MS of quiet.
        The report carries the first occurrence's detail; later ones only extend the hour."""
        health = self._health(device_id, now_ms)
        health.last_occurrence_ms[fault] = now_ms
        return self._set(device_id, health, fault, True, now_ms, detail)

    def tick(self, now_ms: int) -> list[FaultChange]:
        changes: list[FaultChange] = []
        for device_id, health in self._devices.items():
            limit_ms = health.every_s * 1000 * self.settings.missed_heartbeats
            if now_ms - health.last_seen_ms > limit_ms:
                changes += self._set(device_id, health, Fault.OFFLINE, True, now_ms, {
                    "reason": f"{self.settings.missed_heartbeats} heartbeats missed",
                    "last_seen_ms": health.last_seen_ms, "battery_mv": health.battery_mv})
            elif health.offline_since_ms is not None and health.heard_ms > health.offline_since_ms:
                changes += self._set(device_id, health, Fault.OFFLINE, False, now_ms,
                                     {"reason": "message received"})
            for fault, at_ms in health.last_occurrence_ms.items():
                if fault in health.active and now_ms - at_ms > STICKY_MS:
                    changes += self._set(device_id, health, fault, False, now_ms,
                                         {"reason": "none for an hour", "last_ms": at_ms})
        return changes

    def battery_mv(self, device_id: str) -> int | None:
        """The battery voltage of the device's latest heartbeat, if it reported one."""
        health = self._devices.get(device_id)
        return None if health is None else health.battery_mv

    def online(self) -> int:
        return sum(1 for h in self._devices.values() if Fault.OFFLINE not in h.active)

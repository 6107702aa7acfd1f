"""Supervision of buttons: offline, low battery and tamper faults (docs/gateway.md, "Supervision"),
and two faults of what a button sent rather than of the button itself: bad_message (an authenticated
message the gateway could not take: refused as malformed, or quarantined) and undelivered (an alarm
the command center refused for good). Those two stay active until an hour has passed without a
new occurrence, so a button that keeps failing does not make the fault list flicker.

A button with a GSM modem has a second transmission path, SMS (docs/gateway.md, "SMS intake"), which EN
50136-1 wants supervised on its own. Each path's last success is kept per device: MQTT (any
message over the broker: `seen`, `heartbeat`) and SMS (any valid SMS: `sms_seen`). Two faults follow:
on_backup_path (offline on MQTT, yet heard by SMS within the backup-path test interval: alarms still
arrive, the primary path needs a technician) and backup_path_down (a button with a phone number
registered sent no valid SMS for 1.5 test intervals plus ten minutes: its periodic test SMS is
missing, so an alarm could not fall back to SMS). Their details carry both paths' last success.

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
    ON_BACKUP_PATH = "on_backup_path"
    BACKUP_PATH_DOWN = "backup_path_down"


# Faults about messages: active from an occurrence until STICKY_MS pass without another.
STICKY = (Fault.BAD_MESSAGE, Fault.UNDELIVERED)
STICKY_MS = 3600 * 1000

# backup_path_down after 1.5 test intervals and this much more without a valid SMS: one test SMS
# may be late (a retry, a slow SMS centre) or lost without a fault; two missing in a row are one.
BACKUP_GRACE_MS = 600 * 1000


def backup_down_after_ms(test_every_s: int) -> int:
    """How long a button with a phone may stay silent on SMS before backup_path_down."""
    return test_every_s * 1500 + BACKUP_GRACE_MS


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
    sms_ms: int = 0                      # its latest valid SMS (0: none known)


@dataclass(frozen=True, slots=True)
class SupervisionSettings:
    missed_heartbeats: int = 3          # offline after this many intervals without a message
    default_every_s: int = 60           # assumed interval until a device announces its own
    low_battery_mv: int = 3400          # one Li-ion cell near empty under load (3.3-3.4 V)
    battery_hysteresis_mv: int = 150    # must recover this far above the threshold to clear


class Supervisor:
    def __init__(self, settings: SupervisionSettings, started_ms: int, *, sms_test_every_s: int = 0) -> None:
        self.settings = settings
        # Nobody is declared offline for silence that happened while the gateway itself was down.
        self._started_ms = started_ms
        self._devices: dict[str, Health] = {}
        # The buttons' backup-path test interval ([sms] test_every_s); 0: no test, no backup_path_down.
        self.sms_test_every_s = sms_test_every_s
        # Devices with a phone registered -> since when their SMS silence counts (None: from the
        # next check). Kept apart from Health, which `load` replaces: the registry says who has a
        # phone, the health table says how the device is.
        self._sms_expected: dict[str, int | None] = {}

    def load(self, device_id: str, last_seen_ms: int | None, every_s: int | None,
             active: set[Fault] | dict[Fault, int], battery_mv: int | None = None, *,
             sms_seen_ms: int | None = None) -> None:
        """A device's state at start; `active` may carry each fault's start time (ms)."""
        health = Health(max(last_seen_ms or 0, self._started_ms), every_s or self.settings.default_every_s,
                        set(active), battery_mv)
        health.heard_ms = last_seen_ms or 0
        health.sms_ms = sms_seen_ms or 0
        if isinstance(active, dict) and Fault.OFFLINE in active:
            health.offline_since_ms = active[Fault.OFFLINE]
        # A sticky fault active at start-up runs its hour from now: when it last happened is not kept.
        health.last_occurrence_ms = {f: self._started_ms for f in STICKY if f in active}
        self._devices[device_id] = health

    def sync(self, device_id: str, last_seen_ms: int | None, every_s: int | None, active: dict[Fault, int],
             battery_mv: int | None, *, sms_seen_ms: int | None = None) -> None:
        """Take a device's state from a database other gateway instances share: the latest
        message any of them saw, and the faults active there with their start (the database
        decides which fault changes count, store._write_faults). A sticky fault first seen here
        runs its hour from now. An offline fault that started before the device's latest message
        (its will reached one instance, its next heartbeat another that did not know yet) is
        cleared by the next `tick`. The latest SMS any of them took counts for the backup path."""
        health = self._devices.get(device_id)
        if health is None:
            self.load(device_id, last_seen_ms, every_s, active, battery_mv, sms_seen_ms=sms_seen_ms)
            return
        health.sms_ms = max(health.sms_ms, sms_seen_ms or 0)
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

    def offline(self, device_id: str) -> bool:
        """Whether the device's offline fault (its MQTT path) is active."""
        health = self._devices.get(device_id)
        return health is not None and Fault.OFFLINE in health.active

    def forget(self, device_id: str) -> None:
        self._devices.pop(device_id, None)
        self._sms_expected.pop(device_id, None)

    def expect_sms(self, device_id: str, expected: bool) -> None:
        """The device has a phone registered (True) or not (False): only a device with a phone can
        be heard by SMS, so only its SMS silence is a fault. A newly expected device's silence
        counts from the next check; one expected already keeps its count."""
        if not expected:
            self._sms_expected.pop(device_id, None)
        elif device_id not in self._sms_expected:
            self._sms_expected[device_id] = None

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
        changes = self._set(device_id, health, Fault.OFFLINE, False, now_ms, {"reason": "message received"})
        return changes + self._paths(device_id, health, now_ms)

    def sms_seen(self, device_id: str, now_ms: int) -> list[FaultChange]:
        """A valid SMS from the device (an alarm or the periodic test): the backup path works. It
        says nothing about MQTT, so an offline fault stays; the device is then on its backup path."""
        health = self._health(device_id, now_ms)
        health.sms_ms = max(health.sms_ms, now_ms)
        return self._paths(device_id, health, now_ms)

    def _paths(self, device_id: str, health: Health, now_ms: int) -> list[FaultChange]:
        """on_backup_path and backup_path_down as they follow from both paths' last success."""
        every_ms = self.sms_test_every_s * 1000
        offline = Fault.OFFLINE in health.active
        if every_ms:
            # With the same slack as backup_path_down: a test SMS that comes a little after its
            # interval (a retry, a slow SMS centre) must not clear and raise the fault every day.
            sms_up = health.sms_ms > 0 and now_ms - health.sms_ms <= backup_down_after_ms(self.sms_test_every_s)
        else:  # no periodic test: only an SMS since MQTT was lost shows the backup path works
            since = health.offline_since_ms
            sms_up = health.sms_ms > 0 and since is not None and health.sms_ms >= since
        times = {"last_mqtt_ms": health.heard_ms or None, "last_sms_ms": health.sms_ms or None}
        on_backup = offline and sms_up
        reason = ("offline on MQTT, heard by SMS" if on_backup else
                  "heard on MQTT again" if not offline else "no SMS within the test interval")
        changes = self._set(device_id, health, Fault.ON_BACKUP_PATH, on_backup, now_ms, {"reason": reason, **times})
        down = False
        if device_id in self._sms_expected and every_ms:
            counting = self._sms_expected[device_id]
            if counting is None:
                counting = self._sms_expected[device_id] = now_ms
            limit_ms = backup_down_after_ms(self.sms_test_every_s)
            if Fault.BACKUP_PATH_DOWN in health.active:
                # Cleared by an SMS, not by a restart: the count starting again at our start
                # must not end a fault that was active before it.
                down = now_ms - health.sms_ms > limit_ms
            else:
                # Silence while the gateway was down, or before the phone was registered, is
                # not counted (as for offline); the SMS centre keeps what was sent meanwhile for the
                # message's validity period (3GPP TS 23.040 §9.2.3.12) and delivers it later.
                down = now_ms - max(health.sms_ms, counting) > limit_ms
            detail = ({"reason": f"no SMS for {limit_ms // 1000} s", "test_every_s": self.sms_test_every_s, **times}
                      if down else {"reason": "SMS received", **times})
        else:
            detail = {"reason": "no phone registered or no SMS test", **times}
        return changes + self._set(device_id, health, Fault.BACKUP_PATH_DOWN, down, now_ms, detail)

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
        changes = self._set(device_id, health, Fault.OFFLINE, True, now_ms,
                            {"reason": "connection lost (last will)", "last_seen_ms": health.last_seen_ms})
        return changes + self._paths(device_id, health, now_ms)

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
            changes += self._paths(device_id, health, now_ms)
        return changes

    def battery_mv(self, device_id: str) -> int | None:
        """The battery voltage of the device's latest heartbeat, if it reported one."""
        health = self._devices.get(device_id)
        return None if health is None else health.battery_mv

    def online(self) -> int:
        return sum(1 for h in self._devices.values() if Fault.OFFLINE not in h.active)

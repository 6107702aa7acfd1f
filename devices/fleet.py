"""The fleet simulator: many virtual buttons, each running the firmware core (siagafw.app.Device),
stepped by one scheduler thread, with scripted scenarios.

A thread per button would not scale to hundreds of buttons on two cores. Here every device is
configured with `loop_ms = 0` (a step never waits for the network) and one thread steps them all
in rounds of `round_ms`. 100 ms is fine resolution next to a 1.5 s long press. Presses, power cuts
and returns are timed actions carried out by that same thread, so no device is touched from two
threads.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from siagafw.app import Device
from siagafw.button import IDLE

from .virtual import Listener, VirtualHal


@dataclass
class ButtonLog:
    """What one virtual button did, from its own events."""

    alarms: list[int] = field(default_factory=list)      # sequence numbers raised, in order
    delivered: set[int] = field(default_factory=set)     # acknowledged "received" by the gateway
    states: dict[int, str] = field(default_factory=dict)  # latest ack state per alarm
    shown: str = ""                                       # what the indicator shows now
    presses: int = 0
    cancels: int = 0


class Fleet:
    def __init__(self, configs: Iterable[dict[str, Any]], state_root: Path, *, round_ms: int = 100,
                 listener: Listener | None = None) -> None:
        self.round_ms = round_ms
        self._listener = listener
        self.log: dict[str, ButtonLog] = {}
        self.devices: dict[str, Device] = {}
        self.hals: dict[str, VirtualHal] = {}
        for cfg in configs:
            device_id = cfg["dev"]
            hal = VirtualHal(device_id, self._record)
            self.hals[device_id] = hal
            self.log[device_id] = ButtonLog()
            state = state_root / device_id
            state.mkdir(parents=True, exist_ok=True)
            self.devices[device_id] = Device(hal, {**cfg, "loop_ms": 0}, str(state))
        self._actions: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="siaga-fleet", daemon=True)
        self.rounds = 0

    # ------------------------------------------------------------ events from the buttons

    def _record(self, device_id: str, name: str, detail: str) -> None:
        entry = self.log[device_id]
        words = dict(w.split("=", 1) for w in detail.split() if "=" in w)
        if name == "indicate":
            entry.shown = detail
        elif name == "alarm":
            entry.alarms.append(int(words["seq"]))
        elif name == "delivered":
            entry.delivered.add(int(words["seq"]))
        elif name == "ack":
            entry.states[int(words["seq"])] = words.get("state", "")
        elif name == "cancelled":
            entry.cancels += 1
        if self._listener is not None:
            self._listener(device_id, name, detail)

    # ------------------------------------------------------------ the scheduler

    def start(self) -> Fleet:
        self._thread.start()
        return self

    def at(self, delay_s: float, action: Callable[[], None]) -> None:
        """Run action in the scheduler thread after delay_s."""
        with self._lock:
            heapq.heappush(self._actions, (time.monotonic() + delay_s, next(self._order), action))

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            while True:
                with self._lock:
                    if not self._actions or self._actions[0][0] > started:
                        break
                    _, _, action = heapq.heappop(self._actions)
                action()
            for device in self.devices.values():
                device.step()
            self.rounds += 1
            self._stop.wait(max(0.0, self.round_ms / 1000 - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        for device in self.devices.values():
            device.mqtt.disconnect()

    # ------------------------------------------------------------ what people and power do

    def press(self, device_id: str, hold_s: float = 2.0, button: str = "sos", delay_s: float = 0.0) -> None:
        hal = self.hals[device_id]

        def down() -> None:
            hal.held.add(button)
            self.log[device_id].presses += 1

        self.at(delay_s, down)
        self.at(delay_s + hold_s, lambda: hal.held.discard(button))

    def power_cut(self, device_ids: Iterable[str], delay_s: float = 0.0) -> None:
        """The buttons lose power and network together: no goodbye to the broker, so it publishes
        each one's last will."""
        ids = list(device_ids)

        def cut() -> None:
            for device_id in ids:
                self.hals[device_id].link_up = False
                self.devices[device_id].mqtt.close()

        self.at(delay_s, cut)

    def restore(self, device_ids: Iterable[str], delay_s: float = 0.0) -> None:
        ids = list(device_ids)

        def back() -> None:
            for device_id in ids:
                self.hals[device_id].link_up = True

        self.at(delay_s, back)

    def settled(self) -> bool:
        """No scripted action left, no button held down, and none in its long press or cancel
        window: every press has become an alarm or been dropped as too short."""
        with self._lock:
            if self._actions:
                return False
        return (not any(hal.held for hal in self.hals.values())
                and all(d.buttons.state == IDLE for d in self.devices.values()))

    def wait_settled(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.settled():
            if time.monotonic() > deadline:
                raise TimeoutError(f"fleet still busy after {timeout_s} s")
            time.sleep(0.1)

    # ------------------------------------------------------------ reading the outcome

    def raised(self) -> dict[str, list[int]]:
        return {d: list(entry.alarms) for d, entry in self.log.items() if entry.alarms}

    def undelivered(self) -> dict[str, list[int]]:
        return {d: [s for s in entry.alarms if s not in entry.delivered]
                for d, entry in self.log.items() if set(entry.alarms) - entry.delivered}

    def shown(self) -> Counter[str]:
        return Counter(entry.shown for entry in self.log.values())


# ---------------------------------------------------------------- scenarios

@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    duration_s: float
    description: str


def quiet_day(fleet: Fleet, rng: random.Random, duration_s: float = 60.0) -> Plan:
    """Heartbeats all along, a few real alarms, a few presses taken back in the cancel window."""
    ids = sorted(fleet.devices)
    for device_id in rng.sample(ids, max(1, len(ids) // 50)):
        fleet.press(device_id, hold_s=2.0, delay_s=rng.uniform(0, duration_s * 0.8))
    for device_id in rng.sample(ids, max(1, len(ids) // 100)):
        start = rng.uniform(0, duration_s * 0.8)
        fleet.press(device_id, hold_s=2.0, delay_s=start)
        fleet.press(device_id, hold_s=0.3, delay_s=start + 2.5)   # pressed again: cancelled
    return Plan("quiet-day", duration_s, "heartbeats, about 2 % of buttons alarm, 1 % cancel")


def disaster(fleet: Fleet, rng: random.Random, duration_s: float = 20.0, share: float = 0.8,
             window_s: float = 8.0) -> Plan:
    """An earthquake or flood: most buttons pressed within seconds, many of them again and again."""
    ids = sorted(fleet.devices)
    for device_id in rng.sample(ids, int(len(ids) * share)):
        t = rng.uniform(0, window_s)
        for _ in range(rng.choice((1, 1, 2, 3))):
            fleet.press(device_id, hold_s=rng.uniform(1.7, 2.5), delay_s=t)
            t += rng.uniform(3.5, 6.0)   # after the first press ends and its cancel window has run
    # The last repeat starts by window_s + 2 x 6 s and is held up to 2.5 s.
    return Plan("disaster", max(duration_s, window_s + 14.5),
                f"{share:.0%} of buttons pressed within {window_s:g} s, many repeatedly")


def power_cut(fleet: Fleet, rng: random.Random, duration_s: float = 40.0, share: float = 0.3,
              out_s: float = 15.0) -> Plan:
    """A district loses power: a share of the buttons go offline together and come back later."""
    ids = sorted(fleet.devices)
    cut = rng.sample(ids, int(len(ids) * share))
    fleet.power_cut(cut, delay_s=2.0)
    fleet.restore(cut, delay_s=2.0 + out_s)
    return Plan("power-cut", duration_s, f"{len(cut)} buttons lose power for {out_s:g} s")


SCENARIOS: dict[str, Callable[..., Plan]] = {"quiet-day": quiet_day, "disaster": disaster, "power-cut": power_cut}

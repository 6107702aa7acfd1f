"""The incident layer of deduplication (docs/gateway.md, step 5): alarms of one site within a window are one
incident. Pure: the caller supplies times and persists what `assign` returns.

A site is what the registry says a device belongs to (a market with four buttons is one site); a
device without a site is a site of its own. Repeated presses of one button therefore become "pressed
again, N times", and presses of several buttons at one place become one incident with several
sources, instead of a screen full of separate alarms for one emergency.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Group:
    id: int
    site: str
    opened_ms: int
    last_ms: int
    presses: int = 0
    sources: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Assignment:
    group_id: int
    press_count: int           # this alarm's number within the group, 1 for the first
    sources: tuple[str, ...]   # the group's devices so far, in order of their first alarm
    group: Group               # the group's state after this alarm, to persist


class Grouper:
    def __init__(self, window_ms: int, next_id: int = 1, open_groups: list[Group] | None = None) -> None:
        if window_ms < 0:
            raise ValueError("window must not be negative")
        self.window_ms = window_ms
        self._next_id = next_id
        self._open: dict[str, Group] = {g.site: g for g in open_groups or []}

    def assign(self, site: str, device_id: str, now_ms: int) -> Assignment:
        """Put one new alarm into the open group of its site, or open a group for it.

        The window runs from the group's latest alarm, so a button pressed every two minutes for
        half an hour stays one incident; a press after a quiet window opens a new one.
        """
        group = self._open.get(site)
        if group is None or now_ms - group.last_ms > self.window_ms:
            group = Group(self._next_id, site, now_ms, now_ms)
            self._next_id += 1
            self._open[site] = group
        group.last_ms = max(group.last_ms, now_ms)
        group.presses += 1
        if device_id not in group.sources:
            group.sources.append(device_id)
        return Assignment(group.id, group.presses, tuple(group.sources), group)

    def expire(self, now_ms: int) -> None:
        """Forget groups whose window has passed (bounds memory; they could not be joined anyway)."""
        for site in [s for s, g in self._open.items() if now_ms - g.last_ms > self.window_ms]:
            del self._open[site]

    def __len__(self) -> int:
        return len(self._open)

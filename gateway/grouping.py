"""The incident layer of deduplication (docs/gateway.md, step 5): alarms of one site within a window are one
incident. Pure: `extend` is the rule, applied by the store inside the intake transaction to the
site's newest group as the database holds it (so that several gateway instances agree).

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


def extend(group: Group | None, site: str, device_id: str, now_ms: int, window_ms: int) -> Group:
    """The group a new alarm of `site` joins, after joining: `group` (the site's newest) if the
    alarm comes within the window of its latest alarm, else a new group with id 0 (for the caller
    to number). The window runs from the group's latest alarm, so a button pressed every two
    minutes for half an hour stays one incident; a press after a quiet window opens a new one."""
    if group is None or now_ms - group.last_ms > window_ms:
        group = Group(0, site, now_ms, now_ms)
    else:
        group = Group(group.id, group.site, group.opened_ms, group.last_ms, group.presses, list(group.sources))
    group.last_ms = max(group.last_ms, now_ms)
    group.presses += 1
    if device_id not in group.sources:
        group.sources.append(device_id)
    return group

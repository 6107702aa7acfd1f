"""What a committed write changed, as the processes of one PostgreSQL database tell each other
(NOTIFY on CHANGES_CHANNEL inside the writing transaction; live.Relay listens)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from ..domain import parse_rfc3339, rfc3339

# The PostgreSQL channel the processes of one database tell each other about their changes on.
CHANGES_CHANNEL = "siaga_cc_changes"
# PostgreSQL refuses a NOTIFY payload of 8000 bytes or more; a larger change goes out in parts.
_PAYLOAD_MAX = 7800
ChangeKind = Literal["incident", "escalation", "fault"]
# Background loops that a change gives work to: the leader (cluster.Leadership) wakes them at once.
Wake = Literal["callbacks", "webhooks", "escalation"]


@dataclass(frozen=True, slots=True)
class FaultNote:
    """A fault report as the console's `fault` event carries it."""

    device_id: str
    fault: str
    active: bool
    at: datetime


@dataclass(frozen=True, slots=True)
class Change:
    """What a committed write changed, told to the other processes of a shared database (live.Relay).
    It carries ids, not rows: the listener reads the incidents itself, so a payload stays small
    whatever an incident holds; the fault events are small enough to carry whole."""

    origin: str  # Store.origin of the process that made it: that process has published it already
    kind: ChangeKind
    incidents: tuple[int, ...] = ()
    faults: tuple[FaultNote, ...] = ()
    wake: tuple[Wake, ...] = ()

    def payloads(self) -> Iterator[str]:
        """The change as NOTIFY payloads under PostgreSQL's size limit: split in halves until each
        part fits."""
        body = {"o": self.origin, "k": self.kind, "w": list(self.wake), "i": list(self.incidents),
                "f": [[f.device_id, f.fault, f.active, rfc3339(f.at)] for f in self.faults]}
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        parts = len(self.incidents) + len(self.faults)
        if len(text.encode()) <= _PAYLOAD_MAX or parts <= 1:
            yield text
            return
        half_i, half_f = len(self.incidents) // 2, len(self.faults) // 2
        for part in (
            Change(self.origin, self.kind, self.incidents[:half_i], self.faults[:half_f], self.wake),
            Change(self.origin, self.kind, self.incidents[half_i:], self.faults[half_f:], self.wake),
        ):
            if part.incidents or part.faults:
                yield from part.payloads()

    @classmethod
    def decode(cls, payload: str) -> Change:
        """Raises ValueError (or KeyError, TypeError) for a payload that is not a change."""
        body = json.loads(payload)
        kind = body["k"]
        if kind not in ("incident", "escalation", "fault"):
            raise ValueError(f"unknown change kind {kind!r}")
        wake = tuple(w for w in body.get("w", ()) if w in ("callbacks", "webhooks", "escalation"))
        return cls(
            origin=str(body["o"]),
            kind=kind,
            incidents=tuple(int(n) for n in body.get("i", ())),
            faults=tuple(FaultNote(str(d), str(f), bool(a), parse_rfc3339(at)) for d, f, a, at in body.get("f", ())),
            wake=wake,
        )

"""Per-device anti-replay window over sequence numbers (protocol.md §5).

Like the IPsec window of RFC 4303 §3.4.3: the highest accepted number and a bitmap of the WINDOW
numbers below it. Clock-free, because buttons may have no clock. Pure: the caller persists
(high, bits) together with the message it accepted, in one transaction.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

WINDOW = 64
_MASK = (1 << WINDOW) - 1


class Verdict(enum.Enum):
    NEW = "new"
    SEEN = "seen"          # inside the window and already accepted: a duplicate
    TOO_OLD = "too_old"    # below the window: a duplicate only if the store already has it


@dataclass(slots=True)
class ReplayWindow:
    high: int = -1   # highest accepted sequence number, -1 before the first
    bits: int = 0    # bit i set: high - i accepted (bit 0 is high itself)

    def check(self, seq: int) -> Verdict:
        if seq > self.high:
            return Verdict.NEW
        offset = self.high - seq
        if offset >= WINDOW:
            return Verdict.TOO_OLD
        return Verdict.SEEN if self.bits >> offset & 1 else Verdict.NEW

    def accept(self, seq: int) -> None:
        if seq > self.high:
            shift = seq - self.high
            self.bits = ((self.bits << shift) | 1) & _MASK if self.high >= 0 else 1
            self.high = seq
        else:
            offset = self.high - seq
            if offset < WINDOW:
                self.bits |= 1 << offset

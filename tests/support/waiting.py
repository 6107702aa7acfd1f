"""Bounded waiting for something that happens in another process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(fetch: Callable[[], T], timeout_s: float = 15.0, what: str = "condition", interval_s: float = 0.05) -> T:
    """Call fetch until it returns something truthy and return that; fail the test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s} s (last value {value!r})")
        time.sleep(interval_s)

"""The anti-replay window, checked against a model that remembers every number."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from siaga.gateway.replay import WINDOW, ReplayWindow, Verdict


def test_window_basics() -> None:
    w = ReplayWindow()
    assert w.check(0) is Verdict.NEW
    w.accept(5)
    assert w.check(5) is Verdict.SEEN
    assert w.check(4) is Verdict.NEW          # overtaken, still acceptable once
    w.accept(4)
    assert w.check(4) is Verdict.SEEN
    w.accept(5 + WINDOW)
    assert w.check(5) is Verdict.TOO_OLD
    assert w.check(6) is Verdict.NEW


@given(st.lists(st.integers(0, 300), max_size=200))
def test_window_agrees_with_a_model_that_remembers_everything(seqs: list[int]) -> None:
    w = ReplayWindow()
    seen: set[int] = set()
    for s in seqs:
        verdict = w.check(s)
        high = max(seen, default=-1)
        if s in seen:
            assert verdict in (Verdict.SEEN, Verdict.TOO_OLD)
        elif s > high or high - s < WINDOW:
            assert verdict is Verdict.NEW
        else:
            assert verdict is Verdict.TOO_OLD
        if verdict is Verdict.NEW:
            w.accept(s)
            seen.add(s)
        # Never accepts a number twice, whatever the order.
        assert w.high == max(seen, default=-1)

"""The gateway's pure decision makers: incident grouping, supervision, flood limit, circuit breaker."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from siaga.gateway.grouping import Group, extend
from siaga.gateway.limits import BreakerState, CircuitBreaker, FloodLimiter
from siaga.gateway.supervision import Fault, SupervisionSettings, Supervisor

WINDOW_MS = 300_000


class Grouper:
    """The store's use of `extend`, with the database's newest group per site kept in a dict."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.latest: dict[str, Group] = {}
        self.numbers = 0

    def assign(self, site: str, device_id: str, now_ms: int) -> Group:
        group = extend(self.latest.get(site), site, device_id, now_ms, self.window_ms)
        if group.id == 0:
            self.numbers += 1
            group.id = self.numbers
        self.latest[site] = group
        return group


def test_repeated_presses_of_one_button_become_one_incident() -> None:
    g = Grouper(WINDOW_MS)
    first = g.assign("btn-1", "btn-1", 0)
    again = g.assign("btn-1", "btn-1", 120_000)
    third = g.assign("btn-1", "btn-1", 400_000)   # within the window of the previous press
    assert first.id == again.id == third.id
    assert [first.presses, again.presses, third.presses] == [1, 2, 3]
    later = g.assign("btn-1", "btn-1", 400_000 + WINDOW_MS + 1)
    assert later.id != first.id
    assert later.presses == 1


def test_buttons_of_one_site_are_linked_and_others_are_not() -> None:
    g = Grouper(WINDOW_MS)
    a = g.assign("pasar-baru", "btn-a", 0)
    b = g.assign("pasar-baru", "btn-b", 10_000)
    c = g.assign("btn-c", "btn-c", 20_000)
    assert a.id == b.id != c.id
    assert b.sources == ["btn-a", "btn-b"]
    assert c.sources == ["btn-c"]


alarms = st.lists(st.tuples(st.sampled_from(["s1", "s2", "s3"]), st.sampled_from(["d1", "d2", "d3"]),
                            st.integers(0, 2_000_000)), max_size=60)


@given(alarms)
def test_grouping_agrees_with_its_definition(events: list[tuple[str, str, int]]) -> None:
    """Sorted by time, two consecutive alarms of a site share a group exactly when they are at most
    one window apart; groups never span sites; press counts run 1, 2, 3 within a group."""
    events = sorted(events, key=lambda e: e[2])
    g = Grouper(WINDOW_MS)
    out = [(site, dev, t, g.assign(site, dev, t)) for site, dev, t in events]
    last: dict[str, tuple[int, int]] = {}
    counts: dict[int, int] = {}
    site_of: dict[int, str] = {}
    for site, dev, t, a in out:
        if site in last:
            prev_t, prev_group = last[site]
            assert (a.id == prev_group) == (t - prev_t <= WINDOW_MS)
        assert site_of.setdefault(a.id, site) == site
        counts[a.id] = counts.get(a.id, 0) + 1
        assert a.presses == counts[a.id]
        assert dev in a.sources
        last[site] = (t, a.id)


def test_supervisor_offline_after_missed_heartbeats_and_back() -> None:
    s = Supervisor(SupervisionSettings(missed_heartbeats=3), started_ms=0)
    assert s.heartbeat("d", 0, every_s=10, battery_mv=4000, tamper=False) == []
    assert s.tick(30_000) == []                  # exactly three intervals: not yet
    (change,) = s.tick(30_001)
    assert (change.fault, change.active) == (Fault.OFFLINE, True)
    assert s.tick(40_000) == []                  # reported once, not every tick
    (back,) = s.heartbeat("d", 41_000, 10, 4000, False)
    assert (back.fault, back.active) == (Fault.OFFLINE, False)


def test_supervisor_gives_devices_a_grace_period_after_gateway_start() -> None:
    s = Supervisor(SupervisionSettings(missed_heartbeats=3), started_ms=1_000_000)
    s.load("d", last_seen_ms=0, every_s=10, active=set())  # last heard of long before the restart
    assert s.tick(1_000_000 + 29_000) == []
    assert [c.fault for c in s.tick(1_000_000 + 31_000)] == [Fault.OFFLINE]


def test_an_offline_fault_another_instance_started_is_cleared_by_a_later_message() -> None:
    """Two instances: the will reached the other one (the database says offline since 5,000), the
    next heartbeat reached this one before it knew, so `heartbeat` had nothing to clear; the
    database's record of that heartbeat (last seen 6,000) makes the next tick clear it once."""
    s = Supervisor(SupervisionSettings(missed_heartbeats=3), started_ms=0)
    s.load("d", last_seen_ms=4_000, every_s=10, active={})
    assert s.heartbeat("d", 6_000, 10, 4000, False) == []
    s.sync("d", 6_000, 10, {Fault.OFFLINE: 5_000}, 4000)
    (back,) = s.tick(7_000)
    assert (back.fault, back.active) == (Fault.OFFLINE, False)
    assert s.tick(8_000) == []


def test_an_offline_fault_from_before_a_restart_stays_until_the_device_speaks() -> None:
    s = Supervisor(SupervisionSettings(missed_heartbeats=3), started_ms=100_000)
    s.load("d", last_seen_ms=4_000, every_s=10, active={Fault.OFFLINE: 5_000})
    assert s.tick(101_000) == []  # still offline: nothing was heard since it started
    s.sync("d", 4_000, 10, {Fault.OFFLINE: 5_000}, None)
    assert s.tick(102_000) == []
    (back,) = s.heartbeat("d", 103_000, 10, 4000, False)
    assert (back.fault, back.active) == (Fault.OFFLINE, False)


def test_supervisor_battery_hysteresis_and_tamper() -> None:
    s = Supervisor(SupervisionSettings(low_battery_mv=3400, battery_hysteresis_mv=150), started_ms=0)
    changes = s.heartbeat("d", 0, 60, 3300, True)
    assert {(c.fault, c.active) for c in changes} == {(Fault.LOW_BATTERY, True), (Fault.TAMPER, True)}
    assert s.heartbeat("d", 1, 60, 3500, True) == []             # inside the hysteresis band
    changes = s.heartbeat("d", 2, 60, 3550, False)
    assert {(c.fault, c.active) for c in changes} == {(Fault.LOW_BATTERY, False), (Fault.TAMPER, False)}


def test_flood_limiter_isolates_devices() -> None:
    f = FloodLimiter(rate_per_s=2, burst=5)
    assert [f.allow("noisy", 0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert f.allow("quiet", 0)                   # another device is untouched
    assert f.allow("noisy", 500)                 # one token back after 0.5 s at 2/s
    assert not f.allow("noisy", 500)


def test_circuit_breaker_opens_probes_and_closes() -> None:
    b = CircuitBreaker(threshold=3, cooldown_s=1.0, max_cooldown_s=8.0, rng=random.Random(0))
    for t in range(3):
        assert b.allow(t)
        b.failure(t)
    assert b.state is BreakerState.OPEN
    assert not b.allow(10)
    assert 500 <= b.retry_at_ms - 2 <= 1000
    assert b.allow(b.retry_at_ms)
    assert b.state is BreakerState.HALF_OPEN
    first_retry = b.retry_at_ms
    b.failure(first_retry)                       # the probe failed: open again, longer
    assert b.state is BreakerState.OPEN
    assert b.retry_at_ms - first_retry >= 1000
    assert b.allow(b.retry_at_ms)
    b.success()
    assert b.state is BreakerState.CLOSED
    assert b.allow(b.retry_at_ms + 1)

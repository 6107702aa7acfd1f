"""Several command center processes as one command center, and state reports to a group of gateways.

Two real command center processes share one PostgreSQL database (the private server of
tests/support/postgres.py) and one listening port (SO_REUSEPORT); each also has a port of its own,
so the test can address each one. A real headless Chromium shows the console of process A while an
alarm arrives at process B: it must appear on A's console within a second (LISTEN/NOTIFY between the
processes). An operator's acknowledgement produces exactly one state report to the gateway, whichever
process it was made in, because only the elected process sends; when that process stops, the other
takes over. (One scenario rather than several tests: starting the pair is most of its cost.)

The gateway group: a command center configured with three gateway instances, the first refusing
connections and the second accepting them and never answering, delivers to the third, and then goes
to the third first. A 5xx passes a report on to the next instance too; a 404 is the group's answer.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from siaga.commandcenter.callbacks import CallbackSender
from siaga.commandcenter.config import CallbackSettings
from siaga.commandcenter.domain import Action
from siaga.commandcenter.store import NewAlarm, Store
from siaga.pgserver import PostgresProcess
from tests.support.ccproc import CommandCenterProcess
from tests.support.net import StalledServer, free_port
from tests.test_commandcenter import GATEWAY_TOKEN, GatewayStandIn, alarm, delivered, get_incident, operator_action

# The browser test takes its fixtures from tests/test_console_browser.py, whose rule holds here too:
# without Chromium it is skipped, and on CI importing that module fails the run. The other tests of
# this file need no browser.
HAS_BROWSER = Path("/usr/bin/chromium").exists() or bool(os.environ.get("CI"))
if HAS_BROWSER:
    from tests.test_console_browser import Console, browser, open_console, pw_expect  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.e2e]

_databases = itertools.count(1)
LEADER_LINE = "this process now runs the background loops"


def post_alarm(cc: CommandCenterProcess, seq: int, device: str) -> str:
    body = alarm(seq=seq, device=device)
    r = httpx.post(f"{cc.url}/api/v1/alarms", json=body, headers=cc.intake_headers(body["event_id"]), timeout=5)
    assert r.status_code == 201, r.text
    incident: str = r.json()["incident_id"]
    return incident


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.02)
    return time.monotonic() - started


class Cluster:
    """Two processes of one command center: one database, one shared port, the same tokens."""

    def __init__(self, tmp_path: Path, dsn: str, gateway_url: str) -> None:
        shared = free_port()
        self.a = CommandCenterProcess(tmp_path, gateway_url, GATEWAY_TOKEN, db_url=dsn, shared_port=shared, name="cc-a")
        self.b = CommandCenterProcess(tmp_path, gateway_url, GATEWAY_TOKEN, db_url=dsn, shared_port=shared, name="cc-b",
                                      secrets_from=self.a)

    def start(self) -> None:
        """Both at once, as a service manager starts them (and in half the time)."""
        with ThreadPoolExecutor(2) as pool:
            for started in [pool.submit(cc.start) for cc in (self.a, self.b)]:
                started.result()

    def stop(self) -> None:
        for cc in (self.a, self.b):
            cc.stop()

    def leaders(self) -> list[CommandCenterProcess]:
        return [cc for cc in (self.a, self.b) if LEADER_LINE in cc.log()]


@pytest.fixture
def gateway() -> Iterator[GatewayStandIn]:
    with GatewayStandIn() as gw:
        yield gw


@pytest.fixture
def cluster(tmp_path: Path, postgres: PostgresProcess, gateway: GatewayStandIn) -> Iterator[Cluster]:
    dsn = postgres.create_database(f"cluster{next(_databases)}")
    both = Cluster(tmp_path, dsn, gateway.url)
    try:
        both.start()
        yield both
    finally:
        both.stop()


@pytest.mark.skipif(not HAS_BROWSER, reason="/usr/bin/chromium is not installed (apt-get install chromium)")
def test_two_processes_behind_one_port_show_each_others_alarms_live_and_report_once(
    cluster: Cluster, gateway: GatewayStandIn, open_console: Callable[[CommandCenterProcess], Console]
) -> None:
    a, b = cluster.a, cluster.b
    # One address for both: the kernel hands each connection to one of them.
    for _ in range(6):
        assert httpx.get(f"{a.shared_url}/health", timeout=5).status_code == 200
    wait_until(lambda: len(cluster.leaders()) == 1, 5, "one process elected")

    console = open_console(a).sign_in(a.operator_name, a.operator_token)
    console.page.evaluate("window.__notReloaded = true")
    started = time.monotonic()
    incident = post_alarm(b, 1, "jkt-gambir-0401")  # at process B
    row = console.row(incident)
    row.wait_for(timeout=10_000)  # generous: the assertion below is the measure
    appeared_s = time.monotonic() - started
    print(f"alarm at process B on process A's console after {appeared_s * 1000:.0f} ms")
    assert appeared_s < 1.0, f"appeared after {appeared_s:.2f} s"
    assert console.page.evaluate("window.__notReloaded") is True

    # Acknowledged in A's console: one state report, whichever process sends. (Waiting through
    # Playwright first: the page's requests pass the fixture's route handler, which runs only while
    # this thread is inside a Playwright call.)
    row.locator("[data-testid=acknowledge]").click()
    pw_expect(row).to_have_attribute("data-state", "acknowledged")
    [report] = gateway.wait_for(delivered(1))
    assert (report.body["incident_id"], report.body["state"]) == (incident, "acknowledged")
    # An action at B on another incident: one report too, and A's console shows it live.
    other = post_alarm(a, 2, "jkt-gambir-0402")
    console.row(other).wait_for(timeout=5000)
    assert operator_action(b, other, "acknowledge").status_code == 200
    pw_expect(console.row(other)).to_have_attribute("data-state", "acknowledged")
    gateway.wait_for(delivered(2))
    time.sleep(1.0)  # the other process's sender (if it had one) would have sent by now
    assert sorted((r.body["incident_id"], r.status) for r in gateway.received) == sorted(
        [(incident, 200), (other, 200)]
    )
    console.assert_clean()
    [leader] = cluster.leaders()
    assert leader.log().count(LEADER_LINE) == 1

    # The leader stops: the other process takes over the reports; the shared port still answers.
    survivor = b if leader is a else a
    third = post_alarm(survivor, 3, "jkt-gambir-0403")
    assert leader.stopped_cleanly(leader.stop()), leader.log()
    assert httpx.get(f"{survivor.shared_url}/health", timeout=5).status_code == 200
    assert operator_action(survivor, third, "acknowledge").status_code == 200
    [*_, last] = gateway.wait_for(delivered(3), timeout_s=10)
    assert (last.body["incident_id"], last.body["state"]) == (third, "acknowledged")
    assert LEADER_LINE in survivor.log()
    assert get_incident(survivor, third)["state"] == "acknowledged"


def test_state_reports_go_to_the_first_gateway_instance_that_answers(tmp_path: Path) -> None:
    timeout_s = 1.5  # request_timeout_s: what waiting on the stalled instance costs
    refusing = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with StalledServer() as stalled, GatewayStandIn() as working:
        with CommandCenterProcess(
            tmp_path,
            gateway_urls=[refusing, f"http://127.0.0.1:{stalled.port}", working.url],
            gateway_token=GATEWAY_TOKEN,
            request_timeout_s=timeout_s,
        ) as cc:
            first = post_alarm(cc, 1, "jkt-gambir-0601")
            started = time.monotonic()
            assert operator_action(cc, first, "acknowledge").status_code == 200
            [report] = working.wait_for(delivered(1))
            took = time.monotonic() - started
            assert report.body["incident_id"] == first
            assert len(stalled.accepted) == 1  # asked once, and given up on after the timeout
            assert timeout_s <= took < timeout_s + 4, took

            # The instance that answered is asked first from now on: no more waiting on the others.
            second = post_alarm(cc, 2, "jkt-gambir-0602")
            started = time.monotonic()
            assert operator_action(cc, second, "acknowledge").status_code == 200
            working.wait_for(delivered(2))
            assert time.monotonic() - started < timeout_s  # asking the stalled one would take that long
            assert len(stalled.accepted) == 1
        assert "delivered (attempt 1) to " + working.url in cc.log()


def test_a_5xx_passes_a_report_on_and_a_404_is_the_groups_answer(tmp_path: Path) -> None:
    # In a thread of its own: this module's browser (Playwright's sync API) holds the main thread's loop.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _five_hundreds_and_a_404(tmp_path)).result()


async def _five_hundreds_and_a_404(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "cc.sqlite3")
    with (
        GatewayStandIn(respond=lambda body: 503) as failing,
        GatewayStandIn(respond=lambda body: 404) as unknown,
        GatewayStandIn() as never_asked,
    ):
        sender = CallbackSender(
            store,
            gateway_urls=[failing.url, unknown.url, never_asked.url],
            gateway_token=GATEWAY_TOKEN,
            settings=CallbackSettings(initial_backoff_s=0.05, max_backoff_s=0.1, idle_poll_s=0.2),
        )
        sender.start()
        try:
            now = datetime.now(UTC)
            new = NewAlarm(event_id="gw-1:jkt-gambir-0701:1", gateway_id="gw-1", device_id="jkt-gambir-0701", seq=1,
                           kind="fire", test=False, lat=-6.17, lon=106.82, address="Jl. Gambir 1", area="31.71.01.1001",
                           raised_at=None, received_at=now, fingerprint="x")
            number = (await store.record_alarm(new, now=now)).incident
            await store.apply_action(number, Action.ACKNOWLEDGE, actor="operator-1", now=now)
            sender.notify()
            deadline = time.monotonic() + 10
            while len(unknown.received) < 3:  # the 404 is retried with backoff, at the same instance
                assert time.monotonic() < deadline, (failing.received, unknown.received)
                await asyncio.sleep(0.02)
        finally:
            await sender.stop()
            pending = await store.pending_callbacks()
            await store.close()
    assert len(failing.received) == 1  # once; then the instance that answered is asked first
    assert never_asked.received == []  # a 404 would be the same from every instance of the group
    assert sender.current_url == unknown.url + "/api/v1/cc/state"
    assert pending == 1  # not delivered: a 4xx is a failure, retried as with one gateway

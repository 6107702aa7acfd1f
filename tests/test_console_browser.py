"""The operator console in a real browser: headless Debian Chromium driven by Playwright, against the
command center as a real process, and for the button flows the whole chain (real Mosquitto, the
gateway, a simulated button publishing signed alarms and reading its ack topic).

The browser may reach only the command center: every other request (map tiles above all) is
aborted, as on a machine without internet, and the console must work all the same.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from siaga import i18n
from siaga.commandcenter.domain import Action
from siaga.commandcenter.store import NewAlarm, NewFault, Store
from tests.support.ccproc import CommandCenterProcess
from tests.support.devices import SimButton
from tests.support.firmware import button as firmware_button
from tests.support.firmware import indicator_states, seq_of
from tests.support.system import System
from tests.test_commandcenter import GatewayStandIn, Received

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
DOCS = Path(__file__).resolve().parent.parent / "docs"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing on CI: install Debian's chromium (scripts/system-deps.sh)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Page, Route, sync_playwright  # noqa: E402
from playwright.sync_api import expect as pw_expect  # noqa: E402

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Console:
    """One browser tab on the console, with what it tried to fetch from elsewhere and its errors."""

    page: Page
    cc: CommandCenterProcess
    blocked: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)

    def sign_in(self, name: str, token: str) -> Console:
        self.page.goto(f"{self.cc.url}/console")
        self.page.fill("#login-name", name)
        self.page.fill("#login-token", token)
        self.page.click("#login-submit")
        self.wait_live()
        return self

    def wait_live(self, timeout_ms: float = 10_000) -> None:
        self.page.locator("[data-testid=connection].conn-up").wait_for(timeout=timeout_ms)

    def row(self, incident_id: str) -> Any:
        return self.page.locator(f"[data-testid=incident-{incident_id}]")

    def row_of_device(self, device_id: str) -> Any:
        return self.page.locator("#incident-list li.incident", has_text=device_id)

    def body_data(self, name: str) -> str | None:
        return self.page.evaluate(f"document.body.dataset.{name} ?? null")

    def assert_clean(self) -> None:
        assert self.page_errors == [], self.page_errors
        assert self.csp_violations == [], self.csp_violations


@pytest.fixture
def open_console(browser: Browser) -> Iterator[Callable[[CommandCenterProcess], Console]]:
    contexts = []

    def opener(cc: CommandCenterProcess) -> Console:
        ctx = browser.new_context(viewport={"width": 1600, "height": 1000}, accept_downloads=True)
        contexts.append(ctx)
        page = ctx.new_page()
        console = Console(page, cc)

        def only_local(route: Route) -> None:
            if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
                route.continue_()
            else:
                console.blocked.append(route.request.url)
                route.abort("internetdisconnected")

        ctx.route("**/*", only_local)
        page.on("pageerror", lambda exc: console.page_errors.append(str(exc)))
        page.on(
            "console",
            lambda msg: console.csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None,
        )
        return console

    yield opener
    for ctx in contexts:
        ctx.close()



def tx(key: str, lang: str = "id", **params: Any) -> str:
    """What the console shows for `key`: Bahasa Indonesia unless the person chose English."""
    return i18n.text("console", key, lang, **params)


def incidents_of(cc: CommandCenterProcess, device_id: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{cc.url}/api/v1/incidents", headers=cc.operator_headers(), timeout=5)
    r.raise_for_status()
    return [i for i in r.json() if i["device_id"] == device_id]


def press(button: SimButton, kind: str = "general") -> int:
    seq, frame = button.alarm_frame(kind)
    button.publish("alarm", frame)
    return seq


# ---- acceptance 1: a press appears live; the operator's actions reach the button -------------------


@pytest.mark.mosquitto
def test_a_press_appears_in_the_open_console_within_a_second_and_acknowledge_reaches_the_button(
    system: System, open_console: Callable[[CommandCenterProcess], Console]
) -> None:
    console = open_console(system.cc).sign_in(system.cc.operator_name, system.cc.operator_token)
    creds = system.new_device("jkt-gambir-0101")
    button = SimButton(creds, system.broker.port).connect()
    try:
        console.page.evaluate("window.__notReloaded = true")
        assert console.row_of_device(creds.device_id).count() == 0

        started = time.monotonic()
        seq = press(button, "medical")
        row = console.row_of_device(creds.device_id)
        row.wait_for(timeout=5000)
        appeared_s = time.monotonic() - started
        print(f"incident row appeared {appeared_s * 1000:.0f} ms after the press was published")
        # Button -> Mosquitto -> gateway (commit, forward) -> command center -> event stream -> page.
        assert appeared_s < 1.0, f"incident appeared after {appeared_s:.2f} s"
        assert console.page.evaluate("window.__notReloaded") is True  # no reload

        [incident] = incidents_of(system.cc, creds.device_id)
        assert row.get_attribute("data-testid") == f"incident-{incident['id']}"
        pw_expect(row).to_have_attribute("data-state", "new")
        pw_expect(row).to_have_class(_contains("state-new"))
        pw_expect(row.locator(".kind")).to_have_text(tx("kind.medical"))
        pw_expect(row.locator(".address")).to_have_text("Jl. Medan Merdeka Barat 12")
        pw_expect(row.locator(".area")).to_contain_text("31.71.01.1001")
        pw_expect(row.locator(".coords")).to_have_text("-6.17539, 106.82715")
        pw_expect(row.locator(".presses")).to_have_text(tx("row.pressed_once"))
        pw_expect(console.page.locator("#alert-banner")).to_be_visible()
        pw_expect(console.page.locator("#count-new")).to_have_text("1")
        assert console.body_data("lastSound") == "new-alarm"

        # The time since the press ticks without any new data.
        elapsed = row.locator("[data-testid=elapsed]")
        before = elapsed.text_content()
        pw_expect(elapsed).not_to_have_text(before or "", timeout=3000)

        button.wait_ack(seq, "received")
        row.locator("[data-testid=acknowledge]").click()
        # The button's ack topic: the gateway's signed "acknowledged" for this very press.
        ack = button.wait_ack(seq, "acknowledged")
        assert ack["inc"] == incident["id"]
        pw_expect(row).to_have_attribute("data-state", "acknowledged")
        pw_expect(console.page.locator("#alert-banner")).to_be_hidden()
        detail = httpx.get(f"{system.cc.url}/api/v1/incidents/{incident['id']}", headers=system.cc.operator_headers())
        assert detail.json()["acknowledged_by"] == system.cc.operator_name

        # Offline map: the tiles were asked for, refused (no internet), and the page says so calmly.
        assert any("tile.openstreetmap.org" in url for url in console.blocked), console.blocked[:3]
        pw_expect(console.page.locator("#map-note")).to_be_visible()
        console.assert_clean()
    finally:
        button.close()


@pytest.mark.mosquitto
def test_dispatch_resolve_false_alarm_and_notes_from_the_console_reach_the_buttons(
    system: System, open_console: Callable[[CommandCenterProcess], Console]
) -> None:
    console = open_console(system.cc).sign_in(system.cc.operator_name, system.cc.operator_token)
    fire = SimButton(system.new_device("jkt-menteng-0201"), system.broker.port).connect()
    prank = SimButton(system.new_device("jkt-senen-0202"), system.broker.port).connect()
    try:
        fire_seq = press(fire, "fire")
        prank_seq = press(prank, "general")
        fire_row = console.row_of_device(fire.device_id)
        prank_row = console.row_of_device(prank.device_id)
        fire_row.wait_for()
        prank_row.wait_for()
        [fire_incident] = incidents_of(system.cc, fire.device_id)

        fire_row.locator("[data-testid=acknowledge]").click()
        fire.wait_ack(fire_seq, "acknowledged")
        select = fire_row.locator("[data-testid=agency-select]")
        pw_expect(select).to_have_value("fire")  # suggested from the alarm's kind
        select.select_option("disaster")
        fire_row.locator("[data-testid=dispatch]").click()
        fire.wait_ack(fire_seq, "dispatched")
        pw_expect(fire_row).to_have_attribute("data-state", "dispatched")
        pw_expect(fire_row).to_contain_text("BPBD")

        fire_row.locator("[data-testid=note]").click()
        fire_row.locator("[data-testid=note-text]").fill("Two units on site, market cleared")
        fire_row.locator("[data-testid=note-save]").click()
        pw_expect(fire_row.locator("form.note-form")).to_have_count(0)

        fire_row.locator("[data-testid=resolve]").click()
        fire.wait_ack(fire_seq, "resolved")
        closed = console.page.locator(f"[data-testid=closed-list] [data-testid=incident-{fire_incident['id']}]")
        pw_expect(closed).to_have_attribute("data-state", "resolved")

        # A false alarm needs a second click to confirm: it must never be a slip of the mouse.
        false_button = prank_row.locator("[data-testid=false-alarm]")
        false_button.click()
        pw_expect(false_button).to_have_text(tx("action.false_alarm_confirm"))
        pw_expect(prank_row).to_have_attribute("data-state", "new")
        false_button.click()
        prank.wait_ack(prank_seq, "false_alarm")

        detail = httpx.get(
            f"{system.cc.url}/api/v1/incidents/{fire_incident['id']}", headers=system.cc.operator_headers()
        ).json()
        assert detail["agency"] == "disaster"
        assert [(h["kind"], h["to_state"], h["actor"]) for h in detail["history"]] == [
            ("state", "new", f"gateway:{system.gateway.gateway_id}"),
            ("state", "acknowledged", "operator-1"),
            ("state", "dispatched", "operator-1"),
            ("note", "dispatched", "operator-1"),
            ("state", "resolved", "operator-1"),
        ]
        assert detail["history"][3]["detail"] == {"note": "Two units on site, market cleared"}
        [prank_incident] = incidents_of(system.cc, prank.device_id)
        assert (prank_incident["state"], prank_incident["closed_by"]) == ("false_alarm", "operator-1")
        console.assert_clean()
    finally:
        fire.close()
        prank.close()


@pytest.mark.mosquitto
def test_not_an_emergency_is_referred_to_lapor_from_the_console_and_the_button_shows_resolved(
    system: System, open_console: Callable[[CommandCenterProcess], Console]
) -> None:
    console = open_console(system.cc).sign_in(system.cc.operator_name, system.cc.operator_token)
    complaint = SimButton(system.new_device("jkt-senen-0203"), system.broker.port).connect()
    try:
        seq = press(complaint, "general")
        row = console.row_of_device(complaint.device_id)
        row.wait_for()
        refer = row.locator("[data-testid=refer]")
        pw_expect(refer).to_have_text(tx("action.refer", channel="LAPOR!"))
        refer.click()
        row.locator("[data-testid=refer-reference]").fill("LPR-2026-0412")
        row.locator("[data-testid=refer-note]").fill("Lampu jalan mati, bukan darurat")
        pw_expect(row).to_have_attribute("data-state", "new")  # the form alone changes nothing
        row.locator("[data-testid=refer-save]").click()
        complaint.wait_ack(seq, "resolved")
        [incident] = incidents_of(system.cc, complaint.device_id)
        closed = console.page.locator(f"[data-testid=closed-list] [data-testid=incident-{incident['id']}]")
        pw_expect(closed).to_have_attribute("data-state", "resolved")
        pw_expect(closed.locator(".state-badge")).to_contain_text("LAPOR! (LPR-2026-0412)")
        assert (incident["state"], incident["referred_to"], incident["referral_ref"], incident["closed_by"]) == (
            "resolved", "LAPOR!", "LPR-2026-0412", "operator-1")
        console.assert_clean()
    finally:
        complaint.close()


# ---- acceptance 2: escalation, visible and by webhook ---------------------------------------------


def post_alarm(cc: CommandCenterProcess, seq: int, device: str, kind: str = "general", **extra: Any) -> str:
    body = {
        "event_id": f"gw-1:{device}:{seq}",
        "gateway_id": "gw-1",
        "device_id": device,
        "seq": seq,
        "kind": kind,
        "test": False,
        "location": {"lat": -6.1766, "lon": 106.819, "address": "Kantor Kelurahan Gambir", "area": "31.71.01.1001"},
        "raised_at": None,
        "received_at": "2026-11-24T03:12:09.412Z",
        **extra,
    }
    r = httpx.post(f"{cc.url}/api/v1/alarms", json=body, headers=cc.intake_headers(body["event_id"]), timeout=5)
    assert r.status_code == 201, r.text
    return r.json()["incident_id"]


def test_an_unacknowledged_alarm_escalates_visibly_and_by_webhook(
    tmp_path: Path, open_console: Callable[[CommandCenterProcess], Console]
) -> None:
    answers = iter([503])  # the first attempt fails: the webhook outbox retries
    with (
        GatewayStandIn(respond=lambda body: next(answers, 200)) as hook,
        CommandCenterProcess(
            tmp_path, escalation_after_s=3, webhook_url=hook.url + "/hooks/siaga", webhook_token="hook-" + "w" * 30
        ) as cc,
    ):
        console = open_console(cc).sign_in(cc.operator_name, cc.operator_token)
        waiting = post_alarm(cc, 1, "jkt-gambir-0301", "medical")
        answered = post_alarm(cc, 2, "jkt-gambir-0302", "fire")
        row = console.row(waiting)
        row.wait_for()
        console.row(answered).locator("[data-testid=acknowledge]").click()
        pw_expect(console.row(answered)).to_have_attribute("data-state", "acknowledged")
        pw_expect(row.locator(".escalated-badge")).to_be_hidden()

        # After the configured 3 s: highlighted, announced, louder, without a reload.
        pw_expect(row).to_have_class(_contains("escalated"), timeout=6000)
        pw_expect(row.locator(".escalated-badge")).to_be_visible()
        pw_expect(console.page.locator("#alert-banner")).to_have_class(_contains("alert-escalated"))
        pw_expect(console.page.locator("#count-escalated")).to_have_text("1")
        assert console.body_data("lastSound") == "escalation"

        [delivered] = [r for r in hook.wait_for(delivered_ok) if r.status == 200]
        assert (delivered.path, delivered.authorization) == ("/hooks/siaga", "Bearer hook-" + "w" * 30)
        event = delivered.body
        assert event["event"] == "incident.escalated"
        assert event["event_id"] == f"{waiting}:escalated"
        assert event["after_s"] == 3
        assert (event["incident"]["id"], event["incident"]["state"]) == (waiting, "new")
        inc = httpx.get(f"{cc.url}/api/v1/incidents/{waiting}", headers=cc.operator_headers()).json()
        waited_s = _seconds_between(inc["created_at"], inc["escalated_at"])
        assert 3 <= waited_s < 4, waited_s
        assert [h["kind"] for h in inc["history"]] == ["state", "escalation"]

        # Once only, and never for the incident that was acknowledged in time.
        time.sleep(2.0)
        assert [r.status for r in hook.received] == [503, 200]
        other = httpx.get(f"{cc.url}/api/v1/incidents/{answered}", headers=cc.operator_headers()).json()
        assert other["escalated_at"] is None
        # Acknowledging ends the alert.
        row.locator("[data-testid=acknowledge]").click()
        pw_expect(console.page.locator("#alert-banner")).to_be_hidden()
        console.assert_clean()


def delivered_ok(received: list[Received]) -> bool:
    return any(r.status == 200 for r in received)


def _seconds_between(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


# ---- roles in the page (the API enforces them too: tests/test_commandcenter_console.py) ------------


def test_an_agency_sees_only_its_incidents_and_answers_its_dispatch_on_its_screen(
    tmp_path: Path, open_console: Callable[[CommandCenterProcess], Console]
) -> None:
    with CommandCenterProcess(tmp_path) as cc:
        to_fire = post_alarm(cc, 1, "jkt-menteng-0401", "fire")
        to_police = post_alarm(cc, 2, "jkt-senen-0402", "crime")
        not_yet = post_alarm(cc, 3, "jkt-gambir-0403", "fire")
        for incident, agency in ((to_fire, "fire"), (to_police, "police")):
            httpx.post(f"{cc.url}/api/v1/incidents/{incident}/acknowledge", headers=cc.operator_headers())
            httpx.post(f"{cc.url}/api/v1/incidents/{incident}/dispatch", headers=cc.operator_headers(),
                       json={"agency": agency})

        console = open_console(cc).sign_in(cc.agency_name, cc.agency_token)
        pw_expect(console.row(to_fire)).to_be_visible()
        pw_expect(console.row(to_police)).to_have_count(0)
        pw_expect(console.row(not_yet)).to_have_count(0)
        row = console.row(to_fire)
        # The agency answers for its own dispatch only: no incident actions, its five buttons instead.
        pw_expect(row.locator("[data-testid=acknowledge], [data-testid=resolve], [data-testid=note]")).to_have_count(0)
        pw_expect(row.locator(".row-actions button")).to_have_count(5)
        pw_expect(row.locator("[data-testid=chip-fire]")).to_have_attribute("data-status", "requested")
        pw_expect(row).to_have_attribute("data-state", "acknowledged")  # nobody has accepted yet
        pw_expect(row.locator("[data-testid=agency-done]")).to_be_enabled()  # steps may be skipped
        row.locator("[data-testid=agency-accepted]").click()
        pw_expect(row.locator("[data-testid=chip-fire]")).to_have_attribute("data-status", "accepted")
        pw_expect(row).to_have_attribute("data-state", "dispatched")
        pw_expect(row.locator("[data-testid=agency-accepted]")).to_be_disabled()  # forward only
        pw_expect(row.locator("[data-testid=agency-declined]")).to_be_enabled()  # not yet set out
        pw_expect(console.page.locator("[data-testid=tab-supervisor]")).to_be_hidden()
        pw_expect(console.page.locator("[data-testid=tab-devices]")).to_be_hidden()
        pw_expect(console.page.locator("#agency-note")).to_contain_text("Damkar")

        # Live: the third incident appears once it is dispatched to the fire brigade.
        httpx.post(f"{cc.url}/api/v1/incidents/{not_yet}/acknowledge", headers=cc.operator_headers())
        httpx.post(f"{cc.url}/api/v1/incidents/{not_yet}/dispatch", headers=cc.operator_headers(),
                   json={"agency": "fire"})
        pw_expect(console.row(not_yet)).to_be_visible()
        pw_expect(console.row(to_police)).to_have_count(0)

        # No truck free for that one: the agency declines on its screen, with the reason, and the
        # incident is back with the room.
        row = console.row(not_yet)
        row.locator("[data-testid=agency-declined]").click()
        row.locator("[data-testid=agency-decline-reason]").fill("Semua unit sedang bertugas")
        row.locator("[data-testid=agency-decline-send]").click()
        pw_expect(row.locator("[data-testid=chip-fire]")).to_have_attribute("data-status", "declined")
        back = httpx.get(f"{cc.url}/api/v1/incidents/{not_yet}", headers=cc.operator_headers()).json()
        assert (back["needs_dispatch"], back["state"]) == (True, "acknowledged")
        assert [(d["agency"], d["status"], d["reason"]) for d in back["dispatches"]] == [
            ("fire", "declined", "Semua unit sedang bertugas")]
        console.assert_clean()


@pytest.mark.mosquitto
def test_two_agencies_answer_on_their_own_screens_and_the_button_light_follows(
    system: System, tmp_path: Path, open_console: Callable[[CommandCenterProcess], Console]
) -> None:
    """Issue 16, acceptance 1: a real button (the firmware under MicroPython) is pressed; the room
    dispatches the fire brigade and search and rescue from the incident panel; each agency accepts,
    sets out, arrives and finishes on its own screen. The button's light follows: acknowledged
    (steady) while both dispatches wait, dispatched (pulsing: help is on the way) from the first
    acceptance, resolved when the last agency is done, and never anything in between."""
    cc = system.cc
    creds, fw = firmware_button(system, tmp_path, "jkt-pasar-0901")
    with fw:
        fw.expect("EVT connected")
        fw.hold(500)
        seq = seq_of(fw.expect("EVT alarm"))
        fw.expect(f"EVT delivered seq={seq}")

        room = open_console(cc).sign_in(cc.operator_name, cc.operator_token)
        row = room.row_of_device(creds.device_id)
        row.locator("[data-testid=acknowledge]").click()
        fw.expect(f"EVT ack seq={seq} state=acknowledged")
        incident = (row.get_attribute("data-testid") or "").removeprefix("incident-")
        row = room.row(incident)  # in the open list now, in the closed list at the end

        row.locator(".row-where").click()
        form = room.page.locator("[data-testid=dispatch-form]")
        for agency in ("fire", "sar"):
            pw_expect(form.locator(f"label:has([data-testid=dispatch-agency-{agency}]) .on-screen")).to_have_count(1)
            form.locator(f"[data-testid=dispatch-agency-{agency}]").check()
        form.locator("[data-testid=dispatch-send]").click()
        for agency in ("fire", "sar"):
            pw_expect(row.locator(f"[data-testid=chip-{agency}]")).to_have_attribute("data-status", "requested")
        pw_expect(row).to_have_attribute("data-state", "acknowledged")  # asked, not yet accepted

        screens = {"fire": open_console(cc).sign_in(cc.agency_name, cc.agency_token),
                   "sar": open_console(cc).sign_in(cc.sar_name, cc.sar_token)}
        for step in ("accepted", "en_route", "on_scene", "done"):
            for agency, screen in screens.items():
                own = screen.row(incident)
                own.locator(f"[data-testid=agency-{step}]").click()
                pw_expect(own.locator(f"[data-testid=chip-{agency}]")).to_have_attribute("data-status", step)
                # The room sees each answer live.
                pw_expect(row.locator(f"[data-testid=chip-{agency}]")).to_have_attribute("data-status", step)
                if (step, agency) == ("accepted", "fire"):
                    fw.expect(f"EVT ack seq={seq} state=dispatched")
                    fw.expect("IND dispatched")
                if (step, agency) == ("done", "fire"):
                    pw_expect(row).to_have_attribute("data-state", "dispatched")  # search and rescue still at work
        fw.expect(f"EVT ack seq={seq} state=resolved")
        fw.expect("IND resolved")

    states = indicator_states(fw)
    assert states[states.index("received"):] == ["received", "acknowledged", "dispatched", "resolved"], states
    detail = httpx.get(f"{cc.url}/api/v1/incidents/{incident}", headers=cc.operator_headers(), timeout=5).json()
    assert detail["state"] == "resolved" and detail["closed_by"] == cc.sar_name
    steps = [(h["agency"], h["to_status"], h["actor"]) for h in detail["dispatch_history"]]
    assert steps == [("fire", "requested", cc.operator_name), ("sar", "requested", cc.operator_name)] + [
        (agency, step, {"fire": cc.agency_name, "sar": cc.sar_name}[agency])
        for step in ("accepted", "en_route", "on_scene", "done") for agency in ("fire", "sar")
    ], steps
    for screen in (room, *screens.values()):
        screen.assert_clean()


def test_a_supervisor_signs_on_dispatches_to_two_agencies_sees_a_decline_and_hands_over(
    tmp_path: Path, open_console: Callable[[CommandCenterProcess], Console]
) -> None:
    """The room's own work in the page: a shift, a second-level escalation, a dispatch to two agencies
    from the incident panel (one answers on its own screen, one was phoned), an agency declining on
    the phone (set by the room on its behalf), and the hand-over."""
    with CommandCenterProcess(tmp_path, extra_toml="[escalation]\nafter_s = 1\nsecond_after_s = 1\n") as cc:
        console = open_console(cc).sign_in(cc.supervisor_name, cc.supervisor_token)
        page = console.page
        page.click("[data-testid=shift-sign-on]")
        pw_expect(page.locator("[data-testid=on-duty]")).to_contain_text(cc.supervisor_name)
        pw_expect(page.locator("[data-testid=shift-sign-on]")).to_be_hidden()

        # Nobody answers for two seconds: escalated twice, and the supervisors' banner names it.
        medical = post_alarm(cc, 1, "jkt-gambir-0701", "medical")
        banner = page.locator("[data-testid=escalation2-banner]")
        pw_expect(banner).to_contain_text(medical, timeout=10_000)
        row = console.row(medical)
        row.locator("[data-testid=acknowledge]").click()
        pw_expect(banner).to_be_hidden()

        # Two agencies at once from the panel: the fire brigade answers on its own screen (it has an
        # account), so its dispatch waits for it; the ambulance service was phoned, so it is accepted.
        row.locator(".row-where").click()
        pw_expect(page.locator("#detail h3")).to_contain_text(medical)
        form = page.locator("[data-testid=dispatch-form]")
        pw_expect(form.locator("label:has([data-testid=dispatch-agency-fire]) .on-screen")).to_have_count(1)
        pw_expect(form.locator("label:has([data-testid=dispatch-agency-ambulance]) .on-screen")).to_have_count(0)
        form.locator("[data-testid=dispatch-agency-fire]").check()
        form.locator("[data-testid=dispatch-agency-ambulance]").check()
        form.locator("[data-testid=dispatch-send]").click()
        pw_expect(row.locator("[data-testid=chip-fire]")).to_have_attribute("data-status", "requested")
        pw_expect(row.locator("[data-testid=chip-ambulance]")).to_have_attribute("data-status", "accepted")
        pw_expect(row).to_have_attribute("data-state", "dispatched")
        pw_expect(page.locator("[data-testid=dispatch-form] [data-testid=dispatch-agency-fire]")).to_be_disabled()

        # The fire brigade phones back: no truck free. Every dispatch of the other incident declined, it
        # is back with the room: first in the list, highlighted, with the reason.
        fire = post_alarm(cc, 2, "jkt-menteng-0702", "fire")
        other = console.row(fire)
        other.locator("[data-testid=acknowledge]").click()
        other.locator("[data-testid=agency-select]").select_option("fire")
        other.locator("[data-testid=dispatch]").click()
        pw_expect(other.locator("[data-testid=chip-fire]")).to_have_attribute("data-status", "requested")
        other.locator(".row-where").click()
        pw_expect(page.locator("#detail h3")).to_contain_text(fire)
        page.click("[data-testid=dispatch-fire-declined]")
        page.fill("[data-testid=dispatch-fire-decline-reason]", "Semua unit sedang bertugas")
        page.click("[data-testid=dispatch-fire-decline-send]")
        pw_expect(other).to_have_class(_contains("needs-dispatch"))
        pw_expect(other.locator("[data-testid=needs-dispatch]")).to_contain_text("Semua unit sedang bertugas")
        pw_expect(page.locator("#incident-list li.incident").first).to_have_attribute(
            "data-testid", f"incident-{fire}")

        page.click("[data-testid=tab-supervisor]")
        pw_expect(page.locator("[data-testid=operator-figures]")).to_contain_text(cc.supervisor_name)
        page.click("[data-testid=tab-incidents]")
        page.click("[data-testid=shift-handover]")
        page.fill("[data-testid=handover-note]", "Kebakaran Menteng belum ada instansi")
        page.fill("[data-testid=handover-to]", cc.operator_name)  # not on duty yet: typed
        page.click("[data-testid=handover-send]")
        pw_expect(page.locator("[data-testid=shift-sign-on]")).to_be_visible()
        pw_expect(page.locator("[data-testid=on-duty]")).to_contain_text(tx("shift.nobody"))
        shifts = httpx.get(f"{cc.url}/api/v1/shifts", headers=cc.supervisor_headers(), timeout=5).json()
        assert [(s["handover_note"], s["handed_to"], sorted(s["open_at_handover"])) for s in shifts] == [
            ("Kebakaran Menteng belum ada instansi", cc.operator_name, sorted([medical, fire]))]
        console.assert_clean()


def test_the_supervisor_view_shows_figures_and_exports_csv(
    tmp_path: Path, open_console: Callable[[CommandCenterProcess], Console]
) -> None:
    with CommandCenterProcess(tmp_path) as cc:
        incident = post_alarm(cc, 1, "jkt-menteng-0501", "medical")
        httpx.post(f"{cc.url}/api/v1/incidents/{incident}/acknowledge", headers=cc.operator_headers())
        httpx.post(f"{cc.url}/api/v1/incidents/{incident}/false-alarm", headers=cc.operator_headers())
        console = open_console(cc).sign_in(cc.supervisor_name, cc.supervisor_token)
        console.page.click("[data-testid=tab-supervisor]")
        kpis = console.page.locator("[data-testid=kpis]")
        pw_expect(kpis).to_contain_text(tx("kpi.acknowledge"))
        pw_expect(console.page.locator("[data-testid=false-alarms]")).to_contain_text("jkt-menteng-0501")
        pw_expect(console.page.locator("[data-testid=false-alarms]")).to_contain_text("100 %")
        pw_expect(console.page.locator("[data-testid=audit]")).to_contain_text("false_alarm")
        with console.page.expect_download() as download:
            console.page.click("[data-testid=export]")
        text = Path(download.value.path()).read_text(encoding="utf-8")
        assert text.splitlines()[0].startswith("id,state,kind,test,device_id")
        assert f"{incident},false_alarm,medical" in text

        # A button goes offline while the supervisor looks at the devices: the list follows live.
        console.page.click("[data-testid=tab-devices]")
        pw_expect(console.page.locator("#faults-empty")).to_be_visible()
        fault = {"event_id": "gw-1:jkt-pasarbaru-0505:fault:1", "gateway_id": "gw-1", "device_id": "jkt-pasarbaru-0505",
                 "fault": "offline", "active": True, "at": "2026-11-24T03:20:00Z",
                 "detail": {"reason": "3 heartbeats missed"}}
        r = httpx.post(f"{cc.url}/api/v1/faults", json=fault, headers=cc.intake_headers(fault["event_id"]))
        assert r.status_code == 201
        row = console.page.locator("[data-testid=faults] tbody tr")
        pw_expect(row).to_contain_text("jkt-pasarbaru-0505")
        pw_expect(row).to_contain_text(tx("fault.offline"))
        pw_expect(row).to_contain_text("3 heartbeats missed")
        console.assert_clean()


def test_a_wrong_token_is_refused_at_sign_in(
    tmp_path: Path, open_console: Callable[[CommandCenterProcess], Console]
) -> None:
    with CommandCenterProcess(tmp_path) as cc:
        console = open_console(cc)
        console.page.goto(f"{cc.url}/console")
        console.page.fill("#login-name", cc.operator_name)
        console.page.fill("#login-token", cc.supervisor_token)  # someone else's token
        console.page.click("#login-submit")
        pw_expect(console.page.locator("#login-error")).to_have_text(tx("login.wrong"))
        pw_expect(console.page.locator("#app")).to_be_hidden()
        console.assert_clean()


def test_the_console_reconnects_and_resyncs_after_a_restart_without_a_reload(
    tmp_path: Path, open_console: Callable[[CommandCenterProcess], Console]
) -> None:
    cc = CommandCenterProcess(tmp_path)
    cc.start()
    try:
        console = open_console(cc).sign_in(cc.operator_name, cc.operator_token)
        first = post_alarm(cc, 1, "jkt-gambir-0601")
        console.row(first).wait_for()
        console.page.evaluate("window.__notReloaded = true")
        assert cc.stopped_cleanly(cc.stop())  # an open console does not hold the shutdown up
        pw_expect(console.page.locator("[data-testid=connection]")).to_have_class(_contains("conn-down"))
        cc.start()
        # Created before the console is back: it comes with the re-sync, not as a live event.
        second = post_alarm(cc, 2, "jkt-gambir-0602")
        console.wait_live()
        pw_expect(console.row(second)).to_be_visible()
        pw_expect(console.row(first)).to_be_visible()
        assert console.page.evaluate("window.__notReloaded") is True
        console.assert_clean()
    finally:
        cc.stop()


# ---- acceptance 4: the screenshot in docs/ ----------------------------------------------------------

@dataclass(frozen=True)
class Site:
    device_id: str
    lat: float
    lon: float
    address: str
    area: str
    battery_mv: int | None = 3900


SITES = {
    "gambir": Site("jkt-gambir-0001", -6.1766, 106.8190, "Kantor Kelurahan Gambir, Jl. Tanah Abang I",
                   "31.71.01.1001", 3710),
    "menteng": Site("jkt-menteng-0042", -6.1957, 106.8321, "Pasar Menteng, Jl. Menteng Raya 12", "31.71.06.1001",
                    3320),
    "menteng2": Site("jkt-menteng-0043", -6.1959, 106.8325, "Pasar Menteng, Jl. Menteng Raya 12", "31.71.06.1001"),
    "senen": Site("jkt-senen-0007", -6.1745, 106.8411, "Halte Senen, Jl. Kramat Raya 5", "31.71.05.1001", 3890),
    "tanahabang": Site("jkt-tanahabang-0003", -6.1862, 106.8108, "SDN Kebon Kacang 01, Jl. Kebon Kacang",
                       "31.71.02.1003", None),
    "cempaka": Site("jkt-cempakaputih-0011", -6.1822, 106.8687, "Pos RW 04, Jl. Cempaka Putih Tengah",
                    "31.71.07.1002", 3950),
    "kemayoran": Site("jkt-kemayoran-0009", -6.1630, 106.8560, "Puskesmas Kemayoran, Jl. Serdang Baru",
                      "31.71.03.1005", 3600),
    "sawahbesar": Site("jkt-sawahbesar-0005", -6.1600, 106.8290, "Pasar Baru, Jl. Samanhudi", "31.71.04.1002", 3800),
}


async def seed_scene(db_path: Path, now: datetime) -> None:
    """A district's last week and its last few minutes, written through the store with explicit
    times (the API can only say "now"): response-time figures and ages that look like a real shift."""
    rng = random.Random(112)
    store = await Store.open(db_path)
    seq = iter(range(1, 10_000))

    async def alarm(site: Site, kind: str, at: datetime, key: str | None = None, count: int | None = None) -> int:
        n = next(seq)
        new = NewAlarm(
            event_id=f"gw-1:{site.device_id}:{n}", gateway_id="gw-1", device_id=site.device_id, seq=n, kind=kind,
            test=False, lat=site.lat, lon=site.lon, address=site.address, area=site.area, raised_at=None,
            received_at=at, fingerprint=f"seed-{n}", incident_key=key, press_count=count,
            battery_mv=site.battery_mv,
        )
        return (await store.record_alarm(new, now=at)).incident

    async def act(number: int, action: Action, at: datetime, who: str, **kw: Any) -> None:
        await store.apply_action(number, action, actor=who, now=at, **kw)

    try:
        kinds = {"fire": "fire", "medical": "ambulance", "crime": "police", "disaster": "disaster",
                 "general": "public-order"}
        # The week before: every incident handled; the bus-stop button is pressed for fun.
        for day in range(6, 0, -1):
            for _ in range(rng.randint(4, 8)):
                site = rng.choice([s for k, s in SITES.items() if k != "menteng2"])
                kind = rng.choice(list(kinds))
                t0 = now - timedelta(days=day, hours=rng.randint(0, 20), minutes=rng.randint(0, 59))
                number = await alarm(site, kind, t0)
                ack = t0 + timedelta(seconds=rng.uniform(8, 75))
                who = rng.choice(["operator-1", "operator-2"])
                await act(number, Action.ACKNOWLEDGE, ack, who)
                if site.device_id == "jkt-senen-0007" and rng.random() < 0.7:
                    await act(number, Action.FALSE_ALARM, ack + timedelta(seconds=rng.uniform(30, 120)), who,
                              note="Children at the bus stop; nobody there")
                    continue
                sent = ack + timedelta(seconds=rng.uniform(20, 120))
                await act(number, Action.DISPATCH, sent, who, agency=kinds[kind])
                await act(number, Action.RESOLVE, sent + timedelta(minutes=rng.uniform(12, 55)), who)
        # Now: one alarm nobody has taken for over three minutes (it escalates), one pressed twice,
        # one just in, and work in progress.
        await alarm(SITES["gambir"], "medical", now - timedelta(minutes=3, seconds=12))
        await alarm(SITES["menteng"], "fire", now - timedelta(seconds=65), key="gw-1:g:42", count=1)
        await alarm(SITES["menteng2"], "fire", now - timedelta(seconds=21), key="gw-1:g:42", count=2)
        await alarm(SITES["kemayoran"], "medical", now - timedelta(seconds=38))
        senen = await alarm(SITES["senen"], "crime", now - timedelta(minutes=4, seconds=5))
        await act(senen, Action.ACKNOWLEDGE, now - timedelta(minutes=3, seconds=41), "operator-2")
        school = await alarm(SITES["tanahabang"], "general", now - timedelta(minutes=9, seconds=30))
        await act(school, Action.ACKNOWLEDGE, now - timedelta(minutes=9, seconds=2), "operator-1")
        await act(school, Action.DISPATCH, now - timedelta(minutes=7, seconds=45), "operator-1",
                  agency="public-order")
        flood = await alarm(SITES["cempaka"], "disaster", now - timedelta(minutes=26))
        await act(flood, Action.ACKNOWLEDGE, now - timedelta(minutes=25, seconds=31), "operator-1")
        await act(flood, Action.DISPATCH, now - timedelta(minutes=24), "operator-1", agency="disaster")
        await act(flood, Action.RESOLVE, now - timedelta(minutes=5), "operator-1", note="Drain cleared")
        await store.record_fault(
            NewFault(event_id="gw-1:jkt-sawahbesar-0005:fault:1", gateway_id="gw-1", device_id="jkt-sawahbesar-0005",
                     fault="offline", active=True, at=now - timedelta(hours=2, minutes=14),
                     detail={"reason": "3 heartbeats missed", "battery_mv": 3610},
                     location=(SITES["sawahbesar"].lat, SITES["sawahbesar"].lon, SITES["sawahbesar"].address,
                               SITES["sawahbesar"].area), fingerprint="seed-fault-1"),
            now=now - timedelta(hours=2, minutes=14),
        )
    finally:
        await store.close()


# What the page shows, read back: every visible text node and person-facing attribute that is not
# inside an element marked data-value (ids, names, addresses, numbers, times). Text without a word
# in it (separators, arrows, "12", "3 s") is left out: it has nothing to translate.
SHOWN_TEXT_JS = """() => {
  const words = /\\p{L}{2,}/u;
  const shown = (e) => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== "hidden";
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const parent = n.parentElement;
    const text = n.textContent.replace(/\\s+/g, " ").trim();
    if (!words.test(text) || parent.closest("[data-value], script, style")) continue;
    const box = parent.closest("select") || parent;  // an option shows when its select does
    if (shown(box)) out.push({where: parent.tagName + "." + parent.className, text});
  }
  for (const e of document.body.querySelectorAll("[title], [placeholder], [aria-label]")) {
    if (!shown(e) || e.closest("[data-value]")) continue;
    for (const a of ["title", "placeholder", "aria-label"]) {
      const text = (e.getAttribute(a) || "").trim();
      if (words.test(text)) out.push({where: `${e.tagName}[${a}]`, text});
    }
  }
  return out;
}"""


def small_screenshot(page: Page, path: Path) -> None:
    """A screenshot in 256 colours: the console's flat dark surfaces lose nothing, and the picture
    stays small enough to keep in the repository (docs/console-id.png, docs/console-en.png)."""
    picture = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    picture.quantize(colors=256, dither=Image.Dither.NONE).save(path, optimize=True)


def catalog_matcher(lang: str) -> Callable[[str], bool]:
    """Whether a text is one of the catalog's texts in `lang`, a template's placeholders matching
    anything (tests/test_i18n_console.py makes sure no template is placeholders alone)."""
    exact: set[str] = set()
    patterns: list[re.Pattern[str]] = []
    for entry in i18n.catalog("console").values():
        text = " ".join(entry[lang].split())
        if i18n.placeholders(text):
            parts = re.split(r"\{\w+\}", text)
            patterns.append(re.compile(".+?".join(re.escape(p) for p in parts), re.S))
        else:
            exact.add(text)
    return lambda shown: shown in exact or any(p.fullmatch(shown) for p in patterns)


def untranslated(console: Console, lang: str) -> list[str]:
    is_catalog_text = catalog_matcher(lang)
    return [f"{s['where']}: {s['text']!r}" for s in console.page.evaluate(SHOWN_TEXT_JS)
            if not is_catalog_text(s["text"])]


def test_the_console_shows_only_catalog_words_in_either_language_with_screenshots(
    tmp_path: Path, open_console: Callable[[CommandCenterProcess], Console]
) -> None:
    """A shift's console (incidents in every state, one escalated, one sent to two agencies, a device
    fault, the incident panel open) read back in Bahasa Indonesia, then switched to English without a
    reload: every word shown is the catalog's, in the chosen language.

    Pictures: docs/console-id.png and docs/console-en.png when SIAGA_SCREENSHOTS=1, docs/console.png
    and docs/console-supervisor.png when SIAGA_UPDATE_SCREENSHOTS=1; otherwise to the test's folder."""
    pictures = DOCS if os.environ.get("SIAGA_SCREENSHOTS") == "1" else tmp_path
    out = DOCS if os.environ.get("SIAGA_UPDATE_SCREENSHOTS") == "1" else tmp_path
    cc = CommandCenterProcess(tmp_path, escalation_after_s=120)
    # In a thread of its own: Playwright's sync API already runs an event loop in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, seed_scene(cc.db_path, datetime.now(UTC))).result()
    with cc:
        console = open_console(cc).sign_in(cc.supervisor_name, cc.supervisor_token)
        page = console.page
        pw_expect(page.locator("li.incident.escalated")).to_have_count(1)
        fresh = post_alarm(cc, 1, "jkt-kemayoran-0010", "medical",
                           location={"lat": -6.1591, "lon": 106.8493, "address": "Stasiun Kemayoran, Jl. Garuda",
                                     "area": "31.71.03.1001"}, battery_mv=3780)
        console.row(fresh).wait_for()
        # The robbery at the bus stop: police and an ambulance, both confirmed by phone.
        [robbery] = [i for i in incidents_of(cc, "jkt-senen-0007") if i["state"] == "acknowledged"]
        r = httpx.post(f"{cc.url}/api/v1/incidents/{robbery['id']}/dispatch", headers=cc.operator_headers(),
                       json={"agencies": ["police", "ambulance"], "note": None, "accepted": True}, timeout=5)
        assert r.status_code == 200, r.text
        row = console.row(robbery["id"])
        pw_expect(row.locator("[data-testid^=chip-]")).to_have_count(2)
        # Open: four new (one escalated, one pressed twice), two dispatched.
        pw_expect(page.locator("#incident-list li.incident")).to_have_count(6)
        twice = page.locator("#incident-list li.incident .presses.many")
        pw_expect(twice).to_have_text(tx("row.pressed_many", count=2))
        row.locator(".row-where").click()
        pw_expect(page.locator("#detail [data-testid=dispatch-list] .dispatch-item")).to_have_count(2)
        page.wait_for_timeout(2200)  # the arrival flash is over; the rows pulse as usual

        def read_back(lang: str) -> list[str]:
            """Every view's words, in `lang`."""
            assert len(page.evaluate(SHOWN_TEXT_JS)) > 60  # the read-back reads the page
            offenders = untranslated(console, lang)
            page.click("[data-testid=tab-devices]")
            pw_expect(page.locator("[data-testid=faults] tbody tr")).to_contain_text(tx("fault.offline", lang))
            offenders += untranslated(console, lang)
            page.click("[data-testid=tab-supervisor]")
            pw_expect(page.locator("[data-testid=false-alarms] tbody tr").first).to_contain_text("jkt-senen-0007")
            pw_expect(page.locator("[data-testid=kpis]")).to_contain_text(tx("kpi.acknowledge", lang))
            offenders += untranslated(console, lang)
            return offenders

        assert page.evaluate("document.documentElement.lang") == "id"
        small_screenshot(page, pictures / "console-id.png")
        page.screenshot(path=str(out / "console.png"))
        assert read_back("id") == []

        page.evaluate("window.__notReloaded = true")
        page.click("[data-testid=lang-en]")
        pw_expect(page.locator("html")).to_have_attribute("lang", "en")
        pw_expect(page.locator("[data-testid=kpis]")).to_contain_text(tx("kpi.acknowledge", "en"))
        pw_expect(page.locator("[data-testid=audit]")).to_contain_text("false_alarm")
        page.wait_for_timeout(300)
        page.screenshot(path=str(out / "console-supervisor.png"))
        offenders = untranslated(console, "en")
        page.click("[data-testid=tab-incidents]")
        pw_expect(page.locator("#detail h4").first).to_have_text(tx("dispatch.list_title", "en"))
        page.wait_for_timeout(300)
        small_screenshot(page, pictures / "console-en.png")
        assert offenders + read_back("en") == []
        assert page.evaluate("window.__notReloaded") is True
        # Remembered for the person, not the browser: the API answers with it.
        me = httpx.get(f"{cc.url}/api/v1/session", headers=cc.supervisor_headers(), timeout=5).json()
        assert me["language"] == "en"
        console.assert_clean()

        # The read-back can fail: a word put in by hand is found, in either language; data is not.
        page.evaluate("""() => {
            const p = document.createElement("p"); p.textContent = "Hard-coded words"; document.body.prepend(p);
            const d = document.createElement("p"); d.textContent = "Jl. Garuda"; d.dataset.value = "";
            document.body.prepend(d);
            document.getElementById("sound").title = "Untranslated tooltip";
        }""")
        found = untranslated(console, "en")
        assert any("Hard-coded words" in f for f in found) and any("Untranslated tooltip" in f for f in found)
        assert not any("Garuda" in f for f in found)
        assert any(tx("sound.on", "en") in f for f in untranslated(console, "id"))
    for picture in ("console-id.png", "console-en.png"):
        assert 20_000 < (pictures / picture).stat().st_size < 300_000


def _contains(cls: str) -> re.Pattern[str]:
    return re.compile(rf"(^|\s){re.escape(cls)}(\s|$)")



# ---- the room sees its own plumbing: a silent gateway is a banner for everyone ------------------------


def test_a_silent_gateway_is_a_banner_on_every_console_and_clears_when_it_reports(
    tmp_path: Path, open_console: Callable[[CommandCenterProcess], Console]
) -> None:
    def report(sms_up: bool = True) -> None:
        r = httpx.post(f"{cc.url}/api/v1/gateways/report", headers={"Authorization": f"Bearer {cc.intake_token}"},
                       json={"gateway_id": "gw-1", "instance": "gw-1", "version": "1", "uptime_s": 1.0,
                             "outbox": {"total": 0}, "broker_connected": True,
                             "buttons": {"online": 1, "registered": 1},
                             "at": datetime.now(UTC).isoformat(),
                             "sms": {"up": sms_up, "registered": True if sms_up else None, "signal": None}},
                       timeout=5)
        assert r.status_code == 204, r.text

    def reporting_until(done: Callable[[], bool], sms_up: bool) -> None:
        """Report (more often than the silence) until `done`, at most 15 s."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not done():
            report(sms_up)
            consoles[0].page.wait_for_timeout(500)

    with CommandCenterProcess(tmp_path, extra_toml="[plumbing]\nsilence_s = 2\n") as cc:
        report()
        consoles = [open_console(cc).sign_in(cc.operator_name, cc.operator_token),
                    open_console(cc).sign_in(cc.agency_name, cc.agency_token)]
        for console in consoles:
            banner = console.page.locator("[data-testid=plumbing-banner]")
            # Indonesian clock times are written 14.05 (id-ID), English ones 14:05.
            silent = re.escape(tx("plumbing.silent", name="gw-1", at="@")).replace("@", r"\d\d[.:]\d\d")
            pw_expect(banner).to_contain_text(re.compile(silent), timeout=10_000)
        # Reporting again with its SMS modem down: the silence goes, the modem's line stays.
        sms_down = tx("plumbing.sms_down", name="gw-1")
        reporting_until(lambda: all(c.page.locator("[data-testid=plumbing-banner]").inner_text().strip() == sms_down
                                    for c in consoles), sms_up=False)
        for console in consoles:
            pw_expect(console.page.locator("[data-testid=plumbing-banner]")).to_have_text(sms_down)
        # The modem up again: the banner goes.
        reporting_until(lambda: all(c.page.locator("[data-testid=plumbing-banner]").is_hidden() for c in consoles),
                        sms_up=True)
        for console in consoles:
            pw_expect(console.page.locator("[data-testid=plumbing-banner]")).to_be_hidden()
            console.assert_clean()

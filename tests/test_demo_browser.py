"""The demo in a browser, as `make demo` leaves it running: hold a virtual button on the simulator
page, see the incident appear in the operator console, acknowledge it there, and see that button's
light change to "an operator has seen it" (Bahasa Indonesia first, English after the page's ID | EN switch);
dispatched ("help is on the way") looks different from it. Headless Debian Chromium through
Playwright; only loopback requests are allowed."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.demo import DemoProcess

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
DOCS = Path(__file__).resolve().parent.parent / "docs"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing on CI: install Debian's chromium (scripts/system-deps.sh)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Page, Route, sync_playwright  # noqa: E402
from playwright.sync_api import expect as pw_expect  # noqa: E402

pytestmark = [pytest.mark.e2e]


@pytest.fixture(autouse=True)
def _english(monkeypatch: pytest.MonkeyPatch) -> None:
    """The terminal's narration in English, as these tests read it (its default is Bahasa Indonesia)."""
    monkeypatch.setenv("SIAGA_LANG", "en")


@pytest.fixture
def demo() -> Iterator[DemoProcess]:
    process = DemoProcess("--broker", "embedded")
    try:
        process.wait_for(r"Press Ctrl-C to stop")
        yield process
        process.proc.send_signal(signal.SIGINT)
        assert process.proc.wait(30) == 0
    finally:
        process.close()


def local_only(route: Route) -> None:
    if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
        route.continue_()
    else:
        route.abort("internetdisconnected")


def test_hold_a_virtual_button_acknowledge_in_the_console_and_its_light_says_help_is_coming(
        demo: DemoProcess) -> None:
    sim_url = demo.find(r"virtual buttons\s+(http://\S+)").group(1)
    console = demo.find(r"operator console\s+(http://\S+)\s+\(sign in: name (\S+), token (\S+)\)")
    console_url, name, token = console.group(1), console.group(2), console.group(3)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 1280, "height": 800})
            ctx.route("**/*", local_only)
            buttons: Page = ctx.new_page()
            operator: Page = ctx.new_page()
            for page in (buttons, operator):
                page.on("pageerror", lambda exc: errors.append(str(exc)))

            operator.goto(console_url)
            operator.fill("#login-name", name)
            operator.fill("#login-token", token)
            operator.click("#login-submit")
            operator.locator("[data-testid=connection].conn-up").wait_for(timeout=10_000)

            buttons.goto(sim_url)
            card = buttons.locator('.card[data-id="jkt-menteng-01"]')
            pw_expect(card).to_have_attribute("data-state", "idle")
            pw_expect(card.locator(".state")).to_have_text("siap")  # Bahasa Indonesia unless switched
            pw_expect(buttons.locator("html")).to_have_attribute("lang", "id")
            sos = card.locator(".sos")
            sos.hover()
            buttons.mouse.down()
            # After the long press the alarm is sent; "sending" lasts a few milliseconds on loopback.
            pw_expect(card).to_have_attribute("data-state", re.compile("sending|received"), timeout=5_000)
            buttons.mouse.up()
            pw_expect(card).to_have_attribute("data-state", "received", timeout=5_000)

            row = operator.locator("#incident-list li.incident", has_text="jkt-menteng-01")
            pw_expect(row).to_be_visible(timeout=5_000)
            row.locator("[data-testid=acknowledge]").click()

            pw_expect(card).to_have_attribute("data-state", "acknowledged", timeout=10_000)
            pw_expect(card.locator(".state")).to_have_text("alarm dilihat operator")
            pw_expect(card).to_have_class("card lit")   # "help is coming" is the ring light steady on
            ring = card.locator(".ring")
            assert ring.evaluate("el => getComputedStyle(el).animationName") == "none"
            buttons.click(".lang button[data-lang=en]")
            pw_expect(card.locator(".state")).to_have_text("an operator has seen it")
            pw_expect(buttons.locator("#intro")).to_contain_text("Hold a red button for two seconds")
            pw_expect(buttons.locator("html")).to_have_attribute("lang", "en")

            # Dispatched: "help is on the way" must not look like "an operator has seen it".
            headers = {"Authorization": f"Bearer {token}"}
            incident = operator.request.get(f"{console_url.removesuffix('/console')}/api/v1/incidents",
                                            headers=headers).json()[0]["id"]
            done = operator.request.post(f"{console_url.removesuffix('/console')}/api/v1/incidents/{incident}/dispatch",
                                         headers=headers, data={"agency": "fire"})
            assert done.ok, done.text()
            pw_expect(card).to_have_attribute("data-state", "dispatched", timeout=10_000)
            pw_expect(card.locator(".state")).to_have_text("help is on the way")
            assert ring.evaluate("el => getComputedStyle(el).animationName") == "on-the-way"
            buttons.click(".lang button[data-lang=id]")
            pw_expect(card.locator(".state")).to_have_text("petugas dalam perjalanan")
            if os.environ.get("SIAGA_UPDATE_SCREENSHOTS"):
                buttons.set_viewport_size({"width": 1000, "height": 400})
                buttons.screenshot(path=str(DOCS / "demo-buttons.png"))
                operator.screenshot(path=str(DOCS / "demo-console.png"))
        finally:
            browser.close()
    assert errors == []

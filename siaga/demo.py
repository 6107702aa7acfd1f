"""`siaga demo`: the whole loop on one machine, narrated in the terminal.

A broker (Mosquitto when installed, else the embedded demo broker), the reference command center,
the gateway and a few virtual buttons running the firmware core. One resident holds a button; the
alarm reaches the command center; the demo's operator acknowledges it and the button shows that
an operator has seen it. Everything runs in this process and its temporary folder, which are gone after
Ctrl-C.

The narration is in the run's language (`siaga --lang`, $SIAGA_LANG, the locale, else Bahasa
Indonesia), from the `demo` message catalog that the simulator page shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from siaga import i18n
from siaga.asgi import EmbeddedServer, embedded_server
from siaga.demo_web import create_sim_app
from siaga.devices.sites import OFFICES
from siaga.devices.virtual import VirtualButton
from siaga.net import free_port
from siaga.provisioning.text import current
from siaga.stack import OPERATOR, LocalStack

HOLD_S = 2.0
LONG_PRESS_MS = 1500


def _t(key: str, /, **params: Any) -> str:
    return i18n.text("demo", key, current(), **params)


def what_leds_mean(state: str) -> str:
    """The button's lights in the terminal's words (`led.<state>`; an unknown state as it is)."""
    key = f"led.{state}"
    return _t(key) if key in i18n.catalog("demo") else state


class Narrator:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def say(self, who: str, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.2f}s] {who:<26} {text}", flush=True)


class ButtonWatch:
    """Receives indicator changes from the button threads and lets the demo wait for one."""

    def __init__(self, narrator: Narrator) -> None:
        self.loop = asyncio.get_running_loop()
        self.narrator = narrator
        self.shown: dict[str, str] = {}
        self.changed = asyncio.Condition()
        self._pending: set[asyncio.Future[None]] = set()

    def listener(self, device_id: str, name: str, detail: str) -> None:  # called in button threads
        self.loop.call_soon_threadsafe(self._record, device_id, name, detail)

    def _record(self, device_id: str, name: str, detail: str) -> None:
        if name == "indicate":
            self.shown[device_id] = detail
            self.narrator.say(_t("who.button", device=device_id), _t("say.led", meaning=what_leds_mean(detail)))
            self._pending.add(task := asyncio.ensure_future(self._notify()))
            task.add_done_callback(self._pending.discard)
        elif name == "alarm":
            self.narrator.say(_t("who.button", device=device_id), _t("say.alarm_raised", detail=detail))

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait(self, device_id: str, state: str, timeout_s: float = 15.0) -> None:
        async with asyncio.timeout(timeout_s), self.changed:
            await self.changed.wait_for(lambda: self.shown.get(device_id) == state)


async def _new_incident(stack: LocalStack, device_id: str, known: set[str], timeout_s: float = 15.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            for incident in await stack.incidents():
                if incident["device_id"] == device_id and incident["id"] not in known:
                    return incident
            await asyncio.sleep(0.05)


async def _run(buttons: int, presses: int, exit_after: bool, broker_kind: str, workdir: Path) -> int:
    narrator = Narrator()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    print(_t("say.start") + "\n", flush=True)
    watch = ButtonWatch(narrator)
    started: list[VirtualButton] = []
    sim: EmbeddedServer | None = None
    sim_task: asyncio.Future[None] | None = None
    async with LocalStack(workdir, broker_kind, narrator.say) as stack:
        try:
            narrator.say(_t("who.cc"), _t("say.cc_api", url=f"{stack.cc_url}/docs"))
            narrator.say(_t("who.gateway"), f"{stack.gw_url}/health")
            sites = OFFICES[:max(1, min(buttons, len(OFFICES)))]
            for cfg in await stack.register(sites, long_ms=LONG_PRESS_MS):
                started.append(VirtualButton(cfg, workdir / "flash" / cfg["dev"], watch.listener).start())
            for button in started:
                await watch.wait(button.device_id, "idle")
            known: set[str] = set()
            for i in range(presses):
                await _round_trip(started[i % len(started)], watch, narrator, stack, known)
            sim_port = free_port()
            sim = embedded_server(create_sim_app({b.device_id: b for b in started}, {s.device_id: s for s in sites},
                                                 watch.shown, f"{stack.cc_url}/console"), "127.0.0.1", sim_port)
            sim_task = asyncio.ensure_future(sim.serve())
            if exit_after:
                stop.set()
            else:
                print("\n" + _t("say.running", sim=f"http://127.0.0.1:{sim_port}/", console=f"{stack.cc_url}/console",
                                   name=OPERATOR, token=stack.operator_token, api=f"{stack.cc_url}/docs"), flush=True)
            while not stop.is_set():
                stack.check_running()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
        finally:
            narrator.say(_t("who.demo"), _t("say.stopping"))
            if sim is not None and sim_task is not None:
                sim.should_exit = True
                await asyncio.gather(sim_task, return_exceptions=True)
            await asyncio.gather(*(asyncio.to_thread(b.stop) for b in started))
    print(_t("say.stopped"), flush=True)
    return 0


async def _round_trip(button: VirtualButton, watch: ButtonWatch, narrator: Narrator, stack: LocalStack,
                      known: set[str]) -> None:
    device_id = button.device_id
    narrator.say(_t("who.resident"), _t("say.holds", device=device_id, seconds=f"{HOLD_S:.0f}"))
    pressed = time.monotonic()
    button.hold(HOLD_S)
    incident = await _new_incident(stack, device_id, known)
    known.add(incident["id"])
    at_cc = time.monotonic() - pressed
    loc = incident["location"]
    narrator.say(_t("who.cc"), _t("say.new_incident", incident=incident["id"], kind=incident["kind"],
                                  address=loc["address"], lat=f"{loc['lat']:.6f}", lon=f"{loc['lon']:.6f}",
                                  area=loc["area"]))
    await watch.wait(device_id, "received")
    await asyncio.sleep(1.0)  # the operator reads the screen
    narrator.say(OPERATOR, _t("say.acknowledges", incident=incident["id"]))
    acked = time.monotonic()
    resp = await stack.operator.post(f"/api/v1/incidents/{incident['id']}/acknowledge")
    resp.raise_for_status()
    await watch.wait(device_id, "acknowledged")
    narrator.say(_t("who.demo"), _t("say.round_trip", to_cc=f"{at_cc:.2f}", long=f"{LONG_PRESS_MS / 1000:.1f}",
                                    back=f"{time.monotonic() - acked:.2f}"))


def run_demo(*, buttons: int = 3, presses: int = 1, exit_after: bool = False, broker: str = "auto") -> int:
    workdir = Path(tempfile.mkdtemp(prefix="siaga-demo-"))
    try:
        return asyncio.run(_run(buttons, presses, exit_after, broker, workdir))
    except TimeoutError:
        print(_t("say.timed_out"), file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

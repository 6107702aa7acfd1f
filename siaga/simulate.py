"""`siaga simulate`: a fleet of virtual buttons (each running the firmware core) on a whole local
system, driven through a scenario, with an account of every alarm at the end.

    siaga simulate --buttons 500 --scenario disaster

Exit status 0 when every alarm a button raised reached the command center exactly once.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from siaga.devices.fleet import SCENARIOS, Fleet
from siaga.devices.sites import fleet_sites
from siaga.stack import LocalStack


def _say(who: str, text: str) -> None:
    print(f"{who:<16} {text}", flush=True)


async def _wait(condition: Callable[[], bool], timeout_s: float, stop: asyncio.Event) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if stop.is_set() or time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


async def _simulate(buttons: int, scenario: str, broker: str, seed: int, workdir: Path,
                    duration_s: float | None = None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with LocalStack(workdir, broker, _say) as stack:
        configs = await stack.register(fleet_sites(buttons), heartbeat_s=30)
        fleet = Fleet(configs, workdir / "fleet").start()
        try:
            started = time.monotonic()
            if not await _wait(lambda: fleet.shown()["idle"] == len(fleet.devices), 120, stop):
                _say("fleet", f"only {fleet.shown()['idle']} of {buttons} buttons connected: {dict(fleet.shown())}")
                return 1
            _say("fleet", f"{buttons} buttons connected in {time.monotonic() - started:.1f} s")
            extra = {} if duration_s is None else {"duration_s": duration_s}
            plan = SCENARIOS[scenario](fleet, random.Random(seed), **extra)
            _say("scenario", f"{plan.name}: {plan.description} ({plan.duration_s:g} s)")
            await _wait(lambda: False, plan.duration_s, stop)
            await _wait(fleet.settled, 60, stop)
            await _wait(lambda: not fleet.undelivered(), 60, stop)
            raised = sum(len(v) for v in fleet.raised().values())
            presses = sum(e.presses for e in fleet.log.values())
            cancels = sum(e.cancels for e in fleet.log.values())
            await _wait(lambda: False, 2.0, stop)  # let the last forwards land
            incidents = await stack.incidents()
            at_cc = sum(i["press_count"] for i in incidents)
            async with httpx.AsyncClient(base_url=stack.gw_url, timeout=10,
                                         headers={"Authorization": f"Bearer {stack.admin_token}"}) as admin:
                devices = (await admin.get("/api/v1/devices")).json()
            offline = sum(1 for d in devices if "offline" in d["faults"])
            _say("account", f"presses {presses}, cancelled {cancels}, alarms raised {raised}, "
                            f"delivered {raised - sum(len(v) for v in fleet.undelivered().values())}, "
                            f"at the command center {at_cc} in {len(incidents)} incidents")
            _say("supervision", f"{offline} of {buttons} buttons offline at the gateway now")
            ok = at_cc == raised and not fleet.undelivered()
            _say("result", "every alarm accounted for, exactly once" if ok else "MISMATCH: see the account above")
            return 0 if ok else 1
        finally:
            await asyncio.to_thread(fleet.stop)


def run_simulation(*, buttons: int, scenario: str, broker: str = "auto", seed: int = 1,
                   duration_s: float | None = None) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="siaga-simulate-"))
    try:
        return asyncio.run(_simulate(buttons, scenario, broker, seed, workdir, duration_s))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

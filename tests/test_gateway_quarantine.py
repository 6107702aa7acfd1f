"""Defence in depth behind the contract: a message that makes the gateway fail anyway (a bug in the
forwarding body, a value the store refuses) is quarantined with its bytes and the error,
acknowledged so the broker never delivers it again, reported as a device fault, and every other
message of its batch is stored as if nothing had happened.

Nothing a button can send reaches these failures any more (tests/test_contract.py), so they are
injected into the real gateway, run in this process against the real Mosquitto, SQLite and command
center: one at the formatting of an alarm, one at the commit of the batch holding it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from siaga.broker.process import MosquittoProcess
from siaga.gateway import service
from siaga.gateway.adapters import ReferenceAdapter
from siaga.gateway.config import GatewayConfig
from siaga.gateway.service import Gateway
from siaga.gateway.store import SQLiteStore
from tests.support.ccproc import CommandCenterProcess
from tests.support.devices import LOC, SimButton
from tests.support.gateway import GatewayProcess
from tests.support.system import DeviceCredentials

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]


async def test_a_message_that_breaks_the_gateway_is_quarantined_and_the_others_go_on(
        tmp_path: Path, mosquitto: MosquittoProcess, command_center: CommandCenterProcess,
        monkeypatch: pytest.MonkeyPatch) -> None:
    files = GatewayProcess(tmp_path, mqtt_port=mosquitto.port, mqtt_password=mosquitto.gateway_password,
                           cc_url=command_center.url, cc_token=command_center.intake_token,
                           extra_toml="batch_wait_ms = 200")  # [forwarding]; its config files only: run here
    cfg = GatewayConfig.load(files.config_path)

    formatting = service.alarm_event

    def broken_formatting(gateway_id: str, alarm: service.Alarm, *args: object) -> tuple[str, str]:
        if alarm.device_id == "bug-format":
            raise RuntimeError("injected: the alarm's body could not be formatted")
        return formatting(gateway_id, alarm, *args)  # type: ignore[arg-type]

    committing = SQLiteStore._commit

    def broken_commit(self: SQLiteStore, db: object, batch: service.Batch, fault_event: object,
                      alarm_event: object) -> object:
        if any(n.alarm.device_id == "bug-store" for n in batch.alarms):
            raise OverflowError("injected: a value the store cannot hold")
        return committing(self, db, batch, fault_event, alarm_event)  # type: ignore[arg-type]

    monkeypatch.setattr(service, "alarm_event", broken_formatting)
    monkeypatch.setattr(SQLiteStore, "_commit", broken_commit)

    gateway = Gateway(cfg, SQLiteStore(cfg.db_path), ReferenceAdapter(cfg.cc_url, cfg.cc_token))
    stop = asyncio.Event()
    running = asyncio.create_task(gateway.run(stop))
    await asyncio.wait_for(gateway.ready.wait(), 20)
    buttons = {}
    for name in ("good-a", "bug-format", "good-b", "bug-store", "good-c"):
        creds = DeviceCredentials(name, "ab" * 31 + f"{len(buttons):02x}", f"pw-{name}")
        mosquitto.add_device(name, creds.mqtt_password, reload=False)
        await gateway.register_device(name, bytes.fromhex(creds.secret_hex), lat_e6=LOC["lat_e6"],
                                      lon_e6=LOC["lon_e6"], address=LOC["addr"], area=LOC["area"])
        buttons[name] = creds
    mosquitto.reload()
    sims = {name: await asyncio.to_thread(SimButton(creds, mosquitto.port).connect) for name, creds in buttons.items()}
    try:
        # All five in one batch (batch_wait_ms above), the broken ones between the good ones.
        sent = {}
        for name, sim in sims.items():
            seq, frame = sim.alarm_frame("fire")
            await asyncio.to_thread(sim.publish, "alarm", frame)
            sent[name] = seq
        for name in ("good-a", "good-b", "good-c"):
            await asyncio.to_thread(sims[name].wait_ack, sent[name])
        assert not running.done()

        quarantined = await gateway.store.quarantined(10)
        assert sorted(q["device_id"] for q in quarantined) == ["bug-format", "bug-store"]
        by_device = {q["device_id"]: q for q in quarantined}
        assert "could not be formatted" in by_device["bug-format"]["error"]
        assert "cannot hold" in by_device["bug-store"]["error"]
        body = json.loads(by_device["bug-store"]["payload"].split(b".", 2)[2])
        assert body["seq"] == sent["bug-store"]     # the exact bytes, kept as evidence
        assert gateway.metrics.get("quarantined") == 2

        async with httpx.AsyncClient(base_url=command_center.url, headers=command_center.operator_headers(),
                                     timeout=10) as http:
            async def at_center() -> tuple[set[str], set[str]]:
                incidents = (await http.get("/api/v1/incidents")).json()
                faults = (await http.get("/api/v1/devices/faults")).json()
                return ({i["device_id"] for i in incidents},
                        {f["device_id"] for f in faults if f["fault"] == "bad_message"})
            for _ in range(100):
                alarms, faults = await at_center()
                if len(alarms) == 3 and len(faults) == 2:
                    break
                await asyncio.sleep(0.1)
        assert alarms == {"good-a", "good-b", "good-c"}
        assert faults == {"bug-format", "bug-store"}
        # Acknowledged to the broker: a restart gets nothing back (the gateway's session is empty).
        await asyncio.to_thread(sims["bug-store"].client.publish, "siaga/v1/dev/bug-store/status", b"", 1)
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        for sim in sims.values():
            await asyncio.to_thread(sim.close)

    monkeypatch.undo()
    again = Gateway(cfg, SQLiteStore(cfg.db_path), ReferenceAdapter(cfg.cc_url, cfg.cc_token))
    stop = asyncio.Event()
    running = asyncio.create_task(again.run(stop))
    await asyncio.wait_for(again.ready.wait(), 20)
    await asyncio.sleep(1.0)
    received = again.metrics.get("received")
    stop.set()
    await asyncio.wait_for(running, 30)
    assert received == 1   # only the empty status sent while it was down, nothing from the quarantine

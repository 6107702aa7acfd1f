"""The Raspberry Pi agent with gpiozero's mock pins (the only mock: no GPIO here), against real
Mosquitto, the real gateway and the reference command center: a long press on the SOS pin sends one
alarm, a short one nothing, and the ring light follows the acknowledgement states. Its optional
modem port is exercised on a real pseudo-terminal pair."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from gpiozero.pins.mock import MockFactory

from siaga.broker.process import MosquittoProcess
from siaga.devices.agent import Agent, GpioHal, modem_settings
from siaga.devices.pins import PINS
from siagafw import proto
from tests.support.firmware import device_config
from tests.support.modem import ModemSim
from tests.support.mosquitto import MqttClient
from tests.support.net import free_port
from tests.support.system import System
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]


def incidents(system: System) -> list[dict]:
    return httpx.get(f"{system.cc.url}/api/v1/incidents", headers=system.cc.operator_headers(), timeout=5).json()


def test_pi_agent_long_press_sends_one_alarm_and_led_follows_the_acks(system: System, tmp_path: Path) -> None:
    creds = system.new_device("pi-0001")
    factory = MockFactory()
    hal = GpioHal(pin_factory=factory, network_up=lambda: True)
    factory.pin(PINS["tamper"]).drive_low()            # lid closed (after the pull-up is set up)
    cfg = device_config(creds.device_id, creds.secret_hex, system.broker.port, creds.mqtt_password,
                        button={"long_ms": 600, "cancel_ms": 0, "debounce_ms": 30})
    agent = Agent(cfg, tmp_path / "state", hal).start()
    sos, led = factory.pin(PINS["sos"]), factory.pin(PINS["led"])
    try:
        wait_for(lambda: hal.shown == "idle", what="agent connected")

        sos.drive_low()                                 # a brush against the button
        time.sleep(0.2)
        sos.drive_high()
        time.sleep(1.0)
        assert incidents(system) == []

        sos.drive_low()                                 # held well past the 600 ms long press
        time.sleep(1.0)
        sos.drive_high()
        wait_for(lambda: hal.shown == "received", what="received ack")
        found = wait_for(lambda: [i for i in incidents(system) if i["device_id"] == "pi-0001"], what="incident")
        assert len(found) == 1
        assert found[0]["press_count"] == 1

        resp = httpx.post(f"{system.cc.url}/api/v1/incidents/{found[0]['id']}/acknowledge",
                          headers=system.cc.operator_headers(), timeout=5)
        assert resp.status_code == 200, resp.text
        wait_for(lambda: hal.shown == "acknowledged", what="acknowledged ack")
        # "Help is coming" is the ring light steady on (firmware/lib/siagafw/indicator.py).
        samples = []
        for _ in range(30):
            samples.append(led.state)
            time.sleep(0.05)
        assert all(s == 1 for s in samples[5:]), samples

        resp = httpx.post(f"{system.cc.url}/api/v1/incidents/{found[0]['id']}/resolve",
                          headers=system.cc.operator_headers(), timeout=5)
        assert resp.status_code == 200, resp.text
        wait_for(lambda: hal.shown == "resolved", what="resolved ack")
    finally:
        agent.stop()
    assert len(incidents(system)) == 1


def led_levels(pin, seconds: float) -> list[tuple[float, bool]]:
    """The ring light over `seconds`, from gpiozero's mock pin, which records every change with the
    time spent in the level before: the level at the start, then (seconds before, new level)."""
    pin.clear_states()
    time.sleep(seconds)
    return [(round(s.timestamp, 2), bool(s.state)) for s in pin.states]


def test_pi_agent_ring_light_pulses_for_dispatched_unlike_acknowledged(
        mosquitto: MosquittoProcess, mqtt_client: Callable[..., MqttClient], tmp_path: Path) -> None:
    """The gateway's signed acks, published on the real broker as the gateway does (the test signs
    them with the button's key): "acknowledged" keeps the light on without a break, "dispatched"
    (an agency accepted) makes it dip twice in every 1.4 s (firmware/lib/siagafw/indicator.py)."""
    device_id, secret_hex, password = "pi-disp-01", "5a" * 32, "pi-disp-password"
    mosquitto.add_device(device_id, password)
    factory = MockFactory()
    hal = GpioHal(pin_factory=factory, network_up=lambda: True)
    factory.pin(PINS["tamper"]).drive_low()
    agent = Agent(device_config(device_id, secret_hex, mosquitto.port, password), tmp_path / "state", hal).start()
    gateway = mqtt_client(mosquitto, mosquitto.gateway_user, mosquitto.gateway_password)
    signer = proto.Signer(proto.secret_from_hex(secret_hex))
    sos, led = factory.pin(PINS["sos"]), factory.pin(PINS["led"])

    def ack(seq: int, state: str) -> None:
        body = proto.encode(proto.ack_body(device_id, seq, state, "inc-1", 0))
        gateway.publish(proto.topic(device_id, "ack"), signer.seal(body))
        wait_for(lambda: hal.shown == state, what=f"{state} shown")

    try:
        wait_for(lambda: hal.shown == "idle", what="agent connected")
        sos.drive_low()
        time.sleep(0.6)                                 # past the 300 ms long press
        sos.drive_high()
        seq = wait_for(agent.device.outbox.seqs, what="an alarm in the outbox")[0]
        ack(seq, "received")
        ack(seq, "acknowledged")
        acknowledged = led_levels(led, 1.5)
        ack(seq, "dispatched")
        dispatched = led_levels(led, 3.0)
    finally:
        agent.stop()
    # Acknowledged: lit all along. Dispatched: two short dips per 1.4 s cycle, so four in 3 s (the
    # first may fall before the sampling starts), each about 200 ms dark.
    assert acknowledged == [(0.0, True)], acknowledged
    dark = [held for (held, on) in dispatched[2:] if on]
    assert dispatched != acknowledged and 3 <= len(dark) <= 5, dispatched
    assert all(0.1 <= held <= 0.4 for held in dark), dispatched


def test_agent_command_runs_as_a_service_would_and_stops_on_sigterm(system: System, tmp_path: Path) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys

    creds = system.new_device("pi-0002")
    config = tmp_path / "siaga.json"
    config.write_text(json.dumps(device_config(creds.device_id, creds.secret_hex, system.broker.port,
                                               creds.mqtt_password)))
    proc = subprocess.Popen([sys.executable, "-m", "siaga.cli", "agent", "run", "--config", str(config),
                             "--state", str(tmp_path / "state")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
    try:
        def seen() -> bool:
            device = httpx.get(f"{system.gateway.url}/api/v1/devices/pi-0002", headers=system.gateway.admin_headers,
                               timeout=5).json()
            return device["last_seen_ms"] is not None and device["firmware"] is not None
        wait_for(seen, timeout_s=15, what="first heartbeat from the agent")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        output = proc.stdout.read().decode()
        proc.stdout.close()
    assert "Traceback" not in output, output
    assert creds.secret_hex not in output


def test_pi_agent_counts_a_press_from_its_edge_when_a_step_was_held_up(tmp_path: Path) -> None:
    """gpiozero's edge callbacks latch the press while the agent's loop is busy: held 1.9 s in all,
    of which the loop sees only the last 0.4 s, the press still makes an alarm."""
    stall = threading.Event()

    def network_up() -> bool:
        if stall.is_set():
            stall.clear()
            time.sleep(3.0)                     # a step held up, as by a slow system call
        return True

    factory = MockFactory()
    hal = GpioHal(pin_factory=factory, network_up=network_up)
    factory.pin(PINS["tamper"]).drive_low()
    sos = factory.pin(PINS["sos"])
    cfg = device_config("pi-latch-01", "ab" * 32, free_port(), "pw",
                        button={"long_ms": 1000, "cancel_ms": 0, "debounce_ms": 30})
    agent = Agent(cfg, tmp_path / "state", hal).start()
    try:
        time.sleep(0.3)
        stall.set()
        began = time.monotonic()
        time.sleep(1.5)
        sos.drive_low()
        time.sleep(max(0.0, began + 3.4 - time.monotonic()))
        sos.drive_high()
        alarms = wait_for(agent.device.outbox.seqs, timeout_s=5, what="an alarm in the outbox")
    finally:
        agent.stop()
    assert len(alarms) == 1


class RecordingHal(GpioHal):
    def __init__(self, *args: object, **kwargs: object) -> None:
        self.events: list[tuple[str, str]] = []
        super().__init__(*args, **kwargs)

    def event(self, name: str, detail: str) -> None:
        self.events.append((name, detail))
        super().event(name, detail)


def test_pi_agent_modem_port_talks_to_the_modem_simulator_and_survives_its_loss(tmp_path: Path) -> None:
    """The HAL's modem port on the modem simulator's pty: a command written with modem_write is
    answered, an SMS delivered by the simulated SMS centre comes back from modem_read as its +CMTI
    indication, reads never block, and when the simulator goes away (a USB modem unplugged) the HAL
    reports one modem_fault and the agent's loop keeps stepping."""
    factory = MockFactory()
    with ModemSim(delay_ms=20) as sim:
        path = sim.path("button")
        cfg = device_config("pi-modem-01", "cd" * 32, free_port(), "pw",
                            sms={"gateway": sim.number("gateway"), "fallback_s": 30, "test_every_s": 0,
                                 "device": path})
        assert modem_settings(cfg) == (path, 115200)
        assert modem_settings(cfg, "/dev/ttyUSB2") == ("/dev/ttyUSB2", 115200)
        assert modem_settings(device_config("x", "cd" * 32, 1, "pw")) == (None, 115200)

        # Reopening at every step (retry 0 ms) shows that a port that stays gone is reported once.
        hal = RecordingHal(pin_factory=factory, network_up=lambda: True, modem_port=path, modem_retry_ms=0)
        factory.pin(PINS["tamper"]).drive_low()
        try:
            heard = b""

            def until(marker: bytes) -> bool:
                nonlocal heard
                began = time.monotonic()
                heard += hal.modem_read() or b""
                assert time.monotonic() - began < 0.1, "modem_read blocked"
                return marker in heard

            hal.modem_write(b"AT+CMGF=1\r")
            wait_for(lambda: until(b"OK\r\n"), timeout_s=3, what="the simulator's OK through modem_read")
            heard = b""
            sim.inject("button", "+62999", "halo")
            wait_for(lambda: until(b"+CMTI:"), timeout_s=3, what="the new-message indication")
            assert hal.events == []

            agent = Agent(cfg, tmp_path / "state", hal)   # stepped here, in this thread, not started
            for _ in range(5):
                agent.device.step()
            sim.close()                                   # the modem vanishes
            steps = agent.device.steps
            for _ in range(20):
                agent.device.step()
                hal.modem_write(b"AT\r")
                assert hal.modem_read() is None
            assert agent.device.steps == steps + 20
            faults = [detail for name, detail in hal.events if name == "modem_fault" and path in detail]
            assert len(faults) == 1, hal.events           # once, not once a step
            agent.device.mqtt.disconnect()
        finally:
            hal.close()

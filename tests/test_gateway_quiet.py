"""A district at night (issue 12): nothing arrives for a while, and the gateway must neither drop
its own connection to the broker nor, on reconnecting, light up old incidents on the buttons.
The real gateway, Mosquitto and command center, with a 1 s keepalive so that a minute of night fits
into seconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from siaga.broker.process import MosquittoProcess
from tests.support.devices import SimButton
from tests.support.system import System, start_system

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

# Five keepalive periods: ten of the gateway's pings (one per keepalive/2 when idle), and more than three
# times the 1.5 s of silence after which Mosquitto drops a client that does not ping.
QUIET_S = 5


@pytest.fixture
def system(tmp_path: Path, mosquitto: MosquittoProcess) -> Iterator[System]:
    yield from start_system(tmp_path, mosquitto, mqtt_settings="keepalive_s = 1")


def test_a_quiet_link_stays_up_and_sends_the_buttons_nothing(system: System) -> None:
    button = SimButton(system.new_device("night-001"), system.broker.port).connect()
    seq, frame = button.alarm_frame()
    button.publish("alarm", frame)
    button.wait_ack(seq)
    time.sleep(1.0)                              # the "received" ack and any retained copy are in
    before = len(button.acks)
    time.sleep(QUIET_S)                          # no message at all, five keepalive periods
    assert len(button.acks) == before, button.acks[before:]
    metrics = system.gateway.metrics()
    assert metrics["mqtt_connections"] == 1.0, metrics
    assert metrics["mqtt_connected"] == 1.0
    assert "exceeded timeout" not in system.broker.log_text()

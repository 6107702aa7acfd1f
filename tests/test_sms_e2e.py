"""The SMS path from end to end (issue 17): the button's firmware under the real MicroPython
interpreter, its modem and the gateway's in the modem simulator (two ptys and an SMS centre with a
delay), the real gateway reading its modem over pyserial, a real Mosquitto and the reference
command center. Nothing between the press and the light is mocked.

One system serves both tests; each uses a button and a SIM number of its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.firmware import FirmwareProcess, device_config, events_at_cc, incidents_of, seq_of
from tests.support.net import HoldingProxy, free_port
from tests.support.system import GATEWAY_NUMBER, SmsRig, sms_rig
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto, pytest.mark.micropython]

PHONES = {"pole": "+6281200000011", "school": "+6281200000012"}
DELAY_MS = 1500          # the simulated SMS centre's delivery time, each way
FALLBACK_S = 5           # the smallest fallback the config takes
SLACK_S = 4.0            # the firmware's and the gateway's own work, on a busy two-core machine


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmsRig]:
    with sms_rig(tmp_path_factory.mktemp("sms-e2e"), PHONES, delay_ms=DELAY_MS,
                 sms_settings="ack_min_interval_s = 1\n") as made:
        yield made


def sms_button(rig: SmsRig, tmp_path: Path, name: str, mqtt_port: int, **mqtt: object) -> tuple[str, FirmwareProcess]:
    """A button registered with its SIM's number, whose modem is the simulator's modem `name`."""
    device_id = f"pdg-sms-{name}"
    creds = rig.system.new_device(device_id, phone=PHONES[name])
    cfg = device_config(device_id, creds.secret_hex, mqtt_port, creds.mqtt_password,
                        sms={"gateway": GATEWAY_NUMBER, "fallback_s": FALLBACK_S, "test_every_s": 0,
                             "device": rig.sim.path(name)})
    cfg["mqtt"].update(mqtt)
    return device_id, FirmwareProcess(tmp_path / name, cfg, outputs=True)


def sms_from(rig: SmsRig, name: str, tag: str) -> list[str]:
    """The texts the SMS centre took from modem `name` that begin with `tag`."""
    number = PHONES[name]
    return [e["text"] for e in rig.sim.events
            if e.get("event") == "submitted" and e.get("from") == number and e.get("text", "").startswith(tag)]


def test_with_the_broker_unreachable_a_press_arrives_by_sms_once_and_the_button_shows_the_sms_ack(
        rig: SmsRig, tmp_path: Path) -> None:
    system = rig.system
    nowhere = free_port()                       # nothing listens: every MQTT connect is refused
    device_id, fw = sms_button(rig, tmp_path, "pole", nowhere)
    with fw:
        fw.expect("EVT modem_ready", timeout_s=20)
        if not fw.seen("EVT connect_failed"):
            fw.expect("EVT connect_failed")
        fw.hold(500)
        pressed = time.monotonic()
        seq = seq_of(fw.expect("EVT alarm"))
        fw.expect(f"EVT sms_sent seq={seq}", timeout_s=FALLBACK_S + 10)
        # At the command center within the fallback time plus the SMS centre's delay.
        wait_for(lambda: events_at_cc(system, device_id) or None, FALLBACK_S + DELAY_MS / 1000 + SLACK_S,
                 "the alarm at the command center")
        arrived_s = time.monotonic() - pressed
        # The gateway's signed ack comes back by SMS, and the button shows it.
        fw.expect(f"EVT delivered seq={seq}", timeout_s=DELAY_MS / 1000 + SLACK_S + 5)
        fw.expect(f"EVT ack seq={seq} state=received via=sms")
        fw.expect("IND received")
        assert fw.outbox() == []

        # The operator acknowledges: that state too reaches the button by SMS.
        incident = incidents_of(system, device_id)[0]
        resp = httpx.post(f"{system.cc.url}/api/v1/incidents/{incident['id']}/acknowledge",
                          headers=system.cc.operator_headers(), timeout=5)
        assert resp.status_code == 200, resp.text
        fw.expect(f"EVT ack seq={seq} state=acknowledged via=sms", timeout_s=DELAY_MS / 1000 + SLACK_S + 10)
        fw.expect("IND acknowledged")
        fw.drain(1.0)

    assert arrived_s <= FALLBACK_S + DELAY_MS / 1000 + SLACK_S, arrived_s
    events = events_at_cc(system, device_id)
    assert [e["seq"] for e in events] == [seq]                 # exactly once
    incident = incidents_of(system, device_id)[0]
    assert incident["location"]["lat"] == pytest.approx(-6.175392)   # the place the SMS carried
    assert incident["location"]["address"] == "Jl. Medan Merdeka Barat 12"   # the registry's address
    assert len(sms_from(rig, "pole", "SG1A")) == 1             # and sent by SMS once
    assert not fw.seen("EVT connected")                        # MQTT never got through


def test_with_both_paths_up_and_the_mqtt_ack_slow_an_alarm_sent_on_both_is_one_alarm(
        rig: SmsRig, tmp_path: Path) -> None:
    system = rig.system
    with HoldingProxy(system.broker.port) as proxy:
        # A PUBACK may take up to 20 s on this link, so the button keeps it while the uplink holds.
        device_id, fw = sms_button(rig, tmp_path, "school", proxy.port, timeout_ms=20000)
        with fw:
            fw.expect("EVT connected", timeout_s=15)
            if not fw.seen("EVT modem_ready"):
                fw.expect("EVT modem_ready", timeout_s=20)
            duplicates_before = system.gateway.metrics().get("duplicates_total", 0.0)
            proxy.hold()                        # the button's bytes to the broker now wait
            fw.hold(500)
            seq = seq_of(fw.expect("EVT alarm"))
            fw.expect(f"EVT published seq={seq}")          # on its way over MQTT, held in the uplink
            fw.expect(f"EVT sms_sent seq={seq}", timeout_s=FALLBACK_S + 10)
            wait_for(lambda: events_at_cc(system, device_id) or None, DELAY_MS / 1000 + SLACK_S + 5,
                     "the SMS copy at the command center")
            fw.expect(f"EVT delivered seq={seq}", timeout_s=DELAY_MS / 1000 + SLACK_S + 5)
            proxy.release()                     # the MQTT copy arrives late
            wait_for(lambda: system.gateway.metrics().get("duplicates_total", 0.0) > duplicates_before, 15,
                     "the MQTT copy at the gateway, recognised as the same alarm")
            fw.drain(DELAY_MS / 1000 + 2.0)
            assert fw.outbox() == []

    # The late MQTT copy was answered over MQTT only: one SMS ack, for the SMS copy.
    acks = [e["text"] for e in rig.sim.events if e.get("event") == "submitted" and e.get("from") == GATEWAY_NUMBER
            and e.get("to") == PHONES["school"]]
    assert len(acks) == 1 and acks[0].startswith(f"SG1K {device_id} {seq} received "), acks

    assert [e["seq"] for e in events_at_cc(system, device_id)] == [seq]   # one alarm, not two
    assert len(sms_from(rig, "school", "SG1A")) == 1
    assert len(incidents_of(system, device_id)) == 1

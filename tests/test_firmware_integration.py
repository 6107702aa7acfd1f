"""The button firmware under the real MicroPython unix port (fake HAL only) against a real Mosquitto
from broker/ config, the real gateway and the reference command center, each a separate process.
Each test breaks one thing: a tap, a cancel, the broker (SIGKILL), a forged ack, the button itself.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from siaga.broker import certs
from siaga.broker.config import TlsListener
from siaga.broker.process import MosquittoProcess
from siagafw import proto
from tests.support.firmware import (
    FirmwareProcess,
    button,
    device_config,
    events_at_cc,
    incidents_of,
    indicator_states,
    seq_of,
)
from tests.support.mosquitto import MqttClient
from tests.support.net import free_port
from tests.support.system import System, running_again, shared_system
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.micropython, pytest.mark.mosquitto]

BROKER_DOWN_S = 12.0


@pytest.fixture(scope="module")
def module_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    yield from shared_system(tmp_path_factory.mktemp("system"))


@pytest.fixture
def system(module_system: System) -> System:
    """One broker, command center and gateway for the module: each test has a device of its own
    and asserts only about that device (its incidents, its events, its indicator), and what a test
    kills is running again, and connected, before the next one begins."""
    return running_again(module_system)


# --------------------------------------------------------------------------------- presses


def test_long_press_delivers_one_alarm_and_the_led_reaches_acknowledged(system: System, tmp_path: Path) -> None:
    creds, fw = button(system, tmp_path, "jkt-fw-press-01",
                       button={"long_ms": 300, "cancel_ms": 400, "debounce_ms": 20})
    with fw:
        fw.expect("EVT connected")
        fw.expect("IND idle")
        fw.hold(500)
        fw.expect("IND armed")                       # held long enough; the cancel window runs
        seq = seq_of(fw.expect("EVT alarm"))
        fw.expect("IND sending")
        fw.expect(f"EVT delivered seq={seq}")        # the gateway's signed "received" ack
        fw.expect("IND received")
        assert fw.outbox() == []
        incident = wait_for(lambda: incidents_of(system, creds.device_id))[0]
        assert incident["kind"] == "general" and incident["test"] is False

        resp = httpx.post(f"{system.cc.url}/api/v1/incidents/{incident['id']}/acknowledge",
                          headers=system.cc.operator_headers(), timeout=5)
        assert resp.status_code == 200, resp.text
        fw.expect(f"EVT ack seq={seq} state=acknowledged")
        fw.expect("IND acknowledged")
        # The indicator reaches the pins: a steady ring light and three long beeps.
        outs = [x for x in fw.drain(3.5) if x.startswith("OUT")]   # longer than a re-send would wait
        assert outs and all(x.startswith("OUT 1 ") for x in outs), outs
        assert outs.count("OUT 1 1 1") >= 2 and outs[-1] == "OUT 1 0 1", outs

    states = indicator_states(fw)
    assert states[states.index("armed"):] == ["armed", "sending", "received", "acknowledged"], states
    assert [seq_of(line) for line in fw.seen("EVT published")] == [seq]   # sent exactly once
    assert [e["seq"] for e in events_at_cc(system, creds.device_id)] == [seq]


def test_short_taps_send_nothing(system: System, tmp_path: Path) -> None:
    creds, fw = button(system, tmp_path, "jkt-fw-tap-01", types=["medical"])
    with fw:
        fw.expect("EVT connected")
        fw.hold(100)                  # a brush against the SOS button
        fw.hold(100, "medical")       # and a child's tap on a type button
        lines = fw.drain(1.5)
    assert not [x for x in lines if x.startswith(("EVT alarm", "EVT published", "IND armed", "IND sending"))], lines
    assert fw.outbox() == []
    assert incidents_of(system, creds.device_id) == []


def test_cancel_within_the_window_sends_nothing(system: System, tmp_path: Path) -> None:
    creds, fw = button(system, tmp_path, "jkt-fw-cancel-01",
                       button={"long_ms": 300, "cancel_ms": 2000, "debounce_ms": 20})
    with fw:
        fw.expect("EVT connected")
        fw.hold(500)
        fw.expect("IND armed")
        time.sleep(0.2)
        fw.hold(100)                  # pressed again inside the 2 s window
        fw.expect("EVT cancelled")
        fw.expect("IND cancelled")
        lines = fw.drain(3.0)         # well past the end of the window
    assert not [x for x in lines if x.startswith(("EVT alarm", "EVT published"))], lines
    assert fw.seen("EVT alarm") == [] and fw.outbox() == []
    assert incidents_of(system, creds.device_id) == []


def test_type_button_and_gps_fix_travel_to_the_command_center(system: System, tmp_path: Path) -> None:
    creds, fw = button(system, tmp_path, "jkt-fw-mobile-01", types=["fire"], gps={"max_age_s": 60})
    with fw:
        fw.expect("EVT connected")
        # A u-blox receiver's RMC sentence for a point in Kemayoran, checksum included.
        fw.send("nmea $GNRMC,031209.00,A,0609.00000,S,10650.58000,E,0.012,,241126,,,A*7B")
        fw.hold(600, "fire")
        seq = seq_of(fw.expect("EVT alarm"))
        fw.expect(f"EVT delivered seq={seq}")
    incident = wait_for(lambda: incidents_of(system, creds.device_id))[0]
    assert incident["kind"] == "fire"
    assert incident["location"]["lat"] == pytest.approx(-6.15)
    assert incident["location"]["lon"] == pytest.approx(106.843)


def test_lid_open_long_press_is_a_test_alarm_end_to_end(system: System, tmp_path: Path) -> None:
    creds, fw = button(system, tmp_path, "jkt-fw-test-01")
    with fw:
        fw.expect("EVT connected")
        fw.send("tamper 1")           # the technician opens the enclosure
        fw.expect("IND test_mode")
        fw.hold(600)
        line = fw.expect("EVT alarm")
        assert line.endswith("test=1"), line
        fw.expect(f"EVT delivered seq={seq_of(line)}")
    incident = wait_for(lambda: incidents_of(system, creds.device_id))[0]
    assert incident["test"] is True
    assert [e["test"] for e in events_at_cc(system, creds.device_id)] == [True]


# --------------------------------------------------------------------------------- failures


def test_broker_killed_after_puback_loses_the_alarm_and_the_button_resends_it_once(
        system: System, tmp_path: Path) -> None:
    creds, fw = button(system, tmp_path, "jkt-fw-brokerkill-01")
    with fw:
        fw.expect("EVT connected")
        # Without the gateway the alarm can only be in the broker when it dies: Mosquitto holds it
        # in memory for the gateway's persistent session and saves only every 10 s.
        system.gateway.kill()
        fw.hold(600)
        seq = seq_of(fw.expect("EVT alarm"))
        fw.expect(f"EVT puback seq={seq}")           # the broker acknowledged the publish...
        system.broker.kill()                        # ...and dies at once: SIGKILL, nothing saved
        killed = time.monotonic()
        fw.expect("EVT link_lost")
        assert fw.outbox() == [seq]                  # a PUBACK is not the gateway's ack
        fw.drain(max(0.0, BROKER_DOWN_S - (time.monotonic() - killed)))
        assert fw.seen("EVT connect_failed"), "the button stopped trying while the broker was down"

        system.broker.start()                       # same port, same persistence directory
        back = time.monotonic()
        fw.expect("EVT connected", timeout_s=10)     # the reconnect backoff is capped at 5 s
        reconnect_s = time.monotonic() - back
        system.gateway.start()
        fw.expect(f"EVT delivered seq={seq}", timeout_s=30)
        fw.expect("IND received")
        assert fw.outbox() == []
        fw.drain(0.5)

    published = [seq_of(line) for line in fw.seen("EVT published")]
    assert len(published) >= 2 and set(published) == {seq}, published   # re-sent, same number
    assert reconnect_s < 10
    wait_for(lambda: events_at_cc(system, creds.device_id))
    time.sleep(1.0)  # any duplicate would have been forwarded by now
    assert [e["seq"] for e in events_at_cc(system, creds.device_id)] == [seq]


def test_forged_ack_never_shows_help_is_coming(system: System, tmp_path: Path,
                                               mqtt_client: Callable[..., MqttClient]) -> None:
    creds, fw = button(system, tmp_path, "jkt-fw-forged-01")
    forger = mqtt_client(system.broker, "siaga-gateway", system.broker.gateway_password, client_id="test-forger")
    ack_topic = proto.topic(creds.device_id, "ack")
    with fw:
        fw.expect("EVT connected")
        system.gateway.kill()                       # no genuine ack can come meanwhile
        fw.hold(600)
        seq = seq_of(fw.expect("EVT alarm"))
        fw.expect(f"EVT puback seq={seq}")
        wrong_key = proto.Signer(bytes(32))
        for state in ("received", "acknowledged"):
            body = proto.encode(proto.ack_body(creds.device_id, seq, state, "inc-999999", 0))
            forger.publish(ack_topic, wrong_key.seal(body))
        # A genuine frame of another kind (the device's own alarm, replayed) is not an ack either.
        forger.publish(ack_topic, (fw.flash / "outbox" / f"{seq:010d}.msg").read_bytes())
        assert fw.expect("EVT ack_rejected") == "EVT ack_rejected bad signature"
        assert fw.expect("EVT ack_rejected") == "EVT ack_rejected bad signature"
        assert fw.expect("EVT ack_rejected") == "EVT ack_rejected malformed"
        fw.drain(0.5)
        assert fw.outbox() == [seq]
        assert "acknowledged" not in indicator_states(fw) and "received" not in indicator_states(fw)

        system.gateway.start()                      # the real ack still gets through
        fw.expect(f"EVT delivered seq={seq}", timeout_s=20)
        fw.expect("IND received")
    assert [e["seq"] for e in wait_for(lambda: events_at_cc(system, creds.device_id))] == [seq]


def test_button_killed_before_delivery_sends_the_same_alarm_after_reboot(system: System, tmp_path: Path) -> None:
    creds, fw = button(system, tmp_path, "jkt-fw-reboot-01")
    with fw:
        fw.expect("EVT connected")
        fw.send("net 0")                            # Wi-Fi gone: the alarm cannot leave the button
        fw.expect("EVT link_lost")
        fw.hold(600)
        seq = seq_of(fw.expect("EVT alarm"))
        fw.expect("IND sending")
        assert fw.outbox() == [seq]
        fw.kill()                                   # power cut: SIGKILL, nothing runs

        fw.drain()
        mark = len(fw.history)
        fw.start()                                  # power back, Wi-Fi back, same flash
        boot = fw.expect("EVT boot")
        assert int(boot.split("next_seq=")[1].split()[0]) > seq   # numbers are never reused
        assert "IND sending" in fw.history[mark:]   # from power-on it shows the pending alarm
        fw.expect("EVT connected")
        fw.expect(f"EVT published seq={seq}")
        fw.expect(f"EVT delivered seq={seq}")
        assert fw.outbox() == []
        fw.drain(0.5)
    assert {seq_of(line) for line in fw.seen("EVT alarm")} == {seq}
    assert [e["seq"] for e in wait_for(lambda: events_at_cc(system, creds.device_id))] == [seq]


def test_button_killed_after_the_broker_took_the_alarm_is_delivered_once(system: System, tmp_path: Path) -> None:
    creds, fw = button(system, tmp_path, "jkt-fw-reboot-02")
    with fw:
        fw.expect("EVT connected")
        system.gateway.kill()
        fw.hold(600)
        seq = seq_of(fw.expect("EVT alarm"))
        fw.expect(f"EVT puback seq={seq}")          # queued for the gateway in the broker...
        fw.kill()                                   # ...and the button dies before any ack
        fw.start()
        fw.expect("EVT connected")
        fw.expect(f"EVT published seq={seq}")       # re-sent from flash: a second copy
        system.gateway.start()
        fw.expect(f"EVT delivered seq={seq}", timeout_s=20)
        fw.drain(1.0)
    assert [e["seq"] for e in wait_for(lambda: events_at_cc(system, creds.device_id))] == [seq]


# --------------------------------------------------------------------------------- supervision


def test_heartbeat_reports_tamper_at_once_and_the_will_marks_a_dead_button(
        system: System, tmp_path: Path, mqtt_client: Callable[..., MqttClient]) -> None:
    creds, fw = button(system, tmp_path, "jkt-fw-hb-01")
    watcher = mqtt_client(system.broker, "siaga-gateway", system.broker.gateway_password, client_id="test-watcher")
    watcher.subscribe(proto.topic(creds.device_id, "status"))
    watcher.subscribe(proto.topic(creds.device_id, "will"))
    signer = proto.Signer(bytes.fromhex(creds.secret_hex))

    def next_body() -> tuple[str, dict[str, Any]]:
        msg = watcher.expect(timeout=10)
        body = signer.open(msg.payload)
        assert body is not None, "status and will are signed with the device secret"
        return msg.topic.rsplit("/", 1)[1], json.loads(body)

    with fw:
        fw.expect("EVT connected")
        kind, first = next_body()                   # one heartbeat right after connecting
        assert kind == "status" and first["tamper"] is False and first["bat"] == 4100
        assert first["fw"] and first["every"] == 60 and first["outbox"] == 0
        fw.send("tamper 1")
        kind, second = next_body()                  # at once, not a minute later
        assert kind == "status" and second["tamper"] is True and second["seq"] > first["seq"]
        fw.kill()                                   # no DISCONNECT: the broker sends the will
        kind, will = next_body()
    assert kind == "will" and will["dev"] == creds.device_id and will["type"] == "will"


@contextlib.contextmanager
def tls_broker(tmp_path: Path, devices: dict[str, str]) -> Iterator[tuple[MosquittoProcess, Path]]:
    ca = certs.make_ca(tmp_path / "pki")
    server = certs.make_server_cert(tmp_path / "pki", ["localhost", "127.0.0.1"])
    tls = TlsListener(port=free_port(), cafile=ca.cert, certfile=server.cert, keyfile=server.key, bind="127.0.0.1")
    with MosquittoProcess(tmp_path / "broker", devices=devices, tls=tls) as broker:
        yield broker, ca.cert


def test_tls_link_verifies_the_broker_against_the_project_ca(tmp_path: Path) -> None:
    if not certs.openssl_available():
        pytest.skip("the openssl command is not installed")
    other_ca = certs.make_ca(tmp_path / "other-pki").cert
    with tls_broker(tmp_path, {"jkt-fw-tls-01": "pw-tls-01"}) as (broker, ca_cert):
        assert broker.tls is not None
        base = device_config("jkt-fw-tls-01", "ab" * 32, broker.tls.port, "pw-tls-01")
        # The address, and the name the certificate carries for the hostname check.
        base["mqtt"]["tls"] = {"ca": str(ca_cert), "server_hostname": "localhost"}
        with FirmwareProcess(tmp_path / "good", base) as fw:
            fw.expect("EVT connected")
            fw.hold(600)
            seq = seq_of(fw.expect("EVT alarm"))
            fw.expect(f"EVT puback seq={seq}")       # the publish crossed the TLS link
        impostor = json.loads(json.dumps(base))
        impostor["mqtt"]["tls"]["ca"] = str(other_ca)
        with FirmwareProcess(tmp_path / "bad", impostor) as fw:
            failed = fw.expect("EVT connect_failed")   # a broker the device's CA did not sign
            lines = fw.drain(1.0)
        assert "EVT connected " not in lines, failed

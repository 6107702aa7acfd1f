"""The button's SMS path under the real MicroPython unix port: the firmware drives the modem
simulator's "button" modem through its pseudo-terminal (sms.device), with the broker unreachable
(the port of a closed socket), and the test plays the gateway through the simulator's SMS centre.
Then a modem that sends garbage, stays silent and vanishes, against a pty of the test's own.
"""

from __future__ import annotations

import os
import re
import select
import threading
import time
import tty
from pathlib import Path

import pytest

from siagafw import proto, sms
from tests.support.firmware import FirmwareProcess, device_config, seq_of
from tests.support.modem import ModemSim
from tests.support.net import free_port

pytestmark = [pytest.mark.micropython, pytest.mark.e2e]

SECRET = "5a" * 32
FALLBACK_S = 5
DELAY_MS = 200
LOOP_BOUND_MS = 50         # as tests/test_firmware_network.py


def stats(fw: FirmwareProcess) -> tuple[int, int]:
    fw.send("stats")
    m = re.fullmatch(r"EVT stats steps=(\d+) loop_max_ms=(\d+)", fw.expect("EVT stats"))
    assert m
    return int(m[1]), int(m[2])


def test_alarm_goes_by_sms_and_only_a_valid_sms_ack_clears_it(tmp_path: Path) -> None:
    dev = "jkt-sms-fw-01"
    signer = proto.Signer(bytes.fromhex(SECRET))
    with ModemSim(delay_ms=DELAY_MS) as sim:
        gateway = sim.number("gateway")
        cfg = device_config(dev, SECRET, free_port(), "pw", net_settle_ms=0,
                            sms={"gateway": gateway, "fallback_s": FALLBACK_S, "device": sim.path("button")})
        with FirmwareProcess(tmp_path / dev, cfg) as fw:
            fw.expect("EVT modem_ready", 10)
            fw.hold(400)
            seq = seq_of(fw.expect("EVT alarm"))
            raised = time.monotonic()
            # (1) Nothing acks it over MQTT: it reaches the gateway's modem by SMS, signed, the
            # same alarm (seq, kind, place), within the fallback time plus the SMS centre's delay.
            event = sim.wait_event(lambda e: e["event"] == "delivered" and e["to"] == gateway, FALLBACK_S + 5)
            assert time.monotonic() - raised < FALLBACK_S + DELAY_MS / 1000 + 2
            alarm = sms.open(signer, event["text"])
            assert alarm is not None and event["from"] == sim.number("button")
            assert (alarm["type"], alarm["dev"], alarm["seq"], alarm["kind"], alarm["test"]) == \
                ("alarm", dev, seq, "general", False)
            assert (alarm["lat_e6"], alarm["lon_e6"]) == (cfg["loc"]["lat_e6"], cfg["loc"]["lon_e6"])
            fw.expect(f"EVT sms_sent seq={seq} kind=alarm")
            # (2) A forged ack, another device's, one for an alarm this button never raised, and
            # plain text: each refused, the alarm stays in the outbox.
            forger = proto.Signer(bytes.fromhex("11" * 32))
            sim.inject("button", gateway, sms.ack_text(forger, dev, seq, "received", 1))
            fw.expect("EVT sms_rejected bad signature")
            sim.inject("button", gateway, sms.ack_text(signer, "jkt-sms-fw-02", seq, "received", 1))
            fw.expect("EVT sms_rejected other device")
            sim.inject("button", gateway, sms.ack_text(signer, dev, seq + 100, "received", 1))
            fw.expect(f"EVT sms_rejected replayed ack seq={seq + 100}")
            assert fw.outbox() == [seq] and not fw.seen("EVT delivered")
            # The real ack, from anyone's number (the signature decides): delivered, shown.
            sim.inject("button", "+62999", sms.ack_text(signer, dev, seq, "received", 2))
            fw.expect(f"EVT delivered seq={seq}")
            fw.expect(f"EVT ack seq={seq} state=received via=sms")
            fw.expect("IND received")
            assert fw.outbox() == []
            sim.inject("button", gateway, sms.ack_text(signer, dev, seq, "received", 2))   # replayed
            fw.expect(f"EVT sms_rejected replayed ack seq={seq}")
            # (3) The backup-path test SMS (its interval is hours: the unix HAL's "smstest" fires it).
            fw.send("smstest")
            event = sim.wait_event(lambda e: e["event"] == "delivered" and e["text"].startswith("SG1T"), 10)
            test = sms.open(signer, event["text"])
            assert test is not None and test["type"] == "test" and test["seq"] > seq
            fw.expect(f"EVT sms_sent seq={test['seq']} kind=test")
            sim.inject("button", gateway, sms.ack_text(signer, dev, test["seq"], "test", 3))
            fw.expect(f"EVT sms_test_ok seq={test['seq']}")
            # Sent once: no second alarm SMS while all this went on.
            button = sim.number("button")
            sent = [e["text"][:4] for e in sim.events if e["event"] == "submitted" and e["from"] == button]
            assert sent == ["SG1A", "SG1T"]


class MuteModem:
    """A pty whose far end the test controls: silent, garbage, or a modem that answers OK."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.answer = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        line = b""
        while not self._stop:
            # select with a timeout, not a blocking read: a read under way would keep the master
            # open past vanish() (the kernel drops the file only when the read returns).
            if not select.select([self.master], [], [], 0.05)[0]:
                continue
            try:
                data = os.read(self.master, 256)
            except OSError:
                return
            for b in data:
                if b != 0x0D:
                    line += bytes([b])
                    continue
                cmd, line = line.strip(b"\x1b \n"), b""
                if not self.answer:
                    continue
                reply = {b"AT+CREG?": b"\r\n+CREG: 0,1\r\n", b"AT+CSQ": b"\r\n+CSQ: 20,0\r\n"}.get(cmd, b"")
                self.write(reply + b"\r\nOK\r\n")

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def vanish(self) -> None:
        self._stop = True
        self._thread.join(2)
        os.close(self.master)
        os.close(self.slave)


def test_modem_garbage_silence_and_loss_keep_the_loop_going(tmp_path: Path) -> None:
    modem = MuteModem()
    cfg = device_config("jkt-sms-fw-03", SECRET, free_port(), "pw", sms={"gateway": "+6281100000001",
                                                                       "device": modem.path})
    with FirmwareProcess(tmp_path / "fw", cfg) as fw:
        fw.expect("EVT boot")
        stats(fw)
        modem.write(b"\xff\xfe\x00" + b"garbage " * 100 + b"\r\n+CMTI: \"SM\",x\r\n")
        fw.expect("EVT modem_fault no answer", 10)
        time.sleep(2)
        steps, gap = stats(fw)
        assert gap < LOOP_BOUND_MS and steps > 100, (steps, gap)
        modem.answer = True                     # back: found at the next re-initialisation
        fw.expect("EVT modem_ready csq=20", 15)
        modem.vanish()                          # the device goes away: reported, never a crash
        fw.expect("EVT modem_fault uart", 10)
        fw.hold(400)
        fw.expect("EVT alarm")                  # the button still takes presses
        steps, gap = stats(fw)
        assert gap < LOOP_BOUND_MS, gap
        assert fw.proc is not None and fw.proc.poll() is None

"""The modem simulator (devices/modemsim.py): AT subset, SMS centre, PDU mode, bad input.

PDU checks decode with python-gsmmodem-new, an implementation independent of the simulator's own.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from gsmmodem.pdu import Concatenation, decodeSmsPdu, encodeSmsSubmitPdu
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.modem import AtPort, ModemSim

BUTTON, GATEWAY = "+6281200000001", "+6281100000001"
ALARM = "SG1A btn-0001 42 sos 0 -949123 100354000 1764460800 0123456789abcdef0123456789abcdef"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sim() -> Iterator[ModemSim]:
    with ModemSim(modems={"button": BUTTON, "gateway": GATEWAY}, delay_ms=30) as s:
        yield s


def fresh(port: AtPort, text_mode: bool = True) -> None:
    """A known state: echo off, errors numeric, storage empty, indications on."""
    port.write(b"\x1b\r")  # leaves a half-typed SMS, if a previous test left one
    time.sleep(0.05)
    port.cmd("ATE0")
    port.lines.clear()
    assert port.cmd(f"AT+CMEE=0;+CMGF={1 if text_mode else 0};+CNMI=2,1,0,0,0;+CMGD=1,4") == ["OK"]


def test_text_mode_round_trip(sim: ModemSim) -> None:
    with AtPort(sim.path("button")) as button, AtPort(sim.path("gateway")) as gateway:
        fresh(button)
        fresh(gateway)
        assert button.cmd("AT") == ["OK"]
        assert button.cmd("AT+CPIN?") == ["+CPIN: READY", "OK"]
        assert button.cmd("AT+CREG?;+CSQ;+COPS?") == ["+CREG: 0,1", "+CSQ: 20,0", '+COPS: 0,0,"SIAGA SIM"', "OK"]
        assert button.cmd("AT+CMGF?;+CSCS=\"GSM\";+CSCS?") == ["+CMGF: 1", '+CSCS: "GSM"', "OK"]
        assert button.cmd('AT+CPMS="SM","SM","SM"') == ["+CPMS: 0,30,0,30,0,30", "OK"]

        reply = button.cmd(f'AT+CMGS="{GATEWAY}"', body=ALARM)
        assert reply[-1] == "OK" and reply[0].startswith("+CMGS: ")
        event = sim.wait_event(lambda e: e["event"] == "delivered" and e["text"] == ALARM)
        assert (event["from"], event["to"], event["parts"]) == (BUTTON, GATEWAY, 1)
        assert sim.wait_event(lambda e: e["event"] == "submitted" and e["ref"] == event["ref"])

        assert gateway.read_until(lambda s: s.startswith("+CMTI:")) == '+CMTI: "SM",1'
        head, text, ok = gateway.cmd("AT+CMGR=1")
        assert head.startswith(f'+CMGR: "REC UNREAD","{BUTTON}",,"') and text == ALARM and ok == "OK"
        assert gateway.cmd("AT+CMGR=1")[0].startswith('+CMGR: "REC READ"')
        assert gateway.cmd('AT+CPMS?') == ['+CPMS: "SM",1,30,"SM",1,30,"SM",1,30', "OK"]
        assert gateway.cmd('AT+CMGL="ALL"')[1] == ALARM

        # The same message in PDU mode, decoded independently.
        head, pdu, ok = gateway.cmd("AT+CMGF=0;+CMGR=1")
        assert head == f"+CMGR: 1,,{len(pdu) // 2 - 1}" and pdu.startswith("00")
        decoded = decodeSmsPdu(pdu)
        assert (decoded["type"], decoded["number"], decoded["text"]) == ("SMS-DELIVER", BUTTON, ALARM)
        assert decoded["time"].utcoffset().total_seconds() == 7 * 3600
        assert abs(time.time() - decoded["time"].timestamp()) < 60

        assert gateway.cmd("AT+CMGD=1") == ["OK"]
        assert gateway.cmd("AT+CMGR=1") == ["OK"]  # an empty slot
        assert gateway.cmd("AT+CMGR=31") == ["+CMS ERROR: 321"]

        # Echo on (the default) echoes the command line.
        assert gateway.cmd("ATE1") == ["OK"]
        assert gateway.cmd("AT+CMGF?") == ["AT+CMGF?", "+CMGF: 0", "OK"]


def test_pdu_mode_send_unicode_and_direct_delivery(sim: ModemSim) -> None:
    with AtPort(sim.path("button")) as button, AtPort(sim.path("gateway")) as gateway:
        fresh(button, text_mode=False)
        fresh(gateway)
        # An SMS-SUBMIT from an independent encoder, UCS2 (outside the GSM alphabet), with an SMSC prefix.
        text = "Gempa! Tolong → Jl. Sudirman 5 ✓"
        pdu = encodeSmsSubmitPdu(GATEWAY, text, reference=7, requestStatusReport=False, smsc="+6281100000000")[0]
        length = len(pdu.data) - pdu.data[0] - 1  # the TPDU without the SMSC address (TS 27.005 §3.5.1)
        reply = button.cmd(f"AT+CMGS={length}", body=pdu.data.hex().upper())
        assert reply[0].startswith("+CMGS: ") and reply[-1] == "OK"
        assert gateway.read_until(lambda s: s.startswith("+CMTI:")) == '+CMTI: "SM",1'
        assert gateway.cmd("AT+CMGF=0;+CMGL=4")[1:2] and decodeSmsPdu(gateway.cmd("AT+CMGR=1")[1])["text"] == text
        # Text mode shows UCS2 data as hexadecimal octets (TS 27.005 §3.1 <data>).
        assert gateway.cmd("AT+CMGF=1;+CMGR=1")[1] == text.encode("utf-16-be").hex().upper()

        # A wrong <length> and a PDU that is no SMS-SUBMIT are refused.
        assert button.cmd(f"AT+CMGS={length + 1}", body=pdu.data.hex()) == ["+CMS ERROR: 304"]
        assert button.cmd("AT+CMGS=8", body="00" + "04" * 8) == ["+CMS ERROR: 304"]
        assert button.cmd("AT+CMGS=8", body="zz") == ["+CMS ERROR: 304"]

        # +CNMI=2,2: delivered straight to the terminal as +CMT, not stored.
        assert gateway.cmd("AT+CMGD=1,4;+CNMI=2,2,0,0,0") == ["OK"]
        sim.inject("gateway", "+62999", "langsung")
        gateway.read_until(lambda s: s.startswith('+CMT: "+62999",,"'))
        assert gateway.read_until(lambda s: True) == "langsung"
        assert gateway.cmd("AT+CMGF=0") == ["OK"]
        sim.inject("gateway", "+62999", "pdu langsung")
        gateway.read_until(lambda s: s.startswith("+CMT: ,"))
        assert decodeSmsPdu(gateway.read_until(lambda s: True))["text"] == "pdu langsung"
        assert gateway.cmd("AT+CPMS?")[0].startswith('+CPMS: "SM",0,30')
        # ESC cancels a message being typed.
        button.write(b'AT+CMGF=1;+CMGS="+62999"\rbatal\x1b')
        assert button.read_until(lambda s: s in ("OK", "ERROR")) == "OK"
        assert button.cmd("AT") == ["OK"]
        assert not [e for e in sim.events if e.get("text") == "batal"]


def test_multipart(sim: ModemSim) -> None:
    long_text = "".join(f"{i:03d} kalimat panjang. " for i in range(20))  # 400 characters: three parts
    with AtPort(sim.path("button")) as button, AtPort(sim.path("gateway")) as gateway:
        fresh(button)
        fresh(gateway, text_mode=False)
        sim.inject("gateway", "+62999", long_text, multipart=True)
        for index in (1, 2, 3):
            assert gateway.read_until(lambda s: s.startswith("+CMTI:")) == f'+CMTI: "SM",{index}'
        listing = gateway.cmd("AT+CMGL=4")
        pdus = [decodeSmsPdu(line) for line in listing[1:-1:2]]
        assert len(pdus) == 3
        concat = [next(u for u in p["udh"] if isinstance(u, Concatenation)) for p in pdus]
        assert {c.parts for c in concat} == {3} and len({c.reference for c in concat}) == 1
        assert "".join(p["text"] for _, p in sorted(zip([c.number for c in concat], pdus, strict=True))) == long_text
        assert all(len(p["text"]) <= 153 for p in pdus)

        # Too long for one SMS without multipart: refused by the control interface.
        sim.inject("gateway", "+62999", long_text, multipart=False)
        sim.wait_event(lambda e: e["event"] == "error")

        # A text-mode send of a long text goes as concatenated parts, as a modem's multipart send.
        assert gateway.cmd("AT+CMGD=1,4") == ["OK"]
        assert button.cmd(f'AT+CMGS="{GATEWAY}"', body=long_text)[-1] == "OK"
        event = sim.wait_event(lambda e: e["event"] == "delivered" and e["from"] == BUTTON and e["part"] == 3)
        assert event["parts"] == 3 and event["text"] == long_text
        for _ in (1, 2, 3):
            gateway.read_until(lambda s: s.startswith("+CMTI:"))
        parts = [decodeSmsPdu(gateway.cmd(f"AT+CMGR={i}")[1]) for i in (1, 2, 3)]
        assert "".join(p["text"] for p in parts) == long_text

        # PDU-mode multipart from an independent encoder (7-bit with headers and fill bits) passes through.
        assert gateway.cmd("AT+CMGD=1,4") == ["OK"] and button.cmd("AT+CMGF=0") == ["OK"]
        for pdu in encodeSmsSubmitPdu(GATEWAY, long_text, reference=1, requestStatusReport=False):
            assert button.cmd(f"AT+CMGS={pdu.tpduLength}", body=pdu.data.hex())[-1] == "OK"
        for _ in (1, 2, 3):
            gateway.read_until(lambda s: s.startswith("+CMTI:"))
        parts = [decodeSmsPdu(gateway.cmd(f"AT+CMGR={i}")[1]) for i in (1, 2, 3)]
        assert "".join(p["text"] for p in parts) == long_text
        assert len({next(u for u in p["udh"] if isinstance(u, Concatenation)).reference for p in parts}) == 1


def fate_of(text: str, event: dict[str, Any]) -> bool:
    return event["event"] in ("lost", "delivered") and event.get("text") == text


def test_delay_and_seeded_loss() -> None:
    def run(seed: int) -> list[str]:
        with ModemSim(delay_ms=300, loss=0.5, seed=seed) as s:
            start = time.monotonic()
            for i in range(12):
                s.inject("gateway", "+62999", f"n{i}")
            fates = [s.wait_event(functools.partial(fate_of, f"n{i}")) for i in range(12)]
            if any(f["event"] == "delivered" for f in fates):
                assert time.monotonic() - start >= 0.3  # no delivery before the configured delay
            s.set(loss=0.0, delay_ms=0)
            s.inject("gateway", "+62999", "after")
            s.wait_event(lambda e: e["event"] == "delivered" and e["text"] == "after", 2)
            return [f["event"] for f in fates]

    first = run(7)
    assert first == run(7)  # the same seed, the same losses
    assert 0 < first.count("lost") < 12


def test_unregistered_and_storage_full(sim: ModemSim) -> None:
    with AtPort(sim.path("button")) as button, AtPort(sim.path("gateway")) as gateway:
        fresh(button)
        fresh(gateway)
        assert button.cmd("AT+CREG=1") == ["OK"]
        sim.registered("button", False)
        assert button.read_until(lambda s: s.startswith("+CREG:")) == "+CREG: 2"
        assert button.cmd("AT+CREG?;+CSQ;+COPS?") == ["+CREG: 1,2", "+CSQ: 99,99", "+COPS: 0", "OK"]
        assert button.cmd(f'AT+CMGS="{GATEWAY}"', body="halo") == ["+CMS ERROR: 331"]
        sim.inject("button", "+62999", "waits for the network")
        sim.wait_event(lambda e: e["event"] == "held" and e["why"] == "not registered")
        sim.registered("button", True)
        assert button.read_until(lambda s: s.startswith("+CREG:")) == "+CREG: 1"
        assert button.read_until(lambda s: s.startswith("+CMTI:")) == '+CMTI: "SM",1'
        assert button.cmd("AT+CREG=0;+CMGD=1,4") == ["OK"]

        # Full storage: the 31st SMS waits in the centre until a message is deleted.
        for i in range(31):
            sim.inject("gateway", "+62999", f"isi {i}")
        held = sim.wait_event(lambda e: e["event"] == "held" and e["text"] == "isi 30")
        assert held["why"] == "storage full"
        gateway.read_until(lambda s: s == '+CMTI: "SM",30')
        assert gateway.cmd("AT+CPMS?")[0] == '+CPMS: "SM",30,30,"SM",30,30,"SM",30,30'
        assert gateway.cmd("AT+CMGD=5") == ["OK"]
        sim.wait_event(lambda e: e["event"] == "delivered" and e["text"] == "isi 30")
        gateway.read_until(lambda s: s == '+CMTI: "SM",5')
        assert gateway.cmd("AT+CMGR=5")[1] == "isi 30"
        # A number that is no modem: accepted from the sender, then rejected by the centre.
        assert button.cmd('AT+CMGS="+6280000"', body="nobody")[-1] == "OK"
        sim.wait_event(lambda e: e["event"] == "rejected" and e["to"] == "+6280000")
        assert gateway.cmd("AT+CMGD=0,4") == ["OK"]


def test_bad_input(sim: ModemSim) -> None:
    with AtPort(sim.path("gateway")) as port:
        fresh(port)
        assert port.cmd("AT+NOPE") == ["ERROR"]
        assert port.cmd("ATX9") == ["ERROR"]
        assert port.cmd("AT+CMGF=7") == ["ERROR"]
        assert port.cmd('AT+CSCS="KLINGON"') == ["ERROR"]
        assert port.cmd("AT+CMEE=1;+NOPE") == ["+CME ERROR: 4"]
        assert port.cmd("AT+CMEE=2;+CMGF=9") == ["+CME ERROR: incorrect parameters"]
        assert port.cmd("AT+CMGD=99") == ["+CMS ERROR: 321"]
        assert port.cmd("AT+CMEE=0") == ["OK"]
        assert port.cmd("AT" + "Z" * 600) == ["ERROR"]  # over-long line, then back in step
        assert port.cmd("AT") == ["OK"]
        port.write(b"\x00\xff\r\r\n\x1a\x1b garbage without the prefix\r")
        assert port.cmd("ATI") == ["Siaga MODEMSIM", "Revision: 1.0 (3GPP TS 27.005/27.007 subset)", "OK"]


FRAGMENTS = [b"AT", b"at", b"AT+CMGS=", b'"+62', b"12", b"\r", b"\n", b"\x1a", b"\x1b", b"AT+CMGF=0", b"AT+CMGF=1",
             b";", b"+CMGR=1", b"+CMGL", b"ATE1", b"Z" * 100, b'AT+CSCS="GSM"', b"\x00", b"\xff", b",", b"?", b"=?"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(FRAGMENTS)), max_size=30).map(b"".join))
def test_garbage_never_breaks_it(sim: ModemSim, garbage: bytes) -> None:
    with AtPort(sim.path("button")) as port:
        port.write(garbage)
        # Whatever state the garbage left (a half-typed SMS, a half line, echo): ESC and CR end it.
        port.write(b"\x1b\r\x1b\rAT+CGMI\r")
        port.read_until(lambda s: s.endswith("Siaga"))
        port.read_until(lambda s: s == "OK")
    assert sim.proc.poll() is None

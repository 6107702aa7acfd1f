"""The gateway's SMS path (issue 17): the real gateway process reads the modem simulator's gateway
modem over pyserial in PDU mode, beside a real Mosquitto and the reference command center.

One system serves the whole module (each test uses devices and sender numbers of its own); the last
test stops and starts the gateway to look at the SIM's storage itself. The gateway polls its modem and
reports itself to the command center every second, so that the modem's state reaches the room at once."""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import time
import tty
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices import modemsim
from siaga.gateway import codec
from siaga.gateway.codec import Alarm, DeviceKey, Reject, RejectReason, SmsTest
from siaga.gateway.config import SmsSettings
from siaga.gateway.metrics import Metrics
from siaga.gateway.mqtt import Inbound
from siaga.gateway.sms import AckLimiter, SenderFlood, SmsIntake, _Ack, _pdu_after, international
from siagafw import proto, sms
from tests.support.devices import SimButton
from tests.support.modem import AtPort, ModemSim
from tests.support.system import GATEWAY_NUMBER, DeviceCredentials, SmsRig, System, sms_rig
from tests.support.waiting import wait_for

PHONES = {"button": "+6281200000001", "button2": "+6281200000002"}   # modems of the simulator
LAT, LON = -950000, 100350000   # Padang


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmsRig]:
    # The modem polled and the gateway's report sent every second, for the modem-state test.
    with sms_rig(tmp_path_factory.mktemp("sms"), PHONES, delay_ms=30, cc_settings="report_every_s = 1",
                 sms_settings="ack_min_interval_s = 2\nflood_per_minute = 10\ncommand_timeout_s = 3\n"
                              "multipart_timeout_s = 5\npoll_s = 1\n") as made:
        yield made


def signer(creds: DeviceCredentials) -> proto.Signer:
    return proto.Signer(bytes.fromhex(creds.secret_hex))


def alarm_sms(creds: DeviceCredentials, seq: int, kind: str = "fire") -> str:
    return sms.alarm_text(signer(creds), creds.device_id, seq, kind, False, LAT, LON, 1764460800)


def cc_seqs(system: System, device_id: str) -> list[int]:
    db = sqlite3.connect(system.cc.db_path)
    try:
        return [r[0] for r in db.execute("SELECT seq FROM alarms WHERE device_id = ? ORDER BY seq", (device_id,))]
    finally:
        db.close()


def sms_audit(system: System, sender: str | None = None) -> list[dict]:
    resp = httpx.get(f"{system.gateway.url}/api/v1/audit?limit=1000", headers=system.gateway.admin_headers, timeout=5)
    resp.raise_for_status()
    return [e for e in resp.json()
            if e["topic"].startswith("sms/") and (sender is None or e["topic"] == f"sms/{sender}")]


def acks_to(sim: ModemSim, number: str, creds: DeviceCredentials) -> list[dict]:
    """The signed acks the SMS centre took from the gateway for `number`, opened with the device's key."""
    out = []
    for e in list(sim.events):
        if e["event"] == "submitted" and e["from"] == GATEWAY_NUMBER and e["to"] == number:
            opened = sms.open(signer(creds), e["text"])
            assert opened is not None and opened["type"] == "ack", e   # signed by the gateway with the device key
            out.append(opened)
    return out


@pytest.mark.e2e
@pytest.mark.mosquitto
def test_an_sms_alarm_is_one_alarm_with_its_mqtt_copy_and_is_acked_by_sms(rig: SmsRig) -> None:
    system, sim = rig.system, rig.sim
    phone = PHONES["button"]
    creds = system.new_device("sms-a-001", phone=phone)
    button = SimButton(creds, system.broker.port).connect()
    try:
        # (a) by SMS alone: one alarm at the command center, a signed "received" ack back by SMS.
        sim.inject("gateway", phone, alarm_sms(creds, 11))
        wait_for(lambda: cc_seqs(system, creds.device_id) == [11], 15, "the SMS alarm at the command center")
        ack = wait_for(lambda: acks_to(sim, phone, creds), 10, "an SMS ack")[0]
        assert (ack["dev"], ack["seq"], ack["state"]) == (creds.device_id, 11, "received")
        # The same alarm over MQTT: a duplicate, re-acknowledged over MQTT, still one alarm.
        _, frame = button.alarm_frame("fire", seq=11)
        button.publish("alarm", frame)
        button.wait_ack(11)
        # (b) first by MQTT, then by SMS (the fallback after a slow MQTT ack): one alarm, and the
        # SMS copy is answered by SMS.
        _, frame = button.alarm_frame("medical", seq=12)
        button.publish("alarm", frame)
        button.wait_ack(12)
        sim.inject("gateway", phone, alarm_sms(creds, 12, "medical"))
        wait_for(lambda: any(a["seq"] == 12 for a in acks_to(sim, phone, creds)), 10, "the SMS ack of seq 12")
        assert cc_seqs(system, creds.device_id) == [11, 12]
        db = sqlite3.connect(system.cc.db_path)
        kinds = dict(db.execute("SELECT seq, kind FROM alarms WHERE device_id = ?", (creds.device_id,)).fetchall())
        db.close()
        assert kinds == {11: "fire", 12: "medical"}
        metrics = system.gateway.metrics()
        assert metrics["sms_received_total"] >= 2 and metrics["sms_acks_sent_total"] >= 2
        assert metrics["duplicates_total"] >= 2 and metrics["sms_modem_up"] == 1
        assert not sms_audit(system, phone)
    finally:
        button.close()


@pytest.mark.e2e
@pytest.mark.mosquitto
def test_bad_sms_are_rejected_with_their_reasons_while_valid_ones_arrive(rig: SmsRig) -> None:
    system, sim = rig.system, rig.sim
    phone = PHONES["button2"]
    creds = system.new_device("sms-c-001", phone=phone)
    stranger = "+6285299990000"
    texts = [
        (phone, alarm_sms(creds, 500)),                                           # valid
        (phone, sms.alarm_text(proto.Signer(secrets.token_bytes(32)), creds.device_id, 501, "fire", False,
                               LAT, LON, None)),                                  # forged MAC
        (phone, alarm_sms(creds, 5)),                                             # older than the window
        (phone, alarm_sms(creds, 500)),                                           # the same SMS again
        (stranger, alarm_sms(creds, 502)),                                        # not the device's phone
        (stranger, sms.alarm_text(proto.Signer(secrets.token_bytes(32)), "ghost-001", 1, "fire", False,
                                  LAT, LON, None)),                               # no such device
        (stranger, "halo, ini siapa?"),                                           # not a Siaga SMS
        ("TELKOMSEL", "Sisa pulsa Anda Rp 1.500. Isi ulang sekarang di *888#"),   # the operator's spam
        (phone, sms.test_text(signer(creds), creds.device_id, 503)),              # the backup-path test
        (phone, alarm_sms(creds, 504, "crime")),                                  # valid
    ]
    for sender, text in texts:
        sim.inject("gateway", sender, text)
    wait_for(lambda: cc_seqs(system, creds.device_id) == [500, 504], 20, "the valid SMS alarms")
    expected = {(500, "received"), (503, "test"), (504, "received")}
    wait_for(lambda: {(a["seq"], a["state"]) for a in acks_to(sim, phone, creds)} >= expected, 15,
             "acks of the alarms and of the test")
    assert all(a["dev"] == creds.device_id for a in acks_to(sim, phone, creds))
    wait_for(lambda: len(sms_audit(system, phone)) + len(sms_audit(system, stranger)) >= 5, 10, "the audit entries")
    entries = sms_audit(system, phone) + sms_audit(system, stranger) + sms_audit(system, "TELKOMSEL")
    assert Counter(e["reason"] for e in entries) == {"bad_signature": 1, "replay": 1, "unknown_sender": 1,
                                                     "unknown_device": 1, "malformed": 2}, entries
    by_reason = {e["reason"]: e for e in entries}
    assert by_reason["unknown_sender"]["device_id"] == creds.device_id
    assert by_reason["unknown_device"]["device_id"] == "ghost-001"
    spam = next(e for e in entries if e["topic"] == "sms/TELKOMSEL")
    assert spam["device_id"] is None and spam["detail"].startswith("not a Siaga SMS: Sisa pulsa")
    metrics = system.gateway.metrics()
    for reason in ("bad_signature", "replay", "unknown_sender", "unknown_device"):
        assert metrics[f'sms_rejected_total{{reason="{reason}"}}'] >= 1, reason
    assert metrics["sms_tests_total"] >= 1


@pytest.mark.e2e
@pytest.mark.mosquitto
def test_a_flood_is_limited_acks_are_coalesced_and_a_multipart_sms_is_one_reject(rig: SmsRig) -> None:
    system, sim = rig.system, rig.sim
    # (e) a long text in three parts: put together, then refused once (it is no Siaga SMS).
    sim.inject("gateway", "+6281300000001", "Pesan panjang " * 30, multipart=True)
    entry = wait_for(lambda: sms_audit(system, "+6281300000001"), 10, "the multipart reject")
    assert len(entry) == 1 and entry[0]["detail"].startswith("not a Siaga SMS: Pesan panjang")
    # (d) 50 SMS from one number: 10 are taken (each refused as not a Siaga SMS), 40 dropped
    # before any decoding, audited once with a count. More than the SIM holds (30): the rest wait
    # at the SMS centre until committed messages are deleted.
    flooder = "+6281399999999"
    for i in range(50):
        sim.inject("gateway", flooder, f"spam {i}")
    # Meanwhile a device's acks: one at once, then at most one per 2 s, the newest per alarm.
    phone = "+6281200000009"   # no modem of the simulator: the SMS centre takes the acks and drops them
    creds = system.new_device("sms-d-001", phone=phone)
    for text in (alarm_sms(creds, 1), alarm_sms(creds, 1), alarm_sms(creds, 1), alarm_sms(creds, 2)):
        sim.inject("gateway", phone, text)
    wait_for(lambda: cc_seqs(system, creds.device_id) == [1, 2], 20, "both alarms despite the flood")
    wait_for(lambda: acks_to(sim, phone, creds), 10, "the first ack")
    time.sleep(0.5)
    assert len(acks_to(sim, phone, creds)) == 1   # the others wait for the device's interval
    wait_for(lambda: Counter(e["reason"] for e in sms_audit(system, flooder)) == {"malformed": 10, "flood": 1}, 20,
             "the flood's audit entries")
    flood = next(e for e in sms_audit(system, flooder) if e["reason"] == "flood")
    assert "over 10 SMS/min" in flood["detail"] and "dropped" in flood["detail"]
    wait_for(lambda: system.gateway.metrics().get('sms_rejected_total{reason="flood"}') == 40, 10,
             "40 flood drops counted")
    wait_for(lambda: {a["seq"] for a in acks_to(sim, phone, creds)} == {1, 2}, 15, "the acks of both alarms")
    sent = acks_to(sim, phone, creds)
    # Seq 1 was acknowledged three times (the alarm, two duplicates) and seq 2 once, but the
    # duplicates' acks waited behind the first and the newer replaced the older.
    assert len(sent) <= 3 and system.gateway.metrics()["sms_acks_dropped_rate_total"] >= 1
    # A flood "from" a button's own number (sender numbers can be forged) does not silence the
    # button: its genuine alarm, over the limit, is still verified and taken.
    victim = system.new_device("sms-d-002", phone="+6281200000010")
    for i in range(12):
        sim.inject("gateway", "+6281200000010", f"SG1A sms-d-002 {i} fire 0 1 2 - {'0' * 32}")
    sim.inject("gateway", "+6281200000010", alarm_sms(victim, 100))
    wait_for(lambda: cc_seqs(system, victim.device_id) == [100], 20, "the genuine alarm within the flood")
    assert system.gateway.health()["mqtt"]   # still answering


def reported_modem(system: System) -> dict | None:
    """The gateway's SMS modem as the command center has it from the gateway's latest report."""
    resp = httpx.get(f"{system.cc.url}/api/v1/gateways", headers=system.cc.operator_headers(), timeout=5)
    resp.raise_for_status()
    return next((g["sms"] for g in resp.json()["gateways"]), None)


@pytest.mark.e2e
@pytest.mark.mosquitto
def test_the_gateway_modem_off_the_network_is_in_the_report_until_it_is_back(rig: SmsRig) -> None:
    system, sim = rig.system, rig.sim
    # The simulator's modem: registered, +CSQ: 20.
    ok = {"up": True, "registered": True, "signal": 20}
    wait_for(lambda: reported_modem(system) == ok, 5, "the modem in the gateway's report")
    sim.registered("gateway", False)
    try:
        # Within one poll (1 s) and one report (1 s) the room knows.
        wait_for(lambda: reported_modem(system) == {"up": True, "registered": False, "signal": None}, 5,
                 "the modem off the network in the report")
    finally:
        sim.registered("gateway", True)
    wait_for(lambda: reported_modem(system) == ok, 5, "the modem back on the network in the report")
    assert "not registered on the network" in system.gateway.log()
    assert "registered on the network again" in system.gateway.log()


@pytest.mark.e2e
@pytest.mark.mosquitto
def test_custody_an_sms_stays_on_the_sim_until_its_alarm_is_committed(rig: SmsRig) -> None:
    system, sim = rig.system, rig.sim
    gateway = system.gateway
    creds = system.new_device("sms-e-001", phone="+6281200000008")
    gateway.stop()
    with AtPort(sim.path("gateway")) as port:
        port.cmd("AT+CMGF=0")
        # Everything the earlier tests sent (the multipart message's parts, the flood) is deleted.
        assert [s for s in port.cmd("AT+CMGL=4") if s.startswith("+CMGL")] == []
        # An alarm that arrives while the gateway is down waits on the SIM.
        sim.inject("gateway", "+6281200000008", alarm_sms(creds, 77))
        sim.wait_event(lambda e: e["event"] == "delivered" and e["from"] == "+6281200000008")
        assert len([s for s in port.cmd("AT+CMGL=4") if s.startswith("+CMGL")]) == 1
    gateway.start()
    wait_for(lambda: cc_seqs(system, creds.device_id) == [77], 15, "the alarm kept on the SIM")
    wait_for(lambda: gateway.metrics().get("sms_acks_sent_total", 0) and any(
        e["event"] == "submitted" and e["to"] == "+6281200000008" for e in sim.events), 10, "its ack")
    gateway.stop()   # (the module's teardown finds it stopped)
    with AtPort(sim.path("gateway")) as port:
        port.cmd("AT+CMGF=0")
        assert [s for s in port.cmd("AT+CMGL=4") if s.startswith("+CMGL")] == []


# ---- decode_sms alone ------------------------------------------------------------------------------

KEY = DeviceKey(bytes(range(32)))
PHONE = "+6281200000001"


def lookup(device_id: str) -> DeviceKey | None:
    return KEY if device_id == "btn-0001" else None


def phone_of(device_id: str) -> str | None:
    return PHONE if device_id == "btn-0001" else None


def test_decode_sms_takes_signed_alarms_and_tests_from_the_registered_phone() -> None:
    s = proto.Signer(KEY.secret)
    alarm = codec.decode_sms(PHONE, sms.alarm_text(s, "btn-0001", 9, "medical", True, LAT, LON, None), lookup,
                             phone_of, lambda d: ("Jl. Sudirman 1", "13.71"))
    assert isinstance(alarm, Alarm)
    assert (alarm.seq, alarm.kind, alarm.test, alarm.raised_ts, alarm.uptime_ms) == (9, "medical", True, None, 0)
    assert (alarm.location.lat_e6, alarm.location.address, alarm.location.area) == (LAT, "Jl. Sudirman 1", "13.71")
    assert codec.decode_sms(PHONE, sms.test_text(s, "btn-0001", 10), lookup, phone_of) == SmsTest("btn-0001", 10)
    pending = DeviceKey(secrets.token_bytes(32), pending=KEY.secret)
    assert isinstance(codec.decode_sms(PHONE, sms.test_text(s, "btn-0001", 11), lambda d: pending, phone_of), SmsTest)
    ack = codec.decode_sms(PHONE, sms.ack_text(s, "btn-0001", 9, "received", 1), lookup, phone_of)
    # An ack the gateway signed, sent back to it: refused, but no fault of the button (not authenticated).
    assert isinstance(ack, Reject) and ack.reason is RejectReason.MALFORMED and not ack.authenticated
    revoked = codec.decode_sms(PHONE, sms.test_text(s, "btn-0001", 12), lambda d: DeviceKey(KEY.secret, True), phone_of)
    assert isinstance(revoked, Reject) and revoked.reason is RejectReason.REVOKED
    nophone = codec.decode_sms(PHONE, sms.test_text(s, "btn-0001", 12), lookup, lambda d: None)
    assert isinstance(nophone, Reject) and nophone.reason is RejectReason.UNKNOWN_SENDER


@settings(max_examples=300, deadline=None)
@given(sender=st.text(max_size=20), text=st.one_of(
    st.text(max_size=200),
    st.builds(" ".join, st.lists(st.sampled_from(
        ["SG1A", "SG1T", "SG1K", "btn-0001", "0", "1", "-1", "007", "fire", "-", "9" * 11, "a" * 32, ""]),
        max_size=10))))
def test_decode_sms_never_raises(sender: str, text: str) -> None:
    out = codec.decode_sms(sender, text, lookup, phone_of)
    assert isinstance(out, Alarm | SmsTest | Reject)
    if isinstance(out, Reject):
        assert out.topic == f"sms/{sender}"[:128] and len(out.detail) <= 300


# ---- the intake's parts alone: reassembly, expiry, rate limits ---------------------------------------

def deliver_pdu(sender: str, text: str, udh: bytes = b"") -> str:
    """What a modem lists in PDU mode: no SMSC ("00"), then the SMS-DELIVER TPDU, in hex."""
    tpdu = modemsim.encode_deliver(sender, datetime(2026, 11, 30, 8, 0, tzinfo=UTC), modemsim.DCS_GSM7, text, udh)
    return "00" + tpdu.hex().upper()


async def test_the_intake_reassembles_parts_in_any_order_and_drops_an_incomplete_message() -> None:
    now = [1_000_000]
    audited: list[tuple[RejectReason, str | None, str, str]] = []

    async def audit(reason: RejectReason, device_id: str | None, topic: str, detail: str) -> None:
        audited.append((reason, device_id, topic, detail))

    queue: asyncio.Queue[Inbound] = asyncio.Queue()
    intake = SmsIntake(SmsSettings(port="/dev/null", multipart_timeout_s=60), queue, metrics=Metrics(), audit=audit,
                       clock=lambda: now[0])
    # Three parts of message 7, last first; a part of message 8 that never completes; one single SMS.
    for index, (ref, total, part, text) in enumerate([(7, 3, 3, "ga"), (8, 2, 1, "sepo"), (7, 3, 1, "Si"),
                                                     (7, 3, 2, "a")], start=1):
        await intake._take(index, 0, deliver_pdu("+6281200000001", text, modemsim.concat_ie(ref, total, part)))
    await intake._take(5, 1, deliver_pdu("+6281200000002", "tunggal"))
    await intake._take(6, 0, "0007ZZ")   # not a PDU: refused and deleted at once
    whole, single = queue.get_nowait(), queue.get_nowait()
    assert queue.empty()
    assert (whole.topic, whole.payload, whole.qos) == ("sms/+6281200000001", b"Siaga", 1)
    assert (single.topic, single.payload) == ("sms/+6281200000002", b"tunggal")
    assert audited[0][0] is RejectReason.MALFORMED and "could not be decoded" in audited[0][3]
    assert intake._delete == {6}
    intake.ack(whole)    # committed: all three parts go
    assert intake._delete == {1, 3, 4, 6}
    await intake._expire_parts(now[0] + 59_000)
    assert len(audited) == 1
    await intake._expire_parts(now[0] + 60_000)
    assert audited[1][:3] == (RejectReason.MALFORMED, None, "sms/+6281200000001")
    assert "1 of 2 parts" in audited[1][3] and intake._delete == {1, 2, 3, 4, 6} and not intake._parts


def test_acks_wait_for_the_rate_limits_and_the_newest_state_of_an_alarm_replaces_the_older() -> None:
    limiter = AckLimiter(min_interval_ms=20_000, per_hour=3, per_minute=3)
    ack = lambda state: _Ack("+62812", state)  # noqa: E731
    assert limiter.offer("a", 1, ack("received")) == 0
    assert limiter.take(0) == ("a", 1, ack("received"))
    assert limiter.offer("a", 1, ack("acknowledged")) == 0
    assert limiter.offer("a", 1, ack("dispatched")) == 1      # coalesced: the older waiting one is dropped
    assert limiter.offer("b", 9, ack("received")) == 0
    assert limiter.take(1_000) == ("b", 9, ack("received"))   # another device is not held up
    assert limiter.take(1_000) is None and limiter.next_at(1_000) == 20_000
    assert limiter.take(20_000) == ("a", 1, ack("dispatched"))
    limiter.offer("a", 2, ack("received"))
    assert limiter.take(40_000) is None                       # three in this minute already (per_minute)
    assert limiter.take(60_000) == ("a", 2, ack("received"))
    limiter.offer("a", 3, ack("received"))
    assert limiter.take(80_000) is None                       # a's third in the hour was its last (per_hour)
    assert limiter.next_at(80_000) == 3_600_000
    assert limiter.take(3_600_000) == ("a", 3, ack("received"))
    flood = SenderFlood(per_minute=2)
    assert [flood.allow("x", t) for t in (0, 1, 2, 3)] == [True, True, False, False]
    assert flood.audit_due("x", 3) == 2 and flood.audit_due("x", 4) is None
    assert flood.allow("y", 4) and flood.allow("x", 60_000)


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not within the time")


async def test_a_modem_that_stops_answering_is_reconnected(caplog: pytest.LogCaptureFixture) -> None:
    """A pty of the test's own as the modem: silent, then answering OK to everything, then silent."""
    master, slave = os.openpty()
    tty.setraw(slave)
    answering = [False]

    def answer() -> None:
        data = os.read(master, 4096)
        if answering[0]:
            os.write(master, b"\r\nOK\r\n" * data.count(b"\r"))

    loop = asyncio.get_running_loop()
    loop.add_reader(master, answer)
    intake = SmsIntake(SmsSettings(port=os.ttyname(slave), command_timeout_s=0.2), asyncio.Queue(),
                       metrics=Metrics(), audit=lambda *a: asyncio.sleep(0))
    assert intake.status()["up"] is False and not intake.tried
    running = asyncio.create_task(intake.run())
    try:
        await asyncio.sleep(0.8)
        assert not intake.up and "no answer to AT" in caplog.text
        assert intake.tried and intake.status() == {"up": False, "registered": None, "signal": None,
                                                    "since": intake.since}
        answering[0] = True
        await eventually(lambda: intake.up)
        # OK to everything, no +CREG or +CSQ line: up, but its network state is not known.
        assert (intake.registered, intake.signal) == (None, None)
        answering[0] = False
        intake.send("+6281200000001", "SG1K x 1 received 1 " + "0" * 32, device_id="x", seq=1)
        await eventually(lambda: not intake.up)
        assert "no answer to AT+CMGS" in caplog.text and intake.sessions == 1
    finally:
        await intake.stop()
        await asyncio.wait_for(running, 5)
        loop.remove_reader(master)
        os.close(master)
        os.close(slave)


def test_sender_numbers_in_any_form_are_compared_as_e164_and_only_hex_lines_are_pdus() -> None:
    # National, with the international prefix, without the "+": all the registry's "+62812...".
    for written in ("+6281234567890", "081234567890", "006281234567890", "6281234567890"):
        assert international(written, "62") == "+6281234567890", written
    for other in ("TELKOMSEL", "123", "62812"):   # a name, a short code, too short to be a phone
        assert international(other, "62") == other
    # An unsolicited line between a header and its PDU is skipped, never taken for the PDU (which
    # would fail to decode and have the real message deleted unread).
    lines = ["+CMGL: 3,0,,24", "UNDER-VOLTAGE WARNNING", "RING", "0791261800000001", "+CMGL: 4,0,,24", "+CMGL: 5,0,,2"]
    assert _pdu_after(lines, 0) == "0791261800000001"
    assert _pdu_after(lines, 4) is None and _pdu_after(lines, 5) is None

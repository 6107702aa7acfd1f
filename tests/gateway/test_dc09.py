"""SIA DC-09: the frames against pysiaalarm's parser and receiver (an independent implementation of
the receiving side, with its own CRC and AES), the mapping table, and fake receivers that answer
NAK, DUH, garbage or nothing."""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from Crypto.Cipher import AES
from pysiaalarm import SIAAccount
from pysiaalarm.aio import SIAClient
from pysiaalarm.aio.client import SIAClientTCP
from pysiaalarm.event import SIAEvent

from siaga.gateway.adapters import Accepted, Failed
from siaga.gateway.dc09 import (
    Dc09Adapter,
    Dc09Settings,
    build_frame,
    crc16,
    derive_account,
    event_data,
    key_from_hex,
    parse_answer,
    report_for,
)
from siaga.gateway.store import OutboundEvent
from siaga.gateway.supervision import Fault
from tests.support.waiting import wait_for

KEY16 = b"0123456789ABCDEF"  # pysiaalarm takes a key's characters as its bytes
KEY32 = b"FEDCBA9876543210FEDCBA9876543210"
AT = calendar.timegm((2026, 9, 21, 12, 53, 20, 0, 0, 0))
PLACE = {"lat": -6.195733, "lon": 106.832085, "address": "Jl. Menteng Raya 12", "area": "31.71.06.1001"}

# The mapping of the module docstring, written out again as the specification.
ALARMS = {"general": (120, "PA"), "medical": (100, "MA"), "fire": (110, "FA"), "crime": (122, "HA"),
          "disaster": (101, "QA")}
FAULTS = {"offline": (381, "UY", "UJ"), "low_battery": (384, "XT", "XR"), "tamper": (383, "TA", "TR"),
          "bad_message": (380, "YX", "YZ"), "undelivered": (354, "YC", "YK")}


# ---- events --------------------------------------------------------------------------------------

_ids = iter(range(1, 1_000_000))


def _event(kind: str, device: str, event_id: str, body: dict[str, Any]) -> OutboundEvent:
    body = {"event_id": event_id, "gateway_id": "gw-1", "device_id": device, **body}
    return OutboundEvent(next(_ids), kind, event_id, device, json.dumps(body), 0, None, 0)


def alarm(device: str, seq: int, kind: str = "medical", *, test: bool = False) -> OutboundEvent:
    return _event("alarm", device, f"gw-1:{device}:{seq}", {
        "seq": seq, "kind": kind, "test": test, "location": PLACE, "raised_at": None,
        "received_at": "2026-11-24T03:12:09.412Z", "incident_key": "gw-1:g:1", "press_count": 1,
        "sources": [device], "battery_mv": 3710})


def fault(device: str, number: int, name: str, active: bool = True) -> OutboundEvent:
    return _event("fault", device, f"gw-1:{device}:fault:{number}", {
        "fault": name, "active": active, "at": "2026-11-24T03:20:00.000Z", "detail": {}, "location": PLACE})


def state(device: str, seq: int, name: str = "acknowledged") -> OutboundEvent:
    return _event("state", device, f"gw-1:{device}:{seq}:state:1", {
        "seq": seq, "alarm_event_id": f"gw-1:{device}:{seq}", "state": name, "incident_id": "INC-1", "by": None,
        "at": "2026-11-24T03:13:00.000Z", "kind": "medical", "test": False, "location": PLACE,
        "received_at": "2026-11-24T03:12:09.412Z", "incident_key": "gw-1:g:1"})


def every_report(device: str) -> list[tuple[OutboundEvent, tuple[int, int, str]]]:
    """One event of each mapped kind with its expected (qualifier, Contact ID code, SIA code)."""
    out = [(alarm(device, i, kind), (1, cid, sia)) for i, (kind, (cid, sia)) in enumerate(ALARMS.items(), 1)]
    out.append((alarm(device, 99, "fire", test=True), (1, 601, "RX")))
    for i, (name, (cid, sia, restore)) in enumerate(FAULTS.items(), 1):
        out.append((fault(device, 2 * i, name, True), (1, cid, sia)))
        out.append((fault(device, 2 * i + 1, name, False), (3, cid, restore)))
    return out


async def until(condition: Callable[[], object], what: str, timeout_s: float = 3.0) -> None:
    """Polled from a thread so that the event loop runs meanwhile."""
    await asyncio.to_thread(wait_for, condition, timeout_s, what, 0.01)


def settings(port: int = 1, **kw: Any) -> Dc09Settings:
    base: dict[str, Any] = {"host": "127.0.0.1", "port": port, "receiver": "1A", "line_prefix": "2",
                            "accounts": {"btn-1": "12AB"}, "zones": {"btn-1": 7}, "timeout_s": 0.5,
                            "link_test_s": 0, "gateway_account": "FFF1"}
    base.update(kw)
    return Dc09Settings(**base)


def message_type(event: SIAEvent) -> str:
    return str(getattr(event.message_type, "value", event.message_type))


def pysia_crc(text: str) -> str:
    crc = SIAEvent._crc_calc(text)
    assert crc is not None
    return crc


def framed(body: str) -> bytes:
    """A receiver's answer framed with pysiaalarm's CRC (not ours)."""
    return f"\n{pysia_crc(body)}{len(body):04X}{body}\r".encode()


# ---- pure parts ----------------------------------------------------------------------------------

def test_crc_is_crc16_arc() -> None:
    assert crc16(b"123456789") == 0xBB3D  # the CRC-16/ARC check value
    assert crc16(b"") == 0
    for text in ('"SIA-DCS"0002R1L232#78919[#78919|NFA129]_14:12:04,09-25-2026', "A", "~" * 300):
        assert f"{crc16(text.encode()):04X}" == pysia_crc(text)


def test_frame_in_clear_has_the_standard_layout() -> None:
    frame = build_frame("SIA-DCS", 2, "78919", "#78919|NFA129", at_s=AT, receiver="1", line_prefix="232")
    body = '"SIA-DCS"0002R1L232#78919[#78919|NFA129]_12:53:20,09-21-2026'
    assert frame == f"\n{pysia_crc(body)}{len(body):04X}{body}\r".encode()
    assert frame[5:9] == b"003C"  # "0LLL": 60 characters
    no_receiver = build_frame("ADM-CID", 9999, "12AB", "#12AB|1120 01 007", at_s=AT)
    assert no_receiver.endswith(b'"ADM-CID"9999L0#12AB[#12AB|1120 01 007]_12:53:20,09-21-2026\r')
    with pytest.raises(ValueError, match="sequence"):
        build_frame("NULL", 10000, "12AB", "", at_s=AT)


def test_encrypted_frame_is_aes_cbc_of_padded_text() -> None:
    frame = build_frame("ADM-CID", 5, "12AB", "#12AB|1100 01 007", at_s=AT, key=KEY16, pad="abcdefghi").decode()
    head, hex_text = frame.strip().split("[", 1)
    assert head.endswith('"*ADM-CID"0005L0#12AB')
    assert frame[1:5] == pysia_crc(frame.strip()[8:])
    plain = AES.new(KEY16, AES.MODE_CBC, bytes(16)).decrypt(bytes.fromhex(hex_text)).decode()
    assert plain == "abcdefghi|#12AB|1100 01 007]_12:53:20,09-21-2026"
    for key in (KEY16, KEY16 + b"01234567", KEY32):  # random pads: 1-16 characters, never | [ ]
        for data in ("", "#12AB|1100 01 007", "#12AB|Nri1/PA007"):
            text = build_frame("SIA-DCS", 1, "12AB", data, at_s=AT, key=key).decode().strip().split("[", 1)[1]
            plain = AES.new(key, AES.MODE_CBC, bytes(16)).decrypt(bytes.fromhex(text)).decode()
            pad, rest = plain.split("|", 1)
            assert 1 <= len(pad) <= 16 and not set(pad) & set("|[]") and len(plain) % 16 == 0
            assert rest == f"{data}]_12:53:20,09-21-2026"


@pytest.mark.parametrize("fmt", ["ADM-CID", "SIA-DCS"])
@pytest.mark.parametrize("key", [None, KEY16, KEY32], ids=["clear", "aes128", "aes256"])
def test_every_mapped_event_parses_at_pysiaalarm(fmt: str, key: bytes | None) -> None:
    account = SIAAccount("12AB", key.decode() if key else None)
    for event, (qualifier, cid, sia) in every_report("btn-1"):
        report = report_for(event.kind, json.loads(event.body))
        assert report is not None
        assert (3 if report.restore else 1, report.cid, report.sia) == (qualifier, cid, sia)
        frame = build_frame(fmt, 42, "12AB", event_data(fmt, "12AB", report, 3, 7), at_s=time.time(), key=key)
        parsed = SIAEvent.from_line(frame.decode().strip(), {"12AB": account})
        assert parsed.valid_message and parsed.valid_timestamp and parsed.encrypted == (key is not None)
        assert parsed.create_response().lstrip(b"\n")[8:].startswith(b'"*ACK"' if key else b'"ACK"')
        if fmt == "ADM-CID":
            assert (parsed.event_qualifier, parsed.event_type, parsed.partition, parsed.ri) == \
                (str(qualifier), f"{cid}", "03", "007")
        else:
            assert (parsed.code, parsed.ri, parsed.message) == (sia, "3", "007")


def test_states_are_not_reports_and_unknown_kinds_are_refused() -> None:
    assert report_for("state", json.loads(state("b", 1).body)) is None
    with pytest.raises(ValueError, match="alarm kind 'flood'"):
        report_for("alarm", {"kind": "flood", "test": False})
    with pytest.raises(ValueError, match="fault 'hot'"):
        report_for("fault", {"fault": "hot", "active": True})


@pytest.mark.parametrize(("kw", "key"), [
    ({"host": " "}, "host"), ({"port": 0}, "port"), ({"format": "CID"}, "format"),
    ({"receiver": "XYZ"}, "receiver"), ({"receiver": "1234567"}, "receiver"), ({"line_prefix": ""}, "line_prefix"),
    ({"key": b"short"}, "key"), ({"accounts": {"b": "12"}}, "accounts"), ({"accounts": {"b": "12G4"}}, "accounts"),
    ({"accounts": {"a": "123", "b": "123"}, "zones": {}}, "accounts"),
    ({"account_default": "guess"}, "account_default"),
    ({"account_length": 17}, "account_length"), ({"gateway_account": "zz"}, "gateway_account"),
    ({"account_default": "refuse", "gateway_account": "", "link_test_s": 60}, "gateway_account"),
    ({"zones": {"b": 0}}, "zones"), ({"zones": {"b": 1000}}, "zones"), ({"partition": 100}, "partition"),
    ({"timeout_s": 0}, "timeout_s"), ({"link_test_s": -1}, "link_test_s"),
    ({"link_test_s": float("nan")}, "link_test_s"),
])
def test_settings_name_the_bad_key(kw: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=rf"^{key}: "):
        settings(**kw)


def test_settings_normalise_and_keys_parse() -> None:
    s = settings(1, accounts={"a": "12ab", "b": "12ab"}, zones={"a": 1, "b": 2}, receiver="1a", gateway_account="fa1")
    assert dict(s.accounts) == {"a": "12AB", "b": "12AB"} and s.receiver == "1A" and s.gateway_account == "FA1"
    assert key_from_hex("00" * 16) == bytes(16) and len(key_from_hex("ab" * 32)) == 32
    with pytest.raises(ValueError, match=r"^key: "):
        key_from_hex("0123456789ABCDEF")  # 16 characters are 64 bits, not a key
    assert derive_account("btn-9", 10) == hashlib.sha256(b"btn-9").hexdigest()[:10].upper()


def test_answers_parse_with_receiver_quirks() -> None:
    ack = parse_answer(framed('"ACK"0017NoneL0#12AB[]').rstrip(b"\r"))  # pysiaalarm writes a missing R as "None"
    assert (ack.token, ack.seq, ack.account, ack.encrypted) == ("ACK", 17, "12AB", False)
    nak = parse_answer(framed('"NAK"0000R0L0A0[]_03:12:09,11-24-2026').rstrip(b"\r"))
    assert nak.token == "NAK" and nak.at_s == calendar.timegm((2026, 11, 24, 3, 12, 9, 0, 0, 0))
    assert parse_answer(b'"NAK"').token == "NAK"
    for bad, why in ((b'\nFFFF0005"ACK"', "CRC"), (b'\n06AB0006"ACK"', "length"), (b"hello", "not a DC-09"),
                     (b"\n", "not a DC-09"), (b"\n00000000", "not a DC-09"), ("\n\u00ff".encode(), "ascii")):
        with pytest.raises(ValueError, match=why):
            parse_answer(bad)


# ---- against pysiaalarm's receiver ---------------------------------------------------------------

@dataclass
class Pysia:
    client: SIAClientTCP
    events: list[SIAEvent] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.client.server is not None
        return int(self.client.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        await self.client.async_stop()  # a second call does nothing
        await asyncio.sleep(0.01)  # let its connection handlers finish

    async def wait(self, count: int) -> list[SIAEvent]:
        await until(lambda: len(self.events) >= count, f"{count} events at pysiaalarm")
        return self.events


@contextlib.asynccontextmanager
async def pysia(*accounts: SIAAccount) -> AsyncIterator[Pysia]:
    holder: list[Pysia] = []

    async def got(event: SIAEvent) -> None:
        holder[0].events.append(event)

    # SIAClient picks its TCP subclass itself (the subclass cannot be made directly)
    client = cast(SIAClientTCP, SIAClient("127.0.0.1", 0, list(accounts), got))  # type: ignore[abstract]
    holder.append(Pysia(client))
    await client.async_start()
    try:
        yield holder[0]
    finally:
        await holder[0].stop()


@contextlib.asynccontextmanager
async def adapter(s: Dc09Settings) -> AsyncIterator[Dc09Adapter]:
    a = Dc09Adapter(s, "gw-1")
    await a.start()
    try:
        yield a
    finally:
        await a.aclose()


@pytest.mark.parametrize("fmt", ["ADM-CID", "SIA-DCS"])
@pytest.mark.parametrize("key", [None, KEY16, KEY32], ids=["clear", "aes128", "aes256"])
async def test_a_round_reaches_pysiaalarm(fmt: str, key: bytes | None) -> None:
    cases = every_report("btn-1")
    events = [e for e, _ in cases]
    events.insert(3, state("btn-1", 1))
    async with pysia(SIAAccount("12AB", key.decode() if key else None)) as rx, \
            adapter(settings(rx.port, format=fmt, key=key, partition=2)) as a:
        outcomes = await a.deliver(events)
        assert outcomes == [Accepted(None)] * len(events)
        got = await rx.wait(len(cases))
        assert len(got) == len(cases)  # the state event was taken without a message
        for n, (ev, (_, (qualifier, cid, sia))) in enumerate(zip(got, cases, strict=True), 1):
            assert (ev.account, ev.sequence, ev.receiver, ev.line) == ("12AB", f"{n:04d}", "R1A", "L2")
            assert message_type(ev) == fmt and ev.encrypted == (key is not None)
            if fmt == "ADM-CID":
                assert (ev.event_qualifier, ev.event_type, ev.partition, ev.ri) == \
                    (str(qualifier), str(cid), "02", "007")
            else:
                assert (ev.code, ev.ri, ev.message) == (sia, "2", "007")
        assert a.link_ok and a.last_ack_s is not None and abs(a.last_ack_s - time.time()) < 5


async def test_derived_accounts_refusal_and_shared_site_accounts() -> None:
    derived = derive_account("btn-9", 10)
    async with pysia(SIAAccount("12AB"), SIAAccount(derived)) as rx:
        async with adapter(settings(rx.port, accounts={"btn-1": "12AB", "btn-2": "12ab"},
                                    zones={"btn-1": 7, "btn-2": 8})) as a:
            outcomes = await a.deliver([alarm("btn-9", 1, "fire"), alarm("btn-2", 1, "crime")])
            assert outcomes == [Accepted(None), Accepted(None)]
            got = await rx.wait(2)
            assert [(e.account, e.ri, e.event_type) for e in got] == [(derived, "001", "110"), ("12AB", "008", "122")]
        async with adapter(settings(rx.port, account_default="refuse")) as a:
            outcomes = await a.deliver([alarm("btn-9", 2), alarm("btn-1", 2, "general")])
            assert outcomes == [Failed("no DC-09 account for device btn-9", retry=False), Accepted(None)]
            assert len(await rx.wait(3)) == 3


async def test_a_derived_account_that_collides_is_refused() -> None:
    taken = derive_account("btn-9", 4)
    async with adapter(settings(1, accounts={"btn-1": taken}, zones={}, account_length=4)) as a:
        [outcome] = await a.deliver([alarm("btn-9", 1)])
        assert isinstance(outcome, Failed) and not outcome.retry and "already device btn-1's" in outcome.error


@pytest.mark.parametrize("key", [None, KEY16], ids=["clear", "aes128"])
async def test_an_account_the_receiver_does_not_know_is_nak_then_retried_with_the_same_number(
        key: bytes | None) -> None:
    async with pysia(SIAAccount("0FFF", key.decode() if key else None)) as rx, \
            adapter(settings(rx.port, key=key)) as a:
        first = alarm("btn-1", 1, "general")
        outcomes = await a.deliver([first, alarm("btn-1", 2)])
        assert all(isinstance(o, Failed) and o.retry for o in outcomes)
        assert "NAK" in outcomes[0].error and "not sent" in outcomes[1].error
        await a.deliver([alarm("btn-1", 3)])  # takes a new number, refused too
        rx.client.accounts = [SIAAccount("12AB", key.decode() if key else None)]
        assert await a.deliver([first, alarm("btn-1", 2)]) == [Accepted(None), Accepted(None)]
        got = await rx.wait(2)
        assert [(e.sequence, e.event_type or e.code) for e in got] == [("0001", "120"), ("0003", "100")]


async def test_location_goes_as_extended_data_when_asked() -> None:
    async with pysia(SIAAccount("12AB", KEY16.decode())) as rx, \
            adapter(settings(rx.port, format="SIA-DCS", key=KEY16, location=True)) as a:
        assert await a.deliver([alarm("btn-1", 1, "disaster")]) == [Accepted(None)]
        [ev] = await rx.wait(1)
        assert ev.code == "QA"
        assert [(x.identifier, x.value) for x in ev.extended_data or []] == [("X", "106.832085"), ("Y", "-6.195733")]


async def test_sequence_numbers_wrap_from_9999_to_0001() -> None:
    async with pysia(SIAAccount("12AB")) as rx, adapter(settings(rx.port)) as a:
        a._seq = 9998
        assert await a.deliver([alarm("btn-1", 1), alarm("btn-1", 2)]) == [Accepted(None)] * 2
        assert [e.sequence for e in await rx.wait(2)] == ["9999", "0001"]


@pytest.mark.parametrize("key", [None, KEY32], ids=["clear", "aes256"])
async def test_link_tests_reach_pysiaalarm_and_notice_when_it_stops(key: bytes | None) -> None:
    async with pysia(SIAAccount("FFF1", key.decode() if key else None)) as rx, \
            adapter(settings(rx.port, key=key, link_test_s=0.1)) as a:
        got = await rx.wait(2)
        assert len(got) >= 2 and {message_type(e) for e in got} == {"NULL"}
        assert {e.account for e in got} == {"FFF1"} and got[0].encrypted == (key is not None)
        assert a.link_ok and a.link_failures == 0 and a.link_tests >= 2
        await rx.stop()
        await until(lambda: not a.link_ok, "link_ok False")
        assert not a.link_ok and a.link_failures >= 1 and a.last_error


async def test_link_tests_wait_while_events_flow() -> None:
    async with pysia(SIAAccount("12AB"), SIAAccount("FFF1")) as rx, \
            adapter(settings(rx.port, link_test_s=0.3)) as a:
        await rx.wait(1)  # the first link test goes at once
        for i in range(5):
            assert await a.deliver([alarm("btn-1", i)]) == [Accepted(None)]
            await asyncio.sleep(0.1)
        assert a.link_tests == 1
        assert [message_type(e) for e in rx.events].count("NULL") == 1


# ---- fake receivers ------------------------------------------------------------------------------

FRAME = re.compile(r'"(\*?)([A-Z-]+)"(\d{4})(?:R[0-9A-F]+)?L[0-9A-F]+#([0-9A-F]+)\[(.*)')


@dataclass(frozen=True)
class Close:
    """Write `first`, then close the connection."""
    first: bytes = b""


Answerer = Callable[[int, re.Match[str]], Awaitable["bytes | Close | None"]]


@dataclass
class Fake:
    answer: Answerer
    frames: list[str] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                raw = await reader.readuntil(b"\r")
                text = raw.decode().strip()
                self.frames.append(text)
                match = FRAME.match(text[8:])
                assert match, text
                out = await self.answer(len(self.frames), match)
                if out is None:
                    continue
                writer.write(out.first if isinstance(out, Close) else out)
                await writer.drain()
                if isinstance(out, Close):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def fake(answer: Answerer) -> AsyncIterator[Fake]:
    f = Fake(answer)
    f.server = await asyncio.start_server(f.handle, "127.0.0.1", 0)
    try:
        yield f
    finally:
        f.server.close()
        await f.server.wait_closed()
        await asyncio.sleep(0.01)


def ack(m: re.Match[str], token: str = "ACK") -> bytes:
    return framed(f'"{token}"{m.group(3)}R1AL2#{m.group(4)}[]')


def stamp_of(frame: str) -> float:
    found = re.search(r"_(\d\d:\d\d:\d\d,\d\d-\d\d-\d{4})$", frame)
    assert found
    return float(calendar.timegm(time.strptime(found.group(1), "%H:%M:%S,%m-%d-%Y")))


async def test_a_nak_with_the_receivers_time_resyncs_the_clock_and_sends_again() -> None:
    async def answer(n: int, m: re.Match[str]) -> bytes:
        if n == 1:
            ahead = time.strftime("%H:%M:%S,%m-%d-%Y", time.gmtime(time.time() + 3600))
            return framed(f'"NAK"0000R0L0A0[]_{ahead}')
        return ack(m)

    async with fake(answer) as rx, adapter(settings(rx.port)) as a:
        assert await a.deliver([alarm("btn-1", 1)]) == [Accepted(None)]
        assert len(rx.frames) == 2 and rx.frames[0][8:22] == rx.frames[1][8:22]  # same id and number
        assert abs(stamp_of(rx.frames[1]) - time.time() - 3600) < 5
        assert await a.deliver([alarm("btn-1", 2)]) == [Accepted(None)]
        assert abs(stamp_of(rx.frames[2]) - time.time() - 3600) < 5  # the offset stays


async def test_a_receivers_time_that_does_not_help_is_not_kept() -> None:
    async def answer(n: int, m: re.Match[str]) -> bytes:
        return framed(f'"NAK"0000R0L0A0[]_{time.strftime("%H:%M:%S,%m-%d-%Y", time.gmtime(time.time() - 7200))}')

    async with fake(answer) as rx, adapter(settings(rx.port)) as a:
        [outcome] = await a.deliver([alarm("btn-1", 1)])
        assert isinstance(outcome, Failed) and outcome.retry and "NAK" in outcome.error
        assert len(rx.frames) == 2 and abs(stamp_of(rx.frames[1]) - time.time() + 7200) < 5
        await a.deliver([alarm("btn-1", 2)])
        assert abs(stamp_of(rx.frames[2]) - time.time()) < 5  # our own clock again


async def test_nak_without_time_fails_the_round_and_duh_refuses_one_event() -> None:
    async def answer(n: int, m: re.Match[str]) -> bytes:
        if "|1120" in m.group(5):
            return framed(f'"DUH"{m.group(3)}R1AL2#{m.group(4)}[]')
        if "|1100" in m.group(5):
            return b'"NAK"'
        return ack(m)

    async with fake(answer) as rx, adapter(settings(rx.port)) as a:
        outcomes = await a.deliver([alarm("btn-1", 1, "general"), alarm("btn-1", 2, "fire"),
                                    alarm("btn-1", 3, "medical"), alarm("btn-1", 4, "fire")])
        assert isinstance(outcomes[0], Failed) and not outcomes[0].retry and "DUH" in outcomes[0].error
        assert outcomes[1] == Accepted(None)
        assert isinstance(outcomes[2], Failed) and outcomes[2].retry and "NAK" in outcomes[2].error
        assert isinstance(outcomes[3], Failed) and outcomes[3].retry and "not sent" in outcomes[3].error
        assert len(rx.frames) == 3 and a.link_ok


@pytest.mark.parametrize(("reply", "error"), [
    (b"hello there\r", "unreadable answer"),
    (b"\n\r", "unreadable answer"),                      # pysiaalarm's answer to a bad CRC
    (b"\nFFFF0005\"ACK\"\r", "wrong CRC"),
    (Close(b"\n12"), "closed the connection in the middle"),
    (Close(), "closed the connection without answering"),
    (None, "no answer within 0.3 s"),
    (b"x" * 5000, "no answer end"),
])
async def test_a_misbehaving_receiver_fails_within_the_timeout_and_the_next_round_reconnects(
        reply: bytes | Close | None, error: str) -> None:
    async def answer(n: int, m: re.Match[str]) -> bytes | Close | None:
        return reply if n == 1 else ack(m)

    async with fake(answer) as rx, adapter(settings(rx.port, timeout_s=0.3)) as a:
        started = time.monotonic()
        outcomes = await a.deliver([alarm("btn-1", 1), alarm("btn-1", 2)])
        assert time.monotonic() - started < 1.5
        assert all(isinstance(o, Failed) and o.retry for o in outcomes)
        assert isinstance(outcomes[0], Failed) and error in outcomes[0].error
        assert "not sent" in outcomes[1].error
        assert not a.link_ok
        assert await a.deliver([alarm("btn-1", 1)]) == [Accepted(None)]
        assert rx.connections == 2


@pytest.mark.parametrize(("make", "key", "error"), [
    (lambda m: framed(f'"ACK"0042R1AL2#{m.group(4)}[]'), None, "another message"),
    (lambda m: framed(f'"ACK"{m.group(3)}R1AL2#0BAD[]'), None, "another message"),
    (ack, KEY16, "not encrypted with our key"),
    (lambda m: framed(f'"*ACK"{m.group(3)}R1AL2#{m.group(4)}[' + "00" * 32), KEY16, "not encrypted with our key"),
    (lambda m: framed(f'"*ACK"{m.group(3)}R1AL2#{m.group(4)}[' + "00" * 32), None, "encrypted ACK"),
])
async def test_an_ack_that_is_not_for_this_message_is_not_taken(
        make: Callable[[re.Match[str]], bytes], key: bytes | None, error: str) -> None:
    async def answer(n: int, m: re.Match[str]) -> bytes:
        return make(m)

    async with fake(answer) as rx, adapter(settings(rx.port, key=key)) as a:
        [outcome] = await a.deliver([alarm("btn-1", 1)])
        assert isinstance(outcome, Failed) and outcome.retry and error in outcome.error


async def test_a_kept_connection_the_receiver_closed_is_replaced_without_failing() -> None:
    async def answer(n: int, m: re.Match[str]) -> bytes | Close:
        if n == 2:
            return Close()  # the receiver dropped the kept connection: the message is sent again
        return Close(ack(m)) if n == 3 else ack(m)

    async with fake(answer) as rx, adapter(settings(rx.port)) as a:
        assert await a.deliver([alarm("btn-1", 1)]) == [Accepted(None)]
        assert await a.deliver([alarm("btn-1", 2)]) == [Accepted(None)]
        assert rx.frames[1][8:] == rx.frames[2][8:22] + rx.frames[1][22:] and rx.connections == 2
        await asyncio.sleep(0.05)  # the close after the ACK reaches the adapter before the next event
        assert await a.deliver([alarm("btn-1", 3)]) == [Accepted(None)]
        assert rx.connections == 3 and len(rx.frames) == 4


async def test_no_receiver_and_a_silent_receiver_fail_fast_and_link_tests_say_so() -> None:
    async with fake(lambda n, m: asyncio.sleep(0, None)) as rx:
        port = rx.port
    async with adapter(settings(port, timeout_s=0.3)) as a:
        [outcome] = await a.deliver([alarm("btn-1", 1)])
        assert isinstance(outcome, Failed) and outcome.retry and "no connection" in outcome.error
        assert not await a.link_test() and a.link_failures == 1

    async with fake(lambda n, m: asyncio.sleep(0, None)) as rx, \
            adapter(settings(rx.port, timeout_s=0.2, link_test_s=0.05)) as a:
        await until(lambda: a.link_failures >= 2, "two failed link tests")
        assert a.link_failures >= 2 and not a.link_ok and "no answer" in (a.last_error or "")
        assert all('"NULL"' in f for f in rx.frames)


async def test_aclose_during_an_exchange_leaves_nothing_running() -> None:
    async with fake(lambda n, m: asyncio.sleep(0, None)) as rx:
        a = Dc09Adapter(settings(rx.port, timeout_s=5), "gw-1")
        task = asyncio.create_task(a.deliver([alarm("btn-1", 1)]))
        await until(lambda: rx.frames, "a frame at the receiver")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await a.aclose()
        assert a._writer is None


def test_every_fault_the_gateway_raises_has_a_code_and_a_restore() -> None:
    # A fault without a code would stop the DC-09 queue at that event (report_for raises).
    for fault in Fault:
        started = report_for("fault", {"fault": fault.value, "active": True})
        cleared = report_for("fault", {"fault": fault.value, "active": False})
        assert started is not None and cleared is not None, fault
        assert (started.restore, cleared.restore) == (False, True) and started.cid == cleared.cid, fault
        assert started.sia and cleared.sia and started.sia != cleared.sia, fault

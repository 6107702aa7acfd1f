"""A GSM modem and SMS-centre simulator: several modems on pseudo-terminals, one process.

    python -m devices.modemsim --modem button=+6281200000001 --modem gateway=+6281100000001 \\
        [--delay-ms 300] [--jitter-ms 0] [--loss 0.0] [--seed 1]

Each modem is a pty pair. A client (the gateway over pyserial, the firmware's unix HAL by opening the
file) opens the slave's path and speaks the AT subset below; the simulator keeps the master and also
the slave open, so the slave's raw settings survive a client closing and reopening it. SMS sent by
one modem go through a simulated SMS centre (delay, loss, store and forward) to another modem.

Written from 3GPP TS 27.007 (general commands), TS 27.005 (SMS commands, text and PDU mode),
TS 23.040 (the SMS TPDUs) and TS 23.038 (alphabets); docs/modem-simulator.md describes the subset
and where the simulator differs from real modems.

Interface: one JSON line on stdout when ready (the modems' numbers and paths), then one JSON line
per SMS-centre event; JSON control lines on stdin (inject, set, registered, quit).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import heapq
import json
import os
import random
import re
import selectors
import sys
import termios
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

# --- TS 23.038 §6.2.1: the GSM 7-bit default alphabet, and §6.2.1.1 its extension table -----------

GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
assert len(GSM7_BASIC) == 128
GSM7_EXT = {0x0A: "\f", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\", 0x3C: "[", 0x3D: "~", 0x3E: "]",
            0x40: "|", 0x65: "€"}
_GSM7_CODE = {c: i for i, c in enumerate(GSM7_BASIC) if i != 0x1B}
_GSM7_EXT_CODE = {c: i for i, c in GSM7_EXT.items()}
ESC = 0x1B

DCS_GSM7, DCS_8BIT, DCS_UCS2 = 0x00, 0x04, 0x08
SINGLE_GSM7 = 160      # septets in one SMS (TS 23.040 §9.2.3.16: 140 octets of user data)
PART_GSM7 = 153        # 140 octets minus the 6-octet concatenation header and its fill bit
SINGLE_UCS2 = 140      # octets
PART_UCS2 = 134
MAX_PARTS = 16


class PduError(ValueError):
    """A TPDU that cannot be decoded (answered +CMS ERROR: 304)."""


def gsm7_septets(text: str) -> list[int] | None:
    """The septets of `text`, an extension character taking two; None if a character is outside both tables."""
    out: list[int] = []
    for ch in text:
        code = _GSM7_CODE.get(ch)
        if code is not None:
            out.append(code)
            continue
        ext = _GSM7_EXT_CODE.get(ch)
        if ext is None:
            return None
        out += [ESC, ext]
    return out


def gsm7_text(septets: list[int]) -> str:
    out: list[str] = []
    escaped = False
    for s in septets:
        if escaped:
            # §6.2.1.1: an undefined extension code is shown as the basic character (space for ESC ESC).
            out.append(GSM7_EXT.get(s, " " if s == ESC else GSM7_BASIC[s]))
            escaped = False
        elif s == ESC:
            escaped = True
        else:
            out.append(GSM7_BASIC[s])
    return "".join(out)


def pack7(septets: list[int]) -> bytes:
    """TS 23.038 §6.1.2.1.1: septets packed into octets, least significant bit first."""
    value = 0
    for i, s in enumerate(septets):
        value |= (s & 0x7F) << (7 * i)
    return value.to_bytes((7 * len(septets) + 7) // 8, "little")


def unpack7(data: bytes, count: int) -> list[int]:
    value = int.from_bytes(data, "little")
    if 7 * count > 8 * len(data):
        raise PduError("user data shorter than its length")
    return [(value >> (7 * i)) & 0x7F for i in range(count)]


def swap_digits(digits: str) -> bytes:
    """Semi-octet representation (TS 23.040 §9.1.2.3): two digits an octet, low nibble first, F fill."""
    if len(digits) % 2:
        digits += "F"
    return bytes(int(digits[i + 1] + digits[i], 16) for i in range(0, len(digits), 2))


def unswap_digits(data: bytes, count: int) -> str:
    table = "0123456789*#abc"
    out = []
    for b in data:
        for nib in (b & 0x0F, b >> 4):
            if nib != 0x0F:
                out.append(table[nib])
    return "".join(out)[:count]


def encode_address(number: str) -> bytes:
    """TS 23.040 §9.1.2.5: Address-Length (useful semi-octets), Type-of-Address, value."""
    if number.startswith("+") and number[1:].isdigit():
        digits = number[1:]
        return bytes([len(digits), 0x91]) + swap_digits(digits)  # TON 1 international, NPI 1 (E.164)
    if number.isdigit():
        return bytes([len(number), 0x81]) + swap_digits(number)  # TON 0 unknown
    # TON 5 alphanumeric (§9.1.2.5, coded in the 7-bit alphabet, 23.038 §6.2.1): a sender name.
    septets = gsm7_septets(number[:11]) or gsm7_septets("?")
    assert septets is not None
    packed = pack7(septets)
    return bytes([(7 * len(septets) + 3) // 4, 0xD0]) + packed


def decode_address(pdu: bytes, pos: int) -> tuple[str, int]:
    if pos + 2 > len(pdu):
        raise PduError("truncated address")
    length, toa = pdu[pos], pdu[pos + 1]
    octets = (length + 1) // 2
    if length > 20 or pos + 2 + octets > len(pdu):
        raise PduError("bad address length")
    value = pdu[pos + 2:pos + 2 + octets]
    if (toa >> 4) & 0x07 == 5:
        number = gsm7_text(unpack7(value, length * 4 // 7))
    else:
        number = unswap_digits(value, length)
        if (toa >> 4) & 0x07 == 1:
            number = "+" + number
    return number, pos + 2 + octets


def encode_scts(when: datetime) -> bytes:
    """TS 23.040 §9.2.3.11: year..second in semi-octets, then the zone in quarter hours (bit 3: minus)."""
    offset = when.utcoffset() or timedelta(0)
    quarters = int(offset.total_seconds() // 900)
    zone = swap_digits(f"{abs(quarters):02d}")[0] | (0x08 if quarters < 0 else 0)
    return swap_digits(when.strftime("%y%m%d%H%M%S")) + bytes([zone])


def text_scts(when: datetime) -> str:
    """TS 27.005 §3.1 <scts> in text mode: "yy/MM/dd,hh:mm:ss±zz" (zz in quarter hours)."""
    offset = when.utcoffset() or timedelta(0)
    quarters = int(offset.total_seconds() // 900)
    return when.strftime("%y/%m/%d,%H:%M:%S") + f"{'-' if quarters < 0 else '+'}{abs(quarters):02d}"


def alphabet_of(dcs: int) -> int:
    """TS 23.038 §4: the alphabet of a data coding scheme (DCS_GSM7, DCS_8BIT or DCS_UCS2)."""
    group = dcs >> 4
    if group <= 0x7:  # general data coding (and automatic deletion) groups
        if dcs & 0x20:
            raise PduError("compressed text is not supported")
        alphabet = (dcs >> 2) & 0x03
        if alphabet == 3:
            raise PduError("reserved alphabet")
        return alphabet << 2
    if group in (0xC, 0xD):
        return DCS_GSM7
    if group == 0xE:
        return DCS_UCS2
    if group == 0xF:
        return DCS_8BIT if dcs & 0x04 else DCS_GSM7
    raise PduError("reserved coding group")


def encode_user_data(text: str, dcs: int, udh: bytes) -> tuple[int, bytes]:
    """TP-UDL and TP-UD (TS 23.040 §9.2.3.16, §9.2.3.24): `udh` is the information elements, without UDHL."""
    header = bytes([len(udh)]) + udh if udh else b""
    if dcs == DCS_GSM7:
        septets = gsm7_septets(text)
        if septets is None:
            raise ValueError("text outside the GSM 7-bit alphabet")
        # The header is followed by fill bits up to a septet boundary (§9.2.3.24).
        head_septets = (8 * len(header) + 6) // 7
        packed = bytearray(pack7([0] * head_septets + septets))
        packed[:len(header)] = header
        return head_septets + len(septets), bytes(packed)
    body = text.encode("utf-16-be") if dcs == DCS_UCS2 else text.encode("latin-1")
    return len(header) + len(body), header + body


def decode_user_data(ud: bytes, udl: int, dcs: int, udhi: bool) -> tuple[str, bytes]:
    """The text and the header's information elements of TP-UD."""
    udh = b""
    if udhi:
        if not ud or 1 + ud[0] > len(ud):
            raise PduError("bad user data header")
        udh = ud[1:1 + ud[0]]
    header_octets = 1 + len(udh) if udhi else 0
    if dcs == DCS_GSM7:
        if udl > SINGLE_GSM7:
            raise PduError("user data too long")
        septets = unpack7(ud, udl)
        return gsm7_text(septets[(8 * header_octets + 6) // 7:]), udh
    if udl > SINGLE_UCS2 or udl > len(ud) or udl < header_octets:
        raise PduError("bad user data length")
    body = ud[header_octets:udl]
    if dcs == DCS_UCS2:
        return body.decode("utf-16-be", errors="replace"), udh
    return body.decode("latin-1"), udh


@dataclass
class Submit:
    """A decoded SMS-SUBMIT (TS 23.040 §9.2.2.2)."""

    mr: int
    da: str
    dcs: int
    text: str
    udh: bytes


def decode_submit(pdu: bytes) -> Submit:
    """An SMS-SUBMIT TPDU (without the service-centre address prefix of TS 27.005 §3.1 <pdu>)."""
    if len(pdu) < 7:
        raise PduError("too short")
    first = pdu[0]
    if first & 0x03 != 0x01:
        raise PduError("not an SMS-SUBMIT")
    vpf = (first >> 3) & 0x03
    udhi = bool(first & 0x40)
    mr = pdu[1]
    da, pos = decode_address(pdu, 2)
    if pos + 2 > len(pdu):
        raise PduError("truncated")
    dcs = alphabet_of(pdu[pos + 1])
    pos += 2
    pos += {0: 0, 2: 1, 1: 7, 3: 7}[vpf]  # TP-VP: none, relative, enhanced, absolute (§9.2.3.12)
    if pos >= len(pdu):
        raise PduError("truncated")
    udl = pdu[pos]
    text, udh = decode_user_data(pdu[pos + 1:], udl, dcs, udhi)
    return Submit(mr, da, dcs, text, udh)


def encode_deliver(oa: str, scts: datetime, dcs: int, text: str, udh: bytes) -> bytes:
    """An SMS-DELIVER TPDU (TS 23.040 §9.2.2.1)."""
    # TP-MTI 00, TP-MMS 1 (no more messages waiting), TP-UDHI when there is a header.
    first = 0x04 | (0x40 if udh else 0)
    udl, ud = encode_user_data(text, dcs, udh)
    return bytes([first]) + encode_address(oa) + bytes([0x00, dcs]) + encode_scts(scts) + bytes([udl]) + ud


def concat_ie(ref: int, total: int, seq: int) -> bytes:
    """TS 23.040 §9.2.3.24.1: concatenated short message, 8-bit reference (IEI 0x00)."""
    return bytes([0x00, 0x03, ref & 0xFF, total, seq])


def split_text(text: str) -> tuple[int, list[str]]:
    """The coding and the parts of a text: one SMS if it fits, else concatenated parts."""
    septets = gsm7_septets(text)
    if septets is not None:
        if len(septets) <= SINGLE_GSM7:
            return DCS_GSM7, [text]
        parts, current, used = [], "", 0
        for ch in text:
            size = 1 if ch in _GSM7_CODE else 2  # never split an escape pair
            if used + size > PART_GSM7:
                parts.append(current)
                current, used = "", 0
            current += ch
            used += size
        return DCS_GSM7, [*parts, current]
    units = text.encode("utf-16-be")
    if len(units) <= SINGLE_UCS2:
        return DCS_UCS2, [text]
    parts, current, size = [], "", 0
    for ch in text:
        n = len(ch.encode("utf-16-be"))  # a surrogate pair stays in one part
        if size + n > PART_UCS2:
            parts.append(current)
            current, size = "", 0
        current += ch
        size += n
    return DCS_UCS2, [*parts, current]


# --- the modem -----------------------------------------------------------------------------------

STORAGE = 30           # messages per modem ("SM")
MAX_LINE = 560         # a command line; longer is answered ERROR and skipped up to its CR
MAX_SMS_INPUT = 2 * SINGLE_UCS2 * MAX_PARTS  # characters between the "> " prompt and Ctrl-Z
CTRL_Z = 0x1A
WIB = timedelta(hours=7)  # Indonesian western time, the zone the SMS-centre stamps (TS 23.040 §9.2.3.11)

STAT_TEXT = {0: "REC UNREAD", 1: "REC READ", 2: "STO UNSENT", 3: "STO SENT", 4: "ALL"}
STAT_CODE = {v: k for k, v in STAT_TEXT.items()}

# TS 27.007 §9.2: +CME ERROR codes used here, with their verbose texts (CMEE=2).
CME_TEXT = {3: "operation not allowed", 4: "operation not supported", 50: "incorrect parameters",
            100: "unknown"}
# TS 27.005 §3.2.5: +CMS ERROR codes used here.
CMS_OP_NOT_ALLOWED, CMS_PDU_PARAM, CMS_TEXT_PARAM = 302, 304, 305
CMS_MEM_FAILURE, CMS_BAD_INDEX, CMS_MEM_FULL, CMS_NO_NETWORK = 320, 321, 322, 331


@dataclass
class Stored:
    """One message in a modem's storage: one SMS, or one part of a concatenated one."""

    oa: str
    scts: datetime
    dcs: int
    text: str
    udh: bytes
    stat: int = 0  # TS 27.005 §3.1 <stat>: 0 received unread, 1 received read

    def tpdu(self) -> bytes:
        return encode_deliver(self.oa, self.scts, self.dcs, self.text, self.udh)


@dataclass
class Part:
    """A part on its way through the SMS centre."""

    ref: int
    seq: int
    total: int
    sender: str
    to: str
    dcs: int
    text: str
    udh: bytes
    whole: str  # the whole SMS's text, for the events


class CommandError(Exception):
    """Ends the command line with a final result: ERROR / +CME ERROR (cme) or +CMS ERROR (cms)."""

    def __init__(self, cme: int = 4, cms: int | None = None) -> None:
        super().__init__(cme, cms)
        self.cme = cme
        self.cms = cms


class Modem:
    def __init__(self, name: str, number: str, centre: Centre) -> None:
        self.name = name
        self.number = number
        self.centre = centre
        self.master, self.slave = os.openpty()
        # Raw slave (no echo, no CR/NL translation): the client sees the bytes the modem sends, and the
        # simulator keeps the slave open so that this setting persists across client reopens.
        tty.setraw(self.slave, termios.TCSANOW)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.out = bytearray()
        self.registered = True
        self.storage: list[Stored | None] = [None] * STORAGE
        self.mr = 0
        self.concat_ref = random.Random(number).randrange(256)
        self.reset()
        self.line = bytearray()
        self.overflow = False
        self.entry: bytearray | None = None  # SMS text/PDU after the "> " prompt
        self.entry_target: str | int = ""
        self.held: list[bytes] = []  # unsolicited results held while the prompt is open

    def reset(self) -> None:
        self.echo = True   # echo (E1) is on after power-up on real modems (ITU-T V.250)
        self.cmee = 0
        self.creg = 0
        self.pdu_mode = True  # TS 27.005 §3.2.3: +CMGF=0 (PDU mode) is the default
        self.cscs = "IRA"
        self.cnmi = (2, 1, 0, 0, 0)  # the default of SIM800-class modems: store, indicate with +CMTI

    # -- output

    def send(self, data: bytes) -> None:
        self.out += data
        if len(self.out) > 1 << 20:  # nobody reading for a long time: keep the newest megabyte
            del self.out[:len(self.out) - (1 << 20)]
        self.flush()

    def flush(self) -> None:
        while self.out:
            try:
                n = os.write(self.master, self.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.out.clear()
                return
            del self.out[:n]

    def info(self, *lines: str) -> bytes:
        """Information text (ITU-T V.250): each line after CR LF, the last one followed by CR LF."""
        return b"".join(b"\r\n" + self.encode(line) for line in lines) + b"\r\n"

    def encode(self, text: str) -> bytes:
        """Text towards the client in the TE character set (+CSCS, TS 27.007 §5.5)."""
        if self.cscs == "GSM":
            septets = gsm7_septets(text)
            if septets is not None:
                return bytes(septets)
        return text.encode("ascii", "replace")

    def unsolicited(self, line: str) -> None:
        data = b"\r\n" + self.encode(line) + b"\r\n"
        if self.entry is not None:
            self.held.append(data)  # TS 27.005 §3.4.1 <mode> 2: buffered while the link is reserved
        else:
            self.send(data)

    # -- input

    def readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        for b in data:
            self.byte(b)

    def byte(self, b: int) -> None:
        try:
            self._byte(b)
        except Exception as error:  # a bug here must not end the simulator (and every other modem)
            self.entry = None
            self.line.clear()
            self.send(b"\r\nERROR\r\n")
            self.centre.emit({"event": "error", "modem": self.name, "why": f"internal: {error!r}"})

    def _byte(self, b: int) -> None:
        if self.entry is not None:
            self.entry_byte(b)
            return
        if self.echo:
            self.send(bytes([b]))
        if b == 0x0D:  # S3: the end of a command line (ITU-T V.250)
            line, overflow = bytes(self.line), self.overflow
            self.line.clear()
            self.overflow = False
            if overflow:
                self.final_error(CommandError(100))
            else:
                self.command_line(line)
        elif b == 0x0A and not self.line:
            return  # the LF of a CR LF line end
        elif b in (0x08, 0x7F):  # S5 backspace edits the line
            if self.line:
                self.line.pop()
        elif len(self.line) >= MAX_LINE:
            self.overflow = True
        else:
            self.line.append(b)

    def entry_byte(self, b: int) -> None:
        assert self.entry is not None
        if b == CTRL_Z:
            body = bytes(self.entry)
            self.entry = None
            self.finish_send(body)
            self.release_held()
        elif b == ESC:  # TS 27.005 §3.5.1: <ESC> cancels the message
            self.entry = None
            self.send(b"\r\nOK\r\n")
            self.release_held()
        elif b in (0x0D, 0x0A):
            if b == 0x0D and not self.pdu_mode:
                self.entry.append(0x0A)  # a line break in the text, and a new prompt, as modems do
                if self.echo:
                    self.send(b"\r\n> ")
        elif b in (0x08, 0x7F):
            if self.entry:
                self.entry.pop()
        else:
            if self.echo:
                self.send(bytes([b]))
            if len(self.entry) < MAX_SMS_INPUT:
                self.entry.append(b)
            else:
                self.entry_target = -1  # too long: answered when Ctrl-Z arrives

    def release_held(self) -> None:
        held, self.held = self.held, []
        for data in held:
            self.send(data)

    # -- command lines (ITU-T V.250: "AT" prefix, basic commands, extended commands separated by ";")

    def command_line(self, raw: bytes) -> None:
        text = raw.decode("latin-1")
        match = re.search(r"[Aa][Tt]", text)
        if match is None:
            return  # ITU-T V.250: characters before "AT" are ignored; a line without it is no command
        body = text[match.end():].strip()
        response = b""
        try:
            for command in split_commands(body):
                response += self.execute(command)
        except CommandError as error:
            self.send(response)
            self.final_error(error)
            return
        if self.entry is not None:
            self.send(response + b"\r\n> ")  # TS 27.005 §3.5.1: CR LF, ">", space
            return
        self.send(response + b"\r\nOK\r\n")

    def final_error(self, error: CommandError) -> None:
        if error.cms is not None:
            self.send(f"\r\n+CMS ERROR: {error.cms}\r\n".encode())
        elif self.cmee == 1:
            self.send(f"\r\n+CME ERROR: {error.cme}\r\n".encode())
        elif self.cmee == 2:
            self.send(f"\r\n+CME ERROR: {CME_TEXT.get(error.cme, 'unknown')}\r\n".encode())
        else:
            self.send(b"\r\nERROR\r\n")

    def execute(self, command: str) -> bytes:
        upper = command.upper()
        if not upper.startswith("+"):
            return self.basic(upper)
        m = re.fullmatch(r"(\+[A-Z]+)(=\?|\?|=(.*))?", command, re.IGNORECASE | re.DOTALL)
        if m is None:
            raise CommandError(4)
        name = m.group(1).upper()
        suffix = m.group(2) or ""
        args = parse_args(m.group(3)) if suffix.startswith("=") and suffix != "=?" else None
        handler: Callable[[str, list[str | int] | None], bytes] | None = getattr(
            self, "cmd_" + name[1:].lower(), None)
        if handler is None:
            raise CommandError(4)
        mode = "test" if suffix == "=?" else "read" if suffix == "?" else "set" if args is not None else "exec"
        return handler(mode, args)

    def basic(self, command: str) -> bytes:
        """Basic commands (ITU-T V.250): E, I, Z, &F, &W, V1, Q0; several may follow one another."""
        out = b""
        i = 0
        while i < len(command):
            m = re.match(r"(&[FW]|[EIZVQ])(\d?)", command[i:])
            if m is None:
                raise CommandError(4)
            name, digit = m.group(1), int(m.group(2) or 0)
            if name == "E" and digit in (0, 1):
                self.echo = digit == 1
            elif name == "I" and digit == 0:
                out += self.info("Siaga MODEMSIM", "Revision: 1.0 (3GPP TS 27.005/27.007 subset)")
            elif name in ("Z", "&F", "&W") and digit == 0:
                pass  # no stored profiles: harmless
            elif (name == "V" and digit == 1 and m.group(2)) or (name == "Q" and digit == 0):
                pass  # verbose result codes, results not suppressed: the only supported setting
            else:
                raise CommandError(4)
            i += m.end()
        return out

    # -- TS 27.007 general, network and error commands

    def cmd_cgmi(self, mode: str, args: object) -> bytes:  # §5.1
        return self.info("Siaga") if mode == "exec" else self._exec_only(mode)

    def cmd_cgmm(self, mode: str, args: object) -> bytes:  # §5.2
        return self.info("MODEMSIM") if mode == "exec" else self._exec_only(mode)

    def cmd_cgmr(self, mode: str, args: object) -> bytes:  # §5.3
        return self.info("1.0") if mode == "exec" else self._exec_only(mode)

    def cmd_cgsn(self, mode: str, args: object) -> bytes:  # §5.4: a made-up IMEI from the number
        return self.info(("35" + "".join(c for c in self.number if c.isdigit()))[-15:].rjust(15, "0")) \
            if mode == "exec" else self._exec_only(mode)

    def _exec_only(self, mode: str) -> bytes:
        if mode == "test":
            return b""
        raise CommandError(4)

    def cmd_cmee(self, mode: str, args: list[str | int] | None) -> bytes:  # §9.1
        if mode == "read":
            return self.info(f"+CMEE: {self.cmee}")
        if mode == "test":
            return self.info("+CMEE: (0-2)")
        self.cmee = self._int_arg(args, 0, (0, 1, 2), default=0)
        return b""

    def cmd_cpin(self, mode: str, args: object) -> bytes:  # §8.3: no PIN set on the simulated SIM
        if mode == "read":
            return self.info("+CPIN: READY")
        if mode == "test":
            return b""
        raise CommandError(3)

    def creg_stat(self) -> int:
        return 1 if self.registered else 2  # 1 registered, home network; 2 not registered, searching

    def cmd_creg(self, mode: str, args: list[str | int] | None) -> bytes:  # §7.2
        if mode == "read":
            extra = ',"00A1","1B2C"' if self.creg == 2 and self.registered else ""
            return self.info(f"+CREG: {self.creg},{self.creg_stat()}{extra}")
        if mode == "test":
            return self.info("+CREG: (0-2)")
        self.creg = self._int_arg(args, 0, (0, 1, 2), default=0)
        return b""

    def cmd_csq(self, mode: str, args: object) -> bytes:  # §8.5: <rssi>,<ber>; 99 = not known
        if mode == "exec":
            return self.info("+CSQ: 20,0" if self.registered else "+CSQ: 99,99")
        if mode == "test":
            return self.info("+CSQ: (0-31,99),(0-7,99)")
        raise CommandError(4)

    def cmd_cops(self, mode: str, args: list[str | int] | None) -> bytes:  # §7.3
        if mode == "read":
            return self.info('+COPS: 0,0,"SIAGA SIM"' if self.registered else "+COPS: 0")
        if mode == "test":
            return self.info('+COPS: (2,"SIAGA SIM","SIAGA","51099"),,(0-4),(0-2)')
        if mode == "set" and args and args[0] in (0, 3):
            return b""  # automatic selection, or setting the name format only
        raise CommandError(3 if mode == "set" else 4)

    # -- TS 27.005 SMS commands

    def cmd_csms(self, mode: str, args: list[str | int] | None) -> bytes:  # §3.2.1: phase 2 only
        if mode == "read":
            return self.info("+CSMS: 0,1,1,1")
        if mode == "set" and args == [0]:
            return self.info("+CSMS: 1,1,1")
        if mode == "test":
            return self.info("+CSMS: (0)")
        raise CommandError(4, CMS_OP_NOT_ALLOWED)

    def cmd_cmgf(self, mode: str, args: list[str | int] | None) -> bytes:  # §3.2.3
        if mode == "read":
            return self.info(f"+CMGF: {0 if self.pdu_mode else 1}")
        if mode == "test":
            return self.info("+CMGF: (0,1)")
        self.pdu_mode = self._int_arg(args, 0, (0, 1), default=0) == 0
        return b""

    def cmd_cscs(self, mode: str, args: list[str | int] | None) -> bytes:  # TS 27.007 §5.5
        if mode == "read":
            return self.info(f'+CSCS: "{self.cscs}"')
        if mode == "test":
            return self.info('+CSCS: ("IRA","GSM")')
        if mode == "set" and args and len(args) == 1 and isinstance(args[0], str) and \
                args[0].upper() in ("IRA", "GSM"):
            self.cscs = args[0].upper()
            return b""
        raise CommandError(50)

    def cmd_csca(self, mode: str, args: list[str | int] | None) -> bytes:  # §3.3.1
        if mode == "read":
            return self.info(f'+CSCA: "{self.centre.number}",145')
        if mode in ("set", "test"):
            return b""
        raise CommandError(4)

    def cmd_cnmi(self, mode: str, args: list[str | int] | None) -> bytes:  # §3.4.1
        if mode == "read":
            return self.info("+CNMI: " + ",".join(str(v) for v in self.cnmi))
        if mode == "test":
            return self.info("+CNMI: (0-2),(0-2),(0),(0),(0,1)")
        allowed = ((0, 1, 2), (0, 1, 2), (0,), (0,), (0, 1))
        if mode != "set" or not args or len(args) > 5:
            raise CommandError(50, CMS_OP_NOT_ALLOWED)
        values = list(self.cnmi)
        for i, value in enumerate(args):
            if value == "" or value is None:
                continue
            if not isinstance(value, int) or value not in allowed[i]:
                raise CommandError(50, CMS_OP_NOT_ALLOWED)
            values[i] = value
        self.cnmi = (values[0], values[1], values[2], values[3], values[4])
        return b""

    def used(self) -> int:
        return sum(1 for m in self.storage if m is not None)

    def cmd_cpms(self, mode: str, args: list[str | int] | None) -> bytes:  # §3.2.2: "SM" only
        used = self.used()
        if mode == "read":
            return self.info(f'+CPMS: "SM",{used},{STORAGE},"SM",{used},{STORAGE},"SM",{used},{STORAGE}')
        if mode == "test":
            return self.info('+CPMS: ("SM"),("SM"),("SM")')
        if mode == "set" and args and len(args) <= 3 and all(
                isinstance(a, str) and a.upper() == "SM" for a in args):
            return self.info("+CPMS: " + ",".join([f"{used},{STORAGE}"] * 3))
        raise CommandError(50, CMS_OP_NOT_ALLOWED)

    def cmd_cmgs(self, mode: str, args: list[str | int] | None) -> bytes:  # §3.5.1
        if mode == "test":
            return b""
        if mode != "set" or not args:
            raise CommandError(50, CMS_OP_NOT_ALLOWED)
        if self.pdu_mode:
            if len(args) != 1 or not isinstance(args[0], int) or not 7 <= args[0] <= 164:
                raise CommandError(50, CMS_PDU_PARAM)
            self.entry_target = args[0]
        else:
            da = args[0]
            if not isinstance(da, str) or not re.fullmatch(r"\+?[0-9]{1,20}", da) or len(args) > 2:
                raise CommandError(50, CMS_TEXT_PARAM)
            if len(args) == 2 and args[1] not in (129, 145, 161):
                raise CommandError(50, CMS_TEXT_PARAM)
            self.entry_target = da if not (len(args) == 2 and args[1] == 145 and da[0] != "+") else "+" + da
        self.entry = bytearray()
        return b""

    def finish_send(self, body: bytes) -> None:
        target = self.entry_target
        if target == -1:
            self.send(f"\r\n+CMS ERROR: {CMS_TEXT_PARAM if not self.pdu_mode else CMS_PDU_PARAM}\r\n".encode())
            return
        if self.pdu_mode:
            assert isinstance(target, int)
            try:
                hexdigits = body.decode("ascii").strip()
                pdu = bytes.fromhex(hexdigits)
                # TS 27.005 §3.1 <pdu>: the SMSC address comes first; <length> counts the TPDU only.
                smsc = pdu[0] + 1 if pdu else 0
                if len(pdu) - smsc != target:
                    raise PduError("length does not match")
                submit = decode_submit(pdu[smsc:])
            except (ValueError, UnicodeDecodeError):
                self.send(f"\r\n+CMS ERROR: {CMS_PDU_PARAM}\r\n".encode())
                return
            to, whole = submit.da, submit.text
            parts = [(submit.dcs, submit.text, submit.udh)]
        else:
            assert isinstance(target, str)
            text = self.decode_input(body)
            dcs, texts = split_text(text)
            if len(texts) > MAX_PARTS:
                self.send(f"\r\n+CMS ERROR: {CMS_TEXT_PARAM}\r\n".encode())
                return
            self.concat_ref = (self.concat_ref + 1) % 256
            to, whole = target, text
            parts = [(dcs, t, concat_ie(self.concat_ref, len(texts), i + 1) if len(texts) > 1 else b"")
                     for i, t in enumerate(texts)]
        if not self.registered:
            self.send(f"\r\n+CMS ERROR: {CMS_NO_NETWORK}\r\n".encode())
            return
        # The <mr> of the last part (a text-mode multipart uses one reference per part, TS 23.040 §9.2.3.6).
        for _ in parts:
            self.mr = (self.mr + 1) % 256
        self.centre.submit(self.number, to, whole, parts)
        self.send(f"\r\n+CMGS: {self.mr}\r\n\r\nOK\r\n".encode())

    def decode_input(self, body: bytes) -> str:
        """Text-mode message text in the TE character set (TS 27.005 §3.1 <data>, TS 27.007 §5.5)."""
        if self.cscs == "GSM":
            return gsm7_text([b & 0x7F for b in body])
        return "".join(chr(b) if b < 0x80 else "?" for b in body)

    def stored(self, index: int) -> Stored | None:
        if not 1 <= index <= STORAGE:
            raise CommandError(50, CMS_BAD_INDEX)
        return self.storage[index - 1]

    def render(self, kind: str, index: int, msg: Stored) -> bytes:
        """The +CMGR / +CMGL / +CMT lines of one message (TS 27.005 §3.4.1-3.4.3)."""
        if self.pdu_mode:
            tpdu = msg.tpdu()
            head = {"CMGR": f"+CMGR: {msg.stat},,{len(tpdu)}", "CMGL": f"+CMGL: {index},{msg.stat},,{len(tpdu)}",
                    "CMT": f"+CMT: ,{len(tpdu)}"}[kind]
            return self.info(head, "00" + tpdu.hex().upper())  # "00": the SMSC address is left out
        scts = text_scts(msg.scts)
        head = {"CMGR": f'+CMGR: "{STAT_TEXT[msg.stat]}","{msg.oa}",,"{scts}"',
                "CMGL": f'+CMGL: {index},"{STAT_TEXT[msg.stat]}","{msg.oa}",,"{scts}"',
                "CMT": f'+CMT: "{msg.oa}",,"{scts}"'}[kind]
        if msg.dcs == DCS_GSM7:
            return self.info(head, msg.text)
        # TS 27.005 §3.1 <data>: 8-bit and UCS2 data are shown as hexadecimal octets in text mode.
        data = msg.text.encode("utf-16-be" if msg.dcs == DCS_UCS2 else "latin-1")
        return self.info(head, data.hex().upper())

    def cmd_cmgr(self, mode: str, args: list[str | int] | None) -> bytes:  # §3.4.3
        if mode == "test":
            return b""
        if mode != "set" or not args or len(args) != 1 or not isinstance(args[0], int):
            raise CommandError(50, CMS_OP_NOT_ALLOWED)
        msg = self.stored(args[0])
        if msg is None:
            return b""  # an empty slot: OK without data, as SIM800-class modems answer
        out = self.render("CMGR", args[0], msg)
        msg.stat = 1 if msg.stat == 0 else msg.stat
        return out

    def cmd_cmgl(self, mode: str, args: list[str | int] | None) -> bytes:  # §3.4.2
        if mode == "test":
            return self.info('+CMGL: ("REC UNREAD","REC READ","STO UNSENT","STO SENT","ALL")'
                             if not self.pdu_mode else "+CMGL: (0-4)")
        if mode == "exec":
            wanted = 0
        elif mode == "set" and args and len(args) == 1:
            arg = args[0]
            if self.pdu_mode and isinstance(arg, int) and 0 <= arg <= 4:
                wanted = arg
            elif not self.pdu_mode and isinstance(arg, str) and arg.upper() in STAT_CODE:
                wanted = STAT_CODE[arg.upper()]
            else:
                raise CommandError(50, CMS_PDU_PARAM if self.pdu_mode else CMS_TEXT_PARAM)
        else:
            raise CommandError(50, CMS_OP_NOT_ALLOWED)
        out = b""
        for i, msg in enumerate(self.storage, start=1):
            if msg is not None and wanted in (4, msg.stat):
                out += self.render("CMGL", i, msg)
                msg.stat = 1 if msg.stat == 0 else msg.stat
        return out

    def cmd_cmgd(self, mode: str, args: list[str | int] | None) -> bytes:  # §3.5.4
        if mode == "test":
            used = ",".join(str(i) for i, m in enumerate(self.storage, 1) if m is not None)
            return self.info(f"+CMGD: ({used}),(0-4)")
        if mode != "set" or not args or len(args) > 2 or not all(isinstance(a, int) for a in args):
            raise CommandError(50, CMS_OP_NOT_ALLOWED)
        flag = args[1] if len(args) == 2 else 0
        if flag not in (0, 1, 2, 3, 4):
            raise CommandError(50, CMS_OP_NOT_ALLOWED)
        if flag == 0:
            index = args[0]
            assert isinstance(index, int)
            self.stored(index)  # checks the range; deleting an empty slot is OK
            self.storage[index - 1] = None
        else:
            # <delflag> 1: all read, 2: read and sent, 3: read, sent and unsent, 4: all (<index> ignored)
            doomed = {1: {1}, 2: {1, 3}, 3: {1, 2, 3}, 4: {0, 1, 2, 3}}[flag]
            self.storage = [None if m is not None and m.stat in doomed else m for m in self.storage]
        # Waiting messages come in after this command's final result, not inside its response.
        self.centre.later(0, functools.partial(self.centre.room, self))
        return b""

    def _int_arg(self, args: list[str | int] | None, i: int, allowed: tuple[int, ...], default: int) -> int:
        if args is None:
            return default
        if len(args) != 1 or not isinstance(args[i], int) or args[i] not in allowed:
            raise CommandError(50)
        value = args[i]
        assert isinstance(value, int)
        return value

    # -- from the SMS centre

    def direct(self) -> bool:
        """TS 27.005 §3.4.1 <mt> 2 (with indications on): delivered to the TE as +CMT, not stored."""
        return self.cnmi[1] == 2 and self.cnmi[0] != 0

    def can_receive(self) -> bool:
        return self.registered and (self.direct() or None in self.storage)

    def receive(self, part: Part, scts: datetime) -> None:
        msg = Stored(part.sender, scts, part.dcs, part.text, part.udh)
        if self.direct():
            self.unsolicited_raw(self.render("CMT", 0, msg))
            return
        index = self.storage.index(None) + 1
        self.storage[index - 1] = msg
        if self.cnmi[1] == 1 and self.cnmi[0] != 0:
            self.unsolicited(f'+CMTI: "SM",{index}')

    def unsolicited_raw(self, data: bytes) -> None:
        if self.entry is not None:
            self.held.append(data)
        else:
            self.send(data)

    def set_registered(self, value: bool) -> None:
        if value == self.registered:
            return
        self.registered = value
        if self.creg == 1:
            self.unsolicited(f"+CREG: {self.creg_stat()}")  # TS 27.007 §7.2 unsolicited <stat>
        elif self.creg == 2:
            self.unsolicited(f"+CREG: {self.creg_stat()}" + (',"00A1","1B2C"' if value else ""))
        if value:
            self.centre.room(self)


def split_commands(body: str) -> list[str]:
    """Basic commands first, then extended commands separated by ";" (ITU-T V.250), outside quotes."""
    commands, current, quoted = [], "", False
    for ch in body:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            commands.append(current.strip())
            current = ""
        else:
            current += ch
    if quoted:
        raise CommandError(50)
    commands.append(current.strip())
    out = []
    for command in commands:
        if not command:
            continue
        plus = command.find("+")
        if plus > 0 and '"' not in command[:plus]:
            out += [command[:plus], command[plus:]]  # e.g. "E0+CMGF=1"
        else:
            out.append(command)
    return out


def parse_args(text: str | None) -> list[str | int]:
    """Arguments (ITU-T V.250): comma-separated numbers and quoted strings; an omitted value is ""."""
    if text is None:
        return []
    args: list[str | int] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] == " ":
            i += 1
        if i < n and text[i] == '"':
            j = text.find('"', i + 1)
            if j < 0:
                raise CommandError(50)
            args.append(text[i + 1:j])
            i = j + 1
            while i < n and text[i] == " ":
                i += 1
        else:
            j = text.find(",", i)
            j = n if j < 0 else j
            raw = text[i:j].strip()
            if raw == "":
                args.append("")
            elif re.fullmatch(r"[0-9]{1,9}", raw):
                args.append(int(raw))
            else:
                raise CommandError(50)
            i = j
        if i >= n:
            return args
        if text[i] != ",":
            raise CommandError(50)
        i += 1


# --- the SMS centre ------------------------------------------------------------------------------

def normalise(number: str) -> str:
    number = number.strip().replace(" ", "")
    if number.startswith("00"):
        return "+" + number[2:]
    if number.startswith("0"):
        return "+62" + number[1:]  # an Indonesian national number
    if number.startswith("62"):
        return "+" + number
    return number


@dataclass(order=True)
class Timer:
    due: float
    seq: int
    action: Callable[[], None] = field(compare=False)


class Centre:
    """Routes SMS between the modems: delay, loss, store and forward while a recipient cannot take it."""

    number = "+6281100000000"

    def __init__(self, delay_ms: int, jitter_ms: int, loss: float, seed: int, emit: Callable[[dict], None]) -> None:
        self.delay_ms = delay_ms
        self.jitter_ms = jitter_ms
        self.loss = loss
        self.rng = random.Random(seed)
        self.emit = emit
        self.modems: dict[str, Modem] = {}
        self.timers: list[Timer] = []
        self.timer_seq = 0
        self.ref = 0
        self.ref_concat = 0
        self.waiting: dict[str, list[Part]] = {}  # per recipient modem, in arrival order

    def modem_for(self, number: str) -> Modem | None:
        key = normalise(number)
        for modem in self.modems.values():
            if normalise(modem.number) == key or modem.name == number:
                return modem
        return None

    def later(self, delay_s: float, action: Callable[[], None]) -> None:
        self.timer_seq += 1
        heapq.heappush(self.timers, Timer(time.monotonic() + delay_s, self.timer_seq, action))

    def submit(self, sender: str, to: str, whole: str, parts: list[tuple[int, str, bytes]]) -> int:
        self.ref += 1
        ref = self.ref
        recipient = self.modem_for(to)
        event = {"from": sender, "to": recipient.number if recipient else to, "text": whole,
                 "parts": len(parts), "ref": ref}
        self.emit({"event": "submitted", **event})
        if recipient is None:
            # Accepted from the sender (it got +CMGS), then found undeliverable: no such subscriber.
            self.emit({"event": "rejected", **event, "why": "unknown number"})
            return ref
        for seq, (dcs, text, udh) in enumerate(parts, start=1):
            part = Part(ref, seq, len(parts), sender, recipient.number, dcs, text, udh, whole)
            if self.rng.random() < self.loss:
                self.emit({"event": "lost", **event, "part": seq})
                continue
            delay = self.delay_ms + (self.rng.randint(0, self.jitter_ms) if self.jitter_ms else 0)
            self.later(delay / 1000, functools.partial(self.arrive, recipient, part))
        return ref

    def arrive(self, modem: Modem, part: Part) -> None:
        queue = self.waiting.setdefault(modem.name, [])
        queue.append(part)
        self.room(modem)
        if part in queue:
            why = "storage full" if modem.registered else "not registered"
            self.emit({"event": "held", "from": part.sender, "to": part.to, "text": part.whole,
                       "parts": part.total, "ref": part.ref, "part": part.seq, "why": why})

    def room(self, modem: Modem) -> None:
        """Deliver what waits for `modem` while it can take it (after a delete, on registering)."""
        queue = self.waiting.get(modem.name, [])
        while queue and modem.can_receive():
            part = queue.pop(0)
            modem.receive(part, datetime.now(UTC).astimezone(timezone(WIB)).replace(microsecond=0))
            self.emit({"event": "delivered", "from": part.sender, "to": part.to, "text": part.whole,
                       "parts": part.total, "ref": part.ref, "part": part.seq})

    def inject(self, to: str, sender: str, text: str, multipart: bool) -> None:
        recipient = self.modem_for(to)
        dcs, texts = split_text(text)
        if len(texts) > 1 and not multipart:
            self.emit({"event": "error", "why": "text too long for one SMS (multipart: false)"})
            return
        if len(texts) > MAX_PARTS:
            self.emit({"event": "error", "why": f"more than {MAX_PARTS} parts"})
            return
        self.ref_concat = (self.ref_concat + 1) % 256
        parts = [(dcs, t, concat_ie(self.ref_concat, len(texts), i + 1) if len(texts) > 1 else b"")
                 for i, t in enumerate(texts)]
        self.submit(sender, recipient.number if recipient else to, text, parts)

    def run_due(self) -> float | None:
        """Runs the timers that are due; the seconds until the next one."""
        now = time.monotonic()
        while self.timers and self.timers[0].due <= now:
            heapq.heappop(self.timers).action()
        return max(0.0, self.timers[0].due - now) if self.timers else None


# --- the process ---------------------------------------------------------------------------------

def emit(obj: dict) -> None:
    try:
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        raise SystemExit(0) from None


def control(centre: Centre, line: str) -> bool:
    """One JSON control line from stdin; False to quit."""
    try:
        cmd = json.loads(line)
        name = cmd["cmd"]
        if name == "quit":
            return False
        if name == "inject":
            centre.inject(str(cmd["to"]), str(cmd.get("from", "+62999")), str(cmd["text"]),
                          bool(cmd.get("multipart", False)))
        elif name == "set":
            if "delay_ms" in cmd:
                centre.delay_ms = int(cmd["delay_ms"])
            if "jitter_ms" in cmd:
                centre.jitter_ms = int(cmd["jitter_ms"])
            if "loss" in cmd:
                centre.loss = float(cmd["loss"])
        elif name == "registered":
            centre.modems[cmd["modem"]].set_registered(bool(cmd["value"]))
        else:
            raise KeyError(name)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        emit({"event": "error", "why": f"bad control line: {error!r}"})
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devices.modemsim")
    parser.add_argument("--modem", action="append", default=[], metavar="NAME=NUMBER")
    parser.add_argument("--delay-ms", type=int, default=300)
    parser.add_argument("--jitter-ms", type=int, default=0)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    opts = parser.parse_args(argv)
    centre = Centre(opts.delay_ms, opts.jitter_ms, opts.loss, opts.seed, emit)
    for spec in opts.modem or ["button=+6281200000001", "gateway=+6281100000001"]:
        name, _, number = spec.partition("=")
        if not name or not number or name in centre.modems:
            parser.error(f"bad --modem {spec!r}")
        centre.modems[name] = Modem(name, normalise(number), centre)
    sel = selectors.DefaultSelector()
    for modem in centre.modems.values():
        sel.register(modem.master, selectors.EVENT_READ, modem)
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    sel.register(stdin, selectors.EVENT_READ, None)
    emit({"modems": {m.name: {"number": m.number, "path": m.path} for m in centre.modems.values()}})
    pending = b""
    running = True
    while running:
        timeout = centre.run_due()
        writers = [m for m in centre.modems.values() if m.out]
        for m in writers:
            m.flush()
        if any(m.out for m in writers):
            timeout = 0.01 if timeout is None else min(timeout, 0.01)  # a client is slow to read
        for key, _ in sel.select(timeout):
            modem = key.data
            if modem is not None:
                modem.readable()
                continue
            try:
                chunk = os.read(stdin, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                running = False  # the parent went away
                break
            pending += chunk
            while b"\n" in pending and running:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    running = control(centre, line.decode("utf-8", "replace"))
    for modem in centre.modems.values():
        with contextlib.suppress(OSError):
            os.close(modem.master)
            os.close(modem.slave)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

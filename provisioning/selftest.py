"""The self-test after a reboot: the board boots the new firmware, connects to the broker, sends a
*test* alarm, the gateway stores it, and the gateway's "received" ack comes back to the board.

The board's console (USB serial) prints the firmware's event lines ("EVT boot ...",
"EVT connected", "EVT alarm seq=7 kind=general test=1", "EVT delivered seq=7"); the gateway's admin
API shows the stored alarm. The test alarm is started by the line "test" on the console (the
unix-port HAL reads it; see firmware/boards/unix/hal.py) or, on boards whose firmware does not read
the console, by the technician: lid open (test mode) and a long press.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from .board import Board
from .errors import SelfTestError
from .gateway import GatewayClient
from .text import t
from .ui import Ui

_EVT = re.compile(r"^EVT (\S+) ?(.*)$")
_SEQ = re.compile(r"\bseq=(\d+)\b")
ASK_AFTER_S = 5.0
GATEWAY_POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class SelfTestResult:
    seq: int
    firmware: str
    boot_s: float      # reboot -> firmware running
    connect_s: float   # -> logged in at the broker
    alarm_s: float     # trigger -> test alarm raised (in the board's flash outbox)
    stored_s: float    # trigger -> stored at the gateway
    acked_s: float     # trigger -> the gateway's "received" ack back on the board
    total_s: float


class _Console:
    def __init__(self, board: Board, deadline: float) -> None:
        self.board = board
        self.deadline = deadline
        self.last_connect_error = ""
        self.history: list[str] = []

    def next_event(self, until: float) -> tuple[str, str] | None:
        """The next EVT line before `until`; None at the time limit. Fails fast on fatal lines."""
        while True:
            remaining = min(until, self.deadline) - time.monotonic()
            if remaining <= 0:
                return None
            line = self.board.read_line(remaining)
            if line is None:
                return None
            self.history.append(line)
            if line.startswith("Traceback"):
                self._crash()
            match = _EVT.match(line.strip())
            if match is None:
                continue
            name, detail = match.group(1), match.group(2)
            if name == "fault" and detail.startswith("config"):
                raise SelfTestError(t("selftest.config_refused", detail=detail), t("selftest.config_refused.hint"))
            if name == "fault" and detail.startswith("login"):
                raise SelfTestError(t("selftest.login_refused"), t("selftest.login_refused.hint"))
            if name == "connect_failed":
                self.last_connect_error = detail
            return name, detail

    def _crash(self) -> None:
        lines = []
        for _ in range(40):
            line = self.board.read_line(1.0)
            if line is None:
                break
            lines.append(line)
            if line and not line.startswith(" "):
                break
        raise SelfTestError(t("selftest.crashed", line=lines[-1] if lines else "Traceback"),
                            t("selftest.crashed.hint"))


def run(board: Board, gw: GatewayClient, device_id: str, *, broker: str, timeout_s: float, ui: Ui,
        console_trigger: bool, ask_technician: bool) -> SelfTestResult:
    start = time.monotonic()
    console = _Console(board, start + timeout_s)

    def wait_for(names: tuple[str, ...], what: str, hint: str, seq: int | None = None) -> tuple[str, str]:
        while True:
            event = console.next_event(console.deadline)
            if event is None:
                raise SelfTestError(t("selftest.timed_out", what=what, seconds=f"{timeout_s:.0f}"), hint)
            name, detail = event
            if name in names and (seq is None or _seq(detail) == seq):
                return event

    _, boot_detail = wait_for(("boot",), t("selftest.no_boot"), t("selftest.no_boot.hint"))
    firmware = dict(kv.split("=", 1) for kv in boot_detail.split() if "=" in kv).get("fw", "?")
    booted = time.monotonic()
    ui.step(t("selftest.running", firmware=firmware, seconds=f"{booted - start:.1f}"))
    try:
        wait_for(("connected",), t("selftest.no_login", broker=broker), t("selftest.no_login.hint"))
    except SelfTestError as exc:
        if console.last_connect_error:
            exc.message += " " + t("selftest.last_error", error=console.last_connect_error)
        raise
    connected = time.monotonic()
    ui.step(t("selftest.logged_in", seconds=f"{connected - booted:.1f}"))

    trigger = time.monotonic()
    if console_trigger:
        board.send_line("test")
    asked = not ask_technician
    seq = None
    while seq is None:
        until = trigger + ASK_AFTER_S if not asked else console.deadline
        event = console.next_event(until)
        if event is None:
            if not asked:
                asked = True
                ui.say("         >>> " + t("selftest.ask_press") + " <<<")
                continue
            raise SelfTestError(t("selftest.timed_out", what=t("selftest.no_alarm"), seconds=f"{timeout_s:.0f}"),
                                t("selftest.no_alarm.hint"))
        name, detail = event
        if name == "alarm" and "test=1" in detail.split():
            seq = _seq(detail)
    raised = time.monotonic()
    ui.step(t("selftest.raised", seq=seq))

    stored_at: float | None = None
    acked_at: float | None = None
    next_poll = time.monotonic()
    while stored_at is None or acked_at is None:
        now = time.monotonic()
        if now > console.deadline:
            if stored_at is None:
                reason = _audit_reason(gw, device_id)
                raise SelfTestError(
                    t("selftest.not_stored", seq=seq, device=device_id)
                    + (" " + t("selftest.rejected_as", reason=reason) if reason else ""),
                    t("selftest.not_stored.hint"))
            raise SelfTestError(t("selftest.no_ack", seq=seq), t("selftest.no_ack.hint"))
        if stored_at is None and now >= next_poll:
            next_poll = now + GATEWAY_POLL_S
            if any(a.get("seq") == seq and a.get("test") for a in gw.alarms(device_id, limit=10)):
                stored_at = time.monotonic()
                ui.step(t("selftest.stored", seq=seq, seconds=f"{stored_at - trigger:.2f}"))
        if acked_at is None:
            event = console.next_event(min(next_poll, console.deadline) if stored_at is None else console.deadline)
            if event is not None and event[0] == "delivered" and _seq(event[1]) == seq:
                acked_at = time.monotonic()
                ui.step(t("selftest.acked", seconds=f"{acked_at - trigger:.2f}"))
        elif stored_at is None:
            time.sleep(max(0.0, min(next_poll, console.deadline) - time.monotonic()))
    assert stored_at is not None
    assert acked_at is not None
    return SelfTestResult(seq, firmware, booted - start, connected - booted, raised - trigger, stored_at - trigger,
                          acked_at - trigger, time.monotonic() - start)


def _seq(detail: str) -> int | None:
    match = _SEQ.search(detail)
    return int(match.group(1)) if match else None


def _audit_reason(gw: GatewayClient, device_id: str) -> str:
    try:
        entries = gw.audit(limit=100)
    except Exception:
        return ""
    for entry in entries:
        if entry.get("device_id") == device_id:
            return str(entry.get("reason", ""))
    return ""

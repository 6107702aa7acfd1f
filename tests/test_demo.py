"""`siaga demo` (what `make demo` runs) with the embedded broker: a full round trip, then a clean
exit on Ctrl-C (SIGINT) that leaves no process and no temporary folder behind."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from tests.support.demo import DemoProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _english(monkeypatch: pytest.MonkeyPatch) -> None:
    """The terminal's narration in English, as these tests read it (its default is Bahasa Indonesia)."""
    monkeypatch.setenv("SIAGA_LANG", "en")


def _demo_dirs(root: Path) -> set[Path]:
    return set(root.glob("siaga-demo-*"))


def test_demo_round_trip_then_clean_exit_on_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The demo's temporary folder goes below a folder of this test's own, so that another demo
    # running at the same time (the suite runs on two workers) cannot be mistaken for a leftover.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    before = _demo_dirs(tmp_path)
    demo = DemoProcess("--broker", "embedded")
    try:
        demo.wait_for(r"Press Ctrl-C to stop")
        assert len(_demo_dirs(tmp_path)) == 1  # it works in a folder of its own, below TMPDIR
        text = "\n".join(demo.lines)
        assert "embedded demo broker" in text
        assert re.search(r"NEW incident inc-\d+: general at Kantor Kelurahan Gambir", text), text
        assert text.index("LED: the gateway has the alarm") < text.index("AN OPERATOR HAS SEEN THE ALARM")

        time.sleep(0.5)  # idle for a moment, as a person would before pressing Ctrl-C
        demo.proc.send_signal(signal.SIGINT)
        assert demo.proc.wait(30) == 0
    finally:
        demo.close()
    assert demo.lines[-1] == "Stopped cleanly; nothing is left running.", demo.lines[-5:]
    assert not [line for line in demo.lines if "Traceback" in line or "ERROR" in line], demo.lines
    assert before == set() and _demo_dirs(tmp_path) == set()  # its temporary folder is gone


def test_demo_without_mosquitto_uses_the_embedded_broker(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`make demo` on a machine where Mosquitto is not installed: `auto` picks the embedded broker."""
    from siaga import demo, stack

    monkeypatch.setattr(stack, "mosquitto_available", lambda: False)
    assert demo.run_demo(buttons=1, presses=1, exit_after=True, broker="auto") == 0
    out = capsys.readouterr().out
    assert "embedded demo broker" in out
    assert "AN OPERATOR HAS SEEN THE ALARM" in out
    assert out.rstrip().endswith("Stopped cleanly; nothing is left running.")

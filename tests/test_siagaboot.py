"""The boot code (firmware/lib/siagaboot.py) under the real MicroPython unix port, through the real
unix loader (firmware/boards/unix/main.py): which firmware it starts from a given boot state, how it
counts a trial's boots (a crash and a power cut count), when it rolls back, and that a missing or
damaged state file or a slot without an entry point never stops the button.

Each "firmware" here is a start.py that prints which one it is and then does what its slot's
`mode` file says: end, crash, hang (to be killed), confirm or fail its self-test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.firmware import FIRMWARE_LIB, REPO, UNIX_BOARD, micropython_binary

pytestmark = pytest.mark.micropython

FAKE_START = '''\
import os
import sys

import siagaboot

name = "%s"
print("RUN", name, siagaboot.state(sys.argv[2])["tries"])
print("STARTED", siagaboot.started)
try:
    with open(sys.argv[2] + "/mode." + name) as f:
        mode = f.read().strip()
except OSError:
    mode = "ok"
if mode == "crash":
    raise RuntimeError("broken firmware")
if mode == "hang":
    while True:
        import time
        time.sleep_ms(50)
if mode == "confirm":
    siagaboot.confirm(sys.argv[2])
if mode == "selftest":
    siagaboot.rollback(sys.argv[2], "selftest")
'''


class Flash:
    """A flash directory with a factory firmware beside a copy of the real loader, and slots."""

    def __init__(self, tmp: Path) -> None:
        self.factory = tmp / "factory"
        self.factory.mkdir()
        shutil.copy(UNIX_BOARD / "main.py", self.factory / "main.py")
        (self.factory / "start.py").write_text(FAKE_START % "factory")
        self.root = tmp / "flash"
        self.root.mkdir()
        self.boot_json = self.root / "ota" / "boot.json"

    def slot(self, name: str, *, start: bool = True) -> Path:
        d = self.root / "slot" / name
        (d / "lib").mkdir(parents=True, exist_ok=True)
        if start:
            (d / "start.py").write_text(FAKE_START % name)
        return d

    def mode(self, name: str, mode: str) -> None:
        (self.root / f"mode.{name}").write_text(mode)

    def state(self, **fields: Any) -> None:
        self.boot_json.parent.mkdir(exist_ok=True)
        self.boot_json.write_text(json.dumps(fields))

    def read(self) -> dict[str, Any]:
        return json.loads(self.boot_json.read_text())

    def _args(self) -> list[str]:
        return [micropython_binary(), str(self.factory / "main.py"), "config.json", str(self.root)]

    def _env(self) -> dict[str, str]:
        return {"MICROPYPATH": f".frozen:{FIRMWARE_LIB}"}

    def boot(self) -> tuple[str, int]:
        """One boot to the end: (the firmware that ran, "<name> <tries>"), and the exit status."""
        proc = subprocess.run(self._args(), capture_output=True, text=True, timeout=30, env=self._env(), check=False)
        runs = [line for line in proc.stdout.splitlines() if line.startswith("RUN ")]
        assert len(runs) == 1, proc.stdout + proc.stderr
        return runs[0][4:], proc.returncode

    def boot_and_kill(self) -> str:
        """A boot whose firmware hangs and loses power once it has started."""
        proc = subprocess.Popen(self._args(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=self._env())
        assert proc.stdout is not None
        line = proc.stdout.readline()
        proc.kill()
        proc.wait(5)
        proc.stdout.close()
        assert line.startswith("RUN "), line
        return line[4:].strip()


@pytest.fixture
def flash(tmp_path: Path) -> Flash:
    return Flash(tmp_path)


def test_no_state_runs_the_factory_firmware_and_writes_nothing(flash: Flash) -> None:
    assert flash.boot() == ("factory 0", 0)
    assert not (flash.root / "ota").exists()
    flash.slot("a")  # a slot alone is not in service
    assert flash.boot() == ("factory 0", 0)


@pytest.mark.parametrize("content", ["", "{", '{"run": "a", "trial": tr', "\x00\xff garbage", "[1, 2]",
                                     '{"run": "c"}', '{"run": 7}'])
def test_a_damaged_state_file_runs_the_factory_firmware(flash: Flash, content: str) -> None:
    flash.slot("a")
    flash.boot_json.parent.mkdir()
    flash.boot_json.write_bytes(content.encode("utf-8", "surrogateescape"))
    assert flash.boot()[0] == "factory 0"


def test_a_state_half_replaced_is_read_from_the_whole_copy(flash: Flash) -> None:
    flash.slot("a")
    flash.slot("b")
    # FAT: the old file was removed, the power went before the rename: the .new copy is whole.
    flash.state(run="b", prev="a", trial=False)
    flash.boot_json.rename(flash.boot_json.with_name("boot.json.new"))
    assert flash.boot()[0] == "b 0"
    # A .new cut short beside a whole boot.json: boot.json is the state.
    flash.state(run="a", trial=False)
    flash.boot_json.with_name("boot.json.new").write_text('{"run": "b", "tri')
    assert flash.boot()[0] == "a 0"


def test_a_crashing_trial_runs_max_tries_times_then_rolls_back(flash: Flash) -> None:
    flash.slot("a")
    flash.mode("a", "crash")
    flash.state(run="a", prev="factory", trial=True, tries=0, max_tries=3, version="0.3.0", prev_version="0.2.0",
                id="00112233aabbccdd", rolled_back=None)
    for tries in (1, 2, 3):
        name, status = flash.boot()
        assert (name, status) == (f"a {tries}", 1)  # each boot counted before it ran, crash or not
        assert flash.read()["tries"] == tries and flash.read()["trial"] is True
    assert flash.boot() == ("factory 0", 0)
    state = flash.read()
    assert state["run"] == "factory" and state["trial"] is False and state["version"] == "0.2.0"
    assert state["rolled_back"] == {"version": "0.3.0", "id": "00112233aabbccdd", "reason": "crashes"}
    assert flash.boot() == ("factory 0", 0)  # and it stays there


def test_power_cuts_during_a_trial_count_as_failed_boots(flash: Flash) -> None:
    flash.slot("b")
    flash.slot("a")
    flash.mode("b", "hang")
    flash.state(run="b", prev="a", trial=True, tries=0, max_tries=2, version="0.4.0", prev_version="0.3.0",
                id="b" * 16, prev_id="a" * 16)
    assert flash.boot_and_kill() == "b 1"
    assert flash.boot_and_kill() == "b 2"
    assert flash.boot() == ("a 0", 0)  # back to the slot it came from, not to the factory
    state = flash.read()
    assert (state["run"], state["version"], state["id"], state["trial"]) == ("a", "0.3.0", "a" * 16, False)
    assert state["rolled_back"]["reason"] == "crashes" and state["rolled_back"]["version"] == "0.4.0"


def test_a_confirmed_version_stays_in_service(flash: Flash) -> None:
    flash.slot("a")
    flash.mode("a", "confirm")
    flash.state(run="a", prev="factory", trial=True, tries=0, max_tries=1, version="0.3.0", prev_version="0.2.0")
    assert flash.boot() == ("a 1", 0)
    assert flash.read()["trial"] is False and flash.read()["tries"] == 0
    flash.mode("a", "crash")  # a confirmed version that crashes later is not rolled back by the count
    for _ in range(3):
        assert flash.boot() == ("a 0", 1)
    assert flash.read()["run"] == "a" and flash.read()["rolled_back"] is None


def test_a_failed_self_test_rolls_back_at_the_next_boot(flash: Flash) -> None:
    flash.slot("a")
    flash.mode("a", "selftest")
    flash.state(run="a", prev="factory", trial=True, tries=0, max_tries=3, version="0.3.0", prev_version="0.2.0",
                id="1" * 16)
    assert flash.boot() == ("a 1", 0)
    assert flash.boot() == ("factory 0", 0)
    assert flash.read()["rolled_back"] == {"version": "0.3.0", "id": "1" * 16, "reason": "selftest"}


def test_a_slot_without_an_entry_point_is_never_started(flash: Flash) -> None:
    flash.slot("a", start=False)
    flash.state(run="a", prev="factory", trial=True, tries=0, version="0.3.0", prev_version="0.2.0")
    assert flash.boot() == ("factory 0", 0)
    assert flash.read()["rolled_back"]["reason"] == "crashes"
    # A confirmed slot emptied by accident, and the slot it would return to empty too.
    flash.slot("b", start=False)
    flash.state(run="b", prev="a", trial=False, version="0.4.0", prev_version="0.3.0")
    assert flash.boot() == ("factory 0", 0)
    assert flash.read()["run"] == "factory"


def test_the_api_under_micropython(flash: Flash) -> None:
    """trial(), confirm(), rollback(), clear_rolled_back() as the updater calls them."""
    flash.slot("a")
    script = f'''
import siagaboot
r = "{flash.root}"
siagaboot.trial(r, "a", "0.3.0", "ab" * 8, "0.2.0", 2)
s = siagaboot.state(r)
print(s["run"], s["prev"], s["trial"], s["tries"], s["max_tries"], s["prev_version"])
print(siagaboot.boot(r))
print(siagaboot.confirm(r), siagaboot.rollback(r, "selftest"), siagaboot.state(r)["run"])
siagaboot.trial(r, "b", "0.4.0", "cd" * 8, "0.3.0")
print(siagaboot.rollback(r, "selftest"), siagaboot.state(r)["run"], siagaboot.state(r)["rolled_back"]["reason"])
siagaboot.clear_rolled_back(r)
print(siagaboot.state(r)["rolled_back"], siagaboot.BOOT_LEVEL)
try:
    siagaboot.trial(r, "a", "0.5.0", "ef" * 8, "0.3.0")
except ValueError:
    print("refused")
'''
    proc = subprocess.run([micropython_binary(), "-c", script], capture_output=True, text=True, timeout=30,
                          env={"MICROPYPATH": str(FIRMWARE_LIB)}, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        "a factory True 0 2 0.2.0",
        f"{flash.root}/slot/a",
        "True False a",
        "True a selftest",
        "None 1",
        "refused",
    ]


def test_the_loader_runs_the_factory_firmware_when_the_state_cannot_be_written(flash: Flash) -> None:
    flash.slot("a")
    flash.state(run="a", prev="factory", trial=True, tries=0)
    flash.boot_json.with_name("boot.json.new").mkdir()  # the trial's count cannot be saved
    proc = subprocess.run(flash._args(), capture_output=True, text=True, timeout=30, env=flash._env(), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("EVT boot_fault ") and lines[1] == "RUN factory 0", lines
    # The firmware knows it is not the slot on trial (siagaboot.started): it must not confirm it.
    assert lines[2] == "STARTED factory" and flash.read()["trial"] is True, lines


def test_the_firmware_knows_which_slot_the_loader_started(flash: Flash) -> None:
    flash.slot("a")
    flash.state(run="a", prev="factory", trial=True, tries=0)
    proc = subprocess.run(flash._args(), capture_output=True, text=True, timeout=30, env=flash._env(), check=False)
    assert proc.stdout.splitlines() == ["RUN a 1", "STARTED a"], proc.stdout + proc.stderr


def test_a_cut_while_saving_never_loses_the_only_good_copy(flash: Flash) -> None:
    """FAT: boot.json was removed and the power went before the rename, so boot.json.new is the
    only good copy. The next save must not write over it first: here that write is cut off right
    after the file was emptied, and the state must still read back whole."""
    script = f'''
import json, os, siagaboot
r = "{flash.root}"
os.mkdir(r + "/ota")
with open(r + "/ota/boot.json.new", "w") as f:
    f.write(json.dumps({{"run": "a", "prev": "factory", "trial": True, "tries": 1, "version": "0.3.0"}}))
def cut(path, mode="r"):
    if path.endswith(".new") and "w" in mode:
        open(path, "w").close()  # emptied, and the power goes
        raise OSError("power cut")
    return open(path, mode)
siagaboot.open = cut
try:
    siagaboot.save(r, {{"run": "a", "prev": "factory", "trial": True, "tries": 2, "version": "0.3.0"}})
except OSError as exc:
    print(exc)
del siagaboot.open
s = siagaboot.state(r)
print(s["run"], s["trial"], s["tries"], s["version"])
'''
    flash.slot("a")
    proc = subprocess.run([micropython_binary(), "-c", script], capture_output=True, text=True, timeout=30,
                          env={"MICROPYPATH": str(FIRMWARE_LIB)}, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == ["power cut", "a True 1 0.3.0"]


BOARD_START = '''
import siagaboot
print("STARTED", siagaboot.started)
with open("MODE") as f:
    mode = f.read().strip()
if mode == "crash":
    raise ImportError("no module named 'hal'")
if mode == "memory":
    raise MemoryError()
if mode == "interrupt":
    raise KeyboardInterrupt()
print("RUNNING")
'''

FAKE_MACHINE = '''
import sys


def reset():
    print("RESET")
    sys.exit(3)
'''


@pytest.mark.parametrize(("mode", "status", "reset"), [("crash", 3, True), ("memory", 3, True), ("ok", 0, False),
                                                       ("interrupt", 130, False)])
def test_the_board_loader_resets_when_the_firmware_fails_to_start(tmp_path: Path, mode: str, status: int,
                                                                   reset: bool) -> None:
    """boards/common/main.py under the unix port with a stand-in machine module: a firmware whose
    start raises resets the board (so that the failed start is a counted trial boot) instead of
    leaving it at the REPL; Ctrl-C still reaches the REPL. (Its root is "/", where this machine has
    no /ota/boot.json: the factory start.py beside it runs.)"""
    assert not Path("/ota/boot.json").exists()
    shutil.copy(REPO / "firmware" / "boards" / "common" / "main.py", tmp_path / "main.py")
    (tmp_path / "start.py").write_text(BOARD_START)
    (tmp_path / "machine.py").write_text(FAKE_MACHINE)
    (tmp_path / "MODE").write_text(mode)
    proc = subprocess.run([micropython_binary(), str(tmp_path / "main.py")], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path, env={"MICROPYPATH": f"{tmp_path}:{FIRMWARE_LIB}"}, check=False)
    lines = proc.stdout.splitlines()
    assert proc.returncode == status and lines[0] == "STARTED factory", proc.stdout + proc.stderr
    assert (lines[-1] == "RESET") is reset, lines
    if reset:
        assert lines[1].startswith("EVT start_failed "), lines

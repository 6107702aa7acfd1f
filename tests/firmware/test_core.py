"""The firmware core's unit tests, under CPython here and under the real MicroPython unix port."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.firmware import core_tests
from tests.support.firmware import FIRMWARE_LIB, micropython_binary

HERE = Path(__file__).parent


def test_every_core_test_is_listed() -> None:
    defined = {name for name in dir(core_tests) if name.startswith("test_")}
    assert defined == {t.__name__ for t in core_tests.TESTS}


@pytest.mark.parametrize("test", core_tests.TESTS, ids=lambda t: t.__name__)
def test_core_under_cpython(test, tmp_path: Path) -> None:
    test(str(tmp_path))


@pytest.mark.micropython
def test_core_under_micropython(tmp_path: Path) -> None:
    proc = subprocess.run([micropython_binary(), str(HERE / "run_core.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={"MICROPYPATH": f"{FIRMWARE_LIB}:{HERE}"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(rf"^{len(core_tests.TESTS)} passed, 0 failed$", proc.stdout, re.M), proc.stdout

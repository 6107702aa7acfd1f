"""The same protocol vectors pass under CPython and under the real MicroPython unix port."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.firmware import FIRMWARE_LIB, micropython_binary
from tests.vectors import check

VECTORS = Path(__file__).parents[1] / "vectors"
VECTOR_FILE = VECTORS / "protocol_v1.json"


def _total_cases() -> int:
    data = json.loads(VECTOR_FILE.read_text())
    return sum(len(v) for v in data.values() if isinstance(v, list))


def test_vectors_under_cpython() -> None:
    results = check.run(json.loads(VECTOR_FILE.read_text()))
    failures = [(name, detail) for name, ok, detail in results if not ok]
    assert failures == []
    assert len(results) == _total_cases()


@pytest.mark.micropython
def test_vectors_under_micropython() -> None:
    proc = subprocess.run([micropython_binary(), str(VECTORS / "check.py"), str(VECTOR_FILE)],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={"MICROPYPATH": str(FIRMWARE_LIB)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The interpreter really is MicroPython, and it checked every case.
    assert re.search(rf"^{_total_cases()} passed, 0 failed$", proc.stdout, re.M), proc.stdout


@pytest.mark.micropython
def test_micropython_is_really_micropython() -> None:
    proc = subprocess.run([micropython_binary(), "-c", "import sys; print(sys.implementation.name)"],
                          capture_output=True, text=True, timeout=30, check=True)
    assert proc.stdout.strip() == "micropython"


def test_vector_file_is_what_the_generator_makes() -> None:
    """The vectors come from CPython's own hmac and json; a hand edit would break that link."""
    proc = subprocess.run([sys.executable, str(VECTORS / "generate.py")], capture_output=True, text=True, check=True)
    assert proc.stdout == VECTOR_FILE.read_text()

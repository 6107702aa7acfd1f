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


# ---------------------------------------------------------------- Ed25519 (signed firmware bundles)
ED25519_FILE = VECTORS / "ed25519_v1.json"


def _ed25519_cases() -> int:
    data = json.loads(ED25519_FILE.read_text())
    return len(data["verify"]) + len(data["sha512"])


def test_ed25519_vectors_under_cpython() -> None:
    from tests.vectors import check_ed25519

    results = check_ed25519.run(json.loads(ED25519_FILE.read_text()))
    assert [(name, detail) for name, ok, detail in results if not ok] == []
    assert len(results) == _ed25519_cases()


@pytest.mark.micropython
def test_ed25519_vectors_under_micropython() -> None:
    proc = subprocess.run([micropython_binary(), str(VECTORS / "check_ed25519.py"), str(ED25519_FILE)],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={"MICROPYPATH": str(FIRMWARE_LIB)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(rf"^{_ed25519_cases()} passed, 0 failed$", proc.stdout, re.M), proc.stdout


def test_ed25519_vector_file_is_what_the_generator_makes() -> None:
    """Signed by `cryptography` with fixed seeds (Ed25519 signing is deterministic)."""
    proc = subprocess.run([sys.executable, str(VECTORS / "generate_ed25519.py")], capture_output=True, text=True,
                          check=True)
    assert proc.stdout == ED25519_FILE.read_text()

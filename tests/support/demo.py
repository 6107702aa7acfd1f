"""Run `siaga demo` as a person would, reading what it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

import pytest


class DemoProcess:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "siaga.cli", "demo", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                self._new_line.notify_all()

    def wait_for(self, pattern: str, timeout_s: float = 60.0) -> None:
        with self._new_line:
            if not self._new_line.wait_for(lambda: any(re.search(pattern, x) for x in self.lines), timeout_s):
                pytest.fail(f"demo never printed {pattern!r}:\n" + "\n".join(self.lines))

    def find(self, pattern: str) -> re.Match[str]:
        """The first printed line matching pattern (already printed: call wait_for first)."""
        for line in self.lines:
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"no line matches {pattern!r}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

"""Network helpers for tests: every service a test starts listens on a free loopback port."""

from __future__ import annotations

import socket
import time

from siaga.net import free_port

__all__ = ["free_port", "wait_port"]


def wait_port(port: int, host: str = "127.0.0.1", timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s} s") from None
            time.sleep(0.05)

"""What a hostile HTTP client does, over raw sockets so that a test controls every byte: bodies far
too large (announced or streamed), and a look at the server's peak memory."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

MB = 1024 * 1024


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def raw_post(port: int, path: str, headers: dict[str, str], chunks: Iterable[bytes], *,
             chunked: bool = False, timeout_s: float = 20.0, method: str = "POST") -> int:
    """POST over a raw socket, sending `chunks` until the server answers (then it stops sending, as a
    browser would); returns the status code. A server that closes without answering gives 0."""
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    if chunked:
        head.append("Transfer-Encoding: chunked")
    deadline = time.monotonic() + timeout_s
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        answer = b""
        for chunk in chunks:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            data = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                break
        else:
            if chunked:
                try:
                    sock.sendall(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass
        while b"\r\n" not in answer and time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
    if not answer.startswith(b"HTTP/1.1 "):
        return 0
    return int(answer.split()[1])


def repeat(block: bytes, total: int) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield block
        sent += len(block)

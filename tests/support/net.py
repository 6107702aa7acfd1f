"""Network helpers for tests: every service a test starts listens on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import threading
import time
from typing import Any

from siaga.net import free_port

__all__ = ["FakeDns", "HoldingProxy", "StalledServer", "free_port", "share_httpx_tls_context", "wait_port"]


def share_httpx_tls_context() -> None:
    """Let the httpx clients of the test process share their default TLS context.

    httpx 0.28 builds a new `ssl.SSLContext` for each `Client`, loading a whole CA bundle (certifi's,
    or SSL_CERT_FILE's): 25 to 50 ms of CPU (encode/httpx#2298, #3627), paid by every
    `httpx.get(...)`/`httpx.post(...)`, which makes a client per call. The tests make thousands of
    such calls to loopback http:// addresses, many in wait loops while a process under test is
    starting on the same two cores. Only the default contexts (verify=True, no client certificate)
    are shared, one per value of the variables httpx reads; none is used for TLS in the tests, and
    httpx does not modify them.
    """
    import httpx._transports.default as transport

    original = getattr(transport, "create_ssl_context", None)
    if original is None or getattr(original, "shared_default", False):
        return
    made: dict[tuple[bool, str | None, str | None], ssl.SSLContext] = {}
    lock = threading.Lock()

    def create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> ssl.SSLContext:
        if verify is not True or cert is not None:
            return original(verify=verify, cert=cert, trust_env=trust_env)
        key = (trust_env, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
        with lock:
            if key not in made:
                made[key] = original(verify=True, cert=None, trust_env=trust_env)
            return made[key]

    create_ssl_context.shared_default = True  # type: ignore[attr-defined]
    transport.create_ssl_context = create_ssl_context


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


class StalledServer:
    """A TCP server that accepts connections and never answers (what an uplink that drops
    packets beyond the first hop looks like to a client): the connect succeeds, then silence.
    Keeps every connection open and records when each was accepted (time.monotonic())."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.accepted: list[float] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(16)
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stalled-server", daemon=True)

    def _run(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(time.monotonic())
            self._conns.append(conn)

    def __enter__(self) -> StalledServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        for conn in self._conns:
            conn.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


class HoldingProxy:
    """A TCP proxy on a free loopback port to `upstream_port`, whose client-to-server direction can
    be held: while `held`, bytes from clients are kept (in order) instead of forwarded, and
    `release()` sends them on. The other direction always flows. What a congested uplink that
    delays one direction looks like to both ends: nothing is lost, it is only late."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.1)
        self._cond = threading.Condition()
        self._held = False
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="holding-proxy", daemon=True)

    def __enter__(self) -> HoldingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.release()
        self._thread.join(5)
        self._listener.close()
        for sock in self._socks:
            sock.close()

    @property
    def held(self) -> bool:
        return self._held

    def hold(self) -> None:
        with self._cond:
            self._held = True

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.settimeout(None)   # a quiet link is not a broken one: wait as long as it takes
            self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, holdable: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if holdable:
                    with self._cond:
                        self._cond.wait_for(lambda: not self._held or self._stop.is_set())
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class FakeDns:
    """A DNS server on a free UDP port of loopback with a switchable behaviour: `mode` is "answer"
    (an A record for every name, `address`), "servfail", "nxdomain" or "silent" (reads the query
    and never answers). Built with struct after RFC 1035 §4.1; records each query's name."""

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.address = address
        self.mode = "answer"
        self.queries: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-dns", daemon=True)

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self._reply(data)
            if reply is not None:
                self._sock.sendto(reply, peer)

    def _reply(self, query: bytes) -> bytes | None:
        if len(query) < 17:
            return None
        qid = struct.unpack("!H", query[:2])[0]
        end = query.index(b"\x00", 12) + 5        # the question: name, root, type, class
        labels, pos = [], 12
        while query[pos]:
            labels.append(query[pos + 1:pos + 1 + query[pos]].decode())
            pos += 1 + query[pos]
        self.queries.append(".".join(labels))
        mode = self.mode
        if mode == "silent":
            return None
        rcode = {"answer": 0, "servfail": 2, "nxdomain": 3}[mode]
        header = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, 1 if rcode == 0 else 0, 0, 0)
        reply = header + query[12:end]
        if rcode == 0:
            reply += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(self.address)
        return reply

    def __enter__(self) -> FakeDns:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

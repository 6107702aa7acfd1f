"""A minimal command-center stand-in for benchmarks: accepts protocol.md §7 intake requests over
real HTTP/1.1 (keep-alive) and records when each event arrived, so the gateway is measured rather
than the reference command center's own storage.

    python bench/sink.py PORT        # serves until SIGTERM; GET /dump returns what it received
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

received: dict[str, float] = {}   # event id -> time.monotonic() at arrival (system-wide clock on Linux)
# alarm event id -> (time.time() at arrival, the body's received_at): the gateway's own share of the time
gateway_share: dict[str, tuple[float, str]] = {}


def _note(event: dict, now: float) -> None:
    eid = event["event_id"]
    received.setdefault(eid, now)
    if "received_at" in event and eid not in gateway_share:
        gateway_share[eid] = (time.time(), event["received_at"])


def _reply(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def _handle(method: str, path: str, body: bytes) -> bytes:
    now = time.monotonic()
    if method == "POST" and path in ("/api/v1/alarms/batch", "/api/v1/faults/batch"):
        results = []
        for event in json.loads(body)["alarms" if path.startswith("/api/v1/alarms") else "faults"]:
            eid = event["event_id"]
            status = "duplicate" if eid in received else "created"
            _note(event, now)
            results.append({"event_id": eid, "status": status, "incident_id": "inc-1", "state": "received",
                            "error": None})
        return _reply("200 OK", json.dumps({"results": results}).encode())
    if method == "POST" and path in ("/api/v1/alarms", "/api/v1/faults"):
        event = json.loads(body)
        eid = event["event_id"]
        _note(event, now)
        answer = {"event_id": eid, "incident_id": "inc-1", "state": "received"}
        return _reply("201 Created", json.dumps(answer).encode())
    if method == "GET" and path == "/dump":
        return _reply("200 OK", json.dumps(received).encode())
    if method == "GET" and path == "/dump-gateway-share":
        return _reply("200 OK", json.dumps(gateway_share).encode())
    return _reply("404 Not Found", b"{}")


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            writer.write(_handle(method, path, body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(_serve, "127.0.0.1", port)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))

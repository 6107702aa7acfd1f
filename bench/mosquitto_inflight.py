"""Does the broker hold a QoS 1 subscriber to `max_inflight_messages` unacknowledged messages?

    .venv/bin/python bench/mosquitto_inflight.py [--queued 5000] [--ack 200]

gateway/mqtt.py counts on it: the gateway acknowledges a message only after its commit, and "the
number of unacknowledged messages, and so the intake queue, is bounded by the broker's
max_inflight_messages" (1000 in broker/templates/mosquitto.conf). This starts Mosquitto from that
configuration and, as the gateway user, (1) lets --queued alarms queue for an offline persistent
session, reconnects, reads for 3 s without acknowledging any, then acknowledges the first --ack
of them and reads again; (2) does the same with a subscriber connected while they are published.
With the window enforced, the second count is at most max_inflight_messages + --ack. Plain
sockets and the gateway's own packet code (gateway/mqttwire.py); prints, asserts nothing.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway import mqttwire as wire  # noqa: E402
from siaga.broker.process import MosquittoProcess  # noqa: E402

TOPIC = "siaga/v1/dev/+/alarm"
DEVICE, DEVICE_PASSWORD = "probe-button", "probe-button-password"


def connect(port: int, client_id: str, user: str, password: str, clean: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(wire.connect(client_id, user, password, 60, clean=clean))
    return sock


def read_for(sock: socket.socket, seconds: float, pids: list[int]) -> int:
    """PUBLISH packets received within `seconds` (their packet ids appended to `pids`)."""
    sock.settimeout(0.2)
    buf = bytearray()
    count = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            continue
        if not data:
            break
        buf += data
        packets, used = wire.parse(buf)
        del buf[:used]
        for p in packets:
            if isinstance(p, wire.Publish):
                count += 1
                pids.append(p.pid)
    return count


def publish(port: int, n: int) -> None:
    sock = connect(port, DEVICE, DEVICE, DEVICE_PASSWORD, True)
    read_for(sock, 0.3, [])
    sock.sendall(b"".join(wire.publish(f"siaga/v1/dev/{DEVICE}/alarm", b"x" * 300, 1, False, i % 65535 + 1)
                          for i in range(n)))
    read_for(sock, 1.0, [])   # the PUBACKs: every message is in the broker
    sock.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queued", type=int, default=5000)
    ap.add_argument("--ack", type=int, default=200)
    args = ap.parse_args()
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.machine()}, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="siaga-inflight-") as tmp:
        broker = MosquittoProcess(Path(tmp), devices={DEVICE: DEVICE_PASSWORD}).start()
        try:
            version = subprocess.run([broker._binary, "-h"], check=False, capture_output=True,
                                     text=True).stdout.splitlines()[0]
            window = [ln for ln in broker.conf_path.read_text().splitlines() if ln.startswith("max_inflight")]
            print(f"broker: {version}, broker/templates/mosquitto.conf: {', '.join(window)}")
            user, password = broker.gateway_user, broker.gateway_password

            # 1. queued for an offline persistent session
            sub = connect(broker.port, "probe-gateway", user, password, False)
            sub.sendall(wire.subscribe(1, [(TOPIC, 1)]))
            read_for(sub, 0.5, [])
            sub.sendall(wire.DISCONNECT_PACKET)
            sub.close()
            publish(broker.port, args.queued)
            sub = connect(broker.port, "probe-gateway", user, password, False)
            pids: list[int] = []
            first = read_for(sub, 3.0, pids)
            sub.sendall(b"".join(wire.puback(pid) for pid in pids[:args.ack]))
            second = first + read_for(sub, 3.0, pids)
            print(f"queued for an offline session, then reconnected: {first} of {args.queued} arrived with no "
                  f"PUBACK; after PUBACKs for {args.ack} of them, {second} in all (an enforced window allows "
                  f"at most its size + {args.ack})")
            sub.close()

            # 2. a subscriber connected while they are published
            live = connect(broker.port, "probe-live", user, password, True)
            live.sendall(wire.subscribe(1, [(TOPIC, 1)]))
            read_for(live, 0.5, [])
            publish(broker.port, args.queued)
            pids = []
            first = read_for(live, 2.0, pids)
            live.sendall(b"".join(wire.puback(pid) for pid in pids[:args.ack]))
            second = first + read_for(live, 3.0, pids)
            print(f"connected subscriber: {first} of {args.queued} arrived with no PUBACK; after PUBACKs for "
                  f"{args.ack} of them, {second} in all")
            live.close()
        finally:
            broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

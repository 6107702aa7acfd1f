"""How steadily the button's loop runs while the network misbehaves, measured by the firmware itself
(its "stats" command: loop steps and the longest gap between two, from its own ticks) under the
real MicroPython unix port with the fake HAL, against real sockets on loopback:

    .venv/bin/python bench/firmware_loop.py [--seconds 10]

Conditions, one after the other: connected to a real Mosquitto and idle; a broker that accepts TCP
and never answers; a closed port (refused at once); a DNS server that answers SERVFAIL; one that
never answers. Prints the figures and the command that produced them; docs/performance.md records
them. The loop's nominal period is LOOP_MS (10 ms) plus the time a step takes.
"""

from __future__ import annotations

import argparse
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from siaga.broker.process import MosquittoProcess  # noqa: E402
from tests.support.firmware import FirmwareProcess, device_config, micropython_binary  # noqa: E402
from tests.support.net import FakeDns, StalledServer  # noqa: E402

BROKER_NAME = "broker.siaga.test"


def measure(fw: FirmwareProcess, seconds: float) -> tuple[int, int]:
    """(steps, longest gap in ms) over `seconds` from now."""
    fw.send("stats")
    fw.expect("EVT stats")
    fw.drain(seconds)
    fw.send("stats")
    m = re.fullmatch(r"EVT stats steps=(\d+) loop_max_ms=(\d+)", fw.expect("EVT stats"))
    assert m is not None
    return int(m[1]), int(m[2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each condition")
    args = parser.parse_args()
    print(f"$ {' '.join(shlex.quote(a) for a in sys.argv)}")
    mp = subprocess.run([micropython_binary(), "-c", "import sys; print(sys.version)"], capture_output=True,
                        text=True, check=True).stdout.strip()
    print(f"host: {platform.machine()}, {subprocess.getoutput('nproc')} cores; MicroPython unix port {mp}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="siaga-bench-loop-") as tmp_name:
        tmp = Path(tmp_name)
        with MosquittoProcess(tmp / "broker") as broker, FakeDns() as dns:
            broker.add_device("bench-loop-0001", "pw-loop")
            cfg = device_config("bench-loop-0001", "ab" * 32, broker.port, "pw-loop", dns=dns.server)
            cfg["mqtt"]["host"] = BROKER_NAME
            with FirmwareProcess(tmp / "fw", cfg) as fw:
                fw.expect("EVT connected", timeout_s=20)
                rows.append(("connected, idle", *measure(fw, args.seconds)))
                # The uplink stalls: the broker's port now leads to something that never answers.
                broker.stop()
                with StalledServer(broker.port):
                    rows.append(("broker accepts TCP, never answers", *measure(fw, args.seconds)))
                rows.append(("port closed: connects refused", *measure(fw, args.seconds)))
                dns.mode = "servfail"
                fw.expect("EVT connect_failed DNS:", timeout_s=30)   # the cached address is dropped
                rows.append(("DNS server answers SERVFAIL", *measure(fw, args.seconds)))
                dns.mode = "silent"
                rows.append(("DNS server never answers", *measure(fw, args.seconds)))
    print(f"\nloop of one button, {args.seconds:g} s per condition (LOOP_MS = 10):")
    print(f"  {'condition':40}{'steps':>8}{'mean period':>14}{'longest gap':>14}")
    for name, steps, longest in rows:
        print(f"  {name:40}{steps:>8}{args.seconds * 1000 / max(steps, 1):>11.1f} ms{longest:>11} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

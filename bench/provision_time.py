"""Time from `siaga provision` start to a passed self-test, on the MicroPython unix port attached to a
pseudo-terminal (tests/support/board.py), with a real Mosquitto, gateway and command center.

    .venv/bin/python bench/provision_time.py [--runs 3] [--baud 115200]

For each serial speed (unlimited, and --baud, which throttles the pseudo-terminal bridge to what a
USB-UART bridge carries: baud/10 bytes per second each way), it provisions:
1. a blank board with compiled .mpy files (the normal case);
2. a blank board with source files (--no-mpy), to show what compiling saves on the wire;
3. a board that already has the current firmware (--force, a new identity): only the config goes.
The wall time of the whole `siaga provision` process is measured from its start to its exit after
the self-test passed (the label is drawn after that and is included: it is part of the install).
Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from siaga.broker.process import MosquittoProcess  # noqa: E402
from tests.support.board import WIFI_PASSWORD, WIFI_SSID, FakeBoard, provisioning_config, siaga  # noqa: E402
from tests.support.system import start_system  # noqa: E402

LOCATION = ["--latlon", "-6.175392, 106.827153", "--address", "Jl. Medan Merdeka Barat 12", "--area", "31.71.01.1001"]


def one_run(cfg: Path, board: FakeBoard, *extra: str) -> tuple[float, float, str]:
    """(wall seconds of the process, the tool's own "passed after" figure, the firmware line)."""
    start = time.monotonic()
    done = siaga("provision", "--config", str(cfg), "--port", board.port, *LOCATION, *extra)
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"provisioning failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    passed = re.search(r"self-test passed ([\d.]+) s after the start", done.stdout)
    firmware = next((line.split("] ", 1)[1] for line in done.stdout.splitlines() if "] firmware " in line), "?")
    return wall, float(passed.group(1)) if passed else float("nan"), firmware


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baud", type=int, default=115200)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="siaga-bench-prov-"))
    results: dict[str, list[tuple[float, float, str]]] = {}
    try:
        with MosquittoProcess(tmp / "mosquitto") as broker:
            systems = start_system(tmp, broker)
            system = next(systems)
            try:
                cfg = provisioning_config(tmp / "prov", gateway_url=system.gateway.url,
                                          admin_token=system.gateway.admin_token, broker_port=broker.port,
                                          password_file=broker.password_file, broker_pid=broker.pid)
                n = 0
                for baud in (None, args.baud):
                    speed = f"{baud} baud" if baud else "unlimited"
                    for case, extra, fresh in (("blank board, .mpy", (), True),
                                               ("blank board, source (--no-mpy)", ("--no-mpy",), True),
                                               ("firmware already on the board", ("--force",), False)):
                        key = f"{speed:>12} | {case}"
                        for _ in range(args.runs):
                            n += 1
                            root = tmp / f"board-{n}"
                            if not fresh:  # a board provisioned before: same firmware, old identity
                                with FakeBoard(root, access_points={WIFI_SSID: WIFI_PASSWORD}) as board:
                                    one_run(cfg, board)
                            with FakeBoard(root, access_points={WIFI_SSID: WIFI_PASSWORD}, baud=baud) as board:
                                results.setdefault(key, []).append(one_run(cfg, board, *extra))
            finally:
                for _ in systems:
                    pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"provisioning time, start to passed self-test: {args.runs} runs each; {platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'link':>12} | {'case':<32} | {'process wall s (median, max)':<28} | tool's own s | firmware step")
    for key, runs in results.items():
        walls = [r[0] for r in runs]
        own = [r[1] for r in runs]
        speed, case = key.split(" | ")
        print(f"{speed} | {case:<32} | {statistics.median(walls):6.2f}, {max(walls):6.2f}{'':15} | "
              f"{statistics.median(own):6.2f}       | {runs[-1][2]}")
    print("command: .venv/bin/python bench/provision_time.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()

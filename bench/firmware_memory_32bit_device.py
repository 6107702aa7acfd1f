# The MicroPython half of bench/firmware_memory_32bit.py (run that one): measures, with
# gc.mem_alloc(), the heap the firmware core takes at each stage of a button's life that needs no
# network, on the 32-bit MicroPython WebAssembly port under Node.js. That port has no sockets, so
# the HAL's network_up() is always False: nothing network-related is measured here (no connect,
# no send through MQTT); bench/firmware_memory.py measures those on the 64-bit unix port.
#
# The other script first writes the core, the config and any stand-in module into the port's
# in-memory filesystem and fills sys.argv with ["...", <config.json>, <state dir>]. Then it runs
# this file and calls _resume() from JavaScript until it returns False.
#
# Why the generator: on this port gc.collect() only marks a collection as due. It runs when control
# is back in JavaScript, where no C stack or wasm locals can hold a stale pointer. So each
# "gc.collect(); yield" below hands control back to JavaScript, the collection runs there, and the
# next _resume() continues with only live data on the heap. The work between two yields is done in
# helper functions, whose frames (on the port's Python stack) are gone by then; the generator's own
# frame keeps only live objects and small ints.
#
# Prints one "MEM <stage> <bytes>" line per figure, "INFO <key> <value>" lines about the port,
# "QSTR <stage>" followed by micropython.qstr_info()'s line, and "DONE" at the end.
import gc
import random
import sys

import micropython


class ClockHal:
    """A HAL like the core tests' ClockHal: a clock this script advances (sleep_ms moves it on),
    inputs it sets, and no network, so the Device never opens a socket. Events are counted, not
    kept, so the HAL's own log does not count as the core's heap."""

    ssl_wrap = None

    def __init__(self):
        self.now = 1000
        self.held = {}
        self.alarms = 0
        self.events = 0

    def ticks_ms(self):
        return self.now

    def sleep_ms(self, ms):
        self.now += ms

    def time(self):
        return None

    def pressed(self, name):
        return self.held.get(name, False)

    def tamper(self):
        return False

    def battery_mv(self):
        return 4100

    def rssi(self):
        return None

    def network_up(self):
        return False

    def gps_read(self):
        return None

    def indicate(self, state):
        pass

    def output(self, led, buzzer, status):
        pass

    def event(self, name, detail):
        self.events += 1
        if name == "alarm":
            self.alarms += 1

    def feed_watchdog(self):
        pass


def docstrings(prefix):
    """An estimate of the heap the class docstrings of the loaded modules named prefix* hold. This
    port keeps them when it compiles source (MICROPY_ENABLE_DOC_STRING); the ESP32 and RP2040
    builds do not, nor does mpy-cross's output. Each is a str object: 16 bytes, and its text and a
    terminating zero in 16-byte blocks."""
    seen = []
    total = 0
    for name in list(sys.modules):
        if not name.startswith(prefix):
            continue
        module = sys.modules[name]
        for attr in dir(module):
            obj = getattr(module, attr)
            if not isinstance(obj, type) or any(obj is other for other in seen):
                continue
            seen.append(obj)
            doc = obj.__dict__.get("__doc__")
            if isinstance(doc, str):
                total += 16 + (len(doc.encode()) + 16) // 16 * 16
    return total


def report(stage, value):
    print("MEM", stage, value)


def info(key, value):
    print("INFO", key, value)


def interned(stage):
    """The interned strings' heap (qstr pools and text): qstr_info prints it on the next line. A
    pool is allocated whole, twice the size of the previous one, so the stage that needs a new pool
    is charged for all of it."""
    print("QSTR", stage)
    micropython.qstr_info()


def load_config(path):
    from siagafw.config import load_config

    with open(path) as f:
        return load_config(f.read())


def forget(package, name):
    """As the boards do (boards/common/shell.py): drop a module needed only once."""
    sys.modules.pop(package + "." + name, None)
    parent = sys.modules.get(package)
    if parent is not None and name in dir(parent):
        delattr(parent, name)


def steps(dev, n):
    for _ in range(n):
        dev.step()


def allocated_by(fn, *args):
    """Bytes allocated while fn(*args) runs with the collector off (garbage included)."""
    gc.disable()
    before = gc.mem_alloc()
    fn(*args)
    used = gc.mem_alloc() - before
    gc.enable()
    return used


def raise_then_step(dev, n):
    dev.raise_alarm(test=True)
    steps(dev, n)


def port_info():
    info("version", sys.version)
    info("maxsize", sys.maxsize)
    info("mpy", getattr(sys.implementation, "_mpy", None))
    info("machine", getattr(sys.implementation, "_machine", None))
    info("core_from", sys.modules["siagafw.app"].__file__)


def main():
    # The reconnect backoff's jitter decides when an offline connect attempt falls due: a fixed
    # seed makes the runs repeat exactly.
    random.seed(1)
    gc.collect()
    yield
    floor = gc.mem_alloc()  # the interpreter's own heap use before any firmware code
    interned("floor")

    cfg = load_config(sys.argv[1])
    forget("siagafw", "config")
    gc.collect()
    yield
    report("config_leftover", gc.mem_alloc() - floor)

    from siagafw.app import Device

    gc.collect()
    yield
    after_import = gc.mem_alloc()
    report("import", after_import - floor)
    interned("import")
    report("import_doc", docstrings("siagafw."))
    port_info()

    hal = ClockHal()
    dev = Device(hal, cfg, sys.argv[2])
    gc.collect()
    yield
    after_device = gc.mem_alloc()
    report("device", after_device - after_import)

    # One simulated second of the offline loop (each step sleeps LOOP_MS on the HAL's clock):
    # the connect attempts fail with "no network" and back off.
    steps(dev, 100)
    gc.collect()
    yield
    idle = gc.mem_alloc()
    report("idle", idle - after_device)
    report("idle_resident", idle - floor)

    # The high-water mark of a press, as in firmware_memory_device.py: before each step the heap
    # holds only live data (collected); the step then runs with the collector off, so its own
    # garbage counts too. Over the steps from the press to the alarm stored in the outbox (and a
    # few after the release), the largest "live before + allocated during" bounds the heap a press
    # needs when there is no network to send it on. This is the first alarm since boot, so it also
    # reserves a block of sequence numbers (a flash write, once per 32 numbers): the worst case.
    gc.collect()
    yield
    base = gc.mem_alloc()
    peak = base
    alarms = hal.alarms
    hal.held["sos"] = True
    after = 0
    limit = 1000
    while after < 10:
        if hal.alarms != alarms:
            hal.held["sos"] = False
            after += 1
        limit -= 1
        if limit < 0:
            raise SystemExit("no alarm from a held button")
        gc.collect()
        yield
        gc.disable()
        dev.step()
        peak = max(peak, gc.mem_alloc())
        gc.enable()
    report("raise_peak_over_resident", peak - base)
    report("peak_during_raise", peak - floor)

    # One alarm and the 100 offline loop steps after it, with the collector off: every byte
    # allocated while the alarm is signed and stored in the outbox stays counted (garbage
    # included). This is the button's second alarm since boot: its sequence number comes from the
    # block the first one reserved.
    gc.collect()
    yield
    report("raise_allocated", allocated_by(raise_then_step, dev, 100))
    gc.collect()
    yield
    report("after_raise", gc.mem_alloc() - floor)
    report("pending", len(dev.outbox))

    # Garbage made by the offline loop, the collector off, over 1000 steps (10 s on the HAL's
    # clock: a few connect attempts, each failing with "no network", fall due in that time).
    gc.collect()
    yield
    report("idle_garbage_per_10_s", allocated_by(steps, dev, 1000))

    # The resolver and SNTP module, imported only by a button whose broker is a name and by a
    # board that sets its clock (the measured config names the broker by address).
    gc.collect()
    yield
    before = gc.mem_alloc()
    interned("before_udp")
    import siagafw.udp  # noqa: F401

    gc.collect()
    yield
    report("udp_import", gc.mem_alloc() - before)
    interned("udp_import")
    report("udp_doc", docstrings("siagafw.udp"))
    print("DONE")


_run = main()


def _resume():
    """One stage: runs until the next collection is due; False once the measurement is over."""
    try:
        next(_run)
    except StopIteration:
        return False
    return True

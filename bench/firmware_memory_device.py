# The MicroPython half of bench/firmware_memory.py (run that one): measures the heap the firmware
# core and its MQTT client take, with gc.mem_alloc(), at each stage of a button's life:
#   micropython firmware_memory_device.py <config.json> <state dir>
# MICROPYPATH selects the core as source (.py) or precompiled (.mpy); with a third argument, a ROMFS
# image holding the .mpy files is mounted and the core runs in place from it, as from a board's
# flash. Prints one "MEM <stage> <bytes>" line per figure and "DONE" at the end. With "sms" in the
# config the HAL has a modem (BenchModem, answering in this process) and the SMS path is measured too.
# After "DONE", a remote configuration (protocol.md §10) is applied: checked, written to a copy of
# the config file in the state directory, put to use and confirmed by a heartbeat ("CONFIGURED").
import gc
import os
import sys
import time


class BenchHal:
    """The smallest HAL: no inputs, network always up, events kept in a list."""

    ssl_wrap = None

    def __init__(self):
        self.delivered = False
        self.connected = False
        self.held = False
        self.alarms = 0
        self.modem_ready = False
        self.sms_sent = False
        self.config_applied = False
        self.heartbeats = 0

    def ticks_ms(self):
        return time.ticks_ms()

    def sleep_ms(self, ms):
        time.sleep_ms(ms)

    def time(self):
        return None

    def pressed(self, name):
        return self.held and name == "sos"

    def tamper(self):
        return False

    def battery_mv(self):
        return 4100

    def rssi(self):
        return -55

    def network_up(self):
        return True

    def gps_read(self):
        return None

    def indicate(self, state):
        pass

    def output(self, led, buzzer, status):
        pass

    def event(self, name, detail):
        if name == "connected":
            self.connected = True
        elif name == "modem_ready":
            self.modem_ready = True
        elif name == "sms_sent":
            self.sms_sent = True
        elif name == "delivered":
            self.delivered = True
        elif name == "alarm":
            self.alarms += 1
        elif name == "heartbeat":
            self.heartbeats += 1
        elif name == "config_applied":
            self.config_applied = True
        elif name in ("connect_failed", "link_lost", "config_rejected"):
            print("EVT", name, detail)

    def feed_watchdog(self):
        pass


class BenchModem:
    """The least a text-mode modem answers (TS 27.005 §3): OK to every command, registered, and a
    "> " prompt then "+CMGS:" for AT+CMGS. Answers are ready by the next read, as on a UART."""

    def __init__(self, hal):
        self.hal = hal
        self.rx = None
        self.entry = False

    def read(self):
        data = self.rx
        self.rx = None
        return data

    def write(self, data):
        if self.entry:
            self.entry = False
            self.rx = b"\r\n+CMGS: 1\r\n\r\nOK\r\n"
        elif data.startswith(b"AT+CMGS"):
            self.entry = True
            self.rx = b"\r\n> "
        elif data.startswith(b"AT+CREG?"):
            self.rx = b"\r\n+CREG: 0,1\r\n\r\nOK\r\n"
        elif data.startswith(b"AT+CSQ"):
            self.rx = b"\r\n+CSQ: 20,0\r\n\r\nOK\r\n"
        elif data != b"\x1b":
            self.rx = b"\r\nOK\r\n"


def report(stage, value):
    print("MEM", stage, value)


def steps_until(dev, flag, limit_ms):
    start = time.ticks_ms()
    while not flag():
        dev.step()
        if time.ticks_diff(time.ticks_ms(), start) > limit_ms:
            raise SystemExit("timed out")


def load_config(path):
    from siagafw.config import load_config

    with open(path) as f:
        return load_config(f.read())


def mount_romfs(path):
    """Mount a ROMFS image at /rom and import from it: bytecode and constants stay in the image
    (execute in place), as with a frozen or ROMFS build on a board. The image is read before the
    starting point is taken, so it is not counted, like flash."""
    import vfs

    with open(path, "rb") as f:
        image = f.read()
    vfs.mount(vfs.VfsRom(image), "/rom")
    sys.path.insert(0, "/rom")
    return image


def main():
    image = mount_romfs(sys.argv[3]) if len(sys.argv) > 3 else None
    gc.collect()
    floor = gc.mem_alloc()  # the interpreter's own heap use before any firmware code
    # As the boards do (boards/common/shell.py): check the config, then drop the checker.
    cfg = load_config(sys.argv[1])
    del sys.modules["siagafw.config"]
    import siagafw

    delattr(siagafw, "config")
    gc.collect()
    report("config_leftover", gc.mem_alloc() - floor)
    from siagafw.app import Device

    gc.collect()
    after_import = gc.mem_alloc()
    report("import", after_import - floor)

    hal = BenchHal()
    sms = "sms" in cfg
    if sms:
        modem = BenchModem(hal)
        hal.modem_read = modem.read
        hal.modem_write = modem.write
    dev = Device(hal, cfg, sys.argv[2])
    gc.collect()
    after_device = gc.mem_alloc()
    report("device", after_device - after_import)

    steps_until(dev, lambda: hal.connected and (hal.modem_ready or not sms), 10000)
    for _ in range(50):          # let the first heartbeat and the retained-ack check settle
        dev.step()
    gc.collect()
    connected = gc.mem_alloc()
    report("connected", connected - after_device)
    report("resident", connected - floor)

    # One complete send with the collector off: every byte allocated from the press to the
    # gateway's "received" ack stays counted (garbage included).
    gc.collect()
    before = gc.mem_alloc()
    gc.disable()
    dev.raise_alarm(test=True)
    steps_until(dev, lambda: hal.delivered, 10000)
    report("send_allocated", gc.mem_alloc() - before)
    gc.enable()

    # The high-water mark of a real press: before each step the heap holds only live data
    # (collected); the step then runs with the collector off, so its own garbage counts too. The
    # largest "live before + allocated during" over the steps from the press to the "received"
    # ack bounds the heap a send needs. The alarm is raised, stored and published in one step.
    hal.delivered = False
    hal.alarms = 0
    gc.collect()
    base = gc.mem_alloc()
    peak = base
    hal.held = True
    start = time.ticks_ms()
    while not hal.delivered:
        if hal.alarms:
            hal.held = False
        gc.collect()
        gc.disable()
        dev.step()
        peak = max(peak, gc.mem_alloc())
        gc.enable()
        if time.ticks_diff(time.ticks_ms(), start) > 10000:
            raise SystemExit("timed out")
    report("send_peak_over_resident", peak - base)
    report("peak_during_send", peak - floor)
    gc.collect()
    report("after_send", gc.mem_alloc() - floor)

    # Steady state: how much garbage the idle loop makes per second (GC pressure).
    gc.collect()
    gc.disable()
    idle_start = gc.mem_alloc()
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < 1000:
        dev.step()
    report("idle_garbage_per_s", gc.mem_alloc() - idle_start)
    gc.enable()

    if sms:
        # The SMS path's own send: a test SMS (signed, queued, prompted, written), from a
        # collected heap, each step with the collector off, as the press above.
        gc.collect()
        base = gc.mem_alloc()
        peak = base
        dev.sms_test()
        while not hal.sms_sent:
            gc.collect()
            gc.disable()
            dev.step()
            peak = max(peak, gc.mem_alloc())
            gc.enable()
        report("sms_peak_over_resident", peak - base)
        gc.collect()
        report("sms_after", gc.mem_alloc() - floor)

    # The resolver and SNTP module, imported only by a button whose broker is a name and by a
    # board that sets its clock (the measured config names the broker by address).
    gc.collect()
    before = gc.mem_alloc()
    import siagafw.udp

    gc.collect()
    report("udp_import", gc.mem_alloc() - before)
    print("DONE", len(image) if image else 0)

    # Last (the figures above are comparable with the bench before remote configuration existed):
    # a remote configuration, a new location and heartbeat, as the gateway pushes after a PATCH.
    # The frame is made before the starting point (on a board it arrives in the MQTT client's read
    # buffer); applying it imports remote.py and the config checker, which are dropped again.
    from siagafw import proto

    state = sys.argv[2]
    with open(sys.argv[1]) as f:
        text = f.read()
    dev.config_path = state + "/bench-config.json"
    with open(dev.config_path, "w") as f:
        f.write(text)
    del text
    try:
        os.remove(state + "/cfgver")
    except OSError:
        pass
    dev.cfg_ver = 0
    loc = {"lat_e6": -6200000, "lon_e6": 106816666, "addr": "Jl. M.H. Thamrin 1", "area": "31.71.02.1001"}
    frame = dev.signer.seal(proto.encode({"v": 1, "type": "config", "dev": dev.dev, "ver": 1,
                                          "set": {"loc": loc, "heartbeat_s": 120}}))
    del loc
    beats = hal.heartbeats
    gc.collect()
    before = gc.mem_alloc()
    # Measured with the collector off, except in the smallest-heap search (BENCH_GC_ON set), which
    # asks whether it fits with the collector working as on a board.
    measure = not os.getenv("BENCH_GC_ON")
    if measure:
        gc.disable()
    dev.mqtt.on_message(dev.config_topic, frame, True)
    if measure:
        report("config_allocated", gc.mem_alloc() - before)
    gc.enable()
    if not hal.config_applied or "siagafw.remote" in sys.modules:
        raise SystemExit("the remote configuration was not applied, or remote.py stayed loaded")
    del frame
    gc.collect()
    report("config_left", gc.mem_alloc() - before)
    steps_until(dev, lambda: hal.heartbeats > beats and not dev.mqtt._inflight, 5000)  # sent at once, PUBACKed
    print("CONFIGURED")

    dev.mqtt.disconnect()


main()

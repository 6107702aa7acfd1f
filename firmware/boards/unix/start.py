# The firmware's entry point under the MicroPython unix port, imported by the loader (main.py) from
# the slot in service or from the factory path; part of every unix bundle. Command line:
#   micropython main.py <config.json> <flash dir> [outputs]
# With "outputs" the fake HAL also prints the LED/buzzer levels. mqtt.tls.ca in the config turns on
# TLS exactly as on the boards. The flash directory is both the state directory and the root of the
# update slots.
import sys

from hal import FakeHal
from siagafw.app import FIRMWARE_VERSION, Device
from siagafw.config import load_config


def main():
    with open(sys.argv[1]) as f:
        cfg = load_config(f.read(), "unix")
    tls = cfg["mqtt"].get("tls")
    ssl_wrap = None
    if tls:
        from siagafw.tls import make_ssl_wrap

        ssl_wrap = make_ssl_wrap(tls["ca"], tls.get("server_hostname", cfg["mqtt"]["host"]))
    hal = FakeHal(ssl_wrap, len(sys.argv) > 3 and sys.argv[3] == "outputs")
    sms = cfg.get("sms")
    if sms and sms.get("device"):
        hal.open_modem(sms["device"])  # before Device(): it looks for modem_read
    # A remote configuration rewrites argv[1]; updates go to slots under argv[2].
    dev = Device(hal, cfg, sys.argv[2], sys.argv[1], "unix", root=sys.argv[2])
    hal.event("boot", "dev=%s next_seq=%d fw=%s" % (cfg["dev"], dev.seqs.peek(), FIRMWARE_VERSION))
    while not hal.quit:
        hal.read_commands()
        if hal.test_requested:
            hal.test_requested = False
            dev.raise_alarm(test=True)
        if hal.sms_test_requested:
            hal.sms_test_requested = False
            dev.sms_test()
        if hal.stats_requested:
            hal.stats_requested = False
            hal.event("stats", dev.stats())
        dev.step()
    dev.mqtt.disconnect()


main()

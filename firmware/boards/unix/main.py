# Entry point under the MicroPython unix port (tests, demo):
#   MICROPYPATH=<firmware/lib>:<firmware/boards/unix> micropython main.py <config.json> <state dir>
import sys

from hal import FakeHal
from siagafw.app import Device, load_config


def main():
    with open(sys.argv[1]) as f:
        cfg = load_config(f.read())
    hal = FakeHal()
    dev = Device(hal, cfg, sys.argv[2])
    hal.event("boot", "dev=%s next_seq=%d" % (cfg["dev"], dev.seqs.peek()))
    while not hal.quit:
        dev.step()
        if hal.test_requested:
            hal.test_requested = False
            dev.raise_alarm(test=True)
    dev.mqtt.disconnect()


main()

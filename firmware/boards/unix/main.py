# Loader under the MicroPython unix port (tests, benchmarks): the boot code's choice first, then the
# firmware's entry point, start.py (docs/firmware.md, "Updates over the air"):
#   MICROPYPATH=<firmware/lib>:<firmware/boards/unix> micropython main.py <config.json> <flash dir> [outputs]
# The flash directory stands for the board's root: the boot state and the slots an update writes
# live there. This file is boot code: never part of a bundle, written by provisioning only. An
# exception out of start ends the process (status 1), which the test harness restarts as a board's
# loader resets the board (boards/common/main.py).
import sys

import siagaboot

try:
    d = siagaboot.boot(sys.argv[2])
except Exception as exc:  # noqa: BLE001 - a flash fault must not stop the button: the factory runs
    print("EVT boot_fault %s" % exc)
    siagaboot.started = siagaboot.FACTORY
    d = None
if d:
    sys.path[0:0] = [d, d + "/lib"]
import start  # noqa: E402,F401 - runs the firmware

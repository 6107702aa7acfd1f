# Loader of the ESP32 and Pico W buttons: runs after boot.py at every reset. Boot code, written by
# provisioning only and never part of a bundle: siagaboot (lib/) chooses the firmware that runs,
# the slot an update wrote (/slot/a or /slot/b, while on trial or confirmed) or the one at the root
# (docs/firmware.md, "Updates over the air"); then start.py of that firmware runs.
#
# Whatever ends that firmware with an exception (an import that fails in a broken build, say)
# resets the board: an exception out of main.py would leave it at the REPL, off the air and never
# counted as a failed trial boot. Only Ctrl-C (a technician at the console) gets the REPL.
import sys

import siagaboot

try:
    d = siagaboot.boot("")
except Exception as exc:  # noqa: BLE001 - a flash fault must not stop the button: the root's firmware runs
    print("EVT boot_fault", exc)
    siagaboot.started = siagaboot.FACTORY
    d = None
if d:
    sys.path[0:0] = [d, d + "/lib"]
try:
    import start  # noqa: F401 - runs the firmware
except KeyboardInterrupt:
    raise
except BaseException as exc:  # noqa: BLE001 - SystemExit and MemoryError too: start afresh
    print("EVT start_failed %s: %s" % (type(exc).__name__, exc))
    sys.print_exception(exc)
    import machine

    machine.reset()

# Loader of the ESP32 and Pico W buttons: runs after boot.py at every reset. Boot code, written by
# provisioning only and never part of a bundle: siagaboot (lib/) chooses the firmware that runs,
# the slot an update wrote (/slot/a or /slot/b, while on trial or confirmed) or the one at the root
# (docs/firmware.md, "Updates over the air"); then start.py of that firmware runs.
import sys

import siagaboot

try:
    d = siagaboot.boot("")
except Exception as exc:  # noqa: BLE001 - a flash fault must not stop the button: the root's firmware runs
    print("EVT boot_fault", exc)
    d = None
if d:
    sys.path[0:0] = [d, d + "/lib"]
import start  # noqa: E402,F401 - runs the firmware

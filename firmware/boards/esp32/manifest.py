# Freeze manifest for a custom MicroPython build of the ESP32 button (docs/firmware.md, "Production
# build"): the core and the board shell become frozen bytecode that runs from flash, which keeps
# about 15 KiB of heap free that loading .mpy files into RAM would take (docs/performance.md).
# main.py, boot.py and config.json stay on the board's file system.
# Build: make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=<this file>
include("$(PORT_DIR)/boards/manifest.py")  # noqa: F821 - the manifest language of tools/manifestfile.py
package("siagafw", base_path="../../lib")  # noqa: F821
module("shell.py", base_path="../common")  # noqa: F821
module("hal.py")  # noqa: F821
module("pins.py")  # noqa: F821
module("start.py")  # noqa: F821
# The boot code too; an update's slot still comes first on sys.path (boards/common/main.py).
module("siagaboot.py", base_path="../../lib")  # noqa: F821

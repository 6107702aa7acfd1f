# Siaga firmware on the ESP32: the entry point the loader (boards/common/main.py) imports from the
# slot in service, or from the board's root for the firmware provisioning wrote. Part of every
# bundle (docs/firmware.md, "Updates over the air").
from pins import PINS

from hal import Hal
from shell import run

run(Hal, PINS)

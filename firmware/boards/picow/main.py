# Siaga firmware on the Raspberry Pi Pico W: runs after boot.py. Copy lib/siagafw/,
# boards/common/shell.py and this folder to the board's root (docs/firmware.md, "Flashing").
from pins import PINS

from hal import Hal
from shell import run

run(Hal, PINS)

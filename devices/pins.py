"""Pin map of the Raspberry Pi agent, in BCM GPIO numbers (gpiozero's default naming).

hardware/raspberry-pi.md draws it with the header's physical pin numbers; tests check that the
two agree. A full Raspberry Pi has no ADC: battery state comes from a UPS HAT, not a pin.
"""

from __future__ import annotations

PINS: dict[str, int] = {
    "sos": 17,       # header pin 11
    "medical": 27,   # header pin 13
    "fire": 22,      # header pin 15
    "crime": 23,     # header pin 16
    "disaster": 24,  # header pin 18
    "tamper": 5,     # header pin 29
    "led": 18,       # header pin 12, SOS ring light through a MOSFET
    "buzzer": 25,    # header pin 22, through an NPN transistor
    "gps_tx": 14,    # header pin 8, UART TXD to the GPS module's RX
    "gps_rx": 15,    # header pin 10, UART RXD from the GPS module's TX
}

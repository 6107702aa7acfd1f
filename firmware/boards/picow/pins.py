# Pin map of the Raspberry Pi Pico W button (GP numbers). hardware/picow.md draws it;
# tests/test_hardware_pins.py checks that the two agree.
#
# - Buttons and tamper switch to GND with the internal pull-ups (pressed = 0).
# - The battery divider goes to GP28 (ADC2). GP29/ADC3 measures VSYS/3 on the Pico W, but that
#   pin is shared with the wireless chip's SPI clock, so reading it needs the radio paused
#   (Raspberry Pi "Pico W datasheet", section on the CYW43439 and ADC3); an external divider
#   avoids that.
# - The on-board LED of the Pico W hangs off the wireless chip and is addressed as "LED".
PINS = {
    "sos": 15,
    "medical": 10,
    "fire": 11,
    "crime": 12,
    "disaster": 13,
    "tamper": 14,
    "led": 16,           # SOS ring light through a logic-level MOSFET
    "status_led": "LED",  # on-board LED (CYW43 GPIO 0)
    "buzzer": 17,
    "battery_adc": 28,
    "gps_tx": 0,         # UART0 TX to the GPS module's RX
    "gps_rx": 1,         # UART0 RX from the GPS module's TX
}

# Pin map of the Raspberry Pi Pico W button (GP numbers). hardware/picow.md draws it;
# tests/test_hardware_pins.py checks that the two agree.
#
# - Buttons and tamper switch to GND with the internal pull-ups (pressed = 0).
# - The battery divider goes to GP28 (ADC2). GP29/ADC3 measures VSYS/3 on the Pico W, but that
#   pin is shared with the wireless chip's SPI clock, so reading it needs the radio paused
#   (Raspberry Pi "Pico W datasheet", section on the CYW43439 and ADC3); an external divider
#   avoids that.
# - The on-board LED of the Pico W hangs off the wireless chip and is addressed as "LED".
# - The optional GSM modem (hardware/modem.md) is on UART1 at GP4/GP5, one of the pin pairs the
#   RP2040 datasheet's GPIO function table offers UART1; its reset line on GP6.
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
    "modem_tx": 4,       # UART1 TX to the modem's RXD
    "modem_rx": 5,       # UART1 RX from the modem's TXD
    "modem_reset": 6,    # to the modem's RESET through an NPN transistor (high = reset)
}

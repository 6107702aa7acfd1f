# Pin map of the ESP32 button (ESP32-WROOM-32 DevKit V1, 30 or 38 pins). hardware/esp32.md draws
# it; tests/test_hardware_pins.py checks that the two agree.
#
# Choices, with the reason:
# - Inputs avoid the strapping pins 0, 2, 5, 12 and 15 (Espressif ESP32 datasheet, "Strapping
#   Pins"): a button held during a power cut must not change the boot mode.
# - Buttons and tamper use GPIOs with internal pull-ups and switch to GND (pressed = 0).
#   GPIOs 34-39 are input-only without pull-ups, so only the ADC uses one of them.
# - The battery divider is on ADC1 (GPIO 35): ADC2 cannot be read while Wi-Fi is on (ESP-IDF
#   ADC documentation, "ADC2 ... cannot be used when Wi-Fi is in use").
# - The optional GSM modem (hardware/modem.md) is on UART1, remapped through the GPIO matrix:
#   UART1's default pins 9 and 10 are wired to the module's SPI flash. GPIO 4, 13 and 23 are not
#   strapping pins and are free on the WROOM-32.
PINS = {
    "sos": 27,          # the large illuminated SOS push button (long press)
    "medical": 25,      # optional emergency-type buttons
    "fire": 26,
    "crime": 32,
    "disaster": 33,
    "tamper": 14,       # enclosure switch: closed (0) while the lid is on
    "led": 18,          # the SOS button's ring light, through a logic-level MOSFET
    "status_led": 2,    # the DevKit's on-board blue LED (strapping pin, output only here)
    "buzzer": 19,       # active 5 V buzzer, through an NPN transistor
    "battery_adc": 35,  # battery voltage through a 100k/100k divider
    "gps_tx": 17,       # UART2 to the optional GPS module's RX
    "gps_rx": 16,       # UART2 from the GPS module's TX
    "modem_tx": 4,      # UART1 to the modem's RXD (through the divider for a 2.8 V SIM800L)
    "modem_rx": 13,     # UART1 from the modem's TXD
    "modem_reset": 23,  # to the modem's RESET through an NPN transistor (high = reset)
}

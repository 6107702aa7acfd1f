# HAL of the Raspberry Pi Pico W button: boards/common/shell.py plus the RP2040 and CYW43439 quirks,
# each with its source. Pin numbers are in pins.py (hardware/picow.md draws them).
import rp2
from machine import ADC, Pin

from shell import BoardHal, WifiLink

# The ADC's reference is the 3.3 V rail (Raspberry Pi Pico W datasheet, ADC_AVDD); read_u16 scales
# 12-bit readings to 0-65535. The external 100k/100k divider on GP28 halves the battery voltage.
ADC_REF_MV = 3300
BATTERY_DIVIDER = 2
BATTERY_SAMPLES = 8
# CYW43 power management off. The default power-saving mode delays incoming packets and has been
# reported to drop the link on an idle station (raspberrypi/pico-sdk#2153); 0xa11140 is the value
# Raspberry Pi's "Connecting to the Internet with Raspberry Pi Pico W" gives to disable it.
CYW43_PM_NONE = 0xA11140


class PicoWifi(WifiLink):
    def configure(self, power_save):
        if not power_save:
            self.wlan.config(pm=CYW43_PM_NONE)


class Hal(BoardHal):
    BOARD = "picow"        # the limits siagafw/config.py checks the config against
    # The RP2040 watchdog counts at most 8388 ms (MicroPython machine.WDT docs, "On rp2040 devices
    # the maximum timeout is 8388 ms"; siagafw/config.py refuses a longer watchdog_ms). The loop
    # feeds it every step and never waits on the network, so mqtt.timeout_ms is free of it.
    WATCHDOG_MS = 8000
    GPS_UART_ID = 0        # UART0 on GP0/GP1 (pins.py)
    wifi_class = PicoWifi

    def __init__(self, cfg, pins):
        # The regulatory domain must be set before the radio starts (Raspberry Pi "Connecting to the
        # Internet with Raspberry Pi Pico W", country code): channels 12-13 are legal in Indonesia.
        rp2.country(cfg.get("wifi", {}).get("country", "ID"))
        BoardHal.__init__(self, cfg, pins)
        self._adc = ADC(Pin(pins["battery_adc"]))

    def battery_mv(self):
        total = 0
        for _ in range(BATTERY_SAMPLES):
            total += self._adc.read_u16()
        return total // BATTERY_SAMPLES * ADC_REF_MV * BATTERY_DIVIDER // 65535

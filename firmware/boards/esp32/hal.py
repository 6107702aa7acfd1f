# HAL of the ESP32 button (ESP32-WROOM-32 DevKit, no PSRAM): boards/common/shell.py plus the
# ESP32's own quirks, each with its source. Pin numbers are in pins.py (hardware/esp32.md draws them).
import network
from machine import ADC, Pin

from shell import BoardHal, WifiLink

# ADC1 at 11 dB attenuation measures up to about 2450 mV on the ESP32 (ESP-IDF "ADC Oneshot Mode
# Driver", table of attenuation ranges); the 100k/100k divider halves a full 4.2 V cell to 2.1 V.
BATTERY_DIVIDER = 2
BATTERY_SAMPLES = 8        # the ESP32 ADC is noisy: average a few readings


class Esp32Wifi(WifiLink):
    def configure(self, power_save):
        if not power_save:
            # Modem sleep (the default) lets an incoming ack wait for the next DTIM beacon, often
            # 100-300 ms; PM_NONE keeps the radio listening (MicroPython network.WLAN.config, pm).
            self.wlan.config(pm=network.WLAN.PM_NONE)


class Hal(BoardHal):
    BOARD = "esp32"        # the limits siagafw/config.py checks the config against
    # The loop feeds the watchdog every step and never waits on the network; its longest pause
    # is one computation step of a TLS handshake (docs/firmware.md, "The loop never waits").
    WATCHDOG_MS = 8000
    GPS_UART_ID = 2        # UART0 is the USB console, UART1's default pins are the SPI flash's
    wifi_class = Esp32Wifi
    TIMER_ID = 0  # hardware timer 0; the ESP32 port has no software timers

    def __init__(self, cfg, pins):
        BoardHal.__init__(self, cfg, pins)
        # Battery on ADC1 (GPIO 35): ADC2 cannot be read while Wi-Fi is on (pins.py).
        self._adc = ADC(Pin(pins["battery_adc"]))
        self._adc.atten(ADC.ATTN_11DB)

    def battery_mv(self):
        total = 0
        for _ in range(BATTERY_SAMPLES):
            total += self._adc.read_uv()  # read_uv applies the chip's eFuse calibration
        return total // BATTERY_SAMPLES * BATTERY_DIVIDER // 1000

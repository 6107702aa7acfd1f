#!/usr/bin/env python3
"""Draw the wiring diagrams of the Siaga button from the pin maps. Standard library only.

    python hardware/diagrams/make_diagrams.py           # (re)write hardware/diagrams/*.svg
    python hardware/diagrams/make_diagrams.py --check   # exit 1 if a committed SVG is out of date

The pictures read the PINS dicts of firmware/boards/esp32/pins.py, firmware/boards/picow/pins.py
and devices/pins.py. A pin moved in the firmware moves in the picture the next time this script
runs, and tests/test_hardware_pins.py fails until it has been run and the SVGs committed.

Drawing conventions (also printed on every sheet):
- Coloured lines are the signal wires between the board and a part; black lines are wiring
  inside a part's little circuit.
- Net flags (+5V, GND, BAT+, 3V3) stand for wires to a common rail: every GND flag goes to the
  same ground terminal, every +5V flag to the 5 V rail, BAT+ to the battery's positive terminal.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

PIN_MAP_FILES = {
    "esp32": "firmware/boards/esp32/pins.py",
    "picow": "firmware/boards/picow/pins.py",
    "raspberry-pi": "devices/pins.py",
}


def load_pins(variant: str, root: Path = ROOT) -> dict[str, int | str]:
    """The PINS dict of one variant, imported by file path (firmware/boards/* are not packages)."""
    path = root / PIN_MAP_FILES[variant]
    spec = importlib.util.spec_from_file_location("siaga_hw_pins_" + variant.replace("-", "_"), path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.PINS)


# ---------------------------------------------------------------------------------------------
# Board headers. These are facts about the boards, not choices of this project.

# DOIT ESP32 DevKit V1, 30 pins, seen from the top with the antenna at the top and USB at the
# bottom. 38-pin DevKitC boards order their pins differently: go by the printed labels.
ESP32_LEFT = ["EN", "VP", "VN", "D34", "D35", "D32", "D33", "D25", "D26", "D27", "D14", "D12", "D13", "GND", "VIN"]
ESP32_RIGHT = ["D23", "D22", "TX0", "RX0", "D21", "D19", "D18", "D5", "TX2", "RX2", "D4", "D2", "D15", "GND", "3V3"]
ESP32_SPECIAL = {"VP": 36, "VN": 39, "TX0": 1, "RX0": 3, "TX2": 17, "RX2": 16}


def esp32_label_gpio(label: str) -> int | None:
    """GPIO number behind a DevKit silkscreen label, None for power and control pins."""
    if label in ESP32_SPECIAL:
        return ESP32_SPECIAL[label]
    if label.startswith("D") and label[1:].isdigit():
        return int(label[1:])
    return None


def esp32_silkscreen(gpio: int) -> str:
    for label in ESP32_LEFT + ESP32_RIGHT:
        if esp32_label_gpio(label) == gpio:
            return label
    raise KeyError(f"GPIO{gpio} is not on the 30-pin DevKit header")


# Raspberry Pi Pico W, physical pin number -> name (pins 1-20 down the left side with USB at the
# top, 21-40 up the right side).
PICO_HEADER = {
    1: "GP0", 2: "GP1", 3: "GND", 4: "GP2", 5: "GP3", 6: "GP4", 7: "GP5", 8: "GND", 9: "GP6", 10: "GP7",
    11: "GP8", 12: "GP9", 13: "GND", 14: "GP10", 15: "GP11", 16: "GP12", 17: "GP13", 18: "GND", 19: "GP14",
    20: "GP15", 21: "GP16", 22: "GP17", 23: "GND", 24: "GP18", 25: "GP19", 26: "GP20", 27: "GP21", 28: "GND",
    29: "GP22", 30: "RUN", 31: "GP26", 32: "GP27", 33: "AGND", 34: "GP28", 35: "ADC_VREF", 36: "3V3(OUT)",
    37: "3V3_EN", 38: "GND", 39: "VSYS", 40: "VBUS",
}

# Raspberry Pi 40-pin header (all models since the B+), physical pin number -> name.
PI_HEADER = {
    1: "3V3", 2: "5V", 3: "GPIO2", 4: "5V", 5: "GPIO3", 6: "GND", 7: "GPIO4", 8: "GPIO14", 9: "GND", 10: "GPIO15",
    11: "GPIO17", 12: "GPIO18", 13: "GPIO27", 14: "GND", 15: "GPIO22", 16: "GPIO23", 17: "3V3", 18: "GPIO24",
    19: "GPIO10", 20: "GND", 21: "GPIO9", 22: "GPIO25", 23: "GPIO11", 24: "GPIO8", 25: "GND", 26: "GPIO7",
    27: "GPIO0", 28: "GPIO1", 29: "GPIO5", 30: "GND", 31: "GPIO6", 32: "GPIO12", 33: "GPIO13", 34: "GND",
    35: "GPIO19", 36: "GPIO16", 37: "GPIO26", 38: "GPIO20", 39: "GND", 40: "GPIO21",
}


def header_pin(header: dict[int, str], name: str) -> int:
    """Physical pin number of a named pin (the first one for repeated names such as GND)."""
    for number, pin_name in sorted(header.items()):
        if pin_name == name:
            return number
    raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# What each PINS key is.

TITLES = {
    "sos": "SOS button",
    "medical": "Medical button",
    "fire": "Fire button",
    "crime": "Crime button",
    "disaster": "Disaster button",
    "tamper": "Tamper switch",
    "led": "SOS ring light",
    "status_led": "Status LED",
    "buzzer": "Buzzer",
    "battery_adc": "Battery voltage",
    "gps_tx": "GPS TX",
    "gps_rx": "GPS RX",
}

WIRE = {
    "sos": "#d32f2f", "medical": "#1e88e5", "fire": "#ef6c00", "crime": "#7b1fa2", "disaster": "#00897b",
    "tamper": "#6d4c41", "led": "#b8860b", "status_led": "#3949ab", "buzzer": "#2e7d32",
    "battery_adc": "#c2185b", "gps_tx": "#1565c0", "gps_rx": "#00838f",
}

NET = {"+5V": "#c62828", "GND": "#212121", "BAT+": "#6a1b9a", "3V3": "#e65100"}

INK = "#1b1f24"
GREY = "#8a9099"
SOFT = "#5f6670"
SANS = "DejaVu Sans, Verdana, Arial, Helvetica, sans-serif"
MONO = "DejaVu Sans Mono, Consolas, Menlo, monospace"


def num(v: float) -> str:
    """Coordinates as short, stable text (the SVGs are compared byte for byte by a test)."""
    r = round(v, 1)
    return str(int(r)) if r == int(r) else f"{r:.1f}"


class Svg:
    def __init__(self) -> None:
        self.items: list[str] = []

    def line(self, x1: float, y1: float, x2: float, y2: float, color: str = INK, width: float = 2,
             dash: str | None = None) -> None:
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        self.items.append(f'<line x1="{num(x1)}" y1="{num(y1)}" x2="{num(x2)}" y2="{num(y2)}" '
                          f'stroke="{color}" stroke-width="{num(width)}" stroke-linecap="round"{extra}/>')

    def poly(self, points: list[tuple[float, float]], color: str = INK, width: float = 2, fill: str = "none",
             closed: bool = False, dash: str | None = None) -> None:
        tag = "polygon" if closed else "polyline"
        pts = " ".join(f"{num(x)},{num(y)}" for x, y in points)
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        self.items.append(f'<{tag} points="{pts}" fill="{fill}" stroke="{color}" stroke-width="{num(width)}" '
                          f'stroke-linejoin="round" stroke-linecap="round"{extra}/>')

    def rect(self, x: float, y: float, w: float, h: float, fill: str = "white", stroke: str = INK,
             width: float = 1.5, rx: float = 0, dash: str | None = None) -> None:
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        self.items.append(f'<rect x="{num(x)}" y="{num(y)}" width="{num(w)}" height="{num(h)}" rx="{num(rx)}" '
                          f'fill="{fill}" stroke="{stroke}" stroke-width="{num(width)}"{extra}/>')

    def circle(self, cx: float, cy: float, r: float, fill: str = INK, stroke: str = "none", width: float = 1.5) -> None:
        self.items.append(f'<circle cx="{num(cx)}" cy="{num(cy)}" r="{num(r)}" fill="{fill}" stroke="{stroke}" '
                          f'stroke-width="{num(width)}"/>')

    def text(self, x: float, y: float, s: str, size: float = 13, anchor: str = "start", weight: str = "normal",
             color: str = INK, family: str = SANS, italic: bool = False) -> None:
        style = ' font-style="italic"' if italic else ""
        self.items.append(f'<text x="{num(x)}" y="{num(y)}" font-family="{family}" font-size="{num(size)}" '
                          f'font-weight="{weight}" fill="{color}" text-anchor="{anchor}"{style}>{escape(s)}</text>')

    def render(self, width: float, height: float, title: str) -> str:
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{num(width)}" height="{num(height)}" '
                f'viewBox="0 0 {num(width)} {num(height)}">\n<title>{escape(title)}</title>\n'
                f'<rect x="0" y="0" width="{num(width)}" height="{num(height)}" fill="white"/>\n')
        return head + "\n".join(self.items) + "\n</svg>\n"


def text_width(s: str, size: float) -> float:
    """Rough width of sans-serif text; enough to size flags and boxes."""
    return len(s) * size * 0.6


# ---------------------------------------------------------------------------------------------
# Symbols. A part's circuit is drawn in local coordinates: u runs from the edge that faces the
# board (u = 0) away from it, v runs down from the top of the part's area. X(u) maps u to the
# page for parts left (s = -1) or right (s = +1) of the board, so one drawing serves both sides.


@dataclass
class Frame:
    svg: Svg
    edge: float   # page x of u = 0
    top: float    # page y of v = 0
    s: int        # +1: the part lies right of the board, -1: left of it

    def x(self, u: float) -> float:
        return self.edge + self.s * u

    def y(self, v: float) -> float:
        return self.top + v

    def line(self, u1: float, v1: float, u2: float, v2: float, **kw: object) -> None:
        self.svg.line(self.x(u1), self.y(v1), self.x(u2), self.y(v2), **kw)  # type: ignore[arg-type]

    def path(self, pts: list[tuple[float, float]], **kw: object) -> None:
        self.svg.poly([(self.x(u), self.y(v)) for u, v in pts], **kw)  # type: ignore[arg-type]

    def text(self, u: float, v: float, s: str, anchor: str = "middle", **kw: object) -> None:
        """anchor 'away': text starts at u and runs away from the board; 'toward': the opposite."""
        if anchor == "away":
            anchor = "start" if self.s > 0 else "end"
        elif anchor == "toward":
            anchor = "end" if self.s > 0 else "start"
        self.svg.text(self.x(u), self.y(v), s, anchor=anchor, **kw)  # type: ignore[arg-type]

    def dot(self, u: float, v: float) -> None:
        self.svg.circle(self.x(u), self.y(v), 3.5)


def flag(svg: Svg, x: float, y: float, net: str, direction: str) -> None:
    """A net flag whose wire end is at (x, y); the flag body lies in `direction` from there."""
    color = NET[net]
    w = text_width(net, 11.5) + 12
    h = 18
    if direction in ("up", "down"):
        top = y - h - 4 if direction == "up" else y + 4
        svg.line(x, y, x, top + h if direction == "up" else top, color=INK)
        svg.rect(x - w / 2, top, w, h, fill=color, stroke=color, rx=4)
        svg.text(x, top + 13, net, size=11.5, anchor="middle", weight="bold", color="white")
    else:
        left = x + 4 if direction == "right" else x - 4 - w
        svg.line(x, y, left if direction == "right" else left + w, y, color=INK)
        svg.rect(left, y - h / 2, w, h, fill=color, stroke=color, rx=4)
        svg.text(left + w / 2, y + 4.5, net, size=11.5, anchor="middle", weight="bold", color="white")


def fflag(f: Frame, u: float, v: float, net: str, direction: str) -> None:
    """flag() in a part's frame; 'away' and 'toward' are horizontal directions relative to the board."""
    if direction == "away":
        direction = "right" if f.s > 0 else "left"
    elif direction == "toward":
        direction = "left" if f.s > 0 else "right"
    flag(f.svg, f.x(u), f.y(v), net, direction)


def resistor_h(f: Frame, u1: float, u2: float, v: float, label: str) -> None:
    x1, x2 = sorted((f.x(u1), f.x(u2)))
    f.svg.rect(x1, f.y(v) - 6, x2 - x1, 12, fill="white", stroke=INK, width=2)
    f.text((u1 + u2) / 2, v - 11, label, size=11.5, color=SOFT)


def resistor_v(f: Frame, u: float, v1: float, v2: float, label: str) -> None:
    f.svg.rect(f.x(u) - 6, f.y(v1), 12, v2 - v1, fill="white", stroke=INK, width=2)
    f.text(u + 12, (v1 + v2) / 2 + 4, label, anchor="away", size=11.5, color=SOFT)


def capacitor_v(f: Frame, u: float, v: float, label: str) -> None:
    """Plates at v and v + 7, leads to be drawn by the caller."""
    f.line(u - 11, v, u + 11, v, width=2.5)
    f.line(u - 11, v + 7, u + 11, v + 7, width=2.5)
    f.text(u + 16, v + 8, label, anchor="away", size=11.5, color=SOFT)


def pushbutton(f: Frame, u1: float, u2: float, v: float) -> None:
    """A normally-open push button between the contacts at u1 and u2."""
    for u in (u1, u2):
        f.svg.circle(f.x(u), f.y(v), 3.5, fill="white", stroke=INK, width=2)
    f.line(u1 - 2, v - 11, u2 + 2, v - 11, width=2.5)
    mid = (u1 + u2) / 2
    f.line(mid, v - 11, mid, v - 22, width=2)
    f.line(mid - 7, v - 22, mid + 7, v - 22, width=2)


def led_v(f: Frame, u: float, v1: float, v2: float) -> None:
    """LED pointing down (anode at v1, cathode at v2)."""
    mid = (v1 + v2) / 2
    f.path([(u - 9, mid - 7), (u + 9, mid - 7), (u, mid + 7)], closed=True, fill="white", width=2)
    f.line(u - 9, mid + 7, u + 9, mid + 7, width=2.5)
    f.line(u, v1, u, mid - 7)
    f.line(u, mid + 7, u, v2)
    for dv in (-4, 4):
        f.line(u + 12, mid + dv, u + 20, mid + dv - 6, width=1.5)
        f.path([(u + 20, mid + dv - 6), (u + 15, mid + dv - 5), (u + 19, mid + dv - 1)], width=1.5)


def diode_v_up(f: Frame, u: float, v1: float, v2: float) -> None:
    """Diode with its cathode at the top (v1): blocks current from v1 down to v2."""
    mid = (v1 + v2) / 2
    f.path([(u - 8, mid + 6), (u + 8, mid + 6), (u, mid - 6)], closed=True, fill="white", width=2)
    f.line(u - 8, mid - 6, u + 8, mid - 6, width=2.5)
    f.line(u, v1, u, mid - 6)
    f.line(u, mid + 6, u, v2)


def nmos(f: Frame, ug: float, vg: float) -> tuple[float, float, float]:
    """N-channel MOSFET with its gate lead ending at (ug, vg). Returns (u, v_drain, v_source) of the leads."""
    plate = ug
    chan = ug + 8
    lead = ug + 26
    f.line(plate, vg - 14, plate, vg + 14, width=2.5)
    for v1, v2 in ((vg - 16, vg - 8), (vg - 4, vg + 4), (vg + 8, vg + 16)):
        f.line(chan, v1, chan, v2, width=2.5)
    f.line(chan, vg - 12, lead, vg - 12)
    f.line(chan, vg + 12, lead, vg + 12)
    f.line(chan, vg, lead, vg)
    f.line(lead, vg, lead, vg + 12)
    f.path([(chan + 1, vg), (chan + 8, vg - 4), (chan + 8, vg + 4)], closed=True, fill=INK, width=1)
    f.line(lead, vg - 12, lead, vg - 24)
    f.line(lead, vg + 12, lead, vg + 24)
    f.text(lead + 8, vg - 16, "D", anchor="away", size=10.5, color=SOFT)
    f.text(lead + 8, vg + 24, "S", anchor="away", size=10.5, color=SOFT)
    f.text(plate - 6, vg - 18, "G", anchor="toward", size=10.5, color=SOFT)
    return lead, vg - 24, vg + 24


def pmos(f: Frame, ug: float, vg: float) -> tuple[float, float, float]:
    """P-channel MOSFET with its gate lead ending at (ug, vg), source on top.
    Returns (u, v_source, v_drain) of the leads."""
    plate = ug
    chan = ug + 8
    lead = ug + 26
    f.line(plate, vg - 14, plate, vg + 14, width=2.5)
    for v1, v2 in ((vg - 16, vg - 8), (vg - 4, vg + 4), (vg + 8, vg + 16)):
        f.line(chan, v1, chan, v2, width=2.5)
    f.line(chan, vg - 12, lead, vg - 12)
    f.line(chan, vg + 12, lead, vg + 12)
    f.line(chan, vg, lead, vg)
    f.line(lead, vg, lead, vg - 12)
    f.path([(chan + 9, vg), (chan + 2, vg - 4), (chan + 2, vg + 4)], closed=True, fill=INK, width=1)
    f.line(lead, vg - 12, lead, vg - 24)
    f.line(lead, vg + 12, lead, vg + 24)
    f.text(lead + 8, vg - 16, "S", anchor="away", size=10.5, color=SOFT)
    f.text(lead + 8, vg + 24, "D", anchor="away", size=10.5, color=SOFT)
    f.text(plate - 6, vg - 18, "G", anchor="toward", size=10.5, color=SOFT)
    return lead, vg - 24, vg + 24


def npn(f: Frame, ub: float, vb: float) -> tuple[float, float, float]:
    """NPN transistor with its base lead ending at (ub, vb). Returns (u, v_collector, v_emitter)."""
    bar = ub
    lead = ub + 22
    f.line(bar, vb - 12, bar, vb + 12, width=3)
    f.line(bar, vb - 5, lead, vb - 16)
    f.line(bar, vb + 5, lead, vb + 16)
    f.path([(lead, vb + 16), (lead - 9, vb + 15), (lead - 5, vb + 8)], closed=True, fill=INK, width=1)
    f.line(lead, vb - 16, lead, vb - 24)
    f.line(lead, vb + 16, lead, vb + 24)
    f.text(lead + 8, vb - 14, "C", anchor="away", size=10.5, color=SOFT)
    f.text(lead + 8, vb + 24, "E", anchor="away", size=10.5, color=SOFT)
    f.text(bar - 6, vb - 16, "B", anchor="toward", size=10.5, color=SOFT)
    return lead, vb - 24, vb + 24


def diode_h(svg: Svg, x1: float, x2: float, y: float, label: str) -> None:
    """Diode from x1 (anode) to x2 (cathode), drawn horizontally."""
    mid = (x1 + x2) / 2
    d = 1 if x2 > x1 else -1
    svg.poly([(mid - 7 * d, y - 8), (mid - 7 * d, y + 8), (mid + 7 * d, y)], closed=True, fill="white", width=2)
    svg.line(mid + 7 * d, y - 8, mid + 7 * d, y + 8, width=2.5)
    svg.line(x1, y, mid - 7 * d, y)
    svg.line(mid + 7 * d, y, x2, y)
    svg.text(mid, y - 12, label, size=10.5, anchor="middle", color=SOFT)


# ---------------------------------------------------------------------------------------------
# Parts. Each has a size, one port per board wire (v offsets on the u = 0 edge) and a drawing.

PART_W = 330


@dataclass
class Part:
    keys: list[str]                 # PINS keys wired to this part, in port order
    height: float
    ports: dict[str, float]         # key -> v of its port on the u = 0 edge
    draw: Callable[[Frame], None]
    anchor_y: float = 0             # page y the part would like its ports centred on
    top: float = 0
    side: int = 1


def title(f: Frame, main: str, sub: str) -> None:
    f.text(PART_W / 2, 15, main, size=13.5, weight="bold")
    f.text(PART_W / 2, 31, sub, size=11, color=SOFT)


SWITCH_TEXT = {
    "sos": ("SOS button (hold to send)", "large illuminated push button, NO contact"),
    "medical": ("Medical button (optional)", "30 mm push button, NO contact"),
    "fire": ("Fire button (optional)", "30 mm push button, NO contact"),
    "crime": ("Crime button (optional)", "30 mm push button, NO contact"),
    "disaster": ("Disaster button (optional)", "30 mm push button, NO contact"),
    "tamper": ("Tamper switch (lid)", "lever micro-switch, COM + NO: closed while the lid is on"),
}


def switch_part(key: str) -> Part:
    main, sub = SWITCH_TEXT[key]

    def draw(f: Frame) -> None:
        title(f, main, sub)
        v = 64
        f.line(0, v, 44, v, color=WIRE[key], width=2.5)
        resistor_h(f, 44, 92, v, "1 kΩ")
        f.line(92, v, 176, v)
        pushbutton(f, 176, 232, v)
        f.line(232, v, 262, v)
        fflag(f, 262, v, "GND", "away")

    return Part([key], 84, {key: 64}, draw)


def led_part() -> Part:
    def draw(f: Frame) -> None:
        title(f, "SOS ring light (LED inside the button)", "switched on its low side by a logic-level N-MOSFET")
        vg = 130
        f.line(0, vg, 40, vg, color=WIRE["led"], width=2.5)
        resistor_h(f, 40, 84, vg, "100 Ω")
        f.line(84, vg, 196, vg)
        f.dot(130, vg)
        f.line(130, vg, 130, 146)
        resistor_v(f, 130, 146, 174, "100 kΩ")
        f.line(130, 174, 130, 184)
        fflag(f, 130, 184, "GND", "down")
        u, vd, vs = nmos(f, 196, vg)
        f.text(u + 22, vg + 4, "Q1 AO3400A", anchor="away", size=11, weight="bold")
        f.line(u, vs, u, 184)
        fflag(f, u, 184, "GND", "down")
        led_v(f, u, 68, 96)
        f.line(u, 96, u, vd)
        f.line(u, 68, u, 58)
        fflag(f, u, 58, "+5V", "up")
        f.text(u + 34, 86, "LED ring", anchor="away", size=11.5, weight="bold")

    return Part(["led"], 212, {"led": 130}, draw)


def buzzer_part() -> Part:
    def draw(f: Frame) -> None:
        title(f, "Buzzer (active, 5 V)", "switched by an NPN transistor; diode across the buzzer")
        vb = 136
        f.line(0, vb, 40, vb, color=WIRE["buzzer"], width=2.5)
        resistor_h(f, 40, 84, vb, "1 kΩ")
        f.line(84, vb, 200, vb)
        f.dot(128, vb)
        f.line(128, vb, 128, 150)
        resistor_v(f, 128, 150, 176, "10 kΩ")
        f.line(128, 176, 128, 186)
        fflag(f, 128, 186, "GND", "down")
        u, vc, ve = npn(f, 200, vb)
        f.text(u + 22, vb + 4, "Q2 S8050", anchor="away", size=11, weight="bold")
        f.line(u, ve, u, 186)
        fflag(f, u, 186, "GND", "down")
        # buzzer between +5V (v 64) and the collector (vc)
        f.svg.rect(min(f.x(u - 13), f.x(u + 13)), f.y(74), 26, 24, fill="white", stroke=INK, width=2)
        f.text(u, 90, "BZ", size=10.5, weight="bold")
        f.text(u - 17, 72, "+", size=12, weight="bold")
        f.line(u, 64, u, 74)
        f.line(u, 98, u, vc)
        f.dot(u, 64)
        f.dot(u, 106)
        f.line(u, 64, u + 48, 64)
        diode_v_up(f, u + 48, 64, 106)
        f.line(u + 48, 106, u, 106)
        f.text(u + 60, 90, "1N4148", anchor="away", size=11, color=SOFT)
        f.line(u, 64, u, 56)
        fflag(f, u, 56, "+5V", "up")

    return Part(["buzzer"], 214, {"buzzer": 136}, draw)


def divider_part() -> Part:
    def draw(f: Frame) -> None:
        title(f, "Battery voltage divider", "halves the cell voltage: 4.20 V reads as 2.10 V")
        v = 100
        f.line(0, v, 170, v, color=WIRE["battery_adc"], width=2.5)
        f.dot(170, v)
        f.line(170, 58, 170, 66)
        fflag(f, 170, 58, "BAT+", "up")
        resistor_v(f, 170, 66, 92, "100 kΩ")
        f.line(170, 92, 170, v)
        f.line(170, v, 170, 112)
        resistor_v(f, 170, 112, 138, "100 kΩ")
        f.line(170, 138, 170, 150)
        fflag(f, 170, 150, "GND", "down")
        f.line(170, v, 250, v)
        f.line(250, v, 250, 117)
        capacitor_v(f, 250, 117, "100 nF")
        f.line(250, 124, 250, 150)
        fflag(f, 250, 150, "GND", "down")

    return Part(["battery_adc"], 178, {"battery_adc": 100}, draw)


def gps_part(tx_first: bool) -> Part:
    """The GPS module. Ports are ordered like the board's pins so that no wire crosses another;
    the crossing TX -> RX happens inside the module's pin order, which the labels spell out."""
    order = ["gps_tx", "gps_rx"] if tx_first else ["gps_rx", "gps_tx"]
    ports = {order[0]: 66, order[1]: 104}
    module_pin = {"gps_tx": "RX", "gps_rx": "TX"}

    def draw(f: Frame) -> None:
        title(f, "GPS module (optional)", "u-blox NEO-6M board (GY-NEO6MV2), UART 9600 baud")
        left, right = 128, 262
        x1, x2 = sorted((f.x(left), f.x(right)))
        f.svg.rect(x1, f.y(46), x2 - x1, 82, fill="#e8f0fe", stroke=INK, width=2, rx=6)
        for key in order:
            v = ports[key]
            f.line(0, v, left, v, color=WIRE[key], width=2.5)
            f.text(left + 8, v + 4, module_pin[key], anchor="away", size=12, weight="bold")
            arrow = "board TX → GPS RX" if key == "gps_tx" else "board RX ← GPS TX"
            f.text(62, v - 6, arrow, size=10.5, color=SOFT)
        f.text(right - 8, 66 + 4, "VCC", anchor="toward", size=12, weight="bold")
        f.text(right - 8, 104 + 4, "GND", anchor="toward", size=12, weight="bold")
        f.line(right, 66, right + 12, 66)
        fflag(f, right + 12, 66, "+5V", "away")
        f.line(right, 104, right + 12, 104)
        fflag(f, right + 12, 104, "GND", "away")
        f.text((left + right) / 2, 124, "antenna up", size=10.5, color=SOFT)

    return Part(order, 140, ports, draw)


# ---------------------------------------------------------------------------------------------
# Boards: where each header pin sits on the page.


@dataclass
class PinSpot:
    x: float            # page x of the pad centre
    y: float
    side: int           # -1: wires leave to the left, +1: to the right
    name: str           # printed name (silkscreen label, or header pin name)
    number: int | None  # physical pin number where the board has one
    stub_x: float = 0   # page x where a wire leaving this pad starts (outside the board/label)
    from_edge: bool = False  # draw the wire from stub_x (names sit between pad and edge) and ring the pad


@dataclass
class Sheet:
    variant: str
    title: str
    subtitle: str
    pins: dict[str, int | str]
    spots: list[PinSpot] = field(default_factory=list)
    key_spot: dict[str, PinSpot] = field(default_factory=dict)
    power: list[tuple[PinSpot, str, str]] = field(default_factory=list)  # (spot, net, how)
    notes: list[str] = field(default_factory=list)


BOARD_TOP = 150
CX = 760  # centre of the page


def esp32_sheet(pins: dict[str, int | str]) -> tuple[Sheet, Svg]:
    svg = Svg()
    sheet = Sheet("esp32", "ESP32 button: DevKit V1 (ESP32-WROOM-32, 30 pins)",
                  "firmware/boards/esp32/pins.py · GPIO numbers · board seen from the top, antenna up, USB down",
                  pins)
    pitch, w = 34, 250
    left, top = CX - w / 2, BOARD_TOP
    height = pitch * 15 + 70
    svg.rect(left, top, w, height, fill="#1f2a36", stroke="#0d141b", width=2, rx=10)
    svg.rect(left + 55, top + 8, w - 110, 34, fill="#c9ced6", stroke="#8d96a3", rx=3)
    svg.text(CX, top + 30, "antenna", size=11, anchor="middle", color="#3b4350")
    svg.rect(left + 62, top + 110, w - 124, 150, fill="#b9bec6", stroke="#7d8793", rx=4)
    svg.text(CX, top + 180, "ESP32-WROOM-32", size=11.5, anchor="middle", weight="bold", color="#2b323c")
    svg.text(CX, top + 198, "DOIT DevKit V1", size=11, anchor="middle", color="#2b323c")
    svg.rect(CX - 28, top + height - 26, 56, 30, fill="#c9ced6", stroke="#8d96a3", rx=3)
    svg.text(CX, top + height - 6, "USB", size=11, anchor="middle", color="#3b4350")
    for side, labels in ((-1, ESP32_LEFT), (1, ESP32_RIGHT)):
        for i, label in enumerate(labels):
            y = top + 62 + i * pitch
            x = left + 14 if side < 0 else left + w - 14
            sheet.spots.append(PinSpot(x, y, side, label, None, x + side * 14))
            svg.circle(x, y, 7, fill="#d4a72c", stroke="#8a6d1a")
            svg.circle(x, y, 3, fill="#1f2a36")
            svg.text(x - side * 14, y + 4.5, label, size=12, anchor="start" if side < 0 else "end",
                     color="white", family=MONO)
    for key, gpio in pins.items():
        if key == "status_led":
            continue
        sheet.key_spot[key] = next(sp for sp in sheet.spots if esp32_label_gpio(sp.name) == gpio)
    status = pins["status_led"]
    if isinstance(status, int):
        spot = next(sp for sp in sheet.spots if esp32_label_gpio(sp.name) == status)
        sheet.key_spot["status_led"] = spot
    sheet.power = [
        (next(sp for sp in sheet.spots if sp.name == "VIN"), "+5V", "direct"),
        (next(sp for sp in sheet.spots if sp.name == "GND" and sp.side < 0), "GND", "direct"),
        (next(sp for sp in sheet.spots if sp.name == "GND" and sp.side > 0), "GND", "direct"),
    ]
    sheet.notes = [
        "Status LED: the DevKit's own blue LED on GPIO" + str(pins["status_led"]) + " — nothing to wire.",
        "VIN takes the 5 V rail; the DevKit's regulator makes 3.3 V. Unplug the 5 V rail before connecting USB.",
        "Never wire anything to D12, D15, D5, D2 or EN: strapping and reset pins change how the board boots.",
    ]
    return sheet, svg


def picow_sheet(pins: dict[str, int | str]) -> tuple[Sheet, Svg]:
    svg = Svg()
    sheet = Sheet("picow", "Pico W button: Raspberry Pi Pico W",
                  "firmware/boards/picow/pins.py · GP numbers · board seen from the top, USB up", pins)
    pitch, w = 28, 262
    left, top = CX - w / 2, BOARD_TOP
    height = pitch * 20 + 80
    svg.rect(left, top, w, height, fill="#1e6b3a", stroke="#0f3d20", width=2, rx=8)
    svg.rect(CX - 30, top - 12, 60, 34, fill="#c9ced6", stroke="#8d96a3", rx=3)
    svg.text(CX, top + 12, "USB", size=11, anchor="middle", color="#3b4350")
    svg.rect(CX - 48, top + 200, 96, 96, fill="#2a2f36", stroke="#111", rx=3)
    svg.text(CX, top + 246, "RP2040", size=12.5, anchor="middle", weight="bold", color="white")
    svg.rect(CX - 50, top + height - 130, 100, 70, fill="#b9bec6", stroke="#7d8793", rx=3)
    svg.text(CX, top + height - 92, "CYW43439", size=11.5, anchor="middle", weight="bold", color="#2b323c")
    svg.text(CX, top + height - 76, "Wi-Fi", size=11, anchor="middle", color="#2b323c")
    svg.rect(CX - 40, top + height - 40, 80, 28, fill="#d9dde3", stroke="#8d96a3", rx=3)
    svg.text(CX, top + height - 21, "antenna", size=10.5, anchor="middle", color="#3b4350")
    # on-board LED next to the USB connector
    svg.circle(CX + 52, top + 36, 6, fill="#7CFC00", stroke="#2e7d32")
    svg.text(CX + 62, top + 40, "LED", size=10.5, anchor="start", color="white", family=MONO)
    for number in range(1, 41):
        side = -1 if number <= 20 else 1
        row = number - 1 if number <= 20 else 40 - number
        y = top + 52 + row * pitch
        x = left + 12 if side < 0 else left + w - 12
        name = PICO_HEADER[number]
        sheet.spots.append(PinSpot(x, y, side, name, number, x + side * 12))
        square = number in (3, 8, 13, 18, 23, 28, 33, 38)
        if square:
            svg.rect(x - 6, y - 6, 12, 12, fill="#d4a72c", stroke="#8a6d1a", rx=1)
        else:
            svg.circle(x, y, 6.5, fill="#d4a72c", stroke="#8a6d1a")
        svg.circle(x, y, 2.5, fill="#1e6b3a")
        inner = x - side * 13
        svg.text(inner, y + 4, name, size=11, anchor="start" if side < 0 else "end", color="white", family=MONO)
        svg.text(inner + (-side) * (text_width(name, 11) + 6), y + 4, str(number), size=9.5,
                 anchor="start" if side < 0 else "end", color="#a8d5b5", family=MONO)
    for key, gp in pins.items():
        if isinstance(gp, int):
            sheet.key_spot[key] = next(sp for sp in sheet.spots if sp.name == f"GP{gp}")
    sheet.power = [
        (next(sp for sp in sheet.spots if sp.name == "VSYS"), "+5V", "diode"),
        (next(sp for sp in sheet.spots if sp.number == 38), "GND", "direct"),
        (next(sp for sp in sheet.spots if sp.number == 18), "GND", "direct"),
    ]
    sheet.notes = [
        f"Status LED: the Pico W's own LED (named \"{pins['status_led']}\", on the wireless chip) — nothing to wire.",
        "VSYS takes the 5 V rail through a Schottky diode (SS14 or 1N5817), so USB and the rail can both be on.",
        "The divider's ground may go to pin 33 (AGND) for a quieter reading; it is the same ground.",
    ]
    return sheet, svg


def pi_sheet(pins: dict[str, int | str]) -> tuple[Sheet, Svg]:
    svg = Svg()
    sheet = Sheet("raspberry-pi", "Raspberry Pi button: 40-pin header (Zero 2 W, 3, 4, 5)",
                  "devices/pins.py · BCM GPIO numbers and header pin numbers · header seen from above, "
                  "pin 1 at the top", pins)
    pitch = 30
    left, w, top = CX - 42, 84, BOARD_TOP
    height = pitch * 20 + 30
    svg.rect(left - 70, top - 30, w + 140, height + 60, fill="#1e6b3a", stroke="#0f3d20", width=2, rx=10)
    svg.text(CX, top - 10, "Raspberry Pi (GPIO header)", size=11.5, anchor="middle", color="white", weight="bold")
    svg.rect(left, top, w, height, fill="#111418", stroke="#000", rx=3)
    for number in range(1, 41):
        side = -1 if number % 2 else 1
        row = (number - 1) // 2
        y = top + 30 + row * pitch
        x = left + 22 if side < 0 else left + w - 22
        name = PI_HEADER[number]
        sheet.spots.append(PinSpot(x, y, side, name, number, left - 70 - 4 if side < 0 else left + w + 70 + 4,
                                   from_edge=True))
        if number == 1:
            svg.rect(x - 10, y - 10, 20, 20, fill="#d4a72c", stroke="#8a6d1a", rx=2)
        else:
            svg.circle(x, y, 10, fill="#d4a72c", stroke="#8a6d1a")
        svg.text(x, y + 4, str(number), size=10, anchor="middle", weight="bold", color="#111418")
        # name on the board, outside the header
        nx = left - 8 if side < 0 else left + w + 8
        used = any(isinstance(v, int) and name == f"GPIO{v}" for v in pins.values())
        svg.text(nx, y + 4, name, size=11, anchor="end" if side < 0 else "start",
                 color="white" if used or name in ("5V", "GND", "3V3") else "#9fc7ad", family=MONO,
                 weight="bold" if used else "normal")
    for key, bcm in pins.items():
        if isinstance(bcm, int):
            sheet.key_spot[key] = next(sp for sp in sheet.spots if sp.name == f"GPIO{bcm}")
    sheet.power = [
        (next(sp for sp in sheet.spots if sp.number == 2), "+5V", "direct"),
        (next(sp for sp in sheet.spots if sp.number == 6), "GND", "direct"),
        (next(sp for sp in sheet.spots if sp.number == 9), "GND", "direct"),
    ]
    sheet.notes = [
        "Power: the Pi runs from a 5 V UPS HAT or UPS module; the ring light, buzzer and GPS take 5 V from pin 2 or 4.",
        "No battery pin: a Pi has no ADC. The UPS HAT reports its battery over I²C (pins 3 and 5), which stay free.",
        "Status LED: the Pi's own ACT LED shows the system; the agent has no status_led pin.",
    ]
    return sheet, svg


def part_for(key: str, sheet: Sheet) -> Part | None:
    if key in SWITCH_TEXT:
        return switch_part(key)
    if key == "led":
        return led_part()
    if key == "buzzer":
        return buzzer_part()
    if key == "battery_adc":
        return divider_part()
    if key == "gps_tx":
        tx, rx = sheet.key_spot["gps_tx"], sheet.key_spot["gps_rx"]
        return gps_part(tx_first=tx.y <= rx.y)
    return None


TAG_W = 150    # room outside the board for the pin tag (function name over the wire)
LANE_GAP = 13  # distance between the vertical runs of neighbouring wires
GAP = 16       # vertical gap between parts


def place_parts(parts: list[Part], floor: float) -> None:
    """Stack the parts of one side top to bottom in pin order, each as near its pins as it can be."""
    parts.sort(key=lambda p: p.anchor_y)
    for _ in range(2):
        cursor = floor
        for p in parts:
            centre = sum(p.ports.values()) / len(p.ports)
            p.top = max(p.anchor_y - centre, cursor)
            cursor = p.top + p.height + GAP
        # pull the stack up by half its mean displacement so it straddles the pins
        shift = sum(p.top + sum(p.ports.values()) / len(p.ports) - p.anchor_y for p in parts) / max(len(parts), 1)
        floor = max(BOARD_TOP - 40, min(p.top for p in parts) - shift / 2) if parts else floor


def draw_board_sheet(sheet: Sheet, svg: Svg) -> tuple[float, float, float]:
    """Draw parts, wires, tags and power flags around a board already drawn on svg.
    Returns (left, right, bottom): the page extent of the drawing."""
    board_edge = {
        -1: min(sp.stub_x for sp in sheet.spots),
        1: max(sp.stub_x for sp in sheet.spots),
    }
    parts: dict[int, list[Part]] = {-1: [], 1: []}
    seen: set[str] = set()
    for key in sheet.pins:
        if key in seen or key not in sheet.key_spot or key == "status_led":
            continue
        part = part_for(key, sheet)
        if part is None:
            continue
        seen.update(part.keys)
        spot = sheet.key_spot[part.keys[0]]
        part.side = spot.side
        part.anchor_y = sum(sheet.key_spot[k].y for k in part.keys) / len(part.keys)
        parts[spot.side].append(part)
    tags: dict[int, list[str]] = {-1: [], 1: []}
    for s in (-1, 1):
        tags[s] = [pin_tag(sheet, k) for p in parts[s] for k in p.keys]
    status_spot = sheet.key_spot.get("status_led")
    if status_spot is not None:
        tags[status_spot.side].append(pin_tag(sheet, "status_led") + " (on board)")
    tag_w = {s: max([TAG_W] + [text_width(t, 11.5) + 20 for t in tags[s]]) for s in (-1, 1)}
    lanes_start = {s: board_edge[s] + s * tag_w[s] for s in (-1, 1)}
    n_wires = {s: sum(len(p.keys) for p in parts[s]) for s in (-1, 1)}
    part_edge = {s: lanes_start[s] + s * (n_wires[s] * LANE_GAP + 24) for s in (-1, 1)}
    bottom = 0.0
    for s in (-1, 1):
        place_parts(parts[s], BOARD_TOP - 40)
        wires = []
        for p in parts[s]:
            f = Frame(svg, part_edge[s], p.top, s)
            p.draw(f)
            for key in p.keys:
                spot = sheet.key_spot[key]
                wires.append((spot.y, p.top + p.ports[key], key, spot))
            bottom = max(bottom, p.top + p.height)
        # lanes: wires going down take lanes nearer the board the lower they start; wires going
        # up the reverse. Parts keep the pins' order, so no two wires cross.
        wires.sort()
        ups = [w for w in wires if w[1] < w[0] - 0.5]
        downs = [w for w in wires if w[1] >= w[0] - 0.5]
        lane_of: dict[str, int] = {}
        for i, w in enumerate(ups):
            lane_of[w[2]] = i
        for i, w in enumerate(reversed(downs)):
            lane_of[w[2]] = i
        for y_pin, y_part, key, spot in wires:
            lx = lanes_start[s] + s * (12 + lane_of[key] * LANE_GAP)
            color = WIRE[key]
            start = spot.stub_x if spot.from_edge else spot.x
            svg.poly([(start, y_pin), (lx, y_pin), (lx, y_part), (part_edge[s], y_part)], color=color, width=2.5)
            pad_mark(svg, spot, color)
            tag = pin_tag(sheet, key)
            tx = spot.stub_x + s * 6
            svg.text(tx, y_pin - 6, tag, size=11.5, anchor="start" if s > 0 else "end", weight="bold", color=color)
    # power pins
    for spot, net, how in sheet.power:
        s = spot.side
        end = spot.stub_x + s * 40
        start = spot.stub_x if spot.from_edge else spot.x
        pad_mark(svg, spot, NET[net] if net != "GND" else "#e0e0e0" if spot.from_edge else INK)
        if how == "diode":
            svg.line(start, spot.y, spot.stub_x + s * 6, spot.y)
            diode_h(svg, spot.stub_x + s * 62, spot.stub_x + s * 6, spot.y, "SS14")
            end = spot.stub_x + s * 62
            svg.line(end, spot.y, end + s * 10, spot.y)
            end += s * 10
        else:
            svg.line(start, spot.y, end, spot.y)
        flag(svg, end, spot.y, net, "right" if s > 0 else "left")
    # status LED note at its pin
    st = sheet.key_spot.get("status_led")
    if st is not None:
        pad_mark(svg, st, WIRE["status_led"])
        svg.text(st.stub_x + st.side * 6, st.y - 6, pin_tag(sheet, "status_led") + " (on board)", size=11.5,
                 anchor="start" if st.side > 0 else "end", weight="bold", color=WIRE["status_led"])
    board_bottom = max(sp.y for sp in sheet.spots) + 60
    left = part_edge[-1] - PART_W if parts[-1] else min(sp.stub_x for sp in sheet.spots) - 120
    right = part_edge[1] + PART_W if parts[1] else max(sp.stub_x for sp in sheet.spots) + 120
    return left, right, max(bottom, board_bottom)


def pad_mark(svg: Svg, spot: PinSpot, color: str) -> None:
    """Show that a pad is in use: a dot on a board-edge pad, a ring round a header pin."""
    if spot.from_edge:
        svg.circle(spot.x, spot.y, 13, fill="none", stroke=color, width=3)
    else:
        svg.circle(spot.x, spot.y, 3.5, fill=color)


def pin_tag(sheet: Sheet, key: str) -> str:
    value = sheet.pins[key]
    if sheet.variant == "esp32":
        label = esp32_silkscreen(int(value))
        return f"GPIO{value} · {TITLES[key]}" if label == f"D{value}" else f"GPIO{value} ({label}) · {TITLES[key]}"
    if sheet.variant == "picow":
        return f"GP{value} · {TITLES[key]}"
    number = header_pin(PI_HEADER, f"GPIO{value}")
    return f"pin {number} · GPIO{value} · {TITLES[key]}"


def power_strip(svg: Svg, y: float, variant: str) -> float:
    """The power source at the bottom of a board sheet: where +5V, GND and BAT+ come from."""
    svg.text(40, y, "Power (details and battery life: power.md, power.svg)", size=14, weight="bold")
    y += 14
    if variant == "raspberry-pi":
        boxes = [("5 V 3 A adapter", "mains, SNI-marked"),
                 ("UPS HAT / UPS module", "18650 cells, I²C gauge"),
                 ("Raspberry Pi", "5 V in (USB or pins 2/4)")]
    else:
        boxes = [("5 V 2 A adapter", "or solar panel + MPPT charger"),
                 ("Li-ion charger + protection", "TP4056 + DW01 (mains) / CN3791 (solar)"),
                 ("1S Li-ion battery", "18650 cells in parallel"),
                 ("Boost converter 5.0 V", "MT3608 or similar, ≥ 1 A")]
    bw, gap, x = 250, 40, 40
    for i, (main, sub) in enumerate(boxes):
        svg.rect(x, y, bw, 52, fill="#f4f6f8", stroke=INK, width=1.5, rx=6)
        svg.text(x + bw / 2, y + 22, main, size=12.5, anchor="middle", weight="bold")
        svg.text(x + bw / 2, y + 40, sub, size=10.5, anchor="middle", color=SOFT)
        if i < len(boxes) - 1:
            svg.line(x + bw, y + 26, x + bw + gap - 6, y + 26, width=2)
            svg.poly([(x + bw + gap - 4, y + 26), (x + bw + gap - 12, y + 21), (x + bw + gap - 12, y + 31)],
                     closed=True, fill=INK, width=1)
        x += bw + gap
    end = x - gap
    svg.line(end, y + 16, end + 24, y + 16)
    flag(svg, end + 24, y + 16, "+5V", "right")
    svg.line(end, y + 38, end + 24, y + 38)
    flag(svg, end + 24, y + 38, "GND", "right")
    if variant != "raspberry-pi":
        bx = 40 + 2 * (bw + gap) + bw / 2
        svg.line(bx, y + 52, bx, y + 70)
        flag(svg, bx, y + 70, "BAT+", "down")
        svg.text(bx + 40, y + 84, "battery + terminal (after the protection board) → divider", size=10.5,
                 color=SOFT)
    return y + 110


def legend(svg: Svg, y: float, notes: list[str], source: str) -> float:
    lines = [
        *notes,
        "Switches close to GND; the firmware turns on the internal pull-up, so pressed (or lid closed) reads 0.",
        "Net flags: every GND flag is one ground terminal, every +5V flag the 5 V rail, BAT+ the battery's + terminal.",
        "Coloured lines: signal wires between board and part. Black lines: wiring of the part's own small circuit.",
    ]
    for line in lines:
        svg.text(40, y, "• " + line, size=12)
        y += 19
    svg.text(40, y + 6, f"Drawn by hardware/diagrams/make_diagrams.py from {source}. Do not edit this file by hand.",
             size=11, color=GREY, italic=True)
    return y + 24


def board_svg(variant: str, pins: dict[str, int | str]) -> str:
    builders = {"esp32": esp32_sheet, "picow": picow_sheet, "raspberry-pi": pi_sheet}
    sheet, svg = builders[variant](pins)
    left, right, bottom = draw_board_sheet(sheet, svg)
    dx = 30 - left  # shift the drawing so that its left edge sits 30 px from the page edge
    svg.items = [f'<g transform="translate({num(dx)},0)">', *svg.items, "</g>"]
    width = max(right + dx + 40, 1100)
    svg.text(40, 44, sheet.title, size=22, weight="bold")
    svg.text(40, 68, "Pin map: " + sheet.subtitle, size=12.5, color=SOFT)
    y = power_strip(svg, bottom + 40, variant)
    height = legend(svg, y, sheet.notes, PIN_MAP_FILES[variant])
    return svg.render(width, height + 10, sheet.title)


# ---------------------------------------------------------------------------------------------
# The GPS sheet: the three boards' UART pins, with the TX/RX crossing drawn out.


def gps_svg(all_pins: dict[str, dict[str, int | str]]) -> str:
    svg = Svg()
    svg.text(40, 44, "Optional GPS module on a UART: cross TX and RX", size=22, weight="bold")
    svg.text(40, 68, "The board's TX goes to the module's RX; the module's TX goes to the board's RX. "
             "Power the module from 5 V (it has its own 3.3 V regulator) and share GND.", size=12.5, color=SOFT)
    panels = [
        ("esp32", "ESP32 DevKit V1 (UART2)"),
        ("picow", "Raspberry Pi Pico W (UART0)"),
        ("raspberry-pi", "Raspberry Pi (primary UART)"),
    ]
    pw, x0, top = 470, 30, 100
    for i, (variant, heading) in enumerate(panels):
        pins = all_pins[variant]
        x = x0 + i * pw
        svg.rect(x, top, pw - 20, 300, fill="#fafbfc", stroke="#d0d5db", rx=8)
        svg.text(x + (pw - 20) / 2, top + 26, heading, size=14, anchor="middle", weight="bold")
        # board pins, left
        bx, by = x + 20, top + 60
        svg.rect(bx, by, 150, 190, fill="#1f2a36", stroke="#0d141b", rx=6)
        rows = []
        for key in ("gps_tx", "gps_rx"):
            value = pins[key]
            if variant == "esp32":
                label = f"GPIO{value} ({esp32_silkscreen(int(value))})"
            elif variant == "picow":
                label = f"GP{value} (pin {header_pin(PICO_HEADER, f'GP{value}')})"
            else:
                label = f"GPIO{value} (pin {header_pin(PI_HEADER, f'GPIO{value}')})"
            rows.append((key, label))
        rows.append(("5v", {"esp32": "5 V rail", "picow": "5 V rail", "raspberry-pi": "5V (pin 2 or 4)"}[variant]))
        rows.append(("gnd", "GND"))
        ys = [by + 36 + j * 42 for j in range(4)]
        role = {"gps_tx": "TX", "gps_rx": "RX", "5v": "+5V", "gnd": "GND"}
        for (key, label), y in zip(rows, ys, strict=True):
            svg.text(bx + 10, y - 8, label, size=11, color="white", family=MONO)
            svg.text(bx + 140, y + 12, role[key], size=12, anchor="end", color="#ffd54f", weight="bold")
            svg.circle(bx + 150, y + 8, 5, fill="#d4a72c", stroke="#8a6d1a")
        # module, right: TX on top, RX below, so the signal wires cross
        mx, my = x + 300, top + 60
        svg.rect(mx, my, 130, 190, fill="#e8f0fe", stroke=INK, width=2, rx=6)
        svg.text(mx + 65, my + 22, "NEO-6M", size=12, anchor="middle", weight="bold")
        mod_rows = ["TX", "RX", "VCC", "GND"]
        for name, y in zip(mod_rows, ys, strict=True):
            svg.circle(mx, y + 8, 5, fill="#d4a72c", stroke="#8a6d1a")
            svg.text(mx + 12, y + 12, name, size=12, weight="bold")
        mod_y = {name: y + 8 for name, y in zip(mod_rows, ys, strict=True)}
        board_y = {key: y + 8 for (key, _), y in zip(rows, ys, strict=True)}
        svg.poly([(bx + 150, board_y["gps_tx"]), (bx + 175, board_y["gps_tx"]), (mx - 25, mod_y["RX"]),
                  (mx, mod_y["RX"])], color=WIRE["gps_tx"], width=3)
        svg.poly([(bx + 150, board_y["gps_rx"]), (bx + 175, board_y["gps_rx"]), (mx - 25, mod_y["TX"]),
                  (mx, mod_y["TX"])], color=WIRE["gps_rx"], width=3)
        svg.line(bx + 150, board_y["5v"], mx, mod_y["VCC"], color=NET["+5V"], width=3)
        svg.line(bx + 150, board_y["gnd"], mx, mod_y["GND"], color=NET["GND"], width=3)
        svg.text(x + (pw - 20) / 2, top + 278, f"gps_tx = {pins['gps_tx']}, gps_rx = {pins['gps_rx']}", size=11.5,
                 anchor="middle", color=SOFT, family=MONO)
    y = top + 330
    notes = [
        "UART settings: 9600 baud, 8 data bits, no parity, 1 stop bit (the NEO-6M's factory setting).",
        "The module's TX line is 3.3 V logic even when its VCC is 5 V, so it is safe for all three boards.",
        "Raspberry Pi: enable the serial port, disable the serial login console, and give the header UART "
        "to the GPIO pins (gps.md).",
        "Mount the antenna (the ceramic patch) facing the sky, under plastic, not metal.",
    ]
    for line in notes:
        svg.text(40, y, "• " + line, size=12)
        y += 19
    srcs = ", ".join(PIN_MAP_FILES.values())
    svg.text(40, y + 6, f"Drawn by hardware/diagrams/make_diagrams.py from {srcs}. Do not edit this file by hand.",
             size=11, color=GREY, italic=True)
    return svg.render(1440, y + 24, "Optional GPS module on a UART")


# ---------------------------------------------------------------------------------------------
# The power sheet: the three ways the button is powered.


def box(svg: Svg, x: float, y: float, w: float, main: str, sub: str, fill: str = "#f4f6f8") -> None:
    svg.rect(x, y, w, 58, fill=fill, stroke=INK, width=1.5, rx=6)
    svg.text(x + w / 2, y + 24, main, size=12.5, anchor="middle", weight="bold")
    svg.text(x + w / 2, y + 43, sub, size=10.5, anchor="middle", color=SOFT)


def arrow(svg: Svg, x1: float, y1: float, x2: float, y2: float, color: str = INK, label: str = "") -> None:
    svg.line(x1, y1, x2, y2, color=color, width=2.2)
    if x2 != x1:
        d = 1 if x2 > x1 else -1
        svg.poly([(x2, y2), (x2 - 9 * d, y2 - 5), (x2 - 9 * d, y2 + 5)], closed=True, fill=color, color=color, width=1)
    else:
        d = 1 if y2 > y1 else -1
        svg.poly([(x2, y2), (x2 - 5, y2 - 9 * d), (x2 + 5, y2 - 9 * d)], closed=True, fill=color, color=color, width=1)
    if label:
        svg.text((x1 + x2) / 2, min(y1, y2) - 6 if y1 == y2 else (y1 + y2) / 2, label, size=10.5, anchor="middle",
                 color=SOFT)


def load_sharing_detail(svg: Svg, y: float) -> float:
    """Schematic of the load-sharing switch of row A, so the charger never sees the load."""
    svg.text(40, y, "Detail of A: load sharing (the battery feeds the boost converter only when the adapter is off)",
             size=15, weight="bold")
    f = Frame(svg, 40, y + 10, 1)
    top = 50
    fflag(f, 60, top, "+5V", "toward")
    f.text(60, top - 16, "adapter +", size=10.5, color=SOFT)
    f.line(60, top, 200, top)
    f.dot(120, top)
    diode_h(svg, f.x(200), f.x(260), f.y(top), "SS34 (Schottky)")
    f.line(260, top, 560, top)
    f.dot(420, top)
    f.text(480, top - 8, "LOAD", size=11, weight="bold")
    f.text(570, top + 4, "→ boost converter IN+ (MT3608)", anchor="away", size=12)
    f.line(120, top, 120, 130)
    f.line(120, 130, 394, 130)
    f.dot(250, 130)
    f.line(250, 130, 250, 142)
    resistor_v(f, 250, 142, 168, "100 kΩ")
    f.line(250, 168, 250, 178)
    fflag(f, 250, 178, "GND", "down")
    u, vs, vd = pmos(f, 394, 130)
    f.text(u + 24, 134, "Q3 AO3401 (P-MOSFET)", anchor="away", size=11, weight="bold")
    f.line(u, vs, u, top)
    f.line(u, vd, u, 178)
    fflag(f, u, 178, "BAT+", "down")
    f.text(u + 60, 190, "battery + (TP4056 OUT+ / B+)", anchor="away", size=10.5, color=SOFT)
    f.text(700, 110, "Adapter on: gate at 5 V, Q3 off; the load runs from the adapter through the",
           anchor="away", size=11.5)
    f.text(700, 128, "Schottky, and the TP4056 charges the cell with nothing else attached.", anchor="away", size=11.5)
    f.text(700, 150, "Adapter off: the 100 kΩ pulls the gate to 0 V, Q3 turns on and the cell", anchor="away",
               size=11.5)
    f.text(700, 168, "feeds the load without a diode drop.", anchor="away", size=11.5)
    return y + 252


def power_svg() -> str:
    svg = Svg()
    svg.text(40, 44, "Power: three ways to feed a button", size=22, weight="bold")
    svg.text(40, 68, "Every variant keeps working through a mains cut. Battery life arithmetic: power.md "
             "(recomputed by power_budget.py).", size=12.5, color=SOFT)
    w = 200
    # A: mains with battery backup
    y = 110
    svg.text(40, y, "A. Mains with battery backup — indoors: school, market office, kelurahan office", size=15,
             weight="bold")
    y += 20
    box(svg, 40, y, w, "230 V socket", "on a circuit that stays on")
    box(svg, 290, y, w, "5 V 2 A adapter", "SNI-marked, plugs in")
    box(svg, 540, y, w, "Load sharing", "Schottky SS34 + P-MOSFET AO3401")
    box(svg, 790, y, w, "Boost to 5.0 V", "MT3608 module, ≥ 1 A", fill="#fff3e0")
    box(svg, 1040, y, 240, "5 V rail", "board VIN / VSYS, ring light, buzzer", fill="#ffebee")
    arrow(svg, 240, y + 29, 290, y + 29)
    arrow(svg, 490, y + 29, 540, y + 29)
    arrow(svg, 740, y + 29, 790, y + 29)
    arrow(svg, 990, y + 29, 1040, y + 29)
    y2 = y + 110
    box(svg, 290, y2, w, "Charger TP4056", "with DW01 protection, 1 A")
    box(svg, 540, y2, w, "1S2P 18650 pack", "2 × 2600 mAh, 3.7 V nominal", fill="#ede7f6")
    box(svg, 790, y2, w, "Divider 100k/100k", "BAT+ → ADC pin", fill="#fce4ec")
    arrow(svg, 390, y + 58, 390, y2, label="")
    arrow(svg, 490, y2 + 29, 540, y2 + 29)
    arrow(svg, 640, y2, 640, y + 58, color=NET["BAT+"])
    arrow(svg, 740, y2 + 29, 790, y2 + 29, color=NET["BAT+"])
    svg.text(655, y + 88, "battery feeds the load only when", size=10.5, color=SOFT)
    svg.text(655, y + 101, "the adapter is off (P-MOSFET)", size=10.5, color=SOFT)
    # B: solar street pole
    y = y2 + 110
    svg.text(40, y, "B. Solar on a street pole — no mains nearby", size=15, weight="bold")
    y += 20
    box(svg, 40, y, w, "Solar panel 6 V 10 W", "tilted 10-15° toward the equator")
    box(svg, 290, y, w, "MPPT charger CN3791", "set for 1S Li-ion 4.2 V")
    box(svg, 540, y, w, "1S4P 18650 pack", "4 × 2600 mAh + 1S BMS", fill="#ede7f6")
    box(svg, 790, y, w, "Boost to 5.0 V", "MT3608 module, ≥ 1 A", fill="#fff3e0")
    box(svg, 1040, y, 240, "5 V rail", "board VIN / VSYS, ring light, buzzer", fill="#ffebee")
    arrow(svg, 240, y + 29, 290, y + 29)
    arrow(svg, 490, y + 29, 540, y + 29)
    arrow(svg, 740, y + 29, 790, y + 29)
    arrow(svg, 990, y + 29, 1040, y + 29)
    box(svg, 540, y + 100, w, "Divider 100k/100k", "BAT+ → ADC pin", fill="#fce4ec")
    arrow(svg, 640, y + 58, 640, y + 100, color=NET["BAT+"])
    # C: Raspberry Pi
    y = y + 200
    svg.text(40, y, "C. Raspberry Pi agent — indoors, on mains", size=15, weight="bold")
    y += 20
    box(svg, 40, y, w, "230 V socket", "on a circuit that stays on")
    box(svg, 290, y, w, "5 V 3 A adapter", "USB-C or micro-USB to the HAT")
    box(svg, 540, y, w, "UPS HAT / module", "18650 cells, I²C fuel gauge", fill="#ede7f6")
    box(svg, 790, y, w, "Raspberry Pi", "Zero 2 W recommended")
    box(svg, 1040, y, 240, "5 V header pins 2/4", "ring light, buzzer, GPS", fill="#ffebee")
    arrow(svg, 240, y + 29, 290, y + 29)
    arrow(svg, 490, y + 29, 540, y + 29)
    arrow(svg, 740, y + 29, 790, y + 29)
    arrow(svg, 990, y + 29, 1040, y + 29)
    y += 100
    y = load_sharing_detail(svg, y)
    notes = [
        "The network must ride through the same outage: power the Wi-Fi access point or 4G router from a UPS too.",
        "Charge Li-ion only between 0 and 45 °C: shade the box and keep the cells away from the sunny side.",
        "Common ground: battery −, charger −, boost −, board GND and every part's GND meet at one terminal.",
        "Fuse the battery + lead (2 A) right at the pack; use the pack's protection board (DW01 or a 1S BMS).",
    ]
    for line in notes:
        svg.text(40, y, "• " + line, size=12)
        y += 19
    svg.text(40, y + 6, "Drawn by hardware/diagrams/make_diagrams.py. Do not edit this file by hand.", size=11,
             color=GREY, italic=True)
    return svg.render(1320, y + 24, "Power: three ways to feed a button")


# ---------------------------------------------------------------------------------------------


def render_all(root: Path = ROOT) -> dict[str, str]:
    """File name -> SVG text of every diagram, from the pin maps under root."""
    pins = {variant: load_pins(variant, root) for variant in PIN_MAP_FILES}
    out = {f"{variant}.svg": board_svg(variant, pins[variant]) for variant in PIN_MAP_FILES}
    out["gps.svg"] = gps_svg(pins)
    out["power.svg"] = power_svg()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if an SVG is out of date")
    parser.add_argument("--out", type=Path, default=HERE, help="directory to write the SVGs to")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render_all().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {name}")
    if stale:
        print("out of date: " + ", ".join(stale) + " (run hardware/diagrams/make_diagrams.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

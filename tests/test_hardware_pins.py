"""hardware/: pin tables, wiring diagrams and bills of materials agree with the pin maps.

The pin maps are the firmware's (firmware/boards/esp32/pins.py, firmware/boards/picow/pins.py) and
the Raspberry Pi agent's (devices/pins.py). hardware/*.md document them in tables; the SVG wiring
diagrams are drawn from them by hardware/diagrams/make_diagrams.py. A pin moved on either side
without the other fails here.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
HW = ROOT / "hardware"


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is being made
    spec.loader.exec_module(module)
    return module


diagrams = load_module(HW / "diagrams" / "make_diagrams.py", "siaga_hw_make_diagrams")

# variant -> (document, column holding the PINS value, column holding the physical location)
DOCS = {
    "esp32": ("esp32.md", "GPIO", "Silkscreen"),
    "picow": ("picow.md", "GP", "Header pin"),
    "raspberry-pi": ("raspberry-pi.md", "BCM", "Header pin"),
}


def cells(line: str) -> list[str]:
    return [c.strip().strip("`").strip() for c in line.strip().strip("|").split("|")]


def md_table(text: str, marker: str) -> list[dict[str, str]]:
    """The Markdown table that follows `<!-- marker -->`, as a list of {column: cell}."""
    tag = f"<!-- {marker} -->"
    assert text.count(tag) == 1, f"expected exactly one {tag}"
    lines = text[text.index(tag) + len(tag):].splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    table = []
    for line in lines:
        if not line.strip().startswith("|"):
            break
        table.append(line)
    assert len(table) >= 3, f"no table after {tag}"
    header = cells(table[0])
    assert set(table[1].replace("|", "").replace(" ", "")) <= set("-:"), "second row must be the separator"
    rows = []
    for line in table[2:]:
        row = cells(line)
        assert len(row) == len(header), f"row has {len(row)} cells, header {len(header)}: {line}"
        rows.append(dict(zip(header, row, strict=True)))
    return rows


def pin_value(cell: str) -> int | str:
    return int(cell) if cell.isdigit() else cell


def documented_pins(variant: str, root: Path = ROOT) -> dict[str, int | str]:
    doc, column, _ = DOCS[variant]
    rows = md_table((root / "hardware" / doc).read_text(encoding="utf-8"), f"pin-table: {variant}")
    keys = [r["Key"] for r in rows]
    assert len(keys) == len(set(keys)), f"{doc}: a key is listed twice"
    return {r["Key"]: pin_value(r[column]) for r in rows}


def pin_mismatches(documented: dict[str, int | str], pins: dict[str, int | str]) -> list[str]:
    """Every way the documented table and PINS disagree, in both directions."""
    problems = [f"{key}: PINS has {value!r}, the table is missing it" for key, value in pins.items()
                if key not in documented]
    problems += [f"{key}: documented as {value!r}, but PINS has no such key" for key, value in documented.items()
                 if key not in pins]
    problems += [f"{key}: documented as {documented[key]!r}, PINS has {pins[key]!r}" for key in pins
                 if key in documented and documented[key] != pins[key]]
    return problems


@pytest.mark.parametrize("variant", sorted(DOCS))
def test_pin_table_matches_the_pin_map_both_ways(variant: str) -> None:
    pins = diagrams.load_pins(variant)
    assert pins, f"{variant}: empty PINS"
    assert pin_mismatches(documented_pins(variant), pins) == []


@pytest.mark.parametrize("variant", sorted(DOCS))
def test_physical_pin_column_matches_the_board(variant: str) -> None:
    doc, column, where = DOCS[variant]
    rows = md_table((HW / doc).read_text(encoding="utf-8"), f"pin-table: {variant}")
    for row in rows:
        value = pin_value(row[column])
        if not isinstance(value, int):
            assert row[where] in ("-", "—", "on board"), f"{row['Key']}: no header pin expected"
            continue
        if variant == "esp32":
            expected: object = diagrams.esp32_silkscreen(value)
        elif variant == "picow":
            expected = str(diagrams.header_pin(diagrams.PICO_HEADER, f"GP{value}"))
        else:
            expected = str(diagrams.header_pin(diagrams.PI_HEADER, f"GPIO{value}"))
        assert row[where] == expected, f"{doc} {row['Key']}: {where} {row[where]!r}, the board has {expected!r}"


def test_pi_agent_header_pin_comments_agree() -> None:
    """devices/pins.py notes the header pin of each BCM number in a comment; where it does, it must be right."""
    source = (ROOT / "devices" / "pins.py").read_text(encoding="utf-8")
    pins = diagrams.load_pins("raspberry-pi")
    found = 0
    for key, header in re.findall(r'"(\w+)":\s*\d+,\s*#\s*header pin (\d+)', source):
        found += 1
        assert diagrams.header_pin(diagrams.PI_HEADER, f"GPIO{pins[key]}") == int(header), key
    if not found:
        pytest.skip("devices/pins.py has no 'header pin N' comments to check")


def test_gps_table_matches_all_three_pin_maps_and_crosses_tx_rx() -> None:
    rows = md_table((HW / "gps.md").read_text(encoding="utf-8"), "pin-table: gps")
    seen = set()
    for row in rows:
        variant, key = row["Variant"], row["Key"]
        seen.add((variant, key))
        assert row["Pin"].isdigit(), row
        assert int(row["Pin"]) == diagrams.load_pins(variant)[key], f"gps.md {variant} {key}"
        assert row["GPS module pin"] == {"gps_tx": "RX", "gps_rx": "TX"}[key], "TX must go to RX and RX to TX"
    assert seen == {(v, k) for v in DOCS for k in ("gps_tx", "gps_rx")}


# The optional GSM modem (hardware/modem.md): board pin key -> the modem pin it goes to. Only the
# microcontroller boards have modem pins; the Raspberry Pi takes a USB modem or its one UART.
MODEM_WIRES = {"modem_tx": "RXD", "modem_rx": "TXD", "modem_reset": "RESET"}


def test_modem_table_matches_the_board_pin_maps_and_crosses_tx_rx() -> None:
    rows = md_table((HW / "modem.md").read_text(encoding="utf-8"), "pin-table: modem")
    seen = set()
    for row in rows:
        variant, key = row["Variant"], row["Key"]
        seen.add((variant, key))
        assert row["Pin"].isdigit(), row
        assert int(row["Pin"]) == diagrams.load_pins(variant)[key], f"modem.md {variant} {key}"
        assert row["Modem pin"] == MODEM_WIRES[key], "TX must go to RXD, RX to TXD, reset to RESET"
    boards = ("esp32", "picow")
    assert seen == {(v, k) for v in boards for k in MODEM_WIRES}
    for variant in boards:  # and the board's own pin table lists them too (checked both ways above)
        assert set(MODEM_WIRES) <= set(documented_pins(variant)), variant
    assert not set(MODEM_WIRES) & set(diagrams.load_pins("raspberry-pi"))


def test_committed_svgs_are_what_the_script_draws_from_the_pin_maps() -> None:
    drawn = diagrams.render_all()
    committed = {p.name for p in (HW / "diagrams").glob("*.svg")}
    assert committed == set(drawn), "run hardware/diagrams/make_diagrams.py and commit its SVGs"
    stale = [name for name, text in drawn.items()
             if (HW / "diagrams" / name).read_text(encoding="utf-8") != text]
    assert stale == [], f"out of date: {stale}; run hardware/diagrams/make_diagrams.py"


@pytest.mark.parametrize("variant", sorted(DOCS))
def test_each_diagram_labels_every_wired_pin(variant: str) -> None:
    svg = (HW / "diagrams" / f"{variant}.svg").read_text(encoding="utf-8")
    for key, value in diagrams.load_pins(variant).items():
        if not isinstance(value, int) or key in MODEM_WIRES:
            continue  # the optional modem's pins are tabulated in modem.md (checked below), not drawn
        if variant == "esp32":
            label = f"GPIO{value} "
        elif variant == "picow":
            label = f"GP{value} · "
        else:
            label = f"pin {diagrams.header_pin(diagrams.PI_HEADER, f'GPIO{value}')} · GPIO{value} · "
        assert label in svg, f"{variant}.svg has no label {label!r} for {key}"
    gps = (HW / "diagrams" / "gps.svg").read_text(encoding="utf-8")
    pins = diagrams.load_pins(variant)
    assert f"gps_tx = {pins['gps_tx']}, gps_rx = {pins['gps_rx']}" in gps


def test_a_moved_pin_is_caught(tmp_path: Path) -> None:
    """The checks above can fail: move the SOS pin in a copy of the pin maps and both the diagram
    comparison and the table comparison object."""
    for rel in diagrams.PIN_MAP_FILES.values():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    pins_file = tmp_path / diagrams.PIN_MAP_FILES["esp32"]
    sos = diagrams.load_pins("esp32")["sos"]
    spare = next(g for g in (13, 4, 23, 22, 21) if g not in diagrams.load_pins("esp32").values())
    text = pins_file.read_text(encoding="utf-8")
    moved = re.sub(rf'("sos":\s*){sos}\b', rf"\g<1>{spare}", text, count=1)
    assert moved != text
    pins_file.write_text(moved, encoding="utf-8")
    redrawn = diagrams.render_all(tmp_path)
    assert redrawn["esp32.svg"] != (HW / "diagrams" / "esp32.svg").read_text(encoding="utf-8")
    assert pin_mismatches(documented_pins("esp32"), diagrams.load_pins("esp32", tmp_path)) == [
        f"sos: documented as {sos!r}, PINS has {spare!r}"]


# ---------------------------------------------------------------------------------------------
# Every variant has a picture, a BOM and a pin table (acceptance item 1).


@pytest.mark.parametrize("variant", [*sorted(DOCS), "gps"])
def test_every_variant_has_a_picture_a_pin_table_and_a_bom(variant: str) -> None:
    doc = "gps.md" if variant == "gps" else DOCS[variant][0]
    text = (HW / doc).read_text(encoding="utf-8")
    assert f"](diagrams/{variant}.svg)" in text, f"{doc} does not show diagrams/{variant}.svg"
    assert f"<!-- pin-table: {variant} -->" in text
    bom = (HW / "bom.md").read_text(encoding="utf-8")
    assert f"<!-- bom: {variant} -->" in bom
    readme = (HW / "README.md").read_text(encoding="utf-8")
    assert f"](diagrams/{variant}.svg)" in readme
    assert f"]({doc})" in readme


def rupiah(cell: str) -> int:
    digits = cell.replace("*", "").replace("Rp", "").replace(".", "").strip()
    assert digits.isdigit(), f"not a rupiah amount: {cell!r}"
    return int(digits)


@pytest.mark.parametrize("variant", [*sorted(DOCS), "gps", "solar", "outdoor", "modem-2g", "modem-lte"])
def test_bom_lines_and_totals_add_up(variant: str) -> None:
    rows = md_table((HW / "bom.md").read_text(encoding="utf-8"), f"bom: {variant}")
    items, total = rows[:-1], rows[-1]
    assert "Total" in total["Part"], "the last row of a BOM is its total"
    for row in items:
        qty = int(row["Qty"])
        assert qty * rupiah(row["Unit (IDR)"]) == rupiah(row["Line (IDR)"]), row["Part"]
    assert sum(rupiah(r["Line (IDR)"]) for r in items) == rupiah(total["Line (IDR)"])

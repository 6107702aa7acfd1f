"""The label stuck on (and inside) every button: what to do and what the light says, in Bahasa
Indonesia first and English below, a QR code with the device id and the support contact, and the
site. 62 mm wide at 300 dpi, the width of the common continuous label rolls of thermal label
printers; PNG or PDF (with its physical size).

Every word comes from the `label` message catalog (siaga/locale/label.json): a label cannot know who
will read it, so it carries both languages, and a translator corrects them without touching code.
"""

from __future__ import annotations

from pathlib import Path

from siaga import i18n

from .validate import Location

DOMAIN = "label"
# The lights the label explains; the sign on the enclosure explains them all (hardware/enclosure.md).
# A 62 x 100 mm label has room for three: the two a resident waits for, which must never be
# confused (an operator has seen the alarm; an agency is on its way), and the one that says to
# phone 112 instead.
LIGHTS = ("light.acknowledged", "light.dispatched", "light.undelivered")

DPI = 300
WIDTH_MM, HEIGHT_MM = 62, 100
RED = (200, 16, 46)
BLACK = (0, 0, 0)
GREY = (90, 90, 90)


def _px(mm: float) -> int:
    return round(mm / 25.4 * DPI)


def qr_payload(device_id: str, support: str) -> str:
    """What a phone shows when it scans the label: plain text, readable without any app."""
    return f"Siaga {device_id}\n{i18n.both(DOMAIN, 'qr.support')}: {support}"


def instructions(hold_s: float) -> list[tuple[str, str]]:
    """The label's sentences as (Bahasa Indonesia, English) pairs, top to bottom: hold, cancel, and
    what the light says."""
    keys: list[tuple[str, dict[str, str]]] = [("hold", {"seconds": f"{hold_s:g}"}), ("cancel", {})]
    keys += [(key, {}) for key in LIGHTS]
    return [(i18n.text(DOMAIN, key, "id", **params), i18n.text(DOMAIN, key, "en", **params))
            for key, params in keys]


def render(device_id: str, *, support: str, organisation: str = "", location: Location | None = None,
           hold_s: float = 2.0):  # -> PIL.Image.Image
    import segno
    from PIL import Image, ImageDraw, ImageFont

    width, height = _px(WIDTH_MM), _px(HEIGHT_MM)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    margin = _px(3)

    def font(size_pt: float):
        return ImageFont.load_default(size=round(size_pt / 72 * DPI))

    def centred(y: int, text: str, size_pt: float, fill=BLACK, bold: bool = False) -> int:
        f = font(size_pt)
        stroke = 2 if bold else 0
        box = draw.textbbox((0, 0), text, font=f, stroke_width=stroke)
        draw.text(((width - (box[2] - box[0])) // 2 - box[0], y - box[1]), text, font=f, fill=fill,
                  stroke_width=stroke, stroke_fill=fill)
        return y + (box[3] - box[1]) + _px(1.2)

    def wrapped(y: int, text: str, size_pt: float, fill=BLACK) -> int:
        f = font(size_pt)
        words, line = text.split(), ""
        for word in words:
            trial = f"{line} {word}".strip()
            if draw.textlength(trial, font=f) > width - 2 * margin and line:
                y = centred(y, line, size_pt, fill)
                line = word
            else:
                line = trial
        return centred(y, line, size_pt, fill) if line else y

    # Red band: what this is, in both languages.
    band = _px(13)
    draw.rectangle((0, 0, width, band), fill=RED)
    y = centred(_px(1.8), i18n.text(DOMAIN, "title", "id"), 15, "white", bold=True)
    centred(y, i18n.text(DOMAIN, "title", "en"), 10, "white")

    # What to do, the one instruction a resident needs, large; then cancelling and the lights.
    (hold_id, hold_en), *rest = instructions(hold_s)
    y = band + _px(2)
    y = centred(y, hold_id, 13.5, bold=True)
    y = centred(y, hold_en, 9.5)
    for ind, eng in rest:
        y = wrapped(y + _px(0.6), ind, 7.5)
        y = wrapped(y, eng, 7, GREY)

    # QR code: device id and support contact.
    qr = segno.make(qr_payload(device_id, support), error="m")
    scale = max(1, _px(19) // qr.symbol_size(scale=1, border=2)[0])
    qr_img = _qr_image(qr, scale)
    qx = (width - qr_img.width) // 2
    img.paste(qr_img.convert("RGB"), (qx, y + _px(1)))
    y += qr_img.height + _px(1.5)

    y = centred(y, device_id, 11, bold=True)
    y = wrapped(y, support, 8.5)
    if location is not None:
        y = wrapped(y + _px(0.5), location.address, 7.5, GREY)
        y = centred(y, f"{location.area}   {location.degrees()}", 7, GREY)
    if organisation:
        wrapped(y + _px(0.5), organisation, 7.5, GREY)
    return img


def _qr_image(qr, scale: int):  # drawn from the module matrix: no segno plugin needed
    from PIL import Image, ImageDraw

    border = 2
    size = qr.symbol_size(scale=1, border=border)[0]
    img = Image.new("1", (size * scale, size * scale), 1)
    draw = ImageDraw.Draw(img)
    for row_no, row in enumerate(qr.matrix_iter(scale=1, border=border)):
        for col_no, dark in enumerate(row):
            if dark:
                draw.rectangle((col_no * scale, row_no * scale, (col_no + 1) * scale - 1, (row_no + 1) * scale - 1),
                               fill=0)
    return img


def save(path: Path, device_id: str, *, support: str, organisation: str = "", location: Location | None = None,
         hold_s: float = 2.0) -> Path:
    img = render(device_id, support=support, organisation=organisation, location=location, hold_s=hold_s)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".pdf":
        img.save(path, "PDF", resolution=DPI)
    else:
        img.save(path, "PNG", dpi=(DPI, DPI))
    return path

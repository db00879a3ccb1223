"""A second herbarium sheet generator, written apart from `dassco_hpc.synthetic` on purpose.

The HPC modules were tuned on `dassco_hpc.synthetic`'s sheets; numbers measured only there say
little about sheets nobody here drew. This generator makes its own choices everywhere, so that
what the modules assume about that one generator shows up as failures here:

- sizes come from a physical sheet (27 x 42 cm) scanned at 150-400 DPI, so text, codes and
  strokes scale with the resolution; the sheet may fill the frame or lie on a white, black or
  blue background;
- the whole scan may be turned by 90, 180 or 270 degrees (a sheet fed in sideways) and skewed
  by up to 2 degrees; blurred, noisy, JPEG-compressed at low quality;
- files are JPEG (RGB or CMYK, some with an EXIF orientation tag: pixels stored turned, the tag
  says how to show them), PNG (RGB, grey, 16-bit grey, palette, RGBA) or TIFF (deflate,
  PackBits, uncompressed, CMYK, 16-bit grey, two pages);
- the Data Matrix is drawn from zxing's module matrix at a fractional module size (0.3-0.7 mm),
  antialiased, with a quiet zone of 1-4 modules, on a sticker anywhere on the sheet or on the
  label; multi-specimen sheets carry two or three stickers apart; some sheets carry an old
  Code 128 accession number outside the payload convention (it must be ignored);
- labels are laid out field by field (header, family, taxon, locality, habitat, collector and
  date, number) in fonts the other generator does not use, at 7-11 pt, in black, blue-black or
  faded grey ink on white or yellowed paper; a determination slip may be added in a jittered,
  handwriting-like hand; languages Danish, Latin and English;
- the plant is branching random-walk stems with elliptic leaves, seeds and mounting tape;
- kinds without a specimen: a colour checker card, a grey scale strip with step numbers, a
  blank page; files that are no image: truncated, empty, text, or a header claiming more pixels
  than any scanner makes.

`sheet(seed)` draws one (reproducible per seed) and returns the file's bytes with the truth
about it (`Truth`); `write(folder, seed)` saves it. Only Pillow, numpy and zxing-cpp (for the
code's module matrix) are used.
"""

from __future__ import annotations

import io
import math
import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Herbarium sheet, cm.
SHEET_CM = (27.0, 42.0)
CM_PER_INCH = 2.54
KINDS = (
    "specimen", "specimen", "specimen", "mso", "specimen", "no_code", "specimen",
    "colour_checker", "specimen", "mso", "no_label", "specimen", "grey_scale", "specimen",
    "blank", "specimen", "broken",
)  # fmt: skip
TARGET_KINDS = frozenset({"colour_checker", "grey_scale"})
FONT_DIRS = ("/usr/share/fonts/opentype", "/usr/share/fonts/truetype")
#: Faces the other generator does not draw labels in.
BODY_FONTS = (
    "urw-base35/NimbusSans-Regular.otf", "urw-base35/URWBookman-Light.otf",
    "urw-base35/P052-Roman.otf", "urw-base35/NimbusMonoPS-Regular.otf",
    "urw-base35/URWGothic-Book.otf", "urw-base35/NimbusSansNarrow-Regular.otf",
    "dejavu/DejaVuSerifCondensed.ttf", "freefont/FreeSerif.ttf",
    "liberation/LiberationSans-Regular.ttf",
)  # fmt: skip
HEADER_FONTS = (
    "urw-base35/NimbusSans-Bold.otf", "urw-base35/P052-Bold.otf",
    "urw-base35/URWBookman-Demi.otf", "dejavu/DejaVuSans-Bold.ttf",
)  # fmt: skip
ITALIC_FONTS = (
    "urw-base35/P052-Italic.otf", "urw-base35/NimbusSans-Italic.otf",
    "urw-base35/URWBookman-LightItalic.otf", "freefont/FreeSerifItalic.ttf",
)  # fmt: skip
HAND_FONTS = ("urw-base35/Z003-MediumItalic.otf", "freefont/FreeSerifItalic.ttf")

FAMILIES = ("CYPERACEAE", "ROSACEAE", "ORCHIDACEAE", "BRASSICACEAE", "FABACEAE", "POACEAE")
TAXA = (
    "Dactylorhiza majalis (Rchb.) P.F.Hunt & Summerh.", "Filipendula ulmaria (L.) Maxim.",
    "Eriophorum angustifolium Honck.", "Cardamine pratensis L.", "Lathyrus pratensis L.",
    "Potentilla erecta (L.) Raeusch.", "Menyanthes trifoliata L.", "Briza media L.",
)  # fmt: skip
HEADERS = {
    "da": ("BOTANISK MUSEUM KØBENHAVN", "DANMARKS FLORA", "HERBARIUM HAUNIENSE"),
    "la": ("HERBARIUM HAUNIENSE", "PLANTAE DANICAE EXSICCATAE", "MUSEUM BOTANICUM HAFNIENSE"),
    "en": ("PLANTS OF DENMARK", "NATURAL HISTORY MUSEUM", "HERBARIUM HAUNIENSE"),
}
LOCALITIES = {
    "da": (
        "Nordsjælland: Gribskov, ved Store Gribsø", "Bornholm: Almindingen, Ekkodalen",
        "Vestjylland: klitplantage nær Ringkøbing", "Lolland: Maribo Søndersø, østbredden",
        "Midtjylland: Silkeborg Vesterskov, ådalen",
    ),
    "la": (
        "Dania, Selandia septentrionalis, Gribskov", "Dania, Bornholmia, Almindingen",
        "Dania, Jutlandia occidentalis, Ringkøbing", "Dania, Lollandia, prope Maribo",
    ),
    "en": (
        "Denmark, North Zealand: Gribskov forest", "Denmark, Bornholm: Almindingen woods",
        "Denmark, West Jutland: dunes near Ringkøbing", "Denmark, Lolland: lake shore, Maribo",
    ),
}  # fmt: skip
HABITATS = {
    "da": ("Fugtig eng på kalkrig bund", "Lysåben birkemose", "Vejkant på sandet jord",
           "Strandeng ved brakvand", "Skyggefuld bøgeskov"),
    "la": ("In paludosis turfosis", "Ad margines silvarum", "In arenosis maritimis",
           "In pratis humidis copiose"),
    "en": ("Wet meadow on calcareous soil", "Open birch bog", "Sandy roadside verge",
           "Salt marsh by brackish water"),
}  # fmt: skip
COLLECTORS = ("Ove Poulsen", "B. Øllgaard", "Jens Holm", "K. Wiinstedt", "Sv. Andersen")
MONTHS = {
    "da": ("maj", "juni", "juli", "august"),
    "la": ("Maio", "Junio", "Julio", "Augusto"),
    "en": ("May", "June", "July", "August"),
}
COLLECTED = {"da": "Samlet af", "la": "Leg.", "en": "Coll."}
#: A colour checker's 24 patches (sRGB, as published for the classic chart).
CHECKER = (
    (115, 82, 68), (194, 150, 130), (98, 122, 157), (87, 108, 67), (133, 128, 177),
    (103, 189, 170), (214, 126, 44), (80, 91, 166), (193, 90, 99), (94, 60, 108),
    (157, 188, 64), (224, 163, 46), (56, 61, 150), (70, 148, 73), (175, 54, 60),
    (231, 199, 31), (187, 86, 149), (8, 133, 161), (243, 243, 242), (200, 200, 200),
    (160, 160, 160), (122, 122, 121), (85, 85, 85), (52, 52, 52),
)  # fmt: skip


@dataclass
class Truth:
    """What a sheet shows, to compare with what the modules read."""

    name: str
    kind: str
    seed: int
    #: The specimen barcodes drawn (the convention's payloads), in no particular order.
    barcodes: list[str] = field(default_factory=list)
    #: Label text per field (header, family, taxon, locality, habitat, collector, number,
    #: determination).
    fields: dict[str, str] = field(default_factory=dict)
    is_target: bool = False
    #: The file is no usable image: the modules must fail with a clear reason.
    broken: bool = False
    dpi: int = 0
    #: Degrees the scan is turned by (counter-clockwise) before saving.
    turned: int = 0
    file_format: str = ""
    mode: str = ""
    notes: list[str] = field(default_factory=list)


def _font(relative: str, px: float) -> Any:
    """A face by its path below /usr/share/fonts/opentype or /truetype (Pillow's own font
    where it is not installed)."""
    from PIL import ImageFont

    for base in FONT_DIRS:
        candidate = Path(base) / relative
        if candidate.is_file():
            return ImageFont.truetype(str(candidate), max(6, round(px)))
    return ImageFont.load_default(max(6, round(px)))


def _px(cm: float, dpi: int) -> int:
    return max(1, round(cm / CM_PER_INCH * dpi))


def _pt(points: float, dpi: int) -> float:
    """Font size in pixels for a size in points (what Pillow calls the em size)."""
    return points / 72 * dpi


# --- the plant ---------------------------------------------------------------------------


def _plant(img: Any, area: tuple[int, int, int, int], dpi: int, rng: random.Random) -> None:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    left, top, right, bottom = area
    stem_w = max(1, _px(rng.uniform(0.08, 0.2), dpi))
    dried = (rng.randint(70, 120), rng.randint(80, 110), rng.randint(30, 60))

    def branch(x: float, y: float, angle: float, length: float, depth: int) -> None:
        points = [(x, y)]
        for _ in range(12):
            angle += rng.uniform(-0.25, 0.25)
            x += math.cos(angle) * length / 12
            y -= math.sin(angle) * length / 12
            x, y = min(max(x, left), right), min(max(y, top), bottom)
            points.append((x, y))
            if rng.random() < 0.35:
                _ellipse_leaf(draw, (x, y), angle + rng.choice((-1, 1)) * rng.uniform(0.5, 1.2),
                              length * rng.uniform(0.12, 0.22), dried, rng)  # fmt: skip
        draw.line(points, fill=dried, width=stem_w, joint="curve")
        if depth < 3:
            for _ in range(rng.randint(1, 3)):
                px_, py_ = rng.choice(points[3:])
                branch(px_, py_, angle + rng.uniform(-0.9, 0.9), length * 0.55, depth + 1)

    for _ in range(rng.randint(1, 3)):
        branch(rng.uniform(left + (right - left) * 0.3, right - (right - left) * 0.3), bottom,
               math.pi / 2 + rng.uniform(-0.3, 0.3), (bottom - top) * rng.uniform(0.6, 0.95),
               0)  # fmt: skip
    seed_r = max(1, _px(0.06, dpi))
    for _ in range(rng.randint(0, 60)):  # loose seeds: small dark dots, glyph-sized
        sx, sy = rng.uniform(left, right), rng.uniform(top, bottom)
        draw.ellipse((sx - seed_r, sy - seed_r * 0.7, sx + seed_r, sy + seed_r * 0.7),
                     fill=(60, 45, 30))  # fmt: skip
    for _ in range(rng.randint(2, 5)):  # mounting tape strips across stems
        tx, ty = rng.uniform(left, right), rng.uniform(top, bottom)
        tw, th = _px(rng.uniform(1.5, 3), dpi), _px(rng.uniform(0.4, 0.7), dpi)
        draw.rectangle((tx, ty, tx + tw, ty + th), fill=(238, 236, 226))


def _ellipse_leaf(
    draw: Any, at: tuple[float, float], angle: float, length: float,
    colour: tuple[int, int, int], rng: random.Random,
) -> None:  # fmt: skip
    width = length * rng.uniform(0.25, 0.45)
    points = []
    for k in range(24):
        t = 2 * math.pi * k / 24
        u, v = (1 + math.cos(t)) * length / 2, math.sin(t) * width / 2
        points.append((at[0] + u * math.cos(angle) - v * math.sin(angle),
                       at[1] - u * math.sin(angle) - v * math.cos(angle)))  # fmt: skip
    shade = tuple(max(0, c + rng.randint(-25, 25)) for c in colour)
    draw.polygon(points, fill=shade)


# --- labels ------------------------------------------------------------------------------


def _fields(rng: random.Random, language: str) -> dict[str, str]:
    day, year = rng.randint(1, 30), rng.randint(1905, 1995)
    month = rng.choice(MONTHS[language])
    collector = rng.choice(COLLECTORS)
    date = f"{day}. {month} {year}" if language == "da" else f"{day} {month} {year}"
    return {
        "header": rng.choice(HEADERS[language]),
        "family": rng.choice(FAMILIES),
        "taxon": rng.choice(TAXA),
        "locality": rng.choice(LOCALITIES[language]),
        "habitat": rng.choice(HABITATS[language]),
        "collector": f"{COLLECTED[language]} {collector}, {date}",
        "number": f"No. {rng.randint(100, 9999)}",
    }


def _text_line(
    img: Any, at: tuple[float, float], text: str, face: Any, ink: tuple[int, int, int],
    rng: random.Random, *, hand: bool = False,
) -> None:  # fmt: skip
    """A line of text; `hand`: letter by letter, each turned, lifted and sized a little
    differently (a steady hand, not a font's regular rhythm)."""
    from PIL import Image, ImageDraw

    if not hand:
        ImageDraw.Draw(img).text(at, text, fill=ink, font=face)
        return
    x, y = at
    size = face.size
    for char in text:
        if char == " ":
            x += size * rng.uniform(0.3, 0.45)
            continue
        glyph = Image.new("L", (size * 2, size * 2), 0)
        ImageDraw.Draw(glyph).text((size // 2, size // 3), char, fill=255, font=face)
        glyph = glyph.rotate(rng.uniform(-7, 7), resample=Image.Resampling.BICUBIC)
        box = glyph.getbbox()
        if box is None:
            continue
        lift = size * rng.uniform(-0.06, 0.06)
        img.paste(Image.new("RGB", glyph.size, ink),
                  (round(x - box[0]), round(y + lift - size // 3)), glyph)  # fmt: skip
        x += (box[2] - box[0]) + size * rng.uniform(0.04, 0.1)


def _label(
    fields: dict[str, str], dpi: int, rng: random.Random, *, faded: bool
) -> tuple[Any, list[str]]:
    """The label card with its fields laid out top to bottom; returns the card and notes."""
    from PIL import Image, ImageDraw

    body_pt, header_pt = rng.uniform(7, 10), rng.uniform(9, 12)
    body = _font(rng.choice(BODY_FONTS), _pt(body_pt, dpi))
    header = _font(rng.choice(HEADER_FONTS), _pt(header_pt, dpi))
    italic = _font(rng.choice(ITALIC_FONTS), _pt(body_pt * 1.1, dpi))
    paper = rng.choice(((255, 255, 255), (247, 240, 215), (240, 232, 200), (250, 248, 240)))
    ink = (
        (rng.randint(105, 135),) * 3 if faded
        else rng.choice(((15, 15, 15), (25, 30, 70), (40, 30, 25)))
    )  # fmt: skip
    card = Image.new("RGB", (_px(rng.uniform(10.5, 12.5), dpi), _px(7.0, dpi)), paper)
    draw = ImageDraw.Draw(card)
    margin = _px(0.45, dpi)
    y = float(margin)
    centred = rng.random() < 0.5
    order = ("header", "family", "taxon", "locality", "habitat", "collector", "number")
    for name in order:
        face = header if name == "header" else italic if name == "taxon" else body
        text = fields[name]
        width = draw.textlength(text, font=face)
        if width > card.width - 2 * margin:  # too long: a smaller size, as a typesetter would
            face = _font_like(face, face.size * (card.width - 2 * margin) / width)
            width = draw.textlength(text, font=face)
        x = (card.width - width) / 2 if centred and name != "number" else margin
        if name == "number":
            x = card.width - margin - width
        _text_line(card, (x, y), text, face, ink, rng)
        y += face.size * rng.uniform(1.35, 1.7)
    card = card.crop((0, 0, card.width, min(card.height, round(y + margin))))
    if rng.random() < 0.6:
        line_w = max(1, _px(0.03, dpi))
        ImageDraw.Draw(card).rectangle(
            (line_w, line_w, card.width - 1 - line_w, card.height - 1 - line_w),
            outline=ink,
            width=line_w,
        )
    return card, [f"label {body_pt:.1f} pt", "faded ink" if faded else "dark ink"]


def _font_like(face: Any, px: float) -> Any:
    from PIL import ImageFont

    return ImageFont.truetype(face.path, max(6, round(px)))


def _determination(taxon: str, dpi: int, rng: random.Random) -> tuple[Any, str]:
    """A determination slip written by hand: `Det. <name> <year>` over the taxon."""
    from PIL import Image

    text = f"Det. {rng.choice(COLLECTORS)} {rng.randint(1950, 2020)}"
    face = _font(rng.choice(HAND_FONTS), _pt(rng.uniform(11, 14), dpi))
    slip = Image.new("RGB", (_px(9.5, dpi), _px(2.6, dpi)), (250, 250, 244))
    ink = rng.choice(((20, 40, 120), (30, 30, 30)))
    _text_line(slip, (_px(0.4, dpi), _px(0.3, dpi)), text, face, ink, rng, hand=True)
    return slip, text


# --- codes -------------------------------------------------------------------------------


def _modules(payload: str, fmt: str) -> Any:
    """The code's modules as a boolean array (True: dark), without a quiet zone."""
    import numpy as np
    import zxingcpp

    code = zxingcpp.create_barcode(payload, getattr(zxingcpp.BarcodeFormat, fmt))
    return np.asarray(code.to_image(scale=1, add_quiet_zones=False)) < 128


def _sticker(payload: str, module_px: float, quiet: int, fmt: str = "DataMatrix") -> Any:
    """The code at a fractional module size, antialiased, on white with `quiet` modules
    around (a linear code gets bars 30 modules high)."""
    import numpy as np
    from PIL import Image

    dark = _modules(payload, fmt)
    if dark.shape[0] == 1 or fmt != "DataMatrix":
        dark = np.repeat(dark[:1], 30, axis=0)
    padded = np.pad(dark, quiet, constant_values=False)
    fine = 8  # drawn at 8 px per module, then scaled down: edges fall between pixels
    big = Image.fromarray(np.where(padded, 0, 255).astype(np.uint8)).resize(
        (padded.shape[1] * fine, padded.shape[0] * fine), Image.Resampling.NEAREST
    )
    size = (max(1, round(padded.shape[1] * module_px)), max(1, round(padded.shape[0] * module_px)))
    return big.resize(size, Image.Resampling.BOX).convert("RGB")


# --- device targets ----------------------------------------------------------------------


def _colour_checker(img: Any, dpi: int, rng: random.Random) -> None:
    """A 4x6 chart (portrait) on a black card, patches with rounded gaps."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    cell = _px(rng.uniform(3.2, 4.2), dpi)
    cols, rows = 4, 6
    x0 = rng.randint(_px(2, dpi), max(_px(2, dpi) + 1, img.width - cols * cell - _px(2, dpi)))
    y0 = rng.randint(_px(3, dpi), max(_px(3, dpi) + 1, img.height - rows * cell - _px(3, dpi)))
    gap = round(cell * 0.12)
    draw.rectangle((x0 - gap * 2, y0 - gap * 2, x0 + cols * cell + gap, y0 + rows * cell + gap),
                   fill=(20, 20, 20))  # fmt: skip
    order = list(range(24))
    for i, k in enumerate(order):
        cx, cy = x0 + (i % cols) * cell, y0 + (i // cols) * cell
        draw.rounded_rectangle((cx, cy, cx + cell - gap, cy + cell - gap), radius=gap // 2,
                               fill=CHECKER[k])  # fmt: skip


def _grey_scale(img: Any, dpi: int, rng: random.Random) -> None:
    """A strip of grey steps with their numbers printed under them."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    steps = rng.choice((11, 13, 19))
    cell = (img.width * rng.uniform(0.7, 0.9)) / steps
    x0, y0 = (img.width - cell * steps) / 2, img.height * rng.uniform(0.3, 0.6)
    height = _px(rng.uniform(2.5, 4), dpi)
    face = _font(BODY_FONTS[0], _pt(8, dpi))
    for i in range(steps):
        grey = round(248 - 236 * i / (steps - 1))
        draw.rectangle((x0 + i * cell, y0, x0 + (i + 1) * cell, y0 + height), fill=(grey,) * 3)
        draw.text((x0 + i * cell + cell / 3, y0 + height + _px(0.2, dpi)), str(i),
                  fill=(10, 10, 10), font=face)  # fmt: skip


# --- the sheet ---------------------------------------------------------------------------


def _free_spot(
    taken: list[tuple[int, int, int, int]], size: tuple[int, int], area: tuple[int, int, int, int],
    rng: random.Random, prefer: tuple[float, float] | None = None,
) -> tuple[int, int]:  # fmt: skip
    """A top-left corner inside `area` where a box of `size` overlaps nothing taken
    (rejection sampling; the last try is kept if the sheet is crowded)."""
    left, top, right, bottom = area
    spot = (left, top)
    for attempt in range(200):
        if prefer is not None and attempt < 40:
            x = round(
                left + (right - left - size[0]) * min(1, max(0, prefer[0] + rng.gauss(0, 0.05)))
            )
            y = round(
                top + (bottom - top - size[1]) * min(1, max(0, prefer[1] + rng.gauss(0, 0.03)))
            )
        else:
            x = rng.randint(left, max(left, right - size[0]))
            y = rng.randint(top, max(top, bottom - size[1]))
        spot = (x, y)
        box = (x, y, x + size[0], y + size[1])
        if all(box[2] < t[0] or t[2] < box[0] or box[3] < t[1] or t[3] < box[1] for t in taken):
            return spot
    return spot


def _paste_turned(
    img: Any, part: Any, at: tuple[int, int], angle: float
) -> tuple[int, int, int, int]:
    from PIL import Image

    mask = Image.new("L", part.size, 255)
    if angle:
        part = part.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
        mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    img.paste(part, at, mask)
    return (at[0], at[1], at[0] + part.width, at[1] + part.height)


def draw_sheet(seed: int, *, dpi: int | None = None, kind: str | None = None) -> tuple[Any, Truth]:
    """The upright scan of one sheet (an RGB image) and what is on it."""
    from PIL import Image

    rng = random.Random(f"field-sheet-{seed}")
    kind = kind or KINDS[(seed - 1) % len(KINDS)]
    dpi = dpi or rng.choice((150, 200, 250, 300, 400))
    truth = Truth(name=f"field-{seed:03d}", kind=kind, seed=seed, dpi=dpi,
                  is_target=kind in TARGET_KINDS)  # fmt: skip
    sheet_w, sheet_h = _px(SHEET_CM[0], dpi), _px(SHEET_CM[1], dpi)
    border = _px(rng.choice((0.0, 0.0, 1.0, 2.5)), dpi)
    backdrop = rng.choice(((255, 255, 255), (12, 12, 14), (30, 50, 110), (90, 90, 90)))
    img = Image.new("RGB", (sheet_w + 2 * border, sheet_h + 2 * border), backdrop)
    paper_rgb = rng.choice(((246, 244, 236), (238, 230, 205), (252, 252, 250), (228, 224, 214)))
    paper = (border, border, border + sheet_w, border + sheet_h)
    img.paste(paper_rgb, paper)
    taken: list[tuple[int, int, int, int]] = []
    if kind == "colour_checker":
        _colour_checker(img, dpi, rng)
    elif kind == "grey_scale":
        _grey_scale(img, dpi, rng)
    elif kind in ("specimen", "mso", "no_code", "no_label"):
        language = rng.choice(("da", "la", "en"))
        truth.notes.append(f"language {language}")
        # The plant first: labels and codes are glued on top where they overlap it.
        plant_area = (paper[0] + _px(2, dpi), paper[1] + _px(2, dpi), paper[2] - _px(2, dpi),
                      paper[3] - _px(10, dpi))  # fmt: skip
        _plant(img, plant_area, dpi, rng)
        if kind != "no_label":
            fields = _fields(rng, language)
            faded = rng.random() < 0.2
            card, notes = _label(fields, dpi, rng, faded=faded)
            truth.notes.extend(notes)
            at = _free_spot(taken, card.size, paper, rng, prefer=(0.95, 0.97))
            taken.append(_paste_turned(img, card, at, rng.uniform(-4, 4)))
            truth.fields = dict(fields)
            if rng.random() < 0.35:
                slip, text = _determination(fields["taxon"], dpi, rng)
                at = _free_spot(taken, slip.size, paper, rng, prefer=(0.9, 0.75))
                taken.append(_paste_turned(img, slip, at, rng.uniform(-3, 3)))
                truth.fields["determination"] = text
                truth.notes.append("handwritten slip")
        count = {"mso": rng.choice((2, 3)), "no_code": 0}.get(kind, 1)
        prefix = rng.choice(("NHMD-", "NHMD", "CPH-"))
        numbers = rng.sample(range(10000, 999999), count)
        for number in numbers:
            payload = f"{prefix}{number:06d}"
            module_mm = rng.uniform(0.3, 0.7)
            quiet = rng.randint(1, 4)
            sticker = _sticker(payload, module_mm / 10 / CM_PER_INCH * dpi, quiet)
            at = _free_spot(taken, sticker.size, paper, rng)
            taken.append(
                _paste_turned(img, sticker, at, rng.choice((0.0, 0.0, rng.uniform(-8, 8))))
            )
            truth.barcodes.append(payload)
            truth.notes.append(f"code {module_mm:.2f} mm/module, quiet {quiet}")
        if rng.random() < 0.25:
            old = f"C{rng.randint(10**7, 10**8 - 1)}"  # outside the convention: ignored
            sticker = _sticker(old, max(1.5, 0.25 / 10 / CM_PER_INCH * dpi), 6, fmt="Code128")
            at = _free_spot(taken, sticker.size, paper, rng)
            taken.append(_paste_turned(img, sticker, at, 0.0))
            truth.notes.append("old Code 128 accession number")
    else:
        truth.notes.append("blank page")
    if kind in ("specimen", "mso") and rng.random() < 0.3:
        strip = Image.new("RGB", (_px(6, dpi), _px(1, dpi)), (255, 255, 255))
        for i in range(6):
            strip.paste(CHECKER[i * 3], (i * strip.width // 6, 0, (i + 1) * strip.width // 6,
                                         strip.height))  # fmt: skip
        at = _free_spot(taken, strip.size, paper, rng)
        taken.append(_paste_turned(img, strip, at, 0.0))
        truth.notes.append("colour strip")
    return img, truth


def _degrade(img: Any, rng: random.Random, truth: Truth) -> Any:
    """Skew, turn, blur and noise of a real scan."""
    import numpy as np
    from PIL import Image, ImageFilter

    skew = rng.uniform(-2, 2) if rng.random() < 0.5 else 0.0
    if skew:
        img = img.rotate(skew, resample=Image.Resampling.BILINEAR, expand=True,
                         fillcolor=img.getpixel((0, 0)))  # fmt: skip
        truth.notes.append(f"skew {skew:.1f} deg")
    blur = rng.choice((0.0, 0.0, 0.6, 1.0))
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
        truth.notes.append(f"blur {blur}")
    sigma = rng.choice((0.0, 3.0, 6.0))
    if sigma:
        arr = np.asarray(img, dtype=np.float32)
        noise = np.random.default_rng(truth.seed).standard_normal(arr.shape[:2], np.float32)
        noise = (noise * sigma)[..., None]
        img = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))
    turned = rng.choice((0, 0, 0, 90, 180, 270))
    if turned:
        img = img.rotate(turned, expand=True)
        truth.turned = turned
    return img


def _encode(img: Any, rng: random.Random, truth: Truth) -> tuple[bytes, str]:
    """The file's bytes and suffix, in one of the formats and modes scanners write."""
    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    choice = rng.choice((
        "jpeg", "jpeg", "jpeg-exif", "jpeg-cmyk", "png", "png-grey", "png-16", "png-palette",
        "png-rgba", "tiff-deflate", "tiff-packbits-grey", "tiff-cmyk", "tiff-16", "tiff-pages",
        "tiff-raw",
    ))  # fmt: skip
    truth.file_format = choice
    dpi = (truth.dpi, truth.dpi)
    if choice == "jpeg":
        quality = rng.randint(55, 95)
        img.save(out, "JPEG", quality=quality, dpi=dpi, progressive=rng.random() < 0.3)
        truth.notes.append(f"JPEG quality {quality}")
        return out.getvalue(), ".jpg"
    if choice == "jpeg-exif":
        # Pixels stored turned; the Orientation tag says how to show them upright.
        orientation, stored = rng.choice(((6, Image.Transpose.ROTATE_90),
                                          (3, Image.Transpose.ROTATE_180),
                                          (8, Image.Transpose.ROTATE_270)))  # fmt: skip
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.transpose(stored).save(out, "JPEG", quality=88, exif=exif, dpi=dpi)
        truth.notes.append(f"EXIF orientation {orientation}")
        return out.getvalue(), ".jpeg"
    if choice == "jpeg-cmyk":
        img.convert("CMYK").save(out, "JPEG", quality=90)
        return out.getvalue(), ".jpg"
    if choice == "png":
        img.save(out, "PNG", dpi=dpi, compress_level=1)
        return out.getvalue(), ".png"
    if choice == "png-grey":
        img.convert("L").save(out, "PNG", compress_level=1)
        return out.getvalue(), ".png"
    if choice in ("png-16", "tiff-16"):
        grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        wide = Image.fromarray(grey)  # mode I;16: 16-bit grey, full range
        if choice == "png-16":
            wide.save(out, "PNG", compress_level=1)  # zlib over sensor noise is slow
        else:
            wide.save(out, "TIFF")
        return out.getvalue(), ".png" if choice == "png-16" else ".tif"
    if choice == "png-palette":
        img.quantize(colors=rng.choice((32, 64, 256))).save(out, "PNG", compress_level=1)
        return out.getvalue(), ".png"
    if choice == "png-rgba":
        rgba = img.convert("RGBA")
        rgba.save(out, "PNG", compress_level=1)
        return out.getvalue(), ".png"
    if choice == "tiff-deflate":
        img.save(out, "TIFF", compression="tiff_adobe_deflate", dpi=dpi)
    elif choice == "tiff-packbits-grey":
        img.convert("L").save(out, "TIFF", compression="packbits", dpi=dpi)
    elif choice == "tiff-cmyk":
        img.convert("CMYK").save(out, "TIFF", compression="tiff_lzw")
    elif choice == "tiff-pages":
        # The scan and, as the second page, a small preview (some scanners write both).
        preview = img.copy()
        preview.thumbnail((400, 400))
        img.save(out, "TIFF", save_all=True, append_images=[preview], compression="tiff_lzw")
    else:
        img.save(out, "TIFF", dpi=dpi)
    return out.getvalue(), ".tif"


def _broken(rng: random.Random, truth: Truth) -> tuple[bytes, str]:
    """A file no module can use, of one of the ways files break."""
    from PIL import Image

    how = rng.choice(("truncated", "empty", "text", "huge"))
    truth.broken = True
    truth.file_format = how
    if how == "empty":
        return b"", ".tif"
    if how == "text":
        return b"<html>502 Bad Gateway</html>\n", ".jpg"
    if how == "huge":
        # A valid PNG header claiming 60000 x 60000 pixels (3.6 Gpixel) over a few bytes of
        # data: decoding it would need gigabytes.
        def chunk(tag: bytes, data: bytes) -> bytes:
            body = tag + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
        data = zlib.compress(b"\x00" * 1000)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
                + chunk(b"IEND", b"")), ".png"  # fmt: skip
    out = io.BytesIO()
    Image.new("RGB", (1600, 2400), (240, 235, 220)).save(out, "JPEG", quality=90)
    data = out.getvalue()
    return data[: len(data) // 3], ".jpg"


def sheet(
    seed: int, *, dpi: int | None = None, kind: str | None = None
) -> tuple[bytes, str, Truth]:
    """One sheet's file (bytes and suffix) and its truth."""
    rng = random.Random(f"field-sheet-file-{seed}")
    kind = kind or KINDS[(seed - 1) % len(KINDS)]
    if kind == "broken":
        truth = Truth(name=f"field-{seed:03d}", kind=kind, seed=seed)
        data, suffix = _broken(rng, truth)
        return data, suffix, truth
    img, truth = draw_sheet(seed, dpi=dpi, kind=kind)
    img = _degrade(img, rng, truth)
    data, suffix = _encode(img, rng, truth)
    return data, suffix, truth


def write(
    folder: Path, seed: int, *, dpi: int | None = None, kind: str | None = None
) -> tuple[Path, Truth]:
    data, suffix, truth = sheet(seed, dpi=dpi, kind=kind)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{truth.name}{suffix}"
    path.write_bytes(data)
    return path, truth

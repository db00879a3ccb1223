"""Synthetic herbarium sheets, for tests and timing without real (and large, and licensed)
scans.

Each sheet is drawn like a scan of a mounted specimen: off-white mounting paper on a darker
scanner background, a green plant-like shape, a real Data Matrix following the payload
convention (`dassco_hpc.convention`), and a printed label in a TrueType font that tesseract
can read. Kinds:

- `specimen`: one specimen barcode (e.g. `NHMD-100001`);
- `mso`: two specimen barcodes on one sheet;
- `target`: a colour target (grid of patches) with `DEVICE-TARGET:<id>`;
- `mos_specimen` / `mos_label`: the two halves of a multi-object specimen sharing the
  disposable id (`MOS:<id>:specimen` on the sheet, `MOS:<id>:label` on the label's image);
- `no_barcode`: a specimen without any code; `empty_label`: a blank label, no text;
- `colour_checker` / `grey_scale`: device targets as they come from the maker, without any
  printed code (a 6x4 colour checker on a dark card; a strip of grey steps).

`draw(..., variation=Variation(...))` varies what real sheets vary in: where the label is, its
size, font (including a handwriting-like chancery where fonts-urw-base35 is installed),
rotation and language (English, Danish, Latin); paper texture and uneven illumination; a
specimen reaching over the label; a small colour bar on a specimen sheet (which must not make
it a device target); the Data Matrix's size and angle, or no code at all. `varied(seed)` picks
one such variation at random; `write()` saves as LZW TIFF or JPEG by the suffix.

Command line: `python -m dassco_hpc.synthetic OUTDIR [--count N] [--size WxH] [--varied]`
writes one sheet of each kind per count (needs the `modules` extra).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops, ImageDraw, ImageFont

from dassco_hpc.imaging import optional

KINDS = (
    "specimen", "mso", "target", "mos_specimen", "mos_label", "no_barcode", "empty_label",
    "colour_checker", "grey_scale",
)  # fmt: skip
#: Kinds that are device targets (with a printed code or without).
TARGET_KINDS = frozenset({"target", "colour_checker", "grey_scale"})
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "DejaVuSans.ttf",
)
#: Label faces a varied corpus picks from, where installed (fonts-liberation,
#: fonts-freefont-ttf, fonts-urw-base35). Z003 is a chancery hand: the nearest to handwriting
#: these packages have.
LABEL_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSerif.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/usr/share/fonts/opentype/urw-base35/C059-Roman.otf",
    "/usr/share/fonts/opentype/urw-base35/NimbusRoman-Italic.otf",
)
HANDWRITING_FONTS = ("/usr/share/fonts/opentype/urw-base35/Z003-MediumItalic.otf",)
LANGUAGES = ("en", "da", "la")
BACKGROUND = (52, 54, 58)
PAPER = (236, 232, 220)
LABEL_PAPER = (250, 250, 246)
INK = (20, 20, 24)
#: A 6x4 colour checker-like palette (sRGB).
PATCHES = [
    (115, 82, 68), (194, 150, 130), (98, 122, 157), (87, 108, 67), (133, 128, 177),
    (103, 189, 170), (214, 126, 44), (80, 91, 166), (193, 90, 99), (94, 60, 108),
    (157, 188, 64), (224, 163, 46), (56, 61, 150), (70, 148, 73), (175, 54, 60),
    (231, 199, 31), (187, 86, 149), (8, 133, 161), (243, 243, 242), (200, 200, 200),
    (160, 160, 160), (122, 122, 121), (85, 85, 85), (52, 52, 52),
]  # fmt: skip


@dataclass(frozen=True)
class Variation:
    """How one sheet departs from the plain layout; the defaults draw the plain sheet."""

    #: Top-left corner of the label as fractions of the paper (clamped so that it fits).
    label_at: tuple[float, float] = (0.44, 0.74)
    #: Text size relative to the plain sheet's (width / 64).
    text_scale: float = 1.0
    #: Path of the label's font; None: DejaVu Sans.
    font: str | None = None
    #: Label rotation in degrees (counter-clockwise).
    rotation: float = 0.0
    language: str = "en"
    #: Paper fibre texture strength (0: flat paper).
    texture: float = 0.0
    #: Darkening towards one corner, as a fraction of the brightness (0: even light).
    illumination: float = 0.0
    #: A leaf and stem of the specimen lie over the label's edge.
    overlap: bool = False
    #: A small colour bar (a specimen sheet's reference strip, not a device target).
    colour_bar: bool = False
    #: Data Matrix pixels per module (None: width / 280) and angle in degrees.
    code_px: int | None = None
    code_angle: float = 0.0
    #: False: the sheet carries no Data Matrix at all.
    code: bool = True


@dataclass(frozen=True)
class Sheet:
    """What is drawn on one image, so that a test can compare with what is read back."""

    kind: str
    payloads: list[str]
    label_lines: list[str] = field(default_factory=list)
    #: The label's box in image pixels (left, top, right, bottom); None without a label.
    label_box: tuple[int, int, int, int] | None = None
    variation: Variation = field(default_factory=Variation)

    @property
    def is_target(self) -> bool:
        return self.kind in TARGET_KINDS


def font(size: int, path: str | None = None) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The font at `path` if given and installed, else DejaVu Sans if installed (Debian:
    fonts-dejavu-core), else Pillow's own default font at the size (Pillow >= 10.1 scales
    it; older ones give a tiny bitmap font)."""
    for candidate in ((path,) if path else ()) + FONT_CANDIDATES:
        try:
            return ImageFont.truetype(candidate, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def installed_fonts(handwriting: bool = False) -> list[str]:
    """The label fonts (or handwriting-like fonts) installed on this machine."""
    return [f for f in (HANDWRITING_FONTS if handwriting else LABEL_FONTS) if Path(f).is_file()]


def datamatrix(payload: str, module_px: int) -> Image.Image:
    """A Data Matrix of the payload, `module_px` pixels per module, with its quiet zone."""
    zxing = optional("zxingcpp", "zxing-cpp")
    fmt = zxing.BarcodeFormat.DataMatrix
    if hasattr(zxing, "create_barcode"):  # zxing-cpp >= 2.3
        bitmap: Any = zxing.create_barcode(payload, fmt).to_image(scale=module_px)
    else:  # pragma: no cover - zxing-cpp 2.2
        bitmap = zxing.write_barcode(fmt, payload, quiet_zone=2)
    img = Image.fromarray(bitmap).convert("L")
    if not hasattr(zxing, "create_barcode"):  # pragma: no cover
        img = img.resize((img.width * module_px, img.height * module_px), Image.Resampling.NEAREST)
    return img.convert("RGB")


def _leaf(
    draw: ImageDraw.ImageDraw, base: tuple[float, float], length: float, angle: float,
    side: int, rng: random.Random,
) -> None:  # fmt: skip
    px, py = base
    tip = (px + side * length * math.cos(angle), py - length * math.sin(angle))
    mid = ((px + tip[0]) / 2, (py + tip[1]) / 2)
    half = length * 0.18
    leaf = [
        (px, py),
        (mid[0] - half * math.sin(angle) * side, mid[1] - half * math.cos(angle)),
        tip,
        (mid[0] + half * math.sin(angle) * side, mid[1] + half * math.cos(angle)),
    ]
    green = (rng.randint(60, 95), rng.randint(110, 140), rng.randint(40, 70))
    draw.polygon(leaf, fill=green, outline=(50, 80, 30))


def _plant(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], rng: random.Random) -> None:
    """A stem with leaves and a few flower heads: enough structure to look like a pressed
    plant to a thresholding crop and to tempt OCR into false words."""
    left, top, right, bottom = box
    width = right - left
    x = left + width / 2
    stroke = max(2, width // 90)
    points = []
    for i in range(9):
        y = bottom - (bottom - top) * i / 8
        points.append((x + rng.uniform(-0.08, 0.08) * width, y))
    draw.line(points, fill=(72, 96, 40), width=stroke * 2)
    for px, py in points[1:-1]:
        for side in (-1, 1):
            length = rng.uniform(0.18, 0.32) * width
            _leaf(draw, (px, py), length, math.radians(rng.uniform(20, 55)), side, rng)
    hx, hy = points[-1]
    for _ in range(3):
        r = width * rng.uniform(0.03, 0.05)
        cx, cy = hx + rng.uniform(-r, r) * 2, hy + rng.uniform(-r, r)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(150, 120, 60))


def _label_card(lines: Sequence[str], text_px: int, face_path: str | None) -> Image.Image:
    """The label as its own card, sized to its text."""
    face = font(text_px, face_path)
    pad, step = text_px, round(text_px * 1.5)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    widths = [probe.textlength(line, font=face) for line in lines] or [0.0]
    width = max(round(max(widths)) + 2 * pad, 12 * text_px)
    height = max(len(lines), 3) * step + 2 * pad
    card = Image.new("RGB", (width, height), LABEL_PAPER)
    draw = ImageDraw.Draw(card)
    draw.rectangle((0, 0, width - 1, height - 1), outline=INK, width=max(1, text_px // 12))
    y = pad
    for line in lines:
        draw.text((pad, y), line, fill=INK, font=face)
        y += step
    return card


def _place_label(
    img: Image.Image, card: Image.Image, at: tuple[int, int], rotation: float
) -> tuple[int, int, int, int]:
    """Paste the card with its top-left at `at`, rotated; returns the box it covers."""
    if rotation:
        mask = Image.new("L", card.size, 255).rotate(
            rotation, expand=True, resample=Image.Resampling.BICUBIC
        )
        card = card.rotate(rotation, expand=True, resample=Image.Resampling.BICUBIC)
    else:
        mask = Image.new("L", card.size, 255)
    img.paste(card, at, mask)
    return (at[0], at[1], at[0] + card.width, at[1] + card.height)


def specimen_lines(barcode: str, rng: random.Random, language: str = "en") -> list[str]:
    """The text of a herbarium label in English, Danish or Latin (the barcode last)."""
    taxon = rng.choice(
        ["Carex nigra (L.) Reichard", "Ranunculus acris L.", "Plantago major L.", "Poa annua L.",
         "Viola palustris L.", "Juncus effusus L.", "Salix repens L."]
    )  # fmt: skip
    day, year = rng.randint(1, 28), rng.randint(1890, 1990)
    collector = rng.choice(["A. Hansen", "K. Jessen", "M. Lange", "J. Grøntved", "C. Raunkiær"])
    if language == "da":
        place = rng.choice(["Sjælland, Hillerød", "Jylland, Viborg", "Fyn, Odense", "Møn, Klint"])
        lines = [
            "STATENS NATURHISTORISKE MUSEUM",
            "Herbarium C - Karplanter",
            taxon,
            f"Danmark: {place}",
            rng.choice(["Fugtig eng ved søen", "Tør skrænt mod syd", "Skovbund under bøg"]),
            f"Leg. {collector} {day}. juni {year}",
        ]
    elif language == "la":
        lines = [
            "HERBARIUM MUSEI HAUNIENSIS",
            "Flora Danica exsiccata",
            taxon,
            rng.choice(["Habitat in pratis humidis", "Crescit in silvis umbrosis"]),
            f"Legit {collector} die {day} mensis Junii {year}",
        ]
    else:
        place = rng.choice(["Zealand, Hillerod", "Jutland, Viborg", "Funen, Odense", "Bornholm"])
        lines = [
            "NATURAL HISTORY MUSEUM OF DENMARK",
            "Herbarium C - Vascular plants",
            taxon,
            f"Denmark: {place}",
            f"Leg. {collector} {day} June {year}",
        ]
    return [*lines, barcode] if barcode else lines


def varied(seed: int) -> Variation:
    """A random variation (reproducible per seed): every property real sheets vary in."""
    rng = random.Random(f"variation-{seed}")
    handwriting = installed_fonts(handwriting=True)
    fonts = installed_fonts()
    face = (
        rng.choice(handwriting) if handwriting and rng.random() < 0.2
        else rng.choice(fonts) if fonts else None
    )  # fmt: skip
    return Variation(
        label_at=(
            rng.uniform(0.02, 0.55),
            rng.choice([rng.uniform(0.02, 0.2), rng.uniform(0.55, 0.78)]),
        ),
        text_scale=rng.uniform(0.7, 1.3),
        font=face,
        rotation=rng.uniform(-5, 5),
        language=rng.choice(LANGUAGES),
        texture=rng.uniform(0, 1),
        illumination=rng.uniform(0, 0.3),
        overlap=rng.random() < 0.4,
        colour_bar=rng.random() < 0.3,
        code_px=rng.randint(8, 22),
        code_angle=rng.choice([0.0, 90.0, rng.uniform(0, 360)]),
        code=rng.random() > 0.1,
    )


def _colour_checker(
    img: Image.Image,
    paper: tuple[int, int, int, int],
    rng: random.Random,
    scale: float = 0.8,
    origin: tuple[float, float] | None = None,
) -> None:
    """A 6x4 colour checker: patches with dark gaps on a dark card."""
    draw = ImageDraw.Draw(img)
    cols, rows = 6, 4
    width = (paper[2] - paper[0]) * scale
    cell = width / cols
    x0, y0 = origin or (
        paper[0] + (paper[2] - paper[0]) * (1 - scale) / 2,
        paper[1] + (paper[3] - paper[1]) * rng.uniform(0.2, 0.45),
    )
    draw.rectangle((x0 - cell * 0.15, y0 - cell * 0.15, x0 + cell * (cols + 0.05),
                    y0 + cell * (rows + 0.05)), fill=(30, 30, 32))  # fmt: skip
    for i, colour in enumerate(PATCHES):
        cx, cy = x0 + (i % cols) * cell, y0 + (i // cols) * cell
        draw.rectangle((cx, cy, cx + cell * 0.9, cy + cell * 0.9), fill=colour)


def _grey_scale(img: Image.Image, paper: tuple[int, int, int, int], rng: random.Random) -> None:
    """A strip of grey steps from white to black, adjacent without gaps (a Kodak-style
    grey scale), one or two rows."""
    draw = ImageDraw.Draw(img)
    steps = rng.choice([10, 12, 20])
    rows = 2 if steps == 20 else 1
    per_row = steps // rows
    width = (paper[2] - paper[0]) * rng.uniform(0.7, 0.9)
    cell = width / per_row
    x0 = paper[0] + ((paper[2] - paper[0]) - width) / 2
    y0 = paper[1] + (paper[3] - paper[1]) * rng.uniform(0.25, 0.55)
    height = cell * rng.uniform(1.2, 2.0)
    for i in range(steps):
        grey = round(245 - 230 * i / (steps - 1))
        cx, cy = x0 + (i % per_row) * cell, y0 + (i // per_row) * height
        draw.rectangle((cx, cy, cx + cell, cy + height), fill=(grey, grey, grey))


def _colour_bar(img: Image.Image, at: tuple[int, int], cell: int) -> None:
    """A specimen sheet's small reference strip: one row of six patches."""
    draw = ImageDraw.Draw(img)
    for i, colour in enumerate(PATCHES[:6]):
        x = at[0] + i * cell
        draw.rectangle((x, at[1], x + cell - 2, at[1] + cell - 2), fill=colour)


def _place_codes(
    img: Image.Image, codes: list[Image.Image], paper: tuple[int, int, int, int],
    label_box: tuple[int, int, int, int] | None,
) -> None:  # fmt: skip
    """The codes one under the other, in the first paper corner (top right first, as DaSSCo
    places them) where they stay clear of the label."""
    width, height = img.size
    column_w = max(c.width for c in codes)
    column_h = sum(c.height for c in codes) + round(height * 0.02) * (len(codes) - 1)
    inset_x, inset_y = round(width * 0.04), round(height * 0.03)
    corners = [
        (paper[2] - column_w - inset_x, paper[1] + inset_y),
        (paper[0] + inset_x, paper[1] + inset_y),
        (paper[2] - column_w - inset_x, paper[3] - column_h - inset_y),
        (paper[0] + inset_x, paper[3] - column_h - inset_y),
    ]
    x, y = corners[0]
    for cx, cy in corners:
        if label_box is None or not (
            cx < label_box[2] and label_box[0] < cx + column_w
            and cy < label_box[3] and label_box[1] < cy + column_h
        ):  # fmt: skip
            x, y = cx, cy
            break
    for code in codes:
        img.paste(code, (x + column_w - code.width, y))
        y += code.height + round(height * 0.02)


def _finish(img: Image.Image, variation: Variation, rng: random.Random) -> Image.Image:
    """Paper texture and uneven illumination, as a scan of real paper shows them."""
    if not (variation.texture or variation.illumination):
        return img
    import numpy as np

    arr = np.asarray(img, dtype=np.float32)
    height, width = arr.shape[:2]
    if variation.texture:
        # Fibres: blotches from noise at a coarse grid, stretched, plus fine grain.
        coarse = np.random.default_rng(rng.randint(0, 1 << 30)).normal(
            0, 1, (max(2, height // 40), max(2, width // 40))
        )
        blotch = np.asarray(
            Image.fromarray(((coarse + 3) * 40).clip(0, 255).astype(np.uint8)).resize(
                (width, height), Image.Resampling.BILINEAR
            ),
            dtype=np.float32,
        )
        arr += ((blotch - 120) * 0.06 * variation.texture)[..., None]
    if variation.illumination:
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        cx, cy = rng.choice([(0, 0), (width, 0), (0, height), (width, height)])
        dist = np.hypot(xs - cx, ys - cy) / math.hypot(width, height)
        arr *= (1 - variation.illumination * (1 - dist))[..., None]
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def draw(
    kind: str,
    size: tuple[int, int] = (1200, 1800),
    seed: int = 1,
    noise: float = 0.0,
    variation: Variation | None = None,
) -> tuple[Image.Image, Sheet]:
    """One synthetic scan of the given kind (see the module docstring); `noise` is the
    standard deviation of grey sensor noise added (0: clean, flat colours)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    var = variation or Variation()
    rng = random.Random(f"{kind}-{seed}")
    width, height = size
    img = Image.new("RGB", size, BACKGROUND)
    draw_ = ImageDraw.Draw(img)
    margin_x, margin_y = round(width * 0.045), round(height * 0.035)
    paper = (margin_x, margin_y, width - margin_x, height - margin_y)
    draw_.rectangle(paper, fill=PAPER)
    module_px = var.code_px or max(3, width // 280)
    text_px = max(14, round(width / 64 * var.text_scale))
    number = 100000 + seed
    barcode = f"NHMD-{number}"
    disposable = f"D{number:06d}"
    payloads: list[str] = []
    lines: list[str] = []
    label_box: tuple[int, int, int, int] | None = None

    def label(text: list[str]) -> tuple[int, int, int, int]:
        card = _label_card(text, text_px, var.font)
        pw, ph = paper[2] - paper[0], paper[3] - paper[1]
        x = paper[0] + min(round(var.label_at[0] * pw), max(0, pw - card.width - 20))
        y = paper[1] + min(round(var.label_at[1] * ph), max(0, ph - card.height - 20))
        return _place_label(img, card, (x, y), var.rotation)

    if kind == "target":
        payloads = [f"DEVICE-TARGET:CT-{seed:04d}"]
        _colour_checker(
            img,
            paper,
            rng,
            origin=(paper[0] + (paper[2] - paper[0]) * 0.1, paper[1] + (paper[3] - paper[1]) * 0.3),
        )
    elif kind == "colour_checker":
        _colour_checker(img, paper, rng, scale=rng.uniform(0.5, 0.85))
    elif kind == "grey_scale":
        _grey_scale(img, paper, rng)
    elif kind == "mos_label":
        # The label's own image: a card on the scanner, no plant.
        payloads = [f"MOS:{disposable}:label"]
        lines = specimen_lines("", rng, var.language)[:5]
        label_box = label(lines)
    else:
        lines = [] if kind == "empty_label" else specimen_lines(barcode, rng, var.language)
        # The plant keeps to the half of the paper the label is not in.
        label_low = var.label_at[1] >= 0.4
        top = paper[1] + round(height * (0.12 if label_low else 0.35))
        bottom = paper[3] - round(height * (0.3 if label_low else 0.05))
        _plant(draw_, (paper[0] + round(width * 0.1), top, paper[0] + round(width * 0.55),
                       bottom), rng)  # fmt: skip
        label_box = label(lines)
        if var.overlap:
            # A leaf from outside over the label's left edge, clear of the text column.
            lx, ly = label_box[0], (label_box[1] + label_box[3]) / 2
            _leaf(draw_, (lx - text_px * 4, ly), text_px * 4.7, math.radians(10), 1, rng)
        if kind in ("specimen", "empty_label"):
            payloads = [barcode]
        elif kind == "mso":
            payloads = [barcode, f"NHMD-{number + 500000}"]
        elif kind == "mos_specimen":
            payloads = [barcode, f"MOS:{disposable}:specimen"]
        if var.colour_bar:
            _colour_bar(img, (paper[0] + round(width * 0.03), paper[3] - round(height * 0.05)),
                        max(8, width // 60))  # fmt: skip
    if not var.code:
        payloads = []
    codes = []
    for payload in payloads:
        code = datamatrix(payload, module_px)
        if var.code_angle:
            code = code.rotate(var.code_angle, expand=True, fillcolor=(255, 255, 255))
        codes.append(code)
    if codes:
        _place_codes(img, codes, paper, label_box)
    img = _finish(img, var, rng)
    if noise > 0:
        grain = Image.effect_noise(size, noise).convert("RGB")
        img = ImageChops.add(img, grain, scale=1.0, offset=-128)
    sheet = Sheet(kind=kind, payloads=payloads, label_lines=lines, label_box=label_box,
                  variation=var)  # fmt: skip
    return img, sheet


def write(
    path: Path,
    kind: str,
    size: tuple[int, int] = (1200, 1800),
    seed: int = 1,
    *,
    noise: float = 0.0,
    compression: str | None = "tiff_lzw",
    variation: Variation | None = None,
    quality: int = 90,
) -> Sheet:
    """Draw a sheet and save it (format from the suffix; TIFF with LZW compression unless
    `compression` is None: uncompressed, the size of a real scanner's output; JPEG at
    `quality`)."""
    img, sheet = draw(kind, size, seed, noise, variation)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        img.save(path, compression=compression or "raw", dpi=(400, 400))
    elif suffix in (".jpg", ".jpeg"):
        img.save(path, quality=quality, dpi=(400, 400))
    else:
        img.save(path)
    return sheet


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, not {text!r}") from None
    if w < 400 or h < 400:
        raise argparse.ArgumentTypeError("size must be at least 400x400")
    return w, h


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dassco_hpc.synthetic", description="Draw synthetic herbarium sheets."
    )
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--count", type=int, default=1, help="sheets of each kind (default 1)")
    parser.add_argument("--size", type=_size, default=(4000, 6000), help="WxH (default 4000x6000)")
    parser.add_argument("--kind", choices=KINDS, action="append", help="only these kinds")
    parser.add_argument("--noise", type=float, default=0.0, help="sensor noise sigma (e.g. 6)")
    parser.add_argument("--raw", action="store_true", help="uncompressed TIFF (real size)")
    parser.add_argument("--varied", action="store_true", help="a random variation per sheet")
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    for seed in range(1, args.count + 1):
        for kind in args.kind or KINDS:
            path = args.outdir / f"{kind}-{seed:03d}.tif"
            sheet = write(
                path, kind, args.size, seed, noise=args.noise,
                compression=None if args.raw else "tiff_lzw",
                variation=varied(seed) if args.varied else None,
            )  # fmt: skip
            print(f"{path}\t{' '.join(sheet.payloads) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

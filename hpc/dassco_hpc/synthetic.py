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
- `no_barcode`: a specimen without any code; `empty_label`: a blank label, no text.

Command line: `python -m dassco_hpc.synthetic OUTDIR [--count N] [--size WxH]` writes one
sheet of each kind per count as TIFF (needs the `modules` extra).
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

KINDS = ("specimen", "mso", "target", "mos_specimen", "mos_label", "no_barcode", "empty_label")
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "DejaVuSans.ttf",
)
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
class Sheet:
    """What is drawn on one image, so that a test can compare with what is read back."""

    kind: str
    payloads: list[str]
    label_lines: list[str] = field(default_factory=list)


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans if installed (Debian: fonts-dejavu-core), else Pillow's own default font
    at the size (Pillow >= 10.1 scales it; older ones give a tiny bitmap font)."""
    for candidate in FONT_CANDIDATES:
        try:
            return ImageFont.truetype(candidate, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


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
            angle = math.radians(rng.uniform(20, 55))
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
    hx, hy = points[-1]
    for _ in range(3):
        r = width * rng.uniform(0.03, 0.05)
        cx, cy = hx + rng.uniform(-r, r) * 2, hy + rng.uniform(-r, r)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(150, 120, 60))


def _label(
    img: Image.Image, box: tuple[int, int, int, int], lines: Sequence[str], text_px: int
) -> None:
    draw = ImageDraw.Draw(img)
    draw.rectangle(box, fill=LABEL_PAPER, outline=INK, width=max(1, text_px // 12))
    face = font(text_px)
    y = box[1] + text_px
    for line in lines:
        draw.text((box[0] + text_px, y), line, fill=INK, font=face)
        y += round(text_px * 1.5)


def specimen_lines(barcode: str, rng: random.Random) -> list[str]:
    taxon = rng.choice(
        ["Carex nigra (L.) Reichard", "Ranunculus acris L.", "Plantago major L.", "Poa annua L."]
    )
    place = rng.choice(["Zealand, Hillerod", "Jutland, Viborg", "Funen, Odense", "Bornholm"])
    return [
        "NATURAL HISTORY MUSEUM OF DENMARK",
        "Herbarium C - Vascular plants",
        taxon,
        f"Denmark: {place}",
        f"Leg. A. Hansen {rng.randint(1, 28)} June {rng.randint(1890, 1990)}",
        barcode,
    ]


def draw(
    kind: str, size: tuple[int, int] = (1200, 1800), seed: int = 1, noise: float = 0.0
) -> tuple[Image.Image, Sheet]:
    """One synthetic scan of the given kind (see the module docstring); `noise` is the
    standard deviation of grey sensor noise added (0: clean, flat colours)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    rng = random.Random(f"{kind}-{seed}")
    width, height = size
    img = Image.new("RGB", size, BACKGROUND)
    draw_ = ImageDraw.Draw(img)
    margin_x, margin_y = round(width * 0.045), round(height * 0.035)
    paper = (margin_x, margin_y, width - margin_x, height - margin_y)
    draw_.rectangle(paper, fill=PAPER)
    module_px = max(3, width // 280)
    text_px = max(14, width // 64)
    number = 100000 + seed
    barcode = f"NHMD-{number}"
    disposable = f"D{number:06d}"
    payloads: list[str] = []
    lines: list[str] = []
    label_box = (
        round(width * 0.44), round(height * 0.74), paper[2] - round(width * 0.03),
        paper[3] - round(height * 0.02),
    )  # fmt: skip

    if kind == "target":
        payloads = [f"DEVICE-TARGET:CT-{seed:04d}"]
        cols = 6  # x 4 rows
        cell = (paper[2] - paper[0]) * 0.8 / cols
        x0, y0 = paper[0] + (paper[2] - paper[0]) * 0.1, paper[1] + (paper[3] - paper[1]) * 0.3
        for i, colour in enumerate(PATCHES):
            cx, cy = x0 + (i % cols) * cell, y0 + (i // cols) * cell
            draw_.rectangle((cx, cy, cx + cell * 0.9, cy + cell * 0.9), fill=colour)
    elif kind == "mos_label":
        # The label's own image: a card on the scanner, no plant.
        payloads = [f"MOS:{disposable}:label"]
        lines = specimen_lines("", rng)[:5]
        _label(img, label_box, lines, text_px)
    else:
        _plant(
            draw_,
            (paper[0] + round(width * 0.1), paper[1] + round(height * 0.12),
             paper[0] + round(width * 0.55), label_box[1] - round(height * 0.03)),
            rng,
        )  # fmt: skip
        lines = [] if kind == "empty_label" else specimen_lines(barcode, rng)
        _label(img, label_box, lines, text_px)
        if kind in ("specimen", "empty_label"):
            payloads = [barcode]
        elif kind == "mso":
            payloads = [barcode, f"NHMD-{number + 500000}"]
        elif kind == "mos_specimen":
            payloads = [barcode, f"MOS:{disposable}:specimen"]
    # Codes along the top right of the paper, one under the other.
    y = paper[1] + round(height * 0.03)
    for payload in payloads:
        code = datamatrix(payload, module_px)
        img.paste(code, (paper[2] - code.width - round(width * 0.04), y))
        y += code.height + round(height * 0.02)
    if noise > 0:
        grain = Image.effect_noise(size, noise).convert("RGB")
        img = ImageChops.add(img, grain, scale=1.0, offset=-128)
    return img, Sheet(kind=kind, payloads=payloads, label_lines=lines)


def write(
    path: Path,
    kind: str,
    size: tuple[int, int] = (1200, 1800),
    seed: int = 1,
    *,
    noise: float = 0.0,
    compression: str | None = "tiff_lzw",
) -> Sheet:
    """Draw a sheet and save it (format from the suffix; TIFF with LZW compression unless
    `compression` is None: uncompressed, the size of a real scanner's output)."""
    img, sheet = draw(kind, size, seed, noise)
    if path.suffix.lower() in (".tif", ".tiff"):
        img.save(path, compression=compression or "raw", dpi=(400, 400))
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
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    for seed in range(1, args.count + 1):
        for kind in args.kind or KINDS:
            path = args.outdir / f"{kind}-{seed:03d}.tif"
            sheet = write(
                path, kind, args.size, seed, noise=args.noise,
                compression=None if args.raw else "tiff_lzw",
            )  # fmt: skip
            print(f"{path}\t{' '.join(sheet.payloads) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared helpers of the image modules: finding an asset's images, opening them, trimming the
scanner background, and loading the optional third-party packages.

The runner must work on a bare Python, so nothing here imports Pillow, zxing-cpp or
pytesseract at import time: each is imported when a module needs it, and a missing one is a
non-retryable failure that names the extra to install (another attempt on the same node
cannot help).
"""

from __future__ import annotations

import importlib
import math
import os
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dassco_hpc.context import JobContext
from dassco_hpc.errors import ModuleFailed

if TYPE_CHECKING:
    from PIL.Image import Image

EXTRA = "pip install 'dassco-hpc[modules]'"
IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".jpg", ".jpeg", ".png"})
#: Where the derivatives module writes its files (below the work folder, so that they are
#: never taken for the asset's own images).
DERIVATIVES_DIR = "derivatives"
#: Pillow refuses images above ~89 Mpixel as a decompression-bomb guard; herbarium scans can
#: be larger, so the limit is raised (DASSCO_MAX_IMAGE_MPIXELS, default 400).
DEFAULT_MAX_MPIXELS = 400.0
CHUNK = 1 << 20


def optional(name: str, package: str) -> Any:
    """Import a third-party package of the `modules` extra, or fail for good naming it.

    Imported by name so that neither the runner nor mypy needs it installed (pytesseract
    ships no type information)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ModuleFailed(
            f"the Python package {package} is missing ({exc}); install the image modules "
            f"with: {EXTRA}",
            retryable=False,
        ) from None


def pillow() -> Any:
    """PIL.Image, with the pixel limit from DASSCO_MAX_IMAGE_MPIXELS."""
    image = optional("PIL.Image", "Pillow")
    image.MAX_IMAGE_PIXELS = int(
        number(os.environ, "DASSCO_MAX_IMAGE_MPIXELS", DEFAULT_MAX_MPIXELS) * 1_000_000
    )
    return image


def number(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    """A numeric setting; a bad value is a non-retryable failure naming the variable."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= minimum:  # also catches NaN
        raise ModuleFailed(f"{name} must be a number >= {minimum}, not {raw!r}", retryable=False)
    return value


def _images_in(folder: Path) -> list[Path]:
    try:
        return sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
    except OSError:
        return []


def source_images(ctx: JobContext) -> list[Path]:
    """The asset's images: those `load` copied into the work folder, else those in
    DASSCO_ASSET_FILES, else the links' local paths. Non-retryable failure if none."""
    found = _images_in(ctx.workdir)
    if not found and ctx.asset_files is not None:
        found = _images_in(ctx.asset_files)
    if not found:
        files = ctx.links().get("files") or []
        for entry in files:
            local = entry.get("local_path") if isinstance(entry, Mapping) else None
            if local and Path(local).suffix.lower() in IMAGE_SUFFIXES and Path(local).is_file():
                found.append(Path(local))
    if not found:
        raise ModuleFailed(
            f"no image of asset {ctx.guid} in the work folder, DASSCO_ASSET_FILES or the "
            "links' local paths (has the load job run?)",
            retryable=False,
        )
    return found


def open_image(path: Path) -> Image:
    """The image as it is meant to be seen, as 8-bit RGB or grey ("RGB" or "L"), or a
    non-retryable failure that says why the file cannot be used.

    What scanners and cameras write varies, and every module expects the same picture:

    - the EXIF orientation is applied (a camera stores the pixels as the sensor saw them and
      says in a tag how to turn them);
    - 16-bit and 32-bit grey is brought to 8 bits by its own bit depth (12-bit data in a
      16-bit file is scaled by 4095, not 65535): a plain conversion clips it to white;
    - CMYK, palette, Lab and the like become RGB; transparency is laid on white paper;
    - of a multi-page TIFF the largest page is the scan (others are previews or masks);
    - an image with more pixels than DASSCO_MAX_IMAGE_MPIXELS is refused before it is
      decoded (its header is read, not its pixels), with the size and the setting to raise.

    Any error while decoding (truncated, empty or no image at all, a malformed header) is the
    same failure: reading the file again cannot help."""
    pil = pillow()
    limit = pil.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # Between the limit and twice it Pillow only warns: the size is checked below.
            warnings.simplefilter("ignore", pil.DecompressionBombWarning)
            img = pil.open(path)
        with img:
            _largest_page(img)
            if limit and img.width * img.height > limit:
                raise ModuleFailed(
                    f"{path.name}: {img.width}x{img.height} is "
                    f"{img.width * img.height / 1e6:.0f} Mpixel, more than the "
                    f"{limit / 1e6:.0f} allowed (raise DASSCO_MAX_IMAGE_MPIXELS if the "
                    "scan is real and the node has the memory)",
                    retryable=False,
                )
            img.load()
            loaded = _upright(img)
            return _eight_bit(loaded)
    except ModuleFailed:
        raise
    except pil.DecompressionBombError as exc:
        # Pillow refuses at twice the limit already when it reads the header.
        raise ModuleFailed(
            f"{path.name}: more than the {limit / 1e6:.0f} Mpixel allowed ({exc}); raise "
            "DASSCO_MAX_IMAGE_MPIXELS if the scan is real and the node has the memory",
            retryable=False,
        ) from None
    except MemoryError:
        raise ModuleFailed(
            f"{path.name}: not enough memory to decode the image (give the job more memory, "
            "or lower DASSCO_MAX_IMAGE_MPIXELS to refuse such images)",
            retryable=True,
        ) from None
    except Exception as exc:  # decoders raise anything on a malformed file
        kind = "unreadable" if isinstance(exc, OSError) else f"malformed ({type(exc).__name__})"
        raise ModuleFailed(f"{path.name}: {kind} image: {exc}", retryable=False) from None


def _largest_page(img: Any) -> None:
    """Seek a multi-page file to its largest page (the scan, not a preview)."""
    frames = getattr(img, "n_frames", 1)
    if frames <= 1:
        return
    best, best_pixels = 0, -1
    for index in range(min(frames, 16)):
        img.seek(index)
        if img.width * img.height > best_pixels:
            best, best_pixels = index, img.width * img.height
    img.seek(best)


def _upright(img: Image) -> Image:
    """The image turned as its EXIF orientation says (a copy, detached from the file)."""
    from PIL import ImageOps

    try:
        turned = ImageOps.exif_transpose(img)
    except Exception:  # a damaged EXIF block must not lose the image
        turned = None
    return turned if turned is not None and turned is not img else img.copy()


def _eight_bit(img: Image) -> Image:
    """8-bit RGB or grey, whatever mode the file had."""
    if img.mode in ("RGB", "L"):
        return img
    if img.mode == "1":
        return img.convert("L")
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return _grey_to_eight_bit(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        paper: Image = pillow().new("RGBA", rgba.size, (255, 255, 255, 255))
        paper.alpha_composite(rgba)
        return paper.convert("L" if img.mode in ("LA", "La") else "RGB")
    return img.convert("RGB")


def _grey_to_eight_bit(img: Image) -> Image:
    """Deep grey scaled by the bit depth its values use (8, 10, 12, 14 or 16 bits; floats
    in 0-1 or 0-255)."""
    np = optional("numpy", "numpy")
    values = np.asarray(img, dtype=np.float64)
    top = float(values.max()) if values.size else 0.0
    if img.mode == "F" and top <= 1.0:
        full = 1.0
    elif top <= 255:
        full = 255.0
    else:
        full = float(2 ** math.ceil(math.log2(top + 1)) - 1)
    scaled = np.clip(values * (255.0 / full), 0, 255).round().astype(np.uint8)
    eight: Image = pillow().fromarray(scaled)
    return eight


def _otsu(histogram: list[int]) -> int:
    """The grey level that best separates a 256-bin histogram into two classes."""
    total = sum(histogram)
    weighted = sum(i * h for i, h in enumerate(histogram))
    best, best_level = -1.0, 127
    below = below_weighted = 0.0
    for level in range(256):
        below += histogram[level]
        if below == 0 or below == total:
            continue
        below_weighted += level * histogram[level]
        mean_low = below_weighted / below
        mean_high = (weighted - below_weighted) / (total - below)
        between = below * (total - below) * (mean_low - mean_high) ** 2
        if between > best:
            best, best_level = between, level
    return best_level


def content_box(img: Image, *, margin: float = 0.005) -> tuple[int, int, int, int]:
    """The sheet's box without the scanner background around it.

    The mounting paper is the bright part of the scan and the scanner bed (or the cloth
    behind the sheet) is darker, so the box is the extent of the pixels brighter than an
    Otsu threshold, found on a small copy (speed) after a median filter (dust and a stray
    bright speck must not stretch it). When that box is implausible (under a fifth of the
    image, or the threshold separates nothing) the whole image is kept: a crop that cuts
    into the specimen is worse than one that keeps some background."""
    from PIL import ImageFilter

    width, height = img.size
    factor = max(1, max(width, height) // 800)
    small = img.convert("L").reduce(factor)
    level = _otsu(small.histogram())
    mask = small.point(lambda v: 255 if v > level else 0).filter(ImageFilter.MedianFilter(5))
    box = mask.getbbox()
    if box is None:
        return (0, 0, width, height)
    left, top, right, bottom = (v * factor for v in box)
    if (right - left) * (bottom - top) < 0.2 * width * height:
        return (0, 0, width, height)
    pad = round(margin * max(width, height))
    return (
        max(0, left - pad),
        max(0, top - pad),
        min(width, right + pad),
        min(height, bottom + pad),
    )


def crc32_of(path: Path) -> tuple[int, int]:
    """(CRC-32, size in bytes) of a file, read in chunks."""
    crc, size = 0, 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return crc, size

"""HERB0001 `barcode`: read every barcode on the asset's image(s) and classify the asset.

zxing-cpp reads Data Matrix (what DaSSCo prints), QR and the common 1D formats in one pass;
the payloads, in reading order (top to bottom, then left to right; Data Matrix first), go
through the payload convention (`dassco_hpc.convention`, configurable with
DASSCO_BARCODE_PATTERN, DASSCO_TARGET_PATTERN, DASSCO_MOS_PATTERN).

A sheet on which no code of the convention is read at the scan's size (a low-resolution
scan, a blurred or tiny code) is searched for small codes: places that look like one (small,
squarish, dense patches of sharp edges, at any angle) are cut out, enlarged 2-4 times and read
again (`small_codes`). Every payload is checked by the code's own error correction, so a code
either reads right or not at all.

No barcode at all is, by default, *not* a failure: the result is a specimen with an empty
`barcodes` list, as the current system reports it, so that OCR and the derivatives still run
and the missing number is visible in the asset's metadata (`barcode: []`). Set
DASSCO_BARCODE_REQUIRED=1 to make it a non-retryable failure instead (the asset stops for an
operator). An unreadable image or contradictory codes (two disposable ids) always fail, not
retryable: reading again gives the same answer.

Device targets carry a `DEVICE-TARGET:` code only where the digitisation line printed one, so
an image without such a code is also looked at (`dassco_hpc.targets`: a regular grid of
uniform colour or grey patches); either way the result says `asset_subject = "device target"`
(the daemon stops the pipeline there) and the metadata tag `device_target` says how it was
recognised (DASSCO_TARGET_DETECTION=0 turns the image check off).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dassco_hpc.context import JobContext
from dassco_hpc.convention import DEVICE_TARGET, Convention, ConventionError
from dassco_hpc.errors import ModuleFailed
from dassco_hpc.imaging import open_image, optional, source_images
from dassco_hpc.targets import find_target

if TYPE_CHECKING:
    from PIL.Image import Image

TRUE = frozenset({"1", "true", "yes", "on"})
#: Sides (px) of the places looked at for codes too small to read at the scan's size: a
#: 10x10 to 26x26 Data Matrix at 1.5-4 px per module, with some blur.
SMALL_CODE_PX = (14, 130)
#: How much the crops of such places are enlarged.
SMALL_CODE_SCALES = (2, 3, 4)
#: The largest places looked at, at most (each costs a zxing call on a small crop).
MAX_SMALL_PLACES = 300


def _formats(zxing: Any) -> Any:
    """Data Matrix, QR and the linear formats, under the names of zxing-cpp 2.x or 3.x (3.x
    takes a tuple and deprecates `|`; 2.x has only `|`)."""
    data_matrix, qr = zxing.BarcodeFormat.DataMatrix, zxing.BarcodeFormat.QRCode
    linear = getattr(zxing, "AllLinear", None)
    if linear is not None:
        return (data_matrix, qr, linear)
    return data_matrix | qr | zxing.BarcodeFormat.LinearCodes  # pragma: no cover - 2.x


def small_codes(zxing: Any, gray: Image, formats: Any, found: list[Any]) -> list[Any]:
    """Codes too small (under ~2.5 px per module) or too blurred to be read at the scan's
    size, read from enlarged crops of the places that look like one: small, squarish, dense
    patches of sharp edges (a Data Matrix at any angle). Places of codes already read are
    skipped. Positions are mapped back to the image's pixels."""
    pil = optional("PIL.Image", "Pillow")
    np = optional("numpy", "numpy")
    cv2 = optional("cv2", "opencv-python-headless")
    pixels = np.asarray(gray)
    edge = cv2.morphologyEx(pixels, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    level, _ = cv2.threshold(edge, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    _, edges = cv2.threshold(edge, max(level, 30), 255, cv2.THRESH_BINARY)
    dense = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    _, _, stats, _ = cv2.connectedComponentsWithStats(dense, connectivity=8)
    read: list[Any] = []
    seen = [_box(code) for code in found]
    places = [
        (int(x), int(y), int(w), int(h)) for x, y, w, h, area in stats[1:]
        if SMALL_CODE_PX[0] <= min(w, h) and max(w, h) <= SMALL_CODE_PX[1]
        and max(w, h) <= 1.6 * min(w, h) and area >= 0.45 * w * h
    ]  # fmt: skip
    for x, y, w, h in sorted(places, key=lambda p: -p[2] * p[3])[:MAX_SMALL_PLACES]:
        if any(_inside((x + w / 2, y + h / 2), box) for box in seen):
            continue
        margin = max(w, h) // 3 + 4
        left, top = max(0, x - margin), max(0, y - margin)
        crop = gray.crop((left, top, min(gray.width, x + w + margin),
                          min(gray.height, y + h + margin)))  # fmt: skip
        for scale, variant in _enlarged(pil, cv2, np, crop):
            codes = zxing.read_barcodes(variant, formats=formats)
            if codes:
                for code in codes:
                    box = _box(code)
                    code_box = (left + box[0] / scale, top + box[1] / scale,
                                left + box[2] / scale, top + box[3] / scale)  # fmt: skip
                    if not any(_inside(_centre(code_box), b) for b in seen):
                        seen.append(code_box)
                        read.append(_Placed(code.text, code.format, code_box))
                break
    return read


def _enlarged(pil: Any, cv2: Any, np: Any, crop: Image) -> Iterator[tuple[int, Any]]:
    """The crop enlarged 2, 3 and 4 times (zxing's sampling grid meets tiny modules better at
    one or the other), then thresholded at 3 times (blur spreads a module over its
    neighbours; Otsu's level puts the edge back between them)."""
    for scale in SMALL_CODE_SCALES:
        yield scale, crop.resize((crop.width * scale, crop.height * scale),
                                 pil.Resampling.BICUBIC)  # fmt: skip
    big = np.asarray(crop.resize((crop.width * 3, crop.height * 3), pil.Resampling.BICUBIC))
    _, binary = cv2.threshold(big, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    yield 3, pil.fromarray(binary)


@dataclass(frozen=True)
class _Point:
    x: float
    y: float


@dataclass(frozen=True)
class _Position:
    top_left: _Point


class _Placed:
    """A code read from an enlarged crop, with its place in the image's pixels (what the
    reading order needs of zxing's own results)."""

    def __init__(self, text: str, format_: Any, box: tuple[float, float, float, float]) -> None:
        self.text = text
        self.format = format_
        self.position = _Position(_Point(box[0], box[1]))
        self.box = box


def _box(code: Any) -> tuple[float, float, float, float]:
    if isinstance(code, _Placed):
        return code.box
    p = code.position
    xs = [p.top_left.x, p.top_right.x, p.bottom_right.x, p.bottom_left.x]
    ys = [p.top_left.y, p.top_right.y, p.bottom_right.y, p.bottom_left.y]
    return (min(xs), min(ys), max(xs), max(ys))


def _centre(box: tuple[float, float, float, float]) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def _inside(point: tuple[float, float], box: tuple[float, float, float, float]) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def read_payloads(
    ctx: JobContext, *, look_for_targets: bool = False
) -> tuple[list[str], list[str]]:
    """Every payload on every image of the asset, in reading order, duplicates kept; and,
    when asked, a description of each device target seen in the images."""
    zxing = optional("zxingcpp", "zxing-cpp")
    formats = _formats(zxing)
    convention = Convention.from_env(os.environ)
    payloads: list[str] = []
    targets: list[str] = []
    for path in source_images(ctx):
        img = open_image(path)
        gray = img.convert("L")
        found = list(zxing.read_barcodes(gray, formats=formats))
        ctx.log(f"{path.name}: {len(found)} barcode(s) on {gray.width}x{gray.height}")
        if not any(convention.knows(code.text) for code in found):
            small = small_codes(zxing, gray, formats, found)
            if small:
                ctx.log(f"{path.name}: {len(small)} small or blurred code(s) read enlarged")
            found += small

        def order(code: Any) -> tuple[int, int, int]:
            corner = code.position.top_left
            is_dm = code.format == zxing.BarcodeFormat.DataMatrix
            return (0 if is_dm else 1, int(corner.y), int(corner.x))

        payloads.extend(code.text for code in sorted(found, key=order) if code.text)
        if look_for_targets and (target := find_target(img)) is not None:
            ctx.log(f"{path.name}: device target in the image: {target.describe()}")
            targets.append(f"{target.describe()} (in {path.name})")
    return payloads, targets


def classify(
    ctx: JobContext, payloads: list[str], env: Mapping[str, str], seen: list[str] | None = None
) -> dict[str, Any]:
    try:
        classified = Convention.from_env(env).classify(payloads)
    except ConventionError as exc:
        raise ModuleFailed(f"barcodes of {ctx.guid}: {exc}", retryable=False) from None
    if classified.unknown:
        ctx.log(f"ignored payload(s) outside the convention: {classified.unknown}")
    if classified.targets:
        ctx.log(f"device target {', '.join(classified.targets)}")
    result = classified.result
    if seen and not classified.targets and not result["barcodes"] and not result["MOS"]:
        # A sheet with a specimen's code is a specimen, whatever else is in the picture.
        result["asset_subject"] = DEVICE_TARGET
    elif not payloads:
        if env.get("DASSCO_BARCODE_REQUIRED", "").strip().lower() in TRUE:
            raise ModuleFailed(f"no barcode found on asset {ctx.guid}", retryable=False)
        ctx.log("no barcode found: reporting a specimen without barcodes")
    return result


def run(ctx: JobContext) -> dict[str, Any]:
    env = os.environ
    detect = env.get("DASSCO_TARGET_DETECTION", "1").strip().lower() in TRUE
    payloads, seen = read_payloads(ctx, look_for_targets=detect)
    result = classify(ctx, payloads, env, seen)
    out: dict[str, Any] = {"barcode": result}
    if result["asset_subject"] == DEVICE_TARGET:
        codes = Convention.from_env(env).classify(payloads).targets
        how = f"printed code {', '.join(codes)}" if codes else f"recognised: {'; '.join(seen)}"
        out["metadata"] = {"tags": {"device_target": how}}
    return out

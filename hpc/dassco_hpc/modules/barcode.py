"""HERB0001 `barcode`: read every barcode on the asset's image(s) and classify the asset.

zxing-cpp reads Data Matrix (what DaSSCo prints), QR and the common 1D formats in one pass;
the payloads, in reading order (top to bottom, then left to right; Data Matrix first), go
through the payload convention (`dassco_hpc.convention`, configurable with
DASSCO_BARCODE_PATTERN, DASSCO_TARGET_PATTERN, DASSCO_MOS_PATTERN).

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
from collections.abc import Mapping
from typing import Any

from dassco_hpc.context import JobContext
from dassco_hpc.convention import DEVICE_TARGET, Convention, ConventionError
from dassco_hpc.errors import ModuleFailed
from dassco_hpc.imaging import open_image, optional, source_images
from dassco_hpc.targets import find_target

TRUE = frozenset({"1", "true", "yes", "on"})


def _formats(zxing: Any) -> Any:
    """Data Matrix, QR and the linear formats, under the names of zxing-cpp 2.x or 3.x (3.x
    takes a tuple and deprecates `|`; 2.x has only `|`)."""
    data_matrix, qr = zxing.BarcodeFormat.DataMatrix, zxing.BarcodeFormat.QRCode
    linear = getattr(zxing, "AllLinear", None)
    if linear is not None:
        return (data_matrix, qr, linear)
    return data_matrix | qr | zxing.BarcodeFormat.LinearCodes  # pragma: no cover - 2.x


def read_payloads(
    ctx: JobContext, *, look_for_targets: bool = False
) -> tuple[list[str], list[str]]:
    """Every payload on every image of the asset, in reading order, duplicates kept; and,
    when asked, a description of each device target seen in the images."""
    zxing = optional("zxingcpp", "zxing-cpp")
    formats = _formats(zxing)
    payloads: list[str] = []
    targets: list[str] = []
    for path in source_images(ctx):
        img = open_image(path)
        gray = img.convert("L")
        found = zxing.read_barcodes(gray, formats=formats)
        ctx.log(f"{path.name}: {len(found)} barcode(s) on {gray.width}x{gray.height}")

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

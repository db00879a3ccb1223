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
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dassco_hpc.context import JobContext
from dassco_hpc.convention import Convention, ConventionError
from dassco_hpc.errors import ModuleFailed
from dassco_hpc.imaging import open_image, optional, source_images

TRUE = frozenset({"1", "true", "yes", "on"})


def _formats(zxing: Any) -> Any:
    """Data Matrix, QR and the linear formats, under the names of zxing-cpp 2.x or 3.x (3.x
    takes a tuple and deprecates `|`; 2.x has only `|`)."""
    data_matrix, qr = zxing.BarcodeFormat.DataMatrix, zxing.BarcodeFormat.QRCode
    linear = getattr(zxing, "AllLinear", None)
    if linear is not None:
        return (data_matrix, qr, linear)
    return data_matrix | qr | zxing.BarcodeFormat.LinearCodes  # pragma: no cover - 2.x


def read_payloads(ctx: JobContext) -> list[str]:
    """Every payload on every image of the asset, in reading order, duplicates kept."""
    zxing = optional("zxingcpp", "zxing-cpp")
    formats = _formats(zxing)
    payloads: list[str] = []
    for path in source_images(ctx):
        gray = open_image(path).convert("L")
        found = zxing.read_barcodes(gray, formats=formats)
        ctx.log(f"{path.name}: {len(found)} barcode(s) on {gray.width}x{gray.height}")

        def order(code: Any) -> tuple[int, int, int]:
            corner = code.position.top_left
            is_dm = code.format == zxing.BarcodeFormat.DataMatrix
            return (0 if is_dm else 1, int(corner.y), int(corner.x))

        payloads.extend(code.text for code in sorted(found, key=order) if code.text)
    return payloads


def classify(ctx: JobContext, payloads: list[str], env: Mapping[str, str]) -> dict[str, Any]:
    try:
        classified = Convention.from_env(env).classify(payloads)
    except ConventionError as exc:
        raise ModuleFailed(f"barcodes of {ctx.guid}: {exc}", retryable=False) from None
    if classified.unknown:
        ctx.log(f"ignored payload(s) outside the convention: {classified.unknown}")
    if classified.targets:
        ctx.log(f"device target {', '.join(classified.targets)}")
    result = classified.result
    if not payloads:
        if env.get("DASSCO_BARCODE_REQUIRED", "").strip().lower() in TRUE:
            raise ModuleFailed(f"no barcode found on asset {ctx.guid}", retryable=False)
        ctx.log("no barcode found: reporting a specimen without barcodes")
    return result


def run(ctx: JobContext) -> dict[str, Any]:
    payloads = read_payloads(ctx)
    return {"barcode": classify(ctx, payloads, os.environ)}

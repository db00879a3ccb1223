"""HERB0001 `derivatives`: crop the sheet to its content and write a JPEG and a thumbnail.

The crop removes the scanner background around the mounting paper (`imaging.content_box`).
Two files go to `$DASSCO_WORKDIR/derivatives/` (where the upload job will take them from):

- the image, guid `<guid>-jpeg`, long side DASSCO_DERIVATIVE_MAX_PX (default 4000; 0 = as
  cropped), quality DASSCO_DERIVATIVE_QUALITY (90), `payload_type` image;
- the thumbnail, guid `<guid>-thumb`, long side DASSCO_THUMBNAIL_PX (400), quality
  DASSCO_THUMBNAIL_QUALITY (80), `payload_type` thumbnail.

Images are never enlarged. Each is registered with the listener as a new asset
(`POST /derivatives`: the parent's metadata with `parent_guid` = the asset, a new
`asset_guid`, `file_format` jpeg) and its file described (`POST /assets/{guid}/files`: name,
CRC-32, size in MB). The guids are derived from the parent's, so a retried attempt registers
the same derivatives again and the listener answers `applied: false` instead of creating
duplicates.

An unreadable or undecodable image is reported with `derivative-failed` (the daemon marks
the asset ISSUE_WITH_MEDIA) and fails the job, not retryable.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dassco_hpc.context import JobContext
from dassco_hpc.errors import CallbackError, ModuleFailed
from dassco_hpc.imaging import (
    DERIVATIVES_DIR,
    content_box,
    number,
    open_image,
    pillow,
    source_images,
)

if TYPE_CHECKING:
    from PIL.Image import Image

BYTES_PER_MB = 1_000_000
GUID_MAX = 200
#: Parent metadata fields that describe the parent's own record, not the derivative's.
NOT_INHERITED = ("_id", "id", "asset_pid", "date_metadata_uploaded", "date_asset_finalised")


@dataclass(frozen=True)
class Spec:
    suffix: str
    max_px: int
    quality: int
    payload_type: str


def specs(env: Mapping[str, str]) -> list[Spec]:
    return [
        Spec(
            "jpeg",
            int(number(env, "DASSCO_DERIVATIVE_MAX_PX", 4000)),
            int(number(env, "DASSCO_DERIVATIVE_QUALITY", 90, minimum=1)),
            "image",
        ),
        Spec(
            "thumb",
            int(number(env, "DASSCO_THUMBNAIL_PX", 400, minimum=16)),
            int(number(env, "DASSCO_THUMBNAIL_QUALITY", 80, minimum=1)),
            "thumbnail",
        ),
    ]


def derivative_guid(parent: str, suffix: str) -> str:
    """`<parent>-<suffix>`; a parent guid too long for that is shortened with a hash so that
    the result stays unique, deterministic and within the listener's 200 characters."""
    guid = f"{parent}-{suffix}"
    if len(guid) <= GUID_MAX:
        return guid
    digest = hashlib.sha256(parent.encode()).hexdigest()[:12]
    return f"{parent[: GUID_MAX - len(suffix) - 14]}-{digest}-{suffix}"


def scaled(img: Image, max_px: int) -> Image:
    if max_px <= 0 or max(img.size) <= max_px:
        return img
    scale = max_px / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, resample=pillow().Resampling.LANCZOS)


def derivative_metadata(
    parent: Mapping[str, Any], parent_guid: str, guid: str, spec: Spec
) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    out = {k: v for k, v in parent.items() if k not in NOT_INHERITED}
    out.update(
        asset_guid=guid,
        parent_guid=parent_guid,
        file_format="jpeg",
        payload_type=spec.payload_type,
        date_metadata_created=now,
        date_metadata_updated=now,
    )
    if "file_formats" in out:
        out["file_formats"] = ["JPEG"]
    return out


def _fail(ctx: JobContext, reason: str) -> ModuleFailed:
    """Tell the daemon that no derivative could be made, then fail for good."""
    try:
        ctx.client.derivative_failed(ctx.guid, note=reason[:2000])
    except CallbackError as exc:
        ctx.log(f"could not report derivative-failed: {exc}")
        reason = f"{reason} (and derivative-failed was not delivered: {exc})"
    return ModuleFailed(reason, retryable=False)


def run(ctx: JobContext) -> dict[str, Any]:
    env = os.environ
    wanted = specs(env)
    images = source_images(ctx)
    try:
        img = open_image(images[0])
    except ModuleFailed as exc:
        raise _fail(ctx, f"no derivative: {exc.reason}") from None
    if len(images) > 1:
        ctx.log(f"{len(images)} images: derivatives are made from {images[0].name}")
    box = content_box(img)
    ctx.log(f"{images[0].name}: {img.width}x{img.height}, cropped to {box}")
    cropped = img.crop(box).convert("RGB")
    out_dir = ctx.workdir / DERIVATIVES_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    parent = ctx.metadata()
    guids: list[str] = []
    for spec in wanted:
        guid = derivative_guid(ctx.guid, spec.suffix)
        path = out_dir / f"{guid}.jpg"
        _save(scaled(cropped, spec.max_px), path, spec.quality)
        data = path.read_bytes()
        ctx.client.register_derivative(derivative_metadata(parent, ctx.guid, guid, spec))
        ctx.client.add_file(
            guid,
            name=path.name,
            type="jpg",
            check_sum=zlib.crc32(data),
            file_size_mb=len(data) / BYTES_PER_MB,
            sha256=hashlib.sha256(data).hexdigest(),
        )
        ctx.log(f"derivative {guid}: {path.name}, {len(data)} bytes")
        guids.append(guid)
    return {"derivatives": guids}


def _save(img: Image, path: Path, quality: int) -> None:
    """Write atomically: a half-written JPEG must never be taken for a derivative."""
    partial = path.with_name(f".{path.name}.partial")
    img.save(partial, format="JPEG", quality=min(quality, 100), optimize=True)
    partial.replace(path)

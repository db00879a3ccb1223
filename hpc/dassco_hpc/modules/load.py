"""HERB0001 `load`: put the asset's files into its work folder, verified.

Only the local case for now: each file listed by the listener (`GET /assets/{guid}/links`)
is taken from its `local_path`, else from DASSCO_ASSET_FILES/<name> (a shared disk the
cluster sees). Downloading from the ARS file proxy (`ars_link`) is not implemented yet and
fails non-retryably naming it.

Each file is copied to a hidden partial file while its CRC-32 is computed over the copied
bytes, and only renamed into place when the CRC-32 and the size match the links: a later job
never sees a truncated or corrupt image. A mismatch or a missing source fails *retryably*
(a copy still in progress on the shared disk, a flaky mount); a listing that cannot work
(no files, a name with a path in it) fails for good. Sizes are compared to 1 kB, since the
daemon keeps them in MB; the CRC-32 is the real check.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dassco_hpc.context import JobContext
from dassco_hpc.errors import ModuleFailed
from dassco_hpc.imaging import CHUNK

BYTES_PER_MB = 1_000_000
SIZE_TOLERANCE_BYTES = 1000


def _name(entry: Mapping[str, Any]) -> str:
    name = str(entry.get("name") or "")
    if not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise ModuleFailed(f"bad file name in the asset's links: {name!r}", retryable=False)
    return name


def source_of(ctx: JobContext, entry: Mapping[str, Any], name: str) -> Path:
    local = entry.get("local_path")
    if local:
        return Path(str(local))
    if ctx.asset_files is not None:
        return ctx.asset_files / name
    raise ModuleFailed(
        f"{name}: no local_path and no DASSCO_ASSET_FILES; fetching from ARS "
        f"({entry.get('ars_link') or 'no link'}) is not implemented yet",
        retryable=False,
    )


def copy_verified(source: Path, target: Path, check_sum: int, size_mb: float) -> None:
    """Copy `source` to `target` if its CRC-32 and size are the expected ones."""
    partial = target.with_name(f".{target.name}.partial")
    crc, size = 0, 0
    try:
        with source.open("rb") as src, partial.open("wb") as dst:
            while chunk := src.read(CHUNK):
                crc = zlib.crc32(chunk, crc)
                size += len(chunk)
                dst.write(chunk)
    except FileNotFoundError:
        partial.unlink(missing_ok=True)
        raise ModuleFailed(f"{source}: not found", retryable=True) from None
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ModuleFailed(f"copying {source}: {exc}", retryable=True) from None
    expected_bytes = size_mb * BYTES_PER_MB
    problems = []
    if crc != check_sum:
        problems.append(f"CRC-32 {crc} != {check_sum} expected")
    if abs(size - expected_bytes) > SIZE_TOLERANCE_BYTES:
        problems.append(f"{size} bytes, {expected_bytes:.0f} expected")
    if problems:
        partial.unlink(missing_ok=True)
        raise ModuleFailed(f"{source.name}: {'; '.join(problems)}", retryable=True)
    partial.replace(target)


def run(ctx: JobContext) -> dict[str, Any]:
    files = ctx.links().get("files") or []
    if not files:
        raise ModuleFailed(f"the listener lists no files for asset {ctx.guid}", retryable=False)
    for entry in files:
        if not isinstance(entry, Mapping):
            raise ModuleFailed(f"bad entry in the asset's links: {entry!r}", retryable=False)
        name = _name(entry)
        try:
            check_sum, size_mb = int(entry["check_sum"]), float(entry["file_size"])
        except (KeyError, TypeError, ValueError):
            raise ModuleFailed(
                f"{name}: no usable check_sum/file_size in the links", retryable=False
            ) from None
        source = source_of(ctx, entry, name)
        copy_verified(source, ctx.workdir / name, check_sum, size_mb)
        ctx.log(f"{name}: copied from {source}, CRC-32 and size verified")
    return {"asset_ready": True}

"""HERB0001 `load`: put the asset's files into its work folder, verified.

Each file listed by the listener (`GET /assets/{guid}/links`) is taken from its `local_path`
or from DASSCO_ASSET_FILES/<name> when the cluster shares that disk; otherwise it is
downloaded from the daemon (`GET /assets/{guid}/files/{name}`), which keeps the asset's files
until clean-up. Jobs hold no ARS credentials, so the daemon, not the ARS file proxy, serves
them.

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
from dassco_hpc.errors import CallbackRejected, ModuleFailed
from dassco_hpc.filenames import file_name_problem
from dassco_hpc.imaging import CHUNK

BYTES_PER_MB = 1_000_000
SIZE_TOLERANCE_BYTES = 1000


def _name(entry: Mapping[str, Any]) -> str:
    name = str(entry.get("name") or "")
    if problem := file_name_problem(name):  # the daemon's intake applies the same rule
        raise ModuleFailed(f"bad file name in the asset's links: {problem}", retryable=False)
    return name


def source_of(ctx: JobContext, entry: Mapping[str, Any], name: str) -> Path | None:
    """The file on a disk this node sees, or None: it must come from the daemon."""
    local = entry.get("local_path")
    candidates = [Path(str(local))] if local else []
    if ctx.asset_files is not None:
        candidates.append(ctx.asset_files / name)
    return next((c for c in candidates if c.is_file()), None)


def download_verified(
    ctx: JobContext, name: str, target: Path, check_sum: int, size_mb: float
) -> None:
    """Fetch the file from the daemon into a partial file, then check it like a copy."""
    partial = target.with_name(f".{target.name}.download")
    try:
        data = ctx.client.get_file(ctx.guid, name)
    except CallbackRejected as exc:
        # Not on this node's disks and not on the daemon's (yet): a copy may still be on its
        # way, so another attempt can help.
        raise ModuleFailed(f"{name}: not found here nor on the daemon ({exc})", True) from None
    partial.write_bytes(data)
    try:
        copy_verified(partial, target, check_sum, size_mb)
    finally:
        partial.unlink(missing_ok=True)


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
        if source is None:
            download_verified(ctx, name, ctx.workdir / name, check_sum, size_mb)
            ctx.log(f"{name}: downloaded from the daemon, CRC-32 and size verified")
        else:
            copy_verified(source, ctx.workdir / name, check_sum, size_mb)
            ctx.log(f"{name}: copied from {source}, CRC-32 and size verified")
    return {"asset_ready": True}

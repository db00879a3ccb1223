"""HERB0001 `upload`: hand the asset's derivative files over for ARS, checked byte for byte.

Which derivatives: the ones the `derivatives` module writes, by its convention (a coupling:
change one, change both): guids `derivative_guid(<guid>, "jpeg" | "thumb")`, files
`$DASSCO_WORKDIR/derivatives/<derivative guid>.jpg`. The listener has no "derivatives of this
asset" read; `GET /assets/{d}/links` of each derivative gives the file's registered name and
CRC-32. An asset without derivatives (a colour target, say) has nothing to upload.

What it does, and what it does not (yet): jobs hold no ARS credentials, and the daemon's ARS
sync is the one component that uploads files (it reads them from the asset's
`temporary_path_local`). So this module

1. checks that each registered derivative file is in the work folder with the registered
   CRC-32 and size, failing the job otherwise (retryable: the derivatives job may be re-run);
2. logs, per derivative, whether the file is already in ARS (`ars_link` set by the sync), and
   returns the verified guids as `derivatives` (the listener's result field);
3. never calls `derivative-uploaded` for a file that is not in ARS: that callback moves the
   derivative to ERDA synchronisation, which would then record as archived a file ARS never
   received.

The missing piece is on the daemon's side: `register_derivative` (dasscod/callbacks.py) gives
the derivative no `temporary_path_local`, so the sync cannot read its file. With one (a folder
the daemon reads, filled by this module before it reports the file) the sync uploads
derivatives like originals; until then derivatives reach ARS as assets without files.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

from dassco_hpc.context import JobContext
from dassco_hpc.errors import ModuleFailed
from dassco_hpc.imaging import DERIVATIVES_DIR
from dassco_hpc.modules.derivatives import BYTES_PER_MB, derivative_guid

SUFFIXES = ("jpeg", "thumb")
#: Sizes are reported in MB with float rounding: this much difference is the same size.
SIZE_TOLERANCE_MB = 1e-6


def crc32_of(path: Path) -> tuple[int, int]:
    """(CRC-32, size in bytes), read in chunks: derivatives can be tens of MB."""
    crc, size = 0, 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return crc, size


def run(ctx: JobContext) -> dict[str, Any]:
    folder = ctx.workdir / DERIVATIVES_DIR
    verified: list[str] = []
    for suffix in SUFFIXES:
        guid = derivative_guid(ctx.guid, suffix)
        path = folder / f"{guid}.jpg"
        if not path.exists():
            continue  # not made for this asset (no derivatives for targets, for instance)
        files = ctx.client.links(guid).get("files", [])
        entry = next((f for f in files if f.get("name") == path.name), None)
        if entry is None:
            raise ModuleFailed(f"{path.name} is not registered with derivative {guid}", True)
        crc, size = crc32_of(path)
        if crc != entry.get("check_sum"):
            raise ModuleFailed(
                f"{path.name}: CRC-32 {crc} differs from the registered {entry.get('check_sum')}",
                retryable=True,
            )
        registered_mb = entry.get("file_size")
        if registered_mb is not None and abs(size / BYTES_PER_MB - registered_mb) > (
            SIZE_TOLERANCE_MB
        ):
            raise ModuleFailed(
                f"{path.name}: {size} bytes, registered as {registered_mb} MB", retryable=True
            )
        in_ars = bool(entry.get("ars_link"))
        ctx.log(
            f"derivative {guid}: {path.name} verified (CRC-32 {crc}, {size} bytes); "
            + ("in ARS" if in_ars else "not uploaded: the daemon cannot read derivative files yet")
        )
        verified.append(guid)
    return {"derivatives": verified}

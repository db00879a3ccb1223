"""HERB0001 `upload`: hand the asset's derivative files to the daemon, checked byte for byte;
the daemon's ARS sync uploads them into ARS like an original's files.

Which derivatives: the ones the `derivatives` module writes, by its convention (a coupling:
change one, change both): guids `derivative_guid(<guid>, "jpeg" | "thumb")`, files
`$DASSCO_WORKDIR/derivatives/<derivative guid>.jpg`. The listener has no "derivatives of this
asset" read; `GET /assets/{d}/links` of each derivative gives the file's registered name and
CRC-32. An asset without derivatives (a colour target, say) has nothing to upload.

Why through the daemon: jobs hold no ARS credentials, and the daemon's sync is the one
component that talks to ARS. For each derivative this module

1. checks that the registered file is in the work folder with the registered CRC-32 and size
   (a retryable failure otherwise: the derivatives job may be re-run);
2. sends it with `PUT /assets/{d}/files/{name}`; the listener checks the CRC-32 again on
   arrival, keeps the file in the daemon's work area and lets the sync upload it (create the
   derivative in ARS, upload, ERDA sync) — `derivative-uploaded` is not needed;
3. returns the handed-over guids as `derivatives`.
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
        ctx.client.put_file(guid, path.name, path.read_bytes())
        ctx.log(
            f"derivative {guid}: {path.name} verified (CRC-32 {crc}, {size} bytes) and "
            "handed to the daemon for ARS"
        )
        verified.append(guid)
    return {"derivatives": verified}

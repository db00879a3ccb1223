"""An asset's files to and from a cluster that does not share the daemon's disk.

A derivative is made on the cluster, but only the daemon talks to ARS (jobs hold no ARS
credentials). So the `upload` job sends each derivative file to the listener, which checks it
against the CRC-32 reported for it, keeps it in the daemon's work area and points the
derivative's `temporary_path_local` there; the ARS sync then uploads it like an original's
files. The write is atomic (a temporary name, then a rename): a file is either complete and
checked, or absent. The other way, the `load` job fetches an asset's files.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from dasscod.filenames import file_name_problem
from dasscod.model import Flag
from dasscod.protocol.callbacks import Ack
from dasscod.services.callbacks import CallbackRejected, CallbackService
from dasscod.tokens import JobClaims

BYTES_PER_MB = 1_000_000


async def receive_file(
    service: CallbackService,
    who: JobClaims,
    guid: str,
    name: str,
    body: AsyncIterator[bytes],
    files_root: Path,
) -> Ack:
    await service.live_job(who, "derivatives")
    track = await service.derivative_of(who, guid)
    entry = next((f for f in track.file_list if f.name == name and not f.deleted), None)
    if entry is None:
        raise CallbackRejected(
            409, f"asset {guid} has no file {name}: report it first (POST /assets/{guid}/files)"
        )
    if entry.sha256 is None:
        raise CallbackRejected(
            422, f"{name} was reported without a SHA-256: report files whose bytes are sent "
            "with their sha256 (dassco-hpc does)")
    if problem := file_name_problem(name):  # the route's pattern already says so; be sure
        raise CallbackRejected(422, problem)
    folder = files_root / guid
    await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
    # One temporary file per request: a retried upload may overlap its first try, whose late
    # bytes must not land in the file the retry stored.
    part = folder / f".{name}.{secrets.token_hex(8)}.part"
    crc = 0
    digest = hashlib.sha256()
    # The job reported the size (in MB of 10^6 bytes, as dassco-hpc does): a body that goes
    # past it is stopped there, never written to the end.
    expected = round(entry.file_size * BYTES_PER_MB)
    received = 0
    try:
        async with await anyio.open_file(part, "wb") as out:
            async for chunk in body:
                received += len(chunk)
                if received > expected:
                    raise CallbackRejected(
                        413, f"{name}: the body is larger than the reported {expected} bytes")
                crc = zlib.crc32(chunk, crc)
                digest.update(chunk)
                await out.write(chunk)
        if received != expected:
            raise CallbackRejected(
                422, f"{name}: the body has {received} bytes, the reported size is {expected}")
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.Path(part).unlink(missing_ok=True)
        raise
    if crc != entry.check_sum or digest.hexdigest() != entry.sha256:
        await anyio.Path(part).unlink(missing_ok=True)
        raise CallbackRejected(
            422, f"{name}: the body's CRC-32 ({crc}) or SHA-256 ({digest.hexdigest()}) differs "
            f"from the reported ones ({entry.check_sum}, {entry.sha256})"
        )
    await anyio.Path(part).rename(folder / name)
    fields = {"temporary_path_local": str(folder), "temporary_files_local": Flag.YES}
    if track.temporary_path_local == str(folder):
        return Ack(applied=True, status=str(track.jobs_status), detail=f"{name} stored again")
    result = await service.stores.track.set_fields(guid, fields, cause=f"file {name} received")
    return Ack(applied=True, status=str(result.track.jobs_status), detail=f"{name} stored")


async def file_to_send(
    service: CallbackService, who: JobClaims, guid: str, name: str
) -> tuple[Path, int]:
    """An asset's file and its CRC-32, for a cluster that does not see the daemon's disk
    (`load`)."""
    track = await service.track_for(who, guid)
    entry = next((f for f in track.file_list if f.name == name and not f.deleted), None)
    if entry is None or not track.temporary_path_local:
        raise CallbackRejected(404, f"asset {guid} has no file {name} here")
    path = Path(track.temporary_path_local) / name
    if not await anyio.Path(path).is_file():
        raise CallbackRejected(404, f"{name} of asset {guid} is no longer on the daemon's disk")
    return path, entry.check_sum

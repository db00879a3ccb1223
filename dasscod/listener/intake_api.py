"""`POST /api/v1/assets`: the ingestion client delivers a new asset over HTTP.

The request is multipart: one `metadata` part (the metadata JSON, as in a folder delivery) and
one or more `files` parts (the images). The parts are written to a staging folder and taken
by the intake supervisor with exactly the checks of a folder delivery, so both ways end in the
same documents. Answers: 201 with the new asset, 400 for a request the multipart parser
refuses (more than one text part, more than MAX_FILES files, a metadata part larger than a
metadata file may be, part headers over python-multipart's bounds), 401 without the intake
credential, 409 for a guid that is already registered or being registered right now
(nothing changes), 413 beyond the size limit, 422 with what is wrong with the delivery.
"""

import re
import secrets
import shutil
from pathlib import Path
from typing import Annotated, Any, Protocol

import anyio
from anyio import to_thread
from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.formparsers import MultiPartParser

from dasscod.delivery import MAX_FILES, MAX_METADATA_BYTES, DeliveryRejected, parse_metadata_json
from dasscod.filenames import file_name_problem
from dasscod.model import GUID_PATTERN, Track
from dasscod.protocol.callbacks import refusals
from dasscod.store import AssetExists

_bearer = HTTPBearer(auto_error=False, description="The intake credential (intake.api_token)")
CHUNK = 1 << 20
#: A file part beyond this goes to a temporary file while the form is parsed. Starlette keeps
#: up to 1 MB of each part in memory: 200 MB per upload of 200 parts, before the route runs.
SPOOL_BYTES = 64 * 1024


class Intake(Protocol):
    """What the route needs of the intake (the daemon's `IntakeSupervisor`): whether it is
    held, a staging folder for an upload, and taking it with the checks of a folder
    delivery."""

    def held(self) -> str | None: ...

    def staging_folder(self) -> Path: ...

    async def accept(self, staged: Path) -> Track: ...


def intake_router(intake: Intake | None, token: str | None, max_mb: float) -> APIRouter:
    # Starlette's one knob for it is this class attribute (the daemon serves one app).
    MultiPartParser.spool_max_size = SPOOL_BYTES
    router = APIRouter(prefix="/api/v1", tags=["intake"],
                       responses=refusals(400, 401, 403, 408, 409, 413, 422, 503))

    async def ingestion_client(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if intake is None or token is None:
            raise HTTPException(403, "the intake API is disabled: set intake.api_token "
                                "(DASSCOD_INTAKE__API_TOKEN) to enable it")
        if credentials is None or not secrets.compare_digest(
            credentials.credentials.encode(), token.encode()
        ):
            raise HTTPException(401, "missing or wrong intake credential",
                                headers={"WWW-Authenticate": "Bearer"})

    # The multipart parser's own bounds, before the route runs: one text part (the metadata,
    # as large as a metadata file may be) and a delivery's files; more is a 400.
    @router.post("/assets", status_code=201, dependencies=[Depends(ingestion_client)],
                 form_limits={"max_fields": 1, "max_files": MAX_FILES,
                              "max_part_size": MAX_METADATA_BYTES})
    async def deliver(
        metadata: Annotated[str, Form(description="the asset's metadata JSON")],
        files: Annotated[list[UploadFile], File(description="the asset's image files")],
    ) -> dict[str, Any]:
        """Register a new asset, with the same validation and result as a folder delivery."""
        assert intake is not None
        if held := intake.held():
            raise HTTPException(503, f"{held}; deliver again once it is resumed",
                                headers={"Retry-After": "60"})
        try:
            # The folder delivery's parser: the same refusals (duplicate keys, NaN, nesting...).
            raw = metadata.encode("utf-8", "surrogatepass")
            guid = parse_metadata_json(raw, "metadata").get("asset_guid")
        except DeliveryRejected as exc:
            raise HTTPException(422, exc.reason) from None
        if not isinstance(guid, str) or not re.fullmatch(GUID_PATTERN, guid):
            # Checked before the guid names a file: a NUL or 300 characters must be a 422.
            raise HTTPException(422, "metadata.asset_guid: a guid of letters, digits and . _ - "
                                "(at most 200, not starting with . _ -) is required")
        staged = await to_thread.run_sync(intake.staging_folder)
        try:
            await to_thread.run_sync((staged / f"{guid}.json").write_text, metadata)
            await _write_files(staged, files, max_bytes=int(max_mb * 1_000_000))
        except BaseException:
            await to_thread.run_sync(_remove, staged)
            raise
        try:
            track = await intake.accept(staged)
        except DeliveryRejected as exc:
            raise HTTPException(422, exc.reason + (f" ({exc.hint})" if exc.hint else "")) from exc
        except AssetExists as exc:
            raise HTTPException(409, str(exc)) from exc
        return {
            "asset_guid": track.id,
            "pipeline": track.pipeline,
            "jobs_status": str(track.jobs_status),
            "files": [{"name": f.name, "check_sum": f.check_sum, "file_size": f.file_size}
                      for f in track.file_list],
        }

    return router


async def _write_files(staged: Path, files: list[UploadFile], *, max_bytes: int) -> None:
    total = 0
    for upload in files:
        name = upload.filename or ""
        if problem := file_name_problem(name):
            raise HTTPException(422, f"files: {problem}")
        target = staged / name
        if await to_thread.run_sync(target.exists):
            raise HTTPException(422, f"files: {name} is sent twice (or clashes with the metadata)")
        async with await anyio.open_file(target, "wb") as out:
            while chunk := await upload.read(CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise HTTPException(413, f"the delivery is larger than {max_bytes} bytes")
                await out.write(chunk)


def _remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)

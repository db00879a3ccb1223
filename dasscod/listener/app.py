"""The FastAPI application served inside the daemon's event loop.

Routes are thin: authenticate the job's token, validate the body (FastAPI answers 422 naming
the field), hand over to `CallbackService`. The OpenAPI document at `/openapi.json` is the
contract for `hpc/`.

No `from __future__ import annotations` here: FastAPI reads the route annotations at runtime,
and the `Claims` alias defined inside `create_app` cannot be resolved from a string.
"""

import secrets
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pymongo.errors import ConnectionFailure, PyMongoError

from dasscod.filenames import FILE_NAME_PATTERN
from dasscod.listener.agent_api import agent_router
from dasscod.listener.control_api import install_control_api
from dasscod.listener.guard import KB, Gate, Guard, Refusal, gate
from dasscod.listener.health import SharedPing
from dasscod.listener.intake_api import Intake, intake_router
from dasscod.listener.invalid import install_validation_answer
from dasscod.listener.observe import install_metrics
from dasscod.log import get_logger
from dasscod.model import GUID_PATTERN, Metadata
from dasscod.protocol.callbacks import (
    Ack,
    AssetLinks,
    BarcodeCallback,
    BarcodeResult,
    DerivativeFailed,
    FailedCallback,
    FileInfo,
    FinishedCallback,
    JobCallback,
    MetadataUpdate,
    QueuedCallback,
    StartedCallback,
    refusals,
)
from dasscod.services.agent import AgentService
from dasscod.services.callbacks import CallbackService, Slots
from dasscod.services.control import ControlService
from dasscod.services.control_reads import ControlReads
from dasscod.services.files import file_to_send, receive_file
from dasscod.services.replies import Rejected
from dasscod.store import Stores, TransitionConflict
from dasscod.store.errors import describe
from dasscod.store.fence import NotLeader
from dasscod.tokens import JobClaims, Keys, TokenError, Verifier

API_PREFIX = "/api/v1"

log = get_logger(__name__)

def retry_later(detail: str, *, after_s: int) -> JSONResponse:
    """503 with Retry-After: the request was fine, the daemon cannot take it now."""
    return JSONResponse({"detail": detail}, status_code=503,
                        headers={"Retry-After": str(after_s)})


_bearer = HTTPBearer(auto_error=False, description="The job token from DASSCO_TOKEN")
GuidPath = Annotated[str, Path(pattern=GUID_PATTERN)]
FileName = Annotated[str, Path(pattern=FILE_NAME_PATTERN)]


def create_app(
    stores: Stores,
    token_secret: Keys,
    *,
    intake: Intake | None = None,
    intake_token: str | None = None,
    intake_max_mb: float = 2000.0,
    intake_at_once: int = 4,
    agent: AgentService | None = None,
    files_root: FilePath | None = None,
    slots: Slots | None = None,
    control: tuple[ControlService, ControlReads] | None = None,
    control_tokens: dict[str, str] | None = None,
    metrics_route: bool = False,
    docs: bool = False,
    role: Callable[[], str] | None = None,
) -> FastAPI:
    """`role` says whether this daemon leads ("leader") or waits ("standby"); None: always
    the leader (tests serving the app alone)."""
    service = CallbackService(stores, slots)
    app = FastAPI(
        title="dasscod listener",
        version="1",
        description=(
            "Callbacks from HPC jobs and the reads they need. Every `/api/v1` route takes the "
            "job's bearer token (DASSCO_TOKEN), which names one asset, job and attempt."
        ),
        # The interactive pages load scripts from a CDN and show every route to anyone:
        # off unless listener.docs is set. /openapi.json (the hpc/ contract) stays.
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    # One for the gate and the routes: a token is checked once, not at each (see Verifier).
    verifier = Verifier(token_secret)

    async def claims(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> JobClaims:
        if credentials is None:
            raise HTTPException(
                401,
                "missing bearer token: send the job's DASSCO_TOKEN as 'Authorization: Bearer'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            return verifier(credentials.credentials)
        except TokenError as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc

    Claims = Annotated[JobClaims, Depends(claims)]

    def for_job(who: JobClaims, body: JobCallback) -> JobClaims:
        """The body must name the token's own asset and job (and attempt, if it names one)."""
        if body.asset_guid != who.asset_guid or body.job != who.job:
            raise HTTPException(
                403,
                f"token is for {who.asset_guid}/{who.job}, not {body.asset_guid}/{body.job}",
            )
        if body.attempt is not None and body.attempt != who.attempt:
            raise HTTPException(403, f"token is for attempt {who.attempt}, not {body.attempt}")
        return who

    def for_asset(who: JobClaims, guid: str) -> JobClaims:
        if guid != who.asset_guid:
            raise HTTPException(403, f"token is for asset {who.asset_guid}, not {guid}")
        return who

    def named_job(who: JobClaims, job: str) -> JobClaims:
        if job != who.job:
            raise HTTPException(403, f"token is for job {who.job}, not {job}")
        return who

    @app.exception_handler(Rejected)
    async def _rejected(_: Request, exc: Rejected) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(TransitionConflict)
    async def _conflict(_: Request, exc: TransitionConflict) -> JSONResponse:
        # Retrying is safe: the runner's callback client backs off and sends again.
        return retry_later(str(exc), after_s=1)

    @app.exception_handler(ConnectionFailure)
    async def _store_down(_: Request, exc: ConnectionFailure) -> JSONResponse:
        # MongoDB is unreachable: nothing was applied; the job's client retries until it is
        # back, so the callback is delayed, not lost.
        log.warning("callback refused: MongoDB unreachable", error=str(exc)[:300])
        return retry_later("the daemon's database is unreachable; retry later", after_s=5)

    @app.exception_handler(PyMongoError)
    async def _store_failed(_: Request, exc: PyMongoError) -> JSONResponse:
        # Any other MongoDB failure (a timeout, disk full): it says nothing about the request;
        # whether it was applied is unknown, and every callback is safe to send again.
        log.warning("request failed: MongoDB error", error=describe(exc)[:300])
        return retry_later("the daemon's database failed; retry later", after_s=5)

    @app.exception_handler(NotLeader)
    async def _standby(_: Request, exc: NotLeader) -> JSONResponse:
        # A standby (or a leader whose lease just ran out) applies nothing; the leader does.
        return retry_later(f"{exc}; send it to the leading daemon or retry later", after_s=5)

    api = APIRouter(prefix=API_PREFIX,
                    responses=refusals(400, 401, 403, 404, 408, 409, 413, 422, 503))

    @api.post("/jobs/queued", tags=["jobs"])
    async def job_queued(body: QueuedCallback, who: Claims) -> Ack:
        """The scheduler accepted the job (pull agents report the scheduler's job id here)."""
        return await service.queued(for_job(who, body), body)

    @api.post("/jobs/started", tags=["jobs"])
    async def job_started(body: StartedCallback, who: Claims) -> Ack:
        return await service.started(for_job(who, body), body)

    @api.post("/jobs/finished", tags=["jobs"])
    async def job_finished(body: FinishedCallback, who: Claims) -> Ack:
        """The job ended well; `results` carries what it found (barcodes, metadata, ...)."""
        return await service.finished(for_job(who, body), body)

    @api.post("/jobs/failed", tags=["jobs"])
    async def job_failed(body: FailedCallback, who: Claims) -> Ack:
        """The job failed; `retryable` says whether another attempt could help."""
        return await service.failed(for_job(who, body), body)

    @api.post("/assets/{guid}/ready", tags=["assets"])
    async def asset_ready(guid: GuidPath, who: Claims) -> Ack:
        """The asset's files are on the cluster (hpc_ready = YES)."""
        return await service.asset_ready(for_asset(who, guid))

    @api.post("/assets/{guid}/barcode", tags=["assets"])
    async def barcode(guid: GuidPath, body: BarcodeCallback, who: Claims) -> Ack:
        """The barcode reader's result; ends the barcode job (MOS linking, device targets)."""
        who = named_job(for_asset(who, guid), body.job)
        result = BarcodeResult.model_validate(body.model_dump(exclude={"job", "status"}))
        return await service.barcode(who, result, body.status)

    @api.post("/assets/{guid}/metadata", tags=["assets"])
    async def update_metadata(guid: GuidPath, body: MetadataUpdate, who: Claims) -> Ack:
        """A job's metadata result (e.g. OCR text), merged into the asset's metadata."""
        who = named_job(for_asset(who, guid), body.job)
        return await service.metadata_update(who, body.data, body.status)

    @api.get("/assets/{guid}/metadata", tags=["assets"])
    async def read_metadata(guid: GuidPath, who: Claims) -> dict[str, Any]:
        return await service.metadata(who, guid)

    @api.get("/assets/{guid}/links", tags=["assets"])
    async def read_links(guid: GuidPath, who: Claims) -> AssetLinks:
        """Where the asset's files can be fetched (ARS file proxy links; a local path when the
        job runs on the daemon's machine)."""
        return await service.links(who, guid)

    @api.post("/derivatives", tags=["derivatives"])
    async def register_derivative(body: Metadata, who: Claims) -> Ack:
        """Register a derivative (e.g. a cropped JPEG) as a new asset whose parent is the
        token's asset."""
        return await service.register_derivative(who, body)

    @api.post("/assets/{guid}/files", tags=["derivatives"])
    async def add_file(guid: GuidPath, body: FileInfo, who: Claims) -> Ack:
        """A file of the asset or of one of its derivatives (name, type, CRC-32, size MB)."""
        return await service.add_file(who, guid, body)

    @api.get("/assets/{guid}/files/{name}", tags=["reads"],
             response_class=FileResponse, responses={200: {"content": {
                 "application/octet-stream": {}}}})
    async def get_file(guid: GuidPath, name: FileName, who: Claims) -> FileResponse:
        """The bytes of one of the asset's files, for a cluster that does not share the
        daemon's disk (the `load` job); the header X-Check-Sum carries its CRC-32."""
        path, check_sum = await file_to_send(service, who, guid, name)
        return FileResponse(path, media_type="application/octet-stream",
                            headers={"X-Check-Sum": str(check_sum)})

    @api.put("/assets/{guid}/files/{name}", tags=["derivatives"])
    async def put_file(guid: GuidPath, name: FileName, request: Request, who: Claims) -> Ack:
        """The bytes of a file reported with `POST /assets/{guid}/files` (a derivative made on
        the cluster): kept in the daemon's work area, whose ARS sync uploads it like an
        original's files. The body's CRC-32 must match the reported one (422 otherwise)."""
        if files_root is None:
            raise HTTPException(503, "this daemon keeps no files (no work area configured)")
        return await receive_file(service, who, guid, name, request.stream(), files_root)

    @api.post("/assets/{guid}/derivative-uploaded", tags=["derivatives"])
    async def derivative_uploaded(guid: GuidPath, who: Claims) -> Ack:
        return await service.derivative_uploaded(who, guid)

    @api.post("/assets/{guid}/derivative-failed", tags=["derivatives"])
    async def derivative_failed(guid: GuidPath, body: DerivativeFailed, who: Claims) -> Ack:
        """Derivative creation failed: the asset is marked ISSUE_WITH_MEDIA with the note."""
        return await service.derivative_failed(for_asset(who, guid), body.ppi, body.note)

    @api.post("/assets/{guid}/clean-up", tags=["assets"])
    async def clean_up(guid: GuidPath, who: Claims) -> Ack:
        """The asset's files were removed from the cluster (hpc_ready = NO)."""
        return await service.clean_up_done(for_asset(who, guid))

    app.include_router(api)
    app.include_router(intake_router(intake, intake_token, intake_max_mb))
    # Pull clusters' agents (None: no agent API).
    app.include_router(agent_router(agent))
    # Operators (`dasscod ls`, `pause`, `cancel`, ...): named admin tokens; off without one.
    service_, reads_ = control if control is not None else (None, None)
    install_control_api(app, service_, reads_, control_tokens or {}, role=role)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up and serving."""
        return {"status": "ok"}

    # Looked up when /readyz is asked, not now: the contract (`dasscod openapi`) builds the
    # app without a store.
    ping_store = SharedPing(lambda: stores.ping())

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """MongoDB answers and this daemon leads: it can take callbacks. A standby
        answers 503 "standby"."""
        if role is not None and role() != "leader":
            return JSONResponse({"status": "standby"}, status_code=503)
        ping = await ping_store()
        if ping:
            return JSONResponse({"status": "ready"})
        return JSONResponse(
            {"status": "mongodb unreachable", "error": ping.error}, status_code=503
        )

    install_validation_answer(app)
    install_metrics(app, route=metrics_route)
    agent_tokens = {} if agent is None else {
        name: c.settings.agent_token.get_secret_value() for name, c in agent.clusters.items()
        if c.pull and c.settings.agent_token is not None}
    app.add_middleware(Guard, gates=_gates(
        verifier, intake_token, int(intake_max_mb * 1_000_000), intake_at_once, agent_tokens,
        list((control_tokens or {}).values())))
    return app


#: Job callbacks are small JSON documents (a metadata update with OCR text is the largest).
CALLBACK_MAX_BYTES = 256 * KB
AGENT_MAX_BYTES = 1024 * KB
#: The metadata part and the multipart framing of an intake upload, beyond its files.
INTAKE_OVERHEAD_BYTES = 1024 * KB


def _gates(verifier: Verifier, intake_token: str | None, intake_max_bytes: int,
           intake_at_once: int, agent_tokens: Mapping[str, str],
           control_tokens: list[str]) -> list[Gate]:
    """Who may send a body to which route, and how large (see `dasscod.listener.guard`).
    `agent_tokens`: each pull cluster's agent credential, by the cluster's name."""

    def job(token: str | None, _: Mapping[str, str]) -> Refusal:
        if token is None:
            return 401, ("missing bearer token: send the job's DASSCO_TOKEN as "
                         "'Authorization: Bearer'")
        try:
            verifier(token)
        except TokenError as exc:
            return 401, str(exc)
        return None

    def intake(token: str | None, _: Mapping[str, str]) -> Refusal:
        if intake_token is None:
            return 403, ("the intake API is disabled: set intake.api_token "
                         "(DASSCOD_INTAKE__API_TOKEN) to enable it")
        return None if _one_of(token, [intake_token]) else (
            401, "missing or wrong intake credential")

    # A token of no cluster: an unknown name costs the same comparison as a known one.
    nobody = secrets.token_urlsafe(32)

    def agent_(token: str | None, path: Mapping[str, str]) -> Refusal:
        """The token must be the agent credential of the cluster the path names: one
        cluster's agent cannot act for another, even with a body it never gets to send."""
        if token is None:
            return 401, ("missing agent credential: send the cluster's agent_token as "
                         "'Authorization: Bearer'")
        cluster = path["cluster"]
        expected = agent_tokens.get(cluster)
        if _one_of(token, [expected or nobody]) and expected is not None:
            return None
        return 403, f"not the agent credential of a pull cluster {cluster[:100]!r}"

    def operator(token: str | None, _: Mapping[str, str]) -> Refusal:
        if not control_tokens:
            return 403, ("the control API is off: give an admin token in control.tokens or "
                         "control.tokens_file")
        return None if _one_of(token, control_tokens) else (
            401, "missing or unknown admin token: send one of control.tokens as "
            "'Authorization: Bearer'")

    prefix = API_PREFIX
    return [
        gate(f"{prefix}/assets", intake, intake_max_bytes + INTAKE_OVERHEAD_BYTES, ["POST"],
             at_once=intake_at_once),
        gate(f"{prefix}/agent/(?P<cluster>[^/]*)(/.*)?", agent_, AGENT_MAX_BYTES),
        gate(f"{prefix}/control(/.*)?", operator),
        # A file's bytes: the route stops at the size the job reported for it.
        gate(f"{prefix}/assets/[^/]+/files/[^/]+", job, intake_max_bytes, ["PUT"]),
        gate(f"{prefix}/(jobs|assets|derivatives)(/.*)?", job, CALLBACK_MAX_BYTES),
    ]


def _one_of(offered: str | None, tokens: Iterable[str]) -> bool:
    """Compares with every token, in constant time per token."""
    if offered is None:
        return False
    found = False
    for token in tokens:
        found |= secrets.compare_digest(offered.encode(), token.encode())
    return found

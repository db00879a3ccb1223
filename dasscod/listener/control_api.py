"""`/api/v1/control/`: the operators' API (what the `dasscod` commands call).

Every route takes a named admin token (`control.tokens`), separate from job, agent and
intake credentials; the token's name is who the audit says acted. Without a configured token
the API answers 403 saying how to turn it on. Routes are thin: the work is in
`dasscod.services.control` (actions) and `dasscod.services.control_reads` (reads).

No `from __future__ import annotations`: FastAPI reads the annotations at runtime.
"""

import secrets
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from dasscod.model import GUID_PATTERN
from dasscod.protocol.callbacks import refusals
from dasscod.services.control import ActionResult, ControlError, ControlService
from dasscod.services.control_reads import (
    AssetPage,
    AuditView,
    ClusterView,
    ControlReads,
    ErrorGroup,
    LimitView,
    StateView,
    Timeline,
    older_than,
)
from dasscod.store.track_queries import AssetFilter

PREFIX = "/api/v1/control"
_bearer = HTTPBearer(auto_error=False, scheme_name="ControlToken",
                     description="A named admin token (control.tokens)")
GuidPath = Annotated[str, Path(pattern=GUID_PATTERN)]
Reason = Annotated[str | None, Field(default=None, max_length=500,
                                     description="Why: recorded in the audit")]


class PauseRequest(BaseModel):
    kind: Literal["asset", "pipeline", "cluster", "intake"]
    name: str | None = Field(default=None, max_length=200,
                             description="The asset guid, pipeline or cluster (not for intake)")
    reason: Reason = None


class DrainRequest(BaseModel):
    on: bool = Field(default=True, description="false ends the drain")
    reason: Reason = None


class ReasonRequest(BaseModel):
    reason: Reason = None


class RetryRequest(BaseModel):
    job: str | None = Field(default=None, max_length=100,
                            description="A job in ERROR or FAILED; none: every job in ERROR")
    from_job: str | None = Field(default=None, max_length=100,
                                 description="Run this job and every later one again")
    reason: Reason = None


class ArsRetryRequest(BaseModel):
    flag: str | None = Field(default=None, max_length=100,
                             description="An ARS flag in ERROR (is_in_ars, has_new_file, "
                             "has_open_share, erda_sync, update_metadata); none: every ARS "
                             "flag in ERROR")
    reason: Reason = None


class LimitRequest(BaseModel):
    target: str = Field(max_length=200, description="assets_in_flight, or cluster:NAME")
    value: int | None = Field(default=None, ge=1, le=100_000,
                              description="The new limit; null: back to the configured one")
    reason: Reason = None


def install_control_api(app: FastAPI, service: ControlService | None,
                        reads: ControlReads | None, tokens: dict[str, str], *,
                        role: Callable[[], str] | None = None) -> None:
    """Add the control routes to `app` (`service` None: the routes exist, and say that this
    process has no control service). `role` None: this daemon always leads; otherwise only
    the leader acts (its holds are the ones its dispatchers follow at once)."""

    async def operator(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> str:
        if not tokens:
            raise HTTPException(403, "the control API is off: give an admin token in "
                                "control.tokens or control.tokens_file (e.g. "
                                "DASSCOD_CONTROL__TOKENS='{\"alice\": \"...\"}')")
        if credentials is not None:
            offered = credentials.credentials.encode()
            for name, token in tokens.items():
                if secrets.compare_digest(offered, token.encode()):
                    return name
        raise HTTPException(401, "missing or unknown admin token: send one of control.tokens "
                            "as 'Authorization: Bearer' (dasscod reads it from "
                            "--token-file or DASSCOD_CONTROL_TOKEN)",
                            headers={"WWW-Authenticate": "Bearer"})

    Operator = Annotated[str, Depends(operator)]

    def actions() -> ControlService:
        if service is None:
            raise HTTPException(503, "this process runs no control service")
        if role is not None and role() != "leader":
            raise HTTPException(503, "this daemon is a standby: send operator actions to the "
                                "leading daemon (`dasscod --url`), or retry once it leads",
                                headers={"Retry-After": "5"})
        return service

    def queries() -> ControlReads:
        if reads is None:
            raise HTTPException(503, "this process runs no control service")
        return reads

    @app.exception_handler(ControlError)
    async def _refused(_: Request, exc: ControlError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    router = APIRouter(prefix=PREFIX, tags=["control"],
                       responses=refusals(400, 401, 403, 404, 408, 409, 413, 422, 503))

    @router.get("/assets")
    async def list_assets(
        _: Operator,
        status: Annotated[list[str], Query(description="jobs_status; repeat for several")] = [],  # noqa: B006
        job: str | None = None,
        pipeline: str | None = None,
        cluster: str | None = None,
        paused: bool = False,
        ars_error: Annotated[bool, Query(description="Only assets with an ARS flag in "
                                         "ERROR")] = False,
        older_than_s: Annotated[float | None, Query(ge=0)] = None,
        newer_than_s: Annotated[float | None, Query(ge=0)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        after: str | None = None,
    ) -> AssetPage:
        """Assets, newest first, filtered by overall status, the job they are at, pipeline,
        the cluster they run on, paused, an ARS flag in ERROR, and age (seconds since
        creation); paged by `after`."""
        where = AssetFilter(statuses=[s.upper() for s in status], job=job, pipeline=pipeline,
                            cluster=cluster, paused=paused, ars_error=ars_error,
                            created_before=older_than(older_than_s),
                            created_after=older_than(newer_than_s))
        return await queries().assets(where, limit=limit, after=after)

    @router.get("/assets/{guid}")
    async def show_asset(guid: GuidPath, _: Operator) -> Timeline:
        """One asset: every transition with its cause, every attempt of every job (cluster,
        scheduler job id, times, error), where the output is, its metadata and ARS state."""
        return await queries().timeline(guid)

    @router.get("/errors")
    async def errors(_: Operator) -> list[ErrorGroup]:
        """Assets in ERROR (and ARS refusals), grouped by job and reason."""
        return await queries().errors()

    @router.get("/clusters")
    async def clusters(_: Operator) -> list[ClusterView]:
        return await queries().cluster_views()

    @router.get("/limits")
    async def limits(_: Operator) -> list[LimitView]:
        return queries().limits()

    @router.post("/limits")
    async def set_limit(body: LimitRequest, who: Operator) -> ActionResult:
        """Change a limit at run time (kept across restarts until reset with value null)."""
        return await actions().set_limit(body.target, body.value, by=who, reason=body.reason)

    @router.get("/state")
    async def state(_: Operator) -> StateView:
        """What operators hold: pauses, the drain, changed limits."""
        return queries().state()

    @router.get("/audit")
    async def audit(
        _: Operator,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        by: str | None = None,
        target: str | None = None,
    ) -> list[AuditView]:
        """Operator actions, newest first."""
        return await queries().audit(limit, by=by, target=target)

    @router.post("/pause")
    async def pause(body: PauseRequest, who: Operator) -> ActionResult:
        """Pause an asset, a pipeline, a cluster or intake: in force before the next claim;
        what runs finishes."""
        return await actions().pause(body.kind, body.name, by=who, reason=body.reason)

    @router.post("/resume")
    async def resume(body: PauseRequest, who: Operator) -> ActionResult:
        return await actions().resume(body.kind, body.name, by=who, reason=body.reason)

    @router.post("/drain")
    async def drain(body: DrainRequest, who: Operator) -> ActionResult:
        """Take no new work (intake, assets not yet started) and let what is in flight end."""
        return await actions().drain(body.on, by=who, reason=body.reason)

    @router.post("/assets/{guid}/cancel")
    async def cancel(guid: GuidPath, body: ReasonRequest, who: Operator) -> ActionResult:
        """Cancel the asset: its live job is cancelled on the scheduler and every unfinished
        job ends CANCELLED."""
        return await actions().cancel(guid, by=who, reason=body.reason)

    @router.post("/assets/{guid}/retry")
    async def retry(guid: GuidPath, body: RetryRequest, who: Operator) -> ActionResult:
        """Retry a job in ERROR or FAILED (409 for any other), or run the asset again from a
        job (`from_job`)."""
        return await actions().retry(guid, body.job, from_job=body.from_job, by=who,
                                     reason=body.reason)

    @router.post("/assets/{guid}/ars-retry")
    async def ars_retry(guid: GuidPath, body: ArsRetryRequest, who: Operator) -> ActionResult:
        """Reset an ARS flag in ERROR (none named: every one) so that the ARS sync retries
        the asset at once; 409 when the flag is not in ERROR."""
        return await actions().ars_retry(guid, body.flag, by=who, reason=body.reason)

    app.include_router(router)

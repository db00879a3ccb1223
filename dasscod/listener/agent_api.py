"""`/api/v1/agent/{cluster}/...`: the agent of a pull cluster (`dassco-hpc agent`) takes
claimed jobs, reports the scheduler's job ids and the states it observes (what each request
does: `dasscod.services.agent`).

Every route takes the cluster's agent credential (`agent_token`) as a bearer token.
"""

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dasscod.cluster.configured import Cluster
from dasscod.protocol.agent import (
    ClaimedJob,
    ClaimRequest,
    ForgottenAnswer,
    ForgottenReport,
    LiveJob,
    RefusedReport,
    ReportAnswer,
    StatusReport,
    SubmittedReport,
)
from dasscod.protocol.callbacks import Ack, refusals
from dasscod.services.agent import AgentService

_bearer = HTTPBearer(auto_error=False, description="The cluster's agent credential (agent_token)")
CLUSTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


def agent_router(service: AgentService | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1/agent", tags=["agent"],
                       responses=refusals(400, 401, 403, 404, 408, 409, 413, 422, 503))

    async def pull_cluster(
        cluster: Annotated[str, Path(pattern=CLUSTER_NAME)],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Cluster:
        if credentials is None:
            raise HTTPException(
                401, "missing agent credential: send the cluster's agent_token as "
                "'Authorization: Bearer'", headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
        found = service.pull_cluster(cluster) if service is not None else None
        token = found.settings.agent_token if found is not None else None
        expected = token.get_secret_value() if token is not None else secrets.token_urlsafe(32)
        if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()) \
                or found is None or token is None:
            raise HTTPException(403, f"not the agent credential of a pull cluster {cluster!r}")
        return found

    Agent = Annotated[Cluster, Depends(pull_cluster)]

    def agents() -> AgentService:
        assert service is not None  # pull_cluster refuses every call without one
        return service

    @router.post("/{cluster}/claim")
    async def claim(cluster: Agent, body: ClaimRequest) -> list[ClaimedJob]:
        """Lease up to `max` claimed jobs to the agent, each with its batch script. A job is
        handed out again only when its lease (`lease_s`) ran out without a job id."""
        return await agents().claim(cluster, body.max)

    @router.post("/{cluster}/submitted")
    async def submitted(cluster: Agent, body: SubmittedReport) -> Ack:
        """The scheduler took the attempt under this job id (idempotent; a stale attempt is
        ignored)."""
        return await agents().submitted(cluster, body)

    @router.post("/{cluster}/refused")
    async def refused(cluster: Agent, body: RefusedReport) -> Ack:
        """The scheduler refused to take the attempt (qsub/sbatch exited non-zero; only when
        the command ran and answered -- an unknown outcome is left to the lease and the next
        run's lookup by name). The retry policy applies: RETRY, or ERROR with the message once
        the attempts are used up or the message says the request itself is wrong. Idempotent;
        a stale attempt or one that already has a job id is left alone."""
        return await agents().refused(cluster, body)

    @router.get("/{cluster}/jobs")
    async def jobs(cluster: Agent) -> list[LiveJob]:
        """The daemon's live jobs on the cluster that have a scheduler job id."""
        return await agents().live_jobs(cluster)

    @router.post("/{cluster}/report")
    async def report(cluster: Agent, body: StatusReport) -> ReportAnswer:
        """What the scheduler says about the agent's jobs. A live attempt that ended without
        its final callback is LOST; a job that is no attempt's live job is to be cancelled
        (`cancel`); settled assets' files on the cluster are to be removed (`forget`)."""
        return await agents().report(cluster, body)

    @router.post("/{cluster}/forgotten")
    async def forgotten(cluster: Agent, body: ForgottenReport) -> ForgottenAnswer:
        """The agent removed the files of these assets that a report's answer named
        (`forget`); the daemon stops asking (idempotent)."""
        return await agents().forgotten(cluster, body)

    return router

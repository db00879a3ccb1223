"""`/api/v1/agent/{cluster}/...`: the agent of a pull cluster (`dassco-hpc agent`) takes
claimed jobs, reports the scheduler's job ids and the states it observes.

The daemon never reaches a pull cluster. The dispatcher claims jobs for it as for any cluster
(WAITING -> STARTING); the agent then

- `claim`s them: each STARTING job without a job id and without a live lease is leased to the
  agent (a guarded write, so two agents never get the same job while the lease lasts) and
  handed out with its batch script (which carries the job's token);
- looks each one up by its deterministic name before submitting it, and reports the job id
  (`submitted`): a crash between the submission and the report is repaired by the next run,
  which finds the job by name when the lease has expired; a submission the scheduler refused
  (qsub/sbatch exited non-zero) is reported with its message (`refused`), and the retry
  policy applies (RETRY, or ERROR with the message once the attempts are used up or the
  message says retrying cannot help);
- reads the daemon's live jobs (`jobs`), asks the scheduler about them in one query and
  `report`s what it saw: a job that ended without its final callback is LOST (retry policy),
  as the watcher decides for other clusters; the answer names the scheduler jobs to cancel
  (attempts no longer live, e.g. timed out, or a second job of one attempt).

Every route takes the cluster's agent credential (`agent_token`) as a bearer token.
"""

import secrets
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from dasscod.cluster import torque_parse
from dasscod.cluster.base import SchedulerError, SchedulerState
from dasscod.cluster.configured import Cluster
from dasscod.cluster.pull import PullScheduler
from dasscod.listener.schemas import Ack
from dasscod.log import get_logger
from dasscod.model import GUID_PATTERN, Job, JobStatus, Track, utcnow
from dasscod.pipeline import ACTIVE, Event, JobEvent
from dasscod.services.launch import Launcher, scheduler_job_name

log = get_logger(__name__)

_bearer = HTTPBearer(auto_error=False, description="The cluster's agent credential (agent_token)")
CLUSTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
JOB_ID = r"^[A-Za-z0-9][A-Za-z0-9._\[\]-]{0,99}$"


class ClaimRequest(BaseModel):
    max: int = Field(default=10, ge=1, le=200, description="at most this many jobs")


class ClaimedJob(BaseModel):
    asset_guid: str
    job: str
    attempt: int
    name: str = Field(description="the scheduler job name: look for it before submitting")
    submit_with: str = Field(description="torque (qsub) or slurm (sbatch)")
    script: str = Field(description="the batch script; holds the job's token: write it 0600")


class AttemptRef(BaseModel):
    asset_guid: str = Field(pattern=GUID_PATTERN)
    job: str = Field(min_length=1, max_length=100)
    attempt: int = Field(ge=1)


class SubmittedReport(AttemptRef):
    hpc_job_id: str = Field(pattern=JOB_ID)


class RefusedReport(AttemptRef):
    message: str = Field(min_length=1, max_length=4000,
                         description="the submit command's complaint (stderr, else stdout)")
    exit_status: int | None = Field(default=None,
                                    description="the submit command's exit status")


class LiveJob(BaseModel):
    asset_guid: str
    job: str
    attempt: int
    name: str
    hpc_job_id: str
    status: str


class ObservedJob(AttemptRef):
    hpc_job_id: str = Field(pattern=JOB_ID)
    state: SchedulerState
    exit_code: int | None = None
    reason: str | None = Field(default=None, max_length=2000)
    exit_file: str | None = Field(
        default=None, max_length=500,
        description="the first line of the job's exit file (<state_dir>/<name>.exit, written "
        "by the Torque job script as its last act), for a job whose state is UNKNOWN: the "
        "daemon reads how the job ended from it",
    )

    def outcome(self) -> "ObservedJob":
        """This observation with an UNKNOWN state replaced by what the exit file says (the
        agent's reason, that the scheduler did not say, is moot then)."""
        record = (torque_parse.parse_exit_record(self.exit_file)
                  if self.exit_file and self.state is SchedulerState.UNKNOWN else None)
        if record is None:
            return self
        state, code, reason = record.outcome()
        return self.model_copy(update={
            "state": state, "exit_code": code, "reason": reason,
        })  # fmt: skip


class StatusReport(BaseModel):
    jobs: list[ObservedJob] = Field(default_factory=list, max_length=10_000)


class ReportAnswer(BaseModel):
    cancel: list[str] = Field(description="scheduler job ids to cancel (qdel / scancel)")
    lost: int = Field(description="jobs the report ended (gone without a final callback)")
    submitted: int = Field(description="job ids the report recorded (found after a crash)")


def _ended(state: SchedulerState) -> bool:
    return state.finished or state is SchedulerState.UNKNOWN


def _lost(job: Job, seen: ObservedJob) -> JobEvent:
    exit_text = f", exit code {seen.exit_code}" if seen.exit_code is not None else ""
    return JobEvent(
        job.name,
        Event.LOST,
        attempt=job.attempt,
        error=f"job ended ({seen.state}{exit_text}) without reporting back"
        + (f": {seen.reason}" if seen.reason else ""),
        exit_state=str(seen.state),
    )


def agent_router(launcher: Launcher | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1/agent", tags=["agent"])

    async def pull_cluster(
        cluster: Annotated[str, Path(pattern=CLUSTER_NAME)],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Cluster:
        if credentials is None:
            raise HTTPException(
                401, "missing agent credential: send the cluster's agent_token as "
                "'Authorization: Bearer'", headers={"WWW-Authenticate": "Bearer"},
            )
        found = launcher.clusters.get(cluster) if launcher is not None else None
        token = found.settings.agent_token if found is not None and found.pull else None
        expected = token.get_secret_value() if token is not None else secrets.token_urlsafe(32)
        if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()) \
                or found is None or token is None:
            raise HTTPException(403, f"not the agent credential of a pull cluster {cluster!r}")
        return found

    Agent = Annotated[Cluster, Depends(pull_cluster)]

    def owner() -> Launcher:
        assert launcher is not None  # pull_cluster refuses every call without one
        return launcher

    def mine(cluster: Cluster, track: Track, name: str) -> Job:
        try:
            job = track.job(name)
        except KeyError:
            raise HTTPException(404, f"asset {track.id} has no job {name!r}") from None
        if job.cluster != cluster.name:
            raise HTTPException(403, f"{track.id}/{name} does not run on {cluster.name}")
        return job

    @router.post("/{cluster}/claim")
    async def claim(cluster: Agent, body: ClaimRequest) -> list[ClaimedJob]:
        """Lease up to `max` claimed jobs to the agent, each with its batch script. A job is
        handed out again only when its lease (`lease_s`) ran out without a job id."""
        launch = owner()
        store = launch.stores.track
        scheduler = cluster.scheduler
        assert isinstance(scheduler, PullScheduler)
        now = utcnow()
        lease_until = now + timedelta(seconds=cluster.settings.lease_s)
        candidates = sorted(
            ((t, j) for t in await store.active_on(cluster.name) for j in t.job_list
             if j.cluster == cluster.name and j.status is JobStatus.STARTING
             and not j.has_scheduler_id
             and (j.lease_until is None or j.lease_until <= now)),
            key=lambda pair: pair[1].job_claimed_time or now,
        )
        handed: list[ClaimedJob] = []
        for track, job in candidates:
            if len(handed) >= body.max:
                break
            try:
                script = scheduler.render(launch.job_spec(track, job.name))
            except SchedulerError as exc:
                await store.apply(
                    track.id,
                    [JobEvent(job.name, Event.SUBMIT_FAILED, attempt=job.attempt,
                              error=str(exc), retryable=exc.retryable)],
                    cause=f"agent {cluster.name}: claim", known=track,
                )
                continue
            result = await store.apply(
                track.id,
                [JobEvent(job.name, Event.LEASE, attempt=job.attempt, lease_until=lease_until)],
                cause=f"agent {cluster.name}: claim", known=track, now=now,
            )
            if not result.applied:
                continue  # another agent got it first, or it moved on
            handed.append(ClaimedJob(
                asset_guid=track.id, job=job.name, attempt=job.attempt,
                name=scheduler_job_name(track.id, job.name, job.attempt),
                submit_with=scheduler.submit_with, script=script,
            ))  # fmt: skip
        if handed:
            log.info("jobs leased to agent", cluster=cluster.name, jobs=len(handed))
        return handed

    @router.post("/{cluster}/submitted")
    async def submitted(cluster: Agent, body: SubmittedReport) -> Ack:
        """The scheduler took the attempt under this job id (idempotent; a stale attempt is
        ignored)."""
        store = owner().stores.track
        track = await store.get(body.asset_guid)
        if track is None:
            raise HTTPException(404, f"no asset {body.asset_guid}")
        mine(cluster, track, body.job)
        result = await store.apply(
            track.id,
            [JobEvent(body.job, Event.SUBMITTED, attempt=body.attempt,
                      hpc_job_id=body.hpc_job_id)],
            cause=f"agent {cluster.name}", known=track,
        )
        job = result.track.job(body.job)
        return Ack(applied=result.applied, status=str(job.status),
                   detail="; ".join(result.ignored) or None)

    @router.post("/{cluster}/refused")
    async def refused(cluster: Agent, body: RefusedReport) -> Ack:
        """The scheduler refused to take the attempt (qsub/sbatch exited non-zero; only when
        the command ran and answered -- an unknown outcome is left to the lease and the next
        run's lookup by name). The retry policy applies: RETRY, or ERROR with the message once
        the attempts are used up or the message says the request itself is wrong. Idempotent;
        a stale attempt or one that already has a job id is left alone."""
        store = owner().stores.track
        track = await store.get(body.asset_guid)
        if track is None:
            raise HTTPException(404, f"no asset {body.asset_guid}")
        mine(cluster, track, body.job)
        scheduler = cluster.scheduler
        assert isinstance(scheduler, PullScheduler)
        error = scheduler.refusal(body.message, body.exit_status)
        log.warning("agent reports a refused submission", cluster=cluster.name,
                    asset_guid=track.id, job=body.job, attempt=body.attempt, error=str(error),
                    retryable=error.retryable)
        result = await store.apply(
            track.id,
            [JobEvent(body.job, Event.SUBMIT_FAILED, attempt=body.attempt, error=str(error),
                      retryable=error.retryable)],
            cause=f"agent {cluster.name}", known=track,
        )
        job = result.track.job(body.job)
        return Ack(applied=result.applied, status=str(job.status),
                   detail="; ".join(result.ignored) or None)

    @router.get("/{cluster}/jobs")
    async def jobs(cluster: Agent) -> list[LiveJob]:
        """The daemon's live jobs on the cluster that have a scheduler job id."""
        tracks = await owner().stores.track.active_on(cluster.name)
        return [
            LiveJob(asset_guid=t.id, job=j.name, attempt=j.attempt,
                    name=scheduler_job_name(t.id, j.name, j.attempt),
                    hpc_job_id=str(j.hpc_job_id), status=str(j.status))
            for t in tracks for j in t.job_list
            if j.cluster == cluster.name and j.status in ACTIVE and j.has_scheduler_id
        ]  # fmt: skip

    @router.post("/{cluster}/report")
    async def report(cluster: Agent, body: StatusReport) -> ReportAnswer:
        """What the scheduler says about the agent's jobs. A live attempt that ended without
        its final callback is LOST; a job that is no attempt's live job is to be cancelled."""
        store = owner().stores.track
        tracks = {t.id: t for t in await store.find({s.asset_guid for s in body.jobs})}
        answer = ReportAnswer(cancel=[], lost=0, submitted=0)
        cause = f"agent {cluster.name}: report"
        for observed in body.jobs:
            seen = observed.outcome()
            track = tracks.get(seen.asset_guid)
            if track is None or not any(j.name == seen.job for j in track.job_list):
                continue  # not ours to judge
            job = track.job(seen.job)
            if job.cluster != cluster.name and job.attempt == seen.attempt:
                continue
            live = job.attempt == seen.attempt and job.status in ACTIVE
            if live and not job.has_scheduler_id:
                # Submitted by an agent that died before reporting it: record it now.
                events = [JobEvent(job.name, Event.SUBMITTED, attempt=job.attempt,
                                   hpc_job_id=seen.hpc_job_id)]
                if _ended(seen.state):
                    events.append(_lost(job, seen))
                result = await store.apply(track.id, events, cause=cause, known=track)
                tracks[track.id] = result.track
                answer.submitted += int(result.applied)
                answer.lost += int(_ended(seen.state) and result.applied)
            elif live and str(job.hpc_job_id) == seen.hpc_job_id:
                if _ended(seen.state):
                    result = await store.apply(track.id, [_lost(job, seen)], cause=cause,
                                               known=track)
                    tracks[track.id] = result.track
                    answer.lost += int(result.applied)
            elif not _ended(seen.state) and not (
                job.attempt == seen.attempt and job.status is JobStatus.DONE
            ):
                # A stale attempt, one that timed out, or a second job of a live attempt:
                # at most one live scheduler job per attempt.
                answer.cancel.append(seen.hpc_job_id)
        if answer.cancel or answer.lost or answer.submitted:
            log.info("agent report", cluster=cluster.name, lost=answer.lost,
                     submitted=answer.submitted, cancel=answer.cancel)
        return answer

    return router

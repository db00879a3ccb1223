"""What a pull cluster's agent (`dassco-hpc agent`) may ask of the daemon.

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
- reads the daemon's live jobs (`live_jobs`), asks the scheduler about them in one query and
  `report`s what it saw: a job that ended without its final callback is LOST (retry policy),
  by the same rule as the watcher's for other clusters (`services.lost`). The report also
  holds every other live job the agent submitted (its script is in the agent's state folder):
  the answer names those to cancel, by the watcher's stray rule (`services.strays`: attempts
  no longer live, e.g. timed out, after `grace_s` if the job runs; a second job of one
  attempt, the job of an asset this daemon does not track, at once);
- removes the files retention no longer needs on the cluster: the report's answer names
  settled assets (`forget`: the work folder and the attempts' state files, recorded by
  retention in `agent_cleanup`), and the agent says which it removed (`forgotten`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from dasscod.cluster.base import JobSpec, SchedulerError
from dasscod.cluster.configured import Cluster
from dasscod.cluster.pull import PullScheduler
from dasscod.log import get_logger
from dasscod.model import Job, JobStatus, Track, utcnow
from dasscod.pipeline import ACTIVE, Event, JobEvent
from dasscod.protocol.agent import (
    ClaimedJob,
    ForgetOrder,
    ForgottenAnswer,
    ForgottenReport,
    LiveJob,
    RefusedReport,
    ReportAnswer,
    StatusReport,
    SubmittedReport,
)
from dasscod.protocol.callbacks import Ack
from dasscod.services.launch import scheduler_job_name
from dasscod.services.lost import adopted, has_ended, lost
from dasscod.services.replies import Rejected, ack
from dasscod.services.strays import StrayClock, same_job, unaccounted
from dasscod.store import Stores

log = get_logger(__name__)

#: Assets whose files an agent is told to remove per report.
FORGET_BATCH = 50


@dataclass
class AgentService:
    stores: Stores
    clusters: Mapping[str, Cluster]
    #: Builds a claimed attempt's job (command, environment with its token, limits).
    job_spec: Callable[[Track, str], JobSpec]
    #: A stray job whose attempt has just ended is left this long to leave by itself
    #: (`timing.grace_s`).
    grace_s: float = 120.0
    _strays: dict[str, StrayClock] = field(default_factory=dict, init=False)

    def pull_cluster(self, name: str) -> Cluster | None:
        """The pull cluster of this name, if there is one."""
        cluster = self.clusters.get(name)
        return cluster if cluster is not None and cluster.pull else None

    async def claim(self, cluster: Cluster, most: int) -> list[ClaimedJob]:
        """Lease up to `most` claimed jobs to the agent, each with its batch script. A job is
        handed out again only when its lease (`lease_s`) ran out without a job id."""
        store = self.stores.track
        scheduler = _pull_scheduler(cluster)
        now = utcnow()
        lease_until = now + timedelta(seconds=cluster.settings.lease_s)
        candidates = sorted(
            ((t, j) for t in await store.active_on(cluster.name) for j in t.job_list
             if j.cluster == cluster.name and j.status is JobStatus.STARTING
             and not j.has_scheduler_id
             and (j.lease_until is None or j.lease_until <= now)),
            key=lambda pair: pair[1].job_claimed_time or now,
        )  # fmt: skip
        handed: list[ClaimedJob] = []
        for track, job in candidates:
            if len(handed) >= most:
                break
            try:
                script = scheduler.render(self.job_spec(track, job.name))
            except SchedulerError as exc:
                await store.apply(
                    track.id,
                    [JobEvent(job.name, Event.SUBMIT_FAILED, attempt=job.attempt,
                              error=str(exc), retryable=exc.retryable)],
                    cause=f"agent {cluster.name}: claim", known=track,
                )  # fmt: skip
                continue
            result = await store.apply(
                track.id,
                [JobEvent(job.name, Event.LEASE, attempt=job.attempt, lease_until=lease_until)],
                cause=f"agent {cluster.name}: claim", known=track, now=now,
            )  # fmt: skip
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

    async def submitted(self, cluster: Cluster, body: SubmittedReport) -> Ack:
        """The scheduler took the attempt under this job id (idempotent; a stale attempt is
        ignored)."""
        track = await self._track(cluster, body.asset_guid, body.job)
        result = await self.stores.track.apply(
            track.id,
            [JobEvent(body.job, Event.SUBMITTED, attempt=body.attempt,
                      hpc_job_id=body.hpc_job_id)],
            cause=f"agent {cluster.name}", known=track,
        )  # fmt: skip
        return ack(result, body.job)

    async def refused(self, cluster: Cluster, body: RefusedReport) -> Ack:
        """The scheduler refused to take the attempt (qsub/sbatch exited non-zero; only when
        the command ran and answered -- an unknown outcome is left to the lease and the next
        run's lookup by name). The retry policy applies: RETRY, or ERROR with the message once
        the attempts are used up or the message says the request itself is wrong. Idempotent;
        a stale attempt or one that already has a job id is left alone."""
        track = await self._track(cluster, body.asset_guid, body.job)
        error = _pull_scheduler(cluster).refusal(body.message, body.exit_status)
        log.warning("agent reports a refused submission", cluster=cluster.name,
                    asset_guid=track.id, job=body.job, attempt=body.attempt, error=str(error),
                    retryable=error.retryable)  # fmt: skip
        result = await self.stores.track.apply(
            track.id,
            [JobEvent(body.job, Event.SUBMIT_FAILED, attempt=body.attempt, error=str(error),
                      retryable=error.retryable)],
            cause=f"agent {cluster.name}", known=track,
        )  # fmt: skip
        return ack(result, body.job)

    async def live_jobs(self, cluster: Cluster) -> list[LiveJob]:
        """The daemon's live jobs on the cluster that have a scheduler job id."""
        tracks = await self.stores.track.active_on(cluster.name)
        return [
            LiveJob(asset_guid=t.id, job=j.name, attempt=j.attempt,
                    name=scheduler_job_name(t.id, j.name, j.attempt),
                    hpc_job_id=str(j.hpc_job_id), status=str(j.status))
            for t in tracks for j in t.job_list
            if j.cluster == cluster.name and j.status in ACTIVE and j.has_scheduler_id
        ]  # fmt: skip

    async def report(self, cluster: Cluster, body: StatusReport) -> ReportAnswer:
        """What the scheduler says about the agent's jobs. A live attempt that ended without
        its final callback is LOST; a job no live attempt accounts for (`services.strays`) is
        to be cancelled."""
        store = self.stores.track
        tracks = {t.id: t for t in await store.find({s.asset_guid for s in body.jobs})}
        answer = ReportAnswer(cancel=[], lost=0, submitted=0)
        cause = f"agent {cluster.name}: report"
        strays = self._strays.setdefault(cluster.name, StrayClock(self.grace_s))
        strays.forget_all_but({s.hpc_job_id for s in body.jobs})
        for observed in body.jobs:
            seen = observed.outcome()
            track = tracks.get(seen.asset_guid)
            job = _job_of(track, seen.job)
            ended = has_ended(seen.state)
            if (track is not None and job is not None and job.cluster == cluster.name
                    and job.attempt == seen.attempt and job.status in ACTIVE):
                if not job.has_scheduler_id:
                    # Submitted by an agent that died before reporting it: record it now.
                    events = adopted(job, seen.hpc_job_id, seen)
                    result = await store.apply(track.id, events, cause=cause, known=track)
                    tracks[track.id] = result.track
                    answer.submitted += int(result.applied)
                    answer.lost += int(ended and result.applied)
                    continue
                if same_job(str(job.hpc_job_id), seen.hpc_job_id):
                    if ended:
                        result = await store.apply(track.id, [lost(job, seen)], cause=cause,
                                                   known=track)  # fmt: skip
                        tracks[track.id] = result.track
                        answer.lost += int(result.applied)
                    continue
            if ended:
                continue  # gone by itself: nothing to cancel
            key = (seen.asset_guid, seen.job, seen.attempt)
            why, at_once = unaccounted(track, key, cluster.name, seen.hpc_job_id, seen.state)
            if why is None:
                strays.accounted(seen.hpc_job_id)
            elif strays.due(seen.hpc_job_id, at_once=at_once):
                if strays.first_warning(seen.hpc_job_id):
                    log.warning("the agent is told to cancel a job that no live attempt "
                                "accounts for", cluster=cluster.name,
                                hpc_job_id=seen.hpc_job_id, asset_guid=seen.asset_guid,
                                job=seen.job, attempt=seen.attempt, state=str(seen.state),
                                reason=why)  # fmt: skip
                answer.cancel.append(seen.hpc_job_id)
        if answer.cancel or answer.lost or answer.submitted:
            log.info("agent report", cluster=cluster.name, lost=answer.lost,
                     submitted=answer.submitted, cancel=answer.cancel)  # fmt: skip
        answer.forget = await self._forget_orders(cluster)
        return answer

    async def _forget_orders(self, cluster: Cluster) -> list[ForgetOrder]:
        """Settled assets whose files on the cluster retention wants gone (a batch per
        report; the rest come with the next ones). Never an asset with a job running."""
        orders = []
        for track in await self.stores.track.awaiting_agent_cleanup(cluster.name, FORGET_BATCH):
            if track.in_flight or any(j.status in ACTIVE for j in track.job_list):
                continue  # run again by an operator since: its files are in use
            for entry in track.agent_cleanup:
                if entry.cluster == cluster.name:
                    orders.append(ForgetOrder(asset_guid=track.id, work_dir=entry.work_dir,
                                              names=entry.names))
        return orders

    async def forgotten(self, cluster: Cluster, body: ForgottenReport) -> ForgottenAnswer:
        """The agent removed these assets' files on the cluster: take the cluster off each
        one's clean-up list (idempotent; an asset not waiting for it is left alone)."""
        cleared = 0
        for guid in dict.fromkeys(body.asset_guids):
            track = await self.stores.track.get(guid)
            if track is None or not any(c.cluster == cluster.name for c in track.agent_cleanup):
                continue
            rest = [c for c in track.agent_cleanup if c.cluster != cluster.name]
            result = await self.stores.track.apply(
                guid, asset_fields={"agent_cleanup": rest}, known=track,
                expect={"agent_cleanup": track.agent_cleanup},
                cause=f"agent {cluster.name}: files on the cluster removed",
            )  # fmt: skip
            cleared += int(result.applied)
        if cleared:
            log.info("agent removed asset files", cluster=cluster.name, assets=cleared)
        return ForgottenAnswer(cleared=cleared)

    async def _track(self, cluster: Cluster, guid: str, name: str) -> Track:
        """The asset, which must have this job on this cluster."""
        track = await self.stores.track.get(guid)
        if track is None:
            raise Rejected(404, f"no asset {guid}")
        _job_on(cluster, track, name)
        return track


def _job_of(track: Track | None, name: str) -> Job | None:
    return next((j for j in track.job_list if j.name == name), None) if track else None


def _job_on(cluster: Cluster, track: Track, name: str) -> Job:
    try:
        job = track.job(name)
    except KeyError:
        raise Rejected(404, f"asset {track.id} has no job {name!r}") from None
    if job.cluster != cluster.name:
        raise Rejected(403, f"{track.id}/{name} does not run on {cluster.name}")
    return job


def _pull_scheduler(cluster: Cluster) -> PullScheduler:
    scheduler = cluster.scheduler
    assert isinstance(scheduler, PullScheduler)  # pull_cluster() hands out pull clusters only
    return scheduler

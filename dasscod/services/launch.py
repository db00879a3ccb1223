"""Submitting one claimed job attempt to its cluster's scheduler.

The job is already STARTING in the store when we get here (claimed by a guarded write), so
a crash at any point leaves a STARTING job that the watcher reconciles by the attempt's
deterministic scheduler name: it is never submitted twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from dasscod.cluster.base import JobSpec, SchedulerError, TransportError
from dasscod.cluster.configured import Cluster
from dasscod.log import get_logger
from dasscod.model import JobStatus, Track
from dasscod.pipeline import Event, JobEvent, Pipeline
from dasscod.store import Stores
from dasscod.tokens import JobClaims, Keys, issue

log = get_logger(__name__)

PLACEHOLDERS = ("module", "python", "guid", "job", "attempt")


def scheduler_job_name(asset_guid: str, job: str, attempt: int) -> str:
    """Deterministic per attempt: how the daemon recognises its own jobs after a crash."""
    return f"dassco.{asset_guid}.{job}.{attempt}"


AttemptKey = tuple[str, str, int]


def parse_job_name(name: str) -> AttemptKey | None:
    """(asset guid, job, attempt) of a name scheduler_job_name made; None for other names."""
    if not name.startswith("dassco."):
        return None
    parts = name.removeprefix("dassco.").rsplit(".", 2)
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2])


class Reachability(Protocol):
    def unreachable(self, cluster: str, error: str) -> None: ...

    def reached(self, cluster: str) -> None: ...


@dataclass
class Launcher:
    stores: Stores
    clusters: Mapping[str, Cluster]
    pipelines: Mapping[str, Pipeline]
    callback_base: str
    token_secret: Keys
    #: Upper bound of a token's lifetime (security.token_ttl_s).
    token_ttl_s: float
    #: Attempts whose submission is under way in this process; the watcher leaves them alone.
    submitting: set[AttemptKey] = field(default_factory=set)
    #: Told when a cluster could not be reached, and when it answered again.
    reachability: Reachability | None = None
    #: A token lives for its job's time limit plus these: how long the job may wait in the
    #: queue (timing.max_queue_s) and the grace after its limit (timing.grace_s).
    token_queue_s: float = 0.0
    token_grace_s: float = 0.0

    def hold(self, track: Track, job: str) -> AttemptKey:
        """Mark an attempt as being submitted; call it right after the claim is written,
        before yielding to any other task."""
        key = (track.id, job, track.job(job).attempt)
        self.submitting.add(key)
        return key

    def token_lifetime_s(self, time_limit_s: float) -> float:
        """A token dies with its job: its time limit, queue time and grace, at most
        `token_ttl_s`."""
        return min(self.token_ttl_s, time_limit_s + self.token_queue_s + self.token_grace_s)

    def job_spec(self, track: Track, job_name: str) -> JobSpec:
        job = track.job(job_name)
        pipeline = self.pipelines[track.pipeline]
        spec = pipeline.spec(job_name)
        assert job.cluster is not None
        cluster = self.clusters[job.cluster]
        values = {
            "module": spec.module_name,
            "python": cluster.settings.python,
            "guid": track.id,
            "job": job_name,
            "attempt": str(job.attempt),
        }
        try:
            argv = tuple(part.format_map(values) for part in spec.command)
        except (KeyError, ValueError) as exc:
            raise SchedulerError(
                f"pipeline {pipeline.name} job {job_name}: bad command template {spec.command}: "
                f"{exc}; placeholders are {', '.join('{' + p + '}' for p in PLACEHOLDERS)}",
                retryable=False,
            ) from exc
        workdir = cluster.workdir(track.id)
        token = issue(
            self.token_secret,
            JobClaims(track.id, job_name, job.attempt),
            ttl_s=self.token_lifetime_s(spec.time_limit_s),
        )
        env = {
            **cluster.settings.env,
            "DASSCO_CALLBACK_URL": self.callback_base,
            "DASSCO_TOKEN": token,
            "DASSCO_ASSET_GUID": track.id,
            "DASSCO_JOB": job_name,
            "DASSCO_ATTEMPT": str(job.attempt),
            "DASSCO_WORKDIR": str(workdir),
        }
        if track.temporary_path_local:
            env["DASSCO_ASSET_FILES"] = track.temporary_path_local
        return JobSpec(
            name=scheduler_job_name(track.id, job_name, job.attempt),
            argv=argv,
            workdir=workdir,
            env=env,
            time_limit_s=spec.time_limit_s,
            cpus=spec.cpus,
            memory_mb=spec.memory_mb,
        )

    async def submit(self, track: Track, job_name: str, key: AttemptKey) -> None:
        job = track.job(job_name)
        logger = log.bind(asset_guid=track.id, job=job_name, attempt=job.attempt,
                          cluster=job.cluster)
        try:
            assert job.cluster is not None
            if self.clusters[job.cluster].pull:
                # The cluster's agent takes it from the listener (a lease, then its job id):
                # the claimed job stays STARTING until then.
                logger.info("claimed for the pull cluster's agent")
                return
            try:
                spec = self.job_spec(track, job_name)
                job_id = await self.clusters[job.cluster].scheduler.submit(spec)
            except SchedulerError as exc:
                logger.warning("submission refused", error=str(exc), retryable=exc.retryable)
                await self.stores.track.apply(
                    track.id,
                    [JobEvent(job_name, Event.SUBMIT_FAILED, attempt=job.attempt,
                              error=str(exc), retryable=exc.retryable)],
                    cause="dispatch",
                    known=track,
                )
                return
            except TransportError as exc:
                # The command may have run even though we got no answer: leave the job
                # STARTING; the watcher asks the scheduler by name before anything is retried.
                logger.warning("submission outcome unknown, watcher will reconcile",
                               error=str(exc))
                if self.reachability is not None and job.cluster is not None:
                    self.reachability.unreachable(job.cluster, str(exc))
                return
            if self.reachability is not None and job.cluster is not None:
                self.reachability.reached(job.cluster)
            logger.info("submitted", hpc_job_id=job_id)
            result = await self.stores.track.apply(
                track.id,
                [JobEvent(job_name, Event.SUBMITTED, attempt=job.attempt, hpc_job_id=job_id)],
                cause="dispatch",
                known=track,
            )
            if result.track.job(job_name).status is JobStatus.CANCELLED:
                # An operator cancelled the asset while this submission was under way: the
                # cancel left this attempt to us, so the job it started must not run on.
                logger.info("cancelled while being submitted; cancelling it", hpc_job_id=job_id)
                try:
                    await self.clusters[job.cluster].scheduler.cancel(job_id)
                except (SchedulerError, TransportError) as exc:
                    logger.error("could not cancel the job of a cancelled asset: cancel it "
                                 "by hand", hpc_job_id=job_id, error=str(exc))
        finally:
            self.submitting.discard(key)

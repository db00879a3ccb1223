"""Operators' reads: asset listings, one asset's timeline, errors by reason, clusters, limits,
holds and the audit trail. Plain answers built from the store and the throttle; nothing here
writes."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from dasscod.cluster.configured import Cluster
from dasscod.coordination import Throttle
from dasscod.holds import ASSETS_IN_FLIGHT, LIMIT, PAUSE, Hold, Holds, cluster_target
from dasscod.model import Job, JobStatus, Track, utcnow
from dasscod.pipeline import ACTIVE, current_jobs
from dasscod.services.ars_retry import flags_in_error
from dasscod.services.control import ConfiguredLimits, ControlError
from dasscod.services.launch import scheduler_job_name
from dasscod.store import Stores
from dasscod.store.track_queries import AssetFilter, BadCursor

S = JobStatus
MAX_PAGE = 500
#: Assets named per error group.
GROUP_EXAMPLES = 5


class AssetRow(BaseModel):
    guid: str
    pipeline: str
    status: str
    #: Where the asset is: its current jobs with their status and attempt.
    at: list[str]
    clusters: list[str]
    paused: bool
    created: datetime
    error: str | None = None
    #: ARS flags in ERROR: the ARS sync gave the asset up there (`dasscod ars-retry`).
    ars_errors: list[str] = []


class AssetPage(BaseModel):
    assets: list[AssetRow]
    #: Give it as `after` for the next page; None on the last page.
    next: str | None = None


class Attempt(BaseModel):
    attempt: int
    cluster: str | None = None
    hpc_job_id: str | None = None
    claimed: datetime | None = None
    queued: datetime | None = None
    started: datetime | None = None
    ended: datetime | None = None
    outcome: str | None = None
    error: str | None = None


class JobView(BaseModel):
    name: str
    priority: int
    status: str
    attempt: int
    max_attempts: int
    cluster: str | None = None
    hpc_job_id: str | None = None
    last_error: str | None = None
    exit_state: str | None = None
    run_time_s: float | None = None
    attempts: list[Attempt]
    #: Where the current attempt's output is on its cluster (scheduler files, work folder).
    output: list[str] = []


class Step(BaseModel):
    at: datetime
    job: str | None = None
    #: Asset-level steps: the flag that changed.
    field: str | None = None
    attempt: int | None = None
    from_: str
    to: str
    cause: str
    by: str | None = None
    reason: str | None = None


class Timeline(BaseModel):
    guid: str
    pipeline: str
    status: str
    paused: bool
    created: datetime
    #: The job that failed the asset (ERROR), if it did.
    failed_job: str | None = None
    jobs: list[JobView]
    history: list[Step]
    ars: dict[str, Any]
    files: list[dict[str, Any]]
    metadata: dict[str, Any] | None = None
    #: Pull clusters whose agent has yet to remove the asset's files there (retention).
    files_left_on: list[str] = []


class ErrorGroup(BaseModel):
    job: str
    reason: str
    count: int
    assets: list[str]


class ClusterView(BaseModel):
    name: str
    scheduler: str
    max_jobs: int
    configured_max_jobs: int
    #: Jobs of this daemon starting, queued or running there (the throttle's count).
    live_jobs: int
    #: Assets with a job there, by the store (includes another daemon's writes).
    assets_active: int
    reachable: bool
    #: Seconds until an unreachable cluster is tried again.
    retry_in_s: float | None = None
    paused: Hold | None = None
    #: A pull cluster: settled assets whose files there its agent has yet to remove (a
    #: number that keeps growing: the agent does not run, or is older than this daemon).
    files_to_remove: int = 0


class LimitView(BaseModel):
    target: str
    limit: int
    configured: int
    in_use: int
    set: Hold | None = None


class StateView(BaseModel):
    draining: bool
    assets_in_flight: int
    holds: list[Hold]


class AuditView(BaseModel):
    at: datetime
    by: str
    action: str
    target: str
    reason: str | None = None
    outcome: str


class ControlReads:
    def __init__(self, *, stores: Stores, holds: Holds, throttle: Throttle,
                 clusters: Mapping[str, Cluster], configured: ConfiguredLimits) -> None:
        self.stores = stores
        self.holds = holds
        self.throttle = throttle
        self.clusters = clusters
        self.configured = configured

    async def assets(self, where: AssetFilter, *, limit: int, after: str | None) -> AssetPage:
        bad = [s for s in where.statuses if s not in JobStatus.__members__]
        if bad:
            raise ControlError(422, f"unknown status {', '.join(bad)}; statuses: "
                               + ", ".join(JobStatus.__members__))
        try:
            rows, cursor = await self.stores.track_queries.listing(
                where, limit=page_size(limit), after=after)
        except BadCursor as exc:
            raise ControlError(422, str(exc)) from exc
        return AssetPage(assets=[asset_row(t) for t in rows], next=cursor)

    async def timeline(self, guid: str) -> Timeline:
        track = await self.stores.track.get(guid)
        if track is None:
            raise ControlError(404, f"no asset {guid}: check the guid (`dasscod ls` lists "
                               "assets)")
        metadata = await self.stores.metadata.get(guid)
        failed = next((j.name for j in track.failed_jobs), None)
        return Timeline(
            guid=track.id, pipeline=track.pipeline, status=str(track.jobs_status),
            paused=track.paused, created=track.created_timestamp, failed_job=failed,
            jobs=[self._job_view(track, j) for j in track.job_list],
            history=[Step(at=h.at, job=h.job, field=h.field, attempt=h.attempt,
                          from_=h.from_, to=h.to,
                          cause=h.cause, by=h.by, reason=h.reason) for h in track.history],
            ars=ars_state(track),
            files=[{"name": f.name, "size_mb": f.file_size, "crc32": f.check_sum,
                    "erda_sync": str(f.erda_sync), "deleted": f.deleted}
                   for f in track.file_list],
            metadata={k: v for k, v in metadata.items() if k != "_id"} if metadata else None,
            files_left_on=[c.cluster for c in track.agent_cleanup],
        )  # fmt: skip

    def _job_view(self, track: Track, job: Job) -> JobView:
        cluster = self.clusters.get(job.cluster or "")
        output = (output_paths(cluster, track.id, job)
                  if cluster is not None and job.attempt > 0 else [])
        return JobView(
            name=job.name, priority=job.priority, status=str(job.status), attempt=job.attempt,
            max_attempts=job.max_attempts, cluster=job.cluster,
            hpc_job_id=str(job.hpc_job_id) if job.has_scheduler_id else None,
            last_error=job.last_error, exit_state=job.exit_state, run_time_s=job.run_time_s,
            attempts=attempts(track, job), output=output,
        )  # fmt: skip

    async def errors(self, limit: int = 5000) -> list[ErrorGroup]:
        groups: dict[tuple[str, str], list[str]] = {}
        for track in await self.stores.track_queries.in_error(limit):
            for job, message in failures(track):
                groups.setdefault((job, general(message, track.id)), []).append(track.id)
        return sorted(
            (ErrorGroup(job=job, reason=reason, count=len(guids),
                        assets=guids[:GROUP_EXAMPLES])
             for (job, reason), guids in groups.items()),
            key=lambda g: (-g.count, g.job, g.reason),
        )  # fmt: skip

    async def cluster_views(self) -> list[ClusterView]:
        views = []
        for name, cluster in sorted(self.clusters.items()):
            until = self.throttle.unreachable_until(name)
            views.append(ClusterView(
                name=name, scheduler=cluster.settings.scheduler,
                max_jobs=self.throttle.max_jobs.get(name, 0),
                configured_max_jobs=self.configured.jobs_per_cluster.get(name, 0),
                live_jobs=self.throttle.active_jobs(name),
                assets_active=await self.stores.track_queries.count_on(name),
                reachable=until is None,
                retry_in_s=round(until - time.monotonic(), 1) if until is not None else None,
                paused=self.holds.get(PAUSE, cluster_target(name)),
                files_to_remove=(await self.stores.track_queries.count_agent_cleanup(name)
                                 if cluster.pull else 0),
            ))  # fmt: skip
        return views

    def limits(self) -> list[LimitView]:
        views = [LimitView(target=ASSETS_IN_FLIGHT, limit=self.throttle.max_assets,
                           configured=self.configured.assets_in_flight,
                           in_use=self.throttle.assets_in_flight(),
                           set=self.holds.get(LIMIT, ASSETS_IN_FLIGHT))]
        for name in sorted(self.clusters):
            target = cluster_target(name)
            views.append(LimitView(target=target, limit=self.throttle.max_jobs.get(name, 0),
                                   configured=self.configured.jobs_per_cluster.get(name, 0),
                                   in_use=self.throttle.active_jobs(name),
                                   set=self.holds.get(LIMIT, target)))
        return views

    def state(self) -> StateView:
        return StateView(draining=self.holds.draining,
                         assets_in_flight=self.throttle.assets_in_flight(),
                         holds=self.holds.all())

    async def audit(self, limit: int, *, by: str | None, target: str | None) -> list[AuditView]:
        records = await self.stores.audit.latest(page_size(limit), by=by, target=target)
        return [AuditView(at=r.at, by=r.by, action=r.action, target=r.target, reason=r.reason,
                          outcome=r.outcome) for r in records]


def page_size(limit: int) -> int:
    """A page of 1 to MAX_PAGE rows, whatever was asked."""
    return max(1, min(limit, MAX_PAGE))


def asset_row(track: Track) -> AssetRow:
    here = set(current_jobs(track.job_list))
    jobs = [j for j in track.job_list if j.name in here]
    return AssetRow(
        guid=track.id, pipeline=track.pipeline, status=str(track.jobs_status),
        at=[f"{j.name} {j.status}" + (f" {j.attempt}/{j.max_attempts}" if j.attempt else "")
            for j in jobs],
        clusters=list(track.active_clusters),
        paused=track.paused,
        created=track.created_timestamp,
        error=next((f"{j.name}: {j.last_error}" for j in track.failed_jobs if j.last_error),
                   track.ars_error),
        ars_errors=list(flags_in_error(track)),
    )  # fmt: skip


def attempts(track: Track, job: Job) -> list[Attempt]:
    """Every attempt of `job`, from its history; the current one completed from the job."""
    found: dict[int, Attempt] = {}
    for entry in track.history:
        if entry.job != job.name or not entry.attempt:
            continue
        one = found.setdefault(entry.attempt, Attempt(attempt=entry.attempt))
        one.cluster = entry.cluster or one.cluster
        one.hpc_job_id = entry.hpc_job_id or one.hpc_job_id
        match entry.to:
            case S.STARTING:
                one.claimed = entry.at
            case S.QUEUED:
                one.queued = entry.at
            case S.RUNNING:
                one.started = entry.at
            case _:
                if entry.from_ in ACTIVE:
                    one.ended, one.outcome = entry.at, entry.to
                    one.error = entry.error or one.error
    if job.attempt > 0:
        current = found.setdefault(job.attempt, Attempt(attempt=job.attempt))
        current.cluster = job.cluster or current.cluster
        if job.has_scheduler_id:
            current.hpc_job_id = str(job.hpc_job_id)
        current.claimed = job.job_claimed_time or current.claimed
        current.queued = job.job_queued_time or current.queued
        current.started = job.job_start_time or current.started
        current.ended = job.job_end_time or current.ended
        if job.status not in ACTIVE and job.status is not S.WAITING:
            current.outcome = current.outcome or str(job.status)
        if job.status in (S.ERROR, S.CRITICAL_ERROR, S.FAILED, S.RETRY):
            current.error = job.last_error or current.error
    return [found[n] for n in sorted(found)]


def output_paths(cluster: Cluster, guid: str, job: Job) -> list[str]:
    """Where the scheduler keeps the current attempt's output, and the work folder (paths on
    the cluster; relative settings are relative to the daemon's folder, as the scheduler
    adapters take them)."""
    name = scheduler_job_name(guid, job.name, job.attempt)
    state_dir = cluster.settings.state_dir
    base = state_dir if state_dir.is_absolute() else Path.cwd() / state_dir
    where = f"{cluster.name}:" if cluster.settings.transport == "ssh" else ""
    if cluster.settings.scheduler == "direct":
        files = [f"{base / name / 'stdout'}", f"{base / name / 'stderr'}"]
    else:
        files = [f"{base / name}.out", f"{base / name}.err"]
    return [where + f for f in files] + [where + str(cluster.workdir(guid))]


def ars_state(track: Track) -> dict[str, Any]:
    return {
        "is_in_ars": str(track.is_in_ars), "has_open_share": str(track.has_open_share),
        "erda_sync": str(track.erda_sync), "update_metadata": str(track.update_metadata),
        "has_new_file": str(track.has_new_file), "ars_error": track.ars_error,
        "erda_failures": track.erda_failures,
        "ars_not_before": track.ars_not_before.isoformat() if track.ars_not_before else None,
    }  # fmt: skip


def failures(track: Track) -> list[tuple[str, str]]:
    """(job, message) of what failed the asset: its jobs in ERROR, and ARS's refusal."""
    found = [(j.name, j.last_error or "no error recorded") for j in track.failed_jobs]
    if track.ars_error:
        # Named by the flags in ERROR (what `dasscod ars-retry` resets); a refusal the sync
        # still retries by itself is plain "ars".
        gave_up = flags_in_error(track)
        found.append((f"ars {', '.join(gave_up)}" if gave_up else "ars", track.ars_error))
    return found


_NUMBERS = re.compile(r"\d{3,}")


def general(message: str, guid: str) -> str:
    """A message with what differs between assets taken out (the guid, ids, sizes), so that
    assets failing for the same reason fall into one group."""
    return _NUMBERS.sub("N", message.replace(guid, "<guid>"))


def older_than(seconds: float | None) -> datetime | None:
    return utcnow() - timedelta(seconds=seconds) if seconds is not None else None

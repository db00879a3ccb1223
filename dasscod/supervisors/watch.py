"""Per-cluster job watcher: one batched scheduler query per interval for all of the daemon's
in-flight jobs on that cluster.

It catches what callbacks cannot report: a job that left the scheduler without a final
callback (crashed, killed, node lost), a job past its time limit, a job stuck in the queue,
and STARTING jobs whose submission outcome is unknown (a crash or a lost answer between the
claim and the recorded job id) -- those are looked up by their deterministic name, so an
attempt that reached the scheduler is never submitted again. A submission whose answer was
lost may still be running on the cluster (sbatch waiting for a busy controller), so a job not
found by name counts as never submitted only once the scheduler's submit timeout has passed
since the claim.

Each check also asks the scheduler for the live jobs this daemon submitted (their scripts are
in its state folder) and cancels those no live attempt accounts for: a late submission's job,
a second job for one attempt, the job of an attempt that has moved on. A job that is the
recorded job of an attempt that just ended is given `grace_s` to leave the queue by itself.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime, timedelta

import anyio

from dasscod.cluster.base import SchedulerError, TransportError
from dasscod.cluster.configured import Cluster
from dasscod.log import get_logger
from dasscod.model import Job, JobStatus, Track, utcnow
from dasscod.pipeline import Event, JobEvent, Pipeline
from dasscod.services.launch import AttemptKey, Launcher, parse_job_name, scheduler_job_name
from dasscod.services.lost import adopted, has_ended, lost
from dasscod.services.strays import StrayClock, unaccounted
from dasscod.settings import TimingSettings
from dasscod.store import Stores
from dasscod.watchdog import beat

log = get_logger(__name__)

#: A STARTING job younger than this is left to its submission (in this or another process).
RECONCILE_AFTER_S = 10.0
#: How often the stray-job sweep lists the cluster's jobs (Torque's qstat lists every user's).
STRAYS_EVERY_S = 60.0


def _patience(submit_timeout_s: float) -> timedelta:
    """How long after its claim a job not found by name may still appear: the submit timeout,
    plus a margin for the command's own start (none where lookup cannot miss a launch)."""
    if submit_timeout_s <= 0:
        return timedelta(0)
    return timedelta(seconds=submit_timeout_s + RECONCILE_AFTER_S)


class Watcher:
    def __init__(
        self,
        cluster: Cluster,
        *,
        stores: Stores,
        pipelines: Mapping[str, Pipeline],
        launcher: Launcher,
        timing: TimingSettings,
        stopping: anyio.Event,
    ) -> None:
        self.cluster = cluster
        self.stores = stores
        self.pipelines = pipelines
        self.launcher = launcher
        self.timing = timing
        self.stopping = stopping
        self.started_at = utcnow()
        self.log = log.bind(cluster=cluster.name)
        #: Attempts whose submission outcome is still unknown (logged once each).
        self._looking: set[AttemptKey] = set()
        #: Jobs on the cluster no live attempt accounts for: their grace, and one warning each.
        self._strays = StrayClock(timing.grace_s)
        self.strays_every_s = STRAYS_EVERY_S
        self._strays_swept: float | None = None

    async def run(self) -> None:
        while not self.stopping.is_set():
            await self.check_once()
            beat(self.timing.watch_s)
            with anyio.move_on_after(self.timing.watch_s):
                await self.stopping.wait()

    async def check_once(self, now: datetime | None = None) -> None:
        now = now or utcnow()
        tracks = await self.stores.track.active_on(self.cluster.name)
        mine = [
            (t, j)
            for t in tracks
            for j in t.job_list
            if j.cluster == self.cluster.name
            and j.status in (JobStatus.STARTING, JobStatus.QUEUED, JobStatus.RUNNING)
        ]
        submitted = [(t, j) for t, j in mine if j.status is not JobStatus.STARTING
                     and j.has_scheduler_id]
        if self.cluster.pull:
            # Its agent reports submissions and states (the listener's agent API); only the
            # time limits are ours to keep. The agent cancels what timed out: the report's
            # answer tells it to.
            await self._time_out(submitted, now, cancel=False)
            return
        unknown_outcome = [(t, j) for t, j in mine if self._needs_lookup(t, j, now)]
        try:
            if unknown_outcome:
                await self._reconcile(unknown_outcome, now)
            if submitted:
                await self._check(submitted, now)
            await self._cancel_strays()
        except TransportError as exc:
            self.log.warning("cluster query failed; will try again", error=str(exc))
            if self.launcher.reachability is not None:
                self.launcher.reachability.unreachable(self.cluster.name, str(exc))
        except SchedulerError as exc:
            self.log.warning("cluster query failed; will try again", error=str(exc))

    def _needs_lookup(self, track: Track, job: Job, now: datetime) -> bool:
        if job.status is not JobStatus.STARTING:
            return False
        if (track.id, job.name, job.attempt) in self.launcher.submitting:
            return False
        claimed = job.job_claimed_time
        return claimed is None or claimed < self.started_at or (
            now - claimed > timedelta(seconds=RECONCILE_AFTER_S)
        )

    async def _reconcile(self, pairs: list[tuple[Track, Job]], now: datetime) -> None:
        names = {scheduler_job_name(t.id, j.name, j.attempt): (t, j) for t, j in pairs}
        found = await self.cluster.scheduler.lookup(names)
        patience = _patience(self.cluster.scheduler.submit_timeout_s)
        for name, (track, job) in names.items():
            info = found.get(name)
            key = (track.id, job.name, job.attempt)
            claimed = job.job_claimed_time
            if info is None and claimed is not None and now - claimed < patience:
                # Its submission may still be running on the cluster: keep looking.
                if key not in self._looking:
                    self._looking.add(key)
                    self.log.info("submission outcome unknown; looking for the job by name",
                                  asset_guid=track.id, job=job.name, attempt=job.attempt,
                                  until=(claimed + patience).isoformat(timespec="seconds"))
                continue
            self._looking.discard(key)
            if info is None:
                self.log.info("claimed job never reached the scheduler; back to waiting",
                              asset_guid=track.id, job=job.name, attempt=job.attempt)
                await self.stores.track.apply(
                    track.id,
                    [JobEvent(job.name, Event.UNSUBMITTED, attempt=job.attempt)],
                    cause="watcher: reconcile",
                )
                continue
            self.log.info("found submitted job after unknown outcome", asset_guid=track.id,
                          job=job.name, attempt=job.attempt, hpc_job_id=info.job_id)
            await self.stores.track.apply(
                track.id, adopted(job, info.job_id, info), cause="watcher: reconcile"
            )

    async def _cancel_strays(self) -> None:
        """Cancel the jobs of ours on the cluster that no live attempt accounts for."""
        now = time.monotonic()
        if self._strays_swept is not None and now - self._strays_swept < self.strays_every_s:
            return
        self._strays_swept = now
        live = await self.cluster.scheduler.ours()
        if live is None:
            return
        self._strays.forget_all_but({info.job_id for info in live})
        named = [(info, parse_job_name(info.name)) for info in live]
        guids = sorted({key[0] for _, key in named if key is not None})
        if not guids:
            return
        # Read after the scheduler answered: a job it lists was claimed before it was
        # submitted, so its live attempt is in what we read now.
        tracks = {t.id: t for t in await self.stores.track.find(guids)}
        for info, key in named:
            if key is None or key in self.launcher.submitting:
                continue
            why, at_once = unaccounted(tracks.get(key[0]), key, self.cluster.name, info.job_id,
                                       info.state)
            if why is None:
                self._strays.accounted(info.job_id)
                continue
            if not self._strays.due(info.job_id, at_once=at_once, now=now):
                continue  # an attempt that just ended: its job is leaving by itself
            if self._strays.first_warning(info.job_id):
                self.log.warning(
                    "cancelling a job on the cluster that no live attempt accounts for",
                    hpc_job_id=info.job_id, scheduler_job=info.name, asset_guid=key[0],
                    job=key[1], attempt=key[2], state=str(info.state), reason=why,
                )
            await self.cluster.scheduler.cancel(info.job_id)

    async def _check(self, pairs: list[tuple[Track, Job]], now: datetime) -> None:
        by_id = {str(j.hpc_job_id): (t, j) for t, j in pairs}
        infos = await self.cluster.scheduler.status(
            {job_id: scheduler_job_name(t.id, j.name, j.attempt) for job_id, (t, j) in
             by_id.items()}
        )
        for job_id, (track, job) in by_id.items():
            info = infos.get(job_id)
            if info is not None and has_ended(info.state):
                # Gone without a final callback (a late callback is ignored by the guard).
                await self.stores.track.apply(
                    track.id, [lost(job, info)], cause="watcher", known=track
                )
                continue
            await self._time_out([(track, job)], now, cancel=True)

    async def _time_out(self, pairs: list[tuple[Track, Job]], now: datetime, *,
                        cancel: bool) -> None:
        for track, job in pairs:
            overdue = self._overdue(track, job, now)
            if not overdue:
                continue
            self.log.warning("job unresponsive; cancelling", asset_guid=track.id,
                             job=job.name, attempt=job.attempt, reason=overdue)
            if cancel:
                await self.cluster.scheduler.cancel(str(job.hpc_job_id))
            await self.stores.track.apply(
                track.id,
                [JobEvent(job.name, Event.TIMED_OUT, attempt=job.attempt, error=overdue,
                          exit_state="TIMEOUT")],
                cause="watcher",
                known=track,
            )

    def _overdue(self, track: Track, job: Job, now: datetime) -> str | None:
        pipeline = self.pipelines.get(track.pipeline)
        limit = pipeline.spec(job.name).time_limit_s if pipeline else 3600
        if job.status is JobStatus.RUNNING and job.job_start_time is not None:
            allowed = timedelta(seconds=limit + self.timing.grace_s)
            if now - job.job_start_time > allowed:
                return f"running for more than {allowed.total_seconds():.0f} s without finishing"
        if job.status is JobStatus.QUEUED and job.job_queued_time is not None:
            allowed = timedelta(seconds=self.timing.max_queue_s)
            if now - job.job_queued_time > allowed:
                return f"queued for more than {allowed.total_seconds():.0f} s without starting"
        return None

"""Per-module dispatch: claim ready jobs (WAITING -> STARTING) within the throttle and hand
them to the launcher.

Woken at once by any transition that makes its job ready somewhere; a slow sweep catches
what a lost wake-up or a restart left behind. An asset whose job failed leaves the ready set
(RETRY with a not-before time), so it never blocks the assets behind it.
"""

from __future__ import annotations

from collections.abc import Mapping

import anyio
from anyio.abc import TaskGroup

from dasscod.clusters import Cluster
from dasscod.log import get_logger
from dasscod.model import JobStatus, Track
from dasscod.pipeline import Event, JobEvent, Pipeline
from dasscod.store import Stores
from dasscod.supervisors.coordination import Throttle, Wakeups
from dasscod.supervisors.launch import AttemptKey, Launcher

log = get_logger(__name__)

#: Ready assets fetched per pass; the loop goes round again at once while it keeps claiming.
BATCH = 50


class Dispatcher:
    def __init__(
        self,
        job: str,
        *,
        stores: Stores,
        pipelines: Mapping[str, Pipeline],
        clusters: Mapping[str, Cluster],
        launcher: Launcher,
        throttle: Throttle,
        wakeups: Wakeups,
        stopping: anyio.Event,
        sweep_s: float,
        max_parallel_submits: int = 8,
    ) -> None:
        self.job = job
        self.stores = stores
        self.pipelines = pipelines
        self.clusters = clusters
        self.launcher = launcher
        self.throttle = throttle
        self.wakeups = wakeups
        self.stopping = stopping
        self.sweep_s = sweep_s
        self._submits = anyio.CapacityLimiter(max_parallel_submits)
        self.log = log.bind(job=job)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            while not self.stopping.is_set():
                wake = self.wakeups.arm(self.job)
                claimed, blocked = await self.dispatch_once(tg)
                if claimed and not blocked:
                    continue  # there may be more ready work than one batch
                if blocked:
                    self.throttle.wake_when_freed(self.job)
                with anyio.move_on_after(self.sweep_s):
                    await wake.wait()

    async def dispatch_once(self, tg: TaskGroup) -> tuple[int, bool]:
        """One pass: returns (jobs claimed, whether the throttle stopped the pass)."""
        claimed = 0
        for track in await self.stores.track.ready(self.job, BATCH):
            if self.stopping.is_set():
                break
            pipeline = self.pipelines.get(track.pipeline)
            if pipeline is None:
                self.log.error("asset names an unknown pipeline; skipped",
                               asset_guid=track.id, pipeline=track.pipeline)
                continue
            preferred = [c for c in pipeline.spec(self.job).clusters if c in self.clusters]
            cluster = self.throttle.reserve(track, preferred)
            if cluster is None:
                return claimed, True
            try:
                result = await self.stores.track.apply(
                    track.id,
                    [JobEvent(self.job, Event.CLAIM, cluster=cluster)],
                    cause="dispatch",
                    known=track,
                )
            finally:
                self.throttle.release(track.id, cluster)
            if not result.applied or result.track.job(self.job).status is not JobStatus.STARTING:
                continue  # someone else claimed it, or it stopped being ready
            key = self.launcher.hold(result.track, self.job)
            claimed += 1
            tg.start_soon(self._submit, result.track, key)
        return claimed, False

    async def _submit(self, track: Track, key: AttemptKey) -> None:
        async with self._submits:
            await self.launcher.submit(track, self.job, key)

"""Per-module dispatch: claim ready jobs (WAITING -> STARTING) within the throttle and hand
them to the launcher.

Woken at once by any transition that makes its job ready somewhere; a slow sweep catches
what a lost wake-up or a restart left behind. An asset whose job failed leaves the ready set
(RETRY with a not-before time), so it never blocks the assets behind it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import anyio
from anyio.abc import TaskGroup

from dasscod.cluster.configured import Cluster
from dasscod.coordination import Throttle, Wakeups
from dasscod.holds import Holds
from dasscod.log import get_logger
from dasscod.model import JobStatus, Track
from dasscod.pipeline import Event, JobEvent, Pipeline
from dasscod.services.launch import AttemptKey, Launcher
from dasscod.store import Stores

log = get_logger(__name__)

#: Ready assets fetched per pass; the loop goes round again at once while it keeps claiming.
BATCH = 50
#: Ready assets kept in memory while the throttle holds them back (whole documents, so a
#: bounded few); beyond this the store is asked again (oldest first) once a slot frees.
MAX_KEPT = 200


def _ready_order(track: Track) -> datetime:
    return track.ready_since or track.created_timestamp


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
        holds: Holds | None = None,
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
        self.holds = holds if holds is not None else throttle.holds
        self._submits = anyio.CapacityLimiter(max_parallel_submits)
        #: Assets known to have our job ready: offered by transitions, and those a pass could
        #: not claim for want of a slot (kept, so that a freed slot needs no query).
        self._offered: dict[str, Track] = {}
        #: The store may hold ready assets that `_offered` lacks (more than one batch, or
        #: more than `MAX_KEPT`): until a query pass runs unblocked, passes ask the store.
        self._backlog = False
        #: The next pass asks the store (at start-up and on every sweep): it finds what no
        #: transition of this process offered, such as another process's writes.
        self._sweep = True
        self.log = log.bind(job=job)

    def offer(self, track: Track) -> None:
        """A transition this process wrote made our job ready on `track`: claim it from this
        copy, without a query (the version guard catches a copy that is no longer current)."""
        self._offered[track.id] = track
        self.wakeups.notify(self.job)

    def resweep(self) -> None:
        """Operators lifted a hold: the next pass asks the store (what was held back is not
        in memory any more)."""
        self._sweep = True
        self.wakeups.notify(self.job)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            while not self.stopping.is_set():
                wake = self.wakeups.arm(self.job)
                claimed, blocked, from_offers = await self.dispatch_once(tg)
                if blocked:
                    self.throttle.wake_when_freed(self.job)
                elif self._offered or (claimed and not from_offers):
                    continue  # more offers came in, or more ready work than one batch
                with anyio.move_on_after(self.sweep_s) as sweep:
                    await wake.wait()
                if sweep.cancelled_caught:
                    self._sweep = True

    async def dispatch_once(self, tg: TaskGroup) -> tuple[int, bool, bool]:
        """One pass over the known ready assets, or else over a query of the ready ones
        (oldest first). Returns (jobs claimed, whether the throttle stopped the pass, whether
        it was served from memory)."""
        from_offers = bool(self._offered) and not self._backlog and not self._sweep
        if from_offers:
            tracks = sorted(self._offered.values(), key=_ready_order)
            self._offered.clear()
            more_in_store = False
        else:
            self._offered.clear()  # the query returns them too, oldest first
            self._sweep = False
            tracks = await self.stores.track.ready(
                self.job, BATCH, skip_pipelines=self.holds.paused_pipelines(),
                in_flight_only=self.holds.draining,
            )
            more_in_store = len(tracks) >= BATCH
        claimed = 0
        for i, track in enumerate(tracks):
            if self.stopping.is_set():
                break
            if self.job not in track.ready:
                continue
            if self.holds.pipeline_paused(track.pipeline) or (
                self.holds.draining and self.throttle.entering(track)
            ):
                continue  # held by an operator; found again by the sweep a resume asks for
            pipeline = self.pipelines.get(track.pipeline)
            if pipeline is None:
                self.log.error("asset names an unknown pipeline; skipped",
                               asset_guid=track.id, pipeline=track.pipeline)
                continue
            preferred = [c for c in pipeline.spec(self.job).clusters if c in self.clusters]
            cluster = self.throttle.reserve(track, preferred, self.job)
            if cluster is None:
                self._keep(tracks[i:], more_in_store=more_in_store)
                return claimed, True, from_offers
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
        if not from_offers:
            self._backlog = False
        self.throttle.served(self.job)
        return claimed, False, from_offers

    def _keep(self, unclaimed: list[Track], *, more_in_store: bool) -> None:
        """No slot for these: keep them for the pass a freed slot wakes, so that it claims
        the oldest without asking the store. A copy offered meanwhile is newer and wins."""
        for track in unclaimed:
            self._offered.setdefault(track.id, track)
        # Beyond one batch or MAX_KEPT, some ready assets are only in the store, possibly
        # older than these: the store is asked again once a slot frees.
        self._backlog = more_in_store or len(self._offered) > MAX_KEPT
        if self._backlog:
            self._offered.clear()

    async def _submit(self, track: Track, key: AttemptKey) -> None:
        async with self._submits:
            await self.launcher.submit(track, self.job, key)

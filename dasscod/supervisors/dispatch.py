"""Per-module dispatch: claim ready jobs (WAITING -> STARTING) within the throttle and hand
them to the launcher.

Woken at once by any transition that makes its job ready somewhere; a slow sweep catches
what a lost wake-up or a restart left behind. Nothing one asset does holds up the assets
behind it: an asset whose job failed leaves the ready set (RETRY with a not-before time); one
whose clusters are full, paused or unreachable is skipped for this pass (and kept for the pass
a freed slot wakes), not waited on; one that cannot run here at all (its pipeline or job is
unknown, none of its clusters is configured) goes to ERROR with the reason; and an unexpected
error for one asset is logged with back-off (`RepeatedErrors`) while the pass goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import anyio
from anyio.abc import TaskGroup
from pymongo.errors import PyMongoError

from dasscod.cluster.configured import Cluster
from dasscod.coordination import Throttle, Wakeups
from dasscod.holds import Holds
from dasscod.log import get_logger
from dasscod.model import JobStatus, Track
from dasscod.pipeline import Event, JobEvent, Pipeline
from dasscod.repeated import RepeatedErrors
from dasscod.services.launch import AttemptKey, Launcher
from dasscod.store import Stores
from dasscod.watchdog import beat

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
        #: Assets whose dispatch failed unexpectedly: left alone for a back-off.
        self.errors = RepeatedErrors()

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
                beat(self.sweep_s)
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
            tracks = await self._query()
            more_in_store = len(tracks) >= BATCH
        claimed, waiting = await self._pass(tracks, tg)
        if waiting and more_in_store and not from_offers:
            # A whole batch, and some of it waits for room: the claimable assets behind it
            # must not wait too. Ask again past those that cannot get a slot now.
            again = await self._query(past_full=True)
            more, held = await self._pass([t for t in again if t.id not in
                                           {w.id for w in waiting}], tg)
            claimed += more
            waiting += held
        if waiting:
            self._keep(waiting, more_in_store=more_in_store)
            return claimed, True, from_offers
        if not from_offers:
            self._backlog = False
        self.throttle.served(self.job)
        return claimed, False, from_offers

    async def _query(self, *, past_full: bool = False) -> list[Track]:
        """The oldest ready assets; with `past_full`, not those that cannot get a slot now
        (their pipeline's clusters for our job are full, paused or unreachable; or they
        would enter the HPC side while the assets limit is reached)."""
        skip = self.holds.paused_pipelines()
        in_flight_only = self.holds.draining
        if past_full:
            skip = [*skip, *self._pipelines_without_room()]
            in_flight_only = in_flight_only or self.throttle.assets_full()
        return await self.stores.track.ready(self.job, BATCH, skip_pipelines=skip,
                                             in_flight_only=in_flight_only)

    async def _pass(self, tracks: list[Track], tg: TaskGroup) -> tuple[int, list[Track]]:
        """Claim what can be claimed of `tracks`: (how many, those that wait for a slot)."""
        claimed = 0
        waiting: list[Track] = []  # no slot on their clusters now: kept for a freed slot
        for track in tracks:
            if self.stopping.is_set():
                break
            if self.job not in track.ready or not self.errors.due(track.id):
                continue
            if self.holds.pipeline_paused(track.pipeline) or (
                self.holds.draining and self.throttle.entering(track)
            ):
                continue  # held by an operator; found again by the sweep a resume asks for
            try:
                outcome = await self._claim(track, tg)
            except PyMongoError:
                raise  # the store's trouble, not this asset's
            except Exception as exc:
                self.errors.failed(track.id, exc, "dispatching an asset failed; it waits",
                                   asset_guid=track.id, job=self.job)
                continue
            if outcome is None:
                waiting.append(track)
            elif outcome:
                claimed += 1
        return claimed, waiting

    async def _claim(self, track: Track, tg: TaskGroup) -> bool | None:
        """Claim our job of `track` on a cluster with room and start its submission: True
        when claimed, False when not (someone else did, it cannot run here), None when its
        clusters have no room now."""
        refusal = self._refusal(track)
        if refusal is not None:
            self.log.warning("job cannot run; asset put in ERROR", asset_guid=track.id,
                             pipeline=track.pipeline, reason=refusal)
            await self.stores.track.apply(
                track.id, [JobEvent(self.job, Event.REFUSED, error=refusal)],
                cause="dispatch: refused", known=track,
            )
            return False
        pipeline = self.pipelines[track.pipeline]
        preferred = [c for c in pipeline.spec(self.job).clusters if c in self.clusters]
        cluster = self.throttle.reserve(track, preferred, self.job)
        if cluster is None:
            return None
        try:
            result = await self.stores.track.apply(
                track.id,
                [JobEvent(self.job, Event.CLAIM, cluster=cluster)],
                cause="dispatch",
                known=track,
            )
        finally:
            self.throttle.release(track.id, cluster)
        self.errors.cleared(track.id)
        if not result.applied or result.track.job(self.job).status is not JobStatus.STARTING:
            return False  # someone else claimed it, or it stopped being ready
        key = self.launcher.hold(result.track, self.job)
        tg.start_soon(self._submit, result.track, key)
        return True

    def _pipelines_without_room(self) -> list[str]:
        """Pipelines whose clusters for our job all lack room now (full, paused or
        unreachable); the throttle notes that our job waits for them."""
        full = []
        for pipeline in self.pipelines.values():
            if self.job not in {spec.name for spec in pipeline.jobs}:
                continue
            clusters = [c for c in pipeline.spec(self.job).clusters if c in self.clusters]
            if clusters and not any(self.throttle.has_room(c, self.job) for c in clusters):
                self.throttle.waits_for(clusters, self.job)
                full.append(pipeline.name)
        return full

    def _refusal(self, track: Track) -> str | None:
        """Why our job of `track` can never run on this daemon as configured (None: it can)."""
        pipeline = self.pipelines.get(track.pipeline)
        if pipeline is None:
            known = ", ".join(sorted(self.pipelines)) or "none"
            return (f"pipeline {track.pipeline!r} is not known to this daemon (known: {known});"
                    f" restore it, then `dasscod retry {track.id}`")
        if self.job not in {spec.name for spec in pipeline.jobs}:
            return (f"pipeline {pipeline.name} has no job {self.job!r} any more; "
                    f"`dasscod retry {track.id}` once it has")
        wanted = pipeline.spec(self.job).clusters
        if not any(c in self.clusters for c in wanted):
            return (f"none of the clusters of job {self.job} in pipeline {pipeline.name} "
                    f"({', '.join(wanted) or 'none'}) is configured")
        return None

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
            try:
                await self.launcher.submit(track, self.job, key)
            except PyMongoError as exc:
                # The claim stands; the watcher reconciles the attempt by its name.
                self.log.warning("recording a submission failed; the watcher reconciles it",
                                 asset_guid=track.id, error=str(exc))
            except Exception as exc:
                # Outcome unknown: the attempt stays STARTING for the watcher to look up.
                self.errors.failed(track.id, exc, "submitting a job failed unexpectedly",
                                   asset_guid=track.id, job=self.job)

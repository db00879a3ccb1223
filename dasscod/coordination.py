"""In-process coordination between supervisors: wake-ups and the throttle.

Both are rebuilt from the stores (the only source of truth) at start-up and on every safety
sweep; in between they follow the transitions this process writes, which is every transition,
because one daemon owns one database.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import anyio

from dasscod.holds import Holds
from dasscod.log import get_logger
from dasscod.model import Track
from dasscod.pipeline import ACTIVE

log = get_logger(__name__)

#: An unreachable cluster takes no new jobs for this long, doubled per failure in a row.
UNREACHABLE_BASE_S = 10.0
UNREACHABLE_MAX_S = 300.0


class Wakeups:
    """One event per dispatcher (keyed by job name). A transition that makes a job ready sets
    its dispatcher's event, so the hand-off from one job to the next takes no polling delay."""

    def __init__(self) -> None:
        self._events: dict[str, anyio.Event] = defaultdict(anyio.Event)

    def arm(self, key: str) -> anyio.Event:
        """Call before looking for work: anything notified from now on is not missed."""
        event = anyio.Event()
        self._events[key] = event
        return event

    def notify(self, key: str) -> None:
        self._events[key].set()

    def notify_all(self) -> None:
        for event in self._events.values():
            event.set()


class Throttle:
    """Limits: assets on the HPC side at once, and jobs per cluster.

    Counts come from the in-flight assets' documents (`observe`), plus reservations a
    dispatcher holds between deciding to claim and its claim being written, so that two
    dispatchers cannot both take the last slot.

    Slots go to earlier pipeline stages first (`stages`: job name -> its place in the
    pipeline): while a job of an earlier stage waits for a slot on a cluster, a later stage
    does not take a slot that frees there. An asset early in its pipeline has the most work
    ahead of it, so starting it first keeps every slot busy until the end of a batch instead
    of leaving a tail of long jobs that started late (list scheduling by remaining work). The
    assets-in-flight limit bounds how much early-stage work there can be, so later stages
    are never starved.
    """

    def __init__(
        self,
        *,
        assets_in_flight: int,
        jobs_per_cluster: Mapping[str, int],
        wakeups: Wakeups,
        stages: Mapping[str, int] | None = None,
        holds: Holds | None = None,
    ) -> None:
        self.max_assets = assets_in_flight
        #: Operators' pauses and the drain: a paused cluster takes no new job, and while the
        #: daemon drains no asset enters.
        self.holds = holds if holds is not None else Holds()
        self.stages = dict(stages or {})
        #: cluster -> jobs whose dispatcher found no slot there and has not been served since.
        self._waiting: dict[str, set[str]] = defaultdict(set)
        self.max_jobs = dict(jobs_per_cluster)
        self.wakeups = wakeups
        #: In-flight guid -> its active jobs (name -> cluster).
        self._assets: dict[str, dict[str, str]] = {}
        #: (guid, job) of jobs whose end is being written: their slot is free already.
        self._ending: set[tuple[str, str]] = set()
        self._reserved_jobs: Counter[str] = Counter()
        self._reserved_assets: set[str] = set()
        self._blocked: set[str] = set()
        self._seen: dict[str, tuple[int, float]] = {}  # guid -> (version, when observed)
        #: Clusters that could not be reached: (monotonic time until which they take no new
        #: jobs, consecutive failures). Their in-flight jobs are kept.
        self._unreachable: dict[str, tuple[float, int]] = {}

    # ---------------------------------------------------------------- observing the store

    def observe(self, track: Track) -> None:
        seen = self._seen.get(track.id)
        if seen is not None and seen[0] > track.version:
            return  # an older copy of a document we already know newer
        self._seen[track.id] = (track.version, time.monotonic())
        was = self._assets.get(track.id)
        if track.in_flight:
            self._assets[track.id] = {
                j.name: j.cluster for j in track.job_list if j.status in ACTIVE and j.cluster
            }
        else:
            self._assets.pop(track.id, None)
            self._seen.pop(track.id, None)
        now = self._assets.get(track.id)
        if was is not None and (now is None or len(now) < len(was)):
            self._wake_blocked()

    @contextmanager
    def ending(self, guid: str, job: str) -> Iterator[None]:
        """The job reported how it ended and its transition is being written: its slot goes
        to the next job now, in parallel with that write, rather than one store round trip
        later. Afterwards the stored document decides again: a write that failed gives the
        job its slot back."""
        key = (guid, job)
        self._ending.add(key)
        if job in self._assets.get(guid, {}):
            self._wake_blocked()
        try:
            yield
        finally:
            self._ending.discard(key)

    def rebuild(self, in_flight: Iterable[Track], *, queried_at: float) -> None:
        """Resynchronise with a query of the in-flight assets that started at `queried_at`
        (`time.monotonic()`): what was observed after the query started is fresher and kept."""
        listed = set()
        for track in in_flight:
            listed.add(track.id)
            self.observe(track)
        for guid in list(self._assets):
            if guid not in listed and self._seen.get(guid, (0, 0.0))[1] < queried_at:
                self._assets.pop(guid, None)
                self._seen.pop(guid, None)
        self._wake_blocked()

    # ---------------------------------------------------------------- deciding

    def active_jobs(self, cluster: str) -> int:
        running = sum(
            1
            for guid, jobs in self._assets.items()
            for job, on in jobs.items()
            if on == cluster and (guid, job) not in self._ending
        )
        return running + self._reserved_jobs[cluster]

    def assets_in_flight(self) -> int:
        return len(self._assets) + len(self._reserved_assets - self._assets.keys())

    def entering(self, track: Track) -> bool:
        """Whether a job of `track` would bring it onto the HPC side (it is not in flight)."""
        return track.id not in self._assets and track.id not in self._reserved_assets

    def reserve(self, track: Track, clusters: Iterable[str], job: str = "") -> str | None:
        """Pick the first cluster (in order of preference) with room for one more `job` of
        `track`, and hold the slot until `release`. None: no room anywhere (the job then
        waits for a slot on those clusters until `served`)."""
        entering = self.entering(track)
        if entering and (self.holds.draining or self.assets_in_flight() >= self.max_assets):
            return None
        wanted = []
        for cluster in clusters:
            if not self.reachable(cluster) or self.holds.cluster_paused(cluster):
                continue  # the next cluster in order of preference carries on
            wanted.append(cluster)
            room = self.active_jobs(cluster) < self.max_jobs.get(cluster, 0)
            if room and not self._earlier_stage_waits(cluster, job):
                self._reserved_jobs[cluster] += 1
                if entering:
                    self._reserved_assets.add(track.id)
                return cluster
        if job:
            for cluster in wanted:
                self._waiting[cluster].add(job)
        return None

    def has_room(self, cluster: str, job: str = "") -> bool:
        """Whether `reserve` could give `job` a slot on `cluster` now (leaving the assets
        limit aside)."""
        return (self.reachable(cluster) and not self.holds.cluster_paused(cluster)
                and self.active_jobs(cluster) < self.max_jobs.get(cluster, 0)
                and not self._earlier_stage_waits(cluster, job))

    def assets_full(self) -> bool:
        """No asset may enter the HPC side now (the limit is reached, or the daemon drains)."""
        return self.holds.draining or self.assets_in_flight() >= self.max_assets

    def waits_for(self, clusters: Iterable[str], job: str) -> None:
        """`job` waits for a slot on these clusters (as when `reserve` found none)."""
        for cluster in clusters:
            self._waiting[cluster].add(job)

    def _earlier_stage_waits(self, cluster: str, job: str) -> bool:
        stage = self.stages.get(job, 0)
        return any(self.stages.get(w, 0) < stage for w in self._waiting.get(cluster, ()))

    def served(self, job: str) -> None:
        """`job`'s dispatcher finished a pass the throttle did not stop: it waits no more, and
        the later stages it held back may take the slots."""
        if any(job in waiting for waiting in self._waiting.values()):
            for waiting in self._waiting.values():
                waiting.discard(job)
            self._wake_blocked()

    # ---------------------------------------------------------------- cluster reachability

    def reachable(self, cluster: str) -> bool:
        until = self._unreachable.get(cluster)
        return until is None or time.monotonic() >= until[0]

    def unreachable(self, cluster: str, error: str) -> None:
        """A command on `cluster` could not be run: it takes no new jobs for a while (doubling
        with each failure in a row); after that one job tries it again."""
        _, failures = self._unreachable.get(cluster, (0.0, 0))
        pause = min(UNREACHABLE_MAX_S, UNREACHABLE_BASE_S * 2**failures)
        self._unreachable[cluster] = (time.monotonic() + pause, failures + 1)
        if failures == 0:  # one line per outage
            log.warning("cluster unreachable; it takes no new jobs meanwhile", cluster=cluster,
                        error=error, retry_in_s=pause)

    def reached(self, cluster: str) -> None:
        if self._unreachable.pop(cluster, None) is not None:
            log.info("cluster reachable again", cluster=cluster)
            self._wake_blocked()

    def release(self, track_id: str, cluster: str) -> None:
        self._reserved_jobs[cluster] -= 1
        self._reserved_assets.discard(track_id)

    def set_limits(self, *, assets_in_flight: int, jobs_per_cluster: Mapping[str, int]) -> None:
        """Limits changed at run time: a raised limit serves the waiting dispatchers now; a
        lowered one lets the jobs in flight finish and takes no new ones until below it."""
        raised = assets_in_flight > self.max_assets or any(
            limit > self.max_jobs.get(cluster, 0) for cluster, limit in jobs_per_cluster.items()
        )
        self.max_assets = assets_in_flight
        self.max_jobs.update(jobs_per_cluster)
        if raised:  # housekeeping sets them on every pass: wake nobody for nothing
            self.wake_blocked()

    def unreachable_until(self, cluster: str) -> float | None:
        """Monotonic time until which `cluster` takes no new jobs after a failure (None:
        reachable as far as the daemon knows)."""
        until = self._unreachable.get(cluster)
        return until[0] if until is not None and time.monotonic() < until[0] else None

    def wake_blocked(self) -> None:
        """Something the throttle decides by changed (a pause lifted, a limit raised)."""
        self._wake_blocked()

    def wake_when_freed(self, dispatcher: str) -> None:
        """Wake only the dispatchers the throttle stopped, and only when a slot frees up."""
        self._blocked.add(dispatcher)

    def _wake_blocked(self) -> None:
        for key in self._blocked:
            self.wakeups.notify(key)
        self._blocked.clear()

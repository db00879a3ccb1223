"""The daemon's Prometheus metrics (prometheus_client), served at `GET /metrics`.

Two kinds, so that a scrape never queries MongoDB:
- counters and histograms that the code paths increment as things happen (module-level
  objects below: transitions, durations, callbacks, scheduler commands, ARS calls, ...);
- gauges of what is in the store (assets by status, jobs by status, the ARS backlog, the
  oldest unfinished asset), read from a `Snapshot` that `SnapshotRefresher` rebuilds in the
  background with indexed queries (`dasscod.store.stats`). A scrape renders the last one.

Other modules add their own metrics here, next to these, so that the README's table of
metrics has a single source. Names carry the `dasscod_` prefix; counters end in `_total`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dasscod.log import get_logger
from dasscod.watchdog import beat

log = get_logger(__name__)

__all__ = ["CONTENT_TYPE_LATEST", "REGISTRY", "render"]

#: Job run times: seconds to half a day.
_LONG = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200)
#: Things that should take well under a second, with a tail to minutes.
_SHORT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

TRANSITIONS = Counter(
    "dasscod_transitions", "Job transitions written by this process, by job and new status.",
    ["job", "to"],
)
JOB_DURATION = Histogram(
    "dasscod_job_duration_seconds",
    "Run time of finished job attempts (start to end as the scheduler reported them).",
    ["job", "cluster"], buckets=_LONG,
)
JOB_QUEUE_WAIT = Histogram(
    "dasscod_job_queue_wait_seconds",
    "Time job attempts spent queued in the scheduler before they started.",
    ["job", "cluster"], buckets=_LONG,
)
DISPATCH_LATENCY = Histogram(
    "dasscod_dispatch_latency_seconds",
    "Time from a job becoming ready to the dispatcher claiming it.",
    buckets=_SHORT,
)
CALLBACK_SECONDS = Histogram(
    "dasscod_callback_seconds",
    "Time the listener took to answer a request, by route template and status code.",
    ["route", "code"], buckets=_SHORT,
)
SCHEDULER_COMMAND_SECONDS = Histogram(
    "dasscod_scheduler_command_seconds",
    "Time of commands run on a cluster (sbatch, squeue, ...), by cluster and program.",
    ["cluster", "command"], buckets=_SHORT,
)
SCHEDULER_ERRORS = Counter(
    "dasscod_scheduler_errors",
    "Commands that could not be run on a cluster (unreachable, timed out).",
    ["cluster"],
)
ARS_CALLS = Counter(
    "dasscod_ars_calls",
    "HTTP calls to ARS, by kind (method and first path segment) and outcome.",
    ["kind", "outcome"],
)
INTAKE_QUARANTINED = Counter(
    "dasscod_intake_quarantined", "Deliveries moved to the quarantine folder.",
)
LISTENER_CUT_OFF = Counter(
    "dasscod_listener_cut_off",
    "Connections the listener closed to protect itself, by reason: header_timeout (no "
    "request within listener.header_timeout_s), evicted (the longest waiting, to make room), "
    "full (every connection busy with a request), head_too_large (414/431), pipelined, "
    "not_reading (an answer blocked for listener.send_timeout_s).",
    ["reason"],
)
SUPERVISOR_RESTARTS = Counter(
    "dasscod_supervisor_restarts",
    "Supervisors restarted after they crashed, by supervisor.",
    ["supervisor"],
)
def observe_seconds(histogram: Histogram, seconds: float | None, **labels: str) -> None:
    """Observe a duration computed from stored times, ignoring the impossible (clock skew
    between the cluster and us can make one negative)."""
    if seconds is None or seconds < 0:
        return
    (histogram.labels(**labels) if labels else histogram).observe(seconds)


def render(registry: CollectorRegistry = REGISTRY) -> bytes:
    return generate_latest(registry)


# ---------------------------------------------------------------------- store snapshot


@dataclass(frozen=True)
class Snapshot:
    """Counts read from the store by one background refresh."""

    #: (pipeline, status) -> assets.
    assets: Mapping[tuple[str, str], int] = field(default_factory=dict)
    #: (pipeline, job, status, cluster) -> jobs of assets whose pipeline has not finished.
    jobs: Mapping[tuple[str, str, str, str], int] = field(default_factory=dict)
    #: ARS sync step -> assets waiting for it.
    ars_backlog: Mapping[str, int] = field(default_factory=dict)
    #: Creation time (epoch seconds) of the oldest asset still waiting or running.
    oldest_unfinished: float | None = None
    #: The finished assets' part of `assets`, and when it was read (epoch seconds).
    finished: Mapping[tuple[str, str], int] = field(default_factory=dict)
    finished_at: float = 0.0
    #: When the refresh finished (epoch seconds) and how long its queries took.
    taken_at: float = 0.0
    took_s: float = 0.0


class DaemonCollector(Collector):
    """The gauges a scrape computes from memory: the last snapshot, which clusters the daemon
    can reach, the ARS breaker, free disk space of the daemon's folders."""

    def __init__(
        self,
        *,
        clusters: Callable[[], Mapping[str, bool]],
        breaker_open: Callable[[], bool | None],
        folders: Iterable[Path] = (),
        leader: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.snapshot = Snapshot()
        self._clusters = clusters
        self._breaker_open = breaker_open
        self._folders = list(folders)
        self._leader = leader
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot
        assets = GaugeMetricFamily(
            "dasscod_assets", "Assets in the store by pipeline and overall status (snapshot).",
            labels=["pipeline", "status"],
        )
        for (pipeline, status), n in sorted(snap.assets.items()):
            assets.add_metric([pipeline, status], n)
        yield assets
        jobs = GaugeMetricFamily(
            "dasscod_jobs",
            "Jobs of assets whose pipeline has not finished, by pipeline, job, status and "
            "cluster (snapshot; cluster is empty before a job was placed).",
            labels=["pipeline", "job", "status", "cluster"],
        )
        for key, n in sorted(snap.jobs.items()):
            jobs.add_metric(list(key), n)
        yield jobs
        backlog = GaugeMetricFamily(
            "dasscod_ars_backlog", "Assets waiting for an ARS sync step (snapshot).",
            labels=["step"],
        )
        for step, n in sorted(snap.ars_backlog.items()):
            backlog.add_metric([step], n)
        yield backlog
        oldest = 0.0 if snap.oldest_unfinished is None else self._clock() - snap.oldest_unfinished
        yield GaugeMetricFamily(
            "dasscod_oldest_unfinished_asset_seconds",
            "Age of the oldest asset still waiting or running (0: none; snapshot).",
            value=max(0.0, oldest),
        )
        yield GaugeMetricFamily(
            "dasscod_snapshot_age_seconds",
            "Seconds since the store snapshot behind the gauges above was taken.",
            value=self._clock() - snap.taken_at if snap.taken_at else float("nan"),
        )
        yield GaugeMetricFamily(
            "dasscod_snapshot_duration_seconds", "How long the last snapshot's queries took.",
            value=snap.took_s,
        )
        up = GaugeMetricFamily(
            "dasscod_cluster_up",
            "1 while the daemon can reach the cluster, 0 while it takes no jobs after a failed "
            "command.", labels=["cluster"],
        )
        for name, reachable in sorted(self._clusters().items()):
            up.add_metric([name], 1 if reachable else 0)
        yield up
        breaker = self._breaker_open()
        if breaker is not None:
            yield GaugeMetricFamily(
                "dasscod_ars_breaker_open",
                "1 while the ARS circuit breaker is open or probing (ARS unavailable).",
                value=1 if breaker else 0,
            )
        if self._leader is not None:
            yield GaugeMetricFamily(
                "dasscod_leader", "1 while this daemon holds the leader lease, 0 in standby.",
                value=1 if self._leader() else 0,
            )
        free = GaugeMetricFamily(
            "dasscod_disk_free_bytes", "Free space of the file system of a daemon folder.",
            labels=["folder"],
        )
        size = GaugeMetricFamily(
            "dasscod_disk_size_bytes", "Size of the file system of a daemon folder.",
            labels=["folder"],
        )
        for folder in self._folders:
            try:
                usage = shutil.disk_usage(folder)
            except OSError:
                continue  # not created yet: no number rather than a false one
            free.add_metric([str(folder)], usage.free)
            size.add_metric([str(folder)], usage.total)
        yield free
        yield size


class SnapshotRefresher:
    """Rebuilds the collector's snapshot every `interval_s` until `stopping` is set. A failed
    refresh keeps the previous snapshot (its age shows in `dasscod_snapshot_age_seconds`)."""

    def __init__(
        self,
        collector: DaemonCollector,
        take: Callable[[Snapshot | None], Awaitable[Snapshot]],
        *,
        interval_s: float,
        stopping: anyio.Event,
    ) -> None:
        self.collector = collector
        self._take = take
        self.interval_s = interval_s
        self.stopping = stopping
        #: Set after every refresh (tests and the watchdog wait on it).
        self.refreshed = anyio.Event()

    async def refresh(self) -> None:
        previous = self.collector.snapshot if self.collector.snapshot.taken_at else None
        self.collector.snapshot = await self._take(previous)
        self.refreshed.set()
        self.refreshed = anyio.Event()

    async def run(self) -> None:
        while not self.stopping.is_set():
            try:
                await self.refresh()
            except Exception as exc:  # the store is down: keep the last snapshot, try again
                log.warning("metrics snapshot failed; keeping the previous one", error=str(exc))
            beat(self.interval_s)
            with anyio.move_on_after(self.interval_s):
                await self.stopping.wait()

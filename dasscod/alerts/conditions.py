"""The conditions of deploy/prometheus/dasscod-rules.yml, read from what the daemon knows in
memory (the metrics' store snapshot, the throttle, the ARS breaker, the counters): checking
them costs no query."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dasscod import metrics
from dasscod.alerts.notifier import Condition
from dasscod.store.stats import MOVING


@dataclass
class Thresholds:
    cluster_down_s: float = 600.0
    ars_down_s: float = 600.0
    restarts: int = 3
    restarts_window_s: float = 900.0
    no_progress_s: float = 1800.0
    disk_free_min: float = 0.10


def _counter_values(counter: object, label: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for family in counter.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.labels.get(label, "")
                values[key] = values.get(key, 0.0) + sample.value
    return values


@dataclass
class DaemonConditions:
    collector: metrics.DaemonCollector
    clusters: Callable[[], Mapping[str, bool]]
    breaker_open: Callable[[], bool | None]
    folders: list[Path]
    thresholds: Thresholds = field(default_factory=Thresholds)
    clock: Callable[[], float] = time.monotonic
    _down_since: dict[str, float] = field(default_factory=dict)
    _restarts: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    _moved: tuple[float, float] | None = None  # (transitions seen, when they last changed)

    async def __call__(self) -> list[Condition]:
        now = self.clock()
        found = self._errors() + self._down(now) + self._crashing(now) + self._disk()
        found += self._stalled(now)
        return found

    def _errors(self) -> list[Condition]:
        by_pipeline: dict[str, int] = {}
        for (pipeline, status), n in self.collector.snapshot.assets.items():
            if status == "ERROR" and n > 0:
                by_pipeline[pipeline] = by_pipeline.get(pipeline, 0) + n
        return [Condition(f"asset_error:{p}", f"assets of {p} in ERROR", count=n,
                          detail=f"{n} asset(s) of {p} wait for an operator: `dasscod errors` "
                                 "lists them with their reasons, `dasscod retry` runs them again.")
                for p, n in sorted(by_pipeline.items())]

    def _since(self, key: str, now: float, on: bool) -> float:
        if not on:
            self._down_since.pop(key, None)
            return 0.0
        return now - self._down_since.setdefault(key, now)

    def _down(self, now: float) -> list[Condition]:
        found = []
        for name, up in sorted(self.clusters().items()):
            if self._since(f"cluster:{name}", now, not up) >= self.thresholds.cluster_down_s:
                found.append(Condition(
                    f"cluster_unreachable:{name}", f"cluster {name} unreachable",
                    detail=f"Commands on {name} fail for {self.thresholds.cluster_down_s:g} s "
                           "or more; it takes no new jobs. The log says why (cluster field)."))
        breaker = bool(self.breaker_open())
        if self._since("ars", now, breaker) >= self.thresholds.ars_down_s and breaker:
            found.append(Condition("ars_breaker_open", "ARS unavailable (circuit breaker open)",
                                   detail="ARS calls fail; the sync waits and resumes by itself."))
        return found

    def _crashing(self, now: float) -> list[Condition]:
        values = _counter_values(metrics.SUPERVISOR_RESTARTS, "supervisor")
        self._restarts.append((now, values))
        window = self.thresholds.restarts_window_s
        while self._restarts and now - self._restarts[0][0] > window:
            self._restarts.pop(0)
        first = self._restarts[0][1]
        return [Condition(f"supervisor_restarting:{name}", f"supervisor {name} keeps crashing",
                          count=int(n - first.get(name, 0.0)),
                          detail=f"It crashed {int(n - first.get(name, 0.0))} times in "
                                 f"{window / 60:g} min; the log has each traceback.")
                for name, n in sorted(values.items())
                if n - first.get(name, 0.0) >= self.thresholds.restarts]

    def _stalled(self, now: float) -> list[Condition]:
        moved = sum(_counter_values(metrics.TRANSITIONS, "to").values())
        if self._moved is None or moved != self._moved[0]:
            self._moved = (moved, now)
        waiting = sum(n for (_, status), n in self.collector.snapshot.assets.items()
                      if status in MOVING)
        if waiting and now - self._moved[1] >= self.thresholds.no_progress_s:
            return [Condition("no_progress", "assets wait but no job moves", count=1,
                              detail=f"{waiting} asset(s) wait or run, and no job changed "
                                     f"state for {self.thresholds.no_progress_s / 60:g} min.")]
        return []

    def _disk(self) -> list[Condition]:
        found = []
        for folder in self.folders:
            try:
                usage = shutil.disk_usage(folder)
            except OSError:
                continue
            if usage.total and usage.free / usage.total < self.thresholds.disk_free_min:
                found.append(Condition(
                    f"disk_filling:{folder}", f"disk of {folder} filling up",
                    detail=f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f}."))
        return found

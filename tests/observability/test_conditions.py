"""The notifier's conditions other than assets in ERROR (test_notifier.py covers those end to
end): each fires only once its threshold has held for its whole time, names what it is about,
and clears as soon as the cause does. The clock is the conditions' own (injected), the
counters are the daemon's real Prometheus counters, the disk is the real one."""

from __future__ import annotations

import uuid
from pathlib import Path

from dasscod import metrics
from dasscod.alerts.conditions import DaemonConditions, Thresholds
from dasscod.metrics import Snapshot


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class World:
    """What the conditions read: clusters' reachability, the ARS breaker, the snapshot."""

    def __init__(self) -> None:
        self.up: dict[str, bool] = {"hpc": True, "computerome": True}
        self.breaker: bool | None = False
        self.collector = metrics.DaemonCollector(clusters=lambda: self.up,
                                                 breaker_open=lambda: self.breaker)


def conditions(world: World, clock: Clock, thresholds: Thresholds,
               folders: list[Path] | None = None) -> DaemonConditions:
    return DaemonConditions(world.collector, clusters=lambda: world.up,
                            breaker_open=lambda: world.breaker, folders=folders or [],
                            thresholds=thresholds, clock=clock)


async def keys(sense: DaemonConditions) -> set[str]:
    return {c.key for c in await sense()}


async def test_an_unreachable_cluster_alerts_only_after_it_stayed_down_for_the_threshold() -> None:
    world, clock = World(), Clock()
    sense = conditions(world, clock, Thresholds(cluster_down_s=600))
    world.up["hpc"] = False
    assert await keys(sense) == set()
    clock.now += 599
    assert await keys(sense) == set()
    clock.now += 1
    assert await keys(sense) == {"cluster_unreachable:hpc"}
    # Back for one check: the clock starts again from the next outage.
    world.up["hpc"] = True
    assert await keys(sense) == set()
    world.up["hpc"] = False
    clock.now += 300
    assert await keys(sense) == set()


async def test_an_open_ars_breaker_alerts_after_the_threshold_and_clears_when_it_closes() -> None:
    world, clock = World(), Clock()
    sense = conditions(world, clock, Thresholds(ars_down_s=120))
    world.breaker = True
    assert await keys(sense) == set()
    clock.now += 120
    assert await keys(sense) == {"ars_breaker_open"}
    world.breaker = False
    assert await keys(sense) == set()
    world.breaker = None  # no ARS configured: never an alert
    clock.now += 10_000
    assert await keys(sense) == set()


async def test_a_supervisor_crashing_repeatedly_within_the_window_alerts() -> None:
    world, clock = World(), Clock()
    name = f"dispatch.test-{uuid.uuid4().hex[:6]}"
    restarts = metrics.SUPERVISOR_RESTARTS.labels(supervisor=name)
    sense = conditions(world, clock, Thresholds(restarts=3, restarts_window_s=900))
    assert await keys(sense) == set()
    for _ in range(2):
        clock.now += 60
        restarts.inc()
        assert f"supervisor_restarting:{name}" not in await keys(sense)
    clock.now += 60
    restarts.inc()
    found = {c.key: c for c in await sense()}
    assert found[f"supervisor_restarting:{name}"].count == 3
    # Quiet for longer than the window: the old crashes no longer count.
    clock.now += 901
    assert f"supervisor_restarting:{name}" not in await keys(sense)
    clock.now += 1
    assert f"supervisor_restarting:{name}" not in await keys(sense)


async def test_waiting_assets_with_no_transition_for_the_threshold_alert_until_one_moves() -> None:
    world, clock = World(), Clock()
    sense = conditions(world, clock, Thresholds(no_progress_s=1800))
    world.collector.snapshot = Snapshot(assets={("PIPEHERB0001", "WAITING"): 4,
                                                ("PIPEHERB0001", "DONE"): 10})
    assert await keys(sense) == set()
    clock.now += 1800
    found = await sense()
    assert [c.key for c in found] == ["no_progress"]
    assert "4 asset(s) wait or run" in found[0].detail
    metrics.TRANSITIONS.labels(job="barcode", to="RUNNING").inc()  # a job moved
    assert await keys(sense) == set()
    # Nothing waits: a quiet daemon is not a stalled one.
    world.collector.snapshot = Snapshot(assets={("PIPEHERB0001", "DONE"): 14})
    clock.now += 10_000
    assert await keys(sense) == set()


async def test_a_disk_below_the_free_share_alerts_and_a_missing_folder_is_skipped(
    tmp_path: Path,
) -> None:
    world, clock = World(), Clock()
    missing = tmp_path / "not-mounted"
    # Every real disk has less than all of itself free: a share of 1.0 must alert.
    full = conditions(world, clock, Thresholds(disk_free_min=1.0), folders=[tmp_path, missing])
    found = await full()
    assert [c.key for c in found] == [f"disk_filling:{tmp_path}"]
    assert "GiB free of" in found[0].detail
    roomy = conditions(world, clock, Thresholds(disk_free_min=0.0), folders=[tmp_path])
    assert await keys(roomy) == set()

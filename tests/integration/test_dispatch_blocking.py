"""Dispatch without head-of-line blocking: an asset whose clusters are full or unreachable is
skipped, not waited on; one that cannot run here at all goes to ERROR with the reason; one
that fails unexpectedly is logged once with its traceback and then with back-off, while the
assets behind it go on."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import anyio
import pytest
import structlog

from dasscod.cluster.configured import Cluster, build_clusters
from dasscod.coordination import Throttle, Wakeups
from dasscod.holds import Hold, cluster_target
from dasscod.model import JobStatus, Track, utcnow
from dasscod.pipeline import Pipeline, parse_pipeline
from dasscod.repeated import RepeatedErrors
from dasscod.settings import ClusterSettings
from dasscod.store import Stores
from dasscod.supervisors.dispatch import Dispatcher
from tests.integration.dispatching import load_dispatcher


def pipeline(name: str, cluster: str) -> Pipeline:
    return parse_pipeline(
        f'name = "{name}"\n[[jobs]]\nname = "load"\npriority = 1\n'
        f'clusters = ["{cluster}"]\ncommand = ["true"]\n'
    )


PIPELINES = {p.name: p for p in (pipeline("PIPEBUSY", "busy"), pipeline("PIPEFREE", "free"))}


@pytest.fixture
def clusters(tmp_path: Path) -> dict[str, Cluster]:
    return build_clusters({
        name: ClusterSettings(max_jobs=5, work_root=tmp_path / name / "work",
                              state_dir=tmp_path / name / "jobs")
        for name in ("busy", "free")
    })


@pytest.fixture
def throttle() -> Throttle:
    return Throttle(assets_in_flight=10, jobs_per_cluster={"busy": 5, "free": 5},
                    wakeups=Wakeups())


@pytest.fixture
def dispatcher(stores: Stores, clusters: dict[str, Cluster], throttle: Throttle) -> Dispatcher:
    stores.track.pipelines = PIPELINES
    return load_dispatcher(stores, clusters, PIPELINES, throttle)


async def add(stores: Stores, guid: str, pipeline_name: str) -> None:
    known = PIPELINES.get(pipeline_name) or PIPELINES["PIPEFREE"]
    await stores.track.insert(Track.model_validate(
        {"_id": guid, "pipeline": pipeline_name, "job_list": known.initial_jobs()}))


async def one_pass(dispatcher: Dispatcher) -> tuple[int, bool]:
    async with anyio.create_task_group() as tg:  # waits for the submissions too
        claimed, blocked, _ = await dispatcher.dispatch_once(tg)
    return claimed, blocked


async def status(stores: Stores, guid: str) -> JobStatus:
    track = await stores.track.get(guid)
    assert track is not None
    return track.job("load").status


@pytest.mark.parametrize("why", ["full", "unreachable", "paused"])
async def test_assets_behind_one_whose_cluster_has_no_room_are_dispatched(
    stores: Stores, dispatcher: Dispatcher, throttle: Throttle, why: str
) -> None:
    # The oldest assets want the busy cluster; the newest wants the free one.
    for guid in ("busy-1", "busy-2"):
        await add(stores, guid, "PIPEBUSY")
    await add(stores, "free-1", "PIPEFREE")
    if why == "full":
        throttle.set_limits(assets_in_flight=10, jobs_per_cluster={"busy": 0, "free": 5})
    elif why == "unreachable":
        throttle.unreachable("busy", "connection refused")
    else:
        throttle.holds.put(Hold(kind="pause", target=cluster_target("busy"), by="test",
                                at=utcnow(), reason="maintenance"))

    claimed, blocked = await one_pass(dispatcher)

    assert (claimed, blocked) == (1, True)  # blocked: a freed slot wakes it for the others
    assert await status(stores, "free-1") is JobStatus.QUEUED
    assert [await status(stores, g) for g in ("busy-1", "busy-2")] == [JobStatus.WAITING] * 2


async def test_an_asset_naming_an_unknown_pipeline_goes_to_error_with_the_reason(
    stores: Stores, dispatcher: Dispatcher
) -> None:
    await add(stores, "gone-1", "PIPEGONE0001")  # its pipeline was removed from the daemon
    await add(stores, "free-1", "PIPEFREE")

    with structlog.testing.capture_logs() as logs:
        assert await one_pass(dispatcher) == (1, False)
        assert await one_pass(dispatcher) == (0, False)  # nothing left to say about it

    track = await stores.track.get("gone-1")
    assert track is not None
    assert track.jobs_status is JobStatus.ERROR
    error = track.job("load").last_error or ""
    assert "pipeline 'PIPEGONE0001' is not known" in error and "dasscod retry gone-1" in error
    assert await status(stores, "free-1") is JobStatus.QUEUED
    refused = [e for e in logs if e["event"] == "job cannot run; asset put in ERROR"]
    assert len(refused) == 1
    assert not any("exc_info" in e for e in logs)


async def test_an_unexpected_error_for_one_asset_is_logged_with_back_off(
    stores: Stores, dispatcher: Dispatcher, throttle: Throttle, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]
    dispatcher.errors = RepeatedErrors(base_s=10, clock=lambda: now[0])
    original = throttle.reserve

    def broken_for_one(track: Track, clusters: Iterable[str], job: str = "") -> str | None:
        if track.id == "bad-1":
            raise RuntimeError("a bug that only this asset triggers")
        return original(track, clusters, job)

    # The throttle the dispatcher was given fails for one asset: a bug in what it calls.
    monkeypatch.setattr(throttle, "reserve", broken_for_one)
    await add(stores, "bad-1", "PIPEFREE")
    await add(stores, "free-1", "PIPEFREE")

    with structlog.testing.capture_logs() as logs:
        assert (await one_pass(dispatcher))[0] == 1  # the asset behind it goes on
        for _ in range(3):  # passes within the back-off leave it alone, and say nothing
            await one_pass(dispatcher)
        now[0] = 11.0
        await one_pass(dispatcher)

    failures = [e for e in logs if e["event"].startswith("dispatching an asset failed")]
    assert [e["log_level"] for e in failures] == ["error", "warning"]
    assert "exc_info" in failures[0] and "exc_info" not in failures[1]
    assert failures[1]["failures"] == 2 and failures[1]["retry_in_s"] == 20
    assert await status(stores, "free-1") is JobStatus.QUEUED
    assert await status(stores, "bad-1") is JobStatus.WAITING


def test_repeated_errors_back_off_per_key_and_cause() -> None:
    now = [0.0]
    errors = RepeatedErrors(base_s=10, max_s=40, clock=lambda: now[0])
    with structlog.testing.capture_logs() as logs:
        assert errors.failed("a", ValueError("x"), "failed") == 10
        assert not errors.due("a") and errors.due("b")
        now[0] = 10
        assert errors.due("a")
        assert errors.failed("a", ValueError("x"), "failed") == 20
        assert errors.failed("a", ValueError("x"), "failed") == 40
        assert errors.failed("a", ValueError("x"), "failed") == 40  # capped
        assert errors.failed("a", KeyError("y"), "failed") == 10  # a new cause is news
        errors.cleared("a")
        assert errors.due("a") and len(errors) == 0
    assert [e["log_level"] for e in logs] == ["error", "warning", "warning", "warning", "error"]


async def test_a_whole_batch_waiting_for_room_does_not_hide_the_assets_behind_it(
    stores: Stores, dispatcher: Dispatcher, throttle: Throttle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dasscod.supervisors.dispatch.BATCH", 2)
    for guid in ("busy-1", "busy-2", "busy-3"):  # more than a batch, all oldest
        await add(stores, guid, "PIPEBUSY")
    await add(stores, "free-1", "PIPEFREE")
    throttle.set_limits(assets_in_flight=10, jobs_per_cluster={"busy": 0, "free": 5})

    assert await one_pass(dispatcher) == (1, True)

    assert await status(stores, "free-1") is JobStatus.QUEUED
    assert {await status(stores, f"busy-{i}") for i in (1, 2, 3)} == {JobStatus.WAITING}

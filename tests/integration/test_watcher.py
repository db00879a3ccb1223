"""The job watcher against the real direct scheduler and a real store: crash reconciliation of
STARTING jobs by their deterministic name, jobs that end without calling back, and jobs that
overrun their limits."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path, PurePosixPath

import anyio
import pytest

from dasscod.cluster.base import JobSpec, SchedulerState
from dasscod.cluster.configured import Cluster, build_clusters
from dasscod.model import JobStatus, utcnow
from dasscod.pipeline import Event, JobEvent
from dasscod.pipelines import load_pipelines
from dasscod.services.launch import Launcher, scheduler_job_name
from dasscod.settings import ClusterSettings, TimingSettings
from dasscod.store import Stores
from dasscod.supervisors.watch import Watcher
from tests.conftest import make_track

SECRET = "watcher-test-secret-0123456789abcdef"


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    settings = ClusterSettings(work_root=tmp_path / "work", state_dir=tmp_path / "jobs")
    return build_clusters({"local": settings})["local"]


@pytest.fixture
async def watcher(stores: Stores, cluster: Cluster) -> AsyncIterator[Watcher]:
    pipelines = load_pipelines()
    launcher = Launcher(stores=stores, clusters={"local": cluster}, pipelines=pipelines,
                        callback_base="http://127.0.0.1:9/api/v1", token_secret=SECRET,
                        token_ttl_s=3600)
    timing = TimingSettings(max_queue_s=2.0, grace_s=0.0)
    yield Watcher(cluster, stores=stores, pipelines=pipelines, launcher=launcher,
                  timing=timing, stopping=anyio.Event())


async def claimed(stores: Stores, guid: str) -> None:
    await stores.track.insert(make_track(guid))
    result = await stores.track.apply(
        guid, [JobEvent("load", Event.CLAIM, cluster="local")], cause="test"
    )
    assert result.track.job("load").status is JobStatus.STARTING


def spec(cluster: Cluster, guid: str, *argv: str) -> JobSpec:
    return JobSpec(name=scheduler_job_name(guid, "load", 1), argv=argv,
                   workdir=PurePosixPath(str(cluster.workdir(guid))))


async def wait_finished(cluster: Cluster, job_id: str, name: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        info = (await cluster.scheduler.status({job_id: name}))[job_id]
        if info.state.finished:
            return
        await anyio.sleep(0.05)
    pytest.fail("job did not finish")


async def test_a_claim_that_reached_the_scheduler_is_adopted_not_resubmitted(
    stores: Stores, cluster: Cluster, watcher: Watcher
) -> None:
    await claimed(stores, "w-1")
    job_id = await cluster.scheduler.submit(spec(cluster, "w-1", "sleep", "30"))
    try:
        # A restarted daemon: its watcher started after the claim was written.
        watcher.started_at = utcnow()
        await watcher.check_once()
        track = await stores.track.get("w-1")
        assert track is not None
        job = track.job("load")
        assert job.status is JobStatus.QUEUED
        assert str(job.hpc_job_id) == job_id
        assert job.attempt == 1
        assert track.history[-1].cause == "watcher: reconcile: submitted"
    finally:
        await cluster.scheduler.cancel(job_id)


async def test_a_claim_that_never_reached_the_scheduler_goes_back_to_waiting(
    stores: Stores, watcher: Watcher
) -> None:
    await claimed(stores, "w-2")
    watcher.started_at = utcnow()
    await watcher.check_once()
    track = await stores.track.get("w-2")
    assert track is not None
    assert track.job("load").status is JobStatus.WAITING
    assert "load" in track.ready


async def test_a_recent_claim_is_left_to_its_submission(
    stores: Stores, watcher: Watcher
) -> None:
    await claimed(stores, "w-3")
    watcher.started_at = utcnow() - timedelta(minutes=1)  # this process made the claim
    await watcher.check_once()
    track = await stores.track.get("w-3")
    assert track is not None and track.job("load").status is JobStatus.STARTING


async def test_a_job_that_ends_without_calling_back_is_retried(
    stores: Stores, cluster: Cluster, watcher: Watcher
) -> None:
    await claimed(stores, "w-4")
    name = scheduler_job_name("w-4", "load", 1)
    job_id = await cluster.scheduler.submit(spec(cluster, "w-4", "sh", "-c", "exit 3"))
    await stores.track.apply("w-4", [JobEvent("load", Event.SUBMITTED, attempt=1,
                                              hpc_job_id=job_id)], cause="test")
    await wait_finished(cluster, job_id, name)
    await watcher.check_once()
    track = await stores.track.get("w-4")
    assert track is not None
    job = track.job("load")
    assert job.status is JobStatus.RETRY
    assert "without reporting back" in (job.last_error or "")
    assert job.not_before is not None and job.not_before > utcnow()


async def test_a_job_stuck_in_the_queue_is_cancelled_and_retried(
    stores: Stores, cluster: Cluster, watcher: Watcher
) -> None:
    await claimed(stores, "w-5")
    name = scheduler_job_name("w-5", "load", 1)
    job_id = await cluster.scheduler.submit(spec(cluster, "w-5", "sleep", "30"))
    await stores.track.apply("w-5", [JobEvent("load", Event.SUBMITTED, attempt=1,
                                              hpc_job_id=job_id)], cause="test")
    # Seen from three seconds on: past max_queue_s (2 s) without a started callback.
    await watcher.check_once(now=utcnow() + timedelta(seconds=3))
    track = await stores.track.get("w-5")
    assert track is not None
    job = track.job("load")
    assert job.status is JobStatus.RETRY
    assert "queued for more than" in (job.last_error or "")
    await wait_finished(cluster, job_id, name)
    info = (await cluster.scheduler.status({job_id: name}))[job_id]
    assert info.state is SchedulerState.CANCELLED

"""Faults on the real Slurm cluster, seen through the watcher over SSH: a job cancelled behind
the daemon's back, a job that exits without calling back, and the daemon killed between
sbatch returning and the job id being stored. Every case ends in a retry with the reason or in
the job being adopted, and never in two live jobs for one attempt (checked with squeue)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path, PurePosixPath

import anyio
import pytest

from dasscod.cluster.base import JobSpec
from dasscod.clusters import Cluster, build_clusters
from dasscod.model import JobStatus, Track, utcnow
from dasscod.pipeline import Event, JobEvent, load_pipelines
from dasscod.settings import ClusterSettings, SshSettings, TimingSettings
from dasscod.store import Stores
from dasscod.supervisors.launch import Launcher, scheduler_job_name
from dasscod.supervisors.watch import Watcher
from tests.conftest import make_track
from tests.slurm.conftest import LocalCluster

pytestmark = pytest.mark.e2e

SECRET = "slurm-fault-secret-0123456789abcdefgh"




@pytest.fixture
async def cluster(slurm_cluster: LocalCluster, shared: Path) -> AsyncIterator[Cluster]:
    env = slurm_cluster.env
    settings = ClusterSettings(
        scheduler="slurm", transport="ssh", partition=slurm_cluster.partition,
        ssh=SshSettings(host=env["SSH_HOST"], port=int(env["SSH_PORT"]), user=env["SSH_USER"],
                        key_file=Path(env["SSH_KEY"]), known_hosts=Path(env["SSH_KNOWN_HOSTS"])),
        work_root=shared / "work", state_dir=shared / "jobs",
    )  # fmt: skip
    built = build_clusters({"local": settings})["local"]
    try:
        yield built
    finally:
        await built.transport.close()


@pytest.fixture
def watcher(stores: Stores, cluster: Cluster) -> Watcher:
    pipelines = load_pipelines()
    launcher = Launcher(stores=stores, clusters={"local": cluster}, pipelines=pipelines,
                        callback_base="http://127.0.0.1:9/api/v1", token_secret=SECRET,
                        token_ttl_s=600)
    return Watcher(cluster, stores=stores, pipelines=pipelines, launcher=launcher,
                   timing=TimingSettings(), stopping=anyio.Event())


async def claimed(stores: Stores, guid: str) -> None:
    await stores.track.insert(make_track(guid))
    await stores.track.apply(guid, [JobEvent("load", Event.CLAIM, cluster="local")],
                             cause="test")


async def submit(cluster: Cluster, guid: str, *argv: str) -> str:
    spec = JobSpec(name=scheduler_job_name(guid, "load", 1), argv=argv, time_limit_s=120,
                   workdir=PurePosixPath(str(cluster.workdir(guid))))
    return await cluster.scheduler.submit(spec)


async def live_jobs_named(name: str) -> list[str]:
    done = await anyio.run_process(["squeue", "-h", "--name", name, "-o", "%i"])
    return done.stdout.decode().split()


async def until(stores: Stores, watcher: Watcher, guid: str, status: JobStatus) -> Track:
    deadline = time.monotonic() + 90
    while True:
        await watcher.check_once()
        track = await stores.track.get(guid)
        assert track is not None
        if track.job("load").status is status:
            return track
        assert time.monotonic() < deadline, (track.job("load"), status)
        await anyio.sleep(0.5)


async def test_a_job_cancelled_behind_the_daemons_back_is_retried(
    stores: Stores, cluster: Cluster, watcher: Watcher
) -> None:
    await claimed(stores, "f-1")
    job_id = await submit(cluster, "f-1", "sleep", "60")
    await stores.track.apply("f-1", [JobEvent("load", Event.SUBMITTED, attempt=1,
                                              hpc_job_id=job_id)], cause="test")
    await anyio.run_process(["scancel", job_id])
    track = await until(stores, watcher, "f-1", JobStatus.RETRY)
    assert "CANCELLED" in (track.job("load").last_error or "")
    assert await live_jobs_named(scheduler_job_name("f-1", "load", 1)) == []


async def test_a_job_that_exits_without_calling_back_is_retried(
    stores: Stores, cluster: Cluster, watcher: Watcher
) -> None:
    await claimed(stores, "f-2")
    job_id = await submit(cluster, "f-2", "true")
    await stores.track.apply("f-2", [JobEvent("load", Event.SUBMITTED, attempt=1,
                                              hpc_job_id=job_id)], cause="test")
    track = await until(stores, watcher, "f-2", JobStatus.RETRY)
    assert "without reporting back" in (track.job("load").last_error or "")


async def test_killed_after_sbatch_before_the_id_was_stored_the_job_is_adopted(
    stores: Stores, cluster: Cluster, watcher: Watcher
) -> None:
    await claimed(stores, "f-3")
    # sbatch ran and returned, then the daemon died: the store still says STARTING, no id.
    job_id = await submit(cluster, "f-3", "sleep", "60")
    try:
        watcher.started_at = utcnow() + timedelta(seconds=1)  # the restarted daemon's watcher
        track = await until(stores, watcher, "f-3", JobStatus.QUEUED)
        assert str(track.job("load").hpc_job_id) == job_id
        assert track.job("load").attempt == 1
        assert await live_jobs_named(scheduler_job_name("f-3", "load", 1)) == [job_id]
    finally:
        await cluster.scheduler.cancel(job_id)

"""Faults on the real Slurm cluster, seen through the watcher over SSH: a job cancelled behind
the daemon's back, a job that exits without calling back, a job that overruns its time limit,
and the daemon killed between sbatch returning and the job id being stored. Every case ends in
a retry or an ERROR with the reason, or in the job being adopted, and never in two live jobs
for one attempt (checked with squeue and sacct)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path, PurePosixPath

import anyio
import pytest

from dasscod.cluster.base import JobSpec
from dasscod.cluster.configured import Cluster, build_clusters
from dasscod.model import JobStatus, Track, utcnow
from dasscod.pipeline import Event, JobEvent
from dasscod.pipelines import load_pipelines
from dasscod.services.launch import Launcher, scheduler_job_name
from dasscod.settings import ClusterSettings, SshSettings, TimingSettings
from dasscod.store import Stores
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


async def accounted_jobs_named(name: str) -> list[tuple[str, str]]:
    """(job id, state) of every job of this name in Slurm's accounting. The test cluster has
    no slurmdbd, so this is the completion log (`sacct --completion`), which ignores --name."""
    done = await anyio.run_process(
        ["sacct", "--completion", "--noheader", "--parsable2",
         "--format=JobID,State,JobName", f"--name={name}"]
    )  # fmt: skip
    rows = [line.split("|") for line in done.stdout.decode().splitlines()]
    return [(row[0], row[1]) for row in rows if len(row) == 3 and row[2] == name]


async def until(stores: Stores, watcher: Watcher, guid: str, status: JobStatus,
                within_s: float = 90) -> Track:
    deadline = time.monotonic() + within_s
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


async def test_jobs_over_their_time_limit_are_retried_or_in_error_with_timeout(
    stores: Stores, cluster: Cluster, watcher: Watcher
) -> None:
    """SLOW (60-90 s): Slurm's smallest time limit is one minute and slurmctld enforces limits
    every 30 s. Two jobs overrun at once: one with attempts left (RETRY), one on its
    last attempt (ERROR). Neither calls back: the watcher learns TIMEOUT from Slurm."""
    run = uuid.uuid4().hex[:8]  # sacct's log outlives the test: names must be new
    retried, failed = f"to-{run}-a", f"to-{run}-b"
    names = {guid: scheduler_job_name(guid, "load", 1) for guid in (retried, failed)}
    track = make_track(failed)
    track.job_list[0].max_attempts = 1
    await stores.track.insert(track)
    await stores.track.apply(failed, [JobEvent("load", Event.CLAIM, cluster="local")],
                             cause="test")
    await claimed(stores, retried)
    for guid, name in names.items():
        spec = JobSpec(name=name, argv=("sleep", "600"), time_limit_s=60,
                       workdir=PurePosixPath(str(cluster.workdir(guid))))
        job_id = await cluster.scheduler.submit(spec)
        await stores.track.apply(guid, [JobEvent("load", Event.SUBMITTED, attempt=1,
                                                 hpc_job_id=job_id)], cause="test")

    again = (await until(stores, watcher, retried, JobStatus.RETRY, within_s=150)).job("load")
    given_up = (await until(stores, watcher, failed, JobStatus.ERROR, within_s=30)).job("load")
    for job in (again, given_up):
        assert job.exit_state == "TIMEOUT", job
        assert "job ended (TIMEOUT" in (job.last_error or ""), job
        assert job.attempt == 1
    assert again.not_before is not None, "a retry is scheduled"
    final = await stores.track.get(failed)
    assert final is not None and final.jobs_status is JobStatus.ERROR
    for guid, name in names.items():
        track_now = await stores.track.get(guid)
        assert track_now is not None
        recorded = str(track_now.job("load").hpc_job_id)
        assert await live_jobs_named(name) == []
        assert await accounted_jobs_named(name) == [(recorded, "TIMEOUT")], (
            "exactly one Slurm job for the attempt, and it ran into its time limit"
        )


async def test_accounting_answers_the_cluster_user_over_ssh(cluster: Cluster) -> None:
    # A name squeue does not know is asked of sacct (--completion on the test cluster), as
    # the cluster user: that must answer (nothing found), not fail, or a job that left
    # slurmctld's memory could never be settled.
    never = scheduler_job_name(f"never-{uuid.uuid4().hex[:8]}", "load", 1)
    assert await cluster.scheduler.lookup([never]) == {}

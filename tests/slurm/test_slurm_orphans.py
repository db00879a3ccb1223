"""Orphans on the real Slurm cluster, over SSH: a submission whose answer was lost (sbatch
slower than its timeout) is looked for by name until the submit timeout has passed, and is
adopted when it appears instead of being submitted again; a job carrying our name that is
not the live attempt's job is cancelled with scancel, and logged once."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
import structlog

from dasscod.cluster.base import Command, CommandResult, Transport, TransportError
from dasscod.cluster.configured import Cluster, build_clusters
from dasscod.cluster.slurm import SlurmScheduler
from dasscod.model import JobStatus
from dasscod.pipeline import Event, JobEvent
from dasscod.pipelines import load_pipelines
from dasscod.services.launch import Launcher, scheduler_job_name
from dasscod.settings import ClusterSettings, SshSettings, TimingSettings
from dasscod.store import Stores
from dasscod.supervisors.watch import RECONCILE_AFTER_S, Watcher
from tests.slurm.conftest import LocalCluster
from tests.slurm.test_slurm_faults import SECRET, claimed, live_jobs_named, submit

pytestmark = pytest.mark.e2e

#: The cluster's submit timeout here, and how late the slow sbatch starts.
SUBMIT_TIMEOUT_S = 2.0
SBATCH_DELAY_S = 5


class SlowSbatch(Transport):
    """The cluster's SSH transport, with sbatch starting SBATCH_DELAY_S late on the login
    node (a busy controller): the daemon's submission times out before the job exists."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.name = inner.name

    async def execute(self, command: Command) -> CommandResult:
        argv = list(command.argv)
        if argv[:2] == ["sh", "-c"] and "exec sbatch" in argv[2]:
            argv[2] = argv[2].replace("exec sbatch", f"sleep {SBATCH_DELAY_S}; exec sbatch")
        return await self.inner.execute(replace(command, argv=tuple(argv)))

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
async def cluster(slurm_cluster: LocalCluster, shared: Path) -> AsyncIterator[Cluster]:
    env = slurm_cluster.env
    settings = ClusterSettings(
        scheduler="slurm", transport="ssh", partition=slurm_cluster.partition,
        ssh=SshSettings(host=env["SSH_HOST"], port=int(env["SSH_PORT"]), user=env["SSH_USER"],
                        key_file=Path(env["SSH_KEY"]), known_hosts=Path(env["SSH_KNOWN_HOSTS"])),
        work_root=shared / "work", state_dir=shared / "jobs", submit_timeout_s=SUBMIT_TIMEOUT_S,
    )  # fmt: skip
    built = build_clusters({"local": settings})["local"]
    try:
        yield built
    finally:
        await built.transport.close()


def watcher_for(stores: Stores, cluster: Cluster, *, grace_s: float = 120.0) -> Watcher:
    pipelines = load_pipelines()
    launcher = Launcher(stores=stores, clusters={"local": cluster}, pipelines=pipelines,
                        callback_base="http://127.0.0.1:9/api/v1", token_secret=SECRET,
                        token_ttl_s=600)
    watcher = Watcher(cluster, stores=stores, pipelines=pipelines, launcher=launcher,
                      timing=TimingSettings(grace_s=grace_s), stopping=anyio.Event())
    watcher.strays_every_s = 0  # every check sweeps (production: once a minute)
    return watcher


async def until_listed(name: str, count: int, within_s: float = 30) -> list[str]:
    """The live Slurm jobs of `name`, once there are `count` of them (the cluster acts on its
    own time: a late sbatch, a scancel taking effect)."""
    deadline = time.monotonic() + within_s
    while len(jobs := await live_jobs_named(name)) != count:
        assert time.monotonic() < deadline, (name, jobs, count)
        await anyio.sleep(0.2)
    return jobs


async def test_a_late_submission_is_looked_for_until_the_submit_timeout_and_adopted(
    stores: Stores, cluster: Cluster
) -> None:
    guid = f"late-{uuid.uuid4().hex[:8]}"
    name = scheduler_job_name(guid, "load", 1)
    watcher = watcher_for(stores, cluster)
    scheduler = cluster.scheduler
    assert isinstance(scheduler, SlurmScheduler)
    scheduler.transport = SlowSbatch(scheduler.transport)
    await claimed(stores, guid)
    with pytest.raises(TransportError):  # the launcher leaves the attempt STARTING on this
        await submit(cluster, guid, "sleep", "60")
    track = await stores.track.get(guid)
    assert track is not None and track.job("load").status is JobStatus.STARTING
    claimed_at = track.job("load").job_claimed_time
    assert claimed_at is not None
    try:
        # Not found yet, but the submission may still be running: it is not given up.
        assert await live_jobs_named(name) == []
        await watcher.check_once(now=claimed_at + timedelta(seconds=RECONCILE_AFTER_S + 1))
        track = await stores.track.get(guid)
        assert track is not None and track.job("load").status is JobStatus.STARTING

        (job_id,) = await until_listed(name, 1)  # the slow sbatch got through after all
        await watcher.check_once(now=claimed_at + timedelta(seconds=RECONCILE_AFTER_S + 2))
        track = await stores.track.get(guid)
        assert track is not None
        load = track.job("load")
        assert load.status in (JobStatus.QUEUED, JobStatus.RUNNING)
        assert (str(load.hpc_job_id), load.attempt) == (job_id, 1)
        assert await live_jobs_named(name) == [job_id], "adopted, not submitted again"
    finally:
        await anyio.run_process(["scancel", f"--name={name}"])


async def test_a_submission_never_seen_is_given_up_only_after_the_submit_timeout(
    stores: Stores, cluster: Cluster
) -> None:
    guid = f"never-{uuid.uuid4().hex[:8]}"
    watcher = watcher_for(stores, cluster)
    await claimed(stores, guid)
    track = await stores.track.get(guid)
    assert track is not None
    claimed_at = track.job("load").job_claimed_time
    assert claimed_at is not None
    patience = SUBMIT_TIMEOUT_S + RECONCILE_AFTER_S

    await watcher.check_once(now=claimed_at + timedelta(seconds=patience - 1))
    track = await stores.track.get(guid)
    assert track is not None and track.job("load").status is JobStatus.STARTING

    await watcher.check_once(now=claimed_at + timedelta(seconds=patience + 1))
    track = await stores.track.get(guid)
    assert track is not None and track.job("load").status is JobStatus.WAITING


async def test_a_second_job_for_the_live_attempt_is_cancelled_and_logged_once(
    stores: Stores, cluster: Cluster
) -> None:
    guid = f"dup-{uuid.uuid4().hex[:8]}"
    name = scheduler_job_name(guid, "load", 1)
    watcher = watcher_for(stores, cluster)
    await claimed(stores, guid)
    live = await submit(cluster, guid, "sleep", "60")
    duplicate = await submit(cluster, guid, "sleep", "60")  # e.g. a late sbatch's job
    await stores.track.apply(guid, [JobEvent("load", Event.SUBMITTED, attempt=1,
                                             hpc_job_id=live)], cause="test")
    try:
        with structlog.testing.capture_logs() as logs:
            await watcher.check_once()
            assert await until_listed(name, 1) == [live]
            await watcher.check_once()
        cancels = [e for e in logs if e["event"].startswith("cancelling a job on the cluster")]
        assert len(cancels) == 1, cancels
        assert cancels[0]["hpc_job_id"] == duplicate
        assert "second job for the attempt" in cancels[0]["reason"]
        track = await stores.track.get(guid)
        assert track is not None and str(track.job("load").hpc_job_id) == live
        assert track.job("load").status in (JobStatus.QUEUED, JobStatus.RUNNING)
    finally:
        await anyio.run_process(["scancel", f"--name={name}"])


async def test_the_job_of_an_attempt_that_moved_on_is_cancelled(
    stores: Stores, cluster: Cluster
) -> None:
    guid = f"old-{uuid.uuid4().hex[:8]}"
    old_name = scheduler_job_name(guid, "load", 1)
    watcher = watcher_for(stores, cluster, grace_s=0)
    await claimed(stores, guid)
    old = await submit(cluster, guid, "sleep", "60")
    # The store moved on without it (its outcome was declared unknown): attempt 1 is over.
    await stores.track.apply(guid, [JobEvent("load", Event.SUBMIT_FAILED, attempt=1,
                                             error="test", retryable=True)], cause="test")
    # The same cluster user, a job named like ours, not submitted by this daemon (another
    # daemon's, a person's): its script is not in our state folder, so it is left alone.
    foreign = await cluster.transport.run(
        ["sbatch", "--parsable", f"--partition={cluster.settings.partition}",
         f"--job-name={scheduler_job_name(guid, 'load', 2)}", "--output=/dev/null",
         "--wrap=sleep 60"]
    )
    foreign_id = foreign.stdout.strip()
    assert foreign.exit_status == 0 and foreign_id, foreign
    try:
        await watcher.check_once()
        assert await until_listed(old_name, 0) == []
        assert await live_jobs_named(scheduler_job_name(guid, "load", 2)) == [foreign_id]
        track = await stores.track.get(guid)
        assert track is not None and track.job("load").status is not JobStatus.STARTING
    finally:
        await anyio.run_process(["scancel", old, *([foreign_id] if foreign_id else [])])

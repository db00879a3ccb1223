"""A Slurm job submitted through the local transport (sbatch on the daemon's machine) gets
the allow-listed environment only: sbatch passes its own environment on to the job, so the
transport must never hand it the daemon's. Nothing of the daemon's reaches the job, its batch
script or its output."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dasscod.cluster.base import SchedulerState
from dasscod.cluster.configured import Cluster, build_clusters
from dasscod.settings import ClusterSettings
from dasscod.store import Stores
from tests.job_environment import (
    CLUSTER_VARIABLE,
    assert_nothing_of_the_daemon,
    daemon_environment,
    daemon_job_spec,
    until_finished,
)
from tests.slurm.conftest import LocalCluster

pytestmark = pytest.mark.e2e


@pytest.fixture
async def cluster(slurm_cluster: LocalCluster, tmp_path: Path) -> AsyncIterator[Cluster]:
    settings = ClusterSettings(
        scheduler="slurm", transport="local", partition=slurm_cluster.partition,
        work_root=tmp_path / "work", state_dir=tmp_path / "state",
        env={CLUSTER_VARIABLE[0]: CLUSTER_VARIABLE[1]})
    built = build_clusters({"local": settings})["local"]
    yield built
    await built.transport.close()


async def test_a_local_slurm_job_sees_nothing_of_the_daemon(
    cluster: Cluster, stores: Stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon_environment(monkeypatch)
    spec = await daemon_job_spec(stores, cluster, "asset-env-slurm", "sh", "-c", "env -0 >env.dump")
    job_id = await cluster.scheduler.submit(spec)
    info = await until_finished(cluster.scheduler, job_id, spec.name, within_s=60)
    assert (info.state, info.exit_code) == (SchedulerState.COMPLETED, 0)
    workdir = Path(str(spec.workdir))
    pairs = (entry.split("=", 1) for entry in
             (workdir / "env.dump").read_text().split("\0") if "=" in entry)
    dumped = {name: value for name, value in pairs}
    assert dumped.get("SLURM_JOB_ID") == job_id  # it really ran under Slurm
    assert_nothing_of_the_daemon(dumped, workdir, tmp_path / "state")

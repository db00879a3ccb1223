"""A job of the direct scheduler gets an allow-listed environment: the basics (PATH, HOME,
LANG, TMPDIR), its cluster's `env` and the runner's DASSCO_* variables. Nothing of the
daemon's own environment, where its secrets are, reaches the job, its script or its folders,
whether it starts from the shell wrapper or the warm launcher."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

import pytest

from dasscod.cluster.base import SchedulerState
from dasscod.cluster.configured import Cluster
from dasscod.cluster.direct import DirectScheduler
from dasscod.cluster.environment import BASICS, job_environment
from dasscod.cluster.local import LocalTransport
from dasscod.settings import ClusterSettings
from dasscod.store import Stores
from tests.job_environment import (
    CLUSTER_VARIABLE,
    assert_nothing_of_the_daemon,
    daemon_environment,
    daemon_job_spec,
    until_finished,
)

#: `python -m envdump`: writes its environment as JSON into its working directory.
ENVDUMP = """
import json, os
if __name__ == "__main__":  # the warm launcher imports it first
    with open("env.json", "w") as out:
        json.dump(dict(os.environ), out)
    print("dumped", flush=True)
"""


def test_only_the_basics_are_taken_from_the_daemon() -> None:
    inherited = {"PATH": "/bin", "HOME": "/h", "LANG": "C.UTF-8", "TMPDIR": "/t",
                 "DASSCOD_SECURITY__TOKEN_SECRET": "x", "LD_PRELOAD": "/evil.so", "USER": "u"}
    assert job_environment({"A": "b", "PATH": "/opt/bin"}, inherited) == {
        "PATH": "/opt/bin", "HOME": "/h", "LANG": "C.UTF-8", "TMPDIR": "/t", "A": "b"}
    assert set(BASICS) == {"PATH", "HOME", "LANG", "TMPDIR"}


@pytest.fixture(params=["shell wrapper", "warm launcher"])
async def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cluster]:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "envdump.py").write_text(ENVDUMP)
    settings = ClusterSettings(
        work_root=tmp_path / "work", state_dir=tmp_path / "state",
        env={"PYTHONPATH": str(modules), CLUSTER_VARIABLE[0]: CLUSTER_VARIABLE[1]})
    transport = LocalTransport("local")
    warm = {"envdump": ("envdump",)} if request.param == "warm launcher" else {}
    scheduler = DirectScheduler(transport, state_dir=PurePosixPath(settings.state_dir),
                                warm=warm)
    yield Cluster("local", settings, transport, scheduler)
    await transport.close()


async def test_a_direct_job_sees_nothing_of_the_daemon(
    cluster: Cluster, stores: Stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon_environment(monkeypatch)
    spec = await daemon_job_spec(stores, cluster, "asset-env-direct",
                                 sys.executable, "-m", "envdump")
    scheduler = cluster.scheduler
    assert isinstance(scheduler, DirectScheduler)
    job_id = await scheduler.submit(spec)
    info = await until_finished(scheduler, job_id, spec.name, within_s=30)
    assert (info.state, info.exit_code) == (SchedulerState.COMPLETED, 0)
    # The warm case really started warm (a failed warm start falls back to the shell).
    assert (scheduler.warm is not None) == (scheduler.warm is not None and
                                            scheduler.warm.pid is not None)
    workdir = Path(str(spec.workdir))
    dumped = json.loads((workdir / "env.json").read_text())
    assert_nothing_of_the_daemon(dumped, workdir, tmp_path / "state")

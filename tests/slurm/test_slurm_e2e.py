"""The Slurm adapter against the real single-node cluster of tests/infra/setup_cluster.sh,
through the local transport (the tests run on the cluster's own machine, as root).

Waits are polls with deadlines: Slurm starts a job within a second or two here, but a busy CI
machine may be slower, and nothing should depend on a sleep being long enough."""

from __future__ import annotations

import uuid
from pathlib import Path, PurePosixPath

import anyio
import pytest

from dasscod.cluster.base import Command, CommandResult, JobInfo, JobSpec, SchedulerState
from dasscod.cluster.local import LocalTransport
from dasscod.cluster.slurm import SlurmScheduler
from tests.slurm.conftest import LocalCluster

pytestmark = pytest.mark.e2e

DEADLINE_S = 60.0
TOKEN = "tok-" + uuid.uuid4().hex


class Recording(LocalTransport):
    """The local transport, keeping every argv it ran (to check nothing secret was on one)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.argvs: list[list[str]] = []

    async def execute(self, command: Command) -> CommandResult:
        self.argvs.append(list(command.argv))
        return await super().execute(command)


class Forgetful(LocalTransport):
    """squeue answers as if every job had left slurmctld's memory (MinJobAge is 300 s on the
    test cluster, too long to wait for), so status has to ask sacct."""

    async def execute(self, command: Command) -> CommandResult:
        if command.argv[0] == "squeue":
            return CommandResult(0, "", "")
        return await super().execute(command)


@pytest.fixture
def state_dir(tmp_path: Path) -> PurePosixPath:
    return PurePosixPath(tmp_path / "slurm")


@pytest.fixture
def transport() -> Recording:
    return Recording("test-slurm")


@pytest.fixture
def slurm(slurm_cluster: LocalCluster, transport: Recording,
          state_dir: PurePosixPath) -> SlurmScheduler:
    return SlurmScheduler(transport, state_dir=state_dir, partition=slurm_cluster.partition)


def job(tmp_path: Path, script: str, *, time_limit_s: int = 120) -> JobSpec:
    name = f"dassco.{uuid.uuid4()}.test.1"
    return JobSpec(
        name=name,
        argv=("sh", "-c", script),
        workdir=PurePosixPath(tmp_path / "work" / name),
        env={"DASSCO_TOKEN": TOKEN},
        time_limit_s=time_limit_s,
        memory_mb=64,
    )


async def wait_for(slurm: SlurmScheduler, job_id: str, name: str,
                   states: set[SchedulerState]) -> JobInfo:
    with anyio.fail_after(DEADLINE_S):
        while True:
            info = (await slurm.status({job_id: name}))[job_id]
            if info.state in states:
                return info
            await anyio.sleep(0.2)


async def wait_for_file(path: Path) -> None:
    """Polls: the file is written by a batch job, no event of ours can say when."""
    with anyio.fail_after(DEADLINE_S):
        while not await anyio.Path(path).exists():  # noqa: ASYNC110
            await anyio.sleep(0.1)


async def test_submit_run_complete(slurm: SlurmScheduler, transport: Recording,
                                   state_dir: PurePosixPath, tmp_path: Path) -> None:
    spec = job(tmp_path, 'printf %s "$DASSCO_TOKEN" >token; '
                         "while [ ! -e release ]; do sleep 0.1; done; echo done >result")
    job_id = await slurm.submit(spec)
    running = await wait_for(slurm, job_id, spec.name, {SchedulerState.RUNNING})
    assert running == JobInfo(job_id, spec.name, SchedulerState.RUNNING)
    workdir = Path(str(spec.workdir))
    await wait_for_file(workdir / "token")
    await anyio.Path(workdir / "release").touch()
    done = await wait_for(slurm, job_id, spec.name, {SchedulerState.COMPLETED,
                                                      SchedulerState.FAILED})
    assert (done.state, done.exit_code) == (SchedulerState.COMPLETED, 0)
    assert await anyio.Path(workdir / "result").read_text() == "done\n"
    # The environment reached the job.
    assert await anyio.Path(workdir / "token").read_text() == TOKEN
    assert not any(TOKEN in arg for argv in transport.argvs for arg in argv)
    script = Path(str(state_dir)) / f"{spec.name}.sh"
    assert (await anyio.Path(script).stat()).st_mode & 0o777 == 0o600


async def test_non_zero_exit_is_failed(slurm: SlurmScheduler, tmp_path: Path) -> None:
    spec = job(tmp_path, "echo oops >&2; exit 3")
    job_id = await slurm.submit(spec)
    info = await wait_for(slurm, job_id, spec.name, {s for s in SchedulerState if s.finished})
    assert (info.state, info.exit_code) == (SchedulerState.FAILED, 3)


async def test_cancel_a_running_job(slurm: SlurmScheduler, tmp_path: Path) -> None:
    # A job that would run into its 1-minute limit; waiting for TIMEOUT takes too long, so
    # this cancels it (the TIMEOUT mapping is covered by the recorded outputs).
    spec = job(tmp_path, "touch started; sleep 600", time_limit_s=60)
    job_id = await slurm.submit(spec)
    await wait_for(slurm, job_id, spec.name, {SchedulerState.RUNNING})
    await slurm.cancel(job_id)
    info = await wait_for(slurm, job_id, spec.name, {s for s in SchedulerState if s.finished})
    assert info.state is SchedulerState.CANCELLED
    await slurm.cancel(job_id)  # cancelling an ended job is no error


async def test_lookup_by_name_from_a_fresh_instance(
    slurm_cluster: LocalCluster, slurm: SlurmScheduler, state_dir: PurePosixPath,
    tmp_path: Path,
) -> None:
    running = job(tmp_path, "sleep 600")
    finished = job(tmp_path, "true")
    running_id = await slurm.submit(running)
    finished_id = await slurm.submit(finished)
    await wait_for(slurm, finished_id, finished.name, {SchedulerState.COMPLETED})
    try:
        fresh = SlurmScheduler(LocalTransport("fresh"), state_dir=state_dir,
                               partition=slurm_cluster.partition)
        never = f"dassco.{uuid.uuid4()}.test.1"
        found = await fresh.lookup([running.name, finished.name, never])
        assert set(found) == {running.name, finished.name}
        assert found[running.name].job_id == running_id
        assert found[running.name].state in (SchedulerState.PENDING, SchedulerState.RUNNING)
        assert found[finished.name] == JobInfo(finished_id, finished.name,
                                               SchedulerState.COMPLETED, 0)
    finally:
        await slurm.cancel(running_id)


async def test_finished_job_from_accounting(
    slurm_cluster: LocalCluster, slurm: SlurmScheduler, state_dir: PurePosixPath,
    tmp_path: Path,
) -> None:
    ok, bad = job(tmp_path, "true"), job(tmp_path, "exit 4")
    ids = {await slurm.submit(ok): ok.name, await slurm.submit(bad): bad.name}
    for job_id, name in ids.items():
        await wait_for(slurm, job_id, name, {s for s in SchedulerState if s.finished})
    forgetful = SlurmScheduler(Forgetful("forgetful"), state_dir=state_dir,
                               partition=slurm_cluster.partition)
    # The completion log is written when the job ends; give it the same deadline.
    with anyio.fail_after(DEADLINE_S):
        while True:
            infos = await forgetful.status(ids)
            if all(i.state.finished for i in infos.values()):
                break
            await anyio.sleep(0.2)
    states = {ids[job_id]: (i.state, i.exit_code) for job_id, i in infos.items()}
    assert states == {ok.name: (SchedulerState.COMPLETED, 0),
                      bad.name: (SchedulerState.FAILED, 4)}
    # This cluster has no slurmdbd: auto mode found that out and used the completion log.
    assert forgetful.accounting == "completion"

"""The Torque adapter against the real single-node cluster of tests/infra/setup_cluster.sh,
through Debian's Torque wrappers over Slurm (slurm-wlm-torque: /usr/bin/qsub, qstat, qdel)
and the local transport.

What the wrappers allow: qsub reads the script's #PBS lines (sbatch does), qstat -f shows Q, R
and C, and C for every ended job with no exit_status. How a job ended comes from the exit file
its script writes (the exit status mapping of real Torque's exit_status is covered by the
recorded outputs in test_torque_parse.py); a job that leaves none is UNKNOWN with a reason
saying it ended. The job's own files show that it really ran and how."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import anyio
import pytest

from dasscod.cluster.base import JobInfo, JobSpec, SchedulerState
from dasscod.cluster.local import LocalTransport
from dasscod.cluster.torque import TorqueScheduler
from tests.slurm.conftest import LocalCluster
from tests.slurm.test_slurm_e2e import TOKEN, Recording, wait_for_file

pytestmark = pytest.mark.e2e

DEADLINE_S = 60.0
ENDED = "job ended (Torque state C) but qstat gives no exit_status, so how is unknown"


@pytest.fixture
def state_dir(tmp_path: Path) -> PurePosixPath:
    return PurePosixPath(tmp_path / "torque")


@pytest.fixture
def transport() -> Recording:
    return Recording("test-torque")


@pytest.fixture
def torque(slurm_cluster: LocalCluster, transport: Recording,
           state_dir: PurePosixPath) -> TorqueScheduler:
    if not Path("/usr/bin/qsub").exists():
        pytest.skip("no Torque wrappers: install slurm-wlm-torque")
    return TorqueScheduler(transport, state_dir=state_dir, queue=slurm_cluster.partition)


def job(tmp_path: Path, script: str, *, time_limit_s: int = 120, cpus: int = 1) -> JobSpec:
    name = f"dassco.{uuid.uuid4()}.test.1"
    return JobSpec(
        name=name,
        argv=("sh", "-c", script),
        workdir=PurePosixPath(tmp_path / "work" / name),
        env={"DASSCO_TOKEN": TOKEN},
        time_limit_s=time_limit_s,
        cpus=cpus,
        memory_mb=64,
    )


def ended(info: JobInfo) -> bool:
    return info.state.finished or info.reason == ENDED


async def wait_until(torque: TorqueScheduler, job_id: str, name: str,
                     done: Callable[[JobInfo], bool]) -> JobInfo:
    with anyio.fail_after(DEADLINE_S):
        while True:
            info = (await torque.status({job_id: name}))[job_id]
            if done(info):
                return info
            await anyio.sleep(0.2)


def slurm_job(job_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                          check=True, timeout=30).stdout


async def test_submit_run_end(torque: TorqueScheduler, transport: Recording,
                              state_dir: PurePosixPath, tmp_path: Path) -> None:
    spec = job(tmp_path, 'printf %s "$DASSCO_TOKEN" >token; echo to-out; echo to-err >&2; '
                         "while [ ! -e release ]; do sleep 0.1; done; echo done >result",
               time_limit_s=150, cpus=2)
    job_id = await torque.submit(spec)
    assert job_id.isdigit()  # the wrapper's qsub prints the bare Slurm id
    running = await wait_until(torque, job_id, spec.name,
                               lambda i: i.state is SchedulerState.RUNNING)
    assert running == JobInfo(job_id, spec.name, SchedulerState.RUNNING)
    # The #PBS lines reached Slurm: walltime rounded up to 3 minutes, 2 CPUs, 64 MB.
    shown = slurm_job(job_id)
    assert "TimeLimit=00:03:00" in shown and "NumCPUs=2" in shown and "mem=64M" in shown
    workdir = Path(str(spec.workdir))
    await wait_for_file(workdir / "token")
    await anyio.Path(workdir / "release").touch()
    done = await wait_until(torque, job_id, spec.name, ended)
    assert done == JobInfo(job_id, spec.name, SchedulerState.COMPLETED, 0)
    assert await anyio.Path(workdir / "result").read_text() == "done\n"
    assert await anyio.Path(workdir / "token").read_text() == TOKEN
    assert not any(TOKEN in arg for argv in transport.argvs for arg in argv)
    folder = Path(str(state_dir))
    assert (await anyio.Path(folder / f"{spec.name}.sh").stat()).st_mode & 0o777 == 0o600
    # -o/-e reached sbatch (the wrapper's defaults would have put them in the cwd).
    assert await anyio.Path(folder / f"{spec.name}.out").read_text() == "to-out\n"
    assert await anyio.Path(folder / f"{spec.name}.err").read_text() == "to-err\n"


async def test_non_zero_exit_comes_from_the_exit_file(
    torque: TorqueScheduler, state_dir: PurePosixPath, tmp_path: Path
) -> None:
    spec = job(tmp_path, "echo oops >&2; exit 3")
    job_id = await torque.submit(spec)
    info = await wait_until(torque, job_id, spec.name, ended)
    assert (info.state, info.exit_code, info.reason) == (SchedulerState.FAILED, 3, None)
    # Slurm agrees (this is what the wrapper's qstat leaves out).
    assert "ExitCode=3:0" in slurm_job(job_id)
    err = Path(str(state_dir)) / f"{spec.name}.err"
    assert await anyio.Path(err).read_text() == "oops\n"


async def test_qdel_a_running_job(torque: TorqueScheduler, tmp_path: Path) -> None:
    spec = job(tmp_path, "sleep 600")
    job_id = await torque.submit(spec)
    await wait_until(torque, job_id, spec.name, lambda i: i.state is SchedulerState.RUNNING)
    await torque.cancel(job_id)
    info = await wait_until(torque, job_id, spec.name, ended)
    assert (info.state, info.exit_code) == (SchedulerState.FAILED, 143)
    assert "stopped by SIGTERM" in (info.reason or "") and "before its walltime" in (
        info.reason or "")
    assert "JobState=CANCELLED" in slurm_job(job_id)
    await torque.cancel(job_id)  # deleting an ended job is no error
    await torque.cancel("99999999")  # nor an unknown one


async def test_unknown_job_id(torque: TorqueScheduler) -> None:
    got = await torque.status({"99999999": "dassco.never.test.1"})
    assert got["99999999"].state is SchedulerState.UNKNOWN
    assert "no longer knows" in (got["99999999"].reason or "")


async def test_lookup_by_name_from_a_fresh_instance(
    slurm_cluster: LocalCluster, torque: TorqueScheduler, state_dir: PurePosixPath,
    tmp_path: Path,
) -> None:
    running = job(tmp_path, "sleep 600")
    finished = job(tmp_path, "true")
    running_id = await torque.submit(running)
    finished_id = await torque.submit(finished)
    await wait_until(torque, finished_id, finished.name, ended)
    try:
        fresh = TorqueScheduler(LocalTransport("fresh"), state_dir=state_dir,
                                queue=slurm_cluster.partition)
        never = f"dassco.{uuid.uuid4()}.test.1"
        found = await fresh.lookup([running.name, finished.name, never])
        assert set(found) == {running.name, finished.name}
        assert found[running.name].job_id == running_id
        assert found[running.name].state in (SchedulerState.PENDING, SchedulerState.RUNNING)
        assert found[finished.name] == JobInfo(finished_id, finished.name,
                                               SchedulerState.COMPLETED, 0)
    finally:
        await torque.cancel(running_id)


async def test_a_job_killed_outright_leaves_no_exit_file(
    slurm_cluster: LocalCluster, state_dir: PurePosixPath, tmp_path: Path
) -> None:
    # The script's own shell killed with SIGKILL (the scheduler's last resort): nothing is
    # written, and after the wait for the file the job is UNKNOWN with the reason rather than
    # guessed at.
    torque = TorqueScheduler(Recording("test-torque"), state_dir=state_dir,
                             queue=slurm_cluster.partition, exit_file_wait_s=2)
    spec = job(tmp_path, "kill -KILL $PPID; sleep 5")
    job_id = await torque.submit(spec)
    info = await wait_until(torque, job_id, spec.name, ended)
    assert (info.state, info.exit_code, info.reason) == (SchedulerState.UNKNOWN, None, ENDED)
    assert not await anyio.Path(Path(str(state_dir)) / f"{spec.name}.exit").exists()


async def test_over_its_walltime_is_a_timeout(
    torque: TorqueScheduler, state_dir: PurePosixPath, tmp_path: Path
) -> None:
    """SLOW (60-90 s): the smallest walltime is one minute (Slurm under the wrappers), and
    slurmctld enforces limits every 30 s."""
    spec = job(tmp_path, "sleep 600", time_limit_s=60)
    job_id = await torque.submit(spec)
    with anyio.fail_after(150):
        while not (info := (await torque.status({job_id: spec.name}))[job_id]).state.finished:
            assert info.state is not SchedulerState.UNKNOWN, info
            await anyio.sleep(1)
    assert (info.state, info.exit_code) == (SchedulerState.TIMEOUT, 143)
    assert "at its walltime of 60 s" in (info.reason or "")
    assert "JobState=TIMEOUT" in slurm_job(job_id)


async def test_ours_lists_the_live_jobs_this_adapter_submitted(
    torque: TorqueScheduler, tmp_path: Path, slurm_cluster: LocalCluster
) -> None:
    # The watcher's orphan sweep: a job named like ours but submitted from elsewhere (another
    # daemon, a person) has no script in our state folder and is not listed.
    spec = job(tmp_path, "sleep 60")
    job_id = await torque.submit(spec)
    lookalike = (await anyio.run_process(
        ["sbatch", "--parsable", f"--partition={slurm_cluster.partition}",
         f"--job-name=dassco.{uuid.uuid4()}.test.1", "--output=/dev/null", "--wrap=sleep 60"],
    )).stdout.decode().strip()
    try:
        listed = await torque.ours()
        assert [(i.job_id, i.name) for i in listed] == [(job_id, spec.name)]
        assert listed[0].state in (SchedulerState.PENDING, SchedulerState.RUNNING)
        await torque.cancel(job_id)
        await wait_until(torque, job_id, spec.name, lambda i: i.reason is not None
                         or i.state.finished)
        assert await torque.ours() == []
    finally:
        await anyio.run_process(["scancel", job_id, lookalike], check=False)

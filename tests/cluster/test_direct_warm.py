"""The direct scheduler's warm launcher: `python -m MODULE` jobs forked from a Python that has
imported MODULE already, with the shell wrapper's semantics (real processes, no mocks)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path, PurePosixPath

import anyio
import psutil
import pytest

from dasscod.cluster.base import JobInfo, JobSpec, SchedulerState
from dasscod.cluster.direct import DirectScheduler
from dasscod.cluster.direct.warm import WARM_NAME
from dasscod.cluster.local import LocalTransport
from tests.cluster.test_direct_scheduler import NAME, wait_finished, wait_for_output

#: The job module. Run as `python -m warmjob MODE`; `decimal` tells a warm start from a cold
#: one: only the launcher imports it beforehand.
JOB = """
import os, signal, sys, time

if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "show":
        print(f"warm={'decimal' in sys.modules} cwd={os.getcwd()} argv={sys.argv[1:]}")
        print(f"FOO={os.environ.get('FOO')} pid={os.getpid()} pgid={os.getpgid(0)}")
        print("to stderr", file=sys.stderr)
    elif mode == "exit":
        sys.exit(int(sys.argv[2]))
    elif mode == "sleep":
        if sys.argv[2:] == ["report"]:
            def stop(*_):
                print("got TERM", flush=True)
                sys.exit(0)
            signal.signal(signal.SIGTERM, stop)
        print("started", flush=True)
        time.sleep(float(os.environ.get("SLEEP_S", "30")))
        print("done", flush=True)
"""


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "warmjob.py").write_text(JOB)
    return folder


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def transport() -> AsyncIterator[LocalTransport]:
    local = LocalTransport("direct-warm-test")
    yield local
    await local.close()


@pytest.fixture
def scheduler(transport: LocalTransport, state_dir: Path) -> DirectScheduler:
    return _scheduler(transport, state_dir)


def _scheduler(
    transport: LocalTransport, state_dir: Path, imports: tuple[str, ...] = ("warmjob", "decimal")
) -> DirectScheduler:
    return DirectScheduler(
        transport, state_dir=PurePosixPath(state_dir), warm={"warmjob": imports}
    )


def _spec(tmp_path: Path, modules: Path, *args: str, name: str = NAME, **env: str) -> JobSpec:
    return JobSpec(
        name,
        (sys.executable, "-m", "warmjob", *args),
        PurePosixPath(tmp_path / "work" / name),
        env={"PYTHONPATH": str(modules), **env},
        time_limit_s=60,
    )


def _ended(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _launcher_pid(scheduler: DirectScheduler) -> int:
    assert scheduler.warm is not None
    pid = scheduler.warm.pid
    assert pid is not None, "no warm launcher running"
    return pid


async def test_a_warm_job_runs_detached_with_its_env_workdir_and_output(
    scheduler: DirectScheduler, state_dir: Path, tmp_path: Path, modules: Path
) -> None:
    spec = _spec(tmp_path, modules, "show", FOO="bar", DASSCO_TOKEN="s3cret-token")
    job_id = await scheduler.submit(spec)
    info = await wait_finished(scheduler, job_id)
    assert info == JobInfo(job_id, NAME, SchedulerState.COMPLETED, 0)
    folder = state_dir / NAME
    out = (folder / "stdout").read_text().splitlines()
    assert out[0] == f"warm=True cwd={spec.workdir} argv=['show']"
    assert out[1].startswith("FOO=bar pid=")
    pid, pgid = (int(part.split("=")[1]) for part in out[1].split()[1:])
    assert pid == pgid != int(job_id)  # the job leads its own group, as under `timeout`
    assert (folder / "stderr").read_text() == "to stderr\n"
    assert "started from the warm launcher" in (folder / "wrapper.log").read_text()
    assert (folder / "pid").read_text().strip() == job_id
    launcher = psutil.Process(_launcher_pid(scheduler))
    assert launcher.cmdline()[3] == WARM_NAME
    assert all(not k.startswith("DASSCO_") for k in launcher.environ())  # no job's token
    assert int(job_id) not in {p.pid for p in launcher.children(recursive=True)}


async def test_a_warm_jobs_exit_status_is_reported(
    scheduler: DirectScheduler, tmp_path: Path, modules: Path
) -> None:
    job_id = await scheduler.submit(_spec(tmp_path, modules, "exit", "3"))
    info = await wait_finished(scheduler, job_id)
    assert (info.state, info.exit_code) == (SchedulerState.FAILED, 3)


async def test_a_warm_job_over_its_time_limit_is_a_timeout(
    scheduler: DirectScheduler, tmp_path: Path, modules: Path
) -> None:
    job_id = await scheduler.submit(replace(_spec(tmp_path, modules, "sleep"), time_limit_s=1))
    info = await wait_finished(scheduler, job_id)
    assert (info.state, info.exit_code) == (SchedulerState.TIMEOUT, 124)


async def test_cancel_lets_a_warm_job_report_and_ends_it_cancelled(
    scheduler: DirectScheduler, state_dir: Path, tmp_path: Path, modules: Path
) -> None:
    job_id = await scheduler.submit(_spec(tmp_path, modules, "sleep", "report"))
    await wait_for_output(state_dir / NAME / "stdout", "started\n")
    started = time.monotonic()
    await scheduler.cancel(job_id)
    info = await wait_finished(scheduler, job_id)
    assert (info.state, info.exit_code) == (SchedulerState.CANCELLED, 0)  # the job's own
    assert (state_dir / NAME / "stdout").read_text() == "started\ngot TERM\n"
    assert time.monotonic() - started < 5


async def test_a_warm_job_outlives_its_launcher_and_a_restarted_daemon_finds_it(
    transport: LocalTransport,
    scheduler: DirectScheduler,
    state_dir: Path,
    tmp_path: Path,
    modules: Path,
) -> None:
    job_id = await scheduler.submit(_spec(tmp_path, modules, "sleep", SLEEP_S="0.5"))
    assert os.getsid(int(job_id)) == int(job_id) != os.getsid(0)
    os.kill(_launcher_pid(scheduler), signal.SIGKILL)  # as when the daemon is SIGKILLed
    restarted = _scheduler(transport, state_dir)
    assert (await restarted.lookup([NAME]))[NAME].state is SchedulerState.RUNNING
    assert (await wait_finished(restarted, job_id)).state is SchedulerState.COMPLETED
    assert (state_dir / NAME / "stdout").read_text() == "started\ndone\n"
    # The scheduler whose launcher died starts the next job all the same.
    other = "dassco.asset-2.derive.1"
    next_id = await scheduler.submit(_spec(tmp_path, modules, "show", name=other))
    assert (await wait_finished(scheduler, next_id, other)).state is SchedulerState.COMPLETED


async def test_without_a_usable_launcher_jobs_take_the_shell_wrapper(
    transport: LocalTransport, state_dir: Path, tmp_path: Path, modules: Path
) -> None:
    scheduler = _scheduler(transport, state_dir, imports=("warmjob", "no_such_module_here"))
    job_id = await scheduler.submit(_spec(tmp_path, modules, "show"))
    assert (await wait_finished(scheduler, job_id)).state is SchedulerState.COMPLETED
    assert (state_dir / NAME / "stdout").read_text().startswith("warm=False ")
    assert "warm launcher" not in (state_dir / NAME / "wrapper.log").read_text()
    log = (state_dir / ".warm-launcher.log").read_text()
    assert log == ""  # the launcher said what failed in its answer, and exited cleanly
    assert scheduler.warm is not None and scheduler.warm.pid is None


async def test_closing_the_transport_stops_the_launcher(
    scheduler: DirectScheduler, transport: LocalTransport, tmp_path: Path, modules: Path
) -> None:
    job_id = await scheduler.submit(_spec(tmp_path, modules, "show"))
    await wait_finished(scheduler, job_id)
    launcher = psutil.Process(_launcher_pid(scheduler))
    await transport.close()
    with anyio.fail_after(5):
        while True:
            if _ended(launcher):
                return
            await anyio.sleep(0.01)


@pytest.mark.parametrize("argv", [("sh", "-c", "echo cold"), (sys.executable, "-m", "json.tool")])
async def test_other_commands_are_not_started_warm(
    scheduler: DirectScheduler, state_dir: Path, tmp_path: Path, argv: tuple[str, ...]
) -> None:
    spec = JobSpec(NAME, argv, PurePosixPath(tmp_path / "work"), time_limit_s=60)
    job_id = await scheduler.submit(spec)
    await wait_finished(scheduler, job_id)
    assert "warm launcher" not in (state_dir / NAME / "wrapper.log").read_text()
    assert scheduler.warm is not None and scheduler.warm.pid is None


async def test_a_warm_job_survives_the_daemon_being_killed_and_the_launcher_goes_too(
    state_dir: Path, tmp_path: Path, modules: Path
) -> None:
    """A separate daemon process submits a warm job and is SIGKILLed at once: the job runs on,
    the launcher sees its input end and exits, a new scheduler finds the job finished."""
    daemon = f"""
import os, signal, sys
from pathlib import PurePosixPath
import anyio
from dasscod.cluster.base import JobSpec
from dasscod.cluster.direct import DirectScheduler
from dasscod.cluster.local import LocalTransport

async def main() -> None:
    scheduler = DirectScheduler(LocalTransport("x"), state_dir=PurePosixPath(sys.argv[1]),
                                warm={{"warmjob": ("warmjob",)}})
    spec = JobSpec({NAME!r}, (sys.executable, "-m", "warmjob", "sleep"),
                   PurePosixPath(sys.argv[2]), env={{"PYTHONPATH": sys.argv[3], "SLEEP_S": "0.5"}})
    print(await scheduler.submit(spec), scheduler.warm.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

anyio.run(main)
"""
    argv = [sys.executable, "-c", daemon, str(state_dir), str(tmp_path / "work"), str(modules)]
    result = await anyio.run_process(argv, check=False)
    assert result.returncode == -signal.SIGKILL
    job_id, launcher_pid = result.stdout.decode().split()
    assert os.getsid(int(job_id)) == int(job_id) != os.getsid(0)
    info = await wait_finished(_scheduler(LocalTransport("restarted"), state_dir), job_id)
    assert info.state is SchedulerState.COMPLETED
    assert (state_dir / NAME / "stdout").read_text() == "started\ndone\n"
    assert "started from the warm launcher" in (state_dir / NAME / "wrapper.log").read_text()
    with anyio.fail_after(5):
        while True:
            try:
                if _ended(psutil.Process(int(launcher_pid))):
                    break
            except psutil.NoSuchProcess:
                break
            await anyio.sleep(0.01)

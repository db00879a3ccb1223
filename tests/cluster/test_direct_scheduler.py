"""DirectScheduler against real detached processes (no mocks)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
import psutil
import pytest

from dasscod.cluster.base import JobInfo, JobSpec, SchedulerError, SchedulerState
from dasscod.cluster.direct import DirectScheduler
from dasscod.cluster.direct.folder import KILL_AFTER_S, VANISHED
from dasscod.cluster.direct.scheduler import WRAPPER, WRAPPER_NAME
from dasscod.cluster.local import LocalTransport

NAME = "dassco.asset-1.derive.1"

#: A job that reports a SIGTERM (as a pipeline job would, to call back) and then exits 0.
REPORTS_TERM = """
import signal, sys, time

def stop(*_):
    # `timeout` sends SIGTERM to the job and again to its process group: a job that reports
    # once ignores the second, or it may die of it on its way out (as dassco-hpc's runner does).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("got TERM", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
print("started", flush=True)
time.sleep(30)
"""


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def scheduler(state_dir: Path) -> DirectScheduler:
    return _scheduler(state_dir)


def _scheduler(state_dir: Path) -> DirectScheduler:
    return DirectScheduler(LocalTransport("direct-test"), state_dir=PurePosixPath(state_dir))


def _spec(tmp_path: Path, *argv: str, **changes: Any) -> JobSpec:
    spec = JobSpec(NAME, argv, PurePosixPath(tmp_path / "work" / NAME), time_limit_s=60)
    return replace(spec, **changes)


async def wait_finished(scheduler: DirectScheduler, job_id: str, name: str = NAME) -> JobInfo:
    """Poll status until the job has finished, with a deadline."""
    with anyio.fail_after(10):
        while True:
            info = (await scheduler.status({job_id: name}))[job_id]
            if info.state.finished:
                return info
            await anyio.sleep(0.02)


async def _job_process(wrapper_pid: int) -> psutil.Process:
    """The wrapper's `timeout` child, leader of the job's process group, once it has
    started the job (and so made its process group)."""
    with anyio.fail_after(5):
        while True:
            for child in psutil.Process(wrapper_pid).children():
                with contextlib.suppress(psutil.NoSuchProcess):  # a helper that just ended
                    if child.name() == "timeout" and child.children():
                        return child
            await anyio.sleep(0.01)


async def test_completed_job_gets_env_workdir_and_its_output_captured(
    scheduler: DirectScheduler, state_dir: Path, tmp_path: Path
) -> None:
    spec = _spec(
        tmp_path, "sh", "-c", 'echo "hi $FOO"; pwd; echo oops >&2',
        env={"FOO": "bar", "DASSCO_TOKEN": "s3cret-token"},
    )  # fmt: skip
    job_id = await scheduler.submit(spec)
    info = await wait_finished(scheduler, job_id)
    assert info == JobInfo(job_id, NAME, SchedulerState.COMPLETED, 0)
    folder = state_dir / NAME
    assert (folder / "stdout").read_text() == f"hi bar\n{spec.workdir}\n"
    assert (folder / "stderr").read_text() == "oops\n"
    assert (folder / "pid").read_text().strip() == job_id
    record = json.loads((folder / "spec.json").read_text())
    assert record["env_names"] == ["DASSCO_TOKEN", "FOO"]
    assert record["argv"] == list(spec.argv)
    assert record["time_limit_s"] == 60
    assert "s3cret-token" not in (folder / "spec.json").read_text()


async def test_failed_job_reports_its_exit_code(
    scheduler: DirectScheduler, state_dir: Path, tmp_path: Path
) -> None:
    job_id = await scheduler.submit(_spec(tmp_path, "sh", "-c", "echo hi; exit 3"))
    info = await wait_finished(scheduler, job_id)
    assert (info.state, info.exit_code) == (SchedulerState.FAILED, 3)
    assert str(state_dir / NAME) in (info.reason or "")
    assert (state_dir / NAME / "stdout").read_text() == "hi\n"


async def test_missing_program_fails_as_command_not_found(
    scheduler: DirectScheduler, tmp_path: Path
) -> None:
    job_id = await scheduler.submit(_spec(tmp_path, "dassco-no-such-program"))
    info = await wait_finished(scheduler, job_id)
    assert (info.state, info.exit_code) == (SchedulerState.FAILED, 127)
    assert "command not found" in (info.reason or "")


async def test_submitting_a_name_again_returns_the_same_job_and_runs_it_once(
    scheduler: DirectScheduler, tmp_path: Path
) -> None:
    counter = tmp_path / "runs"
    spec = _spec(tmp_path, "sh", "-c", 'echo run >> "$1"; sleep 0.3', "sh", str(counter))
    ids: list[str] = []

    async def submit() -> None:
        ids.append(await scheduler.submit(spec))

    async with anyio.create_task_group() as tg:  # concurrently, as after a lost answer
        tg.start_soon(submit)
        tg.start_soon(submit)
    ids.append(await _scheduler(Path(str(scheduler.state_dir))).submit(spec))  # after restart
    assert len(set(ids)) == 1
    await wait_finished(scheduler, ids[0])
    ids.append(await scheduler.submit(spec))  # and after it finished
    assert len(set(ids)) == 1
    assert counter.read_text() == "run\n"


async def test_a_restarted_daemon_finds_the_job_by_name(
    scheduler: DirectScheduler, state_dir: Path, tmp_path: Path
) -> None:
    job_id = await scheduler.submit(_spec(tmp_path, "sleep", "0.5"))
    restarted = _scheduler(state_dir)
    found = await restarted.lookup([NAME, "dassco.asset-1.other.1", "../escape"])
    assert list(found) == [NAME]
    assert found[NAME].job_id == job_id
    assert found[NAME].state is SchedulerState.RUNNING
    assert (await wait_finished(restarted, job_id)).state is SchedulerState.COMPLETED
    assert (await restarted.lookup([NAME]))[NAME].state is SchedulerState.COMPLETED


async def test_cancel_lets_the_job_report_and_ends_it_cancelled(
    scheduler: DirectScheduler, state_dir: Path, tmp_path: Path
) -> None:
    job_id = await scheduler.submit(_spec(tmp_path, sys.executable, "-c", REPORTS_TERM))
    await wait_for_output(state_dir / NAME / "stdout", "started\n")
    started = time.monotonic()
    await scheduler.cancel(job_id)
    info = await wait_finished(scheduler, job_id)
    assert (info.state, info.exit_code) == (SchedulerState.CANCELLED, 0)
    assert time.monotonic() - started < 5
    assert (state_dir / NAME / "stdout").read_text() == "started\ngot TERM\n"
    await scheduler.cancel(job_id)  # gone already: no error
    assert (await scheduler.status({job_id: NAME}))[job_id].state is SchedulerState.CANCELLED


async def test_a_job_cancelled_before_its_wrapper_starts_never_runs(
    scheduler: DirectScheduler, state_dir: Path, tmp_path: Path
) -> None:
    folder = state_dir / NAME
    folder.mkdir(parents=True)
    (folder / "cancelled").touch()
    marker = tmp_path / "ran"
    await LocalTransport("t").run([
        "sh", "-c", WRAPPER, WRAPPER_NAME, str(folder), "5", str(KILL_AFTER_S),
        str(tmp_path / "w"),
        "sh", "-c", 'touch "$1"', "sh", str(marker),
    ])  # fmt: skip
    assert not marker.exists()
    assert (await scheduler.lookup([NAME]))[NAME].state is SchedulerState.CANCELLED


async def test_a_workdir_that_cannot_be_made_fails_the_job(
    scheduler: DirectScheduler, state_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "file").touch()
    workdir = PurePosixPath(tmp_path / "file" / "work")
    job_id = await scheduler.submit(_spec(tmp_path, "true", workdir=workdir))
    info = await wait_finished(scheduler, job_id)
    assert (info.state, info.exit_code) == (SchedulerState.FAILED, 125)
    assert "could not be started" in (info.reason or "")
    assert str(workdir) in (state_dir / NAME / "stderr").read_text()


async def test_cancel_of_unknown_jobs_is_no_error(scheduler: DirectScheduler) -> None:
    await scheduler.cancel("999999")
    await scheduler.cancel(str(os.getpid()))  # alive, but not one of our wrappers: untouched
    await scheduler.cancel("")


async def test_time_limit_exceeded_is_a_timeout(
    scheduler: DirectScheduler, tmp_path: Path
) -> None:
    job_id = await scheduler.submit(_spec(tmp_path, "sleep", "30", time_limit_s=1))
    info = await wait_finished(scheduler, job_id)
    assert (info.state, info.exit_code) == (SchedulerState.TIMEOUT, 124)


async def test_job_killed_behind_the_schedulers_back_fails_with_the_signal(
    scheduler: DirectScheduler, tmp_path: Path
) -> None:
    job_id = await scheduler.submit(_spec(tmp_path, "sleep", "30"))
    os.killpg((await _job_process(int(job_id))).pid, signal.SIGKILL)
    info = await wait_finished(scheduler, job_id)
    assert (info.state, info.exit_code) == (SchedulerState.FAILED, 137)
    assert "SIGKILL" in (info.reason or "")


async def test_wrapper_killed_without_an_exit_status_is_reported_vanished(
    scheduler: DirectScheduler, tmp_path: Path
) -> None:
    job_id = await scheduler.submit(_spec(tmp_path, "sleep", "30"))
    job = await _job_process(int(job_id))
    os.kill(int(job_id), signal.SIGKILL)
    try:
        info = await wait_finished(scheduler, job_id)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
    assert info == JobInfo(job_id, NAME, SchedulerState.FAILED, reason=VANISHED)


async def test_a_reused_pid_is_not_mistaken_for_the_job(
    scheduler: DirectScheduler, state_dir: Path
) -> None:
    folder = state_dir / NAME
    folder.mkdir(parents=True)
    (folder / "pid").write_text(f"{os.getpid()}\n")  # a live process, but not started then
    (folder / "started").write_text(f"{int(time.time()) - 3600}\n")
    assert (await scheduler.lookup([NAME]))[NAME].reason == VANISHED
    (folder / "started").write_text(f"{int(psutil.Process().create_time())}\n")
    assert (await scheduler.lookup([NAME]))[NAME].state is SchedulerState.RUNNING


async def test_status_of_jobs_it_does_not_know_is_unknown(
    scheduler: DirectScheduler, tmp_path: Path
) -> None:
    job_id = await scheduler.submit(_spec(tmp_path, "true"))
    infos = await scheduler.status({"999999": "dassco.nowhere.job.1", "888888": NAME})
    assert infos["999999"].state is SchedulerState.UNKNOWN
    assert infos["888888"].state is SchedulerState.UNKNOWN  # the name is another job's
    assert (await wait_finished(scheduler, job_id)).state is SchedulerState.COMPLETED


async def test_detached_job_survives_the_daemon_being_killed(
    state_dir: Path, tmp_path: Path
) -> None:
    """A separate daemon process submits a job and is SIGKILLed at once; the job runs on
    (it lives in a session of its own) and a new scheduler finds it finished."""
    daemon = f"""
import os, signal, sys
from pathlib import PurePosixPath
import anyio
from dasscod.cluster.base import JobSpec
from dasscod.cluster.direct import DirectScheduler
from dasscod.cluster.local import LocalTransport

async def main() -> None:
    scheduler = DirectScheduler(LocalTransport("x"), state_dir=PurePosixPath(sys.argv[1]))
    spec = JobSpec({NAME!r}, ("sh", "-c", "sleep 0.5; echo done"), PurePosixPath(sys.argv[2]))
    print(await scheduler.submit(spec), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

anyio.run(main)
"""
    argv = [sys.executable, "-c", daemon, str(state_dir), str(tmp_path / "work")]
    result = await anyio.run_process(argv, check=False)
    assert result.returncode == -signal.SIGKILL
    job_id = result.stdout.decode().strip()
    assert os.getsid(int(job_id)) == int(job_id) != os.getsid(0)
    info = await wait_finished(_scheduler(state_dir), job_id)
    assert info.state is SchedulerState.COMPLETED
    assert (state_dir / NAME / "stdout").read_text() == "done\n"


async def test_folder_of_a_crashed_submission_is_abandoned_and_never_runs_late(
    scheduler: DirectScheduler, state_dir: Path, tmp_path: Path
) -> None:
    """The daemon died after creating the folder, before the wrapper recorded its pid."""
    folder = state_dir / NAME
    folder.mkdir(parents=True)
    found = (await scheduler.lookup([NAME]))[NAME]
    assert (found.state, found.job_id) == (SchedulerState.FAILED, "")
    assert "never started" in (found.reason or "")
    # A wrapper that turns up late (launched just before the crash) must not run the job.
    marker = tmp_path / "ran"
    late = await LocalTransport("t").run([
        "sh", "-c", WRAPPER, WRAPPER_NAME, str(folder), "5", str(KILL_AFTER_S),
        str(tmp_path / "w"),
        "sh", "-c", 'touch "$1"', "sh", str(marker),
    ])  # fmt: skip
    assert "could not claim" in late.stdout
    assert not marker.exists()
    assert not (folder / "exit").exists()
    with pytest.raises(SchedulerError) as err:
        await scheduler.submit(_spec(tmp_path, "true"))
    assert not err.value.retryable
    assert str(folder) in str(err.value)


async def test_resubmitting_an_unclaimed_folder_fails_for_good(
    scheduler: DirectScheduler, state_dir: Path, tmp_path: Path
) -> None:
    (state_dir / NAME).mkdir(parents=True)
    with pytest.raises(SchedulerError) as err:
        await scheduler.submit(_spec(tmp_path, "true"))
    assert not err.value.retryable
    assert (state_dir / NAME / "pid").read_text().strip() == "abandoned"


async def test_a_wrapper_that_cannot_start_fails_the_submission_retryably(
    scheduler: DirectScheduler, state_dir: Path, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"  # `sh` but no `setsid` on the PATH
    bin_dir.mkdir()
    (bin_dir / "sh").symlink_to("/bin/sh")
    started = time.monotonic()
    with pytest.raises(SchedulerError) as err:
        await scheduler.submit(_spec(tmp_path, "true", env={"PATH": str(bin_dir)}))
    assert err.value.retryable
    assert "setsid" in str(err.value)
    assert time.monotonic() - started < 5  # noticed the wrapper's death, did not sit it out
    assert (await scheduler.lookup([NAME]))[NAME].state is SchedulerState.FAILED


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"name": "../escape"}, "state folder"), ({"time_limit_s": 0}, "at least 1 s")],
)
async def test_invalid_specs_are_refused(
    scheduler: DirectScheduler, tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(SchedulerError) as err:
        await scheduler.submit(_spec(tmp_path, "true", **changes))
    assert not err.value.retryable
    assert message in str(err.value)


async def wait_for_output(path: Path, text: str) -> None:
    """Until `path` holds `text` (a job's output), for at most 5 s."""
    with anyio.fail_after(5):
        while True:
            if _holds(path, text):
                return
            await anyio.sleep(0.01)


def _holds(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()

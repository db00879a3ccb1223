"""The Slurm adapter's command logic over a scripted transport that replays recorded outputs:
which commands it runs, how it falls back, what reaches a command line. No cluster needed."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from dasscod.cluster.base import (
    Command,
    CommandResult,
    JobSpec,
    SchedulerError,
    SchedulerState,
    Transport,
)
from dasscod.cluster.slurm import SlurmScheduler

RECORDED = Path(__file__).parent / "recorded"
TOKEN = "tok-3f9a'secret"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


class Scripted(Transport):
    """Answers each command by its program name from a queue of results; records the calls."""

    name = "scripted"

    def __init__(self, answers: dict[str, list[CommandResult]]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], str | None]] = []

    async def execute(self, command: Command) -> CommandResult:
        argv = command.argv
        self.calls.append((list(argv), command.stdin))
        program = argv[0] if argv[0] != "sh" else "sbatch"
        return self.answers[program].pop(0)


def spec(name: str = "dassco.g-1.barcode.1") -> JobSpec:
    return JobSpec(
        name=name,
        argv=("python3", "-m", "barcode", "--asset", "g-1"),
        workdir=PurePosixPath("/work/assets/g-1"),
        env={"DASSCO_TOKEN": TOKEN, "DASSCO_JOB": "barcode"},
        time_limit_s=90,
        cpus=2,
        memory_mb=512,
    )


def scheduler(transport: Scripted, **kw: object) -> SlurmScheduler:
    return SlurmScheduler(transport, state_dir=PurePosixPath("/state"), partition="short",
                          **kw)  # type: ignore[arg-type]


async def test_submit_sends_the_script_on_stdin_and_keeps_the_token_off_the_command_line():
    t = Scripted({"sbatch": [CommandResult(0, recorded("sbatch_ok.stdout"), "")]})
    assert await scheduler(t).submit(spec()) == "14"
    [(argv, stdin)] = t.calls
    assert not any(TOKEN in a or "DASSCO_TOKEN" in a for a in argv)
    assert argv[-2:] == ["/state", "dassco.g-1.barcode.1"]
    assert stdin is not None
    assert "export DASSCO_TOKEN='tok-3f9a'\"'\"'secret'" in stdin
    for directive in ("--job-name=dassco.g-1.barcode.1", "--comment=dasscod",
                      "--partition=short", "--time=2", "--cpus-per-task=2", "--mem=512M",
                      "--output=/state/dassco.g-1.barcode.1.out"):
        assert f"#SBATCH {directive}\n" in stdin
    assert stdin.rstrip().endswith("exec python3 -m barcode --asset g-1")


async def test_submit_refusals() -> None:
    t = Scripted({"sbatch": [
        CommandResult(1, "", recorded("sbatch_invalid_partition.stderr")),
        CommandResult(1, "", "sbatch: error: Batch job submission failed: Socket timed out"),
    ]})  # fmt: skip
    s = scheduler(t)
    with pytest.raises(SchedulerError) as permanent:
        await s.submit(spec())
    assert not permanent.value.retryable
    with pytest.raises(SchedulerError) as transient:
        await s.submit(spec())
    assert transient.value.retryable
    for bad in ("../etc", "a,b", "-x", "dassco.g 1.j.1", ""):
        with pytest.raises(SchedulerError) as unsafe:
            await s.submit(spec(bad))
        assert not unsafe.value.retryable
    assert len(t.calls) == 2  # unsafe names never reached a command


async def test_status_of_a_job_that_left_the_queue_falls_back_to_the_completion_log() -> None:
    t = Scripted({
        "squeue": [CommandResult(1, "", recorded("squeue_invalid_job_id.stderr")),
                   CommandResult(1, "", recorded("squeue_invalid_job_id.stderr"))],
        "sacct": [CommandResult(1, "", recorded("sacct_disabled.stderr")),
                  CommandResult(0, recorded("sacct_completion.stdout"), ""),
                  CommandResult(0, recorded("sacct_completion.stdout"), "")],
    })  # fmt: skip
    s = scheduler(t)
    got = await s.status({"9": "dassco.rec.fail.1"})
    assert (got["9"].state, got["9"].exit_code) == (SchedulerState.FAILED, 3)
    assert s.accounting == "completion"
    # From now on one sacct call, with --completion.
    got = await s.status({"9": "dassco.rec.fail.1"})
    assert got["9"].state is SchedulerState.FAILED
    sacct_calls = [argv for argv, _ in t.calls if argv[0] == "sacct"]
    assert ["--completion" in argv for argv in sacct_calls] == [False, True, True]


async def test_status_one_squeue_call_and_sacct_only_for_the_missing() -> None:
    t = Scripted({
        "squeue": [CommandResult(0, recorded("squeue_one_gone.stdout"), "")],
        "sacct": [CommandResult(0, "", "")],
    })  # fmt: skip
    got = await scheduler(t, accounting="sacct").status(
        {"8": "dassco.rec.ok.1", "99999": "dassco.x.y.1", "not-an-id": "dassco.x.y.2"}
    )
    assert got["8"].state is SchedulerState.COMPLETED
    assert got["99999"].state is SchedulerState.UNKNOWN
    assert got["not-an-id"].state is SchedulerState.UNKNOWN
    [squeue] = [argv for argv, _ in t.calls if argv[0] == "squeue"]
    [sacct] = [argv for argv, _ in t.calls if argv[0] == "sacct"]
    assert "--jobs=8,99999" in squeue
    assert "--jobs=99999" in sacct


async def test_status_of_a_reused_job_id_is_unknown() -> None:
    t = Scripted({"squeue": [CommandResult(0, recorded("squeue_one_gone.stdout"), "")]})
    got = await scheduler(t).status({"8": "dassco.other.job.1"})
    assert got["8"].state is SchedulerState.UNKNOWN
    assert "dassco.rec.ok.1" in (got["8"].reason or "")


async def test_lookup_asks_sacct_only_for_names_squeue_does_not_know() -> None:
    t = Scripted({
        "squeue": [CommandResult(0, recorded("squeue_by_name.stdout"), "")],
        "sacct": [CommandResult(0, recorded("sacct_completion_by_name.stdout"), "")],
    })  # fmt: skip
    found = await scheduler(t, accounting="completion").lookup(
        ["dassco.rec.ok.1", "dassco.rec.timeout.1", "dassco.rec.never.1", "bad,name"]
    )
    assert {n: i.job_id for n, i in found.items()} == {
        "dassco.rec.ok.1": "8", "dassco.rec.timeout.1": "11"
    }
    [squeue] = [argv for argv, _ in t.calls if argv[0] == "squeue"]
    [sacct] = [argv for argv, _ in t.calls if argv[0] == "sacct"]
    assert not any("bad" in a for a in squeue + sacct)
    assert "--name=dassco.rec.never.1,dassco.rec.timeout.1" in sacct


async def test_query_failures_are_retryable_scheduler_errors() -> None:
    t = Scripted({"squeue": [CommandResult(1, "", "squeue: error: Unable to contact slurm "
                                           "controller (connect failure)")]})
    with pytest.raises(SchedulerError) as failed:
        await scheduler(t).status({"1": "dassco.a.b.1"})
    assert failed.value.retryable


async def test_a_failing_sacct_does_not_hold_up_the_jobs_squeue_knows() -> None:
    denied = ("sacct: fatal: open /var/lib/slurm/jobcomp.log: Permission denied\n")
    t = Scripted({
        "squeue": [CommandResult(0, recorded("squeue_one_gone.stdout"), "")],
        "sacct": [CommandResult(1, "", denied)],
    })  # fmt: skip
    got = await scheduler(t, accounting="completion").status(
        {"8": "dassco.rec.ok.1", "99999": "dassco.x.y.1"})
    assert got["8"].state is SchedulerState.COMPLETED
    assert got["99999"].state is SchedulerState.UNKNOWN
    assert "left the queue" in (got["99999"].reason or "")
    assert "Permission denied" in (got["99999"].reason or "")
    # Finding a job by name must not take "sacct failed" for "never submitted".
    t = Scripted({
        "squeue": [CommandResult(0, "", "")],
        "sacct": [CommandResult(1, "", denied)],
    })  # fmt: skip
    with pytest.raises(SchedulerError):
        await scheduler(t, accounting="completion").lookup(["dassco.rec.never.1"])


async def test_cancel() -> None:
    t = Scripted({"scancel": [CommandResult(0, "", "")]})
    await scheduler(t).cancel("123_4")
    assert t.calls == [(["scancel", "123_4"], None)]
    with pytest.raises(SchedulerError):
        await scheduler(t).cancel("--signal=KILL")

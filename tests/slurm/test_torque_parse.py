"""The Torque output parsers against recorded outputs (tests/slurm/recorded/torque/README.md
says where each one comes from), and the adapter's script and command handling against a fake
transport. No cluster needed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import pytest

from dasscod.cluster.base import (
    Command,
    CommandResult,
    JobInfo,
    JobSpec,
    SchedulerError,
    SchedulerState,
    Transport,
)
from dasscod.cluster.torque import TorqueScheduler, walltime
from dasscod.cluster.torque_parse import (
    QUERY_MARK,
    ExitRecord,
    best_by_name,
    exit_outcome,
    job_key,
    only_unknown_jobs,
    parse_exit_record,
    parse_job_id,
    parse_qstat_full,
    parse_query,
    qstat_blocks,
    submit_error_is_permanent,
)

RECORDED = Path(__file__).parent / "recorded" / "torque"
T = "torque.example.org"
C_WITHOUT_EXIT = "job ended (Torque state C) but qstat gives no exit_status, so how is unknown"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


def infos(text: str) -> dict[str, JobInfo]:
    return {r.job_id: r.info() for r in parse_qstat_full(text)}


def test_wrapper_qstat_mixed() -> None:
    got = infos(recorded("qstat_f_mixed.stdout"))
    ended = {
        job_id: JobInfo(job_id, f"dassco.rec.{name}.1", SchedulerState.UNKNOWN, None,
                        C_WITHOUT_EXIT)
        for job_id, name in (("55", "ok"), ("56", "fail"), ("57", "killed"),
                             ("58", "cancelled"))
    }
    assert got == {
        **ended,
        "59": JobInfo("59", "dassco.rec.running.1", SchedulerState.RUNNING),
        "60": JobInfo("60", "dassco.rec.pending.1", SchedulerState.PENDING),
    }
    assert all(r.ended for r in parse_qstat_full(recorded("qstat_f_mixed.stdout"))
               if r.job_id in ended)


def test_wrapper_qstat_unknown_and_gone() -> None:
    assert parse_qstat_full(recorded("qstat_f_unknown.stdout")) == []
    assert [r.job_id for r in parse_qstat_full(recorded("qstat_f_one_gone.stdout"))] == ["55"]
    assert "Unknown option: x" in recorded("qstat_x_refused.stderr")


def test_wrapper_qstat_all_by_name() -> None:
    records = parse_qstat_full(recorded("qstat_f_all.stdout"))
    assert len(records) > 6
    found = best_by_name(records, ["dassco.rec.running.1", "dassco.rec.fail.1",
                                   "dassco.rec.never.1"])
    assert {n: r.job_id for n, r in found.items()} == {
        "dassco.rec.running.1": "59", "dassco.rec.fail.1": "56"}


def test_torque_qstat_states_and_exit_status() -> None:
    got = infos(recorded("qstat_f_torque_handwritten.stdout"))
    signal = "killed by signal 15 (exit_status 271; Torque reports this for qdel and, in some " \
             "versions, for walltime)"
    expected = {
        f"1001.{T}": ("dassco.hw.ok.1", SchedulerState.COMPLETED, 0, None),
        f"1002.{T}": ("dassco.hw.fail.1", SchedulerState.FAILED, 3, None),
        f"1003.{T}": ("dassco.hw.deleted.1", SchedulerState.FAILED, 143, signal),
        f"1004.{T}": ("dassco.hw.walltime.1", SchedulerState.TIMEOUT, None,
                      "job exceeded its walltime limit (exit_status -11)"),
        f"1005.{T}": ("dassco.hw.memory.1", SchedulerState.OUT_OF_MEMORY, None,
                      "job exceeded a memory limit (exit_status -10)"),
        f"1006.{T}": ("dassco.hw.execfail.1", SchedulerState.FAILED, None,
                      "exec() of the job script failed (exit_status -8)"),
        f"1007.{T}": ("dassco.hw.running.1", SchedulerState.RUNNING, None, None),
        f"1008.{T}": ("dassco.hw.queued.1", SchedulerState.PENDING, None,
                      "Not Running: Insufficient amount of resource: ncpus"),
        f"1009.{T}": ("dassco.hw.held.1", SchedulerState.PENDING, None, "Torque job state H"),
        f"1010.{T}": ("dassco.hw.exiting.1", SchedulerState.RUNNING, None,
                      "Torque job state E"),
        f"1011.{T}": ("dassco.hw.waiting.1", SchedulerState.PENDING, None,
                      "Torque job state W"),
        f"1012[3].{T}": ("dassco.hw.array.1", SchedulerState.COMPLETED, 0, None),
        f"1013.{T}": ("dassco.hw.deletedqueued.1", SchedulerState.UNKNOWN, None,
                      C_WITHOUT_EXIT),
        f"1014.{T}": ("dassco.hw.strange.1", SchedulerState.UNKNOWN, None,
                      "Torque job state 'Z'"),
        # Folded onto a second line without -1: joined again.
        f"1015.{T}": ("dassco.0b6a4a1e-6f0e-4c59-9f59-3c1f2d0e8a77.ingest.1",
                      SchedulerState.RUNNING, None, None),
        f"1016.{T}": ("dassco.hw.ok.1", SchedulerState.RUNNING, None, None),
    }
    assert {job_id: (i.name, i.state, i.exit_code, i.reason) for job_id, i in got.items()} \
        == expected


def test_torque_by_name_prefers_the_live_job() -> None:
    records = parse_qstat_full(recorded("qstat_f_torque_handwritten.stdout"))
    found = best_by_name(records, ["dassco.hw.ok.1", "dassco.hw.array.1"])
    assert {n: r.job_id for n, r in found.items()} == {
        "dassco.hw.ok.1": f"1016.{T}", "dassco.hw.array.1": f"1012[3].{T}"}


def test_folded_variable_list_is_joined() -> None:
    text = recorded("qstat_f_torque_handwritten.stdout")
    attrs = qstat_blocks(text)[0][1]
    assert "PBS_O_LOGNAME=dassco,PBS_O_PATH" in attrs["Variable_List"]
    assert attrs["Variable_List"].endswith("PBS_O_HOST=login1")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0, (SchedulerState.COMPLETED, 0)),
        (1, (SchedulerState.FAILED, 1)),
        (255, (SchedulerState.FAILED, 255)),
        (265, (SchedulerState.FAILED, 137)),
        (-11, (SchedulerState.TIMEOUT, None)),
        (-12, (SchedulerState.TIMEOUT, None)),
        (-99, (SchedulerState.FAILED, None)),
        (None, (SchedulerState.UNKNOWN, None)),
    ],
)
def test_exit_outcome(status: int | None, expected: tuple[SchedulerState, int | None]) -> None:
    assert exit_outcome(status)[:2] == expected


def test_wrapper_query_with_exit_files() -> None:
    """The status query's output on the wrapper cluster: the exit files of jobs that exited
    0, exited 3, were deleted while running (the script trapped SIGTERM) and whose command
    was killed with SIGKILL; none yet for the running job nor for a name never submitted."""
    parsed = parse_query(recorded("query_mixed.stdout"))
    assert parsed is not None
    exits, qstat = parsed
    assert exits == {
        "dassco.rec.ok.1": ExitRecord(0, None, 0, 120, "4153"),
        "dassco.rec.fail.1": ExitRecord(3, None, 0, 120, "4154"),
        "dassco.rec.deleted.1": ExitRecord(143, "TERM", 4, 120, "4155"),
        "dassco.rec.nofile.1": ExitRecord(137, None, 0, 120, "4157"),
    }
    records = {r.job_id: r for r in parse_qstat_full(qstat)}
    assert [r.raw_state for r in records.values()] == ["C", "C", "C", "R", "C"]
    got = {job_id: records[job_id].info(job_id, exits.get(records[job_id].name))
           for job_id in records}
    assert got["4153"] == JobInfo("4153", "dassco.rec.ok.1", SchedulerState.COMPLETED, 0)
    assert got["4154"] == JobInfo("4154", "dassco.rec.fail.1", SchedulerState.FAILED, 3)
    assert (got["4155"].state, got["4155"].exit_code) == (SchedulerState.FAILED, 143)
    assert "stopped by SIGTERM after 4 s, before its walltime" in (got["4155"].reason or "")
    assert (got["4157"].state, got["4157"].exit_code) == (SchedulerState.FAILED, 137)
    assert "killed by signal 9" in (got["4157"].reason or "")
    assert got["4156"] == JobInfo("4156", "dassco.rec.running.1", SchedulerState.RUNNING)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("status=0 signal=none elapsed=5 limit=60 job=7", (SchedulerState.COMPLETED, 0)),
        ("status=3 signal=none elapsed=5 limit=60 job=7", (SchedulerState.FAILED, 3)),
        # Stopped at the walltime: by the trap, or by the status alone when the command died
        # before the shell got its own SIGTERM.
        ("status=143 signal=TERM elapsed=61 limit=60 job=7", (SchedulerState.TIMEOUT, 143)),
        ("status=143 signal=none elapsed=59 limit=60 job=7", (SchedulerState.TIMEOUT, 143)),
        ("status=143 signal=TERM elapsed=20 limit=60 job=7", (SchedulerState.FAILED, 143)),
        ("status=130 signal=INT elapsed=20 limit=60 job=", (SchedulerState.FAILED, 130)),
        ("status=137 signal=none elapsed=70 limit=60 job=7", (SchedulerState.FAILED, 137)),
        ("status=125 signal=none elapsed=0 limit=60 job=7", (SchedulerState.FAILED, 125)),
        ("status=143", (SchedulerState.FAILED, 143)),  # no times: cannot say it timed out
    ],
)
def test_exit_record_outcome(line: str, expected: tuple[SchedulerState, int]) -> None:
    record = parse_exit_record(line)
    assert record is not None
    state, code, reason = record.outcome()
    assert (state, code) == expected
    if state is SchedulerState.TIMEOUT:
        assert reason is not None and "at its walltime of 60 s" in reason


def test_exit_records_that_say_nothing() -> None:
    assert parse_exit_record("") is None
    assert parse_exit_record("status= signal=TERM") is None
    assert parse_exit_record("status=abc") is None
    # A job id that could not be one, or a signal we never trap, is dropped, not trusted.
    assert parse_exit_record("status=1 signal=KILL job=$(x)") == ExitRecord(1)
    # The query's own noise: no mark (its shell failed), lines that are not exit lines.
    assert parse_query("dasscod-exit a.b status=0\n") is None
    assert parse_query(f"garbage\ndasscod-exit bad/name status=0\n{QUERY_MARK}\n") == ({}, "")


def test_job_ids() -> None:
    assert parse_job_id(recorded("qsub_ok.stdout")) == "61"
    assert parse_job_id(recorded("qsub_ok_torque_handwritten.stdout")) == f"1001.{T}"
    assert parse_job_id("warning: something\n1002[].server\n") == "1002[].server"
    assert parse_job_id(recorded("qsub_bad_queue.stdout")) is None
    assert parse_job_id("") is None
    assert job_key(f"1012[3].{T}") == "1012[3]"
    assert job_key(f"1001.{T}") == job_key("1001") == "1001"


def test_submit_errors() -> None:
    assert submit_error_is_permanent(recorded("qsub_bad_queue.stdout"))
    assert submit_error_is_permanent(recorded("qsub_bad_memory.stdout"))
    assert submit_error_is_permanent(recorded("qsub_bad_queue_torque_handwritten.stderr"))
    assert not submit_error_is_permanent(
        recorded("qsub_queue_full_torque_handwritten.stderr"))
    assert not submit_error_is_permanent("qsub: cannot connect to server login1 (errno=111)")


def test_unknown_job_messages() -> None:
    assert only_unknown_jobs(recorded("qstat_unknown_torque_handwritten.stderr"))
    assert only_unknown_jobs("")
    assert not only_unknown_jobs("Problem loading jobs.\n")


# -- the adapter against a fake transport


class Fake(Transport):
    """Answers each command with a canned result, keeping what it was asked."""

    name = "fake"

    def __init__(self, answers: Mapping[str, CommandResult]) -> None:
        self.answers = dict(answers)
        self.calls: list[tuple[list[str], str | None]] = []

    async def execute(self, command: Command) -> CommandResult:
        argv = command.argv
        self.calls.append((list(argv), command.stdin))
        program = argv[0]
        if program == "sh":  # the adapter's snippets: submit (qsub) or the status query
            program = "qsub" if "qsub" in argv[2] else "qstat"
        return self.answers[program]


def query_result(exit_status: int, qstat: str, stderr: str = "", exits: str = "") -> CommandResult:
    """What the status query prints around qstat's output (exit-file lines, the mark)."""
    return CommandResult(exit_status, f"{exits}{QUERY_MARK}\n{qstat}", stderr)


def query_argv(call: list[str]) -> tuple[list[str], list[str]]:
    """The names and job ids of one status query's command line."""
    assert call[:2] == ["sh", "-c"] and call[3:5] == ["dasscod-qstat", "/home/dassco/state"]
    at = call.index("--")
    return call[5:at], call[at + 1 :]


def spec(**changes: object) -> JobSpec:
    values: dict[str, object] = {
        "name": "dassco.g1.ingest.1", "argv": ("run", "it's"),
        "workdir": PurePosixPath("/work/g1"), "env": {"DASSCO_TOKEN": "secret"},
        "time_limit_s": 90061, "cpus": 4, "memory_mb": 2048,
    }
    values.update(changes)
    return JobSpec(**values)  # type: ignore[arg-type]


def scheduler(fake: Fake, **options: object) -> TorqueScheduler:
    return TorqueScheduler(fake, state_dir=PurePosixPath("/home/dassco/state"),
                           **options)  # type: ignore[arg-type]


def test_render() -> None:
    torque = scheduler(Fake({}), queue="batch", account="cu_10000",
                       pbs_options=["-W group_list=cu_10000"])
    assert torque.render(spec()) == (
        "#!/bin/sh\n"
        "#PBS -S /bin/sh\n"
        "#PBS -N dassco.g1.ingest.1\n"
        "#PBS -q batch\n"
        "#PBS -A cu_10000\n"
        "#PBS -l walltime=25:01:01,nodes=1:ppn=4,mem=2048mb\n"
        "#PBS -o /home/dassco/state/dassco.g1.ingest.1.out\n"
        "#PBS -e /home/dassco/state/dassco.g1.ingest.1.err\n"
        "#PBS -W group_list=cu_10000\n"
        "export DASSCO_TOKEN=secret\n"
        "dasscod_start=$(date +%s)\n"
        "dasscod_signal=none\n"
        "trap 'dasscod_signal=TERM' TERM\n"
        "trap 'dasscod_signal=INT' INT\n"
        "dasscod_exit() {\n"
        '    dasscod_line="status=$1 signal=$dasscod_signal elapsed=$(($(date +%s) - '
        'dasscod_start))"\n'
        '    dasscod_line="$dasscod_line limit=90061 job=${PBS_JOBID:-${SLURM_JOB_ID:-}}"\n'
        "    printf '%s\\n' \"$dasscod_line\" "
        ">/home/dassco/state/dassco.g1.ingest.1.exit.tmp && "
        "mv -f -- /home/dassco/state/dassco.g1.ingest.1.exit.tmp "
        "/home/dassco/state/dassco.g1.ingest.1.exit\n"
        '    exit "$1"\n'
        "}\n"
        "mkdir -p -- /work/g1 && cd -- /work/g1 || "
        "{ echo 'dasscod: cannot create or enter the workdir' /work/g1 >&2; "
        "dasscod_exit 125; }\n"
        "run 'it'\"'\"'s'\n"
        "dasscod_exit $?\n"
    )
    assert walltime(1) == "00:01:00"


@pytest.mark.parametrize(
    "bad",
    [{"name": "dassco g1"}, {"name": "-dassco"}, {"argv": ()}, {"cpus": 0},
     {"env": {"A-B": "x"}}, {"partition": "batch,other"}, {"account": "a b"}],
)
def test_render_refuses(bad: dict[str, object]) -> None:
    with pytest.raises(SchedulerError) as caught:
        scheduler(Fake({})).render(spec(**bad))
    assert not caught.value.retryable


def test_constructor_refuses_unsafe_values() -> None:
    for options in ({"queue": "a b"}, {"account": "x;y"}, {"pbs_options": ["-l a\n-q b"]}):
        with pytest.raises(ValueError):
            scheduler(Fake({}), **options)
    for path in ("/home/my state", "/tmp/$(x)", "-state", "/tmp/a:b", "/tmp/%j"):
        with pytest.raises(ValueError):
            TorqueScheduler(Fake({}), state_dir=PurePosixPath(path))


async def test_submit_keeps_the_id_and_the_secret_off_the_command_line() -> None:
    fake = Fake({"qsub": CommandResult(0, f"1001.{T}\n", "")})
    assert await scheduler(fake).submit(spec()) == f"1001.{T}"
    (argv, stdin), = fake.calls
    assert argv[-2:] == ["/home/dassco/state", "dassco.g1.ingest.1"]
    assert not any("secret" in a for a in argv)
    assert stdin is not None and "export DASSCO_TOKEN=secret" in stdin


@pytest.mark.parametrize(
    ("result", "retryable"),
    [
        (CommandResult(1, recorded("qsub_bad_queue.stdout"), ""), False),
        (CommandResult(160, "", recorded("qsub_bad_queue_torque_handwritten.stderr")), False),
        (CommandResult(1, "", recorded("qsub_queue_full_torque_handwritten.stderr")), True),
        (CommandResult(102, "", "cat: Permission denied"), True),
        (CommandResult(0, "garbage\n", ""), True),
    ],
)
async def test_submit_failures(result: CommandResult, retryable: bool) -> None:
    with pytest.raises(SchedulerError) as caught:
        await scheduler(Fake({"qsub": result})).submit(spec())
    assert caught.value.retryable is retryable


async def test_status_matches_ids_whatever_the_server_spelling() -> None:
    stdout = recorded("qstat_f_torque_handwritten.stdout")
    fake = Fake({"qstat": query_result(
        153, stdout, recorded("qstat_unknown_torque_handwritten.stderr"))})
    got = await scheduler(fake).status({
        "1001.torque": "dassco.hw.ok.1",
        f"1002.{T}": "dassco.hw.fail.1",
        f"1012[3].{T}": "dassco.hw.array.1",
        f"1007.{T}": "dassco.other.1",
        f"1099.{T}": "dassco.hw.gone.1",
        "bogus id": "dassco.hw.x.1",
    })
    names, ids = query_argv(fake.calls[0][0])
    assert ids == ["1001.torque", f"1002.{T}", f"1012[3].{T}", f"1007.{T}", f"1099.{T}"]
    assert names == sorted(["dassco.hw.ok.1", "dassco.hw.fail.1", "dassco.hw.array.1",
                            "dassco.other.1", "dassco.hw.gone.1"])
    assert got["1001.torque"] == JobInfo("1001.torque", "dassco.hw.ok.1",
                                         SchedulerState.COMPLETED, 0)
    assert (got[f"1002.{T}"].state, got[f"1002.{T}"].exit_code) == (SchedulerState.FAILED, 3)
    assert got[f"1012[3].{T}"].state is SchedulerState.COMPLETED
    assert got[f"1007.{T}"].state is SchedulerState.UNKNOWN  # someone else's now
    assert got[f"1099.{T}"].state is SchedulerState.UNKNOWN
    assert "no longer knows" in (got[f"1099.{T}"].reason or "")
    assert got["bogus id"].state is SchedulerState.UNKNOWN


@pytest.mark.parametrize(
    ("result", "ok"),
    [
        (query_result(153, ""), True),  # the wrapper: nothing it was asked about
        (query_result(153, "", recorded("qstat_unknown_torque_handwritten.stderr")), True),
        (query_result(255, "", "Problem loading jobs.\n"), False),
        (query_result(2, "", recorded("qstat_x_refused.stderr")), False),
        (query_result(111, "", "qstat: cannot connect to server login1 (errno=111)"), False),
        (CommandResult(2, "", "sh: 1: Syntax error"), False),  # the query's shell failed
    ],
)
async def test_status_errors(result: CommandResult, ok: bool) -> None:
    torque = scheduler(Fake({"qstat": result}))
    if ok:
        got = await torque.status({"5": "dassco.a.b.1"})
        assert got["5"].state is SchedulerState.UNKNOWN
    else:
        with pytest.raises(SchedulerError) as caught:
            await torque.status({"5": "dassco.a.b.1"})
        assert caught.value.retryable


async def test_lookup_reads_all_jobs_once() -> None:
    fake = Fake({"qstat": query_result(0, recorded("qstat_f_torque_handwritten.stdout"))})
    got = await scheduler(fake).lookup(["dassco.hw.ok.1", "dassco.hw.fail.1", "dassco.never.1",
                                        "not ours!"])
    assert len(fake.calls) == 1
    assert query_argv(fake.calls[0][0]) == (
        ["dassco.hw.fail.1", "dassco.hw.ok.1", "dassco.never.1"], [])
    assert {n: (i.job_id, i.state) for n, i in got.items()} == {
        "dassco.hw.ok.1": (f"1016.{T}", SchedulerState.RUNNING),
        "dassco.hw.fail.1": (f"1002.{T}", SchedulerState.FAILED),
    }
    assert await scheduler(Fake({})).lookup(["not ours!"]) == {}
    # The wrapper with no jobs at all: exit status 153, nothing said.
    assert await scheduler(Fake({"qstat": query_result(153, "")})).lookup(["a.b"]) == {}


WRAPPER_C = recorded("qstat_f_one_gone.stdout")  # job 55, dassco.rec.ok.1, state C


async def test_status_takes_the_outcome_from_the_exit_file() -> None:
    exits = ("dasscod-exit dassco.rec.ok.1 status=143 signal=TERM elapsed=62 limit=60 job=55\n"
             "dasscod-exit dassco.rec.gone.1 status=4 signal=none elapsed=1 limit=60 job=70\n"
             "dasscod-exit dassco.rec.stale.1 status=0 signal=none elapsed=1 limit=60 job=71\n")
    fake = Fake({"qstat": query_result(0, WRAPPER_C, exits=exits)})
    got = await scheduler(fake).status({"55": "dassco.rec.ok.1", "70": "dassco.rec.gone.1",
                                        "72": "dassco.rec.stale.1"})
    # C without exit_status: the exit file says the walltime stopped it.
    assert (got["55"].state, got["55"].exit_code) == (SchedulerState.TIMEOUT, 143)
    assert "at its walltime of 60 s" in (got["55"].reason or "")
    # Forgotten by qstat: the exit file still says how it ended.
    assert (got["70"].state, got["70"].exit_code) == (SchedulerState.FAILED, 4)
    assert "no longer lists" in (got["70"].reason or "")
    # An exit file of another job under the same name says nothing about this one.
    assert got["72"].state is SchedulerState.UNKNOWN


async def test_an_ended_job_without_exit_file_is_given_time_to_write_it() -> None:
    fake = Fake({"qstat": query_result(0, WRAPPER_C)})
    patient = scheduler(fake, exit_file_wait_s=3600)
    got = await patient.status({"55": "dassco.rec.ok.1"})
    assert got["55"].state is SchedulerState.RUNNING
    assert "waiting for its exit file" in (got["55"].reason or "")
    assert (await patient.status({"55": "dassco.rec.ok.1"}))["55"].state is (
        SchedulerState.RUNNING)
    # Once the wait is over (here: none at all) it is UNKNOWN, saying it ended.
    impatient = scheduler(fake, exit_file_wait_s=0)
    got = await impatient.status({"55": "dassco.rec.ok.1"})
    assert got["55"] == JobInfo("55", "dassco.rec.ok.1", SchedulerState.UNKNOWN, None,
                                C_WITHOUT_EXIT)
    # The file arriving during the wait settles it.
    fake.answers["qstat"] = query_result(0, WRAPPER_C, exits=(
        "dasscod-exit dassco.rec.ok.1 status=0 signal=none elapsed=1 limit=60 job=55\n"))
    got = await patient.status({"55": "dassco.rec.ok.1"})
    assert got["55"] == JobInfo("55", "dassco.rec.ok.1", SchedulerState.COMPLETED, 0)


async def test_qstat_exit_status_wins_over_the_exit_file() -> None:
    exits = "dasscod-exit dassco.hw.ok.1 status=9 signal=none elapsed=1 limit=60 job=1001\n"
    fake = Fake({"qstat": query_result(0, recorded("qstat_f_torque_handwritten.stdout"),
                                       exits=exits)})
    got = await scheduler(fake).status({f"1001.{T}": "dassco.hw.ok.1"})
    assert got[f"1001.{T}"] == JobInfo(f"1001.{T}", "dassco.hw.ok.1",
                                       SchedulerState.COMPLETED, 0)


async def test_lookup_finds_a_forgotten_job_by_its_exit_file() -> None:
    exits = ("dasscod-exit dassco.rec.gone.1 status=0 signal=none elapsed=1 limit=60 job=70\n"
             "dasscod-exit dassco.rec.noid.1 status=0 signal=none elapsed=1 limit=60 job=\n")
    fake = Fake({"qstat": query_result(0, WRAPPER_C, exits=exits)})
    got = await scheduler(fake).lookup(["dassco.rec.gone.1", "dassco.rec.noid.1"])
    # Without a job id there is nothing to record: it stays absent.
    assert got == {"dassco.rec.gone.1": JobInfo(
        "70", "dassco.rec.gone.1", SchedulerState.COMPLETED, 0,
        "Torque no longer lists the job")}


@pytest.mark.parametrize(
    ("result", "ok"),
    [
        (CommandResult(0, "", ""), True),
        (CommandResult(1, recorded("qdel_ended.stdout"), ""), True),
        (CommandResult(153, "", recorded("qdel_unknown_torque_handwritten.stderr")), True),
        (CommandResult(170, "", recorded("qdel_ended_torque_handwritten.stderr")), True),
        (CommandResult(1, "qdel: Kill job error on job id 5: Access/permission denied\n", ""),
         False),
    ],
)
async def test_cancel(result: CommandResult, ok: bool) -> None:
    torque = scheduler(Fake({"qdel": result}))
    if ok:
        await torque.cancel("5")
    else:
        with pytest.raises(SchedulerError):
            await torque.cancel("5")
    with pytest.raises(SchedulerError):
        await torque.cancel("5; rm -rf /")


# -- the exit file, written by the rendered script itself (run here with /bin/sh, no cluster)


def run_script(tmp_path: Path, argv: tuple[str, ...]) -> subprocess.Popen[bytes]:
    torque = TorqueScheduler(Fake({}), state_dir=PurePosixPath(tmp_path / "state"))
    job = spec(argv=argv, workdir=PurePosixPath(tmp_path / "work"), time_limit_s=60)
    (tmp_path / "state").mkdir()
    script = tmp_path / "job.sh"
    script.write_text(torque.render(job))
    return subprocess.Popen(["/bin/sh", str(script)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def exit_record(tmp_path: Path) -> ExitRecord | None:
    return parse_exit_record((tmp_path / "state" / "dassco.g1.ingest.1.exit").read_text())


def test_the_script_records_its_commands_exit_status(tmp_path: Path) -> None:
    process = run_script(tmp_path, ("sh", "-c", "exit 3"))
    assert process.wait(timeout=30) == 3
    assert exit_record(tmp_path) == ExitRecord(3, None, 0, 60, None)
    assert not list((tmp_path / "state").glob("*.tmp"))


def test_the_script_records_a_sigterm_to_the_job(tmp_path: Path) -> None:
    process = run_script(tmp_path, ("sh", "-c", "touch started; exec sleep 30"))
    deadline = time.monotonic() + 30
    while not (tmp_path / "work" / "started").exists():
        assert time.monotonic() < deadline and process.poll() is None, "the job never started"
        time.sleep(0.05)
    # What qdel and a walltime limit do: SIGTERM to every process of the job.
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=30) == 143
    record = exit_record(tmp_path)
    assert record is not None and record.status == 143
    state, code, reason = record.outcome()
    assert (state, code) == (SchedulerState.FAILED, 143)
    assert reason is not None and "before its walltime" in reason

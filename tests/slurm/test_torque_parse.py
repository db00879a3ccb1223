"""The Torque output parsers against recorded outputs (tests/slurm/recorded/torque/README.md
says where each one comes from), and the adapter's script and command handling against a fake
transport. No cluster needed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import pytest

from dasscod.cluster.base import CommandResult, JobInfo, JobSpec, SchedulerError, SchedulerState
from dasscod.cluster.torque import TorqueScheduler, walltime
from dasscod.cluster.torque_parse import (
    best_by_name,
    exit_outcome,
    job_key,
    only_unknown_jobs,
    parse_job_id,
    parse_qstat_full,
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
    from dasscod.cluster.torque_parse import _blocks

    attrs = _blocks(text)[0][1]
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


class Fake:
    """Answers each command with a canned result, keeping what it was asked."""

    name = "fake"

    def __init__(self, answers: Mapping[str, CommandResult]) -> None:
        self.answers = dict(answers)
        self.calls: list[tuple[list[str], str | None]] = []

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | None = None,
        timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        self.calls.append((list(argv), stdin))
        command = "qsub" if argv[0] == "sh" else argv[0]
        return self.answers[command]

    async def close(self) -> None:
        pass


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
        "mkdir -p -- /work/g1 && cd -- /work/g1 || "
        "{ echo 'dasscod: cannot create or enter the workdir' /work/g1 >&2; exit 125; }\n"
        "exec run 'it'\"'\"'s'\n"
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
    fake = Fake({"qstat": CommandResult(
        153, stdout, recorded("qstat_unknown_torque_handwritten.stderr"))})
    got = await scheduler(fake).status({
        "1001.torque": "dassco.hw.ok.1",
        f"1002.{T}": "dassco.hw.fail.1",
        f"1012[3].{T}": "dassco.hw.array.1",
        f"1007.{T}": "dassco.other.1",
        f"1099.{T}": "dassco.hw.gone.1",
        "bogus id": "dassco.hw.x.1",
    })
    assert fake.calls[0][0] == ["qstat", "-f", "-1", "1001.torque", f"1002.{T}",
                                f"1012[3].{T}", f"1007.{T}", f"1099.{T}"]
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
        (CommandResult(153, "", ""), True),  # the wrapper: nothing it was asked about
        (CommandResult(153, "", recorded("qstat_unknown_torque_handwritten.stderr")), True),
        (CommandResult(255, "", "Problem loading jobs.\n"), False),
        (CommandResult(2, "", recorded("qstat_x_refused.stderr")), False),
        (CommandResult(111, "", "qstat: cannot connect to server login1 (errno=111)"), False),
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
    fake = Fake({"qstat": CommandResult(0, recorded("qstat_f_torque_handwritten.stdout"), "")})
    got = await scheduler(fake).lookup(["dassco.hw.ok.1", "dassco.hw.fail.1", "dassco.never.1",
                                        "not ours!"])
    assert [argv for argv, _ in fake.calls] == [["qstat", "-f", "-1"]]
    assert {n: (i.job_id, i.state) for n, i in got.items()} == {
        "dassco.hw.ok.1": (f"1016.{T}", SchedulerState.RUNNING),
        "dassco.hw.fail.1": (f"1002.{T}", SchedulerState.FAILED),
    }
    assert await scheduler(Fake({})).lookup(["not ours!"]) == {}
    # The wrapper with no jobs at all: exit status 153, nothing said.
    assert await scheduler(Fake({"qstat": CommandResult(153, "", "")})).lookup(["a.b"]) == {}


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

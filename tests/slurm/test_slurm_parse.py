"""The Slurm output parsers against recorded outputs (tests/slurm/recorded/README.md says where
each one comes from). No cluster needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from dasscod.cluster.base import JobInfo, SchedulerState
from dasscod.cluster.slurm_parse import (
    ACCOUNTING_DISABLED,
    INVALID_JOB_ID,
    Record,
    best_by_name,
    parse_exit_code,
    parse_job_id,
    parse_sacct,
    parse_squeue,
    parse_state,
    parse_wait_status,
    submit_error_is_permanent,
)

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


def infos(records: list[Record]) -> dict[str, JobInfo]:
    return {r.job_id: r.info() for r in records}


def test_squeue_mixed_states_and_exit_codes() -> None:
    got = infos(parse_squeue(recorded("squeue_mixed.stdout")))
    assert got == {
        "8": JobInfo("8", "dassco.rec.ok.1", SchedulerState.COMPLETED, 0),
        "9": JobInfo("9", "dassco.rec.fail.1", SchedulerState.FAILED, 3, "NonZeroExitCode"),
        "10": JobInfo("10", "dassco.rec.killed.1", SchedulerState.FAILED, 128 + 9,
                      "JobLaunchFailure"),
        "11": JobInfo("11", "dassco.rec.timeout.1", SchedulerState.TIMEOUT, 128 + 15,
                      "TimeLimit"),
        "12": JobInfo("12", "dassco.rec.running.1", SchedulerState.RUNNING),
        "13": JobInfo("13", "dassco.rec.pending.1", SchedulerState.PENDING, None, "Resources"),
    }


def test_squeue_empty_and_gone() -> None:
    assert parse_squeue(recorded("squeue_empty.stdout")) == []
    assert parse_squeue(recorded("squeue_invalid_job_id.stdout")) == []
    assert INVALID_JOB_ID in recorded("squeue_invalid_job_id.stderr")
    assert [r.job_id for r in parse_squeue(recorded("squeue_one_gone.stdout"))] == ["8"]


def test_squeue_by_name() -> None:
    records = parse_squeue(recorded("squeue_by_name.stdout"))
    found = best_by_name(records, ["dassco.rec.ok.1", "dassco.rec.fail.1", "dassco.rec.never.1"])
    assert {n: r.job_id for n, r in found.items()} == {
        "dassco.rec.ok.1": "8", "dassco.rec.fail.1": "9"
    }


def test_squeue_array_tasks_and_transitional_states() -> None:
    got = infos(parse_squeue(recorded("squeue_array_handwritten.stdout")))
    # A pending range (123_[5-9]) is no single job: skipped.
    assert set(got) == {"123_4", "124", "125"}
    assert got["123_4"].state is SchedulerState.RUNNING
    # COMPLETING: the final state and exit code are still to come.
    assert got["124"] == JobInfo("124", "dassco.hw.completing.1", SchedulerState.RUNNING)
    assert got["125"].state is SchedulerState.PENDING


def test_sacct_completion_log() -> None:
    got = infos(parse_sacct(recorded("sacct_completion.stdout")))
    assert got["8"] == JobInfo("8", "dassco.rec.ok.1", SchedulerState.COMPLETED, 0)
    assert got["9"] == JobInfo("9", "dassco.rec.fail.1", SchedulerState.FAILED, 3)
    assert got["10"] == JobInfo("10", "dassco.rec.killed.1", SchedulerState.FAILED, 128 + 9)
    # The completion log records no signal for a time-out (squeue said 15).
    assert got["11"] == JobInfo("11", "dassco.rec.timeout.1", SchedulerState.TIMEOUT, 0)


def test_sacct_completion_ignores_name_so_we_filter() -> None:
    records = parse_sacct(recorded("sacct_completion_by_name.stdout"))
    assert len(records) > 1  # --name was ignored
    found = best_by_name(records, ["dassco.rec.ok.1"])
    assert list(found) == ["dassco.rec.ok.1"]
    assert found["dassco.rec.ok.1"].job_id == "8"


def test_sacct_disabled_is_recognised() -> None:
    assert parse_sacct(recorded("sacct_disabled.stdout")) == []
    assert ACCOUNTING_DISABLED in recorded("sacct_disabled.stderr").lower()


def test_sacct_slurmdbd_odd_cases() -> None:
    got = infos(parse_sacct(recorded("sacct_slurmdbd_handwritten.stdout")))
    assert got["201"].state is SchedulerState.COMPLETED
    cancelled = got["202"]
    assert (cancelled.state, cancelled.exit_code) == (SchedulerState.CANCELLED, 128 + 15)
    assert cancelled.reason == "CANCELLED by 0"
    assert got["203"].state is SchedulerState.OUT_OF_MEMORY
    assert (got["204"].state, got["204"].exit_code) == (SchedulerState.NODE_FAIL, 1)
    assert got["205"].state is SchedulerState.TIMEOUT
    for unknown, raw in (("206", "REVOKED"), ("207", "SOMETHING_NEW")):
        assert got[unknown].state is SchedulerState.UNKNOWN
        assert got[unknown].exit_code is None
        assert raw in (got[unknown].reason or "")
    assert got["123_4"] == JobInfo("123_4", "dassco.hw.array.1", SchedulerState.FAILED, 2,
                                   "NonZeroExitCode")
    assert "123_[5-9]" not in got and "123_4.batch" not in got  # range and job step skipped
    assert got["208"].state is SchedulerState.CANCELLED
    assert got["209"].name == "name|with|pipes"  # the name is last: pipes in it shift nothing


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("RUNNING", SchedulerState.RUNNING),
        ("CANCELLED by 1234", SchedulerState.CANCELLED),
        ("CANCELLED+", SchedulerState.CANCELLED),
        ("cancelled", SchedulerState.CANCELLED),
        ("DEADLINE", SchedulerState.TIMEOUT),
        ("BOOT_FAIL", SchedulerState.FAILED),
        ("", SchedulerState.UNKNOWN),
        ("WHATEVER", SchedulerState.UNKNOWN),
    ],
)
def test_states(text: str, state: SchedulerState) -> None:
    assert parse_state(text)[0] is state


def test_exit_codes() -> None:
    assert parse_wait_status("0") == 0
    assert parse_wait_status("768") == 3
    assert parse_wait_status("9") == 137
    assert parse_wait_status("") is None
    assert parse_exit_code("3:0") == 3
    assert parse_exit_code("0:15") == 143
    assert parse_exit_code("") is None


def test_sbatch_answers() -> None:
    assert parse_job_id(recorded("sbatch_ok.stdout")) == "14"
    assert parse_job_id("sbatch: warning: something\n42;cluster\n") == "42"
    assert parse_job_id("") is None
    assert parse_job_id("Submitted batch job 42\n") is None  # not --parsable output
    assert submit_error_is_permanent(recorded("sbatch_invalid_partition.stderr"))
    assert submit_error_is_permanent(recorded("sbatch_bad_memory.stderr"))
    assert not submit_error_is_permanent(
        "sbatch: error: Batch job submission failed: Unable to contact slurm controller "
        "(connect failure)"
    )
    assert not submit_error_is_permanent(
        "sbatch: error: QOSMaxSubmitJobPerUserLimit\nsbatch: error: Batch job submission "
        "failed: Job violates accounting/QOS policy (job submit limit, user's size and/or "
        "time limits)"
    )


def test_best_by_name_prefers_a_live_job_then_the_newest() -> None:
    records = parse_sacct(
        "10|FAILED|1:0||dassco.g.j.1\n12|COMPLETED|0:0||dassco.g.j.1\n"
        "11|RUNNING|0:0||dassco.g.j.1\n20|COMPLETED|0:0||dassco.g.k.1\n"
        "3|COMPLETED|0:0||dassco.g.k.1\n"
    )
    found = best_by_name(records, ["dassco.g.j.1", "dassco.g.k.1"])
    assert found["dassco.g.j.1"].job_id == "11"
    assert found["dassco.g.k.1"].job_id == "20"

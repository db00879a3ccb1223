"""What the orphan sweep reads: our job names, and which listed jobs this daemon submitted."""

from __future__ import annotations

from dasscod.cluster import slurm_parse, torque_parse
from dasscod.cluster.base import SchedulerState
from dasscod.services.launch import parse_job_name, scheduler_job_name


def test_job_names_round_trip_even_with_dots_in_the_guid():
    assert parse_job_name(scheduler_job_name("a.b-c", "load", 3)) == ("a.b-c", "load", 3)
    assert parse_job_name("dassco.g1.load.x") is None
    assert parse_job_name("other.g1.load.1") is None
    assert parse_job_name("dassco.load.1") is None


def test_slurm_ours_keeps_live_jobs_whose_script_is_in_our_state_folder():
    out = "\n".join([
        "10|RUNNING|/state/dassco.g1.load.1.sh|dassco.g1.load.1|",
        "11|PENDING|/state/dassco.g2.load.1.sh|dassco.g2.load.1|",
        "12|RUNNING|/elsewhere/dassco.g3.load.1.sh|dassco.g3.load.1|",  # another daemon's
        "13|RUNNING|(null)|dassco.g4.load.1|",  # sbatch --wrap: a person's
        "14|RUNNING|/state/x.sh|dassco.g5.load.1|",  # script and name disagree
        "15|COMPLETED|/state/dassco.g6.load.1.sh|dassco.g6.load.1|",
        "16|RUNNING|/state/a|b.sh|a|b|",  # a name with a separator is never ours
    ])
    found = slurm_parse.parse_ours(out, "/state")
    assert [(i.job_id, i.name, i.state) for i in found] == [
        ("10", "dassco.g1.load.1", SchedulerState.RUNNING),
        ("11", "dassco.g2.load.1", SchedulerState.PENDING),
    ]


def test_torque_scripts_then_qstat():
    out = "\n".join([
        "dasscod-script dassco.g1.load.1",
        "dasscod-script bad name",
        torque_parse.QUERY_MARK,
        "Job Id:\t7",
        "\tJob_Name = dassco.g1.load.1",
        "\tjob_state = R",
        "",
    ])
    parsed = torque_parse.parse_scripts(out)
    assert parsed is not None
    names, qstat = parsed
    assert names == {"dassco.g1.load.1"}
    assert [r.name for r in torque_parse.parse_qstat_full(qstat)] == ["dassco.g1.load.1"]
    assert torque_parse.parse_scripts("no mark") is None

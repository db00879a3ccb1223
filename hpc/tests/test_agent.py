"""The pull agent without a cluster or a daemon: what it reads from qstat / squeue / qsub /
sbatch output, and one run against a fake scheduler and a fake daemon (claims, submissions,
refusals, reports, cancels). The agent against the real Torque wrappers and the real daemon is
tests/slurm/test_pull_e2e.py in the daemon's repository."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, cast

import pytest
from dassco_hpc.agent import (
    Agent,
    SchedulerFailed,
    Seen,
    Slurm,
    SubmitRefused,
    Torque,
    parse_name,
    parse_qstat,
    parse_qsub,
    parse_sbatch,
    parse_squeue,
)
from dassco_hpc.client import CallbackClient

#: Real Torque's `qstat -f -1` (format of Adaptive Computing's manuals): ended jobs with their
#: exit_status, a live one, and another user's job.
TORQUE_QSTAT = """\
Job Id: 1001.torque.example.org
    Job_Name = dassco.g1.load.1
    job_state = C
    exit_status = 0

Job Id: 1002.torque.example.org
    Job_Name = dassco.g2.load.1
    job_state = C
    exit_status = 3

Job Id: 1003.torque.example.org
    Job_Name = dassco.g3.load.2
    job_state = C
    exit_status = 271

Job Id: 1004.torque.example.org
    Job_Name = dassco.g4.ocr.1
    job_state = C
    exit_status = -11

Job Id: 1005.torque.example.org
    Job_Name = dassco.g5.ocr.1
    job_state = R

Job Id: 1006.torque.example.org
    Job_Name = somebody.elses.job
    job_state = Q
"""

#: The Slurm wrappers' `qstat -f` (recorded on the test cluster): tab after "Job Id:", no
#: exit_status for an ended job.
WRAPPER_QSTAT = """\
Job Id:\t55
\tJob_Name = dassco.rec.ok.1
\tJob_Owner = dassco@localhost
\tjob_state = C
\tqueue = dassco

Job Id:\t59
\tJob_Name = dassco.rec.running.1
\tjob_state = R
"""


def test_parse_name() -> None:
    assert parse_name("dassco.g1.load.1") == ("g1", "load", 1)
    assert parse_name("dassco.a.b.c.ocr.12") == ("a.b.c", "ocr", 12)  # guids may hold dots
    for other in ("dassco.g1.load.x", "dassco.load.1", "other.g1.load.1", "dassco..load.1"):
        assert parse_name(other) is None


def test_parse_torque_qstat() -> None:
    seen = {s.job_id: s for s in parse_qstat(TORQUE_QSTAT)}
    assert seen["1001.torque.example.org"] == Seen("1001.torque.example.org",
                                                   "dassco.g1.load.1", "COMPLETED", 0)
    assert (seen["1002.torque.example.org"].state,
            seen["1002.torque.example.org"].exit_code) == ("FAILED", 3)
    # 256 + 15: killed by SIGTERM, the shell's 143.
    assert (seen["1003.torque.example.org"].state,
            seen["1003.torque.example.org"].exit_code) == ("FAILED", 143)
    assert seen["1004.torque.example.org"].state == "TIMEOUT"
    assert seen["1005.torque.example.org"].state == "RUNNING"
    assert not seen["1005.torque.example.org"].ended
    assert seen["1006.torque.example.org"].state == "PENDING"


def test_parse_wrapper_qstat() -> None:
    seen = {s.job_id: s for s in parse_qstat(WRAPPER_QSTAT)}
    assert set(seen) == {"55", "59"}
    assert seen["55"].state == "UNKNOWN" and seen["55"].ended
    assert "keeps no exit status" in (seen["55"].reason or "")
    assert seen["59"].state == "RUNNING"
    assert parse_qstat("") == []


def test_parse_squeue() -> None:
    text = ("12|dassco.g1.load.1|PENDING\n13|dassco.g2.load.1|RUNNING\n"
            "14|dassco.g3.load.1|COMPLETED\n15|dassco.g4.load.1|CANCELLED by 0\n"
            "16|dassco.g5.load.1|BOOT_FAIL\n17|dassco.g6.load.1|TIMEOUT\n"
            "garbage line\n|no id|RUNNING\n")
    seen = {s.job_id: (s.state, s.reason) for s in parse_squeue(text)}
    assert seen == {
        "12": ("PENDING", None), "13": ("RUNNING", None), "14": ("COMPLETED", None),
        "15": ("CANCELLED", None), "16": ("FAILED", "BOOT_FAIL"), "17": ("TIMEOUT", None),
    }


def test_parse_submit_output() -> None:
    assert parse_qsub("1001.torque.example.org\n") == "1001.torque.example.org"
    assert parse_qsub("61\n") == "61"
    assert parse_qsub("") is None
    assert parse_qsub("There was an error running the Slurm sbatch command.\n") is None
    assert parse_sbatch("sbatch: warning: something\n77;cluster\n") == "77"
    assert parse_sbatch("77\n") == "77"
    assert parse_sbatch("Submitted batch job 77\n") is None


def fake_tool(folder: Path, name: str, exit_status: int, stdout: str = "",
              stderr: str = "") -> None:
    """An executable `name` on PATH that prints and exits as told."""
    tool = folder / name
    tool.write_text(f"#!/bin/sh\nprintf '%s' '{stdout}'\nprintf '%s' '{stderr}' >&2\n"
                    f"exit {exit_status}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


def test_a_refusal_is_told_apart_from_an_unknown_outcome(tools: Path, tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n")
    # The wrappers' qsub puts sbatch's complaint on stdout and exits 1: refused.
    fake_tool(tools, "qsub", 1, stdout="sbatch: error: invalid partition specified: nosuch")
    with pytest.raises(SubmitRefused) as refused:
        Torque().submit(script, tmp_path, "dassco.g1.load.1")
    assert refused.value.exit_status == 1
    assert "invalid partition specified: nosuch" in refused.value.complaint
    fake_tool(tools, "sbatch", 1, stderr="sbatch: error: QOSMaxSubmitJobPerUserLimit")
    with pytest.raises(SubmitRefused) as refused:
        Slurm().submit(script, tmp_path, "dassco.g1.load.1")
    assert "QOSMaxSubmitJobPerUserLimit" in refused.value.complaint
    # Exit status 0 without a job id: it may have gone in; not a refusal.
    fake_tool(tools, "qsub", 0, stdout="something unexpected")
    with pytest.raises(SchedulerFailed) as unknown:
        Torque().submit(script, tmp_path, "dassco.g1.load.1")
    assert not isinstance(unknown.value, SubmitRefused)
    fake_tool(tools, "qsub", 0, stdout="1001.torque.example.org\n")
    assert Torque().submit(script, tmp_path, "dassco.g1.load.1") == "1001.torque.example.org"


class FakeScheduler:
    """Lists `jobs`, refuses the names in `refuse`, gives other submissions ids 500, 501..."""

    kind = "torque"

    def __init__(self, jobs: list[Seen], refuse: set[str]) -> None:
        self.jobs = jobs
        self.refuse = refuse
        self.submitted: list[str] = []
        self.cancelled: list[str] = []

    def list_jobs(self) -> list[Seen]:
        return list(self.jobs)

    def submit(self, script: Path, folder: Path, name: str) -> str:
        assert stat.S_IMODE(script.stat().st_mode) == 0o600  # it holds the job's token
        if name in self.refuse:
            raise SubmitRefused("qsub", name, 1, "qsub: submit error (queue limit)")
        job_id = str(500 + len(self.submitted))
        self.submitted.append(name)
        self.jobs.append(Seen(job_id, name, "PENDING"))
        return job_id

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)


class FakeDaemon:
    """Answers the agent API's calls from canned data and records them."""

    def __init__(self, claims: list[dict[str, Any]], cancel: list[str],
                 forget: list[dict[str, Any]] | None = None) -> None:
        self.claims = claims
        self.cancel = cancel
        self.forget = forget or []
        self.posts: list[tuple[str, Any]] = []

    def post(self, path: str, body: Any = None) -> Any:
        self.posts.append((path, body))
        if path.endswith("/claim"):
            return self.claims
        if path.endswith("/report"):
            return {"cancel": self.cancel, "lost": 0, "submitted": 0, "forget": self.forget}
        if path.endswith("/forgotten"):
            return {"cleared": len(body["asset_guids"])}
        return {"applied": True, "status": "QUEUED", "detail": None}

    def get(self, path: str) -> Any:
        assert path.endswith("/jobs")
        return []

    def bodies(self, tail: str) -> list[Any]:
        return [body for path, body in self.posts if path.endswith(tail)]


def claimed(guid: str) -> dict[str, Any]:
    return {"asset_guid": guid, "job": "load", "attempt": 1, "name": f"dassco.{guid}.load.1",
            "submit_with": "torque", "script": "#!/bin/sh\nexport DASSCO_TOKEN=secret\n"}


def test_one_run_submits_reports_refusals_and_cancels(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    already = Seen("400", "dassco.g0.load.1", "RUNNING")  # submitted by a run that died
    (state / "dassco.g0.load.1.sh").write_text("#!/bin/sh\n")  # ... from this state folder
    elsewhere = Seen("401", "dassco.gx.load.1", "RUNNING")  # named like ours: not from here
    scheduler = FakeScheduler([already, elsewhere], refuse={"dassco.g2.load.1"})
    daemon = FakeDaemon([claimed("g0"), claimed("g1"), claimed("g2"), claimed("g3")],
                        cancel=["399"])
    lines: list[str] = []
    agent = Agent("local", cast(CallbackClient, daemon), scheduler, state, log=lines.append)
    counts = agent.run_once()
    assert counts == {"submitted": 2, "found": 1, "refused": 1, "reported": 3,
                      "cancelled": 1, "forgotten": 0}
    [report] = daemon.bodies("/report")
    assert sorted(j["hpc_job_id"] for j in report["jobs"]) == ["400", "500", "501"]
    # The refused job did not stop the ones after it.
    assert scheduler.submitted == ["dassco.g1.load.1", "dassco.g3.load.1"]
    assert daemon.bodies("/submitted") == [
        {"asset_guid": g, "job": "load", "attempt": 1, "hpc_job_id": i}
        for g, i in (("g0", "400"), ("g1", "500"), ("g3", "501"))
    ]
    assert daemon.bodies("/refused") == [{
        "asset_guid": "g2", "job": "load", "attempt": 1, "exit_status": 1,
        "message": "qsub: submit error (queue limit)",
    }]  # fmt: skip
    assert scheduler.cancelled == ["399"]
    assert any("refused" in line for line in lines)


def test_a_live_job_without_an_outcome_is_reported_with_its_exit_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "dassco.g1.load.1.exit").write_text(
        "status=143 signal=TERM elapsed=61 limit=60 job=55\n")
    scheduler = FakeScheduler([Seen("55", "dassco.g1.load.1", "UNKNOWN", reason="ended"),
                               Seen("56", "dassco.g2.load.1", "RUNNING")], refuse=set())

    class Live(FakeDaemon):
        def get(self, path: str) -> Any:
            return [{"asset_guid": g, "job": "load", "attempt": 1, "hpc_job_id": i,
                     "name": f"dassco.{g}.load.1", "status": "QUEUED"}
                    for g, i in (("g1", "55"), ("g2", "56"), ("g3", "57"))]

    daemon = Live([], cancel=[])
    agent = Agent("local", cast(CallbackClient, daemon), scheduler, state,
                  log=lambda line: None)
    agent.run_once()
    [report] = daemon.bodies("/report")
    by_id = {job["hpc_job_id"]: job for job in report["jobs"]}
    assert by_id["55"]["state"] == "UNKNOWN"
    assert by_id["55"]["exit_file"] == "status=143 signal=TERM elapsed=61 limit=60 job=55"
    assert "exit_file" not in by_id["56"]  # the scheduler says how it is
    # Gone from the scheduler, and no exit file (yet): the daemon hears just that.
    assert by_id["57"]["state"] == "UNKNOWN" and by_id["57"]["exit_file"] is None


def test_a_submit_command_that_does_not_answer_ends_the_run(tmp_path: Path) -> None:
    class Hung(FakeScheduler):
        def submit(self, script: Path, folder: Path, name: str) -> str:
            raise SchedulerFailed("qsub did not answer within 120 s")

    daemon = FakeDaemon([claimed("g1")], cancel=[])
    agent = Agent("local", cast(CallbackClient, daemon), Hung([], set()), tmp_path / "state",
                  log=lambda line: None)
    with pytest.raises(SchedulerFailed):
        agent.run_once()
    # Nothing is reported for it: the lease runs out and a later run looks it up by name.
    assert daemon.bodies("/refused") == [] and daemon.bodies("/submitted") == []


def test_the_files_of_settled_assets_are_removed_as_the_daemon_asks(tmp_path: Path) -> None:
    state, work = tmp_path / "state", tmp_path / "work"
    for guid in ("g1", "g2", "g3"):
        (work / guid / "derivatives").mkdir(parents=True)
        (work / guid / "derivatives" / "a.jpg").write_bytes(b"jpeg")
    state.mkdir()
    for name in ("dassco.g1.load.1", "dassco.g1.load.2", "dassco.g1.ocr.1", "dassco.g3.load.1"):
        for suffix in (".sh", ".out", ".err", ".exit"):
            (state / f"{name}{suffix}").write_text("x")
    outside = tmp_path / "precious"
    outside.mkdir()
    (work / "g1" / "link").symlink_to(outside)  # a link in the folder: never followed

    def order(guid: str, work_dir: Path | str, *names: str) -> dict[str, Any]:
        return {"asset_guid": guid, "work_dir": str(work_dir), "names": list(names)}

    daemon = FakeDaemon([], cancel=[], forget=[
        order("g1", work / "g1", "dassco.g1.load.1", "dassco.g1.load.2", "dassco.g1.ocr.1"),
        order("g2", work / "g2"),
        order("gone", work / "gone", "dassco.gone.load.1"),  # removed by an earlier run
        order("g3", work / "g3" / ".." / "g3", "dassco.g3.load.1"),  # not a plain path
        order("g3", tmp_path, "dassco.g3.load.1"),  # not the asset's folder
        order("g3", work / "g3", "dassco.g1.load.1"),  # another asset's job
    ])
    lines: list[str] = []
    agent = Agent("local", cast(CallbackClient, daemon), FakeScheduler([], set()), state,
                  log=lines.append)
    counts = agent.run_once()
    assert counts["forgotten"] == 3
    assert daemon.bodies("/forgotten") == [{"asset_guids": ["g1", "g2", "gone"]}]
    assert not (work / "g1").exists() and not (work / "g2").exists()
    assert outside.is_dir()
    assert sorted(p.name for p in state.iterdir()) == [
        f"dassco.g3.load.1{suffix}" for suffix in (".err", ".exit", ".out", ".sh")]
    assert (work / "g3" / "derivatives" / "a.jpg").exists()
    assert sum("malformed" in line for line in lines) == 3


def test_a_run_with_nothing_to_remove_tells_the_daemon_nothing(tmp_path: Path) -> None:
    daemon = FakeDaemon([], cancel=[])
    agent = Agent("local", cast(CallbackClient, daemon), FakeScheduler([], set()),
                  tmp_path / "state", log=lambda line: None)
    agent.run_once()
    assert daemon.bodies("/forgotten") == []

"""The direct scheduler's programs run on their own, without the scheduler: the shell wrapper
(wrapper.sh) and the warm launcher (warm_server.py), as the scheduler starts them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dasscod.cluster.direct.folder import ABANDONED
from dasscod.cluster.direct.scheduler import WRAPPER, WRAPPER_NAME
from dasscod.cluster.direct.warm import WARM_NAME, WARM_SERVER
from dasscod.cluster.direct.warm_server import exit_code

JOB = """
import sys, time
print("out", sys.argv[1:])
print("err", file=sys.stderr)
time.sleep(float(sys.argv[2]) if sys.argv[1] == "sleep" else 0)
sys.exit(int(sys.argv[2]) if sys.argv[1] == "exit" else 0)
"""


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "job.py").write_text(JOB)
    return tmp_path / "modules"


def _wrapper(folder: Path, limit: int, kill_after: int, *argv: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        ["sh", "-c", WRAPPER, WRAPPER_NAME, str(folder), str(limit), str(kill_after),
         str(folder.parent / "work"), *argv],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip


def test_the_wrapper_claims_its_folder_and_records_the_jobs_exit_and_output(
    tmp_path: Path, modules: Path
) -> None:
    folder = tmp_path / "job"
    _wrapper(folder, 10, 1, "env", f"PYTHONPATH={modules}", sys.executable, "-m", "job",
             "exit", "3")  # fmt: skip
    assert (folder / "exit").read_text() == "3\n"
    assert int((folder / "pid").read_text()) > 0
    assert (folder / "stdout").read_text() == "out ['exit', '3']\n"
    assert (folder / "stderr").read_text() == "err\n"
    assert not (folder / "pid.tmp").exists()
    assert (tmp_path / "work").is_dir()


def test_the_wrapper_stops_a_job_at_its_time_limit(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    started = time.monotonic()
    _wrapper(folder, 1, 1, "sleep", "20")
    assert (folder / "exit").read_text() == "124\n"  # `timeout`'s status after its SIGTERM
    assert time.monotonic() - started < 10


def test_the_wrapper_runs_nothing_in_a_folder_the_daemon_abandoned(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "pid").write_text(ABANDONED + "\n")
    marker = tmp_path / "ran"
    out = _wrapper(folder, 10, 1, "touch", str(marker))
    assert "could not claim" in out
    assert not marker.exists()
    assert not (folder / "exit").exists()


def test_the_warm_server_says_which_modules_it_could_prepare_and_forks_jobs(
    tmp_path: Path, modules: Path
) -> None:
    wanted = {"job": ["json"], "broken": ["no_such_module_here"]}
    server = subprocess.Popen(
        [sys.executable, "-c", WARM_SERVER, WARM_NAME, "1", json.dumps(wanted)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
        env={**os.environ, "PYTHONPATH": str(modules)},  # as the jobs' PYTHON* environment
    )  # fmt: skip
    assert server.stdin is not None and server.stdout is not None
    try:
        hello = json.loads(server.stdout.readline())
        assert hello["ready"] == ["job"]
        assert "no_such_module_here" in hello["failed"]["broken"]

        folder = tmp_path / "job"
        folder.mkdir()
        request = {"state": str(folder), "limit": 10, "workdir": str(tmp_path / "work"),
                   "argv": [sys.executable, "-m", "job", "exit", "5"],
                   "env": {"PYTHONPATH": str(modules)}}  # fmt: skip
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        reply = json.loads(server.stdout.readline())
        assert (folder / "pid").read_text().strip() == str(reply["pid"])
        deadline = time.monotonic() + 20
        while not (folder / "exit").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (folder / "exit").read_text() == "5\n"
        assert (folder / "stdout").read_text() == "out ['exit', '5']\n"
        assert "started from the warm launcher" in (folder / "wrapper.log").read_text()

        taken = tmp_path / "taken"
        taken.mkdir()
        (taken / "pid").write_text(ABANDONED + "\n")
        server.stdin.write(json.dumps({**request, "state": str(taken)}) + "\n")
        server.stdin.flush()
        assert "did not claim" in json.loads(server.stdout.readline())["error"]
    finally:
        server.stdin.close()  # end of input ends the launcher
        assert server.wait(timeout=10) == 0


def test_exit_codes_are_reported_as_timeout_and_the_shell_report_them() -> None:
    assert exit_code(3 << 8, timed_out=False, killed=False) == 3
    assert exit_code(signal.SIGKILL, timed_out=False, killed=False) == 128 + signal.SIGKILL
    assert exit_code(signal.SIGTERM, timed_out=True, killed=False) == 124
    assert exit_code(signal.SIGKILL, timed_out=True, killed=True) == 128 + signal.SIGKILL

"""A direct job's state folder, ``<state_dir>/<job name>/``, and what its files say about
the job (the layout and the claim protocol: see the package docstring)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

import psutil

from dasscod.cluster.base import JobInfo, JobSpec, SchedulerState

#: Grace between `timeout`'s SIGTERM and its SIGKILL when a job overruns or is cancelled.
KILL_AFTER_S = 30
#: The wrapper's `date +%s` and psutil's process start time disagree by rounding (up to ~2 s);
#: a reused pid would have to come round within this window to fool the check.
START_TOLERANCE_S = 3.0
#: What `timeout` exits with when it stopped the job: 124 after SIGTERM, 128+9 after SIGKILL.
TIMEOUT_EXITS = frozenset({124, 128 + signal.SIGKILL})
#: Job names become folder names: no separators, no dot files.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")

ABANDONED: Final = "abandoned"
Claim = int | Literal["abandoned"] | None
VANISHED = "process vanished without an exit status (killed?)"


class JobFolder:
    """One job's state folder and the files in it (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self, spec: JobSpec) -> bool:
        """Create the folder exclusively and record the spec; False if it existed already."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.path.mkdir()
        except FileExistsError:
            return False
        (self.path / "spec.json").write_text(json.dumps(spec_record(spec), indent=2) + "\n")
        return True

    def claim(self) -> Claim:
        """The wrapper's pid, ABANDONED, or None while nobody has claimed the folder."""
        text = self._read("pid")
        if text is None:
            return None
        return ABANDONED if text == ABANDONED else parse_pid(text) or ABANDONED

    def settle(self) -> Claim:
        """Abandon the launch unless the wrapper claimed the folder first; return who won."""
        mine = self.path / "pid.abandoned"
        mine.write_text(ABANDONED + "\n")
        try:
            (self.path / "pid").hardlink_to(mine)
        except FileExistsError:
            pass
        finally:
            mine.unlink(missing_ok=True)
        return self.claim()

    def started(self) -> float | None:
        return _number(self._read("started"))

    def exit_status(self) -> int | None:
        value = _number(self._read("exit"))
        return int(value) if value is not None else None

    def run_time(self) -> float | None:
        """From the wrapper's start to its exit file."""
        started = self.started()
        try:
            ended = (self.path / "exit").stat().st_mtime
        except FileNotFoundError:
            return None
        return ended - started if started is not None else None

    def time_limit(self) -> int | None:
        try:
            limit = json.loads(self._read("spec.json") or "{}").get("time_limit_s")
        except ValueError:
            return None
        return limit if isinstance(limit, int) else None

    def cancelled(self) -> bool:
        return (self.path / "cancelled").exists()

    def mark_cancelled(self) -> None:
        (self.path / "cancelled").write_text(datetime.now(UTC).isoformat() + "\n")

    def wrapper_log(self) -> str:
        return (self._read("wrapper.log") or "")[-500:]

    def _read(self, name: str) -> str | None:
        try:
            return (self.path / name).read_text().strip()
        except FileNotFoundError:
            return None


def inspect_folder(folder: JobFolder, name: str, *, launching: bool) -> JobInfo:
    """The job's state from its folder; settles an unclaimed launch unless it is under way."""
    claim = folder.claim()
    if claim is None and not launching:
        claim = folder.settle()
    if claim is None:
        return JobInfo("", name, SchedulerState.PENDING, reason="being launched")
    if claim == ABANDONED:
        return JobInfo(
            "", name, SchedulerState.FAILED,
            reason=f"never started: its submission was interrupted before the job's process "
            f"recorded itself in {folder.path}",
        )  # fmt: skip
    code = folder.exit_status()
    if code is None:
        if alive(claim, folder.started()):
            return JobInfo(str(claim), name, SchedulerState.RUNNING)
        code = folder.exit_status()  # it may have finished between the two looks
        if code is None:
            return JobInfo(str(claim), name, SchedulerState.FAILED, reason=VANISHED)
    return _finished(folder, name, str(claim), code)


def _finished(folder: JobFolder, name: str, job_id: str, code: int) -> JobInfo:
    if folder.cancelled():
        return JobInfo(job_id, name, SchedulerState.CANCELLED, code, "cancelled")
    if code == 0:
        return JobInfo(job_id, name, SchedulerState.COMPLETED, 0)
    limit = folder.time_limit()
    ran = folder.run_time()
    if code in TIMEOUT_EXITS and limit is not None and ran is not None and ran >= limit:
        return JobInfo(job_id, name, SchedulerState.TIMEOUT, code,
                       f"exceeded its time limit of {limit} s")
    return JobInfo(job_id, name, SchedulerState.FAILED, code,
                   f"{_describe(code)}; output in {folder.path}")


def _describe(code: int) -> str:
    """Exit statuses as `timeout` and the shell use them."""
    if code == 125:
        return "the job could not be started (see its stderr)"
    if code == 126:
        return "the command could not be executed"
    if code == 127:
        return "command not found"
    if code > 128:
        try:
            return f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    return f"exit status {code}"


def alive(pid: int, started: float | None) -> bool:
    """Whether `pid` is a live process that started when the wrapper said it did."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        created = process.create_time()
    except psutil.Error:
        return False
    return started is None or abs(created - started) <= START_TOLERANCE_S


def cancel_job(folder: JobFolder, pid: int) -> None:
    if folder.exit_status() is not None:
        return  # finished already: do not relabel it as cancelled
    folder.mark_cancelled()
    with contextlib.suppress(ProcessLookupError):  # ended meanwhile
        os.killpg(pid, signal.SIGTERM)


def spec_record(spec: JobSpec) -> dict[str, object]:
    return {
        "name": spec.name,
        "argv": list(spec.argv),
        "workdir": str(spec.workdir),
        "env_names": sorted(spec.env),
        "time_limit_s": spec.time_limit_s,
        "cpus": spec.cpus,  # recorded, not enforced: the direct scheduler shares one machine
        "memory_mb": spec.memory_mb,
        "submitted_at": datetime.now(UTC).isoformat(),
    }


def parse_pid(text: str) -> int | None:
    return int(text) if text.isdigit() and int(text) > 0 else None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None

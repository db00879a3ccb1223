"""Pure functions over the text Slurm's commands print, and the argument checks that keep
untrusted text off their command lines.

They are kept apart from the adapter so they can be tested against recorded outputs
(tests/slurm/recorded/) without a cluster, and so every oddity of the output -- a job id that
left the queue, array ids like ``123_4``, ``CANCELLED by 0``, states we have never seen -- is
handled in one place.

Output formats (both chosen by the adapter, one record per line, fields separated by ``|``,
the job name *last* so that a name containing ``|`` -- not ours, we never submit one, but
another user's -- cannot shift the other fields)::

    squeue --noheader -O JobID:0|,State:0|,exit_code:0|,Reason:0|,Name:0|
        4|CANCELLED|15|None|dassco.g2.run.1|
    sacct -X -n -P -o JobID,State,ExitCode,Reason,JobName
        2|FAILED|3:0|NonZeroExitCode|dassco.g1.fail.1

squeue's ``exit_code`` is the raw wait status (768 = exit 3, 15 = killed by SIGTERM); sacct's
``ExitCode`` is ``exit:signal``. Both become one number the shell's way: the exit status, or
128 + the signal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dasscod.cluster import base
from dasscod.cluster.base import JobInfo, SchedulerState

#: Our job names (``dassco.{guid}.{job}.{attempt}``) and anything else we put on a command line
#: as a name: no separators Slurm or the shell would read (``,`` splits lists), no options.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
#: A job id as Slurm prints it: plain, array task (``123_4``) or heterogeneous component.
JOB_ID = re.compile(r"[0-9]+(?:_[0-9]+|\+[0-9]+)?")

#: The format the adapter asks squeue for; parse_squeue reads exactly this.
SQUEUE_FORMAT = "JobID:0|,State:0|,exit_code:0|,Reason:0|,Name:0|"
#: The format of the orphan sweep's squeue (the cluster user's live jobs and their scripts).
OURS_FORMAT = "JobID:0|,State:0|,Command:0|,Name:0|"
#: The fields the adapter asks sacct for (with -P); parse_sacct reads exactly these.
SACCT_FIELDS = "JobID,State,ExitCode,Reason,JobName"

#: Slurm's job states (squeue's long form and sacct) in our vocabulary. A job that has not
#: started yet is PENDING; one that started and has not ended -- including suspended, or
#: completing (its final state and exit code are still to come) -- is RUNNING.
STATES: dict[str, SchedulerState] = {
    "PENDING": SchedulerState.PENDING,
    "CONFIGURING": SchedulerState.PENDING,
    "REQUEUED": SchedulerState.PENDING,
    "REQUEUE_HOLD": SchedulerState.PENDING,
    "REQUEUE_FED": SchedulerState.PENDING,
    "RESV_DEL_HOLD": SchedulerState.PENDING,
    "RUNNING": SchedulerState.RUNNING,
    "COMPLETING": SchedulerState.RUNNING,
    "SUSPENDED": SchedulerState.RUNNING,
    "STOPPED": SchedulerState.RUNNING,
    "SIGNALING": SchedulerState.RUNNING,
    "STAGE_OUT": SchedulerState.RUNNING,
    "RESIZING": SchedulerState.RUNNING,
    "COMPLETED": SchedulerState.COMPLETED,
    "FAILED": SchedulerState.FAILED,
    "BOOT_FAIL": SchedulerState.FAILED,
    "SPECIAL_EXIT": SchedulerState.FAILED,
    "PREEMPTED": SchedulerState.FAILED,
    "CANCELLED": SchedulerState.CANCELLED,
    "TIMEOUT": SchedulerState.TIMEOUT,
    "DEADLINE": SchedulerState.TIMEOUT,
    "OUT_OF_MEMORY": SchedulerState.OUT_OF_MEMORY,
    "NODE_FAIL": SchedulerState.NODE_FAIL,
}

#: squeue's answer when the only job id asked for is no longer in slurmctld's memory (with
#: several ids it prints the known ones and exits 0).
INVALID_JOB_ID = "Invalid job id specified"
#: sacct's answer on a cluster without slurmdbd; `sacct --completion` may still work.
ACCOUNTING_DISABLED = "accounting storage is disabled"

#: sbatch messages that no retry can fix: the request itself is wrong for this cluster.
#: Anything else (controller unreachable, queue or association limits reached) may pass.
PERMANENT_SUBMIT_ERRORS = (
    "invalid partition",
    "invalid account",
    "invalid qos",
    "requested node configuration is not available",
    "memory specification can not be satisfied",
    "requested time limit is invalid",
    "time limit exceeds",
    "invalid job name",
    "unrecognized option",
    "invalid option",
    "invalid directive",
    "batch script contains dos line breaks",
    "invalid user id",
    "invalid group id",
)


@dataclass(frozen=True)
class Record:
    """One job as squeue or sacct printed it."""

    job_id: str
    name: str
    state: SchedulerState
    raw_state: str
    exit_code: int | None
    reason: str | None

    def info(self) -> JobInfo:
        reason = self.reason
        if self.state is SchedulerState.UNKNOWN:
            reason = f"Slurm state {self.raw_state!r}" + (f": {reason}" if reason else "")
        elif self.raw_state != self.state.value and self.state.finished:
            reason = self.raw_state + (f": {reason}" if reason else "")
        return JobInfo(self.job_id, self.name, self.state, self.exit_code, reason)


def parse_state(text: str) -> tuple[SchedulerState, str]:
    """Our state for Slurm's state text, and that text cleaned: sacct prints ``CANCELLED by
    1234`` (the uid that cancelled) and, in fixed-width output, truncates with a ``+``."""
    raw = text.strip()
    word = raw.split(" ", 1)[0].rstrip("+").upper()
    return STATES.get(word, SchedulerState.UNKNOWN), raw


def parse_wait_status(text: str) -> int | None:
    """squeue's ``exit_code``: a raw wait status (exit << 8 | signal)."""
    text = text.strip()
    if not text.isdigit():
        return None
    status = int(text)
    signal = status & 0x7F
    return 128 + signal if signal else (status >> 8) & 0xFF


def parse_exit_code(text: str) -> int | None:
    """sacct's ``ExitCode``: ``exit:signal``."""
    code, _, signal = text.strip().partition(":")
    if not code.isdigit():
        return None
    if signal.isdigit() and int(signal):
        return 128 + int(signal)
    return int(code)


def parse_squeue(stdout: str) -> list[Record]:
    """Records of `squeue --noheader -O SQUEUE_FORMAT`; lines that do not fit are skipped."""
    return _parse(stdout, parse_wait_status)


def parse_sacct(stdout: str) -> list[Record]:
    """Records of `sacct -X -n -P -o SACCT_FIELDS` (also with --completion, which leaves
    Reason empty). Job steps (``123.batch``) are skipped should -X be ignored."""
    return _parse(stdout, parse_exit_code)


def _parse(stdout: str, exit_code: Callable[[str], int | None]) -> list[Record]:
    records: list[Record] = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.endswith("|"):  # squeue's suffix after the last field
            line = line[:-1]
        fields = line.split("|", 4)
        if len(fields) != 5 or not JOB_ID.fullmatch(fields[0].strip()):
            continue
        job_id, state_text, code_text, reason, name = (f.strip() for f in fields)
        state, raw = parse_state(state_text)
        records.append(
            Record(
                job_id=job_id,
                name=name,
                state=state,
                raw_state=raw,
                exit_code=exit_code(code_text) if state.finished else None,
                reason=None if reason in ("", "None", "(null)") else reason,
            )
        )
    return records


def parse_ours(stdout: str, script_dir: str) -> list[JobInfo]:
    """Jobs of `squeue --noheader --me -O OURS_FORMAT` whose batch script is
    `<script_dir>/<name>.sh`: the jobs this daemon's adapter submitted (another daemon, or a
    person, using the same account has other scripts). Their state and name only."""
    prefix = script_dir.rstrip("/") + "/"
    found: list[JobInfo] = []
    for line in stdout.splitlines():
        line = line.strip().removesuffix("|")
        fields = line.split("|", 2)
        if len(fields) != 3 or not JOB_ID.fullmatch(fields[0]):
            continue
        job_id, state_text, rest = fields
        if not rest.startswith(prefix):
            continue
        name = rest[len(prefix):].split(".sh|", 1)[0]
        if rest != f"{prefix}{name}.sh|{name}" or not NAME.fullmatch(name):
            continue
        state, _ = parse_state(state_text)
        if not state.finished:
            found.append(JobInfo(job_id, name, state))
    return found


def parse_job_id(stdout: str) -> str | None:
    """The job id from `sbatch --parsable`: ``id`` or ``id;cluster``, on the last line (sbatch
    may print warnings before it)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    job_id = lines[-1].split(";", 1)[0]
    return job_id if JOB_ID.fullmatch(job_id) else None


def submit_error_is_permanent(stderr: str) -> bool:
    """Whether sbatch's complaint is about the request itself (retrying cannot help)."""
    text = stderr.lower()
    return any(pattern in text for pattern in PERMANENT_SUBMIT_ERRORS)


def best_by_name(records: Iterable[Record], names: Iterable[str]) -> dict[str, Record]:
    """One record per wanted name: a job that has not finished wins (it is the one that can
    still report), else the newest (highest) job id. Records of other names are dropped --
    `sacct --completion` ignores --name, and another user may pick the same name."""
    return base.best_by_name(records, names, _rank)


def _rank(record: Record) -> tuple[bool, int, int]:
    numbers = [int(n) for n in re.findall(r"[0-9]+", record.job_id)] + [0]
    return (not record.state.finished, numbers[0], numbers[1])

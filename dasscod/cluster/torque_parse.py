"""Pure functions over the text Torque's commands print (and what Slurm's Torque wrappers,
Debian's ``slurm-wlm-torque``, print in their place), and the checks that keep untrusted text
off their command lines. Kept apart from the adapter so they can be tested against recorded
outputs (tests/slurm/recorded/torque/) without a cluster.

``qstat -f -1 [ids]`` prints one block per job: a ``Job Id:`` header, then one
``attribute = value`` line per attribute, indented, and a blank line::

    Job Id: 123.server.example.org          (the wrapper: "Job Id:<TAB>123")
        Job_Name = dassco.g1.ingest.1
        job_state = C
        exit_status = 0

Real Torque folds long values onto continuation lines starting with a tab unless ``-1`` is
given; the parser joins them anyway. Only ``Job_Name``, ``job_state``, ``exit_status`` and
``comment`` are used.

``job_state`` is one letter: Q queued, H held, W waiting for its start time, T being moved --
all PENDING here; R running, E exiting (its exit status is still to come), S suspended -- all
RUNNING; C completed (ended, however it ended). For C, how it ended is in ``exit_status``:

- 0 the script succeeded; 1..255 its exit status (FAILED);
- 256 + n: its top process was killed by signal n (Torque reports 271, SIGTERM, for a job
  deleted with qdel while running, and some versions for one over its walltime) -- FAILED with
  128 + n, the shell's way, as the Slurm adapter reports signals;
- negative: Torque's own JOB_EXEC_* codes: -11 walltime exceeded (TIMEOUT), -12 CPU time
  exceeded (TIMEOUT), -10 memory limit (OUT_OF_MEMORY), the others mean the job could not be
  started or was aborted (FAILED, no exit code).

The Slurm wrappers never print ``exit_status`` (qstat builds its output from slurmctld's job
table and prints C for every ended job, completed, failed, cancelled or timed out alike), and
real Torque forgets a job ``keep_completed`` seconds after it ended. So every job script also
writes an *exit file* as its last act (``<state_dir>/<name>.exit``, one line, see
batch.EXIT_RECORD)::

    status=143 signal=TERM elapsed=61 limit=60 job=4117

and the adapter's status query reads the exit files of the jobs it asks about in the same
command as qstat (see parse_query). qstat's ``exit_status``, when there is one, wins (only
Torque itself knows a walltime kill for certain); else the exit file says how the job ended;
a job with neither (killed with SIGKILL, or the file not written) stays UNKNOWN with the
reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from dasscod.cluster import base
from dasscod.cluster.base import JobInfo, SchedulerState
from dasscod.cluster.slurm_parse import PERMANENT_SUBMIT_ERRORS as SLURM_PERMANENT

#: Our job names (``dassco.{guid}.{job}.{attempt}``) and anything else we put into a directive
#: as a name: no whitespace, no ``,`` or ``:`` (Torque list and host separators), no option.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,229}")
#: A job id as Torque prints it: ``123``, ``123.server.domain``, array task ``123[4].server``
#: (and ``123[]`` for an array as a whole). The Slurm wrappers print the bare number.
JOB_ID = re.compile(r"[0-9]+(?:\[[0-9]*\])?(?:\.[A-Za-z0-9][A-Za-z0-9.-]*)?")
#: The part of a job id that identifies the job on its server: sequence number and array index.
JOB_KEY = re.compile(r"[0-9]+(?:\[[0-9]*\])?")
#: A path that survives every command line it is put on, including the Slurm wrapper's qsub,
#: which pastes -o/-e and the script path unquoted into a shell command: no spaces, quotes or
#: shell characters, no ``:`` (Torque reads ``host:path``), no ``%`` (Slurm file patterns).
PATH = re.compile(r"[A-Za-z0-9._/+-]+")

#: qstat's complaint (on stderr, exit status 153) about a job it does not know, e.g.
#: ``qstat: Unknown Job Id Error 123.server``; qdel says ``qdel: Unknown Job Id 123.server``.
UNKNOWN_JOB = "unknown job id"
#: qdel's complaint about a job that has already ended (Torque keeps it, state C).
#: ``qdel: Request invalid for state of job MSG=invalid state for job - COMPLETE 123.server``
INVALID_STATE = "invalid state for job"
#: Torque's exit status for "no such job" (PBSE_UNKJOBID); the wrapper's qstat exits with it,
#: silently, when nothing it was asked for exists.
EXIT_UNKNOWN_JOB = 153

STATES: dict[str, SchedulerState] = {
    "Q": SchedulerState.PENDING,
    "H": SchedulerState.PENDING,
    "W": SchedulerState.PENDING,
    "T": SchedulerState.PENDING,
    "R": SchedulerState.RUNNING,
    "E": SchedulerState.RUNNING,
    "S": SchedulerState.RUNNING,
}
#: States of a job that has ended (F: PBS Pro's finished job, in case one answers).
ENDED = frozenset("CF")

#: Torque's JOB_EXEC_* codes (negative exit_status): the job never ran to its own end.
EXEC_CODES: dict[int, tuple[SchedulerState, str]] = {
    -1: (SchedulerState.FAILED, "job exec failed before files, no retry"),
    -2: (SchedulerState.FAILED, "job exec failed after files, no retry"),
    -3: (SchedulerState.FAILED, "job exec failed, retry"),
    -4: (SchedulerState.FAILED, "job aborted on MOM initialisation"),
    -5: (SchedulerState.FAILED, "job aborted on MOM init, checkpoint, no migrate"),
    -6: (SchedulerState.FAILED, "job aborted on MOM init, checkpoint, ok migrate"),
    -7: (SchedulerState.FAILED, "job restart failed"),
    -8: (SchedulerState.FAILED, "exec() of the job script failed"),
    -9: (SchedulerState.FAILED, "could not create or open the stdout/stderr files"),
    -10: (SchedulerState.OUT_OF_MEMORY, "job exceeded a memory limit"),
    -11: (SchedulerState.TIMEOUT, "job exceeded its walltime limit"),
    -12: (SchedulerState.TIMEOUT, "job exceeded its CPU time limit"),
    -13: (SchedulerState.FAILED, "could not create the job's cgroups"),
    -14: (SchedulerState.FAILED, "prologue failed"),
}

#: qsub messages no retry can fix (Torque's own, lower case), besides sbatch's (the wrapper
#: passes those on). Anything else -- server unreachable, queue full -- may pass.
PERMANENT_SUBMIT_ERRORS = (
    "unknown queue",
    "unknown resource",
    "illegal attribute or resource value",
    "job exceeds queue resource limits",
    "invalid account",
    "bad uid for job execution",
    "unauthorized request",
    "illegal -",
    "invalid option",
    "unknown option",
    "script file cannot be loaded",
    *SLURM_PERMANENT,
)


@dataclass(frozen=True)
class Record:
    """One job block of ``qstat -f``."""

    job_id: str
    name: str
    raw_state: str
    exit_status: int | None
    comment: str | None = None

    @property
    def key(self) -> str:
        return job_key(self.job_id) or self.job_id

    @property
    def ended(self) -> bool:
        return self.raw_state in ENDED

    def info(self, job_id: str | None = None, exit_record: ExitRecord | None = None) -> JobInfo:
        """Our view of the job, under `job_id` (the id as the caller knows it) if given; an
        ended job without ``exit_status`` takes its outcome from `exit_record` if given."""
        job_id = job_id or self.job_id
        if not self.ended:
            state = STATES.get(self.raw_state, SchedulerState.UNKNOWN)
            reason = None
            if state is SchedulerState.UNKNOWN:
                reason = f"Torque job state {self.raw_state!r}"
            elif self.raw_state in ("H", "W", "E", "S", "T"):
                reason = f"Torque job state {self.raw_state}"
            # A running job's comment only says where and when it started.
            comment = None if state is SchedulerState.RUNNING else self.comment
            return JobInfo(job_id, self.name, state, None, _with_comment(reason, comment))
        if self.exit_status is None and exit_record is not None:
            state, code, reason = exit_record.outcome()
        else:
            state, code, reason = exit_outcome(self.exit_status)
        return JobInfo(job_id, self.name, state, code, _with_comment(reason, self.comment))


def exit_outcome(exit_status: int | None) -> tuple[SchedulerState, int | None, str | None]:
    """State, exit code and reason of an ended job (state C) from its ``exit_status``."""
    if exit_status is None:
        return (SchedulerState.UNKNOWN, None,
                "job ended (Torque state C) but qstat gives no exit_status, so how is unknown")
    if exit_status == 0:
        return SchedulerState.COMPLETED, 0, None
    if 0 < exit_status < 256:
        return SchedulerState.FAILED, exit_status, None
    if exit_status >= 256:
        signal = exit_status - 256
        return (SchedulerState.FAILED, 128 + signal,
                f"killed by signal {signal} (exit_status {exit_status}"
                + ("; Torque reports this for qdel and, in some versions, for walltime"
                   if signal == 15 else "") + ")")
    state, meaning = EXEC_CODES.get(exit_status, (SchedulerState.FAILED, "Torque error"))
    return state, None, f"{meaning} (exit_status {exit_status})"


#: Signals the job script traps (batch.EXIT_RECORD) and their shell exit statuses.
STOP_SIGNALS = {"TERM": 15, "INT": 2}
#: A job stopped by a signal this close to its walltime (seconds) was stopped for it: the
#: script's clock starts a moment after the scheduler's.
WALLTIME_SLACK_S = 2
#: The line before qstat's output in the status query's stdout (see parse_query).
QUERY_MARK = "dasscod-qstat"
#: The start of each exit-file line in the status query's stdout.
EXIT_LINE = "dasscod-exit"
#: The orphan sweep's line per job script in the state folder.
SCRIPT_LINE = "dasscod-script"


@dataclass(frozen=True)
class ExitRecord:
    """A job's exit file: the exit status of its command and what the script saw."""

    status: int
    signal: str | None = None  # TERM or INT if the script itself received one
    elapsed_s: int | None = None
    limit_s: int | None = None
    job_id: str | None = None

    def outcome(self) -> tuple[SchedulerState, int | None, str | None]:
        """State, exit code and reason. A command stopped by SIGTERM/SIGINT (the script
        trapped it, or the status says so) at its walltime timed out; earlier, it was
        deleted (qdel), preempted or its node shut down, which the file cannot tell apart."""
        if self.status == 0:
            return SchedulerState.COMPLETED, 0, None
        signal = self.signal or next(
            (name for name, number in STOP_SIGNALS.items() if self.status == 128 + number), None
        )
        after = f" after {self.elapsed_s} s" if self.elapsed_s is not None else ""
        if signal is not None:
            if (self.elapsed_s is not None and self.limit_s is not None
                    and self.elapsed_s + WALLTIME_SLACK_S >= self.limit_s):
                return (SchedulerState.TIMEOUT, self.status,
                        f"stopped by SIG{signal}{after}, at its walltime of {self.limit_s} s "
                        "(the job's exit file)")
            return (SchedulerState.FAILED, self.status,
                    f"stopped by SIG{signal}{after}, before its walltime (qdel, preemption or "
                    "a node shutdown; the job's exit file)")
        if self.status > 128:
            return (SchedulerState.FAILED, self.status,
                    f"its command was killed by signal {self.status - 128}{after} "
                    "(the job's exit file)")
        return SchedulerState.FAILED, self.status, None


def parse_exit_record(text: str) -> ExitRecord | None:
    """An exit file's ``key=value`` line; None if it has no usable ``status``."""
    fields = dict(word.partition("=")[::2] for word in text.split() if "=" in word)

    def number(key: str) -> int | None:
        value = fields.get(key, "")
        return int(value) if re.fullmatch(r"-?[0-9]{1,9}", value) else None

    status = number("status")
    if status is None:
        return None
    signal = fields.get("signal")
    job_id = fields.get("job", "")
    return ExitRecord(
        status=status,
        signal=signal if signal in STOP_SIGNALS else None,
        elapsed_s=number("elapsed"),
        limit_s=number("limit"),
        job_id=job_id if JOB_ID.fullmatch(job_id) else None,
    )


def parse_query(stdout: str) -> tuple[dict[str, ExitRecord], str] | None:
    """The adapter's status query prints one ``dasscod-exit NAME LINE`` per exit file found,
    then QUERY_MARK, then qstat's output: the exit records by job name and qstat's text.
    None when the mark is missing (the query's shell failed before qstat)."""
    lines = stdout.split("\n")
    if QUERY_MARK not in lines:
        return None
    at = lines.index(QUERY_MARK)
    records: dict[str, ExitRecord] = {}
    for line in lines[:at]:
        tag, _, rest = line.partition(" ")
        name, _, text = rest.partition(" ")
        record = parse_exit_record(text) if tag == EXIT_LINE and NAME.fullmatch(name) else None
        if record is not None:
            records[name] = record
    return records, "\n".join(lines[at + 1 :])


def parse_scripts(stdout: str) -> tuple[set[str], str] | None:
    """The orphan sweep prints one ``dasscod-script NAME`` per job script, then QUERY_MARK,
    then qstat's output: the names and qstat's text (None when the mark is missing)."""
    lines = stdout.split("\n")
    if QUERY_MARK not in lines:
        return None
    at = lines.index(QUERY_MARK)
    names = set()
    for line in lines[:at]:
        tag, _, name = line.partition(" ")
        if tag == SCRIPT_LINE and NAME.fullmatch(name):
            names.add(name)
    return names, "\n".join(lines[at + 1 :])


def job_key(job_id: str) -> str | None:
    """``123[4]`` for ``123[4].server.domain``: what identifies the job whichever way the
    server's name is written (qsub and qstat may print it differently)."""
    match = JOB_KEY.match(job_id.strip())
    return match.group(0) if match else None


def parse_qstat_full(stdout: str) -> list[Record]:
    """Records of ``qstat -f [-1]`` (Torque's or the Slurm wrapper's). Blocks without a job id
    or job_state are skipped."""
    records: list[Record] = []
    for job_id, attrs in qstat_blocks(stdout):
        state = attrs.get("job_state", "").strip().upper()
        if not JOB_ID.fullmatch(job_id) or not state:
            continue
        exit_text = attrs.get("exit_status", "").strip()
        records.append(
            Record(
                job_id=job_id,
                name=attrs.get("Job_Name", "").strip(),
                raw_state=state[:1],
                exit_status=int(exit_text) if re.fullmatch(r"-?[0-9]+", exit_text) else None,
                comment=attrs.get("comment", "").strip() or None,
            )
        )
    return records


_HEADER = re.compile(r"Job Id:\s*(\S+)\s*$")
_ATTRIBUTE = re.compile(r"\s+([A-Za-z_][A-Za-z0-9_.]*) = ?(.*)$")


def qstat_blocks(stdout: str) -> list[tuple[str, dict[str, str]]]:
    """``qstat -f`` output as (job id, attributes) per job, a folded value joined again."""
    blocks: list[tuple[str, dict[str, str]]] = []
    attrs: dict[str, str] = {}
    last: str | None = None
    for line in stdout.splitlines():
        header = _HEADER.match(line)
        if header:
            attrs, last = {}, None
            blocks.append((header.group(1), attrs))
            continue
        if not blocks or not line.strip():
            last = None
            continue
        attribute = _ATTRIBUTE.match(line)
        if attribute:
            last = attribute.group(1)
            attrs[last] = attribute.group(2)
        elif last is not None and line[:1] in ("\t", " "):
            # A folded value goes on where the line was cut, indentation removed.
            attrs[last] += line.lstrip("\t ")
    return blocks


def only_unknown_jobs(stderr: str) -> bool:
    """Whether every complaint on qstat's stderr is about a job it no longer knows."""
    lines = [line for line in stderr.lower().splitlines() if line.strip()]
    return all(UNKNOWN_JOB in line for line in lines)


def parse_job_id(stdout: str) -> str | None:
    """The job id qsub prints (``123.server`` from Torque, ``123`` from the wrapper) on its
    last line."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines or not JOB_ID.fullmatch(lines[-1]):
        return None
    return lines[-1]


def submit_error_is_permanent(output: str) -> bool:
    """Whether qsub's complaint (stderr, or the wrapper's stdout) is about the request."""
    text = output.lower()
    return any(pattern in text for pattern in PERMANENT_SUBMIT_ERRORS)


def best_by_name(records: Iterable[Record], names: Iterable[str]) -> dict[str, Record]:
    """One record per wanted name: a job that has not ended wins, else the newest (highest)
    job id. Records of other names are dropped."""
    return base.best_by_name(records, names, _rank)


def _rank(record: Record) -> tuple[bool, int, int]:
    numbers = [int(n) for n in re.findall(r"[0-9]+", record.key)] + [-1]
    return (not record.ended, numbers[0], numbers[1])


def _with_comment(reason: str | None, comment: str | None) -> str | None:
    if comment is None:
        return reason
    return f"{reason}: {comment}" if reason else comment

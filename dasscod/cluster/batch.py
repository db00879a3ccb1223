"""What the batch-system adapters (Slurm, Torque) share: their `Dialect` (names, ids, the
submit command), checking a job before anything of it reaches a command or a script, the
script body after the scheduler's directives, the shell snippet that writes the script from
stdin and submits it, and error text from a command's output.

The script travels on stdin and is written 0600 because it holds the job's token; names and
paths are positional arguments of a fixed shell snippet, never part of its text.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import ClassVar

from dasscod.cluster.base import (
    CommandResult,
    JobInfo,
    JobSpec,
    SchedulerError,
    SchedulerState,
    Transport,
)

#: Environment variable names that can be exported from a shell script.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Partitions, queues and accounts: words no scheduler or shell reads anything into.
WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

#: `sh -c WRITE_SCRIPT + "exec <submit command>" tool STATE_DIR NAME`: the script from stdin
#: to STATE_DIR/NAME.sh, mode 0600 (only the write gets umask 077: the batch system passes
#: the submitter's umask on to the job).
WRITE_SCRIPT = """\
mkdir -p -- "$1" || exit 101
(umask 077 && cat >"$1/$2.sh.tmp") && mv -f -- "$1/$2.sh.tmp" "$1/$2.sh" || exit 102
"""
#: What WRITE_SCRIPT's own exit statuses mean.
SUBMIT_STEPS = {101: "cannot create the state folder", 102: "cannot write the job script"}


@dataclass(frozen=True)
class Dialect:
    """What tells one batch system's adapter from another's, in the parts they share."""

    #: The batch system's name in messages: "Slurm", "Torque".
    system: str
    #: The submit command ("sbatch", "qsub"): a label in messages and metrics.
    tool: str
    #: WRITE_SCRIPT plus the submit command, run as `sh -c SUBMIT dasscod-TOOL STATE_DIR NAME`.
    submit: str
    #: The job names it accepts (ours are checked before they reach a script or a command).
    name: re.Pattern[str]
    #: The job ids it gives.
    job_id: re.Pattern[str]
    #: What a job spec's `partition` is called there ("partition", "queue").
    partition: str
    #: The job id in the submit command's output, or None.
    parse_job_id: Callable[[str], str | None]
    #: Whether a refused submission's message says the request itself is wrong (retrying
    #: cannot help).
    permanent: Callable[[str], bool]

    def check_defaults(self, partition: str | None, account: str | None) -> None:
        """An adapter's own partition (queue) and account must be plain words."""
        for value in (partition, account):
            if value is not None and not WORD.fullmatch(value):
                raise ValueError(
                    f"not a {self.system} {self.partition} or account name: {value!r}"
                )

    def placement(
        self, spec: JobSpec, *, partition: str | None, account: str | None
    ) -> tuple[str | None, str | None]:
        """Check `spec` (check_spec), then its partition and account, else the adapter's
        defaults; raises a non-retryable SchedulerError for what cannot go into a script."""
        check_spec(spec, self.system, self.name)
        chosen = spec.partition or partition, spec.account or account
        check_words(spec, {self.partition: chosen[0], "account": chosen[1]})
        return chosen

    def valid_ids(self, jobs: Mapping[str, str]) -> tuple[dict[str, str], dict[str, JobInfo]]:
        """`status`'s jobs ({job_id: name}) split into those with an id this batch system
        could have given, and an UNKNOWN answer for each other one."""
        valid: dict[str, str] = {}
        invalid: dict[str, JobInfo] = {}
        for job_id, name in jobs.items():
            if self.job_id.fullmatch(job_id):
                valid[job_id] = name
            else:
                invalid[job_id] = JobInfo(job_id, name, SchedulerState.UNKNOWN,
                                          reason=f"{job_id!r} is not a {self.system} job id")
        return valid, invalid

    def check_job_id(self, job_id: str) -> None:
        """A job id this batch system cannot have given never reaches a command."""
        if not self.job_id.fullmatch(job_id):
            raise SchedulerError(f"{job_id!r} is not a {self.system} job id", retryable=False)


class BatchScheduler:
    """The part of a batch-system adapter that only its `dialect` tells apart: submitting the
    script `render` makes. Subclasses set `dialect`, the attributes below and `render`."""

    dialect: ClassVar[Dialect]
    transport: Transport
    state_dir: PurePosixPath
    submit_timeout_s: float

    def render(self, spec: JobSpec) -> str:
        raise NotImplementedError

    async def submit(self, spec: JobSpec) -> str:
        return await submit_script(self.transport, self.dialect, state_dir=self.state_dir,
                                   spec=spec, script=self.render(spec),
                                   timeout=self.submit_timeout_s)


def check_spec(spec: JobSpec, system: str, name: re.Pattern[str]) -> None:
    """Raise a non-retryable SchedulerError for a spec that cannot go into a script safely."""
    if not name.fullmatch(spec.name):
        raise SchedulerError(
            f"job name {spec.name!r} is not safe to give to {system} "
            "(letters, digits, '.', '_', '-'; not starting with a separator)",
            retryable=False,
        )
    if not spec.argv:
        raise SchedulerError(f"{spec.name}: empty command", retryable=False)
    if spec.time_limit_s < 1 or spec.cpus < 1 or spec.memory_mb < 1:
        raise SchedulerError(
            f"{spec.name}: time limit, CPUs and memory must be positive "
            f"({spec.time_limit_s} s, {spec.cpus}, {spec.memory_mb} MB)",
            retryable=False,
        )
    bad = [key for key in spec.env if not ENV_NAME.fullmatch(key)]
    if bad:
        raise SchedulerError(f"{spec.name}: bad environment names {bad}", retryable=False)
    if any("\0" in s for s in (*spec.argv, *spec.env.values(), str(spec.workdir))):
        raise SchedulerError(f"{spec.name}: NUL byte in the command", retryable=False)


def check_words(spec: JobSpec, words: dict[str, str | None]) -> None:
    """A partition, queue or account that is not a plain word never reaches a script."""
    for what, value in words.items():
        if value is not None and not WORD.fullmatch(value):
            raise SchedulerError(f"{spec.name}: bad {what} {value!r}", retryable=False)


def script(
    directive: str,
    directives: list[str],
    spec: JobSpec,
    *,
    exit_file: PurePosixPath | None = None,
    limit_s: int | None = None,
) -> str:
    """The job script: the scheduler's directives, the environment (the token among it, so
    it never appears on a command line), then the command in its work folder.

    With `exit_file` the command is not exec'd: the shell waits for it and writes one line
    into that file before it exits (see EXIT_RECORD), for batch systems whose queries do not
    say how a job ended (the Slurm wrappers' qstat; Torque once keep_completed is over). A
    SIGTERM or SIGINT (qdel, the walltime limit) is trapped so that the line is still written
    once the command is gone; a SIGKILL leaves no line."""
    workdir = shlex.quote(str(spec.workdir))
    lines = [
        "#!/bin/sh",
        *(f"{directive} {d}" for d in directives),
        *(f"export {key}={shlex.quote(value)}" for key, value in sorted(spec.env.items())),
    ]
    if exit_file is None:
        give_up, run = "exit 125", f"exec {shlex.join(spec.argv)}"
    else:
        lines += EXIT_RECORD.format(
            exit_file=shlex.quote(str(exit_file)),
            limit=int(limit_s if limit_s is not None else spec.time_limit_s),
        ).splitlines()
        give_up, run = "dasscod_exit 125", f"{shlex.join(spec.argv)}\ndasscod_exit $?"
    lines += [
        f"mkdir -p -- {workdir} && cd -- {workdir} || "
        f"{{ echo 'dasscod: cannot create or enter the workdir' {workdir} >&2; {give_up}; }}",
        run,
    ]
    return "\n".join(lines) + "\n"


#: Shell lines for a script with an exit file: `dasscod_exit STATUS` writes
#: ``status=N signal=TERM|INT|none elapsed=SECONDS limit=SECONDS job=ID`` (atomically: a
#: reader never sees half a line) and exits with STATUS. `limit` is the walltime asked for,
#: so that a reader can tell a job stopped at its walltime from one deleted earlier.
EXIT_RECORD = """\
dasscod_start=$(date +%s)
dasscod_signal=none
trap 'dasscod_signal=TERM' TERM
trap 'dasscod_signal=INT' INT
dasscod_exit() {{
    dasscod_line="status=$1 signal=$dasscod_signal elapsed=$(($(date +%s) - dasscod_start))"
    dasscod_line="$dasscod_line limit={limit} job=${{PBS_JOBID:-${{SLURM_JOB_ID:-}}}}"
    printf '%s\\n' "$dasscod_line" >{exit_file}.tmp && mv -f -- {exit_file}.tmp {exit_file}
    exit "$1"
}}
"""


def message(result: CommandResult) -> str:
    """A command's complaint: stderr, else stdout (some tools print errors there), clipped."""
    return (result.stderr.strip() or result.stdout.strip())[-500:] or "no message"


async def submit_script(
    transport: Transport,
    dialect: Dialect,
    *,
    state_dir: PurePosixPath,
    spec: JobSpec,
    script: str,
    timeout: float,
) -> str:
    """Write `script` into the state folder and submit it with the dialect's SUBMIT snippet
    (WRITE_SCRIPT plus the submit command) in one transport call; the scheduler's job id, or
    SchedulerError."""
    tool = dialect.tool
    result = await transport.run(
        ["sh", "-c", dialect.submit, f"dasscod-{tool}", str(state_dir), spec.name],
        stdin=script,
        timeout=timeout,
    )
    if result.exit_status in SUBMIT_STEPS:
        raise SchedulerError(
            f"{spec.name}: {SUBMIT_STEPS[result.exit_status]} in {state_dir} on "
            f"{transport.name}: {message(result)}",
            retryable=True,
        )
    job_id = dialect.parse_job_id(result.stdout) if result.exit_status == 0 else None
    if job_id is None:
        # Some tools (Debian's qsub wrapper) put their complaint on stdout.
        raise SchedulerError(
            f"{spec.name}: {tool} failed (exit status {result.exit_status}): {message(result)}",
            retryable=not dialect.permanent(result.stdout + result.stderr),
        )
    return job_id

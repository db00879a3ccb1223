"""The Torque/PBS scheduler (Computerome runs Torque): jobs submitted with qsub, followed with
qstat and deleted with qdel, through any transport. Also runs against Slurm's Torque wrappers
(Debian's ``slurm-wlm-torque``), which is how the end-to-end tests exercise it.

Submission. Each attempt becomes a job script whose ``#PBS`` lines carry the spec (``-N``
name, ``-q`` queue, ``-A`` account, ``-l walltime=HH:MM:SS,nodes=1:ppn=N,mem=Nmb``, ``-o``
and ``-e``, ``-S /bin/sh`` so that a csh login shell does not read it) and whose body exports
the job's environment, enters the workdir and execs the command. As with Slurm, the
environment holds the callback token, so the script travels on the transport's stdin, is
written to ``<state_dir>/<name>.sh`` with mode 0600 and submitted from there by one command.
``-o`` and ``-e`` are given on qsub's command line as well: the wrapper's qsub always passes
its own default output files to sbatch, which override the script's. qsub reads no stdin
script from the wrapper, so the script file is needed anyway.

Job ids. Torque's qsub prints ``123.server.domain`` (``123[4].server`` for an array task), the
wrapper's the bare ``123``; the adapter keeps exactly what qsub printed (both qdel and qstat
accept it) and matches qstat's blocks to it by the ``123`` / ``123[4]`` part, since the server
may be spelt differently.

Status. One command for all jobs: it prints the exit files of the jobs asked about, then
``qstat -f -1 <ids>`` (see QUERY). Torque keeps an ended job for ``keep_completed`` seconds in
state C with its ``exit_status``; after that qstat does not know it (``Unknown Job Id``) and
nothing else on a Torque cluster says how it ended (no sacct). The Slurm wrappers' qstat shows
an ended job as C (while slurmctld remembers it, MinJobAge) but never its exit status. Both
gaps are filled by the exit file every job script writes as its last act
(``<state_dir>/<name>.exit``: exit status, a trapped SIGTERM, elapsed time and walltime; see
batch.EXIT_RECORD and torque_parse.ExitRecord). The file can come a little after qstat says C
(Slurm marks a cancelled job ended before its processes are gone), so such a job counts as
still exiting for EXIT_FILE_WAIT_S; one that ended with neither (SIGKILL before the script
could write, or a state folder the login node does not see) is then UNKNOWN, with the
reason. The state folder must therefore be on a file system both the compute nodes and the
login node see, as it already must for ``-o``/``-e``.

Finding jobs again. ``lookup`` runs the same command over all jobs (``qstat -f -1``) and picks
ours by ``Job_Name`` in Python (qstat filters by id, user or queue only), so it finds live jobs,
ended ones Torque still keeps and, through their exit files, ended ones it has forgotten.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath

from dasscod.cluster import batch
from dasscod.cluster import torque_parse as parse
from dasscod.cluster.base import (
    JobInfo,
    JobSpec,
    SchedulerError,
    SchedulerState,
    Transport,
)

#: Query and delete commands answer quickly or the server is in trouble.
QUERY_TIMEOUT_S = 60.0
#: qsub may wait for a busy server.
SUBMIT_TIMEOUT_S = 120.0
#: How long an ended job (state C) without exit_status may go without its exit file before
#: it counts as UNKNOWN. The file is written once the job's processes are gone, which can be
#: after the job's state says it ended: Slurm (under the wrappers) marks a cancelled or
#: timed-out job ended at once and kills it within KillWait (30 s by default).
EXIT_FILE_WAIT_S = 45.0
#: ``qstat -f`` options: full, and (Torque) values not folded; the wrapper ignores ``-1``.
QSTAT_FULL = ("qstat", "-f", "-1")

#: Writes the script from stdin to <state_dir>/<name>.sh (0600: it holds the token) and submits
#: it. Run as `sh -c SUBMIT dasscod-qsub STATE_DIR NAME`: the values are positional arguments,
#: never part of the script text (both are checked against parse.PATH / parse.NAME too,
#: because the wrapper's qsub pastes them into a shell command of its own).
SUBMIT = batch.WRITE_SCRIPT + """\
exec qsub -o "$1/$2.out" -e "$1/$2.err" "$1/$2.sh"
"""

DIALECT = batch.Dialect(
    system="Torque", tool="qsub", submit=SUBMIT, name=parse.NAME, job_id=parse.JOB_ID,
    partition="queue", parse_job_id=parse.parse_job_id,
    permanent=parse.submit_error_is_permanent,
)  # fmt: skip

#: The status query: `sh -c QUERY dasscod-qstat STATE_DIR NAME... -- [JOB_ID...]` prints
#: ``dasscod-exit NAME <exit file line>`` for each NAME whose exit file exists, then
#: torque_parse.QUERY_MARK, then execs ``qstat -f -1 JOB_ID...`` (all jobs without ids), so
#: qstat's exit status and stderr are the command's. Names and ids are checked against
#: parse.NAME and parse.JOB_ID before they get here; they are positional arguments, never
#: part of the snippet.
QUERY = f"""\
d=$1; shift
for n; do
    shift
    [ "$n" = -- ] && break
    if [ -f "$d/$n.exit" ]; then
        printf '{parse.EXIT_LINE} %s %s\\n' "$n" "$(head -c 300 -- "$d/$n.exit" | head -n 1)"
    fi
done
echo {parse.QUERY_MARK}
exec {" ".join(QSTAT_FULL)} "$@"
"""

#: The orphan sweep: `sh -c OURS dasscod-qstat STATE_DIR` prints ``dasscod-script NAME`` for
#: each job script in the state folder (the jobs this adapter submitted), then QUERY_MARK,
#: then execs ``qstat -f -1`` (all jobs).
OURS = f"""\
for f in "$1"/*.sh; do
    [ -f "$f" ] || continue
    n=${{f##*/}}
    echo "{parse.SCRIPT_LINE} ${{n%.sh}}"
done
echo {parse.QUERY_MARK}
exec {" ".join(QSTAT_FULL)}
"""


class TorqueScheduler(batch.BatchScheduler):
    """Torque through a transport. See the module docstring."""

    kind = "torque"
    dialect = DIALECT

    def __init__(
        self,
        transport: Transport,
        *,
        state_dir: PurePosixPath,
        queue: str | None = None,
        account: str | None = None,
        pbs_options: Sequence[str] = (),
        exit_file_wait_s: float = EXIT_FILE_WAIT_S,
        submit_timeout_s: float = SUBMIT_TIMEOUT_S,
    ) -> None:
        """`queue` and `account` apply to jobs whose spec names none (the spec's `partition`
        is the queue). `pbs_options` are extra ``#PBS`` lines set by the operator (e.g.
        ``-W group_list=proj``, which Computerome wants next to ``-A proj``)."""
        DIALECT.check_defaults(queue, account)
        if not parse.PATH.fullmatch(str(state_dir)) or str(state_dir).startswith("-"):
            raise ValueError(
                f"state folder {str(state_dir)!r}: only letters, digits and . _ / + - "
                "(qsub's paths go through a shell), not starting with '-'"
            )
        for option in pbs_options:
            if not option.startswith("-") or "\n" in option or "\r" in option:
                raise ValueError(f"PBS option {option!r}: must be one '-x value'")
        self.transport = transport
        self.state_dir = state_dir
        self.queue = queue
        self.account = account
        self.pbs_options = tuple(pbs_options)
        self.exit_file_wait_s = exit_file_wait_s
        self.submit_timeout_s = submit_timeout_s
        #: When each ended job without an exit_status and without an exit file was first
        #: seen so (monotonic clock), by job key: see EXIT_FILE_WAIT_S.
        self._awaiting_exit_file: dict[str, float] = {}

    # -- submission (submit: batch.BatchScheduler, with this dialect)

    def render(self, spec: JobSpec) -> str:
        """The job script for one attempt. Raises a non-retryable SchedulerError for a spec
        that cannot be put into a script safely."""
        queue, account = DIALECT.placement(spec, partition=self.queue, account=self.account)
        output = self.state_dir / spec.name
        directives = [
            "-S /bin/sh",
            f"-N {spec.name}",
            *([f"-q {queue}"] if queue else []),
            *([f"-A {account}"] if account else []),
            f"-l walltime={walltime(spec.time_limit_s)},nodes=1:ppn={spec.cpus},"
            f"mem={spec.memory_mb}mb",
            f"-o {output}.out",
            f"-e {output}.err",
            *self.pbs_options,
        ]
        return batch.script("#PBS", directives, spec, exit_file=self.exit_file(spec.name),
                            limit_s=walltime_s(spec.time_limit_s))

    def exit_file(self, name: str) -> PurePosixPath:
        """Where the job of this name writes how it ended (see batch.EXIT_RECORD)."""
        return self.state_dir / f"{name}.exit"

    # -- queries

    async def lookup(self, names: Iterable[str]) -> dict[str, JobInfo]:
        """Names that fail the name pattern cannot be jobs of ours and are simply absent."""
        wanted = sorted({n for n in names if parse.NAME.fullmatch(n)})
        if not wanted:
            return {}
        exits, qstat = await self._query(wanted, [])
        found = parse.best_by_name(parse.parse_qstat_full(qstat), wanted)
        infos = {name: record.info(exit_record=_matching(exits.get(name), record.job_id))
                 for name, record in found.items()}
        for name in wanted:
            record = exits.get(name)
            if name not in infos and record is not None and record.job_id is not None:
                # Ended and forgotten by qstat: the exit file still names the job.
                infos[name] = _from_exit_file(record.job_id, name, record)
        return infos

    async def status(self, jobs: Mapping[str, str]) -> dict[str, JobInfo]:
        valid, infos = DIALECT.valid_ids(jobs)
        if not valid:
            return infos
        exits, qstat = await self._query(sorted(set(valid.values())), list(valid))
        records = {r.key: r for r in parse.parse_qstat_full(qstat)}
        for job_id, name in valid.items():
            record = records.get(parse.job_key(job_id) or job_id)
            exit_record = _matching(exits.get(name), job_id)
            if record is None and exit_record is not None:
                infos[job_id] = _from_exit_file(job_id, name, exit_record)
            elif record is None:
                infos[job_id] = JobInfo(
                    job_id, name, SchedulerState.UNKNOWN,
                    reason=f"Torque no longer knows job {job_id} (it ended and was purged, "
                    "or never existed); how it ended is not on record",
                )
            elif record.name != name:
                infos[job_id] = JobInfo(job_id, name, SchedulerState.UNKNOWN,
                                        reason=f"Torque job {job_id} is {record.name!r}, "
                                        "not ours")
            else:
                infos[job_id] = self._awaiting(job_id, record, exit_record) or record.info(
                    job_id, exit_record)
        # Forget the jobs no longer asked about (they settled one way or another).
        asked = {parse.job_key(job_id) or job_id for job_id in valid}
        for key in set(self._awaiting_exit_file) - asked:
            del self._awaiting_exit_file[key]
        return infos

    def _awaiting(self, job_id: str, record: parse.Record,
                  exit_record: parse.ExitRecord | None) -> JobInfo | None:
        """RUNNING ("exiting") for an ended job with no exit_status and no exit file yet,
        for at most exit_file_wait_s after it was first seen so; None otherwise."""
        if not record.ended or record.exit_status is not None or exit_record is not None:
            return None
        now = time.monotonic()
        first = self._awaiting_exit_file.setdefault(record.key, now)
        if now - first >= self.exit_file_wait_s:
            return None
        return JobInfo(job_id, record.name, SchedulerState.RUNNING, None,
                       "ended (Torque state C); waiting for its exit file to say how")

    async def ours(self) -> list[JobInfo]:
        """The live jobs this adapter submitted (a job script of that name is in its state
        folder), in one command: how the watcher finds jobs no live attempt accounts for."""
        result = await self.transport.run(
            ["sh", "-c", OURS, "dasscod-qstat", str(self.state_dir)], timeout=QUERY_TIMEOUT_S
        )
        parsed = parse.parse_scripts(result.stdout)
        no_jobs = result.exit_status == parse.EXIT_UNKNOWN_JOB and not result.stderr.strip()
        if parsed is None or (result.exit_status != 0 and not no_jobs):
            raise SchedulerError(
                f"qstat failed (exit status {result.exit_status}): {batch.message(result)}",
                retryable=True,
            )
        scripts, qstat = parsed
        return [record.info() for record in parse.parse_qstat_full(qstat)
                if record.name in scripts and not record.ended]

    async def cancel(self, job_id: str) -> None:
        """Deleting a job that has already ended or is unknown is no error: Torque's qdel says
        so (``Unknown Job Id``, ``invalid state for job``), the wrapper's exits 1 silently."""
        DIALECT.check_job_id(job_id)
        result = await self.transport.run(["qdel", job_id], timeout=QUERY_TIMEOUT_S)
        if result.exit_status == 0:
            return
        text = (result.stdout + result.stderr).lower()
        if not text.strip() or parse.UNKNOWN_JOB in text or parse.INVALID_STATE in text:
            return
        raise SchedulerError(f"qdel {job_id} failed: {batch.message(result)}", retryable=True)

    # -- helpers

    async def _query(
        self, names: list[str], job_ids: list[str]
    ) -> tuple[dict[str, parse.ExitRecord], str]:
        """The exit files of `names` and ``qstat -f -1 [job_ids]`` in one command (QUERY):
        the exit records by name and qstat's stdout. A complaint only about unknown jobs
        (exit status 153, with ``Unknown Job Id`` lines from Torque, silently from the
        wrapper, which also exits 153 when there are no jobs at all) leaves the known ones on
        stdout: that is an answer."""
        result = await self.transport.run(
            ["sh", "-c", QUERY, "dasscod-qstat", str(self.state_dir), *names, "--", *job_ids],
            timeout=QUERY_TIMEOUT_S,
        )
        parsed = parse.parse_query(result.stdout)
        unknown_only = parse.only_unknown_jobs(result.stderr) and (
            result.stderr.strip() or result.exit_status == parse.EXIT_UNKNOWN_JOB
        )
        if parsed is not None and (result.exit_status == 0 or unknown_only):
            return parsed
        raise SchedulerError(
            f"qstat failed (exit status {result.exit_status}): {batch.message(result)}",
            retryable=True,
        )


def _matching(record: parse.ExitRecord | None, job_id: str) -> parse.ExitRecord | None:
    """An exit record that belongs to `job_id`: one naming another job (a stale file of the
    same name) is no answer about this one. A record without a job id is taken: the name is
    per attempt, and the daemon never submits an attempt twice."""
    if record is None or record.job_id is None:
        return record
    return record if parse.job_key(record.job_id) == parse.job_key(job_id) else None


def _from_exit_file(job_id: str, name: str, record: parse.ExitRecord) -> JobInfo:
    state, code, reason = record.outcome()
    gone = "Torque no longer lists the job"
    return JobInfo(job_id, name, state, code, f"{reason}; {gone}" if reason else gone)


def walltime_s(seconds: int) -> int:
    """The walltime asked for, in seconds: at least one minute, as the Slurm adapter."""
    return max(60, math.ceil(seconds))


def walltime(seconds: int) -> str:
    """``HH:MM:SS`` (hours may exceed 24) of walltime_s."""
    seconds = walltime_s(seconds)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


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

Status. One ``qstat -f -1 <ids>`` for all jobs. Torque keeps an ended job for
``keep_completed`` seconds in state C with its ``exit_status``; after that qstat does not know
it (``Unknown Job Id``) and nothing else on a Torque cluster says how it ended (no sacct), so
such a job is UNKNOWN. The Slurm wrappers' qstat shows an ended job as C (while slurmctld
remembers it, MinJobAge) but never its exit status: there a C job is UNKNOWN too, with a reason
saying it ended. See torque_parse for the states and exit codes.

Finding jobs again. ``lookup`` runs one ``qstat -f -1`` over all jobs and picks ours by
``Job_Name`` in Python (qstat filters by id, user or queue only), so it finds live jobs and
ended ones Torque still keeps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath

from dasscod.cluster import batch
from dasscod.cluster import torque_parse as parse
from dasscod.cluster.base import (
    CommandResult,
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
#: ``qstat -f`` options: full, and (Torque) values not folded; the wrapper ignores ``-1``.
QSTAT_FULL = ("qstat", "-f", "-1")

#: Writes the script from stdin to <state_dir>/<name>.sh (0600: it holds the token) and submits
#: it. Run as `sh -c SUBMIT dasscod-qsub STATE_DIR NAME`: the values are positional arguments,
#: never part of the script text (both are checked against parse.PATH / parse.NAME too,
#: because the wrapper's qsub pastes them into a shell command of its own).
SUBMIT = batch.WRITE_SCRIPT + """\
exec qsub -o "$1/$2.out" -e "$1/$2.err" "$1/$2.sh"
"""


class TorqueScheduler:
    """Torque through a transport. See the module docstring."""

    kind = "torque"

    def __init__(
        self,
        transport: Transport,
        *,
        state_dir: PurePosixPath,
        queue: str | None = None,
        account: str | None = None,
        pbs_options: Sequence[str] = (),
    ) -> None:
        """`queue` and `account` apply to jobs whose spec names none (the spec's `partition`
        is the queue). `pbs_options` are extra ``#PBS`` lines set by the operator (e.g.
        ``-W group_list=proj``, which Computerome wants next to ``-A proj``)."""
        for value in (queue, account):
            if value is not None and not batch.WORD.fullmatch(value):
                raise ValueError(f"not a Torque queue or account name: {value!r}")
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

    # -- submission

    async def submit(self, spec: JobSpec) -> str:
        return await batch.submit_script(
            self.transport, tool="qsub", snippet=SUBMIT, state_dir=self.state_dir,
            spec=spec, script=self.render(spec), timeout=SUBMIT_TIMEOUT_S,
            parse_job_id=parse.parse_job_id, permanent=parse.submit_error_is_permanent,
        )  # fmt: skip

    def render(self, spec: JobSpec) -> str:
        """The job script for one attempt. Raises a non-retryable SchedulerError for a spec
        that cannot be put into a script safely."""
        batch.check_spec(spec, "Torque", parse.NAME)
        queue = spec.partition or self.queue
        account = spec.account or self.account
        batch.check_words(spec, {"queue": queue, "account": account})
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
        return batch.script("#PBS", directives, spec)

    # -- queries

    async def lookup(self, names: Iterable[str]) -> dict[str, JobInfo]:
        """Names that fail the name pattern cannot be jobs of ours and are simply absent."""
        wanted = sorted({n for n in names if parse.NAME.fullmatch(n)})
        if not wanted:
            return {}
        result = await self._qstat([])
        found = parse.best_by_name(parse.parse_qstat_full(result.stdout), wanted)
        return {name: record.info() for name, record in found.items()}

    async def status(self, jobs: Mapping[str, str]) -> dict[str, JobInfo]:
        infos: dict[str, JobInfo] = {}
        valid: dict[str, str] = {}
        for job_id, name in jobs.items():
            if parse.JOB_ID.fullmatch(job_id):
                valid[job_id] = name
            else:
                infos[job_id] = JobInfo(job_id, name, SchedulerState.UNKNOWN,
                                        reason=f"{job_id!r} is not a Torque job id")
        if not valid:
            return infos
        result = await self._qstat(list(valid))
        records = {r.key: r for r in parse.parse_qstat_full(result.stdout)}
        for job_id, name in valid.items():
            record = records.get(parse.job_key(job_id) or job_id)
            if record is None:
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
                infos[job_id] = record.info(job_id)
        return infos

    async def cancel(self, job_id: str) -> None:
        """Deleting a job that has already ended or is unknown is no error: Torque's qdel says
        so (``Unknown Job Id``, ``invalid state for job``), the wrapper's exits 1 silently."""
        if not parse.JOB_ID.fullmatch(job_id):
            raise SchedulerError(f"{job_id!r} is not a Torque job id", retryable=False)
        result = await self.transport.run(["qdel", job_id], timeout=QUERY_TIMEOUT_S)
        if result.exit_status == 0:
            return
        text = (result.stdout + result.stderr).lower()
        if not text.strip() or parse.UNKNOWN_JOB in text or parse.INVALID_STATE in text:
            return
        raise SchedulerError(f"qdel {job_id} failed: {batch.message(result)}", retryable=True)

    # -- helpers

    async def _qstat(self, job_ids: list[str]) -> CommandResult:
        """``qstat -f -1 [ids]``. A complaint only about unknown jobs (exit status 153, with
        ``Unknown Job Id`` lines from Torque, silently from the wrapper, which also exits 153
        when there are no jobs at all) leaves the known ones on stdout: that is an answer."""
        result = await self.transport.run([*QSTAT_FULL, *job_ids], timeout=QUERY_TIMEOUT_S)
        if result.exit_status == 0:
            return result
        unknown_only = parse.only_unknown_jobs(result.stderr)
        if unknown_only and (result.stderr.strip() or result.exit_status
                             == parse.EXIT_UNKNOWN_JOB):
            return result
        raise SchedulerError(
            f"qstat failed (exit status {result.exit_status}): {batch.message(result)}",
            retryable=True,
        )


def walltime(seconds: int) -> str:
    """``HH:MM:SS`` (hours may exceed 24), at least one minute as the Slurm adapter."""
    seconds = max(60, math.ceil(seconds))
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

